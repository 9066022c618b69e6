"""Pricing: a counted program under a plan, on a target -> an ``Estimate``.

``estimate`` runs a pass pipeline and prices the plan it makes; ``price`` prices a plan already
made. Each kernel is timed by the cost model (``explorer.model.timing``) with the bytes it moves in
each memory level (``explorer.model.traffic``); inserted work (collectives, offload copies) and a
placement's transfers are rows of their own; peak memory per level comes from liveness under the
plan (``explorer.model.memory``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import hw_targets
from passes import pipeline as pl
from passes.fusion import kernels_of
from passes.plan import Plan

from ..costs import Program
from ..graph import names
from ..model import timing
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
    if isinstance(target, str):
        target = hw_targets.load(target)
    if pipeline == "default":
        pipeline = pl.default_pipeline(program)
    passes = pl.resolve(pipeline or None)
    plan = pl.run(passes, program, target)
    return price(program, target, plan, pipeline_text=pl.to_text(passes), strict=strict)


def check_known(program: Program) -> None:
    """``UnknownOpsError`` naming every op without a cost rule (``strict=True``)."""
    if program.unknown_ops:
        raise UnknownOpsError(f"{program.graph.name}: no cost rule for " +
                              ", ".join(f"{k} x{v}" for k, v in program.unknown_ops.items()))


def price(program: Program, target, plan: Plan, pipeline_text: str = "", strict: bool = False) -> Estimate:
    """Price ``program`` on ``target`` under the decisions in ``plan``."""
    if strict:
        check_known(program)
    graph = program.graph
    kernels = kernels_of(program, plan)
    rows: list[KernelRow] = []
    total_flops = total_trans = total_bytes = 0.0
    for kern in kernels:
        works = [w for w in (plan.work(program, o) for o in kern.ops) if w is not None]
        runs = program.weights[kern.ops[0]]
        if runs == 0:
            continue
        t = timing.kernel_time(target, works, traffic_by_level(target, plan.placement, kern))
        lead = _lead_op(program, kern.ops)
        phase, layer, prim = names.parse(graph.ops[lead].name_stack)
        label = prim or graph.ops[lead].short_name
        if len(kern.ops) > 1:
            label = f"fusion[{label}+{len(kern.ops) - 1}]"
        flops = sum(w.flops for w in works)
        trans = sum(w.transcendentals for w in works)
        rows.append(KernelRow(
            name=label, ops=kern.ops, layer=layer, phase=phase, executions=runs, flops=flops * runs,
            transcendentals=trans * runs, bytes_moved=kern.bytes_moved * runs,
            collective_bytes=sum(w.collective_bytes for w in works) * runs,
            compute_s=t.compute_s, memory_s=t.memory_s, comm_s=t.comm_s, overhead_s=t.overhead_s, bound=t.bound,
            overlappable=kern.overlappable))
        total_flops += flops * runs
        total_trans += trans * runs
        total_bytes += kern.bytes_moved * runs
    for extra in plan.extra_kernels:
        runs = program.weights[extra.after_op] if extra.after_op >= 0 else 1.0
        if runs == 0:
            continue
        t = (link_copy_time(target, extra.link, extra.work.bytes_accessed) if extra.link
             else timing.kernel_time(target, [extra.work], {target.main_memory.name: extra.work.bytes_accessed}))
        phase = extra.phase or (names.parse(graph.ops[extra.after_op].name_stack)[0] if extra.after_op >= 0 else "other")
        rows.append(KernelRow(
            name=extra.name, ops=(), layer=extra.layer, phase=phase, executions=runs, flops=extra.work.flops * runs,
            transcendentals=extra.work.transcendentals * runs, bytes_moved=extra.work.bytes_accessed * runs,
            collective_bytes=extra.work.collective_bytes * runs, compute_s=t.compute_s, memory_s=t.memory_s,
            comm_s=t.comm_s, overhead_s=t.overhead_s, bound=t.bound, overlappable=extra.overlappable))
        total_flops += extra.work.flops * runs
        total_bytes += extra.work.bytes_accessed * runs
    main = target.main_memory
    for level_name, nbytes in sorted(plan.transfer_bytes.items()):
        t = transfer_time(target, level_name, nbytes)
        rows.append(KernelRow(
            name=f"copy {main.name}<->{level_name}", ops=(), layer="(transfers)", phase="transfer", executions=1.0,
            flops=0.0, transcendentals=0.0, bytes_moved=nbytes, collective_bytes=0.0, compute_s=0.0,
            memory_s=t.memory_s, comm_s=0.0, overhead_s=0.0, bound="memory"))
        total_bytes += nbytes
    rows = _mark_phases(rows)
    live = main_memory_liveness(program, plan, kernels)
    peaks = {target.main_memory.name: live.peak_bytes, **level_peaks(program, plan, kernels)}
    return Estimate(
        program=graph.name, target=target.name, pipeline=pipeline_text, kernels=tuple(rows), flops=total_flops,
        transcendentals=total_trans, bytes_accessed=total_bytes, peak_memory_bytes=live.peak_bytes,
        memory_capacity_bytes=target.main_memory.capacity_bytes,
        memory_peaks=tuple(sorted(peaks.items())),
        memory_capacities=tuple((lvl, target.memory_level(lvl).capacity_bytes) for lvl, _ in sorted(peaks.items())),
        live_at_peak=tuple((t.producer, t.nbytes) for t in live.live_at_peak),
        unknown_ops=program.unknown_ops,
        unknown_loops=tuple(f"{lp.name_stack} ({lp.reason})" for lp in program.unknown_loops),
        peak_matrix_flops_per_s=target.matrix_rate("bf16"), plan_notes=plan.notes, _program=program, _plan=plan)


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
