"""Rematerialisation (activation recomputation) and activation offload, per layer, as one pass.

Why: in a train step the forward pass leaves *residuals*, forward values the backward pass reads
(JAX's linearisation saves them). Held from their definition to their backward use they are most of
a large model's activation memory. For each repeated layer (``h_0``, ``h_1``, ... found from the name
stacks) a residual can be kept, recomputed in the backward pass from values that are kept, or copied
to host memory after its forward use and back before its backward use (JAX's own checkpoint policies
offer the same three: save, recompute, offload).

Policies (``remat{policy=...}``):
- ``none``: keep every residual.
- ``full``: keep only each layer's boundary values (what later layers and the loss read); everything
  else the backward reads is recomputed from the layer's inputs, at the start of the layer's backward.
- ``selective`` (Megatron-LM's selective recompute): also keep the outputs of the layer's projection
  matmuls (a matmul with a weight operand); recompute the rest, which is cheap (norms, attention scores
  and softmax, activation functions, the activation-activation attention matmuls).
- ``offload``: as ``full``'s dropped set, but copied to host memory (D2H after the forward, H2D before
  the layer's backward) over the host link, overlapped with compute when the window between the two
  has enough compute time (nested windows share the link), exposed otherwise.
- ``auto``: per layer, the cheapest mix of the above that fits ``budget_bytes`` (default: the
  target's main-memory capacity): a greedy by peak bytes saved per second added, then pruned, and never
  worse than a uniform policy that fits.

What the plan gets: ``live_ranges`` (a dropped residual lives from its definition to its last forward
use, then from the layer's recompute point to its last use; values the recomputation reads are kept
until that point), ``recomputed_ops``, and ``extra_kernels``: one per forward kernel the recomputation
re-runs (phase ``recompute``, priced like the forward kernel's recomputed ops fused) and the host copies.
Ops whose results only the backward reads are *moved* into the recomputation, not duplicated, as
``jax.checkpoint`` does, so on a plain program ``full`` adds exactly the flops ``jax.checkpoint`` adds.

A program already written with ``jax.checkpoint`` has its recomputation in the graph (name stack
component ``rematted_computation``; see ``jax_recomputed_ops``): its backward reads only the layer
inputs, so this pass finds nothing more to drop and never recomputes twice.

Not handled: layers inside loops (``nn.scan`` / ``lax.scan``): their residuals are stacked by the loop,
and the pass leaves them alone (it says so in the plan's notes). Run it after fusion (its recompute
kernels follow the fusion plan) and before placement.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from explorer.costs import Work
from explorer.graph import names
from explorer.graph.gcpause import paused_gc
from explorer.model import liveness, timing
from explorer.model.memory import main_memory_liveness, recompute_reads
from explorer.model.traffic import link_copy_time, traffic_by_level, transient_values
from explorer.report.units import fmt_bytes, fmt_seconds

from .fusion import build_kernels, kernels_of
from .pipeline import register
from .plan import ExtraKernel, Plan

POLICIES = ("none", "selective", "full", "offload", "auto")
_MATMUL = frozenset({"stablehlo.dot_general", "stablehlo.dot", "stablehlo.convolution"})
_INDEXED = re.compile(r"^(.*?)(\d+)$")   # "h_3" -> ("h_", "3"), "Block3" -> ("Block", "3")
_EPS = 1e-12


# ----------------------------------------------------------------------------- analysis (graph only)
@dataclass(frozen=True)
class Unit:
    """One repeated layer's forward pass and what the backward reads from it (values are alias roots)."""

    name: str                       # e.g. "GPT2/h_0"
    ops: frozenset[int]             # its forward ops
    residuals: tuple[int, ...]      # values it produces that the backward reads
    boundary: frozenset[int]        # values it produces that forward ops of other layers (or the loss) read
    projections: frozenset[int]     # outputs of its matmuls with a weight operand (kept by ``selective``)
    in_loop: bool                   # inside a while loop (scan): left alone


