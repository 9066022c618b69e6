"""Per-op layouts chosen by an integer program, in the style of Alpa's intra-operator pass.

Nodes and their strategies:
- every matmul (``dot_general``) with every assignment of the mesh axes to its roles (batch, lhs-free,
  rhs-free, contracting -> partial sum, or unused) whose splits divide the dimensions; its cost is the
  per-device compute time;
- every parameter, with its optimizer state (same path and shape: one decision), laid out replicated,
  or split along one dimension by one axis, or along two dimensions by two axes; its cost is nothing,
  its per-device bytes count against the memory budget;
- the data inputs together: the batch dimension split over a set of axes (the rest replicated).
Edges: a matmul operand traced back, through layout-preserving ops (casts, elementwise ops, transposes),
to the matmul or input that produced it; and a matmul result (a gradient) traced forward to the
optimizer op that combines it with its parameter. An edge's cost, for a pair of strategies, is the
time of the collectives that reshard one into the other (``sharding_reshard`` priced on the target).

The program minimises node + edge costs subject to one strategy per node and the parameters' bytes
within ``STATE_FRACTION`` of the memory per chip (activations need the rest); the pairwise products are
linearised (``e >= x_u + x_v - 1``) and the problem is solved with HiGHS (``passes/solver.py``).

The chosen input layouts are handed to the partitioner (``sharding_propagate``), which inserts the
collectives and prices everything in between as usual. The matmul strategies the ILP chose are forced
on the partitioner only with ``force_ops``: the ILP does not see the ops between matmuls (norms,
softmax, residual adds), and forcing its matmul choices through them cost more than letting the
partitioner pick them given the ILP's layouts (GPT-2, 2 layers, data=2 x model=4 on H100:
18.2 ms forced vs 7.1 ms, against 8.5 ms for the best named strategy, dp+tp).
Size: the 2-layer GPT-2 step (d_model 64, data=2 x model=4) gives ~60k variables and is solved at the root
node in about 4 s on 2 cores; the MLP example ~200, in under a second. The solver stops at a *work* limit
(``node_limit`` branch-and-bound nodes), never at a wall clock unless asked (``time_limit_s``), so the same
program gives the same plan in every process; it prints nothing (``passes/solver.py``), and the notes say
whether the plan is optimal or where it stopped.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

from explorer.graph.ir import dtype_bytes

from ..pipeline import register
from ..plan import Plan
from ..solver import DEFAULT_NODE_LIMIT, solve_milp
from .propagate import CostModel, ShardingResult, propagate
from .buckets import XLA_COMBINE_THRESHOLD_BYTES
from .shard import SHARDING_READS, collective_boundaries, collective_kernels
from .reshard import reshard
from .rules import Choice, Ctx, matmul_choices
from .spec import Mesh, Spec
from .strategies import DATA_ROOTS, parse_axes, parse_mesh_text, path_of, root_of

STATE_FRACTION = 0.75
_FOLLOW = frozenset({"stablehlo.convert", "stablehlo.copy", "stablehlo.negate", "stablehlo.multiply",
                     "stablehlo.add", "stablehlo.subtract", "stablehlo.divide", "stablehlo.select",
                     "stablehlo.maximum", "stablehlo.minimum", "stablehlo.transpose"})


@dataclass(frozen=True)
class IlpPlan:
    inputs: dict[int, Spec]
    forced: dict[int, Choice]
    objective_s: float
    variables: int
    status: str
    optimal: bool = True


def _layouts(shape, mesh: Mesh) -> list[Spec]:
    """Replicated, one axis on one dim, two axes on two dims or both on one dim (when they divide)."""
    rank = len(shape)
    out = [Spec.replicated(rank)]
    names = mesh.names
    for a in names:
        for d in range(rank):
            if shape[d] % mesh.size(a) == 0:
                out.append(Spec(tuple((a,) if i == d else () for i in range(rank))))
    for a, b in itertools.permutations(names, 2):
        for d1 in range(rank):
            for d2 in range(rank):
                if d1 == d2:
                    if names.index(a) < names.index(b) and shape[d1] % (mesh.size(a) * mesh.size(b)) == 0:
                        out.append(Spec(tuple((a, b) if i == d1 else () for i in range(rank))))
                elif shape[d1] % mesh.size(a) == 0 and shape[d2] % mesh.size(b) == 0 and d1 < d2:
                    out.append(Spec(tuple((a,) if i == d1 else (b,) if i == d2 else () for i in range(rank))))
    return out


def _data_layouts(mesh: Mesh) -> list[tuple[str, ...]]:
    names = mesh.names
    return [tuple(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]


def solve(program, mesh: Mesh, target: Any = None, memory_bytes: float = 0.0,
          data_roots=DATA_ROOTS, time_limit_s: float = 0.0, node_limit: int = DEFAULT_NODE_LIMIT) -> IlpPlan:
    """Build and solve the integer program (see module docstring). ``node_limit``: the solver's work limit
    (deterministic); ``time_limit_s`` > 0 adds a wall-clock limit (then the plan may depend on the machine)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.sparse import lil_matrix

    graph = program.graph
    cost = CostModel(target, mesh.devices)
    names = dict(zip(graph.inputs, graph.input_names))
    # -- nodes ------------------------------------------------------------------------------------
    nodes: list[tuple[str, Any]] = []            # (kind, key)
    strategies: list[list[Any]] = []
    node_cost: list[list[float]] = []
    node_mem: list[list[float]] = []
    group_of: dict[int, int] = {}                # input value id -> node index
    data_node = None
    groups: dict[tuple, list[int]] = {}
    for v in graph.inputs:
        name = names[v]
        if not graph.values[v].shape:
            continue
        if root_of(name) in data_roots:
            if data_node is None:
                data_node = len(nodes)
                nodes.append(("data", None))
                strategies.append(_data_layouts(mesh))
                node_cost.append([0.0] * len(strategies[-1]))
                node_mem.append([0.0] * len(strategies[-1]))
            group_of[v] = data_node
            continue
        groups.setdefault((path_of(name) or (name,), graph.values[v].shape), []).append(v)
    for (path, shape), members in groups.items():
        idx = len(nodes)
        nodes.append(("state", tuple(members)))
        lays = _layouts(shape, mesh)
        strategies.append(lays)
        node_cost.append([0.0] * len(lays))
        total = sum(graph.values[m].nbytes for m in members)
        node_mem.append([total / math.prod(s.shards(mesh, d) for d in range(s.rank)) for s in lays])
        for m in members:
            group_of[m] = idx
    dot_node: dict[int, int] = {}
    for op in graph.ops:
        if op.name != "stablehlo.dot_general" or not program.weights[op.id]:
            continue
        ins = tuple(graph.values[v] for v in op.operands)
        outs = tuple(graph.values[v] for v in op.results)
        cands = _dot_strategies(op, ins, outs, mesh)
        if not cands:
            continue
        dot_node[op.id] = len(nodes)
        nodes.append(("dot", op.id))
        strategies.append(cands)
        w = program.works[op.id]
        node_cost.append([cost.work(w, _fraction(c, mesh)) * program.weights[op.id] for c in cands])
        node_mem.append([0.0] * len(cands))
    # -- edges ------------------------------------------------------------------------------------
    edges: list[tuple[int, int, Any]] = []       # (source node, dest node, pair-cost function data)
    users = graph.consumers()
    for oid, dn in dot_node.items():
        op = graph.ops[oid]
        runs = program.weights[oid]
        for i, v in enumerate(op.operands[:2]):
            src = _trace_back(graph, v, group_of, dot_node)
            if src is None:
                continue
            sn, perm = src
            edges.append((sn, dn, ("in", i, v, perm, runs)))
        # a gradient: forward to the optimizer op reading a parameter group of the same shape
        dst = _trace_forward(graph, users, op.results[0], group_of)
        if dst is not None:
            gn, perm = dst
            edges.append((dn, gn, ("grad", op.results[0], perm, runs)))
    # -- costs per edge and strategy pair ---------------------------------------------------------
    pair_costs: list[dict[tuple[int, int], float]] = []
    for sn, dn, info in edges:
        table: dict[tuple[int, int], float] = {}
        for a, s_src in enumerate(strategies[sn]):
            src_spec = _source_spec(nodes[sn][0], s_src, info, graph)
            for b, s_dst in enumerate(strategies[dn]):
                want = _dest_spec(nodes[dn][0], s_dst, info, graph)
                if src_spec is None or want is None:
                    continue
                t = _reshard_s(graph, info, src_spec, want, mesh, cost)
                if t > 0:
                    table[(a, b)] = t
        pair_costs.append(table)
    # -- the integer program ----------------------------------------------------------------------
    x_index: list[list[int]] = []
    n = 0
    for strats in strategies:
        x_index.append(list(range(n, n + len(strats))))
        n += len(strats)
    e_vars: list[tuple[int, int, int, int, float]] = []   # (edge, a, b, var, cost)
    for k, table in enumerate(pair_costs):
        for (a, b), t in table.items():
            e_vars.append((k, a, b, n, t))
            n += 1
    c = np.zeros(n)
    for i, costs in enumerate(node_cost):
        c[x_index[i]] = costs
    for k, a, b, var, t in e_vars:
        c[var] = t
    rows = len(nodes) + len(e_vars) + (1 if memory_bytes else 0)
    A = lil_matrix((rows, n))
    lo = np.zeros(rows)
    hi = np.zeros(rows)
    r = 0
    for i in range(len(nodes)):
        A[r, x_index[i]] = 1.0
        lo[r] = hi[r] = 1.0
        r += 1
    for k, a, b, var, t in e_vars:
        sn, dn, _ = edges[k]
        A[r, x_index[sn][a]] = 1.0
        A[r, x_index[dn][b]] = 1.0
        A[r, var] = -1.0
        lo[r], hi[r] = -np.inf, 1.0               # x_u + x_v - e <= 1
        r += 1
    if memory_bytes:
        for i, mem in enumerate(node_mem):
            for j, mbytes in enumerate(mem):
                A[r, x_index[i][j]] = mbytes
        lo[r], hi[r] = 0.0, STATE_FRACTION * memory_bytes
        r += 1
    integrality = np.zeros(n)
    for idx in x_index:
        integrality[idx] = 1
    res = solve_milp(c, constraints=LinearConstraint(A.tocsr(), lo, hi), integrality=integrality,
                     bounds=Bounds(np.zeros(n), np.ones(n)), node_limit=node_limit, time_limit_s=time_limit_s,
                     mip_rel_gap=1e-4)
    if res.x is None:
        raise ValueError(f"ILP found no sharding within {STATE_FRACTION:.0%} of {memory_bytes:.3g} bytes per chip "
                         f"({res.message})")
    pick = [max(range(len(idx)), key=lambda j: res.x[idx[j]]) for idx in x_index]
    inputs: dict[int, Spec] = {}
    forced: dict[int, Choice] = {}
    for i, (kind, key) in enumerate(nodes):
        s = strategies[i][pick[i]]
        if kind == "state":
            for m in key:
                inputs[m] = s
        elif kind == "data":
            for v, g in group_of.items():
                if g == i:
                    shape = graph.values[v].shape
                    ok = shape and shape[0] % math.prod(mesh.size(a) for a in s) == 0
                    inputs[v] = Spec(tuple((s if ok else ()) if d == 0 else () for d in range(len(shape))))
        else:
            forced[key] = s
    return IlpPlan(inputs=inputs, forced=forced, objective_s=res.objective, variables=n, status=res.note,
                   optimal=res.optimal)


