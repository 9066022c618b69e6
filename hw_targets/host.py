"""``host()``: a Target for the CPU this process runs on, measured through JAX.

Why measured and not read from a datasheet: what the cost model must reproduce is what XLA's
CPU backend achieves (its GEMM library calls, its generated loops, its per-kernel runtime
cost), which no spec sheet gives. The microbenchmarks run once per machine identity (CPU
model, cores, jax/jaxlib versions, XLA flags) and are cached on disk with their raw samples;
``host(remeasure=True)`` measures again. The fitting is pure arithmetic
(``explorer.calibration`` and ``fit_measurements`` here), tested on synthetic timings.

Timing method: the jitted function is called back to back and the batch is synchronised once,
so a sample is the steady-state time per call (what a training loop sees); median of samples.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

FORMAT_VERSION = 1
WAIT_BUDGET_S = 25.0   # total time the microbenchmarks may wait for other processes to go quiet
WATTS_PER_CORE = 4.0   # assumption: a server core's share of its socket's TDP (e.g. ~360 W / 96 cores)

# GEMM shapes (batch, m, n, k): squares, skinny and batched (attention-like) products, so the
# tile/utilisation fit sees the sizes where a CPU library stops using every core.
GEMM_SHAPES_FP32: tuple[tuple[int, int, int, int], ...] = (
    (1, 128, 128, 128), (1, 256, 256, 256), (1, 512, 512, 512), (1, 1024, 1024, 1024),
    (1, 8, 1024, 1024), (1, 32, 1024, 1024), (1, 1024, 32, 1024), (1, 1024, 1024, 32), (1, 4096, 64, 64),
    (1, 2048, 256, 256), (1, 256, 256, 2048), (1, 128, 512, 2048), (1, 512, 128, 64),
    (16, 128, 128, 64), (16, 128, 64, 128),
)
GEMM_SHAPES_OTHER: tuple[tuple[int, int, int, int], ...] = ((1, 256, 256, 256), (1, 512, 512, 512), (1, 1024, 1024, 1024))


# -- identity and cache ----------------------------------------------------------------------
def identity() -> dict[str, Any]:
    """What the measurements depend on: a change to any of these measures again."""
    import jax
    import jaxlib

    info = _cpuinfo()
    return {
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "cpu_family": info.get("cpu family", ""), "cpu_model_id": info.get("model", ""),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        "machine": platform.machine(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "format": FORMAT_VERSION,
    }


def identity_key(ident: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hw-whatif-explorer" / "host"


def host(remeasure: bool = False, *, cache_dir: str | Path | None = None,
         measure: Callable[[Callable[[str], None]], dict] | None = None,
         ident: Mapping[str, Any] | None = None, progress: bool = True):
    """The Target of this machine's CPU, from cached microbenchmarks (measured now if absent).

    **Arguments**
    - ``remeasure``: ignore the cache, measure again (about a minute) and overwrite it.
    - ``cache_dir``: where measurements are kept (default ``~/.cache/hw-whatif-explorer/host``).
    - ``measure``, ``ident``: injected by tests (a fake measurement, a fixed identity).
    - ``progress``: report each microbenchmark on stderr while measuring.

    **Returns** a ``hw_targets.Target`` named ``host`` (kind ``cpu``).
    """
    ident = dict(ident if ident is not None else identity())
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{identity_key(ident)}.json"
    record = None if remeasure else _read(path, ident)
    if record is None:
        say = _stderr if progress else (lambda _msg: None)
        started = time.perf_counter()
        raw = (measure or measure_host)(say)
        say(f"host: measured in {time.perf_counter() - started:.1f} s; cached in {path}")
        record = {"identity": ident, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "raw": raw}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        tmp.replace(path)
    return build_target(ident, fit_measurements(record["raw"]), measured_at=record.get("measured_at", ""))


def _read(path: Path, ident: Mapping[str, Any]) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("identity") == dict(ident) and "raw" in record else None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the microbenchmarks -----------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    seconds: float          # median steady-state seconds per call over the kept samples
    other_cores: float      # CPU (in cores) other processes used while the kept samples ran
    quiet: bool             # the kept samples all ran while the machine was otherwise quiet


def measure_call(fn: Callable, args: tuple, sample_s: float = 0.02, samples: int = 9, window: int = 3,
                 quiet_cores: float = 0.15, max_wait_s: float = 8.0) -> Timing:
    """Median steady-state seconds per call of ``fn`` (compiled and warmed up first).

    Why the load check: the machine may be shared, and a sample taken while another process
    holds a core measures that process too. Samples come in windows of ``window``; a window is
    kept only if other processes used at most ``quiet_cores`` cores during it. After
    ``max_wait_s`` without enough quiet windows, the least loaded windows are used and the
    result says so (``quiet=False``)."""
    import jax

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
        return Timing(statistics.median(kept), 0.0, True)
    loaded.sort(key=lambda w: w[0])
    use = loaded[:max(1, samples // window)]
    pooled = kept + [t for _, b in use for t in b]
    return Timing(statistics.median(pooled), statistics.fmean(o for o, _ in use), False)


def time_call(fn: Callable, args: tuple, **kw) -> float:
    return measure_call(fn, args, **kw).seconds


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


def measure_host(say: Callable[[str], None] = _stderr) -> dict:
    """Run the microbenchmarks through JAX on this CPU; returns raw samples (JSON-ready)."""
    import jax
    import jax.numpy as jnp

    raw: dict[str, Any] = {"caches": _caches(), "memory_bytes": _mem_total(), "clock_hz": _clock_hz(),
                           "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                           "loaded_samples": 0}
    wait_until = time.perf_counter() + WAIT_BUDGET_S

    def time_call(fn: Callable, args: tuple) -> float:
        # waiting for a quiet machine is shared out of one budget, so the whole run stays near a minute
        t = measure_call(fn, args, max_wait_s=max(0.0, wait_until - time.perf_counter()))
        raw["loaded_samples"] += 0 if t.quiet else 1
        return t.seconds

    steps = 8
    say(f"host: measuring {raw['cores']}-core CPU through JAX (1/{steps}: call overhead)")
    raw["call_s"] = time_call(jax.jit(lambda x: x + 1.0), (jnp.ones((8,), jnp.float32),))

    say(f"host: 2/{steps}: per-kernel overhead (chains of tiny dots)")
    x8 = jnp.full((8, 8), 0.1, jnp.float32)
    raw["kernel_chain"] = [[k, time_call(jax.jit(_dot_chain(k)), (x8, x8))] for k in (1, 32, 128)]

    say(f"host: 3/{steps}: streaming bandwidth (copy-scale, add, triad, row sums; 1-24 MiB buffers)")
    raw["stream"] = []
    for mib in (1, 2, 4, 8, 16, 24):
        n = mib * (1 << 20) // 4
        a, b = jnp.ones((n,), jnp.float32), jnp.full((n,), 2.0, jnp.float32)
        for kind, fn, args, nbytes in (
                ("scale", lambda u: u * 1.5, (a,), 8 * n), ("add", lambda u, v: u + v, (a, b), 12 * n),
                ("triad", lambda u, v: u + 0.5 * v, (a, b), 12 * n),
                ("rowsum", lambda u: jnp.sum(u.reshape(-1, 256), axis=1), (a,), 4 * n + 4 * n // 256)):
            raw["stream"].append([kind, nbytes, time_call(jax.jit(fn), args)])

    say(f"host: 4/{steps}: cache levels (row sums at half of each level's capacity)")
    raw["levels"] = {}
    for cache in raw["caches"]:
        n = max(1 << 12, int(cache["capacity_bytes"] // 2 // 4) // 256 * 256)
        a = jnp.ones((n,), jnp.float32)
        raw["levels"][cache["name"]] = [4 * n, time_call(jax.jit(lambda u: jnp.sum(u.reshape(-1, 256), axis=1)), (a,))]

    say(f"host: 5/{steps}: vector throughput (fused multiply-add chains, in cache)")
    n = 1 << 17
    raw["vector"] = {}
    for name, dt, lengths in (("fp32", jnp.float32, (8, 24, 40)), ("bf16", jnp.bfloat16, (4, 12, 20)),
                              ("fp16", jnp.float16, (4, 12, 20))):
        v = jnp.linspace(0.1, 0.9, n).astype(dt)
        raw["vector"][name] = [[2.0 * n * k, time_call(jax.jit(_fma_chain(k)), (v,))] for k in lengths]

    say(f"host: 6/{steps}: transcendental throughput (tanh/exp/logistic/log1p chains)")
    v = jnp.linspace(0.1, 0.9, n).astype(jnp.float32)
    raw["transcendental"] = [[float(n * k), time_call(jax.jit(_transcendental_chain(k)), (v,))] for k in (4, 12, 20)]

    raw["gemm"] = {}
    plans = [("fp32", jnp.float32, None, GEMM_SHAPES_FP32), ("bf16", jnp.bfloat16, None, GEMM_SHAPES_OTHER),
             ("fp16", jnp.float16, None, GEMM_SHAPES_OTHER[:2]), ("int8", jnp.int8, jnp.int32, GEMM_SHAPES_OTHER[:2]),
             ("fp8", jnp.float8_e4m3fn, jnp.float32, GEMM_SHAPES_OTHER[:2])]
    for step, (name, dt, out_dt, shapes) in enumerate(plans):
        say(f"host: {7 if step == 0 else 8}/{steps}: GEMM {name} ({len(shapes)} shapes)")
        rows = []
        for batch, m, nn, k in shapes:
            lhs = jnp.ones((batch, m, k) if batch > 1 else (m, k), dt)
            rhs = jnp.ones((batch, k, nn) if batch > 1 else (k, nn), dt)
            fn = jax.jit(lambda p, q: jnp.matmul(p, q, preferred_element_type=out_dt))
            rows.append([batch, m, nn, k, time_call(fn, (lhs, rhs))])
        raw["gemm"][name] = rows
    if raw["loaded_samples"]:
        say(f"host: {raw['loaded_samples']} microbenchmarks ran while other processes were busy (noisier figures)")
    return raw


def _dot_chain(k: int) -> Callable:
    def f(x, w):
        for _ in range(k):
            x = x @ w
        return x
    return f


def _fma_chain(k: int) -> Callable:
    def f(v):
        for _ in range(k):
            v = v * 0.75 + 0.25    # 2 flops per element; exact in bf16/fp16, so no multiply by 1 is folded away
        return v
    return f


def _transcendental_chain(k: int) -> Callable:
    import jax
    import jax.numpy as jnp

    cycle = (jnp.tanh, jnp.exp, jax.nn.sigmoid, jnp.log1p)   # stays in (0, 2.2): no inf/nan slow paths

    def f(v):
        for i in range(k):
            v = cycle[i % len(cycle)](v)
        return v
    return f


# -- what the OS says about the machine ----------------------------------------------------------
def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, _, val = line.partition(":")
                out.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    return out


def _caches() -> list[dict]:
    """Unified/data caches of level >= 2, capacity summed over the cores this process may use."""
    base = Path("/sys/devices/system/cpu")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    seen: dict[tuple[int, str], int] = {}
    for cpu in cpus:
        for idx in sorted((base / f"cpu{cpu}" / "cache").glob("index*")):
            try:
                level = int((idx / "level").read_text())
                kind = (idx / "type").read_text().strip()
                size = _parse_size((idx / "size").read_text().strip())
                shared = (idx / "shared_cpu_list").read_text().strip()
            except (OSError, ValueError):
                continue
            if level < 2 or kind == "Instruction":
                continue
            seen[(level, shared)] = size
    levels: dict[int, int] = {}
    for (level, _), size in seen.items():
        levels[level] = levels.get(level, 0) + size
    top = max(levels) if levels else 0
    return [{"name": "llc" if lvl == top and lvl > 2 else f"l{lvl}", "level": lvl, "capacity_bytes": size}
            for lvl, size in sorted(levels.items())]


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _clock_hz() -> float:
    """Maximum clock if the OS publishes it, else the current one from /proc/cpuinfo (0 if unknown)."""
    try:
        return float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        pass
    try:
        return float(_cpuinfo().get("cpu MHz", "0")) * 1e6
    except ValueError:
        return 0.0


# -- fitting (pure) and the Target -------------------------------------------------------------
@dataclass(frozen=True)
class HostFit:
    """What the microbenchmarks say, in the cost model's terms."""

    call_s: float                          # one jitted call of a one-kernel program (dispatch + sync floor)
    launch_overhead_s: float               # each further kernel
    stream_bytes_per_s: float              # XLA's streaming loops over buffers of 1-24 MiB
    level_bytes_per_s: Mapping[str, float]  # row sums at half of each cache level's capacity
    vector_flops_per_s: Mapping[str, float]
    transcendental_per_s: float
    matrix_flops_per_s: Mapping[str, float]
    matrix_tile: tuple[int, int, int]
    gemm_rms_log_error: Mapping[str, float]
    cores: int
    caches: tuple[Mapping[str, Any], ...]
    memory_bytes: float
    clock_hz: float


