"""Our passes against the real compiler: kernels, HBM bytes, peak memory, collectives and step time, per program.

For every example (GPT-2 train, Llama prefill and decode, CNN, MLP) and generated programs (layer norm,
softmax, attention, an MoE layer, a scan RNN, a sharded Megatron MLP on 8 devices), one table per compiler:
XLA:GPU with the ``h100_sxm`` and ``a100_sxm`` presets as GPU configs, XLA:TPU on ``tpu_v5p`` (a 2x2x1 slice).
Both sides are measured the same way, on the same program, in the same run:

- kernels: ours = the plan's kernels (default pipeline ``fuse{strategy=xla}``, and ``aggressive``); XLA's = its
  fusions and other kernel-launching ops in the optimized module (``explorer.lower(..., compiler="xla")``);
- HBM bytes: what every kernel (and collective) reads and writes in main memory, by the same boundary rule on
  both plans (a fusion's operands and results; a sliced operand counts its slice);
- peak memory: ours = liveness of our plan; XLA's = its buffer assignment (``memory_analysis()``: arguments +
  outputs + temporaries - aliased); also our liveness over XLA's plan;
- collectives: kind, count and bytes per device, ours (the ``shard`` pass) against XLA's SPMD partitioner;
- step time: ours on our plan, ours on XLA's plan, and XLA's own ``optimal_seconds`` where it has one (TPU).

Ratios are ours / XLA. Sharded programs are priced with ``shard{}`` (the shardings JAX wrote) before fusion.

    python benchmarks/fidelity_xla.py                  # every compiler that is installed
    python benchmarks/fidelity_xla.py --compiler gpu-h100 --only gpt2_train --no-save
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import explorer  # noqa: E402  (first: JAX starts quietly)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from tabulate import tabulate  # noqa: E402

import hw_targets  # noqa: E402
from explorer.frontend import xla  # noqa: E402
from explorer.graph import environment  # noqa: E402
from explorer.model_files import program_fn  # noqa: E402
from passes.fusion import kernels_of  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
S = jax.ShapeDtypeStruct
COMPILERS = {"gpu-h100": "h100_sxm", "gpu-a100": "a100_sxm", "tpu-v5p": "tpu_v5p"}


# -- the programs ----------------------------------------------------------------------------------------
def _example(spec: str, **overrides) -> Callable[[], tuple[Callable, tuple]]:
    return lambda: program_fn(str(ROOT / "examples" / spec))(**overrides)


def _layer_norm():
    def f(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-5) * g + b
    return f, (S((8192, 4096), jnp.float32), S((4096,), jnp.float32), S((4096,), jnp.float32))


def _softmax():
    return (lambda x: jax.nn.softmax(x, axis=-1)), (S((4096, 8192), jnp.float32),)


def _attention():
    def f(q, k, v):
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / 8.0
        mask = jnp.tril(jnp.ones((s.shape[-2], s.shape[-1]), bool))
        p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1).astype(q.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", p, v)
    return f, tuple(S((4, 2048, 16, 64), jnp.bfloat16) for _ in range(3))


def _moe():
    tokens, d, ff, experts, k = 4096, 1024, 2048, 8, 2

    def f(x, router, w1, w2):
        logits = x @ router
        weights, idx = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
        onehot = jax.nn.one_hot(idx, experts, dtype=x.dtype)                  # [t, k, e]
        dispatch = jnp.einsum("tke,td->etd", onehot, x)                         # dense dispatch (capacity = tokens)
        h = jax.nn.gelu(jnp.einsum("etd,edf->etf", dispatch, w1))
        y = jnp.einsum("etf,efd->etd", h, w2)
        return jnp.einsum("tke,etd,tk->td", onehot, y, weights.astype(x.dtype))
    return f, (S((tokens, d), jnp.bfloat16), S((d, experts), jnp.bfloat16), S((experts, d, ff), jnp.bfloat16),
               S((experts, ff, d), jnp.bfloat16))


def _scan_rnn():
    def f(h0, xs, w, u):
        def cell(h, x):
            h = jnp.tanh(x @ w + h @ u)
            return h, h
        return jax.lax.scan(cell, h0, xs)[1].sum()
    return jax.grad(f, argnums=(2, 3)), (S((64, 512), jnp.float32), S((128, 64, 512), jnp.float32),
                                        S((512, 512), jnp.float32), S((512, 512), jnp.float32))


def _megatron_mlp():
    """One data x tensor parallel MLP training step on 8 devices (data=2, model=4), shardings written by JAX."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    d, ff, batch = 2048, 8192, 64

    def loss(w1, w2, x):
        return jnp.mean(jnp.square(jax.nn.gelu(x @ w1) @ w2))

    def step(w1, w2, x):
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2, x)
        return w1 - 1e-3 * g1, w2 - 1e-3 * g2
    return step, (S((d, ff), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "model"))),
                  S((ff, d), jnp.bfloat16, sharding=NamedSharding(mesh, P("model", None))),
                  S((batch, d), jnp.bfloat16, sharding=NamedSharding(mesh, P("data", None))))


