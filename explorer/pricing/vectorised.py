"""Pricing one plan on N target variants at once, as numpy arrays (the vectorised path of ``sweep``).

The passes run once; each distinct kernel's work is priced once with the variants' figures as arrays
(``explorer.model.variants.ArrayTarget``), and the step is scheduled by the same scheduler ``price`` runs
(``explorer.model.schedule.run``, on arrays: one entry per variant), so every variant's row equals ``price`` on
that variant bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..model import schedule, timing
from ..model.traffic import link_copy_time, traffic_by_level, transfer_time
from ..model.variants import ArrayTarget, Sections
from .pipeline_parallel import PipelineLayout, pipeline_layout
from .price import price, priced_items, step_graph

COST_COLUMNS = ("tdp_w", "price_usd", "die_area_mm2")


_COMPENSATED_SUM = sum([1e100, 1.0, -1e100]) == 1.0   # Python >= 3.12: sum() of floats is Neumaier-compensated


def builtin_sum_rows(values: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``sum(values[i] for i in order)`` per column, as Python's ``sum()`` of floats computes it on this
    interpreter (plain left-to-right, or Neumaier-compensated from 3.12), so totals match ``Estimate`` bit for bit.
    Rows equal to -0.0 stand for skipped items (x + -0.0 == x exactly)."""
    acc = np.zeros(values.shape[1:])
    if not _COMPENSATED_SUM:
        for i in order:
            acc += values[i]
        return acc
    comp = np.zeros_like(acc)
    for i in order:
        x = values[i]
        t = acc + x
        comp += np.where(np.abs(acc) >= np.abs(x), (acc - t) + x, (x - t) + acc)
        acc = t
    return np.where((comp != 0) & np.isfinite(comp), acc + comp, acc)


def plain_sum_rows(start: np.ndarray | float, values: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``total = start; for i in order: total += values[i]`` per column (left to right)."""
    acc = np.array(np.broadcast_to(start, values.shape[1:]), dtype=float)
    for i in order:
        acc += values[i]
    return acc


def price_variants(program, base, plan, knob_columns: Mapping[str, np.ndarray], n: int,
                   chunk: int = 2048, pipeline_parallel: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Price ``plan`` on every variant at once; columns as ``row_of`` gives them for one estimate (with
    ``pipeline_parallel``, ``price_pipeline``'s arguments after the estimate: as ``pipelined_row`` gives them)."""
    est = price(program, base, plan)        # the knob-independent figures (flops, peak memory, ...)
    layout = pipeline_layout(est, **pipeline_parallel) if pipeline_parallel is not None else None
    priced = priced_items(program, plan)
    items, order = _priced_items(program, base, plan, priced)
    graph = step_graph(program, plan, priced, base)
    sections = Sections(base, knob_columns, n)
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, n, chunk):
        rows = slice(lo, min(lo + chunk, n))
        at = ArrayTarget(sections, rows)
        at.f32_matmul_mode = base.f32_matmul_mode      # text fields no knob changes: the base target's
        part = _price_chunk(items, order, graph, at, rows.stop - rows.start, est, base.launch_mode, layout)
        for k, v in part.items():
            out.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


@dataclass(frozen=True)
class _Item:
    """One distinct row of ``estimate.price``: how to time it, its executions, whether it may overlap."""

    time: Callable[[ArrayTarget], timing.KernelTime]
    runs: float
    overlappable: bool = False
    bound: int = -1          # forced bound (an index into timing.BOUNDS); -1: from the times


def _priced_items(program, base, plan, priced) -> tuple[list[_Item], list[int]]:
    """The rows ``estimate.price`` makes, in its order (kernels, inserted work, transfers), as distinct
    items (identical kernels, e.g. the same layer repeated, are timed once) and the order they occur in."""
    index: dict[Any, int] = {}
    items: list[_Item] = []
    order: list[int] = []

    def add(key, item: _Item) -> None:
        key = (key, item.runs, item.overlappable, item.bound)
        if key not in index:
            index[key] = len(items)
            items.append(item)
        order.append(index[key])

    main = base.main_memory.name
    for it in priced:
        if it.kind == "kernel":
            works, kern = it.works, it.kernel
            traffic = traffic_by_level(base, plan.placement, kern)
            add(("kernel", works, tuple(traffic.items())),
                _Item(lambda at, works=works, traffic=traffic: timing.kernel_time(at, works, traffic), it.runs))
        elif it.kind == "extra":
            extra = it.extra
            w, nbytes, link = extra.work, extra.work.bytes_accessed, extra.link
            time = ((lambda at, link=link, nbytes=nbytes: link_copy_time(at, link, nbytes)) if link
                    else (lambda at, w=w, nbytes=nbytes: timing.kernel_time(at, [w], {main: nbytes})))
            add(("extra", w, link), _Item(time, it.runs, extra.overlappable))
        else:
            add(("transfer", it.level, it.nbytes),
                _Item(lambda at, lvl=it.level, nb=it.nbytes: transfer_time(at, lvl, nb), 1.0, bound=1))
    return items, order


