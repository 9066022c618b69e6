"""Front end: compile a JAX function with the real XLA for a GPU or TPU target, deviceless, and import the
optimized module with XLA's own fusion, schedule, buffer sizes and SPMD partitioning.

No accelerator is needed: the CUDA plugin (``pip install 'hw-whatif-explorer[xla-gpu]'``) compiles for a
GPU described by a ``GpuTargetConfigProto``, which ``gpu_target_config`` writes from a ``Target`` (so a
hypothetical chip is compiled for *as itself*: its SM count, bandwidth, L2 and shared memory); libtpu
(``[xla-tpu]``) compiles for a TPU topology (libtpu's own chip model: only the chip generation and the
topology are chosen). The compiled module is converted to MLIR (``hlo_to_stablehlo``) and imported: each
``mhlo.fusion`` is one kernel (its region's ops counted inside it), bitcasts and tuple plumbing are free,
async collectives are start/done pairs that overlap, and the ops keep XLA's schedule order. The program's
default pipeline is then ``fuse{strategy=compiled}`` (XLA's kernels), and placement, sweeps, sensitivity
and compare work on it as on any plan.

    prog = explorer.lower(train_step, *args, compiler="xla", target="h100_sxm")
    prog.origin["memory_analysis"]["temp_size_in_bytes"]
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import re
import time
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import numpy as np

import hw_targets

from ..costs.program import Program
from ..graph import environment, importer
from ..graph.ir import Graph, freeze
from . import hlo_proto

# The compile-only plugins check for drivers and TPU metadata servers unless told not to (set before the plugin
# initialises its backend).
_QUIET_ENV = {"JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1", "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost"}
# assumptions for a GPU config where a target says nothing (Hopper-class values; NVIDIA CUDA C guide, Table 21)
_THREADS_PER_BLOCK = 1024
_THREADS_PER_CORE = 2048
_REGISTERS_PER_CORE = 65536
_SMEM_PER_BLOCK_DEFAULT = 48 * 1024        # without opt-in, CUDA's per-block limit
_SMEM_RESERVED_PER_BLOCK = 1024            # the driver keeps 1 KiB per block (sm_80+)
_DNN_VERSION = (9, 3, 0)


class CompilerError(RuntimeError):
    """A deviceless compile that cannot run: the extra is missing, the target cannot be compiled for, or the
    compiler rejected the program (its message and the target are named)."""


# -- which compiler a target uses ---------------------------------------------------------------------------
def compiler_for(target: Any) -> str:
    """"xla:gpu" or "xla:tpu" for a target (from its ``compiler`` settings, else its kind)."""
    settings = _settings(target)
    platform = settings.get("platform") or {"gpu": "cuda", "tpu": "tpu"}.get(getattr(target, "kind", ""), "")
    if platform == "none":
        raise CompilerError(f"{target.name}: its [compiler] platform is 'none': no XLA back end compiles for it here")
    if platform in ("cuda", "gpu"):
        return "xla:gpu"
    if platform == "tpu":
        return "xla:tpu"
    raise CompilerError(f"{target.name}: no XLA back end for a target of kind {target.kind!r}; XLA:GPU compiles for "
                        "NVIDIA-like GPUs (kind 'gpu'), XLA:TPU for TPUs (kind 'tpu'); set [compiler] platform in its "
                        "TOML to choose")


def _settings(target: Any) -> Mapping[str, Any]:
    return getattr(target, "compiler", None) or {}


def compute_capability(target: Any) -> tuple[int, int]:
    """The CUDA compute capability XLA compiles for: the target's ``compiler.cuda_compute_capability`` ("9.0"),
    else Hopper (9.0) as an assumption for a GPU that does not say."""
    text = str(_settings(target).get("cuda_compute_capability", "9.0"))
    try:
        major, minor = (int(x) for x in text.split("."))
    except ValueError:
        raise CompilerError(f"{target.name}: compiler.cuda_compute_capability must look like '9.0', got {text!r}") \
            from None
    return major, minor


def gpu_target_config(target: Any) -> str:
    """A ``GpuTargetConfigProto`` (text) describing one GPU of ``target`` as XLA's cost models see it.

    From the target: SM count (``compute.matrix_units``), FP32 lanes per SM (the fp32 vector peak / 2 per FMA /
    clock / SMs), clock, HBM bandwidth and capacity, the L2 (the ``cache`` level) and shared memory per SM (the
    ``on_chip`` level / SMs); the compute capability from ``compiler.cuda_compute_capability``. Threads, registers
    and block limits are CUDA's (the same on every generation since sm_70)."""
    c = target.compute
    cores = int(c.matrix_units)
    clock = float(c.clock_hz)
    fpus = max(32, int(round(target.vector_rate("f32") / 2.0 / clock / cores / 32.0)) * 32)
    main = target.main_memory
    l2 = next((m for m in target.memory if m.kind == "cache"), None)
    smem = target.on_chip
    smem_per_core = int(smem.capacity_bytes / cores) if smem is not None else 228 * 1024
    optin = max(_SMEM_PER_BLOCK_DEFAULT, smem_per_core - _SMEM_RESERVED_PER_BLOCK)
    major, minor = compute_capability(target)
    l2_bytes = int(l2.capacity_bytes) if l2 is not None else 0
    lines = [
        "gpu_device_info {",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        f"  threads_per_block_limit: {_THREADS_PER_BLOCK}",
        "  threads_per_warp: 32",
        f"  shared_memory_per_block: {_SMEM_PER_BLOCK_DEFAULT}",
        f"  shared_memory_per_core: {smem_per_core}",
        f"  threads_per_core_limit: {_THREADS_PER_CORE}",
        f"  core_count: {cores}",
        f"  fpus_per_core: {fpus}",
        "  block_dim_limit_x: 2147483647",
        "  block_dim_limit_y: 65535",
        "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(main.bandwidth_bytes_per_s)}",
        f"  l2_cache_size: {l2_bytes}",
        f"  clock_rate_ghz: {clock / 1e9:.6g}",
        f"  device_memory_size: {int(main.capacity_bytes)}",
        f"  shared_memory_per_block_optin: {optin}",
        f"  registers_per_core_limit: {_REGISTERS_PER_CORE}",
        f"  registers_per_block_limit: {_REGISTERS_PER_CORE}",
        "}",
        'platform_name: "CUDA"',
        "dnn_version_info {{ major: {} minor: {} patch: {} }}".format(*_DNN_VERSION),
        f'device_description_str: "{target.name} (sm_{major}{minor}, {cores} SMs, {clock / 1e9:.3g} GHz, '
        f'{main.capacity_bytes / 1e9:.0f} GB)"',
    ]
    return "\n".join(lines) + "\n"


