"""``Plan``: the decisions passes make about a program, kept apart from the read-only graph.

Thousands of alternative plans can be priced against one imported graph without
copying it. Each field is owned by one pass; ``None`` means "not decided yet" and the
cost model uses its documented default (every op its own kernel; everything in main memory).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Kernel:
    """One launched kernel: a group of op ids priced together.

    ``bytes_in`` / ``bytes_out``: traffic crossing the group boundary per execution
    (what fusion saves is everything that stays inside). ``spill_bytes``: extra traffic
    when the group's working set exceeds the on-chip capacity.
    """

    ops: tuple[int, ...]
    bytes_in: float
    bytes_out: float
    spill_bytes: float = 0.0
    kind: str = "loop"      # "loop", "input" (reduction), "output" (matmul + epilogue), "single"

    @property
    def bytes_moved(self) -> float:
        return self.bytes_in + self.bytes_out + self.spill_bytes


@dataclass(frozen=True)
class Plan:
    kernels: tuple[Kernel, ...] | None = None          # fusion decisions
    placement: Mapping[int, str] | None = None          # value id -> memory level name
    transfer_bytes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # level -> bytes moved over its link
    history: tuple[str, ...] = ()                       # passes applied, in order
    notes: tuple[str, ...] = ()

    def with_(self, **changes) -> "Plan":
        return replace(self, **changes)
