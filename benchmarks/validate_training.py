"""Multi-GPU training steps: predicted vs measured, for the ``train_step`` rows of the shared validation cases.

For each Megatron-LM (SC'21 Tables 1 and 2), MT-NLG, Llama 3 and NeMo row, a JAX model of the same
shape (``examples/scaling_what_if.py``: GPT or Llama blocks, the row's hidden size, heads, KV heads, FFN,
vocabulary, sequence) is lowered from ``ShapeDtypeStruct``s only, with the parallel configuration the
source used:

- one microbatch step across the data-parallel replicas (``batch = micro_batch * dp``), sharded by the
  ``shard`` pass on a mesh ``data=dp.seq=cp.model=tp`` (model innermost: NVLink), data parallel with the
  optimizer state split over it (``zero1``: Megatron-Core's distributed optimizer in NeMo, and for
  Llama 3's "FSDP-style DP", which keeps parameters gathered across a step's microbatches; plain data
  parallelism for the 2021 Megatron-LM runs), Megatron tensor parallel, sequence parallel where the
  framework uses it (NeMo / Megatron-Core, Llama 3; not the 2021 runs), context parallel;
- pipeline parallel over ``pp`` stages (the outermost axis) with ``m = global_batch / (dp * micro_batch)``
  microbatches, 1F1B, or interleaved 1F1B with the row's ``vp``;
- built with 2 of the model's identical blocks; the per-block time is scaled to the real layer count
  (``price_pipeline(blocks=...)``), said in every row;
- full activation recomputation (``jax.checkpoint`` per block) where the source used it; FP8 matmul
  operands for the NeMo rows (TransformerEngine); fusion ``aggressive`` (attention as one kernel) where
  the framework used FlashAttention-style kernels (NeMo, Llama 3), ``xla`` for the 2021 Megatron runs.

Assumptions where the row leaves something out are printed with it (micro batch 1 when not given;
1F1B when the interleaving degree is not given). Rows on hardware without a preset (GB200) and rows
without a step time (FlashAttention-2 table: no global batch) are listed as skipped, with the reason.
The error is ``predicted / measured - 1`` on the per-step time (``derived_step_time_s``).

A row that cannot be read (a column written another way, e.g. an FFN of ``10944 dense / 1408 per
expert``) is skipped and listed with the reason; it never stops the run.

Run: ``python benchmarks/validate_training.py [--cases FILE] [case-id-substring ...]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import explorer  # noqa: E402
import hw_targets  # noqa: E402
from explorer.pricing.pipeline_parallel import price_pipeline  # noqa: E402
from passes import pipeline as pl  # noqa: E402
from passes.sharding import Shard  # noqa: E402
from reference_data import Skipped, add_cases_argument, integer, parse_each, read_rows  # noqa: E402
BLOCKS_IN_PROGRAM = 2
PRESETS = (("A100", "a100_sxm"), ("H100", "h100_sxm"), ("B200", "b200"))


def _example():
    spec = importlib.util.spec_from_file_location("scaling_what_if", ROOT / "examples" / "scaling_what_if.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scaling_what_if"] = mod
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Row:
    case: str
    family: str
    preset: str | None
    why_skipped: str
    cfg: dict
    tp: int
    pp: int
    dp: int
    cp: int
    vp: int
    mb: int
    gbs: int
    layers: int
    sp: bool
    zero1: bool
    fuse: str
    measured_s: float
    assumptions: list


def _int(r, key, default=1) -> int:
    return integer(r, key, default)


def parse(r: dict) -> Row:
    case = r["case_id"]
    hw = r["hardware"]
    preset = next((p for key, p in PRESETS if key in hw and "GB200" not in hw), None)
    why = ""
    if preset is None:
        why = f"no preset for {hw!r}"
    if not r["derived_step_time_s"].strip():
        why = why or "no step time in the source (global batch not given)"
    family = ("nemo" if case.startswith("train_nemo") else "llama3" if "llama3_405b" in case
              else "megatron" if case.startswith(("train_megatron", "train_mtnlg")) else "other")
    assumptions = []
    mb = _int(r, "micro_batch", 0)
    if not mb:
        mb = 1
        assumptions.append("micro batch 1 (not given)")
    vp = _int(r, "vp", 0)
    if not vp:
        vp = 1
        if family == "megatron" and _int(r, "pp") > 1:
            assumptions.append("1F1B (interleaving degree not given)")
    heads = _int(r, "heads")
    kv = _int(r, "kv_heads", heads)
    llama = "LLAMA" in r["workload"].upper() or "llama" in case
    d = _int(r, "hidden")
    cfg = dict(vocab_size=_int(r, "vocab"), d_model=d, n_heads=heads, n_kv_heads=kv if kv != heads else 0,
               d_ff=_int(r, "ffn"), seq=_int(r, "seq_len"),
               mlp="swiglu" if llama else "gelu", norm="rmsnorm" if llama else "layernorm",
               tied=not llama, learned_pos=not llama,
               remat=("recompute" in r["recompute"].lower() and "selective" not in r["recompute"].lower()),
               matmul_dtype="float8" if "FP8" in r["dtype"].upper() else "bfloat16")
    if cfg["d_model"] % heads:
        why = why or f"hidden {d} not divisible by {heads} heads"
    return Row(case=case, family=family, preset=preset, why_skipped=why, cfg=cfg, tp=_int(r, "tp"), pp=_int(r, "pp"),
               dp=_int(r, "dp"), cp=_int(r, "cp"), vp=vp, mb=mb, gbs=_int(r, "global_batch_seqs"),
               layers=_int(r, "layers"), sp=family in ("nemo", "llama3") and _int(r, "tp") > 1,
               zero1=family in ("nemo", "llama3"), fuse="fuse{strategy=aggressive}" if family in ("nemo", "llama3")
               else "fuse{strategy=xla}", measured_s=float(r["derived_step_time_s"] or 0.0), assumptions=assumptions)


def predict(row: Row, example) -> dict:
    target = hw_targets.load(row.preset)
    fn, args = example.program(**row.cfg, n_layers=BLOCKS_IN_PROGRAM, batch=row.mb * row.dp)
    prog = explorer.lower(fn, *args)
    axes = [(a, n) for a, n in (("data", row.dp), ("seq", row.cp), ("model", row.tp)) if n > 1]
    mesh = ".".join(f"{a}={n}" for a, n in axes) or "data=1"
    opts = {}
    if row.dp > 1:
        opts["dp"] = "data"
        opts["zero1"] = row.zero1
    if row.tp > 1:
        opts["tp"] = "model"
        opts["sp"] = row.sp
    if row.cp > 1:
        opts["cp"] = "seq"
    passes = [Shard(mesh=mesh, **opts), *pl.parse(row.fuse)]
    est = explorer.estimate(prog, target, passes)
    m = max(1, row.gbs // (row.dp * row.mb))
    sched = "interleaved" if row.vp > 1 else "1f1b"
    per_stage = row.dp * row.cp * row.tp
    pe = price_pipeline(est, target, row.pp, m, sched, row.vp, blocks=row.layers, stage_stride=per_stage,
                        job_devices=per_stage * row.pp)
    attn = sum(k.seconds for k in est.kernels if "/attn" in f"/{k.layer}") / est.seconds if est.seconds else 0.0
    return {"seconds": pe.seconds, "bubble": pe.bubble_fraction, "mem": pe.memory_per_device_bytes, "attn": attn,
            "mesh": mesh, "strategy": passes[0].describe(), "m": m, "sched": sched,
            "fits": pe.memory_per_device_bytes <= target.main_memory.capacity_bytes}


def main(argv: list[str] | None = None) -> None:
    from tabulate import tabulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cases_argument(ap)
    ap.add_argument("filters", nargs="*", help="case-id substrings to run")
    args = ap.parse_args(argv)
    example = _example()
    unread: list[Skipped] = []
    raw = read_rows(args.cases, ["train_step"])
    if args.filters:
        raw = [r for r in raw if any(s in r.get("case_id", "") for s in args.filters)]
    rows = list(parse_each(raw, parse, unread))
    out, skipped = [], [[u.case, u.reason] for u in unread]
    for row in rows:
        if row.why_skipped:
            skipped.append([row.case, row.why_skipped])
            continue
        t0 = time.time()
        try:
            p = predict(row, example)
        except Exception as exc:       # report, keep going: one bad row must not hide the others
            skipped.append([row.case, f"failed: {type(exc).__name__}: {exc}"])
            continue
        err = p["seconds"] / row.measured_s - 1.0
        out.append([row.case, row.preset, f"tp{row.tp} pp{row.pp} dp{row.dp}" + (f" cp{row.cp}" if row.cp > 1 else "")
                    + (f" vp{row.vp}" if row.vp > 1 else "") + f" mb{row.mb} m{p['m']}", p["strategy"],
                    f"{row.measured_s:.3g}", f"{p['seconds']:.3g}", f"{err:+.0%}", f"{p['bubble']:.0%}",
                    f"{p['attn']:.0%}",
                    f"{p['mem'] / 1e9:.0f}" + ("" if p["fits"] else "!"),
                    "; ".join(row.assumptions + [f"{BLOCKS_IN_PROGRAM} of {row.layers} blocks, scaled"]),
                    f"{time.time() - t0:.1f}"])
        print(f"{row.case}: measured {row.measured_s:.3g} s, predicted {p['seconds']:.3g} s ({err:+.0%})", flush=True)
    print()
    print(tabulate(out, headers=["case", "preset", "parallelism", "strategy", "measured s", "predicted s", "error",
                                 "bubble", "attn share", "GB/dev", "assumptions", "analysis s"]))
    if out:
        errs = [abs(float(r[6].rstrip("%")) / 100) for r in out]
        fam: dict[str, list[float]] = {}
        for r, e in zip(out, errs):
            key = r[0].split("_")[1]
            fam.setdefault(key, []).append(e)
        print("\nmean |error| by source: " + ", ".join(f"{k} {sum(v) / len(v):.0%} ({len(v)} rows)" for k, v in fam.items())
              + f"; all {sum(errs) / len(errs):.0%} ({len(errs)} rows)")
        print("GB/dev marked '!' exceeds the preset's memory per chip. 'attn share': the attention layers' share of the\n"
              "per-microbatch time; the fusion pass writes the S x S scores to memory (no FlashAttention-style tiling),\n"
              "which the 2021 Megatron runs also did and the NeMo / Llama 3 runs did not.")
    if skipped:
        print("\nskipped:")
        print(tabulate(skipped, headers=["case", "reason"]))


if __name__ == "__main__":
    main()
