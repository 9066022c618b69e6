import os

# Several CPU devices so sharded programs lower without accelerators (must precede importing jax).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
