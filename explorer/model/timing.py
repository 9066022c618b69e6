"""The cost model: counted work -> seconds on a target.

Per kernel: a roofline with efficiency, refined by what the target describes:
- matrix work runs at the dtype's matrix peak x achievable efficiency x *shape
  utilisation*: dims padded to the matrix-unit tile, tiles spread in waves over the
  matrix units (with split-K when there are fewer tiles than units), so two chips with
  equal peaks but different tile sizes or unit counts differ;
- vector work at the vector peak, transcendentals at the transcendental rate;
- memory traffic at the level's bandwidth x efficiency, plus its latency once per kernel;
- collectives by alpha-beta models of the algorithms a library would pick on the target's topology
  (ring, torus rings, in-network reduction, tree, hierarchical; ``explorer/collectives.py``);
- kernel time = max(compute, memory, communication) + launch overhead.

One set of formulas serves two callers: ``estimate`` passes a ``Target`` (Python floats), a
vectorised sweep passes an object with the same attributes holding numpy arrays (one entry per
variant). The helpers ``_max`` / ``_where`` use the builtins on floats, so scalar results are
exactly those of plain Python arithmetic, and numpy's elementwise IEEE operations on arrays give
the same bits per variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ..costs import Gemm, Work
from . import collectives

BOUNDS = ("compute", "memory", "communication", "overhead")


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _max(a, b):
    """``max`` on floats, ``np.maximum`` when either side is an array of variants."""
    return np.maximum(a, b) if _is_array(a) or _is_array(b) else max(a, b)


def _min(a, b):
    """``min`` on floats, ``np.minimum`` when either side is an array of variants."""
    return np.minimum(a, b) if _is_array(a) or _is_array(b) else min(a, b)


def _where(cond, a, b):
    """``a if cond else b`` on a bool, ``np.where`` on an array of variants."""
    if _is_array(cond):
        return np.where(cond, a, b)
    return a if cond else b


@dataclass(frozen=True)
class KernelTime:
    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float

    @property
    def seconds(self) -> float:
        return _max(_max(self.compute_s, self.memory_s), self.comm_s) + self.overhead_s

    @property
    def bound(self) -> str:
        if self.overhead_s >= max(self.compute_s, self.memory_s, self.comm_s):
            return "overhead"
        return body_bound(self.compute_s, self.memory_s, self.comm_s)


def body_bound(compute_s: float, memory_s: float, comm_s: float) -> str:
    """Which of compute, memory and communication sets a kernel's body time (ties go to compute)."""
    if comm_s > 0 and comm_s == max(compute_s, memory_s, comm_s):
        return "communication"
    return "compute" if compute_s >= memory_s else "memory"


def bound_codes(compute_s, memory_s, comm_s, overhead_s) -> np.ndarray:
    """``KernelTime.bound`` for arrays of variants, as indices into ``BOUNDS`` (same rule, same order of tests)."""
    body = np.maximum(np.maximum(compute_s, memory_s), comm_s)
    return np.where(overhead_s >= body, 3,
                    np.where((body == comm_s) & (comm_s > 0), 2,
                             np.where(compute_s >= memory_s, 0, 1)))


def matrix_utilisation(g: Gemm, tile: tuple[int, int, int], units: int) -> float:
    """Fraction of the matrix units' peak a GEMM of this shape can use (padding x wave quantisation)."""
    tm, tn, tk = tile
    if g.m == 0 or g.n == 0 or g.k == 0 or g.batch == 0:
        return 1.0
    mt, nt, kt = math.ceil(g.m / tm), math.ceil(g.n / tn), math.ceil(g.k / tk)
    padding = (g.m * g.n * g.k) / (mt * tm * nt * tn * kt * tk)
    tiles = g.batch * mt * nt
    split_k = min(kt, max(1, units // tiles)) if tiles < units else 1  # libraries split K when tiles are few
    items = tiles * split_k
    waves = math.ceil(items / units)
    return padding * items / (waves * units)


def _utilisation(g: Gemm, tile, units):
    """``matrix_utilisation`` for scalars, or per variant when the tile / unit count are arrays.

    Integer arithmetic (ceil, floor division) stays in Python: each distinct (tile, units)
    combination is evaluated once by the scalar function and spread over the variants."""
    if not (_is_array(units) or any(_is_array(t) for t in tile)):
        return matrix_utilisation(g, tuple(tile), units)
    uniq, inverse = _distinct(*tile, units)
    values = np.array([matrix_utilisation(g, (int(a), int(b), int(c)), int(u)) for a, b, c, u in uniq])
    return values[inverse]


_DISTINCT: list[Any] = [(), None]     # the last arrays seen (kept alive, compared by identity) and their result


def _distinct(*arrays) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of the columns ``arrays`` and each variant's row index (one-entry cache: every
    GEMM of a sweep asks about the same tile / unit-count arrays)."""
    seen, result = _DISTINCT
    if len(seen) == len(arrays) and all(a is b for a, b in zip(seen, arrays)):
        return result
    combos = np.stack(np.broadcast_arrays(*arrays), axis=1)
    uniq, inverse = np.unique(combos, axis=0, return_inverse=True)
    _DISTINCT[:] = [arrays, (uniq, inverse.reshape(-1))]
    return _DISTINCT[1]


def matrix_seconds(target, w: Work) -> float:
    if not w.matrix_flops:
        return 0.0
    rate = target.matrix_rate(w.dtype) * target.efficiency.matrix
    if w.gemm is not None:
        rate *= _utilisation(w.gemm, tuple(target.compute.matrix_tile), target.compute.matrix_units)
    return w.matrix_flops / rate


def vector_seconds(target, w: Work) -> float:
    # Vector peaks are quoted with an FMA as 2 flops; an elementwise op (counted as 1 flop) takes a whole
    # issue slot, so a stream of elementwise ops runs at half the quoted peak.
    t = 0.0
    if w.vector_flops:
        t += w.vector_flops / (target.vector_rate(w.dtype or "f32") / 2 * target.efficiency.vector)
    if w.transcendentals:
        t += w.transcendentals / (target.compute.transcendental_per_s * target.efficiency.vector)
    return t


def collective_seconds(target, w: Work) -> float:
    """Time of one collective on the topology its group rides (algorithm choice in ``explorer/collectives.py``)."""
    return collectives.collective_seconds(target, w)


def kernel_time(target, works: Iterable[Work], traffic: Mapping[str, float], *, launches: bool = True) -> KernelTime:
    """Price one kernel: ``works`` are its ops, ``traffic`` the bytes crossing its boundary per memory level."""
    matrix = vector = comm = 0.0
    for w in works:
        matrix += matrix_seconds(target, w)
        vector += vector_seconds(target, w)
        comm += collective_seconds(target, w)
    memory, latency = 0.0, 0.0
    for level_name, nbytes in traffic.items():
        if nbytes <= 0:
            continue
        level = target.memory_level(level_name)
        memory += nbytes / (level.bandwidth_bytes_per_s * target.efficiency.memory)
        latency = _max(latency, level.latency_s)
    compute = _max(matrix, vector)   # matrix and vector units work concurrently inside one kernel
    overhead = target.launch_overhead_s if launches else 0.0
    return KernelTime(compute_s=compute, memory_s=memory + latency, comm_s=comm, overhead_s=overhead)
