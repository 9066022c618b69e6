"""Rematerialisation and activation offload (passes/remat.py), priced and searched.

The reference model is a small transformer train step written in plain JAX, so every residual JAX
saves can be listed by hand: per layer ``q k v = x@Wq, x@Wk, x@Wv``, ``p = softmax(q k^T)``,
``o = p v``, ``x1 = x + o@Wo``, ``x2 = x1 + tanh(x1@W1)@W2``; loss ``sum(x^2)``; float32.
B=4, T=64, D=16, L=3. Fusion off (``fuse{strategy=none}``) where numbers are derived by hand, so
every op result that the backward reads is a tensor in memory.
"""
import dataclasses
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.model import liveness
from explorer.model.memory import main_memory_liveness
from passes.fusion import kernels_of
from passes import pipeline as pl
from passes import remat

S = jax.ShapeDtypeStruct
B, T, D, L = 4, 64, 16, 3
F32 = 4
BTD, BTT, BT = B * T * D, B * T * T, B * T

# JAX's residuals of one layer (linearisation of each primitive), in bytes:
#   q, k, v (dq = dS k, dk = dS^T q, dv = p^T do): 3 x BTD
#   softmax = e / sum(e), e = exp(s - max): e (BTT), sum (BT), p (BTT), and the quotient rule's 1 / sum^2 (BT)
#   o (read by dWo = o^T dx), x1 (read by dW1 = x1^T dh): 2 x BTD
#   tanh(x1 W1) (read by dW2) and 1 - tanh (the tanh derivative): 2 x 4 BTD
RESIDUALS = F32 * (3 * BTD + 2 * BTT + 2 * BT + 2 * BTD + 2 * 4 * BTD)
# selective keeps the projection outputs the recomputation starts from: q, k, v, o@Wo (for x1) and
# x1@W1 (for tanh): 3 BTD + BTD + 4 BTD
SELECTIVE_KEPT = F32 * (3 * BTD + BTD + 4 * BTD)
# recomputed matmuls: full re-runs every matmul but x1@W2 (its output only feeds the layer output);
# selective only the two activation-activation ones (scores and p v)
FULL_MATRIX = 2 * BT * D * D * 3 + 2 * B * T * T * D * 2 + 2 * BT * D * D + 2 * BT * D * 4 * D
SELECTIVE_MATRIX = 2 * B * T * T * D * 2
# recomputed vector flops (both): row max and row sum (T - 1 each per row), the max(-inf, .) guard
# (BT), s - max and e / sum (BTT each), x + o@Wo (BTD); exp and tanh are transcendentals
VECTOR = 2 * BT * (T - 1) + BT + 2 * BTT + BTD


def layer(x, w):
    with jax.named_scope("attn"):
        q, k, v = x @ w["wq"], x @ w["wk"], x @ w["wv"]
        p = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k), axis=-1)
        x = x + jnp.einsum("bts,bsd->btd", p, v) @ w["wo"]
    with jax.named_scope("mlp"):
        return x + jnp.tanh(x @ w["w1"]) @ w["w2"]


def train_step(checkpoint: bool):
    def loss(params, x):
        for i, w in enumerate(params):
            with jax.named_scope(f"layer_{i}"):
                x = (jax.checkpoint(layer) if checkpoint else layer)(x, w)
        return jnp.sum(x * x)
    return lambda params, x: jax.value_and_grad(loss)(params, x)


