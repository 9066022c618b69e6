"""Memory placement: which tensors live in which level of the memory hierarchy.

Policies:
- ``hbm`` (default): everything in main memory.
- ``greedy``: tensors (with their views and loop buffers) go to the fastest on-chip level, the moves that save
  the most time per byte first, while the bytes placed there never exceed its capacity at any point of the
  schedule.
- ``ilp``: the same choice as an integer program (the cost model's kernel time made linear) solved with
  HiGHS under a deterministic work limit (``node_limit``; the notes say whether the answer is optimal or where
  the solver stopped), started from the better greedy plan (the solver only improves on it, and proves it
  sooner: 2x faster on the GPT-2 step); the greedy plan is kept when the solver's is not better.

What a placement saves is scored on whole kernels: each kernel touching a tensor is priced as the cost model
prices it (``timing.kernel_time``: max(compute, memory, communication), memory being the bytes in each level
at its bandwidth plus the latency of the slowest level touched), with and without the tensor on chip. A
tensor on chip saves bandwidth only where its kernels are memory-bound, and a kernel whose every tensor is on
chip also saves main memory's latency (which matters when main memory is as fast as the on-chip level, or
faster), so the candidate moves are single tensors and whole kernels (all the tensors one kernel touches).
Tensors that start or end in main memory (program inputs and outputs, and the loop buffers that are theirs)
need a copy each way, priced as the plan's transfer row (``transfer_bytes``); they are placed only when that
pays. The plan is never slower than placing nothing, by the estimate's own prices. Because compute time
decides whether a kernel is memory-bound, the decisions read the compute knobs too (``reads_knobs``).

Capacity is checked the way the estimate measures it: over the op schedule, with each tensor live from
its definition to its last reader through its views, as ``explorer.model.liveness`` counts it (live
ranges set by remat and per-device sizes set by sharding included); the plan is checked once more with
``explorer.model.memory.level_peaks`` before it is returned.

Then, if the program's peak in main memory exceeds its capacity and ``offload`` allows it,
tensors move to host memory (cheapest host-link time per byte first: optimizer state,
then weights, then activations, as ``offload`` permits) until it fits. Each access to a
tensor is priced at the bandwidth of the level it lives in; a host tensor's accesses cross
the host link. What cannot be made to fit is reported, never priced as if it fitted.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from explorer.graph.gcpause import paused_gc
from explorer.model import liveness, timing
from explorer.model.memory import level_peaks, main_memory_liveness
from explorer.model.traffic import traffic_by_level, transfer_time
from explorer.report.units import fmt_bytes, fmt_seconds

from .fusion import kernels_of
from .pipeline import register
from .plan import Plan
from .solver import solve_milp

PLACE_NODE_LIMIT = 200     # branch-and-bound nodes for place{policy=ilp}: a work limit, so every process agrees
# proved within 0.01% of optimal is optimal enough (a placement's time is a model's estimate), and HiGHS's presolve
# costs more than it saves on these interval-packing programs (GPT-2 unfused: the root 38.7 s with it, 16.6 s
# without, the same placement): both deterministic, measured in benchmarks/speed_targets.py
PLACE_MIP_GAP = 1e-4
PLACE_PRESOLVE = False
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


def loop_buffers(graph) -> dict[int, int]:
    """A while loop's block arguments -> the operand whose buffer they are (the loop carries its values in place;
    the importer numbers the condition's and then the body's arguments right after the loop's results)."""
    out: dict[int, int] = {}
    for op in graph.ops:
        if op.name not in ("stablehlo.while", "mhlo.while") or not op.results or not op.operands:
            continue
        k = len(op.operands)
        args = range(max(op.results) + 1, max(op.results) + 1 + 2 * k)
        if args[-1] >= len(graph.values) or any(a in graph.producers for a in args):
            continue
        if all(graph.values[a].nbytes == graph.values[op.operands[j % k]].nbytes for j, a in enumerate(args)):
            out.update((a, op.operands[j % k]) for j, a in enumerate(args))
    return out


def memory_spans(program, plan: Plan) -> tuple[dict[int, tuple[tuple[int, int], ...]], dict[int, int]]:
    """(root value -> the op-position intervals it occupies memory over, view -> its root), exactly as the
    estimate's liveness counts them: ``explorer.model.liveness.analyse`` in program order with the plan's live
    ranges (``plan.live_ranges``: remat, activation offload). A view (reshape, bitcast, an in-place update, a
    loop result) shares its root's buffer, which stays live until the view's last reader; a loop's block
    arguments have no interval of their own (they are the buffers of the loop's operands and results)."""
    graph = program.graph
    return liveness.live_spans(graph, None, plan.live_ranges), liveness.alias_roots(graph)


