"""Hardware what-if explorer: JAX program -> StableHLO -> graph -> passes -> cost model -> estimate.

    import explorer, hw_targets
    prog = explorer.lower(train_step, params, opt_state, batch)
    est = explorer.estimate(prog, hw_targets.load("h100_sxm"))
    print(est.table())

This module is the public API, the top of the stages ``docs/architecture.md`` describes:
``graph`` -> ``costs`` -> ``frontend`` -> ``model`` -> ``report`` -> (``passes``) -> ``pricing`` ->
``workflows``; each imports only the stages below it.
"""
from __future__ import annotations

from .graph import environment as _environment  # noqa: F401  (first: JAX starts quietly without accelerators)

from passes.pipeline import DEFAULT_PIPELINE, default_pipeline

from .costs import Program
from .frontend.stablehlo import from_stablehlo, lower
from .model import calibration as _calibration  # noqa: F401  (registers hw_targets.host()'s fit)
from .pricing.estimate import Estimate, KernelRow, UnknownOpsError
from .pricing.pipeline_parallel import PipelineEstimate, bubble_fraction, price_pipeline
from .pricing.price import estimate, price
from .report import plots
from .workflows.compare import Comparison, compare, compare_alternatives
from .workflows.memory_search import MemorySearch, search_memory
from .workflows.search import PlanRow, SearchResult, search_sharding
from .workflows.sensitivity import Sensitivity, sensitivity
from .workflows.sweep import SweepResult, sweep

__all__ = ["search_sharding", "SearchResult", "PlanRow", "lower", "from_stablehlo", "estimate", "price", "compare",
           "compare_alternatives", "Program", "Estimate", "Comparison", "KernelRow", "UnknownOpsError",
           "DEFAULT_PIPELINE", "default_pipeline", "search_memory", "MemorySearch", "sweep", "SweepResult",
           "sensitivity", "Sensitivity", "price_pipeline", "bubble_fraction", "PipelineEstimate", "plots"]
