"""Cost rules against numbers derived by hand."""
import jax
import jax.numpy as jnp
import pytest
from jax import lax

import explorer

S = jax.ShapeDtypeStruct


def test_dot_general_batch_and_contracting_dims():
    def f(x, w):
        return lax.dot_general(x, w, (((2,), (1,)), ((0,), (0,))))
    prog = explorer.lower(f, S((4, 8, 16), jnp.bfloat16), S((4, 16, 32), jnp.bfloat16))
    assert prog.matrix_flops == 2 * 4 * 8 * 32 * 16          # 2 * batch * M * N * K
    assert prog.flops_by_dtype()["matrix"] == {"bf16": 2 * 4 * 8 * 32 * 16}


def test_dot_general_two_contracting_dims():
    def f(x, w):
        return jnp.einsum("bsnh,nhd->bsd", x, w)
    prog = explorer.lower(f, S((2, 16, 4, 8), jnp.float32), S((4, 8, 64), jnp.float32))
    assert prog.matrix_flops == 2 * (2 * 16) * 64 * (4 * 8)


def test_f32_matmul_precision_is_recorded():
    f = lambda a, b: jnp.dot(a, b)
    hi = lambda a, b: jnp.dot(a, b, precision=lax.Precision.HIGHEST)
    args = (S((8, 8), jnp.float32), S((8, 8), jnp.float32))
    assert set(explorer.lower(f, *args).flops_by_dtype()["matrix"]) == {"tf32"}
    assert set(explorer.lower(hi, *args).flops_by_dtype()["matrix"]) == {"f32"}


def test_convolution_valid_and_same_padding():
    def conv(x, k, padding):
        return lax.conv_general_dilated(x, k, (1, 1), padding)
    x, k = S((2, 3, 16, 16), jnp.float32), S((8, 3, 3, 3), jnp.float32)
    valid = explorer.lower(lambda x, k: conv(x, k, "VALID"), x, k)
    assert valid.matrix_flops == 2 * 2 * 14 * 14 * 8 * 3 * 3 * 3
    same = explorer.lower(lambda x, k: conv(x, k, "SAME"), x, k)
    # SAME pads by 1: per spatial dim, 16 outputs x 3 taps minus the 2 taps that land on padding
    assert same.matrix_flops == 2 * 2 * 8 * 3 * (16 * 3 - 2) ** 2


def test_strided_grouped_convolution():
    x, k = S((1, 8, 32, 32), jnp.float32), S((8, 2, 3, 3), jnp.float32)   # 4 groups of 2 input features
    f = lambda x, k: lax.conv_general_dilated(x, k, (2, 2), "VALID", feature_group_count=4)
    prog = explorer.lower(f, x, k)
    out = (32 - 3) // 2 + 1
    assert prog.matrix_flops == 2 * out * out * 8 * 2 * 9


def test_reduce_counts_one_flop_per_reduced_element():
    prog = explorer.lower(lambda a: a.sum(axis=1), S((64, 128), jnp.float32))
    assert prog.vector_flops == 64 * 127
    assert prog.bytes_accessed == 64 * 128 * 4 + 4 + 64 * 4    # input + init + output


def test_elementwise_and_transcendental():
    prog = explorer.lower(lambda a, b: jnp.exp(a) * b, S((32, 32), jnp.float32), S((32, 32), jnp.float32))
    assert prog.transcendentals == 32 * 32
    assert prog.vector_flops == 32 * 32


def test_scan_multiplies_body_by_trip_count():
    def f(x, w):
        def body(c, _):
            return jnp.tanh(c @ w), None
        return lax.scan(body, x, None, length=7)[0]
    prog = explorer.lower(f, S((8, 16), jnp.float32), S((16, 16), jnp.float32))
    assert prog.matrix_flops == 7 * 2 * 8 * 16 * 16
    assert prog.transcendentals == 7 * 8 * 16
    assert [lp.trip_count for lp in prog.graph.loops] == [7]


