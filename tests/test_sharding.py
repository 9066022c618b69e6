"""Sharding: reading JAX's shardings back, strategies, propagation, the collectives inserted and per-device work.

The two-layer MLP below is small enough to derive every collective by hand:
x[B, D] @ fc1[D, H] -> relu -> @ fc2[H, C], mean squared error against y[B, C], SGD update, all f32.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import explorer
from passes.sharding import read as sharding_read
from passes.sharding import Shard, shard_program
from passes.sharding.reshard import reshard
from passes.sharding.spec import Mesh, Spec, parse_hlo_sharding, parse_mesh, parse_sdy_sharding
from passes.sharding.strategies import Strategy, layouts, parse_mesh_text, parse_pins, path_of

S = jax.ShapeDtypeStruct
B, D, H, C = 64, 32, 16, 8
F32 = 4


def _loss(params, x, y):
    h = jax.nn.relu(x @ params["fc1"]["kernel"])
    return jnp.mean((h @ params["fc2"]["kernel"] - y) ** 2)


def train_step(params, batch):
    loss, g = jax.value_and_grad(_loss)(params, batch["x"], batch["y"])
    return jax.tree.map(lambda p, gp: p - 0.1 * gp, params, g), loss


@pytest.fixture(scope="module")
def mlp():
    params = {"fc1": {"kernel": S((D, H), jnp.float32)}, "fc2": {"kernel": S((H, C), jnp.float32)}}
    batch = {"x": S((B, D), jnp.float32), "y": S((B, C), jnp.float32)}
    return explorer.lower(train_step, params, batch)


def _summary(res):
    return sorted((c.kind, c.payload_bytes, c.group_size, c.phase) for c in res.collectives)


# -- collectives of the three classic strategies, by hand ----------------------------------------

def test_data_parallel_all_reduces_each_gradient_once(mlp):
    res = shard_program(mlp, mesh="data=4", dp="data")
    # dW1 = D*H*4 bytes, dW2 = H*C*4 bytes, and the scalar loss (its mean over a split batch)
    assert _summary(res) == sorted([("all_reduce", D * H * F32, 4, "backward"), ("all_reduce", H * C * F32, 4, "backward"),
                                    ("all_reduce", 4.0, 4, "forward")])
    by_value = {c.payload_bytes: c for c in res.collectives}
    # dW2 is computed first in the backward pass: its reduction overlaps the dW1 matmul; dW1's has nothing left to hide behind
    assert by_value[H * C * F32].overlappable and not by_value[D * H * F32].overlappable


def test_fsdp_gathers_weights_per_pass_and_reduce_scatters_gradients(mlp):
    res = shard_program(mlp, mesh="data=4", fsdp="data")
    assert _summary(res) == sorted([
        ("all_gather", D * H * F32, 4, "forward"),     # fc1 for the forward matmul (payload = the gathered weight)
        ("all_gather", H * C * F32, 4, "forward"),     # fc2 for the forward matmul
        ("all_gather", H * C * F32, 4, "backward"),    # fc2 again for dh = dy @ fc2^T (ZeRO-3 re-gathers)
        ("reduce_scatter", D * H * F32, 4, "backward"),   # dW1 back to its shards (payload = the full input)
        ("reduce_scatter", H * C * F32, 4, "backward"),
        ("all_reduce", 4.0, 4, "forward"),
    ])
    first = next(c for c in res.collectives if c.kind == "all_gather" and c.payload_bytes == D * H * F32)
    assert not first.overlappable     # the very first op needs it: nothing to prefetch behind


def test_megatron_tensor_parallel_all_reduces_the_row_parallel_output(mlp):
    res = shard_program(mlp, mesh="model=4", tp="model")
    # fc1 column-parallel, fc2 row-parallel: one all-reduce of the [B, C] partial output, in the forward pass
    assert _summary(res) == [("all_reduce", B * C * F32, 4, "forward")]
    (ar,) = res.collectives
    assert not ar.overlappable
    specs = {mlp.graph.input_names[i]: res.specs[v] for i, v in enumerate(mlp.graph.inputs)}
    assert specs["params['fc1']['kernel']"] == Spec(((), ("model",)))
    assert specs["params['fc2']['kernel']"] == Spec((("model",), ()))


def test_per_device_flops_of_a_sharded_matmul(mlp):
    res = shard_program(mlp, mesh="data=2.model=4", dp="data", tp="model")
    first = next(op for op in mlp.graph.ops if op.name == "stablehlo.dot_general")
    w = res.works[first.id]
    assert w.matrix_flops == 2 * (B // 2) * D * (H // 4)          # batch over 2, columns over 4
    assert (w.gemm.m, w.gemm.n, w.gemm.k) == (B // 2, H // 4, D)
    assert w.bytes_read == (B // 2 * D + D * H // 4) * F32
    total = sum(res.works[op.id].matrix_flops for op in mlp.graph.ops if op.name == "stablehlo.dot_general")
    assert total == pytest.approx(mlp.matrix_flops / 8)


def test_the_pass_puts_per_device_work_and_collectives_in_the_estimate(mlp):
    import hw_targets

    est = explorer.estimate(mlp, hw_targets.load("h100_sxm"),
                            "shard{mesh=data=4,dp=data,bucket_bytes=0},fuse{strategy=xla}")
    assert est.flops == pytest.approx(mlp.flops / 4, rel=0.05)     # elementwise on replicated weights stays whole
    rows = [k for k in est.kernels if k.name.startswith("all_reduce")]
    assert sorted(k.collective_bytes for k in rows) == [4.0, H * C * F32, D * H * F32]
    assert all(k.comm_s > 0 for k in rows)
    # by default the two gradient reductions (independent, read by the update only) are one, as XLA combines them;
    # the loss's all-reduce, read in the forward pass, is not
    est = explorer.estimate(mlp, hw_targets.load("h100_sxm"), "shard{mesh=data=4,dp=data},fuse{strategy=xla}")
    rows = [k for k in est.kernels if k.name.startswith("all_reduce")]
    assert sorted(k.collective_bytes for k in rows) == [4.0, (H * C + D * H) * F32]


# -- reading what JAX wrote ----------------------------------------------------------------------

def _mesh():
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _constrained(mesh):
    def f(w, x):
        y = jax.lax.with_sharding_constraint(x @ w, NamedSharding(mesh, P("data", "model")))
        return jnp.tanh(y).sum()
    w = S((16, 32), jnp.float32, sharding=NamedSharding(mesh, P(None, "model")))
    x = S((8, 16), jnp.float32, sharding=NamedSharding(mesh, P("data", None)))
    return f, w, x


def test_shardy_shardings_are_read_back_exactly():
    mesh = _mesh()
    f, w, x = _constrained(mesh)
    prog = explorer.lower(f, w, x)
    found = sharding_read.read(prog.graph)
    assert found.form == "sdy"
    assert found.mesh == Mesh((("data", 4), ("model", 2)))
    assert found.inputs == {prog.graph.inputs[0]: Spec(((), ("model",))), prog.graph.inputs[1]: Spec((("data",), ()))}
    (constraint,) = found.constraints.values()
    assert constraint == Spec((("data",), ("model",)))
    for v, arg in zip(prog.graph.inputs, (w, x)):
        assert found.inputs[v].local_shape(arg.shape, found.mesh) == arg.sharding.shard_shape(arg.shape)


def test_gspmd_shardings_are_read_back_exactly():
    mesh = _mesh()
    f, w, x = _constrained(mesh)
    jax.config.update("jax_use_shardy_partitioner", False)
    try:
        prog = explorer.lower(f, w, x)
    finally:
        jax.config.update("jax_use_shardy_partitioner", True)
    found = sharding_read.read(prog.graph)
    assert found.form == "mhlo"
    for v, arg in zip(prog.graph.inputs, (w, x)):
        hlo = arg.sharding._to_xla_hlo_sharding(len(arg.shape))
        tiling = parse_hlo_sharding(str(hlo), len(arg.shape))
        dims = list(hlo.tile_assignment_dimensions())
        assert list(tiling.tiles) == dims[:len(arg.shape)]
        assert list(tiling.devices) == list(hlo.tile_assignment_devices())
        assert found.inputs[v].local_shape(arg.shape, found.mesh) == arg.sharding.shard_shape(arg.shape)
    # the rebuilt mesh has JAX's two axes (major 4, minor 2), and the constraint splits both dims
    assert found.mesh.axes == (("a0", 4), ("a1", 2))
    (constraint,) = found.constraints.values()
    assert constraint == Spec((("a0",), ("a1",)))


def test_a_program_sharded_by_jax_is_partitioned_from_its_own_annotations():
    mesh = _mesh()
    f, w, x = _constrained(mesh)
    prog = explorer.lower(f, w, x)
    res = Shard().analyse(prog)
    dot = next(op for op in prog.graph.ops if op.name == "stablehlo.dot_general")
    assert res.specs[dot.results[0]] == Spec((("data",), ("model",)))
    assert res.works[dot.id].matrix_flops == 2 * 8 * 16 * 32 / 8
    # the sum over everything: a partial over both axes, all-reduced for the scalar output
    assert [(c.kind, c.group_size) for c in res.collectives] == [("all_reduce", 8)]


def test_parsers_name_the_bad_input():
    with pytest.raises(ValueError, match="not a Shardy"):
        parse_sdy_sharding("#sdy.sharding<nope", {})
    with pytest.raises(KeyError, match="@other"):
        parse_sdy_sharding('#sdy.sharding<@other, [{"data"}]>', {"mesh": Mesh((("data", 2),))})
    with pytest.raises(ValueError, match="not name=size"):
        parse_mesh_text("data4")
    with pytest.raises(ValueError, match="PATTERN=DIMS"):
        parse_pins("nothing")
    with pytest.raises(ValueError, match="need a mesh"):
        Shard(dp="data")
    with pytest.raises(KeyError, match="no mesh axis 'model'"):
        Shard(mesh="data=4", tp="model")
    assert parse_mesh('#sdy.mesh<["a"=2, "b"=4]>') == Mesh((("a", 2), ("b", 4)))


# -- layouts and resharding ----------------------------------------------------------------------

def test_reshard_steps_and_bytes():
    mesh = Mesh((("data", 4), ("model", 2)))
    shape, isz = (8, 16), 4                     # 512 bytes whole
    rep = Spec(((), ()))
    (ar,) = reshard(shape, isz, Spec(((), ()), ("data",)), rep, mesh)
    assert (ar.kind, ar.payload_bytes, ar.group_size, ar.group_stride) == ("all_reduce", 512, 4, 2)
    (rs,) = reshard(shape, isz, Spec(((), ()), ("data",)), Spec((("data",), ())), mesh)
    assert (rs.kind, rs.payload_bytes, rs.out_bytes) == ("reduce_scatter", 512, 128)
    (ag,) = reshard(shape, isz, Spec(((), ("model",))), rep, mesh)
    assert (ag.kind, ag.payload_bytes, ag.in_bytes, ag.group_size, ag.group_stride) == ("all_gather", 512, 256, 2, 1)
    (a2a,) = reshard(shape, isz, Spec((("data",), ())), Spec(((), ("data",))), mesh)
    assert (a2a.kind, a2a.payload_bytes, a2a.out_bytes) == ("all_to_all", 128, 128)
    assert reshard(shape, isz, rep, Spec((("data",), ("model",))), mesh) == []     # slicing is local


def test_strategy_layouts_by_name():
    prog = explorer.lower(lambda p, batch: (batch["tokens"] @ p["mlp"]["c_fc"]["kernel"]) @ p["mlp"]["c_proj"]["kernel"],
                          {"mlp": {"c_fc": {"kernel": S((32, 128), jnp.float32)},
                                   "c_proj": {"kernel": S((128, 32), jnp.float32)}}},
                          {"tokens": S((8, 32), jnp.float32)})
    mesh = Mesh((("data", 2), ("model", 4)))
    lay = layouts(prog.graph, mesh, Strategy(dp=("data",), fsdp=(), tp=("model",)))
    by_name = {n: lay.inputs.get(v) for n, v in zip(prog.graph.input_names, prog.graph.inputs)}
    assert by_name["p['mlp']['c_fc']['kernel']"] == Spec(((), ("model",)))      # column-parallel
    assert by_name["p['mlp']['c_proj']['kernel']"] == Spec((("model",), ()))    # row-parallel
    assert by_name["batch['tokens']"] == Spec((("data",), ()))
    zero = layouts(prog.graph, Mesh((("data", 8),)), Strategy(fsdp=("data",)))
    assert {n: zero.inputs[v] for n, v in zip(prog.graph.input_names, prog.graph.inputs)}[
        "p['mlp']['c_fc']['kernel']"] == Spec(((), ("data",)))                  # the largest dim that divides
    pinned = layouts(prog.graph, mesh, Strategy(pins=parse_pins("*c_fc*=data:model")))
    assert pinned.inputs[prog.graph.inputs[0]] == Spec((("data",), ("model",)))
    assert path_of("opt_state[1][0].mu['h_0']['mlp']['kernel']") == ("h_0", "mlp", "kernel")


# -- a transformer: Megatron TP, sequence parallelism, context parallelism ----------------------

@pytest.fixture(scope="module")
def gpt():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import gpt2_train

    fn, args = gpt2_train.program(vocab_size=256, n_ctx=64, d_model=64, n_heads=4, n_layers=2, d_ff=256,
                                  batch=4, seq=64)
    return explorer.lower(fn, *args)


def _forward_kinds(res, kind):
    return [c for c in res.collectives if c.kind == kind and c.phase == "forward" and c.payload_bytes > 4096]


def test_megatron_blocks_all_reduce_twice_per_layer_forward(gpt):
    res = shard_program(gpt, mesh="model=4", tp="model")
    act = 4 * 64 * 64 * 2                         # [batch, seq, d_model] bf16
    big = [c for c in _forward_kinds(res, "all_reduce") if c.payload_bytes == act]
    # attention output and MLP output of 2 layers, plus the vocab-parallel embedding lookup
    assert len(big) == 5
    assert not any(c.kind == "all_gather" and c.payload_bytes >= act for c in res.collectives if c.phase == "forward")


def test_sequence_parallel_trades_all_reduce_for_reduce_scatter_and_all_gather(gpt):
    act = 4 * 64 * 64 * 2
    sp = shard_program(gpt, mesh="model=4", tp="model", sp=True)
    rs = [c for c in _forward_kinds(sp, "reduce_scatter") if c.payload_bytes == act]
    ag = [c for c in _forward_kinds(sp, "all_gather") if c.payload_bytes == act]
    assert len(rs) == 5 and len(ag) == 5          # 4 block outputs + embedding; 4 block inputs + the LM head input
    assert not [c for c in _forward_kinds(sp, "all_reduce") if c.payload_bytes == act]


def test_context_parallel_gathers_keys_and_values(gpt):
    res = shard_program(gpt, mesh="seq=4", cp="seq")
    k = 4 * 64 * 4 * 16 * 2                       # K: [batch, seq, heads, head_dim] bf16, gathered
    v = 4 * 64 * 4 * 16 * 4                       # V: flax's attention reads it in f32 (force_fp32_for_softmax)
    fwd = sorted(c.payload_bytes for c in res.collectives if c.kind == "all_gather" and c.phase == "forward")
    assert fwd == [k, k, v, v]                    # K and V of 2 layers, nothing else
    assert all(c.group_size == 4 for c in res.collectives)


def test_sharding_is_deterministic(gpt):
    a = shard_program(gpt, mesh="data=2.model=4", dp="data", tp="model")
    b = shard_program(gpt, mesh="data=2.model=4", dp="data", tp="model")
    assert a.collectives == b.collectives and dict(a.specs) == dict(b.specs)


# -- pipeline parallelism ------------------------------------------------------------------------

from explorer.pricing.pipeline_parallel import block_of, bubble_fraction, price_pipeline, schedule_seconds  # noqa: E402


@pytest.mark.parametrize("p,m", [(4, 8), (2, 1), (8, 32)])
def test_pipeline_bubble_for_gpipe_and_1f1b(p, m):
    tf, tb = 1.0, 2.0
    for sched in ("gpipe", "1f1b"):
        st = schedule_seconds([tf] * p, [tb] * p, m, sched)
        assert st.seconds == pytest.approx((m + p - 1) * (tf + tb))
        assert st.bubble_seconds == pytest.approx((p - 1) * (tf + tb))
        assert st.bubble_fraction == pytest.approx((p - 1) / (m + p - 1)) == pytest.approx(bubble_fraction(p, m))


def test_interleaving_divides_the_bubble_and_multiplies_the_transfers():
    p, m, v = 4, 8, 2
    st = schedule_seconds([1.0] * p, [2.0] * p, m, "interleaved", v)
    assert st.seconds == pytest.approx(m * 3.0 + (p - 1) * 3.0 / v)
    assert st.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1))
    with_p2p = schedule_seconds([1.0] * p, [2.0] * p, m, "interleaved", v, p2p_s=0.1)
    assert with_p2p.p2p_exposed_seconds == pytest.approx(2 * (p - 1) * v * 0.1)
    assert with_p2p.seconds == pytest.approx(st.seconds + 2 * (p - 1) * v * 0.1)


def test_the_slowest_stage_paces_the_pipeline():
    st = schedule_seconds([1.0, 2.0], [2.0, 4.0], 4, "1f1b")
    assert st.seconds == pytest.approx(4 * 6.0 + 3.0)        # steady state at the slow stage, the other once
    with pytest.raises(ValueError, match="divisible by stages"):
        schedule_seconds([1.0] * 4, [1.0] * 4, 6, "interleaved", 2)
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zigzag'"):
        schedule_seconds([1.0], [1.0], 1, "zigzag")


def test_price_pipeline_of_one_stage_is_the_estimate(gpt):
    import hw_targets

    h100 = hw_targets.load("h100_sxm")
    est = explorer.estimate(gpt, h100, "shard{mesh=model=2,tp=model},fuse{strategy=xla}")
    one = price_pipeline(est, h100, 1, 1)
    assert one.seconds == pytest.approx(est.seconds, rel=1e-9)
    two = price_pipeline(est, h100, 2, 8, blocks=2, stage_stride=2, job_devices=4)
    assert two.p2p_bytes == 4 * 64 * 64 * 2 / 1           # a [batch, seq, d_model] bf16 residual crosses each boundary
    assert two.bubble_fraction > 0 and two.memory_per_device_bytes < one.memory_per_device_bytes * 8
    assert block_of("GPT2/h_3/mlp") == 3 and block_of("GPT2/ln_f") is None


def test_a_sum_kept_split_over_some_of_its_axes_is_reduce_scattered_before_the_rest_is_all_reduced():
    """A gradient summed over data x fsdp and stored split over fsdp: the reduce-scatter over fsdp comes first and
    the all-reduce over data moves only the 1/fsdp shard (XLA's decomposition), not the whole tensor."""
    from passes.sharding.reshard import reshard
    from passes.sharding.spec import Spec
    from passes.sharding.strategies import parse_mesh_text

    mesh = parse_mesh_text("data=4.fsdp=2")
    whole = 8 * 16 * 4
    steps = reshard((8, 16), 4, Spec(((), ()), ("data", "fsdp")), Spec((("fsdp",), ())), mesh)
    assert [(s.kind, s.axes) for s in steps] == [("reduce_scatter", ("fsdp",)), ("all_reduce", ("data",))]
    assert steps[0].payload_bytes == whole and steps[0].out_bytes == whole / 2
    assert steps[1].payload_bytes == whole / 2


def test_a_layout_pickles_without_its_hash():
    import pickle

    from passes.sharding.spec import Spec
    s = Spec((("data",), ()), ("model",))
    hash(s)                                   # kept on the object
    back = pickle.loads(pickle.dumps(s))
    assert back == s and hash(back) == hash(s) and "_hash" not in pickle.loads(pickle.dumps(s)).__dict__
    assert {s: 1}[back] == 1