@dataclass(frozen=True)
class Choice:
    """What one policy does to one unit."""

    unit: str
    policy: str
    dropped: tuple[int, ...] = ()   # residuals not held between the forward and the backward
    recompute: tuple[int, ...] = () # forward ops that run again (extra work)
    moved: tuple[int, ...] = ()     # forward ops that run only in the recomputation (no extra work)
    point: int = -1                 # op id before which the dropped values are re-created
    extend: tuple[int, ...] = ()    # kept values the recomputation reads, kept alive until ``point``


@dataclass(frozen=True)
class Analysis:
    """Def-use and phases of a train step, per alias root; computed once per graph."""

    roots: Mapping[int, int]
    def_op: Mapping[int, int]                 # root -> defining op id
    readers: Mapping[int, tuple[int, ...]]    # root -> reading op ids (through views), ascending
    bwd_start: int                            # first backward op id (len(ops) when there is no backward)
    units: tuple[Unit, ...]
    end: int                                  # len(graph.ops): "until the end of the program"

    def root(self, v: int) -> int:
        return self.roots.get(v, v)

    def last_read(self, r: int) -> int:
        rd = self.readers.get(r, ())
        return rd[-1] if rd else self.def_op.get(r, 0)

    def last_forward_read(self, r: int) -> int | None:
        early = [x for x in self.readers.get(r, ()) if x < self.bwd_start]
        return early[-1] if early else None

    def first_late_read(self, r: int) -> int:
        return next(x for x in self.readers.get(r, ()) if x >= self.bwd_start)


def analyse(graph, layers: str = "") -> Analysis:
    """Phases, def-use (through views, as liveness groups them) and the repeated layers of ``graph``."""
    cache = graph.__dict__.setdefault("_remat_analysis", {})
    if layers in cache:
        return cache[layers]
    roots = liveness.alias_roots(graph)
    root = lambda v: roots.get(v, v)  # noqa: E731
    phase = [names.parse(op.name_stack)[0] for op in graph.ops]
    bwd_start = next((i for i, p in enumerate(phase) if p == "backward"), len(graph.ops))
    def_op: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for op in graph.ops:
        for r in op.results:
            if root(r) == r:
                def_op.setdefault(r, op.id)
        for v in op.operands:
            rd = readers.setdefault(root(v), [])
            if not rd or rd[-1] != op.id:
                rd.append(op.id)
    frozen = {r: tuple(rd) for r, rd in readers.items()}
    forward = [op.id for op in graph.ops[:bwd_start] if phase[op.id] == "forward"]
    keys = _unit_keys(graph, forward, layers)
    pinned = set(graph.outputs) | set(graph.escaping)
    units = []
    for name in sorted(set(keys.values()), key=lambda n: min(o for o, k in keys.items() if k == n)):
        ops = frozenset(o for o, k in keys.items() if k == name)
        produced = {r for o in ops for r in graph.ops[o].results if root(r) == r}
        residuals = tuple(sorted(r for r in produced if r not in pinned
                                 and any(x >= bwd_start for x in frozen.get(r, ()))))
        boundary = frozenset(r for r in produced if r in pinned
                             or any(x < bwd_start and x not in ops for x in frozen.get(r, ())))
        in_loop = any(graph.ops[o].frames for o in ops)
        units.append(Unit(name, ops, residuals, boundary, frozenset(), in_loop))
    units = _with_projections(graph, units, root, def_op, phase)
    out = Analysis(MappingProxyType(roots), MappingProxyType(def_op), MappingProxyType(frozen), bwd_start,
                   tuple(units), len(graph.ops))
    cache[layers] = out
    return out


def _layer_pattern(layers: str) -> "re.Pattern[str]":
    """``layers`` compiled; a bad pattern is a ``ValueError`` naming the option and the pattern (``re.error`` is not
    a ``ValueError``, so it would escape the pipeline's option checks)."""
    if not isinstance(layers, str):
        raise ValueError(f"remat: option layers must be a regular expression (str), got {layers!r}")
    try:
        return re.compile(layers)
    except re.error as exc:
        raise ValueError(f"remat: option layers={layers!r} is not a valid regular expression: {exc}") from None


