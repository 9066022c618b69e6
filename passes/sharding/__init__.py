"""The sharding pass: partition a program over a logical mesh of devices, as an SPMD partitioner would.

``shard`` with no mesh reads the shardings JAX already wrote into the program (``sdy`` or
``mhlo.sharding``, see ``read.py``). With a mesh it applies parallelism strategies by
argument name (``strategies.py``) to an unsharded program:

    shard{mesh=data=4.model=2,dp=data,tp=model}        # Megatron TP inside, DP across
    shard{mesh=data=8,fsdp=data}                       # ZeRO-3
    shard{mesh=data=8,dp=data,zero1=true}              # ZeRO-1 / distributed optimizer
    shard{mesh=data=2.seq=4,dp=data,cp=seq}            # context parallel
    shard{mesh=model=4,tp=model,pins=*fc1*kernel=_:model}

Either way the layouts are propagated through every op and the collectives are inserted
(``propagate.py``). The plan gets per-device work (``work_overrides``), per-device value
sizes (``value_bytes``, so fusion and the memory peak are per device) and one ``ExtraKernel`` per
collective, carrying a ``Work`` with its kind, per-device bytes, group size and group stride (which
network it rides) and whether it can overlap compute. Run it before ``fuse``.

Modules: ``shard`` (the pass), ``ilp`` (``shard_ilp``: layouts chosen by an integer program), ``spec``
(meshes and layouts), ``read``, ``strategies``, ``rules`` (per-op layout choices), ``propagate``,
``reshard`` (collectives between layouts).
"""
from __future__ import annotations

from .ilp import IlpShard
from .propagate import ShardingResult
from .shard import Shard, collective_kernels, shard_program
from .spec import Mesh, Spec
from .strategies import Strategy

__all__ = ["Shard", "IlpShard", "Mesh", "Spec", "Strategy", "ShardingResult", "shard_program", "collective_kernels"]
