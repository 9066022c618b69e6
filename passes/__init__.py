"""Stage 7, passes: read the graph, the plan so far and the target; return a new plan.

One file per pass (``fusion``, ``placement``, ``remat``; sharding is the subpackage ``sharding/``),
each registering itself by name (``pipeline.register``); ``plan`` holds the decisions, ``pipeline``
parses and runs pipelines, ``verify`` checks a plan's invariants.
"""
# Passes read the lower explorer stages (graph, counting, cost model). Importing them first, before any
# pass module starts, lets a script import a pass module before ``explorer`` itself.
from explorer import model as _cost_model  # noqa: F401

from .plan import ExtraKernel, Kernel, Plan

__all__ = ["Plan", "Kernel", "ExtraKernel"]