def _fraction(c: Choice, mesh: Mesh) -> float:
    axes = {a for s in (*[x for x in c.operands if x is not None], *c.results) for d in s.dims for a in d}
    axes |= {a for s in c.results for a in s.partial}
    return 1.0 / math.prod(mesh.size(a) for a in axes) if axes else 1.0


def _dot_strategies(op, ins, outs, mesh: Mesh) -> list[Choice]:
    """Every assignment of mesh axes to the matmul's roles (from fully split operands, so every role is offered)."""
    d = op.attrs["dot_dimension_numbers"]
    out: list[Choice] = []
    seen = set()
    lhs, rhs = ins[0], ins[1]
    roles_l = list(range(len(lhs.shape)))
    roles_r = list(range(len(rhs.shape)))
    for placement in itertools.product(*[[None, *[("l", i) for i in roles_l], *[("r", i) for i in roles_r]]
                                         for _ in mesh.names]):
        ldims = [[] for _ in roles_l]
        rdims = [[] for _ in roles_r]
        for a, p in zip(mesh.names, placement):
            if p is None:
                continue
            (ldims if p[0] == "l" else rdims)[p[1]].append(a)
        ls = Spec(tuple(tuple(x) for x in ldims))
        rs = Spec(tuple(tuple(x) for x in rdims))
        ctx = Ctx(op=op, ins=ins, outs=outs, specs=(ls, rs) + tuple(Spec.replicated(len(t.shape)) for t in ins[2:]),
                  mesh=mesh, attr=lambda *_: None)
        for ch in matmul_choices(ctx, d["lhs_batch"], d["rhs_batch"], d["lhs_contract"], d["rhs_contract"], "dot (ilp)"):
            key = (ch.operands[:2], ch.results)
            if key not in seen:
                seen.add(key)
                out.append(ch)
    return out


