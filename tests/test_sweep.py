"""Sweeps: rows equal one estimate per variant bit for bit; vectorised and per-variant paths agree;
the "depends" decision; Pareto fronts; errors that name the knob."""
import importlib
import itertools
import math
import random
from dataclasses import dataclass
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import explorer
import hw_targets
from explorer.model import timing
from explorer.model.variants import ArrayTarget, Sections
from explorer.pricing import vectorised
from explorer.costs import Gemm, Work
from passes.fusion import Fuse
from passes.placement import Place
from passes.plan import ExtraKernel

sw = importlib.import_module("explorer.workflows.sweep")    # the module (``explorer.sweep`` is the function)
S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture(scope="module")
def mlp():
    def f(x, w1, w2):
        h = jnp.tanh(x @ w1)
        return jnp.sum(jax.nn.softmax(h @ w2, axis=-1) * 2.0)
    return explorer.lower(f, S((256, 512), jnp.bfloat16), S((512, 1024), jnp.bfloat16), S((1024, 256), jnp.bfloat16))


@pytest.fixture(scope="module")
def allreduce():
    """A matmul + tanh per device, then an all-reduce over 8 devices (a collective with group size 8)."""
    mesh = jax.make_mesh((8,), ("d",))

    def f(x, w):
        return jax.lax.psum(jnp.tanh(x @ w), "d")
    g = jax.shard_map(f, mesh=mesh, in_specs=(P("d", None), P()), out_specs=P())
    return explorer.lower(g, S((1024, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P("d", None))),
                          S((512, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P())))


def expected_row(est, target) -> dict:
    """What a sweep row must hold, read off an ``Estimate`` computed independently."""
    return {"seconds": est.seconds, "compute_seconds": est.compute_seconds, "memory_seconds": est.memory_seconds,
            "comm_seconds": est.comm_seconds, "overhead_seconds": est.overhead_seconds, "bound": est.bound,
            "mfu": est.mfu, "fits_in_memory": est.fits_in_memory, "flops": est.flops,
            "bytes_accessed": est.bytes_accessed, "kernels": len(est.kernels),
            "peak_memory_bytes": est.peak_memory_bytes, "tdp_w": target.tdp_w}


def assert_same(row: dict, expected: dict, where: str) -> None:
    for col, want in expected.items():
        got = row[col]
        if isinstance(want, float):
            assert float(got).hex() == want.hex(), f"{where}: {col} {got!r} != {want!r}"
        else:
            assert got == want, f"{where}: {col} {got!r} != {want!r}"


def check_against_estimates(res, program, base, pipeline) -> None:
    for i, row in enumerate(res.rows()):
        target = base.replace(**{k: row[k] for k in res.knobs})
        assert_same(row, expected_row(explorer.estimate(program, target, pipeline=pipeline), target), f"variant {i}")


# -- rows equal individual estimates ---------------------------------------------------------------
def test_vectorised_rows_equal_estimates_bit_for_bit(mlp, h100):
    grid = {"memory.hbm.bandwidth_bytes_per_s": [1e12, 3.35e12, 8e12],
            "compute.matrix_flops_per_s.bf16": [2e14, 9.894e14],
            "compute.matrix_units": [33, 132], "compute.matrix_tile.n": [64, 256],
            "efficiency.vector": [0.5, 0.8], "launch_overhead_s": [0.0, 4e-6]}
    res = explorer.sweep(mlp, h100, grid)
    assert res.method == "vectorised"
    assert len(res) == 3 * 2 * 2 * 2 * 2 * 2
    combos = list(itertools.product(*grid.values()))
    assert [tuple(r[k] for k in grid) for r in res.rows()] == combos      # the last knob varies fastest
    check_against_estimates(res, mlp, h100, "default")


