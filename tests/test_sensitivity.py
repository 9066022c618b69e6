"""Sensitivity: elasticities equal finite differences of independent estimates, and the roofline's own derivative."""
import math

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.model import timing
from explorer.costs import Gemm
from explorer.workflows.sensitivity import integer_knob

S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture(scope="module")
def add():
    n = 16 * 1024 * 1024
    return explorer.lower(lambda a, b: a + b, S((n,), jnp.float32), S((n,), jnp.float32))


@pytest.fixture(scope="module")
def matmul():
    return explorer.lower(lambda a, b: a @ b, S((4096, 4096), jnp.bfloat16), S((4096, 4096), jnp.bfloat16))


def fd(program, target, knob, lo, hi, pipeline=None):
    """Finite difference of ln t between two knob values, from two independent estimates."""
    t_lo = explorer.estimate(program, target.replace(**{knob: lo}), pipeline=pipeline).seconds
    t_hi = explorer.estimate(program, target.replace(**{knob: hi}), pipeline=pipeline).seconds
    return (math.log(t_hi) - math.log(t_lo)) / (math.log(hi) - math.log(lo))


def test_memory_bound_elasticities_match_finite_differences_and_the_roofline(add, h100):
    s = explorer.sensitivity(add, h100, pipeline=None, rel_step=0.01)
    k = h100.knobs()
    for knob in ("memory.hbm.bandwidth_bytes_per_s", "efficiency.memory", "launch_overhead_s", "memory.hbm.latency_s"):
        v = k[knob]
        assert s.elasticity(knob) == pytest.approx(fd(add, h100, knob, v * 0.99, v * 1.01), rel=1e-12)
    # t = B / (bw * eff) + latency + overhead: d ln t / d ln bw = -(B / (bw * eff)) / t
    n = 16 * 1024 * 1024
    stream = 3 * n * 4 / (k["memory.hbm.bandwidth_bytes_per_s"] * k["efficiency.memory"])
    # (one launch of the step, then the kernel and the engine's gap between kernels)
    assert s.seconds == pytest.approx(stream + k["memory.hbm.latency_s"] + k["launch_overhead_s"] + k["kernel_gap_s"],
                                      rel=1e-12)
    assert s.elasticity("memory.hbm.bandwidth_bytes_per_s") == pytest.approx(-stream / s.seconds, rel=1e-3)
    assert s.elasticity("launch_overhead_s") == pytest.approx(k["launch_overhead_s"] / s.seconds, rel=1e-3)
    assert s.elasticity("compute.matrix_flops_per_s.bf16") == 0.0
    # ranked by magnitude within each group (continuous first, then discrete)
    for group in (s.continuous, s.discrete):
        mags = [abs(x.elasticity) for x in group if x.elasticity is not None]
        assert mags == sorted(mags, reverse=True)
    assert s.knobs[0].knob in ("memory.hbm.bandwidth_bytes_per_s", "efficiency.memory")


def test_cost_columns_are_left_out_and_zero_knobs_skipped(add, h100):
    s = explorer.sensitivity(add, h100.replace(launch_overhead_s=0.0), pipeline=None)
    names = [x.knob for x in s.knobs]
    assert "tdp_w" not in names
    zero = next(x for x in s.knobs if x.knob == "launch_overhead_s")
    assert zero.elasticity is None and zero.method == "skipped" and "value is 0" in zero.note
    assert s.knobs[-1].method == "skipped"


