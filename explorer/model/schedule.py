"""From kernels to a step: list scheduling of an estimate's rows over their data dependencies onto the chip's engines.

The pricing stage gives every row (a kernel, inserted work, a transfer) as a ``Row``: the engine it runs on, how
often it runs, whether it may overlap, and where it sits in the program. ``step_graph`` turns those into a
dependency graph and an issue order; ``run`` times it on a target (or on N variants at once) and says when each
row starts and ends, what the critical path is made of, and how long each engine sat idle.

**Engines.** One compute stream, one collective stream and one copy engine (host-link and placement copies).
A stream runs its rows in issue order, one at a time.

**Dependencies.** A kernel waits for the kernels that produce what it reads: ``kernel.reads`` name values, a
value's producer op belongs to a kernel, or is an op no kernel owns (a view, a broadcast: its own operands are
followed; a ``while`` / ``case``: every kernel inside it). A kernel inside a loop or branch also waits for the
operands of that loop (its inputs). Two kernels of the same loop body depend iteration by iteration: the reader's
first run waits for the writer's first run, its last run for the writer's last (a loop's kernels are one row
over all their runs). Inserted work follows the kernels holding the op it comes after (``after_op``).

**Overlap.** A row that may overlap (an async collective, an async copy; ``overlappable``) runs on its own
engine beside independent compute; the kernel that needs its result waits for it. Which kernel that is: the
compiler's own data flow for an async collective of a compiled program (its result is a value kernels read); for
work a pass inserted, the op the plan names (``before_op``) or, when it names none, the first compute kernel of
the layer and phase it was inserted for (a gather ahead of its consumer) or of a later phase (a gradient
reduction: needed by the optimizer update). Every other row blocks: it runs in the compute stream's order (a
synchronous collective waits for the compute issued before it and holds up the compute issued after it). A target
with ``async_collectives = false`` runs every collective blocking.

**Issue.** The host issues rows in issue order (program order, moved only where a row would otherwise precede
its producers: a fused kernel named by its first op may need a later one's result). ``launch_mode =
"per_kernel"``: every run of every row is one launch of ``launch_overhead_s``; the host runs ahead of the
chip, so a row starts no earlier than it is issued and, over a loop's runs, ends no earlier than its last run is
issued. ``"graph"``: the whole step is one launch. Either way each run of a row also takes ``kernel_gap_s`` on
its engine (its ``overhead_s``).

A row starts at the latest of: its issue, its engine free, its dependencies done. Its time on the engine is its
``KernelRow.seconds``. The step time is the last end. The critical path is followed back from the row that ends
last through whatever set each start; its time is attributed to compute, memory and communication by the bound
of each row on it, and the rest (waiting for launches, the gaps between kernels) is overhead, so the four parts
add up to the step time. The communication on it is the exposed part; the rest of the communication time was
hidden behind other work.

One set of formulas serves a ``Target`` (Python floats) and a vectorised sweep (numpy arrays, one entry per
variant): every choice between candidates is a comparison whose outcome is taken per entry with ``np.where``, in
the same order as on floats, so each variant's figures equal the scalar ones bit for bit.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

COMPUTE, COLLECTIVES, COPIES = 0, 1, 2
ENGINES = ("compute", "collectives", "copies")
BUCKETS = ("compute", "memory", "communication")    # what a row's body time is attributed to (timing.BOUNDS order)
GATHERS = frozenset({"all_gather", "all_to_all", "collective_permute", "collective_broadcast"})
# phases in the order a training step runs them (a reduction inserted in one is needed by the next)
PHASE_ORDER = {"forward": 0, "backward": 1, "other": 2, "optimizer": 2}


@dataclass(frozen=True)
class Row:
    """What the scheduler needs to know about one row of an estimate (plain data, made by the pricing stage)."""

    engine: int                          # COMPUTE, COLLECTIVES or COPIES
    runs: float                          # executions in one step (a loop body's trip count)
    overlappable: bool = False           # may run beside independent work (an async collective or copy)
    ops: tuple[int, ...] = ()            # a kernel's op ids (empty: inserted work or a transfer)
    reads: tuple[int, ...] = ()          # value ids a kernel reads from memory
    after_op: int | None = None          # inserted work: the op it follows (-1: before the program)
    before_op: int | None = None         # inserted work: the op that needs its result (-2: a program output)
    collective: str = ""                 # inserted collective: its kind ("all_reduce", ...)
    layer: str = ""                      # name-stack layer and phase, as ``names.parse`` gives them
    phase: str = ""
    transfer: bool = False               # a placement's boundary copy (issued last)


@dataclass(frozen=True)
class StepGraph:
    """Per row: the rows it waits for (``deps``: their end; ``loop_deps``: iteration by iteration), whether it
    blocks the compute stream, its engine and runs; and the issue order (a topological order of the rows)."""

    deps: tuple[tuple[int, ...], ...]
    loop_deps: tuple[tuple[int, ...], ...]
    blocking: tuple[bool, ...]
    engine: tuple[int, ...]
    runs: tuple[float, ...]
    order: tuple[int, ...]
    notes: tuple[str, ...] = ()
    dropped: tuple[tuple[int, int], ...] = ()   # (row, the row it would wait for) left out to break a cycle

    def __len__(self) -> int:
        return len(self.engine)


# -- the dependency graph ---------------------------------------------------------------------------------------
def step_graph(program: Any, rows: Sequence[Row], async_collectives: bool = True) -> StepGraph:
    """The rows' dependencies and issue order (see the module docstring). ``program``: its ``graph`` is read
    (ops, producers, frames, regions)."""
    graph = program.graph
    ops = graph.ops
    owner: dict[int, int] = {}
    for i, r in enumerate(rows):
        for o in r.ops:
            owner[o] = i
    resolver = _Resolver(graph, owner)

    n = len(rows)
    deps: list[set[int]] = [set() for _ in range(n)]
    blocking = []
    for i, r in enumerate(rows):
        collective = r.engine == COLLECTIVES
        blocking.append(not r.overlappable or (collective and not async_collectives))
        if r.ops:
            for v in r.reads:
                deps[i] |= resolver.of_value(v)
            for fr in ops[r.ops[0]].frames:          # a loop / branch body waits for the loop's inputs
                for v in ops[fr.op_id].operands:
                    deps[i] |= resolver.of_value(v)
        elif r.after_op is not None and r.after_op >= 0:
            deps[i] |= resolver.of_op(r.after_op)
            for fr in ops[r.after_op].frames:
                for v in ops[fr.op_id].operands:
                    deps[i] |= resolver.of_value(v)
        deps[i].discard(i)

    # where each row sits in the program: a kernel at its first op, inserted work right after the op it
    # follows, transfers last
    keys = []
    for i, r in enumerate(rows):
        if r.ops:
            keys.append((min(r.ops), 0, i))
        elif r.transfer:
            keys.append((math.inf, 2, i))
        else:
            keys.append((r.after_op if r.after_op is not None else math.inf, 1, i))

    # who needs inserted overlappable work: searched in a dependency order of everything else (the program's
    # order where the dependencies allow), after the work itself, so a consumer is never one of its ancestors
    base, _ = _topological(n, deps, keys)
    where = {row: p for p, row in enumerate(base)}
    for i, r in enumerate(rows):
        if r.ops or r.transfer or blocking[i]:
            continue
        for c in _consumers(i, r, rows, base, where, owner):
            if c != i and where[c] > where[i]:
                deps[c].add(i)

    frames = [_loop_frames(ops, r) for r in rows]
    loop_deps: list[tuple[int, ...]] = []
    strict: list[tuple[int, ...]] = []
    for i in range(n):
        lo, st = [], []
        for j in sorted(deps[i]):
            if frames[i] is not None and frames[i] == frames[j] and rows[i].runs == rows[j].runs and rows[i].runs > 1:
                lo.append(j)
            else:
                st.append(j)
        loop_deps.append(tuple(lo))
        strict.append(tuple(st))
    order, notes = _topological(n, [set(strict[i]) | set(loop_deps[i]) for i in range(n)], keys)
    dropped: list[tuple[int, int]] = []
    if notes:          # a cycle (a fusion that made two kernels wait for each other): its edges were dropped
        where = {row: p for p, row in enumerate(order)}
        dropped = sorted((i, j) for i in range(n) for j in (*strict[i], *loop_deps[i]) if where[j] > where[i])
        strict = [tuple(j for j in s if where[j] < where[i]) for i, s in enumerate(strict)]
        loop_deps = [tuple(j for j in s if where[j] < where[i]) for i, s in enumerate(loop_deps)]
    return StepGraph(deps=tuple(strict), loop_deps=tuple(loop_deps), blocking=tuple(blocking),
                     engine=tuple(r.engine for r in rows), runs=tuple(float(r.runs) for r in rows),
                     order=tuple(order), notes=tuple(notes), dropped=tuple(dropped))


class _Resolver:
    """Which rows (kernels) a value or an op's results wait for, through ops no kernel owns."""

    def __init__(self, graph: Any, owner: Mapping[int, int]):
        self.graph, self.owner = graph, owner
        self.memo: dict[int, frozenset[int]] = {}

    def of_value(self, v: int) -> frozenset[int]:
        p = self.graph.producers.get(v)
        return self.of_op(p) if p is not None else frozenset()

    def of_op(self, p: int) -> frozenset[int]:
        owner, memo = self.owner, self.memo
        if p in owner:
            return frozenset((owner[p],))
        if p in memo:
            return memo[p]
        # iterative post-order walk (chains of views can be long): an op no kernel owns waits for what its
        # operands wait for and, if it holds regions (a loop, a branch), for every kernel inside them
        ops, producers = self.graph.ops, self.graph.producers
        stack, visiting = [p], set()
        while stack:
            q = stack[-1]
            if q in memo:
                stack.pop()
                continue
            preds = [producers[v] for v in ops[q].operands if v in producers]
            if q not in visiting:
                visiting.add(q)
                todo = [x for x in preds if x not in owner and x not in memo and x not in visiting]
                if todo:
                    stack.extend(todo)
                    continue
            out: set[int] = set()
            for x in preds:
                out |= {owner[x]} if x in owner else memo.get(x, frozenset())
            if ops[q].regions:
                out |= self._nested_rows(q)
            memo[q] = frozenset(out)
            stack.pop()
        return memo[p]

    def _nested_rows(self, q: int) -> set[int]:
        ops, owner = self.graph.ops, self.owner
        out, stack = set(), [o for region in ops[q].regions for o in region]
        while stack:
            o = stack.pop()
            if o in owner:
                out.add(owner[o])
            stack.extend(x for region in ops[o].regions for x in region)
        return out