def test_collectives_switch_network_with_domain_size(allreduce, h100):
    # group of 8: inside an 8-chip scale-up domain, over scale-out when the domain has 4 chips
    grid = {"scale_up.domain_size": [4, 8], "scale_up.chip_bandwidth_bytes_per_s": [2e11, 4.5e11],
            "scale_out.latency_s": [5e-6, 2e-5], "efficiency.memory": [0.7, 0.9], "compute.matrix_tile.k": [32, 64]}
    res = explorer.sweep(allreduce, h100, grid)
    # the program's own shardings are read by the sharding pass, whose layout ranking reads the networks: it runs
    # once, traced, and its certificate holds on all 32 variants (every one would make the same plan)
    assert res.method == "vectorised by decision (1 pass runs, 1 distinct plans, certified)", res.method
    check_against_estimates(res, allreduce, h100, "default")
    comm = {(r["scale_up.domain_size"], r["scale_out.latency_s"]): r["comm_seconds"] for r in res.rows()}
    assert comm[(4, 2e-5)] > comm[(4, 5e-6)]          # over scale-out: its latency counts
    assert comm[(8, 2e-5)] == comm[(8, 5e-6)]         # inside the domain: it does not


def test_resized_torus_matches(allreduce):
    """Resizing a torus drops its dims: variants whose network descriptions differ in shape, not only in numbers."""
    tpu = hw_targets.load("tpu_v5p")
    grid = {"scale_up.domain_size": [8, tpu.scale_up.domain_size], "scale_up.latency_s": [1e-6, 4e-6]}
    res = explorer.sweep(allreduce, tpu, grid)
    assert res.method == "vectorised by decision (1 pass runs, 1 distinct plans, certified)", res.method
    check_against_estimates(res, allreduce, tpu, "default")


@dataclass(frozen=True)
class AddWork:
    """Test pass: an overlappable all-reduce, a host-link copy and a boundary transfer (reads no knob)."""

    name = "test_add_work"

    def reads_knobs(self):
        return frozenset()

    def run(self, program, plan, target):
        last = len(program.graph.ops) - 1
        extras = (ExtraKernel("ar", Work(collective="all_reduce", collective_bytes=4e6, group_size=8), after_op=last,
                              overlappable=True),
                  ExtraKernel("offload", Work(bytes_read=2e6), after_op=0, link="host", overlappable=True),
                  ExtraKernel("sync", Work(collective="all_gather", collective_bytes=1e5, group_size=4), after_op=last))
        return plan.with_(extra_kernels=plan.extra_kernels + extras,
                          transfer_bytes=MappingProxyType({"smem": 3e5}))


def test_inserted_work_hidden_comm_and_transfers_match(mlp, h100):
    pipeline = [Fuse(), AddWork()]
    grid = {"scale_up.chip_bandwidth_bytes_per_s": [1e10, 4.5e11], "memory.host.bandwidth_bytes_per_s": [1e9, 6.4e10],
            "memory.smem.bandwidth_bytes_per_s": [1e12, 3e13], "compute.matrix_flops_per_s.bf16": [1e13, 1e15]}
    res = explorer.sweep(mlp, h100, grid, pipeline=pipeline)
    assert res.method == "vectorised"
    check_against_estimates(res, mlp, h100, pipeline)
    hidden = [explorer.estimate(mlp, h100.replace(**{k: r[k] for k in grid}), pipeline=pipeline).hidden_comm_seconds
              for r in res.rows()]
    assert any(h > 0 for h in hidden)      # the overlap rule was exercised


def test_no_passes_and_placement_pipeline_vectorised(mlp, h100):
    grid = {"memory.hbm.latency_s": [1e-7, 6e-7], "compute.vector_flops_per_s.fp32": [1e13, 6.7e13]}
    for pipeline in (None, "fuse{strategy=xla},place{policy=hbm}"):
        res = explorer.sweep(mlp, h100, grid, pipeline=pipeline)
        assert res.method == "vectorised"
        check_against_estimates(res, mlp, h100, pipeline)


def test_loops_and_aggressive_fusion_vectorised(h100):
    """GPT-2 small with scanned layers (kernels that run n_layers times) under aggressive fusion (spills)."""
    from pathlib import Path

    from explorer.model_files import load_module, load_program

    path = Path(__file__).resolve().parent.parent / "examples" / "gpt2_train.py"
    prog = load_program(str(path), {**load_module(path).SMALL_CONFIG, "scan_layers": True})
    assert max(prog.weights) > 1
    grid = {"compute.matrix_flops_per_s.bf16": [1e14, 1e15], "memory.hbm.bandwidth_bytes_per_s": [1e12, 3e12],
            "launch_overhead_s": [1e-6, 5e-6]}
    pipeline = "fuse{strategy=aggressive}"
    res = explorer.sweep(prog, h100, grid, pipeline=pipeline)
    assert res.method == "vectorised"
    check_against_estimates(res, prog, h100, pipeline)


