"""Per-op sharding rules: for an op and its operands' current shardings, the candidate layouts.

A rule returns ``Choice``s (required operand shardings, result shardings); the propagation engine
(``sharding_propagate.py``) prices each candidate (collectives to reshard the operands + the
per-device work it leaves) and keeps the cheapest. Rules know shapes and dimension numbers,
never a chip's speed. What each family does, as GSPMD / Shardy do:

- elementwise: operands agree on one layout (one of theirs, or their union); a linear op
  (add of partial sums, convert, negate, scaling) may carry a pending partial sum through;
- dot_general / convolution: each mesh axis takes one role (batch, lhs-free, rhs-free,
  contracting -> partial sum, or none); candidates come from where the axes already are;
- reduce: a reduced dimension's axes become a pending partial sum;
- reshape / transpose / broadcast: layouts map through the dimension correspondence (a split
  or merge keeps only the major dimension's axes);
- slice / pad / concatenate / dynamic_(update_)slice / sort / top_k / windows: a dimension whose extent
  changes (or is searched) must be whole on every device;
- gather: indexed dimensions sharded -> masked local lookup and a partial sum (vocab-parallel
  embeddings); scatter: updates sharded on their scatter dims -> a partial sum;
- sharding constraints: the given layout; anything unknown: replicated.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from explorer.graph.ir import Op, TensorType

from .spec import Mesh, Spec


@dataclass(frozen=True)
class Choice:
    """Required operand shardings (None: take the operand as it is) and result shardings."""

    operands: tuple[Spec | None, ...]
    results: tuple[Spec, ...]
    halo_bytes: float = 0.0          # per device, exchanged with neighbours (spatially sharded convolution)
    halo_axes: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class Ctx:
    op: Op
    ins: tuple[TensorType, ...]
    outs: tuple[TensorType, ...]
    specs: tuple[Spec, ...]          # operands' current shardings
    mesh: Mesh
    attr: Callable[[str, str], object]   # (attribute name, kind) -> parsed MLIR attribute (dimension numbers)
    scatter_partials: tuple[str, ...] = ()   # axes whose partial sums may be reduce-scattered onto dim 1 (sequence parallelism)
    hint: Spec | None = None             # layout the result's users want (from the backward hint pass)


RuleFn = Callable[[Ctx], list[Choice]]
_RULES: dict[str, RuleFn] = {}

LINEAR_UNARY = frozenset({"stablehlo.convert", "stablehlo.negate", "stablehlo.copy", "stablehlo.bitcast_convert",
                          "stablehlo.reshape", "stablehlo.transpose", "stablehlo.broadcast_in_dim",
                          "stablehlo.optimization_barrier"})
_ADDITIVE = frozenset({"stablehlo.add", "stablehlo.subtract"})
_SCALING = frozenset({"stablehlo.multiply", "stablehlo.divide"})


def rule(*names: str):
    def reg(fn: RuleFn) -> RuleFn:
        for n in names:
            _RULES[n] = fn
        return fn
    return reg


def choices(ctx: Ctx) -> list[Choice]:
    fn = _RULES.get(ctx.op.name) or _RULES.get(ctx.op.name.replace("mhlo.", "stablehlo.", 1))
    if fn is None:
        fn = elementwise if _is_elementwise(ctx) else replicate
    out = fn(ctx)
    return out or replicate(ctx)


def _is_elementwise(ctx: Ctx) -> bool:
    if not ctx.outs or ctx.op.regions:
        return False
    shape = ctx.outs[0].shape
    return all(o.shape == shape for o in ctx.outs) and all(t.shape in (shape, ()) for t in ctx.ins)


def replicated_like(types: Sequence[TensorType]) -> tuple[Spec, ...]:
    return tuple(Spec.replicated(len(t.shape)) for t in types)


def replicate(ctx: Ctx) -> list[Choice]:
    """Anything the partitioner cannot split: every operand whole on every device."""
    return [Choice(replicated_like(ctx.ins), replicated_like(ctx.outs), label="replicated")]


def axes_in(mesh: Mesh, *specs: Spec) -> list[str]:
    """Axes splitting any of ``specs``' dimensions, in mesh order (deterministic)."""
    found = {a for s in specs for d in s.dims for a in d}
    base = {n: i for i, n in enumerate(mesh.names)}
    return sorted(found, key=lambda a: (base.get(a.split(":(")[0], len(base)), a))


