"""Stage 8, pricing: a program under a plan, on a target -> an ``Estimate``.

``price`` (``estimate``: run a pipeline, then price its plan), ``estimate`` (the ``Estimate`` and its
rows), ``vectorised`` (one plan on N target variants as arrays), ``pipeline_parallel`` (a pipelined step
from the per-device estimate of one microbatch).
"""
