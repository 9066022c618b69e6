"""Distributed training as users run it: the program's own shardings priced by default, memory per device against
the closed forms of Korthikanti et al. 2022, pipelines, and gradient collectives combined as XLA combines them.

The layer below is the transformer layer Korthikanti et al. count (Reducing Activation Recomputation in Large
Transformer Models, 2022, Section 4): 16-bit activations, dropout after the attention softmax, the attention output
projection and the MLP, LayerNorm / GeLU / softmax saving what Megatron's fused kernels save (the input, the input,
the output). Its activations per layer, in bytes, for sequence s, microbatch b, hidden h, heads a:
``s b h (34 + 5 a s / h)``; with tensor and sequence parallelism over t ``s b h (34 / t + 5 a s / (h t))``; with
selective recomputation (core attention under ``jax.checkpoint``) ``34 s b h`` (``/ t`` with TP + SP); with full
recomputation ``2 s b h`` (``/ t`` with SP). Mixed-precision Adam on f32 weights with bf16 matmul copies holds 18
bytes per parameter (4 weight, 4 gradient, 8 moments, 2 copy), 16 when the copies are recomputed.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh as JaxMesh, NamedSharding, PartitionSpec as P

import explorer
import hw_targets
from explorer.graph import names
from explorer.model.collectives import collective_time
from explorer.model.memory import in_flight, training_memory
from explorer.pricing.pipeline_parallel import price_pipeline
from passes import pipeline as pl
from passes.fusion import kernels_of

S = jax.ShapeDtypeStruct
BF = jnp.bfloat16
SEQ, MB, HID, HEADS, T = 256, 2, 128, 4, 4
SBH = SEQ * MB * HID
XLA = "fuse{strategy=xla}"


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


# -- the Korthikanti layer ---------------------------------------------------------------------------------

@jax.custom_vjp
def layer_norm(x, g):
    return _ln(x, g)[0]


def _ln(x, g):
    x32 = x.astype(jnp.float32)
    mu = x32.mean(-1, keepdims=True)
    r = jax.lax.rsqrt(((x32 - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    return ((x32 - mu) * r * g).astype(BF), (x, g, mu, r)


def _ln_bwd(res, dy):
    x, g, mu, r = res
    xhat = (x.astype(jnp.float32) - mu) * r
    dxhat = dy.astype(jnp.float32) * g
    dx = r * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx.astype(x.dtype), (dy.astype(jnp.float32) * xhat).sum(tuple(range(x.ndim - 1)))


layer_norm.defvjp(_ln, _ln_bwd)


@jax.custom_vjp
def gelu(x):
    return jax.nn.gelu(x)


gelu.defvjp(lambda x: (jax.nn.gelu(x), x), lambda x, dy: (jax.vjp(jax.nn.gelu, x)[1](dy)[0],))


@jax.custom_vjp
def softmax(x):
    return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
    y = jax.nn.softmax(x, axis=-1)
    return y, y


softmax.defvjp(_softmax_fwd, lambda y, dy: ((dy - (dy * y).sum(-1, keepdims=True)) * y,))


def dropout(key, x, keep: float = 0.9):
    key, bits = jax.lax.rng_bit_generator(key, x.shape, dtype=jnp.uint8)
    return key, jnp.where(bits < jnp.uint8(int(256 * keep)), x * jnp.asarray(1 / keep, x.dtype), jnp.zeros((), x.dtype))


def _core(q, k, v, key):
    scores = jnp.einsum("bshd,bthd->bhst", q, k) * jnp.asarray(q.shape[-1] ** -0.5, BF)
    key, probs = dropout(key, softmax(scores))
    return jnp.einsum("bhst,bthd->bshd", probs, v), key


def _layer(p, x, key, heads: int, selective: bool):
    b, s, h = x.shape
    with jax.named_scope("attn"):
        y = layer_norm(x, p["ln_1"]["scale"])
        q, k, v = ((y @ p["attn"][n]["kernel"].astype(BF)).reshape(b, s, heads, h // heads)
                   for n in ("q_proj", "k_proj", "v_proj"))
        o, key = (jax.checkpoint(_core) if selective else _core)(q, k, v, key)
        key, o = dropout(key, o.reshape(b, s, h) @ p["attn"]["o_proj"]["kernel"].astype(BF))
        x = x + o
    with jax.named_scope("mlp"):
        u = gelu(layer_norm(x, p["ln_2"]["scale"]) @ p["mlp"]["c_fc"]["kernel"].astype(BF))
        key, o = dropout(key, u @ p["mlp"]["c_proj"]["kernel"].astype(BF))
    return x + o, key


def korthikanti_step(layers: int = 2, remat: str = "none", seq: int = SEQ, batch: int = MB, hidden: int = HID,
                     heads: int = HEADS):
    """(train_step, args): ``layers`` Korthikanti layers named ``h_<i>``, the mean of the output as the loss, AdamW."""
    tx = optax.adamw(1e-4)
    layer = functools.partial(_layer, heads=heads, selective=remat == "selective")
    if remat == "full":
        layer = jax.checkpoint(layer)

    def loss(params, x, key):
        for i in range(layers):
            with jax.named_scope(f"h_{i}"):
                x, key = layer(params[f"h_{i}"], x, key)
        return x.astype(jnp.float32).mean()

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch["x"], batch["key"])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def block():
        f32 = jnp.float32
        return {"ln_1": {"scale": S((hidden,), f32)}, "ln_2": {"scale": S((hidden,), f32)},
                "attn": {n: {"kernel": S((hidden, hidden), f32)} for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
                "mlp": {"c_fc": {"kernel": S((hidden, 4 * hidden), f32)},
                        "c_proj": {"kernel": S((4 * hidden, hidden), f32)}}}
    params = {f"h_{i}": block() for i in range(layers)}
    return step, (params, jax.eval_shape(tx.init, params),
                  {"x": S((batch, seq, hidden), BF), "key": S((4,), jnp.uint32)})


@functools.lru_cache(maxsize=None)
def _program(layers: int = 2, remat: str = "none"):
    fn, args = korthikanti_step(layers, remat)
    return explorer.lower(fn, *args)


def _memory(prog, target, pipeline: str):
    est = explorer.estimate(prog, target, pipeline)
    return est, training_memory(prog, est._plan, kernels_of(prog, est._plan))


TP_SP = f"shard{{mesh=model={T},tp=model,sp=true,pins=x=_:model:_}},{XLA}"   # the layer input sequence-split too


@pytest.mark.parametrize("remat,pipeline,closed_form", [
    ("none", XLA, 34 + 5 * HEADS * SEQ / HID),
    ("none", TP_SP, 34 / T + 5 * HEADS * SEQ / (HID * T)),
    ("selective", XLA, 34),
    ("selective", TP_SP, 34 / T),
    ("full", XLA, 2),
    ("full", TP_SP, 2 / T),
])
def test_activation_memory_per_layer_is_korthikantis(h100, remat, pipeline, closed_form):
    _, tm = _memory(_program(2, remat), h100, pipeline)
    assert tm.training and tm.blocks == (0, 1)
    assert tm.activations.per_block / SBH == pytest.approx(closed_form, rel=0.02)


def test_tensor_parallelism_alone_holds_no_more_than_megatrons(h100):
    # Megatron TP without SP keeps the LayerNorm inputs and dropout masks whole (10 s b h); the partitioner may
    # split more of them (it reduce-scatters where that is cheaper), never less
    _, tm = _memory(_program(), h100, f"shard{{mesh=model={T},tp=model}},{XLA}")
    megatron = 10 + 24 / T + 5 * HEADS * SEQ / (HID * T)
    assert 34 / T + 5 * HEADS * SEQ / (HID * T) <= tm.activations.per_block / SBH <= megatron * 1.001


def _state_per_param(tm) -> float:
    s = tm.whole()
    params = 12 * HID * HID * len(tm.blocks)
    return (s.parameters + s.gradients + s.optimizer + s.weight_copies) / params


def test_mixed_precision_adam_bytes_per_parameter_divided_as_sharded(h100):
    prog = _program()
    assert _state_per_param(_memory(prog, h100, XLA)[1]) == pytest.approx(18, rel=0.01)   # 4 + 4 + 8 + 2
    assert _state_per_param(_memory(_program(2, "full"), h100, XLA)[1]) == pytest.approx(16, rel=0.01)
    tp = _memory(prog, h100, f"shard{{mesh=model={T},tp=model}},{XLA}")[1]
    assert _state_per_param(tp) == pytest.approx(18 / T, rel=0.01)
    zero1 = _memory(prog, h100, f"shard{{mesh=data=2,dp=data,zero1=true}},{XLA}")[1]
    assert _state_per_param(zero1) == pytest.approx(4 + 4 + 2 + 8 / 2, rel=0.01)      # moments split, rest whole
    fsdp = _memory(prog, h100, f"shard{{mesh=data=2,fsdp=data}},{XLA}")
    assert _state_per_param(fsdp[1]) == pytest.approx(18 / 2, rel=0.01)
    # FSDP's gathered weights are live for one block and the next (prefetched) only: 2 x one block's bf16/f32 copy
    block_weights = 12 * HID * HID * 4
    assert block_weights <= fsdp[1].gathered.per_block <= 2 * block_weights


def test_memory_per_device_does_not_depend_on_the_blocks_built(h100):
    two = _memory(_program(2), h100, XLA)[1]
    four = _memory(_program(4), h100, XLA)[1]
    for blocks in (24, 96):
        assert four.whole(blocks).total == pytest.approx(two.whole(blocks).total, rel=0.01)
        assert four.whole(blocks).activations == pytest.approx(two.whole(blocks).activations, rel=1e-6)


def test_microbatches_in_flight_under_each_schedule():
    assert in_flight("gpipe", 4, 0, 16) == 16
    assert [in_flight("1f1b", 4, s, 16) for s in range(4)] == [4, 3, 2, 1]
    assert in_flight("1f1b", 4, 0, 2) == 2                       # fewer microbatches than stages
    # interleaved, v chunks: the first stage holds p + (p - 1) / v stage-shares (Korthikanti: L (1 + (p-1)/(p v)))
    assert in_flight("interleaved", 4, 0, 16, 2) == pytest.approx(4 + 3 / 2)


def test_the_first_pipeline_stage_holds_all_layers_activations(h100):
    est, tm = _memory(_program(2, "full"), h100, XLA)
    layers, p = 32, 4
    pe = price_pipeline(est, h100, p, 16, "1f1b", blocks=layers)
    # 1F1B: p microbatches of L/p layers each on the first stage = L layers' worth, 2 s b h each (full recompute)
    assert pe.memory.activations == pytest.approx(2 * SBH * layers, rel=0.02)
    inter = price_pipeline(est, h100, p, 16, "interleaved", 2, blocks=layers)
    assert inter.memory.activations == pytest.approx(2 * SBH * layers * (1 + (p - 1) / (p * 2)), rel=0.02)
    assert pe.memory.parameters == pytest.approx(tm.parameters.per_block * layers / p, rel=1e-9)


# -- the program's own shardings, priced by default ----------------------------------------------------------

D_IN, D_HID, BATCH = 256, 1024, 512


def _mlp_step(params, batch):
    def loss(p):
        h = jax.nn.relu(batch["x"] @ p["fc1"]["kernel"])
        return jnp.mean((h @ p["fc2"]["kernel"] - batch["y"]) ** 2)
    value, g = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda w, d: w - 0.1 * d, params, g), value


def _mlp_args(mesh=None):
    rep = NamedSharding(mesh, P()) if mesh is not None else None
    dat = NamedSharding(mesh, P("data")) if mesh is not None else None
    params = {"fc1": {"kernel": S((D_IN, D_HID), jnp.float32, sharding=rep)},
              "fc2": {"kernel": S((D_HID, D_IN), jnp.float32, sharding=rep)}}
    return params, {"x": S((BATCH, D_IN), jnp.float32, sharding=dat), "y": S((BATCH, D_IN), jnp.float32, sharding=dat)}


@pytest.fixture(scope="module")
def dp8():
    mesh = JaxMesh(np.array(jax.devices()[:8]), ("data",))
    return explorer.lower(_mlp_step, *_mlp_args(mesh))


def test_default_pipeline_prices_a_data_parallel_step_with_its_all_reduces(dp8, h100):
    assert pl.default_pipeline(dp8) == "shard,fuse{strategy=xla}"
    est = explorer.estimate(dp8, h100)
    assert est.pipeline == "shard,fuse{strategy=xla}"
    assert any("program's shardings" in n and "data=8" in n for n in est.plan_notes)
    # per device: the matmuls of 1/8 of the batch
    assert est.flops < dp8.flops / 4
    grads = [k for k in est.kernels if k.name == "all_reduce{data}" and k.phase == "backward"]
    assert sum(k.collective_bytes for k in grads) == 2 * D_IN * D_HID * 4       # both gradients, f32, once each
    # each priced on the target's network as the collective model says, and no faster than moving the payload
    # once at the chip's peak bandwidth (what in-network reduction, NVLS, approaches; a ring moves 2 (n-1)/n of it)
    for k in grads:
        once = k.collective_bytes / h100.scale_up.chip_bandwidth_bytes_per_s
        assert k.comm_s == collective_time(h100, "all_reduce", k.collective_bytes, 8, 1, 8).seconds >= once
    assert est.total_comm_seconds > 0
    again = explorer.estimate(dp8, h100, "shard,fuse{strategy=xla}")
    assert again.seconds == est.seconds and again.kernels == est.kernels       # bit for bit


def test_an_unsharded_program_keeps_the_plain_pipeline(h100):
    prog = explorer.lower(_mlp_step, *_mlp_args())
    assert pl.default_pipeline(prog) == XLA
    est = explorer.estimate(prog, h100)
    assert est.pipeline == XLA and est.total_comm_seconds == 0
    assert not any(n.startswith("shard") for n in est.plan_notes)


# -- gradient collectives combined ---------------------------------------------------------------------------

def test_gradient_reductions_are_combined_up_to_the_bucket_size(dp8, h100):
    grad = D_IN * D_HID * 4

    def reductions(bucket: float):
        est = explorer.estimate(dp8, h100, f"shard{{bucket_bytes={bucket:g}}},{XLA}")
        return sorted(k.collective_bytes for k in est.kernels if k.name == "all_reduce{data}" and k.phase == "backward")

    assert reductions(30 * 2**20) == [2 * grad]           # XLA's 30 MiB: one all-reduce for both gradients
    assert reductions(2 * grad - 1) == [grad, grad]       # a bucket too small for both: one each
    assert reductions(0) == [grad, grad]
    with pytest.raises(pl.PipelineSyntaxError, match="bucket_bytes must be >= 0"):
        pl.parse("shard{bucket_bytes=-1}")


def test_a_combined_all_reduce_on_a_gpu_copies_its_members_into_one_buffer_and_out(dp8, h100):
    # XLA:GPU's all-reduce-contiguous (its plan of the 8-device Megatron MLP step: concatenate, all-reduce, one
    # slice per gradient); XLA:TPU reduces the gradients in place
    grad = D_IN * D_HID * 4

    def copies(target, bucket=30 * 2**20):
        est = explorer.estimate(dp8, target, f"shard{{bucket_bytes={bucket:g}}},{XLA}")
        return sorted((k.name, k.bytes_moved) for k in est.kernels if k.name.startswith(("copy[concatenate]",
                                                                                         "copy[slice]")))

    assert copies(h100) == [("copy[concatenate]", 4 * grad), ("copy[slice]", 2 * grad), ("copy[slice]", 2 * grad)]
    assert copies(h100, bucket=0) == []                      # nothing combined: nothing to copy
    assert copies(hw_targets.load("tpu_v5p")) == []


def test_tensor_parallel_all_reduces_on_the_critical_path_are_never_combined(h100):
    prog = _program()
    counts = []
    for bucket in (0, 2**40):
        est = explorer.estimate(prog, h100, f"shard{{mesh=model={T},tp=model,bucket_bytes={bucket}}},{XLA}")
        counts.append(sum(1 for k in est.kernels if k.name == "all_reduce{model}" and k.phase == "forward"))
    assert counts[0] == counts[1] == 4          # one per row-parallel matmul (2 layers x attention, MLP), each waited for


def _xla_fixture_step():
    """The program of tests/data/xla_gpu_sharded_mlp (tools/make_xla_fixtures.py): data=4 x model=2 MLP."""
    mesh = JaxMesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))

    def loss(w1, w2, x):
        return jnp.mean(jnp.square(jax.nn.relu(x @ w1) @ w2))

    def step(w1, w2, x):
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2, x)
        return w1 - 0.1 * g1, w2 - 0.1 * g2
    return step, (S((256, 512), BF, sharding=NamedSharding(mesh, P(None, "model"))),
                  S((512, 256), BF, sharding=NamedSharding(mesh, P("model", None))),
                  S((64, 256), BF, sharding=NamedSharding(mesh, P("data", None))))


def test_collectives_of_the_program_jax_sharded_are_xlas(h100):
    """What XLA:GPU's SPMD partitioner and combiners made of this program (the checked-in compiled fixture): our
    partitioner, reading the same shardings, inserts the same collectives, kinds, counts and bytes."""
    from pathlib import Path

    compiled = explorer.from_stablehlo(Path(__file__).resolve().parent / "data" / "xla_gpu_sharded_mlp.mlirbc")
    theirs = explorer.estimate(compiled, h100)
    fn, args = _xla_fixture_step()
    ours = explorer.estimate(explorer.lower(fn, *args), h100)

    def kinds(est):
        """kind -> (count, bytes per device) over the program's own collective ops and the inserted ones."""
        program, plan = est._program, est._plan
        works = [plan.work(program, o) for k in kernels_of(program, plan) for o in k.ops]
        works += [e.work for e in plan.extra_kernels]
        out: dict[str, tuple[int, float]] = {}
        for w in works:
            if w is not None and w.collective and w.group_size > 1:
                n, b = out.get(w.collective, (0, 0.0))
                out[w.collective] = (n + 1, b + w.collective_bytes)
        return out

    mine, xla = kinds(ours), kinds(theirs)
    assert set(mine) == set(xla) == {"all_reduce"}
    assert mine["all_reduce"][0] == xla["all_reduce"][0] == 2
    assert mine["all_reduce"][1] == pytest.approx(xla["all_reduce"][1], rel=0.05)


