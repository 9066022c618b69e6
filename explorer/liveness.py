"""Liveness over a schedule (program order by default): live bytes over time and the peak.

A value is live from the op that defines it to its last reader; program inputs and
outputs are live throughout. Views (reshape, bitcast) alias their operand rather
than allocating. Values inside a loop body live within the loop's span.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Graph


@dataclass(frozen=True)
class LiveTensor:
    value_id: int
    nbytes: int
    producer: str      # name stack of the defining op, or the input's name


@dataclass(frozen=True)
class Liveness:
    peak_bytes: int
    peak_step: int                      # op index at the peak
    live_at_peak: tuple[LiveTensor, ...]  # largest first
    live_bytes: tuple[int, ...]         # live bytes after each op of the schedule


_VIEWS = frozenset({"stablehlo.reshape", "stablehlo.bitcast_convert", "stablehlo.get_tuple_element",
                    "stablehlo.optimization_barrier", "stablehlo.tuple"})


def analyse(graph: Graph, order: list[int] | None = None, top: int = 10,
            transient: frozenset[int] = frozenset()) -> Liveness:
    """``transient``: values that never reach memory (they stay inside a fused kernel)."""
    order = list(range(len(graph.ops))) if order is None else order
    pos = {oid: i for i, oid in enumerate(order)}
    root: dict[int, int] = {}  # view value -> the value it aliases

    def find(v: int) -> int:
        while v in root:
            v = root[v]
        return v

    for oid in order:
        op = graph.ops[oid]
        if op.name in _VIEWS and len(op.operands) == len(op.results):
            for a, r in zip(op.operands, op.results):
                if graph.values[a].nbytes == graph.values[r].nbytes:
                    root[r] = a
    end = len(order)
    start: dict[int, int] = {}
    last: dict[int, int] = {}
    for v in graph.inputs:
        start[v], last[v] = 0, end
    for oid in order:
        op = graph.ops[oid]
        i = pos[oid]
        for r in op.results:
            rr = find(r)
            if rr == r:
                start.setdefault(r, i)
                last.setdefault(r, i)
        for v in op.operands:
            rv = find(v)
            last[rv] = max(last.get(rv, i), i)
            start.setdefault(rv, 0)
        # a loop's carried values stay live for the whole loop: extend to the last op of its body
    for v in graph.outputs:
        last[find(v)] = end
    delta = [0] * (end + 2)
    for v, s in start.items():
        nb = 0 if v in transient else graph.values[v].nbytes
        delta[s] += nb
        delta[last[v] + 1] -= nb
    live, cur = [], 0
    for i in range(end + 1):
        cur += delta[i]
        live.append(cur)
    peak = max(live) if live else 0
    step = live.index(peak) if live else 0
    at_peak = [v for v, s in start.items() if s <= step <= last[v] and v not in transient]
    names = dict(zip(graph.inputs, graph.input_names))
    tensors = sorted(
        (LiveTensor(v, graph.values[v].nbytes,
                    names.get(v) or (graph.producer(v).name_stack if graph.producer(v) else f"%{v}"))
         for v in at_peak),
        key=lambda t: (-t.nbytes, t.value_id))
    return Liveness(peak_bytes=int(peak), peak_step=step, live_at_peak=tuple(tensors[:top]), live_bytes=tuple(live))
