"""How close are the estimates to real run times? Predicted vs measured on this machine's CPU.

For each program of a suite (the examples at small sizes, plus GEMM chains, conv nets, attention,
layer-norm-heavy graphs, scans, elementwise and reduction graphs), estimate it on
``hw_targets.host()`` and measure the jitted program on the CPU in the same run (warm-up, median
of repeats taken while the machine is otherwise quiet, median over rounds), then print per-case
predicted / measured and the median absolute percentage error (MdAPE). No per-program factor
anywhere: every case is priced by the same target and pipeline.

    python benchmarks/accuracy_host.py                 # re-measure the host target first (~1 min)
    python benchmarks/accuracy_host.py --cached        # reuse the cached host measurements
    python benchmarks/accuracy_host.py --only attention --only rnn_scan

Pipeline: ``fuse{strategy=xla,matmul_epilogue=false}``. XLA's CPU backend runs dots and
convolutions as library calls and fuses no elementwise consumer (epilogue) into them (its compiled
HLO shows bias + activation in a separate loop fusion), so pricing GPU-style epilogue fusion would
under-count the kernels and bytes XLA:CPU really runs; the default ``fuse{strategy=xla}`` is
reported alongside.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import explorer  # noqa: E402
from explorer.model.calibration import ape, fit_measurements, mdape  # noqa: E402
from explorer.model_files import load_module  # noqa: E402

HOST_PIPELINE = "fuse{strategy=xla,matmul_epilogue=false}"
DEFAULT_PIPELINE = "fuse{strategy=xla}"
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[], tuple[Callable, tuple]]   # -> (fn, concrete args)


# -- the suite ------------------------------------------------------------------------------------
def _example(file: str, entry: str = "", **overrides) -> Callable[[], tuple[Callable, tuple]]:
    def build():
        mod = load_module(ROOT / "examples" / file)
        if entry:
            fn, _ = mod.PROGRAMS[entry](**overrides)
            args = mod.CONCRETE_ARGS[entry](**overrides)
        else:
            fn, _ = mod.program(**overrides)
            args = mod.concrete_args(**overrides)
        return fn, tuple(args)
    return build


def _rand(key: int, shape, dtype=jnp.float32, scale: float = 1.0):
    return (jax.random.normal(jax.random.key(key), shape, jnp.float32) * scale).astype(dtype)


def mlp_forward(dtype) -> Callable[[], tuple[Callable, tuple]]:
    def build():
        ws = tuple(_rand(i, (1024, 1024), dtype, 0.03) for i in range(4))
        x = _rand(9, (512, 1024), dtype)

        def fn(x, ws):
            for w in ws:
                x = jax.nn.gelu(x @ w)
            return x
        return fn, (x, ws)
    return build


def convnet() -> tuple[Callable, tuple]:
    dn = ("NHWC", "HWIO", "NHWC")
    ws = (_rand(1, (3, 3, 16, 32), scale=0.1), _rand(2, (3, 3, 32, 32), scale=0.1), _rand(3, (3, 3, 32, 64), scale=0.1))
    x = _rand(0, (8, 64, 64, 16))

    def fn(x, ws):
        for i, w in enumerate(ws):
            x = jax.lax.conv_general_dilated(x, w, (2, 2) if i == 2 else (1, 1), "SAME", dimension_numbers=dn)
            x = jax.nn.relu(x)
        return jnp.mean(x, axis=(1, 2))
    return fn, (x, ws)


def attention(b: int, h: int, s: int, d: int) -> Callable[[], tuple[Callable, tuple]]:
    def build():
        q, k, v = (_rand(i, (b, h, s, d)) for i in range(3))

        def fn(q, k, v):
            logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(d)
            mask = jnp.tril(jnp.ones((s, s), bool))
            logits = jnp.where(mask, logits, -1e9)
            return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)
        return fn, (q, k, v)
    return build


def layernorm_stack() -> tuple[Callable, tuple]:
    x = _rand(0, (2048, 512))
    gammas = _rand(1, (8, 512), scale=0.1) + 1.0

    def fn(x, gammas):
        for i in range(8):
            mu = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
            x = x + 0.5 * (x - mu) * jax.lax.rsqrt(var + 1e-5) * gammas[i]
        return x
    return fn, (x, gammas)


def rnn_scan() -> tuple[Callable, tuple]:
    xs = _rand(0, (128, 16, 256))
    wx, wh = _rand(1, (256, 256), scale=0.05), _rand(2, (256, 256), scale=0.05)

    def fn(xs, wx, wh):
        def cell(h, x):
            h = jnp.tanh(x @ wx + h @ wh)
            return h, h
        _, hs = jax.lax.scan(cell, jnp.zeros((16, 256)), xs)
        return hs
    return fn, (xs, wx, wh)


def gelu_elementwise() -> tuple[Callable, tuple]:
    return (lambda x: jax.nn.gelu(x, approximate=True) * 1.5 + x), (_rand(0, (1 << 21,)),)


def softmax_rows() -> tuple[Callable, tuple]:
    return (lambda x: jax.nn.softmax(x, axis=-1)), (_rand(0, (2048, 1024)),)


def big_elementwise() -> tuple[Callable, tuple]:
    # 64 MiB buffers: XLA:CPU maps a block this large afresh every call, so every output page faults on first
    # touch (~1 us per 4 KiB page here), whatever the allocator settings: a cost the device model does not describe
    return (lambda a, b: a * b + 1.0), (_rand(0, (1 << 24,)), _rand(1, (1 << 24,)))


def cases() -> list[Case]:
    return [
        Case("mlp_train_tiny", "examples/mlp.py SMALL_CONFIG (overhead-bound)", _example(
            "mlp.py", batch=8, d_in=16, hidden=32, n_layers=2, n_classes=4)),
        Case("mlp_train", "examples/mlp.py batch 128, 512 -> 3x512 -> 10, adam", _example(
            "mlp.py", batch=128, d_in=512, hidden=512, n_layers=3, n_classes=10)),
        Case("gpt2_train", "examples/gpt2_train.py 2 layers, d 128, seq 64, batch 4, vocab 512", _example(
            "gpt2_train.py", vocab_size=512, n_ctx=64, d_model=128, n_heads=4, n_layers=2, d_ff=512, batch=4, seq=64)),
        Case("llama_prefill", "examples/llama_infer.py:prefill 2 layers, d 256, prompt 128, batch 2", _example(
            "llama_infer.py", "prefill", vocab_size=1024, d_model=256, n_layers=2, n_heads=8, n_kv_heads=2,
            ffn_dim=512, batch=2, prompt_len=128, max_len=256)),
        Case("llama_decode", "examples/llama_infer.py:decode 2 layers, d 256, cache 256, batch 2", _example(
            "llama_infer.py", "decode", vocab_size=1024, d_model=256, n_layers=2, n_heads=8, n_kv_heads=2,
            ffn_dim=512, batch=2, prompt_len=128, max_len=256)),
        Case("resnet_train", "examples/cnn.py batch 4, 32x32, stages (1, 1), width 16", _example(
            "cnn.py", batch=4, image_size=32, num_classes=10, stage_sizes=(1, 1), width=16)),
        Case("mlp_fwd_f32", "4 x (512x1024 @ 1024x1024 + gelu), f32", mlp_forward(jnp.float32)),
        Case("mlp_fwd_bf16", "4 x (512x1024 @ 1024x1024 + gelu), bf16", mlp_forward(jnp.bfloat16)),
        Case("convnet", "3 conv 3x3 (16-32-32-64 ch) + relu on 8x64x64, mean pool", convnet),
        Case("attention", "causal softmax attention, B4 H8 S256 D64, f32", attention(4, 8, 256, 64)),
        Case("attention_long", "causal softmax attention, B1 H4 S1024 D64, f32", attention(1, 4, 1024, 64)),
        Case("layernorm_stack", "8 x (layer norm + residual) on 2048x512", layernorm_stack),
        Case("rnn_scan", "lax.scan tanh RNN, 128 steps, batch 16, hidden 256", rnn_scan),
        Case("gelu_elementwise", "tanh-GELU + axpy on 2M elements", gelu_elementwise),
        Case("softmax_rows", "softmax over rows of 2048x1024", softmax_rows),
        Case("big_elementwise", "a*b+1 on 16M elements (64 MiB buffers)", big_elementwise),
    ]


# -- measuring and reporting ------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    name: str
    what: str
    predicted_s: float            # the estimate (device time)
    predicted_default_s: float
    dispatch_s: float             # JAX's host dispatch cost for this call, from the host microbenchmarks
    measured_s: float
    quiet: bool
    bound: str
    kernels: int
    xla_kernels: int
    spread: float = 0.0           # (slowest - fastest round) / median: the measurement's own noise


    @property
    def predicted_wall_s(self) -> float:
        """Back-to-back calls pipeline host dispatch with device work: the slower of the two sets the pace."""
        return max(self.predicted_s, self.dispatch_s)


@dataclass(frozen=True)
class Prepared:
    """A case lowered, estimated and compiled, ready to be timed in any number of rounds."""

    case: Case
    row: Row                      # measured_s / quiet still unset (filled from the rounds)
    jitted: Callable
    args: tuple


def prepare(case: Case, target, fit) -> Prepared:
    from fusion_vs_xla import xla_kernels

    from hw_targets.host import dispatch_seconds

    fn, args = case.build()
    arrays = len(jax.tree_util.tree_leaves(args)) + len(jax.tree_util.tree_leaves(jax.eval_shape(fn, *args)))
    prog = explorer.lower(fn, *args)
    est = explorer.estimate(prog, target, pipeline=HOST_PIPELINE)
    est_default = explorer.estimate(prog, target, pipeline=DEFAULT_PIPELINE)
    jitted = jax.jit(fn)
    xla = xla_kernels(jitted.lower(*args).compile().as_text())
    row = Row(case.name, case.what, est.seconds, est_default.seconds, dispatch_seconds(fit, arrays), float("nan"),
              True, est.bound, est.num_kernels, xla["fusion"] + xla["other"])
    return Prepared(case, row, jitted, args)


def measure_rounds(prepared: list[Prepared], rounds: int) -> list[Row]:
    """Each round times every case once (median of quiet samples, after the canary runs normally); a case's
    time is the median over rounds, so a burst of load from other processes during one round does not decide it."""
    from dataclasses import replace

    from hw_targets.host import Canary, measure_call

    canary = Canary()
    times: dict[str, list[float]] = {p.case.name: [] for p in prepared}
    quiet: dict[str, bool] = {p.case.name: True for p in prepared}
    for i in range(rounds):
        for p in prepared:
            print(f"round {i + 1}/{rounds}: {p.case.name}", file=sys.stderr, flush=True)
            t = measure_call(p.jitted, p.args, sample_s=0.05, samples=9, window=3, max_wait_s=20.0, canary=canary)
            times[p.case.name].append(t.seconds)
            quiet[p.case.name] &= t.quiet
    out = []
    for p in prepared:
        ts = times[p.case.name]
        mid = statistics.median(ts)
        out.append(replace(p.row, measured_s=mid, quiet=quiet[p.case.name], spread=(max(ts) - min(ts)) / mid))
    return out


def _fmt(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def report(rows: list[Row], target, fit, header: str) -> str:
    lines = [header, "", f"target: {target.description}",
             f"  matrix fp32 {target.matrix_rate('f32') / 1e9:.0f} GFLOP/s, bf16 {target.matrix_rate('bf16') / 1e9:.0f},"
             f" tile {tuple(target.compute.matrix_tile)} x {target.compute.matrix_units} units;"
             f" vector fp32 {target.vector_rate('f32') / 1e9:.0f} GFLOP/s, bf16 {target.vector_rate('bf16') / 1e9:.1f};"
             f" transcendentals {target.compute.transcendental_per_s / 1e9:.2f} G/s;"
             f" streaming {target.main_memory.bandwidth_bytes_per_s / 1e9:.0f} GB/s;"
             f" per-kernel overhead {target.launch_overhead_s * 1e6:.2f} us"
             f" ({fit.tiny_kernel_overhead_s * 1e6:.2f} us for kernels too small to split over threads)",
             f"  host dispatch (JAX, per call): {fit.dispatch_base_s * 1e6:.1f} us + "
             f"{fit.dispatch_per_array_s * 1e6:.2f} us per array in or out",
             f"pipeline: {HOST_PIPELINE}",
             "columns: estimate = explorer.estimate(...).seconds (device time); dispatch = JAX's host cost of the call;",
             "  predicted = max(estimate, dispatch) (back-to-back calls overlap the two); APE of predicted vs measured;",
             f"  est APE = the estimate alone; default = predicted with the default pipeline {DEFAULT_PIPELINE};",
             "  kernels = ours, XLA = kernels in XLA's compiled executable; spread = (max - min) / median over rounds", ""]
    head = (f"{'case':17s} {'estimate':>9s} {'dispatch':>9s} {'predicted':>9s} {'measured':>9s} {'pred/meas':>9s} "
            f"{'APE':>6s} {'est APE':>7s} {'default':>7s}  {'bound':8s} {'kernels':>7s} {'XLA':>4s} {'quiet':>5s} {'spread':>6s}  what")
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:17s} {_fmt(r.predicted_s):>9s} {_fmt(r.dispatch_s):>9s} {_fmt(r.predicted_wall_s):>9s} "
            f"{_fmt(r.measured_s):>9s} {r.predicted_wall_s / r.measured_s:9.2f} {ape(r.predicted_wall_s, r.measured_s):6.1%} "
            f"{ape(r.predicted_s, r.measured_s):7.1%} {ape(max(r.predicted_default_s, r.dispatch_s), r.measured_s):7.1%}  "
            f"{r.bound:8s} {r.kernels:7d} {r.xla_kernels:4d} {'yes' if r.quiet else 'NO':>5s} {r.spread:6.1%}  {r.what}")
    span = max(r.measured_s for r in rows) / min(r.measured_s for r in rows)
    lines += ["",
              f"MdAPE over {len(rows)} programs: {mdape((r.predicted_wall_s, r.measured_s) for r in rows):.1%} "
              f"(predicted = max(estimate, dispatch), {HOST_PIPELINE})",
              f"  estimate alone: {mdape((r.predicted_s, r.measured_s) for r in rows):.1%}; "
              f"default pipeline {DEFAULT_PIPELINE}: "
              f"{mdape((max(r.predicted_default_s, r.dispatch_s), r.measured_s) for r in rows):.1%}",
              f"  geometric-mean |pred/meas| factor: "
              f"{np.exp(statistics.fmean(abs(np.log(r.predicted_wall_s / r.measured_s)) for r in rows)):.2f}x",
              f"measured run times span {span:.0f}x ({_fmt(min(r.measured_s for r in rows))} to "
              f"{_fmt(max(r.measured_s for r in rows))})",
              f"cases measured while other processes were busy or the canary ran slow: {sum(not r.quiet for r in rows)}; "
              f"median spread "
              f"between rounds {statistics.median(r.spread for r in rows):.1%} (the measurements' own noise)"]
    return "\n".join(lines)


def machine_line() -> str:
    import jaxlib

    from hw_targets.host import identity

    ident = identity()
    return (f"machine: {ident['cpu_model']} ({ident['cores']} cores usable), {platform.platform()}, "
            f"python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cached", action="store_true", help="reuse the cached host measurements")
    ap.add_argument("--only", action="append", default=[], help="run only these cases (repeatable)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds over the whole suite (median over rounds)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="time programs with glibc's default malloc (buffers may be mapped afresh, page-faulting, "
                         "each call; see hw_targets.host.steady_allocator)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hw_targets.host import build_target, measurements, steady_allocator

    record = measurements(remeasure=not args.cached)
    fit = fit_measurements(record["raw"])
    target = build_target(record["identity"], fit, measured_at=record["measured_at"])
    prepared = []
    for case in cases():
        if args.only and case.name not in args.only:
            continue
        print(f"lowering, estimating and compiling {case.name} ...", file=sys.stderr, flush=True)
        prepared.append(prepare(case, target, fit))
    if args.default_malloc:
        rows, allocator = measure_rounds(prepared, args.rounds), "glibc default malloc"
    else:
        with steady_allocator() as steady:
            rows = measure_rounds(prepared, args.rounds)
        allocator = "malloc held steady (no mmap, no trim)" if steady else "default malloc (not glibc)"
    now = dt.datetime.now()
    command = "python benchmarks/accuracy_host.py " + " ".join(sys.argv[1:])
    header = (f"accuracy_host  {now:%Y-%m-%d %H:%M}\n{machine_line()}\ncommand: {command.strip()}\n"
              f"timing: {args.rounds} rounds x median of quiet samples (canary-gated), back-to-back calls; {allocator}")
    text = report(rows, target, fit, header)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{now:%Y-%m-%d-%H%M}-accuracy-host.txt"
        out.write_text(text + "\n")
        print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
