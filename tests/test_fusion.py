"""Fusion decisions and boundary bytes on small programs derived by hand."""
import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from passes import pipeline as pl
from passes.fusion import Fuse
from passes.verify import verify_plan

S = jax.ShapeDtypeStruct
N = 1024 * 256
F32 = 4


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def plan_for(prog, target, text):
    plan = pl.run(pl.parse(text), prog, target, verify=True)
    verify_plan(prog, plan, target)
    return plan


def test_elementwise_chain_is_one_kernel(h100):
    prog = explorer.lower(lambda a, b, c: jnp.tanh(a * b + c), *[S((N,), jnp.float32)] * 3)
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    (kern,) = plan.kernels
    assert kern.bytes_in == 3 * N * F32        # a, b, c read once
    assert kern.bytes_out == N * F32           # only the result leaves the kernel
    unfused = plan_for(prog, h100, "fuse{strategy=none}")
    assert len(unfused.kernels) == 3
    assert sum(k.bytes_moved for k in unfused.kernels) == (2 + 1) * N * F32 * 2 + 2 * N * F32


def test_scalar_broadcast_is_duplicated_not_materialised(h100):
    prog = explorer.lower(lambda a: a * 3.0 + 1.0, S((N,), jnp.float32))
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    (kern,) = plan.kernels
    assert kern.bytes_in == N * F32   # scalar constants are compiled into the kernel: no traffic
    assert kern.bytes_out == N * F32


def test_reduction_input_fusion(h100):
    prog = explorer.lower(lambda a: jnp.exp(a).sum(axis=1), S((256, 1024), jnp.float32))
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    (kern,) = plan.kernels
    assert kern.kind == "input"
    assert kern.bytes_in == 256 * 1024 * F32   # the init value is a compiled-in constant
    assert kern.bytes_out == 256 * F32


def test_matmul_epilogue_output_fusion(h100):
    def f(x, w, b):
        return jax.nn.relu(x @ w + b)
    x, w, b = S((128, 256), jnp.bfloat16), S((256, 512), jnp.bfloat16), S((512,), jnp.bfloat16)
    prog = explorer.lower(f, x, w, b)
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    (kern,) = [k for k in plan.kernels if k.kind == "output"]
    assert len(plan.kernels) == 1
    assert kern.bytes_in == (128 * 256 + 256 * 512 + 512) * 2
    assert kern.bytes_out == 128 * 512 * 2
    no_epi = plan_for(prog, h100, "fuse{strategy=xla,matmul_epilogue=false}")
    assert len(no_epi.kernels) == 2


def test_forbid_a_single_decision(h100):
    prog = explorer.lower(lambda a, b, c: jnp.tanh(a * b + c), *[S((N,), jnp.float32)] * 3)
    edges = Fuse().candidates(prog, h100)
    assert len(edges) == 2
    p, c = edges[0]
    plan = plan_for(prog, h100, f"fuse{{strategy=xla,forbid={p}>{c}}}")
    assert len(plan.kernels) == 2


def test_fusion_lowers_time_and_traffic_on_a_layernorm(h100):
    import flax.linen as nn
    ln = nn.LayerNorm()
    x = S((4096, 1024), jnp.float32)
    params = jax.eval_shape(ln.init, jax.random.PRNGKey(0), x)
    prog = explorer.lower(ln.apply, params, x)
    none = explorer.estimate(prog, h100, pipeline="fuse{strategy=none}")
    xla = explorer.estimate(prog, h100, pipeline="fuse{strategy=xla}")
    assert xla.bytes_accessed < none.bytes_accessed
    assert xla.seconds < none.seconds
    assert xla.num_kernels < none.num_kernels
    assert xla.flops == none.flops


def test_aggressive_fuses_attention_when_it_fits():
    def attn(q, k, v):
        s = jnp.einsum("bqd,bkd->bqk", q, k)
        return jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(s, axis=-1), v)
    args = [S((8, 128, 64), jnp.bfloat16)] * 3
    prog = explorer.lower(attn, *args)
    sram_heavy = hw_targets.load("h100_sxm")
    xla = explorer.estimate(prog, sram_heavy, pipeline="fuse{strategy=xla}")
    agg = explorer.estimate(prog, sram_heavy, pipeline="fuse{strategy=aggressive}")
    assert agg.num_kernels < xla.num_kernels
    assert agg.bytes_accessed < xla.bytes_accessed


def test_pipeline_text_round_trip_and_errors():
    passes = pl.parse("fuse{strategy=aggressive,matmul_epilogue=false}")
    assert pl.to_text(passes) == "fuse{strategy=aggressive,matmul_epilogue=false}"
    assert pl.parse(pl.to_text(passes)) == passes
    with pytest.raises(pl.PipelineSyntaxError, match="unknown pass 'fusee'"):
        pl.parse("fusee")
    with pytest.raises(pl.PipelineSyntaxError, match="no option 'strat'"):
        pl.parse("fuse{strat=xla}")
    with pytest.raises(pl.PipelineSyntaxError, match="strategy"):
        pl.parse("fuse{strategy=magic}")
    with pytest.raises(pl.PipelineSyntaxError, match="matmul_epilogue"):
        pl.parse("fuse{matmul_epilogue=maybe}")


def test_a_failing_pass_is_named_with_the_passes_before_it(h100):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Boom:
        name = "boom"

        def run(self, program, plan, target):
            raise RuntimeError("kaput")

    prog = explorer.lower(lambda a: a + 1, S((4,), jnp.float32))
    with pytest.raises(pl.PassError, match=r"pass boom failed \(passes run before it: fuse\{strategy=none\}\)"):
        pl.run([Fuse(strategy="none"), Boom()], prog, h100)


def test_aggressive_makes_causal_attention_one_kernel_that_streams_q_k_v_once():
    # FlashAttention-style: scores, mask, softmax and both matmuls in one kernel; only q, k, v and the
    # output cross its boundary, and the S x S scores are tiled on chip (no spill) on an H100
    def attn(q, k, v):
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / 128 ** 0.5
        mask = jnp.tril(jnp.ones((q.shape[2], k.shape[2]), bool))
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1), v)
    shape = (4, 8, 1024, 128)
    prog = explorer.lower(attn, *[S(shape, jnp.bfloat16)] * 3)
    plan = plan_for(prog, hw_targets.load("h100_sxm"), "fuse{strategy=aggressive}")
    big = [k for k in plan.kernels if k.bytes_moved > 1e6]
    assert len(big) == 1
    tensor = 4 * 8 * 1024 * 128 * 2
    assert big[0].bytes_in == 3 * tensor and big[0].bytes_out == tensor and big[0].spill_bytes == 0
    xla = plan_for(prog, hw_targets.load("h100_sxm"), "fuse{strategy=xla}")
    assert sum(k.bytes_moved for k in xla.kernels) > 4 * tensor * 4      # the scores go through memory
