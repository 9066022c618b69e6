"""Small fusion patterns, one decision each, against what the real XLA makes of them (deviceless compiles).

Each pattern isolates one rule of ``fuse{strategy=xla}`` (``passes/fusion_xla.py``): a GEMM's epilogue and
prologue, split-K, sibling and producer-consumer multi-output fusion, duplication of cheap producers, transposing
copies for GEMM operands. The table gives kernels and HBM bytes, ours / XLA's, per compiler, and the summary
how many patterns agree exactly on both. This is where a rule was measured before it was written; rerun it after
changing one, and after a jax upgrade (XLA's heuristics move between versions).

    python benchmarks/fusion_patterns_xla.py                      # every installed compiler
    python benchmarks/fusion_patterns_xla.py --compiler gpu-h100 --no-save
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import explorer  # noqa: E402  (first: JAX starts quietly)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

import fidelity_xla  # noqa: E402  (the same byte count as the program benchmark)
import hw_targets  # noqa: E402
from explorer.frontend import xla  # noqa: E402
from explorer.graph import environment  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COMPILERS = {"gpu-h100": "h100_sxm", "gpu-a100": "a100_sxm", "tpu-v5p": "tpu_v5p"}
S = jax.ShapeDtypeStruct
BF16 = jnp.bfloat16


def _f32(v):
    return v.astype(jnp.float32)


def _ln(z):
    zf = _f32(z)
    m = zf.mean(-1, keepdims=True)
    v = ((zf - m) ** 2).mean(-1, keepdims=True)
    return ((zf - m) * jax.lax.rsqrt(v + 1e-5)).astype(z.dtype)


def _patterns() -> dict[str, tuple[Callable, tuple]]:
    a, b = S((4096, 4096), BF16), S((4096, 4096), BF16)
    bias = jnp.asarray(np.ones(4096), BF16)
    two = (a, b)

    def gemm(m, k, n):
        return (S((m, k), BF16), S((k, n), BF16), S((n,), BF16))

    bias_relu = lambda x, w, c: jax.nn.relu(x @ w + c)  # noqa: E731
    q = S((4, 1024, 64, 64), BF16)
    return {
        # a GEMM's epilogue
        "dot_convert": (lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(BF16), two),
        "dot_bias": (lambda a, b: jnp.dot(a, b) + bias, two),
        "dot_bias_gelu": (lambda a, b: jax.nn.gelu(jnp.dot(a, b) + bias), two),
        "dot_bias_residual_ln": (lambda a, b: (lambda z: (z, _ln(z)))(jnp.dot(a, b) + bias + a), two),
        "dot_bias_ln": (lambda a, b: _ln(jnp.dot(a, b) + bias), two),
        "dot_widen_reduce": (lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).sum(1), two),
        "dot_transpose": (lambda a, b: jnp.dot(a, b).T, two),
        "dot_scale_transpose": (lambda a, b: (jnp.dot(a, b) * 2).T, two),
        "dot_two_readers": (lambda a, b: (lambda y: (y * 2, y + 1))(jnp.dot(a, b)), two),
        "dot_bias_slices": (lambda a, b: (lambda y: (y[:, :1024].T, y[:, 1024:2048].T, y[:, 2048:]))(
            jnp.dot(a, b) + bias), two),
        # split-K (Hopper): small outputs for their K
        "gemm_128x256x512_bias_relu": (bias_relu, gemm(128, 256, 512)),
        "gemm_512x512x512_bias_relu": (bias_relu, gemm(512, 512, 512)),
        "gemm_1024x2048x1024_bias_relu": (bias_relu, gemm(1024, 2048, 1024)),
        "gemm_1024x1024x1024_bias_relu": (bias_relu, gemm(1024, 1024, 1024)),
        "gemm_2048x256x256_bias_relu": (bias_relu, gemm(2048, 256, 256)),
        # a GEMM's prologue
        "prologue_scale": (lambda a, b: jnp.dot(a * 2, b), two),
        "prologue_add_two_inputs": (lambda a, b: jnp.dot(a + b, b), two),
        "prologue_transpose": (lambda a, b: jnp.dot(a.T, b), two),
        "prologue_slice": (lambda a, b: jnp.dot(a[:, :2048], b[:2048]), two),
        "prologue_concat": (lambda a, b: jnp.dot(jnp.concatenate([a[:, :2048], -a[:, 2048:]], 1), b), two),
        "prologue_f32": (lambda a, b: jnp.dot(_f32(a) * 2, _f32(b)), two),
        # operands a GEMM cannot read as they are
        "batched_operands_to_relayout": (lambda x, y: jnp.einsum("bqhd,bkhd->bhqk", x, y), (q, q)),
        # multi-output fusion
        "siblings_of_input": (lambda a, b: (a * 2, a + 1), two),
        "siblings_lone_ops": (lambda a, b: (a + b, a - b), two),
        "sibling_reductions": (lambda a, b: (_f32(a).sum(1), (_f32(a) * _f32(a)).sum(1)), two),
        "siblings_of_dot_reductions": (lambda a, b: (lambda y: (_f32(y).sum(1), (_f32(y) * _f32(y)).sum(1)))(
            jnp.dot(a, b)), two),
        "siblings_of_reduction": (lambda a, b: (lambda r: (r * 2, r + 1))(_f32(a).sum(1)), two),
        "producer_into_two_readers": (lambda a, b: (lambda y: (y * 2, y + 1))(jnp.exp(a) * 3), two),
        "producer_into_two_reductions": (lambda a, b: (lambda y: (_f32(y).sum(1), (_f32(y) * 2).sum(1)))(
            jnp.exp(a) * 3), two),
        "mixed_loop_and_reduction": (lambda a, b: (a * 2, _f32(a).sum(1)), two),
        "siblings_other_shape": (lambda a, b: (a * 2, a[:, :2048] + 1), two),
    }


def _kernels(prog, target) -> tuple[int, float]:
    """Kernels (async copies, XLA:TPU's prefetches into VMEM, apart) and bytes in main memory."""
    est = explorer.estimate(prog, target)
    plan = est._plan
    asynchronous = sum(1 for k in (plan.kernels or ()) if k.kind == "copy")
    launched = sum(1 for k in est.kernels if k.ops or k.collective_bytes or k.name.startswith("copy["))
    return launched - asynchronous, fidelity_xla.main_memory_bytes(est, target)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compiler", action="append", choices=sorted(COMPILERS), help="default: every one installed")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    with environment.quiet_backend_start():
        patterns = _patterns()
    lines = []
    for compiler in args.compiler or list(COMPILERS):
        target = hw_targets.load(COMPILERS[compiler])
        try:
            xla.devices_for(target, 1)
        except xla.CompilerError as exc:
            lines.append(f"== {compiler} == skipped: {exc}")
            continue
        rows, agree = [], 0
        for name, (fn, fargs) in patterns.items():
            k_ours, b_ours = _kernels(explorer.lower(fn, *fargs), target)
            k_xla, b_xla = _kernels(explorer.lower(fn, *fargs, compiler="xla", target=target), target)
            same = k_ours == k_xla and abs(b_ours - b_xla) <= 0.01 * b_xla
            agree += same
            rows.append([name, f"{k_ours}/{k_xla}", f"{b_ours / 1e6:.1f}/{b_xla / 1e6:.1f}", "yes" if same else "NO"])
        lines += [f"== {compiler} ({target.name}) ==",
                  tabulate(rows, headers=["pattern", "kernels ours/XLA", "HBM MB ours/XLA", "same"],
                           disable_numparse=True),
                  f"{compiler}: {agree}/{len(rows)} patterns with the same kernels and bytes (within 1%)", ""]
    now = dt.datetime.now()
    text = "\n".join([f"fusion_patterns_xla  {now:%Y-%m-%d %H:%M}", f"machine: {platform.platform()}, jax "
                      f"{jax.__version__}", "command: python benchmarks/fusion_patterns_xla.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]), ""] + lines)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        which = "-".join(args.compiler) if args.compiler else "all"     # one file per run, whatever ran at once
        (RESULTS / f"{now:%Y-%m-%d-%H%M}-fusion-patterns-xla-{which}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