def test_nested_fori_loops():
    def f(x, w):
        def outer(i, c):
            return lax.fori_loop(0, 3, lambda j, d: d @ w, c)
        return lax.fori_loop(2, 7, outer, x)
    prog = explorer.lower(f, S((4, 4), jnp.float32), S((4, 4), jnp.float32))
    assert prog.matrix_flops == 5 * 3 * 2 * 4 * 4 * 4
    assert sorted(lp.trip_count for lp in prog.graph.loops) == [3, 5]


def test_unknown_trip_count_is_reported_and_can_be_supplied():
    def f(x, w, n):
        return lax.fori_loop(0, n, lambda i, c: c @ w, x)
    prog = explorer.lower(f, S((4, 4), jnp.float32), S((4, 4), jnp.float32), S((), jnp.int32))
    assert len(prog.unknown_loops) == 1
    assert "not a constant" in prog.unknown_loops[0].reason or "compare" in prog.unknown_loops[0].reason
    assert prog.matrix_flops == 2 * 4 * 4 * 4                 # counted once, and said so
    fixed = prog.with_trip_counts({prog.unknown_loops[0].op_id: 10})
    assert fixed.unknown_loops == ()
    assert fixed.matrix_flops == 10 * 2 * 4 * 4 * 4
    by_name = prog.with_trip_counts({prog.unknown_loops[0].name_stack: 10})
    assert by_name.matrix_flops == fixed.matrix_flops
    with pytest.raises(KeyError, match="no while loop"):
        prog.with_trip_counts({"nope": 3})


def test_cond_counts_the_most_expensive_branch():
    def f(p, x, w):
        return lax.cond(p, lambda: (x @ w) @ w, lambda: x + 1.0)
    prog = explorer.lower(f, S((), jnp.bool_), S((16, 16), jnp.float32), S((16, 16), jnp.float32))
    assert prog.matrix_flops == 2 * 2 * 16 * 16 * 16
    (case_id,) = prog.branch_choice
    assert prog.branch_choice[case_id] in (0, 1)
    heavy = prog.branch_choice[case_id]
    taken = [op for op, k in zip(prog.graph.ops, prog.weights) if k and any(fr.kind == "case" for fr in op.frames)]
    assert taken and all(fr.branch == heavy for op in taken for fr in op.frames if fr.kind == "case")


def test_name_stack_follows_calls():
    def f(x):
        return jax.nn.relu(x) * 2
    prog = explorer.lower(f, S((4,), jnp.float32))
    stacks = [op.name_stack for op in prog.graph.ops if op.name == "stablehlo.maximum"]
    assert stacks and all(s.startswith("jit(f)") for s in stacks)
    assert "func.call" not in {op.name for op in prog.graph.ops}