def _unit_keys(graph, forward: Sequence[int], layers: str) -> dict[int, str]:
    """forward op id -> its repeated layer. ``layers``: a regex matched at the start of the layer path;
    by default the shallowest path component with two or more indexed siblings (h_0, h_1 / layers_0 ...)."""
    paths = {o: names.parse(graph.ops[o].name_stack)[1] for o in forward}
    if layers:
        pat = _layer_pattern(layers)
        return {o: m.group(0) for o, p in paths.items() if (m := pat.match(p)) and m.group(0)}
    comps = {o: p.split("/") for o, p in paths.items() if p != "(top)"}
    depth = max((len(c) for c in comps.values()), default=0)
    for d in range(depth):
        groups: dict[tuple, set[str]] = {}
        for c in comps.values():
            if len(c) > d and (m := _INDEXED.match(c[d])):
                groups.setdefault((tuple(c[:d]), m.group(1)), set()).add(c[d])
        stems = {g for g, members in groups.items() if len(members) >= 2}
        if stems:
            return {o: "/".join(c[:d + 1]) for o, c in comps.items()
                    if len(c) > d and (m := _INDEXED.match(c[d])) and (tuple(c[:d]), m.group(1)) in stems}
    return {}


def _with_projections(graph, units: list[Unit], root, def_op, phase) -> list[Unit]:
    """Each unit with the outputs of its matmuls that read a weight: one operand does not depend on the
    layer's activations, the other does.

    The activations start at what other forward ops hand the layer (the previous layer's output). The
    first layer may read a program input instead (a batch), which looks like a weight; so repeated layers
    (same op sequence) share where their activations enter: an operand slot fed by another forward op in
    any of them is an activation in all of them."""
    def seeds_at(u: Unit) -> set[tuple[int, int]]:
        out = set()
        for k, o in enumerate(sorted(u.ops)):
            for j, v in enumerate(graph.ops[o].operands):
                d = def_op.get(root(v))
                if d is not None and d not in u.ops and phase[d] == "forward":
                    out.add((k, j))
        return out

    signature = {u.name: tuple(graph.ops[o].name for o in sorted(u.ops)) for u in units}
    shared: dict[tuple, set[tuple[int, int]]] = {}
    for u in units:
        shared.setdefault(signature[u.name], set()).update(seeds_at(u))
    out = []
    for u in units:
        slots = shared[signature[u.name]]
        act: set[int] = set()
        projections = set()
        for k, o in enumerate(sorted(u.ops)):
            op = graph.ops[o]
            deps = [(k, j) in slots or root(v) in act for j, v in enumerate(op.operands)]
            if any(deps):
                act.update(root(r) for r in op.results)
                if op.name in _MATMUL and not all(deps):
                    projections.update(root(r) for r in op.results)
        out.append(Unit(u.name, u.ops, u.residuals, u.boundary, frozenset(projections), u.in_loop))
    return out


