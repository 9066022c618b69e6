"""Plots render headless to PNG and SVG files and show what they claim."""
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer import plots
from explorer.workflows.sweep import SweepError

pytest.importorskip("matplotlib")
S = jax.ShapeDtypeStruct
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prog():
    def f(x, w1, w2):
        return jnp.sum(jax.nn.gelu(x @ w1) @ w2)
    return explorer.lower(f, S((512, 1024), jnp.bfloat16), S((1024, 4096), jnp.bfloat16), S((4096, 1024), jnp.bfloat16))


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture(scope="module")
def res(prog, h100):
    return explorer.sweep(prog, h100, {"memory.hbm.bandwidth_bytes_per_s": [1e12, 2e12, 4e12],
                                       "compute.matrix_flops_per_s.bf16": [2e14, 1e15], "tdp_w": [500, 700]})


def test_roofline_and_layers(prog, h100, tmp_path):
    est = explorer.estimate(prog, h100)
    fig = est.plot_roofline()            # the target found by its preset name
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in points) == sum(1 for k in est.kernels if k.flops and k.bytes_moved)
    # the compute roof sits at the achievable bf16 peak, in engineering units (TFLOP/s, not raw 1e14)
    assert ax.get_ylabel() == "achieved TFLOP/s"
    roof = max(line.get_ydata().max() for line in ax.get_lines())
    assert roof == pytest.approx(h100.matrix_rate("bf16") * h100.efficiency.matrix / 1e12)
    out = plots.save(fig, tmp_path / "roofline.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    fig = est.plot_layers()
    bars = fig.axes[0].patches
    scale = {"time (ms)": 1e-3, "time (us)": 1e-6, "time (s)": 1.0}[fig.axes[0].get_xlabel()]
    assert sum(b.get_width() for b in bars) == pytest.approx(est.seconds / scale, rel=1e-9)
    assert plots.save(fig, tmp_path / "layers.svg").read_text().lstrip().startswith("<?xml")
    assert plots.save(plots.estimate_overview(est, h100), tmp_path / "both.png").stat().st_size > 0


def test_sweep_and_pareto_plots(res, tmp_path):
    fig = res.plot("memory.hbm.bandwidth_bytes_per_s", line="compute.matrix_flops_per_s.bf16", where={"tdp_w": 700})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and all(len(line.get_xdata()) == 3 for line in lines)
    assert plots.save(fig, tmp_path / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SweepError, match="knobs tdp_w take several values"):
        res.plot("memory.hbm.bandwidth_bytes_per_s", line="compute.matrix_flops_per_s.bf16")
    with pytest.raises(SweepError, match="'efficiency.matrix' is not a swept knob"):
        res.plot("efficiency.matrix")
    fig = plots.pareto_plot(res, cost="tdp_w")
    front = res.pareto(cost="tdp_w")
    step = fig.axes[0].get_lines()[0]
    assert fig.axes[0].get_ylabel() == "seconds (us)" and fig.axes[0].get_xlabel() == "tdp_w (W)"
    assert list(step.get_ydata()) == pytest.approx(list(front.column("seconds") * 1e6), rel=1e-12)
    assert plots.save(fig, tmp_path / "pareto.svg").stat().st_size > 0


def test_compare_and_sensitivity_plots(prog, h100, tmp_path):
    cmp = explorer.compare(prog, [h100, hw_targets.load("tpu_v5p")])
    fig = plots.compare_plot(cmp)
    heights = {}
    for bar in fig.axes[0].patches:
        heights[bar.get_x()] = heights.get(bar.get_x(), 0.0) + bar.get_height()
    unit = fig.axes[0].get_ylabel().split("(")[1].split(";")[0]
    scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0}[unit]
    assert sorted(heights.values()) == pytest.approx(sorted(e.seconds / scale for e in cmp.estimates), rel=1e-9)
    assert plots.save(fig, tmp_path / "cmp.png").read_bytes()[:8] == PNG_MAGIC
    sens = explorer.sensitivity(prog, h100, knobs=["memory.hbm.bandwidth_bytes_per_s", "efficiency.matrix"])
    fig = plots.sensitivity_plot(sens)
    assert len(fig.axes[0].patches) == 2
    with pytest.raises(ValueError, match="suffix must be"):
        plots.save(fig, tmp_path / "x.jpg")


def test_cli_plot_options(tmp_path, capsys):
    from explorer.cli import main

    mlp = str(Path(__file__).resolve().parent.parent / "examples" / "mlp.py")
    assert main(["show", mlp, "--set", "batch=8", "--target", "h100_sxm", "--plot", str(tmp_path / "show.png")]) == 0
    assert (tmp_path / "show.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["compare", mlp, "--set", "batch=8", "--target", "h100_sxm", "--target", "mi300x",
                 "--plot", str(tmp_path / "cmp.svg")]) == 0
    assert (tmp_path / "cmp.svg").stat().st_size > 0
    assert "plot: " in capsys.readouterr().err
