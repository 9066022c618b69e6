"""Fusion: which ops become one kernel.

Strategies:
- ``none``: every op that launches a kernel is its own kernel.
- ``xla``: XLA-like producer-consumer fusion. Elementwise, convert and data-movement
  producers fuse into their consumers ("loop fusion"); they fuse into a reduction
  ("input fusion"); a matmul/convolution takes its elementwise consumers as an epilogue
  ("output fusion", when ``matmul_epilogue``); cheap generators (broadcast, iota,
  constants) are duplicated into every consumer instead of materialised; sibling ops that
  read the same large input fuse into one multi-output kernel (``multi_output``).
  A reduction's result is never fused into its consumers, and at most one matmul per kernel.
- ``aggressive``: as ``xla``, and also chains through matmuls (e.g. attention as one
  kernel) and through reductions; an intermediate larger than the target's on-chip
  capacity spills (written and read back once).
- ``compiled``: the kernels a compiler already chose, for a program imported from its optimized
  module (``explorer.lower(..., compiler="xla")``): each top-level fusion (with the fusions nested
  in it) is one kernel, each async collective start one overlappable kernel, and every other op
  that launches a kernel (a library call, a copy, a synchronous collective) its own. Values the
  compiler put in another memory space (XLA:TPU's VMEM, ``S(1)`` in the module's ``xla_shape``) are placed
  in the target's on-chip level, so a prefetch into VMEM and the kernels reading it there are not priced
  as main-memory traffic.

A fused kernel's traffic is only what crosses its boundary (plus spills); its compute is
the sum of its ops; it pays one launch overhead. Fusion never crosses a loop or branch
boundary. A decision is a (producer op id, consumer op id) edge: ``forbid`` and ``force``
take edges, so a notebook can override single choices; ``candidates()`` lists them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from explorer.costs.work import Work
from explorer.graph import names
from explorer.graph.gcpause import paused_gc
from explorer.graph.importer import GROUPING_OPS

from . import fusion_xla
from .fusion_masks import skipped_tile_works
from .fusion_ops import (GENERATORS, IN_PLACE_ROOTS, MATMUL, PARTIAL_READERS, REDUCE, Edge, kernel_readers,
                         materialised, op_class, producer_through_views)
from .pipeline import register
from .plan import ExtraKernel, Kernel, Plan

STRATEGIES = ("none", "xla", "aggressive", "compiled")
_ASYNC_STARTS = frozenset({"stablehlo.async_start", "mhlo.async_start"})
_COPIES = frozenset({"mhlo.copy", "stablehlo.copy", "mhlo.bitcast"})
_ASYNC_DONES = frozenset({"stablehlo.async_done", "mhlo.async_done"})
# XLA's memory spaces (xla/layout.h): 0 is device main memory, 5 host memory; any other is an on-chip memory of
# the back end (XLA:TPU: 1 VMEM, and small scalar memories for flags and loop counters)
HOST_MEMORY_SPACE = 5
_LEAF_SHAPE = re.compile(r"[a-z][a-z0-9]*\[[0-9,]*\](\{[^{}]*\})?")
_SPACE = re.compile(r"S\((\d+)\)")


class _Groups:
    """Union-find over op ids. Per group: its members, how many matmuls / reductions it holds, and
    the ops outside it that read its results (-1: a program output or loop-carried value)."""

    def __init__(self, ids: Iterable[int], kinds: dict[int, str], external: dict[int, set[int]]):
        self.parent = {i: i for i in ids}
        self.members = {i: [i] for i in ids}
        self.kinds = {i: {kinds[i]} for i in ids}
        self.external = {i: set(external[i]) for i in ids}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        moved = self.members.pop(rb)
        self.members[ra].extend(moved)
        self.kinds[ra] |= self.kinds.pop(rb)
        inside = set(self.members[ra])
        self.external[ra] = (self.external[ra] | self.external.pop(rb)) - inside
        return ra


_DECISIONS: dict[tuple, tuple] = {}   # see ``Fuse._decision``


@register
@dataclass(frozen=True)
class Fuse:
    """The fusion pass. Options: ``strategy`` (none | xla | aggressive), ``matmul_epilogue``,
    ``multi_output``, and ``forbid`` / ``force``: edges "p>c;p>c" (op ids) to override single decisions."""

    name = "fuse"
    strategy: str = "xla"
    matmul_epilogue: bool = True
    multi_output: bool = True
    forbid: str = ""
    force: str = ""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        parse_edges(self.forbid)
        parse_edges(self.force)

    # -- the explorer's hooks -------------------------------------------------------
    def alternatives(self) -> list["Fuse"]:
        return [Fuse(strategy=s, matmul_epilogue=self.matmul_epilogue, multi_output=self.multi_output)
                for s in ("none", "xla", "aggressive")]

    def reads_knobs(self) -> frozenset[str]:
        """The target knobs this pass's decisions read (patterns as ``explorer.sweep.knob_matches`` takes them):
        only ``aggressive`` reads the target, to spill against the on-chip level's capacity."""
        return frozenset({"memory.*.capacity_bytes"}) if self.strategy == "aggressive" else frozenset()

    def candidates(self, program, target=None) -> list[Edge]:
        """Every producer->consumer edge this strategy fuses (the decisions one can forbid)."""
        return sorted(self._fuse(program, target)[2])

    # -- entry point --------------------------------------------------------------
    def run(self, program, plan: Plan, target) -> Plan:
        with paused_gc():     # a pass over every op: the collector's walks would grow with the program
            return self._run(program, plan, target)

    def _run(self, program, plan: Plan, target) -> Plan:
        if self.strategy == "compiled":
            placement = {**compiled_placement(program, target), **(plan.placement or {})}
            return plan.with_(kernels=compiled_kernels(program, plan), placement=placement or plan.placement)
        fused = _grouping_ops(program.graph)
        if fused:
            raise ValueError(f"fuse{{strategy={self.strategy}}}: {program.graph.name} is a compiled module whose "
                             f"kernels the compiler already chose ({fused} fusions and async collectives); price them "
                             f"with fuse{{strategy=compiled}}, or lower the program without compiler='xla' to fuse it "
                             f"with this strategy")
        notes = _override_notes(program, "forbid", parse_edges(self.forbid)) + \
            _override_notes(program, "force", parse_edges(self.force))
        plan = plan.with_(notes=plan.notes + notes) if notes else plan
        extra: tuple[ExtraKernel, ...] = ()
        if self.strategy in ("xla", "aggressive"):
            d = self._decision(program, target, _boundary_edges(program, plan))
            groups, copies, split_k = d.groups, d.copies, d.split_k
            extra = _layout_copy_kernels(program, plan, d.layout_copies)
        else:
            groups, copies, _ = self._fuse(program, target)
            split_k = frozenset()
        kernels = build_kernels(program, groups, target, plan=plan, copies=copies, split_k=split_k)
        if self.strategy == "aggressive" and target is not None:
            # a FlashAttention-style kernel skips the tiles a causal (structural) mask hides
            thinned = skipped_tile_works(program, plan, kernels, target)
            if thinned:
                plan = plan.with_(work_overrides={**(plan.work_overrides or {}), **thinned},
                                  notes=plan.notes + (f"fuse: {len(thinned)} ops of masked attention kernels priced on "
                                                      "the tiles their mask keeps",))
        return plan.with_(kernels=kernels, extra_kernels=plan.extra_kernels + extra)

    def _decision(self, program, target, boundaries: frozenset[Edge] = frozenset()) -> fusion_xla.Fusion:
        """``fusion_xla.decide`` for these options, remembered for the last few (program, target, options): a workflow
        asks for the same decision twice (``candidates`` and then the estimate). A copy each time (callers own it).
        ``boundaries``: edges a collective sits on (see ``_boundary_edges``), never fused."""
        key = (id(program), id(target), self.forbid, self.force, self.multi_output, self.matmul_epilogue,
               self.strategy, boundaries)
        hit = _DECISIONS.get(key)
        if hit is None or hit[0] is not program or hit[1] is not target:
            d = fusion_xla.decide(program, target, set(parse_edges(self.forbid)) | boundaries, parse_edges(self.force),
                                  multi_output=self.multi_output, matmul_epilogue=self.matmul_epilogue,
                                  aggressive=self.strategy == "aggressive")
            while len(_DECISIONS) >= 4:
                _DECISIONS.pop(next(iter(_DECISIONS)))
            _DECISIONS[key] = hit = (program, target, d)
        d = hit[2]
        return fusion_xla.Fusion(groups=[list(g) for g in d.groups], copies=list(d.copies), made=set(d.made),
                                 layout_copies=list(d.layout_copies), split_k=d.split_k)

    def _fuse(self, program, target) -> tuple[list[list[int]], list[frozenset[int]], set[Edge]]:
        """(groups of op ids, the ops recomputed in each group, the producer -> consumer edges fused)."""
        if self.strategy == "compiled":
            groups = compiled_groups(program)
            return groups, [frozenset()] * len(groups), set()
        if self.strategy in ("xla", "aggressive"):
            d = self._decision(program, target)
            return d.groups, d.copies, d.made
        groups, made = self._legacy(program, target)
        return groups, [frozenset()] * len(groups), made

    def _legacy(self, program, target) -> tuple[list[list[int]], set[Edge]]:
        """``none`` and ``aggressive``: consumer-driven union of producers into their single consumer."""
        graph = program.graph
        live = [op.id for op in graph.ops if program.works[op.id] is not None and program.weights[op.id] > 0]
        cls = {o: op_class(program, o) for o in live}
        made: set[Edge] = set()
        if self.strategy == "none":
            singles = [o for o in live if program.works[o].launches_kernel]
            return [[o] for o in singles], made
        users = graph.consumers()
        kernel_ops = [o for o in live if (program.works[o].launches_kernel and cls[o] != "generator")
                      or (cls[o] == "generator" and materialised(program, o, cls, users))]
        in_group = set(kernel_ops)
        external: dict[int, set[int]] = {}
        for o in kernel_ops:
            ext = set()
            for r in graph.ops[o].results:
                if r in graph.escaping or r in graph.outputs:
                    ext.add(-1)
                ext |= kernel_readers(graph, users, r, in_group.__contains__,
                                       lambda u: cls.get(u) in ("view", "generator"))
            ext.discard(o)
            external[o] = ext
        groups = _Groups(kernel_ops, cls, external)
        forbid, force = set(parse_edges(self.forbid)), parse_edges(self.force)

        def allowed(p: int, c: int) -> bool:
            if (p, c) in forbid:
                return False
            if graph.ops[p].frames != graph.ops[c].frames:
                return False
            pc, cc = cls[p], cls[c]
            rp, rc = groups.find(p), groups.find(c)
            if rp == rc:
                return False
            kinds_p, kinds_c = groups.kinds[rp], groups.kinds[rc]
            aggressive = self.strategy == "aggressive"
            if pc in ("opaque", "root") or cc == "opaque":
                return False
            if pc == "reduce" and not aggressive:
                return False
            if pc == "matmul":
                if not (self.matmul_epilogue and cc in ("elementwise", "movement")) and not aggressive:
                    return False
            if cc == "matmul" and pc in ("elementwise", "movement") and not aggressive:
                # operand-side fusion into a matmul: layout work only (converts, transposes, broadcasts) and
                # slices, which only offset the operand's address (XLA's dynamic-slice / address-computation fusion)
                if graph.ops[p].name not in ("stablehlo.convert", "stablehlo.transpose", "stablehlo.broadcast_in_dim",
                                             "stablehlo.slice", "stablehlo.dynamic_slice"):
                    return False
            if not aggressive:
                if "matmul" in kinds_p and "matmul" in kinds_c:
                    return False
                if "reduce" in kinds_c and "matmul" in kinds_p:
                    return False
                if "matmul" in kinds_c and "reduce" in kinds_p:
                    return False
            # no other path from the producer's group may leave and come back (that would be a cycle)
            return all(u == c or (u >= 0 and u in in_group and groups.find(u) == rc) for u in groups.external[rp])

        order = sorted(kernel_ops, reverse=True)   # consumers before producers
        for c in order:
            work = [c]
            while work:   # ops of c's group whose producers have not been tried yet
                o = work.pop()
                for v in graph.ops[o].operands:
                    p = producer_through_views(graph, v, cls)
                    if p is None or p not in in_group or groups.find(p) == groups.find(o):
                        continue
                    if allowed(p, o):
                        fresh = list(groups.members[groups.find(p)])
                        groups.union(p, o)
                        made.add((p, o))
                        work.extend(fresh)
        for p, c in force:
            if p in in_group and c in in_group and groups.find(p) != groups.find(c):
                groups.union(p, c)
                made.add((p, c))
        if self.strategy == "aggressive":
            _merge_diamonds(graph, groups, in_group, made, users, forbid)
        if self.multi_output:
            _sibling_fusion(program, groups, cls, in_group, made, users)
        return [sorted(m) for m in groups.members.values()], made


