"""Multi-chip training steps and inference steps: predicted vs measured, for every ``train_step`` and
``inference`` row of the shared validation cases, each under the plan the row describes.

For every row a JAX model of the same shape (``benchmarks/training_models.py``: GPT, Llama or MaxText's synthetic
decoder, the row's hidden size, heads, KV heads, head dimension, FFN, vocabulary, sequence) is lowered from
``ShapeDtypeStruct``s only, built with 2 of the model's identical blocks (the per-block time, state and activations
are scaled to the row's layer count by ``price_pipeline(blocks=...)``, said in every row), and priced with the
parallel plan the source used:

- Megatron-LM 2021 (Narayanan et al. Tables 1 and 2) and MT-NLG: one microbatch across the data-parallel replicas
  (``batch = micro_batch * dp``) on a mesh ``data=dp.model=tp`` (model innermost: NVLink), plain data parallelism,
  Megatron tensor parallelism, no sequence parallelism, pipeline parallelism over ``pp`` stages (outermost) with
  ``m = global_batch / (dp * micro_batch)`` microbatches, 1F1B; full recomputation as written (PyTorch's: each
  block's whole forward re-run in the backward pass, ``whole_block_recompute``); mixed-precision
  Adam (bf16 weights, f32 master weights and moments); attention scores written out (no FlashAttention in 2021),
  hidden and attention dropout 0.1 (Megatron-LM's defaults), fusion ``xla``;
- NeMo (Megatron-Core) and Llama 3: the same, plus sequence parallelism, the distributed optimizer (``zero1``;
  Llama 3's "FSDP-style DP" keeps parameters gathered across a step's microbatches, which is ZeRO-1/2's memory),
  context parallelism (``seq`` axis), interleaved 1F1B with the row's ``vp``, FP8 matmul operands where the row
  says FP8 (TransformerEngine), FlashAttention-style attention (fused into one kernel by ``fuse{aggressive}``);
- MaxText (TPU v4 / v5e / v5p / v6e, and GCP A3 H100 VMs): the whole global batch in one step (MaxText does not
  accumulate gradients: ``global batch = per_device_batch * chips``) on a mesh ``data=dp.fsdp=fsdp.model=tp``, FSDP
  (ZeRO-3) over ``fsdp``, data parallelism over ``data`` (between slices / VMs), tensor parallelism over ``model``;
  f32 weights with their AdamW state (MaxText's ``weight_dtype`` default), flash attention (Pallas / cuDNN),
  ``remat_policy`` as written (``minimal``: the projection matmuls' outputs saved; ``full``);
- inference (Pope et al. 2022 PaLM 540B decode on TPU v4): one decode step, int8 weights, weights split over all
  chips (tensor parallel over ``model``, the rest of the weight over ``x`` as FSDP-style 2-D weight-stationary
  layout), the KV cache of the row's context split over the batch on every chip (batch-sharded multiquery
  attention: the queries move to the cache, never the cache).

With sequence parallelism (and MaxText's tensor axis) the tokens are pinned sequence-split over the tensor axis,
so the residual stream is split from the embedding on (Megatron-SP scatters the embedding's output; MaxText shards
its activations over 'tensor'). A row that does not say which recomputation its run used and does not fit its chip
without any recomputes as many blocks per stage as it needs to fit (Megatron's block recompute; said in the row). Llama
3's interleaving degree, not published, is searched (the fastest that fits), and so is a micro batch size a row does
not give (1, 2 or 4; Narayanan et al. tune theirs by throughput, sec. 5.4.3). Where a row leaves the plan open, the plan priced is written in the row's ``assumptions`` (MaxText's defaults:
``ici_fsdp_parallelism=-1``, i.e. FSDP over every chip). Rows on hardware without a preset (GB200), rows without a
step time (FlashAttention-2 end-to-end table, MFU-only or throughput-only inference rows without a batch) and rows
that cannot be read are listed with the reason; a row that fails while priced is listed with the error. The run
never stops on one row.

The error is ``predicted / measured - 1`` on the per-step time (``derived_step_time_s``, the source's own FLOP
convention, see the reference README's caveats 1 and 2). For the Megatron-family rows the memory per device is
also compared with the closed forms of Korthikanti et al. 2022 (state ``16 P / (t p)`` bytes of mixed-precision
Adam as the program holds it, activations ``2 s b h`` per layer with full recomputation or ``34 s b h / t`` with
FlashAttention + sequence parallelism, ``L (1 + (p - 1) / (p v))`` layers' worth on the first stage under
(interleaved) 1F1B).

Run: ``python benchmarks/validate_training.py [--cases FILE] [--json OUT] [case-id-substring ...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import explorer  # noqa: E402
import hw_targets  # noqa: E402
from explorer.model.memory import in_flight, training_memory  # noqa: E402
from explorer.pricing.pipeline_parallel import _blocks_of_stage, price_pipeline  # noqa: E402
from passes.fusion import kernels_of  # noqa: E402
from passes import pipeline as pl  # noqa: E402
from passes.sharding import Shard  # noqa: E402
from reference_data import Skipped, add_cases_argument, integer, parse_each, read_rows  # noqa: E402
import training_models as tm  # noqa: E402

BLOCKS_IN_PROGRAM = 2
# hardware column substring -> preset (first match wins; GB200 has no preset)
PRESETS = (("GB200", None), ("B200", "b200"), ("H100", "h100_sxm"), ("A100", "a100_sxm"), ("TPU v4", "tpu_v4"),
           ("TPU v5e", "tpu_v5e"), ("TPU v5p", "tpu_v5p"), ("TPU v6e", "tpu_v6e"))
FAMILIES = ("megatron", "mtnlg", "nemo", "llama3", "maxtext_tpu", "maxtext_a3", "inference", "other")


def family_of(case: str) -> str:
    if case.startswith("train_megatron"):
        return "megatron"
    if case.startswith("train_mtnlg"):
        return "mtnlg"
    if case.startswith("train_nemo"):
        return "nemo"
    if case.startswith("train_llama3"):
        return "llama3"
    if case.startswith("train_maxtext_a3"):
        return "maxtext_a3"
    if case.startswith("train_maxtext"):
        return "maxtext_tpu"
    if case.startswith("infer"):
        return "inference"
    return "other"


@dataclass
class Plan:
    """The parallel plan a row is priced under."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    fsdp: int = 1
    cp: int = 1
    vp: int = 1
    micro_batch: int = 1
    microbatches: int = 1
    sp: bool = False
    zero1: bool = False
    schedule: str = "1f1b"

    @property
    def chips(self) -> int:
        return self.tp * self.pp * self.dp * self.fsdp * self.cp

    def label(self) -> str:
        parts = [f"{k}{getattr(self, k)}" for k in ("tp", "pp", "dp", "fsdp", "cp", "vp") if getattr(self, k) > 1]
        parts += [f"mb{self.micro_batch}", f"m{self.microbatches}"]
        if self.sp:
            parts.append("sp")
        if self.zero1:
            parts.append("zero1")
        if self.pp > 1:
            parts.append(self.schedule)
        return " ".join(parts)


