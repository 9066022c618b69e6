"""Properties that must hold for any program: fusion never adds traffic; more capacity or
bandwidth never makes a program slower; every pass terminates."""
import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import explorer
import hw_targets

S = jax.ShapeDtypeStruct
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
    target = hw_targets.load("h100_sxm")
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
    for pipe in ("fuse{strategy=none}", "fuse{strategy=xla}", "fuse{strategy=xla},place{policy=greedy}"):
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
    for pipe in ("fuse{strategy=xla},place{policy=greedy}", "fuse{strategy=xla},place{policy=ilp}"):
        assert explorer.estimate(prog, big, pipeline=pipe).seconds <= explorer.estimate(prog, small, pipeline=pipe).seconds * (1 + 1e-12)


@pytest.mark.xfail(strict=True, reason="known bug: greedy/ILP placement scores tensors by bandwidth saved only; "
                   "when HBM gets faster than SRAM it places nothing and loses the SRAM latency gain")
def test_ten_times_hbm_bandwidth_with_placement_counterexample():
    # found by hypothesis: 17.85 us with placement at 1x HBM bandwidth, 18.40 us at 10x
    target = hw_targets.load("h100_sxm")
    bw = target.knobs()["memory.hbm.bandwidth_bytes_per_s"]
    prog = explorer.lower(build([(0, 0, 0), (4, 2, 0), (0, 0, 0), (0, 0, 0)]),
                          S((64, 64), jnp.float32), S((64, 64), jnp.float32))
    pipe = "fuse{strategy=xla},place{policy=greedy}"
    base = explorer.estimate(prog, target, pipeline=pipe).seconds
    faster = explorer.estimate(prog, target.replace(**{"memory.hbm.bandwidth_bytes_per_s": bw * 10}), pipeline=pipe).seconds
    assert faster <= base * (1 + 1e-12)
