"""Liveness over a schedule (program order by default): live bytes over time and the peak.

A value is live from the op that defines it to its last reader; program inputs and
outputs are live throughout. Views (reshape, bitcast) alias their operand rather
than allocating. Values inside a loop body live within the loop's span; a loop's block arguments share
the buffers of its operands and results, which are counted there.

Buffers are counted as XLA's buffer assignment allocates them (its ``peak_memory_in_bytes``: arguments + outputs
+ temporaries - aliased). The outputs are allocated before the call runs, so an output occupies memory from the
start, not from the op that computes it. An elementwise kernel may write its result over an operand of the same
size that dies there (``shared`` pairs: XLA's ``CanShareBuffer``), so the two are one buffer. Donation
(``jax.jit(..., donate_argnums=...)``, written as ``tf.aliasing_output`` / ``jax.buffer_donor`` on the module's arguments) decides what the caller's buffers may
hold: an input donated to an output (``tf.aliasing_output``) is that output's buffer (one buffer, live
throughout); one donated without a pairing is freed after its last reader; an input that is not donated
belongs to the caller for the whole call, so an in-place update of it (a KV cache's ``dynamic_update_slice``)
first copies it into a new buffer: the result is not the input's memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

from ..graph.ir import Graph


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


_IN_PLACE = frozenset({"stablehlo.dynamic_update_slice", "stablehlo.scatter"})
DONATION_ATTRS = ("tf.aliasing_output", "jax.buffer_donor")


def donated_inputs(graph: Graph) -> frozenset[int]:
    """Input value ids whose buffers the caller gave up (see the module docstring)."""
    return frozenset(v for v, attrs in zip(graph.inputs, graph.input_attrs) if any(k in attrs for k in DONATION_ATTRS))


def donated_to_outputs(graph: Graph) -> dict[int, int]:
    """Output value id -> the donated input whose buffer it is written into (``tf.aliasing_output = k``)."""
    out: dict[int, int] = {}
    for v, attrs in zip(graph.inputs, graph.input_attrs):
        text = attrs.get("tf.aliasing_output")
        if text is None:
            continue
        try:
            k = int(str(text).split(":")[0].strip())
        except ValueError:
            continue
        if 0 <= k < len(graph.outputs) and graph.values[graph.outputs[k]].nbytes == graph.values[v].nbytes:
            out.setdefault(graph.outputs[k], v)
    return out


_VIEWS = frozenset({"stablehlo.reshape", "stablehlo.bitcast_convert", "stablehlo.get_tuple_element",
                    "stablehlo.optimization_barrier", "stablehlo.tuple", "mhlo.bitcast"})


def alias_roots(graph: Graph, order: list[int] | None = None) -> dict[int, int]:
    """view value -> the value whose memory it shares (its root; views of views resolve to the first).

    Public so that passes reasoning about live ranges (remat) group reads exactly as ``analyse`` does. In program
    order (``order`` None) it is kept on the graph and read only (a fusion run and every liveness ask for it).
    """
    if order is None:
        cached = graph.__dict__.get("_alias_roots")
        if cached is None:
            cached = graph.__dict__["_alias_roots"] = MappingProxyType(_alias_roots(graph, range(len(graph.ops))))
        return cached
    return _alias_roots(graph, order)


def _alias_roots(graph: Graph, order) -> dict[int, int]:
    root: dict[int, int] = {}
    owned = frozenset(graph.inputs) - donated_inputs(graph)     # inputs the caller keeps: never written
    for oid in order:
        op = graph.ops[oid]
        if op.name in _VIEWS and len(op.operands) == len(op.results):
            for a, r in zip(op.operands, op.results):
                if graph.values[a].nbytes == graph.values[r].nbytes:
                    root[r] = root.get(a, a)
        elif op.name == "stablehlo.while":
            # loop-carried buffers are updated in place: each result is its operand's buffer
            for a, r in zip(op.operands, op.results):
                if graph.values[a].nbytes == graph.values[r].nbytes:
                    root[r] = root.get(a, a)
        elif op.name in _IN_PLACE and op.results and op.operands:
            # updated in place (as XLA does): the result is the operand's buffer, unless that is an input the
            # caller keeps (not donated): XLA copies it first, and the result is a buffer of its own
            a, r = op.operands[0], op.results[0]
            if graph.values[a].nbytes == graph.values[r].nbytes and root.get(a, a) not in owned:
                root[r] = root.get(a, a)
    return root


def live_spans(graph: Graph, order: list[int] | None = None,
               ranges: Mapping[int, tuple[tuple[int, int], ...]] | None = None,
               extend: Mapping[int, int] | None = None,
               shared: Mapping[int, int] | None = None) -> dict[int, tuple[tuple[int, int], ...]]:
    """Root value id -> the (first, last) schedule positions, inclusive, over which it occupies memory: its def-use
    range, or the ``ranges`` a pass gave it (see ``analyse``). Positions index ``order``; ``len(order)`` is the end
    of the program (inputs and outputs live throughout). ``extend``: value id -> an op id that reads it beyond the
    graph's readers (a kernel that recomputes a cheap producer from it: the value stays until that kernel runs).
    ``shared``: result value id -> an operand of the same size whose buffer the result may be written into (an
    elementwise kernel's, ``explorer.model.memory.shared_buffers``): taken where the operand has no reader after the
    result is made, as XLA's buffer assignment shares them; the two are then one buffer, listed under the operand's
    root (the result's root is left out of the spans). What ``analyse`` sums, for callers that classify values
    (the training-memory breakdown of ``explorer.model.memory``)."""
    root = alias_roots(graph, order)
    order = list(range(len(graph.ops))) if order is None else order
    pos = {oid: i for i, oid in enumerate(order)}

    def find(v: int) -> int:
        return root.get(v, v)

    end = len(order)
    start: dict[int, int] = {}
    last: dict[int, int] = {}
    donated = donated_inputs(graph)
    for v in graph.inputs:
        start[v], last[v] = 0, (0 if v in donated else end)    # a donated input is freed after its last reader
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
            if rv not in start and rv not in graph.producers:
                continue   # a loop/branch block argument: it is the buffer of the loop's operand and result
            last[rv] = max(last.get(rv, i), i)
            start.setdefault(rv, 0)
    inputs = set(graph.inputs)
    for v in graph.outputs:
        last[find(v)] = end
    for v, oid in (extend or {}).items():
        rv = find(v)
        if rv in start and oid in pos:
            last[rv] = max(last[rv], pos[oid])
    merged: dict[int, int] = {}          # a root written into another's buffer -> that buffer's root

    def buffer(v: int) -> int:
        v = find(v)
        while v in merged:
            v = merged[v]
        return v

    given = ranges or {}
    tails: dict[int, int] = {}           # a ranged buffer -> where the result written into it after its range dies
    if shared:
        def ends(v: int) -> int:         # the last position a buffer is read at (its given range's end)
            if v in given:
                b = given[v][-1][1]
                return max(pos.get(b, end) if b < len(graph.ops) else end, tails.get(v, -1))
            return last[v]

        for r, v in sorted(shared.items(), key=lambda rv: (start.get(find(rv[0]), end), rv[0])):
            rr, rv = buffer(r), buffer(v)
            if rr == rv or rr not in start or rv not in start or rr in inputs or rv in inputs or rr in given \
                    or ends(rv) > start[rr]:
                continue
            if rv in given:              # a re-created value's buffer: the result takes it after its last range
                tails[rv] = max(tails.get(rv, -1), last.pop(rr))
            else:
                last[rv] = max(last[rv], last.pop(rr))
            del start[rr]
            merged[rr] = rv
    for v in graph.outputs:
        rv = buffer(v)
        if rv not in inputs and rv in start:
            start[rv] = 0          # allocated before the call runs
    for out, inp in donated_to_outputs(graph).items():
        ro = buffer(out)
        if ro not in inputs and ro in start:     # written into the donated input's buffer: no buffer of its own
            del start[ro], last[ro]
            last[inp] = end
    spans: dict[int, tuple[tuple[int, int], ...]] = {v: ((s, last[v]),) for v, s in start.items()}
    for v, iv in given.items():
        spans[v] = tuple((pos.get(a, end) if a < len(graph.ops) else end,
                          pos.get(b, end) if b < len(graph.ops) else end) for a, b in iv)
        if v in tails and spans[v]:
            a, b = spans[v][-1]
            spans[v] = spans[v][:-1] + ((a, max(b, tails[v])),)
    return spans


def analyse(graph: Graph, order: list[int] | None = None, top: int = 10,
            transient: frozenset[int] = frozenset(),
            ranges: Mapping[int, tuple[tuple[int, int], ...]] | None = None,
            sizes: Mapping[int, float] | None = None, extend: Mapping[int, int] | None = None,
            buffers: Sequence[tuple[int, int, float]] = (), shared: Mapping[int, int] | None = None) -> Liveness:
    """``transient``: values that never reach memory (they stay inside a fused kernel).

    ``ranges``: root value id -> the (first op id, last op id) intervals, inclusive, in which it occupies
    memory, replacing its def-use range (set by rematerialisation / activation offload: a value dies after
    its last forward use and is re-created before its first backward use). ``len(graph.ops)`` as a last
    op id means "until the end of the program". ``sizes``: value id -> bytes, replacing the graph's
    (per-device sizes once sharded). ``extend``: see ``live_spans``. ``buffers``: (first op id, last op id, bytes)
    of memory no graph value holds (a combined all-reduce's contiguous buffer), counted in the curve and the peak.
    ``shared``: see ``live_spans``.
    """
    spans = live_spans(graph, order, ranges, extend, shared)
    order = list(range(len(graph.ops))) if order is None else order
    end = len(order)

    def nbytes(v: int) -> int:
        if v in transient:
            return 0
        return int(sizes[v]) if sizes is not None and v in sizes else graph.values[v].nbytes

    delta = [0] * (end + 2)
    for v, intervals in spans.items():
        nb = nbytes(v)
        for s, e in intervals:
            delta[s] += nb
            delta[e + 1] -= nb
    for s, e, nb in buffers:
        delta[max(0, s)] += int(nb)
        delta[min(end, e) + 1] -= int(nb)
    live, cur = [], 0
    for i in range(end + 1):
        cur += delta[i]
        live.append(cur)
    peak = max(live) if live else 0
    step = live.index(peak) if live else 0
    at_peak = [v for v, intervals in spans.items() if any(s <= step <= e for s, e in intervals) and v not in transient]
    names = dict(zip(graph.inputs, graph.input_names))
    tensors = sorted(
        (LiveTensor(v, nbytes(v),
                    names.get(v) or (graph.producer(v).name_stack if graph.producer(v) else f"%{v}"))
         for v in at_peak),
        key=lambda t: (-t.nbytes, t.value_id))
    return Liveness(peak_bytes=int(peak), peak_step=step, live_at_peak=tuple(tensors[:top]), live_bytes=tuple(live))
