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
    # XLA:TPU fuses a matmul's elementwise consumers into it (output fusion); XLA:GPU on Hopper splits this small
    # GEMM along K and the kernel that adds the partial sums takes the bias add and the activation
    # (benchmarks/fusion_patterns_xla.py: gemm_128x256x512_bias_relu)
    def f(x, w, b):
        return jax.nn.relu(x @ w + b)
    x, w, b = S((128, 256), jnp.bfloat16), S((256, 512), jnp.bfloat16), S((512,), jnp.bfloat16)
    prog = explorer.lower(f, x, w, b)
    tpu = hw_targets.load("tpu_v5p")
    plan = plan_for(prog, tpu, "fuse{strategy=xla}")
    (kern,) = plan.kernels
    assert kern.kind == "output"
    assert kern.bytes_in == (128 * 256 + 256 * 512 + 512) * 2
    assert kern.bytes_out == 128 * 512 * 2
    assert len(plan_for(prog, tpu, "fuse{strategy=xla,matmul_epilogue=false}").kernels) == 2
    gemm, epilogue = plan_for(prog, h100, "fuse{strategy=xla}").kernels
    # the product goes through memory as 4 f32 partial sums (the factor XLA chose for this shape, measured by
    # benchmarks/xla_split_k.py), which the epilogue kernel adds up
    partials = 4 * 128 * 512 * 4
    assert gemm.kind == "single" and gemm.bytes_out == partials
    assert epilogue.bytes_in == partials + 512 * 2 and epilogue.bytes_out == 128 * 512 * 2


def kernel_ops(prog, plan):
    """Each kernel's op names (short), recomputed producers included, generators and views left out."""
    out = []
    for k in plan.kernels:
        names = sorted(prog.graph.ops[o].short_name for o in k.priced_ops
                       if prog.works[o] is not None and prog.works[o].launches_kernel
                       and prog.graph.ops[o].short_name not in ("broadcast_in_dim", "iota", "constant"))
        out.append(names)
    return out


A = S((4096, 4096), jnp.bfloat16)


def test_gpu_gemm_takes_cheap_epilogues_not_gelu(h100):
    # measured on XLA:GPU (fusion_patterns_xla: dot_bias, dot_bias_gelu): a large GEMM takes the bias add; GELU
    # (a tanh) stays a kernel of its own, and so does a widening convert read by a reduction
    bias = jnp.ones((4096,), jnp.bfloat16)
    prog = explorer.lower(lambda a, b: jax.nn.gelu(a @ b + bias), A, A)
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    gemm, gelu = kernel_ops(prog, plan)
    assert gemm == ["add", "dot_general"] and "tanh" in gelu
    assert plan.kernels[0].bytes_out == 4096 * 4096 * 2
    prog = explorer.lower(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).sum(1), A, A)
    assert kernel_ops(prog, plan_for(prog, h100, "fuse{strategy=xla}")) == [["dot_general"], ["reduce"]]


def test_gpu_split_k_keeps_the_epilogue_apart_on_hopper_only():
    # M*N < 1024*K: Hopper splits K and a reduction kernel takes the epilogue; the A100 config does not
    def f(x, w, c):
        return jax.nn.relu(x @ w + c)
    args = S((1024, 2048), jnp.bfloat16), S((2048, 1024), jnp.bfloat16), S((1024,), jnp.bfloat16)
    prog = explorer.lower(f, *args)
    assert len(plan_for(prog, hw_targets.load("h100_sxm"), "fuse{strategy=xla}").kernels) == 2
    assert len(plan_for(prog, hw_targets.load("a100_sxm"), "fuse{strategy=xla}").kernels) == 1
    square = explorer.lower(f, S((1024, 1024), jnp.bfloat16), S((1024, 1024), jnp.bfloat16), S((1024,), jnp.bfloat16))
    assert len(plan_for(square, hw_targets.load("h100_sxm"), "fuse{strategy=xla}").kernels) == 1


def test_gpu_readers_of_a_matmul_result_stay_apart(h100):
    # XLA:GPU does not merge sibling readers of a GEMM's result (dot_two_readers), but does those of an input
    prog = explorer.lower(lambda a, b: (lambda y: (y * 2, y + 1))(a @ b), A, A)
    assert len(plan_for(prog, h100, "fuse{strategy=xla}").kernels) == 3
    prog = explorer.lower(lambda a: (a * 2, a + 1), A)
    (kern,) = plan_for(prog, h100, "fuse{strategy=xla}").kernels
    assert kern.bytes_in == 4096 * 4096 * 2 and kern.bytes_out == 2 * 4096 * 4096 * 2


