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
from ..model import timing
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

    @property
    def seconds(self) -> float:
        """Time of all executions."""
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

    # -- totals: every kernel's time is attributed to its bound; the parts add up to ``seconds``
    @property
    def overhead_seconds(self) -> float:
        return float(sum(k.overhead_s * k.executions for k in self.kernels))

    @property
    def compute_seconds(self) -> float:
        return self._attributed("compute")

    @property
    def memory_seconds(self) -> float:
        return self._attributed("memory")

    @property
    def comm_seconds(self) -> float:
        return self._attributed("communication")

    def _attributed(self, which: str) -> float:
        total = -self.hidden_comm_seconds if which == "communication" else 0.0
        for k in self.kernels:
            body = max(k.compute_s, k.memory_s, k.comm_s)
            if body == 0:
                continue
            if timing.body_bound(k.compute_s, k.memory_s, k.comm_s) == which:
                total += body * k.executions
        return total

    @property
    def hidden_comm_seconds(self) -> float:
        """Overlappable communication hidden behind compute (at most the compute-bound time available)."""
        overlappable = sum(k.comm_s * k.executions for k in self.kernels if k.overlappable and k.bound == "communication")
        compute = sum(k.seconds for k in self.kernels if not k.overlappable and k.bound == "compute")
        return float(min(overlappable, compute))

    @property
    def exposed_comm_seconds(self) -> float:
        return self.comm_seconds

    @property
    def seconds(self) -> float:
        """Wall time: every kernel in sequence, minus communication hidden behind compute."""
        return float(sum(k.seconds for k in self.kernels)) - self.hidden_comm_seconds

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
        """Per layer (name-stack path cut at ``depth`` components): time, share, bound."""
        return self._group(lambda k: names.layer_at_depth(k.layer, depth), "layer")

    def phase_rows(self) -> list[dict]:
        return self._group(lambda k: k.phase, "phase")

    def _group(self, key, label: str) -> list[dict]:
        groups: dict[str, dict[str, float]] = {}
        for k in self.kernels:
            g = groups.setdefault(key(k), {"seconds": 0.0, "flops": 0.0, "bytes": 0.0, "kernels": 0,
                                            "compute": 0.0, "memory": 0.0, "communication": 0.0, "overhead": 0.0})
            g["seconds"] += k.seconds
            g["flops"] += k.flops
            g["bytes"] += k.bytes_moved
            g["kernels"] += 1
            g[k.bound] += k.seconds
        total = self.seconds or 1.0
        rows = []
        for name, g in groups.items():
            bound = max(("compute", "memory", "communication", "overhead"), key=lambda b: g[b])
            rows.append({label: name, "seconds": g["seconds"], "share": g["seconds"] / total, "flops": g["flops"],
                         "bytes": g["bytes"], "kernels": int(g["kernels"]), "bound": bound})
        rows.sort(key=lambda r: (-r["seconds"], r[label]))
        return rows

    def top_kernels(self, n: int = 15) -> list[KernelRow]:
        return sorted(self.kernels, key=lambda k: (-k.seconds, k.ops))[:n]

    # -- rendering ------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "program": self.program, "target": self.target, "pipeline": self.pipeline,
            "seconds": self.seconds, "compute_seconds": self.compute_seconds, "memory_seconds": self.memory_seconds,
            "comm_seconds": self.comm_seconds, "overhead_seconds": self.overhead_seconds, "bound": self.bound,
            "flops": self.flops, "transcendentals": self.transcendentals, "bytes_accessed": self.bytes_accessed,
            "kernels": self.num_kernels, "mfu": self.mfu, "peak_memory_bytes": self.peak_memory_bytes,
            "memory_capacity_bytes": self.memory_capacity_bytes, "fits_in_memory": self.fits_in_memory,
            "memory_peaks": dict(self.memory_peaks),
            "unknown_ops": dict(self.unknown_ops), "unknown_loops": list(self.unknown_loops),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, per-layer, per-phase and per-kernel rows."""
        d = self.summary()
        d["layers"] = self.layer_rows()
        d["phases"] = self.phase_rows()
        d["live_at_peak"] = [{"tensor": n, "bytes": b} for n, b in self.live_at_peak]
        d["kernels_detail"] = [
            {"name": k.name, "layer": k.layer, "phase": k.phase, "executions": k.executions, "ops": list(k.ops),
             "flops": k.flops, "bytes": k.bytes_moved, "compute_s": k.compute_s, "memory_s": k.memory_s,
             "comm_s": k.comm_s, "overhead_s": k.overhead_s, "seconds": k.seconds, "bound": k.bound}
            for k in self.kernels]
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


