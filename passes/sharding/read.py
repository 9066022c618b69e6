"""The shardings JAX wrote into a lowered program, as one mesh and a layout per annotated value.

Shardy form (jax >= 0.7 default): ``sdy.mesh @mesh = <["data"=4, "model"=2]>`` declarations,
``sdy.sharding`` argument / result attributes and ``sdy.sharding_constraint`` ops.
GSPMD form (``jax_use_shardy_partitioner=False``, or older exports): ``mhlo.sharding`` strings on
arguments, results and ``custom_call @Sharding`` ops. GSPMD strings carry no axis names: the mesh
is rebuilt from their iota device assignments (``devices=[4,1,2]<=[8]``, ``<=[4,2]T(1,0)``) as the
coarsest set of axes, named ``a0`` (major) ``a1`` ..., that expresses every one of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from jax.extend.mlir import ir

from .spec import HloTiling, Mesh, Spec, mlir_context, parse_hlo_sharding, parse_mesh, parse_sdy_sharding


@dataclass(frozen=True)
class ProgramShardings:
    mesh: Mesh
    inputs: Mapping[int, Spec]          # input value id -> layout
    outputs: Mapping[int, Spec]         # output index -> layout
    constraints: Mapping[int, Spec]     # op id -> layout of its result
    form: str = "none"                  # "sdy", "mhlo" or "none"
    tilings: Mapping[str, HloTiling] = field(default_factory=dict)   # mhlo form: what each string said


def read(graph) -> ProgramShardings:
    """Read every sharding annotation of ``graph`` (see module docstring)."""
    if graph.meshes or _has(graph, "sdy.sharding"):
        return _read_sdy(graph)
    if _has(graph, "mhlo.sharding"):
        return _read_mhlo(graph)
    return ProgramShardings(Mesh(()), {}, {}, {}, "none")


def _has(graph, key: str) -> bool:
    if any(key in a for a in (*graph.input_attrs, *graph.output_attrs)):
        return True
    if key == "sdy.sharding":
        return any(op.name in ("sdy.sharding_constraint", "sdy.reshard") for op in graph.ops)
    return any(key in op.attrs for op in graph.ops)


def _read_sdy(graph) -> ProgramShardings:
    ctx = mlir_context()
    meshes = {name: parse_mesh(text, ctx) for name, text in graph.meshes.items()}
    distinct = {m.axes for m in meshes.values() if m.axes}
    if len(distinct) > 1:
        raise ValueError("program uses several different meshes (" + ", ".join(f"@{n} = {m}" for n, m in meshes.items())
                         + "); one mesh per program is supported")
    mesh = next((m for m in meshes.values() if m.axes), Mesh(()))

    def spec(text: str) -> Spec:
        _, s = parse_sdy_sharding(text, meshes, ctx)
        return s

    inputs = {v: spec(a["sdy.sharding"]) for v, a in zip(graph.inputs, graph.input_attrs) if "sdy.sharding" in a}
    outputs = {i: spec(a["sdy.sharding"]) for i, a in enumerate(graph.output_attrs) if "sdy.sharding" in a}
    constraints = {op.id: spec(op.attrs["sharding"]) for op in graph.ops
                   if op.name in ("sdy.sharding_constraint", "sdy.reshard") and "sharding" in op.attrs}
    return ProgramShardings(mesh, inputs, outputs, constraints, "sdy")


def _read_mhlo(graph) -> ProgramShardings:
    texts: dict[str, int] = {}
    for v, a in zip(graph.inputs, graph.input_attrs):
        if "mhlo.sharding" in a:
            texts[_unquote(a["mhlo.sharding"])] = len(graph.values[v].shape)
    for v, a in zip(graph.outputs, graph.output_attrs):
        if "mhlo.sharding" in a:
            texts[_unquote(a["mhlo.sharding"])] = len(graph.values[v].shape)
    for op in graph.ops:
        if "mhlo.sharding" in op.attrs and op.results:
            texts[_unquote(op.attrs["mhlo.sharding"])] = len(graph.values[op.results[0]].shape)
    tilings = {t: parse_hlo_sharding(t, r) for t, r in texts.items()}
    mesh, specs = _infer_mesh(tilings)
    inputs = {v: specs[_unquote(a["mhlo.sharding"])] for v, a in zip(graph.inputs, graph.input_attrs)
              if "mhlo.sharding" in a}
    outputs = {i: specs[_unquote(a["mhlo.sharding"])] for i, a in enumerate(graph.output_attrs) if "mhlo.sharding" in a}
    constraints = {op.id: specs[_unquote(op.attrs["mhlo.sharding"])] for op in graph.ops
                   if "mhlo.sharding" in op.attrs and op.results and op.name.endswith("custom_call")}
    return ProgramShardings(mesh, inputs, outputs, constraints, "mhlo", tilings)


def _unquote(text: str) -> str:
    """The importer keeps a StringAttr's value as plain text; tolerate its printed (quoted) form too."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        with mlir_context():
            return ir.StringAttr(ir.Attribute.parse(text)).value
    return text


