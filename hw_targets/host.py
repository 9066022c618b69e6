"""``host()``: a Target for the CPU this process runs on, measured through JAX.

Why measured and not read from a datasheet: what the cost model must reproduce is what XLA's
CPU backend achieves (its GEMM library calls, its generated loops, its per-kernel runtime
cost), which no spec sheet gives. The microbenchmarks run once per machine identity (CPU
model, cores, jax/jaxlib versions, XLA flags) and are cached on disk with their raw samples;
``host(remeasure=True)`` measures again. The fitting is pure arithmetic
(``explorer.model.calibration.fit_measurements``, which registers itself as ``host()``'s fit), tested on
synthetic timings.

Timing method: the jitted function is called back to back and the batch is synchronised once,
so a sample is the steady-state time per call (what a training loop sees); median of samples
taken while no other process is busy; malloc held steady (``steady_allocator``).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .host_timing import Canary, Timing, measure_call, steady_allocator  # noqa: F401 (also the public names here)
from .loader import from_dict
from .schema import TargetError

FORMAT_VERSION = 2   # raw-sample layout: a new layout measures again
WAIT_BUDGET_S = 25.0   # total time the microbenchmarks may wait for other processes to go quiet
WATTS_PER_CORE = 4.0   # assumption: a server core's share of its socket's TDP (e.g. ~360 W / 96 cores)

# GEMM shapes (batch, m, n, k): squares, skinny and batched (attention-like) products, so the
# tile/utilisation fit sees the sizes where a CPU library stops using every core.
GEMM_SHAPES_FP32: tuple[tuple[int, int, int, int], ...] = (
    (1, 128, 128, 128), (1, 256, 256, 256), (1, 512, 512, 512), (1, 1024, 1024, 1024),
    (1, 8, 1024, 1024), (1, 32, 1024, 1024), (1, 1024, 32, 1024), (1, 1024, 1024, 32), (1, 4096, 64, 64),
    (1, 2048, 256, 256), (1, 256, 256, 2048), (1, 128, 512, 2048), (1, 512, 128, 64),
    (16, 128, 128, 64), (16, 128, 64, 128), (1, 2, 512, 512), (1, 16, 512, 512),
)
GEMM_SHAPES_OTHER: tuple[tuple[int, int, int, int], ...] = (
    (1, 256, 256, 256), (1, 512, 512, 512), (1, 1024, 1024, 1024), (1, 2, 512, 512))
# Convolutions (batch, input height = width, in channels, out channels, window, stride), NHWC with
# SAME padding as models use (XLA:CPU runs some VALID convolutions through a several-times slower
# path). They take a different library path than dots, and the one matrix rate must serve both.
CONV_SHAPES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (8, 64, 16, 32, 3, 1), (4, 32, 32, 32, 3, 1), (8, 32, 128, 128, 3, 1), (4, 32, 3, 16, 7, 2))


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
         ident: Mapping[str, Any] | None = None, progress: bool = True,
         fit: Callable[[Mapping[str, Any]], "HostFit"] | None = None):
    """The Target of this machine's CPU, from cached microbenchmarks (measured now if absent).

    **Arguments**
    - ``remeasure``: ignore the cache, measure again (about a minute) and overwrite it.
    - ``cache_dir``: where measurements are kept (default ``~/.cache/hw-whatif-explorer/host``).
    - ``measure``, ``ident``: injected by tests (a fake measurement, a fixed identity).
    - ``progress``: report each microbenchmark on stderr while measuring.
    - ``fit``: raw samples -> ``HostFit`` (default: the cost model's fit, registered by ``import explorer``).

    **Returns** a ``hw_targets.Target`` named ``host`` (kind ``cpu``).
    """
    fitter = fit or (_FITTERS[-1] if _FITTERS else None)
    if fitter is None:
        raise TargetError("hw_targets.host() fits its microbenchmarks with the explorer's cost model "
                          "(explorer.model.calibration.fit_measurements): `import explorer` first, or pass fit=")
    record = measurements(remeasure, cache_dir=cache_dir, measure=measure, ident=ident, progress=progress)
    return build_target(record["identity"], fitter(record["raw"]), measured_at=record["measured_at"])


_FITTERS: list[Callable[[Mapping[str, Any]], "HostFit"]] = []


def use_fitter(fit: Callable[[Mapping[str, Any]], "HostFit"]) -> None:
    """Make ``fit`` (raw samples -> ``HostFit``) the default of ``host()``.

    Why a hook: turning timings into a tile and rates means inverting the cost model's formulas, and the
    cost model lives above this data package (``explorer.model.calibration`` registers itself here)."""
    if fit not in _FITTERS:
        _FITTERS.append(fit)


def measurements(remeasure: bool = False, *, cache_dir: str | Path | None = None,
                 measure: Callable[[Callable[[str], None]], dict] | None = None,
                 ident: Mapping[str, Any] | None = None, progress: bool = True) -> dict:
    """The cached record ``{"identity", "measured_at", "raw"}`` for this machine, measured if absent
    (or if ``remeasure``). Same arguments as ``host``."""
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
    return record


def _read(path: Path, ident: Mapping[str, Any]) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("identity") == dict(ident) and "raw" in record else None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the microbenchmarks -----------------------------------------------------------------------
def measure_host(say: Callable[[str], None] = _stderr) -> dict:
    """Run the microbenchmarks through JAX on this CPU (allocator held steady); returns raw samples."""
    with steady_allocator():
        return _measure_host(say)


def _measure_host(say: Callable[[str], None]) -> dict:
    import jax
    import jax.numpy as jnp

    raw: dict[str, Any] = {"caches": _caches(), "memory_bytes": _mem_total(), "clock_hz": _clock_hz(),
                           "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                           "loaded_samples": 0}
    wait_until = time.perf_counter() + WAIT_BUDGET_S
    canary = Canary()

    def time_call(fn: Callable, args: tuple) -> float:
        # waiting for a quiet machine is shared out of one budget, so the whole run stays near a minute
        t = measure_call(fn, args, max_wait_s=max(0.0, wait_until - time.perf_counter()), canary=canary)
        raw["loaded_samples"] += 0 if t.quiet else 1
        return t.seconds

    steps = 8
    say(f"host: measuring {raw['cores']}-core CPU through JAX (1/{steps}: call and dispatch overhead)")
    raw["call_s"] = time_call(jax.jit(lambda x: x + 1.0), (jnp.ones((8,), jnp.float32),))

    # JAX's per-call cost grows with the arrays passed in and out (it is not device time)
    raw["dispatch"] = []
    for n_arrays in (1, 16, 64):
        xs = tuple(jnp.full((4,), float(i), jnp.float32) for i in range(n_arrays))
        raw["dispatch"].append([2 * n_arrays, time_call(jax.jit(lambda *a: [x + 1.0 for x in a]), xs)])

    say(f"host: 2/{steps}: per-kernel overhead (chains of tiny dots; chains of row-norm kernels, 16 KiB-1 MiB)")
    x8 = jnp.full((8, 8), 0.1, jnp.float32)
    raw["kernel_chain"] = [[k, time_call(jax.jit(_dot_chain(k)), (x8, x8))] for k in (1, 32, 128)]
    # kernels of the sizes programs run: XLA:CPU splits these loops over its thread pool, which costs more
    # per kernel than a tiny single-task kernel; [elements, steps, kernels, seconds] for two chain lengths each
    raw["kernel_sequence"] = []
    for n in (1 << 12, 1 << 14, 1 << 16, 1 << 18):
        x = jnp.linspace(0.0, 1.0, n, dtype=jnp.float32).reshape(-1, 256)
        for steps_ in (4, 16):
            fn = jax.jit(_row_norm_chain(steps_))
            kernels = _kernel_count(fn.lower(x).compile().as_text())
            raw["kernel_sequence"].append([n, steps_, kernels, time_call(fn, (x,))])

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

    say(f"host: 5/{steps}: vector throughput (independent multiply-adds per element, in cache)")
    n = 1 << 17
    raw["vector"] = {}
    for name, dt in (("fp32", jnp.float32), ("bf16", jnp.bfloat16), ("fp16", jnp.float16)):
        v = jnp.linspace(0.1, 0.9, n).astype(dt)
        raw["vector"][name] = [[float(n * (3 * k - 1)), time_call(jax.jit(_fma_terms(k)), (v,))] for k in (2, 8, 16)]

    say(f"host: 6/{steps}: transcendental throughput (independent tanh/exp/logistic/log per element)")
    v = jnp.linspace(0.1, 0.9, n).astype(jnp.float32)
    raw["transcendental"] = [[float(n * k), time_call(jax.jit(_transcendental_terms(k)), (v,))] for k in (1, 4, 8)]

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
    say(f"host: 8/{steps}: convolutions fp32 ({len(CONV_SHAPES)} shapes)")
    raw["conv"] = []
    for batch, size, cin, cout, window, stride in CONV_SHAPES:
        x = jnp.ones((batch, size, size, cin), jnp.float32)
        w = jnp.full((window, window, cin, cout), 0.01, jnp.float32)
        fn = jax.jit(lambda p, q, s=stride: jax.lax.conv_general_dilated(
            p, q, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        raw["conv"].append([batch, size, cin, cout, window, stride, time_call(fn, (x, w))])
    if raw["loaded_samples"]:
        say(f"host: {raw['loaded_samples']} microbenchmarks ran while other processes were busy (noisier figures)")
    return raw


def _dot_chain(k: int) -> Callable:
    def f(x, w):
        for _ in range(k):
            x = x @ w
        return x
    return f


def _row_norm_chain(k: int) -> Callable:
    """k steps of x <- x/2 - mean(x, rows)/4: per step a row reduction and an elementwise kernel,
    the shape of the norm / residual kernels of real programs (bytes: ``_row_norm_bytes``)."""
    import jax.numpy as jnp

    def f(x):
        for _ in range(k):
            x = x * 0.5 - jnp.mean(x, axis=-1, keepdims=True) * 0.25
        return x
    return f


def row_norm_bytes(n: int) -> float:
    """Bytes one step of ``_row_norm_chain`` moves over n f32 elements in rows of 256: the reduction reads
    x and writes the row means; the elementwise kernel reads x and the means and writes x."""
    rows = n // 256
    return 4.0 * (n + rows) + 4.0 * (n + rows + n)


def _kernel_count(hlo_text: str) -> int:
    """Kernels in the ENTRY computation of XLA's compiled HLO (everything but parameters, constants,
    tuples and bitcasts)."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    skip = ("parameter(", "constant(", "tuple(", "get-tuple-element(", "bitcast(")
    count = 0
    for line in entry.splitlines()[1:]:
        if " = " in line:
            op = line.split(" = ", 1)[1].split(" ", 1)[1] if " " in line.split(" = ", 1)[1] else ""
            count += not op.startswith(skip)
    return count


def _fma_terms(k: int) -> Callable:
    """k independent multiply-adds per element, summed: 3k - 1 flops (independent, so the loop is
    limited by throughput, as in real fusions, not by one long dependency chain)."""
    def f(v):
        acc = v * 0.5 + 0.25
        for i in range(1, k):
            acc = acc + (v * (0.5 + 0.01 * i) + 0.25)
        return acc
    return f


def _transcendental_terms(k: int) -> Callable:
    """k independent transcendentals per element, summed: k transcendentals and 2(k - 1) flops per
    element. The mix is the one ML programs spend their transcendental time in: exp (softmax),
    tanh (GELU), logistic (SiLU, sigmoid), log (cross-entropy)."""
    import jax
    import jax.numpy as jnp

    cycle = (jnp.tanh, jnp.exp, jax.nn.sigmoid, jnp.log)

    def f(v):
        acc = cycle[0](v)
        for i in range(1, k):
            acc = acc + cycle[i % len(cycle)](v * (1.0 - 0.01 * i))
        return acc
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
def dispatch_seconds(fit: "HostFit", arrays: int) -> float:
    """JAX's host-side cost of one call passing ``arrays`` arrays in and out (not device time: a
    program shorter than this is bound by dispatch, whatever the device does)."""
    return fit.dispatch_base_s + fit.dispatch_per_array_s * arrays



@dataclass(frozen=True)
class HostFit:
    """What the microbenchmarks say, in the cost model's terms."""

    call_s: float                          # one jitted call of a one-kernel program (dispatch + sync floor)
    dispatch_base_s: float                 # JAX's per-call dispatch cost: base + per array passed in or out
    dispatch_per_array_s: float
    launch_overhead_s: float               # each kernel of a realistic size (its fixed cost in a sequence)
    tiny_kernel_overhead_s: float          # each kernel too small for XLA:CPU to split over threads
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
    gemm_overhead_s: float = 0.0           # fixed seconds per GEMM call (fitted with the matrix tile and rate)


def build_target(ident: Mapping[str, Any], fit: HostFit, measured_at: str = ""):
    """The ``Target`` for a fitted host: rates are what XLA sustains here, so efficiencies are 1."""
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
        # XLA:CPU runs a call's kernels one after another on the calling thread: no host running ahead of a device,
        # so the fitted fixed cost per kernel is a gap on the one stream; the call's own dispatch cost is measured
        # apart (``dispatch_seconds``): the launch itself is free here.
        "kind": "cpu", "launch_mode": "graph", "launch_overhead_s": 0.0, "kernel_gap_s": fit.launch_overhead_s,
        "async_collectives": False, "tdp_w": WATTS_PER_CORE * fit.cores,
        "compute": {
            "f32_matmul": "fp32", "split_k": False,   # XLA:CPU's Eigen contractions never split K
            "gemm_overhead_s": fit.gemm_overhead_s,
            "matrix_flops_per_s": dict(fit.matrix_flops_per_s), "vector_flops_per_s": dict(fit.vector_flops_per_s),
            "transcendental_per_s": fit.transcendental_per_s, "matrix_units": fit.cores,
            "matrix_tile": list(fit.matrix_tile), "clock_hz": fit.clock_hz or 1e9},
        "memory": memory, "scale_up": none, "scale_out": dict(none),
        "efficiency": {"matrix": 1.0, "vector": 1.0, "memory": 1.0},
    }
    return from_dict(data, where="host()", source="hw_targets.host()")
