"""Collective model vs measured all-reduce curves (``../shared/reference/validation_cases.csv``).

For every ``collective`` row: the predicted time of the collective on the matching preset (the
algorithm ``explorer.model.collectives`` picks), converted to the metric the source reported, next to the
measurement, with the relative error per case, then the mean absolute error per hardware.

Conventions (reference README caveats 3 and 8):
- nccl-tests size labels are binary ("1MB" / "67M" = 2^20 / 2^26 bytes), GB/s decimal;
- busbw = size * 2(n-1)/n / time for all-reduce: compared as busbw, and also as time
  (``time = size * 2(n-1)/n / busbw``), the same error either way up to its sign;
- with NVLS or hierarchical algorithms busbw exceeds the link rate; the model prices the algorithm,
  not the convention.

Calibration, stated: ``IN_NETWORK_EFFICIENCY`` comes from the H100 8 GB point,
``IN_NETWORK_LATENCY_S`` from the H100 8 MB point and ``PIPELINE_CHUNK_BYTES`` from the A100 8 MB
point; every other row is a prediction (the H200 curve, same NVSwitch generation, is the
out-of-sample check of the NVLS constants).
Per-case target adjustments are printed with the row (GCP A3 Mega: 8 x 200 Gb/s NICs per VM).

A row that cannot be read or priced is skipped and listed with the reason; it never stops the run.

Run: ``python benchmarks/validate_collectives.py [--cases FILE]``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hw_targets  # noqa: E402
from explorer.model.collectives import bus_bandwidth, collective_time  # noqa: E402
from reference_data import Skipped, add_cases_argument, parse_each, read_rows  # noqa: E402

# hardware column prefix -> (preset, knob overrides, note)
HARDWARE = [
    ("8x NVIDIA A100", "a100_sxm", {}, ""),
    ("8x NVIDIA H100", "h100_sxm", {}, ""),
    ("8x NVIDIA H200 node", "h200", {}, ""),
    ("8x NVIDIA H200", "h200", {}, ""),
    ("8x AMD MI300X", "mi300x", {}, ""),
    ("2x GCP A3 Mega", "h100_sxm", {"scale_out.chip_bandwidth_bytes_per_s": 25e9},
     "NIC 25 GB/s per GPU (A3 Mega: 8 x 200 Gb/s per VM, per the case notes)"),
]
_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}


def message_bytes(text: str) -> int:
    """'message 67MB (nccl-tests size label)' -> 2**26; '64MiB (67108864 B)' -> 67108864.

    nccl-tests prints power-of-two sizes with decimal prefixes ("67M" is 2^26 = 67,108,864 B): a label
    is the power of two nearest to its decimal reading.
    """
    if "(" in text and " B)" in text:
        inner = text[text.index("(") + 1:text.index(" B)")]
        if inner.strip().isdigit():
            return int(inner)
    word = text.replace("message", "").split("(")[0].strip()
    digits = "".join(ch for ch in word if ch.isdigit())
    unit = next((ch for ch in word if ch in _UNITS), None)
    if not digits or unit is None:
        raise ValueError(f"cannot read a message size from {text!r}")
    return 2 ** round(math.log2(int(digits) * _UNITS[unit]))


def target_for(hardware: str):
    for prefix, preset, knobs, note in HARDWARE:
        if hardware.startswith(prefix):
            t = hw_targets.load(preset)
            return (t.replace(**knobs) if knobs else t), preset, note
    raise KeyError(f"no preset mapped for hardware {hardware!r}")


def predict(r: dict) -> dict:
    target, preset, note = target_for(r["hardware"])
    n = int(r["num_chips"])
    measured = float(r["measured_value"])
    if r["workload"].startswith("all-reduce"):
        size = message_bytes(r["op_shape_or_message"])
        ct = collective_time(target, "all_reduce", size, n, 1, n)
        pred = bus_bandwidth("all_reduce", size, n, ct.seconds) / 1e9
        t_meas = size * 2 * (n - 1) / n / (measured * 1e9)
    else:   # one GPU-to-GPU copy (nvbandwidth): a point-to-point send of a large buffer
        size = 2 ** 30
        ct = collective_time(target, "collective_permute", size, 2, 1, 8)
        pred = size / ct.seconds / 1e9
        t_meas = size / (measured * 1e9)
    return {"case": r["case_id"], "preset": preset, "n": n, "bytes": size, "algorithm": ct.algorithm,
            "measured": measured, "predicted": pred, "unit": r["measured_unit"], "t_meas": t_meas,
            "t_pred": ct.seconds, "err": pred / measured - 1.0, "note": note, "reliability": r["reliability"]}


def main(argv: list[str] | None = None) -> None:
    from tabulate import tabulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cases_argument(ap)
    args = ap.parse_args(argv)
    skipped: list[Skipped] = []
    results = list(parse_each(read_rows(args.cases, ["collective"]), predict, skipped))
    print(tabulate([[x["case"], x["preset"], x["n"], f"{x['bytes']:.3g}", x["algorithm"], f"{x['measured']:.1f}",
                     f"{x['predicted']:.1f}", x["unit"], f"{x['t_meas'] * 1e6:.1f}", f"{x['t_pred'] * 1e6:.1f}",
                     f"{x['err']:+.1%}", x["note"]] for x in results],
                   headers=["case", "preset", "n", "bytes", "algorithm", "measured", "predicted", "unit",
                            "t meas us", "t pred us", "error", "note"]))
    print("\nmean |error| per hardware (busbw):")
    groups: dict[str, list[float]] = {}
    for x in results:
        key = x["case"].rsplit("_", 1)[0]
        groups.setdefault(key, []).append(abs(x["err"]))
    big = [abs(x["err"]) for x in results if x["bytes"] >= 2 ** 28]
    small = [abs(x["err"]) for x in results if x["bytes"] < 2 ** 28]
    summary = [[k, len(v), f"{sum(v) / len(v):.1%}", f"{max(v):.1%}"] for k, v in groups.items()]
    for label, errs in (("all, messages >= 256 MiB", big), ("all, messages < 256 MiB", small)):
        if errs:
            summary.append([label, len(errs), f"{sum(errs) / len(errs):.1%}", f"{max(errs):.1%}"])
    print(tabulate(summary, headers=["group", "cases", "mean |err|", "max |err|"]))
    if skipped:
        print("\nskipped:")
        print(tabulate([[s.case, s.reason] for s in skipped], headers=["case", "reason"]))


if __name__ == "__main__":
    main()
