"""Decoder-only transformers as the published training and inference runs built them, for the validators.

Plain JAX (no flax) with the parameter names the sharding strategies recognise (``q_proj`` ... ``o_proj``,
``c_fc`` / ``c_proj``, ``gate_proj`` / ``up_proj`` / ``down_proj``, ``wi`` / ``wo``, ``wte``), each block under
``jax.named_scope("h_<i>")`` so costs and memory are attributed per block and pipeline stages cut between blocks.
What a source's model has, and this builder offers:

- GPT (LayerNorm, GELU MLP, learned positions, tied head: Megatron-LM, NeMo GPT-3), Llama (RMSNorm, SwiGLU,
  grouped-query attention, untied head) and MaxText's synthetic decoders (a parallel attention + MLP block, a
  ReLU MLP of two matrices ``wi`` / ``wo``, tied embeddings, a head dimension of its own, 256);
- ``attention="flash"``: the core attention (scores, softmax, values) under ``jax.checkpoint``, so the backward pass
  recomputes the scores from Q, K, V as FlashAttention does, and the S x S probabilities are never saved
  (fused into one kernel by ``fuse{strategy=aggressive}``); ``"plain"``: scores written out, as the 2021 Megatron
  runs did;
- ``remat``: ``none``; ``full`` (each block under ``jax.checkpoint``: MaxText's ``remat_policy=full``; with
  ``whole_block_recompute``, the block's whole forward re-run, outputs included: Megatron-LM's full recompute);
  ``selective`` (core attention recomputed: Megatron's selective recompute); ``minimal``
  (MaxText: the projection matmuls' outputs saved, everything else recomputed:
  ``checkpoint_dots_with_no_batch_dims``);
- ``param_dtype``: ``float32`` (MaxText's fp32 weights, an AdamW state beside them) or ``bfloat16`` with the f32
  master weights inside the optimizer state (Megatron's mixed-precision optimizer: 16-bit model weights, f32
  master weights and moments, all three split by a distributed optimizer, ``zero1``);
- ``matmul_dtype``: ``bfloat16`` or ``float8`` (8-bit operands in the forward and both backward GEMMs, bf16 results:
  TransformerEngine's recipe without its scaling factors, ``_fp8_dense``);
- ``weight_dtype="int8"`` for decoding (weights stored in 8 bits and widened before each matmul, Pope et al.).

``train_program(cfg, batch)`` -> (train_step, args) with ``ShapeDtypeStruct`` args; ``decode_program(cfg, batch,
context)`` -> (decode_step, args): one new token per sequence against a KV cache of ``context`` positions.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

S = jax.ShapeDtypeStruct
BF = jnp.bfloat16
F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Model:
    vocab: int
    d_model: int
    n_heads: int
    d_ff: int
    seq: int
    n_layers: int = 2                # blocks in the program (the real count is scaled to by the pricing)
    n_kv_heads: int = 0              # 0: as many as n_heads
    head_dim: int = 0                # 0: d_model / n_heads
    mlp: str = "gelu"                # gelu | swiglu | relu
    norm: str = "layernorm"          # layernorm | rmsnorm
    parallel_block: bool = False     # attention and MLP read the same normed input (MaxText synthetic, PaLM)
    tied: bool = True
    learned_pos: bool = True
    attention: str = "plain"         # plain | flash
    dropout: float = 0.0             # hidden and attention dropout rate (Megatron-LM's default 0.1; Llama: none)
    remat: str = "none"              # none | full | selective | minimal
    # remat="full" as PyTorch checkpoints a block (Megatron-LM's CheckpointFunction): the backward pass re-runs the
    # block's whole forward, its output and the collectives that make it included, and backpropagates through that;
    # False: jax.checkpoint, whose backward recomputes only what the gradients read
    whole_block_recompute: bool = False
    param_dtype: str = "bfloat16"    # bfloat16 (f32 master weights in the optimizer) | float32
    matmul_dtype: str = "bfloat16"   # bfloat16 | float8
    weight_dtype: str = ""           # decoding: "int8" weights widened before each matmul

    def __post_init__(self) -> None:
        checks = {"mlp": ("gelu", "swiglu", "relu"), "norm": ("layernorm", "rmsnorm"),
                  "attention": ("plain", "flash"), "remat": ("none", "full", "selective", "minimal"),
                  "param_dtype": ("bfloat16", "float32"), "matmul_dtype": ("bfloat16", "float8"),
                  "weight_dtype": ("", "int8")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Model.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {kv}")
        if not self.head_dim and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads} (give head_dim)")

    @property
    def kv(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


# -- the model ---------------------------------------------------------------------------------------------

def _w(cfg: Model, w):
    return w.astype(BF) if w.dtype == jnp.int8 else w


def _dense(cfg: Model, x, w, spec: str):
    if cfg.matmul_dtype == "float8":
        return _fp8_dense((spec,), x, (_w(cfg, w),))[0]
    return jnp.einsum(spec, x.astype(BF), _w(cfg, w).astype(BF), preferred_element_type=BF)


def _denses(cfg: Model, x, ws, specs):
    """Several projections of one input (Q, K, V; the gate and up projections): in FP8 the input is cast once and
    that one 8-bit copy is read by every GEMM and saved once, as TransformerEngine's fused QKV and fc1 GEMMs do."""
    if cfg.matmul_dtype == "float8":
        return _fp8_dense(tuple(specs), x, tuple(_w(cfg, w) for w in ws))
    return [_dense(cfg, x, w, spec) for w, spec in zip(ws, specs)]


