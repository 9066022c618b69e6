"""``Estimate``: what pricing a program on a target says, and its breakdowns.

The result says how long, why (which bound, which ops, which layers), and what it
could not price (unknown ops, loops with unknown trip counts), in every result.
Made by ``explorer.pricing.price``; rendered by ``explorer.report``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..graph import names
from ..model import schedule, timing
from ..report import plots, tables, trace
from ..report.units import fmt_bytes


@dataclass(frozen=True)
class KernelRow:
    """One kernel, over all its executions in one program run."""

    name: str
    ops: tuple[int, ...]
    layer: str
    phase: str
    executions: float
    flops: float
    transcendentals: float
    bytes_moved: float
    collective_bytes: float
    compute_s: float          # per execution
    memory_s: float
    comm_s: float
    overhead_s: float
    bound: str
    overlappable: bool = False   # may run concurrently with independent compute (async collective)
    algorithm: str = ""          # how its matrix work runs: "stream-k", "split-k x4", "gemv", "tf32", "bf16 x3", ...

    @property
    def seconds(self) -> float:
        """Time of all executions on its engine (body + the gap between kernels, ``overhead_s``, per run)."""
        return (max(self.compute_s, self.memory_s, self.comm_s) + self.overhead_s) * self.executions


class UnknownOpsError(ValueError):
    pass


@dataclass(frozen=True)
class Estimate:
    program: str
    target: str
    pipeline: str
    kernels: tuple[KernelRow, ...]
    flops: float
    transcendentals: float
    bytes_accessed: float
    peak_memory_bytes: int
    memory_capacity_bytes: float
    live_at_peak: tuple[tuple[str, int], ...]
    unknown_ops: Mapping[str, int]
    unknown_loops: tuple[str, ...]
    peak_matrix_flops_per_s: float
    memory_peaks: tuple[tuple[str, int], ...] = ()        # (level, peak live bytes placed there)
    memory_capacities: tuple[tuple[str, float], ...] = ()
    plan_notes: tuple[str, ...] = ()
    _program: Any = field(default=None, repr=False, compare=False)
    _plan: Any = field(default=None, repr=False, compare=False)

    timeline: Any = field(default=None, repr=False, compare=False)   # explorer.model.schedule.Timeline

    # -- totals: the step time is the schedule's (``explorer/model/schedule.py``); its critical path is attributed
    # to compute, memory and communication by the bound of each row on it, the rest (launches, gaps between
    # kernels) to overhead, so the four parts add up to ``seconds``
    @property
    def seconds(self) -> float:
        """Step time: when the last row of the schedule ends (rows overlap where their dependencies allow)."""
        if self.timeline is None:
            return float(sum(k.seconds for k in self.kernels))
        return float(self.timeline.seconds)

    @property
    def overhead_seconds(self) -> float:
        """Launch-bound time on the critical path: waiting for the host to issue, and the gaps between kernels."""
        if self.timeline is None:
            return float(sum(k.overhead_s * k.executions for k in self.kernels))
        return float(self.timeline.overhead_s)

    @property
    def compute_seconds(self) -> float:
        return self._part("compute_s", "compute")

    @property
    def memory_seconds(self) -> float:
        return self._part("memory_s", "memory")

    @property
    def comm_seconds(self) -> float:
        """Exposed communication: collective and copy time on the critical path."""
        return self._part("comm_s", "communication")

    def _part(self, attr: str, which: str) -> float:
        if self.timeline is not None:
            return float(getattr(self.timeline, attr))
        return float(sum(max(k.compute_s, k.memory_s, k.comm_s) * k.executions for k in self.kernels
                         if max(k.compute_s, k.memory_s, k.comm_s) > 0
                         and timing.body_bound(k.compute_s, k.memory_s, k.comm_s) == which))

    @property
    def hidden_comm_seconds(self) -> float:
        """Communication time that ran beside other work (all communication minus the exposed part)."""
        return float(self.timeline.hidden_comm_s) if self.timeline is not None else 0.0

    @property
    def exposed_comm_seconds(self) -> float:
        return self.comm_seconds

    @property
    def total_comm_seconds(self) -> float:
        """All communication time (collectives and link copies), exposed or hidden."""
        return self.comm_seconds + self.hidden_comm_seconds

    @property
    def idle_seconds(self) -> dict[str, float]:
        """Per engine (compute, collectives, copies): the part of the step it ran nothing."""
        if self.timeline is None:
            return {}
        return {name: float(x) for name, x in zip(schedule.ENGINES, self.timeline.idle_s)}

    @property
    def busy_seconds(self) -> dict[str, float]:
        """Per engine: the time it ran rows."""
        if self.timeline is None:
            return {}
        return {name: float(x) for name, x in zip(schedule.ENGINES, self.timeline.busy_s)}

    @property
    def critical_path(self) -> list[KernelRow]:
        """The rows whose ends set the step time, first to last (each starts when the one before it ends or when
        the host issues it)."""
        if self.timeline is None:
            return list(self.kernels)
        return [self.kernels[i] for i in self.timeline.critical_path]

    def schedule_rows(self) -> list[dict]:
        """Per row, in issue order: its name, engine, start and end (seconds), whether it is on the critical path."""
        if self.timeline is None:
            return []
        tl, on_path = self.timeline, set(self.timeline.critical_path)
        return [{"row": i, "name": self.kernels[i].name, "engine": schedule.ENGINES[tl.engine[i]],
                 "start_s": tl.start_s[i], "end_s": tl.end_s[i], "blocking": tl.blocking[i], "critical": i in on_path}
                for i in tl.order]

    @property
    def fits_in_memory(self) -> bool:
        """Every memory level's peak within its capacity."""
        caps = dict(self.memory_capacities)
        return self.peak_memory_bytes <= self.memory_capacity_bytes and all(
            peak <= caps.get(lvl, float("inf")) for lvl, peak in self.memory_peaks)

    def memory_report(self) -> str:
        """Peak per level against capacity; when something does not fit, by how much and what is live at the peak."""
        caps = dict(self.memory_capacities)
        lines = []
        for lvl, peak in self.memory_peaks:
            cap = caps.get(lvl, float("inf"))
            over = f"  OVER by {fmt_bytes(peak - cap)}" if peak > cap else ""
            lines.append(f"{lvl}: peak {fmt_bytes(peak)} of {fmt_bytes(cap)}{over}")
        if not self.fits_in_memory:
            lines.append("live at the main-memory peak: " + ", ".join(f"{n} ({fmt_bytes(b)})" for n, b in self.live_at_peak[:5]))
        return "\n".join(lines)

    @property
    def bound(self) -> str:
        parts = {"compute": self.compute_seconds, "memory": self.memory_seconds,
                 "communication": self.comm_seconds, "overhead": self.overhead_seconds}
        return max(parts, key=lambda k: (parts[k], k))

    @property
    def mfu(self) -> float:
        """Model flops utilisation: counted flops / (time x the target's peak bf16 matrix rate)."""
        return self.flops / (self.seconds * self.peak_matrix_flops_per_s) if self.seconds else 0.0

    @property
    def num_kernels(self) -> int:
        return len(self.kernels)

    # -- breakdowns -----------------------------------------------------------
    def op_rows(self) -> list[dict]:
        """Per op: its counted work over all executions (ops in a fused kernel share the kernel's time)."""
        program, plan = self._program, self._plan
        kernel_of = {o: i for i, k in enumerate(self.kernels) for o in k.ops}
        rows = []
        for op, k in zip(program.graph.ops, program.weights):
            w = plan.work(program, op.id)
            if w is None or k == 0:
                continue
            phase, layer, prim = names.parse(op.name_stack)
            rows.append({"op": op.id, "name": op.name, "primitive": prim, "layer": layer, "phase": phase,
                         "executions": k, "flops": w.flops * k, "transcendentals": w.transcendentals * k,
                         "bytes_unfused": w.bytes_accessed * k, "dtype": w.dtype, "kernel": kernel_of.get(op.id)})
        return rows

    def layer_rows(self, depth: int | None = None) -> list[dict]:
        """Per layer (name-stack path cut at ``depth`` components): its part of the step time (``seconds``, see
        ``step_shares``), share, busy time of its rows (``busy_seconds``), bound; slowest first, equal times in
        natural order (``h_2`` before ``h_10``). Work outside every layer is split into "(optimizer update)" and
        "(outside any layer)" (a loss, the glue between layers)."""
        return self._group(lambda k: names.display_layer(names.layer_at_depth(k.layer, depth), k.phase), "layer")

    def phase_rows(self) -> list[dict]:
        return self._group(lambda k: k.phase, "phase")

    def step_shares(self) -> list[float]:
        """Per row: its part of the step time. A row on the critical path counts the time from the end of the row
        before it on the path (0 for the first) to its own end: its run, and any wait for its launch; every other
        row counts 0 (it ran beside the critical path: hidden). They add up to ``seconds``."""
        if self.timeline is None:
            return [k.seconds for k in self.kernels]
        cached = self.__dict__.get("_step_shares")
        if cached is None:
            tl = self.timeline
            cached = [0.0] * len(self.kernels)
            prev = 0.0
            for i in tl.critical_path:      # its wait (0.0 when the row before it set its start) + its run
                cached[i] = (float(tl.start_s[i]) - prev) + self.kernels[i].seconds
                prev = float(tl.end_s[i])
            object.__setattr__(self, "_step_shares", cached)
        return cached

    def _group(self, key, label: str) -> list[dict]:
        groups: dict[str, dict[str, float]] = {}
        for k, share in zip(self.kernels, self.step_shares()):
            g = groups.setdefault(key(k), {"seconds": 0.0, "busy": 0.0, "flops": 0.0, "bytes": 0.0, "kernels": 0,
                                            "compute": 0.0, "memory": 0.0, "communication": 0.0, "overhead": 0.0})
            g["seconds"] += share
            g["busy"] += k.seconds
            g["flops"] += k.flops
            g["bytes"] += k.bytes_moved
            g["kernels"] += 1
            g[k.bound] += k.seconds
        total = self.seconds or 1.0
        rows = []
        for name, g in groups.items():
            bound = max(("compute", "memory", "communication", "overhead"), key=lambda b: g[b])
            rows.append({label: name, "seconds": g["seconds"], "share": g["seconds"] / total, "flops": g["flops"],
                         "bytes": g["bytes"], "kernels": int(g["kernels"]), "bound": bound,
                         "busy_seconds": g["busy"]})
        rows.sort(key=lambda r: (-r["seconds"], -r["busy_seconds"], names.natural_key(r[label])))
        return rows

    def top_kernels(self, n: int = 15) -> list[KernelRow]:
        return sorted(self.kernels, key=lambda k: (-k.seconds, k.ops))[:n]

    def kernel_shape(self, k: KernelRow) -> str:
        """What tells identical-looking kernels apart: the shape of the op that names the kernel (a GEMM as
        ``MxNxK``, with its batch; other ops by their result) and, for a matmul in the backward, ``dW`` (its
        result has the shape of a parameter: a weight gradient) or ``dX`` (an activation gradient)."""
        program = self._program
        if program is None or not k.ops:
            return ""
        graph = program.graph
        lead = max(k.ops, key=lambda o: (_size(program.works[o]), -o))
        op, work = graph.ops[lead], program.works[lead]
        outs = [graph.values[v] for v in op.results]
        if work is not None and work.gemm is not None:
            g = work.gemm
            shape = f"{g.m}x{g.n}x{g.k}" + (f" (x{g.batch})" if g.batch > 1 else "")
            if k.phase == "backward" and outs:
                params = _param_shapes(program)
                shape = ("dW " if outs[0].shape in params else "dX ") + shape
            return shape
        return str(outs[0]) if outs else ""

    # -- rendering ------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The headline figures (a time that is zero prints as 0, never -0.0)."""
        return {
            "program": self.program, "target": self.target, "pipeline": self.pipeline,
            "seconds": _z(self.seconds), "compute_seconds": _z(self.compute_seconds),
            "memory_seconds": _z(self.memory_seconds), "comm_seconds": _z(self.comm_seconds),
            "overhead_seconds": _z(self.overhead_seconds), "bound": self.bound,
            "flops": self.flops, "transcendentals": self.transcendentals, "bytes_accessed": self.bytes_accessed,
            "kernels": self.num_kernels, "mfu": self.mfu, "peak_memory_bytes": self.peak_memory_bytes,
            "memory_capacity_bytes": self.memory_capacity_bytes, "fits_in_memory": self.fits_in_memory,
            "memory_peaks": dict(self.memory_peaks),
            "exposed_comm_seconds": _z(self.comm_seconds), "hidden_comm_seconds": _z(self.hidden_comm_seconds),
            "idle_seconds": {k: _z(v) for k, v in self.idle_seconds.items()},
            "critical_path_rows": len(self.timeline.critical_path) if self.timeline is not None else 0,
            "unknown_ops": dict(self.unknown_ops), "unknown_loops": list(self.unknown_loops),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, per-layer, per-phase and per-kernel rows."""
        d = self.summary()
        d["layers"] = self.layer_rows()
        d["phases"] = self.phase_rows()
        d["live_at_peak"] = [{"tensor": n, "bytes": b} for n, b in self.live_at_peak]
        d["kernels_detail"] = [
            {"name": k.name, "shape": self.kernel_shape(k), "layer": names.display_layer(k.layer, k.phase),
             "phase": k.phase, "executions": k.executions, "ops": list(k.ops),
             "flops": k.flops, "bytes": k.bytes_moved, "compute_s": k.compute_s, "memory_s": k.memory_s,
             "comm_s": k.comm_s, "overhead_s": k.overhead_s, "seconds": k.seconds, "bound": k.bound,
             "algorithm": k.algorithm}
            for k in self.kernels]
        d["schedule"] = self.schedule_rows()
        d["notes"] = list(self.plan_notes)
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def to_chrome_trace(self, path: str | None = None) -> dict[str, Any]:
        """The estimated timeline as Trace Event JSON (Perfetto / chrome://tracing), written to ``path`` if given:
        kernels on a compute stream, collectives / inserted work and copies on their own streams
        (``explorer/report/trace.py``). A kernel of a while-loop body is one event lasting all its runs, with
        the run count in its args."""
        return trace.chrome_trace(self, path)

    def plot_roofline(self, target: Any = None):
        """``plots.roofline``: the kernels against the target's roofline (a matplotlib Figure)."""
        return plots.roofline(self, target)

    def plot_layers(self, depth: int | None = 2, top: int = 15):
        """``plots.layer_breakdown``: time per layer, split by bound (a matplotlib Figure)."""
        return plots.layer_breakdown(self, depth=depth, top=top)

    def table(self, top: int = 15, layer_depth: int | None = 2) -> str:
        """Totals, the per-layer breakdown and the top kernels, as text tables."""
        return tables.estimate_table(self, top=top, layer_depth=layer_depth)

    def _repr_html_(self) -> str:
        return tables.estimate_html(self)

    def __str__(self) -> str:
        return self.table()


def _z(x: float) -> float:
    """``x`` with a negative zero made 0.0 (a sum that starts at -0.0 stays -0.0 and would print as such)."""
    return x + 0.0


def _size(w) -> float:
    return (w.matrix_flops * 4 + w.vector_flops + w.transcendentals + w.bytes_accessed) if w is not None else 0.0


def _param_shapes(program) -> frozenset:
    """Shapes (rank >= 2) of the program's inputs: what a weight gradient's result looks like."""
    cache = program.graph.__dict__.setdefault("_param_shapes", None)
    if cache is None:
        cache = frozenset(program.graph.values[v].shape for v in program.graph.inputs
                          if len(program.graph.values[v].shape) >= 2)
        program.graph.__dict__["_param_shapes"] = cache
    return cache
