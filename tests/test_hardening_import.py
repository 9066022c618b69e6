"""Reading programs in, at the edges (issue 15): bad paths and modules are named, unknown dialects
and multi-block functions are never dropped silently, jax.export artifacts import, float loops are
not guessed, trip counts are integers, top-k and friends are priced, and reprs stay short."""
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import explorer
import hw_targets
from explorer.costs import registered
from explorer.graph.importer import ImportError_

S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture
def capfd(capfd):
    """File-descriptor capture (MLIR prints from C++) with JAX's own start-up logging already done."""
    jax.devices()
    jax.jit(lambda a: a + 1).lower(S((2,), jnp.float32)).compile()
    capfd.readouterr()
    return capfd


ADD = """
module @m {
  func.func public @main(%arg0: tensor<8x8xf32>) -> tensor<8x8xf32> {
    %0 = stablehlo.add %arg0, %arg0 : tensor<8x8xf32>
    return %0 : tensor<8x8xf32>
  }
}
"""

# line 4, column 10 is the unknown op
BAD = """module @m {
  func.func public @main(%arg0: tensor<8x8xf32>) -> tensor<8x8xf32> {
    %0 = stablehlo.add %arg0, %arg0 : tensor<8x8xf32>
    %1 = stablehlo.bogus %0 : tensor<8x8xf32>
    return %1 : tensor<8x8xf32>
  }
}
"""


# -- 1. a path that does not exist --------------------------------------------------------------

@pytest.mark.parametrize("missing", ["missing.mlir", "some/dir/model.mlirbc", "model"])
def test_a_missing_path_is_named_not_parsed_as_text(missing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError_) as info:
        explorer.from_stablehlo(missing)
    msg = str(info.value)
    assert missing in msg and "no such file" in msg
    assert "Dialect" not in msg and "parse" not in msg      # not MLIR complaining about text "missing.mlir"


def test_missing_path_object_and_directory(tmp_path):
    with pytest.raises(ImportError_, match="no such file"):
        explorer.from_stablehlo(tmp_path / "nope.mlir")
    with pytest.raises(ImportError_, match="is a directory"):
        explorer.from_stablehlo(str(tmp_path))


def test_module_text_and_existing_paths_still_work(tmp_path):
    assert explorer.from_stablehlo(ADD).vector_flops == 64
    one_line = " ".join(line.strip() for line in ADD.splitlines())      # module text on one line
    assert explorer.from_stablehlo(one_line).vector_flops == 64
    p = tmp_path / "add.mlir"
    p.write_text(ADD)
    assert explorer.from_stablehlo(str(p)).vector_flops == 64
    prog = explorer.from_stablehlo(p)
    assert prog.vector_flops == 64 and prog.graph.name == "add"


# -- 2. parse errors name the source, line and column; MLIR prints nothing ------------------------

def test_parse_error_names_string_line_and_column(capfd):
    with pytest.raises(ImportError_) as info:
        explorer.from_stablehlo(BAD)
    msg = str(info.value)
    assert "<string>:4:10" in msg
    assert "custom op 'stablehlo.bogus' is unknown" in msg
    assert '"-"' not in msg
    assert "stablehlo.bogus %0" in msg                       # the offending line is shown
    assert capfd.readouterr().err == ""


def test_parse_error_names_the_file(tmp_path, capfd):
    p = tmp_path / "broken.mlir"
    p.write_text(BAD)
    for src in (p, str(p)):
        with pytest.raises(ImportError_) as info:
            explorer.from_stablehlo(src)
        assert f"{p}:4:10" in str(info.value)
        assert "stablehlo.bogus" in str(info.value)
    assert capfd.readouterr().err == ""