# -- pipelines -----------------------------------------------------------------------------------------------

def test_once_per_step_work_is_scaled_by_the_program_blocks(h100):
    """A stage updates and reduces the gradients of its own blocks: the program's once-per-step time per block
    (2 blocks here) times the stage's blocks (4 of 8), not times blocks / all blocks."""
    prog = _program(2)
    est = explorer.estimate(prog, h100, f"shard{{mesh=data=2,dp=data}},{XLA}")
    once = sum(k.seconds for k in est.kernels if k.phase == "optimizer" or k.name.startswith("all_reduce{data}")
               and k.phase == "backward") - est.hidden_comm_seconds
    pe = price_pipeline(est, h100, 2, 4, "1f1b", blocks=8, stage_stride=2, job_devices=4)
    assert pe.step_extra_s == pytest.approx(once / 2 * 4, rel=0.05)


def test_recomputation_runs_in_every_microbatch(h100):
    prog = _program(2)
    base = explorer.estimate(prog, h100, XLA)
    remat = explorer.estimate(prog, h100, f"{XLA},remat{{policy=selective}}")
    recompute = sum(k.seconds for k in remat.kernels if k.phase == "recompute")
    assert recompute > 0
    p, m, layers = 2, 8, 8
    a = price_pipeline(base, h100, p, m, blocks=layers)
    b = price_pipeline(remat, h100, p, m, blocks=layers)
    per_stage = recompute / 2 * layers / p
    assert b.stage_backward_s[0] - a.stage_backward_s[0] == pytest.approx(per_stage, rel=0.05)
    # the step grows by it in every slot of the schedule, (m + p - 1) times
    assert b.seconds - a.seconds == pytest.approx((m + p - 1) * per_stage, rel=0.1)


