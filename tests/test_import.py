"""Importing StableHLO from text, bytecode and files; unknown ops are reported, never zero."""
import jax
import jax.numpy as jnp
import pytest

import explorer
from explorer.graph.importer import ImportError_

S = jax.ShapeDtypeStruct

CUSTOM = """
module @m {
  func.func public @main(%arg0: tensor<8x8xf32>) -> tensor<8x8xf32> {
    %0 = stablehlo.custom_call @my_secret_kernel(%arg0) : (tensor<8x8xf32>) -> tensor<8x8xf32>
    %1 = stablehlo.custom_call @my_secret_kernel(%0) : (tensor<8x8xf32>) -> tensor<8x8xf32>
    %2 = stablehlo.add %1, %arg0 : tensor<8x8xf32>
    return %2 : tensor<8x8xf32>
  }
}
"""


def test_unknown_custom_call_is_reported_by_name_and_count():
    prog = explorer.from_stablehlo(CUSTOM)
    assert dict(prog.unknown_ops) == {"custom_call:my_secret_kernel": 2}
    assert prog.vector_flops == 64      # the add is still counted


def test_from_stablehlo_text_bytes_and_path(tmp_path):
    lowered = jax.jit(lambda a, b: a @ b).lower(S((8, 16), jnp.float32), S((16, 4), jnp.float32))
    text = lowered.as_text()
    p = tmp_path / "mm.mlir"
    p.write_text(text)
    for src in (text, str(p), p, text.encode()):
        prog = explorer.from_stablehlo(src)
        assert prog.matrix_flops == 2 * 8 * 16 * 4
    # bytecode, as written by MLIR's own writer
    import io
    buf = io.BytesIO()
    lowered.compiler_ir("stablehlo").operation.write_bytecode(buf)
    bc = tmp_path / "mm.mlirbc"
    bc.write_bytes(buf.getvalue())
    assert explorer.from_stablehlo(bc).matrix_flops == 2 * 8 * 16 * 4


def test_bad_module_gives_a_clear_error():
    with pytest.raises(ImportError_, match="could not parse"):
        explorer.from_stablehlo("module { this is not mlir }")


def test_shape_dtype_structs_allocate_nothing():
    # 8 GB of f32 weights: lowering from ShapeDtypeStructs must not allocate them
    prog = explorer.lower(lambda w, x: x @ w, S((32768, 65536), jnp.float32), S((4, 32768), jnp.float32))
    assert prog.matrix_flops == 2 * 4 * 32768 * 65536
