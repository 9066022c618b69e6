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
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as shlo

from .ir import Frame, Graph, LoopInfo, Op, TensorType, freeze
from . import loops

# Ops whose regions are per-element scalar computations (not imported as ops).
_APPLIED_REGION_OPS = frozenset({
    "stablehlo.reduce", "stablehlo.reduce_window", "stablehlo.select_and_scatter",
    "stablehlo.scatter", "stablehlo.sort", "stablehlo.map", "stablehlo.all_reduce",
    "stablehlo.reduce_scatter", "stablehlo.reduce_precision",
    "mhlo.reduce", "mhlo.scatter", "mhlo.sort",
})
_BRANCH_OPS = frozenset({"stablehlo.case", "stablehlo.if", "mhlo.case", "mhlo.if"})
_WHILE_OPS = frozenset({"stablehlo.while", "mhlo.while"})
_TERMINATORS = frozenset({"func.return", "stablehlo.return", "mhlo.return", "sdy.return"})
_MAX_CALL_DEPTH = 256


class ImportError_(ValueError):
    """A module the importer cannot represent; the message names the op and the reason."""


def make_context() -> ir.Context:
    """An MLIR context with the dialects a JAX-exported module may use."""
    from jax._src.interpreters import mlir as jax_mlir  # the context JAX itself builds (all dialects registered)

    return jax_mlir.make_ir_context()


def parse_module(source: str | bytes | Path, context: ir.Context | None = None) -> ir.Module:
    """Parse StableHLO text or bytecode (or a serialized portable artifact) into a module."""
    ctx = context or make_context()
    path = as_path(source)
    if path is not None:
        data = path.read_bytes()
        source = data if not _looks_like_text(data) else data.decode()
    with ctx:
        try:
            return ir.Module.parse(source)
        except Exception as first:  # MLIR raises a generic error with diagnostics
            if isinstance(source, (bytes, bytearray)):
                try:
                    from jax.extend.mlir import deserialize_portable_artifact

                    return ir.Module.parse(deserialize_portable_artifact(bytes(source)))
                except Exception:
                    pass
            raise ImportError_(f"could not parse StableHLO module: {first}") from None


def as_path(source: str | bytes | Path) -> Path | None:
    """``source`` as an existing file path, or None when it is module text / bytes."""
    if isinstance(source, Path):
        if not source.is_file():
            raise ImportError_(f"{source}: no such file")
        return source
    if isinstance(source, str) and "\n" not in source and len(source) < 4096:
        try:
            if Path(source).is_file():
                return Path(source)
        except OSError:
            return None
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


def _scalar_constant(op: Any) -> float | int | None:
    """Value of a scalar (or splat) integer/float constant, for loop-bound inference."""
    attr = op.attributes["value"]
    try:
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
        self.depth = 0

    # -- values -------------------------------------------------------------
    def new_value(self, t: Any) -> int:
        tt = self.types.get(t)
        if tt is None:
            tt = self.types[t] = tensor_type(t)
        self.values.append(tt)
        return len(self.values) - 1

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

    def run(self) -> Graph:
        fn = self.entry()
        block = fn.regions[0].blocks[0]
        inputs = tuple(self.new_value(a.type) for a in block.arguments)
        names = _arg_names(fn, len(inputs))
        outputs = self.inline(fn, inputs, prefix="", frames=())
        meshes = {}
        for op in self.module.body.operations:
            if op.operation.name == "sdy.mesh":
                meshes[op.attributes["sym_name"].value] = str(op.attributes["mesh"])
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
        block = fn.regions[0].blocks[0]
        env = {a: v for a, v in zip(block.arguments, args)}
        _, returned = self.walk_block(block, env, prefix, frames)
        self.depth -= 1
        return returned

    # -- blocks and ops -----------------------------------------------------
    def walk_block(self, block: Any, env: dict, prefix: str, frames: tuple[Frame, ...]) -> tuple[list[int], list[int]]:
        """Import every op of a block; returns (ids of ops in it, values it returns)."""
        direct: list[int] = []
        returned: list[int] = []
        for opview in block.operations:
            op = opview.operation
            name = op.name
            stack = _join(prefix, location_name(op.location))
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
            if name == "stablehlo.composite":
                callee = op.attributes["decomposition"].value
                args = tuple(self.lookup(env, v, name) for v in op.operands)
                comp = op.attributes["name"].value
                outs = self.inline(self.funcs[callee], args, _join(stack, comp), frames)
                for res, vid in zip(op.results, outs):
                    env[res] = vid
                continue
            direct.append(self.import_op(op, env, stack, frames))
        return direct, returned

    def import_op(self, op: Any, env: dict, stack: str, frames: tuple[Frame, ...]) -> int:
        name = op.name
        operands = tuple(self.lookup(env, v, name) for v in op.operands)
        results = tuple(self.new_value(r.type) for r in op.results)
        for r, vid in zip(op.results, results):
            env[r] = vid
        attrs: dict[str, Any] = {}
        for key in op.attributes:
            attrs[key] = attr_to_py(key, op.attributes[key])
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
        self.ops[oid] = Op(
            id=oid, name=name, operands=operands, results=results, attrs=freeze(attrs),
            name_stack=stack, frames=frames, regions=tuple(regions), body_flops=body_flops,
        )
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
            consts=self.consts,
        )
        self.loops.append(LoopInfo(op_id=oid, name_stack=stack, trip_count=trip, reason=reason))
        return regions


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name or name.startswith(prefix):
        return name or prefix
    return f"{prefix}/{name}"


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
    block = fn.regions[0].blocks[0]
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
    return _Importer(module, name).run()
