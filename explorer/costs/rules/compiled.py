"""Ops of a compiler's optimized module (XLA after fusion, scheduling and SPMD partitioning).

A fusion or an async collective start groups the ops of its region, which are counted by their own
rules; the grouping op and the async done that waits for it do no work themselves. ``mhlo.bitcast``
relabels a buffer's shape / layout (XLA never materialises it). ``mhlo.copy`` is a real copy kernel
(``stablehlo.copy``'s rule, through the mhlo -> stablehlo fallback of the registry). XLA:GPU's cuDNN
convolution calls are counted as the convolution they compute.
"""
from __future__ import annotations

from dataclasses import replace

from ..registry import rule
from ..work import ZERO, Work
from ._common import nbytes
from .linalg import convolution


@rule("mhlo.fusion", "stablehlo.async_start", "mhlo.async_start", "stablehlo.async_done", "mhlo.async_done")
def grouping(op, ins, outs) -> Work:
    # the region's ops carry the kernel's work (see explorer.graph.importer.GROUPING_OPS)
    return ZERO


@rule("mhlo.bitcast")
def bitcast(op, ins, outs) -> Work:
    return ZERO


# cuDNN convolution calls of XLA:GPU: which operand / result is the forward convolution's input x, kernel w and
# output y (the call's window and dimension numbers always describe the forward convolution).
_CUDNN_ROLES = {
    "__cudnn$convForward": ("in0", "in1", "out0"),
    "__cudnn$convBiasActivationForward": ("in0", "in1", "out0"),
    "__cudnn$convBackwardInput": ("out0", "in1", "in0"),
    "__cudnn$convBackwardFilter": ("in0", "out0", "in1"),
}


@rule(*(f"custom_call:{t}" for t in _CUDNN_ROLES))
def cudnn_convolution(op, ins, outs) -> Work | None:
    # the geometry is attached by the XLA front end from the module proto (the MLIR form drops it); without
    # it the call cannot be counted and stays unknown
    if "dimension_numbers" not in op.attrs:
        return None
    pick = {"in": ins, "out": outs}
    x, w, y = (pick[r[:-1]][int(r[-1])] for r in _CUDNN_ROLES[op.attrs["call_target_name"]])
    work = convolution(op, [x, w], [y])
    # a backward pass does the forward convolution's multiply-adds, rearranged; bytes are the call's own
    return replace(work, bytes_read=nbytes(ins), bytes_written=nbytes(outs))