def _loop_frames(ops, r: Row):
    """The frames of a kernel's body when it sits inside a while loop (None otherwise)."""
    if not r.ops:
        return None
    frames = ops[r.ops[0]].frames
    return frames if any(f.kind == "while" for f in frames) else None


def _consumers(i: int, r: Row, rows: Sequence[Row], seq: Sequence[int], where: Mapping[int, int],
               owner: Mapping[int, int]) -> list[int]:
    """The row(s) that need inserted overlappable work ``r`` done (see the module docstring); none: the step's
    end. ``seq``: the rows in a dependency order, ``where``: each row's place in it."""
    if r.engine == COPIES and r.collective == "":
        return []                        # an async copy (offload): nothing in the step reads it back
    before = r.before_op
    later = [j for j in seq[where[i] + 1:] if rows[j].ops and rows[j].engine == COMPUTE]
    if before is not None:
        if before < 0:
            return []
        if before in owner:
            return [owner[before]]
        nxt = next((j for j in later if min(rows[j].ops) >= before), None)
        return [nxt] if nxt is not None else []
    if r.collective in GATHERS and r.layer:
        nxt = next((j for j in later if rows[j].layer == r.layer and rows[j].phase == r.phase), None)
        if nxt is not None:
            return [nxt]
    rank = PHASE_ORDER.get(r.phase)
    if rank is None:
        return []
    nxt = next((j for j in later if PHASE_ORDER.get(rows[j].phase, -1) > rank), None)
    return [nxt] if nxt is not None else []


