"""The step scheduler (``explorer/model/schedule.py``): causality on every example, launches that hide behind
the chip's work, overlap of asynchronous collectives by what the dependency graph allows, the critical path and
its parts, and the chrome trace drawn from the schedule.

Every expected time below is derived by hand from the target's figures (the derivation is in a comment beside it).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.model import schedule
from explorer.model_files import load_module, load_program
from passes.fusion import kernels_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def per_kernel(target):
    """The target with the host launching every kernel itself (no CUDA graphs)."""
    return dataclasses.replace(target, launch_mode="per_kernel")


# -- causality ----------------------------------------------------------------------------------------------
def assert_causal(est) -> int:
    """No row starts before what it needs has ended; returns the number of dependencies checked.

    Checked from the plan, independently of the scheduler's own graph: a kernel reads values (``kernel.reads``)
    that another kernel writes (``kernel.writes``): that kernel must have ended (two kernels of the same loop
    body depend run by run: the reader's first run after the writer's first, its last after the writer's
    last); a value a loop returns waits for every kernel inside the loop; inserted work waits for the kernel
    holding the op it follows."""
    program, plan, tl = est._program, est._plan, est.timeline
    graph = program.graph
    rows = {k.ops: i for i, k in enumerate(est.kernels) if k.ops}
    kernels = [k for k in kernels_of(program, plan) if k.ops in rows]
    writer = {v: rows[k.ops] for k in kernels for v, _ in k.writes}
    owner = {o: rows[k.ops] for k in kernels for o in k.ops}
    inside: dict[int, list[int]] = {}
    for k in kernels:
        for fr in graph.ops[k.ops[0]].frames:
            inside.setdefault(fr.op_id, []).append(rows[k.ops])
    start, end = tl.start_s, tl.end_s
    checked = 0
    # a plan whose kernels wait for each other (a cycle: no schedule can be causal) must say so; the scheduler
    # drops the fewest edges it can, in program order, and names them: each dropped edge lies on a real cycle
    # of the plan's own reads and writes
    reads_from = {rows[k.ops]: {writer[v] for v, _ in k.reads if v in writer and writer[v] != rows[k.ops]}
                  for k in kernels}
    for i, j in tl.dropped:
        assert any("dependency cycle" in n for n in tl.notes)
        seen, stack = set(), [j]
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            stack.extend(reads_from.get(x, ()))
        assert i in seen, (est.kernels[i].name, est.kernels[j].name)
    skip = set(tl.dropped)

    def one_run(i):
        return est.kernels[i].seconds / est.kernels[i].executions

    for k in kernels:
        i = rows[k.ops]
        for v, _ in k.reads:
            producer = graph.producers.get(v)
            needs = []
            if v in writer and writer[v] != i:
                needs = [writer[v]]
            elif producer is not None and graph.ops[producer].regions:
                needs = [j for j in inside.get(producer, []) if j != i]
            for j in needs:
                if (i, j) in skip:
                    continue
                fi, fj = graph.ops[k.ops[0]].frames, graph.ops[est.kernels[j].ops[0]].frames
                same_body = (fi == fj and any(f.kind == "while" for f in fi)
                             and est.kernels[i].executions == est.kernels[j].executions > 1)
                if same_body:
                    assert start[i] >= start[j] + one_run(j) * (1 - 1e-12), (est.kernels[i].name, est.kernels[j].name)
                    assert end[i] >= end[j] + one_run(i) * (1 - 1e-12), (est.kernels[i].name, est.kernels[j].name)
                else:
                    assert start[i] >= end[j], (est.kernels[i].name, "starts before", est.kernels[j].name, "ends")
                checked += 1
    made = [e for e in plan.extra_kernels if (program.weights[e.after_op] if e.after_op >= 0 else 1.0) != 0]
    extras = [i for i, k in enumerate(est.kernels) if not k.ops and k.phase != "transfer"]
    for e, i in zip(made, extras):
        j = owner.get(e.after_op)
        if j is not None:
            assert start[i] >= end[j], (est.kernels[i].name, "starts before", est.kernels[j].name, "ends")
            checked += 1
    # a stream runs one row at a time, in issue order
    for eng in range(len(schedule.ENGINES)):
        on = [i for i in tl.order if tl.engine[i] == eng]
        for a, b in zip(on, on[1:]):
            assert start[b] >= end[a]
    return checked


def _example(name: str, **extra):
    path = EXAMPLES / name.split(":")[0]
    small = load_module(path).SMALL_CONFIG
    return load_program(str(EXAMPLES / name), {**small, **extra})


CASES = [
    ("mlp.py", {}, "h100_sxm", "default"),
    ("gpt2_train.py", {}, "h100_sxm", "default"),
    ("gpt2_train.py", {"scan_layers": True}, "tpu_v5p", "default"),
    ("gpt2_train.py", {}, "mi300x", "fuse{strategy=aggressive}"),
    ("llama_infer.py:prefill", {}, "h100_sxm", "default"),
    ("llama_infer.py:decode", {"scan_layers": True}, "tpu_v5e", "default"),
    ("cnn.py", {}, "a100_sxm", "default"),
    ("remat_tradeoff.py", {}, "h100_sxm", "remat{policy=full},fuse{strategy=xla}"),
    ("scaling_what_if.py", {}, "h100_sxm", "shard{mesh=data=4,dp=data},fuse{strategy=xla}"),
    ("scaling_what_if.py", {"n_layers": 3}, "h100_sxm", "shard{mesh=data=2.model=2,fsdp=data,tp=model},fuse{strategy=xla}"),
    ("scaling_what_if.py", {}, "tpu_v5p", "fuse{strategy=xla},place{policy=greedy}"),
]


@pytest.mark.parametrize("name,config,target,pipeline", CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_every_example_trace_is_causal(name, config, target, pipeline):
    prog = _example(name, **config)
    t = hw_targets.load(target)
    for variant in (t, per_kernel(t)):
        est = explorer.estimate(prog, variant, pipeline=pipeline)
        assert assert_causal(est) > 0
        trace = est.to_chrome_trace()
        events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
        assert len(events) == len(est.kernels)
        assert trace["otherData"]["timeline_seconds"] == est.seconds
        # the parts of the step add up to it
        assert est.compute_seconds + est.memory_seconds + est.comm_seconds + est.overhead_seconds == \
            pytest.approx(est.seconds, rel=1e-9)
        assert sum(r["seconds"] for r in est.layer_rows()) == pytest.approx(est.seconds, rel=1e-9)


def test_a_fused_kernel_named_by_an_early_op_waits_for_its_late_inputs(h100):
    """A fused kernel's first op can be a forward op while it also reads a backward result (the GELU derivative
    JAX emits in the forward pass, fused with the backward matmul that needs the incoming gradient): it is issued
    after its producers, never at its first op's place."""
    prog = _example("gpt2_train.py")
    est = explorer.estimate(prog, h100)
    tl = est.timeline
    where = {r: p for p, r in enumerate(tl.order)}
    by_first = sorted((min(k.ops), i) for i, k in enumerate(est.kernels) if k.ops)
    moved = [i for p, (_, i) in enumerate(by_first) if where[i] != p]
    assert moved                                      # this program has such kernels ...
    assert assert_causal(est) > 0                     # ... and every one of them waits for its inputs