@dataclass
class _OnChip:
    """The on-chip choice as data: candidate groups (a root value and its views), their sizes, intervals and the
    kernels that touch them, and each kernel's time under a placement (the cost model's formula)."""

    target: Any
    fast: Any
    kernels: list            # the plan's kernels that run (runs > 0)
    works: list[list]        # per kernel: the per-device work of its ops, as pricing reads it
    runs: list[float]
    members: list[tuple[int, ...]]        # per group: value ids placed together (root first)
    size: list[int]
    spans: list[tuple[tuple[int, int], ...]]
    boundary: list[bool]
    touches: list[tuple[int, ...]]        # per group: kernel indices
    groups_of: list[tuple[int, ...]]      # per kernel: candidate group indices
    value_group: dict[int, int]
    steps: int
    prior_transfer: float
    kernel_bytes: list[dict[int, float]]  # per kernel: candidate group -> bytes it moves (per run)
    fixed_bytes: list[float]              # per kernel: bytes that stay in main memory (other values, spills)
    floor: list[float] = None             # per kernel: max(compute, communication), what memory time hides behind
    main_bw: float = 0.0
    fast_bw: float = 0.0
    main_lat: float = 0.0
    fast_lat: float = 0.0

    def __post_init__(self) -> None:
        eff = self.target.efficiency.memory
        main = self.target.main_memory
        self.main_bw, self.main_lat = main.bandwidth_bytes_per_s * eff, main.latency_s
        self.fast_bw, self.fast_lat = self.fast.bandwidth_bytes_per_s * eff, self.fast.latency_s
        self.floor = []
        for w in self.works:
            t = timing.kernel_time(self.target, w, {}, launches=False)
            self.floor.append(max(t.compute_s, t.comm_s))

    def kernel_seconds(self, k: int, placed) -> float:
        """Time of kernel ``k`` (all its runs) with the groups in ``placed`` on chip, priced by the cost model itself
        (``traffic_by_level`` + ``timing.kernel_time``): what the estimate will say."""
        kern = self.kernels[k]
        on = {v: self.fast.name for v, _ in (*kern.reads, *kern.writes)
              if self.value_group.get(v) is not None and self.value_group[v] in placed}
        return timing.kernel_time(self.target, self.works[k], traffic_by_level(self.target, on, kern)).seconds * self.runs[k]

    def quick_seconds(self, main_bytes: float, on_bytes: float, k: int) -> float:
        """``kernel_seconds`` (less the launch overhead, a constant) from a kernel's bytes in main memory and on chip:
        the same formula, for the search."""
        t = 0.0
        lat = 0.0
        if main_bytes > 0:
            t += main_bytes / self.main_bw
            lat = self.main_lat
        if on_bytes > 0:
            t += on_bytes / self.fast_bw
            lat = max(lat, self.fast_lat)
        return max(self.floor[k], t + lat) * self.runs[k]

    def transfer(self, boundary_bytes: float, latency_paid: bool = False) -> float:
        """The transfer row's time for ``boundary_bytes`` more (its latency left out when ``latency_paid``)."""
        total = self.prior_transfer + boundary_bytes
        t = transfer_time(self.target, self.fast.name, total).memory_s if total > 0 else 0.0
        base = transfer_time(self.target, self.fast.name, self.prior_transfer).memory_s if self.prior_transfer > 0 else 0.0
        if latency_paid and self.prior_transfer <= 0 and total > 0:
            base = transfer_time(self.target, self.fast.name, 0.0).memory_s
        return t - base

    def total(self, placed) -> float:
        """The change in the estimate's time with ``placed`` on chip: the kernels touching them, and the transfer row."""
        ks = sorted({k for g in placed for k in self.touches[g]})
        return (sum(self.kernel_seconds(k, placed) - self.kernel_seconds(k, ()) for k in ks)
                + self.transfer(sum(self.size[g] for g in placed if self.boundary[g])))


