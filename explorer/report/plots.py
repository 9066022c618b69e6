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
from .units import axis_label, eng_scale, fmt_seconds, knob_unit

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

    ``target``: the target ``est`` was priced on (default: the preset of that name, or the variant of a preset
    that ``Target.replace`` named). Achieved rates are in engineering units (TFLOP/s, GFLOP/s, ...)."""
    if target is None:
        try:
            target = hw_targets.load(est.target)
        except hw_targets.TargetError as exc:
            raise PlotError(f"roofline: {est.target!r} is not a preset or a variant of one ({exc}); "
                            "pass the target: roofline(est, target)") from None
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
    scale, unit = eng_scale(max(r for _, r in roofs), "FLOP/s")
    for (name, bw), style in zip(slopes, ("-", ":")):
        for (peak_name, peak), colour in zip(roofs, ("black", "grey")):
            ax.plot(x, np.minimum(peak, x * bw) / scale, style, color=colour, lw=1.2,
                    label=f"{peak_name} / {name}" if style == "-" or colour == "black" else None)
    for bound, colour in BOUND_COLOURS.items():
        sel = [p for p in pts if p[3] == bound]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] / scale for p in sel], s=[15 + 1500 * p[2] for p in sel],
                       color=colour, alpha=0.6, edgecolors="none", label=f"{bound}-bound kernels")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel(f"achieved {unit}")
    note = f", {skipped} kernels without flops or bytes not shown" if skipped else ""
    ax.set_title(f"{est.program} on {target.name}: roofline (marker area = share of time{note})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _layer_parts(est, depth: int | None) -> dict[str, dict[str, float]]:
    parts: dict[str, dict[str, float]] = {}
    # each row's part of the step time (the estimate's schedule: rows overlap, launches wait), so the bars add up
    shares = est.step_shares() if hasattr(est, "step_shares") else [k.seconds for k in est.kernels]
    for k, share in zip(est.kernels, shares):
        layer = names.display_layer(names.layer_at_depth(k.layer, depth), k.phase)
        g = parts.setdefault(layer, dict.fromkeys(BOUND_COLOURS, 0.0))
        g[k.bound] += share
    return parts


MIN_LAYER_SHARE = 0.001     # layers below 0.1 % of the time go into one "(N other layers)" bar


def layer_breakdown(est, depth: int | None = 2, top: int = 15, ax=None):
    """Time per layer (name-stack path cut at ``depth``), stacked by bound: the ``top`` slowest layers (those
    above 0.1 % of the time), listed in the model's natural order (``h_2`` before ``h_10``, top to bottom), the
    rest summed in one "(N other layers)" bar so the bars add up to the whole step. Each bar is labelled
    with its time and share; the axis is in ms / us as the times need."""
    parts = _layer_parts(est, depth)
    total = {lyr: sum(p.values()) for lyr, p in parts.items()}
    whole = sum(total.values()) or 1.0
    ranked = sorted(parts, key=lambda lyr: (-total[lyr], names.natural_key(lyr)))
    shown = [lyr for lyr in ranked[:top] if total[lyr] >= MIN_LAYER_SHARE * whole] or ranked[:1]
    rest = [lyr for lyr in parts if lyr not in shown]
    rows = {lyr: parts[lyr] for lyr in sorted(shown, key=names.natural_key)}
    if rest:
        rows[f"({len(rest)} other layers)"] = {b: sum(parts[lyr][b] for lyr in rest) for b in BOUND_COLOURS}
    layers = list(rows)[::-1]        # barh draws bottom-up: the first layer on top
    fig, ax = _figure(ax, (7.5, 0.8 + 0.35 * len(layers)))
    scale, unit = eng_scale(max(sum(rows[lyr].values()) for lyr in layers), "s")
    left = np.zeros(len(layers))
    for bound, colour in BOUND_COLOURS.items():
        widths = np.array([rows[lyr][bound] for lyr in layers]) / scale
        if widths.any():
            ax.barh(layers, widths, left=left, color=colour, label=f"{bound}-bound")
        left += widths
    for y, (lyr, w) in enumerate(zip(layers, left)):
        t = sum(rows[lyr].values())
        ax.annotate(f"{fmt_seconds(t)} ({t / whole:.1%})", (w, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=6)
    ax.set_xlim(0, max(left) * 1.25 if len(left) and max(left) > 0 else 1)
    ax.set_xlabel(f"time ({unit})")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{est.program} on {est.target}: time per layer ({fmt_seconds(est.seconds)} in all)", fontsize=9)
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
    scale, unit = eng_scale(max((r["seconds"] for r in rows), default=0.0), "s")
    for bound, colour in BOUND_COLOURS.items():
        heights = np.array([r[PART_COLUMNS[bound]] for r in rows]) / scale
        if heights.any():
            ax.bar(labels, heights, bottom=bottom, color=colour, label=f"{bound}-bound")
        bottom += heights
    ax.set_ylabel(f"time ({unit}; each kernel's time under its bound)")
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


def _scaled(name: str, values) -> tuple[np.ndarray, str]:
    """Values of a knob or column and its axis label, in engineering units (TB/s, TFLOP/s, ms, GB)."""
    v = np.asarray(values, dtype=float)
    scale, unit = eng_scale(np.nanmax(np.abs(v)) if v.size else 0.0, knob_unit(name))
    return v / scale, axis_label(name, unit)


def sweep_plot(result, x: str, line: str | None = None, y: str = "seconds", where: Mapping[str, float] | None = None,
               ax=None):
    """``y`` against knob ``x``, one line per value of knob ``line``, axes in engineering units.

    Every other swept knob must have one value among the rows plotted: fix the others with
    ``where={knob: value}``. Without ``line``, a grid with exactly one other knob that varies draws one line per
    value of it (``res.plot("memory.hbm.bandwidth_bytes_per_s")`` on a two-knob grid)."""
    for k in (x, line):
        if k is not None and k not in result.knobs:
            raise PlotError(f"sweep_plot: {k!r} is not a swept knob; knobs: {', '.join(result.knobs)}")
    for k in (where or {}):
        if k not in result.knobs:
            raise PlotError(f"sweep_plot: where={{{k!r}: ...}}: not a swept knob; knobs: {', '.join(result.knobs)}")
    keep = np.ones(len(result), dtype=bool)
    for k, v in (where or {}).items():
        keep &= result.column(k) == v
    idx = np.flatnonzero(keep)
    if not len(idx):
        raise PlotError(f"sweep_plot: no variant has {where}")
    loose = [k for k in result.knobs if k not in (x, line) and len(set(result.column(k)[idx])) > 1]
    if line is None and len(loose) == 1:
        line, loose = loose[0], []
    if loose:
        raise PlotError(f"sweep_plot: knobs {', '.join(loose)} take several values; fix them with where={{knob: value}}"
                        f"{'' if line else ' or draw one line per value with line=knob'}")
    fig, ax = _figure(ax)
    xs_all, x_label = _scaled(x, result.column(x)[idx])
    ys_all, y_label = _scaled(y, result.column(y)[idx])
    x_of = dict(zip(idx, xs_all))
    y_of = dict(zip(idx, ys_all))
    groups = sorted(set(result.column(line)[idx])) if line else [None]
    if line:
        g_scale, g_unit = eng_scale(max(abs(float(g)) for g in groups), knob_unit(line))
    for g in groups:
        sel = idx if g is None else idx[result.column(line)[idx] == g]
        order = sel[np.argsort(result.column(x)[sel], kind="stable")]
        label = None if g is None else f"{line} = {float(g) / g_scale:.4g}{' ' + g_unit if g_unit else ''}"
        ax.plot([x_of[i] for i in order], [y_of[i] for i in order], marker="o", label=label)
    xs = result.column(x)[idx].astype(float)
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 10:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    fixed = ", ".join(f"{k} = {v:.4g}" for k, v in (where or {}).items())
    ax.set_title(f"{result.program} on {result.target} variants{' (' + fixed + ')' if fixed else ''}", fontsize=9)
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
    t_scale, t_unit = eng_scale(np.nanmax(times) if len(times) else 0.0, knob_unit(time))
    cost_name = cost if isinstance(cost, str) else "cost"
    c_scale, c_unit = eng_scale(np.nanmax(np.abs(costs)) if len(costs) else 0.0, knob_unit(cost_name))
    ax.scatter(costs / c_scale, times / t_scale, s=12, color="lightgrey", label="variants")
    ax.step(np.asarray(fc, dtype=float) / c_scale, np.asarray(front.column(time), dtype=float) / t_scale, where="post",
            color="crimson", marker="o", label="Pareto front")
    ax.set_xlabel(axis_label(cost_name, c_unit))
    ax.set_ylabel(axis_label(time, t_unit))
    ax.set_title(f"{result.program} on {result.target}: {len(front)} of {len(result)} variants on the front", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def sensitivity_plot(sens, top: int = 15, ax=None):
    """The ``top`` knobs by |elasticity| as horizontal bars (negative: more of the knob, less time), largest on
    top; knobs whose elasticity is 0 (they do not matter here) are counted in the title, not drawn as empty bars.
    Discrete knobs (stepped to design values, not by 1 %) are marked "(discrete)" and hatched."""
    live = [k for k in sens.knobs if k.elasticity]
    zero = sum(1 for k in sens.knobs if k.elasticity == 0)
    rows = sorted(live, key=lambda k: -abs(k.elasticity))[:top][::-1]
    fig, ax = _figure(ax, (7.0, 0.8 + 0.35 * max(1, len(rows))))
    discrete = [getattr(k, "kind", "") == "discrete" for k in rows]
    bars = ax.barh([k.knob + (" (discrete)" if d else "") for k, d in zip(rows, discrete)],
                   [k.elasticity for k in rows], color=["#2ca02c" if k.elasticity < 0 else "#d62728" for k in rows])
    for bar, d in zip(bars, discrete):
        if d:
            bar.set_hatch("//")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("elasticity d ln t / d ln knob (negative: more of the knob, less time)")
    ax.tick_params(axis="y", labelsize=7)
    note = f"\n({zero} knobs with elasticity 0 not shown)" if zero else ""
    ax.set_title(f"{sens.program} on {sens.target}: which knob matters{note}", fontsize=9)
    return fig
