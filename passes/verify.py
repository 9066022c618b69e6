"""Invariants a plan must keep, checked between passes (``pipeline.run(..., verify=True)``, always on in tests)."""
from __future__ import annotations

from collections import defaultdict

from .plan import Plan


class PlanInvariantError(AssertionError):
    pass


def verify_plan(program, plan: Plan, target=None, after: str = "") -> None:
    where = f" (after {after})" if after else ""
    if plan.kernels is not None:
        _verify_kernels(program, plan, where)
    if plan.placement is not None and target is not None:
        _verify_placement(program, plan, target, where)


def _verify_kernels(program, plan: Plan, where: str) -> None:
    graph = program.graph
    owner: dict[int, int] = {}
    for k, kern in enumerate(plan.kernels):
        if not kern.ops:
            raise PlanInvariantError(f"kernel {k} is empty{where}")
        frames = {graph.ops[o].frames for o in kern.ops}
        if len(frames) > 1:
            raise PlanInvariantError(f"kernel {k} crosses a loop/branch boundary{where}: ops {kern.ops}")
        for o in kern.ops:
            if o in owner:
                raise PlanInvariantError(f"op {o} ({graph.ops[o].name}) is in kernels {owner[o]} and {k}{where}")
            owner[o] = k
        if kern.bytes_in < 0 or kern.bytes_out < 0 or kern.spill_bytes < 0:
            raise PlanInvariantError(f"kernel {k} has negative traffic{where}")
    # every op that does work is priced: in exactly one kernel, or recomputed in the kernels that read it
    # (generators and views are duplicated into their consumers without being listed)
    recomputed = {o for kern in plan.kernels for o in kern.recomputed}
    for kern in plan.kernels:
        for o in kern.recomputed:
            if o in owner:
                raise PlanInvariantError(f"op {o} ({graph.ops[o].name}) is owned by kernel {owner[o]} and "
                                         f"recomputed elsewhere{where}")
    for op, w, runs in zip(graph.ops, program.works, program.weights):
        if w is None or runs == 0 or not w.launches_kernel:
            continue
        if op.id not in owner and op.id not in recomputed and (w.flops or w.transcendentals or w.collective_bytes) \
                and not _is_generator(op):
            raise PlanInvariantError(f"op {op.id} ({op.name}, {op.name_stack}) is in no kernel{where}")
    # acyclic: the kernel graph (kernel -> kernels reading its results) is a DAG
    edges: dict[int, set[int]] = defaultdict(set)
    users = graph.consumers()
    for k, kern in enumerate(plan.kernels):
        for o in kern.ops:
            for r in graph.ops[o].results:
                for u in _through_unowned(graph, users, r, owner):
                    if owner[u] != k:
                        edges[k].add(owner[u])
    indeg = {k: 0 for k in range(len(plan.kernels))}
    for k, outs in edges.items():
        for j in outs:
            indeg[j] += 1
    ready = [k for k, d in indeg.items() if d == 0]
    seen = 0
    while ready:
        k = ready.pop()
        seen += 1
        for j in edges.get(k, ()):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if seen != len(plan.kernels):
        raise PlanInvariantError(f"fusion groups form a cycle{where}")


def _is_generator(op) -> bool:
    return op.name in ("stablehlo.broadcast_in_dim", "stablehlo.broadcast", "stablehlo.iota", "stablehlo.constant")


def _through_unowned(graph, users, vid: int, owner: dict[int, int]):
    """Owned readers of a value, looking through ops that belong to no kernel (views, duplicated generators)."""
    stack, seen = [vid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u in users.get(v, ()):
            if u in owner:
                yield u
            else:
                stack.extend(graph.ops[u].results)


def _verify_placement(program, plan: Plan, target, where: str) -> None:
    used: dict[str, float] = defaultdict(float)
    for vid, level in plan.placement.items():
        used[level] += program.graph.values[vid].nbytes
    for level, nbytes in used.items():
        cap = target.memory_level(level).capacity_bytes
        if nbytes > cap:
            raise PlanInvariantError(f"placement puts {nbytes:.0f} B in {level} (capacity {cap:.0f} B){where}")