def _fp8_dense(specs: tuple, x, ws: tuple):
    """TransformerEngine's FP8 recipe for the matmuls of one input: the forward GEMMs on e4m3 casts of the input
    (one, shared) and of the weights (saved, 1 byte per element, for the backward pass), and both backward GEMMs
    (input gradient, weight gradient) on 8-bit casts of the output gradients as well (TE's HYBRID recipe casts
    gradients to e5m2; e4m3 here, the same size and GEMM rate), bf16 results. Scaling factors are left out."""
    f8, xdt, wdts = jnp.float8_e4m3fn, x.dtype, [w.dtype for w in ws]
    parts = [spec.split("->") for spec in specs]

    def forward(x8, w8s):
        return [jnp.einsum(spec, x8, w8, preferred_element_type=BF) for spec, w8 in zip(specs, w8s)]

    @jax.custom_vjp
    def mm(x, ws):
        return forward(x.astype(f8), [w.astype(f8) for w in ws])

    def fwd(x, ws):
        x8, w8s = x.astype(f8), [w.astype(f8) for w in ws]
        return forward(x8, w8s), (x8, w8s)

    def bwd(res, gs):
        x8, w8s = res
        dx, dws = None, []
        for (ins, out), w8, g, wdt in zip(parts, w8s, gs, wdts):
            a, b = ins.split(",")
            g8 = g.astype(f8)
            d = jnp.einsum(f"{out},{b}->{a}", g8, w8, preferred_element_type=BF)
            dx = d if dx is None else dx + d
            dws.append(jnp.einsum(f"{a},{out}->{b}", x8, g8, preferred_element_type=BF).astype(wdt))
        return dx.astype(xdt), tuple(dws)

    mm.defvjp(fwd, bwd)
    return mm(x, tuple(ws))


def _norm(cfg: Model, p, x):
    x32 = x.astype(F32)
    if cfg.norm == "rmsnorm":
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6) * p["scale"]).astype(BF)
    mu = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean((x32 - mu) ** 2, -1, keepdims=True)
    return ((x32 - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]).astype(BF)


def _dropout(rate: float, key, x):
    """(key, x with ``rate`` of its elements zeroed and the rest scaled): 8-bit random bits from the key (one byte
    of mask per element, as Megatron's fused dropout keeps), no-op at rate 0."""
    if not rate or key is None:
        return key, x
    key, bits = jax.lax.rng_bit_generator(key, x.shape, dtype=jnp.uint8)
    keep = 1.0 - rate
    return key, jnp.where(bits < jnp.uint8(int(256 * keep)), x * jnp.asarray(1 / keep, x.dtype), jnp.zeros((), x.dtype))


