"""Combining inserted collectives into buckets, as XLA's collective combiners and DDP's gradient buckets do.

Why: a data-parallel step reduces one gradient per parameter tensor; launched one by one, the small ones pay a
collective's latency each (a few to tens of microseconds) and never reach the bandwidth of a large message.
XLA combines independent all-reduces, reduce-scatters and all-gathers of the same kind over the same devices
into one collective of up to 30 MiB (``xla_gpu_all_reduce_combine_threshold_bytes`` and its siblings,
``kDefaultAllReduceCombineThreshold`` = 30 MiB); PyTorch DDP reduces gradients in 25 MiB buckets.

What is combined: collectives of one kind, over the same mesh axes (so the same group and network), with the
same element type and phase, consecutive in program order, each executed as often as the others (never across a
loop boundary), as long as no member's result is needed before the last member's input exists (the combined
collective runs after the last member's producer and before the first member's reader). That is the gradient
reductions of a backward pass (read only by the optimizer) and FSDP's weight gathers, never the tensor-parallel
all-reduces on the critical path, each of which the next layer waits for. A bucket closes when the next member
would take it past ``bucket_bytes`` (per device, in the payload convention of ``propagate.Inserted``).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from .propagate import OUTPUT, Inserted

COMBINED_KINDS = frozenset({"all_reduce", "reduce_scatter", "all_gather"})
XLA_COMBINE_THRESHOLD_BYTES = 30 * 1024 * 1024     # XLA's default for all three kinds (GPU and CPU)


def combine(collectives: Sequence[Inserted], bucket_bytes: float, weights: Sequence[float] | None = None
            ) -> tuple[Inserted, ...]:
    """``collectives`` with the combinable ones merged into buckets of at most ``bucket_bytes`` (0: unchanged).
    ``weights``: executions per op (``Program.weights``), so that members run equally often. A combined
    collective carries the members' summed bytes and work, the last member's position, layer and overlap flag,
    and the first reader of any member as its consumer."""
    if bucket_bytes <= 0:
        return tuple(collectives)
    order = sorted(range(len(collectives)), key=lambda i: (collectives[i].after_op, i))
    out: list[tuple[int, Inserted]] = []          # (position in the original order of the bucket's first member)
    open_: dict[tuple, tuple[int, list[Inserted]]] = {}

    def runs(c: Inserted) -> float:
        return 1.0 if weights is None or c.after_op < 0 else float(weights[c.after_op])

    def reader(c: Inserted) -> float:
        return math.inf if c.consumer == OUTPUT else float(c.consumer)

    def close(key: tuple) -> None:
        first, members = open_.pop(key)
        out.append((first, _merged(members)))

    for i in order:
        c = collectives[i]
        if c.kind not in COMBINED_KINDS or c.group_size <= 1:
            out.append((i, c))
            continue
        key = (c.kind, c.axes, c.group_size, c.group_stride, c.dtype, c.phase, runs(c))
        if key in open_:
            first, members = open_[key]
            fits = sum(m.payload_bytes for m in members) + c.payload_bytes <= bucket_bytes
            independent = min(reader(m) for m in members) > c.after_op
            if fits and independent:
                members.append(c)
                continue
            close(key)
        open_[key] = (i, [c])
    for key in list(open_):
        close(key)
    out.sort(key=lambda x: (x[1].after_op, x[0]))
    return tuple(c for _, c in out)


def _merged(members: list[Inserted]) -> Inserted:
    if len(members) == 1:
        return members[0]
    last = members[-1]
    return replace(last, payload_bytes=sum(m.payload_bytes for m in members),
                   members=tuple(b for m in members for b in (m.members or (m.payload_bytes,))),
                   in_bytes=sum(m.in_bytes for m in members), out_bytes=sum(m.out_bytes for m in members),
                   consumer=min((m.consumer for m in members if m.consumer != OUTPUT), default=OUTPUT),
                   reason=f"{len(members)} combined ({members[0].reason}; ...; {last.reason})")
