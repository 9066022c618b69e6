"""The figures of issue 12 (a step schedule, precision, GEMM shapes), each beside a reference computed in the same
run from the same rows: the additive step (every row's time plus a launch per kernel, one after another: what the
estimate was before the scheduler), the vector-rate fallback for f32 dots, a data-parallel-only GEMM tiling.

    python benchmarks/step_targets.py            # writes benchmarks/results/<date>-step-targets.txt
    python benchmarks/step_targets.py --no-save

Targets (issue 12): Llama-3-8B decode (batch 32, 8k cache) on h100_sxm with 2x HBM bandwidth >= 1.85x; a
data-parallel example hides >= 70% of its gradient communication; the GPT-2 example on tpu_v5p prices its f32
attention dots at the MXU rate the precision implies. Causality of every example's trace is a test
(``tests/test_schedule.py``); the published GEMM / attention rows are ``benchmarks/validate_reference.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import explorer  # noqa: E402
import hw_targets  # noqa: E402
from explorer.costs import Gemm  # noqa: E402
from explorer.model import timing  # noqa: E402
from explorer.model_files import load_program  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ROOT / "examples"


def additive(est, target) -> float:
    """The step as a plain sum: every row's busy time with a whole launch each instead of the gap (the old rule)."""
    return sum((max(k.compute_s, k.memory_s, k.comm_s) + target.launch_overhead_s) * k.executions for k in est.kernels)


def llama_decode(out: list[str]) -> None:
    prog = load_program(str(EXAMPLES / "llama_infer.py") + ":decode", {"batch": 32, "max_len": 8192})
    h100 = hw_targets.load("h100_sxm")
    bw = h100.knobs()["memory.hbm.bandwidth_bytes_per_s"]
    fast = h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": 2 * bw})
    out.append("## Llama-3-8B decode, batch 32, 8k KV cache, h100_sxm vs 2x HBM bandwidth (target: >= 1.85x)")
    for label, target in (("graph launches (preset)", h100), ("per-kernel launches", None)):
        a = h100 if target is not None else dataclasses.replace(h100, launch_mode="per_kernel")
        b = fast if target is not None else dataclasses.replace(fast, launch_mode="per_kernel")
        ea, eb = explorer.estimate(prog, a), explorer.estimate(prog, b)
        out.append(f"  {label:26s} {ea.seconds * 1e3:8.3f} ms -> {eb.seconds * 1e3:8.3f} ms   speedup {ea.seconds / eb.seconds:.3f}x"
                   f"   ({ea.num_kernels} kernels; launch-bound part {ea.overhead_seconds * 1e3:.3f} ms; bound {ea.bound} -> {eb.bound})")
    ea, eb = explorer.estimate(prog, h100), explorer.estimate(prog, fast)
    ra, rb = additive(ea, h100), additive(eb, fast)
    out.append(f"  {'reference: additive step':26s} {ra * 1e3:8.3f} ms -> {rb * 1e3:8.3f} ms   speedup {ra / rb:.3f}x"
               "   (rows one after another, a 4 us launch each)")
    algos: dict[str, int] = {}
    for k in ea.kernels:
        if k.algorithm:
            algos[k.algorithm] = algos.get(k.algorithm, 0) + 1
    out.append(f"  matmul algorithms chosen: {algos}")


def data_parallel(out: list[str]) -> None:
    cfg = dict(vocab_size=50304, d_model=768, n_heads=12, n_layers=12, d_ff=3072, batch=64, seq=1024)
    prog = load_program(str(EXAMPLES / "scaling_what_if.py"), cfg)
    h100 = hw_targets.load("h100_sxm")
    pipe = "shard{mesh=data=8,dp=data},fuse{strategy=xla}"
    out.append("")
    out.append("## Data-parallel GPT-2-small-shaped train step (examples/scaling_what_if.py, 12 blocks, batch 64 x 1024) "
               "on 8 H100 (target: >= 70% of the gradient communication hidden)")
    for label, target in (("async collectives (preset)", h100),
                          ("reference: blocking collectives", dataclasses.replace(h100, async_collectives=False))):
        est = explorer.estimate(prog, target, pipeline=pipe)
        tl = est.timeline
        on = set(tl.critical_path)
        shares = est.step_shares()
        grads = [i for i, k in enumerate(est.kernels)
                 if not k.ops and k.name.startswith(("all_reduce", "reduce_scatter")) and k.phase == "backward"]
        total = sum(est.kernels[i].comm_s * est.kernels[i].executions for i in grads)
        exposed = sum(min(est.kernels[i].comm_s * est.kernels[i].executions, shares[i]) for i in grads if i in on)
        out.append(f"  {label:32s} step {est.seconds * 1e3:8.3f} ms; gradient all-reduces {len(grads)}, "
                   f"{total * 1e3:.3f} ms of communication, {exposed * 1e3:.3f} ms exposed: "
                   f"{1 - exposed / total:.1%} hidden; all communication {est.total_comm_seconds * 1e3:.3f} ms, "
                   f"exposed {est.comm_seconds * 1e3:.3f} ms")
    out.append(f"  (collectives as the sharding pass inserts them: {est.plan_notes[-1] if est.plan_notes else ''})")


