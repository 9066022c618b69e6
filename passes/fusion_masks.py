"""Masked tiles a fused attention kernel skips: a causal (or any index-computed) mask makes whole tiles of the
scores -inf, and a FlashAttention-style kernel never computes them.

Why: a causal language model's attention masks half of every S x T score matrix; FlashAttention (Dao 2023) and
its successors loop only over the key tiles a query tile can see, so a causal kernel does about half the matmul
and softmax work of an unmasked one. Pricing the whole matrix makes long-context attention about 2x too slow.

The mask must be *structural*: computed from iotas and constants only (``jnp.tril``, a sliding window, a
prefix-LM band), so it is the same for every input and can be evaluated here. It is evaluated at the corners of
every (query tile, key tile) pair of the target's matrix tile; a tile is computed when any corner is kept (exact
for triangular and band masks). The ops of the kernel that work on score-shaped values (the score matmul, the
softmax, the matmuls that read the probabilities or their gradient) have their work scaled by the fraction of
tiles computed. A mask that reads data (padding from a batch of lengths) is not structural and is priced whole.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from .fusion_ops import MATMUL

_COMPARE: dict[str, Callable] = {"EQ": np.equal, "NE": np.not_equal, "LT": np.less, "LE": np.less_equal,
                                 "GT": np.greater, "GE": np.greater_equal}
_BINARY: dict[str, Callable] = {"stablehlo.add": np.add, "stablehlo.subtract": np.subtract,
                                "stablehlo.multiply": np.multiply, "stablehlo.and": np.logical_and,
                                "stablehlo.or": np.logical_or, "stablehlo.xor": np.logical_xor,
                                "stablehlo.maximum": np.maximum, "stablehlo.minimum": np.minimum}
_UNARY: dict[str, Callable] = {"stablehlo.not": np.logical_not, "stablehlo.negate": np.negative,
                               "stablehlo.convert": lambda a: a, "stablehlo.reshape": lambda a: a,
                               "stablehlo.abs": np.abs}
MAX_TILES_PER_DIM = 1024    # coarser sampling beyond this (a 1M-token sequence): each sample covers several tiles
_DEPTH = 48


def _evaluate(graph, vid: int, samples: list[np.ndarray], depth: int = 0) -> np.ndarray | None:
    """The value ``vid`` at the sampled indices (one index vector per dimension of its shape), or None when it is
    not computed from iotas and constants alone."""
    if depth > _DEPTH:
        return None
    p = graph.producers.get(vid)
    if p is None:
        return None
    op = graph.ops[p]
    grid = tuple(len(s) for s in samples)
    if op.name == "stablehlo.iota":
        d = int(op.attrs.get("iota_dimension", 0))
        shape = [1] * len(samples)
        shape[d] = grid[d]
        return np.broadcast_to(samples[d].reshape(shape), grid)
    if op.name == "stablehlo.constant":
        value = op.attrs.get("scalar_value")          # the importer keeps scalar and splat constants' values
        return None if value is None else np.full(grid, value)
    if op.name == "stablehlo.broadcast_in_dim":
        src = graph.values[op.operands[0]]
        dims = tuple(op.attrs.get("broadcast_dimensions") or ())
        inner = [samples[d] if src.shape[i] == graph.values[vid].shape[d] else np.zeros(1, dtype=np.int64)
                 for i, d in enumerate(dims)]
        a = _evaluate(graph, op.operands[0], inner, depth + 1)
        if a is None:
            return None
        shape = [1] * len(samples)
        for i, d in enumerate(dims):
            shape[d] = a.shape[i]
        return np.broadcast_to(a.reshape(shape), grid)
    if op.name in _UNARY and len(op.operands) == 1:
        if op.name == "stablehlo.reshape" and tuple(graph.values[op.operands[0]].shape) != tuple(graph.values[vid].shape):
            return None
        a = _evaluate(graph, op.operands[0], samples, depth + 1)
        return None if a is None else _UNARY[op.name](a)
    if op.name in _BINARY or op.name == "stablehlo.compare":
        a = _evaluate(graph, op.operands[0], samples, depth + 1)
        b = _evaluate(graph, op.operands[1], samples, depth + 1) if a is not None else None
        if b is None:
            return None
        if op.name == "stablehlo.compare":
            fn = _COMPARE.get(op.attrs.get("comparison_direction"))
            return None if fn is None else fn(a, b)
        return _BINARY[op.name](a, b)
    if op.name == "stablehlo.select":
        c = _evaluate(graph, op.operands[0], samples, depth + 1)
        a = _evaluate(graph, op.operands[1], samples, depth + 1) if c is not None else None
        b = _evaluate(graph, op.operands[2], samples, depth + 1) if a is not None else None
        return None if b is None else np.where(c, a, b)
    return None


def _tile_samples(size: int, tile: int) -> tuple[np.ndarray, int]:
    """The first and last index of every tile of a dimension (tiles widened past ``MAX_TILES_PER_DIM``)."""
    tile = max(tile, -(-size // MAX_TILES_PER_DIM))
    starts = np.arange(0, size, tile)
    ends = np.minimum(starts + tile, size) - 1
    return np.stack([starts, ends], axis=1).reshape(-1), len(starts)


_ATTRS = ("iota_dimension", "broadcast_dimensions", "comparison_direction", "scalar_value")
_FRACTIONS: dict[tuple, float | None] = {}     # (mask structure, tile) -> fraction: every layer builds the same mask


def _structure(graph, vid: int, depth: int = 0) -> tuple | None:
    """What ``_evaluate`` would compute for ``vid``, as a hashable tree of ops, shapes and the attributes it reads;
    None when it reads anything but iotas and constants (so it need not be evaluated at all)."""
    p = graph.producers.get(vid)
    if p is None or depth > _DEPTH:
        return None
    op = graph.ops[p]
    if op.name not in _BINARY and op.name not in _UNARY and op.name not in (
            "stablehlo.iota", "stablehlo.constant", "stablehlo.broadcast_in_dim", "stablehlo.compare",
            "stablehlo.select"):
        return None
    children = () if op.name in ("stablehlo.iota", "stablehlo.constant") else \
        tuple(_structure(graph, u, depth + 1) for u in op.operands)
    if any(c is None for c in children):
        return None
    attrs = tuple(op.attrs.get(a) for a in _ATTRS)
    return (op.name, tuple(graph.values[vid].shape), attrs, children)


def computed_fraction(graph, pred: int, tile: tuple[int, int]) -> float | None:
    """The fraction of (query tile, key tile) pairs of a structural mask ``pred`` with any element kept; the two
    largest dimensions are the queries and keys, the others sampled at their ends. None: not structural. The same
    mask (by structure) is evaluated once (128K tokens: 0.1 s each, for every layer otherwise)."""
    shape = tuple(graph.values[pred].shape)
    if len(shape) < 2:
        return None
    structure = _structure(graph, pred)
    if structure is None:
        return None
    key = (structure, tuple(tile))
    if key not in _FRACTIONS:
        while len(_FRACTIONS) >= 64:
            _FRACTIONS.pop(next(iter(_FRACTIONS)))
        _FRACTIONS[key] = _evaluated_fraction(graph, pred, shape, tile)
    return _FRACTIONS[key]


def _evaluated_fraction(graph, pred: int, shape: tuple, tile: tuple[int, int]) -> float | None:
    s_dim, t_dim = sorted(sorted(range(len(shape)), key=lambda d: -shape[d])[:2])
    samples, counts = [], []
    for d, n in enumerate(shape):
        if d in (s_dim, t_dim):
            idx, k = _tile_samples(n, tile[0] if d == s_dim else tile[1])
            samples.append(idx)
            counts.append(k)
        else:
            samples.append(np.unique(np.array([0, n - 1], dtype=np.int64)))
    kept = _evaluate(graph, pred, samples)
    if kept is None:
        return None
    kept = np.asarray(kept, dtype=bool)
    others = tuple(d for d in range(len(shape)) if d not in (s_dim, t_dim))
    if others:
        kept = kept.any(axis=others)
    ks, kt = counts
    tiles = kept.reshape(ks, 2, kt, 2).any(axis=(1, 3))
    return float(tiles.mean())


def skipped_tile_works(program, plan, kernels, target) -> dict[int, Any]:
    """Per-op work overrides for the kernels that chain matmuls through a structurally masked score matrix: the
    work of the ops on score-shaped values scaled by the fraction of tiles the mask keeps."""
    graph = program.graph
    tile = (int(target.compute.matrix_tile[0]), int(target.compute.matrix_tile[1]))
    out: dict[int, Any] = {}
    for k in kernels:
        ops = k.priced_ops
        if sum(1 for o in ops if graph.ops[o].name in MATMUL) < 2:
            continue
        fractions = []
        for o in ops:
            op = graph.ops[o]
            if op.name != "stablehlo.select" or not op.operands:
                continue
            f = computed_fraction(graph, op.operands[0], tile)
            if f is not None and f < 1.0:
                fractions.append((graph.values[op.results[0]].elements, f))
        if not fractions:
            continue
        elements, f = max(fractions)
        for o in ops:
            op = graph.ops[o]
            vals = list(op.results) + (list(op.operands) if op.name in MATMUL else [])
            if not any(graph.values[v].elements == elements for v in vals):
                continue
            w = plan.work(program, o)
            if w is None or o in out:
                continue
            out[o] = dataclasses.replace(w, matrix_flops=w.matrix_flops * f, vector_flops=w.vector_flops * f,
                                         transcendentals=w.transcendentals * f)
    return out
