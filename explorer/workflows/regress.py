"""Pinned regressions: a few (model x target x pipeline) cases whose figures are stored, so that no
change to a cost rule, a pass or a preset moves a number unnoticed.

``examples/regressions/cases.toml`` defines the cases::

    [[case]]
    name = "gpt2_small_tpu_v5p_xla"
    model = "../gpt2_train.py"          # a model spec, relative to cases.toml (file.py, file.py:name, .mlir)
    small = true                        # apply the example's SMALL_CONFIG
    set = {}                            # further Config overrides
    target = "tpu_v5p"                  # preset name or a TOML path relative to cases.toml
    pipeline = "fuse{strategy=xla}"     # "default", "none" or pipeline text

and ``expected/<name>.json`` holds its figures. ``python -m explorer regress`` (run in a checkout, so
``examples/regressions`` of the current directory; ``--dir DIR`` elsewhere) recomputes them and
prints every figure that moved with its relative change; it exits with 1 when one moved by more than
``REL_TOL`` (1e-9 relative: room for the last bits of floating point on another machine or BLAS,
none for a real change), 0 otherwise. ``--update`` rewrites the stored figures, on purpose, after a
reviewed change; the JSON diff is then part of the commit.
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import hw_targets

from ..frontend.model_files import load_module, load_program
from ..pricing.price import estimate

# This checkout's own cases (the test suite checks them). The command line never defaults to it: it uses
# ``examples/regressions`` of the current directory (``default_dir``), so ``--update`` only rewrites files
# under the directory the user is in or names.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "examples" / "regressions"
RELATIVE_DIR = Path("examples") / "regressions"
REL_TOL = 1e-9
FIGURES = ("seconds", "compute_seconds", "memory_seconds", "comm_seconds", "overhead_seconds", "flops",
           "bytes_accessed", "kernels", "peak_memory_bytes", "unknown_ops")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_KEYS = {"name": True, "model": True, "target": True, "pipeline": False, "small": False, "set": False}


class RegressionError(ValueError):
    """A malformed cases file: the message names the case, the key and the value."""


def default_dir(cwd: str | Path | None = None) -> Path:
    """``examples/regressions`` of the current directory (``cwd``), or a ``RegressionError`` saying to pass ``--dir``."""
    here = Path.cwd() if cwd is None else Path(cwd)
    d = here / RELATIVE_DIR
    if (d / "cases.toml").is_file():
        return d
    raise RegressionError(f"no {RELATIVE_DIR / 'cases.toml'} under the current directory ({here}); run in a "
                          f"checkout of the project or pass --dir DIR (a directory holding cases.toml and expected/)")


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    target: str
    pipeline: str = "default"
    small: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "small": self.small, "set": dict(self.overrides), "target": self.target,
                "pipeline": self.pipeline}


@dataclass(frozen=True)
class Change:
    case: str
    figure: str
    expected: Any
    actual: Any

    @property
    def rel_change(self) -> float:
        """(actual - expected) / |expected| (inf when a zero became non-zero; nan for non-numbers)."""
        if not _is_number(self.expected) or not _is_number(self.actual):
            return math.nan
        if self.expected == 0:
            return 0.0 if self.actual == 0 else math.inf
        return (self.actual - self.expected) / abs(self.expected)

    def line(self) -> str:
        if _is_number(self.expected) and _is_number(self.actual):
            return f"  {self.figure}: {self.expected!r} -> {self.actual!r} ({self.rel_change:+.3e} relative)"
        return f"  {self.figure}: {self.expected!r} -> {self.actual!r}"


@dataclass(frozen=True)
class Report:
    checked: tuple[str, ...]
    changes: tuple[Change, ...]
    missing: tuple[str, ...]          # cases with no stored figures
    directory: str = ""               # where the cases live (as the user gave it)

    @property
    def ok(self) -> bool:
        return not self.changes and not self.missing

    def text(self) -> str:
        lines = []
        where = f" --dir {self.directory}" if self.directory else ""
        for name in self.checked:
            mine = [c for c in self.changes if c.case == name]
            if name in self.missing:
                lines.append(f"{name}: NO PINNED FIGURES (run `python -m explorer regress{where} --update --case {name}`)")
            elif mine:
                lines.append(f"{name}: {len(mine)} figure(s) moved beyond {REL_TOL:g} relative")
                lines.extend(c.line() for c in mine)
            else:
                lines.append(f"{name}: ok")
        verdict = "all pinned figures hold" if self.ok else (
            f"pinned figures moved: review the change, then `python -m explorer regress{where} --update` to pin the new ones")
        return "\n".join(lines + [verdict])


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_cases(directory: str | Path | None = None) -> list[Case]:
    """The cases of ``directory/cases.toml`` (default: ``default_dir()``; keys checked: an unknown one is an
    error naming it)."""
    path = Path(default_dir() if directory is None else directory) / "cases.toml"
    if not path.is_file():
        raise RegressionError(f"{path}: no such file")
    data = tomllib.loads(path.read_text())
    cases, seen = [], set()
    for i, raw in enumerate(data.get("case", [])):
        where = f"{path.name} case {raw.get('name', i)!r}"
        for key in raw:
            if key not in _KEYS:
                raise RegressionError(f"{where}: unknown key {key!r} = {raw[key]!r}; keys: {', '.join(_KEYS)}")
        for key, required in _KEYS.items():
            if required and key not in raw:
                raise RegressionError(f"{where}: missing key {key!r}")
        if not isinstance(raw["name"], str) or not _SAFE_NAME.fullmatch(raw["name"]):
            raise RegressionError(f"{where}: name {raw['name']!r} must be letters, digits, '_', '-' or '.' "
                                  "(it names the file expected/<name>.json)")
        if raw["name"] in seen:
            raise RegressionError(f"{where}: duplicate name {raw['name']!r}")
        seen.add(raw["name"])
        if not isinstance(raw.get("set", {}), dict):
            raise RegressionError(f"{where}: 'set' must be a table, got {raw['set']!r}")
        cases.append(Case(name=raw["name"], model=raw["model"], target=raw["target"],
                          pipeline=raw.get("pipeline", "default"), small=bool(raw.get("small", False)),
                          overrides=dict(raw.get("set", {}))))
    return cases


def figures(case: Case, directory: str | Path | None = None) -> dict[str, Any]:
    """Lower the case's model and estimate it: the pinned figures."""
    directory = Path(default_dir() if directory is None else directory)
    model = str(directory / case.model)
    overrides = dict(case.overrides)
    if case.small:
        overrides = {**load_module(Path(model.partition(":")[0] if not Path(model).is_file() else model)).SMALL_CONFIG,
                     **overrides}
    prog = load_program(model, overrides)
    target = case.target if not case.target.endswith(".toml") else str(directory / case.target)
    pipeline = None if case.pipeline.strip().lower() in ("none", "") else case.pipeline
    est = estimate(prog, hw_targets.load(target), pipeline=pipeline)
    s = est.summary()
    return {f: s[f] for f in FIGURES}