def choose(an: Analysis, graph, unit: Unit, policy: str, fused: frozenset[int] = frozenset()) -> Choice:
    """The dropped residuals, recomputed / moved ops, recompute point and kept inputs of one policy.

    ``fused``: values that never reach memory under the fusion plan (a forward op fused into the one
    backward kernel reading it): already computed where they are used, so never dropped."""
    if policy == "none" or unit.in_loop:
        return Choice(unit.name, "none")
    kept = unit.boundary | (unit.projections if policy == "selective" else frozenset())
    dropped = tuple(r for r in unit.residuals if r not in kept and r not in fused)
    if not dropped:
        return Choice(unit.name, policy)
    point = min(an.first_late_read(r) for r in dropped)
    if policy == "offload":
        return Choice(unit.name, policy, dropped=dropped, point=point)
    produced = {an.root(r) for o in unit.ops for r in graph.ops[o].results}
    redo: set[int] = set()
    extend: set[int] = set()
    stack = [an.def_op[r] for r in dropped]
    while stack:
        o = stack.pop()
        if o in redo:
            continue
        redo.add(o)
        for v in graph.ops[o].operands:
            r, p = an.root(v), graph.producers.get(v)
            if p is not None and not graph.ops[p].operands:
                stack.append(p)        # a constant or iota: re-created, never kept
            elif r not in produced or r in kept:
                extend.add(r)          # available: a layer input, a weight, or a kept value
            elif p is not None:
                stack.append(p)
    moved: set[int] = set()
    for o in sorted(redo, reverse=True):   # readers come after their producers
        if all(x >= an.bwd_start or x in moved for r in graph.ops[o].results for x in an.readers.get(an.root(r), ())):
            moved.add(o)
    inputs, pinned = set(graph.inputs), set(graph.outputs) | set(graph.escaping)
    extend = {r for r in extend if r not in inputs and r not in pinned and r in an.def_op and an.last_read(r) < point}
    return Choice(unit.name, policy, dropped=dropped, recompute=tuple(sorted(redo - moved)),
                  moved=tuple(sorted(moved)), point=point, extend=tuple(sorted(extend)))


def live_ranges(an: Analysis, choices: Sequence[Choice]) -> dict[int, tuple[tuple[int, int], ...]]:
    """Value -> the (first op, last op) intervals it occupies main memory over, under ``choices``."""
    out: dict[int, tuple[tuple[int, int], ...]] = {}
    for c in choices:
        for r in c.dropped:
            d, fwd = an.def_op[r], an.last_forward_read(r)
            first = ((d, d if fwd is None else fwd),) if (fwd is not None or c.policy == "offload") else ()
            out[r] = first + ((c.point, an.last_read(r)),)
    until: dict[int, int] = {}
    for c in choices:
        for r in c.extend:
            until[r] = max(until.get(r, 0), c.point)
    for r, point in until.items():
        if r not in out:   # a dropped value is never read outside its own unit, so this always holds
            out[r] = ((an.def_op[r], max(point, an.last_read(r))),)
    return out


def jax_recomputed_ops(graph) -> tuple[int, ...]:
    """Ops JAX emitted to recompute a ``jax.checkpoint``-ed forward inside the backward pass."""
    return tuple(op.id for op in graph.ops
                 if "rematted_computation" in op.name_stack and "rematted_computation" in names.split_stack(op.name_stack))


# ----------------------------------------------------------------------------- pricing (plan + target)
_OWNER_CACHE: dict[int, tuple[Any, dict[int, int]]] = {}


def _owner_of(kernels) -> dict[int, int]:
    """op -> index of its kernel, for the last few kernel tuples (asked once per layer and choice: building it each
    time made ``remat{policy=auto}`` quadratic in the number of layers). Read only."""
    hit = _OWNER_CACHE.get(id(kernels))
    if hit is not None and hit[0] is kernels:
        return hit[1]
    owner = {o: i for i, k in enumerate(kernels) for o in k.ops}
    while len(_OWNER_CACHE) >= 4:
        _OWNER_CACHE.pop(next(iter(_OWNER_CACHE)))
    _OWNER_CACHE[id(kernels)] = (kernels, owner)
    return owner


