"""``search_sharding``: the fastest way to spread a program over N chips of a target that fits in memory.

Enumerates, for ``chips`` devices:
- pipeline stages ``pp`` (dividing the chips, at most the program's repeated blocks), microbatch counts
  and schedules (GPipe, 1F1B, interleaved) priced by ``explorer/pricing/pipeline_parallel.py``;
- per stage, a mesh ``data=d.model=t`` (``model`` innermost, so it rides the scale-up network) with
  data parallelism or FSDP/ZeRO-3 over ``data`` and Megatron tensor parallelism over ``model``, with and
  without sequence parallelism;
- optionally (``ilp=True``) the per-op layouts of each mesh chosen by an integer program in the style of
  Alpa's intra-op pass (``passes/sharding/ilp.py``, solved with HiGHS) instead of the named
  strategies.

Every candidate is partitioned (collectives inserted), fused and priced per device; the result ranks
the candidates that fit each chip's main memory by step time, with the time breakdown (compute,
memory, exposed and hidden communication, pipeline bubble) and the memory per chip, and says so when
nothing fits (the closest candidate is still shown).

The program is one training step on the *global* batch: data parallelism splits it, and ``m``
microbatches divide each replica's share by ``m`` (per-microbatch times are scaled linearly, which
ignores the lower efficiency of small matmuls: lower the program at the microbatch size and call
``price_pipeline`` directly to avoid that).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tabulate import tabulate

import hw_targets
from passes import pipeline as pl
from passes.sharding import IlpShard, Shard

from ..graph import names
from ..graph.gcpause import paused_gc
from ..pricing.pipeline_parallel import block_of, price_pipeline
from ..pricing.price import price
from ..report.units import fmt_bytes, fmt_seconds


@dataclass(frozen=True)
class PlanRow:
    """One candidate, priced."""

    mesh: str
    strategy: str
    pp: int
    microbatches: int
    schedule: str
    virtual: int
    seconds: float
    compute_s: float
    memory_s: float
    comm_exposed_s: float
    comm_hidden_s: float
    bubble_s: float
    overhead_s: float
    memory_per_chip: float
    fits: bool
    pipeline: str                      # the pass pipeline text that reproduces the per-stage plan

    @property
    def label(self) -> str:
        pp = f" pp={self.pp} m={self.microbatches} {self.schedule}" + (f" v={self.virtual}" if self.virtual > 1 else "") \
            if self.pp > 1 else (f" m={self.microbatches}" if self.microbatches > 1 else "")
        return f"{self.mesh} {self.strategy}{pp}"


@dataclass(frozen=True)
class SearchResult:
    target: str
    chips: int
    rows: tuple[PlanRow, ...]                 # fitting first, each group fastest first
    capacity_bytes: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def best(self) -> PlanRow | None:
        """The fastest plan that fits (None when nothing fits)."""
        return self.rows[0] if self.rows and self.rows[0].fits else None

    @property
    def fits_any(self) -> bool:
        return self.best is not None

    def table(self, top: int = 10) -> str:
        head = f"{self.chips} x {self.target}: {len(self.rows)} candidates, memory per chip {fmt_bytes(self.capacity_bytes)}"
        if not self.fits_any:
            head += "\nNOTHING FITS: the rows below are the closest candidates (least memory first)"
        rows = [[i + 1, r.label, fmt_seconds(r.seconds), fmt_seconds(r.compute_s), fmt_seconds(r.memory_s),
                 fmt_seconds(r.comm_exposed_s), fmt_seconds(r.comm_hidden_s), fmt_seconds(r.bubble_s),
                 fmt_bytes(r.memory_per_chip), "yes" if r.fits else "NO"] for i, r in enumerate(self.rows[:top])]
        body = tabulate(rows, headers=["#", "plan", "step", "compute", "memory", "comm exposed", "comm hidden",
                                       "bubble", "mem/chip", "fits"])
        return "\n".join([head, body, *self.notes])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_meshes(chips: int, target: Any, max_tp: int | None = None) -> list[tuple[int, int]]:
    """(data, model) splits of ``chips``; tensor parallelism stays inside one scale-up domain on switched
    networks (crossing nodes with it is never competitive, and libraries do not offer it)."""
    limit = max_tp or chips
    if target.scale_up.topology in ("switch", "full_mesh", "fat_tree"):
        limit = min(limit, target.scale_up.domain_size)
    return [(chips // t, t) for t in _divisors(chips) if t <= limit]


def search_sharding(program, target: Any, chips: int, *, stages: Sequence[int] = (1, 2, 4, 8),
                    microbatches: Sequence[int] = (1, 2, 4, 8), schedules: Sequence[str] = ("1f1b", "interleaved"),
                    fsdp: bool = True, sequence_parallel: bool = True, ilp: bool = False,
                    fuse: str = "fuse{strategy=xla}", blocks: int | None = None, max_tp: int | None = None,
                    top: int | None = None) -> SearchResult:
    """Search sharding plans for ``program`` on ``chips`` devices of ``target``.

    **Arguments**
    - ``stages``: pipeline depths to try (kept when they divide ``chips`` and the program's blocks).
    - ``microbatches``: microbatches per pipeline stage count, as multiples of ``pp`` (1 -> m = pp).
    - ``schedules``: pipeline schedules for pp > 1 (``gpipe``, ``1f1b``, ``interleaved`` with v = 2).
    - ``fsdp`` / ``sequence_parallel``: also try ZeRO-3 over the data axis / Megatron-SP over the model axis.
    - ``ilp``: add, per mesh, the plan whose per-op layouts an Alpa-style ILP chose (HiGHS).
    - ``blocks``: real block count when the program was built with fewer identical blocks.

    **Returns** a ``SearchResult``: ``best`` (None when nothing fits), ``rows``, ``table()``.
    """
    target = hw_targets.as_target(target)      # a preset name or a TOML path
    if not isinstance(chips, int) or chips < 1:
        raise ValueError(f"chips must be a positive int, got {chips!r}")
    with paused_gc():      # one partitioning and pricing of the whole program after another
        return _search(program, target, chips, stages, microbatches, schedules, fsdp, sequence_parallel, ilp, fuse,
                       blocks, max_tp, top)


def _search(program, target, chips: int, stages, microbatches, schedules, fsdp: bool, sequence_parallel: bool,
            ilp: bool, fuse: str, blocks: int | None, max_tp: int | None, top: int | None) -> SearchResult:
    notes: list[str] = []
    n_blocks = len({b for b in (block_of(_layer(op)) for op in program.graph.ops) if b is not None})
    capacity = target.main_memory.capacity_bytes
    rows: list[PlanRow] = []
    fuse_passes = pl.parse(fuse) if fuse else []
    real_blocks = blocks or n_blocks
    for pp in sorted(set(stages)):
        if chips % pp or (pp > 1 and pp > max(real_blocks, 1)):
            continue
        per_stage = chips // pp
        for dp, tp in candidate_meshes(per_stage, target, max_tp):
            mesh = ".".join(f"{a}={n}" for a, n in (("data", dp), ("model", tp)) if n > 1) or "data=1"
            options = []
            if dp > 1:
                options.append(dict(dp="data"))
                if fsdp:
                    options.append(dict(fsdp="data"))
            else:
                options.append({})
            variants = []
            for opt in options:
                if tp > 1:
                    variants.append({**opt, "tp": "model"})
                    if sequence_parallel:
                        variants.append({**opt, "tp": "model", "sp": True})
                else:
                    variants.append(opt)
            shard_list = [Shard(mesh=mesh, **v) for v in variants]
            if ilp and (dp > 1 or tp > 1):
                shard_list.append(IlpShard(mesh=mesh, memory_bytes=capacity))
            for shard in shard_list:
                passes = [shard, *fuse_passes]
                try:
                    plan = pl.run(passes, program, target)
                except Exception as exc:   # a candidate the partitioner cannot build is reported, not fatal
                    notes.append(f"{mesh} {_describe(shard)}: {exc}")
                    continue
                est = price(program, target, plan, pipeline_text=pl.to_text(passes))
                if pp == 1:
                    # no pipeline: the whole step, or gradient accumulation over m microbatches (each one's
                    # activations only, the gradient reduction and the optimizer once); memory per device from the
                    # training-memory model (state updated in place), blocks scaled to the real count
                    for m in sorted(set(microbatches)):
                        pe = price_pipeline(est, target, 1, m, blocks=blocks, job_devices=chips,
                                            microbatch_scale=1.0 / m)
                        rows.append(_pipeline_row(mesh, shard, pe, est, capacity, pl.to_text(passes)))
                    continue
                for mult in sorted(set(microbatches)):
                    m = pp * mult
                    for sched in schedules:
                        v = 2 if sched == "interleaved" else 1
                        if sched == "interleaved" and (m % pp or real_blocks % (pp * v)):
                            continue
                        pe = price_pipeline(est, target, pp, m, sched, v, blocks=blocks, stage_stride=per_stage,
                                            job_devices=chips, microbatch_scale=1.0 / m)
                        rows.append(_pipeline_row(mesh, shard, pe, est, capacity, pl.to_text(passes)))
    if not rows:
        raise ValueError(f"no candidate plan for {chips} chips of {target.name} (notes: {'; '.join(notes) or 'none'})")
    fitting = sorted((r for r in rows if r.fits), key=lambda r: (r.seconds, r.label))
    rest = sorted((r for r in rows if not r.fits), key=lambda r: (r.memory_per_chip, r.seconds, r.label))
    ranked = tuple(fitting + rest)
    if top:
        ranked = ranked[:top]
    if not fitting:
        notes.insert(0, f"no plan fits {fmt_bytes(capacity)} per chip; the smallest needs "
                        f"{fmt_bytes(rest[0].memory_per_chip)}")
    return SearchResult(target=target.name, chips=chips, rows=ranked, capacity_bytes=capacity, notes=tuple(notes))


def _layer(op) -> str:
    return names.parse(op.name_stack)[1]


def _describe(shard) -> str:
    describe = getattr(shard, "describe", None)
    return describe() if callable(describe) else getattr(shard, "name", type(shard).__name__)


def _row(mesh: str, shard, pp: int, m: int, sched: str, v: int, est, capacity: float, text: str) -> PlanRow:
    return PlanRow(mesh=mesh, strategy=_describe(shard), pp=pp, microbatches=m, schedule=sched, virtual=v,
                   seconds=est.seconds, compute_s=est.compute_seconds, memory_s=est.memory_seconds,
                   comm_exposed_s=est.comm_seconds, comm_hidden_s=est.hidden_comm_seconds, bubble_s=0.0,
                   overhead_s=est.overhead_seconds, memory_per_chip=float(est.peak_memory_bytes),
                   fits=est.peak_memory_bytes <= capacity, pipeline=text)


def _pipeline_row(mesh: str, shard, pe, est, capacity: float, text: str) -> PlanRow:
    # the per-device parts of the busy time keep the estimate's proportions; the bubble and transfers are apart
    busy = pe.seconds - pe.bubble_seconds - pe.schedule_time.p2p_exposed_seconds
    scale = busy / est.seconds if est.seconds else 0.0
    return PlanRow(mesh=mesh, strategy=_describe(shard), pp=pe.stages, microbatches=pe.microbatches,
                   schedule=pe.schedule, virtual=pe.virtual, seconds=pe.seconds,
                   compute_s=est.compute_seconds * scale, memory_s=est.memory_seconds * scale,
                   comm_exposed_s=est.comm_seconds * scale + pe.schedule_time.p2p_exposed_seconds,
                   comm_hidden_s=est.hidden_comm_seconds * scale, bubble_s=pe.bubble_seconds,
                   overhead_s=est.overhead_seconds * scale, memory_per_chip=pe.memory_per_device_bytes,
                   fits=pe.memory_per_device_bytes <= capacity, pipeline=text)
