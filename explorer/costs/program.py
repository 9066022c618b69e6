"""``Program``: an imported graph with every op counted, loops and branches resolved.

Counting happens once per program (here); pricing on a target happens later, in
``explorer.pricing``. Programs are made by the front ends (``explorer.frontend``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from ..graph.gcpause import paused_gc
from ..graph.ir import Graph, LoopInfo
from .registry import find_rule, rule_key
from .work import Work


class UnknownTripCountError(ValueError):
    pass


@dataclass(frozen=True)
class Program:
    """A counted program. Build with ``explorer.lower`` or ``explorer.from_stablehlo``.

    Rules applied here, documented once:
    - an op inside ``stablehlo.while`` runs ``trip_count`` times (nested loops multiply);
      a loop whose count could not be inferred counts once and is listed in ``unknown_loops``
      until the user supplies it (``with_trip_counts``);
    - a ``case``/``if`` is counted as its most expensive branch by counted work
      (flops + transcendentals + bytes), since which branch runs is data-dependent and a latency
      budget needs the upper estimate; the choice is in ``branch_choice``.
    """

    graph: Graph
    works: tuple[Work | None, ...]            # per op, one execution; None = no rule (unknown)
    weights: tuple[float, ...]                # executions of each op in one program run
    trip_counts: Mapping[int, int | None]     # while op id -> trip count (None: unknown)
    branch_choice: Mapping[int, int]          # case op id -> branch counted
    unknown_ops: Mapping[str, int]            # op name (custom_call:target) -> executions-free count of ops
    lowered: Any = field(default=None, compare=False, repr=False)
    # where the program came from when a compiler made it (``explorer.frontend.xla``): the compiler, the target it
    # compiled for, the compiler's own reports (memory analysis, cost analysis); empty for a JAX lowering
    origin: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_graph(cls, graph: Graph, trip_counts: Mapping[int, int] | None = None, lowered: Any = None,
                   origin: Mapping[str, Any] | None = None) -> "Program":
        with paused_gc():
            return cls._from_graph(graph, trip_counts, lowered, origin)

    @classmethod
    def _from_graph(cls, graph: Graph, trip_counts, lowered, origin) -> "Program":
        works: list[Work | None] = []
        unknown: Counter[str] = Counter()
        for op in graph.ops:
            fn = find_rule(op)
            if fn is None:
                works.append(None)
                unknown[rule_key(op)] += 1
                continue
            ins = [graph.values[v] for v in op.operands]
            outs = [graph.values[v] for v in op.results]
            try:
                work = fn(op, ins, outs)
            except Exception as exc:  # a rule that cannot count this op names it
                raise ValueError(f"cost rule for {op.name} failed on op #{op.id} ({op.name_stack}): {exc}") from exc
            if work is None:   # the rule lacks what it needs for this op (e.g. a call's geometry): unknown
                unknown[rule_key(op)] += 1
            works.append(work)
        trips: dict[int, int | None] = {lp.op_id: lp.trip_count for lp in graph.loops}
        for key, n in (trip_counts or {}).items():
            oid = _loop_id(graph, key)
            trips[oid] = _trip_count(graph, oid, key, n)
        weights, choice = _weights(graph, works, trips)
        return cls(origin=MappingProxyType(dict(origin or {})), graph=graph, works=tuple(works), weights=tuple(weights),
                   trip_counts=MappingProxyType(trips), branch_choice=MappingProxyType(choice),
                   unknown_ops=MappingProxyType(dict(sorted(unknown.items()))), lowered=lowered)

    def with_trip_counts(self, counts: Mapping[int | str, int]) -> "Program":
        """A copy with user-supplied trip counts, keyed by loop op id or by the loop's name stack.

        A count is a non-negative integer (``int`` or a numpy integer); ``True`` / ``False``, floats and
        anything else are refused with an error naming the loop and the value."""
        merged = {k: v for k, v in self.trip_counts.items() if v is not None}
        for key, n in counts.items():
            oid = _loop_id(self.graph, key)
            merged[oid] = _trip_count(self.graph, oid, key, n)
        return Program.from_graph(self.graph, merged, lowered=self.lowered, origin=self.origin)

    def __repr__(self) -> str:
        # short: the default dataclass repr prints every op and weight (megabytes on a train step)
        return (f"Program({self.graph.name!r}, {self.num_ops:,} ops, {self.flops:.4g} flops, "
                f"{self.bytes_accessed:.4g} bytes unfused, {_unknown_text(self.unknown_ops)}, "
                f"{len(self.unknown_loops)} unknown loops)")

    # -- totals ---------------------------------------------------------------
    def _sum(self, attr: str) -> float:
        return float(sum(getattr(w, attr) * k for w, k in zip(self.works, self.weights) if w is not None))

    @property
    def flops(self) -> float:
        """Matrix + vector flops of one run (XLA's convention: transcendentals apart)."""
        return self._sum("matrix_flops") + self._sum("vector_flops")

    @property
    def matrix_flops(self) -> float:
        return self._sum("matrix_flops")

    @property
    def vector_flops(self) -> float:
        return self._sum("vector_flops")

    @property
    def transcendentals(self) -> float:
        return self._sum("transcendentals")

    @property
    def bytes_accessed(self) -> float:
        """Bytes read + written with every op its own kernel (no fusion)."""
        return self._sum("bytes_read") + self._sum("bytes_written")

    @property
    def collective_bytes(self) -> float:
        return self._sum("collective_bytes")

    def flops_by_dtype(self) -> dict[str, dict[str, float]]:
        """{"matrix"|"vector"|"transcendental": {dtype: count}}."""
        out: dict[str, dict[str, float]] = {"matrix": {}, "vector": {}, "transcendental": {}}
        for w, k in zip(self.works, self.weights):
            if w is None or k == 0:
                continue
            for cls, val in (("matrix", w.matrix_flops), ("vector", w.vector_flops), ("transcendental", w.transcendentals)):
                if val:
                    out[cls][w.dtype] = out[cls].get(w.dtype, 0.0) + val * k
        return out

    @property
    def unknown_loops(self) -> tuple[LoopInfo, ...]:
        return tuple(lp for lp in self.graph.loops if self.trip_counts.get(lp.op_id) is None)

    @property
    def num_ops(self) -> int:
        return len(self.graph.ops)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.graph.name, "ops": self.num_ops, "flops": self.flops,
            "transcendentals": self.transcendentals, "bytes_accessed_unfused": self.bytes_accessed,
            "unknown_ops": dict(self.unknown_ops),
            "loops": [{"name": lp.name_stack, "trip_count": self.trip_counts.get(lp.op_id), "how": lp.reason}
                      for lp in self.graph.loops],
        }