def _on_chip_model(program, plan: Plan, target, fast, kernels) -> _OnChip:
    graph = program.graph
    spans, root = memory_spans(program, plan)
    group_root = dict(root)          # views, and a loop's block arguments: placed with the buffer they are
    for a, operand in loop_buffers(graph).items():
        group_root[a] = root.get(operand, operand)
    boundary_values = set(graph.inputs) | set(graph.outputs)
    run_kernels = [k for k in kernels if program.weights[k.ops[0]] > 0]
    touched: dict[int, set[int]] = {}
    for i, k in enumerate(run_kernels):
        for v, b in (*k.reads, *k.writes):
            if b > 0:
                touched.setdefault(group_root.get(v, v), set()).add(i)
    views: dict[int, list[int]] = {}
    for v, r in sorted(group_root.items()):
        views.setdefault(r, []).append(v)
    members, size, ivs, bnd, touches = [], [], [], [], []
    value_group: dict[int, int] = {}
    for r in sorted(touched):
        if r not in spans:
            continue       # no buffer of its own in the estimate's liveness (not found as a loop's buffer)
        nbytes = int(plan.value_bytes[r]) if plan.value_bytes is not None and r in plan.value_bytes \
            else graph.values[r].nbytes
        if nbytes <= 0 or nbytes > fast.capacity_bytes:
            continue
        g = len(members)
        mem = (r, *views.get(r, ()))
        members.append(mem)
        size.append(nbytes)
        ivs.append(spans[r])
        bnd.append(any(v in boundary_values for v in mem))
        touches.append(tuple(sorted(touched[r])))
        for v in mem:
            value_group[v] = g
    groups_of: list[list[int]] = [[] for _ in run_kernels]
    for g, ks in enumerate(touches):
        for k in ks:
            groups_of[k].append(g)
    kernel_bytes: list[dict[int, float]] = []
    fixed: list[float] = []
    for k in run_kernels:
        per: dict[int, float] = {}
        rest = k.spill_bytes
        for v, b in (*k.reads, *k.writes):
            g = value_group.get(v)
            if g is None:
                rest += b
            else:
                per[g] = per.get(g, 0.0) + b
        kernel_bytes.append(per)
        fixed.append(rest)
    works = [[w for w in (plan.work(program, o) for o in k.priced_ops) if w is not None] for k in run_kernels]
    return _OnChip(target=target, fast=fast, kernels=run_kernels, works=works,
                   runs=[float(program.weights[k.ops[0]]) for k in run_kernels], members=members, size=size,
                   spans=ivs, boundary=bnd, touches=touches, groups_of=[tuple(g) for g in groups_of],
                   value_group=value_group, steps=len(graph.ops) + 1,
                   prior_transfer=float(plan.transfer_bytes.get(fast.name, 0.0)), kernel_bytes=kernel_bytes,
                   fixed_bytes=fixed)


def _usage(m: _OnChip, placed) -> np.ndarray:
    usage = np.zeros(m.steps + 1)
    for g in placed:
        for s, e in m.spans[g]:
            usage[s] += m.size[g]
            usage[e + 1] -= m.size[g]
    return np.cumsum(usage)


_VECTOR_MOVE = 96     # a move touching more (kernel, group) pairs than this is scored with arrays


