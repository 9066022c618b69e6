"""Passes: read the graph, the plan so far and the target; return a new plan."""
from .plan import ExtraKernel, Kernel, Plan

__all__ = ["Plan", "Kernel", "ExtraKernel"]
