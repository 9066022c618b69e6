"""StableHLO module -> ``explorer.ir.Graph``, through the MLIR Python bindings jaxlib ships.

What it does, and why:
- ``func.call`` and ``stablehlo.composite`` are inlined per call site, so a cost
  is attributed to the caller's JAX name stack (JAX puts gelu, relu, softmax and
  scan bodies into private functions).
- ``stablehlo.while`` / ``case`` / ``if`` regions are walked and their ops carry a
  ``Frame``; the trip count of each while is inferred here (see ``loops.py``).
- Reducer-style regions (reduce, sort, scatter, all_reduce, ...) are scalar
  computations applied per element: they are not imported as ops, their flops per
  application are stored on the op (``body_flops``) for the cost rules.
- Any other op with regions is walked generically (every block, as straight-line code).
- Ops of dialects the MLIR context does not register parse (generic form) and are imported
  like any op: with no cost rule they are listed as unknown ops by name and count.
- A function body must be one block (as JAX emits); a multi-block function is refused by name.

Reading: ``parse_module`` (text, bytecode, a path, VHLO portable artifacts from ``jax.export``;
MLIR diagnostics captured into the error) -> ``import_module`` -> ``_Importer.run``, which walks
blocks (``walk_block``) and turns each op into an ``Op`` (``import_op``).
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import numpy as np
from jax.extend.mlir import deserialize_portable_artifact, ir
from jax.extend.mlir.dialects import sdy, stablehlo as shlo

from .ir import Frame, Graph, LoopInfo, Op, TensorType, freeze, new_op
from . import loops
from .gcpause import paused_gc

# Ops whose regions are per-element scalar computations (not imported as ops).
_APPLIED_REGION_OPS = frozenset({
    "stablehlo.reduce", "stablehlo.reduce_window", "stablehlo.select_and_scatter",
    "stablehlo.scatter", "stablehlo.sort", "stablehlo.map", "stablehlo.all_reduce",
    "stablehlo.reduce_scatter", "stablehlo.reduce_precision",
    "mhlo.reduce", "mhlo.scatter", "mhlo.sort",
})
_BRANCH_OPS = frozenset({"stablehlo.case", "stablehlo.if", "mhlo.case", "mhlo.if"})
# A compiler's kernels in an optimized module (XLA's fusions, async collectives): the region's ops are the
# kernel's work, its block arguments are the op's operands and its results are the values the region returns,
# so the op itself only groups ops (``Op.results`` is empty; readers read the returned values directly).
GROUPING_OPS = frozenset({"mhlo.fusion", "stablehlo.async_start", "mhlo.async_start"})
_ASYNC_DONE_OPS = frozenset({"stablehlo.async_done", "mhlo.async_done"})
_WHILE_OPS = frozenset({"stablehlo.while", "mhlo.while"})
_TERMINATORS = frozenset({"func.return", "stablehlo.return", "mhlo.return", "sdy.return"})
_TUPLE_ELEMENT_OPS = frozenset({"stablehlo.get_tuple_element", "mhlo.get_tuple_element"})


def _flat_tuple(t: Any) -> bool:
    """A tuple type whose elements are all tensors (nested tuples stay one opaque value)."""
    if t.typeid != ir.TupleType.static_typeid:
        return False
    tup = ir.TupleType(t)
    return not any(tup.get_type(i).typeid == ir.TupleType.static_typeid for i in range(tup.num_types))
_MAX_CALL_DEPTH = 256


class ModuleImportError(ValueError):
    """A module the importer cannot read or represent; the message names the source, op and reason."""


ImportError_ = ModuleImportError   # the historical name


def make_context() -> ir.Context:
    """An MLIR context with the dialects a JAX-exported module may use."""
    from jax._src.interpreters import mlir as jax_mlir  # the context JAX itself builds (all dialects registered)

    return jax_mlir.make_ir_context()


# -- reading a module in ------------------------------------------------------------------------

_TEXT_LABEL, _BYTES_LABEL = "<string>", "<bytes>"
_MLIR_BUFFER = re.compile(r'"-":(\d+):(\d+)')   # MLIR names a parsed buffer "-"
_MAX_DIAGNOSTICS = 5


def read_source(source: Any) -> tuple[str, str | bytes, Path | None]:
    """``(label, data, path)`` of a module source.

    ``source`` is module text (``str``), text or bytecode (``bytes``), a ``Path`` or a ``str`` naming a
    file, or a ``jax.export.Exported`` (its ``mlir_module_serialized``). A one-line ``str`` without a
    ``{`` cannot be module text (every module with a function has a body), so it is read as a path:
    a missing file is an error naming it, never parsed as text. ``label`` names the source in errors:
    the path, ``<string>`` or ``<bytes>``.
    """
    if hasattr(source, "mlir_module_serialized"):           # jax.export.Exported
        fun = getattr(source, "fun_name", "") or "exported"
        return f"<jax.export {fun}>", bytes(source.mlir_module_serialized), None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _BYTES_LABEL, bytes(source), None
    path = as_path(source)
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImportError_(f"{path}: cannot read: {exc.strerror or exc}") from None
        return str(path), data, path
    if isinstance(source, str):
        return _TEXT_LABEL, source, None
    raise ImportError_(f"cannot read a StableHLO module from a {type(source).__name__}: pass module text, "
                       "bytes, a file path or a jax.export.Exported")


def as_path(source: Any) -> Path | None:
    """``source`` as an existing file path, or None when it is module text / bytes.

    A ``Path``, or a one-line ``str`` without ``{`` (which cannot be module text), that names no file
    raises ``ImportError_`` ("no such file"), so a typo in a file name is not parsed as MLIR."""
    if isinstance(source, os.PathLike):
        candidate = Path(source)
    elif isinstance(source, str) and "\n" not in source and 0 < len(source) < 4096:
        candidate = Path(source)
        try:
            if candidate.is_file():
                return candidate
        except OSError:
            pass
        if not _looks_like_path(source):
            return None          # module text
    else:
        return None
    try:
        if candidate.is_file():
            return candidate
        exists, is_dir = candidate.exists(), candidate.is_dir()
    except OSError as exc:
        raise ImportError_(f"{str(source)!r}: not a readable file ({exc.strerror or exc})") from None
    if is_dir:
        raise ImportError_(f"{str(source)!r}: is a directory, not a StableHLO file")
    if exists:
        raise ImportError_(f"{str(source)!r}: not a regular file")
    hint = (" (a one-line string without '{' is read as a path; pass module text, bytes or an existing "
            ".mlir / .mlirbc file)") if isinstance(source, str) else ""
    raise ImportError_(f"{str(source)!r}: no such file{hint}")


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and "\n" not in stripped and "{" not in stripped and len(stripped) < 4096


def parse_module(source: Any, context: ir.Context | None = None) -> ir.Module:
    """Parse StableHLO text or bytecode, a file, or a serialized portable artifact (VHLO, as
    ``jax.export`` writes it: ``Exported.mlir_module_serialized``) into a module.

    Ops of dialects the context does not know are allowed (they become unknown ops, listed by name
    and count in every result). MLIR's diagnostics are captured, never printed: an error names the
    source (file, ``<string>`` or ``<bytes>``), line and column, and the diagnostic.
    """
    label, data, _ = read_source(source)
    ctx = context or make_context()
    captured: list[str] = []

    def on_diagnostic(diag: Any) -> bool:
        captured.append(_diagnostic_text(diag, label, data))
        return True            # handled: MLIR prints nothing to stderr

    allowed = ctx.allow_unregistered_dialects
    ctx.allow_unregistered_dialects = True
    handler = ctx.attach_diagnostic_handler(on_diagnostic)
    try:
        with ctx:
            try:
                module = ir.Module.parse(data)
            except ir.MLIRError as exc:
                found = [_diagnostic_text(d, label, data) for d in exc.error_diagnostics]
                raise ImportError_(_parse_error(label, exc.message, found + captured)) from None
            except Exception as exc:   # other binding errors (e.g. bad UTF-8 in text)
                raise ImportError_(_parse_error(label, str(exc), captured)) from None
            if _is_vhlo(module):
                module = _deserialize_vhlo(module, data, label, captured)
            return module
    finally:
        handler.detach()
        ctx.allow_unregistered_dialects = allowed


def _is_vhlo(module: Any) -> bool:
    """A versioned (VHLO) module: a portable artifact, which must be deserialized into StableHLO."""
    return any(op.operation.name.startswith("vhlo.") for op in module.body.operations)


def _deserialize_vhlo(module: Any, data: str | bytes, label: str, captured: list[str]) -> Any:
    if isinstance(data, str) or _looks_like_text(data):   # VHLO text: through bytecode
        buf = io.BytesIO()
        module.operation.write_bytecode(buf)
        data = buf.getvalue()
    before = len(captured)
    try:
        return deserialize_portable_artifact(bytes(data))
    except Exception as exc:
        found = captured[before:] or [str(exc)]
        raise ImportError_(_parse_error(label, "could not deserialize the VHLO portable artifact", found)) from None


def _parse_error(label: str, headline: str, diagnostics: list[str]) -> str:
    seen: list[str] = []
    for d in diagnostics:
        if d not in seen:
            seen.append(d)
    lines = [f"could not parse StableHLO module {label}: {headline.strip().rstrip(':')}"]
    lines += seen[:_MAX_DIAGNOSTICS]
    if len(seen) > _MAX_DIAGNOSTICS:
        lines.append(f"... and {len(seen) - _MAX_DIAGNOSTICS} more diagnostics")
    return "\n".join(lines)


def _diagnostic_text(diag: Any, label: str, data: str | bytes) -> str:
    """``label:line:col: error: message`` plus the source line and a caret for text input."""
    severity = str(getattr(diag, "severity", "error")).rsplit(".", 1)[-1].lower()
    where = str(getattr(diag, "location", ""))
    m = _MLIR_BUFFER.search(where)
    message = str(getattr(diag, "message", diag)).strip()
    if m is None or m.group(1) == "0":
        out = [f"{label}: {severity}: {message}"]
    else:
        line, col = int(m.group(1)), int(m.group(2))
        out = [f"{label}:{line}:{col}: {severity}: {message}"]
        text = _source_line(data, line)
        if text is not None:
            out.append("    " + text.rstrip())
            out.append("    " + " " * max(0, col - 1) + "^")
    for note in getattr(diag, "notes", ()) or ():
        note_text = str(getattr(note, "message", note)).strip()
        if len(note_text) > 200:
            note_text = note_text[:200] + " ..."
        out.append(f"  note: {note_text}")
    return "\n".join(out)


def _source_line(data: str | bytes, line: int) -> str | None:
    if isinstance(data, bytes):
        if not _looks_like_text(data):
            return None
        data = data.decode("utf-8", errors="replace")
    lines = data.splitlines()
    if 1 <= line <= len(lines):
        text = lines[line - 1].expandtabs(1)
        return text if len(text) <= 240 else text[:240] + " ..."
    return None


def _looks_like_text(data: bytes) -> bool:
    return not data.startswith(b"ML\xefR") and b"\x00" not in data[:4096]


def location_name(loc: Any) -> str:
    """The JAX name stack carried by an MLIR location ('' where there is none)."""
    for _ in range(64):
        if hasattr(loc, "name_str"):
            return loc.name_str
        if hasattr(loc, "callee"):
            loc = loc.callee
            continue
        if hasattr(loc, "locations"):
            for sub in loc.locations:
                name = location_name(sub)
                if name:
                    return name
        return ""
    return ""


def tensor_type(t: Any) -> TensorType:
    """ir.Type -> TensorType. Tokens and tuples are recorded as zero-byte values."""
    if hasattr(t, "shape") and hasattr(t, "element_type"):
        shape = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in shape):
            raise ImportError_(f"dynamic shape {t} is not supported: lower with static shapes")
        return TensorType(shape, str(t.element_type))
    text = str(t)
    if "token" in text:
        return TensorType((), "token")
    return TensorType((), "opaque")


def attr_to_py(name: str, attr: Any) -> Any:
    """MLIR attribute -> plain Python (ints, floats, strings, tuples, dicts)."""
    kind = type(attr).__name__
    if name == "dot_dimension_numbers":
        d = shlo.DotDimensionNumbers(attr)
        return {"lhs_batch": tuple(d.lhs_batching_dimensions), "rhs_batch": tuple(d.rhs_batching_dimensions),
                "lhs_contract": tuple(d.lhs_contracting_dimensions), "rhs_contract": tuple(d.rhs_contracting_dimensions)}
    if name == "dimension_numbers" and "conv" in str(attr)[:20]:
        d = shlo.ConvDimensionNumbers(attr)
        return {"input_batch": d.input_batch_dimension, "input_feature": d.input_feature_dimension,
                "input_spatial": tuple(d.input_spatial_dimensions),
                "kernel_in": d.kernel_input_feature_dimension, "kernel_out": d.kernel_output_feature_dimension,
                "kernel_spatial": tuple(d.kernel_spatial_dimensions),
                "output_batch": d.output_batch_dimension, "output_feature": d.output_feature_dimension,
                "output_spatial": tuple(d.output_spatial_dimensions)}
    if name == "replica_groups" and shlo.ReplicaGroupMeshAxesAttr.isinstance(attr):
        groups = shlo.ReplicaGroupMeshAxesAttr(attr)
        return MeshAxesGroups(mesh=str(groups.mesh).lstrip("@"),
                              axes=tuple(shlo.AxisRefAttr(a).name for a in groups.axes))
    if name == "comparison_direction":
        return shlo.ComparisonDirectionAttr(attr).value
    if kind in ("IntegerAttr", "BoolAttr", "FloatAttr", "StringAttr", "FlatSymbolRefAttr"):
        return attr.value
    if kind.startswith("Dense") and kind.endswith("ArrayAttr"):
        return tuple(attr)
    if kind == "ArrayAttr":
        return tuple(attr_to_py("", a) for a in attr)
    if kind == "DictAttr":
        return {a.name: attr_to_py(a.name, a.attr) for a in attr}
    if kind in ("DenseIntElementsAttr", "DenseFPElementsAttr", "DenseElementsAttr"):
        if name == "value":
            return None  # constants' payloads are not kept (see _scalar_constant)
        try:
            return np.array(attr).tolist()
        except Exception:
            return str(attr)
    if kind == "UnitAttr":
        return True
    return str(attr)


def op_attrs(op: Any, cache: dict | None = None) -> dict[str, Any]:
    """An op's attributes as plain Python (``attr_to_py``), each value already frozen (``freeze``). An attribute
    the MLIR bindings cannot even hand over (a dense constant of complex numbers raises ``TypeError`` on access)
    is kept as ``None``. ``cache``: (name, attribute) -> value, shared over a module (MLIR attributes are uniqued
    in their context, so the same dimension numbers or broadcast dimensions are converted once)."""
    attrs: dict[str, Any] = {}
    amap = op.attributes
    try:
        items = amap.items()
    except TypeError:
        items = None
    if items is None:
        for key in amap:
            try:
                attr = amap[key]
            except TypeError:
                attrs[key] = None
                continue
            attrs[key] = freeze(attr_to_py(key, attr))
        return attrs
    if cache is None:
        for key, attr in items:
            attrs[key] = freeze(attr_to_py(key, attr))
        return attrs
    for key, attr in items:
        ck = (key, attr)
        try:
            attrs[key] = cache[ck]
        except KeyError:
            attrs[key] = cache[ck] = freeze(attr_to_py(key, attr))
    return attrs


def _scalar_constant(op: Any) -> float | int | None:
    """Value of a scalar (or splat) integer/float constant, for loop-bound inference."""
    try:
        attr = op.attributes["value"]
        if getattr(attr, "is_splat", False):
            v = attr.get_splat_value()
            return v.value if hasattr(v, "value") else None
        arr = np.array(attr)
        if arr.size == 1:
            return arr.reshape(()).item()
    except Exception:
        return None
    return None


def _region_flops(region: Any) -> float:
    """Arithmetic ops in a scalar computation: one flop each (XLA's convention for a reducer)."""
    count = 0
    for block in region.blocks:
        for inner in block.operations:
            n = inner.operation.name
            if n in _TERMINATORS or n.endswith(".constant"):
                continue
            count += 1
    return float(count)


class _Importer:
    def __init__(self, module: Any, name: str):
        self.module = module
        self.name = name
        self.funcs: dict[str, Any] = {}
        for op in module.body.operations:
            if op.operation.name == "func.func":
                self.funcs[op.attributes["sym_name"].value] = op
        self.values: list[TensorType] = []
        self.producers: dict[int, int] = {}
        self.consts: dict[int, float] = {}
        self.ops: list[Op] = []
        self.loops: list[LoopInfo] = []
        self.escaping: set[int] = set()
        self.types: dict[Any, TensorType] = {}   # ir.Type -> TensorType (types repeat a lot)
        self.flat_tuples: dict[Any, bool] = {}    # ir.Type -> whether it is a flat tuple (``_flat_tuple``)
        self.attr_cache: dict[tuple[str, Any], Any] = {}   # (name, ir.Attribute) -> frozen value (``op_attrs``)
        self.tuple_parts: dict[int, list[int]] = {}   # a tuple result's value -> its elements' values
        self.async_values: dict[Any, list[int]] = {}   # an async start's future -> the values its done returns
        self.depth = 0

    # -- values -------------------------------------------------------------
    def new_value(self, t: Any) -> int:
        tt = self.types.get(t)
        if tt is None:
            tt = self.types[t] = tensor_type(t)
        self.values.append(tt)
        return len(self.values) - 1

    def tuple_parts_of(self, t: Any) -> list[int]:
        """New values for the elements of (flat) tuple type ``t``."""
        tup = ir.TupleType(t)
        return [self.new_value(tup.get_type(i)) for i in range(tup.num_types)]

    def lookup(self, env: dict, value: Any, where: str) -> int:
        try:
            return env[value]
        except KeyError:
            raise ImportError_(f"{where}: operand {value.get_name()} is not defined in scope") from None

    # -- functions ----------------------------------------------------------
    def entry(self) -> Any:
        if "main" in self.funcs:
            return self.funcs["main"]
        public = [f for f in self.funcs.values() if "sym_visibility" not in f.attributes
                  or f.attributes["sym_visibility"].value == "public"]
        if not public:
            raise ImportError_("module has no public function to analyse")
        return public[0]

    def body_block(self, fn: Any) -> Any:
        """The one block of a function's body; a declaration or a multi-block function is an error.

        StableHLO functions from JAX have one block (control flow is structured: while, case, if).
        A function whose body branches between blocks (``cf.br``, ``cf.cond_br``) is unusual: its ops
        would need a control-flow graph to be weighted, so it is refused by name rather than having
        the blocks after the first silently dropped."""
        name = _func_name(fn)
        blocks = fn.regions[0].blocks
        n = len(blocks)
        if n == 0:
            raise ImportError_(f"function @{name} has no body (a declaration): cannot count its work")
        if n > 1:
            extra = blocks[1]
            first_op = next(iter(extra.operations), None)
            what = f" (its first op: {first_op.operation.name})" if first_op is not None else ""
            raise ImportError_(
                f"function @{name} has {n} blocks: block ^bb1{what} and any later ones are reached by "
                "unstructured branches (cf.br / cf.cond_br), which the importer does not follow. StableHLO "
                "functions from JAX have one block (loops and conditionals are stablehlo.while / case / "
                "if): export the module from JAX, or convert its control flow to structured ops")
        return blocks[0]

    def run(self) -> Graph:
        fn = self.entry()
        block = self.body_block(fn)
        inputs = tuple(self.new_value(a.type) for a in block.arguments)
        names = _arg_names(fn, len(inputs))
        outputs = self.inline(fn, inputs, prefix="", frames=())
        meshes, devices = {}, {}
        for op in self.module.body.operations:
            if op.operation.name == "sdy.mesh":
                name = op.attributes["sym_name"].value
                meshes[name] = str(op.attributes["mesh"])
                devices[name] = _mesh_devices(sdy.MeshAttr(op.attributes["mesh"]))
        for i, op in enumerate(self.ops):
            groups = op.attrs.get("replica_groups")
            if isinstance(groups, MeshAxesGroups):
                attrs = dict(op.attrs)
                attrs["replica_groups"] = groups.resolve(devices, op.name)
                self.ops[i] = replace(op, attrs=freeze(attrs))
        return Graph(
            input_attrs=_dict_attrs(fn, "arg_attrs", len(inputs)),
            output_attrs=_dict_attrs(fn, "res_attrs", len(outputs)),
            meshes=MappingProxyType(meshes),
            name=self.name, values=tuple(self.values), ops=tuple(self.ops), inputs=inputs,
            outputs=tuple(outputs), input_names=names, loops=tuple(self.loops), escaping=frozenset(self.escaping),
            producers=MappingProxyType(dict(self.producers)),
        )

    def inline(self, fn: Any, args: tuple[int, ...], prefix: str, frames: tuple[Frame, ...]) -> list[int]:
        self.depth += 1
        if self.depth > _MAX_CALL_DEPTH:
            raise ImportError_(f"call depth over {_MAX_CALL_DEPTH} (recursive functions are not supported)")
        block = self.body_block(fn)
        env = {a: v for a, v in zip(block.arguments, args)}
        _, returned = self.walk_block(block, env, prefix, frames)
        self.depth -= 1
        return returned

    # -- blocks and ops -----------------------------------------------------
    def walk_block(self, block: Any, env: dict, prefix: str, frames: tuple[Frame, ...],
                   absolute_names: bool = False) -> tuple[list[int], list[int]]:
        """Import every op of a block; returns (ids of ops in it, values it returns).

        ``absolute_names``: the ops carry whole name stacks (a compiler's fusion body, from its op_name
        metadata), not names relative to ``prefix``; an op named only by its instruction (no "/") takes ``prefix``."""
        direct: list[int] = []
        returned: list[int] = []
        for opview in block.operations:
            op = opview.operation
            name = op.name
            own = location_name(op.location)
            stack = (own if "/" in own else prefix) if absolute_names else _join(prefix, own)
            if name in _TUPLE_ELEMENT_OPS and op.operands:
                parts = self.tuple_parts.get(self.lookup(env, op.operands[0], name))
                index = int(op.attributes["index"].value) if "index" in op.attributes else -1
                if parts is not None and 0 <= index < len(parts) and op.results[0].type.typeid != ir.TupleType.static_typeid:
                    env[op.results[0]] = parts[index]   # the element itself: no op, no copy
                    continue
            if name in _TERMINATORS:
                returned = [self.lookup(env, v, name) for v in op.operands]
                continue
            if name == "func.call":
                callee = op.attributes["callee"].value
                if callee not in self.funcs:
                    raise ImportError_(f"func.call to unknown function @{callee}")
                args = tuple(self.lookup(env, v, name) for v in op.operands)
                outs = self.inline(self.funcs[callee], args, stack, frames)
                for res, vid in zip(op.results, outs):
                    env[res] = vid
                continue
            if name in GROUPING_OPS or name in _ASYNC_DONE_OPS:
                direct.append(self.import_group(op, env, stack, frames))
                continue
            if name == "stablehlo.composite":
                callee = op.attributes["decomposition"].value
                if callee not in self.funcs:
                    raise ImportError_(f"stablehlo.composite decomposition @{callee} is not a function of the module")
                args = tuple(self.lookup(env, v, name) for v in op.operands)
                comp = op.attributes["name"].value
                outs = self.inline(self.funcs[callee], args, _join(stack, comp), frames)
                for res, vid in zip(op.results, outs):
                    env[res] = vid
                continue
            direct.append(self.import_op(op, env, stack, frames))
        return direct, returned

    def import_group(self, op: Any, env: dict, stack: str, frames: tuple[Frame, ...]) -> int:
        """A fusion / async start (see ``GROUPING_OPS``) or the async done that waits for one: an op with no
        results of its own. A fusion's MLIR results stand for the values its region returns; an async start's
        single result (a future / bundle) for all the values its region (or ``called_computation``) returns,
        which its done's results then stand for."""
        name = op.name
        operands = tuple(self.lookup(env, v, name) for v in op.operands)
        attrs = op_attrs(op, self.attr_cache)
        oid = len(self.ops)
        self.ops.append(None)  # reserve the id so the region's ops come after it
        regions: list[tuple[int, ...]] = []
        if name in _ASYNC_DONE_OPS:
            returned = list(self.async_values.get(op.operands[0], operands)) if op.operands else []
        else:
            if op.regions and op.regions[0].blocks:
                block = op.regions[0].blocks[0]
            elif "called_computation" in op.attributes and attrs["called_computation"] in self.funcs:
                block = self.funcs[attrs["called_computation"]].regions[0].blocks[0]
            else:
                raise ImportError_(f"{name} at {stack or '?'}: no region and no called computation to import")
            inner_env = dict(env)
            inner_env.update(zip(block.arguments, operands))
            direct, returned = self.walk_block(block, inner_env, stack, frames, absolute_names=True)
            regions.append(tuple(direct))
            if name != "mhlo.fusion" and len(op.results) == 1 and len(returned) != 1:
                self.async_values[op.results[0]] = list(returned)
                returned = returned[:1]
        if len(returned) != len(op.results):
            raise ImportError_(f"{name} at {stack or '?'}: its region returns {len(returned)} values for "
                               f"{len(op.results)} results")
        for res, vid in zip(op.results, returned):
            env[res] = vid
        # the values its results stand for, in order (what the compiler's ``xla_shape`` of the op describes)
        attrs["returns"] = tuple(returned)
        self.ops[oid] = Op(id=oid, name=name, operands=operands, results=(), attrs=freeze(attrs), name_stack=stack,
                           frames=frames, regions=tuple(regions))
        return oid

    def import_op(self, op: Any, env: dict, stack: str, frames: tuple[Frame, ...]) -> int:
        name = op.name
        try:
            operands = tuple([env[v] for v in op.operands])
        except KeyError:
            operands = tuple(self.lookup(env, v, name) for v in op.operands)
        results: list[int] = []
        values, types, flat = self.values, self.types, self.flat_tuples
        for r in op.results:
            t = r.type
            is_tuple = flat.get(t)
            if is_tuple is None:
                is_tuple = flat[t] = _flat_tuple(t)
            if not is_tuple:
                tt = types.get(t)
                if tt is None:
                    tt = types[t] = tensor_type(t)
                values.append(tt)
                env[r] = vid = len(values) - 1
                results.append(vid)
            else:
                # a tuple result (a compiler's custom call returns (output, scratch)): its elements are the
                # op's results, in order, then a zero-byte value standing for the tuple itself
                parts = self.tuple_parts_of(r.type)
                results.extend(parts)
                env[r] = self.new_value(r.type)
                self.tuple_parts[env[r]] = parts
                results.append(env[r])
        results = tuple(results)
        attrs = op_attrs(op, self.attr_cache)
        oid = len(self.ops)
        self.ops.append(None)  # reserve the id so nested ops come after their parent
        for vid in results:
            self.producers[vid] = oid
        if name.endswith(".constant"):
            value = _scalar_constant(op)
            if value is not None and results:
                self.consts[results[0]] = value
                attrs["scalar_value"] = value
        regions: list[tuple[int, ...]] = []
        body_flops = 0.0
        if name in _WHILE_OPS:
            regions = self.import_while(op, oid, operands, env, stack, frames)
        elif name in _BRANCH_OPS:
            for i, region in enumerate(op.regions):
                inner_env = dict(env)
                direct, returned = self.walk_block(region.blocks[0], inner_env, stack, frames + (Frame("case", oid, i),))
                regions.append(tuple(direct))
                self.escaping.update(returned)
        elif name in _APPLIED_REGION_OPS:
            body_flops = sum(_region_flops(r) for r in op.regions)
        elif name == "sdy.manual_computation" or op.regions:
            # Generic region op (e.g. shard_map body): walk it once, as straight-line code.
            for region in op.regions:
                for blk in region.blocks:
                    inner_env = dict(env)
                    for a in blk.arguments:
                        inner_env[a] = self.new_value(a.type)
                    direct, _ = self.walk_block(blk, inner_env, stack, frames)
                    regions.append(tuple(direct))
        self.ops[oid] = new_op(oid, name, operands, results, MappingProxyType(attrs), stack, frames, tuple(regions),
                               body_flops)
        return oid

    def import_while(self, op: Any, oid: int, operands: tuple[int, ...], env: dict, stack: str,
                     frames: tuple[Frame, ...]) -> list[tuple[int, ...]]:
        inner_frames = frames + (Frame("while", oid),)
        regions: list[tuple[int, ...]] = []
        cond_env, body_env = dict(env), dict(env)
        cond_block, body_block = op.regions[0].blocks[0], op.regions[1].blocks[0]
        cond_args = [self.new_value(a.type) for a in cond_block.arguments]
        body_args = [self.new_value(a.type) for a in body_block.arguments]
        cond_env.update(zip(cond_block.arguments, cond_args))
        body_env.update(zip(body_block.arguments, body_args))
        cond_direct, cond_ret = self.walk_block(cond_block, cond_env, stack, inner_frames)
        body_direct, body_ret = self.walk_block(body_block, body_env, stack, inner_frames)
        regions = [tuple(cond_direct), tuple(body_direct)]
        self.escaping.update(body_ret)
        self.escaping.update(cond_ret)
        trip, reason = loops.infer_trip_count(
            init=operands, cond_args=cond_args, cond_result=cond_ret[0] if cond_ret else None,
            body_args=body_args, body_results=body_ret, ops=self.ops, producers=self.producers,
            consts=self.consts, values=self.values,
        )
        self.loops.append(LoopInfo(op_id=oid, name_stack=stack, trip_count=trip, reason=reason))
        return regions


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name or name.startswith(prefix):
        return name or prefix
    return f"{prefix}/{name}"


def _func_name(fn: Any) -> str:
    try:
        return fn.attributes["sym_name"].value
    except Exception:
        return "?"


def _dict_attrs(fn: Any, key: str, n: int) -> tuple[Any, ...]:
    """Per-argument (or per-result) attribute dictionaries as {name: MLIR text}."""
    out = [MappingProxyType({}) for _ in range(n)]
    if key in fn.attributes:
        for i, d in enumerate(fn.attributes[key]):
            if i < n:
                out[i] = MappingProxyType({a.name: str(a.attr) for a in d})
    return tuple(out)


def _arg_names(fn: Any, n: int) -> tuple[str, ...]:
    names = [f"arg{i}" for i in range(n)]
    block = fn.regions[0].blocks[0]   # checked by _Importer.body_block
    for i, a in enumerate(block.arguments):
        name = location_name(a.location) if hasattr(a, "location") else ""
        if name:
            names[i] = name
    return tuple(names)


def import_module(module: Any, name: str = "") -> Graph:
    """Import an already-parsed ``ir.Module`` (e.g. ``lowered.compiler_ir('stablehlo')``)."""
    if not name:
        try:
            name = module.operation.attributes["sym_name"].value
        except Exception:
            name = "module"
    with paused_gc():
        return _Importer(module, name).run()


@dataclass(frozen=True)
class MeshAxesGroups:
    """Replica groups written over axes of a module's ``sdy.mesh`` (``#stablehlo.replica_group_mesh_axes``, as XLA
    writes them once it partitioned over a mesh): resolved into device lists when the module's meshes are read."""

    mesh: str
    axes: tuple[str, ...]

    def resolve(self, devices: dict[str, tuple[tuple[str, ...], np.ndarray]], op_name: str = "") -> tuple[tuple[int, ...], ...]:
        if self.mesh not in devices:
            raise ImportError_(f"{op_name}: replica groups over @{self.mesh}, a mesh the module does not declare "
                               f"(declared: {sorted(devices)})")
        names, grid = devices[self.mesh]
        if not self.axes or any(a not in names for a in self.axes):
            raise ImportError_(f"{op_name}: replica groups over axes {list(self.axes)} of @{self.mesh} "
                               f"(its axes: {list(names)})")
        return groups_along(grid, names, self.axes)


def _mesh_devices(mesh: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """An ``sdy.MeshAttr`` -> (its axis names, its device ids laid out over its axes: its ``device_ids``, else
    row-major)."""
    axes = [sdy.MeshAxisAttr(a) for a in mesh.axes]
    names, sizes = tuple(a.name for a in axes), [int(a.size) for a in axes]
    ids = [int(i) for i in mesh.device_ids]
    return names, np.array(ids or range(int(np.prod(sizes))), dtype=int).reshape(sizes)


def groups_along(grid: np.ndarray, names: Sequence[str], axes: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The replica groups over ``axes`` of a mesh whose device ids are laid out in ``grid`` (one dimension per name
    in ``names``): the devices that differ only along those axes, each group in the axes' order."""
    order = [i for i, n in enumerate(names) if n not in axes] + [list(names).index(a) for a in axes]
    size = int(np.prod([grid.shape[list(names).index(a)] for a in axes]))
    return tuple(tuple(int(d) for d in row) for row in grid.transpose(order).reshape(-1, size))
