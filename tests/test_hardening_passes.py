"""Issue 15, the passes' part: each item as a user meets it, on real JAX programs lowered with ``explorer.lower``.

- ``place{greedy|ilp}`` never puts more in a memory level than it holds, at any point of the schedule, as the
  estimate itself measures it (``Estimate.memory_peaks``, from ``explorer.model.memory.level_peaks``);
- ``place{policy=ilp}`` / ``shard_ilp`` give the same plan in every process (a work limit, not a wall clock)
  and print nothing on stdout (``explorer show ... --json`` stays valid JSON);
- a bad ``remat{layers=...}`` regex is a clear error naming the option and the pattern;
- expert parallelism over the data axis (``shard{mesh=data=8,dp=data,ep=data}``, GShard / Switch);
- an expert-parallel top-2 MoE layer gets its dispatch and combine all-to-alls, forward and backward, with
  the bytes derived by hand, for an einsum (one-hot) dispatch and a gather/scatter one; ``top_k`` splits
  along its batch dimensions.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.frontend.model_files import load_module, load_program
from explorer.report.units import fmt_bytes
from passes import pipeline as pl
from passes.pipeline import PipelineSyntaxError
from passes.remat import Remat

S = jax.ShapeDtypeStruct
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
F32 = 4


def _small(spec: str):
    path = EXAMPLES / spec.partition(":")[0]
    return load_program(str(EXAMPLES / spec), dict(load_module(path).SMALL_CONFIG))


def _place_note(est, level: str) -> str:
    return [n for n in est.plan_notes if n.startswith("place: ") and f" in {level} " in n][-1]


# -- 1. placement within capacity -------------------------------------------------------------------

def test_gpt2_on_the_sram_heavy_chip_stays_within_its_512_mb_as_the_readme_runs_it():
    # the README's what-if, GPT-2 small (124M) at its real size: the old plan claimed "at most 30.1 MB at once"
    # while the estimate found 1,929.8 MB live in the 512 MB SRAM
    prog = load_program(str(EXAMPLES / "gpt2_train.py"))
    chip = hw_targets.load("hypo_sram_heavy")
    est = explorer.estimate(prog, chip, pipeline="fuse{strategy=xla},place{policy=greedy}")
    peak = dict(est.memory_peaks)["sram"]
    assert 0 < peak <= 512e6
    assert est.fits_in_memory, est.memory_report()
    assert f"at most {fmt_bytes(peak)} at once of {fmt_bytes(512e6)}" in _place_note(est, "sram")
    assert est.seconds < explorer.estimate(prog, chip, pipeline="fuse{strategy=xla}").seconds


@pytest.mark.parametrize("spec,fusion,policy,capacity", [
    ("gpt2_train.py", "aggressive", "greedy", 5e3),     # old plans: 6,468 B live in 5,000 B
    ("gpt2_train.py", "xla", "ilp", 1e4),               # 13,312 B in 10,000 B
    ("gpt2_train.py", "none", "greedy", 1.5e4),         # 15,492 B in 15,000 B
    ("cnn.py", "aggressive", "greedy", 3e4),            # 65,512 B in 30,000 B
    ("mlp.py", "xla", "ilp", 5e3),                      # 5,120 B in 5,000 B
])
def test_placements_that_used_to_overflow_the_sram(spec, fusion, policy, capacity):
    prog = _small(spec)
    target = hw_targets.load("hypo_sram_heavy").replace(**{"memory.sram.capacity_bytes": capacity})
    est = explorer.estimate(prog, target, pipeline=f"fuse{{strategy={fusion}}},place{{policy={policy}}}")
    peak = dict(est.memory_peaks).get("sram", 0)
    assert peak <= capacity
    assert f"at most {fmt_bytes(peak)} at once" in _place_note(est, "sram")


def chain(x):
    a = jnp.exp(x)
    b = jnp.tanh(a)
    return jnp.sin(b)


def test_two_intermediates_that_overlap_share_the_capacity_by_hand():
    # one-op kernels: x -> exp -> a -> tanh -> b -> sin -> out, every tensor N f32 = 1 MiB. a and b are both live
    # at the tanh; x (an input) and the output are live throughout. With 2.5 MiB on chip the intermediates fit
    # together (2 MiB at the tanh) and need no copy; an input or output would need one each way and leave room
    # for only one intermediate, so the best plan is {a, b} and the SRAM peak is exactly 2 MiB.
    n = 1 << 18
    prog = explorer.lower(chain, S((n,), jnp.float32))
    h100 = hw_targets.load("h100_sxm")
    level = h100.on_chip.name
    for policy in ("greedy", "ilp"):
        roomy = h100.replace(**{f"memory.{level}.capacity_bytes": 2.5 * n * F32})
        est = explorer.estimate(prog, roomy, pipeline=f"fuse{{strategy=none}},place{{policy={policy}}}")
        graph = prog.graph
        a, b = graph.ops[0].results[0], graph.ops[1].results[0]
        assert dict(est._plan.placement) == {a: level, b: level}
        assert dict(est.memory_peaks)[level] == 2 * n * F32
        # 1.5 MiB: a and b never fit together, one of them does
        tight = h100.replace(**{f"memory.{level}.capacity_bytes": 1.5 * n * F32})
        est = explorer.estimate(prog, tight, pipeline=f"fuse{{strategy=none}},place{{policy={policy}}}")
        assert dict(est.memory_peaks)[level] == n * F32


# -- 2. the ILPs: deterministic and quiet --------------------------------------------------------------

_SCRIPT = """
import json, sys
import explorer, hw_targets
from explorer.frontend.model_files import load_module, load_program
spec = {spec!r}
prog = load_program(spec, dict(load_module(spec).SMALL_CONFIG))
target = hw_targets.load("hypo_sram_heavy").replace(**{{"memory.sram.capacity_bytes": {capacity!r}}})
est = explorer.estimate(prog, target, pipeline={pipeline!r})
sys.stdout.write(json.dumps({{"seconds": repr(est.seconds), "notes": list(est.plan_notes),
                              "peaks": dict(est.memory_peaks), "table": est.to_dict()}}))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("spec,capacity,place,says", [
    # the small ResNet with 10 kB of SRAM: HiGHS used to print a debug line from C onto stdout here
    ("cnn.py", 1e4, "place{policy=ilp}", "ILP optimal"),
    # stopped by the work limit, not a clock: the same best-so-far plan in every process
    ("gpt2_train.py", 2e4, "place{policy=ilp,node_limit=2}", "ILP stopped early at the work limit of 2 nodes"),
])
def test_ilp_placement_is_the_same_in_two_processes_and_prints_nothing(spec, capacity, place, says):
    code = _SCRIPT.format(spec=str(EXAMPLES / spec), capacity=capacity, pipeline=f"fuse{{strategy=xla}},{place}")
    first, second = _run(code), _run(code)
    assert first.returncode == 0, first.stderr[-2000:]
    a, b = json.loads(first.stdout), json.loads(second.stdout)     # nothing but the JSON on stdout
    assert a == b                                                   # bit for bit (repr of the float)
    assert "HighsMipSolverData" not in first.stderr + first.stdout
    assert says in _place_note_text(a["notes"])