def test_lone_ops_are_no_sibling_fusion_hosts(h100):
    # two single-op kernels reading the same inputs stay two kernels (XLA merges siblings into a fusion)
    prog = explorer.lower(lambda a, b: (a + b, a - b), A, A)
    assert len(plan_for(prog, h100, "fuse{strategy=xla}").kernels) == 2


def test_producer_joins_all_its_readers(h100):
    # producer-consumer multi-output fusion into every reader of the same loop: one kernel, exp computed once
    prog = explorer.lower(lambda a: (lambda y: (y * 2, y + 1))(jnp.exp(a) * 3), A)
    (kern,) = plan_for(prog, h100, "fuse{strategy=xla}").kernels
    assert kern.bytes_in == 4096 * 4096 * 2 and kern.bytes_out == 2 * 4096 * 4096 * 2
    prog = explorer.lower(lambda a: (lambda y: (y.astype(jnp.float32).sum(1), (y * 2).astype(jnp.float32).sum(1)))(
        jnp.exp(a) * 3), A)
    (kern,) = plan_for(prog, h100, "fuse{strategy=xla}").kernels
    assert kern.bytes_out == 2 * 4096 * F32


def test_gemm_operand_in_another_layout_is_copied_first(h100):
    # an einsum whose batch dims are not leading: XLA:GPU transposes each input operand first (two copies)
    q = S((4, 1024, 64, 64), jnp.bfloat16)
    prog = explorer.lower(lambda x, y: jnp.einsum("bqhd,bkhd->bhqk", x, y), q, q)
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    copies = [e for e in plan.extra_kernels if e.name == "copy[transpose]"]
    assert len(copies) == 2 and all(e.work.bytes_read == e.work.bytes_written == 4 * 1024 * 64 * 64 * 2 for e in copies)
    est = explorer.estimate(prog, h100)
    assert est.bytes_accessed == 2 * 2 * (4 * 1024 * 64 * 64 * 2) + plan.kernels[0].bytes_moved
    # the same product with operands already in a GEMM's order needs none, nor does a TPU
    ready = explorer.lower(lambda x, y: jnp.einsum("bhqd,bhkd->bhqk", x, y), q, q)
    assert not plan_for(ready, h100, "fuse{strategy=xla}").extra_kernels
    assert not plan_for(prog, hw_targets.load("tpu_v5p"), "fuse{strategy=xla}").extra_kernels


def test_mask_from_iotas_is_recomputed_in_every_reader(h100):
    # a causal mask computed from iotas reads nothing: it is recomputed in each reader, never a kernel
    def f(s):
        mask = jnp.tril(jnp.ones((1024, 1024), bool))
        x = jnp.where(mask, s, -1e30)
        return jax.nn.softmax(x, axis=-1), (x * 2).sum()
    prog = explorer.lower(f, S((8, 1024, 1024), jnp.float32))
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    assert all(k.bytes_in >= 8 * 1024 * 1024 * F32 for k in plan.kernels)   # every kernel reads s, none a mask


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


def test_aggressive_makes_the_attention_backward_one_kernel_as_flashattention_2():
    # FlashAttention-2's backward (Dao 2023, Algorithm 2): the scores recomputed from Q and K, dP = dO V^T,
    # dS = P * (dP - rowsum(P * dP)), and the three matmuls dQ = dS K, dK = dS^T Q, dV = P^T dO in one kernel:
    # only Q, K, V and dO are read and dQ, dK, dV written; the S x S values never reach memory
    def attn(q, k, v):
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / 128 ** 0.5
        p = jax.nn.softmax(s, axis=-1).astype(jnp.bfloat16)
        return jnp.einsum("bhqk,bhkd->bhqd", p, v)

    shape = (2, 8, 2048, 128)
    tensor = 2 * 8 * 2048 * 128 * 2

    def step(q, k, v, do):
        _, vjp = jax.vjp(jax.checkpoint(attn), q, k, v)
        return vjp(do)

    prog = explorer.lower(step, *[S(shape, jnp.bfloat16)] * 4)
    plan = plan_for(prog, hw_targets.load("h100_sxm"), "fuse{strategy=aggressive}")
    scores = 2 * 8 * 2048 * 2048
    big = [k for k in plan.kernels if k.bytes_moved > 1e6]
    matmuls = [len([o for o in k.ops if prog.graph.ops[o].name == "stablehlo.dot_general"]) for k in big]
    assert len(big) == 1 and matmuls == [5], (len(big), matmuls)
    assert big[0].bytes_in == 4 * tensor and big[0].bytes_out == 3 * tensor and big[0].spill_bytes == 0
    xla = plan_for(prog, hw_targets.load("h100_sxm"), "fuse{strategy=xla}")
    assert sum(k.bytes_moved for k in xla.kernels) > 2 * scores * 2     # XLA writes and reads the S x S values