def test_bytes_parse_error_is_captured_not_printed(capfd):
    with pytest.raises(ImportError_) as info:
        explorer.from_stablehlo(BAD.encode())
    assert "<bytes>:4:10" in str(info.value)
    assert "custom op 'stablehlo.bogus' is unknown" in str(info.value)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_corrupt_bytecode_is_named(capfd):
    with pytest.raises(ImportError_, match="<bytes>"):
        explorer.from_stablehlo(b"ML\xefR\x00 not really bytecode")
    assert capfd.readouterr().err == ""


# -- 3. ops of unregistered dialects are unknown ops ---------------------------------------------

UNREGISTERED = """
module @m {
  func.func public @main(%arg0: tensor<8x8xf32>) -> tensor<8x8xf32> {
    %0 = "mydialect.frob"(%arg0) {level = 3 : i64} : (tensor<8x8xf32>) -> tensor<8x8xf32>
    %1 = "mydialect.frob"(%0) : (tensor<8x8xf32>) -> tensor<8x8xf32>
    %2 = "otherdialect.wrap"(%1) ({
      ^bb0(%x: tensor<8x8xf32>):
        %3 = stablehlo.multiply %x, %x : tensor<8x8xf32>
        "otherdialect.yield"(%3) : (tensor<8x8xf32>) -> ()
    }) : (tensor<8x8xf32>) -> tensor<8x8xf32>
    %4 = stablehlo.add %2, %arg0 : tensor<8x8xf32>
    return %4 : tensor<8x8xf32>
  }
}
"""


def test_unregistered_dialect_ops_are_listed_as_unknown(h100):
    prog = explorer.from_stablehlo(UNREGISTERED)
    assert dict(prog.unknown_ops) == {"mydialect.frob": 2, "otherdialect.wrap": 1, "otherdialect.yield": 1}
    assert prog.vector_flops == 2 * 64                        # the multiply inside the region and the add
    est = explorer.estimate(prog, h100)
    assert dict(est.unknown_ops) == dict(prog.unknown_ops)
    assert "mydialect.frob x2" in est.table()
    assert "mydialect.frob" in repr(prog)
    with pytest.raises(explorer.UnknownOpsError, match="mydialect.frob x2"):
        explorer.estimate(prog, h100, strict=True)


def test_a_registered_dialect_with_an_unknown_op_is_still_an_error():
    with pytest.raises(ImportError_, match="stablehlo.bogus"):
        explorer.from_stablehlo(BAD)


# -- 4. multi-block functions are refused by name -----------------------------------------------

MULTI_BLOCK = """
module @m {
  func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {
    %0 = call @helper(%arg0) : (tensor<4xf32>) -> tensor<4xf32>
    return %0 : tensor<4xf32>
  }
  func.func private @helper(%arg0: tensor<4xf32>) -> tensor<4xf32> {
    cf.br ^bb1(%arg0 : tensor<4xf32>)
  ^bb1(%x: tensor<4xf32>):
    %0 = stablehlo.multiply %x, %x : tensor<4xf32>
    return %0 : tensor<4xf32>
  }
}
"""


def test_multi_block_function_is_refused_naming_function_and_block():
    with pytest.raises(ImportError_) as info:
        explorer.from_stablehlo(MULTI_BLOCK)
    msg = str(info.value)
    assert "@helper" in msg and "^bb1" in msg and "2 blocks" in msg
    assert "stablehlo.multiply" in msg                       # what would have been dropped
    assert "one block" in msg                                # why it is unusual


def test_multi_block_entry_function_is_refused():
    text = MULTI_BLOCK.replace("@helper(", "@main2(").replace("func.func public @main(", "func.func private @unused(")
    text = text.replace("func.func private @main2(", "func.func public @main2(")
    with pytest.raises(ImportError_, match="@main2 has 2 blocks"):
        explorer.from_stablehlo(text)


# -- 5. jax.export artifacts --------------------------------------------------------------------

def _mlp_scan(x, w, b):
    def body(c, _):
        return jnp.tanh(c @ w + b), None
    return lax.scan(body, x, None, length=5)[0].sum()


MLP_ARGS = (S((8, 32), jnp.float32), S((32, 32), jnp.float32), S((32,), jnp.float32))


