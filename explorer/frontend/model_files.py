"""Load a program from a file named on the command line.

Conventions:
- ``path/to/model.py``: a Python file defining ``program(**overrides) -> (fn, args)``
  (``args`` a tuple of arrays or ``jax.ShapeDtypeStruct`` pytrees). A file with several
  programs also defines ``PROGRAMS = {"name": program_fn, ...}``; pick one with
  ``path/to/model.py:name``.
- ``path/to/module.mlir`` (text) or ``.mlirbc`` (bytecode): a StableHLO module.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from ..costs.program import Program
from ..graph import environment
from .stablehlo import from_stablehlo, lower


class ModelFileError(ValueError):
    """A model file or override the explorer cannot use: the message names the file and what is wrong."""


MODEL_SUFFIXES = (".py",)
STABLEHLO_SUFFIXES = (".mlir", ".mlirbc", ".stablehlo", ".bc")


def load_module(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.suffix not in MODEL_SUFFIXES:
        raise ModelFileError(f"{path}: not a model file: expected a Python file (.py) that defines "
                             f"program(**overrides) -> (fn, args), or a StableHLO module "
                             f"({', '.join(STABLEHLO_SUFFIXES)}); see examples/README.md")
    name = f"_explorer_model_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def program_fn(spec: str) -> Callable[..., tuple[Callable, tuple]]:
    """The ``program`` function a model spec names (``file.py`` or ``file.py:name``)."""
    path_text, _, entry = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    path = Path(path_text)
    module = load_module(path)
    programs = getattr(module, "PROGRAMS", None)
    if entry:
        if not programs or entry not in programs:
            have = ", ".join(sorted(programs)) if programs else "none (the file defines no PROGRAMS)"
            raise ModelFileError(f"{path}: no program {entry!r}; programs: {have}")
        return programs[entry]
    fn = getattr(module, "program", None)
    if fn is None:
        raise ModelFileError(f"{path}: defines no program() function (see the examples/README.md convention)")
    return fn


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["layers=2", "dtype=bf16"]`` -> {"layers": 2, "dtype": "bf16"} (Python literals where they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ModelFileError(f"override {item!r} is not key=value")
        key, val = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key.strip()] = val
    return out


def check_overrides(path: str | Path, module: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` checked against the model file's ``Config`` dataclass (when it has one): an unknown field
    names the file and the known fields; a value of the wrong type names the field, the value and the type
    expected. Text for a bool field may be true/false; an int for a float field becomes a float."""
    config = getattr(module, "Config", None)
    if not overrides or config is None or not dataclasses.is_dataclass(config):
        return dict(overrides)
    fields = {f.name: f for f in dataclasses.fields(config)}
    try:
        hints = typing.get_type_hints(config)
    except Exception:  # an annotation that does not evaluate: check names only
        hints = {}
    out = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ModelFileError(f"{path}: unknown --set field {key!r}; the fields of its Config are "
                                 f"{', '.join(fields)}")
        out[key] = _coerce(path, key, value, hints.get(key, fields[key].type))
    return out


def _coerce(path, key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ) or typ
    def bad(expected: str):
        return ModelFileError(f"{path}: --set {key}={value!r}: field {key!r} expects {expected}, got "
                              f"{type(value).__name__} {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("a bool (true or false)")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad("an int")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a float")
    if typ is str:
        return value if isinstance(value, str) else str(value)
    if origin in (tuple, list):
        if isinstance(value, (tuple, list)):
            return origin(value)
        raise bad(f"a {origin.__name__} such as (1, 2)")
    return value


def load_program(spec: str, overrides: dict[str, Any] | None = None) -> Program:
    """A model spec -> imported ``Program``."""
    path = Path(spec.partition(":")[0]) if not Path(spec).is_file() else Path(spec)
    if path.suffix in STABLEHLO_SUFFIXES:
        if overrides:
            raise ModelFileError(f"{path}: overrides apply to Python model files only")
        return from_stablehlo(path)
    fn = program_fn(spec)
    overrides = check_overrides(path, load_module(path), overrides or {})
    try:
        with environment.quiet_backend_start():   # building the arguments may be what starts JAX's backends
            fn_and_args = fn(**overrides)
    except TypeError as exc:
        if overrides and any(repr(k) in str(exc) or k in str(exc) for k in overrides):
            raise ModelFileError(f"{spec}: program() rejected the overrides {overrides}: {exc}") from None
        raise
    try:
        f, args = fn_and_args
    except (TypeError, ValueError):
        raise ModelFileError(f"{spec}: program() must return (fn, args), got {type(fn_and_args).__name__}") from None
    prog = lower(f, *args)
    return prog