# -- launches --------------------------------------------------------------------------------------------------
def test_per_kernel_launches_hide_behind_long_kernels_and_show_on_short_ones(h100):
    # a chain of 8 dependent elementwise kernels on a 2^24-element f32 vector (no fusion: one kernel each)
    def chain(x):
        for _ in range(8):
            x = jnp.sin(x)
        return x
    n = 1 << 24
    prog = explorer.lower(chain, S((n,), jnp.float32))
    t = per_kernel(h100).replace(kernel_gap_s=1e-6)      # a GPU whose kernels follow each other 1 us apart
    est = explorer.estimate(prog, t, pipeline="fuse{strategy=none}")
    (k, *_) = est.kernels
    assert len(est.kernels) == 8 and all(r.seconds == k.seconds for r in est.kernels)
    L, run = t.launch_overhead_s, k.seconds     # one run: body (memory-bound, 128 MiB moved) + the engine gap
    assert run > L
    # the first kernel starts once issued (L); each next one is issued during the previous one and starts when
    # it ends: the step is one launch plus eight runs; the other seven launches are hidden
    assert est.seconds == pytest.approx(L + 8 * run, rel=1e-12)
    assert est.overhead_seconds == pytest.approx(L + 8 * t.kernel_gap_s, rel=1e-9)
    # the same chain on 16 elements: runs shorter than a launch, so the host sets the pace: kernel i is issued
    # at (i + 1) L and runs at once; the step ends one run after the eighth launch
    tiny = explorer.estimate(explorer.lower(chain, S((16,), jnp.float32)), t, pipeline="fuse{strategy=none}")
    short = tiny.kernels[0].seconds
    assert short < L
    assert tiny.seconds == pytest.approx(8 * L + short, rel=1e-12)
    assert tiny.bound == "overhead"
    # as one CUDA graph: one launch, then the runs back to back
    as_graph = dataclasses.replace(t, launch_mode="graph")
    graph = explorer.estimate(explorer.lower(chain, S((16,), jnp.float32)), as_graph, pipeline="fuse{strategy=none}")
    assert graph.seconds == pytest.approx(L + 8 * short, rel=1e-12)


