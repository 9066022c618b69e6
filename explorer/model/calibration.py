"""Calibration arithmetic: microbenchmark timings -> the numbers a target is made of.

Pure functions on (work, seconds) samples, no JAX and no clocks, so they are unit-tested on
synthetic timings. ``fit_measurements`` turns the raw samples ``hw_targets.host()`` measures into a
``HostFit`` by inverting this cost model's formulas; it registers itself as ``host()``'s default fit
(the data package cannot import the cost model that lives above it).

Timings on a shared machine are noisy, so the line fits are Theil-Sen (median of pairwise slopes):
one slow sample cannot drag a rate the way it drags least squares.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from hw_targets.host import HostFit, row_norm_bytes, use_fitter

from ..costs import Gemm
from ..costs.rules.linalg import valid_taps
from .timing import matrix_utilisation


@dataclass(frozen=True)
class Line:
    """``y = intercept + slope * x``."""

    intercept: float
    slope: float

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * x


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Line:
    """Theil-Sen fit: the median of the pairwise slopes, then the median intercept."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("need at least two (x, y) samples of equal length")
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    if not slopes:
        raise ValueError("all x values are equal: no slope to fit")
    slope = statistics.median(slopes)
    intercept = statistics.median(y - slope * x for x, y in zip(xs, ys))
    return Line(intercept=intercept, slope=slope)