def _merge_diamonds(graph, groups, in_group, made, users, forbid, rounds: int = 8) -> None:
    """Aggressive only: merge a group with *all* the groups that read it at once (a reduction whose result
    and whose input are both read by the same consumers: softmax, layer norm), when no path leaves the
    merged set and comes back (which would make a cycle)."""
    for _ in range(rounds):
        changed = False
        for root in sorted(groups.members):
            if root not in groups.members:
                continue
            ext = groups.external[root]
            if not ext or -1 in ext or any(u not in in_group for u in ext):
                continue
            readers = {groups.find(u) for u in ext}
            frames = graph.ops[root].frames
            if any(graph.ops[r].frames != frames for r in readers):
                continue
            if any((p, u) in forbid for p in groups.members[root] for u in ext):
                continue
            merged = {o for g in readers | {root} for o in groups.members[g]}
            if _leaves_and_returns(graph, merged, users, in_group):
                continue
            edge_from = min(groups.members[root])
            for r in sorted(readers):
                made.add((edge_from, min(groups.members[groups.find(r)])))
                groups.union(root, r)
            changed = True
        if not changed:
            return


def _leaves_and_returns(graph, members: set[int], users, in_group, limit: int = 8192) -> bool:
    """Whether some path goes from the set through a kernel outside it and back into it. Ops that are not
    kernels (duplicated broadcasts, views) are transparent: they would be duplicated into the merged kernel."""
    horizon = max(members)
    stack = [(u, u in in_group) for o in members for r in graph.ops[o].results for u in users.get(r, ())
             if u not in members]
    seen: set[tuple[int, bool]] = set()
    while stack and len(seen) < limit:
        o, tainted = stack.pop()
        if (o, tainted) in seen or o > horizon:
            continue
        seen.add((o, tainted))
        for r in graph.ops[o].results:
            for u in users.get(r, ()):
                if u in members:
                    if tainted:
                        return True
                    continue
                stack.append((u, tainted or u in in_group))
    return len(seen) >= limit