def _megatron_mlp_4():
    """The same step on a 2x2 mesh (4 devices: one v5p host)."""
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    fn, args = _megatron_mlp()
    return fn, tuple(S(a.shape, a.dtype, sharding=NamedSharding(mesh, a.sharding.spec)) for a in args)


def _megatron_sp_mlp_4():
    """A data x tensor x sequence parallel MLP training step on 4 devices (data=2, model=2): the tokens split over
    the model axis between the matmuls (Megatron-SP), so each weight gradient has two ways to be made (gather the
    tokens, or reduce the whole gradient over more axes) and the partitioner has to pick XLA's."""
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    d, ff, batch, seq = 1024, 4096, 8, 512

    def loss(w1, w2, x):
        h = jax.nn.gelu(jnp.einsum("bsd,df->bsf", x, w1))
        return jnp.mean(jnp.square(jnp.einsum("bsf,fd->bsd", h, w2)))

    def step(w1, w2, x):
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2, x)
        return w1 - 1e-3 * g1, w2 - 1e-3 * g2
    return step, (S((d, ff), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "model"))),
                  S((ff, d), jnp.bfloat16, sharding=NamedSharding(mesh, P("model", None))),
                  S((batch, seq, d), jnp.bfloat16, sharding=NamedSharding(mesh, P("data", "model", None))))


PROGRAMS: dict[str, Callable[[], tuple[Callable, tuple]]] = {
    "gpt2_train": _example("gpt2_train.py"),
    "llama_prefill": _example("llama_infer.py:prefill", n_layers=4),
    "llama_decode": _example("llama_infer.py:decode", n_layers=4),
    "cnn_train": _example("cnn.py"),
    "mlp_train": _example("mlp.py"),
    "layer_norm": _layer_norm,
    "softmax": _softmax,
    "attention": _attention,
    "moe_layer": _moe,
    "scan_rnn": _scan_rnn,
    "megatron_mlp_8dev": _megatron_mlp,
    "megatron_mlp_4dev": _megatron_mlp_4,
    "megatron_sp_mlp_4dev": _megatron_sp_mlp_4,
}
SKIP = {"tpu-v5p": {"megatron_mlp_8dev"}}      # one v5p host holds 4 chips: the 4-device variant runs there
ONLY = {"gpu-h100": None, "gpu-a100": None, "tpu-v5p": None}


# -- measuring one plan ----------------------------------------------------------------------------------
@dataclass
class Side:
    kernels: int = 0
    hbm_bytes: float = 0.0
    peak_bytes: float = 0.0
    seconds: float = 0.0
    collectives: dict[str, list[float]] = field(default_factory=dict)   # kind -> [count, bytes]
    flops: float = 0.0
    unknown_ops: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def collectives_of(est) -> dict[str, list[float]]:
    program, plan = est._program, est._plan
    out: dict[str, list[float]] = {}

    def add(w, runs):
        if w is not None and w.collective and w.group_size > 1:
            c = out.setdefault(w.collective, [0, 0.0])
            c[0] += runs
            c[1] += w.collective_bytes * runs

    for kern in kernels_of(program, plan):
        runs = program.weights[kern.ops[0]]
        for o in kern.ops:
            add(plan.work(program, o), runs)
    for e in plan.extra_kernels:
        add(e.work, program.weights[e.after_op] if e.after_op >= 0 else 1.0)
    return out


def main_memory_bytes(est, target) -> float:
    """The estimate's bytes in main memory: every kernel's traffic less what its plan places in another level
    (XLA:TPU's VMEM buffers, ``S(1)``: a prefetch reads HBM once, its readers read VMEM)."""
    program, plan = est._program, est._plan
    if not plan.placement:
        return est.bytes_accessed
    main, elsewhere = target.main_memory.name, 0.0
    for kern in kernels_of(program, plan):
        runs = program.weights[kern.ops[0]]
        elsewhere += runs * sum(b for v, b in (*kern.reads, *kern.writes) if plan.placement.get(v, main) != main)
    return est.bytes_accessed - elsewhere


