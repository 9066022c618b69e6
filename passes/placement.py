"""Memory placement: which tensors live in which level of the memory hierarchy.

Policies:
- ``hbm`` (default): everything in main memory.
- ``greedy``: tensors with the most memory time saved per byte go to the fastest on-chip
  level, while the live bytes placed there never exceed its capacity at any step of the
  schedule (program order of the kernels).
- ``ilp``: the same choice solved exactly as a 0/1 knapsack over the live intervals with
  scipy's HiGHS (``scipy.optimize.milp``), maximising memory time saved.
Then, if the program's peak in main memory exceeds its capacity and ``offload`` allows it,
tensors move to host memory (cheapest host-link time per byte first: optimizer state,
then weights, then activations, as ``offload`` permits) until it fits. Each access to a
tensor is priced at the bandwidth of the level it lives in; a host tensor's accesses cross
the host link. What cannot be made to fit is reported, never priced as if it fitted.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import bisect

import numpy as np

from explorer.model.memory import main_memory_liveness

from .fusion import kernels_of
from .pipeline import register
from .plan import Plan

_OPT_STATE_HINTS = (".mu", ".nu", "opt", "momentum", "trace", ".count", "adam", "state")


def kernel_order(program, plan: Plan):
    return sorted(kernels_of(program, plan), key=lambda k: min(k.ops))


def intervals(program, kernels) -> tuple[dict[int, tuple[int, int]], dict[int, float]]:
    """value id -> (first, last) kernel index it is live over, and its memory traffic (bytes, all runs)."""
    graph = program.graph
    end = len(kernels)
    live: dict[int, list[int]] = {}
    traffic: dict[int, float] = {}
    for v in graph.inputs:
        live[v] = [0, end]
    for i, k in enumerate(kernels):
        runs = program.weights[k.ops[0]]
        for v, b in k.writes:
            span = live.setdefault(v, [i, i])
            span[0] = min(span[0], i)
            traffic[v] = traffic.get(v, 0.0) + b * runs
        for v, b in k.reads:
            span = live.setdefault(v, [i, i])
            span[1] = max(span[1], i)
            traffic[v] = traffic.get(v, 0.0) + b * runs
    for v in graph.outputs:
        if v in live:
            live[v][1] = end
    return {v: (s, e) for v, (s, e) in live.items()}, traffic


def value_kind(program, vid: int) -> str:
    """'optimizer' / 'weight' for program inputs (by their pytree path), else 'activation'."""
    graph = program.graph
    if vid in graph.inputs:
        name = graph.input_names[graph.inputs.index(vid)]
        return "optimizer" if any(h in name for h in _OPT_STATE_HINTS) else "weight"
    return "activation"


def peak_usage(spans: dict[int, tuple[int, int]], sizes: dict[int, float], chosen, steps: int,
               ranges: dict[int, tuple[tuple[int, int], ...]] | None = None) -> np.ndarray:
    """Live bytes of ``chosen`` per kernel step; ``ranges`` (kernel-index intervals) replace a value's span."""
    usage = np.zeros(steps + 2)
    for v in chosen:
        for s, e in (ranges or {}).get(v, (spans[v],)):
            usage[s] += sizes[v]
            usage[e + 1] -= sizes[v]
    return np.cumsum(usage)


def _kernel_ranges(kernels, live_ranges) -> dict[int, tuple[tuple[int, int], ...]]:
    """A plan's op-id live ranges (remat) as kernel-index intervals (an op maps to the kernel starting at or before it)."""
    starts = [min(k.ops) for k in kernels]

    def at(op_id: int) -> int:
        return max(bisect.bisect_right(starts, op_id) - 1, 0)
    return {v: tuple((at(a), at(b)) for a, b in ivs) for v, ivs in live_ranges.items()}