def test_the_solver_prints_nothing_even_from_c(capfd):
    # a knapsack on which HiGHS (scipy 1.17's) printed "HighsMipSolverData::transformNewIntegerFeasibleSolution
    # tmpSolver.run();" from C, past sys.stdout
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint
    from passes.solver import solve_milp

    rng = np.random.default_rng(0)
    c, a = -rng.random(300), rng.random((40, 300))
    res = solve_milp(c, integrality=np.ones(300), bounds=Bounds(0, 1), constraints=LinearConstraint(a, -np.inf, 10),
                     node_limit=5)
    out = capfd.readouterr()
    assert out.out == ""
    assert not res.optimal and res.nodes == 5 and "work limit of 5 nodes" in res.note


def test_the_solver_starts_from_a_heuristic_answer_and_never_returns_worse():
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint
    from passes.solver import solve_milp

    rng = np.random.default_rng(1)
    value, weight = rng.random(300), rng.random((40, 300))
    # the greedy knapsack answer by value per weight, a feasible point
    chosen, used = [], np.zeros(40)
    for j in sorted(range(300), key=lambda j: -value[j] / weight[:, j].sum()):
        if (used + weight[:, j] <= 10).all():
            chosen.append(j)
            used += weight[:, j]
    start = {j: float(j in chosen) for j in range(300)}
    kw = dict(integrality=np.ones(300), bounds=Bounds(0, 1), constraints=LinearConstraint(weight, -np.inf, 10),
              node_limit=1)
    cold, warm = solve_milp(-value, **kw), solve_milp(-value, start=start, **kw)
    assert warm.objective <= -value[chosen].sum() + 1e-9
    assert (weight @ warm.x <= 10 + 1e-6).all()
    assert warm.objective <= cold.objective + 1e-9 or not cold.optimal