@dataclass
class Row:
    case: str
    family: str
    kind: str                       # train | decode
    preset: str | None
    why_skipped: str
    model: tm.Model | None
    plan: Plan
    batch: int                      # sequences in the lowered program (one microbatch over the batch-split axes)
    layers: int
    measured_s: float
    context: int = 0
    assumptions: list = field(default_factory=list)
    recompute_given: bool = True     # the row says which recomputation the run used
    micro_batch_given: bool = True   # the row says its micro batch size


def _int(r, key, default=1) -> int:
    return integer(r, key, default)


def _preset(hw: str) -> str | None:
    return next((p for key, p in PRESETS if key in hw), None)


def parse(r: dict) -> Row:
    case, hw = r["case_id"], r["hardware"]
    family = family_of(case)
    preset = _preset(hw)
    why = "" if preset else f"no preset for {hw!r}"
    step = r.get("derived_step_time_s", "").strip()
    if not step:
        why = why or f"no step time in the source ({r.get('measured_metric', '')}: {r.get('measured_value', '')} " \
                     f"{r.get('measured_unit', '')}; no global batch to convert it)"
    assumptions: list[str] = []
    heads = _int(r, "heads")
    kv = _int(r, "kv_heads", heads)
    d = _int(r, "hidden")
    head_dim = _int(r, "head_dim", 0)
    llama = "llama" in (r["workload"] + case).lower() or "palm" in case.lower()
    maxtext = family.startswith("maxtext")
    synthetic = maxtext and not llama
    text = (r.get("recompute", "") + " ").lower()
    if "minimal" in text:
        remat = "minimal"
    elif "selective" in text:
        remat = "selective"
    elif "recompute" in text or "remat_policy=full" in text:
        remat = "full"
    else:
        remat = "none"
    if family in ("megatron", "mtnlg"):
        assumptions.append("hidden and attention dropout 0.1 (Megatron-LM's defaults; the source gives none)")
    if family == "mtnlg" and remat == "none":
        # the row gives none; MT-NLG ran on the Megatron-LM code base of the 2021 runs, which recomputed every layer
        remat = "full"
        assumptions.append("full recompute (the row gives none; assumption: as the Megatron-LM 2021 runs on the same "
                           "code base)")
    flash = family in ("nemo", "llama3") or maxtext
    fp8 = "FP8" in r["dtype"].upper()
    kind = "decode" if family == "inference" and "decode" in r["workload"].lower() else "train"
    if family == "inference" and kind != "decode" and not why:
        why = "not a decode step (prefill / offline throughput rows need a batch the source does not give)"
    model = None
    dims = dict(vocab=_int(r, "vocab"), d_model=d, n_heads=heads, d_ff=_int(r, "ffn"), seq=_int(r, "seq_len"))
    try:      # a column that is not a number raised above (parse_each lists the row); a shape Model refuses: here
        model = tm.Model(**dims, n_layers=BLOCKS_IN_PROGRAM, n_kv_heads=kv if kv != heads else 0,
                         head_dim=head_dim if head_dim and head_dim * heads != d else 0,
                         mlp="relu" if synthetic else ("swiglu" if llama else "gelu"),
                         norm="rmsnorm" if (llama or synthetic) else "layernorm",
                         parallel_block=synthetic or "palm" in case.lower(),
                         tied=(not llama) or "palm" in case.lower(), learned_pos=not (llama or synthetic),
                         attention="flash" if flash else "plain", remat=remat if kind == "train" else "none",
                         param_dtype="float32" if maxtext else "bfloat16",
                         matmul_dtype="float8" if fp8 else "bfloat16",
                         dropout=0.1 if family in ("megatron", "mtnlg") else 0.0,
                         # Megatron-LM's code base (the 2021 runs, MT-NLG, NeMo) checkpoints a block as PyTorch does
                         whole_block_recompute=family in ("megatron", "mtnlg", "nemo"),
                         weight_dtype="int8" if "int8" in r["dtype"].lower() else "")
    except ValueError as exc:
        why = why or f"model not buildable: {exc}"
    plan = Plan()
    batch = 1
    mb_given = True          # MaxText and decode rows: the batch is the row's own
    gbs = _int(r, "global_batch_seqs", 0)
    chips = _int(r, "num_chips", 0)
    if maxtext:
        plan.tp, plan.dp, plan.fsdp = _int(r, "tp", 1), _int(r, "dp", 1), _int(r, "fsdp", 1)
        if "fsdp64 x tp4" in hw:
            plan.fsdp, plan.tp = 64, 4
            assumptions.append("plan from the hardware column: ici fsdp64 x tp4 (dcn_fsdp 2 not priced: 256 chips, "
                               "reference caveat 6)")
        elif plan.chips == 1 and chips > 1:
            plan.fsdp = chips
            assumptions.append(f"plan not given: MaxText's default ici_fsdp_parallelism=-1 (FSDP over all {chips})")
        if plan.chips != chips and chips:
            why = why or f"plan {plan.label()} covers {plan.chips} chips, the row {chips}"
        batch = gbs or _int(r, "per_device_batch", 1) * plan.chips
        plan.micro_batch, plan.microbatches = batch, 1
        if plan.tp > 1:
            plan.sp = True
            assumptions.append("residual stream split over tp (MaxText's activation_embed -> tensor rule; priced as "
                               "Megatron SP)")
        assumptions.append("f32 weights + AdamW (MaxText weight_dtype default)")
        if family == "maxtext_a3":
            assumptions.append("A3 VMs priced on the h100_sxm preset's networks (GPUDirect-TCPX between VMs is "
                               "slower than the preset's scale-out)")
    elif kind == "decode":
        plan.tp, plan.fsdp = 16, max(1, chips // 16)
        batch = gbs or 1
        assumptions.append(f"weights 2-D over {chips} chips: model16 x x{plan.fsdp}, pinned (Pope et al.'s 2-D "
                           "weight-stationary layout; activations moved, never weights); KV cache split over the "
                           "batch on every chip (their batch-sharded multiquery attention)")
    else:
        plan.tp, plan.pp, plan.dp, plan.cp = _int(r, "tp"), _int(r, "pp"), _int(r, "dp"), _int(r, "cp")
        mb = _int(r, "micro_batch", 0)
        mb_given = bool(mb)
        if not mb:
            mb = 1
            assumptions.append("micro batch 1 (not given)")
        vp = _int(r, "vp", 0)
        if not vp:
            vp = 1
            if plan.pp > 1:
                assumptions.append("1F1B (interleaving degree not given)")
        plan.vp, plan.micro_batch = vp, mb
        plan.sp = family in ("nemo", "llama3") and plan.tp > 1
        plan.zero1 = family in ("nemo", "llama3") and plan.dp > 1
        plan.schedule = "interleaved" if vp > 1 and plan.pp > 1 else "1f1b"
        plan.microbatches = max(1, gbs // (plan.dp * mb)) if gbs else 1
        batch = mb * plan.dp
        if chips and plan.chips != chips:
            assumptions.append(f"plan covers {plan.chips} chips, the row says {chips}")
    if model is not None and plan.cp > 1 and model.seq % plan.cp:
        why = why or f"sequence {model.seq} not divisible by cp {plan.cp}"
    recompute_given = bool(r.get("recompute", "").strip()) and remat != "none"
    if family == "llama3" and remat == "none" and _int(r, "seq_len", 0) <= 8192:
        recompute_given = True
        assumptions.append("no activation checkpointing (Dubey et al. 2024, sec. 3.3.2: 8K-token sequences "
                           "pre-trained without it)")
    measured = float(step) if step else 0.0
    if kind == "decode":
        plan.micro_batch = batch
    return Row(case=case, family=family, kind=kind, preset=preset, why_skipped=why, model=model, plan=plan,
               batch=batch, layers=_int(r, "layers"), measured_s=measured, context=_int(r, "seq_len", 0),
               assumptions=assumptions, recompute_given=recompute_given,
               micro_batch_given=kind != "train" or mb_given)


def _shard(row: Row) -> Shard:
    p = row.plan
    axes = [(a, n) for a, n in (("data", p.dp), ("x" if row.kind == "decode" else "fsdp", p.fsdp), ("seq", p.cp),
                                ("model", p.tp)) if n > 1]
    mesh = ".".join(f"{a}={n}" for a, n in axes)
    if not mesh:
        return Shard(mesh="data=1")
    opts: dict = {}
    if p.dp > 1:
        opts["dp"] = "data"
        opts["zero1"] = p.zero1
    if p.fsdp > 1:
        opts["fsdp"] = "x" if row.kind == "decode" else "fsdp"
    if p.tp > 1:
        opts["tp"] = "model"
        opts["sp"] = p.sp
    if p.cp > 1:
        opts["cp"] = "seq"
    if p.sp:
        # the residual stream split over the tensor axis from the embedding on (the tokens' sequence split), so the
        # saved block inputs are 1/tp per device: Megatron-SP scatters the embedding's output into the
        # sequence-parallel region, MaxText shards its activations over 'tensor'
        batch = "+".join(a for a, n in (("data", p.dp), ("fsdp", p.fsdp)) if n > 1) or "_"
        seq = "seq+model" if p.cp > 1 else "model"
        opts["pins"] = f"*tokens*={batch}:{seq};*targets*={batch}:{seq}"
    if row.kind == "decode":
        # Pope et al.'s 2-D weight-stationary layout: every weight split over both axes (d_model over x, heads /
        # FFN / vocab over model) and pinned, so the partitioner moves the (small) activations, never a weight
        opts.pop("fsdp", None)
        opts["data"] = "tokens"
        opts["pins"] = ";".join((
            "*q_proj*kernel*=x:model:_", "*k_proj*kernel*=x:_:_", "*v_proj*kernel*=x:_:_",
            "*o_proj*kernel*=model:_:x", "*gate_proj*kernel*=x:model", "*up_proj*kernel*=x:model",
            "*down_proj*kernel*=model:x", "*wte*embedding*=model:x"))
        if row.batch % (p.tp * p.fsdp) == 0:
            # Pope et al.'s batch-sharded multiquery attention: the (one-head) KV cache split over the batch on every
            # chip, so each reads its own sequences' keys and values once (the queries move, not the cache)
            opts["pins"] += ";*cache*=x+model:_:_:_"
    return Shard(mesh=mesh, **opts)


def closed_form_memory(row: Row) -> dict | None:
    """Korthikanti et al. 2022 closed forms for the first pipeline stage of a Megatron-style GPT row (bytes per
    device), with the state at the program's 16 bytes per parameter (bf16 weight 2 + bf16 gradient 2 + f32 master
    weight and two moments 12, the 12 divided over dp by the distributed optimizer; Megatron's fp32 gradient
    accumulation buffer would make it 18). Activations per layer: ``s b h (10 + 24 / t) + 5 a s^2 b / t`` with
    tensor parallelism, ``34 s b h / t + 5 a s^2 b / t`` with sequence parallelism too, ``2 s b h`` with full
    recomputation; without dropout the two ``s b h`` dropout masks and the attention dropout's mask and output go:
    ``s b h (8 + 24 / t) + 2 a s^2 b / t``. Only GPT rows with bf16 matmuls (the layer the paper counts): the
    Megatron-LM and MT-NLG rows."""
    m, p = row.model, row.plan
    if (m is None or row.kind != "train" or row.family not in ("megatron", "mtnlg") or m.mlp != "gelu"
            or m.matmul_dtype != "bfloat16" or m.param_dtype != "bfloat16"):
        return None
    s, b, h, a, L = m.seq // p.cp, p.micro_batch, m.d_model, m.n_heads, row.layers
    t = p.tp
    per_block = tm.parameters(m, 1) - tm.parameters(m, 0)
    embed = tm.parameters(m, 0)
    stage_params = (per_block * L / p.pp + embed) / t           # first stage: its blocks and the embedding
    bpp = 4 + 12 / (p.dp if p.zero1 else 1)
    drop = m.dropout > 0
    if m.remat == "full":
        per_layer = 2 * s * b * h / (t if p.sp else 1)
    elif p.sp:
        per_layer = s * b * h * (34 if drop else 32) / t + (5 if drop else 2) * a * s * s * b / t
    else:
        per_layer = s * b * h * ((10 if drop else 8) + 24 / t) + (5 if drop else 2) * a * s * s * b / t
    held = L                                                     # 1F1B: p microbatches of L / p layers
    if p.pp > 1 and p.schedule == "interleaved":
        held = L * (1 + (p.pp - 1) / (p.pp * p.vp))
    if p.pp > 1:
        held = min(held, L / p.pp * p.microbatches)
    return {"state": stage_params * bpp, "activations": per_layer * held, "bytes_per_param": bpp,
            "params_on_stage": stage_params}


# families whose source ran the interleaved 1F1B schedule without publishing its degree (Dubey et al. 2024, "The
# Llama 3 Herd of Models", section 3.3.2 and Figure 6)
INTERLEAVED_DEGREE_OPEN = ("llama3",)


def predict(row: Row) -> dict:
    """Price the row. A row that does not say which recomputation its run used and does not fit its chip without
    any recomputes as many of each stage's blocks as it needs to fit (Megatron's ``--recompute-method block
    --recompute-num-layers N``; all of them when even that does not fit): priced without and with full
    recomputation, and both its time and its memory taken linearly in the blocks recomputed (each recomputed block
    adds its forward pass to every microbatch's backward pass, and saves its input alone instead of its
    activations), said in its assumptions."""
    out = _price_open_plan(row)
    if row.kind == "train" and not out["fits"] and not row.recompute_given and row.model.remat == "none":
        full = dataclasses.replace(row, model=dataclasses.replace(row.model, remat="full"))
        again = _price_open_plan(full)
        cap, none_b, full_b = out["capacity_bytes"], out["memory_per_device_bytes"], again["memory_per_device_bytes"]
        per_stage = -(-row.layers // max(1, full.plan.pp))
        n = per_stage
        if full.plan == row.plan and full_b < none_b:
            n = min(per_stage, math.ceil(per_stage * (none_b - cap) / (none_b - full_b)))
        if n >= per_stage:
            note = f"recompute not given; none needs {none_b / 1e9:.0f} GB: full recompute priced"
            row.model, row.plan, row.assumptions = full.model, full.plan, full.assumptions + [note]
            return again
        f = n / per_stage
        mixed = dict(out)
        for key in ("predicted_s", "per_microbatch_s", "step_extra_s", "memory_per_device_bytes"):
            mixed[key] = out[key] + f * (again[key] - out[key])
        mixed["fits"] = mixed["memory_per_device_bytes"] <= cap
        mixed["memory"] = {k: v + f * (again["memory"].get(k, 0.0) - v) for k, v in out["memory"].items()}
        mixed["recomputed_blocks_per_stage"] = n
        for key in ("closed_form", "first_stage", "state_vs_closed_form", "activations_vs_closed_form"):
            mixed.pop(key, None)      # the closed forms are for no or full recomputation
        row.assumptions = row.assumptions + [
            f"recompute not given; none needs {none_b / 1e9:.0f} GB: {n} of {per_stage} blocks per stage recomputed "
            f"(block recompute; time and memory interpolated between none and full)"]
        return mixed
    return out


MICRO_BATCHES_TRIED = (1, 2, 4)


def _price_open_plan(row: Row) -> dict:
    """``_predict``, after searching what the row leaves open, the choice written into the row's plan and
    assumptions: a micro batch size the row does not give, among ``MICRO_BATCHES_TRIED`` that leave at least one
    microbatch per stage (a run's authors pick theirs by throughput: Narayanan et al. 2021, sec. 5.4.3), and for
    a run that used interleaved 1F1B of an unpublished degree, every degree that divides the layers a stage holds
    (1 = plain 1F1B); each time the fastest that fits the chip (else the one that needs the least memory)."""
    p = row.plan
    per_replica = p.micro_batch * p.microbatches
    sizes = [b for b in MICRO_BATCHES_TRIED if per_replica % b == 0 and per_replica // b >= p.pp
             and not (p.schedule == "interleaved" and (per_replica // b) % p.pp)]
    if row.micro_batch_given or row.kind != "train" or len(sizes) < 2:
        return _price_interleaving(row)
    tried = []
    for b in sizes:
        r = dataclasses.replace(row, plan=dataclasses.replace(p, micro_batch=b, microbatches=per_replica // b),
                                batch=b * p.dp, assumptions=list(row.assumptions))
        tried.append((r, _price_interleaving(r)))
    (best, out), listing, why = _fastest_that_fits(tried, lambda r: f"mb{r.plan.micro_batch}")
    row.plan, row.batch = best.plan, best.batch
    row.assumptions = [a for a in best.assumptions if a != "micro batch 1 (not given)"] + [
        f"micro batch not given: searched ({listing}), mb{best.plan.micro_batch} priced ({why})"]
    return out


def _fastest_that_fits(tried: list, label) -> tuple[tuple, str, str]:
    """Of ``tried`` (choice, priced row) pairs, the fastest that fits the chip, else the one that needs the least
    memory; with the listing of every choice (``label(choice)``, time, memory) and which of the two it was."""
    fitting = [t for t in tried if t[1]["fits"]]
    pick = min(fitting, key=lambda t: t[1]["predicted_s"]) if fitting else \
        min(tried, key=lambda t: (t[1]["memory_per_device_bytes"], t[1]["predicted_s"]))
    listing = ", ".join(f"{label(c)} {o['predicted_s']:.3g} s {o['memory_per_device_bytes'] / 1e9:.0f} GB"
                        for c, o in tried)
    return pick, listing, "fastest that fits" if fitting else "none fits: the least memory"


def _price_interleaving(row: Row) -> dict:
    """``_predict``, with an unpublished interleaving degree searched (see ``_price_open_plan``)."""
    p = row.plan
    if row.family not in INTERLEAVED_DEGREE_OPEN or p.pp <= 1 or p.vp > 1 or p.microbatches % p.pp:
        return _predict(row)
    per_stage = -(-row.layers // p.pp)
    tried = []
    for v in [d for d in range(1, per_stage + 1) if per_stage % d == 0]:
        plan = dataclasses.replace(p, vp=v, schedule="interleaved" if v > 1 else "1f1b")
        tried.append((plan, _predict(dataclasses.replace(row, plan=plan))))
    (plan, out), listing, why = _fastest_that_fits(tried, lambda q: f"v{q.vp}")
    row.plan = plan
    row.assumptions = [a for a in row.assumptions
                       if not a.startswith(("1F1B (interleaving", "interleaved 1F1B of an unpublished"))] + [
        f"interleaved 1F1B of an unpublished degree (Dubey et al. 2024, sec. 3.3.2): searched ({listing}), "
        f"v{plan.vp} priced ({why})"]
    return out


def _predict(row: Row) -> dict:
    target = hw_targets.load(row.preset)
    if row.kind == "decode":
        fn, args = tm.decode_program(row.model, row.batch, row.context)
        fuse = "fuse{strategy=xla}"
    else:
        fn, args = tm.train_program(row.model, row.batch)
        fuse = "fuse{strategy=aggressive}" if row.model.attention == "flash" else "fuse{strategy=xla}"
    prog = explorer.lower(fn, *args)
    shard = _shard(row)
    passes = [shard, *pl.parse(fuse)]
    est = explorer.estimate(prog, target, passes)
    p = row.plan
    per_stage = p.dp * p.fsdp * p.cp * p.tp
    v = p.vp if p.schedule == "interleaved" else 1
    pe = price_pipeline(est, target, p.pp, p.microbatches, p.schedule, v,
                        blocks=row.layers, stage_stride=per_stage, job_devices=per_stage * p.pp,
                        step_axes=("data", "fsdp") if row.family.startswith("maxtext") else ("data",))
    mem = pe.memory
    out = {"predicted_s": pe.seconds, "bubble_fraction": pe.bubble_fraction, "step_extra_s": pe.step_extra_s,
           "per_microbatch_s": max(f + b for f, b in zip(pe.stage_forward_s, pe.stage_backward_s)),
           "memory_per_device_bytes": pe.memory_per_device_bytes,
           "memory": dict(mem.rows()) if mem is not None else {},
           "capacity_bytes": target.main_memory.capacity_bytes,
           "fits": pe.memory_per_device_bytes <= target.main_memory.capacity_bytes,
           "pipeline": pl.to_text(passes), "strategy": shard.describe(), "notes": list(pe.notes)}
    cf = closed_form_memory(row)
    if cf is not None and mem is not None:
        # the first stage as the closed forms count it: its blocks' state and the embedding, and the layer
        # activations of the microbatches it holds (the embedding / head sides' own activations left out)
        tmem = training_memory(est._program, est._plan, kernels_of(est._program, est._plan))
        blocks0 = len(_blocks_of_stage(0, p.pp, v, row.layers))
        s0 = tmem.stage(blocks0, first=True, last=p.pp == 1, in_flight=in_flight(p.schedule, p.pp, 0, p.microbatches, v))
        layer_acts = tmem.activations.per_block * blocks0 * in_flight(p.schedule, p.pp, 0, p.microbatches, v)
        state0 = s0.parameters + s0.gradients + s0.optimizer + s0.weight_copies
        if p.pp == 1:        # one stage holds the head too: the closed form counts the embedding once (tied)
            state0 = s0.state - (tmem.parameters.last + tmem.gradients.last + tmem.optimizer.last
                                 + tmem.weight_copies.last)
        out["closed_form"] = cf
        out["first_stage"] = {"state": state0, "layer_activations": layer_acts, "total": s0.total}
        out["state_vs_closed_form"] = state0 / cf["state"] - 1.0
        out["activations_vs_closed_form"] = layer_acts / cf["activations"] - 1.0
    return out


def _summary(results: list[dict]) -> dict:
    fam: dict[str, list[float]] = {}
    for r in results:
        fam.setdefault(r["family"], []).append(abs(r["error"]))
    out = {k: {"rows": len(v), "mean_abs_error": sum(v) / len(v), "max_abs_error": max(v)} for k, v in fam.items()}
    mems = [r for r in results if "state_vs_closed_form" in r]
    if mems:
        out["memory_vs_closed_form"] = {
            "rows": len(mems),
            "max_abs_state": max(abs(r["state_vs_closed_form"]) for r in mems),
            "max_abs_activations": max(abs(r["activations_vs_closed_form"]) for r in mems)}
    out["fits"] = {"rows": len(results), "fit": sum(1 for r in results if r["fits"])}
    return out


def main(argv: list[str] | None = None) -> dict:
    from tabulate import tabulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cases_argument(ap)
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="write per-row results and the summary")
    ap.add_argument("filters", nargs="*", help="case-id substrings to run")
    args = ap.parse_args(argv)
    unread: list[Skipped] = []
    raw = read_rows(args.cases, ["train_step", "inference"])
    if args.filters:
        raw = [r for r in raw if any(s in r.get("case_id", "") for s in args.filters)]
    rows = list(parse_each(raw, parse, unread))
    results: list[dict] = []
    skipped = [{"case": u.case, "reason": u.reason} for u in unread]
    table = []
    for row in rows:
        if row.why_skipped:
            skipped.append({"case": row.case, "reason": row.why_skipped})
            continue
        t0 = time.time()
        try:
            p = predict(row)
        except Exception as exc:       # report, keep going: one bad row must not hide the others
            skipped.append({"case": row.case, "reason": f"failed: {type(exc).__name__}: {exc}"})
            print(f"{row.case}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        err = p["predicted_s"] / row.measured_s - 1.0
        res = {"case": row.case, "family": row.family, "preset": row.preset, "kind": row.kind,
               "measured_s": row.measured_s, "error": err, "plan": asdict(row.plan), "plan_label": row.plan.label(),
               "layers": row.layers, "blocks_in_program": BLOCKS_IN_PROGRAM, "assumptions": row.assumptions,
               "model": asdict(row.model), "analysis_s": time.time() - t0, **p}
        results.append(res)
        cf = (f"{p['state_vs_closed_form']:+.0%}/{p['activations_vs_closed_form']:+.0%}"
              if "state_vs_closed_form" in p else "")
        table.append([row.case, row.preset, row.plan.label(), f"{row.measured_s:.3g}", f"{p['predicted_s']:.3g}",
                      f"{err:+.0%}", f"{p['bubble_fraction']:.0%}",
                      f"{p['memory_per_device_bytes'] / 1e9:.1f}" + ("" if p["fits"] else "!"), cf,
                      "; ".join(row.assumptions), f"{res['analysis_s']:.0f}"])
        print(f"{row.case}: measured {row.measured_s:.3g} s, predicted {p['predicted_s']:.3g} s ({err:+.0%}), "
              f"{p['memory_per_device_bytes'] / 1e9:.1f} GB/device", flush=True)
    print()
    print(tabulate(table, headers=["case", "preset", "plan", "measured s", "predicted s", "error", "bubble", "GB/dev",
                                   "state/acts vs closed", "assumptions", "s"]))
    summary = _summary(results) if results else {}
    if results:
        print("\nmean |error| (max) by family: " + ", ".join(
            f"{k} {v['mean_abs_error']:.1%} ({v['max_abs_error']:.0%}, {v['rows']} rows)"
            for k, v in summary.items() if "mean_abs_error" in v))
        if "memory_vs_closed_form" in summary:
            m = summary["memory_vs_closed_form"]
            print(f"memory vs Korthikanti closed forms ({m['rows']} rows): state max |dev| {m['max_abs_state']:.1%}, "
                  f"activations max |dev| {m['max_abs_activations']:.1%}")
        print(f"fit their chip's memory: {summary['fits']['fit']} of {summary['fits']['rows']} "
              "(GB/dev marked '!' exceeds it)")
    if skipped:
        print("\nnot priced:")
        print(tabulate([[s["case"], s["reason"]] for s in skipped], headers=["case", "reason"]))
    doc = {"blocks_in_program": BLOCKS_IN_PROGRAM, "rows": results, "not_priced": skipped, "summary": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return doc


if __name__ == "__main__":
    main()