# split factors XLA:GPU chose on deviceless H100 compiles (``benchmarks/xla_split_k.py``'s ``split_factor`` and an
# einsum for the batched ones, jax 0.10.2): (batch, m, n, k) -> s
XLA_SPLIT_K_H100 = {(1, 768, 768, 8192): 4, (1, 768, 3072, 8192): 1, (1, 3072, 768, 8192): 1, (1, 768, 2304, 8192): 2,
                    (1, 768, 768, 4096): 4, (1, 384, 384, 16384): 16, (1, 96, 3000, 5000): 8, (2, 128, 256, 4096): 16,
                    (8, 128, 256, 4096): 8, (32, 128, 256, 4096): 2, (96, 1024, 64, 1024): 1, (4, 512, 512, 8192): 2,
                    (16, 64, 64, 2048): 8}


def test_split_k_factor_follows_what_xla_chose():
    from passes.fusion_xla import split_k_factor
    got = {key: split_k_factor(m, n, k, b, cores=132) for key, (b, m, n, k) in
           ((key, key) for key in XLA_SPLIT_K_H100)}
    exact = sum(got[key] == s for key, s in XLA_SPLIT_K_H100.items())
    assert exact >= 12, got
    assert all(0.5 <= got[key] / s <= 2 for key, s in XLA_SPLIT_K_H100.items()), got
    assert split_k_factor(1024, 1024, 256) == 1          # a large output for its K is not split


def _attention(causal: str):
    def attn(q, k, v, lengths=None):
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / 128 ** 0.5
        n, t = q.shape[2], k.shape[2]
        if causal == "causal":
            s = jnp.where(jnp.tril(jnp.ones((n, t), bool)), s, -1e30)
        elif causal == "window":                    # sliding window of 512 keys behind each query
            i, j = jnp.arange(n)[:, None], jnp.arange(t)[None, :]
            s = jnp.where((j <= i) & (j > i - 512), s, -1e30)
        elif causal == "padding":                   # from data: which keys exist, per sequence
            s = jnp.where(jnp.arange(t)[None, None, None, :] < lengths[:, None, None, None], s, -1e30)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1).astype(jnp.bfloat16), v)
    return attn


def test_a_fused_attention_skips_the_tiles_a_causal_mask_hides():
    # FlashAttention loops only over the key tiles a query tile sees: with 128 x 128 tiles over 4096 x 4096 scores,
    # (32 * 33 / 2) of the 32 x 32 tile pairs = 33/64 of the work; a 512-key window sees 5 key tiles per query
    # tile (4 at the start); a mask read from data is priced whole
    from passes.fusion_masks import computed_fraction
    h100 = hw_targets.load("h100_sxm")
    shape = (2, 8, 4096, 128)
    q = [S(shape, jnp.bfloat16)] * 3
    tiles = h100.compute.matrix_tile[0], h100.compute.matrix_tile[1]
    assert tiles == (128, 128)
    est = {}
    for kind in ("none", "causal", "window"):
        prog = explorer.lower(_attention(kind), *q)
        est[kind] = explorer.estimate(prog, h100, "fuse{strategy=aggressive}")
    assert est["causal"].flops / est["none"].flops == pytest.approx(33 / 64, rel=0.01)
    assert est["causal"].seconds < 0.6 * est["none"].seconds
    n = 4096 // 128
    window = (5 * n - 4 - 3 - 2 - 1) / (n * n)        # query tile i sees min(i, 4) + 1 key tiles
    # the flops also hold the few ops not on score-shaped values (the output's normalisation), priced whole
    assert window <= est["window"].flops / est["none"].flops < window + 0.01
    prog = explorer.lower(_attention("padding"), *q, S((2,), jnp.int32))
    padded = explorer.estimate(prog, h100, "fuse{strategy=aggressive}")
    assert padded.flops == pytest.approx(est["none"].flops, rel=0.01)
    # XLA's fusion does not make attention one kernel, so nothing is skipped there
    xla = explorer.estimate(explorer.lower(_attention("causal"), *q), h100, "fuse{strategy=xla}")
    assert xla.flops == pytest.approx(est["none"].flops, rel=0.01)
    for kind, want in (("causal", 33 / 64), ("window", window)):
        g = explorer.lower(_attention(kind), *q).graph
        sel = next(op for op in g.ops if op.name == "stablehlo.select" and len(g.values[op.results[0]].shape) == 4)
        assert computed_fraction(g, sel.operands[0], tiles) == pytest.approx(want)


