"""TOML presets -> ``Target``. Target files are data (tomllib), never executed.

Every error names the file, the field and the bad value; unknown fields are rejected
(with the closest known name), so a typo never silently falls back to a default.
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from .schema import checked_number
from .target import (CompilerSettings, Compute, Efficiency, FrozenMap, MemoryLevel, Network, Target, TargetError,
                     parse_variant_name)

PRESETS = Path(__file__).parent / "presets"

_TOP = {"name": True, "description": True, "kind": True, "launch_overhead_s": True, "tdp_w": True,
        "price_usd": False, "die_area_mm2": False, "compute": True, "memory": True, "scale_up": True,
        "scale_out": True, "efficiency": True, "compiler": False, "launch_mode": False, "kernel_gap_s": False,
        "async_collectives": False}
_COMPUTE = {"matrix_flops_per_s": True, "vector_flops_per_s": True, "transcendental_per_s": True,
            "matrix_units": True, "matrix_tile": True, "clock_hz": True, "f32_matmul": False,
            "split_k": False, "gemm_overhead_s": False}
_MEMORY = {"name": True, "kind": True, "capacity_bytes": True, "bandwidth_bytes_per_s": True, "latency_s": True}
_NETWORK = {"topology": True, "domain_size": True, "torus_dims": False, "link_bandwidth_bytes_per_s": True,
            "links_per_chip": True, "chip_bandwidth_bytes_per_s": True, "latency_s": True, "efficiency": True,
            "in_network_reduction": False}
_COMPILER = {"platform": False, "cuda_compute_capability": False, "tpu_version": False}
_EFFICIENCY = {"matrix": True, "vector": True, "memory": True}


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def as_target(target: Any) -> Any:
    """``target`` itself, or the target a preset name or TOML path (``str`` or ``os.PathLike``) names: what every
    entry point taking a target accepts."""
    if isinstance(target, (str, os.PathLike)):
        return load(target)
    return target


def load(name_or_path: str | Path) -> Target:
    """A preset by name, a target TOML file by path, or a variant's name (``h100_sxm[memory.hbm.capacity_bytes=1.6e11]``,
    as ``Target.replace`` names it: the preset with those knobs replaced).

    A path to an existing file is read as a target file whatever its suffix (``chip.TOML``, ``chip``); a
    name with no ``/`` that is not a file is a preset name."""
    path = Path(name_or_path)
    text = str(name_or_path)
    as_file = path.suffix.lower() == ".toml" or path.is_file() or "/" in text
    if not as_file:
        base, knobs = parse_variant_name(text)
        if knobs and base != text:
            return load(base).replace(**knobs)
        candidate = PRESETS / f"{text}.toml"
        if not candidate.is_file():
            close = difflib.get_close_matches(text, names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TargetError(f"unknown target {text!r}{hint}; presets: {', '.join(names())} (or a path to a .toml file)")
        path = candidate
    if not path.is_file():
        raise TargetError(f"{path}: no such target file")
    raw = path.read_bytes()
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise TargetError(f"{path.name}: not a UTF-8 text file (byte {raw[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start}, line {line}); a target file is TOML text in UTF-8") from None
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path.name}: not valid TOML: {_toml_error(exc, source)}") from None
    return from_dict(data, where=path.name, source=str(path))


def _toml_error(exc: tomllib.TOMLDecodeError, source: str) -> str:
    """tomllib's message, with the offending line and, for a duplicate, the key it repeats."""
    msg = str(exc)
    m = re.search(r"line (\d+)", msg)
    if not m:
        return msg
    lines = source.splitlines()
    n = int(m.group(1))
    line = lines[n - 1].split("#", 1)[0].strip() if 0 < n <= len(lines) else ""
    if "overwrite" in msg.lower() or "declare" in msg.lower():
        key = line.strip("[] ").split("=", 1)[0].strip() if line else ""
        table = _table_at(lines, n)
        full = f"{table}.{key}" if table and not line.startswith("[") else key
        if key and line.startswith("["):
            return f"duplicate table [{key}] (line {n}: {line!r}); each table may be declared once"
        if key:
            return f"duplicate key {full!r} (line {n}: {line!r}); each key may be set once"
    return f"{msg}: {line!r}" if line else msg


def _table_at(lines: list[str], n: int) -> str:
    """The [table] header in force at line ``n`` (1-based), or ''."""
    for text in reversed(lines[:n - 1]):
        t = text.split("#", 1)[0].strip()
        if t.startswith("[[") and t.endswith("]]"):
            return t[2:-2].strip()
        if t.startswith("[") and t.endswith("]"):
            return t[1:-1].strip()
    return ""