def gpt2_tpu(out: list[str]) -> None:
    prog = load_program(str(EXAMPLES / "gpt2_train.py"), {})
    v5p = hw_targets.load("tpu_v5p")
    vector = dataclasses.replace(v5p, compute=dataclasses.replace(v5p.compute, f32_matmul="fp32"))
    out.append("")
    out.append("## GPT-2 small train step (examples/gpt2_train.py) on tpu_v5p: f32 attention dots (f32 softmax probs @ V)")
    est = explorer.estimate(prog, v5p)
    ref = explorer.estimate(prog, vector)
    rates, ref_rates = [], []
    seen = set()
    for k in est.kernels:
        for o in k.ops:
            w = prog.works[o]
            if w is not None and w.matrix_flops and w.dtype == "tf32":
                t, how = timing.matrix_time(v5p, w)
                rates.append((w.gemm, w.matrix_flops / t, how))
                ref_rates.append(w.matrix_flops / timing.matrix_time(vector, w)[0])
                seen.add(k.ops)
    peak = 459e12 * v5p.efficiency.matrix
    for (g, r, how), rr in list(zip(rates, ref_rates))[:4]:
        u = timing.matrix_utilisation(g, tuple(v5p.compute.matrix_tile), v5p.compute.matrix_units)
        out.append(f"  {g.m}x{g.n}x{g.k} (x{g.batch}) [{how}]: {r / 1e12:7.1f} TFLOP/s of matrix time = bf16 peak x "
                   f"{v5p.efficiency.matrix} x utilisation {u:.3f} ({peak * u / 1e12:.1f}); reference: vector-rate "
                   f"fallback {rr / 1e12:.1f} TFLOP/s")
    out.append(f"  {len(rates)} f32 dots in {len(seen)} kernels; step {est.seconds * 1e3:.3f} ms "
               f"(reference with f32 dots at the fp32 vector rate: {ref.seconds * 1e3:.3f} ms)")
    h100 = explorer.estimate(prog, hw_targets.load("h100_sxm"))
    out.append(f"  h100_sxm / tpu_v5p step time: {h100.seconds / est.seconds:.3f} (with the fallback: "
               f"{h100.seconds / ref.seconds:.3f})")


def gemm_shapes(out: list[str]) -> None:
    h100 = hw_targets.load("h100_sxm")
    out.append("")
    out.append("## GEMM shapes on h100_sxm (tile 128x128x64, 132 SMs)")
    for m, n, k, what in ((4, 14336, 4096, "decode up-projection, batch 4"),
                          (768, 3072, 12608, "weight gradient (dW = X^T dY)"),
                          (12608, 3072, 768, "the forward GEMM with the same flops")):
        prog = explorer.lower(lambda a, b: a @ b, jax.ShapeDtypeStruct((m, k), "bfloat16"),
                              jax.ShapeDtypeStruct((k, n), "bfloat16"))
        (row,) = explorer.estimate(prog, h100, pipeline=None).kernels
        g = Gemm(1, m, n, k)
        mt, nt, kt = -(-m // 128), -(-n // 128), -(-k // 64)
        tiles = mt * nt
        dp = (m * n * k) / (mt * 128 * nt * 128 * kt * 64) * tiles / (-(-tiles // 132) * 132)
        util, algo = timing.gemm_algorithm(g, (128, 128, 64), 132)
        flops = 2.0 * m * n * k
        out.append(f"  {m}x{n}x{k} ({what}): {row.algorithm or 'tiles'}, compute {row.compute_s * 1e6:.1f} us = "
                   f"{flops / row.compute_s / 989.4e12:.1%} of peak, bound {row.bound} "
                   f"(reference, data-parallel tiles only: {dp * 0.7:.1%} of peak)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    now = dt.datetime.now()
    out = [f"step_targets  {now:%Y-%m-%d %H:%M}",
           f"machine: {platform.platform()}, python {platform.python_version()}, jax {jax.__version__} "
           "(estimates only: nothing runs on an accelerator)",
           "command: python benchmarks/step_targets.py", ""]
    for part in (llama_decode, data_parallel, gpt2_tpu, gemm_shapes):
        part(out)
    out.append(f"\n({time.time() - t0:.1f} s)")
    text = "\n".join(out)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{now:%Y-%m-%d-%H%M}-step-targets.txt"
        path.write_text(text + "\n")
        print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
