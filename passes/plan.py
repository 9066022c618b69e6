"""``Plan``: the decisions passes make about a program, kept apart from the read-only graph.

Thousands of alternative plans can be priced against one imported graph without
copying it. Each field is owned by one pass; ``None`` means "not decided yet" and the
cost model uses its documented default (every op its own kernel; everything in main memory).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class Kernel:
    """One launched kernel: a group of op ids priced together.

    ``bytes_in`` / ``bytes_out``: traffic crossing the group boundary per execution
    (what fusion saves is everything that stays inside). ``spill_bytes``: extra traffic
    when the group's working set exceeds the on-chip capacity.
    """

    ops: tuple[int, ...]
    reads: tuple[tuple[int, float], ...]     # (value id, bytes) read from memory per execution
    writes: tuple[tuple[int, float], ...]    # (value id, bytes) written to memory per execution
    spill_bytes: float = 0.0
    kind: str = "loop"      # "loop", "input" (reduction), "output" (matmul + epilogue), "single", "async"
    overlappable: bool = False   # may run concurrently with independent compute (a compiler's async collective)
    recomputed: tuple[int, ...] = ()   # producers duplicated into this kernel: recomputed here, owned by no kernel

    @property
    def priced_ops(self) -> tuple[int, ...]:
        """The ops whose work this kernel does: its own and the ones it recomputes."""
        return self.ops + self.recomputed

    @property
    def bytes_in(self) -> float:
        return float(sum(b for _, b in self.reads))

    @property
    def bytes_out(self) -> float:
        return float(sum(b for _, b in self.writes))

    @property
    def bytes_moved(self) -> float:
        return self.bytes_in + self.bytes_out + self.spill_bytes


@dataclass(frozen=True)
class ExtraKernel:
    """Work a pass adds that is not an op of the graph (e.g. a collective a sharding pass inserts).

    ``after_op``: the op it follows in the schedule. ``overlappable``: it may run concurrently with
    independent compute (async collectives), so its time can be hidden.
    """

    name: str
    work: Any                  # explorer.costs.Work (per execution)
    after_op: int
    layer: str = "(inserted)"
    phase: str = ""
    overlappable: bool = False
    link: str = ""             # a copy over this memory level's link (e.g. host offload): priced as
                               # ``work.bytes_accessed`` at that link's bandwidth, asynchronous like a collective
    before_op: int | None = None   # the op that needs its result (-2: a program output; None: not said, the
                                   # schedule infers it from the phase)
    holds_bytes: float = 0.0       # a buffer of its own it writes (a combined collective's contiguous buffer), in
    holds_until: int = -2          # main memory from ``after_op`` through this op (-2: the end of the program)


@dataclass(frozen=True)
class Plan:
    kernels: tuple[Kernel, ...] | None = None          # fusion decisions
    placement: Mapping[int, str] | None = None          # value id -> memory level name
    transfer_bytes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # level -> bytes moved over its link
    work_overrides: Mapping[int, Any] | None = None     # op id -> Work per device (set by sharding)
    value_bytes: Mapping[int, float] | None = None      # value id -> bytes per device (set by sharding)
    extra_kernels: tuple[ExtraKernel, ...] = ()         # inserted work (collectives, transfers)
    live_ranges: Mapping[int, tuple[tuple[int, int], ...]] | None = None  # value -> (first op, last op) intervals
                                                        # it occupies memory over (set by remat / activation offload)
    recomputed_ops: frozenset[int] = frozenset()        # ops whose forward work runs again in the backward (remat)
    boundaries: frozenset[tuple[int, int]] = frozenset()  # (value id, op id): a collective runs between the value
                                                        # and that reader, which reads it from memory (no fusion)
    history: tuple[str, ...] = ()                       # passes applied, in order
    notes: tuple[str, ...] = ()

    def with_(self, **changes) -> "Plan":
        return replace(self, **changes)

    def work(self, program, op_id: int):
        """The op's counted work under this plan (per device once sharded)."""
        if self.work_overrides is not None and op_id in self.work_overrides:
            return self.work_overrides[op_id]
        return program.works[op_id]

    def nbytes(self, program, value_id: int) -> float:
        """A value's size under this plan (per device once sharded)."""
        if self.value_bytes is not None and value_id in self.value_bytes:
            return float(self.value_bytes[value_id])
        return float(program.graph.values[value_id].nbytes)
