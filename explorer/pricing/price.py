"""Pricing: a counted program under a plan, on a target -> an ``Estimate``.

``estimate`` runs a pass pipeline and prices the plan it makes; ``price`` prices a plan already
made. Each kernel is timed by the cost model (``explorer.model.timing``) with the bytes it moves in
each memory level (``explorer.model.traffic``); inserted work (collectives, offload copies) and a
placement's transfers are rows of their own; peak memory per level comes from liveness under the
plan (``explorer.model.memory``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import hw_targets
from passes import pipeline as pl
from passes.fusion import kernels_of
from passes.plan import Plan

from ..costs import Program
from ..graph import names
from ..graph.gcpause import paused_gc
from ..model import schedule, timing
from ..model.memory import level_peaks, main_memory_liveness
from ..model.traffic import link_copy_time, traffic_by_level, transfer_time
from .estimate import Estimate, KernelRow, UnknownOpsError


def estimate(program: Program, target: Any, pipeline: str | Sequence[Any] | None = "default",
             strict: bool = False) -> Estimate:
    """Price ``program`` on ``target`` after running ``pipeline``.

    **Arguments**
    - ``target``: a ``hw_targets.Target`` or a preset name / TOML path.
    - ``pipeline``: pass pipeline text (``"fuse{strategy=xla}"``), a list of pass
      instances, ``"default"`` (``explorer.DEFAULT_PIPELINE``) or ``None``/``""`` (no passes:
      every op its own kernel, everything in main memory).
    - ``strict``: raise ``UnknownOpsError`` if any op has no cost rule.

    **Returns** an ``Estimate``.
    """
    with paused_gc():
        target, passes, plan = _planned(program, target, pipeline)
        return price(program, target, plan, pipeline_text=pl.to_text(passes), strict=strict)


def _planned(program: Program, target: Any, pipeline) -> tuple[Any, list[Any], Any]:
    """(the target, the resolved passes, the plan they make): what ``estimate`` and ``step_seconds`` start from."""
    target = hw_targets.as_target(target)      # a preset name or a TOML path
    if pipeline == "default":
        pipeline = pl.default_pipeline(program)
    passes = pl.resolve(pipeline or None)
    return target, passes, pl.run(passes, program, target)


def check_known(program: Program) -> None:
    """``UnknownOpsError`` naming every op without a cost rule (``strict=True``)."""
    if program.unknown_ops:
        raise UnknownOpsError(f"{program.graph.name}: no cost rule for " +
                              ", ".join(f"{k} x{v}" for k, v in program.unknown_ops.items()))


@dataclass(frozen=True)
class PricedItem:
    """One row ``price`` makes, before it is timed: a kernel, inserted work or a placement's transfer, with what
    the step scheduler needs to know about it (``step``). ``price`` and the vectorised sweep both price these."""

    kind: str                    # "kernel", "extra" or "transfer"
    runs: float
    works: tuple = ()
    kernel: Any = None
    extra: Any = None
    level: str = ""              # transfer: the level copied to / from
    nbytes: float = 0.0          # transfer: bytes
    phase: str = ""              # name-stack phase (before optimizer marking), layer, primitive
    layer: str = ""
    prim: str = ""
    lead: int = -1
    step: schedule.Row | None = None


def priced_items(program: Program, plan: Plan) -> list[PricedItem]:
    """The rows of ``price``, in its order: the plan's kernels (those that run), inserted work, transfers."""
    graph = program.graph
    out: list[PricedItem] = []
    memo = _item_memo(program, plan)
    for kern in kernels_of(program, plan):
        hit = memo.get(id(kern))
        if hit is not None and hit[0] is kern:
            if hit[1] is not None:
                out.append(hit[1])
            continue
        runs = program.weights[kern.ops[0]]
        if runs == 0:
            memo[id(kern)] = (kern, None)
            continue
        works = tuple(w for w in (plan.work(program, o) for o in kern.priced_ops) if w is not None)
        lead = _lead_op(program, kern.ops)
        phase, layer, prim = names.parse(graph.ops[lead].name_stack)
        collective = any(w.collective or w.collective_bytes > 0 for w in works)
        step = schedule.Row(engine=schedule.engine_of(collective, kern.kind == "copy"), runs=runs,
                            overlappable=kern.overlappable, ops=kern.ops, reads=tuple(v for v, _ in kern.reads),
                            layer=layer, phase=phase)
        item = PricedItem("kernel", runs, works, kernel=kern, phase=phase, layer=layer, prim=prim, lead=lead,
                          step=step)
        memo[id(kern)] = (kern, item)
        out.append(item)
    for extra in plan.extra_kernels:
        runs = program.weights[extra.after_op] if extra.after_op >= 0 else 1.0
        if runs == 0:
            continue
        w = extra.work
        phase = extra.phase or (names.parse(graph.ops[extra.after_op].name_stack)[0] if extra.after_op >= 0 else "other")
        step = schedule.Row(engine=schedule.engine_of(bool(w.collective or w.collective_bytes > 0), bool(extra.link)),
                            runs=runs, overlappable=extra.overlappable, after_op=extra.after_op,
                            before_op=getattr(extra, "before_op", None), collective=w.collective,
                            layer=extra.layer, phase=phase)
        out.append(PricedItem("extra", runs, (w,), extra=extra, phase=phase, layer=extra.layer, step=step))
    for level_name, nbytes in sorted(plan.transfer_bytes.items()):
        out.append(PricedItem("transfer", 1.0, level=level_name, nbytes=nbytes, phase="transfer",
                              layer="(transfers)", step=schedule.Row(engine=schedule.COPIES, runs=1.0, transfer=True)))
    return out


