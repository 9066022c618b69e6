"""``sensitivity``: which knob matters for this program on this chip?

The elasticity of step time to a knob, ``d ln t / d ln k``: -1 means "10 % more of it, 10 % less
time", 0 means it does not matter here. Computed by central finite differences on the estimate,
``(ln t(k+) - ln t(k-)) / (ln k+ - ln k-)`` with ``k+- = k (1 +- rel_step)``; one-sided where a
step would leave the knob's valid range (an efficiency of 1 cannot grow).

Discrete knobs (integers: matrix units, tile dims, domain sizes, links) are reported apart, and
stepped to values a real design could take rather than by 1 % (127 x 129 tiles are not a design
question): tile dims and domain sizes to the neighbouring powers of two (128 -> 64 and 256), unit
and link counts by about ``discrete_step`` (5 %), rounded. Their elasticity is an arc elasticity over
that step: tile and wave quantisation make ``t`` a step function of them, and at a fixed chip-wide
peak more units means slower units, so a result can be non-monotone; the note says so and why.
Knobs at 0 have no relative step and are skipped with a note; informational fields (``clock_hz``:
no formula reads it) are skipped too; the cost columns (TDP, price, die area) are not performance
knobs and are left out.

All the variants go through ``explorer.sweep``: knobs no pass reads are priced vectorised; the others
with certified decisions where every pass that reads them certifies its own (``shard``: the passes run once
and again only where a decision changes, rows priced as arrays), else per variant.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from tabulate import tabulate

import hw_targets
from hw_targets.schema import INFORMATIONAL
from passes import pipeline as pl

from ..report.units import fmt_seconds
from ..model.collectives import unread_network_knobs
from .sweep import COST_COLUMNS, SweepWarning, certifying, knobs_read, sweep


@dataclass(frozen=True)
class KnobSensitivity:
    knob: str
    value: float
    elasticity: float | None       # None: skipped (see note)
    low: float | None = None       # knob values the difference spans
    high: float | None = None
    seconds_low: float | None = None
    seconds_high: float | None = None
    method: str = ""               # "central", "backward", "forward", "skipped"
    note: str = ""
    kind: str = "continuous"       # "continuous" (stepped by rel_step) or "discrete" (stepped to design values)
    seconds: float | None = None   # at the knob's own value


@dataclass(frozen=True)
class Sensitivity:
    program: str
    target: str
    pipeline: str
    seconds: float
    rel_step: float
    knobs: tuple[KnobSensitivity, ...]       # continuous knobs ranked by |elasticity|, then discrete ones, then skipped
    discrete_step: float = 0.05

    def elasticity(self, knob: str) -> float | None:
        for k in self.knobs:
            if k.knob == knob:
                return k.elasticity
        raise KeyError(f"no knob {knob!r} in this sensitivity; knobs: {', '.join(k.knob for k in self.knobs)}")

    def top(self, n: int = 10) -> list[KnobSensitivity]:
        return list(self.knobs[:n])

    @property
    def continuous(self) -> tuple[KnobSensitivity, ...]:
        return tuple(k for k in self.knobs if k.kind == "continuous" and k.method != "skipped")

    @property
    def discrete(self) -> tuple[KnobSensitivity, ...]:
        return tuple(k for k in self.knobs if k.kind == "discrete" and k.method != "skipped")

    @property
    def skipped(self) -> tuple[KnobSensitivity, ...]:
        return tuple(k for k in self.knobs if k.method == "skipped")

    def rows(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(k) for k in self.knobs]

    def to_dict(self) -> dict[str, Any]:
        return {"program": self.program, "target": self.target, "pipeline": self.pipeline, "seconds": self.seconds,
                "rel_step": self.rel_step, "discrete_step": self.discrete_step, "knobs": self.rows()}

    @staticmethod
    def _cells(rows, discrete: bool = False) -> list[list[str]]:
        out = []
        for k in rows:
            e = "-" if k.elasticity is None else f"{k.elasticity + 0.0:+.4f}"
            span = f"{k.low:g} .. {k.high:g}" if k.low is not None else ""
            out.append([k.knob, f"{k.value:.4g}", e, span if discrete else k.method, k.note])
        return out

    _HEAD = ["knob", "value", "elasticity", "step", "note"]
    _HEAD_DISCRETE = ["knob", "value", "elasticity", "stepped to", "note"]

    def table(self, top: int | None = None) -> str:
        head = (f"program: {self.program}  target: {self.target}  pipeline: {self.pipeline or '(none)'}  "
                f"time: {fmt_seconds(self.seconds)}  (elasticity = d ln t / d ln knob; -1: 10 % more, 10 % less time)\n")
        parts = [head + f"continuous knobs (stepped by +-{self.rel_step:.0%}):\n"
                 + tabulate(self._cells(self.continuous[:top]), headers=self._HEAD, disable_numparse=True)]
        if self.discrete:
            parts.append(f"discrete knobs (stepped to design values: tile dims and domain sizes by powers of two, "
                         f"counts by ~{self.discrete_step:.0%}; arc elasticity over that step):\n"
                         + tabulate(self._cells(self.discrete[:top], True), headers=self._HEAD_DISCRETE,
                                    disable_numparse=True))
        if self.skipped:
            parts.append("skipped:\n" + tabulate([[k.knob, f"{k.value:.4g}", k.note] for k in self.skipped],
                                                 headers=["knob", "value", "why"], disable_numparse=True))
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:
        out = (f"<h4>Sensitivity: {self.program} on {self.target} ({fmt_seconds(self.seconds)})</h4>"
               f"<p>continuous knobs (+-{self.rel_step:.0%})</p>"
               + tabulate(self._cells(self.continuous), headers=self._HEAD, tablefmt="html", disable_numparse=True))
        if self.discrete:
            out += ("<p>discrete knobs (design steps)</p>"
                    + tabulate(self._cells(self.discrete, True), headers=self._HEAD_DISCRETE, tablefmt="html",
                               disable_numparse=True))
        return out

    def __str__(self) -> str:
        return self.table()


def integer_knob(target, knob: str) -> bool:
    """Whether a knob holds an integer (by the type annotation of the field it names)."""
    obj: Any = target
    parts = knob.split(".")
    if parts[0] == "memory":
        level, leaf = knob[len("memory."):].rsplit(".", 1)
        obj, parts = target.memory_level(level), [leaf]
    for i, name in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            return False
        field = {f.name: f for f in dataclasses.fields(obj)}.get(name)
        if field is None:
            return False
        typ = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        if i == len(parts) - 1 or not dataclasses.is_dataclass(getattr(obj, name)):
            return "int" in typ and "float" not in typ
        obj = getattr(obj, name)
    return False


def _power_of_two_neighbours(v: float) -> tuple[float, float]:
    """The powers of two just below and just above ``v`` (``v``'s half and double when it is one; 1 has no lower)."""
    v = int(v)
    lo = 1 << ((v - 1).bit_length() - 1) if v > 1 else v
    hi = 1 << v.bit_length()
    return float(lo), float(hi)


def design_steps(knob: str, value: float, discrete_step: float = 0.05) -> tuple[float, float]:
    """The values a real design could take next to ``value`` of a discrete knob: tile dims and domain sizes to
    the neighbouring powers of two, unit / link counts by about ``discrete_step``, rounded (at least 1)."""
    leaf = knob.rsplit(".", 1)[-1]
    if knob.startswith("compute.matrix_tile.") or leaf == "domain_size":
        return _power_of_two_neighbours(value)
    step = max(1, round(abs(value) * discrete_step))
    return float(value - step), float(value + step)


def _steps(target, knob: str, value: float, rel_step: float, discrete_step: float) -> tuple[float, float]:
    if integer_knob(target, knob):
        return design_steps(knob, value, discrete_step)
    return value * (1 - rel_step), value * (1 + rel_step)


# knobs of which more never costs time by itself (a positive elasticity needs explaining)
_MORE_IS_BETTER = ("flops_per_s", "transcendental_per_s", "bandwidth_bytes_per_s", "capacity_bytes", "efficiency",
                   "matrix_units", "links_per_chip")


def _explain(knob: str, kind: str, e: float | None, t_lo: float, t0: float, t_hi: float, dependent: bool) -> str:
    """Why a result looks odd: non-monotone around the value, or more of a good thing costing time."""
    notes = []
    if t_lo is not None and t_hi is not None and t0 is not None:
        tol = 1e-12 * t0
        if (t0 < min(t_lo, t_hi) - tol) or (t0 > max(t_lo, t_hi) + tol):
            notes.append(f"non-monotone: {fmt_seconds(t_lo)} / {fmt_seconds(t0)} / {fmt_seconds(t_hi)} below / at / "
                         "above the value, so the elasticity is the slope between the two steps only")
    if e is not None and e > 1e-9 and any(m in knob for m in _MORE_IS_BETTER):
        if knob == "compute.matrix_units":
            notes.append("more units is slower here: the chip-wide matrix peak is held fixed, so each unit is "
                         "slower, and output tiles spread over the units in whole waves (wave quantisation)")
        elif dependent:
            notes.append("more of it is slower here: a pass decides differently at the stepped value (see its notes)")
        else:
            notes.append("more of it is slower here (quantisation in the cost model)")
    if knob.startswith("compute.matrix_tile.") and e:
        notes.append("tile quantisation: GEMM dims are padded to whole tiles at the same peak; a larger tile pads "
                     "small dims more, a smaller one needs more waves")
    return "; ".join(notes)


def _valid(target, knob: str, value: float) -> bool:
    """A value the target accepts, and > 0 (the logarithm of the knob must exist)."""
    if value <= 0:
        return False
    try:
        target.replace(**{knob: value})
    except ValueError:
        return False
    return True


def sensitivity(program, target, pipeline: str | Sequence[Any] | None = "default", rel_step: float = 0.01,
                knobs: Sequence[str] | None = None, integers: str = "step", workers: int | None = None,
                discrete_step: float = 0.05) -> Sensitivity:
    """Elasticity of the estimated time to every numeric knob of ``target``, ranked by magnitude.

    **Arguments**
    - ``rel_step``: relative step of the finite differences of continuous knobs.
    - ``knobs``: the knobs to study (default: every knob but the cost columns and informational fields).
    - ``integers``: ``"step"`` (discrete knobs step to design values, reported apart) or ``"skip"`` (left out
      with a note).
    - ``workers``: for knobs whose pass decisions depend on them (priced per variant).
    - ``discrete_step``: relative step of unit and link counts (rounded, at least 1).

    **Returns** a ``Sensitivity``; ``.table()`` lists the continuous knobs, largest |elasticity| first, then the
    discrete ones, then the skipped ones.
    """
    target = hw_targets.as_target(target)      # a preset name or a TOML path
    if not (isinstance(rel_step, (int, float)) and 0 < rel_step < 1):
        raise ValueError(f"sensitivity: rel_step must be in (0, 1), got {rel_step!r}")
    if integers not in ("step", "skip"):
        raise ValueError(f"sensitivity: integers must be 'step' or 'skip', got {integers!r}")
    if not (isinstance(discrete_step, (int, float)) and 0 < discrete_step < 1):
        raise ValueError(f"sensitivity: discrete_step must be in (0, 1), got {discrete_step!r}")
    if pipeline == "default":
        pipeline = pl.default_pipeline(program)
    passes = pl.resolve(pipeline or None)
    values = target.knobs()
    names = list(knobs) if knobs is not None else [k for k in values if k not in COST_COLUMNS]
    for k in names:
        if k not in values:
            target.replace(**{k: 0.0})      # raises the target's "unknown knob" error with a hint

    plans: dict[str, tuple[float, float, str]] = {}
    skipped: dict[str, str] = {}
    for k in names:
        v = values[k]
        if v == 0:
            skipped[k] = "value is 0: no relative step"
            continue
        if k in INFORMATIONAL:
            skipped[k] = "informational: no formula of the cost model reads it (the rates are given directly)"
            continue
        if integers == "skip" and integer_knob(target, k):
            skipped[k] = "integer knob (integers='skip')"
            continue
        lo, hi = _steps(target, k, v, rel_step, discrete_step)
        ok_lo, ok_hi = lo != v and _valid(target, k, lo), hi != v and _valid(target, k, hi)
        if ok_lo and ok_hi:
            plans[k] = (lo, hi, "central")
        elif ok_lo:
            plans[k] = (lo, v, "backward")
        elif ok_hi:
            plans[k] = (v, hi, "forward")
        else:
            skipped[k] = f"neither {lo:.4g} nor {hi:.4g} is a valid value"

    # one variant per distinct (knob, value); the base point is the empty variant
    variants: list[dict[str, float]] = [{}]
    where: dict[tuple[str, float], int] = {}
    for k, (lo, hi, _) in plans.items():
        for x in (lo, hi):
            if x != values[k] and (k, x) not in where:
                where[(k, x)] = len(variants)
                variants.append({k: x})
    seconds, dependent = _price(program, target, passes, variants, workers)
    unread = unread_network_knobs(target)
    t0 = seconds[0]

    def t_at(k: str, x: float) -> float:
        return t0 if x == values[k] else seconds[where[(k, x)]]

    out = []
    for k, (lo, hi, method) in plans.items():
        t_lo, t_hi = t_at(k, lo), t_at(k, hi)
        e = (math.log(t_hi) - math.log(t_lo)) / (math.log(hi) - math.log(lo)) if t_lo > 0 and t_hi > 0 else None
        kind = "discrete" if integer_knob(target, k) else "continuous"
        notes = [] if method == "central" else [f"{method} difference: the other side is not a valid value"]
        why = _explain(k, kind, e, t_lo, t0, t_hi, k in dependent)
        if why:
            notes.append(why)
        if k in unread:
            notes.append(f"not read on this target: {unread[k]}")
        out.append(KnobSensitivity(k, values[k], e, lo, hi, t_lo, t_hi, method, "; ".join(notes), kind, t0))
    out.sort(key=lambda s: (s.kind != "continuous", -abs(s.elasticity or 0.0), s.knob))
    out += [KnobSensitivity(k, values[k], None, method="skipped", note=why,
                            kind="discrete" if integer_knob(target, k) else "continuous")
            for k, why in skipped.items()]
    return Sensitivity(program=program.graph.name, target=target.name, pipeline=pl.to_text(passes), seconds=t0,
                       rel_step=float(rel_step), knobs=tuple(out), discrete_step=float(discrete_step))


def _price(program, target, passes: list[Any], variants: list[dict[str, float]],
           workers: int | None) -> tuple[list[float], set[str]]:
    """Seconds of every variant (vectorised for knobs no pass reads, per variant for the others) and the knobs
    a pass reads."""
    all_knobs = {k for v in variants for k in v}
    dependent = {k for ks in knobs_read(passes, all_knobs).values() for k in ks}
    groups = {"vector": [i for i, v in enumerate(variants) if not set(v) & dependent],
              "grouped" if certifying(passes, dependent) is not None else "process":
                  [i for i, v in enumerate(variants) if set(v) & dependent]}
    seconds: list[float] = [0.0] * len(variants)
    for backend, idx in groups.items():
        if idx:
            with warnings.catch_warnings():     # knobs the model does not read are noted per knob instead
                warnings.simplefilter("ignore", SweepWarning)
                res = sweep(program, target, [variants[i] for i in idx], pipeline=passes, backend=backend,
                            workers=workers)
            for i, t in zip(idx, res.column("seconds")):
                seconds[i] = float(t)
    return seconds, dependent
