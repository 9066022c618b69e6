"""Text and HTML tables of an estimate, read through its public attributes and methods."""
from __future__ import annotations

from tabulate import tabulate

from .units import fmt_bytes, fmt_seconds


def estimate_table(est, top: int = 15, layer_depth: int | None = 2) -> str:
    """An estimate's totals, per-layer and per-phase breakdowns and top kernels, as text tables."""
    s = est.summary()
    head = [
        ["program", est.program], ["target", est.target], ["pipeline", est.pipeline or "(none)"],
        ["time", fmt_seconds(est.seconds)],
        ["  compute-bound", fmt_seconds(est.compute_seconds)], ["  memory-bound", fmt_seconds(est.memory_seconds)],
        ["  communication-bound", fmt_seconds(est.comm_seconds)], ["  launch overhead", fmt_seconds(est.overhead_seconds)],
        ["bound", est.bound], ["flops", f"{est.flops:.4g}"], ["bytes accessed", fmt_bytes(est.bytes_accessed)],
        ["kernels", str(est.num_kernels)], ["MFU (bf16 peak)", f"{est.mfu:.1%}"],
        ["peak memory", f"{fmt_bytes(est.peak_memory_bytes)} of {fmt_bytes(est.memory_capacity_bytes)}"
         + ("" if est.fits_in_memory else "  DOES NOT FIT")],
        *([["memory", est.memory_report()]] if (len(est.memory_peaks) > 1 or not est.fits_in_memory) else []),
        ["unknown ops", ", ".join(f"{k} x{v}" for k, v in s["unknown_ops"].items()) or "none"],
    ]
    if est.unknown_loops:
        head.append(["unknown trip counts", "; ".join(est.unknown_loops) + " (counted once)"])
    out = [tabulate(head, tablefmt="plain")]
    layers = est.layer_rows(layer_depth)[:top]
    out.append("\nper layer:\n" + tabulate(
        [[r["layer"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", f"{r['flops']:.3g}", fmt_bytes(r["bytes"]),
          r["kernels"], r["bound"]] for r in layers],
        headers=["layer", "time", "share", "flops", "bytes", "kernels", "bound"]))
    out.append("\nper phase:\n" + tabulate(
        [[r["phase"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", r["bound"]] for r in est.phase_rows()],
        headers=["phase", "time", "share", "bound"]))
    total = est.seconds or 1.0
    out.append(f"\ntop {top} kernels:\n" + tabulate(
        [[k.name, k.layer, k.phase, f"{k.executions:g}", f"{k.flops:.3g}", fmt_bytes(k.bytes_moved),
          fmt_seconds(k.seconds), f"{k.seconds / total:.1%}", k.bound] for k in est.top_kernels(top)],
        headers=["kernel", "layer", "phase", "runs", "flops", "bytes", "time", "share", "bound"]))
    return "\n".join(out)


def estimate_html(est) -> str:
    """The estimate's headline figures and per-layer table, as HTML (notebooks)."""
    s = est.summary()
    head = tabulate([[k, v] for k, v in s.items() if not isinstance(v, (dict, list))], tablefmt="html")
    layers = tabulate([[r["layer"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", r["bound"]] for r in est.layer_rows(2)[:20]],
                      headers=["layer", "time", "share", "bound"], tablefmt="html")
    return f"<h4>Estimate</h4>{head}<h4>per layer</h4>{layers}"