def _sibling_fusion(program, groups, cls, in_group, made, users) -> None:
    """Multi-output fusion: loop/reduce groups that read the same large value and do not depend on each other."""
    graph = program.graph
    for v, readers in users.items():
        if graph.values[v].nbytes < 1 << 16:
            continue
        roots = sorted({groups.find(u) for u in readers if u in in_group and cls[u] in ("elementwise", "reduce", "movement")})
        if len(roots) < 2:
            continue
        base = roots[0]
        for other in roots[1:]:
            a, b = groups.find(base), groups.find(other)
            if a == b:
                continue
            if any(cls[o] == "matmul" for o in groups.members[a] + groups.members[b]):
                continue
            if graph.ops[groups.members[a][0]].frames != graph.ops[groups.members[b][0]].frames:
                continue
            ma, mb = groups.members[a], groups.members[b]
            # ids are topological: a group entirely before the other cannot read from it
            a_first, b_first = max(ma) < min(mb), max(mb) < min(ma)
            if (not b_first and _depends(graph, groups, a, b, users)) or (not a_first and _depends(graph, groups, b, a, users)):
                continue
            groups.union(a, b)
            made.add((min(groups.members[groups.find(a)]), -v - 1))


def _depends(graph, groups, src: int, dst: int, users, limit: int = 4096) -> bool:
    """Whether group ``dst`` (transitively) reads a result of group ``src``.

    Op ids are a topological order (an op comes after its operands' producers, loop bodies after
    their loop), so the search never needs to go past the last op of ``dst``."""
    dst_members = set(groups.members[groups.find(dst)])
    horizon = max(dst_members)
    stack = [r for o in groups.members[groups.find(src)] for r in graph.ops[o].results]
    seen: set[int] = set()
    while stack and len(seen) < limit:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in users.get(v, ()):
            if u in dst_members:
                return True
            if u < horizon:
                stack.extend(graph.ops[u].results)
    return len(seen) >= limit   # too far to prove independence: assume dependent


