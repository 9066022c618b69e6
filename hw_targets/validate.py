"""Invariants every target keeps, whether loaded from TOML or made by ``replace``."""
from __future__ import annotations

import math
from typing import Any

from .schema import MATRIX_DTYPES, MEMORY_KINDS, TARGET_KINDS, TOPOLOGIES, VECTOR_DTYPES, TargetError


def _fail(where: str, field: str, message: str, value) -> None:
    raise TargetError(f"{where}: field {field!r} {message}, got {value!r}")


def _positive(where: str, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(where, field, "must be > 0", value)


def _non_negative(where: str, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        _fail(where, field, "must be >= 0", value)


def _fraction(where: str, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        _fail(where, field, "must be in (0, 1]", value)


def validate_target(t: Any, where: str) -> None:
    """Raise ``TargetError`` naming ``where``, the field and the value on the first invariant ``t`` breaks."""
    if t.kind not in TARGET_KINDS:
        _fail(where, "kind", f"must be one of {', '.join(TARGET_KINDS)}", t.kind)
    c = t.compute
    for d, v in c.matrix_flops_per_s.items():
        if d not in MATRIX_DTYPES:
            _fail(where, f"compute.matrix_flops_per_s.{d}", f"is not a dtype ({', '.join(MATRIX_DTYPES)})", d)
        _positive(where, f"compute.matrix_flops_per_s.{d}", v)
    if "bf16" not in c.matrix_flops_per_s:
        _fail(where, "compute.matrix_flops_per_s.bf16", "is required", None)
    if "fp32" not in c.vector_flops_per_s:
        _fail(where, "compute.vector_flops_per_s.fp32", "is required", None)
    for d, v in c.vector_flops_per_s.items():
        if d not in VECTOR_DTYPES:
            _fail(where, f"compute.vector_flops_per_s.{d}", f"is not a dtype ({', '.join(VECTOR_DTYPES)})", d)
        _positive(where, f"compute.vector_flops_per_s.{d}", v)
    _positive(where, "compute.transcendental_per_s", c.transcendental_per_s)
    _positive(where, "compute.clock_hz", c.clock_hz)
    if not isinstance(c.matrix_units, int) or isinstance(c.matrix_units, bool) or c.matrix_units < 1:
        _fail(where, "compute.matrix_units", "must be an integer >= 1", c.matrix_units)
    if len(c.matrix_tile) != 3 or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in c.matrix_tile):
        _fail(where, "compute.matrix_tile", "must be three integers >= 1 (m, n, k)", c.matrix_tile)
    names = set()
    for i, m in enumerate(t.memory):
        f = f"memory[{i}]"
        if m.kind not in MEMORY_KINDS:
            _fail(where, f"{f}.kind", f"must be one of {', '.join(MEMORY_KINDS)}", m.kind)
        if m.name in names:
            _fail(where, f"{f}.name", "duplicates another memory level", m.name)
        names.add(m.name)
        _positive(where, f"{f}.capacity_bytes", m.capacity_bytes)
        _positive(where, f"{f}.bandwidth_bytes_per_s", m.bandwidth_bytes_per_s)
        _non_negative(where, f"{f}.latency_s", m.latency_s)
    mains = [m for m in t.memory if m.kind == "main"]
    if len(mains) != 1:
        _fail(where, "memory", "must have exactly one level of kind 'main'", [m.name for m in mains])
    for net_name in ("scale_up", "scale_out"):
        n = getattr(t, net_name)
        if n.topology not in TOPOLOGIES:
            _fail(where, f"{net_name}.topology", f"must be one of {', '.join(TOPOLOGIES)}", n.topology)
        if not isinstance(n.domain_size, int) or n.domain_size < 1:
            _fail(where, f"{net_name}.domain_size", "must be an integer >= 1", n.domain_size)
        if n.torus_dims and math.prod(n.torus_dims) != n.domain_size:
            _fail(where, f"{net_name}.torus_dims", f"must multiply to domain_size {n.domain_size}", n.torus_dims)
        if n.topology.startswith("torus") and n.torus_dims and len(n.torus_dims) != int(n.topology[-2]):
            _fail(where, f"{net_name}.torus_dims", f"must have {n.topology[-2]} dimensions for {n.topology}", n.torus_dims)
        if not isinstance(n.links_per_chip, int) or n.links_per_chip < 0:
            _fail(where, f"{net_name}.links_per_chip", "must be an integer >= 0", n.links_per_chip)
        if n.topology != "none":
            _positive(where, f"{net_name}.link_bandwidth_bytes_per_s", n.link_bandwidth_bytes_per_s)
            _positive(where, f"{net_name}.chip_bandwidth_bytes_per_s", n.chip_bandwidth_bytes_per_s)
        _non_negative(where, f"{net_name}.latency_s", n.latency_s)
        _fraction(where, f"{net_name}.efficiency", n.efficiency)
    for f in ("matrix", "vector", "memory"):
        _fraction(where, f"efficiency.{f}", getattr(t.efficiency, f))
    _non_negative(where, "launch_overhead_s", t.launch_overhead_s)
    _positive(where, "tdp_w", t.tdp_w)
    for f in ("price_usd", "die_area_mm2"):
        if getattr(t, f) is not None:
            _positive(where, f, getattr(t, f))
