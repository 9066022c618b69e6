"""GPT-2 (small, 124M by default): one full optax.adamw training step.

Model (flax.linen), following the GPT-2 architecture / HF parameter names:

* ``wte`` token embedding (vocab x d_model) + ``wpe`` learned position embedding
* ``n_layers`` pre-LayerNorm blocks named ``h_0`` ... ``h_{L-1}`` (or one
  ``nn.scan``-ed block named ``h`` when ``scan_layers=True``), each::

      x = x + attn(ln_1(x))     # nn.MultiHeadDotProductAttention, causal mask
      x = x + mlp(ln_2(x))      # c_fc (4*d) -> tanh-approx GELU -> c_proj

* final LayerNorm ``ln_f``; the LM head is TIED to ``wte`` (``wte.attend``),
  as in the original GPT-2, so there is no separate lm_head parameter.
* no dropout (deterministic step).

Loss: mean next-token softmax cross-entropy (computed in float32).
Optimizer: ``optax.chain(clip_by_global_norm(1.0), adamw(lr, b1=0.9, b2=0.95,
weight_decay=0.1, mask=<params with ndim >= 2>))``.

Dtypes: mixed precision as usually configured for training: parameters and
optimizer state in ``float32`` (``param_dtype``), matmuls/activations in
``bfloat16`` (``dtype``); softmax inside attention and the loss are float32.

Program signature::

    train_step(params, opt_state, batch) -> (new_params, new_opt_state, loss)
    batch = {"tokens": i32[batch, seq], "targets": i32[batch, seq]}

``scan_layers=True`` stacks the block parameters along a leading layer axis and
runs the blocks with ``nn.scan``: the StableHLO then contains a
``stablehlo.while`` loop for the forward pass and another for the backward pass.

See examples/README.md for the conventions shared by all examples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50257
    n_ctx: int = 1024  # size of the position-embedding table
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072  # 4 * d_model
    batch: int = 8
    seq: int = 1024  # must be <= n_ctx
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # parameter / optimizer-state dtype
    learning_rate: float = 6e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    scan_layers: bool = False


SMALL_CONFIG = dict(
    vocab_size=64, n_ctx=16, d_model=32, n_heads=4, n_layers=2, d_ff=128,
    batch=2, seq=16,
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
    if cfg.seq > cfg.n_ctx:
        raise ValueError(f"seq ({cfg.seq}) must be <= n_ctx ({cfg.n_ctx})")
    if cfg.d_model % cfg.n_heads:
        raise ValueError("d_model must be divisible by n_heads")
    return cfg


_INIT = nn.initializers.normal(stddev=0.02)


class MLP(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dense = functools.partial(
            nn.Dense, dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=_INIT,
        )
        h = dense(cfg.d_ff, name="c_fc")(x)
        h = nn.gelu(h, approximate=True)
        return dense(cfg.d_model, name="c_proj")(h)


class Block(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        ln = functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=dtype, param_dtype=pdtype)
        h = ln(name="ln_1")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=cfg.n_heads, dtype=dtype, param_dtype=pdtype,
            kernel_init=_INIT, force_fp32_for_softmax=True, name="attn",
        )(h, mask=mask)
        x = x + h
        h = ln(name="ln_2")(x)
        x = x + MLP(cfg, name="mlp")(h)
        if cfg.scan_layers:
            return x, None  # (carry, per-layer output) for nn.scan
        return x


class GPT2(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, tokens):
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        _, seq = tokens.shape
        wte = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                       embedding_init=_INIT, name="wte")
        wpe = nn.Embed(cfg.n_ctx, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                       embedding_init=nn.initializers.normal(stddev=0.01), name="wpe")
        x = wte(tokens) + wpe(jnp.arange(seq)[None, :])
        mask = nn.make_causal_mask(tokens)  # [batch, 1, seq, seq]
        if cfg.scan_layers:
            blocks = nn.scan(
                Block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=nn.broadcast, length=cfg.n_layers,
            )(cfg, name="h")
            x, _ = blocks(x, mask)
        else:
            for i in range(cfg.n_layers):
                x = Block(cfg, name=f"h_{i}")(x, mask)
        x = nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=pdtype, name="ln_f")(x)
        return wte.attend(x)  # tied LM head: [batch, seq, vocab]


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    def decay_mask(params):  # no weight decay on biases and LayerNorm params
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(cfg.learning_rate, b1=0.9, b2=0.95,
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def make_train_step(cfg: Config) -> Callable:
    model = GPT2(cfg)
    tx = make_optimizer(cfg)

    def train_step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["tokens"])
            losses = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), batch["targets"]
            )
            return losses.mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    return train_step


@functools.partial(jax.jit, static_argnums=0)  # one compile per Config
def _init_args(cfg: Config, key):
    """Concrete (params, opt_state, batch); traced abstractly by program()."""
    k_init, k_data = jax.random.split(key)
    # Random token stream; targets are the inputs shifted by one.
    stream = jax.random.randint(k_data, (cfg.batch, cfg.seq + 1), 0, cfg.vocab_size,
                                jnp.int32)
    batch = {"tokens": stream[:, :-1], "targets": stream[:, 1:]}
    params = GPT2(cfg).init(k_init, batch["tokens"][:1])["params"]
    opt_state = make_optimizer(cfg).init(params)
    return params, opt_state, batch


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


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import explorer
    import hw_targets

    fn, args = program()
    prog = explorer.lower(fn, *args)
    cmp = explorer.compare(
        prog, [hw_targets.load(n) for n in ("h100_sxm", "tpu_v5p", "mi300x")]
    )
    print(cmp.table())