def test_jax_export_artifact_imports(tmp_path, capfd):
    exported = jax.export.export(jax.jit(_mlp_scan))(*MLP_ARGS)
    serialized = exported.mlir_module_serialized
    assert serialized.startswith(b"ML\xefR")                 # VHLO bytecode
    direct = explorer.lower(_mlp_scan, *MLP_ARGS)
    capfd.readouterr()
    bc = tmp_path / "mlp.mlirbc"
    bc.write_bytes(serialized)
    for src in (serialized, exported, bc):
        prog = explorer.from_stablehlo(src)
        assert prog.flops == direct.flops
        assert prog.transcendentals == direct.transcendentals
        assert prog.bytes_accessed == direct.bytes_accessed
        assert [lp.trip_count for lp in prog.graph.loops] == [5]
        assert dict(prog.unknown_ops) == {}
    assert explorer.from_stablehlo(bc).graph.name == "mlp"
    assert capfd.readouterr().err == ""


def test_jax_export_text_round_trip():
    exported = jax.export.export(jax.jit(lambda a, b: a @ b))(S((8, 16), jnp.float32), S((16, 4), jnp.float32))
    assert explorer.from_stablehlo(exported.mlir_module()).matrix_flops == 2 * 8 * 16 * 4


# -- 6. float loop counters are not guessed -----------------------------------------------------

def _float_loop(x):
    def cond(c):
        return c[0] < 3.0

    def body(c):
        return c[0] + jnp.float32(0.3), c[1] * 2.0, c[2] + 1
    return lax.while_loop(cond, body, (jnp.float32(0.0), x, jnp.int32(0)))


def test_float_counter_loop_is_unknown_not_guessed():
    # the loop really runs 11 times (0.3 summed in f32 ten times is 2.9999998 < 3.0): 10 would be wrong
    assert int(jax.jit(_float_loop)(jnp.ones(4, jnp.float32))[2]) == 11
    prog = explorer.lower(_float_loop, S((4,), jnp.float32))
    (loop,) = prog.graph.loops
    assert loop.trip_count is None
    assert "floating-point" in loop.reason and "f32" in loop.reason
    assert prog.unknown_loops == (loop,)
    assert prog.with_trip_counts({loop.op_id: 11}).unknown_loops == ()


def test_integer_counter_loops_keep_their_counts():
    def f(x):
        return lax.fori_loop(0, 10, lambda i, c: c * 2.0, x)
    (loop,) = explorer.lower(f, S((4,), jnp.float32)).graph.loops
    assert loop.trip_count == 10


# -- 7. trip counts are integers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def unknown_loop_program():
    def f(x, w, n):
        return lax.fori_loop(0, n, lambda i, c: c @ w, x)
    return explorer.lower(f, S((4, 4), jnp.float32), S((4, 4), jnp.float32), S((), jnp.int32))


@pytest.mark.parametrize("n", [np.int64(5), np.int32(5), np.uint8(5), 5])
def test_numpy_integer_trip_counts_are_accepted(unknown_loop_program, n):
    prog = unknown_loop_program
    (loop,) = prog.unknown_loops
    fixed = prog.with_trip_counts({loop.op_id: n})
    assert fixed.matrix_flops == 5 * 2 * 4 * 4 * 4
    assert type(fixed.trip_counts[loop.op_id]) is int


@pytest.mark.parametrize("n", [True, False, 2.0, np.float64(5.0), 2.5, "5", None, -1, np.bool_(True)])
def test_bad_trip_counts_are_refused_naming_loop_and_value(unknown_loop_program, n):
    prog = unknown_loop_program
    (loop,) = prog.unknown_loops
    with pytest.raises(ValueError) as info:
        prog.with_trip_counts({loop.op_id: n})
    msg = str(info.value)
    assert repr(n) in msg and loop.name_stack in msg and "integer" in msg
    with pytest.raises(ValueError, match="must be a non-negative integer"):
        prog.with_trip_counts({loop.name_stack: n})


