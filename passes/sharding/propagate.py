"""Sharding propagation and collective insertion: a small SPMD partitioner over the graph IR.

Walks the ops in program order (operands before users; loop bodies after their ``while``). For
each op it asks the rules (``sharding_rules.py``) for candidate layouts, prices each one (the
collectives that reshard its operands, the pending reduction it leaves, and the per-device work)
and keeps the cheapest, as an intra-op strategy choice in Alpa's sense, made greedily in program
order. What it records:

- a layout (``Spec``) for every value, hence per-device shapes, bytes and work for every op;
- every collective a partitioner would insert, with its per-device bytes, group, the op it follows,
  the op that needs it, its phase and whether independent compute lies between the two
  (``overlappable``: prefetched parameter gathers and gradient reductions, never a reduction the
  very next op reads);
- a pending partial sum (after a contraction or reduction over a split dimension) travels through
  linear ops (transpose, convert, scaling, adds of partial sums) and is reduced where a non-linear
  op or a differently split operand needs it: by an all-reduce, or a reduce-scatter when the reader
  is split along the reduced axis (ZeRO/FSDP gradients, Megatron sequence parallelism). It is
  reduced at the element size of the op that produced it, as XLA reduces right after the dot.

Resharded copies are reused within a phase (forward, backward, optimizer): FSDP gathers a parameter once
in the forward pass and again in the backward pass, as ZeRO-3 does, and sequence / context parallelism
re-gather activations for the backward pass. A copy of a computed value that is no larger than the value
(all-to-all'd, reduced) is also reused across phases, as the saved activation: an expert-parallel layer's
backward pass reads the tokens dispatched in the forward pass, without a second all-to-all.
Approximations, stated: a loop keeps its carried values' layouts (no reshard at the end of an
iteration); a ``case`` returns replicated values; ``sdy.manual_computation`` (shard_map) bodies are
already per-device and are left as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as shlo

from explorer.graph import names
from explorer.costs import Work, find_rule
from explorer.graph.ir import Graph, Op, TensorType, dtype_bytes
from explorer.model.collectives import collective_seconds_of

from ..decisions import Trace

from .reshard import Step, reshard
from .rules import Choice, Ctx, choices, replicate
from .spec import Mesh, Spec, mlir_context

OUTPUT = -2     # consumer id used for program outputs


@dataclass(frozen=True)
class Inserted:
    """One collective the partitioner inserts (per device, per execution)."""

    kind: str
    axes: tuple[str, ...]
    payload_bytes: float
    in_bytes: float
    out_bytes: float
    group_size: int
    group_stride: int
    value: int
    consumer: int          # op that needs the result (OUTPUT: a program output)
    after_op: int          # op it follows (-1: before the program, once)
    phase: str
    layer: str
    overlappable: bool
    dtype: str
    reason: str
    job_devices: int = 0   # devices of the mesh (places the group on the physical topology)
    members: tuple[float, ...] = ()   # a combined collective (``buckets``): each member's payload bytes

    def work(self) -> Work:
        flops = 0.0
        if self.kind in ("all_reduce", "reduce_scatter"):
            isz = max(1, dtype_bytes(self.dtype)) if self.dtype else 4
            flops = self.in_bytes / isz * (self.group_size - 1) / max(1, self.group_size)
        return Work(vector_flops=flops, bytes_read=self.in_bytes, bytes_written=self.out_bytes,
                    collective_bytes=self.payload_bytes, collective=self.kind, group_size=self.group_size,
                    group_stride=self.group_stride, job_devices=self.job_devices, dtype=self.dtype)


@dataclass(frozen=True)
class ShardingResult:
    """Everything the partitioner decided for one program on one mesh."""

    mesh: Mesh
    specs: Mapping[int, Spec]               # value id -> layout
    collectives: tuple[Inserted, ...]
    works: Mapping[int, Work]               # op id -> per-device work (ops with a cost rule)
    value_bytes: Mapping[int, float]        # value id -> per-device bytes
    choices: Mapping[int, str]              # op id -> the rule's label for the chosen layout
    notes: tuple[str, ...] = ()

    def collective_bytes(self, kind: str | None = None) -> float:
        return float(sum(c.payload_bytes for c in self.collectives if kind is None or c.kind == kind))

    def by_kind(self) -> dict[str, list[Inserted]]:
        out: dict[str, list[Inserted]] = {}
        for c in self.collectives:
            out.setdefault(c.kind, []).append(c)
        return out

    def table(self) -> str:
        from tabulate import tabulate

        rows = [[c.kind, ",".join(c.axes), c.group_size, f"{c.payload_bytes:.4g}", c.phase, c.layer,
                 "yes" if c.overlappable else "no", c.reason] for c in self.collectives]
        return tabulate(rows, headers=["collective", "axes", "group", "bytes/device", "phase", "layer",
                                       "overlappable", "why"])


class CostModel:
    """Seconds for a collective and for an op's local work, to rank candidate layouts.

    With a target: the collective model of ``explorer.collectives`` and the target's peak rates.
    Without one: 100 GB/s links, 5 us per collective, 100 Tflop/s, 1 TB/s (only the ranking matters).
    """

    def __init__(self, target: Any = None, job_devices: int = 0, trace: Trace | None = None):
        self.target = target
        self.job_devices = job_devices
        # traced (``passes.decisions``): every figure read from the target is a leaf of the trace, so the
        # comparisons the partitioner makes between layouts can be checked on other targets without re-running it
        self.trace = trace if target is not None else None
        self.flops_per_s, self.bytes_per_s = _rates(target) if target is not None else (1e14, 1e12)
        self._cache: dict[tuple, float] = {}

    def comm(self, kind: str, payload: float, n: int, stride: int) -> float:
        if n <= 1 or payload <= 0:
            return 0.0
        key = (kind, payload, n, stride)
        t = self._cache.get(key)
        if t is None:
            if self.target is None:
                factor = 2.0 if kind == "all_reduce" else 1.0
                t = 5e-6 + factor * payload * (n - 1) / n / 1e11
            else:
                t = collective_seconds_of(self.target, kind, payload, n, stride, self.job_devices)
                if self.trace is not None:
                    t = self.trace.leaf(("comm", kind, payload, n, stride, self.job_devices), t)
            self._cache[key] = t
        return t

    def steps(self, steps: Sequence[Step]) -> float:
        return sum(self.comm(s.kind, s.payload_bytes, s.group_size, s.group_stride) for s in steps)

    def work(self, w: Work | None, fraction: float) -> float:
        if w is None:
            return 0.0
        flops, nbytes = w.matrix_flops * fraction, w.bytes_accessed * fraction
        t = _work_seconds(flops, nbytes, self.flops_per_s, self.bytes_per_s)
        if self.trace is not None:
            return self.trace.leaf(("work", flops, nbytes), t)
        return t

    def certificate(self):
        """The trace's comparisons (``passes.decisions.Certificate``), None when the costs were not traced."""
        return self.trace.certificate() if self.trace is not None else None