def _grouping_ops(graph) -> int:
    """How many ops of ``graph`` group a compiler's kernel (fusions, async collective starts): none unless the program
    is a compiled module. Counted once per graph (graphs never change)."""
    n = graph.__dict__.get("_grouping_ops")
    if n is None:
        n = sum(op.name in GROUPING_OPS for op in graph.ops)
        object.__setattr__(graph, "_grouping_ops", n)
    return n


def _boundary_edges(program, plan: Plan) -> frozenset[Edge]:
    """The producer -> reader edges a pass put a collective on (``Plan.boundaries``, set by sharding): the reader
    takes the collective's result from memory, so the two never share a kernel."""
    if not plan.boundaries:
        return frozenset()
    made_by = program.graph.producers
    return frozenset((made_by[v], c) for v, c in plan.boundaries if v in made_by)


def _override_notes(program, option: str, edges: list[Edge]) -> tuple[str, ...]:
    """A note for each ``forbid`` / ``force`` edge that is no producer -> consumer edge of the program (an op id
    out of range, or a consumer that reads nothing the producer makes, through views): it cannot change anything,
    and a user who mistyped an id must hear so."""
    graph = program.graph
    n = len(graph.ops)
    out = []
    for p, c in edges:
        missing = [o for o in (p, c) if not 0 <= o < n]
        if missing:
            out.append(f"fuse: {option} {p}>{c} ignored: no op {missing[0]} (the program has ops 0-{n - 1})")
        elif not _reads_from(program, p, c):
            out.append(f"fuse: {option} {p}>{c} ignored: op {c} ({graph.ops[c].short_name}) reads nothing op {p} "
                       f"({graph.ops[p].short_name}) makes")
    return tuple(out)