# -- broadcasts and gradient reductions ----------------------------------------------------------------------

def test_a_broadcast_is_made_in_the_layout_its_readers_read(h100):
    """A scalar broadcast to a batch-split value's shape (a mask's fill value) is made per device, 1/8 of it, as XLA
    makes broadcasts next to their readers: not the whole tensor on every device."""
    from passes.sharding import shard_program

    def step(params, batch):
        x = batch["x"]
        y = jnp.where(x > 0, x, jnp.full(x.shape, -1.0, x.dtype))
        return (y @ params["w"]).sum()

    prog = explorer.lower(step, {"w": S((D_IN, D_IN), jnp.float32)}, {"x": S((BATCH, D_IN), jnp.float32)})
    res = shard_program(prog, h100, mesh="data=8", dp="data")
    g = prog.graph
    made = [r for op in g.ops if op.name == "stablehlo.broadcast_in_dim" for r in op.results
            if g.values[r].shape == (BATCH, D_IN)]
    assert made
    for r in made:
        assert res.value_bytes[r] == BATCH * D_IN * 4 / 8


class _Row:
    def __init__(self, name: str, phase: str):
        self.name, self.phase, self.ops, self.layer = name, phase, (), "h_0/mlp"


def test_gradient_reductions_over_data_and_other_axes_run_once_per_step():
    """A reduction over a data axis is a weight gradient's (only contracting the batch leaves a sum over it): it is
    accumulated over the microbatches and reduced once, also when the sum spans the sequence or model axis too. A
    tensor-parallel activation reduction runs in every microbatch; under FSDP a gradient is reduce-scattered in every
    microbatch at full size."""
    from explorer.pricing.pipeline_parallel import _row_kind
    assert _row_kind(_Row("reduce_scatter{data,model}", "backward"), ("data",)) == "step"
    assert _row_kind(_Row("all_reduce{data,seq}", "backward"), ("data",)) == "step"
    assert _row_kind(_Row("all_reduce{model}", "backward"), ("data",)) == "scaled"
    assert _row_kind(_Row("all_gather{data,model}", "forward"), ("data",)) == "scaled"
    assert _row_kind(_Row("all_gather{data}", "forward"), ("data",)) == "weights"
    assert _row_kind(_Row("reduce_scatter{data}", "backward"), ("data",), fsdp=True) == "weights"