def _topological(n: int, preds: Sequence[set[int]], keys: Sequence[Any]) -> tuple[list[int], list[str]]:
    """Kahn's algorithm, always issuing the ready row that comes first in the program (``keys``). A cycle is
    broken in a strongly connected part that waits for nothing outside itself, at its row that comes first in
    the program (its waits inside the part are dropped), with a note."""
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for i in range(n):
        for j in preds[i]:
            succ[j].append(i)
            indeg[i] += 1
    heap = [(keys[i], i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    done = [False] * n
    notes: list[str] = []
    while len(order) < n:
        if not heap:
            i = _cycle_breaker(n, preds, succ, done, keys)
            notes.append(f"schedule: a dependency cycle through row {i} (the plan's kernels wait for each other, e.g. "
                         "one fused kernel holds ops from both sides of another): its unmet dependencies are ignored")
            indeg[i] = 0
            heapq.heappush(heap, (keys[i], i))
        _, i = heapq.heappop(heap)
        if done[i]:
            continue
        done[i] = True
        order.append(i)
        for k in succ[i]:
            indeg[k] -= 1
            if indeg[k] == 0 and not done[k]:
                heapq.heappush(heap, (keys[k], k))
    return order, notes


def _cycle_breaker(n: int, preds, succ, done, keys) -> int:
    """A row of a source strongly connected component of the rows not yet issued (its unmet waits all lie inside
    its component): the vertex that finishes last in a depth-first search of the wait graph lies in one."""
    left = [i for i in range(n) if not done[i]]
    seen: set[int] = set()
    last = left[0]
    for root in sorted(left, key=lambda k: keys[k]):
        if root in seen:
            continue
        stack = [(root, iter(succ[root]))]
        seen.add(root)
        while stack:
            node, it = stack[-1]
            nxt = next((k for k in it if not done[k] and k not in seen), None)
            if nxt is None:
                stack.pop()
                last = node
                continue
            seen.add(nxt)
            stack.append((nxt, iter(succ[nxt])))
    # the component of ``last``: reachable from it and reaching it
    def reach(start, edges):
        out, todo = {start}, [start]
        while todo:
            x = todo.pop()
            for y in edges[x]:
                if not done[y] and y not in out:
                    out.add(y)
                    todo.append(y)
        return out
    part = reach(last, succ) & reach(last, preds)
    return min(part, key=lambda k: keys[k])


# -- timing -------------------------------------------------------------------------------------------------------
def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _where(cond, a, b):
    if _is_array(cond):
        return np.where(cond, a, b)
    return a if cond else b


def _gt(a, b):
    return np.greater(a, b) if _is_array(a) or _is_array(b) else a > b


@dataclass(frozen=True)
class Timeline:
    """When every row ran and what the step time is made of (floats; numpy arrays per variant when vectorised).

    ``start_s`` / ``end_s`` are per row (only on floats); ``critical_path``: row indices, first to last (only on
    floats). ``compute_s + memory_s + comm_s + overhead_s == seconds``. ``comm_s`` is the exposed communication
    (on the critical path), ``hidden_comm_s`` the rest of all communication time. ``busy_s``: per engine
    (``ENGINES`` order), the time it ran rows."""

    seconds: Any
    compute_s: Any
    memory_s: Any
    comm_s: Any
    overhead_s: Any
    hidden_comm_s: Any
    busy_s: tuple[Any, ...]
    start_s: tuple[float, ...] = ()
    end_s: tuple[float, ...] = ()
    critical_path: tuple[int, ...] = ()
    order: tuple[int, ...] = ()
    engine: tuple[int, ...] = ()
    blocking: tuple[bool, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    dropped: tuple[tuple[int, int], ...] = ()

    @property
    def idle_s(self) -> tuple[Any, ...]:
        """Per engine: the step time it ran nothing."""
        return tuple(self.seconds - b for b in self.busy_s)

    @property
    def exposed_comm_s(self) -> Any:
        return self.comm_s


def run(g: StepGraph, body: Sequence[Any], gap: Sequence[Any], bucket: Sequence[Any], launch_s: Any,
        launch_mode: str, detail: bool = True) -> Timeline:
    """Time the step graph ``g``.

    Per row: ``body`` (seconds of one run: the max of its compute, memory and communication), ``gap`` (its
    ``overhead_s``: the engine time between kernels), ``bucket`` (0, 1, 2: what its body is attributed to). All
    may be floats or arrays (variants). ``launch_s``: one launch (``launch_overhead_s``); ``launch_mode``:
    "per_kernel" or "graph". ``detail``: keep every row's start and end and the critical path (floats only)."""
    per_kernel = launch_mode == "per_kernel"
    zero = 0.0
    host = zero                                   # when the host is free to issue the next launch
    free: dict[int, int] = {}                     # engine -> the last row it ran
    compute_last = -1                             # the last row in the compute stream's order
    start: dict[int, Any] = {}
    end: dict[int, Any] = {}
    attr: dict[int, tuple[Any, Any, Any]] = {}    # per row: (compute, memory, comm) on the critical path to its start
    attr_end: dict[int, tuple[Any, Any, Any]] = {}  # ... and to its end
    pred: dict[int, int] = {}                     # per row (floats): the row that set its start (-1: the host)
    busy = [zero, zero, zero]
    best_end, best_attr, best_row = zero, (zero, zero, zero), -1
    last_use = _last_uses(g)
    runs_of = g.runs

    def own(r: int, k: float):
        """The attribution of ``k`` runs of row ``r``'s body."""
        b = body[r] * k
        c = bucket[r]
        if not _is_array(c):
            return (b if c == 0 else zero, b if c == 1 else zero, b if c == 2 else zero)
        return (np.where(c == 0, b, zero), np.where(c == 1, b, zero), np.where(c == 2, b, zero))

    for pos, r in enumerate(g.order):
        runs = runs_of[r]
        d = body[r] + gap[r]
        dur = d * runs
        eng = g.engine[r]
        # candidates for the start, in a fixed order: (value, attribution, source row)
        if per_kernel:
            issue = host + launch_s
            if runs > 1:
                issue = _max(issue, host + runs * launch_s - (runs - 1) * d)
            host = host + runs * launch_s
        else:
            issue = launch_s
        cands: list[tuple[Any, tuple[Any, Any, Any], int]] = [(issue, (zero, zero, zero), -1)]
        waits = []
        if eng in free:
            waits.append(free[eng])
        if (eng == COMPUTE or g.blocking[r]) and compute_last >= 0 and compute_last not in waits:
            waits.append(compute_last)
        waits.extend(j for j in g.deps[r] if j not in waits)
        for j in waits:
            cands.append((end[j], attr_end[j], j))
        for j in g.loop_deps[r]:
            dj = body[j] + gap[j]
            cands.append((start[j] + dj, _add(attr[j], own(j, 1.0)), j))
            cands.append((end[j] - (runs - 1) * d, _sub(attr_end[j], own(r, runs - 1)), j))
        s, a, src = cands[0][0], cands[0][1], -1
        for value, at, j in cands[1:]:
            take = _gt(value, s)
            s = _where(take, value, s)
            a = tuple(_where(take, x, y) for x, y in zip(at, a))
            if detail and not _is_array(take) and take:
                src = j
        e = s + dur
        a_end = _add(a, own(r, runs))
        start[r], end[r], attr[r], attr_end[r] = s, e, a, a_end
        if detail:
            pred[r] = src
        busy[eng] = busy[eng] + dur
        free[eng] = r
        if eng == COMPUTE or g.blocking[r]:
            compute_last = r
        take = _gt(e, best_end)
        best_end = _where(take, e, best_end)
        best_attr = tuple(_where(take, x, y) for x, y in zip(a_end, best_attr))
        if not _is_array(take) and take:
            best_row = r
        if not detail:
            for j in last_use.get(pos, ()):
                start.pop(j, None)
                end.pop(j, None)
                attr.pop(j, None)
                attr_end.pop(j, None)
    compute, memory, comm = best_attr
    overhead = _max(best_end - compute - memory - comm, zero)
    total_comm = zero
    for r in g.order:
        total_comm = total_comm + _where(bucket[r] == 2, body[r] * runs_of[r], zero)
    hidden = _max(total_comm - comm, zero)
    path: list[int] = []
    if detail and best_row >= 0:
        r = best_row
        while r >= 0:
            path.append(r)
            r = pred[r]
        path.reverse()
    n = len(g)
    return Timeline(
        seconds=best_end, compute_s=compute, memory_s=memory, comm_s=comm, overhead_s=overhead, hidden_comm_s=hidden,
        busy_s=tuple(busy), start_s=tuple(start[i] for i in range(n)) if detail else (),
        end_s=tuple(end[i] for i in range(n)) if detail else (), critical_path=tuple(path), order=g.order,
        engine=g.engine, blocking=g.blocking, notes=g.notes, dropped=g.dropped)


def _max(a, b):
    return np.maximum(a, b) if _is_array(a) or _is_array(b) else max(a, b)


def _add(a, b):
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _sub(a, b):
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _last_uses(g: StepGraph) -> dict[int, list[int]]:
    """Issue position -> the rows whose start / end / attribution nothing after it reads (freed in array mode)."""
    where = {r: p for p, r in enumerate(g.order)}
    last = {r: where[r] for r in g.order}
    prev_on: dict[int, int] = {}
    compute_last = -1
    for p, r in enumerate(g.order):
        for j in (*g.deps[r], *g.loop_deps[r]):
            last[j] = max(last[j], p)
        eng = g.engine[r]
        if eng in prev_on:
            last[prev_on[eng]] = max(last[prev_on[eng]], p)
        if (eng == COMPUTE or g.blocking[r]) and compute_last >= 0:
            last[compute_last] = max(last[compute_last], p)
        prev_on[eng] = r
        if eng == COMPUTE or g.blocking[r]:
            compute_last = r
    for eng, r in prev_on.items():          # the last row on each engine stays (nothing reads it, but keep it simple)
        last[r] = len(g.order)
    if compute_last >= 0:
        last[compute_last] = len(g.order)
    out: dict[int, list[int]] = {}
    for r, p in last.items():
        out.setdefault(p, []).append(r)
    return out


def engine_of(collective: bool, copy: bool) -> int:
    """The engine a row runs on: the copy engine for copies, the collective stream for collectives, else compute."""
    return COPIES if copy else (COLLECTIVES if collective else COMPUTE)

