"""Structured control flow: the op itself does no work; the ops inside its regions
are counted (weighted by trip count, or by the chosen branch) by ``explorer.program``."""
from __future__ import annotations

from ..registry import rule
from ..work import ZERO, Work


@rule("stablehlo.while", "stablehlo.case", "stablehlo.if", "sdy.manual_computation")
def structured(op, ins, outs) -> Work:
    return ZERO