def recompute_kernels(program, plan: Plan, an: Analysis, choice: Choice) -> tuple[ExtraKernel, ...]:
    """One extra kernel per forward kernel whose ops are recomputed, priced as those ops fused."""
    if not choice.recompute:
        return ()
    kernels = kernels_of(program, plan)
    owner = _owner_of(kernels)
    groups: dict[int, list[int]] = {}
    for o in choice.recompute:
        if o in owner:      # ops in no kernel are views or generators duplicated into their readers
            groups.setdefault(owner[o], []).append(o)
    rebuilt = build_kernels(program, list(groups.values()), plan=plan)
    graph = program.graph
    out = []
    for kern in rebuilt:
        works = [w for w in (plan.work(program, o) for o in kern.ops) if w is not None]
        mat = [w for w in works if w.matrix_flops]
        lead = max(kern.ops, key=lambda o: (program.works[o].flops if program.works[o] else 0.0, -o))
        work = Work(matrix_flops=sum(w.matrix_flops for w in works), vector_flops=sum(w.vector_flops for w in works),
                    transcendentals=sum(w.transcendentals for w in works), bytes_read=kern.bytes_in + kern.spill_bytes,
                    bytes_written=kern.bytes_out, dtype=(mat[0] if mat else works[0]).dtype if works else "",
                    gemm=mat[0].gemm if len(mat) == 1 else None)
        prim = names.parse(graph.ops[lead].name_stack)[2] or graph.ops[lead].short_name
        out.append(ExtraKernel(name=f"remat[{prim}{'+' + str(len(kern.ops) - 1) if len(kern.ops) > 1 else ''}]",
                               work=work, after_op=max(choice.point - 1, 0), layer=choice.unit, phase="recompute"))
    return tuple(out)


def offload_kernels(program, plan: Plan, target, an: Analysis, choices: Sequence[Choice],
                    kernel_seconds: np.ndarray | None = None) -> tuple[ExtraKernel, ...]:
    """D2H and H2D copies of each offloaded unit's dropped residuals over the host link.

    A copy overlaps compute when the compute-bound time in its window (from the unit's first dropped
    definition to its recompute point) covers it together with the copies of the windows nested inside,
    which share the link; otherwise it is exposed (not overlappable)."""
    host = target.host_memory
    chosen = [c for c in choices if c.policy == "offload" and c.dropped]
    if not chosen or host is None:
        return ()
    secs = _compute_seconds_by_op(program, plan, target) if kernel_seconds is None else kernel_seconds
    prefix = np.concatenate([[0.0], np.cumsum(secs)])
    demand = 0.0
    out = []
    for c in sorted(chosen, key=lambda c: (c.point - min(an.def_op[r] for r in c.dropped), c.point)):
        start = min(an.def_op[r] for r in c.dropped)
        window = prefix[c.point] - prefix[start]
        nbytes = float(sum(plan.nbytes(program, r) for r in c.dropped))
        t = link_copy_time(target, host.name, nbytes).seconds
        for label, after, work in (("D2H", start, Work(bytes_read=nbytes, dtype="")),
                                   ("H2D", max(c.point - 1, 0), Work(bytes_written=nbytes, dtype=""))):
            hidden = demand + t <= window + _EPS
            demand += t if hidden else 0.0
            out.append(ExtraKernel(name=f"offload {label}", work=work, after_op=after, layer=c.unit, phase="offload",
                                   overlappable=hidden, link=host.name))
    return tuple(out)


def _compute_seconds_by_op(program, plan: Plan, target) -> np.ndarray:
    """Per op id: seconds of the compute-bound kernel that starts there (what a copy can hide behind)."""
    kernels = kernels_of(program, plan)
    secs = np.zeros(len(program.graph.ops))
    for kern in kernels:
        works = [w for w in (plan.work(program, o) for o in kern.priced_ops) if w is not None]
        runs = program.weights[kern.ops[0]]
        t = timing.kernel_time(target, works, traffic_by_level(target, plan.placement, kern))
        if t.bound == "compute" and runs:
            secs[min(kern.ops)] += t.seconds * runs
    return secs


def extra_seconds(program, target, extras: Sequence[ExtraKernel]) -> float:
    """Time the estimate adds for ``extras`` (overlappable copies counted as hidden)."""
    total = 0.0
    for e in extras:
        if e.overlappable:
            continue
        runs = program.weights[e.after_op] if e.after_op >= 0 else 1.0
        t = (link_copy_time(target, e.link, e.work.bytes_accessed) if e.link else
             timing.kernel_time(target, [e.work], {target.main_memory.name: e.work.bytes_accessed}))
        total += t.seconds * runs
    return total


