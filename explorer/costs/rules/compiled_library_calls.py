"""Library calls and helper custom calls that the real compilers leave in an optimized module.

Met on deviceless compiles (``explorer.lower(..., compiler="xla")``) of ``lax.top_k``,
``jax.scipy.linalg.solve_triangular`` and ``jnp.linalg.cholesky``: XLA:GPU calls its TopK kernel and cuBLAS's
TRSM; XLA:TPU its TopK, Cholesky and a blocked triangular inverse. The operands are those of the StableHLO op the
call replaces, so the work is that op's (the rules of ``reduction`` and ``solvers``).

Around gathers and scatters (GPT-2's embedding lookups and their scatter-add gradient on XLA:TPU) two more, whose
meaning is read from their names and where they sit (an assumption, no public documentation):
``AssumeGatherIndicesInBound`` tells the gather emitter that the indices need no clamping, a promise about values
and no computation; ``GatherScatterIndicesBitpacked`` rewrites the indices into a packed form the emitter reads,
one pass over them.
"""
from __future__ import annotations

from ..registry import rule
from ..work import ZERO, Work
from ._common import nbytes
from .reduction import _top_k_work
from .solvers import cholesky as _cholesky
from .solvers import triangular_solve as _triangular_solve


@rule("custom_call:__gpu$TopK", "custom_call:TopK")
def compiled_top_k(op, ins, outs) -> Work:
    # the k largest of the last dimension of the first operand and their indices; k from the values' result
    x = ins[0]
    k = outs[0].shape[-1] if outs and outs[0].shape else 1
    return _top_k_work(x, k, len(x.shape) - 1, ins[:1], outs)


@rule("custom_call:__cublas$triangularSolve")
def cublas_triangular_solve(op, ins, outs) -> Work:
    # cuBLAS TRSM on (a, b): m flops per element of b, as stablehlo.triangular_solve
    return _triangular_solve(op, ins, outs)


@rule("custom_call:Cholesky")
def tpu_cholesky(op, ins, outs) -> Work:
    # XLA:TPU's Cholesky of an n x n matrix (or a diagonal block of one): n^3 / 3 flops, as LAPACK's potrf
    return _cholesky(op, ins, outs)


@rule("custom_call:InvertDiagBlocksLowerTriangular")
def invert_diagonal_blocks(op, ins, outs) -> Work:
    # XLA:TPU's triangular solve first inverts the diagonal blocks of the triangle (the result holds them:
    # [..., blocks, b, b]); a b x b triangular inverse is b^3 / 3 flops. The block size is read off the result.
    out = outs[0] if outs else ins[0]
    b = out.shape[-1] if out.shape else 1
    blocks = out.elements / max(1, b * b)
    return Work(vector_flops=blocks * b ** 3 / 3.0, bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=ins[0].dtype if ins else "")


@rule("custom_call:AllocateBuffer")
def allocate_buffer(op, ins, outs) -> Work:
    # an uninitialised buffer for a later in-place update: no kernel, no traffic
    return ZERO


@rule("custom_call:AssumeGatherIndicesInBound")
def indices_in_bound(op, ins, outs) -> Work:
    # a promise to the emitter (the result is the operand): no kernel, no traffic
    return ZERO


@rule("custom_call:GatherScatterIndicesBitpacked")
def indices_bitpacked(op, ins, outs) -> Work:
    # one elementwise pass over the indices: read them, write the packed form
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs))
