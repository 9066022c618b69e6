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
  that launches a kernel (a library call, a copy, a synchronous collective) its own.

A fused kernel's traffic is only what crosses its boundary (plus spills); its compute is
the sum of its ops; it pays one launch overhead. Fusion never crosses a loop or branch
boundary. A decision is a (producer op id, consumer op id) edge: ``forbid`` and ``force``
take edges, so a notebook can override single choices; ``candidates()`` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from explorer.graph.importer import GROUPING_OPS

from .pipeline import register
from .plan import Kernel, Plan

_ELEMENTWISE_PREFIX = ("stablehlo.", "chlo.")
_MOVEMENT = frozenset({
    "stablehlo.transpose", "stablehlo.slice", "stablehlo.concatenate", "stablehlo.pad", "stablehlo.reverse",
    "stablehlo.dynamic_slice", "stablehlo.gather", "stablehlo.copy", "stablehlo.broadcast_in_dim",
    "stablehlo.broadcast", "stablehlo.iota", "stablehlo.select",
})
_GENERATORS = frozenset({"stablehlo.broadcast_in_dim", "stablehlo.broadcast", "stablehlo.iota", "stablehlo.constant"})
_REDUCE = frozenset({"stablehlo.reduce", "stablehlo.reduce_window"})
_MATMUL = frozenset({"stablehlo.dot_general", "stablehlo.dot", "stablehlo.convolution"})
_PARTIAL_READERS = frozenset({"stablehlo.dynamic_slice", "stablehlo.slice", "stablehlo.gather",
                              "stablehlo.dynamic_update_slice"})
_IN_PLACE_ROOTS = frozenset({"stablehlo.dynamic_update_slice", "stablehlo.scatter"})

Edge = tuple[int, int]
STRATEGIES = ("none", "xla", "aggressive", "compiled")
_ASYNC_STARTS = frozenset({"stablehlo.async_start", "mhlo.async_start"})


