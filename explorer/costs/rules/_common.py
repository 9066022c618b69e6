"""Small helpers shared by the rule modules."""
from __future__ import annotations

from typing import Sequence

from ...graph.ir import TensorType


def nbytes(types: Sequence[TensorType]) -> float:
    return float(sum(t.nbytes for t in types))


def elements(types: Sequence[TensorType]) -> float:
    return float(sum(t.elements for t in types))


def compute_dtype(ins: Sequence[TensorType], outs: Sequence[TensorType]) -> str:
    """The element type arithmetic runs in: the widest float among operands, else the first operand's."""
    floats = [t.dtype for t in (*ins, *outs) if t.dtype.startswith(("f", "bf"))]
    for d in ("f64", "f32", "f16", "bf16"):
        if d in floats:
            return d
    if floats:
        return floats[0]
    return (ins or outs)[0].dtype if (ins or outs) else ""
