"""Parallelism strategies -> a layout for every program input (and output), by argument name.

An unsharded program only knows its inputs' names (``graph.input_names``:
``params['h_0']['mlp']['c_fc']['kernel']``, ``opt_state[1][0].mu['h_0']...``, ``batch['tokens']``);
a strategy says which mesh axes split what:

- ``dp``: the batch (leading) dimension of the data inputs;
- ``fsdp`` (ZeRO-3): every parameter and optimizer-state tensor along its largest dimension that
  divides (and the batch, as data parallelism); the partitioner then all-gathers each parameter
  where it is used and reduce-scatters its gradient;
- ``tp`` (Megatron): column-parallel first matmuls (attention q/k/v, MLP up/gate: output features
  split), row-parallel second matmuls (attention output, MLP down: input features split),
  vocab-parallel token embeddings; the layer names come from the common model zoos and can be
  extended (``column`` / ``row`` / ``vocab``); these splits are *pinned*: the partitioner moves
  activations, never these weights;
- ``sp`` (Megatron sequence parallelism, with ``tp``): partial sums leaving a row-parallel matmul are
  reduce-scattered over the sequence, so norms and residuals run on 1/tp of the tokens;
- ``zero1`` (with ``dp``): optimizer state split like FSDP over the data-parallel axes, parameters
  whole (ZeRO-1 / Megatron's distributed optimizer): gradients are reduce-scattered into the state's
  shards and the updated parameters all-gathered, the same bytes as an all-reduce, a fraction of the
  optimizer memory;
- ``cp``: the sequence dimension (dim 1) of the data inputs (context parallelism: the partitioner
  gathers keys and values for attention);
- ``ep``: the expert dimension (dim 0) of parameters under a module whose name contains ``expert``; its axes
  may be the ``dp`` (or ``fsdp``) axes, as in GShard / Switch: the devices that split the tokens each hold a
  share of the experts, and the tokens meet their experts through all-to-alls (the batch is split once);
- ``pins``: per-tensor layouts by glob on the input name or its ``/``-joined path, overriding all.

Optimizer state follows its parameter (same path, same shape). Outputs that return a state
tensor (same path and shape) must come back in the input's layout, as a training loop needs.
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from jax.extend.mlir import ir

from .spec import Mesh, Spec, mlir_context

COLUMN = frozenset({"c_fc", "fc1", "wi", "wi_0", "wi_1", "w1", "w3", "up_proj", "gate_proj", "query", "key", "value",
                    "q_proj", "k_proj", "v_proj", "qkv", "qkv_proj", "c_attn", "dense_h_to_4h", "in_proj", "lm_head",
                    "fc_in", "linear_1", "wq", "wk", "wv"})
ROW = frozenset({"c_proj", "fc2", "wo", "w2", "down_proj", "out", "o_proj", "out_proj", "dense_4h_to_h", "fc_out",
                 "linear_2"})
VOCAB = frozenset({"wte", "embed_tokens", "word_embeddings", "tok_embeddings", "token_embedding", "embed"})
DATA_ROOTS = ("batch", "inputs", "tokens", "x", "data", "images", "labels", "targets", "input_ids")
_KEY = re.compile(r"\['([^']*)'\]")


@dataclass(frozen=True)
class Strategy:
    """Which mesh axes each kind of parallelism uses (empty: not used)."""

    dp: tuple[str, ...] = ()
    fsdp: tuple[str, ...] = ()
    tp: tuple[str, ...] = ()
    sp: bool = False
    zero1: bool = False
    cp: tuple[str, ...] = ()
    ep: tuple[str, ...] = ()
    data_roots: tuple[str, ...] = DATA_ROOTS
    pins: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()
    column: frozenset[str] = COLUMN
    row: frozenset[str] = ROW
    vocab: frozenset[str] = VOCAB

    def axes(self) -> tuple[str, ...]:
        """Every mesh axis the strategy uses, once each (``ep`` may reuse the ``dp`` / ``fsdp`` axes)."""
        return tuple(dict.fromkeys(self.dp + self.fsdp + self.tp + self.cp + self.ep))

    def describe(self) -> str:
        parts = [f"{k}={'+'.join(v)}" for k, v in (("dp", self.dp), ("fsdp", self.fsdp), ("tp", self.tp),
                                                     ("cp", self.cp), ("ep", self.ep)) if v]
        if self.sp:
            parts.append("sp")
        if self.zero1:
            parts.append("zero1")
        return ",".join(parts) or "replicated"


@dataclass(frozen=True)
class Layouts:
    inputs: Mapping[int, Spec]
    outputs: Mapping[int, Spec]
    pinned: Mapping[int, frozenset[str]]
    notes: tuple[str, ...] = ()
    roles: Mapping[int, str] = field(default_factory=dict)     # input value id -> "data" | "column" | ...


def root_of(name: str) -> str:
    """``params['h_0']...`` -> ``params``; ``opt_state[0].mu[...]`` -> ``opt_state``."""
    for i, ch in enumerate(name):
        if ch in "[.":
            return name[:i]
    return name


def path_of(name: str) -> tuple[str, ...]:
    """The dict keys along a pytree name: ``params['h_0']['mlp']['kernel']`` -> ('h_0', 'mlp', 'kernel')."""
    return tuple(_KEY.findall(name))


def check(strategy: Strategy, mesh: Mesh) -> None:
    """``ValueError`` for a strategy that cannot be laid out on ``mesh``, saying why. ``ep`` may share the
    ``dp`` / ``fsdp`` axes (expert parallelism over the data axis); ``tp`` and ``cp`` need axes of their own."""
    for a in strategy.axes():
        mesh.size(a)
    if strategy.sp and not strategy.tp:
        raise ValueError("sequence parallelism (sp) needs tensor parallel axes (tp)")
    if strategy.zero1 and not strategy.dp:
        raise ValueError("zero1 shards the optimizer state over the data-parallel axes: it needs dp")
    batch = set(strategy.dp) | set(strategy.fsdp) | set(strategy.ep)
    for kind, axes, others in (("tp", strategy.tp, batch | set(strategy.cp)), ("cp", strategy.cp, batch)):
        shared = [a for a in axes if a in others]
        if shared:
            raise ValueError(f"{kind} axis {', '.join(shared)} is also used by another strategy (dp/fsdp/ep"
                             f"{'/cp' if kind == 'tp' else ''}); a mesh axis splits one dimension of a tensor, so "
                             f"{kind} needs an axis of its own (e.g. mesh=data=2.model=4,dp=data,{kind}=model)")


def layouts(graph, mesh: Mesh, strategy: Strategy) -> Layouts:
    """Layouts of the program inputs (and the state outputs) under ``strategy`` on ``mesh``."""
    check(strategy, mesh)
    inputs: dict[int, Spec] = {}
    pinned: dict[int, frozenset[str]] = {}
    roles: dict[int, str] = {}
    notes: list[str] = []
    by_path: dict[tuple[tuple[str, ...], tuple[int, ...]], Spec] = {}
    by_key: dict[tuple[str, tuple[int, ...]], Spec] = {}
    for v, name in zip(graph.inputs, graph.input_names):
        shape = graph.values[v].shape
        pin = _pin(strategy, name)
        if pin is not None:
            spec = Spec(tuple(tuple(d) for d in pin))
            if spec.rank != len(shape):
                raise ValueError(f"pin for {name!r} has {spec.rank} dims, the tensor has shape {shape}")
            inputs[v] = spec
            roles[v] = "pinned"
            continue
        if root_of(name) in strategy.data_roots:
            spec, why = _data_layout(shape, mesh, strategy)
            roles[v] = "data"
        else:
            spec, role, pins, why = _state_layout(name, shape, mesh, strategy)
            roles[v] = role
            if pins:
                pinned[v] = pins
            by_path.setdefault((path_of(name), shape), spec)
            by_key[(name[len(root_of(name)):], shape)] = spec
        notes.extend(f"{name}: {w}" for w in why)
        if not spec.is_replicated:
            inputs[v] = spec
    outputs: dict[int, Spec] = {}
    for i, v in enumerate(graph.outputs):
        info = _result_info(graph, i)
        shape = graph.values[v].shape
        exact = (_output_key(info), shape)
        key = (path_of(info), shape)
        if info and exact in by_key:          # same container and path: 'result[1][0].mu[...]' <- 'opt_state[0].mu[...]'
            outputs[i] = by_key[exact]
        elif info and key in by_path and key[0]:
            outputs[i] = by_path[key]
    return Layouts(inputs, outputs, pinned, tuple(notes), roles)


def _output_key(info: str) -> str:
    """``result[1][0].mu['h_0']`` -> ``[0].mu['h_0']`` (the output tuple's index dropped), to match an input name
    without its argument root (``opt_state[0].mu['h_0']`` -> ``[0].mu['h_0']``)."""
    rest = info[len("result"):] if info.startswith("result") else info
    if rest.startswith("[") and "]" in rest and rest[1:rest.index("]")].isdigit():
        rest = rest[rest.index("]") + 1:]
    return rest


def _result_info(graph, i: int) -> str:
    infos = _result_infos(graph)
    return infos[i] if i < len(infos) else ""


_INFOS: dict[int, tuple[object, tuple[str, ...]]] = {}


def _result_infos(graph) -> tuple[str, ...]:
    """Every output's ``jax.result_info`` string, parsed in one MLIR context and kept per graph (a search calls
    ``layouts`` once per candidate mesh; making a context per output was most of its time)."""
    hit = _INFOS.get(id(graph))
    if hit is not None and hit[0] is graph:
        return hit[1]
    out: list[str] = []
    with mlir_context():
        for i in range(len(graph.outputs)):
            attrs = graph.output_attrs[i] if i < len(graph.output_attrs) else {}
            text = attrs.get("jax.result_info")
            out.append(ir.StringAttr(ir.Attribute.parse(text)).value if text else "")
    while len(_INFOS) >= 8:
        _INFOS.pop(next(iter(_INFOS)))
    _INFOS[id(graph)] = (graph, tuple(out))
    return tuple(out)


def _pin(strategy: Strategy, name: str):
    path = "/".join(path_of(name))
    for pattern, dims in strategy.pins:
        if fnmatch.fnmatchcase(name, pattern) or (path and fnmatch.fnmatchcase(path, pattern)):
            return dims
    return None


def _fits(size: int, axes: Sequence[str], mesh: Mesh) -> bool:
    return bool(axes) and size % math.prod(mesh.size(a) for a in axes) == 0


def _data_layout(shape, mesh: Mesh, s: Strategy) -> tuple[Spec, list[str]]:
    dims: list[tuple[str, ...]] = [()] * len(shape)
    why: list[str] = []
    if not shape:
        return Spec(()), why
    batch = _distinct(s.dp + s.fsdp + s.ep)     # ep over the dp axis: the tokens are split once (GShard, Switch)
    if batch:
        if _fits(shape[0], batch, mesh):
            dims[0] = batch
        else:
            why.append(f"batch {shape[0]} does not divide over {'x'.join(batch)}; left whole")
    if s.cp and len(shape) >= 2:
        if _fits(shape[1], s.cp, mesh):
            dims[1] = s.cp
        else:
            why.append(f"sequence {shape[1]} does not divide over {'x'.join(s.cp)}; left whole")
    return Spec(tuple(dims)), why


def _state_layout(name: str, shape, mesh: Mesh, s: Strategy):
    """(layout, role, pinned axes, notes) of a parameter or optimizer-state tensor."""
    path = path_of(name)
    dims: list[tuple[str, ...]] = [()] * len(shape)
    why: list[str] = []
    role = "state"
    pins: set[str] = set()
    if not shape:
        return Spec(()), "scalar", frozenset(), why
    module = path[-2] if len(path) >= 2 else ""
    leaf = path[-1] if path else ""
    if s.ep and any("expert" in p.lower() for p in path[:-1]) and len(shape) >= 3:
        if _fits(shape[0], s.ep, mesh):
            dims[0] = s.ep
            pins.update(s.ep)
            role = "expert"
        else:
            why.append(f"expert dim {shape[0]} does not divide over {'x'.join(s.ep)}")
    if s.tp:
        tp_dim = None
        if module in s.vocab and leaf in ("embedding", "kernel", "weight"):
            tp_dim, role = 0, "vocab"
        elif module in s.column:
            role = "column"
            tp_dim = (1 if len(shape) >= 2 else 0) if leaf != "bias" else 0
        elif module in s.row:
            role = "row"
            tp_dim = 0 if leaf != "bias" else None
        if tp_dim is not None and dims[0] and tp_dim == 0:
            tp_dim = 1 if len(shape) > 1 else None      # expert weights: dim 0 holds the experts
        if tp_dim is not None and tp_dim < len(shape):
            if _fits(shape[tp_dim], s.tp, mesh):
                dims[tp_dim] = s.tp
                pins.update(s.tp)
            else:
                why.append(f"{role} dim {tp_dim} ({shape[tp_dim]}) does not divide over {'x'.join(s.tp)}; replicated")
    split = s.fsdp or (s.dp if s.zero1 and "opt" in root_of(name).lower() else ())
    taken = {a for d in dims for a in d}
    if split and taken & set(split):
        # an expert weight already split over these axes (ep over the fsdp / zero1 axis): each device holds its
        # own experts whole, so there is nothing left for FSDP to shard over them
        split = tuple(a for a in split if a not in taken)
    if split:
        free = [d for d in range(len(shape)) if not dims[d] and _fits(shape[d], split, mesh)]
        if free:
            d = max(free, key=lambda i: (shape[i], -i))
            dims[d] = split
        else:
            why.append(f"no dimension of {shape} divides over {'x'.join(split)}; replicated")
    return Spec(tuple(dims)), role, frozenset(pins), why


def _distinct(axes: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(axes))


def parse_axes(text: str) -> tuple[str, ...]:
    """``"data+pod"`` -> ('data', 'pod')."""
    return tuple(a for a in (x.strip() for x in text.split("+")) if a)


def parse_mesh_text(text: str) -> Mesh:
    """``"data=4.model=2"`` (``.``, ``*``, ``;`` or spaces between axes) -> Mesh."""
    axes = []
    for part in re.split(r"[.;* ]+", text.strip()):
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"mesh axis {part!r} in {text!r} is not name=size")
        name, size = part.split("=", 1)
        try:
            axes.append((name.strip(), int(size)))
        except ValueError:
            raise ValueError(f"mesh axis {name!r} has size {size!r}, not an int") from None
    if not axes:
        raise ValueError(f"empty mesh {text!r}")
    return Mesh(tuple(axes))


def parse_pins(text: str) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """``"*fc1*kernel=_:model;*embedding=model:_"`` -> pins; per dimension ``_`` (whole) or axes joined by ``+``."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        if "=" not in item:
            raise ValueError(f"pin {item!r} is not PATTERN=DIMS (DIMS like _:model)")
        pattern, dims = item.rsplit("=", 1)
        out.append((pattern.strip(), tuple(() if d.strip() in ("_", "") else parse_axes(d) for d in dims.split(":"))))
    return tuple(out)
