"""Estimates on targets: the roofline floor, the bound, determinism, unknown ops, comparisons."""

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.model import timing
from explorer.costs import Gemm

S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def test_large_matmul_is_compute_bound_at_the_derated_peak(h100):
    n = 8192
    prog = explorer.lower(lambda a, b: a @ b, S((n, n), jnp.bfloat16), S((n, n), jnp.bfloat16))
    est = explorer.estimate(prog, h100, pipeline=None)
    (k,) = est.kernels
    assert k.bound == "compute"
    util = timing.matrix_utilisation(Gemm(1, n, n, n), tuple(h100.compute.matrix_tile), h100.compute.matrix_units)
    # one kernel: issued by one launch (graph mode), then its body and the engine's gap between kernels
    expected = (2 * n ** 3 / (h100.matrix_rate("bf16") * h100.efficiency.matrix * util) + h100.launch_overhead_s
                + h100.kernel_gap_s)
    assert est.seconds == pytest.approx(expected, rel=1e-12)
    assert est.compute_seconds + est.memory_seconds + est.comm_seconds + est.overhead_seconds == pytest.approx(est.seconds)


def test_elementwise_is_memory_bound_at_the_derated_bandwidth(h100):
    n = 64 * 1024 * 1024
    prog = explorer.lower(lambda a, b: a + b, S((n,), jnp.float32), S((n,), jnp.float32))
    est = explorer.estimate(prog, h100, pipeline=None)
    (k,) = est.kernels
    assert k.bound == "memory"
    hbm = h100.main_memory
    expected = (3 * n * 4 / (hbm.bandwidth_bytes_per_s * h100.efficiency.memory) + hbm.latency_s
                + h100.launch_overhead_s + h100.kernel_gap_s)
    assert est.seconds == pytest.approx(expected, rel=1e-12)


def test_tiny_op_is_overhead_bound(h100):
    est = explorer.estimate(explorer.lower(lambda a: a * 2, S((4,), jnp.float32)), h100)
    assert est.bound == "overhead"
    assert est.seconds >= h100.launch_overhead_s


def test_equal_peaks_different_tiles_differ(h100):
    # an awkward GEMM (M=N=192): a 128-wide tile pads it to 256; a 64-wide tile fits it exactly
    prog = explorer.lower(lambda a, b: a @ b, S((192, 8192), jnp.bfloat16), S((8192, 192), jnp.bfloat16))
    small_tile = h100.replace(**{"compute.matrix_tile.m": 64, "compute.matrix_tile.n": 64})
    a = explorer.estimate(prog, h100, pipeline=None).kernels[0].compute_s
    b = explorer.estimate(prog, small_tile, pipeline=None).kernels[0].compute_s
    assert b < a
    assert small_tile.matrix_rate("bf16") == h100.matrix_rate("bf16")


