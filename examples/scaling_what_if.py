"""Scaling what-if: one GPT-style training step spread over many chips, three very different machines.

The model is written in plain JAX (no flax) so its parameter names follow the Megatron conventions the
sharding pass recognises (``q_proj``/``k_proj``/``v_proj`` and ``c_fc`` / ``gate_proj`` / ``up_proj``
column-parallel, ``o_proj`` and ``c_proj`` / ``down_proj`` row-parallel, ``wte`` vocab-parallel), and
each block runs under ``jax.named_scope("h_<i>")`` so costs are attributed per block and pipeline
stages can be cut between blocks:

* ``wte`` token embedding (+ ``wpe`` learned positions when ``learned_pos``), ``n_layers`` pre-norm
  blocks (LayerNorm or RMSNorm; multi-/grouped-query attention with a causal mask and f32 softmax;
  GELU MLP ``c_fc``/``c_proj`` or SwiGLU ``gate_proj``/``up_proj``/``down_proj``), final norm, LM head
  tied to ``wte`` or a separate ``lm_head``;
* ``remat``: each block under ``jax.checkpoint`` (full activation recomputation, as Megatron);
* ``matmul_dtype``: ``bfloat16`` or ``float8`` (e4m3 operands, bf16 results: a TransformerEngine-style
  FP8 recipe, scaling factors not modelled);
* mixed precision: f32 parameters and AdamW state, matmuls in ``matmul_dtype``.

Signature: ``train_step(params, opt_state, batch) -> (params, opt_state, loss)``,
``batch = {"tokens": i32[batch, seq], "targets": i32[batch, seq]}``.

The ``__main__`` block lowers a 2-block GPT-3 XL-shaped step with full recomputation (24 identical blocks
scaled from 2), and
prints the best sharding plan (``explorer.search_sharding``) on 8 H100s in one NVSwitch node, on 64
H100s over 8 nodes, and on 64 TPU v5p chips in a 4x4x4 torus. See examples/README.md for the
conventions shared by all examples.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50304          # GPT-3 XL shapes (vocab padded to a multiple of 128)
    d_model: int = 2048
    n_heads: int = 16
    n_kv_heads: int = 0              # 0: as many as n_heads (multi-head attention)
    n_layers: int = 24
    d_ff: int = 8192
    batch: int = 64
    seq: int = 2048
    mlp: str = "gelu"                # "gelu" (c_fc, c_proj) or "swiglu" (gate_proj, up_proj, down_proj)
    norm: str = "layernorm"          # "layernorm" or "rmsnorm"
    tied: bool = True                # LM head tied to wte
    learned_pos: bool = True         # wpe learned positions
    remat: bool = False              # full activation recomputation per block
    matmul_dtype: str = "bfloat16"   # "bfloat16" or "float8"
    learning_rate: float = 3e-4


SMALL_CONFIG = dict(vocab_size=128, d_model=64, n_heads=4, n_layers=2, d_ff=256, batch=4, seq=32)


def make_config(**overrides) -> Config:
    """Default Config with ``overrides`` applied; unknown keys raise TypeError."""
    valid = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(f"unknown Config override(s) {bad} for {__name__}; valid: {sorted(valid)}")
    cfg = dataclasses.replace(Config(), **overrides)
    kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.d_model % cfg.n_heads or cfg.n_heads % kv:
        raise ValueError(f"d_model {cfg.d_model} / n_heads {cfg.n_heads} / n_kv_heads {kv} do not divide")
    if cfg.mlp not in ("gelu", "swiglu") or cfg.norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"mlp must be gelu|swiglu and norm layernorm|rmsnorm, got {cfg.mlp!r}, {cfg.norm!r}")
    if cfg.matmul_dtype not in ("bfloat16", "float8"):
        raise ValueError(f"matmul_dtype must be bfloat16 or float8, got {cfg.matmul_dtype!r}")
    return cfg


# -- model -----------------------------------------------------------------------------------------

def _mm_dtype(cfg: Config):
    return jnp.float8_e4m3fn if cfg.matmul_dtype == "float8" else jnp.bfloat16


def _dense(x, w, cfg: Config, spec: str):
    """einsum with operands cast to the matmul dtype and a bf16 result."""
    dt = _mm_dtype(cfg)
    return jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=jnp.bfloat16)


def _norm(p, x, cfg: Config):
    x32 = x.astype(jnp.float32)
    if cfg.norm == "rmsnorm":
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
        return (y * p["scale"]).astype(jnp.bfloat16)
    mu = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean((x32 - mu) ** 2, -1, keepdims=True)
    return ((x32 - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]).astype(jnp.bfloat16)


def _block(p, x, cfg: Config):
    kv = cfg.n_kv_heads or cfg.n_heads
    group = cfg.n_heads // kv
    hd = cfg.d_model // cfg.n_heads
    b, s, _ = x.shape
    with jax.named_scope("attn"):
        h = _norm(p["ln_1"], x, cfg)
        q = _dense(h, p["attn"]["q_proj"]["kernel"], cfg, "bsd,dhe->bshe").reshape(b, s, kv, group, hd)
        k = _dense(h, p["attn"]["k_proj"]["kernel"], cfg, "bsd,dhe->bshe")
        v = _dense(h, p["attn"]["v_proj"]["kernel"], cfg, "bsd,dhe->bshe")
        scores = jnp.einsum("bskge,btke->bkgst", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(hd)
        causal = jnp.tril(jnp.ones((s, s), bool))
        probs = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1).astype(jnp.bfloat16)
        o = jnp.einsum("bkgst,btke->bskge", probs, v, preferred_element_type=jnp.bfloat16).reshape(b, s, cfg.n_heads, hd)
        x = x + _dense(o, p["attn"]["o_proj"]["kernel"], cfg, "bshe,hed->bsd")
    with jax.named_scope("mlp"):
        h = _norm(p["ln_2"], x, cfg)
        if cfg.mlp == "swiglu":
            g = _dense(h, p["mlp"]["gate_proj"]["kernel"], cfg, "bsd,df->bsf")
            u = _dense(h, p["mlp"]["up_proj"]["kernel"], cfg, "bsd,df->bsf")
            y = _dense(jax.nn.silu(g) * u, p["mlp"]["down_proj"]["kernel"], cfg, "bsf,fd->bsd")
        else:
            y = _dense(jax.nn.gelu(_dense(h, p["mlp"]["c_fc"]["kernel"], cfg, "bsd,df->bsf")),
                       p["mlp"]["c_proj"]["kernel"], cfg, "bsf,fd->bsd")
    return x + y


def forward(params, tokens, cfg: Config):
    """Logits [batch, seq, vocab] (f32)."""
    with jax.named_scope("wte"):
        x = params["wte"]["embedding"].astype(jnp.bfloat16)[tokens]
    if cfg.learned_pos:
        with jax.named_scope("wpe"):
            x = x + params["wpe"]["embedding"].astype(jnp.bfloat16)[None, : tokens.shape[1]]
    block = jax.checkpoint(_block, static_argnums=(2,)) if cfg.remat else _block
    for i in range(cfg.n_layers):
        with jax.named_scope(f"h_{i}"):
            x = block(params[f"h_{i}"], x, cfg)
    with jax.named_scope("head"):
        x = _norm(params["ln_f"], x, cfg)
        head = params["wte"]["embedding"].T if cfg.tied else params["lm_head"]["kernel"]
        return _dense(x, head, cfg, "bsd,dv->bsv").astype(jnp.float32)


def init_params(cfg: Config, key) -> dict:
    kv = cfg.n_kv_heads or cfg.n_heads
    hd = cfg.d_model // cfg.n_heads
    keys = iter(jax.random.split(key, 8 * cfg.n_layers + 4))

    def w(*shape):
        return 0.02 * jax.random.normal(next(keys), shape, jnp.float32)

    def norm():
        p = {"scale": jnp.ones((cfg.d_model,), jnp.float32)}
        if cfg.norm == "layernorm":
            p["bias"] = jnp.zeros((cfg.d_model,), jnp.float32)
        return p

    params = {"wte": {"embedding": w(cfg.vocab_size, cfg.d_model)}, "ln_f": norm()}
    if cfg.learned_pos:
        params["wpe"] = {"embedding": w(cfg.seq, cfg.d_model)}
    if not cfg.tied:
        params["lm_head"] = {"kernel": w(cfg.d_model, cfg.vocab_size)}
    for i in range(cfg.n_layers):
        attn = {"q_proj": {"kernel": w(cfg.d_model, cfg.n_heads, hd)}, "k_proj": {"kernel": w(cfg.d_model, kv, hd)},
                "v_proj": {"kernel": w(cfg.d_model, kv, hd)}, "o_proj": {"kernel": w(cfg.n_heads, hd, cfg.d_model)}}
        if cfg.mlp == "swiglu":
            mlp = {"gate_proj": {"kernel": w(cfg.d_model, cfg.d_ff)}, "up_proj": {"kernel": w(cfg.d_model, cfg.d_ff)},
                   "down_proj": {"kernel": w(cfg.d_ff, cfg.d_model)}}
        else:
            mlp = {"c_fc": {"kernel": w(cfg.d_model, cfg.d_ff)}, "c_proj": {"kernel": w(cfg.d_ff, cfg.d_model)}}
        params[f"h_{i}"] = {"ln_1": norm(), "attn": attn, "ln_2": norm(), "mlp": mlp}
    return params


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adamw(cfg.learning_rate, b1=0.9, b2=0.95, weight_decay=0.1)


def make_train_step(cfg: Config) -> Callable:
    tx = make_optimizer(cfg)

    def train_step(params, opt_state, batch):
        def loss_fn(p):
            logits = forward(p, batch["tokens"], cfg)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


@functools.partial(jax.jit, static_argnums=0)
def _init_args(cfg: Config, key):
    k_init, k_data = jax.random.split(key)
    stream = jax.random.randint(k_data, (cfg.batch, cfg.seq + 1), 0, cfg.vocab_size, jnp.int32)
    params = init_params(cfg, k_init)
    return params, make_optimizer(cfg).init(params), {"tokens": stream[:, :-1], "targets": stream[:, 1:]}


def program(**overrides):
    """(train_step, (params, opt_state, batch)) with ShapeDtypeStruct args."""
    cfg = make_config(**overrides)
    args = jax.eval_shape(functools.partial(_init_args, cfg), jax.random.key(0))
    return make_train_step(cfg), tuple(args)


def small_program(**overrides):
    return program(**{**SMALL_CONFIG, **overrides})


def concrete_args(seed: int = 0, **overrides):
    """Real arrays with exactly the structure/shapes/dtypes of program(**overrides)[1]."""
    cfg = make_config(**overrides)
    return tuple(_init_args(cfg, jax.random.key(seed)))


# -- the what-if ------------------------------------------------------------------------------------

MACHINES = (
    ("8 x H100, one NVSwitch node", "h100_sxm", 8, {}),
    ("64 x H100, 8 nodes, 400 Gb/s per GPU", "h100_sxm", 64, {}),
    ("64 x TPU v5p, 4x4x4 torus slice", "tpu_v5p", 64, {}),
)


def what_if(blocks_in_program: int = 2, top: int = 5, **overrides) -> list:
    """Best sharding plan of the model on each machine in ``MACHINES`` (search over meshes x strategies x
    pipeline depths x microbatches). The program holds ``blocks_in_program`` of the ``n_layers`` identical
    blocks; pipeline stage times are scaled to the real count."""
    import explorer
    import hw_targets

    cfg = make_config(**overrides)
    fn, args = program(**{**overrides, "n_layers": min(blocks_in_program, cfg.n_layers)})
    prog = explorer.lower(fn, *args)
    results = []
    for title, preset, chips, knobs in MACHINES:
        target = hw_targets.load(preset)
        if knobs:
            target = target.replace(**knobs)
        res = explorer.search_sharding(prog, target, chips, stages=(1, 2, 4), microbatches=(1, 4),
                                       schedules=("1f1b",), blocks=cfg.n_layers, top=top)
        results.append((title, res))
    return results


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = make_config(remat=True)
    print(f"GPT-style model: {cfg.n_layers} blocks, d_model {cfg.d_model}, {cfg.n_heads} heads, full activation "
          f"recomputation, global batch {cfg.batch} x {cfg.seq} tokens (program built with 2 blocks, scaled)\n")
    for title, res in what_if(remat=True):
        print(f"== {title}")
        print(res.table(top=5))
        if res.best:
            print(f"best: {res.best.label}   step {res.best.seconds * 1e3:.1f} ms   pipeline text: {res.best.pipeline}\n")