# ----------------------------------------------------------------------------- the pass
@register
@dataclass(frozen=True)
class Remat:
    """The rematerialisation / activation-offload pass. Options: ``policy`` (none | selective | full |
    offload | auto), ``budget_bytes`` (``auto``'s main-memory budget; 0: the target's capacity),
    ``layers`` (a regex over layer paths choosing the units; default: the repeated, indexed layers),
    ``allow_offload`` (whether ``auto`` may offload)."""

    name = "remat"
    policy: str = "none"
    budget_bytes: float = 0.0
    layers: str = ""
    allow_offload: bool = True

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {self.budget_bytes}")
        if self.layers:
            _layer_pattern(self.layers)

    def alternatives(self) -> list["Remat"]:
        return [Remat(policy=p, budget_bytes=self.budget_bytes, layers=self.layers, allow_offload=self.allow_offload)
                for p in POLICIES]

    def reads_knobs(self) -> frozenset[str]:
        """The target knobs the decisions read (see ``explorer.sweep``): what ``none`` / ``selective`` / ``full``
        recompute is the program's structure alone; ``offload`` times its copies against the compute they hide
        behind and ``auto`` fits a memory budget at the least added time, so both read every knob that sets a
        kernel's time or a level's capacity."""
        if self.policy in ("none", "selective", "full"):
            return frozenset()
        return frozenset({"memory.", "efficiency.", "compute.", "scale_up.", "scale_out."})

    def run(self, program, plan: Plan, target) -> Plan:
        with paused_gc():     # a pass over every op: the collector's walks would grow with the program
            return self._run(program, plan, target)

    def _run(self, program, plan: Plan, target) -> Plan:
        if any(k.phase in ("recompute", "offload") for k in plan.extra_kernels):
            raise ValueError("remat already ran in this pipeline: its choices would be applied twice")
        an = analyse(program.graph, self.layers)
        notes = _notes(program, an)
        if self.policy == "none" or not an.units:
            return plan.with_(notes=plan.notes + tuple(notes))
        if self.policy == "auto":
            choices, note = _auto(program, plan, target, an, self._budget(target), self.allow_offload)
            notes.append(note)
        else:
            policy = self.policy if (self.policy != "offload" or target.host_memory is not None) else "none"
            if policy != self.policy:
                notes.append(f"remat: {target.name} has no host memory level; offload not applied")
            fused = _fused_values(program, plan)
            choices = [choose(an, program.graph, u, policy, fused) for u in an.units]
        return apply(program, plan, target, an, choices, notes)

    def _budget(self, target) -> float:
        return self.budget_bytes or float(target.main_memory.capacity_bytes)


def apply(program, plan: Plan, target, an: Analysis, choices: Sequence[Choice], notes: Sequence[str] = ()) -> Plan:
    """The plan with ``choices`` applied: live ranges, recomputed ops, recompute kernels and host copies."""
    extras = [k for c in choices for k in recompute_kernels(program, plan, an, c)]
    extras += offload_kernels(program, plan, target, an, choices)
    ranges = dict(plan.live_ranges or {})
    ranges.update(live_ranges(an, choices))
    redo = frozenset(o for c in choices for o in c.recompute)
    summary = ", ".join(f"{c.unit}={c.policy}" for c in choices)
    return plan.with_(live_ranges=MappingProxyType(ranges), recomputed_ops=plan.recomputed_ops | redo,
                      extra_kernels=plan.extra_kernels + tuple(extras),
                      notes=(*plan.notes, *notes, f"remat: {summary}"))


def _fused_values(program, plan: Plan) -> frozenset[int]:
    return transient_values(program, kernels_of(program, plan))


def _notes(program, an: Analysis) -> list[str]:
    notes = []
    if an.bwd_start == an.end:
        notes.append("remat: no backward pass (nothing under transpose(...)); nothing to do")
    elif not an.units:
        notes.append("remat: no repeated layers found in the forward pass; pass layers=REGEX")
    looped = [u.name for u in an.units if u.in_loop]
    if looped:
        notes.append(f"remat: layers inside loops (scan) left alone: {', '.join(looped)}")
    jax_ops = jax_recomputed_ops(program.graph)
    if jax_ops:
        flops = sum(program.works[o].flops * program.weights[o] for o in jax_ops if program.works[o] is not None)
        notes.append(f"remat: the program already recomputes {len(jax_ops)} ops ({flops:.4g} flops) "
                     "emitted by jax.checkpoint")
    return notes


