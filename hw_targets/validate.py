"""Invariants every target keeps, whether loaded from TOML or made by ``replace``.

Every numeric field lies in its physical range (``schema.RANGES``, one table for the loader, this
check and ``Target.replace``); the message names ``where`` (the file), the field, the value and the range.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from .schema import (F32_MATMUL_MODES, INT_FIELDS, LAUNCH_MODES, MATRIX_DTYPES, MEMORY_KINDS, TARGET_KINDS, TOPOLOGIES, VECTOR_DTYPES, TargetError,
                     check_range, range_of)


def _fail(where: str, field: str, message: str, value) -> None:
    raise TargetError(f"{where}: field {field!r} {message}, got {value!r}")


def _number(where: str, label: str, key: str, value, integer: bool = False) -> None:
    """``value`` is a (finite) number, an int where the field holds one, and within the range of ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(where, label, "must be a number", value)
    if integer and not isinstance(value, numbers.Integral):
        r = range_of(key)
        _fail(where, label, f"must be an integer{f' in {r.text()}' if r else ''}", value)
    check_range(where, label, key, value)


_PLATFORMS = ("", "cuda", "tpu", "none")
_TPU_VERSIONS = ("", "v4", "v5e", "v5p", "v6e")


def _validate_compiler(t: Any, where: str) -> None:
    c = getattr(t, "compiler", None)
    if c is None:
        return
    if c.platform not in _PLATFORMS:
        _fail(where, "compiler.platform", f"must be one of {', '.join(repr(p) for p in _PLATFORMS)}", c.platform)
    cc = c.cuda_compute_capability
    if cc and not (cc.count(".") == 1 and all(part.isdigit() for part in cc.split("."))):
        _fail(where, "compiler.cuda_compute_capability", "must look like '9.0' (major.minor)", cc)
    if c.tpu_version not in _TPU_VERSIONS:
        _fail(where, "compiler.tpu_version", f"must be one of {', '.join(v for v in _TPU_VERSIONS if v)}",
              c.tpu_version)


def _validate_schedule(t: Any, where: str) -> None:
    """The fields the step scheduler reads: launch mode, the gap between kernels, async collectives, f32 matmuls."""
    mode = getattr(t, "launch_mode", "per_kernel")
    if mode not in LAUNCH_MODES:
        _fail(where, "launch_mode", f"must be one of {', '.join(repr(m) for m in LAUNCH_MODES)}", mode)
    _number(where, "kernel_gap_s", "kernel_gap_s", getattr(t, "kernel_gap_s", 0.0))
    flag = getattr(t, "async_collectives", True)
    if not isinstance(flag, bool):
        _fail(where, "async_collectives", "must be true or false", flag)
    if not isinstance(getattr(t.compute, "split_k", True), bool):
        _fail(where, "compute.split_k", "must be true or false", t.compute.split_k)
    f32 = getattr(t.compute, "f32_matmul", "")
    if f32 not in ("",) + F32_MATMUL_MODES:
        _fail(where, "compute.f32_matmul", f"must be one of {', '.join(repr(m) for m in F32_MATMUL_MODES)}", f32)