def fit_rate(amounts: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """``seconds = fixed + amount / rate`` -> (rate per second, fixed seconds).

    ``amounts`` are flops, bytes, transcendentals, kernels...: whatever the samples vary."""
    line = fit_line(amounts, seconds)
    if line.slope <= 0:
        raise ValueError("time does not grow with the amount of work: cannot fit a rate")
    return 1.0 / line.slope, max(0.0, line.intercept)


def fit_kernel_overhead(kernel_counts: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """Programs that differ only in their number of (tiny) kernels -> (seconds per kernel, seconds per call)."""
    line = fit_line([float(k) for k in kernel_counts], seconds)
    return max(0.0, line.slope), max(0.0, line.intercept)


@dataclass(frozen=True)
class GemmSample:
    """One measured matrix op: its GEMM shape, its seconds (the call's fixed cost already removed),
    the bytes it reads and writes, and its flops where they differ from the shape's 2*M*N*K (a
    padded convolution counts only the taps that land on real input, as the cost rule does)."""

    gemm: Gemm
    seconds: float
    nbytes: float = 0.0
    flops: float | None = None

    @property
    def work_flops(self) -> float:
        return self.gemm.flops if self.flops is None else self.flops


@dataclass(frozen=True)
class GemmFit:
    tile: tuple[int, int, int]
    flops_per_s: float           # the matrix rate at full utilisation (all units busy, no padding)
    rms_log_error: float         # root-mean-square of ln(predicted / measured) over the samples
    fixed_s: float = 0.0         # fixed seconds per GEMM call (thread-pool fork / join, operand packing)


# Fixed costs per library GEMM call searched by ``fit_measurements`` (0: none): XLA:CPU's Eigen contractions
# fork and join its thread pool and pack their operands on every call.
GEMM_FIXED_CANDIDATES = (0.0, 2.5e-6, 5e-6, 1e-5, 2e-5, 3e-5, 4e-5, 6e-5)


# Register-block to cache-block sizes a CPU GEMM library may work in (m x n x k). Small first, so
# when the data cannot tell tiles apart the fit keeps a micro-kernel-sized one.
CPU_TILE_CANDIDATES: tuple[tuple[int, int, int], ...] = tuple(
    (m, n, k) for m in (16, 32, 48, 64, 128, 256) for n in (8, 16, 32, 64, 128, 256) for k in (8, 64, 256))


def gemm_seconds(g: Gemm, flops_per_s: float, tile: tuple[int, int, int], units: int,
                 nbytes: float = 0.0, bytes_per_s: float = math.inf, overhead_s: float = 0.0,
                 flops: float | None = None, split_k: bool = False, fixed_s: float = 0.0) -> float:
    """The cost model's time for one GEMM kernel (``explorer.timing``: max(compute, memory) + overhead, the
    compute side with the call's fixed cost ``fixed_s``, as ``compute.gemm_overhead_s``).
    ``split_k``: whether the library splits K when tiles are few (a CPU's Eigen does not: the default here)."""
    compute = fixed_s + (g.flops if flops is None else flops) / (flops_per_s * matrix_utilisation(g, tile, units, split_k))
    return max(compute, nbytes / bytes_per_s) + overhead_s


def fit_gemm(samples: Sequence[GemmSample], units: int,
             tiles: Iterable[tuple[int, int, int]] = CPU_TILE_CANDIDATES,
             bytes_per_s: float = math.inf, overhead_s: float = 0.0,
             fixed: Iterable[float] = (0.0,)) -> GemmFit:
    """The tile, rate and fixed cost per call with which the cost model best reproduces measured GEMM times.

    Minimises the squared log error (a 2x miss on a small GEMM counts as much as on a big one).
    Ties go to the first candidate (the smaller fixed cost, the earlier tile), so the result is deterministic."""
    if not samples:
        raise ValueError("no GEMM samples")
    best: GemmFit | None = None
    for f in fixed:
        for tile in tiles:
            rate, err = _best_rate(samples, lambda s, r: gemm_seconds(s.gemm, r, tile, units, s.nbytes, bytes_per_s,
                                                                      overhead_s, s.work_flops, fixed_s=f))
            if best is None or err < best.rms_log_error - 1e-12:
                best = GemmFit(tile=tuple(tile), flops_per_s=rate, rms_log_error=err, fixed_s=f)
    assert best is not None
    return best


def _best_rate(samples: Sequence[GemmSample], model: Callable[[GemmSample, float], float]) -> tuple[float, float]:
    """1-D search over the rate: the implied rates bracket it; golden-section on ln(rate)."""
    implied = [s.work_flops / s.seconds for s in samples if s.seconds > 0]
    lo, hi = math.log(min(implied)), math.log(max(implied) * 64.0)

    def err(log_rate: float) -> float:
        r = math.exp(log_rate)
        return math.sqrt(statistics.fmean(math.log(model(s, r) / s.seconds) ** 2 for s in samples))

    grid = [lo + (hi - lo) * i / 64 for i in range(65)]
    i = min(range(len(grid)), key=lambda j: (err(grid[j]), j))
    a, b = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if err(c) <= err(d):
            b = d
        else:
            a = c
    x = (a + b) / 2
    return math.exp(x), err(x)


# -- accuracy -------------------------------------------------------------------------------
def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error, as a fraction of the measured value."""
    return abs(predicted - measured) / measured


def mdape(pairs: Iterable[tuple[float, float]]) -> float:
    """Median absolute percentage error over (predicted, measured) pairs."""
    errors = [ape(p, m) for p, m in pairs]
    if not errors:
        raise ValueError("no cases")
    return statistics.median(errors)


# -- the host fit ------------------------------------------------------------------------------
def fit_measurements(raw: Mapping[str, Any]) -> HostFit:
    """Raw microbenchmark samples -> rates, overheads and the GEMM tile (pure arithmetic)."""
    cores = int(raw["cores"])
    call_s = float(raw["call_s"])
    dispatch = fit_line([float(n) for n, _ in raw["dispatch"]], [t for _, t in raw["dispatch"]])
    tiny_kernel, _ = fit_kernel_overhead([k for k, _ in raw["kernel_chain"]], [t for _, t in raw["kernel_chain"]])
    per_kernel = fit_kernel_sequence(raw.get("kernel_sequence", []), tiny_kernel)
    stream_bw, stream_fixed = fit_rate([b for _, b, _ in raw["stream"]], [t for _, _, t in raw["stream"]])
    levels = {name: nbytes / max(t - stream_fixed, 1e-9) for name, (nbytes, t) in raw["levels"].items()}
    vector = {d: fit_rate([f for f, _ in rows], [t for _, t in rows])[0] for d, rows in raw["vector"].items()}
    per_elem, _ = fit_rate([n for n, _ in raw["transcendental"]], [t for _, t in raw["transcendental"]])
    # each transcendental term also costs 2 flops (a multiply and an add) at the fp32 vector rate
    trans = 1.0 / max(1.0 / per_elem - 2.0 / vector["fp32"], 0.05 / per_elem)

    # the call's fixed cost (dispatch, one tiny kernel) is measured apart: each sample keeps the matrix op's own time
    gemm = raw["gemm"]
    convs = [conv_sample(row, call_s) for row in raw.get("conv", [])]
    base = fit_gemm(gemm_samples(gemm["fp32"], call_s, 4, 4) + convs, units=cores, bytes_per_s=stream_bw,
                    fixed=GEMM_FIXED_CANDIDATES)
    rates, errors = {"fp32": base.flops_per_s}, {"fp32": base.rms_log_error}
    item_bytes = {"bf16": (2, 2), "fp16": (2, 2), "int8": (1, 4), "fp8": (1, 4)}   # (operands, result)
    for d, rows in gemm.items():
        if d == "fp32" or not rows:
            continue
        fit = fit_gemm(gemm_samples(rows, call_s, *item_bytes[d]), units=cores, tiles=[base.tile],
                       bytes_per_s=stream_bw, fixed=[base.fixed_s])
        rates[d], errors[d] = fit.flops_per_s, fit.rms_log_error
    rates["tf32"] = rates["fp32"]   # a CPU has no TF32 units: f32 at default precision runs as f32
    return HostFit(
        call_s=call_s, dispatch_base_s=max(0.0, dispatch.intercept), dispatch_per_array_s=max(0.0, dispatch.slope),
        launch_overhead_s=per_kernel, tiny_kernel_overhead_s=tiny_kernel, stream_bytes_per_s=stream_bw, level_bytes_per_s=levels,
        vector_flops_per_s=vector, transcendental_per_s=trans, matrix_flops_per_s=rates, matrix_tile=base.tile,
        gemm_rms_log_error=errors, cores=cores, caches=tuple(raw["caches"]), memory_bytes=float(raw["memory_bytes"]),
        clock_hz=float(raw.get("clock_hz") or 0.0), gemm_overhead_s=base.fixed_s)


def conv_sample(row, call_s: float):
    """A SAME-padded NHWC convolution as the cost rule sees it: implicit-im2col GEMM shape, flops of
    the taps that land on real input, f32 input + filter + output bytes."""
    batch, size, cin, cout, window, stride, t = row
    out = -(-size // stride)
    pad_lo = max((out - 1) * stride + window - size, 0) // 2
    taps = valid_taps(size, out, window, stride, pad_lo, 1, 1)
    g = Gemm(batch=1, m=batch * out * out, n=cout, k=cin * window * window)
    nbytes = 4.0 * (batch * size * size * cin + window * window * cin * cout + batch * out * out * cout)
    return GemmSample(gemm=g, seconds=max(t - call_s, 0.05 * t), nbytes=nbytes,
                      flops=2.0 * batch * cout * cin * taps * taps)


def fit_kernel_sequence(rows, floor_s: float) -> float:
    """Fixed seconds per kernel in chains of dependent, realistically sized kernels.

    Per size, the per-kernel time is the difference between a long and a short chain over their kernel
    counts (the call's own cost cancels); a Theil-Sen line through (bytes per kernel, seconds per kernel)
    over the sizes gives the fixed part as its intercept, never below ``floor_s`` (a tiny kernel's cost)."""
    by_n: dict[int, list[tuple[int, float]]] = {}
    for n, _steps, kernels, seconds in rows:
        by_n.setdefault(int(n), []).append((int(kernels), float(seconds)))
    xs, ys = [], []
    for n, pts in sorted(by_n.items()):
        (k0, t0), (k1, t1) = min(pts), max(pts)
        if k1 > k0:
            xs.append(row_norm_bytes(n) / 2.0)          # two kernels per step
            ys.append((t1 - t0) / (k1 - k0))
    if len(xs) < 2:
        return floor_s
    return max(floor_s, fit_line(xs, ys).intercept)


def gemm_samples(rows, call_s: float, in_bytes: int, out_bytes: int) -> list:
    """(batch, m, n, k, seconds) rows -> GemmSamples with the call's fixed cost removed and each GEMM's
    operand + result bytes attached (the memory side of the cost model's roofline)."""
    out = []
    for batch, m, n, k, t in rows:
        nbytes = batch * ((m * k + k * n) * in_bytes + m * n * out_bytes)
        out.append(GemmSample(gemm=Gemm(batch=batch, m=m, n=n, k=k), seconds=max(t - call_s, 0.05 * t),
                              nbytes=float(nbytes)))
    return out


use_fitter(fit_measurements)
