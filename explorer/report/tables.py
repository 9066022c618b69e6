"""Text and HTML tables of an estimate, read through its public attributes and methods."""
from __future__ import annotations

from tabulate import tabulate

from ..graph import names
from .units import fmt_bytes, fmt_seconds

# What the compute / memory / communication totals are: the step's critical path, each row on it attributed
# whole to the resource that bounds it; they are not how long each resource was busy (a memory-bound kernel also
# computes, a hidden collective is busy beside the path).
BOUND_NOTE = ("compute-, memory- and communication-bound: the time of the rows on the step's critical path that "
              "each resource bounds (every row's time goes to its bound; launch waits and the gaps between kernels "
              "are launch overhead), not how long that resource was busy")


def estimate_table(est, top: int = 15, layer_depth: int | None = 2) -> str:
    """An estimate's totals, per-layer and per-phase breakdowns and top kernels, as text tables."""
    s = est.summary()
    head = [
        ["program", est.program], ["target", est.target], ["pipeline", est.pipeline or "(none)"],
        ["time", fmt_seconds(s["seconds"])],
        ["  compute-bound time", fmt_seconds(s["compute_seconds"])],
        ["  memory-bound time", fmt_seconds(s["memory_seconds"])],
        ["  communication-bound time", fmt_seconds(s["comm_seconds"]) + " exposed"
         + (f", {fmt_seconds(s['hidden_comm_seconds'])} hidden behind other work" if s.get("hidden_comm_seconds") else "")],
        ["  launch overhead", fmt_seconds(s["overhead_seconds"])],
        *([["engines idle", ", ".join(f"{k} {fmt_seconds(v)}" for k, v in s["idle_seconds"].items()
                                      if est.busy_seconds.get(k, 0.0) > 0)
            + f"  (critical path: {s.get('critical_path_rows', 0)} of {est.num_kernels} rows)"]]
          if s.get("idle_seconds") else []),
        ["bound", est.bound], ["flops", f"{est.flops:.4g}"], ["bytes accessed", fmt_bytes(est.bytes_accessed)],
        ["kernels", str(est.num_kernels)], ["MFU (bf16 peak)", f"{est.mfu:.1%}"],
        ["peak memory", f"{fmt_bytes(est.peak_memory_bytes)} of {fmt_bytes(est.memory_capacity_bytes)}"
         + ("" if est.fits_in_memory else "  DOES NOT FIT")],
        *([["memory", est.memory_report()]] if (len(est.memory_peaks) > 1 or not est.fits_in_memory) else []),
        ["unknown ops", ", ".join(f"{k} x{v}" for k, v in s["unknown_ops"].items()) or "none"],
    ]
    if est.unknown_loops:
        head.append(["unknown trip counts", "; ".join(est.unknown_loops) + " (counted once)"])
    out = [tabulate(head, tablefmt="plain"), f"({BOUND_NOTE})"]
    layers = est.layer_rows(layer_depth)[:top]
    out.append("\nper layer (time: its part of the step on the critical path; busy: its rows' engine time):\n" + tabulate(
        [[r["layer"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", fmt_seconds(r.get("busy_seconds", r["seconds"])),
          f"{r['flops']:.3g}", fmt_bytes(r["bytes"]), r["kernels"], r["bound"]] for r in layers],
        headers=["layer", "time", "share", "busy", "flops", "bytes", "kernels", "bound"], disable_numparse=True))
    out.append("\nper phase:\n" + tabulate(
        [[r["phase"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", r["bound"]] for r in est.phase_rows()],
        headers=["phase", "time", "share", "bound"], disable_numparse=True))
    total = est.seconds or 1.0
    shape = getattr(est, "kernel_shape", None)
    out.append(f"\ntop {top} kernels:\n" + tabulate(
        [[k.name, " ".join(x for x in ((shape(k) if shape else ""), _algo(k)) if x),
          names.display_layer(k.layer, k.phase), k.phase, f"{k.executions:g}",
          f"{k.flops:.3g}", fmt_bytes(k.bytes_moved), fmt_seconds(k.seconds), f"{k.seconds / total:.1%}", k.bound]
         for k in est.top_kernels(top)],
        headers=["kernel", "shape", "layer", "phase", "runs", "flops", "bytes", "time", "share", "bound"],
        disable_numparse=True))
    return "\n".join(out)


def _algo(k) -> str:
    """A kernel's matrix algorithm for the shape column ("[stream-k, tf32]"); nothing for a plain tiled GEMM."""
    algo = getattr(k, "algorithm", "")
    return f"[{algo}]" if algo and algo != "tiles" else ""


def estimate_html(est) -> str:
    """The estimate's headline figures and per-layer table, as HTML (notebooks)."""
    s = est.summary()
    head = tabulate([[k, v] for k, v in s.items() if not isinstance(v, (dict, list))], tablefmt="html")
    layers = tabulate([[r["layer"], fmt_seconds(r["seconds"]), f"{r['share']:.1%}", r["bound"]] for r in est.layer_rows(2)[:20]],
                      headers=["layer", "time", "share", "bound"], tablefmt="html", disable_numparse=True)
    return f"<h4>Estimate</h4>{head}<p>{BOUND_NOTE}</p><h4>per layer</h4>{layers}"
