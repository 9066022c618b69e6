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
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from ..costs.program import Program
from .stablehlo import from_stablehlo, lower


class ModelFileError(ValueError):
    pass


def load_module(path: Path) -> Any:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    name = f"_explorer_model_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
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


def load_program(spec: str, overrides: dict[str, Any] | None = None) -> Program:
    """A model spec -> imported ``Program``."""
    path = Path(spec.partition(":")[0]) if not Path(spec).is_file() else Path(spec)
    if path.suffix in (".mlir", ".mlirbc", ".stablehlo", ".bc"):
        if overrides:
            raise ModelFileError(f"{path}: overrides apply to Python model files only")
        return from_stablehlo(path)
    fn = program_fn(spec)
    fn_and_args = fn(**(overrides or {}))
    try:
        f, args = fn_and_args
    except (TypeError, ValueError):
        raise ModelFileError(f"{spec}: program() must return (fn, args), got {type(fn_and_args).__name__}") from None
    prog = lower(f, *args)
    return prog
