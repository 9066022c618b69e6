"""ResNet-18 on ImageNet-sized images: one SGD+momentum training step with BatchNorm.

Model (flax.linen, after the flax ImageNet example), v1.5 ResNet with basic
blocks:

* stem: ``conv_init`` 7x7/2 (``width`` filters) -> ``bn_init`` -> relu -> 3x3/2 max-pool
* ``stage_sizes`` stages of ``ResNetBlock`` (named ``stage{s}_block{b}``), each two
  3x3 convs (``conv1``/``conv2``) with ``nn.BatchNorm`` (``bn1``/``bn2``), a 1x1
  projection shortcut (``proj_conv``/``proj_bn``) where the shape changes;
  filters double and spatial size halves at the start of every stage but the first
* global average pool -> ``nn.Dense(num_classes)`` head named ``head``.

BatchNorm runs in training mode: batch statistics are used for normalization
and the running averages in the ``batch_stats`` collection are updated
(``mutable=["batch_stats"]``) and returned by the step.

Loss: softmax cross-entropy with integer labels. Optimizer:
``optax.chain(add_decayed_weights(weight_decay, mask=<conv/dense kernels>),
sgd(lr, momentum=0.9, nesterov=True))``.

Dtypes: mixed precision as in the flax ImageNet example's ``half_precision``
mode: parameters, batch statistics and optimizer state in ``float32``;
convolutions/activations in ``bfloat16`` (``dtype``); images are fed as float32.

Program signature::

    train_step(params, batch_stats, opt_state, batch)
        -> (new_params, new_batch_stats, new_opt_state, loss)
    batch = {"images": f32[batch, H, W, C] (NHWC), "labels": i32[batch]}

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
    batch: int = 128
    image_size: int = 224
    channels: int = 3
    num_classes: int = 1000
    stage_sizes: tuple = (2, 2, 2, 2)  # ResNet-18
    width: int = 64  # filters of the stem / first stage
    dtype: str = "bfloat16"  # compute dtype; params/batch stats stay float32
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bn_momentum: float = 0.9


SMALL_CONFIG = dict(batch=4, image_size=32, num_classes=10, stage_sizes=(1, 1), width=8)


def make_config(**overrides) -> Config:
    """Default Config with ``overrides`` applied; unknown keys raise TypeError."""
    valid = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(
            f"unknown Config override(s) {bad} for {__name__}; valid: {sorted(valid)}"
        )
    cfg = dataclasses.replace(Config(), **overrides)
    return dataclasses.replace(cfg, stage_sizes=tuple(cfg.stage_sizes))


class ResNetBlock(nn.Module):
    filters: int
    strides: tuple
    cfg: Config
    train: bool

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not self.train,
                                 momentum=cfg.bn_momentum, epsilon=1e-5, dtype=dtype)
        residual = x
        y = conv(self.filters, (3, 3), self.strides, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.filters, (3, 3), name="conv2")(y)
        y = norm(scale_init=nn.initializers.zeros, name="bn2")(y)
        if residual.shape != y.shape:
            residual = conv(self.filters, (1, 1), self.strides, name="proj_conv")(residual)
            residual = norm(name="proj_bn")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x, train: bool = True):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x = nn.Conv(cfg.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                    use_bias=False, dtype=dtype, name="conv_init")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=cfg.bn_momentum,
                         epsilon=1e-5, dtype=dtype, name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for s, n_blocks in enumerate(cfg.stage_sizes):
            for b in range(n_blocks):
                strides = (2, 2) if s > 0 and b == 0 else (1, 1)
                x = ResNetBlock(cfg.width * 2**s, strides, cfg, train,
                                name=f"stage{s}_block{b}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(cfg.num_classes, dtype=dtype, name="head")(x)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    def decay_mask(params):  # decay conv/dense kernels only, not BN scale/bias
        return jax.tree.map(lambda p: p.ndim > 1, params)

    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.sgd(cfg.learning_rate, momentum=cfg.momentum, nesterov=True),
    )


def make_train_step(cfg: Config) -> Callable:
    model = ResNet(cfg)
    tx = make_optimizer(cfg)

    def train_step(params, batch_stats, opt_state, batch):
        def loss_fn(p):
            logits, new_state = model.apply(
                {"params": p, "batch_stats": batch_stats}, batch["images"],
                train=True, mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), batch["labels"]
            ).mean()
            return loss, new_state["batch_stats"]

        (loss, new_batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_batch_stats, opt_state, loss

    return train_step


@functools.partial(jax.jit, static_argnums=0)  # one compile per Config
def _init_args(cfg: Config, key):
    """Concrete (params, batch_stats, opt_state, batch); traced abstractly by program()."""
    k_init, k_x, k_y = jax.random.split(key, 3)
    images = jax.random.normal(
        k_x, (cfg.batch, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
    labels = jax.random.randint(k_y, (cfg.batch,), 0, cfg.num_classes, jnp.int32)
    variables = ResNet(cfg).init(k_init, images[:1], train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = make_optimizer(cfg).init(params)
    return params, batch_stats, opt_state, {"images": images, "labels": labels}


def program(**overrides):
    """(train_step, (params, batch_stats, opt_state, batch)) with ShapeDtypeStruct args."""
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