def _greedy(m: _OnChip, capacity: float, allow_boundary: bool) -> frozenset[int]:
    """Best memory time saved per byte first, single groups or whole kernels, re-scored as the placement grows;
    a move is taken only if the bytes on chip stay within ``capacity`` at every step."""
    allowed = [allow_boundary or not b for b in m.boundary]
    placed: set[int] = set()
    nk = len(m.kernels)
    on = [0.0] * nk
    off = [m.fixed_bytes[k] + sum(m.kernel_bytes[k].values()) for k in range(nk)]
    cur = [m.quick_seconds(off[k], 0.0, k) for k in range(nk)]
    usage = np.zeros(m.steps + 1)
    boundary_bytes = 0.0
    version: dict[tuple[int, int], int] = {}
    heap: list[tuple[float, tuple[int, int], int]] = []

    def content(key) -> tuple[int, ...]:
        kind, i = key
        cands = (i,) if kind == 0 else m.groups_of[i]
        return tuple(g for g in cands if allowed[g] and g not in placed)

    # per group: (kernel, bytes it moves there) over the kernels it touches, in kernel order (what ``shifts`` sums)
    moves_of = [tuple((k, 0.0 + m.kernel_bytes[k].get(g, 0.0)) for k in m.touches[g]) for g in range(len(m.members))]
    main_bw, fast_bw, main_lat, fast_lat = m.main_bw, m.fast_bw, m.main_lat, m.fast_lat
    floor, runs = m.floor, m.runs

    def shifts(move) -> dict[int, float]:
        out: dict[int, float] = {}
        for g in move:
            for k, b in moves_of[g]:
                out[k] = out.get(k, 0.0) + b
        return out

    # the same, as arrays, for big moves (a kernel's every group): the kernels' states mirrored in arrays
    k_of = [np.array([k for k, _ in mv], dtype=np.intp) for mv in moves_of]
    b_of = [np.array([b for _, b in mv], dtype=float) for mv in moves_of]
    off_a, on_a, cur_a = np.array(off, dtype=float), np.zeros(nk), np.array(cur, dtype=float)
    floor_a, runs_a = np.array(floor, dtype=float), np.array(runs, dtype=float)

    def delta_of(move) -> float:
        """``score``'s sum over the kernels, elementwise in numpy: each kernel's bytes summed in the same order
        (``np.add.at`` is unbuffered and sequential), the same IEEE operations per kernel, and the kernels' terms
        added one after another in kernel order (``np.cumsum`` is sequential), so the float is the loop's."""
        ks = np.concatenate([k_of[g] for g in move])
        bs = np.concatenate([b_of[g] for g in move])
        if len(move) == 1:
            uk, acc = ks, bs
        else:
            uk, inv = np.unique(ks, return_inverse=True)
            acc = np.zeros(len(uk))
            np.add.at(acc, inv, bs)
        mb, ob = off_a[uk] - acc, on_a[uk] + acc
        pos_m, pos_o = mb > 0, ob > 0
        t = np.where(pos_m, mb / main_bw, 0.0)
        t = np.where(pos_o, t + ob / fast_bw, t)
        lat = np.where(pos_m, main_lat, 0.0)
        lat = np.where(pos_o, np.maximum(lat, fast_lat), lat)
        terms = np.maximum(floor_a[uk], t + lat) * runs_a[uk] - cur_a[uk]
        return 0.0 + float(np.cumsum(terms)[-1]) if len(terms) else 0.0

    def score(move) -> tuple[float, float]:
        # ``m.quick_seconds`` inlined, the same operations in the same order (this loop is the pass's time)
        if sum(len(moves_of[g]) for g in move) > _VECTOR_MOVE:
            return _finish(delta_of(move), move)
        delta = 0.0
        for k, b in (moves_of[move[0]] if len(move) == 1 else sorted(shifts(move).items())):
            mb, ob = off[k] - b, on[k] + b
            t = 0.0
            lat = 0.0
            if mb > 0:
                t += mb / main_bw
                lat = main_lat
            if ob > 0:
                t += ob / fast_bw
                lat = max(lat, fast_lat)
            delta += max(floor[k], t + lat) * runs[k] - cur[k]
        return _finish(delta, move)

    def _finish(delta: float, move) -> tuple[float, float]:
        add = sum(m.size[g] for g in move if m.boundary[g])
        if add:
            delta += m.transfer(boundary_bytes + add, latency_paid=True) - m.transfer(boundary_bytes, latency_paid=True)
        return -delta, float(sum(m.size[g] for g in move))

    def push(key) -> None:
        version[key] = version.get(key, 0) + 1
        move = content(key)
        if not move:
            return
        gain, nbytes = score(move)
        if gain > 0:
            heapq.heappush(heap, (-gain / nbytes, key, version[key]))

    def fits(move) -> bool:
        lo = min(s for g in move for s, _ in m.spans[g])
        hi = max(e for g in move for _, e in m.spans[g])
        window = usage[lo:hi + 1].copy()
        for g in move:
            for s, e in m.spans[g]:
                window[s - lo:e - lo + 1] += m.size[g]
        return float(window.max()) <= capacity

    for g in range(len(m.members)):
        push((0, g))
    for k in range(nk):
        if len(m.groups_of[k]) > 1:
            push((1, k))
    while heap:
        neg, key, ver = heapq.heappop(heap)
        if ver != version.get(key):
            continue
        move = content(key)
        if not move:
            continue
        gain, nbytes = score(move)
        if gain <= 0:
            continue
        if gain / nbytes < -neg:           # worth less than when it was queued: back in line
            heapq.heappush(heap, (-gain / nbytes, key, ver))
            continue
        if not fits(move):
            continue
        placed.update(move)
        for g in move:
            for s, e in m.spans[g]:
                usage[s:e + 1] += m.size[g]
            if m.boundary[g]:
                boundary_bytes += m.size[g]
        ks = sorted(shifts(move).items())
        for k, b in ks:
            on[k] += b
            off[k] -= b
            cur[k] = m.quick_seconds(off[k], on[k], k)
            on_a[k], off_a[k], cur_a[k] = on[k], off[k], cur[k]
        near = sorted({h for k, _ in ks for h in m.groups_of[k] if h not in placed})
        for h in near:
            push((0, h))
        for k in sorted({k for k, _ in ks} | {k for h in near for k in m.touches[h]}):
            if len(m.groups_of[k]) > 1:
                push((1, k))
    return frozenset(placed)


