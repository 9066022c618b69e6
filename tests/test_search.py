"""search_sharding: enumeration, ranking, memory limits, and the Alpa-style ILP."""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.workflows.search import candidate_meshes, search_sharding
from passes.sharding.ilp import STATE_FRACTION, IlpShard, solve
from passes.sharding.spec import Mesh

S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def mlp():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import mlp as mlp_example

    fn, args = mlp_example.program(batch=512, d_in=256, hidden=512, n_layers=2, n_classes=16)
    return explorer.lower(fn, *args)


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


def test_tensor_parallel_stays_inside_a_node_on_switched_networks(h100):
    assert candidate_meshes(16, h100) == [(16, 1), (8, 2), (4, 4), (2, 8)]
    v5p = hw_targets.load("tpu_v5p")
    assert (1, 16) in candidate_meshes(16, v5p)


def test_search_ranks_fitting_plans_by_step_time(mlp, h100):
    res = search_sharding(mlp, h100, 8, stages=(1, 2), microbatches=(1, 2), schedules=("1f1b",))
    assert res.best is not None and res.best.fits
    times = [r.seconds for r in res.rows if r.fits]
    assert times == sorted(times)
    labels = {r.strategy for r in res.rows}
    assert {"dp=data", "fsdp=data", "tp=model", "dp=data,tp=model", "dp=data,tp=model,sp"} <= labels
    assert any(r.pp == 2 and r.bubble_s > 0 for r in res.rows)
    for r in res.rows:        # the breakdown adds up to the step time
        assert r.compute_s + r.memory_s + r.comm_exposed_s + r.overhead_s + r.bubble_s == pytest.approx(r.seconds, rel=1e-6)
    assert "fits" in res.table()
    # the best plan is reproducible from its pipeline text
    if res.best.pp == 1:
        again = explorer.estimate(mlp, h100, res.best.pipeline)
        assert again.seconds == pytest.approx(res.best.seconds, rel=1e-12)


def test_search_says_when_nothing_fits(mlp, h100):
    tiny = h100.replace(**{"memory.hbm.capacity_bytes": 1e5})
    res = search_sharding(mlp, tiny, 4, stages=(1,), fsdp=True, sequence_parallel=False)
    assert res.best is None and not res.fits_any
    assert "NOTHING FITS" in res.table()
    assert res.rows[0].memory_per_chip == min(r.memory_per_chip for r in res.rows)
    with pytest.raises(ValueError, match="chips must be a positive int"):
        search_sharding(mlp, h100, 0)


def test_ilp_keeps_parameters_within_the_memory_budget(mlp, h100):
    mesh = Mesh((("data", 4),))
    params = sum(mlp.graph.values[v].nbytes for v, n in zip(mlp.graph.inputs, mlp.graph.input_names)
                 if not n.startswith("batch"))
    budget = params / 2 / STATE_FRACTION           # replicated state cannot fit, a 4-way split can
    plan = solve(mlp, mesh, h100, budget)
    per_device = sum(mlp.graph.values[v].nbytes / (4 if s.axes else 1) for v, s in plan.inputs.items()
                     if not mlp.graph.input_names[mlp.graph.inputs.index(v)].startswith("batch"))
    assert per_device <= STATE_FRACTION * budget + 1
    assert any(s.axes for s in plan.inputs.values())
    res = IlpShard(mesh="data=4", memory_bytes=budget).analyse(mlp, h100)
    assert res.notes[0].startswith("ILP:")
    with pytest.raises(ValueError, match="no sharding within"):
        solve(mlp, mesh, h100, params / 100)


def _scaling_example():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "scaling_what_if.py"
    spec = importlib.util.spec_from_file_location("_example_scaling_what_if", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_scaling_example_follows_the_convention_and_its_names_are_megatron_ones():
    ex = _scaling_example()
    fn, args = ex.small_program()
    params, opt_state, batch = ex.concrete_args(**ex.SMALL_CONFIG)
    _, _, loss = jax.jit(fn)(params, opt_state, batch)           # the small config really runs
    assert jnp.isfinite(loss)
    with pytest.raises(TypeError, match="unknown Config override"):
        ex.program(layers=3)
    prog = explorer.lower(fn, *args)
    from passes.sharding import shard_program

    res = shard_program(prog, mesh="model=4", tp="model")
    names = dict(zip(prog.graph.inputs, prog.graph.input_names))
    split = {names[v]: res.specs[v] for v in prog.graph.inputs if names[v].startswith("params['h_0']['attn']")}
    assert split["params['h_0']['attn']['q_proj']['kernel']"].dims == ((), ("model",), ())   # heads split
    assert split["params['h_0']['attn']['o_proj']['kernel']"].dims == (("model",), (), ())