_ITEMS: list[tuple[tuple, dict]] = []


def _item_memo(program: Program, plan: Plan) -> dict:
    """id(kernel) -> (kernel, its ``PricedItem`` or None when it never runs), per (program, per-device works): a
    workflow re-pricing plans that differ in a few kernels (``fusion_decisions``) makes each unchanged kernel's item
    once (a kernel is reused by ``build_kernels`` when its group did not change). An item depends on nothing else:
    the same kernel object under the same works is the same item."""
    return _memo_for(_ITEMS, (program, plan.work_overrides), 200_000)


def _memo_for(store: list[tuple[tuple, dict]], keys: tuple, limit: int) -> dict:
    """The memo dict kept in ``store`` for these objects (compared by identity), for the last two key tuples; emptied
    once it holds ``limit`` entries. Results do not depend on it: a miss recomputes the same value."""
    for held, memo in store:
        if len(held) == len(keys) and all(a is b for a, b in zip(held, keys)):
            if len(memo) >= limit:
                memo.clear()
            return memo
    while len(store) >= 2:
        store.pop(0)
    store.append((keys, {}))
    return store[-1][1]


def step_graph(program: Program, plan: Plan, items: Sequence[PricedItem], target) -> schedule.StepGraph:
    """The scheduler's dependency graph of ``items`` (cached on the plan's kernels: sweeps reuse it)."""
    return schedule.step_graph(program, [it.step for it in items], async_collectives=bool(target.async_collectives))