def test_more_hbm_bandwidth_is_never_slower(h100):
    prog = explorer.lower(lambda a, b: jnp.tanh(a @ b).sum(), S((512, 512), jnp.float32), S((512, 512), jnp.float32))
    bw = h100.knobs()["memory.hbm.bandwidth_bytes_per_s"]
    times = [explorer.estimate(prog, h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": bw * f})).seconds
             for f in (0.5, 1, 2, 4)]
    assert times == sorted(times, reverse=True)


def test_same_program_same_numbers(h100):
    def f(x, w):
        return jax.nn.gelu(x @ w).mean()
    args = (S((256, 512), jnp.bfloat16), S((512, 1024), jnp.bfloat16))
    a = explorer.estimate(explorer.lower(f, *args), h100).to_dict()
    b = explorer.estimate(explorer.lower(f, *args), h100).to_dict()
    assert a == b


def test_unknown_ops_in_every_result(h100):
    text = """
    module @m {
      func.func public @main(%arg0: tensor<8x8xf32>) -> tensor<8x8xf32> {
        %0 = stablehlo.custom_call @mystery(%arg0) : (tensor<8x8xf32>) -> tensor<8x8xf32>
        return %0 : tensor<8x8xf32>
      }
    }"""
    prog = explorer.from_stablehlo(text)
    est = explorer.estimate(prog, h100)
    assert dict(est.unknown_ops) == {"custom_call:mystery": 1}
    assert "custom_call:mystery x1" in est.table()
    assert est.to_dict()["unknown_ops"] == {"custom_call:mystery": 1}
    assert "custom_call:mystery x1" in explorer.compare(prog, [h100]).table()
    with pytest.raises(explorer.UnknownOpsError, match="mystery"):
        explorer.estimate(prog, h100, strict=True)


def test_layers_and_phases_of_a_train_step(h100):
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10, name="head")(nn.relu(nn.Dense(256, name="body")(x)))

    net = Net()
    x = S((64, 128), jnp.float32)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)

    def step(p, x):
        g = jax.grad(lambda p: net.apply(p, x).sum())(p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

    est = explorer.estimate(explorer.lower(step, params, x), h100)
    phases = {r["phase"] for r in est.phase_rows()}
    assert phases == {"forward", "backward", "optimizer"}
    layers = {r["layer"] for r in est.layer_rows(depth=2)}
    assert {"Net/body", "Net/head"} <= layers
    assert sum(r["seconds"] for r in est.layer_rows()) == pytest.approx(est.seconds)
    # the backward pass of a dense layer does two matmuls per forward one
    bwd = sum(k.flops for k in est.kernels if k.phase == "backward" and "dot" in k.name)
    fwd = sum(k.flops for k in est.kernels if k.phase == "forward" and "dot" in k.name)
    assert bwd == pytest.approx(2 * fwd, rel=0.01) or bwd > fwd


def test_compare_rows_and_table():
    prog = explorer.lower(lambda a, b: a @ b, S((2048, 2048), jnp.bfloat16), S((2048, 2048), jnp.bfloat16))
    names = ["h100_sxm", "tpu_v5p", "mi300x"]
    cmp = explorer.compare(prog, [hw_targets.load(n) for n in names])
    assert [r["target"] for r in cmp.rows()] == names
    text = cmp.table()
    for n in names:
        assert n in text
    assert cmp.rows()[0]["speedup_vs_first"] == 1.0
    both = explorer.compare(prog, [hw_targets.load("h100_sxm")], pipelines=["fuse{strategy=none}", "fuse{strategy=xla}"])
    assert [r["pipeline"] for r in both.rows()] == ["fuse{strategy=none}", "fuse{strategy=xla}"]


def test_peak_memory_and_fit(h100):
    # 4 GiB of live f32: fits in 80 GB, not in a 1 GB variant
    prog = explorer.lower(lambda a: (a * 2).sum(), S((1024, 1024, 1024), jnp.float32))
    est = explorer.estimate(prog, h100)
    assert est.peak_memory_bytes >= 4 * 1024 ** 3
    assert est.fits_in_memory
    small = h100.replace(**{"memory.hbm.capacity_bytes": 1e9})
    est_small = explorer.estimate(prog, small)
    assert not est_small.fits_in_memory
    assert "DOES NOT FIT" in est_small.table()


def test_op_rows_account_for_every_counted_flop(h100):
    def f(x, w):
        return jax.nn.gelu(x @ w).sum()
    prog = explorer.lower(f, S((128, 256), jnp.float32), S((256, 512), jnp.float32))
    est = explorer.estimate(prog, h100)
    rows = est.op_rows()
    assert sum(r["flops"] for r in rows) == pytest.approx(prog.flops)
    assert sum(r["flops"] for r in rows) == pytest.approx(est.flops)
    dots = [r for r in rows if r["primitive"] == "dot_general"]
    assert dots[0]["flops"] == 2 * 128 * 256 * 512 and dots[0]["kernel"] is not None