def _trace_back(graph, v: int, group_of: dict[int, int], dot_node: dict[int, int]):
    """(node, permutation dst dim -> src dim) of the dot or input ``v`` comes from through layout-preserving ops."""
    perm = list(range(len(graph.values[v].shape)))
    for _ in range(32):
        if v in group_of:
            return group_of[v], tuple(perm)
        op = graph.producer(v)
        if op is None:
            return None
        if op.id in dot_node:
            return dot_node[op.id], tuple(perm)
        if op.name not in _FOLLOW:
            return None
        if op.name == "stablehlo.transpose":
            p = op.attrs["permutation"]
            perm = [p[i] for i in perm]
            v = op.operands[0]
            continue
        same = [u for u in op.operands if graph.values[u].shape == graph.values[v].shape]
        if not same:
            return None
        v = same[0] if len(same) == 1 or graph.producer(same[0]) is not None else same[-1]
    return None


def _trace_forward(graph, users, v: int, group_of: dict[int, int]):
    """(state node, permutation) when ``v`` reaches, through layout-preserving ops, an op reading a parameter."""
    perm = list(range(len(graph.values[v].shape)))
    for _ in range(16):
        nxt = users.get(v, ())
        if not nxt:
            return None
        op = graph.ops[nxt[0]]
        if op.name not in _FOLLOW:
            return None
        if op.name == "stablehlo.transpose":
            p = op.attrs["permutation"]
            inv = [0] * len(p)
            for i, q in enumerate(p):
                inv[q] = i
            perm = [perm[p[i]] for i in range(len(p))]
            v = op.results[0]
            continue
        for u in op.operands:
            if u in group_of and graph.values[u].shape == graph.values[op.results[0]].shape:
                return group_of[u], tuple(perm)
        v = op.results[0]
    return None