# -- 8. top-k and the other ops of real models have rules ---------------------------------------

def test_top_k_is_priced_as_a_selection(h100):
    rows, n, k = 32, 128_256, 8
    prog = explorer.lower(lambda x: lax.top_k(x, k), S((rows, n), jnp.float32))
    assert dict(prog.unknown_ops) == {}
    assert prog.vector_flops == rows * n * math.ceil(math.log2(k + 1))
    assert prog.bytes_accessed == rows * n * 4 + rows * k * (4 + 4)
    est = explorer.estimate(prog, h100)
    # at least the time to read the logits once from HBM
    assert est.seconds > rows * n * 4 / h100.main_memory.bandwidth_bytes_per_s


def test_approx_top_k_is_priced():
    prog = explorer.lower(lambda x: lax.approx_max_k(x, 4), S((16, 1024), jnp.float32))
    assert dict(prog.unknown_ops) == {}
    assert prog.vector_flops == 16 * 1024 * math.ceil(math.log2(5))


OPS_OF_REAL_MODELS = {
    "stablehlo.sort": (lambda x, y: lax.sort((x, y), num_keys=1), S((16, 64), jnp.float32), S((16, 64), jnp.int32)),
    "chlo.erf_inv": (jax.scipy.special.erfinv, S((16, 64), jnp.float32)),
    "stablehlo.rng_bit_generator": (lambda k: jax.random.uniform(jax.random.wrap_key_data(k, impl="rbg"), (16, 64)),
                                    S((4,), jnp.uint32)),
    "stablehlo.reduce_precision": (lambda x: lax.reduce_precision(x, 5, 10), S((16, 64), jnp.float32)),
    "stablehlo.cbrt": (jnp.cbrt, S((16, 64), jnp.float32)),
    "stablehlo.round_nearest_even": (jnp.round, S((16, 64), jnp.float32)),
    "stablehlo.popcnt": (lax.population_count, S((16, 64), jnp.int32)),
    "stablehlo.count_leading_zeros": (lax.clz, S((16, 64), jnp.int32)),
    "stablehlo.bitcast_convert": (lambda x: lax.bitcast_convert_type(x, jnp.uint8), S((16, 64), jnp.float32)),
    "stablehlo.real": (jnp.real, S((16, 64), jnp.complex64)),
    "stablehlo.imag": (jnp.imag, S((16, 64), jnp.complex64)),
    "stablehlo.complex": (lax.complex, S((16, 64), jnp.float32), S((16, 64), jnp.float32)),
    "stablehlo.fft": (jnp.fft.rfft, S((16, 64), jnp.float32)),
    "chlo.top_k": (lambda x: lax.top_k(x, 4), S((16, 64), jnp.float32)),
    "custom_call:ApproxTopK": (lambda x: lax.approx_min_k(x, 4), S((16, 64), jnp.float32)),
}


@pytest.mark.parametrize("name", sorted(OPS_OF_REAL_MODELS))
def test_ops_of_real_models_have_rules(name):
    from explorer.costs import rule_key

    fn, *args = OPS_OF_REAL_MODELS[name]
    prog = explorer.lower(fn, *args)
    assert name in {rule_key(op) for op in prog.graph.ops}     # the program really has the op
    assert name in registered()
    assert dict(prog.unknown_ops) == {}


# -- 9. short reprs -----------------------------------------------------------------------------

def test_program_and_graph_reprs_are_short():
    def step(w, x):
        def loss(w):
            h = x
            for _ in range(12):
                h = jnp.tanh(h @ w)
            return (h ** 2).mean()
        return jax.grad(loss)(w)
    prog = explorer.lower(step, S((64, 64), jnp.float32), S((8, 64), jnp.float32))
    assert prog.num_ops > 100
    text = repr(prog)
    assert len(text) < 300
    assert "'step'" in text and f"{prog.num_ops:,} ops" in text and "flops" in text and "no unknown ops" in text
    assert len(repr(prog.graph)) < 200 and "'step'" in repr(prog.graph)
    many = explorer.from_stablehlo(UNREGISTERED)
    assert "unknown ops: mydialect.frob x2" in repr(many)