def test_a_gradient_reduced_in_two_collectives_runs_once_per_step(h100):
    """Under ZeRO-1 with context parallelism the partitioner reduce-scatters a weight gradient over data and
    all-reduces its shard over seq: two collectives of one gradient, both accumulated over the microbatches and run
    once per step (Megatron reduces gradients over dp x cp). The dK / dV reduce-scatter over seq (activations) runs
    in every microbatch, and the dropout key gathered over data does not make the step FSDP."""
    from explorer.pricing.pipeline_parallel import _row_parts
    est = explorer.estimate(_program(2), h100, "shard{mesh=data=2.seq=2.model=2,dp=data,zero1=true,tp=model,sp=true,"
                                               f"cp=seq,pins=x=data:seq+model:_}},{XLA}")
    parts = _row_parts(est, ("data",), 2)
    rows = [(k.name, k.layer, p[0]) for k, p in zip(est.kernels, parts) if k.phase == "backward"]
    grads = [r for r in rows if r[0] in ("reduce_scatter{data}", "all_reduce{seq}") and r[1].endswith("/mlp")]
    assert {r[0] for r in grads} == {"reduce_scatter{data}", "all_reduce{seq}"}
    assert all(r[2] == "once" for r in grads)
    activations = [r for r in rows if r[0] == "reduce_scatter{seq}"]
    assert activations and all(r[2] == "block" for r in activations)
    pe = price_pipeline(est, h100, 2, 4, "1f1b", blocks=8, stage_stride=8, job_devices=16)
    once = sum(k.seconds for k, p in zip(est.kernels, parts) if p[0] == "once" and k.phase == "backward")
    assert once > 0 and pe.step_extra_s > 0


