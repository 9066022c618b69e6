"""Main-memory liveness under a plan: the peak the estimate reports, and passes aim at.

One function, so passes that aim at a memory budget (``remat{policy=auto}``, placement) see exactly the
peak ``explorer.pricing`` will report. The plan is read through its attributes (``placement``,
``live_ranges``, ``value_bytes``); the caller passes the plan's kernels.
"""
from __future__ import annotations

from typing import Any, Sequence

from . import liveness
from .traffic import transient_values


def main_memory_liveness(program: Any, plan: Any, kernels: Sequence[Any]) -> liveness.Liveness:
    """Main-memory liveness as pricing reports it: values inside fused kernels and values placed in another
    level left out; the plan's live-range overrides (remat, activation offload) and per-device sizes applied."""
    elsewhere = frozenset((plan.placement or {}).keys())
    ranged = frozenset(plan.live_ranges or ())   # a value given a live range is materialised over it
    return liveness.analyse(program.graph, transient=(transient_values(program, kernels) - ranged) | elsewhere,
                            ranges=plan.live_ranges, sizes=plan.value_bytes)


def level_peaks(program: Any, plan: Any, kernels: Sequence[Any]) -> dict[str, int]:
    """Peak live bytes in each memory level the plan's placement puts values in."""
    graph = program.graph
    transient = transient_values(program, kernels)
    peaks: dict[str, int] = {}
    for level in sorted({lvl for lvl in (plan.placement or {}).values()}):
        only = frozenset(v for v, lvl in plan.placement.items() if lvl == level)
        others = frozenset(range(len(graph.values))) - only
        peaks[level] = liveness.analyse(graph, transient=transient | others, ranges=plan.live_ranges,
                                        sizes=plan.value_bytes).peak_bytes
    return peaks