@dataclass(frozen=True)
class FixedDataParallel:
    """Test pass: data parallelism over 4 devices, decided on the preset (so no swept knob changes a decision)."""

    name = "test_fixed_dp"

    def reads_knobs(self):
        return frozenset()

    def run(self, program, plan, target):
        from passes.sharding.shard import Shard
        return Shard(mesh="data=4", dp="data").run(program, plan, hw_targets.load("h100_sxm"))


@pytest.mark.parametrize("launch_mode", ["graph", "per_kernel"])
def test_schedule_with_overlap_and_launches_vectorised(h100, launch_mode):
    """The step scheduler on arrays: a data-parallel train step whose gradient all-reduces overlap the backward
    (their exposed part depends on the network and the compute rates), launches that hide or show (the launch
    time and the gap between kernels swept): every variant equals its own estimate bit for bit."""
    import dataclasses
    from pathlib import Path

    from explorer.model_files import load_module, load_program

    path = Path(__file__).resolve().parent.parent / "examples" / "scaling_what_if.py"
    # gradients of ~50 MB: all-reduced in two buckets, the first beside the backward of the first layers
    prog = load_program(str(path), {**load_module(path).SMALL_CONFIG, "d_model": 512, "d_ff": 2048, "n_layers": 4,
                                    "batch": 64})
    base = dataclasses.replace(h100, launch_mode=launch_mode)
    grid = {"scale_up.chip_bandwidth_bytes_per_s": [2e10, 4.5e11], "compute.matrix_flops_per_s.bf16": [1e12, 9.894e14],
            "launch_overhead_s": [1e-6, 2e-5], "kernel_gap_s": [0.0, 4e-6]}
    pipeline = [FixedDataParallel(), Fuse()]
    res = explorer.sweep(prog, base, grid, pipeline=pipeline)
    assert res.method == "vectorised"
    for i, row in enumerate(res.rows()):
        target = base.replace(**{k: row[k] for k in res.knobs})
        assert_same(row, expected_row(explorer.estimate(prog, target, pipeline=pipeline), target), f"variant {i}")
    hidden = [explorer.estimate(prog, base.replace(**{k: r[k] for k in grid}), pipeline=pipeline).hidden_comm_seconds
              for r in res.rows()]
    assert any(h > 0 for h in hidden)            # the overlap was exercised
    bounds = set(res.column("bound"))
    assert len(bounds) > 1                       # the critical path changes with the knobs


def test_array_view_of_the_variants(h100):
    tpu = hw_targets.load("tpu_v5p")
    assert tpu.scale_up.torus_dims       # resizing the torus drops its dims: the variants' tuples differ in length
    variants = [{"scale_up.domain_size": 8}, {}, {"compute.matrix_units": 2}]
    knob_cols = {k: np.array([v.get(k, tpu.knobs()[k]) for v in variants]) for k in ("scale_up.domain_size",
                                                                                      "compute.matrix_units")}
    at = ArrayTarget(Sections(tpu, knob_cols, 3))
    dims = at.scale_up.torus_dims
    assert dims.dtype == object and list(dims) == [(), tpu.scale_up.torus_dims, tpu.scale_up.torus_dims]
    assert list(at.compute.matrix_units) == [tpu.compute.matrix_units, tpu.compute.matrix_units, 2]
    assert at.efficiency.matrix == tpu.efficiency.matrix           # not swept: a plain number
    nets = [t.scale_up for t in at.section_targets("scale_up")]
    assert nets == [tpu.replace(**v).scale_up for v in variants]
    assert at.section_targets("efficiency") == [tpu] * 3


