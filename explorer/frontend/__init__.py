"""Stage 4, front ends: where programs come from.

``stablehlo`` (a JAX function lowered by ``jax.jit``, or a StableHLO module), ``model_files`` (the
example-file convention of the command line). Each returns a counted ``explorer.costs.Program``.
"""