def _clique_points(ivs) -> list[int]:
    """The steps where the set of live intervals is maximal: an interval starts there and one ends before the next
    start (between two such steps the live set only grows, so the later step's constraint implies the earlier's)."""
    starts = sorted({s for s, _ in ivs})
    ends = sorted(e for _, e in ivs)
    out = []
    for i, p in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else None
        if nxt is None or bisect.bisect_left(ends, p) < bisect.bisect_left(ends, nxt):
            out.append(p)
    return out


def _live_at(points: list[int], spans: list) -> list[list[int]]:
    """Per point (ascending), the indices (ascending) of the entries of ``spans`` with an interval containing it: one
    sweep over the sorted interval ends instead of every entry tested at every point."""
    events = sorted((s, e, j) for j, ivs in enumerate(spans) for s, e in ivs)
    out: list[list[int]] = []
    active: list[tuple[int, int]] = []     # heap of (end, entry) for the intervals started so far
    count: dict[int, int] = {}             # entry -> its intervals that contain the current point
    i = 0
    for p in points:
        while i < len(events) and events[i][0] <= p:
            _, e, j = events[i]
            heapq.heappush(active, (e, j))
            count[j] = count.get(j, 0) + 1
            i += 1
        while active and active[0][0] < p:
            _, j = heapq.heappop(active)
            count[j] -= 1
            if not count[j]:
                del count[j]
        out.append(sorted(count))
    return out