def test_loop_runs_are_issued_one_launch_each(h100):
    # a fori loop of 100 tiny steps, one kernel per step: per kernel launch mode issues every run
    def loop(x):
        return jax.lax.fori_loop(0, 100, lambda i, y: jnp.sin(y), x)
    prog = explorer.lower(loop, S((16,), jnp.float32))
    t = per_kernel(h100).replace(kernel_gap_s=1e-6)
    est = explorer.estimate(prog, t, pipeline="fuse{strategy=none}")
    looped = [k for k in est.kernels if k.executions == 100]
    assert looped
    launches = sum(k.executions for k in est.kernels)
    # the host issues every run; the last run ends one run after its launch, and nothing can end sooner
    assert est.seconds >= launches * t.launch_overhead_s
    assert est.seconds == pytest.approx(launches * t.launch_overhead_s + est.kernels[-1].seconds
                                        / est.kernels[-1].executions, rel=1e-9)


# -- overlap of collectives -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dp_step():
    """A GPT-style train step with data parallelism over 8 devices: its gradients (~200 MB) are all-reduced in
    buckets as the backward produces them."""
    return _example("scaling_what_if.py", d_model=1024, d_ff=4096, n_layers=4, seq=512, batch=64)


DP = "shard{mesh=data=8,dp=data},fuse{strategy=xla}"


def test_gradient_all_reduces_hide_behind_the_backward_of_earlier_layers(dp_step, h100):
    est = explorer.estimate(dp_step, h100, pipeline=DP)
    assert assert_causal(est) > 0
    tl = est.timeline
    grads = [i for i, k in enumerate(est.kernels) if k.name.startswith("all_reduce") and k.phase == "backward"
             and k.overlappable]
    assert len(grads) >= 4
    on_path = set(tl.critical_path)
    # the gradients of the last layers are reduced while the backward of the first layers still runs: those
    # all-reduces run beside compute (off the critical path), their time hidden
    beside = [i for i in grads if i not in on_path
              and any(tl.engine[j] == schedule.COMPUTE and tl.start_s[j] < tl.end_s[i] and tl.end_s[j] > tl.start_s[i]
                      for j in range(len(est.kernels)))]
    assert len(beside) >= len(grads) // 2
    total = sum(est.kernels[i].comm_s * est.kernels[i].executions for i in grads)
    assert est.hidden_comm_seconds >= 0.5 * total
    assert est.comm_seconds + est.hidden_comm_seconds == pytest.approx(est.total_comm_seconds)
    # each all-reduce ends before the kernel that needs its gradient starts (the op the sharding pass names, in the
    # kernel holding it; a view launches nothing: then the first kernel after it)
    extra_rows = [i for i, k in enumerate(est.kernels) if not k.ops]
    assert len(extra_rows) == len(est._plan.extra_kernels)
    owner = {o: i for i, k in enumerate(est.kernels) for o in k.ops}
    checked = 0
    for i, extra in zip(extra_rows, est._plan.extra_kernels):
        if i not in grads or extra.before_op is None or extra.before_op < 0:
            continue
        j = owner.get(extra.before_op)
        if j is None:
            j = min((r for r, k in enumerate(est.kernels) if k.ops and min(k.ops) >= extra.before_op),
                    key=lambda r: min(est.kernels[r].ops))
        assert tl.end_s[i] <= tl.start_s[j], (extra.name, est.kernels[j].name)
        checked += 1
    assert checked >= len(grads) // 2