def _rates(target: Any) -> tuple[Any, Any]:
    """(matrix flop/s, main-memory bytes/s) a layout's local work is ranked at."""
    return (target.matrix_rate("bf16") * target.efficiency.matrix,
            target.main_memory.bandwidth_bytes_per_s * target.efficiency.memory)


def _work_seconds(flops: float, nbytes: float, flops_per_s: Any, bytes_per_s: Any) -> Any:
    a, b = flops / flops_per_s, nbytes / bytes_per_s
    return np.maximum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else max(a, b)


def leaf_seconds(target: Any, spec: tuple) -> Any:
    """A traced cost's leaf recomputed on ``target`` (a sweep's ``ArrayTarget`` too) by ``CostModel``'s own formulas,
    so a variant with the base's figures gets the base's value bit for bit."""
    if spec[0] == "comm":
        _, kind, payload, n, stride, job = spec
        return collective_seconds_of(target, kind, payload, n, stride, job)
    _, flops, nbytes = spec
    return _work_seconds(flops, nbytes, *_rates(target))


def traced_cost_model(target: Any, job_devices: int = 0) -> CostModel:
    """A ``CostModel`` whose figures are traced (see ``passes.decisions``)."""
    return CostModel(target, job_devices, Trace(leaf_seconds))


_HINT_THROUGH = frozenset({
    "stablehlo.add", "stablehlo.subtract", "stablehlo.multiply", "stablehlo.divide", "stablehlo.convert",
    "stablehlo.negate", "stablehlo.select", "stablehlo.sqrt", "stablehlo.rsqrt", "stablehlo.maximum",
    "stablehlo.minimum", "stablehlo.copy", "stablehlo.abs", "stablehlo.power", "stablehlo.clamp", "stablehlo.sign",
    "stablehlo.exponential", "stablehlo.log", "stablehlo.tanh"})

