"""Calibration arithmetic: microbenchmark timings -> the numbers a target is made of.

Pure functions on (work, seconds) samples, no JAX and no clocks, so they are unit-tested on
synthetic timings. Timings on a shared machine are noisy, so the line fits are Theil-Sen
(median of pairwise slopes): one slow sample cannot drag a rate the way it drags least squares.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .costs import Gemm
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


# Register-block to cache-block sizes a CPU GEMM library may work in (m x n x k). Small first, so
# when the data cannot tell tiles apart the fit keeps a micro-kernel-sized one.
CPU_TILE_CANDIDATES: tuple[tuple[int, int, int], ...] = tuple(
    (m, n, k) for m in (16, 32, 48, 64, 128, 256) for n in (8, 16, 32, 64, 128, 256) for k in (8, 64, 256))


def gemm_seconds(g: Gemm, flops_per_s: float, tile: tuple[int, int, int], units: int,
                 nbytes: float = 0.0, bytes_per_s: float = math.inf, overhead_s: float = 0.0,
                 flops: float | None = None) -> float:
    """The cost model's time for one GEMM kernel (``explorer.timing``: max(compute, memory) + overhead)."""
    compute = (g.flops if flops is None else flops) / (flops_per_s * matrix_utilisation(g, tile, units))
    return max(compute, nbytes / bytes_per_s) + overhead_s


def fit_gemm(samples: Sequence[GemmSample], units: int,
             tiles: Iterable[tuple[int, int, int]] = CPU_TILE_CANDIDATES,
             bytes_per_s: float = math.inf, overhead_s: float = 0.0) -> GemmFit:
    """The tile and rate with which the cost model best reproduces measured GEMM times.

    Minimises the squared log error (a 2x miss on a small GEMM counts as much as on a big one).
    Ties go to the first candidate, so the result is deterministic."""
    if not samples:
        raise ValueError("no GEMM samples")
    best: GemmFit | None = None
    for tile in tiles:
        rate, err = _best_rate(samples, lambda s, r: gemm_seconds(s.gemm, r, tile, units, s.nbytes, bytes_per_s,
                                                                  overhead_s, s.work_flops))
        if best is None or err < best.rms_log_error - 1e-12:
            best = GemmFit(tile=tuple(tile), flops_per_s=rate, rms_log_error=err)
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
