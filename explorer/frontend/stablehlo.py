"""Front end: a JAX function or a StableHLO module -> a counted ``Program``.

``lower`` runs ``jax.jit(fn).lower(*args)`` (arrays or ``ShapeDtypeStruct``s: nothing is allocated)
and imports the module JAX emits; ``from_stablehlo`` imports a module from text, bytecode or a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax

from ..costs.program import Program
from ..graph import environment, importer
from . import xla


def lower(fn: Callable, *args: Any, compiler: str | None = None, target: Any = None,
          donate_argnums: int | tuple[int, ...] | None = None, **kwargs: Any) -> Program:
    """Lower ``fn(*args, **kwargs)`` with ``jax.jit`` and import it.

    Arguments may be arrays or ``jax.ShapeDtypeStruct`` pytrees: nothing is
    allocated or run, so a 70B-parameter model imports on a laptop.

    ``compiler="xla"`` with a ``target`` (a ``Target`` or preset name) compiles ``fn`` deviceless with the real
    XLA for that chip instead and imports the optimized module: XLA's fusions, schedule and SPMD partitioning
    (``explorer.frontend.xla``; needs the ``xla-gpu`` or ``xla-tpu`` extra). ``donate_argnums``: the arguments
    the caller gives up, as ``jax.jit`` takes them (a train step's state, a decode step's KV cache): the peak
    memory then lets outputs take their buffers and updates happen in place. ``compiler``, ``target`` and
    ``donate_argnums`` are therefore not passed on to ``fn``.
    """
    if donate_argnums is not None:
        if hasattr(fn, "lower"):
            raise ValueError("donate_argnums= is for a plain function; this one is already jitted: give "
                             "jax.jit(fn, donate_argnums=...) the donation instead")
        fn = jax.jit(fn, donate_argnums=donate_argnums)      # keeps fn's __name__
    if compiler is not None:
        if compiler != "xla":
            raise ValueError(f"compiler must be 'xla' (or None for JAX's own lowering), got {compiler!r}")
        if target is None:
            raise ValueError("compiler='xla' needs a target to compile for, e.g. target='h100_sxm'")
        return xla.lower_compiled(fn, *args, target=target, **kwargs)
    if target is not None:
        raise ValueError("target= is for compiler='xla'; a JAX lowering is target-independent (price it with "
                         "explorer.estimate(program, target))")
    lowerable = fn if hasattr(fn, "lower") else jax.jit(fn)
    with environment.quiet_backend_start():
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


def from_stablehlo(source: str | bytes | Path | Any, name: str = "") -> Program:
    """Import a StableHLO module: text (``str``), text or bytecode (``bytes``), a file path (``Path`` or a
    one-line ``str``: ``.mlir`` / ``.mlirbc``), or a ``jax.export`` artifact (an ``Exported``, or its
    ``mlir_module_serialized`` VHLO bytes).

    A path that names no file is an error naming it (never parsed as module text); a parse error names
    the file (or ``<string>`` / ``<bytes>``), line and column, with MLIR's diagnostic; ops of
    unregistered dialects are listed in ``unknown_ops``.
    """
    path = importer.as_path(source)
    if path is not None:
        name = name or path.stem
    elif hasattr(source, "mlir_module_serialized"):
        name = name or getattr(source, "fun_name", "")
    module = importer.parse_module(source if path is None else path)
    graph = importer.import_module(module, name=name)
    return Program.from_graph(graph)
