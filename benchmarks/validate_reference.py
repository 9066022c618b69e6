"""Estimates vs published measurements on real accelerators (``../shared/reference/validation_cases.csv``).

For every case the tool can express on one chip (GEMMs, attention kernels, elementwise / norm ops,
HBM bandwidth) a JAX program of that shape is lowered from ShapeDtypeStructs only, estimated on the
matching preset, and compared with the measured value converted to seconds, honouring each source's
conventions (reference README caveats):

- throughput rows are turned into time with the source's own FLOP / element / byte convention
  (GEMM 2MNK; FlashAttention forward 4*B*H*S^2*D, non-causal; elements per second; STREAM bytes);
- LLMCompass times are wall clock around one PyTorch op plus ``cuda.synchronize`` (median): they
  include the launch + sync cost, for which LLMCompass itself adds 21 us to its A100 simulation;
  the prediction is the estimate's kernel body plus that 21 us (``WALL_CLOCK_OVERHEAD_S``);
- kernel-timed rows (cuBLASLt / hipBLASLt loops with thousands of warm-ups, mamf-finder, tritonbench,
  BabelStream) time launches of one kernel after another on one stream, the host issuing each launch
  while the previous kernel runs: the prediction is the steady state of that loop, the larger of the
  host's ``launch_overhead_s`` per kernel and the kernel on the chip (its body plus the preset's
  ``kernel_gap_s``: the estimate's step time without its one launch);
- FP8 peaks are dense (the CSV halved sparse headline figures); MAMF rows are the best shape of a
  sweep (an upper envelope), reported apart from typical shapes;
- PyTorch's softmax / layer norm / GELU and FlashAttention run as one fused kernel each, so those
  programs are priced with ``fuse{strategy=aggressive}``; GEMMs with ``fuse{strategy=xla}``.

Collectives and multi-chip training steps need the sharding pass: they are validated by
``benchmarks/validate_collectives.py`` and ``benchmarks/validate_training.py`` and listed here as
skipped with that reason. A row that cannot be read (a shape written another way, a missing column) is
skipped and listed with the reason; it never stops the run.

Efficiency proposals: for each preset, the ``efficiency.matrix`` that would make the model match the
large compute-bound GEMMs measured on it (median over the cases, ids printed), and
``efficiency.memory`` from the STREAM copy; the preset TOMLs are not edited here.

    python benchmarks/validate_reference.py
    python benchmarks/validate_reference.py --no-save --cases my_cases.csv
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import re
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import explorer  # noqa: E402
import hw_targets  # noqa: E402
from reference_data import add_cases_argument, attention_dims, default_cases, read_rows  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
WALL_CLOCK_OVERHEAD_S = 2.1e-5   # LLMCompass's launch + sync overhead for A100 wall-clock timings (case notes)
FUSED_PIPELINE = "fuse{strategy=aggressive}"
GEMM_PIPELINE = "fuse{strategy=xla}"
S = jax.ShapeDtypeStruct

# hardware column -> preset; checked in order (no-preset chips first: "GB200" contains "B200")
NO_PRESET = ("GB200", "GH200", "A100 PCIe", "MI325X", "Gaudi 2")
PRESET_OF = (("A100", "a100_sxm"), ("H100", "h100_sxm"), ("H200", "h200"), ("MI300X", "mi300x"),
             ("B200", "b200"), ("Gaudi 3", "gaudi3"), ("TPU v4", "tpu_v4"))


@dataclass(frozen=True)
class Case:
    case_id: str
    category: str
    preset: str
    convention: str            # "wall" (body + WALL_CLOCK_OVERHEAD_S) or "kernel" (the estimate: body + launch gap)
    pipeline: str
    measured_s: float
    build: Callable[[], tuple[Callable, tuple]]
    note: str = ""
    envelope: bool = False     # best shape of a sweep (MAMF)
    source: str = ""           # short name of the publishing source


@dataclass(frozen=True)
class Result:
    case: Case
    predicted_s: float
    body_s: float
    bound: str
    kernels: int
    efficiency_matrix: float
    efficiency_memory: float

    @property
    def ratio(self) -> float:
        return self.predicted_s / self.case.measured_s


@dataclass
class Plan:
    cases: list[Case] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)   # (case id, category, reason)


# -- reading the CSV -----------------------------------------------------------------------------------
def preset_for(hardware: str) -> str | None:
    if any(tag in hardware for tag in NO_PRESET):
        return None
    for tag, preset in PRESET_OF:
        if tag in hardware:
            return preset
    return None


def gemm_shape(text: str) -> tuple[int, int, int] | None:
    """'M=64,N=12288,K=12288' or 'MxNxK=14336x15360x2048' -> (m, n, k)."""
    m = re.search(r"M=(\d+),\s*N=(\d+),\s*K=(\d+)", text)
    if m:
        return int(m[1]), int(m[2]), int(m[3])
    m = re.search(r"MxNxK=(\d+)x(\d+)x(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def operand_dtype(text: str):
    t = text.lower()
    if "fp8" in t:
        return jnp.float8_e4m3fn
    if "bf16" in t:
        return jnp.bfloat16
    if "fp16" in t:
        return jnp.float16
    return None


def matmul_program(m: int, n: int, k: int, dtype) -> Callable[[], tuple[Callable, tuple]]:
    # FP8 GEMMs write bf16 (cuBLASLt's usual FP8 output type; an assumption where the source does not say)
    out = jnp.bfloat16 if dtype == jnp.float8_e4m3fn else dtype
    return lambda: ((lambda a, b: jnp.matmul(a, b, preferred_element_type=out)), (S((m, k), dtype), S((k, n), dtype)))


def attention_program(b: int, h: int, s: int, d: int, dtype=jnp.bfloat16) -> Callable[[], tuple[Callable, tuple]]:
    def fn(q, k, v):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(d)
        p = jax.nn.softmax(logits, axis=-1).astype(dtype)        # softmax in f32, as FlashAttention
        return jnp.einsum("bhqk,bkhd->bqhd", p, v)
    return lambda: (fn, tuple(S((b, s, h, d), dtype) for _ in range(3)))


def elementwise_program(op: str, shape: tuple[int, ...], dtype=jnp.float16) -> Callable[[], tuple[Callable, tuple]]:
    if op == "softmax":
        return lambda: ((lambda x: jax.nn.softmax(x, axis=-1)), (S(shape, dtype),))
    if op == "layernorm":
        def layernorm(x, g, b):   # torch.nn.LayerNorm: f32 statistics, affine
            xf = x.astype(jnp.float32)
            mu = jnp.mean(xf, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
            return ((xf - mu) * jax.lax.rsqrt(var + 1e-5) * g + b).astype(x.dtype)
        return lambda: (layernorm, (S(shape, dtype), S(shape[-1:], jnp.float32), S(shape[-1:], jnp.float32)))
    if op == "gelu":   # torch's default GELU is the exact erf form
        return lambda: ((lambda x: jax.nn.gelu(x, approximate=False)), (S(shape, dtype),))
    raise ValueError(op)


def stream_program(nbytes: int) -> Callable[[], tuple[Callable, tuple]]:
    # BabelStream's copy moves one array in and one out; a scale (its "mul" kernel) moves the same bytes and,
    # unlike an identity, is a kernel XLA keeps
    n = nbytes // 4
    return lambda: ((lambda a: a * 0.4), (S((n,), jnp.float32),))


BABELSTREAM_ARRAY_BYTES = 2 ** 25 * 8   # BabelStream default: 2^25 doubles per array (assumption: default size)


def source_name(text: str) -> str:
    for tag, name in (("LLMCompass", "LLMCompass"), ("AI-benchmarking-guide", "Azure guide"),
                      ("ml-engineering", "stas00 MAMF"), ("pytorch/benchmark", "tritonbench"),
                      ("techcommunity.microsoft.com", "Azure blog")):
        if tag in text:
            return name
    return text.split()[0] if text else "?"


def plan_cases(rows: list[dict]) -> Plan:
    plan = Plan()
    for r in rows:
        before = len(plan.cases)
        try:
            _plan_row(r, plan)
        except Exception as exc:   # a row that cannot be read is listed with the reason, never fatal
            del plan.cases[before:]
            plan.skipped.append((r.get("case_id", "?"), r.get("category", "?"),
                                 f"cannot read the row: {type(exc).__name__}: {exc}"))
    return plan


def _plan_row(r: dict, plan: Plan) -> None:
    cid, cat, hw = r["case_id"], r["category"], r["hardware"]
    before = len(plan.cases)
    preset = preset_for(hw)
    value = float(r["measured_value"]) if r["measured_value"] else float("nan")
    unit, shape_text = r["measured_unit"], r["op_shape_or_message"]
    if cat in ("collective", "train_step", "inference"):
        if cat == "collective":
            plan.skipped.append((cid, cat, "multi-chip: validated in benchmarks/validate_collectives.py"))
        elif cat == "train_step":
            plan.skipped.append((cid, cat, "multi-chip: validated in benchmarks/validate_training.py"))
        else:
            plan.skipped.append((cid, cat, f"{r['num_chips']}-chip partitioned inference; batch/layout not "
                                           "transcribed (Pope Table 2) or needs the MLPerf harness"))
        return
    if preset is None:
        plan.skipped.append((cid, cat, f"no preset for {hw!r}"))
        return
    if cat == "gemm":
        shape, dtype = gemm_shape(shape_text), operand_dtype(r["dtype"])
        if shape is None or dtype is None:
            plan.skipped.append((cid, cat, "shape not stated"))
            return
        m, n, k = shape
        if unit == "ms":
            seconds, conv = value * 1e-3, "wall"
        else:   # TFLOP/s in the 2MNK convention
            seconds, conv = 2.0 * m * n * k / (value * 1e12), "kernel"
        envelope = "MAMF" in r["measured_metric"]
        plan.cases.append(Case(cid, cat, preset, conv, GEMM_PIPELINE, seconds, matmul_program(m, n, k, dtype),
                               note=f"{m}x{n}x{k} {r['dtype'].split()[0]}", envelope=envelope))
    elif cat == "attention_kernel":
        b, h, s, d = attention_dims(r)
        flops = 4.0 * b * h * s * s * d   # forward, non-causal: QK^T and PV, 2 flops per FMA
        plan.cases.append(Case(cid, cat, preset, "kernel", FUSED_PIPELINE, flops / (value * 1e12),
                               attention_program(b, h, s, d), note=f"B{b} H{h} S{s} D{d} {r['framework']}"))
    elif cat == "elementwise":
        op = next((o for o in ("softmax", "layernorm", "gelu") if o in cid.lower() or o in r["workload"].lower()),
                  None)
        if op is None:
            plan.skipped.append((cid, cat, f"elementwise op not one of softmax, layernorm, gelu: {r['workload']!r}"))
            return
        if "[" in shape_text:
            shape = tuple(int(x) for x in re.findall(r"\d+", shape_text))
        else:
            shape = (int(re.match(r"\d+", shape_text)[0]),)
        elements = math.prod(shape)
        seconds = elements / (value * 1e9)   # G elements / s
        plan.cases.append(Case(cid, cat, preset, "wall", FUSED_PIPELINE, seconds, elementwise_program(op, shape),
                               note=f"{op} {'x'.join(map(str, shape))} fp16"))
    elif cat == "memory_bw":
        seconds = 2 * BABELSTREAM_ARRAY_BYTES / (value * 1e12)
        plan.cases.append(Case(cid, cat, preset, "kernel", GEMM_PIPELINE, seconds,
                               stream_program(BABELSTREAM_ARRAY_BYTES), note="copy, 2 x 256 MiB"))
    else:
        plan.skipped.append((cid, cat, f"category {cat!r} not handled"))
    if len(plan.cases) > before:
        plan.cases[-1] = replace(plan.cases[-1], source=source_name(r["source"]))


# -- estimating ----------------------------------------------------------------------------------------
def run(case: Case, targets: dict) -> Result:
    target = targets.setdefault(case.preset, hw_targets.load(case.preset))
    fn, args = case.build()
    est = explorer.estimate(explorer.lower(fn, *args), target, pipeline=case.pipeline)
    body = est.seconds - est.overhead_seconds
    if case.convention == "wall":
        predicted = body + WALL_CLOCK_OVERHEAD_S
    else:   # back-to-back launches: the host issues each kernel while the previous one runs on the chip
        predicted = max(target.launch_overhead_s * est.num_kernels, est.seconds - target.launch_overhead_s)
    return Result(case, predicted, body, est.bound, est.num_kernels, target.efficiency.matrix, target.efficiency.memory)


def _fmt(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _mdape(results: list[Result]) -> float:
    return statistics.median(abs(r.ratio - 1.0) for r in results)


def proposals(results: list[Result]) -> list[str]:
    """Efficiencies that would make the model match the measurements, per preset, with the cases behind them.

    Implied efficiency of a case = the preset's efficiency x predicted body / measured body (the measured
    time less the launch / sync part the prediction adds), over cases the model prices as bound by that
    resource: large compute-bound GEMMs (>= 0.2 TFLOP, not best-shape envelopes) for ``matrix``, the
    STREAM copy for ``memory``. A change is proposed only when the median moves by more than 0.03."""
    lines = []
    by_preset: dict[str, list[Result]] = {}
    for r in results:
        by_preset.setdefault(r.case.preset, []).append(r)
    for preset, rs in sorted(by_preset.items()):
        big = [r for r in rs if r.case.category == "gemm" and r.bound == "compute" and not r.case.envelope
               and _flops(r) >= 2e11]
        env = [r for r in rs if r.case.envelope]
        stream = [r for r in rs if r.case.category == "memory_bw"]
        for label, cases, cur in (("matrix", big, rs[0].efficiency_matrix), ("memory", stream, rs[0].efficiency_memory)):
            if not cases:
                continue
            implied = {r.case.case_id: cur * r.body_s / _body_measured(r) for r in cases}
            med = statistics.median(implied.values())
            by_source: dict[str, list[float]] = {}
            for r in cases:
                by_source.setdefault(r.case.source, []).append(implied[r.case.case_id])
            sources = "; ".join(f"{src}: {statistics.median(v):.2f} (n={len(v)})" for src, v in sorted(by_source.items()))
            verdict = f"propose {med:.2f}" if abs(med - cur) > 0.03 else "keep"
            if len(by_source) > 1 and max(map(statistics.median, by_source.values())) - min(
                    map(statistics.median, by_source.values())) > 0.05:
                verdict += " (the sources disagree: see by source)"
            lines.append(f"{preset}: efficiency.{label} {verdict} (now {cur:.2f}; implied median {med:.2f}, "
                         f"range {min(implied.values()):.2f}-{max(implied.values()):.2f}; by source {sources}) "
                         f"from {', '.join(implied)}")
        if env:
            cur = rs[0].efficiency_matrix
            implied = [cur * r.body_s / _body_measured(r) for r in env]
            lines.append(f"{preset}: best-shape envelope (MAMF) implies at most {max(implied):.2f} on the best shape "
                         f"({', '.join(r.case.case_id for r in env)}); typical shapes sit below it")
    return lines


def _flops(r: Result) -> float:
    m, n, k = _shape_of(r.case.note)
    return 2.0 * m * n * k


def _shape_of(note: str) -> tuple[int, int, int]:
    m, n, k = (int(x) for x in note.split()[0].split("x"))
    return m, n, k


def _body_measured(r: Result) -> float:
    """The measured time without the part the prediction adds on top of the kernel body (launch / sync)."""
    return r.case.measured_s - (r.predicted_s - r.body_s)


def report(results: list[Result], plan: Plan, header: str) -> str:
    lines = [header, "",
             "conventions: wall = estimate body + 21 us launch/sync (LLMCompass wall-clock); kernel = kernels timed "
             "one after another on a stream: max(launch_overhead_s per kernel, body + the preset's kernel_gap_s);",
             f"  GEMMs priced with {GEMM_PIPELINE}, fused PyTorch/FlashAttention kernels with {FUSED_PIPELINE}", ""]
    head = f"{'case':46s} {'target':9s} {'conv':6s} {'predicted':>10s} {'measured':>10s} {'pred/meas':>9s} {'error':>7s}  {'bound':8s} {'k':>2s}  what"
    lines += [head, "-" * len(head)]
    for r in results:
        c = r.case
        lines.append(f"{c.case_id:46s} {c.preset:9s} {c.convention:6s} {_fmt(r.predicted_s):>10s} {_fmt(c.measured_s):>10s} "
                     f"{r.ratio:9.2f} {r.ratio - 1:+7.1%}  {r.bound:8s} {r.kernels:2d}  {c.note}")
    lines += ["", "per category (MdAPE = median |predicted / measured - 1|):"]
    cats: dict[str, list[Result]] = {}
    for r in results:
        cats.setdefault(r.case.category + (" (MAMF envelope)" if r.case.envelope else ""), []).append(r)
    for cat, rs in sorted(cats.items()):
        per_target = ", ".join(f"{t} {_mdape([r for r in rs if r.case.preset == t]):.1%} (n={sum(r.case.preset == t for r in rs)})"
                               for t in sorted({r.case.preset for r in rs}))
        bias = statistics.median(r.ratio for r in rs)
        lines.append(f"  {cat:28s} n={len(rs):2d}  MdAPE {_mdape(rs):6.1%}  median pred/meas {bias:.2f}   [{per_target}]")
    lines.append(f"  {'all compared':28s} n={len(results):2d}  MdAPE {_mdape(results):6.1%}")
    lines += ["", "proposed preset efficiencies (not applied; the presets' owner decides):"]
    lines += ["  " + p for p in proposals(results)]
    lines += ["", f"skipped ({len(plan.skipped)}):"]
    reasons: dict[str, list[str]] = {}
    for cid, cat, why in plan.skipped:
        reasons.setdefault(f"{cat}: {why}", []).append(cid)
    for why, ids in sorted(reasons.items()):
        lines.append(f"  {why}  [{len(ids)}] {', '.join(ids)}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    add_cases_argument(ap)
    args = ap.parse_args()
    args.cases = args.cases or default_cases()
    rows = read_rows(args.cases)
    plan = plan_cases(rows)
    targets: dict = {}
    results = []
    for c in plan.cases:
        try:
            results.append(run(c, targets))
        except Exception as exc:   # a case the tool cannot price is listed, never fatal
            plan.skipped.append((c.case_id, c.category, f"could not be priced: {type(exc).__name__}: {exc}"))
    now = dt.datetime.now()
    command = ("python benchmarks/validate_reference.py " + " ".join(sys.argv[1:])).strip()
    header = (f"validate_reference  {now:%Y-%m-%d %H:%M}\nmachine: {platform.platform()}, python "
              f"{platform.python_version()}, jax {jax.__version__} (estimates only: nothing runs on an accelerator)\n"
              f"command: {command}\ncases: {args.cases} ({len(rows)} rows; {len(results)} compared, "
              f"{len(plan.skipped)} skipped)")
    text = report(results, plan, header)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{now:%Y-%m-%d-%H%M}-validate-reference.txt"
        out.write_text(text + "\n")
        print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
