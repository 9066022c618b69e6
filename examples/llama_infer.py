"""Llama-3-8B-shaped decoder, inference only: ``prefill`` and ``decode`` programs.

Architecture (flax.linen; HF-style parameter names):

* ``embed_tokens`` (nn.Embed) -> ``n_layers`` decoder layers -> ``norm`` -> ``lm_head``
  (untied, as in Llama-3-8B)
* decoder layer: ``x = x + self_attn(input_layernorm(x));
  x = x + mlp(post_attention_layernorm(x))`` with ``nn.RMSNorm``
* ``self_attn``: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (``nn.DenseGeneral``,
  no bias), rotary position embeddings (HF "rotate_half" layout,
  ``rope_theta=500000``, no rope scaling), grouped-query attention with
  ``n_kv_heads < n_heads`` via ``jax.nn.dot_product_attention(implementation="xla")``
* ``mlp``: SwiGLU, ``down_proj(silu(gate_proj(x)) * up_proj(x))``

Defaults are the Llama-3-8B shapes (32 layers, d_model 4096, 32 heads, 8 KV heads,
head_dim 128, ffn 14336, vocab 128256): 8,030,261,248 parameters.

Dtypes: weights, activations and the KV cache are ``bfloat16`` (``dtype``); RMSNorm
statistics, rotary embedding math, attention softmax and the returned logits are
float32.

KV cache: ``{"k": [n_layers, batch, max_len, n_kv_heads, head_dim],
"v": same}`` (one stacked array each for K and V).

Programs::

    prefill(params, tokens[i32, batch, prompt_len]) -> (logits[f32, batch, vocab], cache)
        causal attention over the prompt; K/V written to cache positions
        [0, prompt_len) of a zero-initialised cache; logits of the last position only.
    decode(params, cache, tokens[i32, batch, 1], pos[i32, scalar]) -> (logits, cache)
        one new token per sequence at position ``pos`` (the same for the whole
        batch); K/V written with ``lax.dynamic_update_slice`` at ``pos``; attention
        over the whole ``max_len`` cache with positions > pos masked out.

Layers: a Python loop by default (``layers_0`` ... ``layers_31``, each writing
its token(s) into the stacked cache with one ``dynamic_update_slice``);
``scan_layers=True`` uses ``nn.scan`` (one ``layers`` module with stacked
parameters, the cache scanned along its layer axis) which lowers to a
``stablehlo.while`` loop.

See examples/README.md for the conventions shared by all examples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 128256
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    ffn_dim: int = 14336
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    batch: int = 8
    prompt_len: int = 2048  # prefill length; decode's example pos
    max_len: int = 4096  # KV-cache length
    dtype: str = "bfloat16"  # weights, activations and KV cache
    scan_layers: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


SMALL_CONFIG = dict(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
    batch=2, prompt_len=8, max_len=16,
)


def make_config(**overrides) -> Config:
    """Default Config with ``overrides`` applied; unknown keys raise TypeError."""
    valid = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(
            f"unknown Config override(s) {bad} for {__name__}; valid: {sorted(valid)}"
        )
    cfg = dataclasses.replace(Config(), **overrides)
    if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
        raise ValueError("need d_model % n_heads == 0 and n_heads % n_kv_heads == 0")
    if cfg.prompt_len > cfg.max_len:
        raise ValueError(f"prompt_len ({cfg.prompt_len}) > max_len ({cfg.max_len})")
    return cfg


def rope_tables(cfg: Config, positions):
    """cos/sin tables [T, head_dim] (float32) for integer positions [T]."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """x: [B, T, heads, head_dim]; cos/sin: [T, head_dim]."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (xf * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    cfg: Config
    prefill: bool
    layer_index: Optional[int]  # index into the stacked cache; None under nn.scan

    @nn.compact
    def __call__(self, x, cos, sin, cache, pos):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        dense = functools.partial(nn.DenseGeneral, use_bias=False, dtype=dtype,
                                  param_dtype=dtype)
        hd = cfg.head_dim
        q = dense((cfg.n_heads, hd), name="q_proj")(x)  # [B, T, H, hd]
        k = dense((cfg.n_kv_heads, hd), name="k_proj")(x)  # [B, T, KV, hd]
        v = dense((cfg.n_kv_heads, hd), name="v_proj")(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        ck, cv = cache
        if self.layer_index is None:  # per-layer cache [B, max_len, KV, hd]
            start = (0, pos, 0, 0)
            ck = lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
            cv = lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
            layer_k, layer_v = ck, cv
        else:  # stacked cache [L, B, max_len, KV, hd]
            start = (self.layer_index, 0, pos, 0, 0)
            ck = lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), start)
            cv = lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), start)
            layer_k, layer_v = ck[self.layer_index], cv[self.layer_index]

        if self.prefill:
            # Prompt attends causally to itself only (cache beyond it is empty).
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                               implementation="xla")
        else:
            t = x.shape[1]
            key_pos = jnp.arange(cfg.max_len, dtype=jnp.int32)
            query_pos = pos + jnp.arange(t, dtype=jnp.int32)
            mask = (key_pos[None, :] <= query_pos[:, None])[None, None]  # [1,1,T,max_len]
            out = jax.nn.dot_product_attention(q, layer_k, layer_v, mask=mask,
                                               implementation="xla")
        out = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=dtype,
                              param_dtype=dtype, name="o_proj")(out)
        return out, (ck, cv)


