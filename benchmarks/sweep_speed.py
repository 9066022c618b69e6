"""Variants priced per second by ``explorer.sweep`` (vectorised path) against one ``explorer.estimate`` per variant.

Both run in the same process on the same program and base target (this machine is shared and noisy:
the ratio is the figure to compare). The vectorised rows are checked against per-variant estimates
for a sample of variants, bit for bit.

    python benchmarks/sweep_speed.py [examples/gpt2_train.py] [--target h100_sxm] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import hw_targets

import explorer
from explorer.model_files import load_program, parse_overrides
from explorer.workflows.sweep import row_of


def grid_for(base) -> dict[str, list[float]]:
    """10 x 10 x 5 x 4 x 5 = 10,000 variants over compute, memory, tile/unit and overhead knobs."""
    k = base.knobs()
    scale = [0.5 + 0.125 * i for i in range(10)]
    return {
        "memory.hbm.bandwidth_bytes_per_s": [k["memory.hbm.bandwidth_bytes_per_s"] * s for s in scale],
        "compute.matrix_flops_per_s.bf16": [k["compute.matrix_flops_per_s.bf16"] * s for s in scale],
        "compute.matrix_units": [int(k["compute.matrix_units"] * s) for s in (0.5, 0.75, 1.0, 1.25, 1.5)],
        "launch_overhead_s": [k["launch_overhead_s"] * s for s in (0.5, 1.0, 1.5, 2.0)],
        "efficiency.matrix": [0.5, 0.6, 0.7, 0.8, 0.9],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="examples/gpt2_train.py")
    ap.add_argument("--target", default="h100_sxm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-variants", type=int, default=5, help="per-variant estimates timed for the reference")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    prog = load_program(args.model, parse_overrides(args.set))
    base = hw_targets.load(args.target)
    grid = grid_for(base)

    times, res = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = explorer.sweep(prog, base, grid)
        times.append(time.perf_counter() - t0)
    assert res is not None and res.method == "vectorised", res.method
    sweep_s = statistics.median(times)
    n = len(res)

    ref, checked = [], 0
    step = max(1, n // args.reference_variants)
    for i in range(0, n, step)[:args.reference_variants]:
        row = res.row(i)
        target = base.replace(**{k: row[k] for k in grid})
        t0 = time.perf_counter()
        est = explorer.estimate(prog, target)
        ref.append(time.perf_counter() - t0)
        expected = row_of(est, target)
        for col, value in expected.items():
            same = value.hex() == row[col].hex() if isinstance(value, float) else value == row[col]
            assert same, (i, col, value, row[col])
        checked += 1
    per_estimate_s = statistics.median(ref)

    print(f"program: {res.program} ({args.model}), target: {base.name}, pipeline: {res.pipeline}, "
          f"kernels: {res.row(0)['kernels']}")
    print(f"variants: {n} ({' x '.join(str(len(v)) for v in grid.values())} over {', '.join(grid)})")
    print(f"vectorised sweep: {sweep_s:.3f} s median of {args.repeats} -> {n / sweep_s:,.0f} variants/s")
    print(f"one explorer.estimate per variant: {per_estimate_s * 1e3:.1f} ms median of {len(ref)} "
          f"-> {1 / per_estimate_s:,.1f} variants/s")
    print(f"speed-up of the vectorised sweep: {per_estimate_s * n / sweep_s:,.0f}x "
          f"({checked} sampled rows equal their estimate bit for bit)")


if __name__ == "__main__":
    main()