def tpu_topology_name(target: Any, devices: int) -> str:
    """The libtpu topology holding ``devices`` chips of a TPU target: ``compiler.tpu_version`` ("v5p") with the
    smallest slice of whole hosts that holds them (one host is 2x2x1 on v4 / v5p, 2x2 on v5e / v6e; fewer chips
    use the first devices of one host). Slices grow one dimension at a time, smallest first."""
    version = str(_settings(target).get("tpu_version") or _tpu_version_from_name(target.name))
    if devices < 1:
        raise CompilerError(f"{target.name}: need at least one device, got {devices}")
    shape = [2, 2, 1] if version in ("v4", "v5p") else [2, 2]
    while math.prod(shape) < devices:
        i = min(range(len(shape)), key=lambda d: (shape[d], -d))
        shape[i] *= 2
    return f"{version}:{'x'.join(str(x) for x in shape)}"


def _tpu_version_from_name(name: str) -> str:
    for v in ("v6e", "v5p", "v5e", "v4"):
        if v in name:
            return v
    raise CompilerError(f"{name}: set [compiler] tpu_version (v4, v5e, v5p, v6e) to compile for this TPU")


# -- compile-only devices -----------------------------------------------------------------------------------
def _plugin_or_error(kind: str) -> None:
    if kind == "xla:gpu":
        try:
            with environment.filtered_stderr():
                import jax_plugins.xla_cuda12  # noqa: F401  (the compile-only CUDA plugin)
        except ImportError:
            raise CompilerError("XLA:GPU needs the CUDA plugin: pip install 'hw-whatif-explorer[xla-gpu]' "
                                f"(jax-cuda12-plugin and jax-cuda12-pjrt {jax.__version__})") from None
        try:
            plugin = importlib.metadata.version("jax-cuda12-plugin")
        except importlib.metadata.PackageNotFoundError:
            plugin = jax.__version__
        if plugin != jax.__version__:
            raise CompilerError(f"the CUDA plugin is {plugin} but jax is {jax.__version__}: they must match "
                                f"(pip install 'jax-cuda12-plugin=={jax.__version__}' 'jax-cuda12-pjrt=={jax.__version__}')")
    else:
        try:
            with environment.filtered_stderr():
                import libtpu  # noqa: F401
        except ImportError:
            raise CompilerError(f"XLA:TPU needs libtpu: pip install 'hw-whatif-explorer[xla-tpu]' "
                                f"(jax[tpu]=={jax.__version__})") from None


