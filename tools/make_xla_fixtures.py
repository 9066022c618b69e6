"""Regenerate the optimized XLA:GPU modules the tests import (``tests/data/xla_gpu_*.mlirbc``).

Each fixture is a small JAX program compiled deviceless for the ``h100_sxm`` preset
(``explorer.frontend.xla``), stored as MLIR bytecode with a JSON sidecar of what XLA itself reports
for it, read from XLA's own HLO objects: the kernel-launching instructions of the entry computation
(fusions, async collective starts, library calls, copies), the collectives by kind, and the memory
analysis. The tests check the
importer against those numbers without needing the compiler.

    pip install -e '.[xla-gpu]' && python tools/make_xla_fixtures.py
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import explorer  # noqa: E402,F401  (first: JAX starts quietly)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from explorer.frontend import xla  # noqa: E402

DATA = ROOT / "tests" / "data"
S = jax.ShapeDtypeStruct
def block_step():
    """A pre-norm transformer-style block, one SGD step: layer norm, matmuls, GELU, softmax, reductions."""
    def loss(w1, w2, x):
        h = x - x.mean(-1, keepdims=True)
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-5)
        a = jax.nn.softmax(h @ h.T / 8.0, axis=-1) @ h
        return jnp.mean(jnp.square(jax.nn.gelu((x + a) @ w1) @ w2))

    def step(w1, w2, x):
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2, x)
        return w1 - 0.1 * g1, w2 - 0.1 * g2
    return step, (S((64, 256), jnp.float32), S((256, 64), jnp.float32), S((128, 64), jnp.float32))


def sharded_mlp_step():
    """Data x tensor parallel MLP step on 8 devices (data=4, model=2): XLA inserts all-reduces."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))

    def loss(w1, w2, x):
        return jnp.mean(jnp.square(jax.nn.relu(x @ w1) @ w2))

    def step(w1, w2, x):
        g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2, x)
        return w1 - 0.1 * g1, w2 - 0.1 * g2
    return step, (S((256, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "model"))),
                  S((512, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P("model", None))),
                  S((64, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P("data", None))))


FIXTURES = {"xla_gpu_block": block_step, "xla_gpu_sharded_mlp": sharded_mlp_step}


# ENTRY instructions that launch nothing: parameters, constants, tuple plumbing, views, the done half of an async op
NOT_KERNELS = ("kParameter", "kConstant", "kTuple", "kGetTupleElement", "kBitcast", "kAfterAll", "kPartitionId",
               "kReplicaId")
COLLECTIVES = {"kAllReduce": "all_reduce", "kAllReduceStart": "all_reduce", "kAllGather": "all_gather",
               "kAllGatherStart": "all_gather", "kReduceScatter": "reduce_scatter", "kAllToAll": "all_to_all",
               "kCollectivePermute": "collective_permute", "kCollectivePermuteStart": "collective_permute"}


def xla_report(compiled) -> dict:
    """What XLA's own HLO objects say about the compiled module's entry computation (the last in post order)."""
    entry = compiled.runtime_executable().hlo_modules()[0].computations()[-1]
    opcodes = [str(i.opcode).split(".")[-1] for i in entry.instructions()]
    kernels = [op for op in opcodes if op not in NOT_KERNELS and not op.endswith("Done")]
    collectives: dict[str, int] = {}
    for op in opcodes:
        if op in COLLECTIVES:
            collectives[COLLECTIVES[op]] = collectives.get(COLLECTIVES[op], 0) + 1
    return {"kernels": len(kernels), "fusions": opcodes.count("kFusion"), "collectives": collectives}


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, build in FIXTURES.items():
        fn, args = build()
        compiled, info = xla.compile_deviceless(fn, *args, target="h100_sxm")
        (DATA / f"{name}.mlirbc").write_bytes(xla.optimized_module(compiled))
        report = {"program": build.__doc__.strip().splitlines()[0], "target": "h100_sxm", "jax": jax.__version__,
                  **xla_report(compiled), "memory_analysis": info["memory_analysis"]}
        (DATA / f"{name}.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {report['kernels']} kernels, collectives {report['collectives']}")


if __name__ == "__main__":
    main()
