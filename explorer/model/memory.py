"""Main-memory liveness under a plan: the peak the estimate reports, and passes aim at.

One function, so passes that aim at a memory budget (``remat{policy=auto}``, placement) see exactly the
peak ``explorer.pricing`` will report. The plan is read through its attributes (``placement``,
``live_ranges``, ``value_bytes``); the caller passes the plan's kernels.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..graph import names
from . import liveness
from .traffic import transient_values


def main_memory_liveness(program: Any, plan: Any, kernels: Sequence[Any],
                         unshared: frozenset[int] = frozenset()) -> liveness.Liveness:
    """Main-memory liveness as pricing reports it: values inside fused kernels and values placed in another
    level left out; the plan's live-range overrides (remat, activation offload) and per-device sizes applied; an
    elementwise kernel's result written over an operand that dies there (``shared_buffers``). ``unshared``: values
    that neither take nor lend a buffer (the candidates of a pass about to give them live ranges of their own: its
    memory curves price each by its own span)."""
    elsewhere = frozenset((plan.placement or {}).keys())
    ranged = frozenset(plan.live_ranges or ())   # a value given a live range is materialised over it
    end = len(program.graph.ops)
    buffers = [(e.after_op, e.holds_until if e.holds_until >= 0 else end, e.holds_bytes)
               for e in plan.extra_kernels if e.holds_bytes > 0]
    shared = shared_buffers(program, plan, kernels)
    if unshared:
        shared = {r: v for r, v in shared.items() if r not in unshared and v not in unshared}
    return liveness.analyse(program.graph, transient=(transient_values(program, kernels) - ranged) | elsewhere,
                            ranges=plan.live_ranges, sizes=plan.value_bytes, extend=recompute_reads(program, kernels),
                            buffers=buffers, shared=shared)


# ops that read an operand other than element by element (or carry a kernel of their own): a kernel holding one
# writes no result over an operand's buffer
_NOT_ELEMENTWISE = frozenset({
    "stablehlo.reduce", "stablehlo.reduce_window", "stablehlo.transpose", "stablehlo.gather", "stablehlo.scatter",
    "stablehlo.sort", "stablehlo.slice", "stablehlo.dynamic_slice", "stablehlo.dynamic_update_slice",
    "stablehlo.concatenate", "stablehlo.pad", "stablehlo.reverse", "stablehlo.custom_call", "chlo.top_k",
    "stablehlo.fft", "stablehlo.select_and_scatter", "stablehlo.cholesky", "stablehlo.triangular_solve",
    "stablehlo.rng_bit_generator", "stablehlo.rng", "stablehlo.while", "stablehlo.case", "stablehlo.if",
    "stablehlo.broadcast_in_dim", "stablehlo.iota", "stablehlo.convolution", "stablehlo.dot_general"})


def shared_buffers(program: Any, plan: Any, kernels: Sequence[Any]) -> dict[int, int]:
    """Result value id -> the operand whose buffer an elementwise kernel may write it into, as XLA's buffer
    assignment lets a loop fusion's output share a buffer with an operand of the same shape that it reads element
    by element (``CanShareBuffer``): an optimizer's update written over the gradient, an activation over its
    pre-activation. The liveness takes a pair only where the operand is dead once the result is made. Program
    inputs never lend their buffer (the caller's, or a donated one paired to its output), nor does a value a
    collective delivers to the kernel (XLA:GPU's combined all-reduce leaves it in the bucket's buffer, read in
    place). Kept on the plan's kernels (read only)."""
    memo = _SHARED.get(id(kernels))
    if memo is not None and memo[0] is kernels and memo[1] is program and memo[2] is plan:
        return memo[3]
    graph = program.graph
    inputs = set(graph.inputs)
    size = plan.nbytes
    delivered_to: dict[int, set[int]] = {}
    for v, o in (plan.boundaries or ()):
        delivered_to.setdefault(o, set()).add(v)
    out: dict[int, int] = {}
    for k in kernels:
        if k.kind not in ("loop", "single") or not k.reads or not k.writes:
            continue
        ok = True
        for o in k.priced_ops:
            op = graph.ops[o]
            if op.name == "mhlo.fusion":      # a compiler's fusion: its body ops are the kernel's ops
                continue
            w = program.works[o]
            name = op.name.replace("mhlo.", "stablehlo.", 1)
            if op.regions or name in _NOT_ELEMENTWISE or (w is not None and (w.matrix_flops or w.collective)):
                ok = False
                break
        if not ok:
            continue
        lent: set[int] = set()
        for o in k.ops:
            lent |= delivered_to.get(o, set())
        for r, _ in k.writes:
            t = graph.values[r]
            for v, _ in k.reads:
                u = graph.values[v]
                if v in lent or v in inputs or v == r or u.shape != t.shape or u.dtype != t.dtype \
                        or size(program, v) != size(program, r):
                    continue
                out[r] = v
                lent.add(v)
                break
    while len(_SHARED) >= 4:
        _SHARED.pop(next(iter(_SHARED)))
    _SHARED[id(kernels)] = (kernels, program, plan, out)
    return out


_SHARED: dict[int, tuple] = {}


def recompute_reads(program: Any, kernels: Sequence[Any]) -> dict[int, int]:
    """value id -> the last op of a kernel that recomputes a producer from it (``Kernel.recomputed``: fusion duplicates
    a cheap op, a mask's compare or a transpose, into a later kernel, often a backward one). The value must stay in
    memory until that kernel runs, although the graph's last reader of it came much earlier."""
    return {v: max(at) for v, at in _recomputing_kernels(program, kernels).items()}


def _recomputing_kernels(program: Any, kernels: Sequence[Any]) -> dict[int, list[int]]:
    """value id -> where each kernel that recomputes a producer from it runs (the kernel's last op)."""
    graph = program.graph
    made_by = graph.producers
    out: dict[int, list[int]] = {}
    for k in kernels:
        rec = getattr(k, "recomputed", ())
        if not rec or not k.ops:
            continue
        inside = set(k.ops)
        inside.update(rec)
        at = max(k.ops)
        for o in rec:
            for v in graph.ops[o].operands:
                if made_by.get(v) not in inside:      # made outside the kernel (or a program input)
                    out.setdefault(v, []).append(at)
    return out


def level_peaks(program: Any, plan: Any, kernels: Sequence[Any]) -> dict[str, int]:
    """Peak live bytes in each memory level the plan's placement puts values in."""
    graph = program.graph
    transient = transient_values(program, kernels)
    peaks: dict[str, int] = {}
    for level in sorted({lvl for lvl in (plan.placement or {}).values()}):
        only = frozenset(v for v, lvl in plan.placement.items() if lvl == level)
        others = frozenset(range(len(graph.values))) - only
        peaks[level] = liveness.analyse(graph, transient=transient | others, ranges=plan.live_ranges,
                                        sizes=plan.value_bytes).peak_bytes
    return peaks


# -- a training step's memory per device, by what holds it --------------------------------------------------
#
# Why not the liveness peak: a train step's program holds one microbatch of a few blocks, returns its updated state
# as new buffers, and keeps every gradient as a separate value. A real run updates its state in place (donated
# buffers, Megatron's and DeepSpeed's in-place optimizers), keeps one gradient buffer per parameter across its
# microbatches, and, pipelined, holds the activations of several microbatches at once on the first stages. The
# breakdown below measures each part on the program (per device, under the plan's layouts, fusion and live
# ranges) per repeated block, so a pipeline stage's memory is the sum of its share, independent of how many blocks
# the program was built with.

_BLOCK = re.compile(r"^(?:.*_)?(\d+)$")
_KEYS = re.compile(r"""\[['"]([^'"\]]+)['"]\]|/([^/\[\]'".]+)""")


def block_index(layer: str) -> int | None:
    """Index of the repeated block a layer path belongs to (``GPT2/h_3/mlp`` -> 3, ``layers_12`` -> 12), or None."""
    for part in layer.split("/"):
        m = _BLOCK.match(part)
        if m and not part.isdigit():
            return int(m.group(1))
    return None


def _input_keys(name: str) -> tuple[str, ...]:
    """The dictionary keys of a flattened argument name (``opt_state[0].mu['h_3']['mlp']`` -> ('h_3', 'mlp'))."""
    return tuple(a or b for a, b in _KEYS.findall(name))


@dataclass(frozen=True)
class Split:
    """Bytes of one kind per device: per repeated block (the mean over the blocks the program holds), and outside the
    blocks on the first pipeline stage (embedding side) and on the last one (head and loss side)."""

    per_block: float = 0.0
    first: float = 0.0
    last: float = 0.0

    def on_stage(self, blocks: float, first: bool, last: bool) -> float:
        return self.per_block * blocks + (self.first if first else 0.0) + (self.last if last else 0.0)


@dataclass(frozen=True)
class StageMemory:
    """Memory per device of one pipeline stage at its peak, by what holds it (bytes)."""

    parameters: float
    gradients: float
    optimizer: float
    weight_copies: float        # weight-only values the backward pass reads (e.g. bf16 casts of f32 weights): once
    activations: float          # saved for the backward pass, of every microbatch in flight
    working: float              # the largest transient working set of one microbatch (incl. gathered FSDP weights)
    data: float

    @property
    def total(self) -> float:
        return (self.parameters + self.gradients + self.optimizer + self.weight_copies + self.activations
                + self.working + self.data)

    @property
    def state(self) -> float:
        """Parameters, gradients and optimizer state (with the weight copies): what sharding the state divides."""
        return self.parameters + self.gradients + self.optimizer + self.weight_copies

    def rows(self) -> list[tuple[str, float]]:
        return [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer state", self.optimizer),
                ("weight copies", self.weight_copies), ("activations", self.activations),
                ("working set", self.working), ("data", self.data)]


@dataclass(frozen=True)
class TrainingMemory:
    """A training step's memory per device, measured on the program and split by block (see the comment above).

    - ``parameters``: inputs the forward pass reads that the step returns updated (updated in place, as a real run
      does with donated buffers); ``optimizer``: the other returned state (moments, counters), following their
      parameter's block by path; ``gradients``: one accumulation buffer per parameter, laid out and typed as the
      parameter (a gradient has its parameter's dtype; FSDP/ZeRO-3 shards it as it shards the parameter);
    - ``weight_copies``: values saved for the backward pass that depend on no data input (casts of the weights):
      held once, whatever the number of microbatches; ``activations``: saved values that depend on the data,
      per microbatch: a value is saved when it is made before the backward pass starts and is still in memory
      then (under the plan's live ranges: ``remat`` and ``jax.checkpoint`` drop what they recompute);
    - ``working``: the largest transient working set of one microbatch (what is live beyond the above), in a
      block, on the embedding side or the head side, plus the weights FSDP gathers for one block and prefetches for
      the next (``gathered``); ``optimizer_working``: the same during the optimizer update.
    """

    training: bool
    blocks: tuple[int, ...]
    parameters: Split
    gradients: Split
    optimizer: Split
    weight_copies: Split
    activations: Split
    working: Split
    gathered: Split
    optimizer_working: float
    data: float
    program_peak_bytes: float           # the program's own liveness peak (one microbatch, no in-place update)
    saved: tuple[tuple[int, float, str, str], ...] = ()   # (value id, bytes, kind, block) of every saved value

    def stage(self, blocks: float, first: bool = True, last: bool = True, in_flight: float = 1.0,
              activation_scale: float = 1.0) -> StageMemory:
        """Memory of a stage holding ``blocks`` blocks; ``in_flight``: microbatches whose activations it holds at its
        peak, in units of its whole share of blocks (see ``in_flight``); ``activation_scale``: the microbatch's
        size over the program's batch (activations and the working set scale with it, the state does not)."""
        a = activation_scale
        act = a * in_flight * (self.activations.per_block * blocks + (self.activations.first if first else 0.0)
                               + (self.activations.last if last else 0.0))
        work = max(a * self.working.per_block if blocks else 0.0, a * self.working.first if first else 0.0,
                   a * self.working.last if last else 0.0, self.optimizer_working)
        gathered = max(self.gathered.per_block if blocks else 0.0, self.gathered.first if first else 0.0,
                       self.gathered.last if last else 0.0)
        return StageMemory(parameters=self.parameters.on_stage(blocks, first, last),
                           gradients=self.gradients.on_stage(blocks, first, last),
                           optimizer=self.optimizer.on_stage(blocks, first, last),
                           weight_copies=self.weight_copies.on_stage(blocks, first, last),
                           activations=act, working=work + 2.0 * gathered, data=self.data)

    def whole(self, blocks: float | None = None, microbatches_in_flight: float = 1.0) -> StageMemory:
        """One device running every block (no pipeline); ``blocks``: the real model's count (default: the program's)."""
        return self.stage(len(self.blocks) if blocks is None else blocks, True, True, microbatches_in_flight)


def in_flight(schedule: str, stages: int, stage: int, microbatches: int, virtual: int = 1) -> float:
    """Microbatches whose activations pipeline stage ``stage`` (0 first) holds at its peak, in units of the stage's
    whole share of blocks: GPipe all ``m``; 1F1B ``min(m, p - stage)``; interleaved 1F1B (Megatron, ``v`` chunks
    per device) ``2 (p - stage - 1) + (v - 1) p + 1`` chunk-microbatches, i.e. ``p + (p - 1) / v`` on the first
    stage (Korthikanti et al. 2022: the first stage holds ``L (1 + (p - 1) / (p v))`` layers' activations)."""
    p, m, v = stages, microbatches, max(1, virtual)
    if schedule == "gpipe":
        return float(m)
    if schedule == "interleaved" and v > 1:
        return min(float(m * v), float(2 * (p - stage - 1) + (v - 1) * p + 1)) / v
    return float(min(m, p - stage))


def training_memory(program: Any, plan: Any, kernels: Sequence[Any]) -> TrainingMemory:
    """The breakdown of ``TrainingMemory`` for ``program`` under ``plan`` (per device) with fusion ``kernels``.

    Cached on the plan's kernels (pipeline pricing and searches ask for the same plan's breakdown many times)."""
    key = (id(program), id(plan), id(kernels))
    hit = _TRAINING_CACHE.get(key)
    if hit is not None and hit[0] is program and hit[1] is plan:
        return hit[2]
    out = _training_memory(program, plan, kernels)
    while len(_TRAINING_CACHE) >= 8:
        _TRAINING_CACHE.pop(next(iter(_TRAINING_CACHE)))
    _TRAINING_CACHE[key] = (program, plan, out)
    return out


_TRAINING_CACHE: dict[tuple[int, int, int], tuple[Any, Any, TrainingMemory]] = {}


def _training_memory(program: Any, plan: Any, kernels: Sequence[Any]) -> TrainingMemory:
    graph = program.graph
    n = len(graph.ops)
    parsed = [names.parse(op.name_stack) for op in graph.ops]
    phase = [p for p, _, _ in parsed]
    block = [block_index(layer) for _, layer, _ in parsed]
    roots = liveness.alias_roots(graph)
    root = lambda v: roots.get(v, v)  # noqa: E731
    recomputing = _recomputing_kernels(program, kernels)
    spans = liveness.live_spans(graph, None, plan.live_ranges, {v: max(at) for v, at in recomputing.items()})
    ranged = frozenset(plan.live_ranges or ())
    dropped = (transient_values(program, kernels) - ranged) | frozenset((plan.placement or {}).keys())

    def size(v: int) -> float:
        return 0.0 if v in dropped else plan.nbytes(program, v)

    peak = float(main_memory_liveness(program, plan, kernels).peak_bytes)
    bwd = [i for i, p in enumerate(phase) if p == "backward"]
    training = bool(bwd)
    inputs = set(graph.inputs)

    # state: inputs the step returns updated (matched to the outputs of their shape and dtype, in order)
    queue: dict[tuple, list[int]] = {}
    for v in graph.inputs:
        t = graph.values[v]
        queue.setdefault((tuple(t.shape), str(t.dtype)), []).append(v)
    state: set[int] = set()
    aliased: set[int] = set()
    for o in graph.outputs:
        ro = root(o)
        if ro in inputs:
            continue
        t = graph.values[o]
        q = queue.get((tuple(t.shape), str(t.dtype)))
        if q:
            state.add(q.pop(0))
            aliased.add(ro)
    readers: dict[int, list[int]] = {}
    for op in graph.ops:
        for v in op.operands:
            readers.setdefault(root(v), []).append(op.id)
    for v, at in sorted(recomputing.items()):      # a kernel recomputing a producer from v reads v where it runs
        readers.setdefault(root(v), []).extend(at)
    params = {v for v in state if any(phase[o] == "forward" for o in readers.get(v, ()))}
    data_inputs = inputs - state

    fwd_block_pos = [i for i in range(n) if phase[i] == "forward" and block[i] is not None]
    bwd_block_pos = [i for i in bwd if block[i] is not None]
    present = tuple(sorted({block[i] for i in fwd_block_pos}))
    nb = len(present) or 1
    lo_f, hi_f = (fwd_block_pos[0], fwd_block_pos[-1]) if fwd_block_pos else (n, -1)
    lo_b, hi_b = (bwd_block_pos[0], bwd_block_pos[-1]) if bwd_block_pos else (n, -1)

    def side_of_op(i: int) -> str:
        """'block', 'first' (embedding side) or 'last' (head side) for the op at position ``i``."""
        if block[i] is not None:
            return "block"
        if not fwd_block_pos:
            return "first"
        if phase[i] == "backward":
            return "first" if i > hi_b else "last"
        return "first" if i < lo_f else "last"

    sums = {k: {"block": 0.0, "first": 0.0, "last": 0.0} for k in ("param", "opt", "copies", "acts")}

    # parameters by block (their name), or by where the forward pass reads them; optimizer state follows its
    # parameter by path; a parameter read on both sides (a tied embedding) is held by both end stages, as Megatron
    # keeps a copy of the word embeddings on the last stage
    where: dict[tuple[str, ...], tuple[str, ...]] = {}
    names_of = dict(zip(graph.inputs, graph.input_names))
    for v in sorted(params):
        keys = _input_keys(names_of.get(v, ""))
        b = next((block_index(k) for k in keys if block_index(k) is not None), None)
        if b is not None and fwd_block_pos:
            sides: tuple[str, ...] = ("block",)
        else:
            fw = {side_of_op(o) for o in readers.get(v, ()) if phase[o] == "forward"} - {"block"}
            sides = tuple(sorted(fw)) or ("first",)
        where[keys] = sides
        for s in sides:
            sums["param"][s] += size(v)
    for v in sorted(state - params):
        keys = _input_keys(names_of.get(v, ""))
        sides = next((where[keys[i:]] for i in range(len(keys)) if keys[i:] in where), None)
        if sides is None:
            b = next((block_index(k) for k in keys if block_index(k) is not None), None)
            sides = ("block",) if b is not None and fwd_block_pos else ("first",)
        for s in sides:
            sums["opt"][s] += size(v)

    # saved values: made before the backward pass starts and in memory when it does
    saved: set[int] = set()
    grads: set[int] = set()
    listed: list[tuple[int, float, str, str]] = []
    if training:
        start, end = bwd[0], bwd[-1]
        tainted = set(data_inputs)
        for op in graph.ops:
            if any(root(v) in tainted for v in op.operands):
                tainted.update(op.results)
                tainted.update(root(r) for r in op.results)
        for op in graph.ops:
            if op.id >= start:
                break
            for r in op.results:
                if root(r) != r or r in aliased or r in saved:
                    continue
                if any(s < start <= e for s, e in spans.get(r, ())):
                    saved.add(r)
                    # a saved value belongs to where the backward pass first reads it (a block's input, made by the
                    # block before it or by the embedding, is held for this block; the last block's output for the
                    # head), else (never read again: an output) to the side that made it
                    readers_late = sorted(o for o in readers.get(r, ()) if o >= start)
                    side = side_of_op(readers_late[0]) if readers_late else side_of_op(op.id)
                    late = readers_late[:1] if side == "block" else []
                    kind = "acts" if r in tainted else "copies"
                    sums[kind][side] += size(r)
                    if size(r):
                        listed.append((r, size(r), "activation" if kind == "acts" else "weight copy",
                                       f"{'h' if side != 'block' else ''}{side if side != 'block' else ''}"
                                       f"{block[late[0]] if late else ''}"))
        for i in range(start, end + 1):
            for r in graph.ops[i].results:
                if root(r) == r and r not in aliased and any(e > end for _, e in spans.get(r, ())):
                    grads.add(r)

    # data the backward pass of a block reads (a block's input given as an argument) is that block's activation
    data = 0.0
    for v in sorted(data_inputs):
        if training and any(o >= bwd[0] and block[o] is not None for o in readers.get(v, ())):
            sums["acts"]["block"] += size(v)
        else:
            data += size(v)

    # the working set: everything else in memory, per position
    delta = [0.0] * (n + 2)
    skip = inputs | aliased | saved | grads
    for v, intervals in spans.items():
        if v in skip:
            continue
        b = size(v)
        if not b:
            continue
        for s, e in intervals:
            delta[s] += b
            delta[min(e, n) + 1] -= b
    work = {"block": 0.0, "first": 0.0, "last": 0.0, "opt": 0.0}
    cur = 0.0
    last_bwd = bwd[-1] if bwd else -1
    for i in range(n):
        cur += delta[i]
        key = "opt" if (training and i > last_bwd and phase[i] != "backward") else side_of_op(i)
        work[key] = max(work[key], cur)
    if not training:
        work = {"block": peak, "first": peak, "last": peak, "opt": 0.0}

    gathered = {"block": {}, "first": {}, "last": {}}
    for e in plan.extra_kernels:
        if not e.name.startswith("all_gather") or e.phase not in ("forward", "backward"):
            continue
        b = block_index(e.layer)
        side = "block" if b is not None else ("first" if e.after_op < 0 or side_of_op(e.after_op) == "first" else "last")
        k = (b, e.phase)
        gathered[side][k] = gathered[side].get(k, 0.0) + float(e.work.collective_bytes)

    def split(kind: str) -> Split:
        s = sums[kind]
        return Split(s["block"] / nb, s["first"], s["last"])

    param = split("param")
    return TrainingMemory(
        training=training, blocks=present, parameters=param,
        gradients=param if training else Split(), optimizer=split("opt"), weight_copies=split("copies"),
        activations=split("acts"), working=Split(work["block"], work["first"], work["last"]),
        gathered=Split(*(max(gathered[s].values(), default=0.0) for s in ("block", "first", "last"))),
        optimizer_working=work["opt"], data=data, program_peak_bytes=peak,
        saved=tuple(sorted(listed, key=lambda x: (-x[1], x[0]))))