class MLP(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        dense = functools.partial(nn.Dense, use_bias=False, dtype=dtype, param_dtype=dtype)
        gate = dense(cfg.ffn_dim, name="gate_proj")(x)
        up = dense(cfg.ffn_dim, name="up_proj")(x)
        return dense(cfg.d_model, name="down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    cfg: Config
    prefill: bool
    layer_index: Optional[int] = None

    @nn.compact
    def __call__(self, x, cos, sin, cache, pos):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        norm = functools.partial(nn.RMSNorm, epsilon=cfg.norm_eps, dtype=dtype,
                                 param_dtype=dtype)
        h, cache = Attention(cfg, self.prefill, self.layer_index, name="self_attn")(
            norm(name="input_layernorm")(x), cos, sin, cache, pos)
        x = x + h
        x = x + MLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(x))
        return x, cache


class Llama(nn.Module):
    cfg: Config
    prefill: bool

    @nn.compact
    def __call__(self, tokens, cache, pos):
        """tokens [B, T]; cache (k, v) stacked [L, B, max_len, KV, hd]; pos i32 scalar."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        t = tokens.shape[1]
        x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=dtype,
                     name="embed_tokens")(tokens)
        cos, sin = rope_tables(cfg, pos + jnp.arange(t, dtype=jnp.int32))
        if cfg.scan_layers:
            layers = nn.scan(
                DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast), out_axes=0,
                length=cfg.n_layers,
            )(cfg, self.prefill, name="layers")
            x, cache = layers(x, cos, sin, cache, pos)
        else:
            for i in range(cfg.n_layers):
                x, cache = DecoderLayer(cfg, self.prefill, i, name=f"layers_{i}")(
                    x, cos, sin, cache, pos)
        x = x[:, -1]  # only the last position's logits are needed
        x = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=dtype, param_dtype=dtype,
                       name="norm")(x)
        logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype,
                          param_dtype=dtype, name="lm_head")(x)
        return logits.astype(jnp.float32), cache


def _cache_shape(cfg: Config):
    return (cfg.n_layers, cfg.batch, cfg.max_len, cfg.n_kv_heads, cfg.head_dim)


def make_prefill(cfg: Config) -> Callable:
    model = Llama(cfg, prefill=True)

    def prefill(params, tokens):
        zeros = jnp.zeros(_cache_shape(cfg), jnp.dtype(cfg.dtype))
        logits, (k, v) = model.apply({"params": params}, tokens, (zeros, zeros),
                                     jnp.zeros((), jnp.int32))
        return logits, {"k": k, "v": v}

    return prefill


def make_decode(cfg: Config) -> Callable:
    model = Llama(cfg, prefill=False)

    def decode(params, cache, tokens, pos):
        logits, (k, v) = model.apply({"params": params}, tokens,
                                     (cache["k"], cache["v"]), pos)
        return logits, {"k": k, "v": v}

    return decode


def _init_params(cfg: Config, key):
    tokens = jnp.zeros((1, 1), jnp.int32)
    cache = jnp.zeros((cfg.n_layers, 1, cfg.max_len, cfg.n_kv_heads, cfg.head_dim),
                      jnp.dtype(cfg.dtype))
    return Llama(cfg, prefill=True).init(key, tokens, (cache, cache),
                                         jnp.zeros((), jnp.int32))["params"]


@functools.partial(jax.jit, static_argnums=0)  # one compile per Config
def _prefill_args(cfg: Config, key):
    k_init, k_tok = jax.random.split(key)
    tokens = jax.random.randint(k_tok, (cfg.batch, cfg.prompt_len), 0, cfg.vocab_size,
                                jnp.int32)
    return _init_params(cfg, k_init), tokens


@functools.partial(jax.jit, static_argnums=0)  # one compile per Config
def _decode_args(cfg: Config, key):
    """Cache filled with random values so that every write to it is visible."""
    k_init, k_tok, k_k, k_v = jax.random.split(key, 4)
    dtype = jnp.dtype(cfg.dtype)
    cache = {"k": jax.random.normal(k_k, _cache_shape(cfg), dtype),
             "v": jax.random.normal(k_v, _cache_shape(cfg), dtype)}
    tokens = jax.random.randint(k_tok, (cfg.batch, 1), 0, cfg.vocab_size, jnp.int32)
    pos = jnp.asarray(cfg.prompt_len if cfg.prompt_len < cfg.max_len else 0, jnp.int32)
    return _init_params(cfg, k_init), cache, tokens, pos


def _abstract(init_fn, cfg):
    return tuple(jax.eval_shape(functools.partial(init_fn, cfg), jax.random.key(0)))


def prefill_program(**overrides):
    """(prefill, (params, tokens)) with ShapeDtypeStruct args."""
    cfg = make_config(**overrides)
    return make_prefill(cfg), _abstract(_prefill_args, cfg)


def decode_program(**overrides):
    """(decode, (params, cache, tokens, pos)) with ShapeDtypeStruct args; ``decode`` is jitted with the cache
    donated, as serving code runs it (the cache is updated in place, not copied; ``make_decode`` is the plain
    function)."""
    cfg = make_config(**overrides)
    return jax.jit(make_decode(cfg), donate_argnums=1), _abstract(_decode_args, cfg)


PROGRAMS = {"prefill": prefill_program, "decode": decode_program}
program = prefill_program


def small_program(**overrides):
    return program(**{**SMALL_CONFIG, **overrides})


def prefill_concrete_args(seed: int = 0, **overrides):
    """Real arrays matching prefill_program(**overrides)[1]."""
    return tuple(_prefill_args(make_config(**overrides), jax.random.key(seed)))


def decode_concrete_args(seed: int = 0, **overrides):
    """Real arrays matching decode_program(**overrides)[1] (random cache, pos=prompt_len)."""
    return tuple(_decode_args(make_config(**overrides), jax.random.key(seed)))


CONCRETE_ARGS = {"prefill": prefill_concrete_args, "decode": decode_concrete_args}
concrete_args = prefill_concrete_args


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import explorer
    import hw_targets

    targets = [hw_targets.load(n) for n in ("h100_sxm", "tpu_v5p", "mi300x")]
    for name, make_program in PROGRAMS.items():
        fn, args = make_program()
        prog = explorer.lower(fn, *args)
        cmp = explorer.compare(prog, targets)
        print(f"== llama_infer:{name} ==")
        print(cmp.table())