def _core_attention(q, k, v, causal: bool = True, flash: bool = False, rate: float = 0.0, key=None):
    """q [b, s, kv, g, e], k / v [b, t, kv, e] -> [b, s, kv, g, e] (f32 softmax, causal). ``flash``: the scores
    leave the matmul in 16 bits and are widened for the softmax, so the backward's dQ and dK matmuls take a 16-bit
    dS as FlashAttention's do (an f32 score matmul would make them f32 matmuls)."""
    s, t = q.shape[1], k.shape[1]
    scores = jnp.einsum("bskge,btke->bkgst", q, k, preferred_element_type=BF if flash else F32).astype(F32)
    scores = scores / jnp.sqrt(q.shape[-1]).astype(F32)
    if causal:
        mask = jnp.tril(jnp.ones((s, t), bool), t - s)
        scores = jnp.where(mask, scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(BF)
    key, probs = _dropout(rate, key, probs)
    return jnp.einsum("bkgst,btke->bskge", probs, v, preferred_element_type=BF), key


def _attention(cfg: Model, p, h, cache=None, pos=None, key=None):
    b, s, _ = h.shape
    g = cfg.n_heads // cfg.kv
    q, k, v = _denses(cfg, h, [p["q_proj"]["kernel"], p["k_proj"]["kernel"], p["v_proj"]["kernel"]],
                      ["bsd,dhe->bshe"] * 3)
    q = q.reshape(b, s, cfg.kv, g, cfg.hd)
    new_cache = None
    if cache is not None:
        k = jax.lax.dynamic_update_slice(cache["k"], k, (0, pos, 0, 0))
        v = jax.lax.dynamic_update_slice(cache["v"], v, (0, pos, 0, 0))
        new_cache = {"k": k, "v": v}
    core = _core_attention
    if cfg.attention == "flash" or cfg.remat == "selective":
        core = jax.checkpoint(core, static_argnums=(3, 4, 5))
    o, key = core(q, k, v, cache is None, cfg.attention == "flash", cfg.dropout if key is not None else 0.0, key)
    o = o.reshape(b, s, cfg.n_heads, cfg.hd)
    return _dense(cfg, o, p["o_proj"]["kernel"], "bshe,hed->bsd"), new_cache, key


def _mlp(cfg: Model, p, h):
    if cfg.mlp == "swiglu":
        # the gate's activation recomputed in the backward pass from the two projections, as the frameworks' fused
        # SwiGLU kernels do (Megatron-Core's bias_swiglu, TransformerEngine, MaxText): saved are the gate and up
        # projections and the product (the down projection's input), not silu(gate) besides
        gate, up = _denses(cfg, h, [p["gate_proj"]["kernel"], p["up_proj"]["kernel"]], ["bsd,df->bsf"] * 2)
        u = jax.checkpoint(lambda g, v: jax.nn.silu(g) * v)(gate, up)
        return _dense(cfg, u, p["down_proj"]["kernel"], "bsf,fd->bsd")
    if cfg.mlp == "relu":
        return _dense(cfg, jax.nn.relu(_dense(cfg, h, p["wi"]["kernel"], "bsd,df->bsf")), p["wo"]["kernel"], "bsf,fd->bsd")
    return _dense(cfg, jax.nn.gelu(_dense(cfg, h, p["c_fc"]["kernel"], "bsd,df->bsf")), p["c_proj"]["kernel"],
                  "bsf,fd->bsd")


def _block(cfg: Model, p, x, cache=None, pos=None, key=None):
    """(x, cache, key): one block; with a key (training, ``cfg.dropout`` > 0) the attention probabilities and
    both sublayers' outputs are dropped out before the residual adds, as Megatron-LM's blocks do."""
    rate = cfg.dropout if key is not None else 0.0
    if cfg.parallel_block:
        h = _norm(cfg, p["ln_1"], x)
        with jax.named_scope("attn"):
            a, cache, key = _attention(cfg, p["attn"], h, cache, pos, key)
            key, a = _dropout(rate, key, a)
        with jax.named_scope("mlp"):
            key, m = _dropout(rate, key, _mlp(cfg, p["mlp"], h))
        return x + a + m, cache, key
    with jax.named_scope("attn"):
        a, cache, key = _attention(cfg, p["attn"], _norm(cfg, p["ln_1"], x), cache, pos, key)
        key, a = _dropout(rate, key, a)
        x = x + a
    with jax.named_scope("mlp"):
        key, m = _dropout(rate, key, _mlp(cfg, p["mlp"], _norm(cfg, p["ln_2"], x)))
        x = x + m
    return x, cache, key


def _remat(cfg: Model, fn: Callable) -> Callable:
    if cfg.remat == "full" and cfg.whole_block_recompute:
        return _whole_block_recompute(fn)
    if cfg.remat == "full":
        return jax.checkpoint(fn)
    if cfg.remat == "minimal":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims)
    return fn


