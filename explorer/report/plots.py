"""Charts of estimates, comparisons, sweeps and sensitivities (matplotlib, headless).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no display, no global
state; it renders with Agg) and takes an optional ``ax`` to draw into an existing figure.
``save(fig, "out.png")`` writes PNG, SVG or PDF by the file's suffix.

    fig = plots.roofline(est, hw_targets.load("h100_sxm")); plots.save(fig, "roofline.svg")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import hw_targets

from ..graph import names

BOUND_COLOURS = {"compute": "#1f77b4", "memory": "#ff7f0e", "communication": "#2ca02c", "overhead": "#7f7f7f"}
class PlotError(ValueError):
    """A plot that cannot be drawn from these rows: the message names the knob or column."""


PART_COLUMNS = {"compute": "compute_seconds", "memory": "memory_seconds", "communication": "comm_seconds",
                "overhead": "overhead_seconds"}


def _figure(ax=None, size: tuple[float, float] = (7.0, 4.5)):
    if ax is not None:
        return ax.figure, ax
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'hw-whatif-explorer[plot]'") from None
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path``; the suffix picks the format (.png, .svg, .pdf)."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"plot file {str(path)!r}: the suffix must be .png, .svg or .pdf")
    fig.savefig(path, dpi=dpi)
    return path


# -- one estimate ----------------------------------------------------------------------------------
def roofline(est, target: Any = None, ax=None):
    """Each kernel at (arithmetic intensity, achieved flop/s), marker area by its share of the time and
    colour by bound, under the target's roofs: achievable matrix (bf16) and vector (fp32) peaks, and
    the bandwidth slopes of main memory and the on-chip level (peak x efficiency).

    ``target``: the target ``est`` was priced on (default: the preset of that name)."""
    target = hw_targets.load(est.target) if target is None else target
    fig, ax = _figure(ax)
    total = est.seconds or 1.0
    pts = [(k.flops / k.bytes_moved, k.flops / k.seconds, k.seconds / total, k.bound)
           for k in est.kernels if k.flops > 0 and k.bytes_moved > 0 and k.seconds > 0]
    skipped = len(est.kernels) - len(pts)
    eff = target.efficiency
    roofs = [("bf16 matrix", target.matrix_rate("bf16") * eff.matrix), ("fp32 vector", target.vector_rate("f32") * eff.vector)]
    slopes = [(f"{target.main_memory.name} {target.main_memory.bandwidth_bytes_per_s / 1e12:.3g} TB/s",
               target.main_memory.bandwidth_bytes_per_s * eff.memory)]
    if target.on_chip is not None:
        slopes.append((f"{target.on_chip.name} {target.on_chip.bandwidth_bytes_per_s / 1e12:.3g} TB/s",
                       target.on_chip.bandwidth_bytes_per_s * eff.memory))
    lo = min([p[0] for p in pts] + [0.1]) / 2
    hi = max([p[0] for p in pts] + [roofs[0][1] / slopes[0][1] * 4])
    x = np.geomspace(lo, hi, 200)
    for (name, bw), style in zip(slopes, ("-", ":")):
        for (peak_name, peak), colour in zip(roofs, ("black", "grey")):
            ax.plot(x, np.minimum(peak, x * bw), style, color=colour, lw=1.2,
                    label=f"{peak_name} / {name}" if style == "-" or colour == "black" else None)
    for bound, colour in BOUND_COLOURS.items():
        sel = [p for p in pts if p[3] == bound]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=[15 + 1500 * p[2] for p in sel], color=colour,
                       alpha=0.6, edgecolors="none", label=f"{bound}-bound kernels")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop / byte)")
    ax.set_ylabel("achieved flop/s")
    note = f", {skipped} kernels without flops or bytes not shown" if skipped else ""
    ax.set_title(f"{est.program} on {target.name}: roofline (marker area = share of time{note})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _layer_parts(est, depth: int | None) -> dict[str, dict[str, float]]:
    parts: dict[str, dict[str, float]] = {}
    for k in est.kernels:
        layer = names.layer_at_depth(k.layer, depth)
        g = parts.setdefault(layer, dict.fromkeys(BOUND_COLOURS, 0.0))
        g[k.bound] += k.seconds
    return parts


def layer_breakdown(est, depth: int | None = 2, top: int = 15, ax=None):
    """Time per layer (name-stack path cut at ``depth``), the ``top`` slowest, stacked by bound."""
    fig, ax = _figure(ax, (7.0, 0.6 + 0.35 * top))
    parts = _layer_parts(est, depth)
    layers = sorted(parts, key=lambda lyr: (-sum(parts[lyr].values()), lyr))[:top][::-1]
    left = np.zeros(len(layers))
    for bound, colour in BOUND_COLOURS.items():
        widths = np.array([parts[lyr][bound] for lyr in layers]) * 1e3
        if widths.any():
            ax.barh(layers, widths, left=left, color=colour, label=bound)
        left += widths
    ax.set_xlabel("time (ms)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{est.program} on {est.target}: time per layer ({est.seconds * 1e3:.3f} ms in all)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def estimate_overview(est, target: Any = None):
    """Roofline and per-layer breakdown side by side (``explorer show --plot``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 6.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    roofline(est, target, ax=left)
    layer_breakdown(est, ax=right)
    return fig


# -- several results -------------------------------------------------------------------------------
def _stacked_bars(ax, labels: Sequence[str], rows: Sequence[Mapping[str, float]]) -> None:
    bottom = np.zeros(len(labels))
    for bound, colour in BOUND_COLOURS.items():
        heights = np.array([r[PART_COLUMNS[bound]] for r in rows]) * 1e3
        if heights.any():
            ax.bar(labels, heights, bottom=bottom, color=colour, label=bound)
        bottom += heights
    ax.set_ylabel("time (ms)")
    ax.legend(fontsize=7)


def compare_plot(comparison, ax=None):
    """One stacked bar per target (and pipeline): compute / memory / communication / overhead time."""
    rows = comparison.rows()
    fig, ax = _figure(ax, (max(5.0, 1.2 * len(rows) + 2), 4.5))
    show_pipe = len({r["pipeline"] for r in rows}) > 1
    labels = [r["target"] + (f"\n{r['pipeline'] or '(none)'}" if show_pipe else "") for r in rows]
    _stacked_bars(ax, labels, rows)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{rows[0]['program'] if rows else ''}: time per target", fontsize=9)
    return fig


def sweep_plot(result, x: str, line: str | None = None, y: str = "seconds", where: Mapping[str, float] | None = None,
               ax=None):
    """``y`` against knob ``x``, one line per value of knob ``line``. Every other swept knob must have one
    value among the rows plotted: fix the others with ``where={knob: value}``."""
    for k in (x, line):
        if k is not None and k not in result.knobs:
            raise PlotError(f"sweep_plot: {k!r} is not a swept knob; knobs: {', '.join(result.knobs)}")
    keep = np.ones(len(result), dtype=bool)
    for k, v in (where or {}).items():
        keep &= result.column(k) == v
    idx = np.flatnonzero(keep)
    loose = [k for k in result.knobs if k not in (x, line) and len(set(result.column(k)[idx])) > 1]
    if loose:
        raise PlotError(f"sweep_plot: knobs {', '.join(loose)} take several values; fix them with where={{knob: value}}")
    fig, ax = _figure(ax)
    groups = sorted(set(result.column(line)[idx])) if line else [None]
    for g in groups:
        sel = idx if g is None else idx[result.column(line)[idx] == g]
        order = sel[np.argsort(result.column(x)[sel], kind="stable")]
        ax.plot(result.column(x)[order], np.asarray(result.column(y)[order], dtype=float), marker="o",
                label=None if g is None else f"{line} = {g:.4g}")
    xs = result.column(x)[idx].astype(float)
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 10:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{result.program} on {result.target} variants", fontsize=9)
    if line:
        ax.legend(fontsize=7)
    return fig


def pareto_plot(result, cost: str | Callable[[dict[str, Any]], float] = "tdp_w", time: str = "seconds", ax=None):
    """Every variant at (cost, time), the Pareto front (no variant cheaper and faster) drawn as a step line."""
    fig, ax = _figure(ax)
    costs = result._cost_values(cost)
    times = np.asarray(result.column(time), dtype=float)
    front = result.pareto(cost=cost, time=time)
    fc = front._cost_values(cost) if not callable(cost) else front.columns["cost"]
    ax.scatter(costs, times, s=12, color="lightgrey", label="variants")
    ax.step(fc, np.asarray(front.column(time), dtype=float), where="post", color="crimson", marker="o", label="Pareto front")
    ax.set_xlabel(cost if isinstance(cost, str) else "cost")
    ax.set_ylabel(time)
    ax.set_title(f"{result.program} on {result.target}: {len(front)} of {len(result)} variants on the front", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def sensitivity_plot(sens, top: int = 15, ax=None):
    """The ``top`` knobs by |elasticity| as horizontal bars (negative: more of the knob, less time)."""
    rows = [k for k in sens.knobs if k.elasticity is not None][:top][::-1]
    fig, ax = _figure(ax, (7.0, 0.6 + 0.35 * max(1, len(rows))))
    ax.barh([k.knob for k in rows], [k.elasticity for k in rows],
            color=["#2ca02c" if k.elasticity < 0 else "#d62728" for k in rows])
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("elasticity d ln t / d ln knob")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{sens.program} on {sens.target}: which knob matters", fontsize=9)
    return fig
