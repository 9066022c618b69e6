"""A target whose figures hold one value per variant: what a vectorised sweep prices with.

``ArrayTarget`` answers the attribute reads ``explorer.model.timing`` makes (``.compute.matrix_units``,
``.memory_level("hbm").bandwidth_bytes_per_s``, ``.matrix_rate("bf16")``, ...) with a Python value when every
variant agrees and a numpy array (one entry per variant) when they differ. The same formulas then price one
target or N variants, and each entry equals the scalar result bit for bit.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np


def _section(knob: str) -> str:
    """The part of a target a knob lives in; every figure ``timing`` reads comes from one part."""
    head, _, rest = knob.partition(".")
    if head == "memory":
        return "memory." + rest.partition(".")[0]
    return head


class Sections:
    """Per part of the target (compute, one memory level, a network, efficiency, a top-level field), the
    distinct combinations of the swept knobs in that part, each made into a validated target once.

    A figure read from one part has, in every variant, the value it has in the target built from that
    part's combination (validation checks each part on its own), so 10,000 variants of a 4-knob grid
    build tens of targets, not 10,000."""

    def __init__(self, base, knob_columns: Mapping[str, np.ndarray], n: int):
        self.base, self.n = base, n
        self.targets: dict[str, list[Any]] = {}
        self.inverse: dict[str, np.ndarray] = {}
        self._networks: tuple | None = None
        self.collective_memo: dict[tuple, list[float]] = {}   # collective args -> seconds per network pair
        by_section: dict[str, list[str]] = {}
        for k in knob_columns:
            by_section.setdefault(_section(k), []).append(k)
        for sec, names in by_section.items():
            values = np.stack([np.asarray(knob_columns[k], dtype=float) for k in names], axis=1)
            uniq, inv = np.unique(values, axis=0, return_inverse=True)
            self.targets[sec] = [base.replace(**{k: float(x) for k, x in zip(names, row)}) for row in uniq]
            self.inverse[sec] = inv.reshape(-1)

    def networks(self) -> tuple[list[Any], np.ndarray] | None:
        """The distinct (scale-up, scale-out) pairs among the variants, each as a scalar view that
        ``explorer.model.collectives.collective_time`` reads (its ``scale_up`` / ``scale_out`` from the validated
        part targets), and each variant's index into them; None when no network knob is swept. A collective is
        then timed once per pair, not once per variant."""
        if self._networks is None:
            up, out = self.inverse.get("scale_up"), self.inverse.get("scale_out")
            if up is None and out is None:
                self._networks = ()
            else:
                zero = np.zeros(self.n, dtype=np.int64)
                keys = np.stack([zero if up is None else up, zero if out is None else out], axis=1)
                pairs, inv = np.unique(keys, axis=0, return_inverse=True)
                ups, outs = self.targets.get("scale_up"), self.targets.get("scale_out")
                views = [SimpleNamespace(name=self.base.name, scale_up=(ups[a] if ups else self.base).scale_up,
                                         scale_out=(outs[b] if outs else self.base).scale_out) for a, b in pairs]
                self._networks = (views, inv.reshape(-1))
        return self._networks or None

    def value(self, section: str, fn: Callable[[Any], Any], rows: slice):
        """``fn(target)`` for the variants ``rows``: a Python value when they all agree, else a numpy array."""
        ts = self.targets.get(section)
        if not ts:
            return fn(self.base)
        inv = self.inverse[section][rows]
        used = np.unique(inv)
        vals = [fn(ts[i]) for i in used]
        if all(v == vals[0] for v in vals):
            return vals[0]
        where = np.searchsorted(used, inv)
        if isinstance(vals[0], tuple):
            if len({len(v) for v in vals}) == 1:        # e.g. matrix_tile: one array per position
                return tuple(np.array(col)[where] for col in zip(*vals))
            ragged = np.empty(len(vals), dtype=object)  # e.g. torus_dims of resized tori: one tuple per variant
            for i, v in enumerate(vals):
                ragged[i] = v
            return ragged[where]
        return np.array(vals)[where]

    def per_variant(self, section: str, rows: slice) -> list[Any]:
        """The validated target each variant of ``rows`` has for this part (the base where it is not swept)."""
        ts = self.targets.get(section)
        if not ts:
            return [self.base] * len(range(*rows.indices(self.n)))
        return [ts[i] for i in self.inverse[section][rows]]


class _Part:
    """Attribute access on one part of the variants' targets (``.efficiency.matrix``, ``.scale_up.latency_s``)."""

    def __init__(self, owner: "ArrayTarget", section: str, get: Callable[[Any], Any]):
        self._owner, self._section, self._get = owner, section, get

    def __getattr__(self, attr: str):
        get = self._get
        return self._owner._value(self._section, (self._section, attr), lambda t: getattr(get(t), attr))


class ArrayTarget:
    """What ``timing`` reads from a target, with one value per variant (numpy arrays where the variants differ)."""

    def __init__(self, sections: Sections, rows: slice = slice(None)):
        self._s, self._rows = sections, rows
        self._cache: dict[Any, Any] = {}
        base = sections.base
        self.compute = _Part(self, "compute", _compute)
        self.efficiency = _Part(self, "efficiency", _efficiency)
        self.scale_up = _Part(self, "scale_up", _scale_up)
        self.scale_out = _Part(self, "scale_out", _scale_out)
        self._levels = {m.name: _Part(self, f"memory.{m.name}", _level_getter(m.name)) for m in base.memory}
        self.main_memory = self._levels[base.main_memory.name]
        self.name = base.name

    def _value(self, section: str, key: Any, fn: Callable[[Any], Any]):
        if key not in self._cache:
            self._cache[key] = self._s.value(section, fn, self._rows)
        return self._cache[key]

    def matrix_rate(self, dtype: str):
        return self._value("compute", ("matrix_rate", dtype), lambda t: t.matrix_rate(dtype))

    def vector_rate(self, dtype: str):
        return self._value("compute", ("vector_rate", dtype), lambda t: t.vector_rate(dtype))

    def memory_level(self, name: str) -> _Part:
        if name not in self._levels:
            self._s.base.memory_level(name)   # raises the target's error naming the level
        return self._levels[name]

    def network_variants(self) -> tuple[list[Any], np.ndarray, dict] | None:
        """For collectives: the distinct network pairs (``Sections.networks``), the index of each variant of these
        rows into them, and the memo of times per pair shared by every chunk of the sweep; None when no network
        knob is swept."""
        nets = self._s.networks()
        if nets is None:
            return None
        views, inv = nets
        return views, inv[self._rows], self._s.collective_memo

    def section_targets(self, section: str) -> list[Any]:
        """Per variant, a validated ``Target`` whose part ``section`` ("scale_up", "compute", "memory.hbm", ...) is
        that variant's: for code that needs whole scalar objects of one part rather than arrays of figures."""
        return self._s.per_variant(section, self._rows)

    def top(self, field: str):
        """A top-level field (launch overhead, cost columns)."""
        return self._value(field, ("top", field), lambda t: getattr(t, field))

    @property
    def launch_overhead_s(self):
        return self.top("launch_overhead_s")


def _compute(t):
    return t.compute


def _efficiency(t):
    return t.efficiency


def _scale_up(t):
    return t.scale_up


def _scale_out(t):
    return t.scale_out


def _level_getter(name: str) -> Callable[[Any], Any]:
    return lambda t: t.memory_level(name)