def side(est, target=None) -> Side:
    """Kernels: compute and collective kernels (a compiler's async DMA copies, XLA:TPU's prefetches into on-chip
    memory, are counted apart in ``extra``)."""
    plan = est._plan
    copies = sum(1 for k in (plan.kernels or ()) if k.kind == "copy")
    launched = sum(1 for k in est.kernels if k.ops or k.collective_bytes or k.name.startswith("copy["))
    hbm = main_memory_bytes(est, target) if target is not None else est.bytes_accessed
    return Side(kernels=launched - copies, hbm_bytes=hbm,
                peak_bytes=float(est.peak_memory_bytes), seconds=est.seconds, collectives=collectives_of(est),
                flops=est.flops, unknown_ops=dict(est.unknown_ops), extra={"copies": copies})


def sharded(args) -> bool:
    return any(getattr(getattr(a, "sharding", None), "mesh", None) is not None for a in jax.tree.leaves(args))


@dataclass
class Row:
    program: str
    ours: Side
    aggressive: Side
    xla: Side                     # our pricing of XLA's plan
    xla_peak_bytes: float         # XLA's buffer assignment
    xla_optimal_s: float | None   # XLA's own estimate (TPU)
    xla_bytes_accessed: float | None
    compile_s: float
    analysis_s: float
    error: str = ""


def measure(name: str, build, target) -> Row:
    with environment.quiet_backend_start():   # building the arguments may start JAX's backends (plugins load)
        fn, args = build()
    t0 = time.perf_counter()
    prog = explorer.lower(fn, *args)
    shard = "shard{}," if sharded(args) else ""
    ours = side(explorer.estimate(prog, target, pipeline=f"{shard}fuse{{strategy=xla}}"), target)
    agg = side(explorer.estimate(prog, target, pipeline=f"{shard}fuse{{strategy=aggressive}}"), target)
    analysis_s = time.perf_counter() - t0
    compiled = explorer.lower(fn, *args, compiler="xla", target=target)
    theirs = side(explorer.estimate(compiled, target), target)
    info = compiled.origin
    return Row(name, ours, agg, theirs, info["memory_analysis"].get("peak_memory_in_bytes", float("nan")),
               info["cost_analysis"].get("optimal_seconds"), info["cost_analysis"].get("bytes accessed"),
               info["compile_seconds"], analysis_s)


# -- reporting -------------------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g}"


def _coll(c: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} x{int(n)} {_gb(b)} GB" for k, (n, b) in sorted(c.items())) or "-"


def table(compiler: str, rows: list[Row]) -> str:
    body = []
    for r in rows:
        if r.error:
            body.append([r.program, r.error] + [""] * 12)
            continue
        opt = r.xla_optimal_s
        body.append([
            r.program, f"{r.ours.kernels}/{r.xla.kernels}", _ratio(r.ours.kernels, r.xla.kernels),
            _ratio(r.aggressive.kernels, r.xla.kernels),
            f"{_gb(r.ours.hbm_bytes)}/{_gb(r.xla.hbm_bytes)}", _ratio(r.ours.hbm_bytes, r.xla.hbm_bytes),
            _ratio(r.aggressive.hbm_bytes, r.xla.hbm_bytes),
            f"{_gb(r.ours.peak_bytes)}/{_gb(r.xla_peak_bytes)}", _ratio(r.ours.peak_bytes, r.xla_peak_bytes),
            _ratio(r.xla.peak_bytes, r.xla_peak_bytes),
            f"{r.ours.seconds * 1e3:.3g}/{r.xla.seconds * 1e3:.3g}" + (f"/{opt * 1e3:.3g}" if opt and opt > 0 else ""),
            (_ratio(r.ours.seconds, opt) if opt and opt > 0 else "-"),
            f"{_coll(r.ours.collectives)} | {_coll(r.xla.collectives)}" if (r.ours.collectives or r.xla.collectives)
            else "-",
            f"{sum(r.ours.unknown_ops.values())}/{sum(r.xla.unknown_ops.values())}"])
    headers = ["program", "kernels ours/XLA", "ratio", "aggr", "HBM GB ours/XLA", "ratio", "aggr",
               "peak GB ours/XLA", "ratio", "on XLA plan", "step ms ours/on XLA plan/XLA est", "ours/XLA est",
               "collectives ours | XLA", "unknown ops ours/XLA"]
    return f"== {compiler} ==\n" + tabulate(body, headers=headers, disable_numparse=True)


