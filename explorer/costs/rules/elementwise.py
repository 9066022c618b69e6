"""Elementwise ops: one flop per result element (XLA's convention), or one
transcendental per element for exp/log/tanh/... . Bytes: every operand read, every result written."""
from __future__ import annotations

from ..registry import rule
from ..work import Work
from ._common import compute_dtype, elements, nbytes

_ARITH = [
    "abs", "negate", "sign", "floor", "ceil", "round_nearest_afz", "round_nearest_even", "not",
    "popcnt", "count_leading_zeros", "is_finite", "convert", "real", "imag", "reduce_precision",
    "add", "subtract", "multiply", "divide", "remainder", "maximum", "minimum", "and", "or", "xor",
    "shift_left", "shift_right_arithmetic", "shift_right_logical", "compare", "complex", "select",
    "clamp", "stochastic_convert",
]
_CHLO_ARITH = [
    "square", "is_inf", "is_neg_inf", "is_pos_inf", "next_after", "conj", "constant_like",
    "broadcast_add", "broadcast_subtract", "broadcast_multiply", "broadcast_divide", "broadcast_remainder",
    "broadcast_maximum", "broadcast_minimum", "broadcast_and", "broadcast_or", "broadcast_xor",
    "broadcast_compare", "broadcast_select", "broadcast_shift_left", "broadcast_shift_right_arithmetic",
    "broadcast_shift_right_logical", "broadcast_complex", "broadcast_next_after",
]
_TRANSCENDENTAL = [
    "exponential", "exponential_minus_one", "log", "log_plus_one", "logistic", "tanh", "sine",
    "cosine", "tan", "sqrt", "rsqrt", "cbrt", "atan2", "power",
]
_CHLO_TRANSCENDENTAL = [
    "erf", "erfc", "erf_inv", "lgamma", "digamma", "polygamma", "zeta", "igamma", "igammac",
    "sinh", "cosh", "tan", "asin", "acos", "atan", "asinh", "acosh", "atanh",
    "bessel_i1e", "broadcast_atan2", "broadcast_polygamma", "broadcast_zeta", "broadcast_igamma",
    "broadcast_igammac", "broadcast_power",
]


@rule(*(f"stablehlo.{n}" for n in _ARITH), *(f"chlo.{n}" for n in _CHLO_ARITH))
def arithmetic(op, ins, outs) -> Work:
    # one flop per result element
    return Work(vector_flops=elements(outs), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins, outs))


@rule(*(f"stablehlo.{n}" for n in _TRANSCENDENTAL), *(f"chlo.{n}" for n in _CHLO_TRANSCENDENTAL))
def transcendental(op, ins, outs) -> Work:
    # one transcendental per result element
    return Work(transcendentals=elements(outs), bytes_read=nbytes(ins), bytes_written=nbytes(outs),
                dtype=compute_dtype(ins, outs))
