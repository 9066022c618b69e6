"""JAX name stacks -> (phase, layer, primitive), for attributing costs to the model.

``jit(step)/transpose(jvp(GPT))/Block_3/Dense_0/dot_general`` ->
phase "backward", layer "GPT/Block_3/Dense_0", primitive "dot_general".

Not layers: control flow and call plumbing (``while/body``, ``checkpoint``, ...), functions JAX or
``jax.numpy`` jit internally (``jit(_take)``, ``jvp(jit(take_along_axis))``, ``vmap(jit(_where))``: any
component called through an inner ``jit``) and ``einsum`` specs (``...hqk,...khd->...qhd``). Work outside
every layer (a loss, an optimizer update) has the layer ``TOP``, shown as ``display_layer`` says.
"""
from __future__ import annotations

import re
from functools import lru_cache

TOP = "(top)"     # the layer of work outside every named layer (kept as is: passes compare against it)

# Name-stack components JAX adds for control flow and calls; they are not model layers.
_PLUMBING = frozenset({
    "while", "closed_call", "scan", "checkpoint", "remat", "rematted_computation",
    "pjit", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "cond_fun",
    "body_fun", "switch", "shard_map", "xla_call", "call", "",
})
# Region names that are plumbing only right after a control-flow component ("while/body", "cond/branch_1").
_REGIONS = frozenset({"body", "cond", "branch"})
_WRAPPERS = ("transpose(", "jvp(", "vmap(", "jit(", "remat(", "checkpoint(", "pjit(", "vjp(", "linearize(")


def split_stack(stack: str) -> list[str]:
    """Split on '/' outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in stack:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "/" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unwrap(component: str) -> str:
    while component.startswith(_WRAPPERS) and component.endswith(")"):
        component = component[component.index("(") + 1:-1]
    return component


@lru_cache(maxsize=65536)
def parse(stack: str) -> tuple[str, str, str]:
    """(phase, layer, primitive). phase: "backward", "forward" or "other"."""
    parts = split_stack(stack)
    if parts and parts[0].startswith("jit("):
        parts = parts[1:]
    phase = "other"
    if any(p.startswith("transpose(") for p in parts):
        phase = "backward"
    elif any("jvp(" in p for p in parts):
        phase = "forward"
    primitive = parts[-1] if parts else ""
    layer = []
    prev = ""
    for p in parts[:-1]:
        u = _unwrap(p)
        plumbing = (u in _PLUMBING or "jit(" in p or "->" in u or (u in _REGIONS and prev in ("while", "cond", "switch"))
                    or u.startswith("branch_")
                    # jax.checkpoint's backward: "transpose(jvp(GPT2))/jvp(GPT2)/checkpoint/..." is one GPT2
                    or (p != u and p.startswith(_WRAPPERS) and layer and layer[-1] == u))
        if not plumbing:
            layer.append(u)
        prev = u
    layer = [u for u in layer if u]
    return phase, "/".join(layer) or TOP, primitive


def layer_at_depth(layer: str, depth: int | None) -> str:
    if depth is None or layer == TOP:
        return layer
    return "/".join(layer.split("/")[:depth])


def display_layer(layer: str, phase: str = "") -> str:
    """The layer as tables and plots show it: work outside every layer is "(optimizer update)" in the optimizer
    phase, "(transfers)" stays, and anything else there (a loss, the glue between layers) "(outside any layer)"."""
    if layer != TOP:
        return layer
    return "(optimizer update)" if phase == "optimizer" else "(outside any layer)"


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: block_2 before block_10."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(text))
