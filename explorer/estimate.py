"""``estimate``: price a counted program on a target, under a pass pipeline.

The result says how long, why (which bound, which ops, which layers), and what it
could not price (unknown ops, loops with unknown trip counts), in every result.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tabulate import tabulate

from passes.plan import Kernel, Plan

from . import liveness, names, timing
from .costs import Work
from .program import Program


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
        kernels on a compute stream, collectives / inserted work and copies on their own streams (``explorer/trace.py``).
        A kernel of a while-loop body is one event lasting all its runs, with the run count in its args."""
        from .trace import chrome_trace

        return chrome_trace(self, path)

    def plot_roofline(self, target: Any = None):
        """``plots.roofline``: the kernels against the target's roofline (a matplotlib Figure)."""
        from .plots import roofline

        return roofline(self, target)

    def plot_layers(self, depth: int | None = 2, top: int = 15):
        """``plots.layer_breakdown``: time per layer, split by bound (a matplotlib Figure)."""
        from .plots import layer_breakdown

        return layer_breakdown(self, depth=depth, top=top)

    def table(self, top: int = 15, layer_depth: int | None = 2) -> str:
        """Totals, the per-layer breakdown and the top kernels, as text tables."""
        s = self.summary()
        head = [
            ["program", self.program], ["target", self.target], ["pipeline", self.pipeline or "(none)"],
            ["time", fmt_seconds(self.seconds)],
            ["  compute-bound", fmt_seconds(self.compute_seconds)], ["  memory-bound", fmt_seconds(self.memory_seconds)],
            ["  communication-bound", fmt_seconds(self.comm_seconds)], ["  launch overhead", fmt_seconds(self.overhead_seconds)],
            ["bound", self.bound], ["flops", f"{self.flops:.4g}"], ["bytes accessed", fmt_bytes(self.bytes_accessed)],
            ["kernels", str(self.num_kernels)], ["MFU (bf16 peak)", f"{self.mfu:.1%}"],
            ["peak memory", f"{fmt_bytes(self.peak_memory_bytes)} of {fmt_bytes(self.memory_capacity_bytes)}"
             + ("" if self.fits_in_memory else "  DOES NOT FIT")],
            *([["memory", self.memory_report()]] if (len(self.memory_peaks) > 1 or not self.fits_in_memory) else []),
            ["unknown ops", ", ".join(f"{k} x{v}" for k, v in s["unknown_ops"].items()) or "none"],
        ]
        if self.unknown_loops:
            head.append(["unknown trip counts", "; ".join(self.unknown_loops) + " (counted once)"])
        out = [tabulate(head, tablefmt="plain")]
        layers = self.layer_rows(layer_depth)[:top]
        out.append("\nper layer:\n" + tabulate(
            [[r["layer"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", f"{r['flops']:.3g}", fmt_bytes(r["bytes"]),
              r["kernels"], r["bound"]] for r in layers],
            headers=["layer", "time", "share", "flops", "bytes", "kernels", "bound"]))
        out.append("\nper phase:\n" + tabulate(
            [[r["phase"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", r["bound"]] for r in self.phase_rows()],
            headers=["phase", "time", "share", "bound"]))
        total = self.seconds or 1.0
        out.append(f"\ntop {top} kernels:\n" + tabulate(
            [[k.name, k.layer, k.phase, f"{k.executions:g}", f"{k.flops:.3g}", fmt_bytes(k.bytes_moved),
              fmt_seconds(k.seconds), f"{k.seconds / total:.1%}", k.bound] for k in self.top_kernels(top)],
            headers=["kernel", "layer", "phase", "runs", "flops", "bytes", "time", "share", "bound"]))
        return "\n".join(out)

    def _repr_html_(self) -> str:
        s = self.summary()
        head = tabulate([[k, v] for k, v in s.items() if not isinstance(v, (dict, list))], tablefmt="html")
        layers = tabulate([[r["layer"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", r["bound"]] for r in self.layer_rows(2)[:20]],
                          headers=["layer", "time", "share", "bound"], tablefmt="html")
        return f"<h4>Estimate</h4>{head}<h4>per layer</h4>{layers}"

    def __str__(self) -> str:
        return self.table()


def fmt_seconds(s: float) -> str:
    if s == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(s) >= scale:
            return f"{s / scale:.3f} {unit}"
    return f"{s / 1e-9:.3f} ns"


def fmt_bytes(b: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def default_kernels(program: Program) -> tuple[Kernel, ...]:
    """Every op that launches a kernel is its own kernel (no fusion)."""
    from passes.fusion import Fuse

    return Fuse(strategy="none").run(program, Plan(), None).kernels


def price(program: Program, target, plan: Plan, pipeline_text: str = "", strict: bool = False) -> Estimate:
    """Price ``program`` on ``target`` under the decisions in ``plan``."""
    if strict and program.unknown_ops:
        raise UnknownOpsError(f"{program.graph.name}: no cost rule for " +
                              ", ".join(f"{k} x{v}" for k, v in program.unknown_ops.items()))
    graph = program.graph
    kernels = plan.kernels if plan.kernels is not None else default_kernels(program)
    rows: list[KernelRow] = []
    total_flops = total_trans = total_bytes = 0.0
    for kern in kernels:
        works = [w for w in (plan.work(program, o) for o in kern.ops) if w is not None]
        runs = program.weights[kern.ops[0]]
        if runs == 0:
            continue
        t = timing.kernel_time(target, works, _traffic_by_level(target, plan, kern))
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
            compute_s=t.compute_s, memory_s=t.memory_s, comm_s=t.comm_s, overhead_s=t.overhead_s, bound=t.bound))
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
        level = target.memory_level(level_name)
        bw = min(main.bandwidth_bytes_per_s, level.bandwidth_bytes_per_s) * target.efficiency.memory
        rows.append(KernelRow(
            name=f"copy {main.name}<->{level_name}", ops=(), layer="(transfers)", phase="transfer", executions=1.0,
            flops=0.0, transcendentals=0.0, bytes_moved=nbytes, collective_bytes=0.0, compute_s=0.0,
            memory_s=nbytes / bw + max(main.latency_s, level.latency_s), comm_s=0.0, overhead_s=0.0, bound="memory"))
        total_bytes += nbytes
    rows = _mark_phases(rows)
    transient = _transient_values(program, kernels)
    live = main_memory_liveness(program, plan, kernels)
    peaks = {target.main_memory.name: live.peak_bytes}
    for level in {lvl for lvl in (plan.placement or {}).values()}:
        only = frozenset(v for v, lvl in plan.placement.items() if lvl == level)
        others = frozenset(range(len(graph.values))) - only
        peaks[level] = liveness.analyse(graph, transient=transient | others, ranges=plan.live_ranges,
                                        sizes=plan.value_bytes).peak_bytes
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


def main_memory_liveness(program: Program, plan: Plan, kernels: Sequence[Kernel] | None = None) -> liveness.Liveness:
    """Main-memory liveness as ``price`` reports it: values inside fused kernels and values placed in another
    level left out; the plan's live-range overrides (remat, activation offload) and per-device sizes applied.
    One function, so passes that aim at a memory budget (remat ``auto``) see the peak the estimate will report."""
    kernels = kernels if kernels is not None else (plan.kernels if plan.kernels is not None else default_kernels(program))
    elsewhere = frozenset((plan.placement or {}).keys())
    ranged = frozenset(plan.live_ranges or ())   # a value given a live range is materialised over it
    return liveness.analyse(program.graph, transient=(_transient_values(program, kernels) - ranged) | elsewhere,
                            ranges=plan.live_ranges, sizes=plan.value_bytes)


def link_copy_time(target, level_name: str, nbytes: float) -> timing.KernelTime:
    """An asynchronous copy of ``nbytes`` between main memory and ``level_name`` (e.g. host offload traffic).

    Priced as communication (a DMA over a link, like a collective) at the slower side's bandwidth, so that
    an overlappable copy can hide behind compute by the same rule as an async collective."""
    main, level = target.main_memory, target.memory_level(level_name)
    bw = min(main.bandwidth_bytes_per_s, level.bandwidth_bytes_per_s) * target.efficiency.memory
    comm = nbytes / bw + max(main.latency_s, level.latency_s) if nbytes > 0 else 0.0
    return timing.KernelTime(compute_s=0.0, memory_s=0.0, comm_s=comm, overhead_s=0.0)


_TRANSIENT_CACHE: dict[tuple[int, int], tuple[Program, Sequence[Kernel], frozenset[int]]] = {}


def _transient_values(program: Program, kernels: Sequence[Kernel]) -> frozenset[int]:
    """Values that stay inside a fused kernel, or belong to no kernel (duplicated generators), never hit memory.

    Cached for the last few (program, kernels) pairs: price, passes aiming at a memory budget (remat) and
    searches over pipelines ask for the same fusion plan's answer many times."""
    hit = _TRANSIENT_CACHE.get((id(program), id(kernels)))
    if hit is not None and hit[0] is program and hit[1] is kernels:
        return hit[2]
    out = _transient_uncached(program, kernels)
    while len(_TRANSIENT_CACHE) >= 4:
        _TRANSIENT_CACHE.pop(next(iter(_TRANSIENT_CACHE)))
    _TRANSIENT_CACHE[(id(program), id(kernels))] = (program, kernels, out)
    return out


def _transient_uncached(program: Program, kernels: Sequence[Kernel]) -> frozenset[int]:
    graph = program.graph
    owner = {o: i for i, k in enumerate(kernels) for o in k.ops}
    users = graph.consumers()
    out = set()
    for op in graph.ops:
        if op.id not in owner:
            w = program.works[op.id]
            if w is not None and w.launches_kernel:
                out.update(r for r in op.results if r not in graph.outputs and r not in graph.escaping)
            continue
        for r in op.results:
            if r in graph.outputs or r in graph.escaping:
                continue
            readers = users.get(r, ())
            if readers and all(owner.get(u) == owner[op.id] for u in readers):
                out.add(r)
    return frozenset(out)


def _traffic_by_level(target, plan: Plan, kern: Kernel) -> dict[str, float]:
    """Bytes the kernel moves in each memory level (main memory unless the placement says otherwise)."""
    main = target.main_memory.name
    placement = plan.placement or {}
    traffic: dict[str, float] = {main: kern.spill_bytes}
    for v, b in (*kern.reads, *kern.writes):
        lvl = placement.get(v, main)
        traffic[lvl] = traffic.get(lvl, 0.0) + b
    return traffic


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
    from dataclasses import replace
    return replace(r, phase=phase)
