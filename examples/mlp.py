"""MLP classifier: one full training step (forward + loss + grad + optax update).

Model: ``n_layers`` hidden ``nn.Dense(hidden)`` + GELU layers (named ``layer_0``,
``layer_1``, ...) followed by a ``nn.Dense(n_classes)`` head named ``head``.
Loss: softmax cross-entropy with integer labels. Optimizer: ``optax.adam``
(default) or ``optax.sgd`` with momentum 0.9.

Dtypes: parameters, activations and inputs are all ``float32`` by default
(``dtype="bfloat16"`` switches compute/inputs to bf16, parameters stay f32).

Program signature::

    train_step(params, opt_state, batch) -> (new_params, new_opt_state, loss)
    batch = {"x": f32[batch, d_in], "y": i32[batch]}

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
    batch: int = 256
    d_in: int = 1024
    hidden: int = 1024
    n_layers: int = 3  # hidden Dense+GELU layers; the Dense head comes on top
    n_classes: int = 10
    dtype: str = "float32"  # compute / input dtype; params are always float32
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    learning_rate: float = 1e-3


# Tiny configuration used by small_program() and the tests.
SMALL_CONFIG = dict(batch=8, d_in=16, hidden=32, n_layers=2, n_classes=4)


def make_config(**overrides) -> Config:
    """Default Config with ``overrides`` applied; unknown keys raise TypeError."""
    valid = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(
            f"unknown Config override(s) {bad} for {__name__}; valid: {sorted(valid)}"
        )
    return dataclasses.replace(Config(), **overrides)


class MLP(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        for i in range(cfg.n_layers):
            x = nn.Dense(cfg.hidden, dtype=dtype, name=f"layer_{i}")(x)
            x = nn.gelu(x)
        return nn.Dense(cfg.n_classes, dtype=dtype, name="head")(x)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    if cfg.optimizer == "adam":
        return optax.adam(cfg.learning_rate)
    if cfg.optimizer == "sgd":
        return optax.sgd(cfg.learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (use 'adam' or 'sgd')")


def make_train_step(cfg: Config) -> Callable:
    model = MLP(cfg)
    tx = make_optimizer(cfg)

    def train_step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["x"])
            losses = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), batch["y"]
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
    k_init, k_x, k_y = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (cfg.batch, cfg.d_in), jnp.dtype(cfg.dtype))
    y = jax.random.randint(k_y, (cfg.batch,), 0, cfg.n_classes, jnp.int32)
    params = MLP(cfg).init(k_init, x)["params"]
    opt_state = make_optimizer(cfg).init(params)
    return params, opt_state, {"x": x, "y": y}


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
