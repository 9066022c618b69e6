"""Matrix-unit ops: dot_general and convolution (2 flops per multiply-accumulate),
plus the dense linear-algebra ops (fft, cholesky, triangular_solve)."""
from __future__ import annotations

import math
import re

from ...graph.ir import dtype_bytes
from ..registry import rule
from ..work import Gemm, Work
from ._common import nbytes


_PRECISION_LABELS = {"DEFAULT": "tf32", "HIGH": "f32_high", "HIGHEST": "f32"}
_ALGORITHM = re.compile(r"lhs_precision_type\s*=\s*(\w+).*?num_primitive_operations\s*=\s*(\d+)")


def _matmul_dtype(op, lhs_dtype: str, rhs_dtype: str | None = None) -> str:
    """The type a matmul's arithmetic runs in, as the cost model prices it (``explorer.model.timing.matrix_peak``).

    - f32 operands: by the dot's ``precision_config`` (the higher of the two operands'): DEFAULT -> "tf32",
      HIGH -> "f32_high", HIGHEST -> "f32"; the target decides what each costs (TF32 or the FP32 rate on NVIDIA,
      1 / 3 / 6 bf16 passes on a TPU);
    - an explicit dot ``algorithm`` (``lax.DotAlgorithmPreset``): its operand precision and passes
      ("bf16", "bf16x3", "bf16x6", "tf32", "tf32x3", "f32");
    - mixed operand types (bf16 x f32): the wider one (XLA converts the narrower);
    - otherwise the operand type (bf16, f16, f8E4M3FN, i8, ...)."""
    algo = op.attrs.get("algorithm")
    if algo:
        m = _ALGORITHM.search(str(algo))
        if m:
            base, passes = m.group(1), int(m.group(2))
            if base == "f32":
                return "f32"
            if base in ("bf16", "tf32"):
                return base if passes == 1 else f"{base}x{passes}"
            return base
    dtype = lhs_dtype
    if rhs_dtype is not None and rhs_dtype != lhs_dtype:
        dtype = max((lhs_dtype, rhs_dtype), key=lambda d: (_width(d), d))
    if dtype == "f32":
        precision = [str(p) for p in (op.attrs.get("precision_config") or ())]
        level = max((lvl for lvl in _PRECISION_LABELS if any(f"precision {lvl}>" in p or p == lvl for p in precision)),
                    key=list(_PRECISION_LABELS).index, default="DEFAULT")
        return _PRECISION_LABELS[level]
    return dtype


def _width(dtype: str) -> int:
    try:
        return dtype_bytes(dtype)
    except ValueError:
        return 0


@rule("stablehlo.dot_general")
def dot_general(op, ins, outs) -> Work:
    # flops = 2 * batch * M * N * K (one FMA = 2 flops)
    lhs, rhs = ins[0], ins[1]
    dims = op.attrs["dot_dimension_numbers"]
    batch = math.prod(lhs.shape[d] for d in dims["lhs_batch"])
    k = math.prod(lhs.shape[d] for d in dims["lhs_contract"])
    lhs_free = [d for d in range(len(lhs.shape)) if d not in dims["lhs_batch"] and d not in dims["lhs_contract"]]
    rhs_free = [d for d in range(len(rhs.shape)) if d not in dims["rhs_batch"] and d not in dims["rhs_contract"]]
    m = math.prod(lhs.shape[d] for d in lhs_free)
    n = math.prod(rhs.shape[d] for d in rhs_free)
    if not dims["lhs_contract"]:
        # an outer product (nothing contracted): XLA rewrites it as a multiply of broadcast operands (its algebraic
        # simplifier's dot-to-multiply rewrite, on by default), one multiply per result element on the vector
        # units, fusible like any elementwise op (a MoE layer's dense dispatch, tokens x experts x features)
        return Work(vector_flops=float(batch * m * n), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                    dtype=outs[0].dtype)
    g = Gemm(batch=batch, m=m, n=n, k=k)
    return Work(matrix_flops=g.flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=_matmul_dtype(op, lhs.dtype, rhs.dtype), gemm=g)


@rule("stablehlo.dot")
def dot(op, ins, outs) -> Work:
    lhs, rhs = ins[0], ins[1]
    k = lhs.shape[-1]
    m = lhs.shape[0] if len(lhs.shape) == 2 else 1
    n = rhs.shape[-1] if len(rhs.shape) == 2 else 1
    g = Gemm(batch=1, m=m, n=n, k=k)
    return Work(matrix_flops=g.flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=_matmul_dtype(op, lhs.dtype, rhs.dtype), gemm=g)


