"""Collectives: bytes per device moved over the interconnect; the timing model
chooses an algorithm (ring, tree, in-network reduction) for the target."""
from __future__ import annotations

from ..registry import rule
from ..work import Work
from ._common import nbytes


def _group_size(op) -> int:
    groups = op.attrs.get("replica_groups")
    if isinstance(groups, (list, tuple)) and groups and isinstance(groups[0], (list, tuple)):
        return max(1, len(groups[0]))
    pairs = op.attrs.get("source_target_pairs")
    if isinstance(pairs, (list, tuple)) and pairs:
        return 2
    return 1


def _group_stride(op) -> int:
    """Device-number distance between neighbours of the first replica group when they are evenly spaced (a
    data-parallel group of a data x model mesh: the model axis's size), else 1. Says which network the group rides."""
    groups = op.attrs.get("replica_groups")
    listed = isinstance(groups, (list, tuple)) and groups and isinstance(groups[0], (list, tuple))
    if not listed or len(groups[0]) < 2:
        return 1
    first = sorted(groups[0])
    steps = {b - a for a, b in zip(first, first[1:])}
    return steps.pop() if len(steps) == 1 and min(first[1:]) > 0 else 1


def _collective(kind: str, payload: float, op, ins, outs, flops: float = 0.0) -> Work:
    return Work(vector_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs), collective_bytes=payload,
                collective=kind, group_size=_group_size(op), group_stride=_group_stride(op),
                dtype=(ins or outs)[0].dtype if (ins or outs) else "")


@rule("stablehlo.all_reduce")
def all_reduce(op, ins, outs) -> Work:
    # payload = the full buffer each device contributes; (n-1) reductions per element in total
    n = _group_size(op)
    return _collective("all_reduce", nbytes(ins), op, ins, outs, flops=sum(t.elements for t in ins) * (n - 1) / max(n, 1))


@rule("stablehlo.all_gather")
def all_gather(op, ins, outs) -> Work:
    # payload = the gathered result per device
    return _collective("all_gather", nbytes(outs), op, ins, outs)


@rule("stablehlo.reduce_scatter")
def reduce_scatter(op, ins, outs) -> Work:
    # payload = the full input per device
    return _collective("reduce_scatter", nbytes(ins), op, ins, outs, flops=sum(t.elements for t in outs))


@rule("stablehlo.all_to_all")
def all_to_all(op, ins, outs) -> Work:
    return _collective("all_to_all", nbytes(ins), op, ins, outs)


@rule("stablehlo.collective_permute")
def collective_permute(op, ins, outs) -> Work:
    return _collective("collective_permute", nbytes(ins), op, ins, outs)


@rule("stablehlo.collective_broadcast")
def collective_broadcast(op, ins, outs) -> Work:
    return _collective("collective_broadcast", nbytes(ins), op, ins, outs)