def _expected_path(directory: Path, name: str) -> Path:
    return directory / "expected" / f"{name}.json"


def _select(cases: list[Case], names: Sequence[str] | None) -> list[Case]:
    if not names:
        return cases
    known = {c.name for c in cases}
    bad = [n for n in names if n not in known]
    if bad:
        raise RegressionError(f"no case {bad[0]!r}; cases: {', '.join(sorted(known))}")
    return [c for c in cases if c.name in names]


def compare_figures(name: str, expected: Mapping[str, Any], actual: Mapping[str, Any],
                    rel_tol: float = REL_TOL) -> list[Change]:
    """Figures that differ: numbers by more than ``rel_tol`` relative, anything else when not equal."""
    out = []
    for f in FIGURES:
        e, a = expected.get(f), actual.get(f)
        if _is_number(e) and _is_number(a):
            if not math.isclose(e, a, rel_tol=rel_tol, abs_tol=0.0):
                out.append(Change(name, f, e, a))
        elif e != a:
            out.append(Change(name, f, e, a))
    return out


def check(directory: str | Path | None = None, names: Sequence[str] | None = None) -> Report:
    """Recompute every case (or those named) and compare with the stored figures (default directory:
    ``default_dir()``, ``examples/regressions`` of the current directory)."""
    directory = Path(default_dir() if directory is None else directory)
    cases = _select(load_cases(directory), names)
    changes: list[Change] = []
    missing: list[str] = []
    for case in cases:
        path = _expected_path(directory, case.name)
        if not path.is_file():
            missing.append(case.name)
            continue
        stored = json.loads(path.read_text())["figures"]
        changes += compare_figures(case.name, stored, figures(case, directory))
    return Report(checked=tuple(c.name for c in cases), changes=tuple(changes), missing=tuple(missing),
                  directory=str(directory))


def update(directory: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Recompute and store the figures of every case (or those named) under ``directory/expected`` (and nowhere else)."""
    directory = Path(directory)
    written = []
    for case in _select(load_cases(directory), names):
        path = _expected_path(directory, case.name)
        if not path.resolve().is_relative_to((directory / "expected").resolve()):
            raise RegressionError(f"case {case.name!r}: {path} lies outside {directory / 'expected'}; not written")
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"case": case.describe(), "figures": figures(case, directory)}
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written
