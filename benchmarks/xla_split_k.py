"""Which split-K factor XLA:GPU picks for a bf16 GEMM [m, k] x [k, n], measured on deviceless compiles.

Why: without autotuning (a deviceless compile cannot time kernels) XLA:GPU chooses a GEMM's tiling by heuristics,
and for outputs that are small for their K it splits K: the GEMM writes ``s`` f32 partial sums ``[s, m, n]`` and a
reduction kernel adds them (and takes the epilogue). ``fuse{strategy=xla}`` knows *when* it splits
(``passes/fusion_xla.py``: ``SPLIT_K_OUTPUT_PER_K``) but prices one GEMM writing its output once; the partial sums'
bytes are what ``benchmarks/fusion_patterns_xla.py`` still misses on its ``gemm_*_bias_relu`` patterns, and what
the scanned RNN and the per-device GEMMs of the sharded MLPs of ``fidelity_xla.py`` miss. This table is the
measurement a split-K rule must reproduce (read ``s`` off the partial sums' shape in the optimized module).

    python benchmarks/xla_split_k.py                  # h100_sxm; --target a100_sxm; --no-save
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import explorer  # noqa: E402,F401  (first: JAX starts quietly)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import hw_targets  # noqa: E402
from explorer.frontend import xla  # noqa: E402
from explorer.graph import environment  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MS = (16, 32, 64, 128, 256, 512, 1024)
NS = (256, 512, 1024, 2048, 4096)
KS = (256, 512, 1024, 2048, 4096, 8192)


def split_factor(target, m: int, n: int, k: int) -> int:
    """The number of K splits in XLA's optimized module for ``x @ w`` (1: not split)."""
    s = jax.ShapeDtypeStruct
    with environment.quiet_backend_start():
        compiled, _ = xla.compile_deviceless(lambda x, w: x @ w, s((m, k), jnp.bfloat16), s((k, n), jnp.bfloat16),
                                             target=target)
    found = re.findall(r"f32\[(\d+),%d,%d\]" % (m, n), compiled.as_text())
    return max((int(x) for x in found), default=1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="h100_sxm")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    target = hw_targets.load(args.target)
    lines = [f"xla_split_k  {dt.datetime.now():%Y-%m-%d %H:%M}",
             f"machine: {platform.platform()}, jax {jax.__version__}, target {target.name}",
             f"command: python benchmarks/xla_split_k.py --target {args.target}",
             "split factor s per (m, n, k) for outputs under 1024 x k elements; rows m, columns (n, k)"]
    shapes = [(n, k) for n, k in itertools.product(NS, KS)]
    lines.append("m \\ n,k " + " ".join(f"{n}x{k}" for n, k in shapes))
    for m in MS:
        cells = [str(split_factor(target, m, n, k)) if m * n < 1024 * k else "-" for n, k in shapes]
        lines.append(f"{m:<8d} " + " ".join(f"{c:>{len(f'{n}x{k}')}}" for c, (n, k) in zip(cells, shapes)))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{dt.datetime.now():%Y-%m-%d-%H%M}-xla-split-k-{target.name}.txt"
        out.write_text(text)
        print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
