"""Ops of a compiler's optimized module (XLA after fusion, scheduling and SPMD partitioning).

A fusion or an async collective start groups the ops of its region, which are counted by their own
rules; the grouping op and the async done that waits for it do no work themselves. ``mhlo.bitcast``
relabels a buffer's shape / layout (XLA never materialises it). ``mhlo.copy`` is a real copy kernel
(``stablehlo.copy``'s rule, through the mhlo -> stablehlo fallback of the registry).
"""
from __future__ import annotations

from ..registry import rule
from ..work import ZERO, Work


@rule("mhlo.fusion", "stablehlo.async_start", "mhlo.async_start", "stablehlo.async_done", "mhlo.async_done")
def grouping(op, ins, outs) -> Work:
    # the region's ops carry the kernel's work (see explorer.graph.importer.GROUPING_OPS)
    return ZERO


@rule("mhlo.bitcast")
def bitcast(op, ins, outs) -> Work:
    return ZERO