def _ilp(m: _OnChip, capacity: float, node_limit: int, max_groups: int = 4000,
         start: frozenset[int] = frozenset()) -> tuple[frozenset[int], str]:
    """The placement as an integer program, the cost model's formula made linear: minimise the kernels' time
    (tau_k >= max(compute, communication); tau_k >= bytes at each level's bandwidth + main memory's latency unless
    every tensor of the kernel is on chip) plus the transfer row, subject to the bytes on chip <= ``capacity``
    wherever a group's interval starts (where usage can peak). Times in units of the slowest kernel, bytes in units
    of the capacity, so HiGHS's tolerances are relative."""
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.sparse import coo_matrix

    if not m.members:
        return frozenset(), ""
    main, fast = m.target.main_memory, m.fast
    traffic = [sum(m.runs[k] * m.kernel_bytes[k].get(g, 0.0) for k in m.touches[g]) for g in range(len(m.members))]
    groups = sorted(range(len(m.members)), key=lambda g: (-traffic[g], g))[:max_groups]
    col = {g: j for j, g in enumerate(groups)}
    n = len(groups)
    per_byte = 1.0 / m.fast_bw - 1.0 / m.main_bw
    d_lat = m.main_lat - m.fast_lat
    kernels = sorted({k for g in groups for k in m.touches[g]})
    unit = max((max(m.floor[k], (m.fixed_bytes[k] + sum(m.kernel_bytes[k].values())) / m.main_bw + m.main_lat)
                for k in kernels), default=0.0) or 1.0
    cost = [0.0] * n
    lower = [0.0] * n
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def new_var(c: float, lb: float = 0.0) -> int:
        cost.append(c)
        lower.append(lb)
        return len(cost) - 1

    def row(entries, low, high) -> None:
        r = len(lo)
        for j, a in entries:
            rows.append(r)
            cols.append(j)
            vals.append(a)
        lo.append(low)
        hi.append(high)

    for k in kernels:
        by_group = {g: b for g, b in m.kernel_bytes[k].items() if g in col and b > 0}
        if not by_group:
            continue
        fixed = m.fixed_bytes[k] + sum(b for g, b in m.kernel_bytes[k].items() if g not in by_group)
        base = (fixed + sum(by_group.values())) / m.main_bw
        tau = new_var(m.runs[k], lb=m.floor[k] / unit)
        entries = [(tau, 1.0)] + [(col[g], -b * per_byte / unit) for g, b in sorted(by_group.items())]
        if fixed > 0 and d_lat >= 0:
            rhs = base + m.main_lat                         # main memory's latency is paid anyway
        elif d_lat >= 0:                                    # y >= 1 - x_g: main memory touched unless all on chip
            y = new_var(0.0)
            entries.append((y, -d_lat / unit))
            rhs = base + m.fast_lat
            for g in by_group:
                row([(y, 1.0), (col[g], 1.0)], 1.0, np.inf)
        else:                                               # z >= x_g: the slower on-chip latency once anything is there
            z = new_var(0.0)
            entries.append((z, d_lat / unit))
            rhs = base + m.main_lat
            for g in by_group:
                row([(z, 1.0), (col[g], -1.0)], 0.0, np.inf)
        row(entries, rhs / unit, np.inf)
    bnd = [col[g] for g in groups if m.boundary[g]]
    if bnd:
        bw = min(main.bandwidth_bytes_per_s, fast.bandwidth_bytes_per_s) * m.target.efficiency.memory
        for j in bnd:
            cost[j] += m.size[groups[j]] / bw / unit
        if m.prior_transfer <= 0:
            u = new_var(max(main.latency_s, fast.latency_s) / unit)
            for j in bnd:
                row([(u, 1.0), (j, -1.0)], 0.0, np.inf)
    for live in _live_at(_clique_points([iv for g in groups for iv in m.spans[g]]), [m.spans[g] for g in groups]):
        live_here = [(j, m.size[groups[j]] / capacity) for j in live]
        if sum(m.size[groups[j]] for j, _ in live_here) > capacity:
            row(live_here, -np.inf, 1.0)
    nvars = len(cost)
    integrality = np.zeros(nvars)
    integrality[:n] = 1
    upper = np.full(nvars, np.inf)
    upper[:n] = 1.0
    upper[[j for j in range(n, nvars) if lower[j] == 0.0 and cost[j] == 0.0]] = 1.0     # the 0/1 indicators
    cons = (LinearConstraint(coo_matrix((vals, (rows, cols)), shape=(len(lo), nvars)).tocsr(), lo, hi)
            if lo else None)
    res = solve_milp(np.array(cost), integrality=integrality, bounds=Bounds(np.array(lower), upper),
                     constraints=cons, node_limit=node_limit, mip_rel_gap=PLACE_MIP_GAP, presolve=PLACE_PRESOLVE,
                     start={j: float(groups[j] in start) for j in range(n)} if start else None)
    if res.x is None:
        return frozenset(), res.note
    return frozenset(groups[j] for j in range(n) if res.x[j] > 0.5), res.note


