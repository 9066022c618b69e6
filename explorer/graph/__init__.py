"""Stage 2, reading programs: a StableHLO module -> the project's own read-only graph.

``ir`` (the graph types), ``importer`` (MLIR bindings -> ``ir.Graph``), ``loops`` (while trip
counts), ``names`` (JAX name stacks -> phase and layer). Nothing here counts or prices work.
"""
