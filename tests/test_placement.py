"""Liveness, peak memory and placement across memory levels, on programs derived by hand."""
import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.model import liveness
from passes import pipeline as pl
from passes.verify import verify_plan

S = jax.ShapeDtypeStruct
N = 1 << 20   # elements
F32 = 4


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def chain(a):
    b = jnp.exp(a)
    c = b * b
    return c.sum()


def test_liveness_peak_unfused_is_input_plus_two_intermediates():
    prog = explorer.lower(chain, S((N,), jnp.float32))
    live = liveness.analyse(prog.graph)
    # at the multiply: a (input, live throughout), b (being read), c (being written) and the program's scalar
    # output (allocated before the call runs); the reduction's scalar init comes later, when b is dead
    assert live.peak_bytes == 3 * N * F32 + 4
    assert live.live_at_peak[0].nbytes == N * F32


def test_fusion_removes_intermediates_from_the_peak(h100):
    prog = explorer.lower(chain, S((N,), jnp.float32))
    est = explorer.estimate(prog, h100, pipeline="fuse{strategy=xla}")
    # one kernel: only the input, the scalar init constant and the scalar result ever exist
    assert est.peak_memory_bytes == N * F32 + 4 + 4
    none = explorer.estimate(prog, h100, pipeline="fuse{strategy=none}")
    # unfused: a and b, which the multiply writes c over (b dies there, as XLA's buffer assignment shares an
    # elementwise kernel's buffers), the scalar init constant and the scalar output (allocated before the call runs)
    assert none.peak_memory_bytes == 2 * N * F32 + 4 + 4


def mlp(x, w1, w2):
    return jnp.tanh(jnp.tanh(x @ w1) @ w2)


MLP_ARGS = (S((512, 1024), jnp.float32), S((1024, 1024), jnp.float32), S((1024, 1024), jnp.float32))


def test_growing_sram_moves_tensors_in_and_never_slows_down(h100):
    prog = explorer.lower(mlp, *MLP_ARGS)
    sram = h100.on_chip.name
    times, placed = [], []
    for cap in (0.5e6, 2e6, 4.5e6, 8e6, 64e6):
        t = h100.replace(**{f"memory.{sram}.capacity_bytes": cap})
        plan = pl.run(pl.parse("fuse{strategy=xla},place{policy=greedy}"), prog, t, verify=True)
        verify_plan(prog, plan, t)
        placed.append(sum(prog.graph.values[v].nbytes for v, lvl in plan.placement.items() if lvl == sram))
        times.append(explorer.estimate(prog, t, pipeline="fuse{strategy=xla},place{policy=greedy}").seconds)
    assert placed == sorted(placed) and placed[-1] > placed[0]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(times, times[1:]))
    base = explorer.estimate(prog, h100, pipeline="fuse{strategy=xla}").seconds
    assert times[-1] < base


def test_ilp_saves_at_least_as_much_as_greedy(h100):
    prog = explorer.lower(mlp, *MLP_ARGS)
    t = h100.replace(**{f"memory.{h100.on_chip.name}.capacity_bytes": 3e6})
    greedy = explorer.estimate(prog, t, pipeline="fuse{strategy=xla},place{policy=greedy}").seconds
    ilp = explorer.estimate(prog, t, pipeline="fuse{strategy=xla},place{policy=ilp}").seconds
    assert ilp <= greedy * (1 + 1e-9)


def test_a_program_that_does_not_fit_is_reported(h100):
    prog = explorer.lower(mlp, *MLP_ARGS)
    tiny = h100.replace(**{"memory.hbm.capacity_bytes": 8e6})
    est = explorer.estimate(prog, tiny)
    assert not est.fits_in_memory
    report = est.memory_report()
    assert "OVER by" in report and "live at the main-memory peak" in report


def test_offload_to_host_makes_it_fit_at_a_price(h100):
    if h100.host_memory is None:
        pytest.skip("preset has no host memory level")
    prog = explorer.lower(mlp, *MLP_ARGS)
    tiny = h100.replace(**{"memory.hbm.capacity_bytes": 8e6})
    est = explorer.estimate(prog, tiny, pipeline="fuse{strategy=xla},place{offload=auto}")
    assert est.fits_in_memory, est.memory_report()
    assert est.seconds > explorer.estimate(prog, h100, pipeline="fuse{strategy=xla}").seconds


def test_the_explorer_iterates_over_each_pass_alternatives(h100):
    prog = explorer.lower(mlp, *MLP_ARGS)
    cmp = explorer.compare_alternatives(prog, h100, "fuse{strategy=xla},place{policy=greedy}")
    pipes = [r["pipeline"] for r in cmp.rows()]
    assert pipes[0] == "fuse{strategy=xla},place{policy=greedy}"
    assert "fuse{strategy=none},place{policy=greedy}" in pipes and "fuse{strategy=xla},place{policy=ilp}" in pipes
    assert len(pipes) == len(set(pipes)) == 5