def _place_note_text(notes):
    return [n for n in notes if n.startswith("place: ")][-1]


def test_explorer_show_json_with_ilp_placement_is_valid_json(tmp_path):
    preset = (ROOT / "hw_targets" / "presets" / "hypo_sram_heavy.toml").read_text()
    chip = tmp_path / "small_sram.toml"
    chip.write_text(preset.replace("capacity_bytes = 512e6", "capacity_bytes = 1e5", 1)
                    .replace('name = "hypo_sram_heavy"', 'name = "small_sram"', 1))
    sets = [f"--set={k}={v}" for k, v in load_module(EXAMPLES / "gpt2_train.py").SMALL_CONFIG.items()]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "explorer", "show", str(EXAMPLES / "gpt2_train.py"), *sets,
                          "--target", str(chip), "--pipeline", "fuse{strategy=xla},place{policy=ilp}", "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data


def test_the_solver_stops_at_a_work_limit_and_says_so():
    prog = _small("gpt2_train.py")
    target = hw_targets.load("hypo_sram_heavy").replace(**{"memory.sram.capacity_bytes": 5e3})
    est = explorer.estimate(prog, target, pipeline="fuse{strategy=xla},place{policy=ilp,node_limit=1}")
    note = _place_note(est, "sram")
    assert "ILP stopped early at the work limit of 1 nodes" in note or "ILP optimal" in note
    assert dict(est.memory_peaks).get("sram", 0) <= 5e3
    with pytest.raises(PipelineSyntaxError, match="node_limit"):
        pl.parse("place{policy=ilp,node_limit=0}")
    with pytest.raises(PipelineSyntaxError, match="node_limit"):
        pl.parse("shard_ilp{mesh=data=4,node_limit=-3}")


