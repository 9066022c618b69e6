"""Buffers in the peak memory as XLA's buffer assignment allocates them: outputs are allocated before the call
runs, an elementwise kernel writes its result over an operand that dies there, an input the caller keeps cannot
be updated in place (XLA copies it), a donated one is its output's buffer. Checked by hand-derived byte counts,
and, where the xla-gpu extra is installed, against XLA:GPU's own buffer assignment."""
from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import pytest

import explorer
import hw_targets
from explorer.model import liveness

S = jax.ShapeDtypeStruct
H100 = hw_targets.load("h100_sxm")
CACHE, ROW = S((1024, 256), jnp.float32), S((1, 256), jnp.float32)
CACHE_BYTES, ROW_BYTES = 1024 * 256 * 4, 256 * 4
INDEX_BYTES = 2 * 4     # the two int32 start indices of the update


def _write_row(cache, row):
    return jax.lax.dynamic_update_slice(cache, row, (1, 0))


def _peak(fn, *args, donate=(), pipeline="fuse{strategy=xla}") -> int:
    return explorer.estimate(explorer.lower(jax.jit(fn, donate_argnums=donate), *args), H100,
                             pipeline=pipeline).peak_memory_bytes


def test_an_update_of_a_kept_input_gets_a_buffer_of_its_own():
    # the caller keeps the cache: the updated cache is a second buffer (input + output + the row + indices)
    assert _peak(_write_row, CACHE, ROW) == 2 * CACHE_BYTES + ROW_BYTES + INDEX_BYTES


def test_an_update_of_a_donated_input_is_in_place():
    assert _peak(_write_row, CACHE, ROW, donate=(0,)) == CACHE_BYTES + ROW_BYTES + INDEX_BYTES


def test_a_donated_input_is_freed_after_its_last_reader():
    n = 256
    m = n * n * 4

    def step(w, x):             # w is read only by the first matmul; the output (same shape) may take its buffer
        y = x @ w
        return jnp.tanh(y) @ y

    kept = _peak(step, S((n, n), jnp.float32), S((n, n), jnp.float32), pipeline="fuse{strategy=none}")
    donated = _peak(step, S((n, n), jnp.float32), S((n, n), jnp.float32), donate=(0,),
                    pipeline="fuse{strategy=none}")
    # at the last matmul: w, x, y, tanh(y) and the result when w is kept; w is gone when donated
    assert kept == 5 * m
    assert donated == 4 * m


def test_outputs_are_allocated_before_the_call_runs():
    n = 256
    m = n * n * 4

    def step(x):                # the output is made last, but its buffer exists from the start
        s = jnp.tanh(x @ x).sum()
        return x * s

    # at the sum: x, the matmul's result (the tanh writes over it: it dies there), the (not yet written) output,
    # and the sum's f32 initial value and result
    assert _peak(step, S((n, n), jnp.float32), pipeline="fuse{strategy=none}") == 3 * m + 2 * 4


# x, one buffer (the matmul's result, which the tanh and the add write over: the output's) and the f32 constant
# 1.0; unfused, the constant's broadcast is a whole tensor of its own
@pytest.mark.parametrize("pipeline,tensors", [("fuse{strategy=xla}", 2), ("fuse{strategy=none}", 3)])
def test_an_elementwise_kernel_writes_over_an_operand_that_dies_there(pipeline, tensors):
    n = 256
    m = n * n * 4

    def act(x):
        return jnp.tanh(x @ x) + 1.0

    assert _peak(act, S((n, n), jnp.float32), pipeline=pipeline) == tensors * m + 4

    def kept(x):                # the matmul's result is read again later: the tanh cannot take its buffer
        y = x @ x
        return jnp.tanh(y) @ y

    assert _peak(kept, S((n, n), jnp.float32), pipeline="fuse{strategy=none}") == 4 * m


def test_donation_is_read_from_the_modules_arguments():
    prog = explorer.lower(jax.jit(_write_row, donate_argnums=(0,)), CACHE, ROW)
    assert liveness.donated_inputs(prog.graph) == frozenset({prog.graph.inputs[0]})
    assert liveness.donated_inputs(explorer.lower(_write_row, CACHE, ROW).graph) == frozenset()


HAS_GPU_PLUGIN = importlib.util.find_spec("jax_plugins") is not None and \
    importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


@pytest.mark.skipif(not HAS_GPU_PLUGIN, reason="the xla-gpu extra (jax-cuda12-plugin) is not installed")
@pytest.mark.parametrize("donate", [(), (0,)])
def test_peak_matches_xla_buffer_assignment_with_and_without_donation(donate):
    fn = jax.jit(_write_row, donate_argnums=donate)
    compiled = explorer.lower(fn, CACHE, ROW, compiler="xla", target=H100)
    xla_peak = compiled.origin["memory_analysis"]["peak_memory_in_bytes"]
    assert xla_peak == (1 if donate else 2) * CACHE_BYTES + ROW_BYTES     # what XLA itself says, derived by hand
    # our liveness over XLA's plan (its aliasing read back from the module's proto) and over our own plan
    assert explorer.estimate(compiled, H100).peak_memory_bytes == xla_peak
    assert _peak(_write_row, CACHE, ROW, donate=donate) == xla_peak + INDEX_BYTES


def test_lower_takes_the_donation_itself():
    donated = explorer.estimate(explorer.lower(_write_row, CACHE, ROW, donate_argnums=0), H100).peak_memory_bytes
    assert donated == CACHE_BYTES + ROW_BYTES + INDEX_BYTES
    with pytest.raises(ValueError, match="already jitted"):
        explorer.lower(jax.jit(_write_row), CACHE, ROW, donate_argnums=0)
