"""Ops that apply a scalar computation many times: reduce, reduce_window, sort, map,
select_and_scatter, scatter. ``op.body_flops`` is the computation's flops per application."""
from __future__ import annotations

import math

from ..registry import rule
from ..work import Work
from ._common import compute_dtype, nbytes


def _body(op) -> float:
    return op.body_flops or 1.0


@rule("stablehlo.reduce")
def reduce(op, ins, outs) -> Work:
    # (input elements - output elements) applications of the reducer, per reduced operand group
    # (a variadic reducer such as argmax computes all its outputs in one application)
    n_in = max(1, len(ins) // 2)
    reduced = max(0, ins[0].elements - outs[0].elements)
    return Work(vector_flops=reduced * _body(op), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins[:n_in], outs))


@rule("stablehlo.reduce_window")
def reduce_window(op, ins, outs) -> Work:
    # (window elements - 1) applications per output element
    window = math.prod(op.attrs.get("window_dimensions") or (1,))
    n_in = max(1, len(ins) // 2)
    flops = outs[0].elements * max(0, window - 1) * _body(op)
    return Work(vector_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins[:n_in], outs))


@rule("stablehlo.select_and_scatter")
def select_and_scatter(op, ins, outs) -> Work:
    # select over each window of the source, then scatter-add: (window - 1) selects + 1 add per source element
    window = math.prod(op.attrs.get("window_dimensions") or (1,))
    source = ins[1]
    flops = source.elements * (max(0, window - 1) + 1)
    return Work(vector_flops=flops, bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=ins[0].dtype)


@rule("stablehlo.sort")
def sort(op, ins, outs) -> Work:
    # comparison sort: elements * ceil(log2(sorted dimension)) comparator applications
    dim = int(op.attrs.get("dimension", -1))
    size = ins[0].shape[dim] if ins[0].shape else 1
    comparisons = ins[0].elements * max(1, math.ceil(math.log2(max(size, 2))))
    return Work(vector_flops=comparisons * _body(op), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=ins[0].dtype)


@rule("stablehlo.map")
def map_(op, ins, outs) -> Work:
    return Work(vector_flops=outs[0].elements * _body(op), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins, outs))


@rule("stablehlo.scatter")
def scatter(op, ins, outs) -> Work:
    # in place: read indices and updates, read-modify-write the updated elements; one body per update element
    n = len(outs)
    operands, indices, updates = ins[:n], ins[n], ins[n + 1:]
    upd_bytes = nbytes(updates)
    return Work(vector_flops=sum(u.elements for u in updates) * (op.body_flops or 0.0),
                bytes_read=indices.nbytes + 2 * upd_bytes, bytes_written=upd_bytes,
                dtype=operands[0].dtype)
