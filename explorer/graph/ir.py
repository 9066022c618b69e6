"""The project's own graph IR: a read-only, flattened view of a StableHLO module.

Why flat: every cost question ("how much work, where, how often") is a sum over
ops weighted by how many times they run. Calls are inlined per call site (so each
op keeps its full JAX name stack), and structured control flow is kept as
*frames* on each op (which ``while`` it sits in, which ``case`` branch), so loop
trip counts and branch choices are decided later, per program, without touching
the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

# Bytes per element for StableHLO element types. Sub-byte types are rounded up
# per element, as XLA stores them unpacked unless told otherwise.
_DTYPE_BYTES = {
    "f64": 8, "f32": 4, "tf32": 4, "bf16": 2, "f16": 2,
    "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i4": 1, "i2": 1, "i1": 1,
    "ui64": 8, "ui32": 4, "ui16": 2, "ui8": 1, "ui4": 1, "ui2": 1,
    "complex<f32>": 8, "complex<f64>": 16,
}


def dtype_bytes(dtype: str) -> int:
    """Storage bytes of one element of a StableHLO element type (f8* = 1, f4/f6 = 1)."""
    if dtype in _DTYPE_BYTES:
        return _DTYPE_BYTES[dtype]
    if dtype.startswith(("f8", "f6", "f4")):
        return 1
    if dtype.startswith("!stablehlo.token") or dtype == "token":
        return 0
    raise ValueError(f"unknown element type {dtype!r}")


@dataclass(frozen=True)
class TensorType:
    """Shape and element type of one SSA value (a token or opaque type has shape () and 0 bytes)."""

    shape: tuple[int, ...]
    dtype: str
    elements: int = field(init=False, repr=False, compare=False)   # derived once: read in every hot loop
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = math.prod(self.shape)
        object.__setattr__(self, "elements", n)
        object.__setattr__(self, "nbytes", 0 if self.dtype in ("token", "opaque") else n * dtype_bytes(self.dtype))

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.shape))}{'x' if self.shape else ''}{self.dtype}"


@dataclass(frozen=True)
class Frame:
    """One enclosing structured-control-flow region of an op.

    kind "while": the op runs once per iteration of loop ``op_id``.
    kind "case": the op belongs to branch ``branch`` of case/if ``op_id``.
    """

    kind: str
    op_id: int
    branch: int = 0


@dataclass(frozen=True)
class Op:
    """One operation, after inlining. ``attrs`` holds plain Python values only."""

    id: int
    name: str                     # e.g. "stablehlo.dot_general", "chlo.erf", "stablehlo.custom_call"
    operands: tuple[int, ...]     # value ids
    results: tuple[int, ...]      # value ids
    attrs: Mapping[str, Any]
    name_stack: str               # JAX name stack, e.g. "jit(step)/transpose(jvp(GPT))/Block_3/Dense_0/dot_general"
    frames: tuple[Frame, ...] = ()
    regions: tuple[tuple[int, ...], ...] = ()   # ids of ops directly inside each region (structured ops)
    body_flops: float = 0.0       # flops of one application of an attached computation (reduce/sort/scatter)

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[-1]


_OP_NEW = object.__new__


def new_op(id: int, name: str, operands: tuple[int, ...], results: tuple[int, ...], attrs: Mapping[str, Any],
           name_stack: str, frames: tuple[Frame, ...] = (), regions: tuple[tuple[int, ...], ...] = (),
           body_flops: float = 0.0) -> Op:
    """``Op(...)`` with the same fields, without the frozen dataclass's per-field ``object.__setattr__`` (the
    importer makes one per op: a tenth of its time on a train step)."""
    op = _OP_NEW(Op)
    op.__dict__.update(id=id, name=name, operands=operands, results=results, attrs=attrs, name_stack=name_stack,
                       frames=frames, regions=regions, body_flops=body_flops)
    return op


@dataclass(frozen=True)
class LoopInfo:
    """A ``stablehlo.while`` loop and what the importer could infer about it."""

    op_id: int
    name_stack: str
    trip_count: int | None        # None: could not be inferred
    reason: str                   # how it was inferred, or why not


class ValueIds(tuple):
    """A tuple of value ids whose ``in`` is a set lookup (a program's outputs are checked per value in every pass:
    a scan of the tuple made those passes quadratic in the number of layers). Otherwise a plain tuple."""

    def __contains__(self, v: Any) -> bool:
        s = self.__dict__.get("_set")
        if s is None:
            s = self.__dict__["_set"] = frozenset(tuple.__iter__(self))
        return v in s


@dataclass(frozen=True)
class Graph:
    """A whole imported program. Read-only; passes write decisions elsewhere."""

    name: str
    values: tuple[TensorType, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    input_names: tuple[str, ...]
    loops: tuple[LoopInfo, ...] = ()
    escaping: frozenset[int] = frozenset()
    input_attrs: tuple[Mapping[str, str], ...] = ()   # per input: attribute name -> MLIR text (e.g. "sdy.sharding")
    output_attrs: tuple[Mapping[str, str], ...] = ()
    meshes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # sdy.mesh name -> MLIR text   # values returned from a loop/branch region (read by the next iteration or the parent)
    producers: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if type(self.outputs) is not ValueIds:
            object.__setattr__(self, "outputs", ValueIds(self.outputs))

    def __repr__(self) -> str:
        # short: the default dataclass repr prints every op and value (megabytes on a train step)
        return (f"Graph({self.name!r}, {len(self.ops):,} ops, {len(self.values):,} values, "
                f"{len(self.inputs)} inputs, {len(self.outputs)} outputs, {len(self.loops)} loops)")

    def value(self, vid: int) -> TensorType:
        return self.values[vid]

    def op(self, oid: int) -> Op:
        return self.ops[oid]

    def producer(self, vid: int) -> Op | None:
        oid = self.producers.get(vid)
        return None if oid is None else self.ops[oid]

    def consumers(self) -> Mapping[int, tuple[int, ...]]:
        """value id -> ids of ops reading it (computed once: the graph never changes)."""
        cached = self.__dict__.get("_consumers")
        if cached is None:
            users: dict[int, list[int]] = {}
            for op in self.ops:
                for v in op.operands:
                    users.setdefault(v, []).append(op.id)
            cached = MappingProxyType({v: tuple(u) for v, u in users.items()})
            object.__setattr__(self, "_consumers", cached)
        return cached


def freeze(obj: Any) -> Any:
    """Deep-freeze attribute payloads so ops stay hashable-ish and immutable."""
    if isinstance(obj, dict):
        return MappingProxyType({k: freeze(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return tuple(freeze(v) for v in obj)
    return obj
