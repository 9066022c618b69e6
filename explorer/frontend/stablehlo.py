"""Front end: a JAX function or a StableHLO module -> a counted ``Program``.

``lower`` runs ``jax.jit(fn).lower(*args)`` (arrays or ``ShapeDtypeStruct``s: nothing is allocated)
and imports the module JAX emits; ``from_stablehlo`` imports a module from text, bytecode or a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax

from ..costs.program import Program
from ..graph import importer


def lower(fn: Callable, *args: Any, **kwargs: Any) -> Program:
    """Lower ``fn(*args, **kwargs)`` with ``jax.jit`` and import it.

    Arguments may be arrays or ``jax.ShapeDtypeStruct`` pytrees: nothing is
    allocated or run, so a 70B-parameter model imports on a laptop.
    """
    lowerable = fn if hasattr(fn, "lower") else jax.jit(fn)
    lowered = lowerable.lower(*args, **kwargs)
    module = lowered.compiler_ir("stablehlo")
    name = getattr(fn, "__name__", "") or importer_name(module)
    graph = importer.import_module(module, name=name)
    return Program.from_graph(graph, lowered=lowered)


def importer_name(module: Any) -> str:
    try:
        return module.operation.attributes["sym_name"].value
    except Exception:
        return "module"


def from_stablehlo(source: str | bytes | Path, name: str = "") -> Program:
    """Import a StableHLO module from text, bytecode or a file path (``.mlir`` / ``.mlirbc``)."""
    path = importer.as_path(source)
    if path is not None:
        name = name or path.stem
    module = importer.parse_module(source)
    graph = importer.import_module(module, name=name)
    return Program.from_graph(graph)
