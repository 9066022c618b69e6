"""Hardware targets: frozen dataclasses whose field names carry their units.

A target describes one accelerator and the system around it. A what-if variant is a
``replace`` of one knob (``target.replace(**{"memory.hbm.bandwidth_bytes_per_s": 6.7e12})``),
never a mutation; every variant is validated like a loaded preset.
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from .schema import (F32_MATMUL_MODES, INT_FIELDS, LAUNCH_MODES, MATRIX_DTYPES, MEMORY_KINDS,  # noqa: F401
                     TARGET_KINDS, TOPOLOGIES, VECTOR_DTYPES, TargetError, check_range, checked_number, range_of)
from .validate import validate_target


class FrozenMap(Mapping[str, float]):
    """A read-only, hashable mapping (dtype -> rate) so targets stay hashable."""

    def __init__(self, items: Mapping[str, float] | None = None):
        self._d = dict(sorted((items or {}).items()))

    def __getitem__(self, k: str) -> float:
        return self._d[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(tuple(self._d.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._d) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


@dataclass(frozen=True)
class MemoryLevel:
    name: str                      # "smem", "l2", "sram", "vmem", "hbm", "host", ...
    kind: str                      # on_chip | cache | main | host
    capacity_bytes: float
    bandwidth_bytes_per_s: float   # aggregate, one chip; for "host": the host link, one direction
    latency_s: float


@dataclass(frozen=True)
class Network:
    topology: str                  # switch | ring | full_mesh | torus_2d | torus_3d | fat_tree | none
    domain_size: int               # chips reachable in this network
    torus_dims: tuple[int, ...]    # () unless a torus; product == domain_size
    link_bandwidth_bytes_per_s: float    # one link, one direction
    links_per_chip: int
    chip_bandwidth_bytes_per_s: float    # all links of one chip, one direction
    latency_s: float               # per hop / per message start-up (alpha)
    efficiency: float              # achievable fraction of link bandwidth at large messages
    in_network_reduction: bool     # e.g. NVLink SHARP in NVSwitch systems


@dataclass(frozen=True)
class Compute:
    matrix_flops_per_s: FrozenMap        # dense peaks by operand dtype: fp32 tf32 bf16 fp16 fp8 int8 (int8 in ops/s)
    vector_flops_per_s: FrozenMap        # non-matrix units: fp32 bf16 fp16 fp64
    transcendental_per_s: float          # exp/log/tanh/rsqrt... elements per second
    matrix_units: int                    # units a matmul's output tiles are spread over (SMs, TensorCores, CUs)
    matrix_tile: tuple[int, int, int]    # (m, n, k) tile a unit processes natively; dims are padded to it
    clock_hz: float
    f32_matmul: str = ""                 # how f32 operands run: tf32 | bf16_passes | fp32 ("": from the figures)
    split_k: bool = True                 # the GEMM library splits K (split-K / stream-K) when tiles are few
    gemm_overhead_s: float = 0.0         # fixed seconds per matrix-unit call on top of its compute (a CPU's GEMM
                                         # library: thread-pool fork / join, packing); 0 where kernel_gap_s has it


@dataclass(frozen=True)
class Efficiency:
    matrix: float      # achievable fraction of the dense matrix peak on large, well-shaped GEMMs
    vector: float      # achievable fraction of the vector / transcendental peaks
    memory: float      # achievable fraction of a memory level's peak bandwidth (streaming)


@dataclass(frozen=True)
class CompilerSettings:
    """How the real compiler sees this chip (``explorer.lower(..., compiler="xla", target=...)``); text, not knobs.

    ``platform``: "cuda" (XLA:GPU), "tpu" (XLA:TPU), "" (from ``kind``: gpu -> cuda, tpu -> tpu) or "none".
    ``cuda_compute_capability``: the SM generation XLA:GPU compiles for ("9.0"; Hopper when empty).
    ``tpu_version``: the libtpu chip generation ("v5p"; from the name when empty)."""

    platform: str = ""
    cuda_compute_capability: str = ""
    tpu_version: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, "")
        return value if value else default

    def __bool__(self) -> bool:
        return bool(self.platform or self.cuda_compute_capability or self.tpu_version)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str
    compute: Compute
    memory: tuple[MemoryLevel, ...]      # fastest first
    scale_up: Network
    scale_out: Network
    efficiency: Efficiency
    launch_overhead_s: float             # per kernel launch / dispatch
    tdp_w: float
    price_usd: float | None = None
    die_area_mm2: float | None = None
    compiler: CompilerSettings = field(default_factory=CompilerSettings)
    launch_mode: str = "per_kernel"      # per_kernel: the host issues every kernel; graph: one launch per step
    kernel_gap_s: float = 0.0            # engine time between two kernels on one stream (device-side dispatch)
    async_collectives: bool = True       # collectives run on their own stream, beside independent compute
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _PARTIAL.get():        # ``replace`` validates its result once, not each knob's step towards it
            validate_target(self, self.source or self.name)

    # -- lookups --------------------------------------------------------------------
    @property
    def main_memory(self) -> MemoryLevel:
        return next(m for m in self.memory if m.kind == "main")

    @property
    def on_chip(self) -> MemoryLevel | None:
        levels = [m for m in self.memory if m.kind == "on_chip"]
        return max(levels, key=lambda m: (m.capacity_bytes, m.name)) if levels else None

    @property
    def host_memory(self) -> MemoryLevel | None:
        return next((m for m in self.memory if m.kind == "host"), None)

    def memory_level(self, name: str) -> MemoryLevel:
        for m in self.memory:
            if m.name == name:
                return m
        raise TargetError(f"{self.name}: no memory level {name!r}; levels: {', '.join(m.name for m in self.memory)}")

    def matrix_rate(self, dtype: str) -> float:
        """Matrix-unit flops/s for an operand element type (StableHLO names: f32, bf16, f8E4M3FN, i8, ...).

        Fallbacks where a chip lists no figure: fp8 -> bf16; int8 -> the larger of fp8 and bf16;
        fp16 -> bf16; tf32 (f32 at default precision) -> fp32; fp32 -> the fp32 vector rate;
        f64 and other integers -> the fp32 vector rate.
        """
        m = self.compute.matrix_flops_per_s
        key = _matrix_key(dtype)
        if key in m:
            return m[key]
        if key == "fp8":
            return m["bf16"]
        if key == "int8":
            return max(m.get("fp8", 0.0), m["bf16"])
        if key == "fp16":
            return m["bf16"]
        if key == "tf32" and "fp32" in m:
            return m["fp32"]
        return self.vector_rate("f32")

    @property
    def f32_matmul_mode(self) -> str:
        """How the matrix unit runs f32 operands (``compute.f32_matmul``; when empty: "tf32" where a TF32 rate is
        listed, "bf16_passes" on a TPU, else "fp32")."""
        mode = self.compute.f32_matmul
        if mode:
            return mode
        if "tf32" in self.compute.matrix_flops_per_s:
            return "tf32"
        return "bf16_passes" if self.kind == "tpu" else "fp32"

    def vector_rate(self, dtype: str) -> float:
        """Vector-unit flops/s: bf16/fp16 fall back to fp32; every other type runs at the fp32 rate."""
        v = self.compute.vector_flops_per_s
        key = {"bf16": "bf16", "f16": "fp16", "f64": "fp64"}.get(dtype, "fp32")
        return v.get(key, v["fp32"])

    # -- what-if knobs ----------------------------------------------------------------
    def knobs(self) -> dict[str, float]:
        """Every numeric what-if parameter, by dotted name (deterministic order)."""
        k: dict[str, float] = {}
        c = self.compute
        for d, v in c.matrix_flops_per_s.items():
            k[f"compute.matrix_flops_per_s.{d}"] = float(v)
        for d, v in c.vector_flops_per_s.items():
            k[f"compute.vector_flops_per_s.{d}"] = float(v)
        k["compute.transcendental_per_s"] = float(c.transcendental_per_s)
        k["compute.matrix_units"] = float(c.matrix_units)
        for axis, v in zip("mnk", c.matrix_tile):
            k[f"compute.matrix_tile.{axis}"] = float(v)
        k["compute.clock_hz"] = float(c.clock_hz)
        k["compute.gemm_overhead_s"] = float(c.gemm_overhead_s)
        for m in self.memory:
            for f in ("capacity_bytes", "bandwidth_bytes_per_s", "latency_s"):
                k[f"memory.{m.name}.{f}"] = float(getattr(m, f))
        for net_name in ("scale_up", "scale_out"):
            net = getattr(self, net_name)
            for f in ("domain_size", "link_bandwidth_bytes_per_s", "links_per_chip", "chip_bandwidth_bytes_per_s",
                      "latency_s", "efficiency"):
                k[f"{net_name}.{f}"] = float(getattr(net, f))
        for f in ("matrix", "vector", "memory"):
            k[f"efficiency.{f}"] = float(getattr(self.efficiency, f))
        k["launch_overhead_s"] = float(self.launch_overhead_s)
        k["kernel_gap_s"] = float(self.kernel_gap_s)
        k["tdp_w"] = float(self.tdp_w)
        if self.price_usd is not None:
            k["price_usd"] = float(self.price_usd)
        if self.die_area_mm2 is not None:
            k["die_area_mm2"] = float(self.die_area_mm2)
        return k

    def replace(self, name: str | None = None, **changes: float) -> "Target":
        """A new, validated target with the given knobs (dotted names from ``knobs()``) changed.

        ``name``: the variant's name. Without it, a variant whose knobs differ gets a name that says how
        (``h100_sxm[memory.hbm.bandwidth_bytes_per_s=6.7e12]``), so comparisons and sweeps tell the
        variants apart; ``hw_targets.load`` of such a name rebuilds the variant from its preset. Values:
        Python or numpy numbers."""
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise TargetError(f"{self.name}: replace(name=...) must be a non-empty string, got {name!r}")
        t = self
        known = self.knobs()
        token = _PARTIAL.set(True)
        try:
            t = self._with_knobs(changes, known)
        finally:
            _PARTIAL.reset(token)
        after = t.knobs()
        moved = {k: after[k] for k in changes if after[k] != known[k]}
        if name is None:
            name = variant_name(self.name, moved) if moved else self.name
        return dataclasses.replace(t, name=name, source=self.source)       # validated here, as a whole

    def _with_knobs(self, changes: Mapping[str, Any], known: Mapping[str, float]) -> "Target":
        """The knobs set one by one (each checked against its own range and read back), not yet validated."""
        t = self
        for knob, value in changes.items():
            if knob not in known:
                close = difflib.get_close_matches(knob, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TargetError(f"{self.name}: unknown knob {knob!r}{hint}")
            r = range_of(knob)
            want = checked_number(value, f"{self.name}: knob {knob!r}", bool(r and r.integer))
            if not self._network_bandwidth_off(knob, want):
                # the knob's own range first, so the message names the knob as given, not the preset file's field
                check_range(self.name, knob, knob, want, what="knob")
            t = _set(t, knob, value, self.name)
            got = t.knobs().get(knob)
            if got != want:      # never a silent no-op
                raise TargetError(f"{self.name}: knob {knob!r} = {value!r} did not apply (the target has {got!r})")
        return t

    def _network_bandwidth_off(self, knob: str, value: float) -> bool:
        """A bandwidth of 0 on a network of topology 'none' (no network), which the validation allows."""
        head, _, field_name = knob.partition(".")
        return (head in ("scale_up", "scale_out") and field_name.endswith("bandwidth_bytes_per_s") and value == 0
                and getattr(self, head).topology == "none")


_PARTIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("target_partial", default=False)


def variant_name(name: str, knobs: Mapping[str, float]) -> str:
    """``base[knob=value,...]``: ``name`` (itself possibly a variant's) with ``knobs`` set, values in their
    shortest exact form, so ``parse_variant_name`` gives the same numbers back."""
    base, earlier = parse_variant_name(name)
    merged = {**earlier, **{k: float(v) for k, v in knobs.items()}}
    return base + "[" + ",".join(f"{k}={number_text(v)}" for k, v in merged.items()) + "]"


def parse_variant_name(name: str) -> tuple[str, dict[str, float]]:
    """``"h100_sxm[memory.hbm.bandwidth_bytes_per_s=6.7e12]"`` -> ("h100_sxm", {knob: 6.7e12}); a plain name
    -> (name, {})."""
    if not name.endswith("]") or "[" not in name:
        return name, {}
    base, _, body = name[:-1].partition("[")
    knobs: dict[str, float] = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        try:
            knobs[key.strip()] = float(value)
        except ValueError:
            return name, {}
        if not eq or not key.strip():
            return name, {}
    return base, knobs


def number_text(x: float) -> str:
    """The shortest text that reads back as exactly ``x`` (6.7e12, 264, 0.87, 4e-06 -> "4e-6")."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    for digits in range(1, 18):
        text = f"{x:.{digits}g}"
        if float(text) == x:
            break
    mantissa, e, exponent = text.partition("e")
    return mantissa + (f"e{int(exponent)}" if e else "")


def _as_number(value: Any, name: str, owner: str, integer: bool) -> float | int:
    return checked_number(value, f"{owner}: knob {name!r}", integer)


def _set(t: Target, knob: str, value: Any, owner: str) -> Target:
    path = knob.split(".")
    head = path[0]
    if head == "compute":
        c = t.compute
        if path[1] in ("matrix_flops_per_s", "vector_flops_per_s"):
            d = dict(getattr(c, path[1]))
            d[path[2]] = _as_number(value, knob, owner, False)
            c = dataclasses.replace(c, **{path[1]: FrozenMap(d)})
        elif path[1] == "matrix_tile":
            tile = list(c.matrix_tile)
            tile["mnk".index(path[2])] = _as_number(value, knob, owner, True)
            c = dataclasses.replace(c, matrix_tile=tuple(tile))
        else:
            c = dataclasses.replace(c, **{path[1]: _as_number(value, knob, owner, path[1] in INT_FIELDS)})
        return _rebuild(t, compute=c)
    if head == "memory":
        level, field_name = knob[len("memory."):].rsplit(".", 1)     # memory.<level name>.<field>
        levels = tuple(dataclasses.replace(m, **{field_name: _as_number(value, knob, owner, False)})
                       if m.name == level else m for m in t.memory)
        return _rebuild(t, memory=levels)
    if head in ("scale_up", "scale_out"):
        net = getattr(t, head)
        new = dataclasses.replace(net, **{path[1]: _as_number(value, knob, owner, path[1] in INT_FIELDS)})
        if path[1] == "domain_size" and net.torus_dims and new.domain_size != net.domain_size:
            new = dataclasses.replace(new, torus_dims=())   # a resized torus is described by its size alone
        return _rebuild(t, **{head: new})
    if head == "efficiency":
        return _rebuild(t, efficiency=dataclasses.replace(t.efficiency, **{path[1]: _as_number(value, knob, owner, False)}))
    return _rebuild(t, **{head: _as_number(value, knob, owner, False)})


def _rebuild(t: Target, **changes: Any) -> Target:
    return dataclasses.replace(t, **changes)


def _matrix_key(dtype: str) -> str:
    if dtype in MATRIX_DTYPES:
        return dtype
    if dtype == "f32":
        return "fp32"
    if dtype == "f16":
        return "fp16"
    if dtype.startswith("f8"):
        return "fp8"
    if dtype in ("i8", "ui8", "i4", "ui4"):
        return "int8"
    return dtype