def _pieces(t: HloTiling) -> list[list[tuple[int, int]]] | None:
    """Per tile dimension (the replica dim last): the (size, device stride) runs it is made of, or None when
    the device order is not a transposed iota."""
    n = len(t.devices)
    dims = list(t.tiles) + ([t.replicas] if t.replicas > 1 else [])
    if n == 0 or math.prod(dims) != n:
        return None
    import numpy as np

    devs = np.asarray(t.devices).reshape(dims)
    # find the transposed-iota structure: try factorisations that reproduce the device array
    runs: list[list[tuple[int, int]]] = []
    for k, size in enumerate(dims):
        if size == 1:
            runs.append([])
            continue
        idx = [0] * len(dims)
        seq = []
        for i in range(size):
            idx[k] = i
            seq.append(int(devs[tuple(idx)]))
        runs.append(_runs(seq, devs, k))
    # check: device id = sum over dims of its coordinate's contribution
    coords = np.indices(dims).reshape(len(dims), -1).T
    flat = devs.reshape(-1)
    for c, d in zip(coords, flat):
        if _device_of(c, runs) != int(d):
            return None
    return runs


def _runs(seq: list[int], devs, k: int) -> list[tuple[int, int]]:
    """Split a tile dim's device sequence (first coordinate of the others 0) into mixed-radix runs,
    major first: e.g. [0, 2, 4, 6, 1, 3, 5, 7] -> [(2, 1), (4, 2)] reversed to major-first order."""
    size = len(seq)
    out: list[tuple[int, int]] = []
    consumed = 1
    while consumed < size:
        stride = seq[consumed] - seq[0]
        length = 1
        while consumed * (length + 1) <= size and seq[consumed * length] - seq[0] == stride * length:
            length += 1
        # the run covers `length` steps of `consumed` elements each
        while size % (consumed * length):
            length -= 1
        out.append((length, stride))
        consumed *= length
    return list(reversed(out))


def _device_of(coord, runs) -> int:
    d = 0
    for c, dim_runs in zip(coord, runs):
        c = int(c)
        for size, stride in reversed(dim_runs):
            d += (c % size) * stride
            c //= size
    return d


def _infer_mesh(tilings: Mapping[str, HloTiling]) -> tuple[Mesh, dict[str, Spec]]:
    """The coarsest mesh (axes = device-stride intervals) that expresses every tiling, and each tiling's Spec."""
    structure = {}
    n = 0
    for text, t in tilings.items():
        if t.maximal or t.manual or not t.devices:
            continue
        p = _pieces(t)
        if p is None:
            raise ValueError(f"mhlo.sharding {text!r}: device order is not a (transposed) iota; not supported")
        structure[text] = p
        n = max(n, len(t.devices))
    bounds = {1, n} if n else {1}
    for p in structure.values():
        for dim_runs in p:
            for size, stride in dim_runs:
                bounds.update((stride, stride * size))
    cuts = sorted(bounds)
    atoms = [(cuts[i], cuts[i + 1] // cuts[i]) for i in range(len(cuts) - 1)]   # (stride, size), minor first
    names = {stride: f"a{len(atoms) - 1 - i}" for i, (stride, _) in enumerate(atoms)}
    mesh = Mesh(tuple((names[s], size) for s, size in reversed(atoms)))
    specs: dict[str, Spec] = {}
    for text, t in tilings.items():
        rank = len(t.tiles)
        p = structure.get(text)
        if p is None:
            specs[text] = Spec.replicated(rank)
            continue
        dims = []
        for k in range(rank):
            axes: list[str] = []
            for size, stride in p[k]:
                inside = [(s, z) for s, z in atoms if stride <= s < stride * size]
                axes.extend(names[s] for s, _ in sorted(inside, reverse=True))
            dims.append(tuple(axes))
        specs[text] = Spec(tuple(dims))
    return mesh, specs