_PIN_THROUGH = frozenset({"stablehlo.convert", "stablehlo.copy", "stablehlo.reshape", "stablehlo.transpose",
                          "stablehlo.bitcast_convert"})

_RANDOM = frozenset({"stablehlo.rng", "stablehlo.rng_bit_generator"})
_MOVES = frozenset({"all_gather", "all_to_all", "collective_permute"})   # a layout change, not a pending sum reduced

PINNED_PENALTY_S = 1e3     # a layout that undoes a pinned (tensor/expert-parallel) split is a last resort


def propagate(program, mesh: Mesh, input_specs: Mapping[int, Spec], output_specs: Mapping[int, Spec] | None = None,
              pinned: Mapping[int, frozenset[str]] | None = None, constraints: Mapping[int, Spec] | None = None,
              target: Any = None, scatter_partials: Sequence[str] = (),
              forced: Mapping[int, Choice] | None = None, cost: CostModel | None = None) -> ShardingResult:
    """Run the partitioner.

    **Arguments**
    - ``input_specs``: value id of a program input -> its layout (others replicated).
    - ``output_specs``: output index -> required layout (unset: whatever propagation gives,
      partial sums reduced).
    - ``pinned``: value id -> axes that must keep splitting it (tensor-parallel weights).
    - ``constraints``: op id -> layout its result must have (``sdy.sharding_constraint``).
    - ``scatter_partials``: axes whose partial sums, meeting an elementwise op on an activation, may be
      reduce-scattered over the sequence (dim 1) instead of all-reduced (Megatron sequence parallelism).
    - ``forced``: op id -> the layout choice to take (an ILP's decisions), instead of the rules' candidates.
    - ``cost``: the cost model ranking layouts (default ``CostModel(target, mesh.devices)``; a traced one makes a
      certificate of the decisions, ``passes.decisions``).
    """
    p = _Partitioner(program, mesh, input_specs, output_specs or {}, pinned or {}, constraints or {},
                     cost if cost is not None else CostModel(target, mesh.devices), tuple(scatter_partials))
    p.forced = dict(forced or {})
    return p.run()


