"""Matmul precision: the dot's ``precision_config`` / ``algorithm`` and operand types decide the matrix rate, per
target (TF32 or the FP32 SIMT rate on NVIDIA, bf16 passes on a TPU's MXU, native fp32 elsewhere; fp8 / int8 at
their rates). Every expected time is derived by hand from the preset's figures."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import explorer
import hw_targets
from explorer.costs import Gemm
from explorer.model import timing
from explorer.model_files import load_program

S = jax.ShapeDtypeStruct
N = 4096
FLOPS = 2.0 * N ** 3


def matmul_kernel(target, precision=None, dtype=jnp.float32, rhs_dtype=None):
    prog = explorer.lower(lambda a, b: lax.dot(a, b, precision=precision, preferred_element_type=jnp.float32),
                          S((N, N), dtype), S((N, N), rhs_dtype or dtype))
    (k,) = explorer.estimate(prog, target, pipeline=None).kernels
    return prog, k


def util(target) -> float:
    # the shape's utilisation of the matrix units (padding x waves; ``test_gemm_shapes`` checks it by hand)
    return timing.matrix_utilisation(Gemm(1, N, N, N), tuple(target.compute.matrix_tile), target.compute.matrix_units)


def expected_compute(target, peak: float) -> float:
    return FLOPS / (peak * target.efficiency.matrix * util(target))


@pytest.mark.parametrize("precision,label", [(None, "tf32"), (lax.Precision.DEFAULT, "tf32"),
                                             (lax.Precision.HIGH, "f32_high"), (lax.Precision.HIGHEST, "f32")])
def test_f32_precision_is_recorded(precision, label):
    prog, _ = matmul_kernel(hw_targets.load("h100_sxm"), precision)
    assert set(prog.flops_by_dtype()["matrix"]) == {label}


def test_nvidia_f32_runs_as_tf32_unless_highest():
    h100 = hw_targets.load("h100_sxm")
    assert h100.f32_matmul_mode == "tf32"
    # DEFAULT and HIGH: TF32 tensor cores, 494.7 TFLOP/s dense
    for precision in (None, lax.Precision.HIGH):
        _, k = matmul_kernel(h100, precision)
        assert k.compute_s == pytest.approx(expected_compute(h100, 494.7e12), rel=1e-12)
        assert "tf32" in k.algorithm
    # HIGHEST: full fp32, no fp32 tensor-core figure: the FP32 SIMT rate, 66.9 TFLOP/s (FMA = 2 flops)
    _, k = matmul_kernel(h100, lax.Precision.HIGHEST)
    assert k.compute_s == pytest.approx(expected_compute(h100, 66.9e12), rel=1e-12)
    assert "fp32" in k.algorithm


def test_tpu_f32_runs_as_bf16_mxu_passes():
    v5p = hw_targets.load("tpu_v5p")
    assert v5p.f32_matmul_mode == "bf16_passes"
    # one bf16 pass at DEFAULT, 3 at HIGH (bf16_3x), 6 at HIGHEST: 459 / 1, 3, 6 TFLOP/s
    for precision, passes in ((None, 1), (lax.Precision.HIGH, 3), (lax.Precision.HIGHEST, 6)):
        _, k = matmul_kernel(v5p, precision)
        assert k.compute_s == pytest.approx(expected_compute(v5p, 459e12 / passes), rel=1e-12)
        assert f"bf16 x{passes}" in k.algorithm
    # the vector unit (28.7 TFLOP/s) is never the f32 matmul rate: the fallback the issue measured
    _, k = matmul_kernel(v5p)
    assert k.compute_s < FLOPS / (28.7e12 * v5p.efficiency.matrix)


def test_explicit_dot_algorithm_sets_the_passes():
    h100 = hw_targets.load("h100_sxm")
    prog, k = matmul_kernel(h100, lax.DotAlgorithmPreset.BF16_BF16_F32_X3)
    assert set(prog.flops_by_dtype()["matrix"]) == {"bf16x3"}
    # three bf16 tensor-core passes on any chip: 989.4 / 3 TFLOP/s on H100
    assert k.compute_s == pytest.approx(expected_compute(h100, 989.4e12 / 3), rel=1e-12)
    prog, k = matmul_kernel(h100, lax.DotAlgorithmPreset.BF16_BF16_F32)
    assert set(prog.flops_by_dtype()["matrix"]) == {"bf16"}
    assert k.compute_s == pytest.approx(expected_compute(h100, 989.4e12), rel=1e-12)


def test_native_fp32_matrix_units():
    mi = hw_targets.load("mi300x")
    # HIGHEST on MI300X: its fp32 matrix-core rate, 163.4 TFLOP/s (listed as matrix fp32)
    _, k = matmul_kernel(mi, lax.Precision.HIGHEST)
    assert k.compute_s == pytest.approx(expected_compute(mi, 163.4e12), rel=1e-12)
    # a chip whose matrix unit takes f32 natively runs every precision at its fp32 rate
    native = dataclasses.replace(mi, compute=dataclasses.replace(mi.compute, f32_matmul="fp32"))
    for precision in (None, lax.Precision.HIGH, lax.Precision.HIGHEST):
        _, k = matmul_kernel(native, precision)
        assert k.compute_s == pytest.approx(expected_compute(native, 163.4e12), rel=1e-12)


def test_narrow_operands_run_at_their_rates():
    h100 = hw_targets.load("h100_sxm")
    _, k = matmul_kernel(h100, dtype=jnp.bfloat16)
    assert k.compute_s == pytest.approx(expected_compute(h100, 989.4e12), rel=1e-12)
    _, k = matmul_kernel(h100, dtype=jnp.float8_e4m3fn)
    assert k.compute_s == pytest.approx(expected_compute(h100, 1978.9e12), rel=1e-12)
    prog = explorer.lower(lambda a, b: lax.dot(a, b, preferred_element_type=jnp.int32),
                          S((N, N), jnp.int8), S((N, N), jnp.int8))
    (k,) = explorer.estimate(prog, h100, pipeline=None).kernels
    assert k.compute_s == pytest.approx(expected_compute(h100, 1978.9e12), rel=1e-12)
    # bf16 x f32 operands: XLA converts the bf16 side, the dot runs in f32 (TF32 at DEFAULT on H100)
    prog = explorer.lower(lambda a, b: lax.dot(a, b, preferred_element_type=jnp.float32),
                          S((N, N), jnp.bfloat16), S((N, N), jnp.float32))
    assert set(prog.flops_by_dtype()["matrix"]) == {"tf32"}
    (k,) = [k for k in explorer.estimate(prog, h100, pipeline=None).kernels if k.flops == FLOPS]
    assert k.compute_s == pytest.approx(expected_compute(h100, 494.7e12), rel=1e-12)


def test_gpt2_attention_dots_run_at_the_mxu_rate_on_tpu():
    """The GPT-2 example computes probs @ V with f32 probabilities (float32 softmax): on tpu_v5p that dot is one
    bf16 MXU pass at DEFAULT precision, not the vector unit's rate."""
    path = Path(__file__).resolve().parent.parent / "examples" / "gpt2_train.py"
    prog = load_program(str(path), {"n_layers": 2})          # GPT-2 small shapes, two blocks
    v5p = hw_targets.load("tpu_v5p")
    est = explorer.estimate(prog, v5p)
    f32 = [(k, prog.works[o]) for k in est.kernels for o in k.ops
           if prog.works[o] is not None and prog.works[o].matrix_flops and prog.works[o].dtype == "tf32"]
    assert f32
    for k, w in f32:
        t, how = timing.matrix_time(v5p, w)
        g = w.gemm
        # derived: flops / (459 TFLOP/s x 0.8 efficiency x utilisation), or the GEMV path when faster (skinny)
        mxu = w.matrix_flops / (459e12 * v5p.efficiency.matrix *
                                timing.matrix_utilisation(g, tuple(v5p.compute.matrix_tile), v5p.compute.matrix_units))
        assert t == pytest.approx(min(mxu, t), rel=1e-12) and t <= mxu
        assert "bf16 x1" in how
    # the step on tpu_v5p is faster than with f32 dots at the vector rate (the old fallback)
    slow = dataclasses.replace(v5p, compute=dataclasses.replace(v5p.compute, f32_matmul="fp32"))
    assert explorer.estimate(prog, slow).seconds > est.seconds


def test_a_bad_f32_mode_names_the_field():
    h100 = hw_targets.load("h100_sxm")
    with pytest.raises(hw_targets.TargetError, match=r"compute\.f32_matmul.*'tf32', 'bf16_passes', 'fp32'.*'fp16'"):
        dataclasses.replace(h100, compute=dataclasses.replace(h100.compute, f32_matmul="fp16"))
