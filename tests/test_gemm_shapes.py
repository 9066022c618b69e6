"""GEMM shapes: skinny GEMMs (a decode step's M = 4) run as memory-bound GEMV-style kernels, not padded
matrix-unit tiles; few tiles split K; a mostly empty last wave goes stream-K; the choice is in the kernel row.
Every utilisation below is derived by hand from the preset's tile (128 x 128 x 64 on H100) and 132 SMs."""
from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.costs import Gemm
from explorer.model import timing
from explorer.model_files import load_program

S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def gemm(m, n, k, target, dtype=jnp.bfloat16):
    prog = explorer.lower(lambda a, b: a @ b, S((m, k), dtype), S((k, n), dtype))
    (row,) = explorer.estimate(prog, target, pipeline=None).kernels
    return row


def test_decode_matmul_with_m_4_is_a_memory_bound_gemv(h100):
    # x[4, 4096] @ W[4096, 14336] (a Llama-3-8B up projection at batch 4)
    m, n, k = 4, 14336, 4096
    row = gemm(m, n, k, h100)
    flops = 2 * m * n * k
    # matrix-unit path: M padded to 128 (padding 4/128), 112 tiles on 132 SMs (1 wave, K not split: 132 // 112 = 1)
    # -> utilisation 4/128 x 112/132 = 0.0265: 469.8 MFLOP / (989.4 T x 0.7 x 0.0265) = 25.6 us
    padded = flops / (989.4e12 * 0.7 * (4 / 128) * (112 / 132))
    # GEMV-style path on the FP32 SIMT units (bf16 runs at the fp32 rate there): 469.8 MFLOP / (66.9 T x 0.8)
    gemv = flops / (66.9e12 * 0.8)
    assert gemv < padded
    assert row.compute_s == pytest.approx(gemv, rel=1e-12)
    assert row.algorithm.startswith("gemv")
    # the weights dominate the traffic: (4x4096 + 4096x14336 + 4x14336) x 2 B at 3.35 TB/s x 0.87, + HBM latency
    memory = (m * k + k * n + m * n) * 2 / (3.35e12 * 0.87) + 6e-7
    assert row.memory_s == pytest.approx(memory, rel=1e-12)
    assert row.bound == "memory"


def test_a_decode_step_stays_memory_bound(h100):
    """Llama-3-8B shapes (2 layers), batch 4, one new token: every matmul is skinny; the step is bound by reading
    the weights and the KV cache, not by padded matrix tiles."""
    prog = load_program(str(Path(__file__).resolve().parent.parent / "examples" / "llama_infer.py") + ":decode",
                        {"n_layers": 2, "batch": 4, "max_len": 2048, "prompt_len": 1024})
    est = explorer.estimate(prog, h100)
    assert est.bound == "memory"
    dots = [k for k in est.kernels if "dot_general" in k.name and k.flops > 0]
    assert dots and all(k.bound != "compute" for k in dots)
    assert any("gemv" in k.algorithm for k in dots)


def test_weight_gradient_with_a_mostly_empty_last_wave_goes_stream_k(h100):
    # dW = X^T dY: M=768, N=3072, K=12608 (GPT-2 small c_fc, batch x seq = 12608): 6 x 24 = 144 tiles on 132 SMs
    row = gemm(768, 3072, 12608, h100)
    # data-parallel: 2 waves, the second 12/132 full -> 144 / 264 = 0.545 of peak
    dp = 144 / (2 * 132)
    # stream-K: 144 tiles x 197 K iterations = 28368 spread over 132 SMs: ceil(214.9) = 215 each, plus the
    # 16-iteration fix-up -> 28368 / (132 x 231) = 0.930
    sk = 144 * 197 / (132 * (215 + timing.STREAM_K_FIXUP_ITERATIONS))
    assert sk > dp * timing.STREAM_K_MIN_GAIN
    assert row.algorithm == "stream-k"
    assert row.compute_s == pytest.approx(2 * 768 * 3072 * 12608 / (989.4e12 * 0.7 * sk), rel=1e-12)
    # the forward GEMM with the same flops (M=12608, N=3072, K=768): 99 x 24 = 2376 tiles = 18 full waves, M
    # padded 12608 -> 12672: 0.995 of peak, data-parallel
    fwd = gemm(12608, 3072, 768, h100)
    assert fwd.algorithm == "tiles"
    assert fwd.compute_s == pytest.approx(2 * 12608 * 3072 * 768 / (989.4e12 * 0.7 * (12608 / 12672)), rel=1e-12)
    assert row.compute_s / fwd.compute_s == pytest.approx((12608 / 12672) / sk, rel=1e-12)   # within 7%


def test_few_tiles_split_k(h100):
    # 256 x 256 x 16384: 2 x 2 = 4 tiles, 256 K iterations: K split 132 // 4 = 33 ways -> 132 work items, 1 wave
    row = gemm(256, 256, 16384, h100)
    assert row.algorithm == "split-k x33"
    assert row.compute_s == pytest.approx(2 * 256 * 256 * 16384 / (989.4e12 * 0.7 * 1.0), rel=1e-12)


def test_full_waves_keep_data_parallel_tiles(h100):
    # 8192^3: 64 x 64 = 4096 tiles = 31.03 waves: stream-K would gain 2.7%, under the 5% a library needs
    g = Gemm(1, 8192, 8192, 8192)
    util, algo = timing.gemm_algorithm(g, (128, 128, 64), 132)
    assert algo == "tiles" and util == pytest.approx(4096 / (32 * 132), rel=1e-12)
    # a short-K shape keeps its tiles even with a ragged last wave: 1024 x 2145 x 1024 = 8 x 17 = 136 tiles,
    # 16 K iterations each: stream-K's 16-iteration fix-up costs more than the 2 waves lose
    util, algo = timing.gemm_algorithm(Gemm(1, 1024, 2145, 1024), (128, 128, 64), 132)
    assert algo == "tiles"
    assert util == pytest.approx((2145 / 2176) * 136 / (2 * 132), rel=1e-12)


def test_the_choice_is_in_the_kernel_row_and_the_table(h100):
    row = gemm(768, 3072, 12608, h100)
    prog = explorer.lower(lambda a, b: a @ b, S((768, 12608), jnp.bfloat16), S((12608, 3072), jnp.bfloat16))
    est = explorer.estimate(prog, h100, pipeline=None)
    assert "[stream-k]" in est.table()
    assert est.to_dict()["kernels_detail"][0]["algorithm"] == row.algorithm == "stream-k"
    trace = est.to_chrome_trace()
    (event,) = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert event["args"]["algorithm"] == "stream-k"


@pytest.mark.parametrize("m,n,k", [(64, 12288, 12288), (1024, 9216, 14336), (4096, 4096, 4096), (1024, 1024, 1024)])
def test_utilisation_never_exceeds_one_and_is_the_best_of_the_three(m, n, k):
    g = Gemm(1, m, n, k)
    tile, units = (128, 128, 64), 132
    util, algo = timing.gemm_algorithm(g, tile, units)
    mt, nt, kt = math.ceil(m / 128), math.ceil(n / 128), math.ceil(k / 64)
    padding = (m * n * k) / (mt * 128 * nt * 128 * kt * 64)
    tiles = mt * nt
    dp = padding * tiles / (math.ceil(tiles / units) * units)
    assert 0 < util <= 1 and util >= dp