def price(program: Program, target, plan: Plan, pipeline_text: str = "", strict: bool = False) -> Estimate:
    """Price ``program`` on ``target`` under the decisions in ``plan``: every row timed by the cost model, the
    step timed by the scheduler (``explorer.model.schedule``)."""
    if strict:
        check_known(program)
    graph = program.graph
    kernels = kernels_of(program, plan)
    items = priced_items(program, plan)
    rows, total_flops, total_trans, total_bytes = _rows(program, target, plan, items)
    timeline = _timeline(program, target, plan, items, rows)
    live = main_memory_liveness(program, plan, kernels)
    peaks = {target.main_memory.name: live.peak_bytes, **level_peaks(program, plan, kernels)}
    est = Estimate(
        program=graph.name, target=target.name, pipeline=pipeline_text, kernels=tuple(rows), flops=total_flops,
        transcendentals=total_trans, bytes_accessed=total_bytes, peak_memory_bytes=live.peak_bytes,
        memory_capacity_bytes=target.main_memory.capacity_bytes,
        memory_peaks=tuple(sorted(peaks.items())),
        memory_capacities=tuple((lvl, target.memory_level(lvl).capacity_bytes) for lvl, _ in sorted(peaks.items())),
        live_at_peak=tuple((t.producer, t.nbytes) for t in live.live_at_peak),
        unknown_ops=program.unknown_ops,
        unknown_loops=tuple(f"{lp.name_stack} ({lp.reason})" for lp in program.unknown_loops),
        peak_matrix_flops_per_s=target.matrix_rate("bf16"), plan_notes=plan.notes + timeline.notes,
        _program=program, _plan=plan, timeline=timeline)
    est.__dict__["_priced_items"] = items      # what each row is (pipeline pricing reads what a collective feeds)
    return est


def step_seconds(program: Program, target: Any, pipeline: str | Sequence[Any] | None = "default") -> float:
    """``estimate(program, target, pipeline).seconds``, bit for bit, without what only the rest of an ``Estimate``
    needs (memory peaks, totals): for workflows that rank many pipelines by step time (``fusion_decisions``)."""
    with paused_gc():
        target, _, plan = _planned(program, target, pipeline)
        items = priced_items(program, plan)
        rows = _rows(program, target, plan, items)[0]
        return float(_timeline(program, target, plan, items, rows).seconds)


def _timeline(program: Program, target, plan: Plan, items: Sequence[PricedItem], rows: Sequence[KernelRow]):
    g = step_graph(program, plan, items, target)
    return schedule.run(
        g, [timing._max(timing._max(r.compute_s, r.memory_s), r.comm_s) for r in rows], [r.overhead_s for r in rows],
        [_bucket(r, it) for r, it in zip(rows, items)], target.launch_overhead_s, target.launch_mode)


def _rows(program: Program, target, plan: Plan, items: Sequence[PricedItem]) -> tuple[list[KernelRow], float, float, float]:
    """Every item timed by the cost model (phases marked), and the program's flops, transcendentals and bytes."""
    graph = program.graph
    memo = _kernel_memo(target)
    rows: list[KernelRow] = []
    total_flops = total_trans = total_bytes = 0.0
    counted: set[int] = set()
    main = target.main_memory
    made = _row_memo(target, plan.placement)
    for it in items:
        runs = it.runs
        if it.kind == "kernel":
            kern, works = it.kernel, it.works
            if kern.recomputed or not counted.isdisjoint(kern.ops):
                own = [w for w in (plan.work(program, o) for o in kern.priced_ops if o not in counted) if w is not None]
            else:
                own = works              # its ops counted nowhere else: its own work is all of it (the same list)
            counted.update(kern.priced_ops)
            hit = made.get(id(it))
            if hit is not None and hit[0] is it:
                row = hit[1]
            else:
                traffic = traffic_by_level(target, plan.placement, kern)
                key = (tuple(map(id, works)), tuple(traffic.items()))
                known = memo.get(key)
                if known is None:
                    t = timing.kernel_time(target, works, traffic)
                    memo[key] = (works, t)       # the works kept: their ids stay theirs while the entry lives
                else:
                    t = known[1]
                label = it.prim or graph.ops[it.lead].short_name
                if len(kern.ops) > 1:
                    label = f"fusion[{label}+{len(kern.ops) - 1}]"
                flops = sum(w.flops for w in works)
                trans = sum(w.transcendentals for w in works)
                row = KernelRow(
                    name=label, ops=kern.ops, layer=it.layer, phase=it.phase, executions=runs, flops=flops * runs,
                    transcendentals=trans * runs, bytes_moved=kern.bytes_moved * runs,
                    collective_bytes=sum(w.collective_bytes for w in works) * runs,
                    compute_s=t.compute_s, memory_s=t.memory_s, comm_s=t.comm_s, overhead_s=t.overhead_s,
                    bound=t.bound, overlappable=kern.overlappable, algorithm=t.algorithm)
                made[id(it)] = (it, row)
            rows.append(row)
            # the program's flops count each op once, where several kernels recompute it too (its rows say how often)
            total_flops += sum(w.flops for w in own) * runs
            total_trans += sum(w.transcendentals for w in own) * runs
            total_bytes += kern.bytes_moved * runs
        elif it.kind == "extra":
            extra = it.extra
            t = (link_copy_time(target, extra.link, extra.work.bytes_accessed) if extra.link
                 else timing.kernel_time(target, [extra.work], {main.name: extra.work.bytes_accessed}))
            rows.append(KernelRow(
                name=extra.name, ops=(), layer=extra.layer, phase=it.phase, executions=runs,
                flops=extra.work.flops * runs, transcendentals=extra.work.transcendentals * runs,
                bytes_moved=extra.work.bytes_accessed * runs, collective_bytes=extra.work.collective_bytes * runs,
                compute_s=t.compute_s, memory_s=t.memory_s, comm_s=t.comm_s, overhead_s=t.overhead_s, bound=t.bound,
                overlappable=extra.overlappable, algorithm=t.algorithm))
            total_flops += extra.work.flops * runs
            total_bytes += extra.work.bytes_accessed * runs
        else:
            t = transfer_time(target, it.level, it.nbytes)
            rows.append(KernelRow(
                name=f"copy {main.name}<->{it.level}", ops=(), layer="(transfers)", phase="transfer", executions=1.0,
                flops=0.0, transcendentals=0.0, bytes_moved=it.nbytes, collective_bytes=0.0, compute_s=0.0,
                memory_s=t.memory_s, comm_s=0.0, overhead_s=0.0, bound="memory"))
            total_bytes += it.nbytes
    return _mark_phases(rows), total_flops, total_trans, total_bytes


