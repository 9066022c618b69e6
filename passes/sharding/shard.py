"""The ``shard`` pass: named parallelism strategies on a mesh, or the shardings JAX already wrote."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from explorer.costs import Work

from ..pipeline import register
from ..plan import ExtraKernel, Plan
from .buckets import XLA_COMBINE_THRESHOLD_BYTES, combine
from .propagate import CostModel, Inserted, ShardingResult, propagate, traced_cost_model
from .read import read
from .spec import Mesh
from .strategies import DATA_ROOTS, Strategy, check, layouts, parse_axes, parse_mesh_text, parse_pins

SHARDING_READS = frozenset({"compute.", "efficiency.", "memory.", "scale_up.", "scale_out."})

@register
@dataclass(frozen=True)
class Shard:
    """Options: ``mesh`` ("data=4.model=2"; empty: the program's own shardings), axes for ``dp``, ``fsdp``,
    ``tp``, ``cp``, ``ep`` ("+"-joined for several), ``sp`` (Megatron sequence parallelism), ``zero1``
    (optimizer state split over the dp axes),
    ``data`` (argument roots holding the batch, "+"-joined), ``pins`` ("PATTERN=DIMS;...", DIMS like
    ``_:model``), ``bucket_bytes`` (independent collectives of a kind combined into buckets up to this size per
    device, as XLA's combiners do: 30 MiB by default; 0: one collective per tensor, see ``buckets.py``)."""

    name = "shard"
    mesh: str = ""
    dp: str = ""
    fsdp: str = ""
    tp: str = ""
    sp: bool = False
    zero1: bool = False
    cp: str = ""
    ep: str = ""
    data: str = ""
    pins: str = ""
    bucket_bytes: float = XLA_COMBINE_THRESHOLD_BYTES

    def __post_init__(self) -> None:
        if not self.bucket_bytes >= 0:
            raise ValueError(f"shard: option bucket_bytes must be >= 0 (0: no combining), got {self.bucket_bytes!r}")
        if self.mesh:
            check(self.strategy(), parse_mesh_text(self.mesh))
        elif any((self.dp, self.fsdp, self.tp, self.cp, self.ep, self.pins, self.sp, self.zero1)):
            raise ValueError("strategies (dp/fsdp/tp/cp/ep/sp/zero1/pins) need a mesh, e.g. mesh=data=4.model=2")
        parse_pins(self.pins)

    def strategy(self) -> Strategy:
        return Strategy(dp=parse_axes(self.dp), fsdp=parse_axes(self.fsdp), tp=parse_axes(self.tp), sp=self.sp,
                        zero1=self.zero1, cp=parse_axes(self.cp), ep=parse_axes(self.ep),
                        data_roots=parse_axes(self.data) or DATA_ROOTS, pins=parse_pins(self.pins))

    def describe(self) -> str:
        """The strategy in one line (``dp=data,tp=model,sp``), or ``program shardings``."""
        return self.strategy().describe() if self.mesh else "program shardings"

    @staticmethod
    def carries_shardings(program) -> bool:
        """Whether JAX wrote shardings over more than one device into ``program`` (what ``default_pipeline`` asks
        before putting this pass, reading the program, in front of fusion). Cached on the program. A program whose
        annotations cannot be read (several meshes) counts as sharded, so the pass says why rather than the
        estimate silently pricing one device."""
        hit = program.__dict__.get("_carries_shardings")
        if hit is None:
            try:
                found = read(program.graph)
                hit = found.form != "none" and found.mesh.devices > 1
            except ValueError:
                hit = True
            program.__dict__["_carries_shardings"] = hit
        return hit

    def alternatives(self) -> list["Shard"]:
        """Single-strategy variants over the same mesh (the search module enumerates meshes too)."""
        if not self.mesh:
            return [self]
        axes = parse_mesh_text(self.mesh).names
        out = []
        for a in axes:
            for kind in ("dp", "fsdp", "tp"):
                out.append(Shard(mesh=self.mesh, **{kind: a}))
        return out

    def analyse(self, program, target: Any = None) -> ShardingResult:
        """The partitioner's decisions (layouts, collectives, per-device work) without building a plan."""
        return self._analyse(program, target, traced=False)[0]

    def _analyse(self, program, target: Any, traced: bool) -> tuple[ShardingResult, Any]:
        """(the decisions, the cost model that ranked them: traced ones certify them, ``passes.decisions``)."""
        def cost_model(mesh):
            return traced_cost_model(target, mesh.devices) if traced else CostModel(target, mesh.devices)

        if self.mesh:
            mesh = parse_mesh_text(self.mesh)
            lay = layouts(program.graph, mesh, self.strategy())
            cost = cost_model(mesh)
            res = propagate(program, mesh, lay.inputs, lay.outputs, lay.pinned, target=target,
                            scatter_partials=parse_axes(self.tp) if self.sp else (), cost=cost)
            return _with_notes(res, lay.notes), cost
        found = read(program.graph)
        if found.form == "none":
            cost = cost_model(Mesh(()))
            res = propagate(program, Mesh(()), {}, {}, {}, target=target, cost=cost)
            return _with_notes(res, ("no shardings in the program and no mesh given: one device",)), cost
        cost = cost_model(found.mesh)
        return propagate(program, found.mesh, found.inputs, found.outputs, {}, found.constraints, target=target,
                         cost=cost), cost

    def reads_knobs(self) -> frozenset[str]:
        """The target knobs the decisions read (see ``explorer.sweep``): candidate layouts are ranked by their
        collectives' time on the target's networks and by their local work at its peak rates."""
        return SHARDING_READS

    def run(self, program, plan: Plan, target) -> Plan:
        return self._planned(program, plan, target, self.analyse(program, target))

    def run_certified(self, program, plan: Plan, target) -> tuple[Plan, Any]:
        """``run``, and the certificate of its decisions (``passes.decisions.Certificate``): on which other targets
        the partitioner would decide exactly as it did on this one (a sweep checks it instead of re-running)."""
        res, cost = self._analyse(program, target, traced=True)
        return self._planned(program, plan, target, res), cost.certificate()

    def _planned(self, program, plan: Plan, target, res: ShardingResult) -> Plan:
        source = (f"{self.strategy().describe()} on the given mesh" if self.mesh
                  else "sharded as the program's shardings say")
        kernels = collective_kernels(res, self.bucket_bytes, program.weights, target)
        launched = sum(1 for k in kernels if k.work.collective)
        combined = (f" ({launched} after combining into buckets of up to {self.bucket_bytes / 2**20:g} MiB)"
                    if launched != len(res.collectives) else "")
        return plan.with_(work_overrides={**(plan.work_overrides or {}), **res.works},
                          value_bytes={**(plan.value_bytes or {}), **res.value_bytes},
                          extra_kernels=plan.extra_kernels + kernels,
                          boundaries=plan.boundaries | collective_boundaries(res),
                          notes=plan.notes + tuple(f"shard: {n}" for n in res.notes)
                          + (f"shard: {source}: mesh {res.mesh} ({res.mesh.devices} devices, figures per device), "
                             f"{len(res.collectives)} collectives{combined}",))


def collective_kernels(res: ShardingResult, bucket_bytes: float = 0.0, weights=None,
                       target: Any = None) -> tuple[ExtraKernel, ...]:
    """One ``ExtraKernel`` per inserted collective, or per bucket of them (``bucket_bytes`` > 0, see ``buckets``).
    On a GPU (``contiguous_all_reduce``) a combined all-reduce also copies its members into one buffer before it
    and out again after it."""
    out: list[ExtraKernel] = []
    contiguous = contiguous_all_reduce(target)
    for c in combine(res.collectives, bucket_bytes, weights):
        if not (contiguous and c.kind == "all_reduce" and len(c.members) > 1):
            out.append(_kernel(c))
            continue
        # XLA:GPU's all-reduce-contiguous: the members concatenated into one buffer (one kernel), the all-reduce
        # on it, one slice out per member (fused copies, each reading and writing its part once; measured on the
        # 8-device Megatron MLP step: concatenate + all-reduce + two slices)
        total = float(sum(c.members))
        copy = lambda name, nbytes, before, **kw: ExtraKernel(  # noqa: E731
            name=name, work=Work(bytes_read=nbytes, bytes_written=nbytes), after_op=c.after_op, layer=c.layer,
            phase=c.phase, before_op=before, **kw)
        # the buffer is live from the concatenation until the slices have read it (before the first reader)
        out.append(copy("copy[concatenate]", total, None, holds_bytes=total,
                        holds_until=c.consumer if c.consumer >= 0 else -2))
        out.append(_kernel(c))
        out.extend(copy("copy[slice]", float(b), c.consumer) for b in c.members)
    return tuple(out)


def contiguous_all_reduce(target: Any) -> bool:
    """Whether ``target``'s compiler runs a combined all-reduce on one contiguous buffer: XLA:GPU does
    (``xla_gpu_all_reduce_contiguous``, on by default); XLA:TPU reduces the members where they are."""
    if target is None:
        return False
    platform = getattr(getattr(target, "compiler", None), "platform", "")
    return getattr(target, "kind", "") == "gpu" or platform in ("cuda", "rocm")


def _kernel(c: Inserted) -> ExtraKernel:
    return ExtraKernel(name=f"{c.kind}{{{','.join(c.axes)}}}", work=c.work(), after_op=c.after_op,
                       layer=c.layer, phase=c.phase, overlappable=c.overlappable, before_op=c.consumer)


def collective_boundaries(res: ShardingResult) -> frozenset[tuple[int, int]]:
    """(value, reader) pairs with a collective between them: the reader takes the collective's result from memory,
    so no kernel fuses the value's producer with that reader (a data-parallel weight update waits for the gradient's
    all-reduce; it is not a GEMM epilogue)."""
    return frozenset((c.value, c.consumer) for c in res.collectives if c.consumer >= 0 and c.value >= 0)


def _with_notes(res: ShardingResult, notes) -> ShardingResult:
    return replace(res, notes=tuple(notes) + res.notes)


def shard_program(program, target: Any = None, **options) -> ShardingResult:
    """``Shard(**options).analyse(program, target)``: e.g. ``shard_program(p, mesh="data=4", fsdp="data")``."""
    return Shard(**options).analyse(program, target)