# ----------------------------------------------------------------------------- auto
def _auto(program, plan: Plan, target, an: Analysis, budget: float, allow_offload: bool) -> tuple[list[Choice], str]:
    """Per unit, the policy mix that fits ``budget`` at the least added time (see the module docstring)."""
    graph = program.graph
    policies = ["none", "selective", "full"] + (["offload"] if allow_offload and target.host_memory is not None else [])
    units = [u.name for u in an.units if not u.in_loop]
    fused = _fused_values(program, plan)
    options = {u: {p: choose(an, graph, unit, p, fused) for p in policies}
               for unit in an.units if (u := unit.name) in units}
    recompute_s = {(u, p): extra_seconds(program, target, recompute_kernels(program, plan, an, c))
                   for u in units for p, c in options[u].items()}
    secs = _compute_seconds_by_op(program, plan, target)
    mem = _Curves(program, plan, an, options)

    def cost(assign: Mapping[str, str]) -> float:
        chosen = [options[u][p] for u, p in assign.items()]
        copies = offload_kernels(program, plan, target, an, chosen, secs)
        return sum(recompute_s[(u, p)] for u, p in assign.items()) + extra_seconds(program, target, copies)

    assign = {u: "none" for u in units}
    if mem.peak(assign) <= budget:
        return [options[u][p] for u, p in assign.items()], f"remat auto: fits {fmt_bytes(budget)} without remat"
    while mem.peak(assign) > budget:     # greedy: most peak bytes saved per second added
        now_peak, now_cost, best = mem.peak(assign), cost(assign), None
        for u in units:
            for p in policies:
                if p == assign[u]:
                    continue
                trial = {**assign, u: p}
                gain, extra = now_peak - mem.peak(trial), cost(trial) - now_cost
                if gain <= 0:
                    continue
                score = (float("inf") if extra <= _EPS else gain / extra, gain)
                if best is None or score > best[0]:
                    best = (score, trial)
        if best is None:
            break
        assign = best[1]
    if mem.peak(assign) <= budget:       # prune: cheaper choices that still fit, most expensive unit first
        for u in sorted(units, key=lambda u: -recompute_s[(u, assign[u])]):
            for p in sorted(policies, key=lambda p: recompute_s[(u, p)]):
                trial = {**assign, u: p}
                if cost(trial) < cost(assign) and mem.peak(trial) <= budget:
                    assign = trial
    uniform = [{u: p for u in units} for p in policies[1:]]
    fitting = [a for a in [assign, *uniform] if mem.peak(a) <= budget]
    if fitting:
        assign = min(fitting, key=lambda a: (cost(a), mem.peak(a)))
        note = (f"remat auto: fits {fmt_bytes(budget)} at a peak of {fmt_bytes(mem.peak(assign))}, "
                f"+{fmt_seconds(cost(assign))}")
    else:
        assign = min([assign, *uniform], key=lambda a: (mem.peak(a), cost(a)))
        note = (f"remat auto: nothing fits {fmt_bytes(budget)}; the least peak is {fmt_bytes(mem.peak(assign))} "
                f"(+{fmt_seconds(cost(assign))})")
    return [options[u][p] for u, p in assign.items()], note


class _LazyDeltas(dict):
    """``_Curves.delta``: (unit, policy) -> its change of the curve, computed on first use."""

    def __init__(self, curves: "_Curves", options) -> None:
        super().__init__()
        self.curves, self.options = curves, options

    def __missing__(self, key: tuple[str, str]) -> np.ndarray:
        u, p = key
        value = self[key] = self.curves._delta(live_ranges(self.curves.an, [self.options[u][p]]))
        return value