def _source_spec(kind: str, s, info, graph) -> Spec | None:
    if kind == "dot":
        if info[0] == "in":
            return s.results[0]
        return s.results[0]
    if kind == "data":
        v = info[2] if info[0] == "in" else None
        if v is None:
            return None
        rank = len(graph.values[v].shape)
        return Spec(tuple(s if d == 0 else () for d in range(rank)))
    return s


def _dest_spec(kind: str, s, info, graph) -> Spec | None:
    if kind == "dot":
        return s.operands[info[1]]
    if kind == "state":
        return s
    return None


def _reshard_s(graph, info, src: Spec, want: Spec, mesh: Mesh, cost: CostModel) -> float:
    """Seconds to move the value along the edge from the source layout (mapped through the traced permutation)."""
    if info[0] == "in":
        _, _, v, perm, runs = info
    else:
        _, v, perm, runs = info
    t = graph.values[v]
    if len(perm) != src.rank or len(perm) != want.rank:
        return 0.0
    mapped = Spec(tuple(src.dims[perm[i]] for i in range(len(perm))), src.partial)
    shape = t.shape if info[0] == "in" else tuple(t.shape[perm[i]] for i in range(len(perm)))
    isz = max(1, dtype_bytes(t.dtype))
    try:
        steps = reshard(shape, isz, mapped, want, mesh)
    except ValueError:
        return 0.0
    return cost.steps(steps) * runs