def _check_keys(where: str, prefix: str, data: Any, schema: dict[str, bool]) -> None:
    if not isinstance(data, dict):
        raise TargetError(f"{where}: field {prefix.rstrip('.')!r} must be a table, got {data!r}")
    for key in data:
        if key not in schema:
            close = difflib.get_close_matches(key, schema, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise TargetError(f"{where}: unknown field {prefix + key!r} = {data[key]!r}{hint}")
    for key, required in schema.items():
        if required and key not in data:
            raise TargetError(f"{where}: missing required field {prefix + key!r}")


def _num(where: str, field: str, value: Any, integer: bool = False) -> Any:
    return checked_number(value, f"{where}: field {field!r}", integer)


def _str(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TargetError(f"{where}: field {field!r} must be a string, got {value!r}")
    return value


def _bool(where: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TargetError(f"{where}: field {field!r} must be true or false, got {value!r}")
    return value


def _network(where: str, prefix: str, d: Any) -> Network:
    _check_keys(where, prefix, d, _NETWORK)
    dims = d.get("torus_dims", [])
    if not isinstance(dims, list):
        raise TargetError(f"{where}: field {prefix + 'torus_dims'!r} must be a list of integers, got {dims!r}")
    flag = d.get("in_network_reduction", False)
    if not isinstance(flag, bool):
        raise TargetError(f"{where}: field {prefix + 'in_network_reduction'!r} must be true or false, got {flag!r}")
    return Network(
        topology=_str(where, prefix + "topology", d["topology"]),
        domain_size=_num(where, prefix + "domain_size", d["domain_size"], integer=True),
        torus_dims=tuple(_num(where, prefix + "torus_dims", x, integer=True) for x in dims),
        link_bandwidth_bytes_per_s=_num(where, prefix + "link_bandwidth_bytes_per_s", d["link_bandwidth_bytes_per_s"]),
        links_per_chip=_num(where, prefix + "links_per_chip", d["links_per_chip"], integer=True),
        chip_bandwidth_bytes_per_s=_num(where, prefix + "chip_bandwidth_bytes_per_s", d["chip_bandwidth_bytes_per_s"]),
        latency_s=_num(where, prefix + "latency_s", d["latency_s"]),
        efficiency=_num(where, prefix + "efficiency", d["efficiency"]),
        in_network_reduction=flag,
    )


def from_dict(data: dict, where: str = "<dict>", source: str = "") -> Target:
    """Build and validate a target from parsed TOML data."""
    _check_keys(where, "", data, _TOP)
    c = data["compute"]
    _check_keys(where, "compute.", c, _COMPUTE)
    rates = {}
    for table in ("matrix_flops_per_s", "vector_flops_per_s"):
        t = c[table]
        if not isinstance(t, dict):
            raise TargetError(f"{where}: field 'compute.{table}' must be a table of dtype = rate, got {t!r}")
        rates[table] = FrozenMap({k: _num(where, f"compute.{table}.{k}", v) for k, v in t.items()})
    tile = c["matrix_tile"]
    if not isinstance(tile, list) or len(tile) != 3:
        raise TargetError(f"{where}: field 'compute.matrix_tile' must be [m, n, k], got {tile!r}")
    compute = Compute(
        matrix_flops_per_s=rates["matrix_flops_per_s"], vector_flops_per_s=rates["vector_flops_per_s"],
        transcendental_per_s=_num(where, "compute.transcendental_per_s", c["transcendental_per_s"]),
        matrix_units=_num(where, "compute.matrix_units", c["matrix_units"], integer=True),
        matrix_tile=tuple(_num(where, f"compute.matrix_tile.{axis}", x, integer=True) for axis, x in zip("mnk", tile)),
        clock_hz=_num(where, "compute.clock_hz", c["clock_hz"]),
        f32_matmul=_str(where, "compute.f32_matmul", c.get("f32_matmul", "")),
        split_k=_bool(where, "compute.split_k", c.get("split_k", True)),
        gemm_overhead_s=_num(where, "compute.gemm_overhead_s", c.get("gemm_overhead_s", 0.0)),
    )
    mem = data["memory"]
    if not isinstance(mem, list) or not mem:
        raise TargetError(f"{where}: field 'memory' must be a list of [[memory]] tables, got {mem!r}")
    levels = []
    for i, m in enumerate(mem):
        p = f"memory[{i}]."
        _check_keys(where, p, m, _MEMORY)
        levels.append(MemoryLevel(
            name=_str(where, p + "name", m["name"]), kind=_str(where, p + "kind", m["kind"]),
            capacity_bytes=_num(where, p + "capacity_bytes", m["capacity_bytes"]),
            bandwidth_bytes_per_s=_num(where, p + "bandwidth_bytes_per_s", m["bandwidth_bytes_per_s"]),
            latency_s=_num(where, p + "latency_s", m["latency_s"])))
    e = data["efficiency"]
    _check_keys(where, "efficiency.", e, _EFFICIENCY)
    optional = {}
    for f in ("price_usd", "die_area_mm2"):
        if f in data:
            optional[f] = _num(where, f, data[f])
    if "launch_mode" in data:
        optional["launch_mode"] = _str(where, "launch_mode", data["launch_mode"])
    if "kernel_gap_s" in data:
        optional["kernel_gap_s"] = _num(where, "kernel_gap_s", data["kernel_gap_s"])
    if "async_collectives" in data:
        optional["async_collectives"] = _bool(where, "async_collectives", data["async_collectives"])
    if "compiler" in data:
        _check_keys(where, "compiler.", data["compiler"], _COMPILER)
        optional["compiler"] = CompilerSettings(**{k: _str(where, f"compiler.{k}", v)
                                                   for k, v in data["compiler"].items()})
    return Target(
        name=_str(where, "name", data["name"]), description=_str(where, "description", data["description"]),
        kind=_str(where, "kind", data["kind"]), compute=compute, memory=tuple(levels),
        scale_up=_network(where, "scale_up.", data["scale_up"]), scale_out=_network(where, "scale_out.", data["scale_out"]),
        efficiency=Efficiency(**{f: _num(where, f"efficiency.{f}", e[f]) for f in ("matrix", "vector", "memory")}),
        launch_overhead_s=_num(where, "launch_overhead_s", data["launch_overhead_s"]),
        tdp_w=_num(where, "tdp_w", data["tdp_w"]), source=source or where, **optional)