class _Curves:
    """Main-memory live bytes after each op under a per-unit policy assignment, fast enough for a greedy.

    The curve is the plan's (``main_memory_liveness``) plus, per unit and policy, the change its live
    ranges make (precomputed); values several units keep alive (shared recompute inputs) are merged per
    assignment. The sizes follow the estimate: a value fused away or placed elsewhere counts 0 until a
    live range materialises it."""

    def __init__(self, program, plan: Plan, an: Analysis, options: Mapping[str, Mapping[str, Choice]]):
        self.an, self.options = an, options
        kernels = kernels_of(program, plan)
        # a value some policy gives a live range of its own is priced by its own span below: the base curve gives it
        # its own buffer too (an elementwise result written over it, or it over an operand, would make the two one)
        candidates = frozenset(r for opts in options.values() for c in opts.values() for r in (*c.dropped, *c.extend))
        self.base = np.array(main_memory_liveness(program, plan, kernels, unshared=candidates).live_bytes, dtype=float)
        elsewhere = frozenset((plan.placement or {}).keys())
        ranged = dict(plan.live_ranges or {})
        fused = transient_values(program, kernels) - frozenset(ranged)
        self._old = lambda r: 0.0 if (r in fused or r in elsewhere) else float(plan.nbytes(program, r))  # noqa: E731
        self._new = lambda r: 0.0 if r in elsewhere else float(plan.nbytes(program, r))  # noqa: E731
        # a value a later kernel recomputes a producer from stays until that kernel runs (as the liveness says)
        roots = liveness.alias_roots(program.graph)
        held: dict[int, int] = {}
        for v, at in recompute_reads(program, kernels).items():
            r = roots.get(v, v)
            held[r] = max(held.get(r, at), at)
        self._span = lambda r: ranged.get(r) or ((an.def_op[r], max(an.last_read(r), held.get(r, -1))),)  # noqa: E731
        users: dict[int, set[str]] = {}
        for u, opts in options.items():
            for c in opts.values():
                for r in c.extend:
                    users.setdefault(r, set()).add(u)
        self.shared = frozenset(r for r, us in users.items() if len(us) > 1)
        # per (unit, policy): the change its live ranges make, made when first asked for (a greedy that stops at the
        # first assignment needs the "none" ones only, which are zeros without an array over the program each)
        self.delta = _LazyDeltas(self, options)
        self._memo: dict[tuple, float] = {}
        self._at: dict[str, str] = {}          # the assignment ``_sum`` (base + its deltas) is for
        self._sum = self.base

    def _delta(self, ranges: Mapping[int, tuple[tuple[int, int], ...]], shared: bool = False) -> np.ndarray:
        if not ranges:
            return np.zeros(len(self.base))
        d = np.zeros(len(self.base) + 1)
        for r, ivs in ranges.items():
            if (r in self.shared) != shared:
                continue
            old, new = self._old(r), self._new(r)
            for s, e in self._span(r):
                d[s] -= old
                d[e + 1] += old
            for s, e in ivs:
                d[s] += new
                d[e + 1] -= new
        return np.cumsum(d)[:len(self.base)]

    def curve(self, assign: Mapping[str, str]) -> np.ndarray:
        diff = [u for u, p in assign.items() if self._at.get(u) != p]
        if len(diff) > 2 or len(assign) != len(self._at):   # move the reference point here
            self._at = dict(assign)
            self._sum = self.base + sum(self.delta[(u, p)] for u, p in assign.items())
            diff = []
        out = self._sum.copy()
        for u in diff:
            out += self.delta[(u, assign[u])] - self.delta[(u, self._at[u])]
        if self.shared:
            out = out + self._delta(live_ranges(self.an, [self.options[u][p] for u, p in assign.items()]), shared=True)
        return out

    def peak(self, assign: Mapping[str, str]) -> float:
        key = tuple(sorted(assign.items()))
        if key not in self._memo:
            self._memo[key] = float(self.curve(assign).max())
        return self._memo[key]
