"""How long our analysis (import + estimate) takes against XLA's own CPU compile of the same program.

Both start from the same ``jax.jit(fn).lower(...)`` result, measured in the same run
(this machine is shared and noisy: compare the ratio, not the absolute seconds).

    python benchmarks/analysis_speed.py [examples/gpt2_train.py] [--repeats 3] [--set layers=12]
"""
from __future__ import annotations

import argparse
import statistics
import time

import hw_targets

import explorer
from explorer.graph import importer
from explorer.model_files import parse_overrides, program_fn
from explorer.costs import Program


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="examples/gpt2_train.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", default="h100_sxm")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    import jax

    fn, fargs = program_fn(args.model)(**parse_overrides(args.set))
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*fargs)
    lower_s = time.perf_counter() - t0
    target = hw_targets.load(args.target)

    ours, xla = [], []
    est = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        graph = importer.import_module(lowered.compiler_ir("stablehlo"), name="program")
        prog = Program.from_graph(graph)
        est = explorer.estimate(prog, target)
        ours.append(time.perf_counter() - t0)
        jax.clear_caches()                      # a real compile each time, not a cache hit
        fresh = jax.jit(fn).lower(*fargs)
        t0 = time.perf_counter()
        fresh.compile()
        xla.append(time.perf_counter() - t0)
    o, x = statistics.median(ours), statistics.median(xla)
    print(f"model: {args.model}  ops imported: {len(prog.graph.ops)}  kernels: {est.num_kernels}")
    print(f"jax lowering (shared by both):          {lower_s:8.3f} s")
    print(f"ours: import + estimate ({args.target}): {o:8.3f} s  (median of {args.repeats}: {', '.join(f'{v:.3f}' for v in ours)})")
    print(f"XLA CPU compile:                         {x:8.3f} s  (median of {args.repeats}: {', '.join(f'{v:.3f}' for v in xla)})")
    print(f"ratio ours / XLA compile:                {o / x:8.3f}  (goal: < 0.1)")


if __name__ == "__main__":
    main()
