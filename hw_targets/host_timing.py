"""Timing on a shared, noisy machine: steady-state medians, load checks, a canary, a steady allocator.

Kept apart from the microbenchmarks (``host.py``) because the accuracy benchmark times whole
programs with the same rules: a number measured here is the computation's time, not another
process's, not the OS mapping fresh pages, and says when it could not be sure.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Timing:
    seconds: float          # median steady-state seconds per call over the kept samples
    other_cores: float      # CPU (in cores) other processes used while the kept samples ran
    quiet: bool             # no other process was busy and the canary ran normally while the kept samples ran


def measure_call(fn: Callable, args: tuple, sample_s: float = 0.02, samples: int = 9, window: int = 3,
                 quiet_cores: float = 0.15, max_wait_s: float = 8.0, canary: "Canary | None" = None) -> Timing:
    """Median steady-state seconds per call of ``fn`` (compiled and warmed up first).

    Why the load check: the machine may be shared, and a sample taken while another process
    holds a core measures that process too. Samples come in windows of ``window``; a window is
    kept only if other processes used at most ``quiet_cores`` cores during it. After
    ``max_wait_s`` without enough quiet windows, the least loaded windows are used and the
    result says so (``quiet=False``). A ``canary`` (load this process cannot see: other VMs on
    the host, throttling) is checked first, waiting up to ``max_wait_s`` for it to run normally."""
    import jax

    steady = canary.wait_until_normal(max_wait_s) if canary is not None else True
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(sample_s / once))
    kept: list[float] = []
    loaded: list[tuple[float, list[float]]] = []
    deadline = time.perf_counter() + max_wait_s + 2 * samples * max(sample_s, once)
    while len(kept) < samples:
        meter = _LoadMeter()
        batch = []
        for _ in range(window):
            t0 = time.perf_counter()
            out = None
            for _ in range(inner):
                out = fn(*args)
            jax.block_until_ready(out)
            batch.append((time.perf_counter() - t0) / inner)
        other = meter.other_cores()
        if other <= quiet_cores:
            kept.extend(batch)
        else:
            loaded.append((other, batch))
        if time.perf_counter() > deadline:
            break
    if len(kept) >= window:
        return Timing(statistics.median(kept), 0.0, steady)
    loaded.sort(key=lambda w: w[0])
    use = loaded[:max(1, samples // window)]
    pooled = kept + [t for _, b in use for t in b]
    return Timing(statistics.median(pooled), statistics.fmean(o for o, _ in use), False)


class Canary:
    """A fixed reference computation (a 256^3 GEMM and a tanh over 256 Ki floats), timed before a
    measurement: slower than ``tolerance`` x its best time in this process means the machine is
    slowed by something /proc/stat does not show (another VM on the host, throttling), so wait."""

    def __init__(self, tolerance: float = 1.3) -> None:
        import jax
        import jax.numpy as jnp

        self.tolerance = tolerance
        self._fn = jax.jit(lambda a, v: (a @ a, jnp.tanh(v)))
        self._args = (jnp.full((256, 256), 0.01, jnp.float32), jnp.linspace(0.0, 1.0, 1 << 18, dtype=jnp.float32))
        jax.block_until_ready(self._fn(*self._args))
        self.best = min(self._time() for _ in range(5))

    def _time(self) -> float:
        import jax

        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            jax.block_until_ready(self._fn(*self._args))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def wait_until_normal(self, max_wait_s: float) -> bool:
        """True once the canary runs within tolerance of its best; False if it never did within ``max_wait_s``."""
        deadline = time.perf_counter() + max_wait_s
        while True:
            t = self._time()
            self.best = min(self.best, t)
            if t <= self.tolerance * self.best:
                return True
            if time.perf_counter() > deadline:
                return False
            time.sleep(0.3)


class _LoadMeter:
    """CPU time other processes used since construction, from /proc/stat minus this process (Linux)."""

    def __init__(self) -> None:
        self.t0, self.all0, self.own0 = time.perf_counter(), *_jiffies()

    def other_cores(self) -> float:
        all1, own1 = _jiffies()
        elapsed = max(time.perf_counter() - self.t0, 1e-3)
        if all1 < 0:
            return 0.0
        return max(0.0, ((all1 - self.all0) - (own1 - self.own0)) / _HZ / elapsed)


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _jiffies() -> tuple[int, int]:
    """(busy jiffies of all CPUs, jiffies of this process); (-1, -1) where /proc is missing."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(vals) - vals[3] - vals[4], int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return -1, -1


@contextlib.contextmanager
def steady_allocator():
    """While inside, glibc's malloc keeps freed memory instead of returning it to the OS (no mmap, no trim).

    Why: XLA:CPU allocates each call's buffers with malloc; by default glibc maps large blocks afresh
    (its threshold moves with the process's history) and every page of a fresh block faults on first
    touch, ~1 us per 4 KiB page in a VM. The same program then takes 1x or 3x depending on what ran
    before it. Timings taken inside are of the computation, reproducibly (buffers of 64 MiB and more
    are still mapped afresh by XLA:CPU). Restores glibc's default limits on exit; elsewhere a no-op."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, 65536)            # glibc's defaults
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # mallopt parameter numbers (malloc.h)


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