def _reads_from(program, p: int, c: int) -> bool:
    """Whether op ``c`` reads a result of op ``p``, directly or through ops that launch no kernel (views)."""
    graph, works = program.graph, program.works
    made_by = graph.producers
    stack, seen = list(graph.ops[c].operands), set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        o = made_by.get(v)
        if o is None:
            continue
        if o == p:
            return True
        if works[o] is not None and not works[o].launches_kernel:
            stack.extend(graph.ops[o].operands)
    return False


def parse_edges(text: str) -> list[Edge]:
    """"12>15;3>4" -> [(12, 15), (3, 4)]."""
    edges = []
    for item in filter(None, (s.strip() for s in text.replace(",", ";").split(";"))):
        try:
            a, b = item.split(">")
            edges.append((int(a), int(b)))
        except ValueError:
            raise ValueError(f"fusion edge {item!r} is not 'producer>consumer' op ids") from None
    return edges


def build_kernels(program, groups: list[list[int]], target=None, spill: bool = False,
                  plan: Plan | None = None, copies: list[frozenset[int]] | None = None,
                  split_k: frozenset[int] = frozenset()) -> tuple[Kernel, ...]:
    """Price each group's boundary: distinct values read from outside, values used outside
    (sizes and work per device when a sharding pass has set them in ``plan``). ``copies``: per group, the ops
    recomputed inside it (duplicated producers): the kernel reads their inputs instead of their results.
    ``split_k``: matmuls split along K (``fusion_xla.split_k_factor`` of their per-device shape): the GEMM writes
    its f32 partial sums and the kernel reading its result reads them all."""
    plan = plan or Plan()
    graph = program.graph
    partials: dict[int, float] = {}       # a split matmul's result -> bytes of its partial sums
    for m in sorted(split_k):
        g = plan.work(program, m).gemm
        r = graph.ops[m].results[0]
        s = fusion_xla.split_k_factor(g.m, g.n, g.k, g.batch) if g is not None else 1
        if s > 1:
            partials[r] = float(s * graph.values[r].elements * 4) * plan.nbytes(program, r) / max(
                1.0, float(graph.values[r].nbytes))
    users = graph.consumers()
    copies = list(copies) if copies is not None else [frozenset()] * len(groups)
    kernel_ops = {o for g in groups for o in g}
    copy_owners: dict[int, set[int]] = {}
    for gi, dup in enumerate(copies):
        for o in dup:
            copy_owners.setdefault(o, set()).add(gi)

    def read_outside(vid: int, gi: int, mset: set[int]) -> bool:
        """Whether something outside group ``gi`` reads ``vid`` (through views and broadcasts no kernel owns)."""
        stack, seen = [vid], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in graph.outputs or v in graph.escaping:
                return True
            for u in users.get(v, ()):
                if u in mset:
                    continue
                if u in kernel_ops:
                    return True
                if u in copy_owners:
                    if copy_owners[u] - {gi}:
                        return True
                    stack.extend(graph.ops[u].results)
                elif _looked_through(graph, u):
                    stack.extend(graph.ops[u].results)
                else:
                    return True
        return False

    # a group built before under the same everything-else (the same ops in kernels, recomputed in the same groups:
    # what reads and writes depend on beyond the group itself) is the same kernel: workflows that re-run fusion
    # with one decision changed (``fusion_decisions``) rebuild only the groups that changed
    same_objects = (program, target if spill else None, plan.work_overrides, plan.value_bytes)
    same_values = (spill, frozenset(split_k), frozenset(kernel_ops),
                   frozenset((tuple(g), copies[gi]) for gi, g in enumerate(groups) if copies[gi]))
    hit = next((m for objects, values, m in _BUILT
                if all(x is y for x, y in zip(objects, same_objects)) and values == same_values), None)
    built: dict[tuple, Kernel] = {} if hit is None else hit
    kernels = []
    for gi, members in sorted(enumerate(groups), key=lambda t: t[1]):
        again = built.get((tuple(members), copies[gi]))
        if again is not None:
            kernels.append(again)
            continue
        mset = set(members)
        dup = copies[gi]
        reads: dict[int, float] = {}
        for o in members:
            op = graph.ops[o]
            if op.name in GROUPING_OPS:
                continue   # a fusion's reads are its ops' reads (a sliced operand is read only in part)
            for i, v in enumerate(op.operands):
                p = graph.producers.get(v)
                if p is not None and p in mset:
                    continue
                for src, nbytes in _read_sources(program, plan, v, op, i, kernel_ops, mset, dup):
                    reads[src] = max(reads.get(src, 0.0), partials.get(src, nbytes))
        writes: list[tuple[int, float]] = []
        intermediates = 0.0
        for o in members:
            op = graph.ops[o]
            w = plan.work(program, o)
            for r in op.results:
                if read_outside(r, gi, mset):
                    writes.append((r, partials.get(r, float(w.bytes_written if op.name in IN_PLACE_ROOTS
                                                            else plan.nbytes(program, r)))))
                elif op.name in MATMUL:
                    intermediates += plan.nbytes(program, r)
        spill_bytes = 0.0
        if spill and target is not None and intermediates:
            # A matmul chain is computed tile by tile (FlashAttention-style): one output tile of the first matmul
            # per unit must fit in that unit's share of on-chip memory; beyond that it is written out and read back.
            cap = target.on_chip.capacity_bytes if target.on_chip is not None else 0.0
            first = min((o for o in members if graph.ops[o].name in MATMUL), default=None)
            g = plan.work(program, first).gemm if first is not None else None
            tm, tn, _ = target.compute.matrix_tile
            # online-softmax style: each output tile of the first matmul is consumed as soon as it is made
            tiles = g.batch * -(-g.m // tm) * -(-g.n // tn) if g is not None else 1
            per_unit_tile = intermediates / max(1, tiles)
            if per_unit_tile > cap / target.compute.matrix_units:
                spill_bytes = 2.0 * intermediates
        kinds = {graph.ops[o].name for o in members}
        kind = "single" if len(members) == 1 else ("output" if kinds & MATMUL else ("input" if kinds & REDUCE else "loop"))
        kernels.append(Kernel(ops=tuple(members), reads=tuple(sorted(reads.items())), writes=tuple(writes),
                              spill_bytes=spill_bytes, kind=kind, recomputed=tuple(sorted(dup))))
        if hit is None:
            built[(tuple(members), dup)] = kernels[-1]
    if hit is None:
        while len(_BUILT) >= 2:
            _BUILT.pop(0)
        _BUILT.append((same_objects, same_values, built))
    return tuple(kernels)


# the last two builds: (objects they read, compared by identity; values, compared by equality;
# (members, recomputed) -> Kernel)
_BUILT: list[tuple[tuple, tuple, dict]] = []


def _looked_through(graph, oid: int) -> bool:
    """Ops no kernel owns that a kernel reading their result computes itself: broadcasts, iotas, constants, views."""
    return graph.ops[oid].name in GENERATORS or graph.ops[oid].name in ("stablehlo.reshape", "stablehlo.bitcast_convert")


def _read_sources(program, plan: Plan, v: int, reader, operand_index: int, kernel_ops: set[int],
                  members: set[int], recomputed: frozenset[int] = frozenset(), out: list | None = None
                  ) -> list[tuple[int, float]]:
    """What reading value ``v`` costs the kernel, as (value, bytes) pairs: generators, views and ops recomputed in
    the kernel are looked through (the kernel reads their inputs); partial readers read only their slice.
    Appends to ``out`` (a list, not a generator: this runs for every operand of every kernel)."""
    out = [] if out is None else out
    graph = program.graph
    p = graph.producers.get(v)
    if p is not None and p in members:
        return out   # produced inside this kernel (reached through a view)
    if p is not None and p not in kernel_ops and (p in recomputed or _looked_through(graph, p)):
        op = graph.ops[p]
        for j, u in enumerate(op.operands):
            _read_sources(program, plan, u, op, j, kernel_ops, members, recomputed, out)
        return out
    nbytes = plan.nbytes(program, v)
    if reader.name == "stablehlo.scatter" and operand_index < len(reader.results):
        # updated in place: only the elements the updates touch are read (and written back), not the buffer
        updates = reader.operands[len(reader.results) + 1:]
        touched = float(sum(plan.nbytes(program, u) for u in updates))
        out.append((v, min(nbytes, touched)))
        return out
    if reader.name in PARTIAL_READERS and operand_index == 0:
        if reader.name == "stablehlo.dynamic_update_slice":
            nbytes = 0.0   # in place: the buffer is not read
        else:
            nbytes = min(nbytes, float(sum(plan.nbytes(program, r) for r in reader.results)))
    out.append((v, nbytes))
    return out


def default_kernels(program) -> tuple[Kernel, ...]:
    """Every op that launches a kernel is its own kernel (no fusion): what a plan without fusion decisions runs."""
    return Fuse(strategy="none").run(program, Plan(), None).kernels


def kernels_of(program, plan: Plan) -> tuple[Kernel, ...]:
    """The plan's kernels, or ``default_kernels`` when no pass decided fusion (computed once per program: the
    same tuple each time, so the cost model's per-kernels caches hit)."""
    if plan.kernels is not None:
        return plan.kernels
    if "_default_kernels" not in program.__dict__:
        program.__dict__["_default_kernels"] = default_kernels(program)
    return program.__dict__["_default_kernels"]


# -- a compiler's own kernels ------------------------------------------------------------------------
def compiled_groups(program) -> list[list[int]]:
    """The kernels of a compiler's optimized module: each top-level grouping op (fusion, async start) with
    every op nested in its regions; every other op that launches a kernel on its own. Ops that never run
    (a branch not counted) are left out, as in the other strategies."""
    graph = program.graph
    nested: set[int] = set()
    for op in graph.ops:
        if op.name in GROUPING_OPS:
            nested.update(o for region in op.regions for o in region)
    if not _grouping_ops(graph):
        raise ValueError(f"{graph.name}: fuse{{strategy=compiled}} needs a compiler's optimized module (no fusion "
                         "ops here); import it with explorer.lower(fn, *args, compiler='xla', target=...)")
    groups: list[list[int]] = []
    for op in graph.ops:
        if op.id in nested or program.weights[op.id] == 0 or program.works[op.id] is None:
            continue
        if op.name in GROUPING_OPS:
            members, stack = [op.id], [o for region in op.regions for o in region]
            while stack:
                o = stack.pop()
                members.append(o)
                stack.extend(x for region in graph.ops[o].regions for x in region)
            groups.append(sorted(members))
        elif program.works[op.id].launches_kernel and not op.regions:
            groups.append([op.id])
    return groups


def compiled_kernels(program, plan: Plan) -> tuple[Kernel, ...]:
    """``compiled_groups`` priced at their boundaries; async collectives marked overlappable."""
    graph = program.graph
    kernels = []
    for kern in build_kernels(program, compiled_groups(program), plan=plan):
        lead = graph.ops[kern.ops[0]]
        if lead.name in _ASYNC_STARTS:
            inner = {graph.ops[o].name for o in kern.ops[1:]}
            # an async copy (XLA:TPU prefetching into another memory space) is a DMA, not a compute kernel
            kind = "copy" if inner and inner <= _COPIES else "async"
            kern = Kernel(ops=kern.ops, reads=kern.reads, writes=kern.writes, spill_bytes=kern.spill_bytes,
                          kind=kind, overlappable=True)
        kernels.append(kern)
    return tuple(kernels)


def memory_spaces(graph) -> dict[int, int]:
    """value id -> the memory space the compiler assigned it, where not main memory (0): read from the
    ``xla_shape`` attribute the HLO -> MLIR converter writes on every op with a non-default layout, one leaf
    shape per result (a fusion's or async done's results are the values its ``returns`` attribute names)."""
    out: dict[int, int] = {}
    for op in graph.ops:
        shape = op.attrs.get("xla_shape")
        if not isinstance(shape, str) or "S(" not in shape:
            continue
        spaces = [int(m.group(1)) if (m := _SPACE.search(leaf.group(1) or "")) else 0
                  for leaf in _LEAF_SHAPE.finditer(shape)]
        values = tuple(op.attrs.get("returns", ())) if op.name in GROUPING_OPS or op.name in _ASYNC_DONES \
            else op.results
        if len(values) == len(spaces) + 1:
            values = values[:-1]           # a tuple result: its leaves, then the value standing for the tuple
        if len(values) != len(spaces):
            continue                       # an async start's bundle (operand, result, context): its done says
        out.update((v, s) for v, s in zip(values, spaces) if s != 0)
    return out


def compiled_placement(program, target) -> dict[int, str]:
    """The memory level of ``target`` each value of a compiled module lives in, where the compiler put it
    outside main memory: host memory space in the target's host level, any other in its on-chip level."""
    if target is None:
        return {}
    spaces = program.__dict__.get("_memory_spaces")
    if spaces is None:
        spaces = program.__dict__["_memory_spaces"] = memory_spaces(program.graph)
    on_chip = target.on_chip.name if target.on_chip is not None else None
    host = target.host_memory.name if target.host_memory is not None else None
    out: dict[int, str] = {}
    for v, space in spaces.items():
        level = host if space == HOST_MEMORY_SPACE else on_chip
        if level is not None:
            out[v] = level
    return out


def _layout_copy_kernels(program, plan: Plan, copies: list[tuple[int, int]]) -> tuple[ExtraKernel, ...]:
    """XLA:GPU's transposing copies of matmul operands a GEMM cannot read as they are (see
    ``fusion_xla.gemm_ready``): each reads and writes the operand once, just before its matmul."""
    graph = program.graph
    out = []
    for v, m in copies:
        nb = plan.nbytes(program, v)
        p = graph.producers.get(v)
        after = p if p is not None and graph.ops[p].frames == graph.ops[m].frames else m
        phase, layer, _ = names.parse(graph.ops[m].name_stack)
        out.append(ExtraKernel(name="copy[transpose]", work=Work(bytes_read=nb, bytes_written=nb), after_op=after,
                               layer=layer, phase=phase))
    return tuple(out)