# -- the per-variant path --------------------------------------------------------------------------
def test_placement_under_sram_capacity_runs_per_variant_and_agrees(mlp, h100):
    grid = {"memory.smem.capacity_bytes": [1e5, 1e6, 3e7], "memory.hbm.bandwidth_bytes_per_s": [1e12, 3.35e12]}
    pipeline = "fuse{strategy=xla},place{policy=greedy}"
    res = explorer.sweep(mlp, h100, grid, pipeline=pipeline)
    # the pass runs once per distinct (capacity, bandwidth); variants whose plans agree are priced together
    assert res.method.startswith("vectorised by decision (6 pass runs, ")
    assert "place{policy=greedy} reads memory.smem.capacity_bytes, memory.hbm.bandwidth_bytes_per_s" in res.reason
    check_against_estimates(res, mlp, h100, pipeline)
    serial = explorer.sweep(mlp, h100, grid, pipeline=pipeline, backend="process", workers=1)
    assert serial.method == "per-variant (serial)"
    for a, b in zip(res.rows(), serial.rows()):
        assert_same(a, b, "grouped vs per variant")
    by_cap = {r["memory.smem.capacity_bytes"]: r["seconds"] for r in res.rows() if r["memory.hbm.bandwidth_bytes_per_s"] == 1e12}
    assert by_cap[3e7] < by_cap[1e5]       # more SRAM: more tensors placed on chip, faster
    with pytest.raises(sw.SweepError, match="backend 'vector' needs pass decisions independent"):
        explorer.sweep(mlp, h100, grid, pipeline=pipeline, backend="vector")


def test_process_pool_equals_vectorised(mlp, h100):
    grid = {"memory.hbm.bandwidth_bytes_per_s": [1e12, 2e12, 3.35e12], "efficiency.matrix": [0.5, 0.9],
            "scale_up.latency_s": [1e-6, 3e-6]}
    vec = explorer.sweep(mlp, h100, grid, backend="vector")
    proc = explorer.sweep(mlp, h100, grid, backend="process", workers=2)
    assert proc.method == "per-variant (process)" and vec.method == "vectorised"
    assert vec.column_names == proc.column_names
    for a, b in zip(vec.rows(), proc.rows()):
        assert_same(a, b, "process vs vector")


def test_aggressive_fusion_reads_on_chip_capacity(mlp, h100):
    aggressive = Fuse(strategy="aggressive")
    assert sw.knobs_read([aggressive], ["memory.smem.capacity_bytes", "memory.hbm.bandwidth_bytes_per_s"]) == {
        "fuse{strategy=aggressive}": ["memory.smem.capacity_bytes"]}
    assert sw.knobs_read([Fuse(strategy="xla"), Place()], ["memory.smem.capacity_bytes"]) == {}
    # on-chip placement weighs whether a kernel is memory-bound: it reads the compute knobs too
    assert sw.knobs_read([Place(policy="ilp")], ["efficiency.memory", "compute.matrix_units"]) == {
        "place{policy=ilp}": ["efficiency.memory", "compute.matrix_units"]}
    assert sw.knobs_read([Place(policy="hbm")], ["efficiency.memory", "compute.matrix_units"]) == {}


@dataclass(frozen=True)
class Opaque:
    """Test pass that does not say which knobs it reads: assumed to read all of them."""

    name = "test_opaque"

    def run(self, program, plan, target):
        return plan


def test_undeclared_pass_is_assumed_to_depend(mlp, h100):
    res = explorer.sweep(mlp, h100, {"efficiency.matrix": [0.5, 0.6]}, pipeline=[Fuse(), Opaque()])
    assert res.method == "vectorised by decision (2 pass runs, 1 distinct plans)"
    assert "test_opaque reads efficiency.matrix" in res.reason
    check_against_estimates(res, mlp, h100, [Fuse(), Opaque()])


def test_knob_patterns():
    assert sw.knob_matches("memory.smem.capacity_bytes", "memory.")
    assert sw.knob_matches("memory.smem.capacity_bytes", "memory.*.capacity_bytes")
    assert not sw.knob_matches("memory.smem.latency_s", "memory.*.capacity_bytes")
    assert sw.knob_matches("efficiency.memory", "efficiency.memory")
    assert not sw.knob_matches("efficiency.memory_x", "efficiency.memory")