@register
@dataclass(frozen=True)
class IlpShard:
    """``shard_ilp{mesh=data=4.model=2,memory_bytes=8e10}``: layouts chosen by the ILP, then partitioned."""

    name = "shard_ilp"
    mesh: str = "data=1"
    memory_bytes: float = 0.0
    data: str = ""
    force_ops: bool = False
    node_limit: int = DEFAULT_NODE_LIMIT
    time_limit_s: float = 0.0
    bucket_bytes: float = XLA_COMBINE_THRESHOLD_BYTES     # collectives combined as ``shard`` does (0: never)

    def __post_init__(self) -> None:
        parse_mesh_text(self.mesh)
        if not self.bucket_bytes >= 0:
            raise ValueError(f"shard_ilp: option bucket_bytes must be >= 0 (0: no combining), got {self.bucket_bytes!r}")
        if self.memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {self.memory_bytes!r}")
        if isinstance(self.node_limit, bool) or not isinstance(self.node_limit, int) or self.node_limit < 1:
            raise ValueError(f"shard_ilp: option node_limit must be a positive int (branch-and-bound nodes), "
                             f"got {self.node_limit!r}")
        if not self.time_limit_s >= 0:
            raise ValueError(f"shard_ilp: option time_limit_s must be >= 0 (0: no wall-clock limit), "
                             f"got {self.time_limit_s!r}")

    def describe(self) -> str:
        return "ilp"

    def analyse(self, program, target: Any = None) -> ShardingResult:
        mesh = parse_mesh_text(self.mesh)
        roots = parse_axes(self.data) or DATA_ROOTS
        plan = solve(program, mesh, target, self.memory_bytes, roots, self.time_limit_s, self.node_limit)
        res = propagate(program, mesh, plan.inputs, {}, {}, target=target,
                        forced=plan.forced if self.force_ops else None)
        return replace(res, notes=(f"ILP: {plan.variables} variables, objective {plan.objective_s:.4g} s, "
                                   f"{plan.status}",) + res.notes)

    def reads_knobs(self) -> frozenset[str]:
        """The knobs the solver's objective and memory limit read (see ``explorer.sweep``)."""
        return SHARDING_READS

    def run(self, program, plan: Plan, target) -> Plan:
        res = self.analyse(program, target)
        return plan.with_(work_overrides={**(plan.work_overrides or {}), **res.works},
                          value_bytes={**(plan.value_bytes or {}), **res.value_bytes},
                          extra_kernels=plan.extra_kernels + collective_kernels(res, self.bucket_bytes,
                                                                                program.weights, target),
                          boundaries=plan.boundaries | collective_boundaries(res),
                          notes=plan.notes + tuple(f"shard_ilp: {n}" for n in res.notes))
