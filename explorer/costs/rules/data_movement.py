"""Data movement: no arithmetic, only bytes. Views a compiler never materialises
(reshape, bitcast, tuple plumbing, constants) launch no kernel and move nothing."""
from __future__ import annotations

from ..registry import rule
from ..work import ZERO, Work
from ._common import nbytes


@rule("stablehlo.reshape", "stablehlo.bitcast_convert", "stablehlo.get_tuple_element", "stablehlo.tuple",
      "stablehlo.optimization_barrier", "stablehlo.constant", "stablehlo.get_dimension_size",
      "stablehlo.partition_id", "stablehlo.replica_id", "stablehlo.after_all", "stablehlo.create_token",
      "stablehlo.uniform_quantize", "stablehlo.uniform_dequantize")
def view(op, ins, outs) -> Work:
    # a relabelling of existing bytes (or a compile-time value): no kernel, no traffic
    if op.name.endswith(("uniform_quantize", "uniform_dequantize")):
        return Work(vector_flops=float(sum(t.elements for t in outs)), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                    dtype=ins[0].dtype)
    return ZERO


@rule("stablehlo.broadcast_in_dim", "stablehlo.broadcast", "stablehlo.transpose", "stablehlo.slice",
      "stablehlo.concatenate", "stablehlo.pad", "stablehlo.reverse", "stablehlo.copy", "stablehlo.dynamic_reshape",
      "stablehlo.dynamic_broadcast_in_dim", "stablehlo.real_dynamic_slice", "stablehlo.dynamic_pad",
      "stablehlo.set_dimension_size")
def copy_like(op, ins, outs) -> Work:
    # read the operands, write the result
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=outs[0].dtype if outs else "")


@rule("stablehlo.iota", "stablehlo.dynamic_iota", "stablehlo.rng", "stablehlo.rng_bit_generator")
def generate(op, ins, outs) -> Work:
    # writes its result; rng reads its (small) state/operands
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=outs[0].dtype if outs else "")


@rule("stablehlo.dynamic_slice")
def dynamic_slice(op, ins, outs) -> Work:
    # reads only the slice (plus the scalar start indices), writes it
    return Work(bytes_read=nbytes(outs) + nbytes(ins[1:]), bytes_written=nbytes(outs), dtype=outs[0].dtype)


@rule("stablehlo.dynamic_update_slice")
def dynamic_update_slice(op, ins, outs) -> Work:
    # updated in place (as XLA does): read the update, write it into the buffer
    update = ins[1]
    return Work(bytes_read=update.nbytes + nbytes(ins[2:]), bytes_written=update.nbytes, dtype=update.dtype)


@rule("stablehlo.gather", "stablehlo.dynamic_gather")
def gather(op, ins, outs) -> Work:
    # reads the indices and the gathered slices (as large as the result), writes the result
    return Work(bytes_read=ins[1].nbytes + nbytes(outs), bytes_written=nbytes(outs), dtype=outs[0].dtype)


@rule("stablehlo.infeed", "stablehlo.outfeed", "stablehlo.send", "stablehlo.recv")
def host_io(op, ins, outs) -> Work:
    # data crosses the host link; priced as memory traffic
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs))