def validate_target(t: Any, where: str) -> None:
    """Raise ``TargetError`` naming ``where``, the field and the value on the first invariant ``t`` breaks."""
    _validate_compiler(t, where)
    if not isinstance(t.name, str) or not t.name.strip():
        _fail(where, "name", "must be a non-empty string", t.name)
    if t.kind not in TARGET_KINDS:
        _fail(where, "kind", f"must be one of {', '.join(TARGET_KINDS)}", t.kind)
    c = t.compute
    for d, v in c.matrix_flops_per_s.items():
        if d not in MATRIX_DTYPES:
            _fail(where, f"compute.matrix_flops_per_s.{d}", f"is not a dtype ({', '.join(MATRIX_DTYPES)})", d)
        _number(where, f"compute.matrix_flops_per_s.{d}", f"compute.matrix_flops_per_s.{d}", v)
    if "bf16" not in c.matrix_flops_per_s:
        _fail(where, "compute.matrix_flops_per_s.bf16", "is required", None)
    if "fp32" not in c.vector_flops_per_s:
        _fail(where, "compute.vector_flops_per_s.fp32", "is required", None)
    for d, v in c.vector_flops_per_s.items():
        if d not in VECTOR_DTYPES:
            _fail(where, f"compute.vector_flops_per_s.{d}", f"is not a dtype ({', '.join(VECTOR_DTYPES)})", d)
        _number(where, f"compute.vector_flops_per_s.{d}", f"compute.vector_flops_per_s.{d}", v)
    for f in ("transcendental_per_s", "clock_hz"):
        _number(where, f"compute.{f}", f"compute.{f}", getattr(c, f))
    _number(where, "compute.gemm_overhead_s", "compute.gemm_overhead_s", getattr(c, "gemm_overhead_s", 0.0))
    _number(where, "compute.matrix_units", "compute.matrix_units", c.matrix_units, integer=True)
    if not isinstance(c.matrix_tile, tuple) or len(c.matrix_tile) != 3:
        _fail(where, "compute.matrix_tile", "must be three integers (m, n, k)", c.matrix_tile)
    for axis, x in zip("mnk", c.matrix_tile):
        _number(where, f"compute.matrix_tile.{axis}", f"compute.matrix_tile.{axis}", x, integer=True)
    names = set()
    for i, m in enumerate(t.memory):
        f = f"memory[{i}]"
        if not isinstance(m.name, str) or not m.name.strip() or m.name != m.name.strip():
            _fail(where, f"{f}.name", "must be a non-empty name without surrounding spaces", m.name)
        if "." in m.name or any(ch.isspace() for ch in m.name):
            _fail(where, f"{f}.name", "must not contain '.' or spaces (knobs are named memory.<name>.<field>)", m.name)
        if m.kind not in MEMORY_KINDS:
            _fail(where, f"{f}.kind", f"must be one of {', '.join(MEMORY_KINDS)}", m.kind)
        if m.name in names:
            _fail(where, f"{f}.name", "duplicates another memory level", m.name)
        names.add(m.name)
        for fld in ("capacity_bytes", "bandwidth_bytes_per_s", "latency_s"):
            _number(where, f"{f}.{fld}", f"memory.{m.name}.{fld}", getattr(m, fld))
    mains = [m for m in t.memory if m.kind == "main"]
    if len(mains) != 1:
        _fail(where, "memory", "must have exactly one level of kind 'main'", [m.name for m in mains])
    for net_name in ("scale_up", "scale_out"):
        n = getattr(t, net_name)
        if n.topology not in TOPOLOGIES:
            _fail(where, f"{net_name}.topology", f"must be one of {', '.join(TOPOLOGIES)}", n.topology)
        for fld in ("domain_size", "links_per_chip"):
            _number(where, f"{net_name}.{fld}", f"{net_name}.{fld}", getattr(n, fld), integer=fld in INT_FIELDS)
        if n.torus_dims:
            if not n.topology.startswith("torus"):
                _fail(where, f"{net_name}.torus_dims", f"only applies to a torus topology, not {n.topology!r}",
                      n.torus_dims)
            for x in n.torus_dims:
                _number(where, f"{net_name}.torus_dims", f"{net_name}.torus_dims", x, integer=True)
            if len(n.torus_dims) != int(n.topology[-2]):
                _fail(where, f"{net_name}.torus_dims", f"must have {n.topology[-2]} dimensions for {n.topology}",
                      n.torus_dims)
            if math.prod(n.torus_dims) != n.domain_size:
                _fail(where, f"{net_name}.torus_dims", f"must multiply to domain_size {n.domain_size}", n.torus_dims)
        for fld in ("link_bandwidth_bytes_per_s", "chip_bandwidth_bytes_per_s"):
            value = getattr(n, fld)
            if n.topology == "none" and isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0:
                continue    # no network: no bandwidth
            _number(where, f"{net_name}.{fld}", f"{net_name}.{fld}", value)
        for fld in ("latency_s", "efficiency"):
            _number(where, f"{net_name}.{fld}", f"{net_name}.{fld}", getattr(n, fld))
    for f in ("matrix", "vector", "memory"):
        _number(where, f"efficiency.{f}", f"efficiency.{f}", getattr(t.efficiency, f))
    _number(where, "launch_overhead_s", "launch_overhead_s", t.launch_overhead_s)
    _validate_schedule(t, where)
    _number(where, "tdp_w", "tdp_w", t.tdp_w)
    for f in ("price_usd", "die_area_mm2"):
        if getattr(t, f) is not None:
            _number(where, f, f, getattr(t, f))
