"""The cost model: counted work -> seconds on a target.

Per kernel: a roofline with efficiency, refined by what the target describes:
- matrix work runs at the matrix peak of its operands *and precision* (``matrix_peak``: bf16, fp8, int8
  operands at their rates; f32 operands as the target's matrix unit runs them, ``compute.f32_matmul``: TF32 at
  DEFAULT/HIGH and the FP32 SIMT rate at HIGHEST on NVIDIA, 1 / 3 / 6 bf16 passes on a TPU's MXU, natively
  elsewhere) x achievable efficiency x *shape utilisation* (``gemm_algorithm``): dims padded to the matrix-unit
  tile and tiles spread in waves over the units, with the better of data-parallel tiles, split-K (when tiles are
  fewer than units) and stream-K (when the last wave is mostly empty) as cuBLAS / CUTLASS pick; a skinny GEMM
  (M or N below the tile) may instead run as a GEMV-style kernel on the vector units, whichever is faster, so
  a decode matmul is bound by its weight reads, not by a padded tile;
- vector work at the vector peak, transcendentals at the transcendental rate;
- memory traffic at the level's bandwidth x efficiency, plus its latency once per kernel;
- collectives by alpha-beta models of the algorithms a library would pick on the target's topology
  (ring, torus rings, in-network reduction, tree, hierarchical; ``explorer/model/collectives.py``);
- kernel time = max(compute, memory, communication) + the target's ``kernel_gap_s`` (the engine time between
  two kernels of one stream). The host's launches are not part of a kernel: the step scheduler
  (``explorer/model/schedule.py``) issues kernels at the launch rate beside the chip's work.

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
    algorithm: str = ""      # how its matrix work runs ("stream-k", "split-k x4", "gemv", "tf32", ...); "" for none

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


# Stream-K splits the MAC-loop (K) iterations of all output tiles evenly over the units, so a last wave that is
# mostly empty costs nothing; each unit then fixes up the tiles it shares through global memory (partial f32
# accumulators written, read back and summed, with a flag wait). assumption: that fix-up costs as much as 16
# K-iterations of the unit's own work. With it, a GEMM of few K iterations per tile keeps its data-parallel
# tiling (validation_cases gemm_azure_h100_07, 1024x2145x1024 fp8: 16 iterations per tile, measured at the
# 2-wave data-parallel rate) and one of many splits (gemm_mamf_11, 1024x9216x14336: 224 iterations per tile,
# 4.4 waves; a weight gradient 768x3072x12608: 197 iterations, 1.1 waves), as cuBLAS / CUTLASS stream-K
# kernels do (Osama et al., "Stream-K", PPoPP 2023).
STREAM_K_FIXUP_ITERATIONS = 16
# assumption: a library keeps its data-parallel tiling unless stream-K is clearly faster (by 5%): a last wave that
# is nearly full (8192^3 on 132 SMs: 31.03 waves) or a few percent of quantisation is not worth a split.
STREAM_K_MIN_GAIN = 1.05


def gemm_algorithm(g: Gemm, tile: tuple[int, int, int], units: int, split_k: bool = True) -> tuple[float, str]:
    """(utilisation, algorithm): the fraction of the matrix units' peak a GEMM of this shape can use (padding to
    the tile x wave quantisation) with the best of the work decompositions a GEMM library picks from:

    - ``tiles``: one output tile per unit per wave (data-parallel);
    - ``split-k xS``: when tiles are fewer than units, K is split S ways (S = units // tiles, at most the K tiles);
    - ``stream-k``: when there are at least as many tiles as units but the last wave is partly empty, the K
      iterations of all tiles are spread evenly over the units, plus ``STREAM_K_FIXUP_ITERATIONS`` per unit,
      when that beats the data-parallel tiling by ``STREAM_K_MIN_GAIN``.

    ``split_k=False`` (a library that never splits K, ``compute.split_k``: XLA:CPU's Eigen contractions): data-parallel
    tiles only, so a GEMM of fewer tiles than units leaves units idle. Ties go to the earlier one in that order."""
    tm, tn, tk = tile
    if g.m == 0 or g.n == 0 or g.k == 0 or g.batch == 0:
        return 1.0, "tiles"
    mt, nt, kt = math.ceil(g.m / tm), math.ceil(g.n / tn), math.ceil(g.k / tk)
    padding = (g.m * g.n * g.k) / (mt * tm * nt * tn * kt * tk)
    tiles = g.batch * mt * nt
    best, name = padding * tiles / (math.ceil(tiles / units) * units), "tiles"
    if not split_k:
        return best, name
    if tiles < units:
        split = min(kt, max(1, units // tiles))
        if split > 1:
            items = tiles * split
            u = padding * items / (math.ceil(items / units) * units)
            if u > best:
                best, name = u, f"split-k x{split}"
    elif tiles % units:
        iters = tiles * kt
        u = padding * iters / ((math.ceil(iters / units) + STREAM_K_FIXUP_ITERATIONS) * units)
        if u > best * STREAM_K_MIN_GAIN:
            best, name = u, "stream-k"
    return best, name


def matrix_utilisation(g: Gemm, tile: tuple[int, int, int], units: int, split_k: bool = True) -> float:
    """Fraction of the matrix units' peak a GEMM of this shape can use (``gemm_algorithm``'s utilisation)."""
    return gemm_algorithm(g, tile, units, split_k)[0]


def _utilisation(g: Gemm, tile, units, split_k: bool = True):
    """``matrix_utilisation`` for scalars, or per variant when the tile / unit count are arrays.

    Integer arithmetic (ceil, floor division) stays in Python: each distinct (tile, units)
    combination is evaluated once by the scalar function and spread over the variants."""
    if not (_is_array(units) or any(_is_array(t) for t in tile)):
        return matrix_utilisation(g, tuple(tile), units, split_k)
    uniq, inverse = _distinct(*tile, units)
    values = np.array([matrix_utilisation(g, (int(a), int(b), int(c)), int(u), split_k) for a, b, c, u in uniq])
    return values[inverse]


def _algorithm(g: Gemm, tile, units, split_k: bool = True) -> str:
    """``gemm_algorithm``'s choice for scalars; "" when the variants' tiles / unit counts differ (it may too)."""
    if _is_array(units) or any(_is_array(t) for t in tile):
        return ""
    return gemm_algorithm(g, tuple(tile), units, split_k)[1]


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


# f32 operands by the precision the program asked for (``Work.dtype`` as the dot rule records it)
F32_PRECISION = {"tf32": "default", "f32_high": "high", "f32": "highest"}
# bf16 passes of a TPU's MXU per f32 precision (jax.lax.Precision: DEFAULT 1 pass, HIGH bf16_3x, HIGHEST bf16_6x)
BF16_PASSES = {"default": 1, "high": 3, "highest": 6}


def f32_matmul_mode(target) -> str:
    """How the target's matrix unit runs f32 operands (``Target.f32_matmul_mode``: tf32 | bf16_passes | fp32)."""
    mode = getattr(target, "f32_matmul_mode", None)
    return mode if isinstance(mode, str) and mode else "tf32"


def matrix_peak(target, dtype: str) -> tuple[float, str]:
    """(matrix flops/s, how) for matrix work of ``dtype`` (``Work.dtype``: an operand type, "tf32" / "f32_high" /
    "f32" for f32 operands at DEFAULT / HIGH / HIGHEST precision, "bf16x3" for an explicit 3-pass algorithm).

    f32 on a ``tf32`` chip: TF32 at DEFAULT and HIGH, the fp32 rate (the FP32 SIMT rate where no fp32 matrix
    figure is listed) at HIGHEST; on a ``bf16_passes`` chip: the bf16 rate / (1, 3, 6) passes; on an ``fp32``
    chip: its fp32 rate. f64 runs at the fp64 vector rate."""
    prec = F32_PRECISION.get(dtype)
    if prec is not None:
        mode = f32_matmul_mode(target)
        if mode == "bf16_passes":
            passes = BF16_PASSES[prec]
            return target.matrix_rate("bf16") / passes, f"bf16 x{passes}"
        if mode == "tf32" and prec != "highest":
            return target.matrix_rate("tf32"), "tf32"
        return target.matrix_rate("f32"), "fp32"
    base, x, count = dtype.partition("x")
    if x and base in ("bf16", "tf32") and count.isdigit() and int(count) > 0:
        return target.matrix_rate(base) / int(count), f"{base} x{count}"
    if dtype == "f64":
        return target.vector_rate("f64"), "fp64"
    return target.matrix_rate(dtype), ""


def matrix_seconds(target, w: Work) -> float:
    return matrix_time(target, w)[0]


def matrix_time(target, w: Work) -> tuple[float, str]:
    """(seconds, algorithm) of one op's matrix work: the better of the matrix-unit path (``gemm_algorithm``) and,
    for a skinny GEMM (M or N below the tile), a GEMV-style kernel on the vector units (every FMA an issue slot:
    the vector peak, FMA = 2 flops, x the vector efficiency)."""
    if not w.matrix_flops:
        return 0.0, ""
    peak, how = matrix_peak(target, w.dtype)
    rate = peak * target.efficiency.matrix
    if w.gemm is None:
        return w.matrix_flops / rate, how
    tile, units = tuple(target.compute.matrix_tile), target.compute.matrix_units
    split = bool(getattr(target.compute, "split_k", True))
    t = w.matrix_flops / (rate * _utilisation(w.gemm, tile, units, split))
    algo = _algorithm(w.gemm, tile, units, split)
    skinny = _or(_lt(w.gemm.m, tile[0]), _lt(w.gemm.n, tile[1]))
    if _is_array(skinny) or skinny:
        vec = w.matrix_flops / (target.vector_rate(_vector_dtype(w.dtype)) * target.efficiency.vector)
        use = _and(skinny, _lt(vec, t))
        t = _where(use, vec, t)
        if _is_array(use):
            algo = ""
        elif use:
            algo = "gemv"
    fixed = getattr(target.compute, "gemm_overhead_s", 0.0)
    if _is_array(fixed) or fixed:
        t = t + fixed            # a library call's fixed cost (``compute.gemm_overhead_s``: a CPU's thread pool)
    return t, ", ".join(x for x in (algo, how) if x)


def _lt(a, b):
    return np.less(a, b) if _is_array(a) or _is_array(b) else a < b


def _or(a, b):
    return np.logical_or(a, b) if _is_array(a) or _is_array(b) else (a or b)


def _and(a, b):
    return np.logical_and(a, b) if _is_array(a) or _is_array(b) else (a and b)


def _vector_dtype(dtype: str) -> str:
    """The vector-unit type a GEMV of matrix ``dtype`` computes in (fp8 / int8 operands are widened)."""
    if dtype in ("bf16", "f16", "f64"):
        return dtype
    return "f32"


def vector_seconds(target, w: Work) -> float:
    return alu_seconds(target, w) + transcendental_seconds(target, w)


def alu_seconds(target, w: Work) -> float:
    # Vector peaks are quoted with an FMA as 2 flops; an elementwise op (counted as 1 flop) takes a whole
    # issue slot, so a stream of elementwise ops runs at half the quoted peak.
    if not w.vector_flops:
        return 0.0
    return w.vector_flops / (target.vector_rate(w.dtype or "f32") / 2 * target.efficiency.vector)


def transcendental_seconds(target, w: Work) -> float:
    if not w.transcendentals:
        return 0.0
    return w.transcendentals / (target.compute.transcendental_per_s * target.efficiency.vector)


def collective_seconds(target, w: Work) -> float:
    """Time of one collective on the topology its group rides (algorithm choice in ``explorer/collectives.py``)."""
    return collectives.collective_seconds(target, w)


def _top(target, name: str, default: Any = 0.0):
    """A top-level field of a target (``ArrayTarget.top`` for a vectorised sweep's view)."""
    top = getattr(target, "top", None)
    if callable(top):
        return top(name)
    return getattr(target, name, default)


def kernel_time(target, works: Iterable[Work], traffic: Mapping[str, float], *, launches: bool = True) -> KernelTime:
    """Price one kernel: ``works`` are its ops, ``traffic`` the bytes crossing its boundary per memory level.
    ``launches``: include the engine gap between kernels (``kernel_gap_s``) as its overhead."""
    matrix = alu = trans = comm = 0.0
    algos: list[str] = []
    for w in works:
        t, algo = matrix_time(target, w)
        matrix += t
        if algo and algo not in algos:
            algos.append(algo)
        alu += alu_seconds(target, w)
        trans += transcendental_seconds(target, w)
        comm += collective_seconds(target, w)
    memory, latency = 0.0, 0.0
    for level_name, nbytes in traffic.items():
        if nbytes <= 0:
            continue
        level = target.memory_level(level_name)
        memory += nbytes / (level.bandwidth_bytes_per_s * target.efficiency.memory)
        latency = _max(latency, level.latency_s)
    # The vector ALUs work beside the matrix units inside one kernel (an epilogue hides behind the MMAs), but the
    # transcendentals (exp, tanh, ... on the special-function units) do not: inside a kernel they sit between
    # dependent matrix steps (a softmax's exps wait for the scores and hold up the next matmul, as in
    # FlashAttention-2-class kernels; FA3's ping-pong scheduling hides part of them). Without matrix work this is
    # the vector time (ALU + transcendentals) as before.
    compute = _max(matrix, alu) + trans
    overhead = _top(target, "kernel_gap_s") if launches else 0.0
    return KernelTime(compute_s=compute, memory_s=memory + latency, comm_s=comm, overhead_s=overhead,
                      algorithm="; ".join(algos))
