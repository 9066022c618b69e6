"""Stage 5, the cost model: counted work on a target -> seconds and bytes.

``timing`` (one kernel: roofline with efficiency, tiles and waves), ``collectives`` (algorithms on
topologies), ``liveness`` (live bytes over a schedule), ``traffic`` (bytes per memory level, values
that never reach memory), ``memory`` (main-memory liveness under a plan), ``calibration`` (timings ->
target figures). Passes may use all of it; it knows nothing of passes or estimates (a plan and its
kernels are read through their attributes).
"""
