"""``sensitivity``: which knob matters for this program on this chip?

The elasticity of step time to a knob, ``d ln t / d ln k``: -1 means "10 % more of it, 10 % less
time", 0 means it does not matter here. Computed by central finite differences on the estimate,
``(ln t(k+) - ln t(k-)) / (ln k+ - ln k-)`` with ``k+- = k (1 +- rel_step)``; one-sided where a
step would leave the knob's valid range (an efficiency of 1 cannot grow). Integer knobs (matrix
units, tile dims, domain sizes, links) step to neighbouring integers, at least 1 apart, so their
elasticity is a discrete one (tile and wave quantisation make ``t`` a step function of them).
Knobs at 0 have no relative step and are skipped with a note; the cost columns (TDP, price, die
area) are not performance knobs and are left out.

All the variants go through ``explorer.sweep``: knobs no pass reads are priced vectorised, the
others per variant.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from tabulate import tabulate

import hw_targets
from passes import pipeline as pl

from ..report.units import fmt_seconds
from .sweep import COST_COLUMNS, knobs_read, sweep


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


@dataclass(frozen=True)
class Sensitivity:
    program: str
    target: str
    pipeline: str
    seconds: float
    rel_step: float
    knobs: tuple[KnobSensitivity, ...]       # ranked: largest |elasticity| first, skipped knobs last

    def elasticity(self, knob: str) -> float | None:
        for k in self.knobs:
            if k.knob == knob:
                return k.elasticity
        raise KeyError(f"no knob {knob!r} in this sensitivity; knobs: {', '.join(k.knob for k in self.knobs)}")

    def top(self, n: int = 10) -> list[KnobSensitivity]:
        return list(self.knobs[:n])

    def rows(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(k) for k in self.knobs]

    def to_dict(self) -> dict[str, Any]:
        return {"program": self.program, "target": self.target, "pipeline": self.pipeline, "seconds": self.seconds,
                "rel_step": self.rel_step, "knobs": self.rows()}

    def _cells(self, top: int | None) -> list[list[str]]:
        return [[k.knob, f"{k.value:.4g}", "-" if k.elasticity is None else f"{k.elasticity:+.4f}", k.method, k.note]
                for k in self.knobs[:top]]

    def table(self, top: int | None = None) -> str:
        head = (f"program: {self.program}  target: {self.target}  pipeline: {self.pipeline or '(none)'}  "
                f"time: {fmt_seconds(self.seconds)}  (elasticity = d ln t / d ln knob)\n")
        return head + tabulate(self._cells(top), headers=["knob", "value", "elasticity", "step", "note"],
                               disable_numparse=True)

    def _repr_html_(self) -> str:
        return (f"<h4>Sensitivity: {self.program} on {self.target} ({fmt_seconds(self.seconds)})</h4>"
                + tabulate(self._cells(None), headers=["knob", "value", "elasticity", "step", "note"], tablefmt="html",
                           disable_numparse=True))

    def __str__(self) -> str:
        return self.table()


def integer_knob(target, knob: str) -> bool:
    """Whether a knob holds an integer (by the type annotation of the field it names)."""
    obj: Any = target
    parts = knob.split(".")
    if parts[0] == "memory":
        obj, parts = target.memory_level(parts[1]), parts[2:]
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


def _steps(target, knob: str, value: float, rel_step: float) -> tuple[float, float]:
    if integer_knob(target, knob):
        step = max(1, round(abs(value) * rel_step))
        return float(value - step), float(value + step)
    return value * (1 - rel_step), value * (1 + rel_step)


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
                knobs: Sequence[str] | None = None, integers: str = "step", workers: int | None = None) -> Sensitivity:
    """Elasticity of the estimated time to every numeric knob of ``target``, ranked by magnitude.

    **Arguments**
    - ``rel_step``: relative step of the finite differences (integer knobs: at least 1).
    - ``knobs``: the knobs to study (default: every knob but the cost columns).
    - ``integers``: ``"step"`` (integer knobs step to neighbouring integers: a discrete elasticity) or
      ``"skip"`` (left out with a note).
    - ``workers``: for knobs whose pass decisions depend on them (priced per variant).

    **Returns** a ``Sensitivity``; ``.table()`` lists the knobs, largest |elasticity| first.
    """
    if isinstance(target, str):
        target = hw_targets.load(target)
    if not (isinstance(rel_step, (int, float)) and 0 < rel_step < 1):
        raise ValueError(f"sensitivity: rel_step must be in (0, 1), got {rel_step!r}")
    if integers not in ("step", "skip"):
        raise ValueError(f"sensitivity: integers must be 'step' or 'skip', got {integers!r}")
    if pipeline == "default":
        pipeline = pl.default_pipeline()
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
        if integers == "skip" and integer_knob(target, k):
            skipped[k] = "integer knob (integers='skip')"
            continue
        lo, hi = _steps(target, k, v, rel_step)
        ok_lo, ok_hi = _valid(target, k, lo), _valid(target, k, hi)
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
    seconds = _price(program, target, passes, variants, workers)
    t0 = seconds[0]

    def t_at(k: str, x: float) -> float:
        return t0 if x == values[k] else seconds[where[(k, x)]]

    out = []
    for k, (lo, hi, method) in plans.items():
        t_lo, t_hi = t_at(k, lo), t_at(k, hi)
        e = (math.log(t_hi) - math.log(t_lo)) / (math.log(hi) - math.log(lo)) if t_lo > 0 and t_hi > 0 else None
        note = "" if method == "central" else f"{method} difference: the other side is not a valid value"
        if integer_knob(target, k):
            note = (note + "; " if note else "") + f"integer knob: {lo:g} .. {hi:g}"
        out.append(KnobSensitivity(k, values[k], e, lo, hi, t_lo, t_hi, method, note))
    out.sort(key=lambda s: (-abs(s.elasticity or 0.0), s.knob))
    out += [KnobSensitivity(k, values[k], None, method="skipped", note=why) for k, why in skipped.items()]
    return Sensitivity(program=program.graph.name, target=target.name, pipeline=pl.to_text(passes), seconds=t0,
                       rel_step=float(rel_step), knobs=tuple(out))


def _price(program, target, passes: list[Any], variants: list[dict[str, float]], workers: int | None) -> list[float]:
    """Seconds of every variant: vectorised for knobs no pass reads, per variant for the others."""
    all_knobs = {k for v in variants for k in v}
    dependent = {k for ks in knobs_read(passes, all_knobs).values() for k in ks}
    groups = {"vector": [i for i, v in enumerate(variants) if not set(v) & dependent],
              "process": [i for i, v in enumerate(variants) if set(v) & dependent]}
    seconds: list[float] = [0.0] * len(variants)
    for backend, idx in groups.items():
        if idx:
            res = sweep(program, target, [variants[i] for i in idx], pipeline=passes, backend=backend, workers=workers)
            for i, t in zip(idx, res.column("seconds")):
                seconds[i] = float(t)
    return seconds