@register
@dataclass(frozen=True)
class Place:
    """The placement pass. Options: ``policy`` (hbm | greedy | ilp), ``offload`` (none | auto |
    optimizer | weights | activations: what may move to host memory when main memory overflows),
    ``level`` (the fast level to fill; default: the target's on-chip level), ``force`` (move every
    tensor of the kinds ``offload`` names to host memory even when main memory does not overflow: an
    explicit ZeRO-offload choice). Live ranges set by an earlier pass (remat) are honoured."""

    name = "place"
    policy: str = "hbm"
    offload: str = "none"
    level: str = ""
    force: bool = False

    def __post_init__(self):
        if self.policy not in ("hbm", "greedy", "ilp"):
            raise ValueError(f"policy must be hbm, greedy or ilp, got {self.policy!r}")
        if self.offload not in ("none", "auto", "optimizer", "weights", "activations"):
            raise ValueError(f"offload must be none, auto, optimizer, weights or activations, got {self.offload!r}")

    def alternatives(self) -> list["Place"]:
        return [Place(policy=p, offload=self.offload, level=self.level, force=self.force) for p in ("hbm", "greedy", "ilp")]

    def reads_knobs(self) -> frozenset[str]:
        """The target knobs this pass's decisions read (patterns as ``explorer.sweep.knob_matches`` takes them):
        ``hbm`` without offload reads none; otherwise the levels' capacities, bandwidths and latencies."""
        if self.policy == "hbm" and self.offload == "none":
            return frozenset()
        return frozenset({"memory.", "efficiency.memory"})

    def run(self, program, plan: Plan, target) -> Plan:
        kernels = kernel_order(program, plan)
        spans, traffic = intervals(program, kernels)
        sizes = {v: float(program.graph.values[v].nbytes) for v in spans}
        steps = len(kernels) + 1
        main = target.main_memory
        placement: dict[int, str] = {}
        transfers: dict[str, float] = dict(plan.transfer_bytes)
        notes: list[str] = []
        fast = target.memory_level(self.level) if self.level else target.on_chip
        if self.policy != "hbm" and fast is not None:
            main_t = 1.0 / (main.bandwidth_bytes_per_s * target.efficiency.memory)
            fast_t = 1.0 / (fast.bandwidth_bytes_per_s * target.efficiency.memory)
            graph = program.graph
            boundary = set(graph.inputs) | set(graph.outputs)   # these start or end in main memory: one copy each way
            saving = {v: traffic.get(v, 0.0) * (main_t - fast_t) - (sizes[v] * main_t if v in boundary else 0.0)
                      for v in spans}
            cands = [v for v in spans if 0 < sizes[v] <= fast.capacity_bytes and saving[v] > 0]
            chosen = (_greedy if self.policy == "greedy" else _ilp)(cands, spans, sizes, saving, fast.capacity_bytes, steps)
            if any(v in boundary for v in chosen):
                # copying boundary tensors in/out is one more transfer, with its latency: only worth it if it pays
                copy_latency = max(main.latency_s, fast.latency_s)
                if sum(saving[v] for v in chosen) <= copy_latency:
                    chosen = [v for v in chosen if v not in boundary]
            for v in chosen:
                placement[v] = fast.name
            moved = sum(sizes[v] for v in chosen if v in boundary)
            if moved:
                transfers[fast.name] = transfers.get(fast.name, 0.0) + moved
            peak = peak_usage(spans, sizes, chosen, steps).max() if chosen else 0.0
            notes.append(f"place: {len(chosen)} tensors in {fast.name} ({sum(sizes[v] for v in chosen) / 1e6:.1f} MB over "
                         f"the program, at most {peak / 1e6:.1f} MB at once)")
        if self.offload != "none" and target.host_memory is not None:
            in_main = [v for v in spans if v not in placement]
            ranges = _kernel_ranges(kernels, plan.live_ranges) if plan.live_ranges else None
            usage = peak_usage(spans, sizes, in_main, steps, ranges)
            overflows = usage.max() > main.capacity_bytes
            if overflows and plan.live_ranges:   # after remat: trust the estimate's own liveness when it fits
                placed = plan.with_(placement=MappingProxyType(placement))
                overflows = main_memory_liveness(program, placed, kernels_of(program, placed)
                                                 ).peak_bytes > main.capacity_bytes
            if self.force or overflows:
                moved = _offload(program, self.offload, in_main, spans, sizes, traffic, usage, main.capacity_bytes,
                                 ranges, force=self.force)
                for v in moved:
                    placement[v] = target.host_memory.name
                notes.append(f"place: offloaded {len(moved)} tensors ({sum(sizes[v] for v in moved) / 1e9:.2f} GB) "
                             f"to {target.host_memory.name}")
        return plan.with_(placement=MappingProxyType(placement), transfer_bytes=MappingProxyType(transfers),
                          notes=plan.notes + tuple(notes))


def _greedy(cands, spans, sizes, saving, capacity, steps) -> list[int]:
    usage = np.zeros(steps + 1)
    chosen = []
    for v in sorted(cands, key=lambda v: (-saving[v] / sizes[v], v)):
        s, e = spans[v]
        if usage[s:e + 1].max(initial=0.0) + sizes[v] <= capacity:
            usage[s:e + 1] += sizes[v]
            chosen.append(v)
    return chosen


def _ilp(cands, spans, sizes, saving, capacity, steps, max_candidates: int = 4000) -> list[int]:
    """0/1 knapsack over live intervals: max saving s.t. placed live bytes <= capacity at every step."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    cands = sorted(cands, key=lambda v: (-saving[v], v))[:max_candidates]
    if not cands:
        return []
    points = sorted({spans[v][0] for v in cands})   # usage can only peak where an interval starts
    row = {p: i for i, p in enumerate(points)}
    a = lil_matrix((len(points), len(cands)))
    for j, v in enumerate(cands):
        s, e = spans[v]
        for p in points[np.searchsorted(points, s):np.searchsorted(points, e, side="right")]:
            a[row[p], j] = sizes[v]
    scale = max(saving[v] for v in cands) or 1.0
    res = milp(c=-np.array([saving[v] / scale for v in cands]), integrality=np.ones(len(cands)),
               bounds=Bounds(0, 1), constraints=LinearConstraint(a.tocsr(), -np.inf, capacity),
               options={"time_limit": 30.0})
    if res.x is None:
        return _greedy(cands, spans, sizes, saving, capacity, steps)
    return [v for v, x in zip(cands, res.x) if x > 0.5]


def _offload(program, policy, in_main, spans, sizes, traffic, usage, capacity, ranges=None, force=False) -> list[int]:
    allowed = {"auto": ("optimizer", "weight", "activation"), "optimizer": ("optimizer",),
               "weights": ("optimizer", "weight"), "activations": ("activation",)}[policy]
    rank = {k: i for i, k in enumerate(("optimizer", "weight", "activation"))}
    cands = [v for v in in_main if value_kind(program, v) in allowed and sizes[v] > 0]
    cands.sort(key=lambda v: (rank[value_kind(program, v)], traffic.get(v, 0.0) / sizes[v], v))
    moved = []
    usage = usage.copy()
    for v in cands:
        if not force and usage.max() <= capacity:
            break
        intervals = (ranges or {}).get(v, (spans[v],))
        if not force and all(usage[s:e + 1].max() <= capacity for s, e in intervals):
            continue    # not live at any overflowing step
        for s, e in intervals:
            usage[s:e + 1] -= sizes[v]
        moved.append(v)
    return moved