def test_synchronous_collectives_expose_all_their_time(dp_step, h100):
    asynchronous = explorer.estimate(dp_step, h100, pipeline=DP)
    blocking = explorer.estimate(dp_step, dataclasses.replace(h100, async_collectives=False), pipeline=DP)
    assert blocking.hidden_comm_seconds == 0.0
    # every collective now holds up the compute stream: all its time is on the critical path
    assert blocking.comm_seconds == pytest.approx(blocking.total_comm_seconds)
    assert blocking.seconds > asynchronous.seconds
    # and the overlap is what made the difference: the same rows, the same busy times
    assert [k.seconds for k in blocking.kernels] == [k.seconds for k in asynchronous.kernels]
    assert blocking.seconds - asynchronous.seconds == pytest.approx(
        asynchronous.hidden_comm_seconds + (blocking.overhead_seconds - asynchronous.overhead_seconds)
        + (blocking.compute_seconds - asynchronous.compute_seconds)
        + (blocking.memory_seconds - asynchronous.memory_seconds), rel=1e-9)


# -- the critical path, idle engines, the report -----------------------------------------------------------
def test_critical_path_idle_time_and_report(dp_step, h100):
    est = explorer.estimate(dp_step, h100, pipeline=DP)
    tl = est.timeline
    path = tl.critical_path
    assert path and tl.end_s[path[-1]] == est.seconds
    # each row on the path starts when the one before it ends, or when the host issued it (the step's launch)
    for a, b in zip(path, path[1:]):
        assert tl.start_s[b] == tl.end_s[a] or tl.start_s[b] == h100.launch_overhead_s
    busy = est.busy_seconds
    assert busy["compute"] == pytest.approx(sum(k.seconds for i, k in enumerate(est.kernels)
                                                if tl.engine[i] == schedule.COMPUTE))
    assert est.idle_seconds["compute"] == pytest.approx(est.seconds - busy["compute"])
    assert est.idle_seconds["collectives"] > 0
    text = est.table()
    assert "hidden behind other work" in text and "engines idle" in text and "critical path" in text
    d = est.to_dict()
    assert d["exposed_comm_seconds"] == est.comm_seconds and d["hidden_comm_seconds"] == est.hidden_comm_seconds
    assert len(d["schedule"]) == len(est.kernels)
    trace = est.to_chrome_trace()
    crit = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["args"]["critical"]]
    assert [e["args"]["row"] for e in sorted(crit, key=lambda e: e["ts"])] == list(path)


def test_same_program_same_schedule_bit_for_bit(dp_step, h100):
    a = explorer.estimate(dp_step, h100, pipeline=DP)
    b = explorer.estimate(dp_step, h100, pipeline=DP)
    assert a.timeline.start_s == b.timeline.start_s and a.timeline.critical_path == b.timeline.critical_path
    assert a.to_dict() == b.to_dict()


def test_launch_mode_is_validated():
    with pytest.raises(hw_targets.TargetError, match=r"launch_mode.*'per_kernel', 'graph'.*'eager'"):
        dataclasses.replace(hw_targets.load("h100_sxm"), launch_mode="eager")
