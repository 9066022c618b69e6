"""Sweeps of sharded, pipelined training steps: the partitioner's decisions certified once and checked on every
variant as arrays (``passes.decisions``), the pipelined step priced as arrays; every row equal to the scalar
``price_pipeline(explorer.estimate(...))`` on its variant, bit for bit."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import explorer
import hw_targets
from explorer.model.variants import ArrayTarget, Sections
from explorer.pricing.pipeline_parallel import price_pipeline
from passes import pipeline as pl
from passes.decisions import Trace
from passes.plan import Plan

sw = importlib.import_module("explorer.workflows.sweep")
S = jax.ShapeDtypeStruct
HID, SEQ, MB = 256, 128, 8


def _block(p, x):
    h = jax.nn.gelu(x @ p["up"].astype(jnp.bfloat16))
    return x + h @ p["down"].astype(jnp.bfloat16)


@pytest.fixture(scope="module")
def step():
    """Two identical MLP blocks ``h_0``, ``h_1`` and AdamW: a training step with repeated blocks to pipeline."""
    tx = optax.adamw(1e-4)

    def loss(params, x):
        for i in range(2):
            with jax.named_scope(f"h_{i}"):
                x = _block(params[f"h_{i}"], x)
        return x.astype(jnp.float32).mean()

    def train(params, opt_state, x):
        value, grads = jax.value_and_grad(loss)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    params = {f"h_{i}": {"up": S((HID, 4 * HID), jnp.float32), "down": S((4 * HID, HID), jnp.float32)}
              for i in range(2)}
    return explorer.lower(train, params, jax.eval_shape(tx.init, params), S((MB, SEQ, HID), jnp.bfloat16))


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


PIPE = dict(stages=4, microbatches=16, schedule="1f1b", blocks=16, stage_stride=8, job_devices=32)


def _expected(program, target, passes, options) -> dict:
    est = explorer.estimate(program, target, passes)
    pe = price_pipeline(est, target, **options)
    return {"seconds": pe.seconds, "bubble_seconds": pe.bubble_seconds, "step_extra_seconds": pe.step_extra_s,
            "p2p_exposed_seconds": pe.schedule_time.p2p_exposed_seconds,
            "memory_per_device_bytes": pe.memory_per_device_bytes, "microbatch_seconds": est.seconds,
            "microbatch_comm_seconds": est.comm_seconds, "bubble_fraction": pe.bubble_fraction,
            "stage_seconds": max(f + b for f, b in zip(pe.stage_forward_s, pe.stage_backward_s)),
            "fits_in_memory": pe.memory_per_device_bytes <= target.main_memory.capacity_bytes}


def _check_rows(res, program, base, passes, options, every: int = 1) -> None:
    for i in range(0, len(res), every):
        row = res.row(i)
        target = base.replace(**{k: row[k] for k in res.knobs})
        for col, want in _expected(program, target, passes, options).items():
            got = row[col]
            if isinstance(want, bool):
                assert got == want, (i, col)
            else:
                assert float(got).hex() == float(want).hex(), f"variant {i}: {col} {got!r} != {want!r}"


TP = "shard{mesh=data=2.model=4,dp=data,tp=model},fuse{strategy=xla}"
FSDP = "shard{mesh=data=8,fsdp=data},fuse{strategy=xla}"


def test_a_pipelined_sweep_equals_price_pipeline_on_each_variant(step, h100):
    k = h100.knobs()
    grid = {"memory.hbm.bandwidth_bytes_per_s": [k["memory.hbm.bandwidth_bytes_per_s"] * f for f in (0.5, 1, 2)],
            "scale_out.chip_bandwidth_bytes_per_s": [k["scale_out.chip_bandwidth_bytes_per_s"] * f for f in (0.5, 2)],
            "compute.matrix_flops_per_s.bf16": [k["compute.matrix_flops_per_s.bf16"] * f for f in (1, 2)]}
    res = explorer.sweep(step, h100, grid, TP, pipeline_parallel=PIPE)
    assert "certified" in res.method and res.pipelined
    _check_rows(res, step, h100, TP, PIPE)
    # the same on the per-variant path (one process)
    serial = explorer.sweep(step, h100, grid, TP, pipeline_parallel=PIPE, backend="process", workers=1)
    for col in ("seconds", "bubble_seconds", "memory_per_device_bytes", "microbatch_bound"):
        assert list(serial.column(col)) == list(res.column(col)), col
    # faster HBM never slows the step, a slower scale-out network never speeds it up
    s = res.column("seconds").reshape(3, 2, 2)
    assert np.all(np.diff(s, axis=0) <= 0) and np.all(s[:, 1] <= s[:, 0])
    assert "bubble" in res.table(top=3) and "mem/device" in res.table(top=3)


def test_an_unsharded_pipelined_sweep_is_vectorised(step, h100):
    grid = {"memory.hbm.bandwidth_bytes_per_s": [2e12, 3.35e12, 5e12]}
    options = dict(stages=2, microbatches=8, schedule="interleaved", virtual=2, blocks=8)
    res = explorer.sweep(step, h100, grid, "fuse{strategy=xla}", pipeline_parallel=options)
    assert res.method == "vectorised"
    _check_rows(res, step, h100, "fuse{strategy=xla}", options)


def test_certificates_split_the_variants_where_the_partitioner_decides_otherwise(step, h100):
    """Under FSDP the partitioner's choices turn on the scale-up network's latency (gathering a weight once vs
    many small collectives): the certified sweep runs the passes again exactly where a decision changes, and agrees
    with running them once per distinct knob value."""
    k = h100.knobs()
    grid = {"scale_up.latency_s": [k["scale_up.latency_s"] * f for f in (0.1, 1, 10, 100, 1000)],
            "memory.hbm.bandwidth_bytes_per_s": [k["memory.hbm.bandwidth_bytes_per_s"] * f for f in (0.5, 1)]}
    passes = pl.parse(FSDP)
    variants = sw.grid_variants(h100, grid)
    plans = []
    for v in variants:
        d = sw._decisions(pl.run(passes, step, h100.replace(**v)))
        if d not in plans:
            plans.append(d)
    assert len(plans) > 1          # the premise: some decision does change over this grid
    res = explorer.sweep(step, h100, grid, FSDP, pipeline_parallel=PIPE)
    assert "certified" in res.method and f"{len(plans)} distinct plans" in res.method
    _check_rows(res, step, h100, FSDP, PIPE)
    knob_cols = {n: np.array([v[n] for v in variants]) for n in grid}
    read = sorted(grid)
    by_key, _, _ = sw._grouped(step, h100, passes, variants, read, knob_cols, h100.knobs(), PIPE)
    for col in ("seconds", "microbatch_seconds", "memory_per_device_bytes"):
        assert by_key[col].tobytes() == res.column(col).tobytes(), col


def test_a_certificate_holds_where_it_was_made_and_only_where_its_comparisons_do(step, h100):
    shard = pl.parse(FSDP)[0]
    plan, cert = shard.run_certified(step, Plan(), h100)
    assert plan == shard.run(step, Plan(), h100)          # tracing changes nothing it decides
    assert len(cert) > 0 and not cert.broken
    assert cert.holds(h100, 1).all()
    lat = h100.knobs()["scale_up.latency_s"]
    cols = {"scale_up.latency_s": np.array([lat, lat * 1.01, lat * 1000])}
    at = ArrayTarget(Sections(h100, cols, 3))
    far = h100.replace(**{"scale_up.latency_s": lat * 1000})
    assert sw._decisions(shard.run(step, Plan(), far)) != sw._decisions(plan)     # the premise
    assert list(cert.holds(at, 3)) == [True, True, False]


def test_traced_costs_record_each_comparison_and_recompute_it_per_variant():
    figures = {"a": np.array([1.0, 3.0, 2.0]), "b": 2.0}
    trace = Trace(lambda target, spec: target[spec])
    a, b = trace.leaf("a", 1.0), trace.leaf("b", 2.0)
    total = 0 + a + 0.5 * b                 # 2.0
    assert isinstance(total, float) and total == 2.0
    assert (a < b) and not (total > 2.0)
    cert = trace.certificate()
    # a < b holds for variants 0 only (1 < 2, 3 > 2, 2 == 2); total > 2 is false for 0 and 2 (2, 4, 3)
    assert list(cert.holds(figures, 3)) == [True, False, False]
    broken = Trace(lambda target, spec: 0.0)
    x = broken.leaf("x", 1.5)
    _ = x ** 2                               # not recorded: nothing can be certified
    assert broken.broken and not broken.certificate().holds({}, 2).any()


def test_pipeline_options_are_checked_by_name(step, h100):
    with pytest.raises(sw.SweepError, match="microbatchs.*did you mean 'microbatches'"):
        explorer.sweep(step, h100, {"memory.hbm.bandwidth_bytes_per_s": [2e12]}, None,
                       pipeline_parallel=dict(stages=2, microbatchs=4))
    with pytest.raises(sw.SweepError, match="needs 'microbatches'"):
        explorer.sweep(step, h100, {"memory.hbm.bandwidth_bytes_per_s": [2e12]}, None,
                       pipeline_parallel=dict(stages=2))
    bad = [(dict(stages=0, microbatches=4), "stages must be an int >= 1, got 0"),
           (dict(stages=2, microbatches=4, schedule="zb"), "schedule must be one of .*got 'zb'"),
           (dict(stages=2, microbatches=3, schedule="interleaved", virtual=2), "divisible by stages"),
           (dict(stages=2, microbatches=4, virtual=2), "virtual=2 needs schedule 'interleaved'"),
           (dict(stages=2, microbatches=4, microbatch_scale=0.0), "microbatch_scale must be a positive number")]
    for options, message in bad:
        with pytest.raises(sw.SweepError, match=message):
            explorer.sweep(step, h100, {"memory.hbm.bandwidth_bytes_per_s": [2e12]}, None, pipeline_parallel=options)


def test_sensitivity_of_a_sharded_step_certifies_the_partitioner_once(step, h100):
    """The knobs the sharding pass reads are priced with its certified decisions (in this process), each figure
    equal to the per-variant estimates' finite difference."""
    knobs = ["memory.hbm.bandwidth_bytes_per_s", "scale_up.chip_bandwidth_bytes_per_s"]
    s = explorer.sensitivity(step, h100, pipeline=TP, knobs=knobs)
    for knob in knobs:
        v = h100.knobs()[knob]
        lo = explorer.estimate(step, h100.replace(**{knob: v * 0.99}), TP).seconds
        hi = explorer.estimate(step, h100.replace(**{knob: v * 1.01}), TP).seconds
        assert s.elasticity(knob) == pytest.approx(np.log(hi / lo) / np.log(1.01 / 0.99), rel=1e-12), knob


