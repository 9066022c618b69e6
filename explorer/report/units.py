"""Numbers with their units, as every table, note and plot prints them (SI prefixes, 3-4 digits)."""
from __future__ import annotations

import math


def fmt_seconds(s: float) -> str:
    if s == 0:
        return "0"          # also -0.0: a zero time never prints with a sign
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(s) >= scale:
            return f"{s / scale:.3f} {unit}"
    return f"{s / 1e-9:.3f} ns"


def fmt_bytes(b: float) -> str:
    if b == 0:
        return "0 B"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
_SUBUNIT = ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"))


def eng_scale(largest: float, unit: str) -> tuple[float, str]:
    """(scale, label) to show values up to ``largest`` in ``unit`` with an SI prefix: divide by ``scale``.
    ``eng_scale(3.35e12, "B/s") == (1e12, "TB/s")``; seconds go down to ms / us / ns; a unit of "" or "x"
    (counts, fractions) is left as is."""
    largest = abs(float(largest)) if largest is not None and math.isfinite(largest) else 0.0
    if unit in ("", "x") or largest == 0:
        return 1.0, unit
    table = _SUBUNIT if unit == "s" else _PREFIXES
    for scale, prefix in table:
        if largest >= scale:
            return scale, prefix + unit
    return table[-1][0], table[-1][1] + unit


def knob_unit(name: str) -> str:
    """The unit of a knob or result column from its name (``memory.hbm.bandwidth_bytes_per_s`` -> "B/s")."""
    leaf = name.rsplit(".", 1)[-1]
    if "flops_per_s" in name:
        return "FLOP/s"
    for suffix, unit in (("bytes_per_s", "B/s"), ("per_s", "/s"), ("bytes", "B"), ("seconds", "s"), ("_s", "s"),
                         ("hz", "Hz"), ("_w", "W"), ("usd", "USD"), ("mm2", "mm2")):
        if leaf.endswith(suffix) or leaf == suffix.lstrip("_"):
            return unit
    return ""


def axis_label(name: str, label: str) -> str:
    """``name`` with its scaled unit for an axis: "memory.hbm.bandwidth_bytes_per_s (TB/s)"."""
    return f"{name} ({label})" if label else name
