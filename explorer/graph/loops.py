"""Trip-count inference for ``stablehlo.while``.

JAX emits counted loops (``lax.scan``, ``fori_loop`` with static bounds, ``nn.scan``)
as a while whose condition compares one loop-carried integer with a constant,
whose initial value is a constant and whose body adds a constant step to it:

    cond: %p = compare LT, %i, %c_limit        body: %i' = add %i, %c_step

Anything else (data-dependent loops, bounds passed as arguments) is reported as
unknown, with the reason, and the user can supply the count
(``Program.with_trip_counts``).

A counter of floating-point type (``x < 3.0`` stepping by 0.3) is reported as unknown too: the
count follows from the rounding of each accumulated step (0.3 in f32 summed ten times is
2.9999998 < 3.0, so that loop runs 11 times where ``ceil(3.0 / 0.3)`` says 10), which
``limit / step`` cannot know.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .ir import Op, TensorType

_FLIP = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE", "EQ": "EQ", "NE": "NE"}
# ops that pass a scalar through unchanged (a compiler's optimized module copies and bitcasts loop counters)
_PASS_THROUGH = frozenset({"stablehlo.convert", "stablehlo.reshape", "stablehlo.broadcast_in_dim", "stablehlo.copy",
                           "mhlo.copy", "mhlo.bitcast"})


def _const(vid: int, ops: Sequence[Op | None], producers: Mapping[int, int], consts: Mapping[int, float]):
    """Constant value of a value id, looking through converts and reshapes of scalars."""
    for _ in range(8):
        if vid in consts:
            return consts[vid]
        oid = producers.get(vid)
        if oid is None:
            return None
        op = ops[oid]
        if op is None or op.name not in _PASS_THROUGH:
            return None
        vid = op.operands[0]
    return None


def infer_trip_count(*, init: Sequence[int], cond_args: Sequence[int], cond_result: int | None,
                     body_args: Sequence[int], body_results: Sequence[int], ops: Sequence[Op | None],
                     producers: Mapping[int, int], consts: Mapping[int, float],
                     values: Sequence[TensorType] | None = None) -> tuple[int | None, str]:
    """(trip count or None, how it was found or why not). ``values``: value id -> type (to see the
    counter's element type; without it the counter is assumed to be an integer)."""
    if cond_result is None:
        return None, "condition returns nothing"
    cmp_id = producers.get(cond_result)
    cmp = ops[cmp_id] if cmp_id is not None else None
    if cmp is None or cmp.name != "stablehlo.compare":
        return None, "condition is not a single compare"
    direction = cmp.attrs.get("comparison_direction")
    lhs, rhs = cmp.operands
    if lhs in cond_args and _const(rhs, ops, producers, consts) is not None:
        k, limit = cond_args.index(lhs), _const(rhs, ops, producers, consts)
    elif rhs in cond_args and _const(lhs, ops, producers, consts) is not None:
        k, limit = cond_args.index(rhs), _const(lhs, ops, producers, consts)
        direction = _FLIP.get(direction, direction)
    else:
        return None, "condition does not compare a loop counter with a constant"
    if values is not None and _is_float(values[cond_args[k]].dtype):
        return None, (f"loop counter (carried value {k}) is a floating-point {values[cond_args[k]].dtype} "
                      f"compared {direction} with {limit}: rounding of the accumulated steps decides the "
                      "trip count, so it is not guessed")
    start = _const(init[k], ops, producers, consts)
    if start is None:
        return None, f"initial value of loop counter (carried value {k}) is not a constant"
    step = _step(body_args[k], body_results[k] if k < len(body_results) else None, ops, producers, consts)
    if step is None or step == 0:
        return None, f"loop counter (carried value {k}) is not advanced by a constant step"
    trips = _count(start, limit, step, direction)
    if trips is None:
        return None, f"comparison {direction} with step {step} does not terminate in a countable way"
    return trips, f"counter {start} {direction} {limit} step {step}"


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("f", "bf", "tf", "complex"))


def _step(arg: int, result: int | None, ops, producers, consts):
    if result is None:
        return None
    oid = producers.get(result)
    op = ops[oid] if oid is not None else None
    while op is not None and op.name in ("stablehlo.copy", "mhlo.copy", "mhlo.bitcast") and op.operands:
        oid = producers.get(op.operands[0])
        op = ops[oid] if oid is not None else None
    if op is None or op.name not in ("stablehlo.add", "stablehlo.subtract"):
        return None
    a, b = op.operands
    sign = 1 if op.name == "stablehlo.add" else -1
    if a == arg and _const(b, ops, producers, consts) is not None:
        return sign * _const(b, ops, producers, consts)
    if b == arg and op.name == "stablehlo.add" and _const(a, ops, producers, consts) is not None:
        return _const(a, ops, producers, consts)
    return None


def _count(start: float, limit: float, step: float, direction: str) -> int | None:
    span = limit - start
    if direction == "LT" and step > 0:
        return max(0, math.ceil(span / step))
    if direction == "LE" and step > 0:
        return max(0, math.floor(span / step) + 1)
    if direction == "GT" and step < 0:
        return max(0, math.ceil(span / step))
    if direction == "GE" and step < 0:
        return max(0, math.floor(span / step) + 1)
    if direction == "NE" and span % step == 0 and span / step >= 0:
        return int(span / step)
    return None
