"""The speed work of issue 14 changes how results are computed, never what they are: each fast path is checked
here against the plain computation it replaces (no timings: speed is measured in ``benchmarks/speed_targets.py``)."""
from __future__ import annotations

import gc
import pickle
import random

import numpy as np
import pytest

import explorer
import hw_targets
from explorer.graph import importer
from explorer.graph.gcpause import paused_gc
from explorer.graph.ir import ValueIds
from explorer.model_files import load_program
from passes import placement, remat
from passes import pipeline as pl


@pytest.fixture(scope="module")
def gpt2():
    return load_program("examples/gpt2_train.py", {"vocab_size": 64, "n_ctx": 16, "d_model": 32, "n_heads": 4,
                                                   "n_layers": 2, "d_ff": 128, "batch": 2, "seq": 16})


def test_value_ids_is_a_tuple_with_set_membership():
    ids = ValueIds((5, 3, 9))
    assert ids == (5, 3, 9) and tuple(ids) == (5, 3, 9) and list(ids) == [5, 3, 9] and len(ids) == 3
    assert 3 in ids and 4 not in ids and ids[1] == 3 and ids.index(9) == 2
    again = pickle.loads(pickle.dumps(ids))
    assert again == ids and 9 in again and 10 not in again


def test_graph_outputs_answer_membership_like_the_tuple(gpt2):
    outs = gpt2.graph.outputs
    assert isinstance(outs, ValueIds)
    plain = tuple(outs)
    for v in range(len(gpt2.graph.values)):
        assert (v in outs) == (v in plain)


def test_cycles_made_while_paused_are_still_collected():
    import weakref

    class Node:
        pass

    with paused_gc():
        a, b = Node(), Node()
        a.other, b.other = b, a          # a reference cycle: only the cyclic collector frees it
        ref = weakref.ref(a)
        del a, b
    assert gc.get_freeze_count() == 0    # nothing left in the permanent generation
    gc.collect()
    assert ref() is None


def test_paused_gc_restores_the_collector():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with paused_gc():
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()    # left as found
    finally:
        gc.enable()


def test_cached_attribute_conversion_matches_the_plain_one(gpt2):
    import jax
    from explorer.model_files import program_fn
    fn, args = program_fn("examples/mlp.py")()
    module = jax.jit(fn).lower(*args).compiler_ir("stablehlo")
    cache: dict = {}

    def walk(block):
        for view in block.operations:
            op = view.operation
            yield op
            for region in op.regions:
                for b in region.blocks:
                    yield from walk(b)

    for fn_op in module.body.operations:
        for op in walk(fn_op.regions[0].blocks[0]):
            plain = {k: importer.freeze(importer.attr_to_py(k, op.attributes[k])) for k in op.attributes}
            assert importer.op_attrs(op, cache) == plain
            assert importer.op_attrs(op, cache) == plain        # a second time from the cache
            assert importer.op_attrs(op) == plain


def test_step_seconds_is_the_estimates_seconds(gpt2):
    from explorer.pricing.price import step_seconds
    for name in ("h100_sxm", "tpu_v5p"):
        t = hw_targets.load(name)
        for pipe in ("default", "fuse{strategy=none}", "fuse{strategy=aggressive}",
                     "fuse{strategy=xla},place{policy=greedy}", "fuse{strategy=xla},remat{policy=full}"):
            assert step_seconds(gpt2, t, pipe).hex() == explorer.estimate(gpt2, t, pipeline=pipe).seconds.hex()


def test_repeated_estimates_are_bit_identical(gpt2):
    """The kernel-time memo and the fusion pass's per-program facts: a second estimate equals the first."""
    t = hw_targets.load("h100_sxm")
    a = explorer.estimate(gpt2, t, pipeline="fuse{strategy=xla}").to_dict()
    b = explorer.estimate(gpt2, t, pipeline="fuse{strategy=xla}").to_dict()
    assert repr(a) == repr(b)


def test_live_sets_by_sweep_match_the_brute_force():
    rng = random.Random(7)
    spans = []
    for _ in range(60):
        ivs = []
        for _ in range(rng.randint(1, 3)):
            s = rng.randint(0, 200)
            ivs.append((s, s + rng.randint(0, 40)))
        spans.append(tuple(ivs))
    points = placement._clique_points([iv for ivs in spans for iv in ivs])
    expected = [[j for j, ivs in enumerate(spans) if any(s <= p <= e for s, e in ivs)] for p in points]
    assert placement._live_at(points, spans) == expected
    assert placement._live_at(list(range(0, 250, 5)), spans) == [
        [j for j, ivs in enumerate(spans) if any(s <= p <= e for s, e in ivs)] for p in range(0, 250, 5)]


def test_lazy_remat_deltas_equal_the_eager_ones(gpt2):
    t = hw_targets.load("h100_sxm")
    plan = pl.run(pl.resolve("fuse{strategy=xla}"), gpt2, t)
    an = remat.analyse(gpt2.graph)
    fused = remat._fused_values(gpt2, plan)
    policies = ("none", "selective", "full")
    options = {u.name: {p: remat.choose(an, gpt2.graph, u, p, fused) for p in policies}
               for u in an.units if not u.in_loop}
    curves = remat._Curves(gpt2, plan, an, options)
    for u, opts in options.items():
        for p, c in opts.items():
            d = curves.delta[(u, p)]
            ranges = remat.live_ranges(an, [c])
            full = np.zeros(len(curves.base) + 1)
            for r, ivs in ranges.items():
                if r in curves.shared:
                    continue
                old, new = curves._old(r), curves._new(r)
                for s, e in curves._span(r):
                    full[s] -= old
                    full[e + 1] += old
                for s, e in ivs:
                    full[s] += new
                    full[e + 1] -= new
            assert np.array_equal(d, np.cumsum(full)[:len(curves.base)])