def valid_taps(in_size: int, out_size: int, window: int, stride: int, pad_lo: int,
                lhs_dil: int, rhs_dil: int) -> int:
    """(output position, kernel tap) pairs that land on a real input element (not padding, not a dilation hole)."""
    dilated = (in_size - 1) * lhs_dil + 1 if in_size > 0 else 0
    count = 0
    for o in range(out_size):
        base = o * stride - pad_lo
        for k in range(window):
            pos = base + k * rhs_dil
            if 0 <= pos < dilated and pos % lhs_dil == 0:
                count += 1
    return count


@rule("stablehlo.convolution")
def convolution(op, ins, outs) -> Work:
    # flops = 2 * out_batch * out_features * kernel_in_features * (valid taps summed over output positions)
    lhs, rhs, out = ins[0], ins[1], outs[0]
    dn = op.attrs["dimension_numbers"]
    nsp = len(dn["input_spatial"])
    strides = op.attrs.get("window_strides") or (1,) * nsp
    padding = op.attrs.get("padding") or [[0, 0]] * nsp
    lhs_dil = op.attrs.get("lhs_dilation") or (1,) * nsp
    rhs_dil = op.attrs.get("rhs_dilation") or (1,) * nsp
    taps = 1
    for i in range(nsp):
        taps *= valid_taps(lhs.shape[dn["input_spatial"][i]], out.shape[dn["output_spatial"][i]],
                            rhs.shape[dn["kernel_spatial"][i]], strides[i], padding[i][0], lhs_dil[i], rhs_dil[i])
    out_batch = out.shape[dn["output_batch"]]
    out_feat = out.shape[dn["output_feature"]]
    kin = rhs.shape[dn["kernel_in"]]
    flops = 2.0 * out_batch * out_feat * kin * taps
    # as a GEMM (implicit im2col): M = output pixels, N = output features, K = kernel_in x the window taps an
    # output really uses (on average: padding and dilation holes excluded). A batched matmul written as a
    # convolution (XLA:TPU puts batch dims in spatial dims, one valid tap per output) so gets K = kernel_in.
    spatial = math.prod(out.shape[d] for d in dn["output_spatial"])
    out_pixels = spatial * out_batch
    taps_per_output = max(1, round(taps / max(1, spatial)))
    groups = int(op.attrs.get("feature_group_count", 1)) * int(op.attrs.get("batch_group_count", 1))
    g = Gemm(batch=groups, m=out_pixels, n=max(1, out_feat // groups), k=kin * taps_per_output)
    return Work(matrix_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=_matmul_dtype(op, lhs.dtype, rhs.dtype), gemm=g)


@rule("stablehlo.fft")
def fft(op, ins, outs) -> Work:
    # 5 N log2 N flops per transform (Cooley-Tukey estimate)
    lengths = op.attrs.get("fft_length") or ins[0].shape[-1:]
    n = math.prod(lengths)
    batches = ins[0].elements / max(1, math.prod(ins[0].shape[-len(lengths):]))
    flops = 5.0 * n * math.log2(max(n, 2)) * batches
    return Work(vector_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=ins[0].dtype)


@rule("stablehlo.cholesky")
def cholesky(op, ins, outs) -> Work:
    # n^3 / 3 flops per matrix
    n = ins[0].shape[-1]
    batch = ins[0].elements / (n * n)
    return Work(vector_flops=batch * n ** 3 / 3.0, bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=ins[0].dtype)


@rule("stablehlo.triangular_solve")
def triangular_solve(op, ins, outs) -> Work:
    # m^2 * n flops per (m x m) triangle against an (m x n) right-hand side
    a, b = ins[0], ins[1]
    m = a.shape[-1]
    batch = a.elements / (m * m)
    n = b.elements / batch / m
    return Work(vector_flops=batch * m * m * n, bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=a.dtype)


@rule("stablehlo.batch_norm_inference")
def batch_norm_inference(op, ins, outs) -> Work:
    # (x - mean) * rsqrt(var + eps) * scale + offset: ~4 flops per element (+ 1 rsqrt per feature)
    x = ins[0]
    feat = ins[1].elements
    return Work(vector_flops=4.0 * x.elements, transcendentals=feat, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=x.dtype)


@rule("stablehlo.batch_norm_training")
def batch_norm_training(op, ins, outs) -> Work:
    # mean and variance reductions (2 flops/element each) + normalisation (4 flops/element)
    x = ins[0]
    feat = ins[1].elements
    return Work(vector_flops=8.0 * x.elements, transcendentals=feat, bytes_read=2 * x.nbytes + nbytes(ins[1:]),
                bytes_written=nbytes(outs), dtype=x.dtype)


@rule("stablehlo.batch_norm_grad")
def batch_norm_grad(op, ins, outs) -> Work:
    # two reductions over (grad, grad * x_hat) and the elementwise input gradient: ~10 flops per element
    x = ins[0]
    feat = ins[1].elements
    return Work(vector_flops=10.0 * x.elements, transcendentals=feat, bytes_read=2 * nbytes(ins),
                bytes_written=nbytes(outs), dtype=x.dtype)
