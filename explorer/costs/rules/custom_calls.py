"""Custom calls whose meaning is known. Any other target is reported as unknown by name."""
from __future__ import annotations

from ..registry import rule
from ..work import ZERO, Work
from ._common import nbytes


@rule("custom_call:Sharding", "custom_call:SPMDFullToShardShape", "custom_call:SPMDShardToFullShape",
      "custom_call:annotate_device_placement", "custom_call:LayoutConstraint", "custom_call:X64Combine",
      "custom_call:X64SplitLow", "custom_call:X64SplitHigh", "sdy.sharding_constraint", "sdy.propagation_barrier",
      "sdy.sharding_group", "mhlo.sharding")
def annotation(op, ins, outs) -> Work:
    # compiler annotations: no kernel, no traffic
    return ZERO


@rule("custom_call:MoveToHost", "custom_call:MoveToDevice")
def host_transfer(op, ins, outs) -> Work:
    # the tensor crosses the host link once
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs))