def fit_measurements(raw: Mapping[str, Any]) -> HostFit:
    """Raw microbenchmark samples -> rates, overheads and the GEMM tile (pure arithmetic)."""
    from explorer import calibration as cal
    from explorer.costs import Gemm

    cores = int(raw["cores"])
    call_s = float(raw["call_s"])
    per_kernel, _ = cal.fit_kernel_overhead([k for k, _ in raw["kernel_chain"]], [t for _, t in raw["kernel_chain"]])
    stream_bw, stream_fixed = cal.fit_rate([b for _, b, _ in raw["stream"]], [t for _, _, t in raw["stream"]])
    levels = {name: nbytes / max(t - stream_fixed, 1e-9) for name, (nbytes, t) in raw["levels"].items()}
    vector = {d: cal.fit_rate([f for f, _ in rows], [t for _, t in rows])[0] for d, rows in raw["vector"].items()}
    trans, _ = cal.fit_rate([n for n, _ in raw["transcendental"]], [t for _, t in raw["transcendental"]])

    def samples(rows):
        # the call's fixed cost (dispatch, one kernel's overhead) is measured apart: keep the GEMM's own time
        out = []
        for batch, m, n, k, t in rows:
            g = Gemm(batch=batch, m=m, n=n, k=k)
            out.append(cal.GemmSample(gemm=g, seconds=max(t - call_s, 0.05 * t), nbytes=0.0))
        return out

    gemm = raw["gemm"]
    base = cal.fit_gemm(_with_bytes(samples(gemm["fp32"]), 4, 4), units=cores, bytes_per_s=stream_bw)
    rates, errors = {"fp32": base.flops_per_s}, {"fp32": base.rms_log_error}
    sizes = {"bf16": (2, 2), "fp16": (2, 2), "int8": (1, 4), "fp8": (1, 4)}
    for d, rows in gemm.items():
        if d == "fp32" or not rows:
            continue
        fit = cal.fit_gemm(_with_bytes(samples(rows), *sizes[d]), units=cores, tiles=[base.tile], bytes_per_s=stream_bw)
        rates[d], errors[d] = fit.flops_per_s, fit.rms_log_error
    rates["tf32"] = rates["fp32"]   # a CPU has no TF32 units: f32 at default precision runs as f32
    return HostFit(
        call_s=call_s, launch_overhead_s=per_kernel, stream_bytes_per_s=stream_bw, level_bytes_per_s=levels,
        vector_flops_per_s=vector, transcendental_per_s=trans, matrix_flops_per_s=rates, matrix_tile=base.tile,
        gemm_rms_log_error=errors, cores=cores, caches=tuple(raw["caches"]), memory_bytes=float(raw["memory_bytes"]),
        clock_hz=float(raw.get("clock_hz") or 0.0))