def test_sharding_ilp_is_deterministic_across_processes():
    code = textwrap.dedent("""
        import sys
        from explorer.frontend.model_files import load_module, load_program
        import hw_targets
        from passes.sharding.ilp import IlpShard
        spec = sys.argv[1]
        prog = load_program(spec, dict(load_module(spec).SMALL_CONFIG))
        res = IlpShard(mesh="data=2.model=2").analyse(prog, hw_targets.load("h100_sxm"))
        sys.stdout.write(repr((res.notes[0], sorted((k, str(v)) for k, v in res.specs.items()),
                               [(c.kind, c.payload_bytes) for c in res.collectives])))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "mlp.py")], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=600) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.startswith("('ILP:") and "wall-clock" not in runs[0].stdout


# -- 3. remat{layers=...} with a bad regex ---------------------------------------------------------------

def test_a_bad_layers_regex_names_the_option_and_the_pattern():
    with pytest.raises(PipelineSyntaxError, match=r"remat.*layers='h_\(\[0-9\]'.*not a valid regular expression"):
        pl.parse("fuse{strategy=xla},remat{policy=full,layers=h_([0-9]}")
    with pytest.raises(ValueError, match=r"layers='\*h'"):
        Remat(policy="full", layers="*h")
    # through estimate, as a user calls it
    prog = _small("gpt2_train.py")
    with pytest.raises(PipelineSyntaxError, match="layers"):
        explorer.estimate(prog, "h100_sxm", pipeline="remat{policy=selective,layers=[h_}")
    # a good one still works
    est = explorer.estimate(prog, "h100_sxm", pipeline="remat{policy=full,layers=h_[0-9]+},fuse{strategy=xla}")
    assert est.seconds > 0


# -- 4, 5. expert parallelism: a top-2 MoE layer, GShard / Switch style ------------------------------------
# Tokens in G groups (one per device) of S; a router picks each token's top-2 of E experts; each expert takes at
# most C = 2 S / E tokens of a group (capacity factor 1). The dispatched tokens [E, G, C, D] are split by group
# where they are made and by expert where the experts run: an all-to-all each way, forward and backward. With
# E * C = 2 S, one all-to-all moves 2 * tokens * d_model * 4 bytes / devices per device.

def moe_program(groups: int, tokens_per_group: int, experts: int, dispatch: str, d: int = 32, hidden: int = 64):
    G, SG, D, E, H, K = groups, tokens_per_group, d, experts, hidden, 2
    C = K * SG // E

    def route(params, x):
        probs = jax.nn.softmax(jnp.einsum("gsd,de->gse", x, params["router"]["kernel"]), axis=-1)
        gate, idx = jax.lax.top_k(probs, K)                                     # [G, S, K]
        mask = jax.nn.one_hot(idx, E, dtype=x.dtype)                            # [G, S, K, E]
        pos = jnp.cumsum(mask.reshape(G, SG * K, E), axis=1).reshape(G, SG, K, E) * mask - 1.0
        return gate, idx, pos, mask * (pos < C)                                 # position in the expert's buffer

    def experts_ffn(params, xe):                                                # [E, G, C, D], experts split
        h = jax.nn.relu(jnp.einsum("egcd,edh->egch", xe, params["experts"]["wi"]))
        return jnp.einsum("egch,ehd->egcd", h, params["experts"]["wo"])

    def moe_einsum(params, x):                                                  # one-hot dispatch (GShard)
        gate, idx, pos, keep = route(params, x)
        slots = jax.nn.one_hot(pos.astype(jnp.int32), C, dtype=x.dtype)         # [G, S, K, E, C]
        disp = (slots * keep[..., None]).sum(2)
        comb = (slots * (keep * gate[..., None])[..., None]).sum(2)
        ye = experts_ffn(params, jnp.einsum("gsec,gsd->egcd", disp, x))
        return jnp.einsum("gsec,egcd->gsd", comb, ye)

    def moe_gather(params, x):                                                  # scatter in, gather out
        gate, idx, pos, keep = route(params, x)
        slot = jnp.where(keep.sum(-1) > 0, (pos * keep).sum(-1), C).astype(jnp.int32)   # C: the overflow row

        def scatter(xg, ig, sg):
            buf = jnp.zeros((E, C + 1, D), xg.dtype)
            return buf.at[ig, sg].add(jnp.broadcast_to(xg[:, None, :], (SG, K, D)))[:, :C]

        def gather(yg, ig, sg, gg):
            return (yg[ig, sg] * gg[..., None]).sum(1)

        xe = jax.vmap(scatter)(x, idx, slot).transpose(1, 0, 2, 3)             # [E, G, C, D]
        ye = jnp.pad(experts_ffn(params, xe), ((0, 0), (0, 0), (0, 1), (0, 0)))  # [E, G, C + 1, D]
        return jax.vmap(gather)(ye.transpose(1, 0, 2, 3), idx, slot, gate)

    moe = {"einsum": moe_einsum, "gather": moe_gather}[dispatch]

    def train_step(params, batch):
        def loss(p):
            h = jnp.einsum("gsd,df->gsf", batch["x"], p["proj"]["kernel"])    # a layer before, so dx is needed
            return jnp.mean((moe(p, h) - batch["y"]) ** 2)
        value, grads = jax.value_and_grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value

    params = {"proj": {"kernel": S((D, D), jnp.float32)}, "router": {"kernel": S((D, E), jnp.float32)},
              "experts": {"wi": S((E, D, H), jnp.float32), "wo": S((E, H, D), jnp.float32)}}
    batch = {"x": S((G, SG, D), jnp.float32), "y": S((G, SG, D), jnp.float32)}
    return explorer.lower(train_step, params, batch)


@pytest.fixture(scope="module")
def moe_einsum():
    return moe_program(4, 16, 4, "einsum")


@pytest.fixture(scope="module")
def moe_gather():
    return moe_program(4, 16, 4, "gather")


def _collectives(res, kind=None):
    return sorted((c.kind, c.payload_bytes, c.group_size, c.phase) for c in res.collectives
                  if kind is None or c.kind == kind)


T, DM, DEV = 64, 32, 4         # tokens, d_model, devices


def test_ep_einsum_moe_gets_dispatch_and_combine_all_to_alls_forward_and_backward(moe_einsum):
    from passes.sharding import shard_program

    res = shard_program(moe_einsum, hw_targets.load("h100_sxm"), mesh="data=4", dp="data", ep="data")
    a2a = 2 * T * DM * F32 / DEV        # [E, G, C, D] f32 split 4 ways, E * C = 2 * S: 4,096 B
    assert a2a == 4096
    assert _collectives(res, "all_to_all") == sorted([
        ("all_to_all", a2a, 4, "forward"),      # dispatch: groups -> experts
        ("all_to_all", a2a, 4, "forward"),      # combine: experts -> groups
        ("all_to_all", a2a, 4, "backward"),     # the combine's gradient: groups -> experts
        ("all_to_all", a2a, 4, "backward"),     # the dispatch's gradient: experts -> groups
    ])
    # nothing else moves tokens: no all-reduce of the [tokens, d] output, no reduce-scatter, no gather
    assert not [c for c in res.collectives if c.kind in ("reduce_scatter", "all_gather")]
    # the replicated (data-parallel) weights' gradients are all-reduced; the experts' stay on their devices
    assert _collectives(res, "all_reduce") == sorted([
        ("all_reduce", DM * DM * F32, 4, "backward"),      # proj
        ("all_reduce", DM * 4 * F32, 4, "backward"),       # router [d, E]
        ("all_reduce", 4.0, 4, "forward"),                 # the mean loss
    ])


def test_ep_gather_scatter_moe_gets_its_all_to_alls_too(moe_gather):
    from passes.sharding import shard_program

    res = shard_program(moe_gather, hw_targets.load("h100_sxm"), mesh="data=4", dp="data", ep="data")
    a2a = 2 * T * DM * F32 / DEV                    # [E, G, C, D]: 4,096 B
    padded = 4 * 4 * (8 + 1) * DM * F32 / DEV       # [E, G, C + 1, D] with the overflow row: 4,608 B
    assert _collectives(res, "all_to_all") == sorted([
        ("all_to_all", a2a, 4, "forward"),          # dispatch (scatter) -> experts
        ("all_to_all", padded, 4, "forward"),       # experts -> combine (gather)
        ("all_to_all", a2a, 4, "backward"),         # the gather's gradient (a scatter) -> experts
        ("all_to_all", padded, 4, "backward"),      # experts -> the scatter's gradient (a gather)
    ])
    assert not [c for c in res.collectives if c.kind in ("reduce_scatter", "all_gather")]
    assert sorted(c.payload_bytes for c in res.collectives if c.kind == "all_reduce") == [4.0, 512.0, 4096.0]


def test_top_k_is_split_along_its_batch_dimensions(moe_einsum):
    from passes.sharding import shard_program
    from passes.sharding.spec import Spec

    res = shard_program(moe_einsum, hw_targets.load("h100_sxm"), mesh="data=4", ep="data")
    (op,) = [o for o in moe_einsum.graph.ops if o.name == "chlo.top_k"]
    assert res.choices[op.id] == "top_k"
    for v in (*op.operands, *op.results):           # [G, S, E] -> [G, S, 2]: groups split, the searched dim whole
        assert res.specs[v] == Spec((("data",), (), ()))
    assert res.works[op.id].bytes_accessed == pytest.approx(moe_einsum.works[op.id].bytes_accessed / 4)


def test_ep_over_the_data_axis_is_accepted_and_is_expert_parallelism_alone():
    prog = moe_program(8, 8, 8, "einsum")           # 8 groups of 8 tokens, 8 experts: the mesh
    h100 = hw_targets.load("h100_sxm")
    est = explorer.estimate(prog, h100, "shard{mesh=data=8,dp=data,ep=data},fuse{strategy=xla}")
    rows = [k for k in est.kernels if k.name.startswith("all_to_all")]
    assert sorted(k.collective_bytes for k in rows) == [2 * 64 * DM * F32 / 8] * 4      # 2,048 B each
    from passes.sharding import shard_program

    both = shard_program(prog, h100, mesh="data=8", dp="data", ep="data")
    alone = shard_program(prog, h100, mesh="data=8", ep="data")
    assert both.collectives == alone.collectives and dict(both.specs) == dict(alone.specs)
    with pytest.raises(PipelineSyntaxError, match="tp axis data is also used by another strategy"):
        explorer.estimate(prog, h100, "shard{mesh=data=8,dp=data,tp=data},fuse{strategy=xla}")


def test_top_k_and_approx_max_k_of_a_split_batch_need_no_gather():
    from passes.sharding import shard_program
    from passes.sharding.spec import Spec

    def f(batch):
        v, _ = jax.lax.approx_max_k(batch["x"], 4)
        w, _ = jax.lax.top_k(batch["x"], 4)
        return v.sum() + w.sum()

    prog = explorer.lower(f, {"x": S((8, 128), jnp.float32)})
    res = shard_program(prog, mesh="data=4", dp="data")
    picks = [o for o in prog.graph.ops if o.name in ("chlo.top_k", "stablehlo.custom_call")]
    assert sorted(res.choices[o.id] for o in picks) == ["approx top_k", "top_k"]
    for o in picks:
        assert all(res.specs[v] == Spec((("data",), ())) for v in o.results)
    assert [(c.kind, c.payload_bytes) for c in res.collectives] == [("all_reduce", 4.0)]     # the scalar sum only


# -- 6. fuse{forbid=...} / fuse{force=...} of edges that do not exist --------------------------------------

def _tanh_matmul():
    return explorer.lower(lambda a, b: jnp.tanh(a @ b) + 1.0, S((64, 128), jnp.float32), S((128, 64), jnp.float32))


def test_the_overridden_edges_really_do_not_exist():
    prog = _tanh_matmul()
    graph = prog.graph
    assert prog.num_ops < 999999                                         # no op 999999
    made_by = {r: op.id for op in graph.ops for r in op.results}
    assert 2 not in {made_by.get(v) for v in graph.ops[0].operands}     # op 0 reads nothing op 2 makes


@pytest.mark.parametrize("strategy", ["aggressive", "xla"])
@pytest.mark.parametrize("option, edge", [("forbid", "1>999999"), ("force", "2>0")])
def test_an_override_of_an_edge_that_does_not_exist_is_noted(strategy, option, edge):
    est = explorer.estimate(_tanh_matmul(), "h100_sxm", pipeline=f"fuse{{strategy={strategy},{option}={edge}}}")
    notes = [note for note in est.plan_notes if edge in note]
    assert notes and option in notes[0], est.plan_notes