def _clear(spec: Spec) -> Spec:
    return Spec(spec.dims)


def _union(specs: Sequence[Spec], rank: int) -> Spec:
    """Per dimension, the first operand's axes that are not already used elsewhere."""
    dims: list[tuple[str, ...]] = [()] * rank
    used: set[str] = set()
    for d in range(rank):
        for s in specs:
            if s.dims[d] and not (set(s.dims[d]) & used):
                dims[d] = s.dims[d]
                used.update(s.dims[d])
                break
    return Spec(tuple(dims))


# -- elementwise ---------------------------------------------------------------------------------

def elementwise(ctx: Ctx) -> list[Choice]:
    shape = ctx.outs[0].shape
    rank = len(shape)
    full = [i for i, t in enumerate(ctx.ins) if t.shape == shape]
    cands: list[Spec] = []
    for i in full:
        s = _clear(ctx.specs[i])
        if s not in cands:
            cands.append(s)
    u = _union([ctx.specs[i] for i in full], rank)
    if u not in cands:
        cands.append(u)
    if ctx.hint is not None and ctx.hint.rank == rank and _clear(ctx.hint) not in cands:
        cands.append(_clear(ctx.hint))
    if not cands:
        cands.append(Spec.replicated(rank))
    out: list[Choice] = []
    for s in cands:
        ops = tuple(s if t.shape == shape else Spec.replicated(len(t.shape)) for t in ctx.ins)
        out.append(Choice(ops, (s,) * len(ctx.outs), label="elementwise"))
    carried = _partial_carry(ctx, full)
    if carried is not None:
        out.insert(0, carried)
    if ctx.scatter_partials and rank >= 3:
        for i in full:
            p = ctx.specs[i].partial
            if p and set(p) <= set(ctx.scatter_partials) and not u.dims[1] and shape[1] % math.prod(ctx.mesh.size(a) for a in p) == 0:
                s = Spec(tuple(p if d == 1 else tuple(a for a in axes if a not in p) for d, axes in enumerate(u.dims)))
                ops = tuple(s if t.shape == shape else Spec.replicated(len(t.shape)) for t in ctx.ins)
                out.append(Choice(ops, (s,) * len(ctx.outs), label="elementwise (partial scattered)"))
                break
    return out


def _partial_carry(ctx: Ctx, full: list[int]) -> Choice | None:
    """A linear op keeps a pending partial sum: sum(x_i) op y == sum(x_i op y) for these cases."""
    name = ctx.op.name
    partial = [i for i in full if ctx.specs[i].partial]
    if not partial:
        return None
    p = ctx.specs[partial[0]]
    if name in LINEAR_UNARY and len(ctx.ins) == 1:
        ok = True
    elif name in _ADDITIVE:
        ok = all(ctx.specs[i].partial == p.partial and ctx.specs[i].dims == p.dims for i in full)
    elif name in _SCALING:
        ok = len(partial) == 1 and (name == "stablehlo.multiply" or partial[0] == 0)
    else:
        ok = False
    if not ok:
        return None
    plain = Spec(tuple(tuple(a for a in d if a not in p.partial) for d in p.dims))
    ops = tuple((ctx.specs[i] if i in partial else plain) if t.shape == ctx.outs[0].shape
                else Spec.replicated(len(t.shape)) for i, t in enumerate(ctx.ins))
    return Choice(ops, (p,) * len(ctx.outs), label="partial carried")


# -- matrix ops ----------------------------------------------------------------------------------

def _roles(n_batch: int, lhs_free: Sequence[int], rhs_free: Sequence[int], n_contract: int):
    return ([("b", i) for i in range(n_batch)] + [("m", i) for i in range(len(lhs_free))]
            + [("n", i) for i in range(len(rhs_free))] + [("k", i) for i in range(n_contract)])