def test_discrete_knobs_step_to_design_values_and_are_reported_apart(matmul, h100):
    s = explorer.sensitivity(matmul, h100, pipeline=None, knobs=["compute.matrix_units", "compute.matrix_tile.m",
                                                                 "scale_up.domain_size", "efficiency.matrix"])
    units = next(x for x in s.knobs if x.knob == "compute.matrix_units")
    assert (units.low, units.high) == (125.0, 139.0) and units.kind == "discrete"     # 132 +- 5 %, rounded
    assert units.elasticity == pytest.approx(fd(matmul, h100, "compute.matrix_units", 125, 139), rel=1e-12)
    tile = next(x for x in s.knobs if x.knob == "compute.matrix_tile.m")
    assert (tile.low, tile.high) == (64.0, 256.0)                                    # powers of two, not 127 / 129
    assert tile.elasticity == pytest.approx(fd(matmul, h100, "compute.matrix_tile.m", 64, 256), rel=1e-12)
    dom = next(x for x in s.knobs if x.knob == "scale_up.domain_size")
    assert (dom.low, dom.high) == (4.0, 16.0)
    # continuous knobs first, then the discrete ones, each group ranked; the table shows them apart
    assert [x.kind for x in s.knobs] == ["continuous", "discrete", "discrete", "discrete"]
    assert s.continuous[0].knob == "efficiency.matrix" and {x.knob for x in s.discrete} == {
        "compute.matrix_units", "compute.matrix_tile.m", "scale_up.domain_size"}
    text = s.table()
    assert text.index("continuous knobs") < text.index("efficiency.matrix") < text.index("discrete knobs") \
        < text.index("compute.matrix_units")
    assert integer_knob(h100, "scale_out.links_per_chip") and not integer_knob(h100, "memory.hbm.capacity_bytes")
    skip = explorer.sensitivity(matmul, h100, pipeline=None, integers="skip",
                                knobs=["compute.matrix_units", "efficiency.matrix"])
    assert [(x.knob, x.method) for x in skip.knobs] == [("efficiency.matrix", "central"), ("compute.matrix_units", "skipped")]


def test_bounded_knob_uses_a_one_sided_difference(matmul, h100):
    full = h100.replace(**{"efficiency.matrix": 1.0})
    s = explorer.sensitivity(matmul, full, pipeline=None, knobs=["efficiency.matrix"])
    (e,) = s.knobs
    assert e.method == "backward" and "not a valid value" in e.note and (e.low, e.high) == (0.99, 1.0)
    assert e.elasticity == pytest.approx(fd(matmul, full, "efficiency.matrix", 0.99, 1.0), rel=1e-12)
    # compute-bound: t(eff) = 2 n^3 / (peak * eff * utilisation) + launch overhead
    util = timing.matrix_utilisation(Gemm(1, 4096, 4096, 4096), tuple(h100.compute.matrix_tile), h100.compute.matrix_units)
    work = 2 * 4096 ** 3 / (h100.matrix_rate("bf16") * util)
    def t(eff):
        return work / eff + h100.launch_overhead_s + h100.kernel_gap_s
    assert e.elasticity == pytest.approx(math.log(t(1.0) / t(0.99)) / math.log(1.0 / 0.99), rel=1e-9)


def test_knobs_a_pass_reads_are_priced_per_variant(add, h100):
    pipeline = "fuse{strategy=xla},place{policy=greedy}"
    s = explorer.sensitivity(add, h100, pipeline=pipeline, knobs=["memory.smem.capacity_bytes", "efficiency.vector"],
                             workers=1)
    cap = h100.knobs()["memory.smem.capacity_bytes"]
    assert s.elasticity("memory.smem.capacity_bytes") == pytest.approx(
        fd(add, h100, "memory.smem.capacity_bytes", cap * 0.99, cap * 1.01, pipeline), rel=1e-12)


def test_rendering_and_errors(add, h100):
    s = explorer.sensitivity(add, h100, pipeline=None, knobs=["memory.hbm.bandwidth_bytes_per_s"])
    assert "memory.hbm.bandwidth_bytes_per_s" in s.table() and "<table>" in s._repr_html_()
    assert s.to_dict()["knobs"][0]["knob"] == "memory.hbm.bandwidth_bytes_per_s"
    with pytest.raises(ValueError, match="rel_step must be in"):
        explorer.sensitivity(add, h100, rel_step=1.5)
    with pytest.raises(hw_targets.TargetError, match="unknown knob 'memory.hbm.bandwith'"):
        explorer.sensitivity(add, h100, knobs=["memory.hbm.bandwith"])
    with pytest.raises(KeyError, match="no knob 'tdp_w'"):
        s.elasticity("tdp_w")