def _unknown_text(unknown: Mapping[str, int], show: int = 4) -> str:
    if not unknown:
        return "no unknown ops"
    items = [f"{k} x{v}" for k, v in list(unknown.items())[:show]]
    more = f", +{len(unknown) - show} more" if len(unknown) > show else ""
    return f"unknown ops: {', '.join(items)}{more}"


def _trip_count(graph: Graph, oid: int, key: Any, n: Any) -> int:
    """A user-supplied trip count as an ``int``: integers (numpy's too), never bools or floats."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        stack = next((lp.name_stack for lp in graph.loops if lp.op_id == oid), "")
        where = f"loop {key!r} (op {oid}" + (f", {stack})" if stack and key != stack else ")")
        raise ValueError(f"trip count for {where} must be a non-negative integer, got {n!r} "
                         f"({type(n).__name__})")
    return int(n)


def _loop_id(graph: Graph, key: int | str) -> int:
    for lp in graph.loops:
        if key == lp.op_id or key == lp.name_stack:
            return lp.op_id
    names = ", ".join(f"{lp.op_id} ({lp.name_stack})" for lp in graph.loops) or "none"
    raise KeyError(f"no while loop {key!r} in program; loops: {names}")


def _weights(graph: Graph, works: list[Work | None], trips: Mapping[int, int | None]) -> tuple[list[float], dict[int, int]]:
    loop_w = []
    for op in graph.ops:
        k = 1.0
        for f in op.frames:
            if f.kind == "while":
                n = trips.get(f.op_id)
                k *= 1.0 if n is None else float(n)
        loop_w.append(k)
    excluded: set[tuple[int, int]] = set()
    choice: dict[int, int] = {}
    cases = [op for op in graph.ops if op.name in ("stablehlo.case", "stablehlo.if", "mhlo.case", "mhlo.if")]
    for case in sorted(cases, key=lambda o: -len(o.frames)):
        size: dict[int, float] = {}
        for op, w, k in zip(graph.ops, works, loop_w):
            if w is None:
                continue
            if any((f.op_id, f.branch) in excluded for f in op.frames if f.kind == "case"):
                continue
            for f in op.frames:
                if f.kind == "case" and f.op_id == case.id:
                    size[f.branch] = size.get(f.branch, 0.0) + k * (w.flops + w.transcendentals + w.bytes_accessed)
        n_branches = len(case.regions)
        best = max(range(n_branches), key=lambda b: (size.get(b, 0.0), -b)) if n_branches else 0
        choice[case.id] = best
        excluded.update((case.id, b) for b in range(n_branches) if b != best)
    weights = []
    for op, k in zip(graph.ops, loop_w):
        if any(f.kind == "case" and (f.op_id, f.branch) in excluded for f in op.frames):
            weights.append(0.0)
        else:
            weights.append(k)
    return weights, choice
