"""Tests for the example programs in examples/ (see examples/README.md).

Every example is loaded from its file path (examples/ is not a package), its
small configuration is lowered *and* run on CPU with real arrays, and the
default (real-size) programs are lowered from ShapeDtypeStructs only.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_NAMES = ("mlp", "gpt2_train", "llama_infer", "cnn")


def _load(name: str):
    mod_name = f"_example_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, EXAMPLES_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def _programs(name: str):
    """[(label, program_fn, concrete_args_fn)] for one example file."""
    mod = _load(name)
    if hasattr(mod, "PROGRAMS"):
        return [(f"{name}:{k}", fn, mod.CONCRETE_ARGS[k]) for k, fn in mod.PROGRAMS.items()]
    return [(name, mod.program, mod.concrete_args)]


ALL_PROGRAMS = [
    pytest.param(name, label, id=label)
    for name in EXAMPLE_NAMES
    for label, _, _ in _programs(name)
]


def _lookup(name, label):
    return next((p, c) for lbl, p, c in _programs(name) if lbl == label)


_JITTED = {}


def _jitted_small(name, label):
    """(jax.jit(fn), abstract args) of the small config, shared between tests
    so that each small program is compiled for CPU only once per session."""
    if label not in _JITTED:
        program, _ = _lookup(name, label)
        fn, args = program(**_load(name).SMALL_CONFIG)
        _JITTED[label] = (jax.jit(fn), args)
    return _JITTED[label]


def _assert_matches(abstract, concrete):
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete)):
        assert a.shape == c.shape and a.dtype == c.dtype, (a, c)


def _assert_all_finite(tree):
    for leaf in jax.tree.leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float32))), leaf


# --------------------------------------------------------------------------
# Convention checks, for every file and every PROGRAMS entry
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_module_convention(name):
    mod = _load(name)
    assert callable(mod.program) and callable(mod.small_program)
    assert isinstance(mod.SMALL_CONFIG, dict)
    cfg = mod.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch = 1  # frozen
    if hasattr(mod, "PROGRAMS"):
        assert mod.program in mod.PROGRAMS.values()
    src = (EXAMPLES_DIR / f"{name}.py").read_text()
    assert 'if __name__ == "__main__":' in src and "explorer.compare" in src


@pytest.mark.parametrize("name,label", ALL_PROGRAMS)
def test_small_program_lowers_and_runs(name, label):
    mod = _load(name)
    program, concrete = _lookup(name, label)
    fn, args = program(**mod.SMALL_CONFIG)
    assert isinstance(args, tuple)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(args))
    lowered = jax.jit(fn).lower(*args)
    assert "stablehlo" in lowered.as_text()

    step, _ = _jitted_small(name, label)
    real = concrete(**mod.SMALL_CONFIG)
    _assert_matches(args, real)
    out = step(*real)
    _assert_all_finite(out)
    # Output shapes/dtypes are what lowering promised.
    _assert_matches(jax.eval_shape(fn, *args), out)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_small_program_helper(name):
    mod = _load(name)
    fn, args = mod.small_program()
    _, ref_args = mod.program(**mod.SMALL_CONFIG)
    _assert_matches(ref_args, args)


@pytest.mark.parametrize("name,label", ALL_PROGRAMS)
def test_overrides(name, label):
    mod = _load(name)
    program, _ = _lookup(name, label)
    _, a3 = program(**{**mod.SMALL_CONFIG, "batch": 3})
    _, a5 = program(**{**mod.SMALL_CONFIG, "batch": 5})
    batch_dims = lambda args: sorted(  # noqa: E731
        {d for x in jax.tree.leaves(args) for d in x.shape if d in (3, 5)})
    assert 3 in batch_dims(a3) and 5 in batch_dims(a5)
    with pytest.raises(TypeError, match="no_such_field"):
        program(no_such_field=1)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_concrete_args_deterministic(name):
    mod = _load(name)
    a = mod.concrete_args(seed=0, **mod.SMALL_CONFIG)
    b = mod.concrete_args(seed=0, **mod.SMALL_CONFIG)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------
# Default (real-size) programs lower from ShapeDtypeStructs only
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,label,n_params",
    [
        ("mlp", "mlp", 3_159_050),
        ("cnn", "cnn", 11_689_512),  # ResNet-18
        ("gpt2_train", "gpt2_train", 124_439_808),  # GPT-2 small, tied head
        ("llama_infer", "llama_infer:decode", 8_030_261_248),  # Llama-3-8B
        ("llama_infer", "llama_infer:prefill", 8_030_261_248),
    ],
)
def test_default_size_lowers(name, label, n_params):
    program, _ = _lookup(name, label)
    fn, args = program()
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(args))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(args[0])) == n_params
    text = jax.jit(fn).lower(*args).as_text()
    assert "dot_general" in text or "convolution" in text


# --------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------


def test_gpt2_training_reduces_loss():
    mod = _load("gpt2_train")
    step, _ = _jitted_small("gpt2_train", "gpt2_train")
    params, opt_state, batch = mod.concrete_args(seed=0, **mod.SMALL_CONFIG)
    losses = []
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    # Random init on a 64-token vocab: loss starts near log(64).
    assert abs(losses[0] - np.log(64)) < 0.5
    assert losses[2] < losses[1] < losses[0]


def test_gpt2_name_stack_in_stablehlo():
    mod = _load("gpt2_train")
    fn, args = mod.small_program()
    text = jax.jit(fn).lower(*args).as_text(debug_info=True)
    locs = re.findall(r'loc\("([^"]*)"', text)
    assert any("/h_0/" in s and "/attn/" in s for s in locs)
    assert any("/h_1/mlp/c_fc" in s for s in locs)
    # Backward pass ops carry the layer names too.
    assert any("transpose(" in s and "/h_0/" in s for s in locs)


def test_gpt2_scan_layers_matches_loop():
    mod = _load("gpt2_train")
    cfg = mod.SMALL_CONFIG
    step_loop, _ = _jitted_small("gpt2_train", "gpt2_train")
    fn_scan, scan_args = mod.program(**cfg, scan_layers=True)
    step_scan = jax.jit(fn_scan)
    text = step_scan.lower(*scan_args).as_text()
    assert text.count("stablehlo.while") == 2  # forward scan + its transpose

    params, opt_state, batch = mod.concrete_args(**cfg)
    n = cfg["n_layers"]
    stacked = {k: v for k, v in params.items() if not k.startswith("h_")}
    stacked["h"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"h_{i}"] for i in range(n)])
    scan_opt_state = mod.make_optimizer(mod.make_config(**cfg)).init(stacked)
    _assert_matches(scan_args, (stacked, scan_opt_state, batch))
    p1, _, loss_loop = step_loop(params, opt_state, batch)
    p2, _, loss_scan = step_scan(stacked, scan_opt_state, batch)
    # bf16 compute: same math, possibly different rounding order. Adam's
    # normalised update (size ~lr) amplifies tiny gradient differences, so
    # the updated parameters agree to within a couple of learning rates.
    np.testing.assert_allclose(loss_loop, loss_scan, rtol=1e-3)
    lr = mod.Config().learning_rate
    np.testing.assert_allclose(p1["h_1"]["mlp"]["c_fc"]["kernel"],
                               p2["h"]["mlp"]["c_fc"]["kernel"][1], atol=3 * lr)


# --------------------------------------------------------------------------
# Llama
# --------------------------------------------------------------------------


def test_llama_decode_writes_cache_only_at_pos():
    mod = _load("llama_infer")
    step, _ = _jitted_small("llama_infer", "llama_infer:decode")
    params, cache, tokens, pos = mod.decode_concrete_args(**mod.SMALL_CONFIG)
    p = int(pos)
    assert p == mod.SMALL_CONFIG["prompt_len"]
    for position in (p, 0, mod.SMALL_CONFIG["max_len"] - 1):
        logits, new_cache = step(params, cache, tokens, jnp.int32(position))
        assert logits.shape == (mod.SMALL_CONFIG["batch"], mod.SMALL_CONFIG["vocab_size"])
        for key in ("k", "v"):
            old, new = np.asarray(cache[key]), np.asarray(new_cache[key])
            changed = np.any(old != new, axis=(0, 1, 3, 4))  # per cache position
            assert changed.tolist() == [i == position for i in range(old.shape[2])]
            # every layer / sequence got its entry written at `position`
            assert np.all(np.any(old[:, :, position] != new[:, :, position], axis=-1))


def test_llama_prefill_writes_prompt_positions():
    mod = _load("llama_infer")
    cfg = mod.SMALL_CONFIG
    step, _ = _jitted_small("llama_infer", "llama_infer:prefill")
    logits, cache = step(*mod.prefill_concrete_args(**cfg))
    assert logits.shape == (cfg["batch"], cfg["vocab_size"]) and logits.dtype == jnp.float32
    k = np.asarray(cache["k"], dtype=np.float32)
    nonzero = np.any(k != 0, axis=(0, 1, 3, 4))
    assert nonzero.tolist() == [i < cfg["prompt_len"] for i in range(cfg["max_len"])]


def test_llama_prefill_then_decode_matches_longer_prefill():
    """decode(prefill(tokens[:S]), tokens[S], pos=S) == prefill(tokens[:S+1])."""
    mod = _load("llama_infer")
    cfg = dict(mod.SMALL_CONFIG, dtype="float32")
    s = cfg["prompt_len"]
    params, tokens = mod.prefill_concrete_args(**{**cfg, "prompt_len": s + 1})
    prefill_long, _ = mod.prefill_program(**{**cfg, "prompt_len": s + 1})
    prefill, _ = mod.prefill_program(**cfg)
    decode, _ = mod.decode_program(**cfg)
    ref_logits, ref_cache = jax.jit(prefill_long)(params, tokens)
    _, cache = jax.jit(prefill)(params, tokens[:, :s])
    logits, cache = jax.jit(decode)(params, cache, tokens[:, s:], jnp.int32(s))
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    for key in ("k", "v"):
        np.testing.assert_allclose(cache[key], ref_cache[key], atol=1e-5)


@pytest.mark.parametrize("which", ["prefill", "decode"])
def test_llama_scan_layers_matches_loop(which):
    mod = _load("llama_infer")
    cfg = dict(mod.SMALL_CONFIG, dtype="float32")
    fn_loop, _ = mod.PROGRAMS[which](**cfg)
    fn_scan, scan_args = mod.PROGRAMS[which](**cfg, scan_layers=True)
    assert "stablehlo.while" in jax.jit(fn_scan).lower(*scan_args).as_text()

    args = mod.CONCRETE_ARGS[which](**cfg)
    params = args[0]
    n = cfg["n_layers"]
    stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
    stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                     *[params[f"layers_{i}"] for i in range(n)])
    scan_real = (stacked,) + tuple(args[1:])
    _assert_matches(scan_args, scan_real)
    out_loop = jax.jit(fn_loop)(*args)
    out_scan = jax.jit(fn_scan)(*scan_real)
    for a, b in zip(jax.tree.leaves(out_loop), jax.tree.leaves(out_scan)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_llama_gqa_and_bf16_defaults():
    mod = _load("llama_infer")
    cfg = mod.Config()
    assert cfg.n_kv_heads < cfg.n_heads and cfg.head_dim == 128
    _, (params, cache, tokens, pos) = mod.decode_program()
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert cache["k"].shape == (32, cfg.batch, cfg.max_len, 8, 128)
    assert pos.shape == () and pos.dtype == jnp.int32
    assert params["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (4096, 8, 128)


# --------------------------------------------------------------------------
# CNN
# --------------------------------------------------------------------------


def test_cnn_updates_batch_stats_and_reduces_loss():
    mod = _load("cnn")
    step, _ = _jitted_small("cnn", "cnn")
    params, batch_stats, opt_state, batch = mod.concrete_args(**mod.SMALL_CONFIG)
    p, bs, o, loss0 = step(params, batch_stats, opt_state, batch)
    old = batch_stats["bn_init"]["mean"]
    assert not np.allclose(old, bs["bn_init"]["mean"])
    _, _, _, loss1 = step(p, bs, o, batch)
    assert np.isfinite(loss0) and loss1 < loss0


def test_mlp_training_reduces_loss():
    mod = _load("mlp")
    step, _ = _jitted_small("mlp", "mlp")
    params, opt_state, batch = mod.concrete_args(**mod.SMALL_CONFIG)
    _, _, loss0 = step(params, opt_state, batch)
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state, batch)
    assert loss < loss0
    fn_sgd, _ = mod.small_program(optimizer="sgd")
    args = mod.concrete_args(**mod.SMALL_CONFIG, optimizer="sgd")
    _assert_all_finite(jax.jit(fn_sgd)(*args))