_TOPOLOGIES: dict[tuple[str, str, int], Any] = {}


def devices_for(target: Any, count: int) -> list[Any]:
    """``count`` compile-only devices of ``target`` (cached per target description and count)."""
    from jax.experimental import topologies

    kind = compiler_for(target)
    _plugin_or_error(kind)
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if kind == "xla:gpu":
        config = gpu_target_config(target)
        key = (kind, config, count)
        if key not in _TOPOLOGIES:
            per_node = max(1, min(count, int(target.scale_up.domain_size)))
            nodes = -(-count // per_node)
            with environment.filtered_stderr():
                try:
                    _TOPOLOGIES[key] = topologies.get_topology_desc(
                        topology_name="", platform="cuda", target_config=config, topology=f"1x{nodes}x{per_node}")
                except Exception as exc:
                    raise CompilerError(f"{target.name}: XLA:GPU would not describe this GPU: {exc}") from None
    else:
        name = tpu_topology_name(target, count)
        key = (kind, name, count)
        if key not in _TOPOLOGIES:
            with environment.filtered_stderr():
                try:
                    _TOPOLOGIES[key] = topologies.get_topology_desc(topology_name=name, platform="tpu")
                except Exception as exc:
                    raise CompilerError(f"{target.name}: libtpu has no topology {name!r}: {exc}") from None
    devs = list(_TOPOLOGIES[key].devices)
    if len(devs) < count:
        raise CompilerError(f"{target.name}: the topology has {len(devs)} devices, {count} asked for")
    return devs[:count]


# -- compiling a JAX function ---------------------------------------------------------------------------------
def _mesh_of(args: Any, kwargs: Mapping[str, Any]) -> Any:
    """The one ``jax.sharding.Mesh`` the arguments' NamedShardings use (None: unsharded)."""
    meshes = []
    for leaf in jax.tree.leaves((args, dict(kwargs))):
        sh = getattr(leaf, "sharding", None)
        mesh = getattr(sh, "mesh", None)
        if mesh is not None and mesh not in meshes:
            meshes.append(mesh)
    if len(meshes) > 1:
        raise CompilerError(f"the arguments use {len(meshes)} different meshes; compile with one")
    return meshes[0] if meshes else None


def _on_devices(args: Any, mesh: Any, devices: list[Any]) -> tuple[Any, Any]:
    """The arguments as ``ShapeDtypeStruct``s sharded the same way over a mesh of the compile-only devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if mesh is None:
        new_mesh = Mesh(np.array(devices[:1]), ("_single",))
        shape_of = None
    else:
        new_mesh = Mesh(np.array(devices[:mesh.devices.size]).reshape(mesh.devices.shape), mesh.axis_names,
                        axis_types=getattr(mesh, "axis_types", None))
        shape_of = mesh

    def convert(leaf):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            return leaf
        sh = getattr(leaf, "sharding", None)
        spec = sh.spec if (shape_of is not None and isinstance(sh, NamedSharding)) else PartitionSpec()
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(new_mesh, spec))

    return jax.tree.map(convert, args), new_mesh


def compile_deviceless(fn: Callable, *args: Any, target: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``jax.jit(fn).lower(*args).compile()`` for ``target``'s chips, with no accelerator present.

    The arguments (arrays or ``ShapeDtypeStruct``s) keep the shardings they carry: a ``NamedSharding`` over a
    mesh of any devices is re-made over as many compile-only devices, axis for axis. Returns the compiled
    executable and a dict of what the compiler reports (seconds to compile, memory analysis, cost analysis,
    the devices, the GPU config or TPU topology)."""
    target = hw_targets.as_target(target)
    kind = compiler_for(target)
    mesh = _mesh_of(args, kwargs)
    count = 1 if mesh is None else int(mesh.devices.size)
    devices = devices_for(target, count)
    new_args, _ = _on_devices(args, mesh, devices)
    new_kwargs, _ = _on_devices(dict(kwargs), mesh, devices)
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    started = time.perf_counter()
    try:
        with environment.filtered_stderr():
            compiled = jitted.lower(*new_args, **new_kwargs).compile()
    except CompilerError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompilerError(f"{kind} rejected the program for {target.name}: {type(exc).__name__}: {first}") from exc
    info: dict[str, Any] = {"compiler": kind, "target": target.name, "devices": count,
                            "compile_seconds": time.perf_counter() - started}
    if kind == "xla:gpu":
        info["gpu_target_config"] = gpu_target_config(target)
    else:
        info["tpu_topology"] = tpu_topology_name(target, count)
    info["memory_analysis"] = _memory_analysis(compiled)
    info["cost_analysis"] = _cost_analysis(compiled)
    return compiled, info


def _memory_analysis(compiled: Any) -> dict[str, float]:
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    out = {k: float(getattr(m, k)) for k in dir(m) if k.endswith("_in_bytes") and not k.startswith("_")}
    if not out:
        return {}
    if "peak_memory_in_bytes" not in out:
        # XLA:GPU reports arguments, outputs, temporaries and aliasing apart: live at once, less what aliases
        out["peak_memory_in_bytes"] = (out.get("argument_size_in_bytes", 0.0) + out.get("output_size_in_bytes", 0.0)
                                       + out.get("temp_size_in_bytes", 0.0) - out.get("alias_size_in_bytes", 0.0))
    return out


def _cost_analysis(compiled: Any) -> dict[str, float]:
    try:
        c = compiled.cost_analysis()
    except Exception:
        return {}
    if isinstance(c, (list, tuple)):
        c = c[0] if c else None
    if not c:
        return {}
    return {k: float(v) for k, v in c.items() if isinstance(v, (int, float))}


def optimized_module(compiled: Any) -> bytes:
    """The compiled (optimized, scheduled) HLO module as MLIR bytecode: fusions as ``mhlo.fusion`` ops.

    A module the HLO -> MLIR converter takes as it is (XLA:GPU's) is converted directly. XLA:TPU's is not: its
    tiled layouts are refused ("Tiled layout is not supported yet"), and its fusions broadcast with a change of
    element type (``f32[..] broadcast(bf16[..])``: the convert is folded into the load), which StableHLO's
    verifier rejects. Such a module is printed, rewritten into the portable subset (``portable_hlo_text``: tiles
    dropped, memory spaces kept, the convert made explicit) and parsed back by XLA's own HLO parser first.
    Shapes, fusions, the schedule and memory spaces (``xla_shape`` attributes) are unchanged."""
    from jax._src.lib import _jax, xla_client

    module = compiled.runtime_executable().hlo_modules()[0]
    hlo = xla_client.hlo
    options = hlo.HloPrintOptions()
    options.print_large_constants = True
    text = module.to_string(options)
    portable = portable_hlo_text(text)
    if portable == text:
        try:
            return bytes(_jax.mlir.hlo_to_stablehlo(module.as_serialized_hlo_module_proto()))
        except Exception as exc:
            if "Async tuple" not in str(exc):
                raise CompilerError(f"the optimized module could not be converted to MLIR: {exc}") from exc
    try:
        rewritten = explicit_replica_groups(sync_tuple_collectives(portable))
        relaid = hlo.hlo_module_from_text(_without_entry_layout(rewritten))
        return bytes(_jax.mlir.hlo_to_stablehlo(relaid.as_serialized_hlo_module_proto()))
    except Exception as exc:
        raise CompilerError(f"the optimized module could not be converted to MLIR: {exc}") from exc


_ASYNC_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# ``%name = ((ins), (outs)) all-gather-start(%a, %b), attributes``: a combined asynchronous collective
_TUPLE_START = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \((\(.*?\)), (\(.*?\))\) (" + "|".join(_ASYNC_KINDS)
                          + r")-start\(([^()]*)\), (.*)$")
_DONE = re.compile(r"^(\s*)(ROOT )?%([\w.\-]+) = (.*?) (" + "|".join(_ASYNC_KINDS) + r")-done\(%([\w.\-]+)\)(?:, .*)?$")


# ``replica_groups=mesh['axis_0'=1,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_1'}``: groups over named mesh axes
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([0-9,]+)\](?:T\(([0-9,]+)\))?\))? "
                          r"\{([^}]*)\}")