def test_a_dot_that_contracts_nothing_is_a_multiply_fused_into_the_gemm_it_feeds(h100):
    # a MoE layer's dense dispatch (tokens x experts x features, an outer product per token): XLA rewrites the dot
    # as a multiply of broadcasts, which the expert GEMM reads as its prologue with the transpose to expert-major
    # order (one kernel: nothing written out)
    t, d, e, f = 512, 256, 4, 1024

    def layer(x, gates, w):
        dispatch = jnp.einsum("te,td->etd", gates, x)
        return jnp.einsum("etd,edf->etf", dispatch, w)

    prog = explorer.lower(layer, S((t, d), jnp.bfloat16), S((t, e), jnp.bfloat16), S((e, d, f), jnp.bfloat16))
    outer = next(op for op in prog.graph.ops if op.name == "stablehlo.dot_general"
                 and not op.attrs["dot_dimension_numbers"]["lhs_contract"])
    work = prog.works[outer.id]
    assert work.matrix_flops == 0 and work.vector_flops == e * t * d and work.gemm is None
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    assert [k for k in kernel_ops(prog, plan) if "dot_general" in k] == [["dot_general", "dot_general", "transpose"]]
    assert prog.flops == pytest.approx(2 * e * t * d * f + e * t * d)


def test_a_small_matrix_vector_dot_is_a_reduction_on_a_gpu_not_a_gemm(h100):
    # a MoE layer's combine: each token's expert outputs weighted by its gates (the gates a vector per token);
    # XLA:GPU reduces a multiply instead of a GEMM, reading the outputs in the layout they have (no transposing
    # copy); XLA:TPU keeps the dot
    t, d, e = 512, 256, 4
    prog = explorer.lower(lambda y, gates: jnp.einsum("etd,te->td", y, gates),
                          S((e, t, d), jnp.bfloat16), S((t, e), jnp.bfloat16))
    from passes.fusion_xla import _program_facts, _strength_reduced
    (dot,) = [op.id for op in prog.graph.ops if op.name == "stablehlo.dot_general"]
    assert _strength_reduced(prog.graph, dot)
    assert _program_facts(prog, "gpu")[0][dot] == "reduce" and _program_facts(prog, "tpu")[0][dot] == "matmul"
    assert not plan_for(prog, h100, "fuse{strategy=xla}").extra_kernels          # no layout copy on the GPU
    # a real GEMM (no vector operand) stays one, whatever its size
    gemm = explorer.lower(lambda a, b: a @ b, S((64, 64), jnp.bfloat16), S((64, 64), jnp.bfloat16))
    assert not _strength_reduced(gemm.graph, next(op.id for op in gemm.graph.ops if op.name == "stablehlo.dot_general"))


def test_top_k_is_a_kernel_of_its_own(h100):
    # XLA runs top-k as a sort kernel: never recomputed inside the kernels that read its indices
    prog = explorer.lower(lambda x: jax.nn.one_hot(jax.lax.top_k(x, 2)[1], 8, dtype=jnp.bfloat16).sum(1),
                          S((4096, 8), jnp.bfloat16))
    plan = plan_for(prog, h100, "fuse{strategy=xla}")
    assert ["top_k"] in kernel_ops(prog, plan)
    assert not any("top_k" in k and len(k) > 1 for k in kernel_ops(prog, plan))