def test_flops_agree_with_xla_on_a_flax_train_step():
    import flax.linen as nn
    import optax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.gelu(nn.Dense(256)(x))
            x = nn.LayerNorm()(x)
            return nn.Dense(10)(nn.softmax(x))

    net = Net()
    x = S((32, 128), jnp.float32)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
    opt = optax.adamw(1e-3)
    state = jax.eval_shape(opt.init, params)

    def step(p, s, x):
        loss, g = jax.value_and_grad(lambda p: (net.apply(p, x) ** 2).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    prog = explorer.lower(step, params, state, x)
    xla = prog.lowered.compile().cost_analysis()
    assert prog.flops == pytest.approx(xla["flops"], rel=0.05)
    assert prog.transcendentals == pytest.approx(xla["transcendentals"], rel=0.05)
    assert dict(prog.unknown_ops) == {}


def _example_program(example: str, small: bool):
    from pathlib import Path

    from explorer.model_files import load_module

    path, _, entry = example.partition(":")
    mod = load_module(Path(__file__).resolve().parents[1] / "examples" / f"{path}.py")
    if small:
        return mod.PROGRAMS[entry](**mod.SMALL_CONFIG) if entry else mod.small_program()
    return mod.PROGRAMS[entry]() if entry else mod.program()


@pytest.mark.parametrize("example", ["mlp", "gpt2_train", "cnn", "llama_infer:prefill", "llama_infer:decode"])
def test_flops_agree_with_xla_on_the_small_examples(example):
    # XLA's HloCostAnalysis of the same (unoptimised) module; on tiny shapes XLA CPU's own rewrites
    # (bf16 normalisation converts, expanded ops) weigh more, so the compiled count is compared at real sizes below
    fn, args = _example_program(example, small=True)
    prog = explorer.lower(fn, *args)
    assert all(lp.trip_count is not None for lp in prog.graph.loops)
    assert prog.flops == pytest.approx(prog.lowered.cost_analysis()["flops"], rel=0.02)
    assert dict(prog.unknown_ops) == {}


@pytest.mark.parametrize("example", ["mlp", "gpt2_train", "cnn"])
def test_flops_agree_with_compiled_xla_on_the_examples_at_real_size(example):
    fn, args = _example_program(example, small=False)
    prog = explorer.lower(fn, *args)
    xla = prog.lowered.compile().cost_analysis()
    assert prog.flops == pytest.approx(xla["flops"], rel=0.05)


def test_tpu_gather_index_custom_calls_are_priced_not_unknown():
    """XLA:TPU's optimized modules wrap gather indices in two custom calls: a promise (free) and a packing pass
    (one read and one write of the indices)."""
    text = """
    func.func @main(%idx: tensor<1024xi32>) -> tensor<1024xi32> {
      %0 = stablehlo.custom_call @AssumeGatherIndicesInBound(%idx) : (tensor<1024xi32>) -> tensor<1024xi32>
      %1 = stablehlo.custom_call @GatherScatterIndicesBitpacked(%0) : (tensor<1024xi32>) -> tensor<1024xi32>
      return %1 : tensor<1024xi32>
    }"""
    prog = explorer.from_stablehlo(text)
    assert prog.unknown_ops == {}
    promise, packing = prog.works[0], prog.works[1]
    assert not promise.launches_kernel and promise.bytes_accessed == 0
    assert packing.launches_kernel and packing.bytes_accessed == 2 * 1024 * 4


def test_library_calls_of_compiled_modules_are_priced_as_the_ops_they_replace():
    """XLA's optimized modules call libraries for top_k and triangular solves; each is counted as the op."""
    text = """
    func.func @main(%x: tensor<32x32000xf32>, %a: tensor<256x256xf32>, %b: tensor<256x64xf32>)
        -> (tensor<32x8xf32>, tensor<32x8xi32>, tensor<256x64xf32>, tensor<256x256xf32>, tensor<2x128x128xf32>) {
      %v, %i = stablehlo.custom_call @"__gpu$TopK"(%x) : (tensor<32x32000xf32>) -> (tensor<32x8xf32>, tensor<32x8xi32>)
      %s = stablehlo.custom_call @"__cublas$triangularSolve"(%a, %b) : (tensor<256x256xf32>, tensor<256x64xf32>) -> tensor<256x64xf32>
      %c = stablehlo.custom_call @Cholesky(%a) : (tensor<256x256xf32>) -> tensor<256x256xf32>
      %d = stablehlo.custom_call @InvertDiagBlocksLowerTriangular(%a) : (tensor<256x256xf32>) -> tensor<2x128x128xf32>
      return %v, %i, %s, %c, %d : tensor<32x8xf32>, tensor<32x8xi32>, tensor<256x64xf32>, tensor<256x256xf32>, tensor<2x128x128xf32>
    }"""
    prog = explorer.from_stablehlo(text)
    assert prog.unknown_ops == {}
    top, trsm, chol, inv = (prog.works[i] for i in range(4))
    assert top.vector_flops == 32 * 32000 * 4            # every element into a heap of depth log2(8 + 1) -> 4
    assert trsm.vector_flops == 256 * 256 * 64           # m flops per element of b
    assert chol.vector_flops == 256 ** 3 / 3
    assert inv.vector_flops == 2 * 128 ** 3 / 3          # two 128 x 128 diagonal blocks
