"""Properties that must hold for any program: fusion never adds traffic; more capacity or
bandwidth never makes a program slower; every pass terminates."""
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import explorer
import hw_targets
from explorer.frontend.model_files import load_module, load_program
from explorer.report.units import fmt_bytes

S = jax.ShapeDtypeStruct
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
UNARY = [jnp.tanh, jnp.exp, lambda x: x * 2.0, jnp.abs, lambda x: x.sum(axis=-1, keepdims=True) + x, jax.nn.relu]
BINARY = [jnp.add, jnp.multiply, jnp.maximum, lambda a, b: a @ b]


def build(ops):
    def f(x, y):
        vals = [x, y]
        for kind, i, j in ops:
            a, b = vals[i % len(vals)], vals[j % len(vals)]
            vals.append(UNARY[kind % len(UNARY)](a) if kind < len(UNARY) else BINARY[kind % len(BINARY)](a, b))
        return vals[-1], vals[len(vals) // 2]
    return f


programs = st.lists(st.tuples(st.integers(0, len(UNARY) + len(BINARY) - 1), st.integers(0, 20), st.integers(0, 20)),
                    min_size=1, max_size=10)
# derandomize: the same examples every run, so CI is deterministic (the project's rule); known
# counterexamples found while exploring are kept below as explicit tests
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@SETTINGS
@given(ops=programs)
def test_fusion_never_increases_memory_traffic(ops):
    # on an A100: on Hopper XLA:GPU splits a GEMM whose output is small for its K, and its f32 partial sums are more
    # bytes than one unfused GEMM writes; that is the compiler's GEMM algorithm, not fusion (tests/test_fusion.py)
    target = hw_targets.load("a100_sxm")
    prog = explorer.lower(build(ops), S((64, 64), jnp.float32), S((64, 64), jnp.float32))
    none = explorer.estimate(prog, target, pipeline="fuse{strategy=none}")
    xla = explorer.estimate(prog, target, pipeline="fuse{strategy=xla}")
    aggr = explorer.estimate(prog, target, pipeline="fuse{strategy=aggressive}")
    assert xla.bytes_accessed <= none.bytes_accessed
    assert aggr.bytes_accessed <= none.bytes_accessed
    assert xla.flops == none.flops == aggr.flops


@SETTINGS
@given(ops=programs, factor=st.sampled_from([1.5, 2.0, 10.0]),
       knob=st.sampled_from(["memory.hbm.bandwidth_bytes_per_s", "compute.matrix_flops_per_s.tf32",
                             "compute.transcendental_per_s", "efficiency.memory_scale"]))
def test_more_bandwidth_or_compute_is_never_slower(ops, factor, knob):
    target = hw_targets.load("h100_sxm")
    knobs = target.knobs()
    if knob not in knobs:
        return
    prog = explorer.lower(build(ops), S((64, 64), jnp.float32), S((64, 64), jnp.float32))
    for pipe in ("fuse{strategy=none}", "fuse{strategy=xla}", "fuse{strategy=xla},place{policy=greedy}",
                 "fuse{strategy=none},place{policy=greedy}", "fuse{strategy=none},place{policy=ilp}"):
        base = explorer.estimate(prog, target, pipeline=pipe).seconds
        better = explorer.estimate(prog, target.replace(**{knob: knobs[knob] * factor}), pipeline=pipe).seconds
        assert better <= base * (1 + 1e-12)


@SETTINGS
@given(ops=programs, cap=st.sampled_from([1e4, 1e5, 1e6, 1e8]))
def test_more_on_chip_capacity_is_never_slower(ops, cap):
    target = hw_targets.load("h100_sxm")
    sram = target.on_chip.name
    prog = explorer.lower(build(ops), S((64, 64), jnp.float32), S((64, 64), jnp.float32))
    small = target.replace(**{f"memory.{sram}.capacity_bytes": cap})
    big = target.replace(**{f"memory.{sram}.capacity_bytes": cap * 4})
    for pipe in ("fuse{strategy=xla},place{policy=greedy}", "fuse{strategy=xla},place{policy=ilp}",
                 "fuse{strategy=none},place{policy=greedy}", "fuse{strategy=none},place{policy=ilp}"):
        assert explorer.estimate(prog, big, pipeline=pipe).seconds <= explorer.estimate(prog, small, pipeline=pipe).seconds * (1 + 1e-12)


def test_ten_times_hbm_bandwidth_with_placement_counterexample():
    # found by hypothesis (fuse{strategy=xla}, when that fused this program into several kernels): faster HBM made
    # the placed program slower, because placement scored tensors by bandwidth saved only. At 10x HBM (33.5 TB/s)
    # outpaces shared memory (30.9 TB/s): no tensor saves bandwidth, nothing was placed, and the latency a kernel
    # saves when all its tensors are on chip (600 ns HBM vs 30 ns) was lost: 29.9 us at 1x, 31.6 us at 10x with one-op
    # kernels. Placement now scores whole kernels, their time with and without the tensors on chip.
    target = hw_targets.load("h100_sxm")
    bw = target.knobs()["memory.hbm.bandwidth_bytes_per_s"]
    prog = explorer.lower(build([(0, 0, 0), (4, 2, 0), (0, 0, 0), (0, 0, 0)]),
                          S((64, 64), jnp.float32), S((64, 64), jnp.float32))
    fast = target.replace(**{"memory.hbm.bandwidth_bytes_per_s": bw * 10})
    for fusion in ("none", "xla"):
        pipe = f"fuse{{strategy={fusion}}},place{{policy=greedy}}"
        base = explorer.estimate(prog, target, pipeline=pipe).seconds
        faster = explorer.estimate(prog, fast, pipeline=pipe)
        assert faster.seconds <= base * (1 + 1e-12)
    # it is the latency gain that does it: with the same 10x HBM, one-op kernels on chip beat HBM alone
    placed = explorer.estimate(prog, fast, pipeline="fuse{strategy=none},place{policy=greedy}")
    assert placed.seconds < explorer.estimate(prog, fast, pipeline="fuse{strategy=none}").seconds
    assert any(lvl == target.on_chip.name for lvl in placed._plan.placement.values())


# -- a placement never overflows the level it fills, as the estimate measures it ------------------

EXAMPLES = ("mlp.py", "gpt2_train.py", "cnn.py", "llama_infer.py:decode")
_PROGRAMS: dict = {}


def example_program(spec: str):
    """An example's small configuration, lowered once per test session."""
    if spec not in _PROGRAMS:
        path = EXAMPLES_DIR / spec.partition(":")[0]
        _PROGRAMS[spec] = load_program(str(EXAMPLES_DIR / spec), dict(load_module(path).SMALL_CONFIG))
    return _PROGRAMS[spec]


@settings(max_examples=24, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(EXAMPLES), policy=st.sampled_from(["greedy", "ilp"]),
       chip=st.sampled_from(["h100_sxm", "hypo_sram_heavy"]),
       capacity=st.sampled_from([2e3, 5e3, 1e4, 1.5e4, 3e4, 6e4, 1e5, 2.5e5, 1e6, 4e6]),
       fusion=st.sampled_from(["xla", "aggressive", "none"]))
def test_placement_never_exceeds_the_capacity_it_fills(spec, policy, chip, capacity, fusion):
    prog = example_program(spec)
    base = hw_targets.load(chip)
    level = base.on_chip.name
    target = base.replace(**{f"memory.{level}.capacity_bytes": capacity})
    if policy == "ilp" and fusion == "none":
        fusion = "xla"      # thousands of one-op kernels: HiGHS's root node alone takes seconds (the greedy covers it)
    # a small work limit: the property is about capacity, which every solution the solver returns respects
    place = "place{policy=ilp,node_limit=20}" if policy == "ilp" else "place{policy=greedy}"
    pipe = f"fuse{{strategy={fusion}}},{place}"
    est = explorer.estimate(prog, target, pipeline=pipe)
    peaks, caps = dict(est.memory_peaks), dict(est.memory_capacities)
    # the estimate's own liveness (explorer.model.memory.level_peaks) over the whole schedule
    assert peaks.get(level, 0) <= caps.get(level, capacity) == capacity
    assert est.fits_in_memory or peaks[base.main_memory.name] > base.main_memory.capacity_bytes
    # the plan notes say what the estimate measures, not a figure of their own
    note = [n for n in est.plan_notes if n.startswith(f"place: ") and f" in {level} " in n][-1]
    assert f"at most {fmt_bytes(peaks.get(level, 0))} at once of {fmt_bytes(capacity)}" in note
    # and a placement is never slower than none at all
    assert est.seconds <= explorer.estimate(prog, target, pipeline=f"fuse{{strategy={fusion}}}").seconds * (1 + 1e-12)
