"""Where a kernel's bytes go: traffic per memory level, and the values that never reach memory.

Shared by pricing (``explorer.pricing``), the passes that aim at a memory budget or a placement
(``remat``, ``place``) and vectorised sweeps, so they all see the same bytes. Kernels and plans are
read through their attributes (``kernel.ops``, ``.reads``, ``.writes``, ``.spill_bytes``;
``plan.placement``): this layer sits below the passes that define them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import timing


def traffic_by_level(target: Any, placement: Mapping[int, str] | None, kernel: Any) -> dict[str, float]:
    """Bytes the kernel moves in each memory level (main memory unless ``placement`` says otherwise)."""
    main = target.main_memory.name
    placement = placement or {}
    traffic: dict[str, float] = {main: kernel.spill_bytes}
    for v, b in (*kernel.reads, *kernel.writes):
        lvl = placement.get(v, main)
        traffic[lvl] = traffic.get(lvl, 0.0) + b
    return traffic


def link_copy_time(target: Any, level_name: str, nbytes: float) -> timing.KernelTime:
    """An asynchronous copy of ``nbytes`` between main memory and ``level_name`` (e.g. host offload traffic).

    Priced as communication (a DMA over a link, like a collective) at the slower side's bandwidth, so that
    an overlappable copy can hide behind compute by the same rule as an async collective."""
    main, level = target.main_memory, target.memory_level(level_name)
    bw = timing._min(main.bandwidth_bytes_per_s, level.bandwidth_bytes_per_s) * target.efficiency.memory
    comm = nbytes / bw + timing._max(main.latency_s, level.latency_s) if nbytes > 0 else 0.0
    return timing.KernelTime(compute_s=0.0, memory_s=0.0, comm_s=comm, overhead_s=0.0)


def transfer_time(target: Any, level_name: str, nbytes: float) -> timing.KernelTime:
    """A placement's boundary copy of ``nbytes`` between main memory and ``level_name`` (memory-bound)."""
    main, level = target.main_memory, target.memory_level(level_name)
    bw = timing._min(main.bandwidth_bytes_per_s, level.bandwidth_bytes_per_s) * target.efficiency.memory
    return timing.KernelTime(compute_s=0.0, memory_s=nbytes / bw + timing._max(main.latency_s, level.latency_s),
                             comm_s=0.0, overhead_s=0.0)


_TRANSIENT_CACHE: dict[tuple[int, int], tuple[Any, Sequence[Any], frozenset[int]]] = {}


def transient_values(program: Any, kernels: Sequence[Any]) -> frozenset[int]:
    """Values that stay inside a fused kernel, or belong to no kernel (duplicated generators), never hit memory.

    Cached for the last few (program, kernels) pairs: pricing, passes aiming at a memory budget (remat) and
    searches over pipelines ask for the same fusion plan's answer many times."""
    hit = _TRANSIENT_CACHE.get((id(program), id(kernels)))
    if hit is not None and hit[0] is program and hit[1] is kernels:
        return hit[2]
    out = _transient_uncached(program, kernels)
    while len(_TRANSIENT_CACHE) >= 4:
        _TRANSIENT_CACHE.pop(next(iter(_TRANSIENT_CACHE)))
    _TRANSIENT_CACHE[(id(program), id(kernels))] = (program, kernels, out)
    return out


def _transient_uncached(program: Any, kernels: Sequence[Any]) -> frozenset[int]:
    graph = program.graph
    owner = {o: i for i, k in enumerate(kernels) for o in k.ops}
    users = graph.consumers()
    out = set()
    for op in graph.ops:
        if op.id not in owner:
            w = program.works[op.id]
            if w is not None and w.launches_kernel:
                out.update(r for r in op.results if r not in graph.outputs and r not in graph.escaping)
            continue
        for r in op.results:
            if r in graph.outputs or r in graph.escaping:
                continue
            readers = users.get(r, ())
            if readers and all(owner.get(u) == owner[op.id] for u in readers):
                out.add(r)
    return frozenset(out)
