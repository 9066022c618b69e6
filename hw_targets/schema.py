"""The vocabulary of target data: the allowed kinds, topologies and dtypes, the range of physically
possible values of every numeric field, and the error bad data raises.

Kept apart from ``target.py`` (the dataclasses) and ``validate.py`` (the checks) so the loader, the
validation and ``Target.replace`` read the same table without importing each other.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

MEMORY_KINDS = ("on_chip", "cache", "main", "host")
TOPOLOGIES = ("switch", "ring", "full_mesh", "torus_2d", "torus_3d", "fat_tree", "none")
TARGET_KINDS = ("gpu", "tpu", "npu", "cpu", "hypothetical")
MATRIX_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
VECTOR_DTYPES = ("fp32", "bf16", "fp16", "fp64")
# How the host issues kernels: one launch each (``per_kernel``: the host runs ahead of the chip, asynchronously) or
# the whole step as one launch (``graph``: CUDA graphs / XLA command buffers, a TPU's single program).
LAUNCH_MODES = ("per_kernel", "graph")
# How the matrix unit runs f32 operands: TF32 at default precision and the FP32 SIMT rate at HIGHEST (NVIDIA),
# bf16 passes (TPU MXU: DEFAULT 1, HIGH 3, HIGHEST 6), or natively at its fp32 matrix rate (a CPU, a chip whose
# matrix unit takes f32).
F32_MATMUL_MODES = ("tf32", "bf16_passes", "fp32")


class TargetError(ValueError):
    """Bad target data: the message names the file, the field and the value."""


@dataclass(frozen=True)
class Range:
    """The physically possible values of one field: ``lo`` .. ``hi`` in ``unit`` (``lo_open``: ``lo`` itself
    excluded). Generous on purpose: a hypothetical chip 100x beyond today's loads, a value off by a unit
    prefix (3.35 B/s for 3.35 TB/s, 1.83 Hz for 1.83 GHz, 1e30 B of HBM) does not."""

    lo: float
    hi: float
    unit: str = ""
    integer: bool = False
    lo_open: bool = False
    why: str = ""

    def contains(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        return above and value <= self.hi

    def text(self) -> str:
        lo, hi = _num_text(self.lo), _num_text(self.hi)
        unit = f" {self.unit}" if self.unit else ""
        return f"{'(' if self.lo_open else '['}{lo}, {hi}]{unit}"


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e5 else f"{x:g}"


_RATE = Range(1e6, 1e19, "per s", why="1 M/s (a microcontroller) to 1e19/s (10,000x today's largest accelerator)")
_FRACTION = Range(0.0, 1.0, lo_open=True)   # a fraction of a peak

# Field (dotted as in ``Target.knobs()``; ``*`` matches one name) -> its range. The first matching row applies.
RANGES: dict[str, Range] = {
    "compute.matrix_flops_per_s.*": Range(1e6, 1e19, "flop/s", why=_RATE.why),
    "compute.vector_flops_per_s.*": Range(1e6, 1e19, "flop/s", why=_RATE.why),
    "compute.transcendental_per_s": Range(1e6, 1e19, "elements/s", why=_RATE.why),
    "compute.matrix_units": Range(1, 10_000_000, "units", integer=True, why="SMs / CUs / MXUs / cores per chip"),
    "compute.matrix_tile.*": Range(1, 65536, "elements", integer=True, why="a tile dimension"),
    "compute.gemm_overhead_s": Range(0.0, 0.01, "s", why="0 to 10 ms per matrix-unit call"),
    "compute.clock_hz": Range(1e6, 1e11, "Hz", why="1 MHz to 100 GHz; informational: the cost model reads the rates, not the clock"),
    "memory.*.capacity_bytes": Range(1e3, 1e16, "B", why="1 kB to 10 PB"),
    "memory.*.bandwidth_bytes_per_s": Range(1e6, 1e18, "B/s", why="1 MB/s to 1 EB/s"),
    "memory.*.latency_s": Range(0.0, 1e-3, "s", why="0 to 1 ms per access"),
    "scale_*.domain_size": Range(1, 10_000_000, "chips", integer=True, why="chips in one network"),
    "scale_*.torus_dims": Range(1, 10_000_000, "chips", integer=True, why="chips along one torus dimension"),
    "scale_*.links_per_chip": Range(0, 10_000, "links", integer=True, why="links of one chip"),
    "scale_*.link_bandwidth_bytes_per_s": Range(1e6, 1e16, "B/s", why="1 MB/s to 10 PB/s (0 only for topology 'none')"),
    "scale_*.chip_bandwidth_bytes_per_s": Range(1e6, 1e16, "B/s", why="1 MB/s to 10 PB/s (0 only for topology 'none')"),
    "scale_*.latency_s": Range(0.0, 0.1, "s", why="0 to 100 ms per message"),
    "scale_*.efficiency": _FRACTION,
    "efficiency.*": _FRACTION,
    "launch_overhead_s": Range(0.0, 0.01, "s", why="0 to 10 ms per kernel"),
    "kernel_gap_s": Range(0.0, 0.01, "s", why="0 to 10 ms between two kernels on one stream"),
    "tdp_w": Range(0.0, 1e6, "W", lo_open=True, why="up to 1 MW"),
    "price_usd": Range(0.0, 1e9, "USD", lo_open=True),
    "die_area_mm2": Range(0.0, 1e6, "mm2", lo_open=True),
}

# Fields no formula of the cost model reads: kept as data (and knobs), skipped by ``sensitivity``.
INFORMATIONAL = ("compute.clock_hz",)
# Integer fields by their name inside their section.
INT_FIELDS = frozenset({"matrix_units", "domain_size", "links_per_chip"})


@lru_cache(maxsize=4096)
def range_of(field: str) -> Range | None:
    """The range of a dotted field (``memory.hbm.capacity_bytes``, ``scale_up.domain_size``, ...), or None."""
    for pattern, r in RANGES.items():
        if fnmatchcase(field, pattern):
            return r
    return None


def checked_number(value: Any, subject: str, integer: bool = False) -> float | int:
    """``value`` as a float (or an int): Python and numpy numbers; NaN, inf, bools and text are a
    ``TargetError`` "<subject> must be ..., got ...". An exact int stays exact (a range then judges it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or type(value).__name__ == "bool_":
        raise TargetError(f"{subject} must be a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value) if integer else float(value)
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise TargetError(f"{subject} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise TargetError(f"{subject} must be a finite number, got {value!r}")
    if integer:
        if not x.is_integer():
            raise TargetError(f"{subject} must be an integer, got {value!r}")
        return int(x)
    return x


def check_range(where: str, label: str, key: str, value: Any, what: str = "field") -> None:
    """``TargetError`` naming ``where``, the field (``label``), the value and its range when ``value`` lies outside
    the range of ``key`` (the field's dotted name in ``RANGES``). ``what``: the word before the name ("field" in a
    file, "knob" for ``Target.replace``)."""
    r = range_of(key)
    if r is None:
        return
    subject = f"{where}: {what} {label!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TargetError(f"{subject} must be a finite number in {r.text()}, got {value!r}")
    if r.contains(value):
        return
    if value <= 0 and (r.lo > 0 or r.lo_open):
        raise TargetError(f"{subject} must be > 0, got {value!r} (physical range {r.text()})"
                          if r.hi != 1 else f"{subject} must be in {r.text()}, got {value!r}")
    if value < 0:
        raise TargetError(f"{subject} must be >= 0, got {value!r} (physical range {r.text()})")
    why = f" ({r.why})" if r.why else ""
    raise TargetError(f"{subject} must be in {r.text()}, got {value!r}{why}")