def test_fp8_matmuls_run_forward_and_backward_in_8_bits():
    """TransformerEngine's recipe in the validators' model builder: all three GEMMs of a matmul (forward, input
    gradient, weight gradient) take 8-bit operands: 3 x 2 m n k matrix flops in f8, none in bf16, per matmul."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import training_models as tm

    b, d = 8, 64

    def loss(w, x):
        return tm._fp8_dense(("bd,de->be",), x, (w,))[0].astype(jnp.float32).sum()

    prog = explorer.lower(jax.value_and_grad(loss, argnums=(0, 1)), S((d, d), BF), S((b, d), BF))
    by = prog.flops_by_dtype()["matrix"]
    assert by.get("f8E4M3FN", 0) == 3 * 2 * b * d * d
    assert by.get("bf16", 0) == 0

    # projections of one input (Q, K, V) share its one 8-bit cast, as TransformerEngine's fused QKV GEMM
    def qkv(ws, x):
        return sum(y.astype(jnp.float32).sum() for y in tm._fp8_dense(("bd,de->be",) * 3, x, ws))

    prog = explorer.lower(jax.value_and_grad(qkv, argnums=(0, 1)), (S((d, d), BF),) * 3, S((b, d), BF))
    assert prog.flops_by_dtype()["matrix"].get("f8E4M3FN", 0) == 3 * 3 * 2 * b * d * d
    casts = [op for op in prog.graph.ops if op.name == "stablehlo.convert"
             and str(prog.graph.values[op.results[0]].dtype).startswith("f8")
             and tuple(prog.graph.values[op.results[0]].shape) == (b, d)]
    assert len(casts) == 1 + 3          # the input once, and each output gradient


def test_megatron_full_recompute_reruns_the_whole_block_forward():
    """Megatron-LM's full recompute re-runs each block's whole forward in the backward pass (its FLOP count,
    96 B s l h^2 = 4 x the forward's 24: forward, recompute, 2 x backward); ``jax.checkpoint`` recomputes only
    what the gradients read and leaves the second MLP matmul out (8 of the block's 24 s h^2 matrix FLOPs)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import training_models as tm

    cfg = tm.Model(vocab=256, d_model=128, n_heads=4, d_ff=512, seq=64, n_layers=2, remat="full")
    batch = 2
    block_matrix = 24 * batch * cfg.seq * cfg.d_model ** 2 + 4 * batch * cfg.seq ** 2 * cfg.d_model
    blocks = {}
    for whole in (False, True):
        fn, args = tm.train_program(dataclasses.replace(cfg, whole_block_recompute=whole), batch)
        prog = explorer.lower(fn, *args)
        matrix = {"forward": 0.0, "backward": 0.0}       # the last block's matrix FLOPs by phase
        for op in prog.graph.ops:
            phase, layer, _ = names.parse(op.name_stack)
            if layer.startswith("h_1") and phase in matrix and prog.works[op.id] is not None:
                matrix[phase] += prog.works[op.id].matrix_flops * prog.weights[op.id]
        blocks[whole] = (matrix["forward"], matrix["backward"])
    (f0, b0), (f1, b1) = blocks[False], blocks[True]
    assert f0 == f1 == block_matrix
    assert b1 == 3 * f1                                              # recompute + 2 x forward
    assert b1 - b0 == 2 * batch * cfg.seq * cfg.d_ff * cfg.d_model    # the MLP's c_proj, not recomputed by JAX

# -- the training validator ------------------------------------------------------------------------------------

def test_the_training_validator_prices_a_megatron_row_within_its_closed_form_memory(tmp_path):
    """``benchmarks/validate_training.py`` on the GPT-3 175B row of Narayanan et al. (TP 8, PP 12, DP 4, full
    recompute): the first stage's state is 16 bytes per parameter of its 8 blocks and the embedding over t = 8, its
    layer activations 2 s b h for each of the 96 layers' worth it holds (1F1B: 12 microbatches of 8 layers); both
    within 10%, and the run fits 80 GB. A row on hardware without a preset and a row without a step time are listed
    with the reason; nothing stops the run."""
    import csv
    import importlib
    import json
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    vt = importlib.import_module("validate_training")
    # two rows of ../shared/reference/validation_cases.csv, checked in so the test needs nothing outside the repo
    rows = vt.read_rows(Path(__file__).resolve().parent / "data" / "validation_cases_sample.csv", ["train_step"])
    keep = [r for r in rows if r["case_id"] == "train_megatron_t2_ptdp_174.6B_384gpu"]
    gb200 = next(r for r in rows if "GB200" in r["hardware"])
    no_step = {**keep[0], "case_id": "no_step", "derived_step_time_s": ""}
    cases = tmp_path / "cases.csv"
    with cases.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(keep[0]))
        w.writeheader()
        w.writerows([*keep, gb200, no_step])
    out = tmp_path / "out.json"
    vt.main(["--cases", str(cases), "--json", str(out)])
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    s, h, L, t, p = 2048, 12288, 96, 8, 12
    assert row["activations_vs_closed_form"] == pytest.approx(row["first_stage"]["layer_activations"]
                                                              / (2 * s * 1 * h * L) - 1, abs=1e-9)
    assert abs(row["activations_vs_closed_form"]) <= 0.10 and abs(row["state_vs_closed_form"]) <= 0.10
    block = 12 * h * h + 4 * h                                    # q, k, v, o: 4 h^2; MLP: 8 h^2; 2 LayerNorms
    embed = 51200 * h + s * h
    assert row["closed_form"]["params_on_stage"] == pytest.approx((block * L / p + embed) / t, rel=0.01)
    assert row["fits"] and row["memory_per_device_bytes"] <= 80e9
    assert row["plan"]["tp"] == t and row["plan"]["pp"] == p and row["plan"]["microbatches"] == 1536 // 4
    reasons = {x["case"]: x["reason"] for x in doc["not_priced"]}
    assert "no preset" in reasons[gb200["case_id"]] and "no step time" in reasons["no_step"]


def test_the_training_validator_searches_a_micro_batch_the_row_does_not_give():
    """A row without its micro batch size is priced at each of 1, 2, 4 that leaves a microbatch per stage, the
    fastest that fits kept and the search written in its assumptions (the row's other choices unchanged)."""
    import importlib
    import re
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    vt = importlib.import_module("validate_training")
    rows = vt.read_rows(Path(__file__).resolve().parent / "data" / "validation_cases_sample.csv", ["train_step"])
    raw = {**next(r for r in rows if r["case_id"] == "train_megatron_t2_ptdp_174.6B_384gpu"), "micro_batch": ""}
    row = vt.parse(raw)
    assert not row.micro_batch_given and row.plan.micro_batch == 1
    out = vt.predict(row)
    (said,) = [a for a in row.assumptions if a.startswith("micro batch not given: searched")]
    tried = {int(b): float(t) for b, t in re.findall(r"mb(\d) ([0-9.]+) s", said)}
    assert sorted(tried) == [1, 2, 4]
    assert row.plan.micro_batch == min(tried, key=tried.get) and out["fits"]
    assert row.plan.microbatches * row.plan.micro_batch == 1536 // 4 and row.batch == row.plan.micro_batch * 4
    assert "micro batch 1 (not given)" not in row.assumptions


def test_full_recompute_under_sequence_parallelism_gathers_activations_not_weights(h100):
    # jax.checkpoint hands a recomputed block its weights through an optimization barrier; the tensor-parallel
    # weights stay split through it, so the recomputed projections all-gather their (sequence-split) inputs as
    # the forward pass does (and the backward pass reuses them): recompute adds at most the forward pass's
    # collectives, and never relays out the attention (an all-to-all)
    def moved(prog):
        est = explorer.estimate(prog, h100, TP_SP)
        out: dict = {}
        for e in est._plan.extra_kernels:
            kind = e.name.split("{")[0]
            out[(e.phase, kind)] = out.get((e.phase, kind), 0.0) + float(e.work.collective_bytes)
        return out

    plain, full = moved(_program(2, "none")), moved(_program(2, "full"))
    phase = lambda d, ph: sum(b for (p, _), b in d.items() if p == ph)   # noqa: E731
    assert phase(full, "forward") == pytest.approx(phase(plain, "forward"))
    assert phase(full, "backward") <= phase(plain, "backward") + phase(plain, "forward") * (1 + 1e-9)
    assert ("backward", "all_to_all") not in full


def test_dropout_bits_are_drawn_per_shard_when_the_scaled_value_comes_after_them(h100):
    # dropout draws its bits before it scales the value it masks (x * 1/keep comes later in program order): the
    # bits still follow the layout of what they mask, a data-parallel split, instead of being drawn whole on
    # every device (and dragging the masked value's layout to replication)
    def step(w, x, key):
        def loss(w):
            h = jax.nn.softmax((x @ w).astype(jnp.float32), axis=-1).astype(BF)     # attention probabilities
            _, h = dropout(key, h)
            return (h @ w).astype(jnp.float32).mean()
        return jax.grad(loss)(w)

    n, d = 8 * 256, 512
    prog = explorer.lower(step, S((d, d), BF), S((n, d), BF), S((4,), jnp.uint32))
    est = explorer.estimate(prog, h100, "shard{mesh=data=8,dp=data},fuse{strategy=xla}")
    rng = [k for k in est.kernels if "rng_bit_generator" in k.name]
    assert rng and all(k.bytes_moved <= n * d / 8 * 1.01 for k in rng), [k.bytes_moved for k in rng]