def _where(spec: Spec, dim_role: dict[int, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    out = {}
    for d, axes in enumerate(spec.dims):
        for a in axes:
            if d in dim_role:
                out[a] = dim_role[d]
    return out


def _assign(cur: Spec, dim_role: dict[int, tuple[str, int]], role_axes: dict[tuple[str, int], list[str]],
            rank: int, mesh: Mesh, shape: Sequence[int]) -> Spec | None:
    """The operand layout a role assignment asks for (None: an axis does not divide its dimension)."""
    dims = []
    for d in range(rank):
        role = dim_role.get(d)
        axes = list(role_axes.get(role, ())) if role else []
        order = {a: i for i, a in enumerate(cur.dims[d])}
        axes.sort(key=lambda a: (order.get(a, len(order)), mesh.names.index(a.split(":(")[0])))
        n = math.prod(mesh.size(a) for a in axes)
        if shape[d] % n:
            return None
        dims.append(tuple(axes))
    return Spec(tuple(dims))


def matmul_choices(ctx: Ctx, lhs_b, rhs_b, lhs_c, rhs_c, label: str) -> list[Choice]:
    lhs, rhs = ctx.ins[0], ctx.ins[1]
    ls, rs = ctx.specs[0], ctx.specs[1]
    lhs_free = [d for d in range(len(lhs.shape)) if d not in lhs_b and d not in lhs_c]
    rhs_free = [d for d in range(len(rhs.shape)) if d not in rhs_b and d not in rhs_c]
    lrole = {d: ("b", i) for i, d in enumerate(lhs_b)} | {d: ("m", i) for i, d in enumerate(lhs_free)} \
        | {d: ("k", i) for i, d in enumerate(lhs_c)}
    rrole = {d: ("b", i) for i, d in enumerate(rhs_b)} | {d: ("n", i) for i, d in enumerate(rhs_free)} \
        | {d: ("k", i) for i, d in enumerate(rhs_c)}
    at_l, at_r = _where(ls, lrole), _where(rs, rrole)
    axes = axes_in(ctx.mesh, ls, rs)
    options = []
    for a in axes:
        opts = []
        for r in (at_l.get(a), at_r.get(a), None):
            if r not in opts:
                opts.append(r)
        options.append(opts)
    out_rank = len(ctx.outs[0].shape)
    result: list[Choice] = []
    for combo in itertools.product(*options):
        role_axes: dict[tuple[str, int], list[str]] = {}
        for a, r in zip(axes, combo):
            if r is not None:
                role_axes.setdefault(r, []).append(a)
        lspec = _assign(ls, lrole, role_axes, len(lhs.shape), ctx.mesh, lhs.shape)
        rspec = _assign(rs, rrole, role_axes, len(rhs.shape), ctx.mesh, rhs.shape)
        if lspec is None or rspec is None:
            continue
        dims = ([lspec.dims[d] for d in lhs_b] + [lspec.dims[d] for d in lhs_free]
                + [rspec.dims[d] for d in rhs_free])
        if len(dims) != out_rank:
            continue
        partial = tuple(a for a, r in zip(axes, combo) if r is not None and r[0] == "k")
        result.append(Choice((lspec, rspec) + (None,) * (len(ctx.ins) - 2),
                             (Spec(tuple(dims), partial),), label=label))
    return result


@rule("stablehlo.dot_general")
def dot_general(ctx: Ctx) -> list[Choice]:
    d = ctx.op.attrs["dot_dimension_numbers"]
    return matmul_choices(ctx, d["lhs_batch"], d["rhs_batch"], d["lhs_contract"], d["rhs_contract"], "dot")


@rule("stablehlo.dot")
def dot(ctx: Ctx) -> list[Choice]:
    return matmul_choices(ctx, (), (), (len(ctx.ins[0].shape) - 1,), (0,), "dot")


@rule("stablehlo.convolution")
def convolution(ctx: Ctx) -> list[Choice]:
    """Batch and output features split freely; input features are a contraction (partial sum);
    a spatial dimension may stay split, at the price of a halo exchange with the neighbours."""
    dn = ctx.op.attrs["dimension_numbers"]
    groups = int(ctx.op.attrs.get("feature_group_count", 1)) * int(ctx.op.attrs.get("batch_group_count", 1))
    lhs, rhs, out = ctx.ins[0], ctx.ins[1], ctx.outs[0]
    ls, rs = ctx.specs[0], ctx.specs[1]
    cands = []
    batch_axes = ls.dims[dn["input_batch"]]
    feat_axes = rs.dims[dn["kernel_out"]] if groups == 1 else ()
    contract = tuple(a for a in ls.dims[dn["input_feature"]] if a in rs.dims[dn["kernel_in"]]) if groups == 1 else ()
    spatial_l = {i: ls.dims[d] for i, d in enumerate(dn["input_spatial"])}
    for keep_spatial in (True, False):
        used = set(batch_axes) | set(feat_axes) | set(contract)
        l_dims = [()] * len(lhs.shape)
        r_dims = [()] * len(rhs.shape)
        o_dims = [()] * len(out.shape)
        l_dims[dn["input_batch"]] = batch_axes
        o_dims[dn["output_batch"]] = batch_axes
        r_dims[dn["kernel_out"]] = tuple(a for a in feat_axes if a not in batch_axes)
        o_dims[dn["output_feature"]] = r_dims[dn["kernel_out"]]
        l_dims[dn["input_feature"]] = contract
        r_dims[dn["kernel_in"]] = contract
        halo = 0.0
        halo_axes: tuple[str, ...] = ()
        if keep_spatial:
            for i, axes in spatial_l.items():
                axes = tuple(a for a in axes if a not in used)
                n = math.prod(ctx.mesh.size(a) for a in axes)
                if not axes or out.shape[dn["output_spatial"][i]] % n or lhs.shape[dn["input_spatial"][i]] % n:
                    continue
                used.update(axes)
                l_dims[dn["input_spatial"][i]] = axes
                o_dims[dn["output_spatial"][i]] = axes
                window = rhs.shape[dn["kernel_spatial"][i]]
                row = lhs.nbytes / lhs.shape[dn["input_spatial"][i]]
                halo += max(0, window - 1) * row / _shards(l_dims, ctx.mesh, skip=dn["input_spatial"][i])
                halo_axes += axes
            if not halo_axes:
                continue
        lspec, rspec = Spec(tuple(l_dims)), Spec(tuple(r_dims))
        cands.append(Choice((lspec, rspec) + (None,) * (len(ctx.ins) - 2), (Spec(tuple(o_dims), contract),),
                            halo_bytes=halo, halo_axes=halo_axes, label="convolution"))
    return cands


def _shards(dims, mesh: Mesh, skip: int) -> int:
    return math.prod(mesh.size(a) for d, axes in enumerate(dims) if d != skip for a in axes)


# -- reductions and windows ----------------------------------------------------------------------

@rule("stablehlo.reduce")
def reduce(ctx: Ctx) -> list[Choice]:
    """Reduced dimensions' axes become a pending partial sum (max/min reduce the same way in cost)."""
    reduced = set(ctx.op.attrs.get("dimensions") or ())
    n = max(1, len(ctx.ins) // 2)
    spec = ctx.specs[0]
    rank = len(ctx.ins[0].shape)
    cands = []
    for keep_partial in (True, False):
        src = spec if keep_partial else _clear(spec)
        if not keep_partial and not spec.partial:
            continue
        dims = tuple(src.dims[d] for d in range(rank) if d not in reduced)
        partial = src.partial + tuple(a for d in sorted(reduced) for a in src.dims[d])
        ops = (src,) * n + replicated_like(ctx.ins[n:])
        cands.append(Choice(ops, (Spec(dims, partial),) * len(ctx.outs), label="reduce"))
    return cands


def _whole_dims(ctx: Ctx, dims_to_clear: Sequence[int], label: str) -> list[Choice]:
    """Operands and results keep the first operand's layout except ``dims_to_clear``, which are whole."""
    spec = _clear(ctx.specs[0])
    dims = tuple(() if d in dims_to_clear else axes for d, axes in enumerate(spec.dims))
    s = Spec(dims)
    ops = tuple(s if t.shape and len(t.shape) == s.rank and _same_rank_like(t, ctx.ins[0]) else Spec.replicated(len(t.shape))
                for t in ctx.ins)
    res = tuple(Spec(dims) if len(t.shape) == s.rank else Spec.replicated(len(t.shape)) for t in ctx.outs)
    return [Choice(ops, res, label=label)]


def _same_rank_like(t: TensorType, ref: TensorType) -> bool:
    return len(t.shape) == len(ref.shape)


@rule("stablehlo.reduce_window", "stablehlo.select_and_scatter")
def windowed(ctx: Ctx) -> list[Choice]:
    window = ctx.op.attrs.get("window_dimensions") or ()
    return _whole_dims(ctx, [d for d, w in enumerate(window) if w > 1], "window")


@rule("stablehlo.sort")
def sort(ctx: Ctx) -> list[Choice]:
    dim = int(ctx.op.attrs.get("dimension", -1)) % max(1, len(ctx.ins[0].shape))
    return _whole_dims(ctx, [dim], "sort")


@rule("chlo.top_k", "mhlo.topk")
def top_k(ctx: Ctx) -> list[Choice]:
    """The k largest along the last dimension: that dimension whole, every other one (tokens, batch, groups) split as
    the operand is, values and indices alike (an MoE router's top-k runs on each device's own tokens)."""
    return _whole_dims(ctx, [len(ctx.ins[0].shape) - 1], "top_k")


@rule("stablehlo.custom_call")
def custom_call(ctx: Ctx) -> list[Choice]:
    """``ApproxTopK`` (``jax.lax.approx_max_k``) splits like ``top_k`` along every dimension but its reduction
    dimension; any other custom call as before this rule existed (elementwise when its shapes say so, else
    replicated)."""
    if ctx.op.attrs.get("call_target_name") == "ApproxTopK" and ctx.ins and ctx.ins[0].shape:
        cfg = ctx.op.attrs.get("mhlo.backend_config")
        rank = len(ctx.ins[0].shape)
        dim = cfg.get("reduction_dim", rank - 1) if hasattr(cfg, "get") else rank - 1
        try:
            dim = int(dim) % rank
        except (TypeError, ValueError):
            return replicate(ctx)
        # operands: the values and their iota (same rank), then scalar init values; results: values, indices
        if all(len(t.shape) in (rank, 0) for t in ctx.ins) and all(len(t.shape) == rank for t in ctx.outs):
            return _whole_dims(ctx, [dim], "approx top_k")
    return elementwise(ctx) if _is_elementwise(ctx) else replicate(ctx)


@rule("stablehlo.cumsum", "stablehlo.fft", "stablehlo.cholesky", "stablehlo.triangular_solve")
def minor_whole(ctx: Ctx) -> list[Choice]:
    r = len(ctx.ins[0].shape)
    return _whole_dims(ctx, [r - 2, r - 1] if r >= 2 else [r - 1], "linalg")


# -- layout ops ----------------------------------------------------------------------------------

@rule("stablehlo.transpose")
def transpose(ctx: Ctx) -> list[Choice]:
    perm = ctx.op.attrs["permutation"]
    s = ctx.specs[0]
    return [Choice((s,), (Spec(tuple(s.dims[p] for p in perm), s.partial),), label="transpose")]


@rule("stablehlo.broadcast_in_dim")
def broadcast_in_dim(ctx: Ctx) -> list[Choice]:
    bdims = ctx.op.attrs.get("broadcast_dimensions") or ()
    s = ctx.specs[0]
    src, out = ctx.ins[0], ctx.outs[0]
    in_dims = list(s.dims)
    dims: list[tuple[str, ...]] = [()] * len(out.shape)
    for i, o in enumerate(bdims):
        if src.shape[i] == out.shape[o]:
            dims[o] = s.dims[i]
        else:
            in_dims[i] = ()          # a size-1 dimension expanded: nothing to split
    need = Spec(tuple(in_dims), s.partial)
    return [Choice((need,), (Spec(tuple(dims), s.partial),), label="broadcast")]


@rule("stablehlo.reshape")
def reshape(ctx: Ctx) -> list[Choice]:
    need, out = reshape_specs(ctx.ins[0].shape, ctx.outs[0].shape, ctx.specs[0], ctx.mesh)
    return [Choice((need,), (out,), label="reshape")]


def reshape_specs(src: Sequence[int], dst: Sequence[int], spec: Spec, mesh: Mesh) -> tuple[Spec, Spec]:
    """(operand layout needed, result layout) for a reshape. Dimensions are grouped into runs with
    equal element counts; a run that maps one-to-one keeps its layout, a split or merge keeps only
    its major dimension's axes (when they divide the result's major dimension): splitting a minor
    dimension's tiles would interleave them, which needs data movement."""
    need = [list(d) for d in spec.dims]
    out: list[tuple[str, ...]] = [()] * len(dst)
    for g_in, g_out in _groups(src, dst):
        for d in g_in:
            if src[d] == 1:
                need[d] = []
        real_in = [d for d in g_in if src[d] != 1]
        real_out = [d for d in g_out if dst[d] != 1]
        if not real_in or not real_out:
            for d in real_in:
                need[d] = []
            continue
        if [src[d] for d in real_in] == [dst[d] for d in real_out]:
            for a, b in zip(real_in, real_out):
                out[b] = tuple(need[a])
            continue
        for d in real_in[1:]:
            need[d] = []
        axes = tuple(need[real_in[0]])
        if axes and dst[real_out[0]] % math.prod(mesh.size(a) for a in axes) == 0:
            out[real_out[0]] = axes
        else:
            need[real_in[0]] = []
    return Spec(tuple(tuple(d) for d in need), spec.partial), Spec(tuple(out), spec.partial)


def _groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Split two shapes into runs of dimensions with equal element counts."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj = [], []
        pi = pj = 1
        if i < len(src):
            gi.append(i)
            pi *= src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj *= dst[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(dst):
                gj.append(j)
                pj *= dst[j]
                j += 1
            else:
                gi.extend(range(i, len(src)))
                i = len(src)
                break
        groups.append((gi, gj))
    return groups


@rule("stablehlo.slice", "stablehlo.pad", "stablehlo.reverse", "stablehlo.dynamic_slice", "stablehlo.real_dynamic_slice")
def slicing(ctx: Ctx) -> list[Choice]:
    src, out = ctx.ins[0], ctx.outs[0]
    changed = [d for d in range(len(src.shape)) if src.shape[d] != out.shape[d]]
    if ctx.op.name.endswith("reverse"):
        changed = list(ctx.op.attrs.get("dimensions") or ())
    return _whole_dims(ctx, changed, "slice")


@rule("stablehlo.concatenate")
def concatenate(ctx: Ctx) -> list[Choice]:
    return _whole_dims(ctx, [int(ctx.op.attrs.get("dimension", 0))], "concatenate")


@rule("stablehlo.dynamic_update_slice")
def dynamic_update_slice(ctx: Ctx) -> list[Choice]:
    src, upd = ctx.ins[0], ctx.ins[1]
    changed = [d for d in range(len(src.shape)) if src.shape[d] != upd.shape[d]]
    return _whole_dims(ctx, changed, "update slice")


@rule("stablehlo.iota", "stablehlo.constant", "stablehlo.partition_id", "stablehlo.replica_id",
      "stablehlo.after_all", "stablehlo.create_token")
def generator(ctx: Ctx) -> list[Choice]:
    return [Choice((None,) * len(ctx.ins), replicated_like(ctx.outs), label="generated")]


@rule("stablehlo.rng", "stablehlo.rng_bit_generator")
def random_bits(ctx: Ctx) -> list[Choice]:
    """Random bits (a dropout mask's): replicated, or drawn by each device for its own shard in the layout the
    values they mask have (``ctx.hint``), as Megatron's per-rank RNG states and JAX's partitionable RNG do: a
    tensor-parallel attention dropout mask is split by heads, a sequence-parallel one by tokens. The state result
    of ``rng_bit_generator`` stays replicated."""
    out = generator(ctx)
    bits = ctx.outs[-1] if ctx.outs else None
    h = ctx.hint
    if bits is not None and h is not None and len(h.dims) == len(bits.shape) and any(h.dims) and not h.partial:
        if all(not axes or bits.shape[d] % math.prod(ctx.mesh.size(a) for a in axes) == 0
               for d, axes in enumerate(h.dims)):
            res = replicated_like(ctx.outs[:-1]) + (Spec(h.dims),)
            out.append(Choice((None,) * len(ctx.ins), res, label="random bits per shard"))
    return out


@rule("stablehlo.while", "stablehlo.optimization_barrier", "stablehlo.tuple", "stablehlo.get_tuple_element")
def passthrough(ctx: Ctx) -> list[Choice]:
    if len(ctx.ins) == len(ctx.outs) and all(a.shape == b.shape for a, b in zip(ctx.ins, ctx.outs)):
        return [Choice(tuple(ctx.specs), tuple(ctx.specs), label="carried")]
    return replicate(ctx)


@rule("stablehlo.case", "stablehlo.if")
def branch(ctx: Ctx) -> list[Choice]:
    return [Choice((None,) * len(ctx.ins), replicated_like(ctx.outs), label="branch")]


# -- gather / scatter ----------------------------------------------------------------------------

@rule("stablehlo.gather")
def gather(ctx: Ctx) -> list[Choice]:
    dn = ctx.attr("dimension_numbers", "gather")
    operand, indices, out = ctx.ins[0], ctx.ins[1], ctx.outs[0]
    os_, is_ = _clear(ctx.specs[0]), _clear(ctx.specs[1])
    sizes = ctx.op.attrs.get("slice_sizes") or operand.shape
    offset_out = list(dn.offset_dims)
    collapsed = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    offset_in = [d for d in range(len(operand.shape)) if d not in collapsed]
    batch_out = [d for d in range(len(out.shape)) if d not in offset_out]
    ivd = dn.index_vector_dim
    idx_batch = [d for d in range(len(indices.shape)) if d != ivd]
    cands = []
    for masked in (True, False):
        used: set[str] = set()
        o_dims: list[tuple[str, ...]] = [()] * len(out.shape)
        i_dims: list[tuple[str, ...]] = [()] * len(indices.shape)
        for ob, ib in zip(batch_out, idx_batch):
            o_dims[ob] = is_.dims[ib]
            i_dims[ib] = is_.dims[ib]
            used.update(is_.dims[ib])
        op_dims: list[tuple[str, ...]] = [()] * len(operand.shape)
        for ob, ib in zip(dn.operand_batching_dims, dn.start_indices_batching_dims):
            op_dims[ob] = is_.dims[ib]          # batched gather: each batch row reads its own operand row
        for oo, od in zip(offset_out, offset_in):
            if sizes[od] == operand.shape[od]:
                axes = tuple(a for a in os_.dims[od] if a not in used)
                op_dims[od] = axes
                o_dims[oo] = axes
                used.update(axes)
        partial: tuple[str, ...] = ()
        if masked:
            for d in dn.start_index_map:
                axes = tuple(a for a in os_.dims[d] if a not in used)
                if axes:
                    op_dims[d] = axes
                    partial += axes
                    used.update(axes)
            if not partial:
                continue
        ops = (Spec(tuple(op_dims)), Spec(tuple(i_dims))) + (None,) * (len(ctx.ins) - 2)
        cands.append(Choice(ops, (Spec(tuple(o_dims), partial),), label="gather (masked)" if masked else "gather"))
    return cands


@rule("stablehlo.scatter")
def scatter(ctx: Ctx) -> list[Choice]:
    dn = ctx.attr("scatter_dimension_numbers", "scatter")
    n = len(ctx.outs)
    operand, indices, updates = ctx.ins[0], ctx.ins[n], ctx.ins[n + 1]
    os_, is_, us_ = _clear(ctx.specs[0]), _clear(ctx.specs[n]), _clear(ctx.specs[n + 1])
    window_upd = list(dn.update_window_dims)
    inserted = set(dn.inserted_window_dims) | set(dn.input_batching_dims)
    window_op = [d for d in range(len(operand.shape)) if d not in inserted]
    scatter_upd = [d for d in range(len(updates.shape)) if d not in window_upd]
    idx_batch = [d for d in range(len(indices.shape)) if d != dn.index_vector_dim]
    used: set[str] = set()
    op_dims = list(os_.dims)
    u_dims: list[tuple[str, ...]] = [()] * len(updates.shape)
    for ud, od in zip(window_upd, window_op):
        if updates.shape[ud] == operand.shape[od]:
            axes = us_.dims[ud] or os_.dims[od]
            op_dims[od] = axes
            u_dims[ud] = axes
    for d in dn.scattered_dims_to_operand_dims:
        op_dims[d] = ()
    for ud, od in zip(window_upd, window_op):
        if updates.shape[ud] != operand.shape[od]:
            op_dims[od] = ()
    used.update(a for d in op_dims for a in d)
    partial: list[str] = []
    i_dims: list[tuple[str, ...]] = [()] * len(indices.shape)
    batching = dict(zip(dn.scatter_indices_batching_dims, dn.input_batching_dims))
    for ud, ib in zip(scatter_upd, idx_batch):
        axes = tuple(a for a in (us_.dims[ud] or is_.dims[ib]) if a not in used)
        u_dims[ud] = axes
        i_dims[ib] = axes
        used.update(axes)
        if ib in batching:                  # batched scatter: each batch row writes its own operand row
            op_dims[batching[ib]] = axes
        else:                               # rows from several devices may hit one operand row: a partial sum
            partial.extend(axes)
    op_spec, u_spec = Spec(tuple(op_dims)), Spec(tuple(u_dims))
    ops = (op_spec,) * n + (Spec(tuple(i_dims)),) + (u_spec,) * (len(ctx.ins) - n - 1)
    return [Choice(ops, (Spec(tuple(op_dims), tuple(partial)),) * n, label="scatter")]
