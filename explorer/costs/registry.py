"""Registry of per-op cost rules, keyed by op name.

A rule is ``fn(op, ins, outs) -> Work``: ``ins`` / ``outs`` are the operand and
result ``TensorType``s. Register with ``@rule("stablehlo.add", "chlo.broadcast_add")``.
``mhlo.X`` falls back to the rule for ``stablehlo.X``. Custom calls are keyed
``"custom_call:<target name>"``. An op with no rule (or whose rule returns None:
it lacks what it needs to count this op) is *unknown*: it is counted by name in
every result, never silently priced as zero.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..graph.ir import Op, TensorType
from .work import Work

RuleFn = Callable[[Op, Sequence[TensorType], Sequence[TensorType]], Work | None]
_RULES: dict[str, RuleFn] = {}


def rule(*names: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator registering ``fn`` as the cost rule of each op name."""

    def register(fn: RuleFn) -> RuleFn:
        for name in names:
            if name in _RULES and _RULES[name] is not fn:
                raise ValueError(f"two cost rules registered for {name!r}: {_RULES[name].__name__} and {fn.__name__}")
            _RULES[name] = fn
        return fn

    return register


def rule_key(op: Op) -> str:
    """The registry key of an op; custom calls are keyed by their target."""
    if op.name.endswith("custom_call"):
        return f"custom_call:{op.attrs.get('call_target_name', '?')}"
    return op.name


def find_rule(op: Op) -> RuleFn | None:
    key = rule_key(op)
    fn = _RULES.get(key)
    if fn is None and key.startswith("mhlo."):
        fn = _RULES.get("stablehlo." + key[5:])
    return fn


def registered() -> list[str]:
    return sorted(_RULES)