class _Partitioner:
    def __init__(self, program, mesh, input_specs, output_specs, pinned, constraints, cost, scatter_partials=()):
        self.program = program
        self.scatter_partials = scatter_partials
        self.forced: dict[int, Choice] = {}
        self.graph: Graph = program.graph
        self.mesh = mesh
        self.cost = cost
        self.pinned = dict(pinned)
        self.constraints = constraints
        self.output_specs = output_specs
        self.spec: dict[int, Spec] = {}
        for v, s in input_specs.items():
            self._check(v, s, f"input {self._name(v)}")
            self.spec[v] = s
        self.origin: dict[int, tuple[int, float]] = {}       # partial value -> (op that produced the sum, itemsize)
        self.versions: dict[tuple[int, str], list[Spec]] = {}
        self.made: dict[int, list[tuple[str, Spec]]] = {}      # value -> (phase, layout) of every resharded copy
        self.broadcast_reads: dict[int, list[Spec]] = {}       # broadcast result -> the layout each reader used
        self.reshard_cache: dict[tuple, tuple[list[Step], float]] = {}
        self.inserted: list[Inserted] = []
        self.works: dict[int, Work] = {}
        self.labels: dict[int, str] = {}
        self.notes: list[str] = []
        self.attr_cache: dict[tuple[int, str], Any] = {}
        self.local_cache: dict[tuple, TensorType] = {}
        self.manual = self._manual_ops()
        self.hints = self._backward_hints(output_specs)
        matmuls = [0]
        for op, w, k in zip(self.graph.ops, program.works, program.weights):
            matmuls.append(matmuls[-1] + (1 if (w is not None and w.matrix_flops and k) else 0))
        self.matmul_prefix = matmuls

    # -- helpers ------------------------------------------------------------------------------
    def _name(self, v: int) -> str:
        names_ = dict(zip(self.graph.inputs, self.graph.input_names))
        return names_.get(v, f"%{v}")

    def _check(self, v: int, s: Spec, what: str) -> None:
        t = self.graph.values[v]
        if s.rank != len(t.shape):
            raise ValueError(f"{what}: sharding {s} has rank {s.rank}, value has shape {t.shape}")
        for a in s.axes:
            self.mesh.size(a)

    def get(self, v: int) -> Spec:
        s = self.spec.get(v)
        if s is None:
            s = Spec.replicated(len(self.graph.values[v].shape))
        return s

    def local(self, v: int, s: Spec) -> TensorType:
        t = self.graph.values[v]
        key = (t.shape, t.dtype, s.dims)
        hit = self.local_cache.get(key)
        if hit is None:        # one per-device type per (type, layout): the same pairs recur in every block
            hit = self.local_cache[key] = TensorType(s.local_shape(t.shape, self.mesh), t.dtype)
        return hit

    def _manual_ops(self) -> frozenset[int]:
        out: set[int] = set()
        for op in self.graph.ops:
            if op.name == "sdy.manual_computation":
                stack = [o for r in op.regions for o in r]
                while stack:
                    o = stack.pop()
                    out.add(o)
                    stack.extend(x for r in self.graph.ops[o].regions for x in r)
        return frozenset(out)

    def attr(self, op: Op, name: str, kind: str) -> Any:
        key = (op.id, name)
        if key not in self.attr_cache:
            ctx = self.__dict__.get("_mlir")
            if ctx is None:             # made once (setdefault would make a context per call)
                ctx = self.__dict__["_mlir"] = mlir_context()
            with ctx:
                parsed = ir.Attribute.parse(op.attrs[name])
                cls = shlo.GatherDimensionNumbers if kind == "gather" else shlo.ScatterDimensionNumbers
                d = cls(parsed)
                if kind == "gather":
                    val = _Dims(offset_dims=tuple(d.offset_dims), collapsed_slice_dims=tuple(d.collapsed_slice_dims),
                                operand_batching_dims=tuple(d.operand_batching_dims),
                                start_indices_batching_dims=tuple(d.start_indices_batching_dims),
                                start_index_map=tuple(d.start_index_map), index_vector_dim=int(d.index_vector_dim))
                else:
                    val = _Dims(update_window_dims=tuple(d.update_window_dims),
                                inserted_window_dims=tuple(d.inserted_window_dims),
                                input_batching_dims=tuple(d.input_batching_dims),
                                scatter_indices_batching_dims=tuple(d.scatter_indices_batching_dims),
                                scattered_dims_to_operand_dims=tuple(d.scattered_dims_to_operand_dims),
                                index_vector_dim=int(d.index_vector_dim))
            self.attr_cache[key] = val
        return self.attr_cache[key]

    def _backward_hints(self, output_specs: Mapping[int, Spec]) -> dict[int, Spec]:
        """Layouts that users downstream want, carried backwards through layout-preserving ops from the
        required outputs (updated parameters, in their stored layout). Real partitioners propagate in both
        directions; this is the part that matters for where a gradient's partial sum is reduced: a gradient
        whose parameter is sharded is reduce-scattered, not all-reduced, even if a norm reads it first."""
        hints: dict[int, Spec] = {}
        graph = self.graph
        for i, s in output_specs.items():
            hints.setdefault(graph.outputs[i], Spec(s.dims))
        for op in reversed(graph.ops):
            if not op.results or op.results[0] not in hints or op.id in self.manual:
                continue
            h = hints[op.results[0]]
            shape = graph.values[op.results[0]].shape
            if op.name == "stablehlo.transpose":
                perm = op.attrs["permutation"]
                inv = [0] * len(perm)
                for i, p in enumerate(perm):
                    inv[p] = i
                hints.setdefault(op.operands[0], Spec(tuple(h.dims[inv[d]] for d in range(len(perm)))))
                continue
            if op.regions or graph.values[op.results[0]].dtype in ("token", "opaque"):
                continue
            for v in op.operands:
                if graph.values[v].shape == shape and (op.name in _HINT_THROUGH or op.name.startswith("chlo.")):
                    hints.setdefault(v, h)
        return hints

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> ShardingResult:
        graph = self.graph
        for op in graph.ops:
            if op.id in self.manual:
                continue
            if op.name in ("stablehlo.while", "mhlo.while"):
                self._enter_loop(op)
            self._visit(op)
        self._local_broadcasts()
        for i, v in enumerate(graph.outputs):
            want = self.output_specs.get(i)
            cur = self.get(v)
            if want is None:
                want = Spec(cur.dims)
            self._reshard(v, want, OUTPUT, self._phase_of(graph.producer(v)), "program output")
        value_bytes = {v: self.local(v, self.get(v)).nbytes for v in range(len(graph.values))}
        specs = {v: self.get(v) for v in range(len(graph.values))}
        return ShardingResult(mesh=self.mesh, specs=MappingProxyType(specs),
                              collectives=tuple(self.inserted), works=MappingProxyType(self.works),
                              value_bytes=MappingProxyType(value_bytes), choices=MappingProxyType(self.labels),
                              notes=tuple(self.notes))

    def _local_broadcasts(self) -> None:
        """A broadcast every reader of which reads it in one layout, resharded from the broadcast's small operand
        (``_plan``: the broadcast is redone locally), is made in that layout: XLA recomputes broadcasts next to their
        readers and never materialises the whole tensor on a device. Without this the broadcast of a scalar (a
        softmax's scale, a mask's fill value, a gradient's zeros) keeps the whole-size replicated layout it was given
        before its readers were seen, and its bytes and memory count whole on every device."""
        graph = self.graph
        outputs = set(graph.outputs)
        for op in graph.ops:
            if op.name != "stablehlo.broadcast_in_dim" or op.id in self.manual or len(op.results) != 1:
                continue
            r = op.results[0]
            reads = self.broadcast_reads.get(r)
            cur = self.get(r)
            if not reads or r in outputs or cur.partial:
                continue
            want = reads[0]
            if want.partial or any(w.dims != want.dims or w.partial for w in reads) or want.dims == cur.dims:
                continue
            if any(not set(c) <= set(w) for c, w in zip(cur.dims, want.dims)):
                continue      # the operand's own split would have to move: not a local broadcast
            self.spec[r] = Spec(want.dims)
            w = self.program.works[op.id]
            if w is None:
                continue
            src = op.operands[0]
            try:
                self.works[op.id] = find_rule(op)(op, [self.local(src, self.get(src))], [self.local(r, self.spec[r])])
            except Exception:
                axes = {a for d in want.dims for a in d} - {a for d in cur.dims for a in d}
                self.works[op.id] = w.scaled(1.0 / math.prod(self.mesh.size(a) for a in axes) if axes else 1.0)

    def _phase_of(self, op: Op | None) -> str:
        return names.parse(op.name_stack)[0] if op is not None else "other"

    def _enter_loop(self, op: Op) -> None:
        """Give the loop's block arguments the layouts of its initial operands (see module docstring)."""
        k = len(op.operands)
        if not op.results or k == 0:
            return
        start = max(op.results) + 1
        args = list(range(start, start + 2 * k))
        vals = self.graph.values
        if args[-1] >= len(vals) or any(self.graph.producer(a) is not None for a in args):
            self.notes.append(f"while op {op.id}: loop arguments not found; they are treated as replicated")
            return
        for j, a in enumerate(args):
            src = op.operands[j % k]
            if vals[a].shape != vals[src].shape:
                self.notes.append(f"while op {op.id}: loop argument shapes differ; treated as replicated")
                return
        for j, a in enumerate(args):
            self.spec[a] = Spec(self.get(op.operands[j % k]).dims)

    def _visit(self, op: Op) -> None:
        graph = self.graph
        ins = tuple(graph.values[v] for v in op.operands)
        outs = tuple(graph.values[v] for v in op.results)
        specs = tuple(self.get(v) for v in op.operands)
        phase = self._phase_of(op)
        if op.id in self.forced:
            cands = [self.forced[op.id]]
        elif op.id in self.constraints:
            want = self.constraints[op.id]
            cands = [Choice((want,) + (None,) * (len(ins) - 1), (want,) * len(outs), label="constraint")]
        else:
            hint = self.hints.get(op.results[0]) if op.results else None
            if op.name in _RANDOM and op.results:
                hint = self._masked_layout(op.results[-1])
            ctx = Ctx(op=op, ins=ins, outs=outs, specs=specs, mesh=self.mesh,
                      attr=lambda name, kind: self.attr(op, name, kind), scatter_partials=self.scatter_partials,
                      hint=hint)
            try:
                cands = choices(ctx)
            except Exception as exc:   # a rule that cannot read this op falls back to replication, said aloud
                self.notes.append(f"op {op.id} ({op.name}): sharding rule failed ({exc}); replicated")
                cands = replicate(ctx)
        if len(cands) == 1:            # nothing to rank (pricing it would only fill caches)
            self._apply(op, cands[0], phase)
            return
        best, best_cost = None, math.inf
        best_key = (True, math.inf)
        for c in cands:
            t = self._price(op, c, phase)
            key = (self._moves_operands(op, c, phase), t)
            if key[0] < best_key[0] or (key[0] == best_key[0] and t < best_key[1] - 1e-15):
                best, best_key = c, key
        self._apply(op, best, phase)

    def _moves_operands(self, op: Op, c: Choice, phase: str) -> bool:
        """Whether a choice moves an operand to another layout (gathers it, or sends it to other devices). As GSPMD
        and Shardy do, a layout the operands already have (after reducing their pending sums, or by a free local
        slice) wins over one that moves them, whatever the move would save later: the partitioner follows the
        shardings it is given (a data-parallel weight gradient is a partial sum over the batch axis, all-reduced,
        not computed whole on every device from gathered activations, as XLA's SPMD partitioner does it)."""
        for v, want in zip(op.operands, c.operands):
            if want is None:
                continue
            steps, _ = self._plan(v, want, phase)
            if any(st.kind in _MOVES for st in steps):
                return True
        return False

    def _masked_layout(self, bits: int) -> Spec | None:
        """The layout of what random ``bits`` end up masking: following their readers of the same shape (a compare
        making the mask, a convert) to the first one that combines them with a value already laid out (the
        ``select`` of a dropout, in program order after that value)."""
        graph = self.graph
        users = graph.consumers()
        shape = graph.values[bits].shape
        frontier, seen = [bits], {bits}
        for _ in range(4):
            nxt = []
            for u in frontier:
                for oid in users.get(u, ()):
                    o = graph.ops[oid]
                    for w in o.operands:
                        if w in seen or graph.values[w].shape != shape:
                            continue
                        # the value masked may come later in program order than the bits (dropout scales it after
                        # drawing them): then the layout of what it is computed from, through an elementwise op
                        for cand in (w, *self._elementwise_sources(w, shape)):
                            s = self.spec.get(cand)
                            if s is not None and any(s.dims):
                                return Spec(s.dims)
                    for r in o.results:
                        if r not in seen and graph.values[r].shape == shape:
                            seen.add(r)
                            nxt.append(r)
            frontier = nxt
        return None

    def _elementwise_sources(self, v: int, shape, depth: int = 3) -> list[int]:
        """Values of ``shape`` that ``v`` is computed from by elementwise ops (a scale, a convert), nearest first."""
        out, frontier = [], [v]
        for _ in range(depth):
            nxt = []
            for x in frontier:
                p = self.graph.producer(x)
                if p is None or p.regions or len(p.results) != 1:
                    continue
                if not (p.name in _HINT_THROUGH or p.name.startswith("chlo.")):
                    continue
                for u in p.operands:
                    if self.graph.values[u].shape == shape and u not in out:
                        out.append(u)
                        nxt.append(u)
            frontier = nxt
        return out

    def _price(self, op: Op, c: Choice, phase: str) -> float:
        total = 0.0
        for v, want in zip(op.operands, c.operands):
            if want is None:
                continue
            steps, _ = self._plan(v, want, phase)
            total += self.cost.steps(steps)
            pins = self.pinned.get(v)
            if pins and any(a not in {x for d in want.dims for x in d} for a in pins):
                total += PINNED_PENALTY_S
        outs = [self.graph.values[r] for r in op.results]
        for r, s in zip(outs, c.results):
            if s.partial:
                b = math.prod(s.local_shape(r.shape, self.mesh)) * max(1, dtype_bytes(r.dtype)) if r.dtype not in ("token", "opaque") else 0
                n, stride = self.mesh.group(s.partial)
                total += self.cost.comm("reduce_scatter", b, n, stride)
        if c.halo_bytes:
            n, stride = self.mesh.group(c.halo_axes)
            total += self.cost.comm("collective_permute", c.halo_bytes, n, stride)
        total += self.cost.work(self.program.works[op.id], self._fraction(op, c))
        return total

    def _fraction(self, op: Op, c: Choice) -> float:
        """Share of the op's global work one device does under this choice."""
        axes = set()
        for s in (*[x for x in c.operands if x is not None], *c.results):
            axes.update(a for d in s.dims for a in d)
            axes.update(s.partial)
        if not axes:
            return 1.0
        return 1.0 / math.prod(self.mesh.size(a) for a in axes)

    def _plan(self, v: int, want: Spec, phase: str) -> tuple[list[Step], int]:
        """Cheapest collectives to get ``want`` from any copy of ``v`` already made in this phase, and the value
        they move: ``v``, or the operand of the broadcast that made ``v`` when resharding that small operand and
        broadcasting again locally is cheaper (as XLA does: broadcasts are recomputed, never communicated)."""
        steps = self._plan_value(v, want, phase)
        prod = self.graph.producer(v)
        if steps and prod is not None and prod.name == "stablehlo.broadcast_in_dim" and not want.partial:
            src, out = self.graph.values[prod.operands[0]], self.graph.values[v]
            bdims = prod.attrs.get("broadcast_dimensions") or ()
            inner = Spec(tuple(want.dims[o] if src.shape[i] == out.shape[o] else () for i, o in enumerate(bdims)))
            alt = self._plan_value(prod.operands[0], inner, phase)
            if self.cost.steps(alt) < self.cost.steps(steps):
                return alt, prod.operands[0]
        return steps, v

    def _plan_value(self, v: int, want: Spec, phase: str) -> list[Step]:
        t = self.graph.values[v]
        if t.dtype in ("token", "opaque"):
            return []
        isz = max(1, dtype_bytes(t.dtype))
        cur = self.get(v)
        sources = [cur] + [s for s in self._reusable(v, phase) if s != cur]
        best_steps: list[Step] | None = None
        best_t = math.inf
        origin = self.origin.get(v)
        piz = origin[1] if origin else None
        for src in sources:
            if src == want:
                return []
            key = (t.shape, isz, src, want, piz)
            hit = self.reshard_cache.get(key)
            if hit is None:      # the same reshard recurs in every identical block: plan and price it once
                steps = reshard(t.shape, isz, src, want, self.mesh, partial_itemsize=piz)
                hit = self.reshard_cache[key] = (steps, self.cost.steps(steps))
            steps, cost = hit
            if cost < best_t:
                best_t, best_steps = cost, steps
        return best_steps or []

    def _reusable(self, v: int, phase: str) -> list[Spec]:
        """Resharded copies of ``v`` a reader in ``phase`` may use instead of resharding again: those made in the same
        phase, and, for a value an op computed, a copy made in another phase that is no larger than the value
        itself (an all-to-all'd or reduced copy, kept as the saved activation, as GSPMD's reshard cache reuses it:
        an expert-parallel layer's dispatched tokens, read again by the experts' weight gradients). A larger copy (a
        gather) is made again in each phase, as ZeRO-3 re-gathers a weight and Megatron's sequence and context
        parallelism re-gather an activation for the backward pass instead of keeping the gathered one."""
        out = list(self.versions.get((v, phase), ()))
        made = self.made.get(v)
        if not made or v not in self.graph.producers:
            return out
        t = self.graph.values[v]
        own = math.prod(self.get(v).local_shape(t.shape, self.mesh))
        for ph, s in made:
            if ph != phase and s not in out and math.prod(s.local_shape(t.shape, self.mesh)) <= own:
                out.append(s)
        return out

    def _reshard(self, v: int, want: Spec, consumer: int, phase: str, why: str) -> None:
        steps, moved = self._plan(v, want, phase)
        if not steps:
            return
        self.versions.setdefault((v, phase), []).append(want)
        self.made.setdefault(v, []).append((phase, want))
        if moved != v:
            why = f"{why} (through the broadcast of {self._name(moved)})"
            v = moved
            want = Spec(tuple(tuple(x) for x in _after(self.get(v), steps)))
        producer = self.graph.producer(v)
        origin = self.origin.get(v)
        if origin is not None:
            after = origin[0]
        elif producer is not None:
            after = producer.id
        elif v in set(self.graph.inputs):
            after = -1
        else:
            after = consumer if consumer >= 0 else -1
        hi = consumer if consumer >= 0 else len(self.graph.ops)
        overlappable = self.matmul_prefix[hi] - self.matmul_prefix[after + 1] > 0
        # a reduction belongs to the pass that produced the partial sum (gradients: backward); a gather or
        # all-to-all to the op that needs it (FSDP re-gathers a parameter in the backward pass)
        if origin is not None or consumer < 0:
            anchor = self.graph.ops[after] if after >= 0 else None
        else:
            anchor = self.graph.ops[consumer]
        ph, layer, _ = names.parse(anchor.name_stack) if anchor is not None else (phase, "(top)", "")
        cur = self.get(v)
        for s in steps:
            self.inserted.append(Inserted(
                kind=s.kind, axes=s.axes, payload_bytes=s.payload_bytes, in_bytes=s.in_bytes, out_bytes=s.out_bytes,
                group_size=s.group_size, group_stride=s.group_stride, value=v, consumer=consumer, after_op=after,
                phase=ph, layer=layer, overlappable=overlappable, dtype=self.graph.values[v].dtype,
                reason=f"{why}: {self._name(v)} {cur} -> {want}", job_devices=self.mesh.devices))

    def _apply(self, op: Op, c: Choice, phase: str) -> None:
        graph = self.graph
        prim = names.parse(op.name_stack)[2] or op.short_name
        local_ins = []
        for i, (v, want) in enumerate(zip(op.operands, c.operands)):
            prod = graph.producer(v)
            if prod is not None and prod.name == "stablehlo.broadcast_in_dim":
                self.broadcast_reads.setdefault(v, []).append(want if want is not None else self.get(v))
            if want is None:
                local_ins.append(self.local(v, self.get(v)))
                continue
            self._reshard(v, want, op.id, phase, f"operand {i} of {prim} (op {op.id})")
            local_ins.append(self.local(v, want))
        carried = [v for v, want in zip(op.operands, c.operands) if want is not None and want.partial and v in self.origin]
        for r, s in zip(op.results, c.results):
            self.spec[r] = s
            if s.partial:
                isz = max(1, dtype_bytes(graph.values[r].dtype)) if graph.values[r].dtype not in ("token", "opaque") else 1
                if carried:
                    o = self.origin[carried[0]]
                    self.origin[r] = (o[0], min(o[1], isz))
                else:
                    self.origin[r] = (op.id, isz)
        if c.halo_bytes:
            n, stride = self.mesh.group(c.halo_axes)
            ph, layer, _ = names.parse(op.name_stack)
            self.inserted.append(Inserted(
                kind="collective_permute", axes=c.halo_axes, payload_bytes=c.halo_bytes, in_bytes=c.halo_bytes,
                out_bytes=c.halo_bytes, group_size=n, group_stride=stride, value=op.operands[0], consumer=op.id,
                after_op=max(0, op.id - 1), phase=ph, layer=layer, overlappable=False,
                dtype=graph.values[op.operands[0]].dtype, reason=f"halo exchange for {prim} (op {op.id})",
                job_devices=self.mesh.devices))
        # a pinned weight stays pinned through its dtype cast / relabelling (flax casts kernels to the compute dtype)
        # and through the optimization barrier jax.checkpoint wraps a recomputed block's inputs in (its weights
        # among them): operand i comes out as result i
        carried = []
        if op.name in _PIN_THROUGH and op.operands and len(op.results) == 1:
            carried = [(op.operands[0], op.results[0], c.results[0])]
        elif op.name == "stablehlo.optimization_barrier" and len(op.operands) == len(op.results):
            carried = list(zip(op.operands, op.results, c.results))
        for v, r, spec in carried:
            kept = self.pinned.get(v, frozenset()) & {a for d in spec.dims for a in d}
            if kept:
                self.pinned[r] = frozenset(kept)
        self.labels[op.id] = c.label
        w = self.program.works[op.id]
        if w is None:
            return
        local_outs = [self.local(r, s) for r, s in zip(op.results, c.results)]
        fn = find_rule(op)
        try:
            self.works[op.id] = fn(op, local_ins, local_outs)
        except Exception:
            self.works[op.id] = w.scaled(self._fraction(op, c))


@dataclass(frozen=True)
class _Dims:
    """Gather / scatter dimension numbers read from their MLIR attributes."""

    offset_dims: tuple[int, ...] = ()
    collapsed_slice_dims: tuple[int, ...] = ()
    operand_batching_dims: tuple[int, ...] = ()
    start_indices_batching_dims: tuple[int, ...] = ()
    start_index_map: tuple[int, ...] = ()
    update_window_dims: tuple[int, ...] = ()
    inserted_window_dims: tuple[int, ...] = ()
    input_batching_dims: tuple[int, ...] = ()
    scatter_indices_batching_dims: tuple[int, ...] = ()
    scattered_dims_to_operand_dims: tuple[int, ...] = ()
    index_vector_dim: int = -1


def _after(spec: Spec, steps: Sequence[Step]) -> tuple[tuple[str, ...], ...]:
    """The layout reached after ``steps`` (for the record only: which axes still split which dimension)."""
    dims = [list(d) for d in spec.dims]
    for st in steps:
        if st.kind == "all_gather":
            dims = [[a for a in d if a not in st.axes] for d in dims]
    return tuple(tuple(d) for d in dims)
