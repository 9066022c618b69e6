"""Stage 9, workflows: questions asked of many estimates.

``compare`` (targets x pipelines), ``sweep`` (knob grids), ``sensitivity`` (elasticities), ``search``
(sharding plans), ``memory_search`` (remat x offload), ``explore_fusion`` (one fusion decision at a time),
``regress`` (pinned figures).
"""
