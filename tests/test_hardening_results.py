"""Issue 15, results that mislead: tables, names, sensitivity, Pareto fronts and plots say what they show."""
import json
import math
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.explore_fusion import decisions_table, fusion_decisions
from explorer.graph import names
from explorer.model_files import load_module, load_program
from explorer.report import units
from explorer.workflows.sweep import SweepWarning

S = jax.ShapeDtypeStruct
GPT2 = Path(__file__).resolve().parent.parent / "examples" / "gpt2_train.py"


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2 train step, tiny sizes, 11 blocks: h_0 .. h_10 (lexicographic order would put h_10 after h_1)."""
    return load_program(str(GPT2), {**load_module(GPT2).SMALL_CONFIG, "n_layers": 11})


@pytest.fixture(scope="module")
def est(gpt2, h100):
    return explorer.estimate(gpt2, h100)


# -- 8. tables -------------------------------------------------------------------------------------
def test_no_negative_zero_anywhere(est):
    s = est.summary()
    assert s["comm_seconds"] == 0 and math.copysign(1.0, s["comm_seconds"]) == 1.0
    assert "-0.0" not in json.dumps(est.to_dict()) and "-0.0" not in est.to_json()
    assert "-0" not in est.table().split("per layer")[0]
    assert units.fmt_seconds(-0.0) == "0"


def test_the_bound_columns_say_they_are_attributed_times(est, gpt2, h100):
    text = est.table()
    assert "compute-bound time" in text and "memory-bound time" in text and "not how long that resource was busy" in text
    cmp = explorer.compare(gpt2, [h100]).table()
    assert "compute-bound" in cmp and "not how long it was busy" in cmp


def test_per_layer_rows_in_natural_order_and_no_unexplained_top(est):
    rows = est.layer_rows(2)
    blocks = [(r["seconds"], r["layer"]) for r in rows if r["layer"].startswith("GPT2/h_")]
    assert len(blocks) == 11
    # slowest first; equal times in natural order (h_2 before h_10), never in string order
    assert blocks == sorted(blocks, key=lambda b: (-b[0], names.natural_key(b[1])))
    ties: dict[float, list[str]] = {}
    for sec, layer in blocks:
        ties.setdefault(sec, []).append(layer)
    tied = max(ties.values(), key=len)            # the identical blocks (h_0, reading the embedding, may differ)
    assert len(tied) >= 3 and tied == sorted(tied, key=names.natural_key)
    assert any(a.endswith("_2") for a in tied) and tied.index("GPT2/h_2") < tied.index("GPT2/h_10")
    layers = {r["layer"] for r in est.layer_rows(None)}
    assert "(top)" not in layers and "(optimizer update)" in layers and "(outside any layer)" in layers
    text = est.table(top=40)
    assert "(top)" not in text and "(optimizer update)" in text
    assert names.natural_key("block_2") < names.natural_key("block_10")


def test_jax_helper_functions_and_einsum_specs_are_not_layers(est):
    layers = {r["layer"] for r in est.layer_rows(None)}
    bad = [lyr for lyr in layers if re.search(r"take_along_axis|_take|_where|->", lyr)]
    assert not bad, bad
    assert names.parse("jit(step)/transpose(jvp(jit(take_along_axis)))/gather")[1] == names.TOP
    assert names.parse("jit(step)/jvp(GPT2)/h_0/attn/vmap(jit(_where))/select_n")[1] == "GPT2/h_0/attn"
    assert names.parse("jit(step)/jvp(GPT2)/h_0/attn/...hqk,...khd->...qhd/dot_general")[1] == "GPT2/h_0/attn"
    assert names.parse("jit(step)/jvp(GPT2)/h_0/mlp/jit(gelu)/tanh")[1] == "GPT2/h_0/mlp"


def test_repeated_kernels_carry_a_shape_and_a_dx_dw_label(est):
    text = est.table(top=400)
    kernels = text.split("kernels:\n", 1)[1]
    assert "shape" in kernels.splitlines()[0]
    backward = [line for line in kernels.splitlines() if " backward " in line and "dot_general" in line]
    assert any(" dW " in line for line in backward) and any(" dX " in line for line in backward)
    mm = [k for k in est.kernels if k.phase == "backward" and "dot_general" in k.name]
    labels = {est.kernel_shape(k).split()[0] for k in mm}
    assert labels == {"dW", "dX"}
    dw = next(k for k in mm if est.kernel_shape(k).startswith("dW"))
    assert re.fullmatch(r"dW \d+x\d+x\d+( \(x\d+\))?", est.kernel_shape(dw))


def test_fusion_decisions_show_shapes_and_op_names(gpt2, h100):
    decisions = fusion_decisions(gpt2, h100, "fuse{strategy=xla}", top=3)
    text = decisions_table(decisions)
    header, _, *rows = text.splitlines()
    assert "tensor kept on chip" in header and "fuses" in header
    for d, row in zip(decisions, rows):
        assert d.tensor and re.search(r"\d+x\d+x?\w*(f32|bf16|i32|i1|f16)", d.tensor), d.tensor
        assert f"{d.producer_op} -> {d.consumer_op}" in row and d.tensor.split(",")[0] in row


# -- 9. sensitivity -------------------------------------------------------------------------------
def test_sensitivity_steps_discrete_knobs_to_design_values_and_explains_non_monotone_results(h100):
    # 1536 x 1408 output = 12 x 11 = 132 tiles of 128 x 128: one full wave on 132 units, two on 125
    prog = explorer.lower(lambda a, b: a @ b, S((1536, 4096), jnp.bfloat16), S((4096, 1408), jnp.bfloat16))
    s = explorer.sensitivity(prog, h100, pipeline=None)
    first = s.knobs[0]
    assert first.kind == "continuous"                        # no integer artefact ranked first
    tile = next(k for k in s.knobs if k.knob == "compute.matrix_tile.n")
    assert tile.kind == "discrete" and (tile.low, tile.high) == (64.0, 256.0)   # not 127 / 129
    units_ = next(k for k in s.knobs if k.knob == "compute.matrix_units")
    assert (units_.low, units_.high) == (125.0, 139.0)
    assert units_.seconds_low > units_.seconds < units_.seconds_high              # both neighbours are slower
    assert "non-monotone" in units_.note
    assert "compute.clock_hz" in [k.knob for k in s.skipped]
    text = s.table()
    assert text.index("continuous knobs") < text.index("discrete knobs") < text.index("skipped")


def test_more_units_being_slower_is_explained(h100):
    # 8 x 16 = 128 output tiles: one full wave on 128 units; 132 or 136 units leave units idle at the same peak
    prog = explorer.lower(lambda a, b: a @ b, S((1024, 4096), jnp.bfloat16), S((4096, 2048), jnp.bfloat16))
    s = explorer.sensitivity(prog, h100, pipeline=None, knobs=["compute.matrix_units"], discrete_step=0.03)
    (k,) = s.knobs
    assert (k.low, k.high) == (128.0, 136.0)
    assert k.elasticity > 0 and "chip-wide matrix peak is held fixed" in k.note


# -- 10. Pareto and the README's plot ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return explorer.lower(lambda x, w: jnp.tanh(x @ w), S((512, 1024), jnp.bfloat16), S((1024, 1024), jnp.bfloat16))


def test_pareto_over_a_cost_that_never_varies_warns(small, h100):
    res = explorer.sweep(small, h100, {"memory.hbm.bandwidth_bytes_per_s": [2e12, 3.35e12, 6.7e12]})
    with pytest.warns(SweepWarning, match=r"pareto: tdp_w is 700 in every one of the 3 variants"):
        front = res.pareto(cost="tdp_w")
    assert len(front) == 1
    swept = explorer.sweep(small, h100, {"memory.hbm.bandwidth_bytes_per_s": [2e12, 6.7e12], "tdp_w": [500, 900]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swept.pareto(cost="tdp_w")


def test_the_readme_plot_on_a_two_knob_grid_works_as_written(small, h100):
    pytest.importorskip("matplotlib")
    res = explorer.sweep(small, h100, {"memory.hbm.bandwidth_bytes_per_s": [2e12, 3.35e12, 6.7e12],
                                       "compute.matrix_flops_per_s.bf16": [989e12, 2e15]})
    fig = res.plot("memory.hbm.bandwidth_bytes_per_s")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2                                    # one line per value of the other knob
    assert ax.get_xlabel() == "memory.hbm.bandwidth_bytes_per_s (TB/s)"
    assert ax.get_ylabel() in ("seconds (us)", "seconds (ms)")
    assert max(ax.get_lines()[0].get_xdata()) == pytest.approx(6.7)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["compute.matrix_flops_per_s.bf16 = 0.989 PFLOP/s", "compute.matrix_flops_per_s.bf16 = 2 PFLOP/s"]


# -- 11. plots -------------------------------------------------------------------------------------
def test_plots_use_engineering_units_and_the_layer_figure_is_readable(est, h100):
    pytest.importorskip("matplotlib")
    ax = explorer.plots.roofline(est, h100).axes[0]
    assert ax.get_ylabel() == "achieved TFLOP/s"
    assert max(line.get_ydata().max() for line in ax.get_lines()) < 1e4      # not raw 1e14
    fig = explorer.plots.layer_breakdown(est, depth=2, top=20)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()][::-1]              # top to bottom
    blocks = [lbl for lbl in labels if lbl.startswith("GPT2/h_")]
    assert blocks == [f"GPT2/h_{i}" for i in range(11)]                      # natural order
    assert "(top)" not in labels
    totals = {}
    for bar in ax.patches:
        y = round(bar.get_y(), 6)
        totals[y] = totals.get(y, 0.0) + bar.get_width()
    widths = [w for w in totals.values() if w > 0]
    assert max(widths) / min(widths) < 1e4                                   # small layers go into "(N other layers)"
    assert ax.get_xlabel() in ("time (ms)", "time (us)")


def test_the_sensitivity_plot_has_no_empty_bars(small, h100):
    pytest.importorskip("matplotlib")
    s = explorer.sensitivity(small, h100, pipeline=None, knobs=["memory.hbm.bandwidth_bytes_per_s",
                                                                "compute.matrix_flops_per_s.fp8", "efficiency.matrix",
                                                                "scale_up.latency_s"])
    zero = [k for k in s.knobs if k.elasticity == 0]
    assert zero
    fig = explorer.plots.sensitivity_plot(s)
    bars = fig.axes[0].patches
    assert len(bars) == len(s.knobs) - len(zero) and all(b.get_width() != 0 for b in bars)
    assert f"({len(zero)} knobs with elasticity 0 not shown)" in fig.axes[0].get_title()


def test_units_helpers():
    assert units.eng_scale(3.35e12, "B/s") == (1e12, "TB/s")
    assert units.eng_scale(4e-6, "s") == (1e-6, "us")
    assert units.knob_unit("compute.matrix_flops_per_s.bf16") == "FLOP/s"
    assert units.knob_unit("memory.hbm.capacity_bytes") == "B"
    assert units.knob_unit("scale_up.latency_s") == "s"
    assert units.knob_unit("tdp_w") == "W"


def _readme_pareto_snippets():
    text = (GPT2.parent.parent / "README.md").read_text()
    return [code for code in re.findall(r"```python\n(.*?)\n```", text, flags=re.DOTALL) if 'pareto(cost="tdp_w")' in code]


def test_the_readme_shows_a_pareto_front_over_tdp():
    assert _readme_pareto_snippets()


def test_the_readmes_pareto_front_is_over_a_cost_its_grid_varies():
    for code in _readme_pareto_snippets():
        grid_text = code.split("explorer.sweep(", 1)[1].split(")", 1)[0]
        assert '"tdp_w"' in grid_text or "'tdp_w'" in grid_text, code