def explicit_replica_groups(text: str) -> str:
    """HLO text with replica groups written over mesh axes (``replica_groups=mesh[...], device_ids=(...) {axes}``,
    as XLA prints a partitioned module) spelled out as device lists (``{{0,1},{2,3}}``): the HLO -> MLIR converter
    keeps the mesh form but drops its ``device_ids`` order, which decides which devices form a group (a data group
    of a transposed device order has stride 1, not the model axis's size)."""
    def groups(m: re.Match) -> str:
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        devices = np.arange(int(np.prod(sizes)) if sizes else 1)
        if m.group(2):
            devices = devices.reshape([int(x) for x in m.group(2).split(",")])
            if m.group(3):
                devices = devices.transpose([int(x) for x in m.group(3).split(",")])
        wanted = re.findall(r"'([^']+)'", m.group(4))
        if not wanted or any(w not in names for w in wanted):
            return m.group(0)
        rows = importer.groups_along(devices.reshape(sizes), names, wanted)
        return "replica_groups={" + ",".join("{" + ",".join(str(d) for d in r) + "}" for r in rows) + "}"
    return _MESH_GROUPS.sub(groups, text)


def sync_tuple_collectives(text: str) -> str:
    """HLO text with each combined (tuple) asynchronous collective written as one synchronous collective per
    member at its ``-done``, tupled back: the HLO -> MLIR converter refuses an async tuple all-gather or
    reduce-scatter ("Async tuple ... is not supported"), and StableHLO's collectives take one operand; XLA:GPU
    makes such tuples when it combines the collectives of a sequence-parallel layer. Each member keeps its operand,
    groups, result and place in the schedule (where the result is ready); only the overlap XLA scheduled between
    start and done is lost (it is priced as blocking there)."""
    starts: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        m = _TUPLE_START.match(line)
        if m:
            starts[m.group(1)] = (m.group(3), m.group(5), m.group(6))
    if not starts:
        return text
    out = []
    for line in text.splitlines():
        m = _TUPLE_START.match(line)
        if m and m.group(1) in starts:
            continue
        d = _DONE.match(line)
        if d and d.group(6) in starts:
            indent, root, name, shape, kind, start = d.groups()
            results, operands, attrs = starts[start]
            shapes = [re.sub(r"/\*.*?\*/", "", sh).strip() for sh in _top_level_split(results[1:-1])]
            names_ = [o.strip() for o in operands.split(",")]
            if len(shapes) != len(names_):
                out.append(line)
                continue
            members = []
            for i, (sh, op) in enumerate(zip(shapes, names_)):
                members.append(f"%{name}.member{i}")
                out.append(f"{indent}%{name}.member{i} = {sh} {kind}({op}), {attrs}")
            line = f"{indent}{root or ''}%{name} = {shape} tuple({', '.join(members)})"
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _top_level_split(text: str) -> list[str]:
    """``a[1,2]{1,0}, b[3]{0}`` -> its comma-separated items, commas inside brackets and braces kept."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += {"[": 1, "{": 1, "(": 1, "]": -1, "}": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur).strip())
    return parts


# one instruction of HLO text: ``[ROOT ]%name = shape opcode(operands)...``
_INSTRUCTION = re.compile(r"^(\s*)(ROOT )?%([\w.\-]+) = ([a-z0-9]+)(\[[0-9,]*\])(\{[^}]*\})? ([\w\-]+)\(%([\w.\-]+)\)(.*)$")
_SHAPE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ([a-z0-9]+)(\[[0-9,]*\])(\{[^}]*\})? ")
# a layout with anything after its minor-to-major dimensions: ``{1,0:T(8,128)(2,1)S(1)}``
_LAYOUT = re.compile(r"\{([0-9,]*):([^{}]*)\}")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
# ops that move data and, in HLO's semantics, keep the element type (XLA:TPU folds a convert into some of them)
_SAME_TYPE_MOVES = frozenset({"broadcast", "reshape", "transpose", "copy", "slice", "reverse"})


def portable_hlo_text(text: str) -> str:
    """HLO text that the HLO -> MLIR converter and StableHLO's verifier take: each layout keeps its dimension
    order and memory space (``S(1)``: XLA:TPU's VMEM) but not its tiling or element packing, and a data movement
    op that changes the element type (XLA:TPU's ``f32 broadcast(bf16)``) becomes a convert of its operand
    followed by the op. Text that needs neither is returned unchanged."""
    def layout(m: re.Match) -> str:
        space = _MEMORY_SPACE.search(m.group(2))
        if not m.group(1) and not space:
            return ""                      # a scalar's default layout is written as none (``f32[]``)
        return "{" + m.group(1) + (":" + space.group(0) if space else "") + "}"

    lines = text.splitlines()
    dtypes: dict[str, tuple[str, str, str]] = {}
    for line in lines:
        m = _SHAPE.match(line)
        if m:
            dtypes[m.group(1)] = (m.group(2), m.group(3), m.group(4) or "")
    out: list[str] = []
    changed = False
    for line in lines:
        m = _INSTRUCTION.match(line)
        if m and m.group(7) in _SAME_TYPE_MOVES and m.group(8) in dtypes and dtypes[m.group(8)][0] != m.group(4):
            indent, root, name, dtype, dims, lay, opcode, operand, rest = m.groups()
            _, operand_dims, operand_layout = dtypes[operand]
            converted = f"{operand}.{name}.as_{dtype}"
            out.append(f"{indent}%{converted} = {dtype}{operand_dims}{operand_layout} convert(%{operand})")
            line = f"{indent}{root or ''}%{name} = {dtype}{dims}{lay or ''} {opcode}(%{converted}){rest}"
            changed = True
        out.append(line)
    portable = _LAYOUT.sub(layout, "\n".join(out) + ("\n" if text.endswith("\n") else ""))
    return portable if changed or portable != text else text


def _without_entry_layout(text: str) -> str:
    """The module text without the layout attributes printed whatever the options (the header's
    ``entry_computation_layout={...}``, custom calls' ``operand_layout_constraints={...}``); the parser then
    gives those default layouts."""
    for key in ("entry_computation_layout={", "operand_layout_constraints={"):
        text = _without_attribute(text, key)
    return text


def _without_attribute(text: str, key: str) -> str:
    out, pos = [], 0
    while True:
        start = text.find(key, pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        depth, i = 0, start + len(key) - 1
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        end = i + 1
        # drop the separator on one side so the attribute list stays well formed
        if end < len(text) and text[end] == ",":
            end += 1
            while end < len(text) and text[end] == " ":
                end += 1
        elif out or start > pos:
            j = start
            while j > pos and text[j - 1] == " ":
                j -= 1
            if j > pos and text[j - 1] == ",":
                start = j - 1
        out.append(text[pos:start])
        pos = end


def lower_compiled(fn: Callable, *args: Any, target: Any, **kwargs: Any) -> Program:
    """Compile ``fn`` deviceless with XLA for ``target`` and import the optimized module as a ``Program``.

    ``program.origin`` holds the compiler, the target, the compile time, XLA's memory analysis (its
    ``peak_memory_in_bytes``) and cost analysis (``optimal_seconds`` on TPU)."""
    compiled, info = compile_deviceless(fn, *args, target=target, **kwargs)
    module_bytes = optimized_module(compiled)
    name = getattr(fn, "__name__", "") or "module"
    module = importer.parse_module(module_bytes)
    graph = importer.import_module(module, name=name)
    proto = hlo_proto.parse(compiled.runtime_executable().hlo_modules()[0].as_serialized_hlo_module_proto())
    graph = with_convolution_geometry(graph, hlo_proto.convolutions(proto))
    graph = with_donation(graph, hlo_proto.aliased_parameters(proto))
    return Program.from_graph(graph, origin=MappingProxyType(info))


def with_donation(graph: Graph, aliased: Mapping[int, tuple[int, ...]]) -> Graph:
    """``graph`` with the entry parameters XLA aliases to an output marked donated (``tf.aliasing_output``, as
    JAX writes it on the StableHLO), which the MLIR form of the optimized module drops: the liveness counts each
    such parameter and its output as one buffer, and an in-place update may write into it
    (``explorer.model.liveness``)."""
    if not aliased:
        return graph
    attrs = [dict(a) for a in graph.input_attrs] or [{} for _ in graph.inputs]
    for number, index in aliased.items():
        if 0 <= number < len(attrs):
            attrs[number]["tf.aliasing_output"] = f"{index[0] if index else 0} : i32"
    return dataclasses.replace(graph, input_attrs=tuple(MappingProxyType(a) for a in attrs))


def with_convolution_geometry(graph: Graph, convs: list[hlo_proto.Convolution]) -> Graph:
    """``graph`` with each convolution custom call given its window and dimension numbers (as
    ``stablehlo.convolution`` attributes), which the MLIR form of the module drops. A call is matched to its
    HLO instruction by target, JAX name stack and result shape; calls that match none keep no geometry (and
    are reported unknown)."""
    by_key: dict[tuple, hlo_proto.Convolution] = {}
    for c in convs:
        by_key.setdefault((c.target, c.op_name, c.result_shape), c)
    if not by_key:
        return graph
    ops = list(graph.ops)
    for i, op in enumerate(ops):
        if not op.name.endswith("custom_call") or not op.results:
            continue
        key = (op.attrs.get("call_target_name"), op.name_stack, tuple(graph.values[op.results[0]].shape))
        conv = by_key.get(key)
        if conv is None:
            continue
        attrs = dict(op.attrs)
        attrs.update(dimension_numbers=conv.dimension_numbers, window_strides=conv.window_strides,
                     padding=[list(p) for p in conv.padding], lhs_dilation=conv.lhs_dilation,
                     rhs_dilation=conv.rhs_dilation, feature_group_count=conv.feature_group_count,
                     batch_group_count=conv.batch_group_count)
        ops[i] = dataclasses.replace(op, attrs=freeze(attrs))
    return dataclasses.replace(graph, ops=tuple(ops))
