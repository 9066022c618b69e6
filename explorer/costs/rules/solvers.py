"""Dense linear-algebra solver calls: the LAPACK (CPU) and cuSOLVER / hipSOLVER (GPU) custom calls JAX
lowers ``jnp.linalg`` / ``jax.scipy.linalg`` to (Cholesky, LU, QR, triangular solve, symmetric
eigendecomposition, SVD), which otherwise appear as unknown ops.

Counts are the textbook flop counts of the algorithms (LAPACK Working Note 41; Golub & Van Loan,
*Matrix Computations*, 4th ed.) for real types, per matrix, times the number of matrices in the batch;
a complex type counts 4 real flops per complex one. The iterative ones (eigendecomposition, SVD)
are the usual dense-reduction estimates, not exact, and say so. They run as vector flops, as the
``stablehlo.cholesky`` / ``triangular_solve`` rules do (the libraries' blocked forms put much of the
work on matrix units: these are upper estimates of the time). Bytes: every operand read, every
result written.
"""
from __future__ import annotations

from typing import Mapping

from ..registry import rule
from ..work import Work
from ._common import nbytes

_REAL, _COMPLEX = ("s", "d"), ("c", "z")
_GPU = ("cu", "hip")


def _lapack(name: str, complex_name: str | None = None) -> list[str]:
    """``lapack_{s,d}{name}_ffi`` and ``lapack_{c,z}{complex_name or name}_ffi``."""
    return ([f"custom_call:lapack_{t}{name}_ffi" for t in _REAL]
            + [f"custom_call:lapack_{t}{complex_name or name}_ffi" for t in _COMPLEX])


def _gpu(*names: str) -> list[str]:
    return [f"custom_call:{p}{n}" for p in _GPU for n in names]


def _matrices(x) -> tuple[float, int, int]:
    """(number of matrices, rows, columns) of a batched [..., m, n] operand."""
    m, n = (x.shape[-2], x.shape[-1]) if len(x.shape) >= 2 else (1, x.shape[-1] if x.shape else 1)
    return x.elements / max(1, m * n), m, n


def _work(op, ins, outs, flops_per_matrix: float, batch: float) -> Work:
    x = ins[0]
    factor = 4.0 if x.dtype.startswith("complex") else 1.0
    return Work(vector_flops=factor * batch * max(0.0, flops_per_matrix), bytes_read=nbytes(ins),
                bytes_written=nbytes(outs), dtype=x.dtype)


def _config(op) -> Mapping:
    cfg = op.attrs.get("mhlo.backend_config")
    return cfg if isinstance(cfg, Mapping) else {}


@rule(*_lapack("potrf"), *_gpu("solver_potrf_ffi"))
def cholesky(op, ins, outs) -> Work:
    # Cholesky factorisation: n^3 / 3 flops per n x n matrix
    batch, _, n = _matrices(ins[0])
    return _work(op, ins, outs, n ** 3 / 3.0, batch)


@rule(*_lapack("getrf"), *_gpu("solver_getrf_ffi", "blas_getrf_batched_ffi"))
def lu(op, ins, outs) -> Work:
    # LU with partial pivoting of an m x n matrix: K k^2 - k^3 / 3 flops (k = min(m, n), K = max(m, n));
    # 2 n^3 / 3 for a square matrix
    batch, m, n = _matrices(ins[0])
    k, big = min(m, n), max(m, n)
    return _work(op, ins, outs, big * k * k - k ** 3 / 3.0, batch)


@rule(*_lapack("geqrf"), *_gpu("solver_geqrf_ffi", "blas_geqrf_batched_ffi"))
def qr(op, ins, outs) -> Work:
    # Householder QR of an m x n matrix: 2 (K k^2 - k^3 / 3) flops (k = min(m, n), K = max(m, n))
    batch, m, n = _matrices(ins[0])
    k, big = min(m, n), max(m, n)
    return _work(op, ins, outs, 2.0 * (big * k * k - k ** 3 / 3.0), batch)


@rule(*_lapack("orgqr", "ungqr"), *_gpu("solver_orgqr_ffi"))
def form_q(op, ins, outs) -> Work:
    # forming the m x n Q from k Householder reflectors: 4 m n k - 2 (m + n) k^2 + 4 k^3 / 3 flops
    batch, m, n = _matrices(ins[0])
    k = ins[1].shape[-1] if len(ins) > 1 and ins[1].shape else min(m, n)
    return _work(op, ins, outs, 4.0 * m * n * k - 2.0 * (m + n) * k * k + 4.0 * k ** 3 / 3.0, batch)


@rule(*_lapack("trsm"))
def triangular_solve(op, ins, outs) -> Work:
    # an m x m triangle against the right-hand sides: m^2 flops per right-hand side (either side),
    # i.e. m flops per element of b
    a, b = ins[0], ins[1]
    m = a.shape[-1] if a.shape else 1
    return _work(op, ins, outs, float(m) * b.elements, 1.0)


@rule(*_lapack("syevd", "heevd"), *_gpu("solver_syevd_ffi"))
def symmetric_eigen(op, ins, outs) -> Work:
    # estimate: tridiagonal reduction 4 n^3 / 3, plus accumulating the eigenvectors: about 9 n^3 in all
    # (Golub & Van Loan, symmetric QR); LAPACK's mode 'N' (no vectors) is about 4 n^3 / 3. The GPU call
    # always computes the vectors.
    batch, _, n = _matrices(ins[0])
    vectors = _config(op).get("mode", ord("V")) != ord("N")
    return _work(op, ins, outs, (9.0 if vectors else 4.0 / 3.0) * n ** 3, batch)


@rule(*_lapack("gesdd"), *_lapack("gesvd"),
      *_gpu("solver_gesvd_ffi", "solver_gesvdj_ffi", "solver_gesdd_ffi", "solver_gesvdp_ffi"))
def svd(op, ins, outs) -> Work:
    # estimate (Golub & Van Loan, Golub-Kahan-Reinsch SVD of an m x n matrix, m >= n after transposing):
    # singular values only 4 m n^2 - 4 n^3 / 3; thin U and V 6 m n^2 + 11 n^3; full U and V
    # 4 m^2 n + 8 m n^2 + 9 n^3. LAPACK's mode 'N' / 'S' / 'A', the GPU calls' compute_uv / full_matrices.
    batch, m, n = _matrices(ins[0])
    m, n = max(m, n), min(m, n)
    cfg = _config(op)
    if "mode" in cfg:
        mode = chr(int(cfg["mode"]))
    elif cfg.get("compute_uv", True) in (False, 0):
        mode = "N"
    else:
        mode = "A" if cfg.get("full_matrices", True) not in (False, 0) else "S"
    if mode == "N":
        flops = 4.0 * m * n * n - 4.0 * n ** 3 / 3.0
    elif mode in ("S", "O"):
        flops = 6.0 * m * n * n + 11.0 * n ** 3
    else:
        flops = 4.0 * m * m * n + 8.0 * m * n * n + 9.0 * n ** 3
    return _work(op, ins, outs, flops, batch)


@rule("custom_call:cu_lu_pivots_to_permutation", "custom_call:hip_lu_pivots_to_permutation")
def pivots_to_permutation(op, ins, outs) -> Work:
    # index bookkeeping: read the pivots, write the permutation
    return Work(bytes_read=nbytes(ins), bytes_written=nbytes(outs), dtype=ins[0].dtype if ins else "")