def test_a_decision_replayed_from_a_remembered_run_is_the_one_made_afresh(h100):
    # fusion_decisions forbids one edge at a time: the producer-fusion decisions before the forbidden producer's
    # turn are replayed from the first run, and the result must be exactly what deciding afresh gives
    from passes import fusion_xla

    def step(w1, w2, x):
        def loss(w1, w2):
            h = jax.nn.gelu(x @ w1)
            h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5)
            return jnp.mean(jnp.square(h @ w2))
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2)
        return w1 - 1e-3 * g1, w2 - 1e-3 * g2

    prog = explorer.lower(step, S((256, 512), jnp.float32), S((512, 256), jnp.float32), S((64, 256), jnp.float32))
    fusion_xla._PHASE1.clear()
    base = fusion_xla.decide(prog, h100, set(), ())
    assert fusion_xla._PHASE1                                    # remembered
    for edge in sorted(base.made):
        replayed = fusion_xla.decide(prog, h100, {edge}, ())
        fusion_xla._PHASE1.clear()
        fresh = fusion_xla.decide(prog, h100, {edge}, ())
        fusion_xla.decide(prog, h100, set(), ())                 # the base run remembered again
        assert (replayed.groups, replayed.copies, replayed.made) == (fresh.groups, fresh.copies, fresh.made), edge
        assert edge not in fresh.made


def test_the_kernel_order_stays_a_list_of_increasing_keys_through_merges(h100):
    # _Order keeps groups in a linked list with increasing keys (a merge moves only what it must); after every
    # merge of a train step's fusion the list holds each live group once, in key order, and respaces crowded keys
    from passes import fusion_xla

    seen_orders = []
    real_merge = fusion_xla._Order.merge

    def checked(self, a, b, direct_edge_ok, limit=20000):
        out = real_merge(self, a, b, direct_edge_ok, limit)
        seen_orders.append(self)
        walk, n = [], self._head
        while n is not None:
            walk.append(n)
            n = self._next[n]
        assert len(walk) == len(set(walk)) == len(self.index)
        keys = [self.index[x] for x in walk]
        assert all(x < y for x, y in zip(keys, keys[1:]))
        return out

    prog = explorer.lower(lambda w, x: jax.grad(lambda w: jnp.sum(jax.nn.softmax(x @ w) ** 2))(w),
                          S((256, 256), jnp.float32), S((128, 256), jnp.float32))
    fusion_xla._Order.merge = checked
    try:
        fusion_xla.decide(prog, h100, set(), ())
    finally:
        fusion_xla._Order.merge = real_merge
    assert seen_orders
    order = seen_orders[-1]
    for i in range(40):                    # crowd one gap until it must be respaced
        at = order._head
        order._insert_after(at, [-10_000 - i])
    walk, n = [], order._head
    while n is not None:
        walk.append(order.index[n])
        n = order._next[n]
    assert all(x < y for x, y in zip(walk, walk[1:]))


def test_kernels_rebuilt_with_one_decision_changed_are_the_ones_built_afresh(h100):
    # build_kernels reuses the kernels of groups it built before when nothing else they depend on changed (the ops
    # in kernels, which groups recompute what): every kernel must be what a fresh build gives
    from passes import fusion, fusion_xla
    from passes.plan import Plan

    def step(w1, w2, x):
        def loss(w1, w2):
            return jnp.mean(jnp.square(jax.nn.gelu(x @ w1) @ w2))
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2)
        return w1 - 1e-3 * g1, w2 - 1e-3 * g2

    prog = explorer.lower(step, S((256, 512), jnp.float32), S((512, 256), jnp.float32), S((64, 256), jnp.float32))
    base = fusion_xla.decide(prog, h100, set(), ())
    fusion._BUILT.clear()
    fusion.build_kernels(prog, base.groups, h100, plan=Plan(), copies=base.copies, split_k=base.split_k)
    remembered = list(fusion._BUILT)
    for edge in sorted(base.made):
        d = fusion_xla.decide(prog, h100, {edge}, ())
        again = fusion.build_kernels(prog, d.groups, h100, plan=Plan(), copies=d.copies, split_k=d.split_k)
        fusion._BUILT.clear()
        fresh = fusion.build_kernels(prog, d.groups, h100, plan=Plan(), copies=d.copies, split_k=d.split_k)
        fusion._BUILT[:] = remembered
        assert again == fresh, edge