def _whole_block_recompute(fn: Callable) -> Callable:
    """``fn`` saving only its inputs, its backward pass re-running all of it: PyTorch's activation checkpointing
    (``torch.utils.checkpoint``, Megatron-LM's ``CheckpointFunction``) recomputes the block's outputs too, with the
    row-parallel projections' all-reduces that make them, although no gradient reads them; ``jax.checkpoint``
    recomputes only what the gradients read (a GPT block's second MLP matmul, a third of its matmul FLOPs, is left out).
    The recomputed output is tied to the gradients by an optimization barrier, so that nothing drops it."""
    @jax.custom_vjp
    def block(*args):
        return fn(*args)

    def forward_pass(*args):
        return fn(*args), args

    def backward_pass(args, cotangent):
        args = jax.lax.optimization_barrier(args)       # the saved inputs, read as saved (as jax.checkpoint does)
        out, vjp = jax.vjp(fn, *args)
        grads, _ = jax.lax.optimization_barrier((vjp(cotangent), out))
        return grads

    block.defvjp(forward_pass, backward_pass)
    return block


def forward(cfg: Model, params, tokens, key=None):
    """Logits [batch, seq, vocab] (f32); ``key``: the dropout key (training with ``cfg.dropout``)."""
    with jax.named_scope("wte"):
        x = _w(cfg, params["wte"]["embedding"]).astype(BF)[tokens]
    if cfg.learned_pos:
        with jax.named_scope("wpe"):
            x = x + _w(cfg, params["wpe"]["embedding"]).astype(BF)[None, : tokens.shape[1]]
    def one(p, x, key):
        x, _, key = _block(cfg, p, x, key=key)
        return x, key

    block = _remat(cfg, one)
    for i in range(cfg.n_layers):
        with jax.named_scope(f"h_{i}"):
            x, key = block(params[f"h_{i}"], x, key)
    with jax.named_scope("head"):
        x = _norm(cfg, params["ln_f"], x)
        head = params["wte"]["embedding"].T if cfg.tied else params["lm_head"]["kernel"]
        return _dense(cfg, x, head, "bsd,dv->bsv").astype(F32)


def param_shapes(cfg: Model) -> dict:
    dt = jnp.int8 if cfg.weight_dtype == "int8" else (F32 if cfg.param_dtype == "float32" else BF)
    d, kv, hd = cfg.d_model, cfg.kv, cfg.hd

    def norm():
        p = {"scale": S((d,), F32)}
        if cfg.norm == "layernorm":
            p["bias"] = S((d,), F32)
        return p

    params = {"wte": {"embedding": S((cfg.vocab, d), dt)}, "ln_f": norm()}
    if cfg.learned_pos:
        params["wpe"] = {"embedding": S((cfg.seq, d), dt)}
    if not cfg.tied:
        params["lm_head"] = {"kernel": S((d, cfg.vocab), dt)}
    for i in range(cfg.n_layers):
        attn = {"q_proj": {"kernel": S((d, cfg.n_heads, hd), dt)}, "k_proj": {"kernel": S((d, kv, hd), dt)},
                "v_proj": {"kernel": S((d, kv, hd), dt)}, "o_proj": {"kernel": S((cfg.n_heads, hd, d), dt)}}
        names = {"swiglu": ("gate_proj", "up_proj", "down_proj"), "relu": ("wi", "wo"), "gelu": ("c_fc", "c_proj")}
        cols = names[cfg.mlp][:-1]
        mlp = {n: {"kernel": S((d, cfg.d_ff), dt)} for n in cols}
        mlp[names[cfg.mlp][-1]] = {"kernel": S((cfg.d_ff, d), dt)}
        blk = {"ln_1": norm(), "attn": attn, "mlp": mlp}
        if not cfg.parallel_block:
            blk["ln_2"] = norm()
        params[f"h_{i}"] = blk
    return params


