"""Resharding: the collectives that turn one sharding of a tensor into another.

Per mesh axis, what changes and what a partitioner does about it (GSPMD / Shardy do the same):
- pending partial sum over axis a, target splits a dim over a -> reduce-scatter over a;
- pending partial sum over a, target does not use a            -> all-reduce over a;
- a splits dim d, target splits dim e != d over a               -> all-to-all over a;
- a splits dim d, target does not use a                         -> all-gather over a;
- target splits a dim over an axis the source replicates        -> local slice (no communication).
Steps run in the order that moves the fewest bytes: slices first, then reductions (a reduce-scatter before
an all-reduce of the other axes), all-to-alls, all-gathers. Bytes per device follow the counting convention of ``explorer/costs/rules/collectives.py``
(all-reduce / reduce-scatter / all-to-all: the local input; all-gather: the gathered local output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .spec import Mesh, Spec


@dataclass(frozen=True)
class Step:
    """One collective of a reshard, per device."""

    kind: str                    # all_reduce, reduce_scatter, all_gather, all_to_all, collective_permute
    axes: tuple[str, ...]
    payload_bytes: float         # per device, in the Work convention above
    in_bytes: float              # local bytes before
    out_bytes: float             # local bytes after
    group_size: int
    group_stride: int


def local_bytes(shape: Sequence[int], itemsize: float, spec: Spec, mesh: Mesh) -> float:
    return float(math.prod(spec.local_shape(shape, mesh)) * itemsize)


def reshard(shape: Sequence[int], itemsize: float, src: Spec, dst: Spec, mesh: Mesh,
            partial_itemsize: float | None = None) -> list[Step]:
    """The collectives that take a tensor (global ``shape``) from ``src`` to ``dst`` sharding.

    ``partial_itemsize``: bytes per element at which a pending partial sum is reduced (the
    producer's dtype, which may be narrower than this value's after a convert).
    """
    if src.rank != dst.rank:
        raise ValueError(f"reshard between ranks {src.rank} and {dst.rank}: {src} -> {dst}")
    steps: list[Step] = []
    cur = Spec(src.dims, src.partial)
    dst_axes = {a: d for d, axes in enumerate(dst.dims) for a in axes}
    src_axes = {a: d for d, axes in enumerate(src.dims) for a in axes}

    # 1. free local slices: axes the target uses that the source neither splits nor reduces over
    new = [a for a in dst_axes if a not in src_axes and a not in src.partial]
    if new:
        cur = _add_axes(cur, {a: dst_axes[a] for a in new}, dst)

    # 2. pending reductions
    keep_partial = tuple(a for a in cur.partial if a in dst.partial)
    rs = tuple(a for a in cur.partial if a not in dst.partial and a in dst_axes and a not in src_axes)
    ar = tuple(a for a in cur.partial if a not in dst.partial and a not in rs)
    isz = partial_itemsize or itemsize
    # the reduce-scatter first, then the all-reduce of the remaining axes on the scattered shard (1/n of the bytes):
    # the same sums, as XLA decomposes a reduction whose result is split over some of its axes (a gradient summed
    # over data x fsdp and kept split over fsdp: reduce-scatter in the slice, all-reduce of the shard across slices)
    if rs:
        before = local_bytes(shape, isz, cur, mesh)
        cur = _add_axes(Spec(cur.dims, keep_partial + ar), {a: dst_axes[a] for a in rs}, dst)
        after = local_bytes(shape, isz, cur, mesh)
        steps.append(_step("reduce_scatter", rs, before, before, after, mesh))
    if ar:
        b = local_bytes(shape, isz, cur, mesh)
        steps.append(_step("all_reduce", ar, b, b, b, mesh))
        cur = Spec(cur.dims, tuple(a for a in cur.partial if a not in ar))

    # 3. axes that move to another dimension
    moved = tuple(a for a, d in src_axes.items() if a in dst_axes and dst_axes[a] != d)
    if moved:
        before = local_bytes(shape, itemsize, cur, mesh)
        cur = _add_axes(cur.without(moved), {a: dst_axes[a] for a in moved}, dst)
        steps.append(_step("all_to_all", moved, before, before, local_bytes(shape, itemsize, cur, mesh), mesh))

    # 4. axes the target drops
    gone = tuple(a for a in src_axes if a not in dst_axes)
    if gone:
        before = local_bytes(shape, itemsize, cur, mesh)
        cur = cur.without(gone)
        after = local_bytes(shape, itemsize, cur, mesh)
        steps.append(_step("all_gather", gone, after, before, after, mesh))

    # same axes per dimension in another major/minor order: an all-to-all reorders the tiles
    if cur.dims != dst.dims:
        b = local_bytes(shape, itemsize, cur, mesh)
        axes = tuple(a for d, e in zip(cur.dims, dst.dims) if d != e for a in e)
        steps.append(_step("all_to_all", axes, b, b, b, mesh))
    return steps


def _add_axes(spec: Spec, where: dict[str, int], order: Spec | None = None) -> Spec:
    """Add axis ``a`` to dim ``where[a]``, in the major/minor position it has in ``order``."""
    dims = [list(d) for d in spec.dims]
    for a, d in where.items():
        if a not in dims[d]:
            dims[d].append(a)
    if order is not None:
        for d, axes in enumerate(dims):
            rank = {a: i for i, a in enumerate(order.dims[d])}
            axes.sort(key=lambda a: rank.get(a, len(rank)))
    return Spec(tuple(tuple(d) for d in dims), tuple(a for a in spec.partial if a not in where))


def _step(kind: str, axes: tuple[str, ...], payload: float, before: float, after: float, mesh: Mesh) -> Step:
    n, stride = mesh.group(axes)
    return Step(kind=kind, axes=axes, payload_bytes=float(payload), in_bytes=float(before), out_bytes=float(after),
                group_size=n, group_stride=stride)
