"""Custom calls XLA:TPU leaves in its optimized modules around gathers and scatters.

Met on deviceless XLA:TPU compiles of the GPT-2 train step (embedding lookups and their scatter-add gradient,
``benchmarks/fidelity_xla.py --compiler tpu-v5p``). Their meaning is read from their names and where they sit
(an assumption, no public documentation): ``AssumeGatherIndicesInBound`` tells the gather emitter that the
indices need no clamping, a promise about values and no computation; ``GatherScatterIndicesBitpacked`` rewrites
the indices into a packed form the gather/scatter emitter reads, one pass over the indices.
"""
from __future__ import annotations

from ..registry import rule
from ..work import ZERO, Work
from ._common import nbytes


@rule("custom_call:AssumeGatherIndicesInBound")
def indices_in_bound(op, ins, outs) -> Work:
    # a promise to the emitter (the result is the operand): no kernel, no traffic
    return ZERO


@rule("custom_call:GatherScatterIndicesBitpacked")
def indices_bitpacked(op, ins, outs) -> Work:
    # one elementwise pass over the indices: read them, write the packed form
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs))