@register
@dataclass(frozen=True)
class Place:
    """The placement pass. Options: ``policy`` (hbm | greedy | ilp), ``offload`` (none | auto |
    optimizer | weights | activations: what may move to host memory when main memory overflows),
    ``level`` (the fast level to fill; default: the target's on-chip level), ``force`` (move every
    tensor of the kinds ``offload`` names to host memory even when main memory does not overflow: an
    explicit ZeRO-offload choice), ``node_limit`` (``ilp``: the solver's work limit, in branch-and-bound
    nodes; deterministic). Live ranges set by an earlier pass (remat) are honoured."""

    name = "place"
    policy: str = "hbm"
    offload: str = "none"
    level: str = ""
    force: bool = False
    node_limit: int = PLACE_NODE_LIMIT

    def __post_init__(self):
        if self.policy not in ("hbm", "greedy", "ilp"):
            raise ValueError(f"policy must be hbm, greedy or ilp, got {self.policy!r}")
        if self.offload not in ("none", "auto", "optimizer", "weights", "activations"):
            raise ValueError(f"offload must be none, auto, optimizer, weights or activations, got {self.offload!r}")
        if isinstance(self.node_limit, bool) or not isinstance(self.node_limit, int) or self.node_limit < 1:
            raise ValueError(f"place: option node_limit must be a positive int (branch-and-bound nodes), "
                             f"got {self.node_limit!r}")

    def alternatives(self) -> list["Place"]:
        return [Place(policy=p, offload=self.offload, level=self.level, force=self.force, node_limit=self.node_limit)
                for p in ("hbm", "greedy", "ilp")]

    def reads_knobs(self) -> frozenset[str]:
        """The target knobs this pass's decisions read (patterns as ``explorer.sweep.knob_matches`` takes them):
        ``hbm`` without offload reads none; offload alone reads the memory levels; ``greedy`` / ``ilp`` score a
        placement by the time of the kernels it changes, so they also read what sets a kernel's compute and
        communication time (everything but the launch overhead, a constant per kernel, and the cost figures)."""
        if self.policy == "hbm" and self.offload == "none":
            return frozenset()
        if self.policy == "hbm":
            return frozenset({"memory.", "efficiency.memory"})
        return frozenset({"memory.", "efficiency.", "compute.", "scale_up.", "scale_out."})

    def run(self, program, plan: Plan, target) -> Plan:
        with paused_gc():     # a pass over every op: the collector's walks would grow with the program
            return self._run(program, plan, target)

    def _run(self, program, plan: Plan, target) -> Plan:
        kernels = kernel_order(program, plan)
        main = target.main_memory
        placement: dict[int, str] = {}
        transfers: dict[str, float] = dict(plan.transfer_bytes)
        notes: list[str] = []
        fast = target.memory_level(self.level) if self.level else target.on_chip
        if self.policy != "hbm" and fast is not None and fast.name != main.name:
            chosen, note = self._on_chip(program, plan, target, fast, kernels)
            placement.update(chosen.placement)
            if chosen.moved:
                transfers[fast.name] = transfers.get(fast.name, 0.0) + chosen.moved
            notes.append(note)
        if self.offload != "none" and target.host_memory is not None:
            spans, traffic = intervals(program, kernels)
            sizes = {v: float(program.graph.values[v].nbytes) for v in spans}
            steps = len(kernels) + 1
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

    def _on_chip(self, program, plan: Plan, target, fast, kernels) -> tuple["_Chosen", str]:
        m = _on_chip_model(program, plan, target, fast, kernels)
        cap = float(fast.capacity_bytes)
        options = [frozenset(), _greedy(m, cap, allow_boundary=False), _greedy(m, cap, allow_boundary=True)]
        times = [0.0] + [m.total(o) for o in options[1:]]
        solver_note = ""
        if self.policy == "ilp":
            heuristic = min(range(len(options)), key=lambda i: (times[i], i))
            found, solver_note = _ilp(m, cap, self.node_limit, start=options[heuristic])
            options.insert(1, found)
            times.insert(1, m.total(found))
        best, best_t = options[0], 0.0
        for opt, t in zip(options[1:], times[1:]):
            if _usage(m, opt).max(initial=0.0) > cap:
                continue          # (cannot happen: every move was checked; kept as a guard)
            if t < best_t:
                best, best_t = opt, t
        chosen = _Chosen.of(m, best)
        peak = _level_peak(program, plan, fast, chosen.placement)
        while peak > cap and best:     # the estimate's own measure disagrees: drop the least useful group, again
            worst = min(best, key=lambda g: (-m.total(best - {g}) + m.total(best), g))
            best = best - {worst}
            chosen = _Chosen.of(m, best)
            peak = _level_peak(program, plan, fast, chosen.placement)
        over = sum(m.size[g] for g in best)
        note = (f"place: {len(chosen.placement)} tensors in {fast.name} ({fmt_bytes(over)} over the program, at most "
                f"{fmt_bytes(peak)} at once of {fmt_bytes(cap)}); {fmt_seconds(0.0 - m.total(best))} faster")
        if solver_note:
            note += f"; ILP {solver_note}"
        return chosen, note


@dataclass(frozen=True)
class _Chosen:
    placement: dict[int, str]
    moved: float            # boundary bytes copied between main memory and the level

    @classmethod
    def of(cls, m: _OnChip, groups) -> "_Chosen":
        placement = {v: m.fast.name for g in sorted(groups) for v in m.members[g]}
        return cls(placement, float(sum(m.size[g] for g in groups if m.boundary[g])))


def _level_peak(program, plan: Plan, fast, placement: dict[int, str]) -> float:
    if not placement:
        return 0.0
    placed = plan.with_(placement=MappingProxyType(placement))
    return float(level_peaks(program, placed, kernels_of(program, placed)).get(fast.name, 0))


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
