"""The estimated timeline of one program run as Trace Event JSON (Perfetto, chrome://tracing).

The schedule is the estimate's own (``Estimate.timeline``, made by ``explorer/model/schedule.py``): every row
starts when its inputs are ready, its engine is free and the host has issued it. One track per engine of the
chip (one process):
- ``compute``: the kernels;
- ``collectives``: collectives (a compiler's async ones and those a pass inserted);
- ``copies``: copies between memory levels (host-link traffic, the boundary transfers of a placement).

Each event carries its row's figures in ``args`` and ``critical: true`` when it lies on the critical path; the
trace ends at ``Estimate.seconds`` (``otherData.timeline_seconds``), with the exposed and hidden communication
and each engine's idle time in ``otherData``.

A kernel inside a while loop body runs ``executions`` times: it is one event whose duration is the
time of all its runs, with the run count in its args (``runs``), so the trace stays one event per
kernel whatever the trip counts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..graph import names

COMPUTE, COLLECTIVES, COPIES = 1, 2, 3
STREAMS = {COMPUTE: "compute", COLLECTIVES: "collectives", COPIES: "copies"}
MAX_OPS_LISTED = 64


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
    tl = est.timeline
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
         "args": {"name": f"{est.program} on {est.target} ({est.pipeline or 'no passes'})"}}]
    for tid, label in STREAMS.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": label}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}})
    on_path = set(tl.critical_path)
    for i in tl.order:
        row = est.kernels[i]
        tid = tl.engine[i] + 1            # schedule.COMPUTE / COLLECTIVES / COPIES are 0 / 1 / 2
        args: dict[str, Any] = {
            "layer": row.layer, "phase": row.phase, "bound": row.bound, "runs": row.executions,
            "flops": row.flops, "bytes": row.bytes_moved, "collective_bytes": row.collective_bytes,
            "compute_s": row.compute_s, "memory_s": row.memory_s, "comm_s": row.comm_s, "overhead_s": row.overhead_s,
            "seconds": row.seconds, "overlappable": row.overlappable, "blocking": tl.blocking[i],
            "critical": i in on_path, "start_s": tl.start_s[i], "end_s": tl.end_s[i], "row": i}
        if row.algorithm:
            args["algorithm"] = row.algorithm
        if row.ops:
            args["ops"] = _op_names(est, row)
            args["ops_total"] = len(row.ops)
        ts, end = tl.start_s[i] * us, tl.end_s[i] * us
        dur = end - ts
        while dur > 0 and ts + dur > end:     # so that ts + dur never passes the next event's start by rounding
            dur = math.nextafter(dur, 0.0)
        events.append({"name": row.name, "cat": row.bound, "ph": "X", "ts": ts, "dur": dur, "pid": 1, "tid": tid,
                       "args": args})
    trace = {"traceEvents": events, "displayTimeUnit": "ns",
             "otherData": {"program": est.program, "target": est.target, "pipeline": est.pipeline,
                           "estimate_seconds": est.seconds, "timeline_seconds": float(tl.seconds),
                           "exposed_comm_seconds": est.comm_seconds, "hidden_comm_seconds": est.hidden_comm_seconds,
                           "idle_seconds": est.idle_seconds, "critical_path": [est.kernels[i].name for i in tl.critical_path]}}
    if path is not None:
        Path(path).write_text(json.dumps(trace))
    return trace
