"""``explorer.explore_fusion``: kept at this path for scripts and notebooks; the module is
``explorer/workflows/explore_fusion.py``."""
from .workflows.explore_fusion import FusionDecision, decisions_table, fusion_decisions, summary, with_fusion_edges

__all__ = ["FusionDecision", "fusion_decisions", "decisions_table", "with_fusion_edges", "summary"]
