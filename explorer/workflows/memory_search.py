"""``search_memory``: rematerialisation and offload chosen jointly, ranked by step time within a memory budget.

Why a search and not one pass: recomputing (more flops), offloading activations (host-link copies
overlapped with compute), offloading optimizer state or weights (every access over the host link)
and sharding (fewer bytes per chip, more communication) trade memory for time differently on every
chip. Each alternative is a pipeline priced by the same ``estimate`` as everything else, so the
ranking is what ``explorer.estimate`` would say about each one.

Budget: ``budget_bytes`` replaces the target's main-memory capacity for the search (placement offloads
to fit it, ``remat{policy=auto}`` aims at it, ``fits`` is judged against it); by default the capacity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tabulate import tabulate

import hw_targets
from passes import pipeline as pl
from passes.fusion import kernels_of
from passes.remat import jax_recomputed_ops

from ..costs import Program
from ..model.traffic import traffic_by_level
from ..pricing.estimate import Estimate
from ..pricing.price import price
from ..report.units import fmt_bytes, fmt_seconds

REMAT = ("none", "selective", "full", "offload", "auto")
OFFLOAD = ("", "place{offload=optimizer}", "place{offload=weights}")


@dataclass(frozen=True)
class Alternative:
    """One priced choice of remat / offload (/ sharding)."""

    pipeline: str
    seconds: float
    peak_bytes: int            # main memory, per chip
    fits: bool                 # every memory level within capacity (main memory: the budget)
    extra_flops: float         # recomputation: the remat pass's and what jax.checkpoint emitted
    transfer_bytes: float      # over the host link: offload copies and accesses of host-resident tensors
    estimate: Estimate = field(repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "seconds": self.seconds, "peak_bytes": self.peak_bytes, "fits": self.fits,
                "extra_flops": self.extra_flops, "transfer_bytes": self.transfer_bytes}


@dataclass(frozen=True)
class MemorySearch:
    """Ranked alternatives: those that fit first, fastest first; then the rest, smallest peak first."""

    program: str
    target: str
    budget_bytes: float
    alternatives: tuple[Alternative, ...]
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return bool(self.alternatives) and self.alternatives[0].fits

    @property
    def best(self) -> Alternative | None:
        """The fastest alternative that fits, or None when nothing fits."""
        return self.alternatives[0] if self.fits else None

    @property
    def message(self) -> str:
        if self.fits:
            b = self.best
            return (f"best within {fmt_bytes(self.budget_bytes)}: {b.pipeline} -> {fmt_seconds(b.seconds)}, "
                    f"peak {fmt_bytes(b.peak_bytes)}")
        least = min(self.alternatives, key=lambda a: a.peak_bytes, default=None)
        if least is None:
            return "no alternative could be priced"
        return (f"nothing fits {fmt_bytes(self.budget_bytes)}: the least peak is {fmt_bytes(least.peak_bytes)} "
                f"({least.pipeline}), {fmt_bytes(least.peak_bytes - self.budget_bytes)} over")

    def to_dict(self) -> dict[str, Any]:
        return {"program": self.program, "target": self.target, "budget_bytes": self.budget_bytes, "fits": self.fits,
                "message": self.message, "alternatives": [a.row() for a in self.alternatives], "notes": list(self.notes)}

    def table(self) -> str:
        rows = [[i + 1, a.pipeline, fmt_seconds(a.seconds), fmt_bytes(a.peak_bytes), "yes" if a.fits else "NO",
                 f"{a.extra_flops:.3g}", fmt_bytes(a.transfer_bytes)] for i, a in enumerate(self.alternatives)]
        head = f"{self.program} on {self.target}, budget {fmt_bytes(self.budget_bytes)} per chip\n{self.message}\n"
        return head + tabulate(rows, headers=["#", "pipeline", "step time", "peak/chip", "fits", "extra flops",
                                              "host-link bytes"])


def search_memory(program: Program, target: Any, budget_bytes: float | None = None,
                  remat: Sequence[str] = REMAT, offload: Sequence[str] = OFFLOAD,
                  sharding: Sequence[str] = (), devices: int = 1, base: str | None = None) -> MemorySearch:
    """Price every remat policy x offload choice (x sharding pipeline) and rank them.

    **Arguments**
    - ``target``: a ``hw_targets.Target`` or a preset name.
    - ``budget_bytes``: main-memory budget per chip (default: the target's capacity).
    - ``remat``: the ``remat{policy=...}`` policies to try; ``offload``: placement pipelines to try after
      it (``""``: none); ``sharding``: pipelines run before fusion (``""`` always included); a sharding
      pipeline that fails is skipped and named in ``notes``.
    - ``devices``: when above 1 and the ``shard`` pass exists, data parallelism and ZeRO-3 (FSDP) over
      that many devices are added to ``sharding`` (peaks are then per chip).
    - ``base``: the fusion pipeline (default: ``explorer.default_pipeline()``).

    **Returns** a ``MemorySearch``: ``alternatives`` ranked, ``best``, ``fits``, ``message``, ``table()``.
    """
    target = hw_targets.as_target(target)      # a preset name or a TOML path
    main = target.main_memory
    budget = float(main.capacity_bytes if budget_bytes is None else budget_bytes)
    if budget <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    chip = target if budget == main.capacity_bytes else target.replace(**{f"memory.{main.name}.capacity_bytes": budget})
    base = pl.default_pipeline(program) if base is None else base
    jax_flops = sum(program.works[o].flops * program.weights[o] for o in jax_recomputed_ops(program.graph)
                    if program.works[o] is not None)
    notes: list[str] = []
    if jax_flops:
        notes.append(f"the program already recomputes {jax_flops:.4g} flops (jax.checkpoint)")
    if chip.host_memory is None:
        remat = [p for p in remat if p != "offload"]
        offload = [o for o in offload if "offload" not in o]
        notes.append(f"{target.name} has no host memory level: no offload alternatives")
    if devices > 1 and "shard" in pl.available():
        sharding = (*sharding, *(f"shard{{mesh=data={devices},{kind}=data}}" for kind in ("dp", "fsdp")))
    found: list[Alternative] = []
    for shard in dict.fromkeys(("", *sharding)):
        prefix = ",".join(filter(None, (shard, base)))
        try:
            start = pl.run(pl.resolve(prefix), program, chip)
        except Exception as exc:   # a sharding pipeline that does not apply to this program
            notes.append(f"skipped {prefix!r}: {exc}")
            continue
        for policy in remat:
            for place in offload:
                text = ",".join(filter(None, (prefix, f"remat{{policy={policy}}}", place)))
                passes = pl.resolve(",".join(filter(None, (f"remat{{policy={policy}}}", place))))
                plan = pl.run(passes, program, chip, plan=start)
                if place and chip.host_memory.name not in (plan.placement or {}).values():
                    continue    # placement moved nothing: the same plan as without it
                est = price(program, chip, plan, pipeline_text=text)
                found.append(Alternative(
                    pipeline=text, seconds=est.seconds, peak_bytes=est.peak_memory_bytes, fits=est.fits_in_memory,
                    extra_flops=jax_flops + sum(k.flops for k in est.kernels if k.phase == "recompute"),
                    transfer_bytes=_host_bytes(program, plan, chip), estimate=est))
    ranked = sorted(found, key=lambda a: (not a.fits, a.seconds if a.fits else a.peak_bytes, a.peak_bytes, a.pipeline))
    return MemorySearch(program=program.graph.name, target=target.name, budget_bytes=budget,
                        alternatives=tuple(ranked), notes=tuple(notes))


def _host_bytes(program: Program, plan, target) -> float:
    """Bytes over the host link: offload copies, plus every access of a tensor that lives in host memory."""
    host = target.host_memory
    if host is None:
        return 0.0
    total = sum(e.work.bytes_accessed * (program.weights[e.after_op] if e.after_op >= 0 else 1.0)
                for e in plan.extra_kernels if e.link == host.name)
    total += plan.transfer_bytes.get(host.name, 0.0)
    if any(lvl == host.name for lvl in (plan.placement or {}).values()):
        kernels = kernels_of(program, plan)
        total += sum(traffic_by_level(target, plan.placement, k).get(host.name, 0.0) * program.weights[k.ops[0]] for k in kernels)
    return float(total)
