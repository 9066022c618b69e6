"""The estimated timeline of one program run as Trace Event JSON (Perfetto, chrome://tracing).

Three streams of one process (the chip):
- ``compute``: the kernels, in schedule order;
- ``collectives``: collectives and the work a pass inserted (an ``ExtraKernel``), placed right after
  the kernel it follows;
- ``copies``: copies between memory levels (host-link traffic, the boundary transfers of a placement).

An event that may overlap (an async collective or copy, ``overlappable``) starts when the stream it
runs on is free and does not hold up the compute stream; every other event runs when the ones before
it have finished. With nothing overlappable the trace ends at ``Estimate.seconds``; with overlap, the
estimate's rule (communication hidden up to the compute-bound time) and this timeline can differ a
little, and both figures are in the trace's ``otherData``.

A kernel inside a while loop body runs ``executions`` times: it is one event whose duration is the
time of all its runs, with the run count in its args (``runs``), so the trace stays one event per
kernel whatever the trip counts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..graph import names

COMPUTE, COLLECTIVES, COPIES = 1, 2, 3
STREAMS = {COMPUTE: "compute", COLLECTIVES: "collectives", COPIES: "copies"}
MAX_OPS_LISTED = 64


def _schedule(est) -> list[tuple[Any, int, bool]]:
    """(row, stream, overlappable) in schedule order: kernels in plan order, inserted work right after
    the kernel holding the op it follows, transfers last (as ``price`` sums them)."""
    kernels = [r for r in est.kernels if r.ops]
    transfers = [r for r in est.kernels if not r.ops and r.phase == "transfer" and r.name.startswith("copy ")]
    extras = [r for r in est.kernels if not r.ops and not (r.phase == "transfer" and r.name.startswith("copy "))]
    anchors, links = _extra_anchors(est, extras)
    first_ops = [min(r.ops) for r in kernels]
    slots: dict[int, list[tuple[Any, int, bool]]] = {}
    for row, after, link in zip(extras, anchors, links):
        # after the last kernel that starts at or before the op it follows (-1: before every kernel)
        pos = sum(1 for f in first_ops if f <= after) if after is not None else len(kernels)
        stream = COPIES if link else COLLECTIVES
        slots.setdefault(pos, []).append((row, stream, row.overlappable))
    out: list[tuple[Any, int, bool]] = list(slots.get(0, []))
    for i, row in enumerate(kernels):
        stream = COLLECTIVES if row.collective_bytes > 0 else COMPUTE
        out.append((row, stream, row.overlappable))
        out.extend(slots.get(i + 1, []))
    out.extend((row, COPIES, False) for row in transfers)
    return out


def _extra_anchors(est, extras) -> tuple[list[int | None], list[bool]]:
    """The op each inserted row follows and whether it is a link copy, from the plan that made it
    (None: unknown, placed at the end)."""
    plan, program = est._plan, est._program
    if plan is None or program is None:
        return [None] * len(extras), [False] * len(extras)
    made = [e for e in plan.extra_kernels if (program.weights[e.after_op] if e.after_op >= 0 else 1.0) != 0]
    if len(made) != len(extras) or any(e.name != r.name for e, r in zip(made, extras)):
        return [None] * len(extras), [False] * len(extras)
    return [e.after_op for e in made], [bool(e.link) for e in made]


def _op_names(est, row) -> list[str]:
    program = est._program
    if program is None:
        return [str(o) for o in row.ops[:MAX_OPS_LISTED]]
    out = []
    for o in row.ops[:MAX_OPS_LISTED]:
        op = program.graph.ops[o]
        prim = names.parse(op.name_stack)[2]
        out.append(f"{o}:{op.name}" + (f" ({prim})" if prim else ""))
    return out


def chrome_trace(est, path: str | Path | None = None) -> dict[str, Any]:
    """The trace of ``est`` as a dict (``{"traceEvents": [...]}``), written to ``path`` as JSON when given."""
    us = 1e6
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
         "args": {"name": f"{est.program} on {est.target} ({est.pipeline or 'no passes'})"}}]
    for tid, label in STREAMS.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": label}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}})
    now = 0.0                                   # where the next blocking event may start (µs)
    free = {tid: 0.0 for tid in STREAMS}        # where each stream is free again
    for row, tid, overlappable in _schedule(est):
        dur = row.seconds * us
        start = max(now, free[tid])
        free[tid] = start + dur
        if not overlappable:
            now = free[tid]
        args: dict[str, Any] = {
            "layer": row.layer, "phase": row.phase, "bound": row.bound, "runs": row.executions,
            "flops": row.flops, "bytes": row.bytes_moved, "collective_bytes": row.collective_bytes,
            "compute_s": row.compute_s, "memory_s": row.memory_s, "comm_s": row.comm_s, "overhead_s": row.overhead_s,
            "seconds": row.seconds, "overlappable": overlappable}
        if row.ops:
            args["ops"] = _op_names(est, row)
            args["ops_total"] = len(row.ops)
        events.append({"name": row.name, "cat": row.bound, "ph": "X", "ts": start, "dur": dur, "pid": 1, "tid": tid,
                       "args": args})
    end = max([now, *free.values()])
    trace = {"traceEvents": events, "displayTimeUnit": "ns",
             "otherData": {"program": est.program, "target": est.target, "pipeline": est.pipeline,
                           "estimate_seconds": est.seconds, "timeline_seconds": end / us,
                           "hidden_comm_seconds": est.hidden_comm_seconds}}
    if path is not None:
        Path(path).write_text(json.dumps(trace))
    return trace