def op_class(program, oid: int) -> str:
    """'generator', 'elementwise', 'movement', 'reduce', 'matmul', 'view', 'root' (fusible only as a consumer)
    or 'opaque' (never fused)."""
    op = program.graph.ops[oid]
    w = program.works[oid]
    if w is None:
        return "opaque"
    if op.regions:
        return "opaque"      # while / case / manual computation: a fusion barrier that reads real buffers
    if op.name in _GENERATORS:
        return "generator"
    if not w.launches_kernel:
        return "view"
    if op.name in _MATMUL:
        return "matmul"
    if op.name in _REDUCE:
        return "reduce"
    if op.name in _MOVEMENT:
        return "movement"
    if op.name in _IN_PLACE_ROOTS:
        return "root"
    if w.collective or op.regions or op.name.endswith("custom_call"):
        return "opaque"
    if (w.vector_flops or w.transcendentals) and not w.matrix_flops and op.name.startswith(_ELEMENTWISE_PREFIX) \
            and op.name not in ("stablehlo.sort", "stablehlo.fft", "stablehlo.cholesky", "stablehlo.triangular_solve",
                                "stablehlo.select_and_scatter", "stablehlo.map", "stablehlo.batch_norm_training",
                                "stablehlo.batch_norm_grad", "stablehlo.batch_norm_inference"):
        return "elementwise"
    return "opaque"


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
        return sorted(self._fuse(program, target)[1])

    # -- entry point --------------------------------------------------------------
    def run(self, program, plan: Plan, target) -> Plan:
        if self.strategy == "compiled":
            return plan.with_(kernels=compiled_kernels(program, plan))
        groups, _ = self._fuse(program, target)
        kernels = build_kernels(program, groups, target, spill=self.strategy == "aggressive", plan=plan)
        return plan.with_(kernels=kernels)

    def _fuse(self, program, target) -> tuple[list[list[int]], set[Edge]]:
        if self.strategy == "compiled":
            return compiled_groups(program), set()
        graph = program.graph
        live = [op.id for op in graph.ops if program.works[op.id] is not None and program.weights[op.id] > 0]
        cls = {o: op_class(program, o) for o in live}
        made: set[Edge] = set()
        if self.strategy == "none":
            singles = [o for o in live if program.works[o].launches_kernel]
            return [[o] for o in singles], made
        users = graph.consumers()
        kernel_ops = [o for o in live if (program.works[o].launches_kernel and cls[o] != "generator")
                      or (cls[o] == "generator" and _materialised(program, o, cls, users))]
        in_group = set(kernel_ops)
        external: dict[int, set[int]] = {}
        for o in kernel_ops:
            ext = set()
            for r in graph.ops[o].results:
                if r in graph.escaping or r in graph.outputs:
                    ext.add(-1)
                ext |= _kernel_readers(graph, users, r, in_group.__contains__,
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
                    p = _producer_through_views(graph, v, cls)
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


def _producer_through_views(graph, vid: int, cls) -> int | None:
    """The op that really produces a value, looking through reshapes/bitcasts (views, not kernels)."""
    for _ in range(64):
        p = graph.producers.get(vid)
        if p is None or cls.get(p) != "view" or len(graph.ops[p].operands) != 1:
            return p
        vid = graph.ops[p].operands[0]
    return None


def _kernel_readers(graph, users, vid: int, is_kernel, is_transparent) -> set[int]:
    """The kernels that read a value, looking through readers that are no kernel of their own (views,
    broadcasts duplicated into their readers); -1 for a reader that is neither (a loop, a program output)."""
    out, stack, seen = set(), [vid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in graph.outputs or v in graph.escaping:
            out.add(-1)
        for u in users.get(v, ()):
            if is_kernel(u):
                out.add(u)
            elif is_transparent(u):
                stack.extend(graph.ops[u].results)
            else:
                out.add(-1)
    return out


def _real_users(graph, users, vid: int) -> list[int]:
    """Readers of a value, looking through views (reshape/bitcast), which are not kernels."""
    out, stack, seen = [], [vid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in users.get(v, ()):
            op = graph.ops[u]
            if op.name in ("stablehlo.reshape", "stablehlo.bitcast_convert"):
                stack.extend(op.results)
            else:
                out.append(u)
    return out


def _materialised(program, oid: int, cls, users) -> bool:
    """A generator is materialised only when something that cannot fuse it reads it (or it is an output)."""
    graph = program.graph
    op = graph.ops[oid]
    if cls[oid] == "view":
        return False
    for r in op.results:
        if r in graph.outputs or r in graph.escaping:
            return True
        for u in _real_users(graph, users, r):
            if u not in cls or cls[u] in ("opaque", "root", "matmul"):
                if op.name == "stablehlo.constant":
                    return False   # constants are baked into the executable
                return True
    return False


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
                  plan: Plan | None = None) -> tuple[Kernel, ...]:
    """Price each group's boundary: distinct values read from outside, values used outside
    (sizes and work per device when a sharding pass has set them in ``plan``)."""
    plan = plan or Plan()
    graph = program.graph
    users = graph.consumers()
    kernel_ops = {o for g in groups for o in g}
    copies = lambda u: graph.ops[u].name in _GENERATORS or graph.ops[u].name in ("stablehlo.reshape",
                                                                                   "stablehlo.bitcast_convert")
    kernels = []
    for members in sorted(groups):
        mset = set(members)
        reads: dict[int, float] = {}
        for o in members:
            op = graph.ops[o]
            if op.name in GROUPING_OPS:
                continue   # a fusion's reads are its ops' reads (a sliced operand is read only in part)
            for i, v in enumerate(op.operands):
                p = graph.producers.get(v)
                if p is not None and p in mset:
                    continue
                for src, nbytes in _read_sources(program, plan, v, op, i, kernel_ops, mset):
                    reads[src] = max(reads.get(src, 0.0), nbytes)
        writes: list[tuple[int, float]] = []
        intermediates = 0.0
        for o in members:
            op = graph.ops[o]
            w = plan.work(program, o)
            for r in op.results:
                outside = r in graph.outputs or r in graph.escaping or any(
                    u not in mset for u in _kernel_readers(graph, users, r, kernel_ops.__contains__, copies))
                if outside:
                    writes.append((r, float(w.bytes_written if op.name in _IN_PLACE_ROOTS else plan.nbytes(program, r))))
                elif op.name in _MATMUL:
                    intermediates += plan.nbytes(program, r)
        spill_bytes = 0.0
        if spill and target is not None and intermediates:
            # A matmul chain is computed tile by tile (FlashAttention-style): one output tile of the first matmul
            # per unit must fit in that unit's share of on-chip memory; beyond that it is written out and read back.
            cap = target.on_chip.capacity_bytes if target.on_chip is not None else 0.0
            first = min((o for o in members if graph.ops[o].name in _MATMUL), default=None)
            g = plan.work(program, first).gemm if first is not None else None
            tm, tn, _ = target.compute.matrix_tile
            # online-softmax style: each output tile of the first matmul is consumed as soon as it is made
            tiles = g.batch * -(-g.m // tm) * -(-g.n // tn) if g is not None else 1
            per_unit_tile = intermediates / max(1, tiles)
            if per_unit_tile > cap / target.compute.matrix_units:
                spill_bytes = 2.0 * intermediates
        kinds = {graph.ops[o].name for o in members}
        kind = "single" if len(members) == 1 else ("output" if kinds & _MATMUL else ("input" if kinds & _REDUCE else "loop"))
        kernels.append(Kernel(ops=tuple(members), reads=tuple(sorted(reads.items())), writes=tuple(writes),
                              spill_bytes=spill_bytes, kind=kind))
    return tuple(kernels)


def _read_sources(program, plan: Plan, v: int, reader, operand_index: int, kernel_ops: set[int],
                  members: set[int]):
    """What reading value ``v`` costs the kernel: generators are looked through (duplicated
    into the kernel, reading their own inputs); partial readers read only their slice."""
    graph = program.graph
    p = graph.producers.get(v)
    if p is not None and p in members:
        return   # produced inside this kernel (reached through a view)
    if p is not None and graph.ops[p].name in _GENERATORS | {"stablehlo.reshape", "stablehlo.bitcast_convert"} \
            and p not in kernel_ops:
        for u in graph.ops[p].operands:
            yield from _read_sources(program, plan, u, graph.ops[p], 0, kernel_ops, members)
        return
    nbytes = plan.nbytes(program, v)
    if reader.name in _PARTIAL_READERS and operand_index == 0:
        if reader.name == "stablehlo.dynamic_update_slice":
            nbytes = 0.0   # in place: the buffer is not read
        else:
            nbytes = min(nbytes, float(sum(plan.nbytes(program, r) for r in reader.results)))
    yield v, nbytes


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
    if not any(op.name in GROUPING_OPS for op in graph.ops):
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
            kern = Kernel(ops=kern.ops, reads=kern.reads, writes=kern.writes, spill_bytes=kern.spill_bytes,
                          kind="async", overlappable=True)
        kernels.append(kern)
    return tuple(kernels)