ARGS = ([{n: S(s, jnp.float32) for n, s in (("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("wo", (D, D)),
                                             ("w1", (D, 4 * D)), ("w2", (4 * D, D)))} for _ in range(L)],
        S((B, T, D), jnp.float32))


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture(scope="module")
def plain():
    return explorer.lower(train_step(False), *ARGS)


@pytest.fixture(scope="module")
def checkpointed():
    return explorer.lower(train_step(True), *ARGS)


def run(prog, target, text):
    return pl.run(pl.parse(text), prog, target, verify=True)


def est(prog, target, text):
    return explorer.estimate(prog, target, pipeline=text)


def boundary_bytes(prog, plan) -> int:
    """Bytes live across the forward -> backward boundary (the activations a step holds)."""
    return main_memory_liveness(prog, plan, kernels_of(prog, plan)).live_bytes[remat.analyse(prog.graph).bwd_start - 1]


# ------------------------------------------------------------------------ analysis
def test_the_layers_and_their_residuals_are_found_from_name_stacks_and_def_use(plain):
    an = remat.analyse(plain.graph)
    assert [u.name for u in an.units] == ["layer_0", "layer_1", "layer_2"]
    for u in an.units:
        dropped = [r for r in u.residuals if r not in u.boundary]
        assert sum(plain.graph.values[r].nbytes for r in dropped) == RESIDUALS
        # the layer output is read by the next layer (or the loss): a boundary, always kept
        assert [plain.graph.values[r].shape for r in u.boundary] == [(B, T, D)]
        # projections: the six x@W matmuls (with the weight operand), not the two attention einsums
        assert len(u.projections) == 6


def test_saved_activations_none_selective_full_by_hand(plain, h100):
    saved = {p: boundary_bytes(plain, run(plain, h100, f"fuse{{strategy=none}},remat{{policy={p}}}"))
             for p in ("none", "selective", "full")}
    assert saved["none"] - saved["full"] == L * RESIDUALS
    assert saved["selective"] - saved["full"] == L * SELECTIVE_KEPT


def test_recomputed_flops_none_selective_full_by_hand(plain, h100):
    base = est(plain, h100, "fuse{strategy=none},remat{policy=none}")
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    sel = est(plain, h100, "fuse{strategy=none},remat{policy=selective}")
    assert not [k for k in base.kernels if k.phase == "recompute"]
    assert full.flops - base.flops == L * (FULL_MATRIX + VECTOR)
    assert sel.flops - base.flops == L * (SELECTIVE_MATRIX + VECTOR)
    assert sum(k.flops for k in full.kernels if k.phase == "recompute") == L * (FULL_MATRIX + VECTOR)
    # the added time is exactly the recompute kernels' (nothing overlaps them)
    added = sum(k.seconds for k in full.kernels if k.phase == "recompute")
    assert full.seconds - base.seconds == pytest.approx(added, rel=1e-9)


def test_full_recompute_lowers_the_peak_by_all_but_the_last_layers_residuals(plain, h100):
    # the peak is early in the last layer's backward: under full recompute that layer's residuals are
    # re-created there, the other L - 1 layers hold only their inputs
    none = est(plain, h100, "fuse{strategy=none},remat{policy=none}")
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    assert none.peak_memory_bytes - full.peak_memory_bytes == (L - 1) * RESIDUALS


# ------------------------------------------------------------------------ jax.checkpoint
def test_full_adds_exactly_what_jax_checkpoint_adds(plain, checkpointed, h100):
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    ckpt = est(checkpointed, h100, "fuse{strategy=none}")
    assert checkpointed.flops - plain.flops == L * (FULL_MATRIX + VECTOR)
    assert full.flops == ckpt.flops
    assert full.peak_memory_bytes == ckpt.peak_memory_bytes
    # JAX's recomputation also re-derives the linearisation residuals the plain forward computed
    # (two BT-sized softmax terms and 1 - tanh): moved there, not added
    jax_ops = remat.jax_recomputed_ops(checkpointed.graph)
    assert sum(checkpointed.works[o].flops for o in jax_ops) == L * (FULL_MATRIX + VECTOR + 2 * BT + 4 * BTD)


def test_checkpointed_backward_is_attributed_to_the_same_layers(checkpointed, h100):
    layers = {r["layer"] for r in est(checkpointed, h100, "fuse{strategy=none}").layer_rows(depth=None)}
    assert {"layer_0/mlp", "layer_1/attn"} <= layers
    assert not any(x.startswith(("layer_0/layer_0", "layer_1/layer_1", "layer_2/layer_2")) for x in layers)


def test_remat_twice_in_one_pipeline_is_an_error(plain, h100):
    with pytest.raises(pl.PassError, match="already ran"):
        run(plain, h100, "fuse{strategy=none},remat{policy=full},remat{policy=full}")


def test_remat_on_a_checkpointed_program_recomputes_nothing_twice(checkpointed, h100):
    for policy in ("selective", "full", "offload", "auto"):
        plan = run(checkpointed, h100, f"fuse{{strategy=none}},remat{{policy={policy},budget_bytes=1}}")
        assert not plan.extra_kernels and not plan.recomputed_ops
        assert any("jax.checkpoint" in n for n in plan.notes)
    base = est(checkpointed, h100, "fuse{strategy=none}")
    again = est(checkpointed, h100, "fuse{strategy=none},remat{policy=full}")
    assert (again.flops, again.peak_memory_bytes) == (base.flops, base.peak_memory_bytes)


# ------------------------------------------------------------------------ offload and auto
def test_offload_copies_each_dropped_residual_out_and_back(plain, h100):
    plan = run(plain, h100, "fuse{strategy=none},remat{policy=offload}")
    copies = [k for k in plan.extra_kernels if k.link == h100.host_memory.name]
    assert sum(k.work.bytes_accessed for k in copies) == 2 * L * RESIDUALS
    assert not plan.recomputed_ops
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    off = est(plain, h100, "fuse{strategy=none},remat{policy=offload}")
    base = est(plain, h100, "fuse{strategy=none}")
    assert off.peak_memory_bytes == full.peak_memory_bytes   # the same values leave main memory
    assert off.flops == base.flops


def test_offload_is_not_offered_without_host_memory(plain, h100):
    no_host = dataclasses.replace(h100, memory=tuple(m for m in h100.memory if m.kind != "host"))
    plan = run(plain, no_host, "fuse{strategy=none},remat{policy=offload}")
    assert not plan.extra_kernels and any("no host memory" in n for n in plan.notes)


@pytest.mark.parametrize("allow_offload", [True, False])
def test_auto_fits_a_budget_none_does_not_and_is_never_slower_than_full(plain, h100, allow_offload):
    none = est(plain, h100, "fuse{strategy=none},remat{policy=none}")
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    for budget in (full.peak_memory_bytes, (full.peak_memory_bytes + none.peak_memory_bytes) // 2,
                   none.peak_memory_bytes - 1):
        auto = est(plain, h100, f"fuse{{strategy=none}},remat{{policy=auto,budget_bytes={budget},"
                                f"allow_offload={allow_offload}}}")
        assert none.peak_memory_bytes > budget >= auto.peak_memory_bytes
        assert auto.seconds <= full.seconds * (1 + 1e-9)
        assert auto.seconds >= none.seconds


def test_auto_changes_nothing_when_the_program_fits(plain, h100):
    plan = run(plain, h100, "fuse{strategy=none},remat{policy=auto}")   # 80 GB
    assert not plan.extra_kernels and not plan.live_ranges
    assert any("without remat" in n for n in plan.notes)


def test_auto_says_when_nothing_fits(plain, h100):
    plan = run(plain, h100, "fuse{strategy=none},remat{policy=auto,budget_bytes=1000}")
    assert any("nothing fits" in n for n in plan.notes)


# ------------------------------------------------------------------------ the real example model
def _gpt2():
    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    import gpt2_train
    return gpt2_train


@pytest.fixture(scope="module")
def gpt2_pair():
    """GPT-2 (examples/gpt2_train.py, 2 layers, small dims) plain and with every block under nn.remat."""
    g2 = _gpt2()
    cfg = dict(g2.SMALL_CONFIG, batch=8, seq=16)
    plain = explorer.lower(*_flat(g2.program(**cfg)))
    block = g2.Block
    try:
        g2.Block = nn.remat(block)
        ckpt = explorer.lower(*_flat(g2.program(**cfg)))
    finally:
        g2.Block = block
    return cfg, plain, ckpt


def _flat(fn_args):
    fn, args = fn_args
    return (fn, *args)


def test_gpt2_recomputed_matmul_flops_by_hand(gpt2_pair, h100):
    cfg, plain, _ = gpt2_pair
    b, t, d, n = cfg["batch"], cfg["seq"], cfg["d_model"], cfg["n_layers"]
    base = est(plain, h100, "fuse{strategy=xla}")
    assert [u.name for u in remat.analyse(plain.graph).units] == ["GPT2/h_0", "GPT2/h_1"]

    def recomputed_matrix(policy):
        e = est(plain, h100, f"fuse{{strategy=xla}},remat{{policy={policy}}}")
        plan = e._plan
        return sum(plain.works[o].matrix_flops for o in plan.recomputed_ops), e
    # full: q, k, v, out and c_fc projections (c_proj's output only feeds the residual add) + scores + p v
    full, e_full = recomputed_matrix("full")
    assert full == n * (2 * b * t * d * d * (3 + 1 + 4) + 2 * 2 * b * t * t * d)
    # selective: only the attention scores and p v matmuls
    sel, _ = recomputed_matrix("selective")
    assert sel == n * 2 * 2 * b * t * t * d
    assert e_full.flops > base.flops


def test_gpt2_full_matches_flax_remat(gpt2_pair, h100):
    _, plain, ckpt = gpt2_pair
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    ref = est(ckpt, h100, "fuse{strategy=none}")
    assert full.flops == ref.flops == ckpt.flops

    def unshared_peak(prog, e):     # every value its own buffer (no result written over a dying operand)
        every = frozenset(range(len(prog.graph.values)))
        return main_memory_liveness(prog, e._plan, kernels_of(prog, e._plan), unshared=every).peak_bytes

    # buffer for buffer the same step
    assert unshared_peak(plain, full) == unshared_peak(ckpt, ref)
    # with buffers shared, the checkpointed program's recomputation (its ops one after another) writes results over
    # operands that die inside it; ours re-creates a layer's values at one point and shares nothing inside it
    assert ref.peak_memory_bytes <= full.peak_memory_bytes < unshared_peak(plain, full)
    assert full.peak_memory_bytes < est(plain, h100, "fuse{strategy=none}").peak_memory_bytes


def test_scanned_layers_are_left_alone_and_said_so(h100):
    g2 = _gpt2()
    prog = explorer.lower(*_flat(g2.small_program(scan_layers=True)))
    plan = run(prog, h100, "fuse{strategy=xla},remat{policy=full}")
    assert not plan.extra_kernels
    assert any("no repeated layers" in n or "loops" in n for n in plan.notes)


# ------------------------------------------------------------------------ pieces
def test_liveness_ranges_split_a_value_into_two_intervals():
    def chain(a):
        b = jnp.exp(a)
        c = b * 2.0
        d = c + 1.0
        return (d * b).sum()
    prog = explorer.lower(chain, S((1024,), jnp.float32))
    g = prog.graph
    exp = next(op for op in g.ops if op.name == "stablehlo.exponential")
    b = exp.results[0]
    natural = liveness.analyse(g)
    # natural peak at the add: a, b, c, the broadcast 1.0 and d (5 x 4 kB); b dead from its first use
    # until its last one: 4 kB less
    first_use, last_use = (o.id for o in g.ops if b in o.operands)
    cut = liveness.analyse(g, ranges={b: ((exp.id, first_use), (last_use, last_use))})
    assert natural.peak_bytes - cut.peak_bytes == 1024 * F32


def test_bad_options_are_named():
    with pytest.raises(pl.PipelineSyntaxError, match="policy"):
        pl.parse("remat{policy=sometimes}")
    with pytest.raises(pl.PipelineSyntaxError, match="budget_bytes"):
        pl.parse("remat{budget_bytes=-1}")


def test_no_backward_pass_is_a_note_not_an_error(h100):
    prog = explorer.lower(lambda x: jnp.tanh(x @ x), S((64, 64), jnp.float32))
    plan = run(prog, h100, "remat{policy=full}")
    assert not plan.extra_kernels and any("no backward" in n for n in plan.notes)


def test_forced_optimizer_offload_moves_all_optimizer_state(h100):
    g2 = _gpt2()
    prog = explorer.lower(*_flat(g2.small_program()))
    plan = run(prog, h100, "fuse{strategy=xla},place{offload=optimizer,force=true}")
    g = prog.graph
    opt = {v for v, name in zip(g.inputs, g.input_names) if name.startswith("opt_state") and g.values[v].nbytes}
    on_host = {v for v, lvl in plan.placement.items() if lvl == h100.host_memory.name}
    assert opt and opt <= on_host
    assert not run(prog, h100, "fuse{strategy=xla},place{offload=optimizer}").placement   # fits: moves nothing


# ------------------------------------------------------------------------ search
def test_search_ranks_fitting_alternatives_by_time_and_says_when_nothing_fits(plain, h100):
    none = est(plain, h100, "fuse{strategy=none}")
    full = est(plain, h100, "fuse{strategy=none},remat{policy=full}")
    budget = (none.peak_memory_bytes + full.peak_memory_bytes) // 2
    res = explorer.search_memory(plain, h100, budget_bytes=budget, base="fuse{strategy=none}")
    assert res.fits and res.best.peak_bytes <= budget
    fitting = [a for a in res.alternatives if a.fits]
    assert [a.seconds for a in fitting] == sorted(a.seconds for a in fitting)
    assert all(not a.fits for a in res.alternatives[len(fitting):])
    by_text = {a.pipeline: a for a in res.alternatives}
    assert not by_text["fuse{strategy=none},remat{policy=none}"].fits
    assert by_text["fuse{strategy=none},remat{policy=full}"].extra_flops == L * (FULL_MATRIX + VECTOR)
    assert by_text["fuse{strategy=none},remat{policy=offload}"].transfer_bytes == 2 * L * RESIDUALS
    assert res.best.seconds <= by_text["fuse{strategy=none},remat{policy=full}"].seconds
    assert "budget" in res.table()

    tiny = explorer.search_memory(plain, h100, budget_bytes=10_000, base="fuse{strategy=none}")
    assert not tiny.fits and tiny.best is None and "nothing fits" in tiny.message


def test_search_names_a_sharding_pipeline_it_could_not_run(plain, h100):
    res = explorer.search_memory(plain, h100, remat=("none",), offload=("",), base="fuse{strategy=none}",
                                 sharding=("nosuchpass{x=1}",))
    assert [a.pipeline for a in res.alternatives] == ["fuse{strategy=none},remat{policy=none}"]
    assert any("nosuchpass" in n for n in res.notes)


def test_remat_tradeoff_example_runs_small_and_plots(tmp_path, h100):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_example_remat_tradeoff", Path(__file__).parent.parent / "examples" / "remat_tradeoff.py")
    ex = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ex     # dataclasses look their module up while the file runs
    spec.loader.exec_module(ex)
    prog = explorer.lower(*_flat(ex.small_program()))
    plain_peak = est(prog, h100, "fuse{strategy=xla}").peak_memory_bytes
    full_peak = est(prog, h100, "fuse{strategy=xla},remat{policy=full}").peak_memory_bytes
    assert full_peak < plain_peak
    capacity = (full_peak + plain_peak) / 2     # what full recompute needs fits, the plain step does not
    small_chip = h100.replace(**{"memory.hbm.capacity_bytes": capacity})
    results = ex.tradeoff(prog, [("80 GB", h100), ("small", small_chip)])
    assert results[0][1].best.pipeline.endswith(("remat{policy=none}", "remat{policy=auto}"))
    small = results[1][1]
    assert small.fits and small.best.peak_bytes <= capacity
    assert not next(a for a in small.alternatives if a.pipeline.endswith("remat{policy=none}")).fits
    out = tmp_path / "tradeoff.png"
    ex.plot(results, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TypeError, match="no_such_field"):
        ex.program(no_such_field=1)


def test_auto_predicts_the_peak_the_estimate_reports(gpt2_pair, h100):
    # GPT-2's attention mask is kept alive by every layer's recomputation: a value several layers share
    _, prog, _ = gpt2_pair
    plan = run(prog, h100, "fuse{strategy=xla}")
    an = remat.analyse(prog.graph)
    units = [u.name for u in an.units]
    options = {u.name: {p: remat.choose(an, prog.graph, u, p, remat._fused_values(prog, plan))
                        for p in ("none", "selective", "full", "offload")} for u in an.units}
    curves = remat._Curves(prog, plan, an, options)
    assert curves.shared
    for mix in (("none", "none"), ("full", "none"), ("selective", "full"), ("offload", "selective"), ("full", "full")):
        assign = dict(zip(units, mix))
        applied = remat.apply(prog, plan, h100, an, [options[u][p] for u, p in assign.items()])
        assert curves.peak(assign) == main_memory_liveness(prog, applied, kernels_of(prog, applied)).peak_bytes


def test_gpt2_auto_fits_where_none_does_not_and_is_not_slower_than_full(gpt2_pair, h100):
    _, prog, _ = gpt2_pair
    none = est(prog, h100, "fuse{strategy=xla},remat{policy=none}")
    full = est(prog, h100, "fuse{strategy=xla},remat{policy=full}")
    budget = (none.peak_memory_bytes + full.peak_memory_bytes) // 2
    auto = est(prog, h100, f"fuse{{strategy=xla}},remat{{policy=auto,budget_bytes={budget}}}")
    assert none.peak_memory_bytes > budget >= auto.peak_memory_bytes
    assert auto.seconds <= full.seconds * (1 + 1e-9)


def test_search_with_devices_tries_sharding_when_the_shard_pass_exists(gpt2_pair, h100):
    if "shard" not in pl.available():
        pytest.skip("no shard pass")
    _, prog, _ = gpt2_pair
    res = explorer.search_memory(prog, h100, remat=("none", "full"), offload=("",), devices=4)
    for kind in ("dp", "fsdp"):
        shard = f"shard{{mesh=data=4,{kind}=data}}"
        tried = [a for a in res.alternatives if a.pipeline.startswith(shard)]
        assert len(tried) == 2 or any(shard in n for n in res.notes)


def test_what_remat_reads_decides_how_a_sweep_runs(plain, h100):
    # selective / full recompute is decided by the program's structure: a hardware sweep stays vectorised and
    # equals one estimate per variant; auto fits a memory budget, so it re-runs per variant
    grid = {"memory.hbm.bandwidth_bytes_per_s": [2e12, 4e12], "compute.matrix_flops_per_s.bf16": [5e14, 1e15]}
    res = explorer.sweep(plain, h100, grid, pipeline="fuse{strategy=xla},remat{policy=selective}")
    assert res.method == "vectorised"
    for row in res.rows():
        variant = h100.replace(**{k: row[k] for k in grid})
        one = explorer.estimate(plain, variant, pipeline="fuse{strategy=xla},remat{policy=selective}")
        assert row["seconds"] == one.seconds
    assert remat.Remat(policy="auto").reads_knobs() >= {"memory.", "compute."}
    assert remat.Remat(policy="full").reads_knobs() == frozenset()