def _price_chunk(items: list[_Item], order: list[int], graph, at: ArrayTarget, n: int, est,
                 launch_mode: str, layout: PipelineLayout | None = None) -> dict[str, np.ndarray]:
    """The estimate's totals for ``n`` variants: the same schedule as ``price`` runs, on arrays."""
    times = [it.time(at) for it in items]

    def stack(field: str) -> np.ndarray:
        return np.stack([np.broadcast_to(np.asarray(getattr(t, field), dtype=float), (n,)) for t in times]) \
            if times else np.zeros((0, n))

    c, m, comm, o = stack("compute_s"), stack("memory_s"), stack("comm_s"), stack("overhead_s")
    forced = np.array([it.bound for it in items], dtype=int).reshape(-1, 1)
    body = np.maximum(np.maximum(c, m), comm)
    # what each row's body is attributed to (schedule.BUCKETS; timing.body_bound's rule), transfers to memory
    bucket = np.where(forced >= 0, forced, np.where((comm == body) & (comm > 0), 2, np.where(c >= m, 0, 1)))
    tl = schedule.run(graph, [body[i] for i in order], [o[i] for i in order], [bucket[i] for i in order],
                      at.launch_overhead_s, launch_mode, detail=False)

    def col(x) -> np.ndarray:
        return np.array(np.broadcast_to(np.asarray(x, dtype=float), (n,)))

    seconds = col(tl.seconds)
    parts = {"compute": col(tl.compute_s), "memory": col(tl.memory_s), "communication": col(tl.comm_s),
             "overhead": col(tl.overhead_s)}
    # Estimate.bound: the largest part, ties to the alphabetically last name
    names = sorted(parts, reverse=True)
    bound_total = np.array(names, dtype=object)[np.argmax(np.stack([parts[k] for k in names]), axis=0)]
    peak = np.broadcast_to(at.matrix_rate("bf16"), (n,))
    with np.errstate(divide="ignore", invalid="ignore"):
        mfu = np.where(seconds != 0, est.flops / (seconds * peak), 0.0)
    fits = np.broadcast_to(est.peak_memory_bytes <= np.asarray(at.main_memory.capacity_bytes), (n,))
    for lvl, lvl_peak in est.memory_peaks:
        fits = fits & (lvl_peak <= np.asarray(at.memory_level(lvl).capacity_bytes))
    cols = {"seconds": seconds, "compute_seconds": parts["compute"], "memory_seconds": parts["memory"],
            "comm_seconds": parts["communication"], "overhead_seconds": parts["overhead"], "bound": bound_total,
            "mfu": mfu, "fits_in_memory": np.array(fits, dtype=bool),
            "flops": np.full(n, est.flops), "bytes_accessed": np.full(n, est.bytes_accessed),
            "kernels": np.full(n, est.num_kernels, dtype=np.int64),
            "peak_memory_bytes": np.full(n, est.peak_memory_bytes, dtype=np.int64)}
    for c_name in COST_COLUMNS:
        v = at.top(c_name)
        cols[c_name] = np.array(np.broadcast_to(np.asarray(v, dtype=object if v is None else float), (n,)))
    if layout is None:
        return cols
    # the pipelined step from the same rows: each row's time as ``KernelRow.seconds`` computes it
    row_seconds = [(body[i] + o[i]) * items[i].runs for i in order]
    t = layout.timed(at, row_seconds, seconds, col(tl.hidden_comm_s))
    return pipelined_columns(cols, t, layout, at, n)


def pipelined_columns(cols: dict[str, Any], t, layout: PipelineLayout, target, n: int = 0) -> dict[str, Any]:
    """The sweep columns of a pipelined step (``PipelineTimes`` ``t`` of ``layout`` on ``target``) from the
    microbatch program's columns ``cols`` (``row_of``'s): its time figures renamed ``microbatch_*``, the step's
    time, bubble, exposed transfers, once-per-step work, slowest stage and memory per device beside them.
    ``n`` > 0: arrays of ``n`` variants; 0: one variant's floats."""
    def col(x):
        return np.array(np.broadcast_to(np.asarray(x, dtype=float), (n,))) if n else float(x)

    out = {f"microbatch_{k}": cols[k] for k in ("seconds", "compute_seconds", "memory_seconds", "comm_seconds",
                                                 "overhead_seconds", "bound")}
    seconds = col(t.seconds)
    bubble = col(t.schedule_time.bubble_seconds)
    fraction = col(t.bubble_fraction)
    capacity = target.main_memory.capacity_bytes
    mem = layout.memory_per_device_bytes
    fits = np.array(np.broadcast_to(mem <= np.asarray(capacity), (n,)), dtype=bool) if n else bool(mem <= capacity)
    out.update(seconds=seconds, bubble_seconds=bubble, bubble_fraction=fraction,
               p2p_exposed_seconds=col(t.schedule_time.p2p_exposed_seconds), step_extra_seconds=col(t.step_extra_s),
               stage_seconds=col(t.stage_seconds), memory_per_device_bytes=col(mem), fits_in_memory=fits)
    for k in ("flops", "bytes_accessed", "kernels", "peak_memory_bytes", *COST_COLUMNS):
        out[k] = cols[k]
    return out