def _with_bytes(samples, in_bytes: int, out_bytes: int):
    """Attach each GEMM's operand + result bytes (the memory side of the cost model's roofline)."""
    from dataclasses import replace

    out = []
    for s in samples:
        g = s.gemm
        nbytes = g.batch * ((g.m * g.k + g.k * g.n) * in_bytes + g.m * g.n * out_bytes)
        out.append(replace(s, nbytes=float(nbytes)))
    return out


def build_target(ident: Mapping[str, Any], fit: HostFit, measured_at: str = ""):
    """The ``Target`` for a fitted host: rates are what XLA sustains here, so efficiencies are 1."""
    from .loader import from_dict

    latency = {2: 4e-9, 3: 1.5e-8}   # assumption: typical L2 / LLC load-to-use latency
    memory = [{"name": c["name"], "kind": "cache", "capacity_bytes": float(c["capacity_bytes"]),
               "bandwidth_bytes_per_s": float(fit.level_bytes_per_s.get(c["name"], fit.stream_bytes_per_s)),
               "latency_s": latency.get(int(c["level"]), 1.5e-8)} for c in fit.caches]
    memory.append({"name": "dram", "kind": "main", "capacity_bytes": fit.memory_bytes,
                   "bandwidth_bytes_per_s": fit.stream_bytes_per_s,
                   "latency_s": 1e-7})   # assumption: ~100 ns DRAM access latency
    none = {"topology": "none", "domain_size": 1, "link_bandwidth_bytes_per_s": 0.0, "links_per_chip": 0,
            "chip_bandwidth_bytes_per_s": 0.0, "latency_s": 0.0, "efficiency": 1.0}
    data = {
        "name": "host",
        "description": (f"{ident.get('cpu_model', 'CPU')}, {fit.cores} cores, measured through jax {ident.get('jax', '?')}"
                        f"{' on ' + measured_at if measured_at else ''}; matrix_tile fitted to XLA:CPU GEMM timings"
                        f" (assumption); tdp_w assumed {WATTS_PER_CORE:g} W per core"),
        "kind": "cpu", "launch_overhead_s": fit.launch_overhead_s, "tdp_w": WATTS_PER_CORE * fit.cores,
        "compute": {
            "matrix_flops_per_s": dict(fit.matrix_flops_per_s), "vector_flops_per_s": dict(fit.vector_flops_per_s),
            "transcendental_per_s": fit.transcendental_per_s, "matrix_units": fit.cores,
            "matrix_tile": list(fit.matrix_tile), "clock_hz": fit.clock_hz or 1e9},
        "memory": memory, "scale_up": none, "scale_out": dict(none),
        "efficiency": {"matrix": 1.0, "vector": 1.0, "memory": 1.0},
    }
    return from_dict(data, where="host()", source="hw_targets.host()")