# -- results: best, Pareto, rendering --------------------------------------------------------------
def test_best_pareto_and_rendering(mlp, h100):
    grid = {"memory.hbm.bandwidth_bytes_per_s": [1e12, 2e12, 4e12], "tdp_w": [400, 700, 1000],
            "compute.matrix_flops_per_s.bf16": [3e14, 1e15]}
    res = explorer.sweep(mlp, h100, grid)
    secs = [r["seconds"] for r in res.rows()]
    assert res.best()["seconds"] == min(secs)
    assert res.best("mfu", largest=True)["mfu"] == max(r["mfu"] for r in res.rows())
    # a cost model of our own: power grows with bandwidth and peak
    def cost(r):
        return r["memory.hbm.bandwidth_bytes_per_s"] / 1e10 + r["compute.matrix_flops_per_s.bf16"] / 1e13
    front = res.pareto(cost=cost)
    pts = [(cost(r), r["seconds"]) for r in res.rows()]
    dominated = {i for i, (c, t) in enumerate(pts)
                 if any(c2 <= c and t2 <= t and (c2 < c or t2 < t) for c2, t2 in pts)}
    want = sorted({pts[i] for i in range(len(pts)) if i not in dominated})
    assert [(cost(r), r["seconds"]) for r in front.rows()] == want
    by_tdp = res.pareto(cost="tdp_w")
    assert [r["tdp_w"] for r in by_tdp.rows()] == [400.0]     # time does not depend on TDP: the cheapest wins
    with pytest.raises(sw.SweepError, match="does not set 'price_usd'"):
        res.pareto(cost="price_usd")
    text = res.table(top=3, sort="seconds")
    assert "memory.hbm.bandwidth_bytes_per_s" in text and "... 15 more rows" in text
    html = res._repr_html_()
    assert html.startswith("<h4>Sweep") and "<table>" in html
    d = res.to_dict()
    assert d["method"] == "vectorised" and len(d["rows"]) == 18 and d["rows"][0]["tdp_w"] == 400.0


def test_same_inputs_same_numbers(mlp, h100):
    grid = {"memory.l2.bandwidth_bytes_per_s": [5e12, 1.2e13], "compute.transcendental_per_s": [1e12, 4e12]}
    a, b = explorer.sweep(mlp, h100, grid), explorer.sweep(mlp, h100, grid)
    assert a.rows() == b.rows()


def test_explicit_variant_list(mlp, h100):
    variants = [{"efficiency.matrix": 0.5}, {"memory.hbm.bandwidth_bytes_per_s": 2e12}, {}]
    res = explorer.sweep(mlp, h100, variants)
    assert res.knobs == ("efficiency.matrix", "memory.hbm.bandwidth_bytes_per_s")
    assert res.row(2)["efficiency.matrix"] == h100.efficiency.matrix     # unset knobs keep the base value
    for row, v in zip(res.rows(), variants):
        target = h100.replace(**v)
        assert_same(row, expected_row(explorer.estimate(mlp, target), target), str(v))


# -- errors ----------------------------------------------------------------------------------------
def test_errors_name_the_knob_and_value(mlp, h100):
    with pytest.raises(sw.SweepError, match=r"unknown knob 'memory.hbm.bandwith_bytes_per_s' \(did you mean "
                                            r"'memory.hbm.bandwidth_bytes_per_s'\?\)"):
        explorer.sweep(mlp, h100, {"memory.hbm.bandwith_bytes_per_s": [1e12]})
    with pytest.raises(sw.SweepError, match="knob 'efficiency.matrix' value must be a number, got 'fast'"):
        explorer.sweep(mlp, h100, {"efficiency.matrix": ["fast"]})
    with pytest.raises(sw.SweepError, match="knob 'efficiency.matrix' has an empty list"):
        explorer.sweep(mlp, h100, {"efficiency.matrix": []})
    with pytest.raises(hw_targets.TargetError, match=r"efficiency.matrix.*must be in \(0, 1\], got 1.5"):
        explorer.sweep(mlp, h100, {"efficiency.matrix": [0.5, 1.5]})
    with pytest.raises(hw_targets.TargetError, match="compute.matrix_units.*must be an integer, got 1.5"):
        explorer.sweep(mlp, h100, {"compute.matrix_units": [1.5]})
    with pytest.raises(sw.SweepError, match="the grid has no variants"):
        explorer.sweep(mlp, h100, [])
    with pytest.raises(sw.SweepError, match="backend must be one of"):
        explorer.sweep(mlp, h100, {"efficiency.matrix": [0.5]}, backend="gpu")


