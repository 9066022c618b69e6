"""The vocabulary of target data: the allowed kinds, topologies and dtypes, and the error bad data raises.

Kept apart from ``target.py`` (the dataclasses) and ``validate.py`` (the checks) so both read it
without importing each other.
"""
from __future__ import annotations

MEMORY_KINDS = ("on_chip", "cache", "main", "host")
TOPOLOGIES = ("switch", "ring", "full_mesh", "torus_2d", "torus_3d", "fat_tree", "none")
TARGET_KINDS = ("gpu", "tpu", "npu", "cpu", "hypothetical")
MATRIX_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
VECTOR_DTYPES = ("fp32", "bf16", "fp16", "fp64")


class TargetError(ValueError):
    """Bad target data: the message names the file, the field and the value."""