_ROWS: list[tuple[tuple, dict]] = []


def _row_memo(target, placement) -> dict:
    """id(priced item) -> (item, its ``KernelRow``) on ``target`` under ``placement``: an item kept by
    ``priced_items`` (an unchanged kernel of a re-priced plan) is timed once. A row depends on nothing else: the
    item holds the kernel, its works and runs; the target and placement give its traffic and time."""
    return _memo_for(_ROWS, (target, placement), 200_000)


_KERNEL_MEMO: list[tuple[tuple, dict]] = []


def _kernel_memo(target) -> dict:
    """(ids of a kernel's works, its traffic per level) -> (works, ``timing.kernel_time``) on ``target``, for the last
    two targets: a workflow re-pricing plans that differ in a few kernels (``fusion_decisions``, pipelines compared on
    one target) times each distinct kernel once. The same inputs give the same time: results do not change."""
    return _memo_for(_KERNEL_MEMO, (target,), 50_000)


def _bucket(r: KernelRow, it: PricedItem) -> int:
    """What a row's body time is attributed to on the critical path (0 compute, 1 memory, 2 communication)."""
    if it.kind == "transfer":
        return 1
    return schedule.BUCKETS.index(timing.body_bound(r.compute_s, r.memory_s, r.comm_s))


def _lead_op(program: Program, ops: Sequence[int]) -> int:
    """The op that names a kernel: the one with the most counted work."""
    def size(o: int) -> tuple[float, int]:
        w = program.works[o]
        return ((w.matrix_flops * 4 + w.vector_flops + w.transcendentals + w.bytes_accessed) if w else 0.0, -o)
    return max(ops, key=size)


def _mark_phases(rows: list[KernelRow]) -> list[KernelRow]:
    """In a program with autodiff, work outside forward/backward is the optimizer update."""
    if not any(r.phase == "backward" for r in rows):
        return [r if r.phase != "other" else _with_phase(r, "forward") for r in rows]
    return [r if r.phase != "other" else _with_phase(r, "optimizer") for r in rows]


def _with_phase(r: KernelRow, phase: str) -> KernelRow:
    return replace(r, phase=phase)
