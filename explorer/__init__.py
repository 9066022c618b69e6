"""Hardware what-if explorer: JAX program -> StableHLO -> graph -> passes -> cost model -> estimate.

    import explorer, hw_targets
    prog = explorer.lower(train_step, params, opt_state, batch)
    est = explorer.estimate(prog, hw_targets.load("h100_sxm"))
    print(est.table())
"""
from __future__ import annotations

from typing import Any, Sequence

from .compare import Comparison, compare, compare_alternatives
from .estimate import Estimate, KernelRow, UnknownOpsError
from .memory_search import MemorySearch, search_memory
from .program import Program, from_stablehlo, lower
from .search import PlanRow, SearchResult, search_sharding
from .sensitivity import Sensitivity, sensitivity
from .sweep import SweepResult, sweep

DEFAULT_PIPELINE = "fuse{strategy=xla}"


def estimate(program: Program, target: Any, pipeline: str | Sequence[Any] | None = "default",
             strict: bool = False) -> Estimate:
    """Price ``program`` on ``target`` after running ``pipeline``.

    **Arguments**
    - ``target``: a ``hw_targets.Target`` or a preset name / TOML path.
    - ``pipeline``: pass pipeline text (``"fuse{strategy=xla}"``), a list of pass
      instances, ``"default"`` (``DEFAULT_PIPELINE``) or ``None``/``""`` (no passes:
      every op its own kernel, everything in main memory).
    - ``strict``: raise ``UnknownOpsError`` if any op has no cost rule.

    **Returns** an ``Estimate``.
    """
    import hw_targets
    from passes import pipeline as pl

    from .estimate import price

    if isinstance(target, str):
        target = hw_targets.load(target)
    if pipeline == "default":
        pipeline = default_pipeline()
    passes = pl.resolve(pipeline or None)
    plan = pl.run(passes, program, target)
    return price(program, target, plan, pipeline_text=pl.to_text(passes), strict=strict)


def default_pipeline() -> str:
    """The pipeline ``estimate`` uses unless told otherwise (XLA-like fusion when the fusion pass exists)."""
    from passes import pipeline as pl

    return DEFAULT_PIPELINE if "fuse" in pl.available() else ""


__all__ = ["search_sharding", "SearchResult", "PlanRow", "lower", "from_stablehlo", "estimate", "compare", "compare_alternatives", "Program", "Estimate", "Comparison", "KernelRow",
           "UnknownOpsError", "DEFAULT_PIPELINE", "default_pipeline", "search_memory", "MemorySearch",
           "sweep", "SweepResult", "sensitivity", "Sensitivity"]
