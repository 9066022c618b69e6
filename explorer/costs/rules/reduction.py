"""Ops that apply a scalar computation many times: reduce, reduce_window, sort, map,
select_and_scatter, scatter; and the top-k selections (``chlo.top_k``, ``ApproxTopK``).
``op.body_flops`` is the computation's flops per application."""
from __future__ import annotations

import math
from typing import Mapping

from ..registry import rule
from ..work import Work
from ._common import compute_dtype, nbytes
from .linalg import valid_taps


def _body(op) -> float:
    return op.body_flops or 1.0


@rule("stablehlo.reduce")
def reduce(op, ins, outs) -> Work:
    # (input elements - output elements) applications of the reducer, per reduced operand group
    # (a variadic reducer such as argmax computes all its outputs in one application)
    n_in = max(1, len(ins) // 2)
    reduced = max(0, ins[0].elements - outs[0].elements)
    return Work(vector_flops=reduced * _body(op), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins[:n_in], outs))


@rule("stablehlo.reduce_window")
def reduce_window(op, ins, outs) -> Work:
    # per output, one application per input element its window really covers (padding and dilation holes
    # excluded), less one: (window - 1) per output without padding. A dimension whose window covers the whole
    # input for every output (window >= 2n - 1, padding >= n - 1: XLA:TPU writes "reduce a row and broadcast
    # it back" this way) is reduced once, n applications, and broadcast, not n per output.
    src, out = ins[0], outs[0]
    rank = len(src.shape)
    window = tuple(op.attrs.get("window_dimensions") or (1,) * rank)
    strides = tuple(op.attrs.get("window_strides") or (1,) * rank)
    padding = tuple(op.attrs.get("padding") or ((0, 0),) * rank)
    base = tuple(op.attrs.get("base_dilations") or (1,) * rank)
    dil = tuple(op.attrs.get("window_dilations") or (1,) * rank)
    applications, distinct = 1.0, 1.0
    for d in range(rank):
        n, o = src.shape[d], out.shape[d]
        lo, hi = padding[d][0], padding[d][1]
        full = (base[d] == 1 and dil[d] == 1 and n > 1 and window[d] >= 2 * n - 1 and lo >= n - 1 and hi >= n - 1)
        if full:
            applications *= n
            continue
        applications *= _covered(n, o, window[d], strides[d], lo, base[d], dil[d])
        distinct *= o
    n_in = max(1, len(ins) // 2)
    flops = max(0.0, applications - distinct) * _body(op)
    return Work(vector_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins[:n_in], outs))


def _covered(n: int, outputs: int, window: int, stride: int, pad_lo: int, base: int, dilation: int) -> float:
    """Sum over the outputs of the input elements each window covers along one dimension."""
    if base == 1 and dilation == 1:
        total = 0
        for o in range(outputs):
            first = o * stride - pad_lo
            total += max(0, min(n - 1, first + window - 1) - max(0, first) + 1)
        return float(total)
    return float(valid_taps(n, outputs, window, stride, pad_lo, base, dilation))


@rule("stablehlo.select_and_scatter")
def select_and_scatter(op, ins, outs) -> Work:
    # select over each window of the source, then scatter-add: (window - 1) selects + 1 add per source element
    window = math.prod(op.attrs.get("window_dimensions") or (1,))
    source = ins[1]
    flops = source.elements * (max(0, window - 1) + 1)
    return Work(vector_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=ins[0].dtype)


@rule("stablehlo.sort")
def sort(op, ins, outs) -> Work:
    # comparison sort: elements * ceil(log2(sorted dimension)) comparator applications
    dim = int(op.attrs.get("dimension", -1))
    size = ins[0].shape[dim] if ins[0].shape else 1
    comparisons = ins[0].elements * max(1, math.ceil(math.log2(max(size, 2))))
    return Work(vector_flops=comparisons * _body(op), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=ins[0].dtype)


@rule("stablehlo.map")
def map_(op, ins, outs) -> Work:
    return Work(vector_flops=outs[0].elements * _body(op), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins, outs))


@rule("stablehlo.scatter")
def scatter(op, ins, outs) -> Work:
    # in place: read indices and updates, read-modify-write the updated elements; one body per update element
    n = len(outs)
    operands, indices, updates = ins[:n], ins[n], ins[n + 1:]
    upd_bytes = nbytes(updates)
    return Work(vector_flops=sum(u.elements for u in updates) * (op.body_flops or 0.0),
                bytes_read=indices.nbytes + 2 * upd_bytes, bytes_written=upd_bytes,
                dtype=operands[0].dtype)


def _top_k_work(x, k: int, dim: int, ins, outs) -> Work:
    # A selection per row, not a full sort: each of the n elements of a row is compared into a
    # k-element heap of depth ceil(log2(k + 1)), so rows * n * ceil(log2(k + 1)) comparisons (k = 1 is
    # an argmax: n comparisons per row). This is what XLA's TopK does for the small k of real models
    # (the GPU TopK kernel, the CPU partial sort); a sort-based fallback for large k costs up to the
    # n log2 n per row of stablehlo.sort. Bytes: every operand read once, the k values and k indices
    # per row written.
    n = x.shape[dim] if x.shape else 1
    rows = x.elements / max(n, 1)
    comparisons = rows * n * max(1, math.ceil(math.log2(k + 1)))
    return Work(vector_flops=comparisons, bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=x.dtype)


@rule("chlo.top_k")
def top_k(op, ins, outs) -> Work:
    # the k largest elements of the last dimension, and their indices (see _top_k_work)
    x = ins[0]
    k = int(op.attrs.get("k") or (outs[0].shape[-1] if outs and outs[0].shape else 1))
    return _top_k_work(x, k, len(x.shape) - 1, ins, outs)


@rule("custom_call:ApproxTopK")
def approx_top_k(op, ins, outs) -> Work:
    # jax.lax.approx_max_k / approx_min_k: exact selection on CPU / GPU (XLA's fallback); TPU's approximate
    # algorithm does at most this much, so this is an upper estimate there (see _top_k_work)
    cfg = op.attrs.get("mhlo.backend_config") or {}
    x = ins[0]
    dim = int(cfg.get("reduction_dim", len(x.shape) - 1)) if isinstance(cfg, Mapping) else len(x.shape) - 1
    k = int(cfg.get("top_k", 0)) if isinstance(cfg, Mapping) else 0
    if k <= 0:
        k = outs[0].shape[dim] if outs and outs[0].shape else 1
    return _top_k_work(x, k, dim % max(1, len(x.shape)), ins, outs)
