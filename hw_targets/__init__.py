"""Hardware targets: accelerators and systems as validated, frozen data loaded from TOML presets.

    import hw_targets
    h100 = hw_targets.load("h100_sxm")          # or a path to your own chip's TOML
    hw_targets.names()
    faster = h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": 6.7e12})
"""
from .loader import as_target, from_dict, load, names
from .target import Compute, Efficiency, FrozenMap, MemoryLevel, Network, Target, TargetError
from .host import host  # this machine's CPU, measured through JAX (hw_targets/host.py)

__all__ = ["load", "as_target", "names", "from_dict", "host", "Target", "Compute", "MemoryLevel", "Network", "Efficiency",
           "FrozenMap", "TargetError"]
