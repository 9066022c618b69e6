"""Pipeline parallelism priced: split a program's layers into stages over a mesh axis and price the schedule.

The program is one *microbatch* of a training step, already partitioned over the other axes (tensor,
data, sequence parallel: run ``shard`` first), priced per device by ``explorer.estimate``. This module
assigns its kernels to ``stages`` x ``virtual`` model chunks by layer (repeated blocks ``h_3``,
``layers_3``, ``Block_3`` are split evenly; what comes before the first block, the embedding, goes
to the first stage; what comes after, the head and loss, to the last), and prices a step of
``microbatches`` microbatches:

- GPipe and 1F1B: ``(m + p - 1)`` slots of the slowest stage's forward+backward: the bubble is the
  fraction ``(p - 1) / (m + p - 1)`` of the schedule (1F1B only holds fewer microbatches' activations);
- interleaved 1F1B (``virtual`` = v chunks per device, Megatron): the bubble shrinks to
  ``(p - 1) / v`` stage-slots, ``(p - 1) / (v m + p - 1)`` of the schedule, for v times the transfers;
- stage-to-stage transfers: each boundary sends a microbatch's activations forward and their
  gradients back, as a ``collective_permute`` between neighbouring stages on the network the pipeline
  axis rides (stride: the devices of one stage, so usually the scale-out network). Steady-state sends
  overlap compute; the fill and drain each wait for ``(p - 1) * v`` of them;
- once per step, after the flush: the optimizer (each stage updates its own layers) and the data
  parallel gradient reduction of the stage's parameters (exposed, as in Megatron's PTD-P).

When the model's blocks are identical, the program may be built with fewer of them: ``blocks`` gives
the real count and the per-block time of the program is scaled to it (said in ``notes``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from tabulate import tabulate

from passes.fusion import kernels_of
from passes.fusion_ops import MATMUL

from ..graph import names
from ..model.collectives import collective_seconds_of
from ..model.timing import _max
from ..model.memory import StageMemory, block_index, in_flight, training_memory
from ..report.units import fmt_bytes, fmt_seconds
from .price import priced_items

SCHEDULES = ("gpipe", "1f1b", "interleaved")


def bubble_fraction(stages: int, microbatches: int, virtual: int = 1) -> float:
    """Idle fraction of a balanced pipeline schedule: ``(p - 1) / (v m + p - 1)``."""
    _check(stages, microbatches, virtual)
    p, m, v = stages, microbatches, virtual
    return (p - 1) / (v * m + p - 1)


def _check(stages: int, microbatches: int, virtual: int) -> None:
    for name, val in (("stages", stages), ("microbatches", microbatches), ("virtual", virtual)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"pipeline {name} must be a positive int, got {val!r}")


@dataclass(frozen=True)
class ScheduleTime:
    seconds: float              # the schedule (fill, steady state, drain), without the once-per-step work
    busy_seconds: float         # the slowest stage's own forward+backward over all microbatches
    bubble_seconds: float       # idle time of that stage, waiting for other stages' compute
    p2p_exposed_seconds: float  # transfers on the critical path (fill and drain)

    @property
    def bubble_fraction(self) -> float:
        return self.bubble_seconds / self.seconds if self.seconds else 0.0


def schedule_seconds(stage_forward_s: Sequence[float], stage_backward_s: Sequence[float], microbatches: int,
                     schedule: str = "1f1b", virtual: int = 1, p2p_s: float = 0.0) -> ScheduleTime:
    """Time of one pipelined step for per-microbatch stage times (one entry per device's stage).

    Balanced stages give ``(m + p - 1) * (t_f + t_b)`` for GPipe / 1F1B and
    ``(m + (p - 1) / v) * (t_f + t_b)`` interleaved; unbalanced ones are paced by the slowest stage in
    the steady state, and the fill/drain pass through every stage once. The times may also be numpy arrays
    (one entry per hardware variant of a sweep): each entry is then the scalar result, bit for bit.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    p = len(stage_forward_s)
    if p == 0 or len(stage_backward_s) != p:
        raise ValueError(f"need one forward and one backward time per stage, got {len(stage_forward_s)} and "
                         f"{len(stage_backward_s)}")
    v = virtual if schedule == "interleaved" else 1
    _check(p, microbatches, v)
    if schedule != "interleaved" and virtual != 1:
        raise ValueError(f"virtual={virtual} needs schedule 'interleaved', got {schedule!r}")
    if schedule == "interleaved" and microbatches % p:
        raise ValueError(f"interleaved 1F1B needs microbatches ({microbatches}) divisible by stages ({p})")
    m = microbatches
    per = [f + b for f, b in zip(stage_forward_s, stage_backward_s)]
    slowest = _largest(per)
    # steady state: m slots of the slowest stage (a send that outlasts the compute paces it instead)
    steady = m * _max(slowest, p2p_s)
    # fill + drain: every other stage's work once, in 1/v-sized chunks when interleaved
    ramp = (_total(per) - slowest) / v if p > 1 else 0.0
    p2p_exposed = 2 * (p - 1) * v * p2p_s if p > 1 else 0.0
    total = steady + ramp + p2p_exposed
    busy = m * slowest
    return ScheduleTime(seconds=total, busy_seconds=busy, bubble_seconds=total - busy - p2p_exposed,
                        p2p_exposed_seconds=p2p_exposed)


def _total(values):
    """Left-to-right sum (floats or arrays of variants alike, on every Python version)."""
    acc = 0.0
    for x in values:
        acc = acc + x
    return acc


def _largest(values):
    acc = values[0]
    for x in values[1:]:
        acc = _max(acc, x)
    return acc


def _choose(cond, if_true: Callable[[], Any], if_false: Callable[[], Any]):
    """``if_true() if cond else if_false()`` on a bool; on an array of variants both sides (no division warnings)."""
    if isinstance(cond, np.ndarray):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(cond, if_true(), if_false())
    return if_true() if cond else if_false()


# -- a program on a pipeline ---------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineEstimate:
    """A pipelined training step on one device of the slowest stage."""

    stages: int
    microbatches: int
    schedule: str
    virtual: int
    stage_forward_s: tuple[float, ...]      # per microbatch
    stage_backward_s: tuple[float, ...]
    step_extra_s: float                     # once per step on the slowest stage: optimizer + gradient reduction
    p2p_s: float                            # one boundary transfer (activations of one microbatch)
    p2p_bytes: float
    schedule_time: ScheduleTime
    memory_per_device_bytes: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    memory: StageMemory | None = None       # the fullest stage's memory by what holds it (training steps)

    @property
    def seconds(self) -> float:
        return self.schedule_time.seconds + self.step_extra_s

    @property
    def bubble_seconds(self) -> float:
        return self.schedule_time.bubble_seconds

    @property
    def bubble_fraction(self) -> float:
        return self.schedule_time.bubble_seconds / self.seconds if self.seconds else 0.0

    def table(self) -> str:
        rows = [["schedule", f"{self.schedule} p={self.stages} m={self.microbatches} v={self.virtual}"],
                ["step time", fmt_seconds(self.seconds)], ["  bubble", f"{fmt_seconds(self.bubble_seconds)} "
                                                                      f"({self.bubble_fraction:.1%})"],
                ["  transfers exposed", fmt_seconds(self.schedule_time.p2p_exposed_seconds)],
                ["  optimizer + grad sync", fmt_seconds(self.step_extra_s)],
                ["stage fwd+bwd / microbatch", ", ".join(fmt_seconds(f + b) for f, b in
                                                         zip(self.stage_forward_s, self.stage_backward_s))],
                ["boundary transfer", f"{fmt_bytes(self.p2p_bytes)} in {fmt_seconds(self.p2p_s)}"],
                ["memory per device", fmt_bytes(self.memory_per_device_bytes)]]
        return tabulate(rows, tablefmt="plain") + ("\n" + "\n".join(self.notes) if self.notes else "")


def block_of(layer: str) -> int | None:
    """Index of the repeated block a layer path belongs to (``GPT2/h_3/mlp`` -> 3), or None."""
    return block_index(layer)


def price_pipeline(estimate, target: Any, stages: int, microbatches: int, schedule: str = "1f1b",
                   virtual: int = 1, blocks: int | None = None, stage_stride: int = 1,
                   job_devices: int = 0, microbatch_scale: float = 1.0,
                   step_axes: Sequence[str] = ("data",)) -> PipelineEstimate:
    """Price a pipelined step from the per-device ``Estimate`` of one microbatch.

    **Arguments**
    - ``estimate``: ``explorer.estimate`` of the microbatch program (sharded over the other axes).
    - ``stages``, ``microbatches``, ``schedule`` (gpipe | 1f1b | interleaved), ``virtual`` (chunks per device).
    - ``blocks``: the real model's number of identical blocks when the program was built with fewer.
    - ``stage_stride``: devices per stage (the pipeline axis is outermost), ``job_devices``: all devices.
    - ``microbatch_scale``: factor on forward/backward times (``1/m`` when the program holds the whole batch
      rather than one microbatch: linear scaling, small-batch efficiency losses ignored).
    - ``step_axes``: data-parallel mesh axes. Inserted reductions over them (gradient all-reduce /
      reduce-scatter) run once per step, after the flush, unless the parameters are sharded over them (FSDP /
      ZeRO-3: a gradient is reduce-scattered in every microbatch, at full size); gathers over them (FSDP weights)
      run once per microbatch at full size (``microbatch_scale`` does not shrink a weight). A reduction over a
      data-parallel axis and others (a gradient partial over ``data`` and ``seq`` or ``model``) is a gradient's too,
      accumulated over the microbatches and reduced once.

    Recomputation (``remat``'s ``recompute`` kernels) runs in every microbatch's backward pass. Once-per-step work
    (optimizer, gradient reductions) is split by the block it belongs to (its layer, or the parameters it
    updates), so a stage pays for its own blocks: the program's per-block share times the stage's blocks.
    Memory per device: ``explorer.model.memory.training_memory`` per stage (state as sharded, activations of the
    microbatches in flight under the schedule), the fullest stage reported.
    """
    layout = pipeline_layout(estimate, stages, microbatches, schedule, virtual, blocks, stage_stride, job_devices,
                             microbatch_scale, step_axes)
    t = layout.timed(target, [k.seconds for k in estimate.kernels], estimate.seconds, estimate.hidden_comm_seconds)
    notes = list(layout.notes)
    if t.recompute_s:
        notes.insert(layout.recompute_note_at,
                     f"recomputation {fmt_seconds(t.recompute_s * microbatch_scale)} per microbatch, in each backward pass")
    return PipelineEstimate(stages=stages, microbatches=microbatches, schedule=schedule, virtual=layout.virtual,
                            stage_forward_s=tuple(t.stage_forward_s), stage_backward_s=tuple(t.stage_backward_s),
                            step_extra_s=t.step_extra_s, p2p_s=t.p2p_s, p2p_bytes=layout.p2p_bytes,
                            schedule_time=t.schedule_time, memory_per_device_bytes=layout.memory_per_device_bytes,
                            notes=tuple(notes), memory=layout.memory)


@dataclass(frozen=True)
class PipelineTimes:
    """The knob-dependent figures of a pipelined step: floats for one target, numpy arrays (one entry per
    variant) for a sweep's view of many."""

    stage_forward_s: tuple
    stage_backward_s: tuple
    step_extra_s: Any
    p2p_s: Any
    schedule_time: ScheduleTime
    recompute_s: Any

    @property
    def seconds(self):
        return self.schedule_time.seconds + self.step_extra_s

    @property
    def stage_seconds(self):
        """The slowest stage's forward + backward time per microbatch."""
        return _largest([f + b for f, b in zip(self.stage_forward_s, self.stage_backward_s)])

    @property
    def bubble_fraction(self):
        """``PipelineEstimate.bubble_fraction``: the bubble's share of the step (0 for an empty step)."""
        seconds = self.seconds
        return _choose(seconds != 0, lambda: self.schedule_time.bubble_seconds / seconds, lambda: 0.0)


@dataclass(frozen=True)
class PipelineLayout:
    """Everything ``price_pipeline`` reads from the estimate and its plan that no target knob changes: which part
    of the schedule each row's time goes to, the stages' blocks, the boundary transfer's bytes and the memory per
    device. A sweep builds it once and times it on arrays of variants (``timed``)."""

    stages: int
    microbatches: int
    schedule: str
    virtual: int
    row_parts: tuple[tuple[str, str, bool, bool], ...]   # per row: (part, phase or side, scaled, recompute)
    n_prog: int
    n_real: int
    stage_blocks: tuple[int, ...]
    microbatch_scale: float
    p2p_bytes: float
    stage_stride: int
    job_devices: int
    memory_per_device_bytes: float
    memory: StageMemory | None
    notes: tuple[str, ...]
    recompute_note_at: int            # where the recomputation note goes among ``notes``

    def timed(self, target: Any, row_seconds: Sequence[Any], seconds: Any, hidden_comm_seconds: Any) -> PipelineTimes:
        """The schedule's times from the rows' times (``KernelRow.seconds``), the microbatch step's time and its
        hidden communication, on ``target`` (a ``Target``, or a sweep's ``ArrayTarget`` with arrays for all three)."""
        n_prog, n_real, stages, v = self.n_prog, self.n_real, self.stages, self.virtual
        per_block = {"forward": 0.0, "backward": 0.0}
        first = {"forward": 0.0, "backward": 0.0}
        last = {"forward": 0.0, "backward": 0.0}
        once = {"block": 0.0, "first": 0.0, "last": 0.0, "rest": 0.0}
        recompute = 0.0
        for (part, key, scaled, recomputed), t in zip(self.row_parts, row_seconds):
            if recomputed:
                recompute = recompute + t
            if part == "once":
                once[key] = once[key] + t
                continue
            t = t * self.microbatch_scale if scaled else t
            if part == "block":
                per_block[key] = per_block[key] + t / n_prog
            elif part == "first":
                first[key] = first[key] + t
            else:
                last[key] = last[key] + t
        # the microbatch program's schedule hides some communication behind compute (``hidden_comm_seconds``: its
        # gradient reductions, overlapped with the backward pass) and overlaps or waits between other rows. What it
        # hides, and any further overlap, comes off the once-per-step work (the reductions overlap the last
        # microbatch's backward pass); what it waits (launches, idle engines) is spread over every part
        total_once = _total(once.values())
        exposed = _total(row_seconds) - hidden_comm_seconds
        rest = seconds - exposed
        overlapped = (rest >= 0) & (exposed > 0)         # bools for one target, arrays for a sweep's variants
        ratio = _choose(overlapped, lambda: seconds / exposed, lambda: 1.0)
        kept = total_once - hidden_comm_seconds
        kept = _choose(overlapped, lambda: kept, lambda: kept + rest)
        hidden_share = _choose(total_once > 0, lambda: _max(0.0, kept) / total_once, lambda: 1.0)
        fwd, bwd, extra = [], [], []
        attributed = once["block"] * (n_real / n_prog if n_prog else 1.0) + once["first"] + once["last"]
        for s in range(stages):
            blocks = self.stage_blocks[s]
            f = per_block["forward"] * blocks
            b = per_block["backward"] * blocks
            e = once["block"] / n_prog * blocks if n_prog else (once["block"] if s == 0 else 0.0)
            if s == 0:
                f, b, e = f + first["forward"], b + first["backward"], e + once["first"]
            if s == stages - 1:
                f, b, e = f + last["forward"], b + last["backward"], e + once["last"]
            # unattributed once-per-step work (a loss all-reduce, step counters) in proportion to the rest
            e = e + once["rest"] * _choose(attributed > 0, lambda: e / attributed, lambda: 1.0 / stages)
            fwd.append(f * ratio)
            bwd.append(b * ratio)
            extra.append(e * hidden_share * ratio)
        # each stage updates its own blocks and reduces their gradients after the flush; the slowest one ends the step
        step_extra = _largest(extra)
        p2p_s = 0.0
        if stages > 1 and self.p2p_bytes:
            p2p_s = collective_seconds_of(target, "collective_permute", self.p2p_bytes, 2, max(1, self.stage_stride),
                                          self.job_devices or self.stage_stride * stages)
        st = schedule_seconds(fwd, bwd, self.microbatches, self.schedule, v, p2p_s)
        return PipelineTimes(stage_forward_s=tuple(fwd), stage_backward_s=tuple(bwd), step_extra_s=step_extra,
                             p2p_s=p2p_s, schedule_time=st, recompute_s=recompute)


def pipeline_layout(estimate, stages: int, microbatches: int, schedule: str = "1f1b", virtual: int = 1,
                    blocks: int | None = None, stage_stride: int = 1, job_devices: int = 0,
                    microbatch_scale: float = 1.0, step_axes: Sequence[str] = ("data",)) -> PipelineLayout:
    """The knob-independent part of ``price_pipeline`` (same arguments)."""
    _check(stages, microbatches, virtual)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    v = virtual if schedule == "interleaved" else 1
    notes: list[str] = []
    rows = estimate.kernels
    present = sorted({b for b in (block_of(k.layer) for k in rows) if b is not None})
    n_prog = len(present)
    n_real = blocks or n_prog
    if n_prog == 0:
        notes.append("no repeated blocks found: stages split the kernels in program order")
    chunks = stages * v
    if n_real % chunks:
        notes.append(f"{n_real} blocks over {chunks} chunks: stages are uneven")
    parts = _row_parts(estimate, tuple(step_axes), n_prog)
    if n_real != n_prog and n_prog:
        notes.append(f"per-block time measured on {n_prog} blocks, scaled to {n_real}")
    recompute_note_at = len(notes)
    per_stage_blocks = [len(_blocks_of_stage(s, stages, v, n_real)) for s in range(stages)]
    p2p_bytes = _boundary_bytes_of(estimate) * microbatch_scale
    memory, stage_mem, mem_notes = _memory(estimate, stages, microbatches, schedule, v, n_prog, n_real,
                                           per_stage_blocks, microbatch_scale)
    notes.extend(mem_notes)
    return PipelineLayout(stages=stages, microbatches=microbatches, schedule=schedule, virtual=v,
                          row_parts=parts, n_prog=n_prog, n_real=n_real, stage_blocks=tuple(per_stage_blocks),
                          microbatch_scale=microbatch_scale, p2p_bytes=p2p_bytes, stage_stride=stage_stride,
                          job_devices=job_devices, memory_per_device_bytes=memory, memory=stage_mem,
                          notes=tuple(notes), recompute_note_at=recompute_note_at)


def _row_parts(estimate, axes: tuple[str, ...], n_prog: int) -> tuple[tuple[str, str, bool, bool], ...]:
    """Per row of ``estimate``: (part of the schedule, phase or side, scaled by the microbatch, recomputed). The same
    for every schedule and microbatch count: kept on the estimate (a search prices many of them on one)."""
    memo = estimate.__dict__.setdefault("_pipeline_row_parts", {})
    hit = memo.get((axes, n_prog))
    if hit is not None:
        return hit
    rows = estimate.kernels
    program = estimate._program
    items = _items_of(estimate)
    # FSDP: weights gathered over a data-parallel axis for the matmuls that read them (a dropout key gathered over
    # the batch's axis is not a weight)
    fsdp = any(_collective(k)[0] == "all_gather" and set(_collective(k)[1]) <= set(axes) and _collective(k)[1]
               and k.phase in ("forward", "backward") and (items is None or _feeds_a_contraction(program, items[i]))
               for i, k in enumerate(rows))
    owner = _update_owner(program) if program is not None else {}
    kinds = _with_companions(estimate, items, [_row_kind(k, axes, fsdp) for k in rows])
    parts = []
    for k, kind in zip(rows, kinds):
        phase = "backward" if k.phase == "recompute" else k.phase
        recomputed = k.phase == "recompute"
        if kind == "step" or phase not in ("forward", "backward"):
            parts.append(("once", _once_side(k, owner), False, recomputed))
            continue
        b = block_of(k.layer)
        part = "block" if b is not None and n_prog else ("first" if _before_blocks(k) else "last")
        parts.append((part, phase, kind != "weights", recomputed))
    memo[(axes, n_prog)] = out = tuple(parts)
    return out


def _items_of(estimate) -> list | None:
    """The estimate's rows before timing (``priced_items``: what each inserted collective follows and feeds), or None
    when the estimate carries no program and plan."""
    program, plan = estimate._program, estimate._plan
    if program is None or plan is None:
        return None
    items = estimate.__dict__.get("_priced_items") or priced_items(program, plan)
    return items if len(items) == len(estimate.kernels) else None


_LAYOUT_OPS = frozenset(f"stablehlo.{n}" for n in ("convert", "reshape", "transpose", "broadcast_in_dim", "copy"))


def _feeds_a_contraction(program, item, depth: int = 4) -> bool:
    """Whether an inserted collective's result is read by a matmul or convolution (through layout ops and casts)."""
    if item.kind != "extra" or item.extra.before_op is None or item.extra.before_op < 0:
        return False
    graph = program.graph
    users = graph.consumers()
    frontier = [item.extra.before_op]
    for _ in range(depth):
        nxt = []
        for oid in frontier:
            op = graph.ops[oid]
            if op.name in MATMUL:
                return True
            if op.name in _LAYOUT_OPS:
                nxt.extend(u for r in op.results for u in users.get(r, ()) if u >= 0)
        frontier = nxt
    return False


def _with_companions(estimate, items: list | None, kinds: list[str]) -> list[str]:
    """``kinds`` with the companions of each once-per-step gradient reduction made once-per-step too: the
    partitioner may reduce one weight gradient in two collectives between the same two ops (``reduce_scatter`` over
    ``data,model``, then ``all_reduce`` over ``seq`` of its shard under context parallelism). The second one adds
    partial sums of the same gradient, so it accumulates over the microbatches and runs after the flush with the
    first (Megatron reduces gradients over dp x cp once per step)."""
    if items is None or "step" not in kinds:
        return kinds
    ends = lambda it: (it.extra.after_op, it.extra.before_op)   # noqa: E731
    step_ends = {ends(it) for it, kind in zip(items, kinds) if kind == "step" and it.kind == "extra"}
    out = list(kinds)
    for i, (it, k) in enumerate(zip(items, estimate.kernels)):
        if (kinds[i] == "scaled" and it.kind == "extra" and ends(it) in step_ends
                and _collective(k)[0] in ("all_reduce", "reduce_scatter") and k.phase == "backward"):
            out[i] = "step"
    return out


def _boundary_bytes_of(estimate) -> float:
    """``_boundary_bytes``, kept on the estimate."""
    hit = estimate.__dict__.get("_pipeline_boundary_bytes")
    if hit is None:
        hit = estimate.__dict__["_pipeline_boundary_bytes"] = _boundary_bytes(estimate)
    return hit


def _collective(k) -> tuple[str, tuple[str, ...]]:
    """(kind, axes) of an inserted collective row (``all_reduce{data,seq}``), or ("", ())."""
    if k.ops or "{" not in k.name or not k.name.endswith("}"):
        return "", ()
    kind, axes = k.name[:-1].split("{", 1)
    return kind, tuple(a for a in axes.split(",") if a)


def _update_owner(program) -> dict[int, str]:
    """op id -> "block", "first" or "last" for the ops that read a parameter or optimizer-state argument: the side
    of the model whose state they update (by the argument's name: a block's, else the embedding (first stage) or
    the head (last stage) side). Lets the optimizer's once-per-step work follow the blocks of each stage."""
    cached = program.__dict__.get("_update_owner")
    if cached is not None:
        return cached
    graph = program.graph
    side_of_input: dict[int, str] = {}
    for v, name in zip(graph.inputs, graph.input_names):
        keys = [k for k in re.findall(r"\['([^']*)'\]", name)]
        if any(block_of(k) is not None for k in keys):
            side_of_input[v] = "block"
        elif keys:
            low = "/".join(keys).lower()
            side_of_input[v] = "first" if any(s in low for s in _EMBED) else "last"
    # an op that reads no state argument takes the side of what it reads: a gradient made in a block's backward
    # pass, or a value an owned op made (the scaled gradient an update reads after its all-reduce, when the
    # update is a kernel of its own)
    made_by = graph.producers
    out: dict[int, str] = {}
    for op in graph.ops:
        for v in op.operands:
            side = side_of_input.get(v)
            if side is not None:
                out.setdefault(op.id, side)
        if op.id in out:
            continue
        sides = set()
        for v in op.operands:
            p = made_by.get(v)
            if p is None:
                continue
            if p in out:
                sides.add(out[p])
            elif block_of(names.parse(graph.ops[p].name_stack)[1]) is not None:
                sides.add("block")
        if sides:
            out[op.id] = "block" if "block" in sides else sorted(sides)[0]
    program.__dict__["_update_owner"] = out
    return out


def _once_side(k, owner: dict[int, str]) -> str:
    """Which stage pays for a once-per-step row: "block" (each stage for its blocks), "first", "last" or "rest"."""
    if block_of(k.layer) is not None:
        return "block"
    sides = {owner[o] for o in k.ops if o in owner}
    if len(sides) == 1:
        return sides.pop()
    if "block" in sides:
        return "block"
    return "rest"


def _row_kind(k, step_axes: tuple[str, ...], fsdp: bool = False) -> str:
    """"step": a gradient reduction over data-parallel axes (once per step); "weights": a gather of weights over
    them, or under FSDP the reduce-scatter of a gradient (once per microbatch, full size); "scaled": everything
    else (per microbatch, sized by it)."""
    kind, axes = _collective(k)
    if not kind or not axes or not set(axes) & set(step_axes):
        return "scaled"
    if kind in ("all_reduce", "reduce_scatter") and k.phase in ("backward", "optimizer", "other"):
        # a partial sum over a data-parallel axis comes from contracting the batch: a weight gradient. Partial sums
        # add, so the gradient buffer accumulates them over the microbatches and reduces once, after the flush,
        # over all of its axes (a tensor- or context-parallel axis with them: Megatron all-reduces gradients over
        # dp x cp, and a weight gradient left partial over the sequence-parallel axis adds the same way)
        return "weights" if fsdp and kind == "reduce_scatter" and k.phase == "backward" else "step"
    if kind == "all_gather" and set(axes) <= set(step_axes):
        return "weights"
    return "scaled"


def _blocks_of_stage(stage: int, stages: int, v: int, blocks: int) -> list[int]:
    """Blocks held by a device: chunks stage, stage + p, ... of ``blocks / (p v)`` consecutive blocks."""
    chunks = stages * v
    bounds = [round(i * blocks / chunks) for i in range(chunks + 1)]
    out: list[int] = []
    for c in range(stage, chunks, stages):
        out.extend(range(bounds[c], bounds[c + 1]))
    return out


_EMBED = ("embed", "wte", "wpe", "tok", "pos")


def _before_blocks(k) -> bool:
    """Embedding-side work (the first stage's), recognised by its layer's name."""
    name = k.layer.lower()
    return any(s in name for s in _EMBED)


def _boundary_bytes(estimate) -> float:
    """Per-device bytes of the activations crossing from one block to the next (largest boundary)."""
    program, plan = estimate._program, estimate._plan
    if program is None:
        return 0.0
    graph = program.graph
    block_of_op = {}
    for op in graph.ops:
        phase, layer, _ = names.parse(op.name_stack)
        if phase == "forward":
            b = block_of(layer)
            if b is not None:
                block_of_op[op.id] = b
    users = graph.consumers()
    crossing: dict[int, float] = {}
    for oid, b in block_of_op.items():
        for r in graph.ops[oid].results:
            if any(block_of_op.get(u, -1) == b + 1 for u in users.get(r, ())):
                crossing[b] = crossing.get(b, 0.0) + (plan.nbytes(program, r) if plan is not None
                                                      else graph.values[r].nbytes)
    return max(crossing.values(), default=0.0)


def _memory(estimate, stages: int, m: int, schedule: str, v: int, n_prog: int, n_real: int,
            stage_blocks: Sequence[int], microbatch_scale: float):
    """(bytes of the fullest stage, its ``StageMemory`` or None, notes). A training step: per stage, its blocks'
    state and weight copies, the activations of the microbatches in flight (``in_flight``), the working set, from
    ``training_memory``. Anything else (no backward pass): the program's peak, its block share scaled."""
    program, plan = estimate._program, estimate._plan
    if program is None or plan is None:
        return float(estimate.peak_memory_bytes), None, ()
    tm = training_memory(program, plan, kernels_of(program, plan))
    if not tm.training:
        share = max(stage_blocks) / n_real if n_real else 1.0 / stages
        return float(estimate.peak_memory_bytes) * (share * n_real / n_prog if n_prog else 1.0), None, ()
    best: StageMemory | None = None
    for s in range(stages):
        mb = in_flight(schedule, stages, s, m, v)
        sm = tm.stage(stage_blocks[s], first=s == 0, last=s == stages - 1, in_flight=mb,
                      activation_scale=microbatch_scale)
        if best is None or sm.total > best.total:
            best = sm
    assert best is not None
    notes = (f"memory per device {fmt_bytes(best.total)}: "
             + ", ".join(f"{k} {fmt_bytes(x)}" for k, x in best.rows() if x) + " (fullest stage)",)
    return best.total, best, notes