def test_parse_errors_are_one_clear_line_from_the_cli(tmp_path):
    # the command line turns the error into a message, not a traceback (and MLIR prints nothing else)
    p = tmp_path / "broken.mlir"
    p.write_text(BAD)
    out = subprocess.run([sys.executable, "-m", "explorer", "show", str(p), "--target", "h100_sxm"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode != 0
    assert f"{p}:4:10" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_complex_constants_import():
    # the MLIR bindings cannot hand over a dense complex constant (TypeError on access): it imports anyway
    prog = explorer.lower(lambda z: z * jnp.complex64(2 + 1j), S((4,), jnp.complex64))
    assert dict(prog.unknown_ops) == {}
    assert prog.vector_flops == 4


# -- 8b. the LAPACK / cuSOLVER calls jnp.linalg lowers to ---------------------------------------

def _solver_work(prog, target_prefix):
    from explorer.costs import rule_key

    (op,) = [op for op in prog.graph.ops if rule_key(op).startswith(f"custom_call:{target_prefix}")]
    return prog.works[op.id]


@pytest.mark.parametrize("fn, args, call, flops", [
    (jnp.linalg.cholesky, (S((3, 8, 8), jnp.float32),), "lapack_spotrf", 3 * 8 ** 3 / 3),
    (jax.scipy.linalg.lu_factor, (S((8, 8), jnp.float32),), "lapack_sgetrf", 2 * 8 ** 3 / 3),
    (lambda a: jnp.linalg.qr(a)[1], (S((10, 6), jnp.float32),), "lapack_sgeqrf", 2 * (10 * 36 - 6 ** 3 / 3)),
    (lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=True), (S((8, 8), jnp.float32), S((8, 5), jnp.float32)),
     "lapack_strsm", 8 * 8 * 5),
    (jnp.linalg.eigh, (S((2, 8, 8), jnp.float32),), "lapack_ssyevd", 2 * 9 * 8 ** 3),
    (lambda a: jnp.linalg.svd(a, compute_uv=False), (S((10, 6), jnp.float32),), "lapack_sgesdd",
     4 * 10 * 36 - 4 * 6 ** 3 / 3),
    (lambda a: jnp.linalg.svd(a, full_matrices=True), (S((6, 10), jnp.float32),), "lapack_sgesdd",
     4 * 100 * 6 + 8 * 10 * 36 + 9 * 6 ** 3),
    (jnp.linalg.cholesky, (S((4, 4), jnp.complex64),), "lapack_cpotrf", 4 * 4 ** 3 / 3),
])
def test_linear_algebra_calls_have_textbook_counts(fn, args, call, flops):
    prog = explorer.lower(fn, *args)
    assert dict(prog.unknown_ops) == {}
    assert _solver_work(prog, call).vector_flops == pytest.approx(flops)


def test_q_of_qr_is_counted():
    prog = explorer.lower(lambda a: jnp.linalg.qr(a)[0], S((10, 6), jnp.float32))
    assert dict(prog.unknown_ops) == {}
    m, n, k = 10, 6, 6
    assert _solver_work(prog, "lapack_sorgqr").vector_flops == pytest.approx(4 * m * n * k - 2 * (m + n) * k * k + 4 * k ** 3 / 3)


def test_gpu_solver_calls_are_registered():
    names = set(registered())
    for call in ("cusolver_potrf_ffi", "cusolver_getrf_ffi", "cusolver_geqrf_ffi", "cusolver_orgqr_ffi",
                 "cusolver_syevd_ffi", "cusolver_gesvdj_ffi", "cusolver_gesvd_ffi", "hipsolver_potrf_ffi"):
        assert f"custom_call:{call}" in names