# -- the vectorised pieces against their scalar twins -----------------------------------------------
def test_sums_reproduce_python_sum():
    rng = random.Random(0)
    values = np.array([[rng.choice([-0.0, rng.uniform(0, 1) * 10 ** rng.randint(-9, 3)]) for _ in range(5)]
                       for _ in range(300)])
    order = [rng.randrange(300) for _ in range(500)]
    got = vectorised.builtin_sum_rows(values, order)
    for j in range(5):
        want = float(sum(values[i, j] for i in order if values[i, j].hex() != (-0.0).hex()))
        assert got[j].hex() == want.hex()
    start = np.array([-0.0, -1e-6, 0.0, 2.0, -3.5])
    plain = vectorised.plain_sum_rows(start, values, order)
    for j in range(5):
        total = float(start[j])
        for i in order:
            if values[i, j].hex() != (-0.0).hex():
                total += values[i, j]
        assert plain[j].hex() == total.hex()


def _neumaier(xs):
    """CPython >= 3.12's sum() of floats, written out (bltinmodule.c, builtin_sum_impl)."""
    f, c = 0.0, 0.0
    for x in xs:
        t = f + x
        c += (f - t) + x if abs(f) >= abs(x) else (x - t) + f
        f = t
    return f + c if c and math.isfinite(c) else f


def test_compensated_sum_emulation(monkeypatch):
    monkeypatch.setattr(vectorised, "_COMPENSATED_SUM", True)
    rng = random.Random(1)
    values = np.array([[rng.uniform(0, 1) * 10 ** rng.randint(-12, 12) for _ in range(4)] for _ in range(200)])
    values[5, 0] = 1e100
    values[9, 0] = -1e100
    order = list(range(200)) * 2
    got = vectorised.builtin_sum_rows(values, order)
    for j in range(4):
        assert got[j].hex() == _neumaier(values[i, j] for i in order).hex()


def test_bound_codes_and_array_utilisation_match_scalars(h100):
    rng = random.Random(2)
    cases = [tuple(rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(4)) for _ in range(400)]
    codes = timing.bound_codes(*(np.array(col) for col in zip(*cases)))
    assert [timing.BOUNDS[c] for c in codes] == [timing.KernelTime(*c).bound for c in cases]
    g = Gemm(3, 1000, 777, 300)
    tiles = [(64, 128, 32), (128, 128, 64), (256, 64, 16)]
    units = [1, 7, 132, 1000]
    combos = [(t, u) for t in tiles for u in units]
    arr = timing._utilisation(g, tuple(np.array([t[i] for t, _ in combos]) for i in range(3)),
                              np.array([u for _, u in combos]))
    assert list(arr) == [timing.matrix_utilisation(g, t, u) for t, u in combos]


# -- ray: a real local cluster, started and shut down here ----------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs (no dashboard), shut down after this module's Ray tests. Ray is in the
    ``test`` extra, so a missing install fails here rather than skipping."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.filterwarnings("ignore:os.fork")      # ray starts its daemons with fork + exec
def test_ray_backend_equals_vectorised(mlp, h100, ray_cluster):
    grid = {"memory.hbm.bandwidth_bytes_per_s": [1e12, 3.35e12], "efficiency.vector": [0.5, 0.9]}
    vec = explorer.sweep(mlp, h100, grid, backend="vector")
    res = explorer.sweep(mlp, h100, grid, backend="ray")
    assert ray_cluster.is_initialized() and ray_cluster.cluster_resources().get("CPU") == 2
    assert res.method == "per-variant (ray)"
    assert vec.column_names == res.column_names
    for a, b in zip(vec.rows(), res.rows()):
        assert_same(a, b, "ray vs vector")


@pytest.mark.filterwarnings("ignore:os.fork")
def test_ray_backend_equals_the_local_per_variant_path(mlp, h100, ray_cluster):
    """Pass decisions that depend on the knob (placement under SRAM capacity): Ray and this process agree bit for
    bit, rows in variant order."""
    grid = {"memory.smem.capacity_bytes": [1e5, 1e6, 3e7], "memory.hbm.bandwidth_bytes_per_s": [1e12, 3.35e12]}
    pipeline = "fuse{strategy=xla},place{policy=greedy}"
    local = explorer.sweep(mlp, h100, grid, pipeline=pipeline, backend="process", workers=1)
    res = explorer.sweep(mlp, h100, grid, pipeline=pipeline, backend="ray")
    assert local.method == "per-variant (serial)" and res.method == "per-variant (ray)"
    assert [tuple(r[k] for k in grid) for r in res.rows()] == list(itertools.product(*grid.values()))
    for a, b in zip(local.rows(), res.rows()):
        assert_same(a, b, "ray vs serial")
    check_against_estimates(res, mlp, h100, pipeline)