def test_a_network_knob_the_model_does_not_read_is_said_so(step, h100):
    """H100's NVSwitch and its scale-out network are priced at the chip's total bandwidth: sweeping a link's
    bandwidth moves nothing, and the sweep warns instead of returning identical rows silently; sensitivity notes it."""
    bw = h100.knobs()["scale_out.link_bandwidth_bytes_per_s"]
    with pytest.warns(sw.SweepWarning, match="scale_out.link_bandwidth_bytes_per_s moves nothing.*chip_bandwidth"):
        res = explorer.sweep(step, h100, {"scale_out.link_bandwidth_bytes_per_s": [bw, 2 * bw]}, TP,
                             pipeline_parallel=PIPE)
    assert res.column("seconds")[0] == res.column("seconds")[1]
    grid = {"scale_out.chip_bandwidth_bytes_per_s": [bw, 2 * bw]}
    # the figure the model reads: no warning, and the pipeline's stage-to-stage sends across nodes go faster
    res = explorer.sweep(step, h100, grid, TP, pipeline_parallel=PIPE)
    assert res.column("seconds")[1] < res.column("seconds")[0]
    s = explorer.sensitivity(step, h100, pipeline=TP, knobs=["scale_up.link_bandwidth_bytes_per_s"])
    assert "not read on this target" in s.table()
    tpu = hw_targets.load("tpu_v5p")         # a torus: priced per link, the chip figure unread
    from explorer.model.collectives import unread_network_knobs
    assert "scale_up.chip_bandwidth_bytes_per_s" in unread_network_knobs(tpu)
    assert "scale_up.link_bandwidth_bytes_per_s" not in unread_network_knobs(tpu)