def summary(compiler: str, rows: list[Row]) -> list[str]:
    ok = [r for r in rows if not r.error]
    if not ok:
        return [f"{compiler}: nothing measured"]

    def med(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return statistics.median(xs) if xs else float("nan")

    k = [r.ours.kernels / r.xla.kernels for r in ok if r.xla.kernels]
    b = [r.ours.hbm_bytes / r.xla.hbm_bytes for r in ok if r.xla.hbm_bytes]
    m = [r.ours.peak_bytes / r.xla_peak_bytes for r in ok if r.xla_peak_bytes]
    within = lambda xs, tol: sum(abs(x - 1) <= tol for x in xs)  # noqa: E731
    return [f"{compiler}: kernels ours/XLA median {med(k):.2f} ({within(k, 0.2)}/{len(k)} within 20%), "
            f"HBM bytes median {med(b):.2f} ({within(b, 0.15)}/{len(b)} within 15%), "
            f"peak memory median {med(m):.2f} ({within(m, 0.10)}/{len(m)} within 10%); "
            f"compile {sum(r.compile_s for r in ok):.1f} s, our analysis {sum(r.analysis_s for r in ok):.1f} s"]


def to_json(compiler: str, rows: list[Row]) -> list[dict]:
    def s(x: Side) -> dict:
        return {"kernels": x.kernels, "hbm_bytes": x.hbm_bytes, "peak_bytes": x.peak_bytes, "seconds": x.seconds,
                "collectives": x.collectives, "flops": x.flops, "unknown_ops": x.unknown_ops}
    return [{"compiler": compiler, "program": r.program, "error": r.error, "ours": s(r.ours),
             "aggressive": s(r.aggressive), "xla_plan": s(r.xla), "xla_peak_bytes": r.xla_peak_bytes,
             "xla_optimal_seconds": r.xla_optimal_s, "xla_bytes_accessed": r.xla_bytes_accessed,
             "compile_seconds": r.compile_s} for r in rows]


def available(compiler: str) -> str:
    """'' when the compiler can run here, else why not."""
    try:
        xla.devices_for(hw_targets.load(COMPILERS[compiler]), 1)
    except xla.CompilerError as exc:
        return str(exc)
    return ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compiler", action="append", choices=sorted(COMPILERS), help="default: every one installed")
    ap.add_argument("--only", action="append", help="programs to run (default: all)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    names = args.only or list(PROGRAMS)
    lines, records = [], []
    for compiler in args.compiler or list(COMPILERS):
        why = available(compiler)
        if why:
            lines.append(f"== {compiler} == skipped: {why}")
            continue
        target = hw_targets.load(COMPILERS[compiler])
        rows = []
        for name in names:
            if name in SKIP.get(compiler, ()):
                continue
            try:
                rows.append(measure(name, PROGRAMS[name], target))
            except Exception as exc:   # a program one compiler cannot take is reported, the run goes on
                rows.append(Row(name, Side(), Side(), Side(), float("nan"), None, None, 0.0, 0.0,
                                error=f"{type(exc).__name__}: {str(exc)[:200]}"))
            print(f"{compiler} {name}: done", file=sys.stderr, flush=True)
        lines += [table(compiler, rows), *summary(compiler, rows), ""]
        records += to_json(compiler, rows)
    now = dt.datetime.now()
    head = (f"fidelity_xla  {now:%Y-%m-%d %H:%M}\nmachine: {platform.platform()}, jax {jax.__version__}\n"
            f"command: python benchmarks/fidelity_xla.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
            "ratios are ours / XLA; 'aggr' = fuse{strategy=aggressive}; 'on XLA plan' = our liveness over XLA's "
            "kernels against XLA's buffer assignment\n")
    text = head + "\n".join(lines)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        which = "-".join(args.compiler) if args.compiler else "all"     # one file per run, whatever ran at once
        stem = RESULTS / f"{now:%Y-%m-%d-%H%M}-fidelity-xla-{which}"
        stem.with_suffix(".txt").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps(records, indent=1))
        print(f"\nwritten to {stem.relative_to(ROOT)}.txt/.json")


if __name__ == "__main__":
    main()
