"""``Work``: what one op (or a group of ops) does, counted, never timed.

Counting is kept apart from timing (a rule never reads a chip's speed), so a
program is counted once and priced on any number of targets.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Gemm:
    """Shape of one matrix-unit job: ``batch`` independent (m x k) @ (k x n) products."""

    batch: int
    m: int
    n: int
    k: int

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k  # one FMA = 2 flops


@dataclass(frozen=True)
class Work:
    """Counted work of one op, per execution (a loop multiplies it by its trip count)."""

    matrix_flops: float = 0.0      # on matrix units (dot_general, convolution)
    vector_flops: float = 0.0      # elementwise / reduction arithmetic
    transcendentals: float = 0.0   # exp, log, tanh, rsqrt, erf, ... (elements)
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    collective_bytes: float = 0.0  # payload per device of a collective
    dtype: str = ""                # element type the arithmetic runs in ("tf32" = f32 at default precision)
    gemm: Gemm | None = None       # matrix-unit job shape, for tile / wave efficiency
    collective: str = ""           # "all_reduce", "all_gather", ... when this is a collective
    group_size: int = 1            # devices taking part in the collective
    group_stride: int = 1          # device-number distance between group neighbours (which network the group rides)
    job_devices: int = 0           # devices in the whole job (lays the group out on a torus slice); 0: size x stride
    launches_kernel: bool = True   # False for views a compiler never materialises (reshape, constant, tuple)

    @property
    def flops(self) -> float:
        """Flops in XLA's convention: matrix + vector (transcendentals are counted apart)."""
        return self.matrix_flops + self.vector_flops

    @property
    def bytes_accessed(self) -> float:
        return self.bytes_read + self.bytes_written

    def scaled(self, factor: float) -> "Work":
        """The same work repeated ``factor`` times (shapes unchanged)."""
        return replace(
            self, matrix_flops=self.matrix_flops * factor, vector_flops=self.vector_flops * factor,
            transcendentals=self.transcendentals * factor, bytes_read=self.bytes_read * factor,
            bytes_written=self.bytes_written * factor, collective_bytes=self.collective_bytes * factor,
        )


ZERO = Work(launches_kernel=False)