# -- programs ------------------------------------------------------------------------------------------------

def train_program(cfg: Model, batch: int, learning_rate: float = 1e-4):
    """(train_step, (params, opt_state, batch)): AdamW; 16-bit parameters keep f32 master weights in the optimizer
    state (``opt_state = (master, adam)``), f32 parameters their AdamW state only."""
    tx = optax.adamw(learning_rate, b1=0.9, b2=0.95, weight_decay=0.1)
    params = param_shapes(cfg)
    master = cfg.param_dtype == "bfloat16"

    def loss_fn(p, data):
        logits = forward(cfg, p, data["tokens"], data.get("key"))
        return optax.softmax_cross_entropy_with_integer_labels(logits, data["targets"]).mean()

    def train_step(params, opt_state, data):
        loss, grads = jax.value_and_grad(loss_fn)(params, data)
        if master:
            weights, adam = opt_state
            grads = jax.tree.map(lambda g: g.astype(F32), grads)
            updates, adam = tx.update(grads, adam, weights)
            weights = optax.apply_updates(weights, updates)
            return jax.tree.map(lambda w: w.astype(BF), weights), (weights, adam), loss
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    f32_params = jax.tree.map(lambda s: S(s.shape, F32), params)
    adam = jax.eval_shape(tx.init, f32_params)
    opt_state = (f32_params, adam) if master else adam
    data = {"tokens": S((batch, cfg.seq), jnp.int32), "targets": S((batch, cfg.seq), jnp.int32)}
    if cfg.dropout:
        data["key"] = S((4,), jnp.uint32)        # the random generator's state (rng_bit_generator's default key)
    return train_step, (params, opt_state, data)


def decode_program(cfg: Model, batch: int, context: int):
    """(decode_step, (params, cache, tokens, pos)): one token per sequence against a ``context``-long KV cache,
    donated as serving code donates it (the cache is updated in place, not copied: ``explorer.model.liveness``)."""
    params = param_shapes(cfg)

    def decode_step(params, cache, tokens, pos):
        with jax.named_scope("wte"):
            x = _w(cfg, params["wte"]["embedding"]).astype(BF)[tokens]
        new = {}
        for i in range(cfg.n_layers):
            with jax.named_scope(f"h_{i}"):
                x, new[f"h_{i}"], _ = _block(cfg, params[f"h_{i}"], x, cache[f"h_{i}"], pos)
        with jax.named_scope("head"):
            x = _norm(cfg, params["ln_f"], x)
            head = params["wte"]["embedding"].T if cfg.tied else params["lm_head"]["kernel"]
            return _dense(cfg, x, head, "bsd,dv->bsv").astype(F32), new

    kv = S((batch, context, cfg.kv, cfg.hd), BF)
    cache = {f"h_{i}": {"k": kv, "v": kv} for i in range(cfg.n_layers)}
    return jax.jit(decode_step, donate_argnums=1), (params, cache, S((batch, 1), jnp.int32), S((), jnp.int32))


@functools.lru_cache(maxsize=None)
def parameters(cfg: Model, layers: int) -> float:
    """Parameters of the model with ``layers`` blocks (closed form from the shapes)."""
    d, kv, hd, f = cfg.d_model, cfg.kv, cfg.hd, cfg.d_ff
    per_block = d * hd * (2 * cfg.n_heads + 2 * kv) + f * d * (3 if cfg.mlp == "swiglu" else 2)
    per_block += d * (2 if cfg.norm == "layernorm" else 1) * (1 if cfg.parallel_block else 2)
    other = cfg.vocab * d * (1 if cfg.tied else 2) + (cfg.seq * d if cfg.learned_pos else 0)
    return float(per_block * layers + other)
