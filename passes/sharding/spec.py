"""Logical meshes and per-tensor shardings, and reading the ones JAX wrote into StableHLO.

A ``Mesh`` is an ordered list of named axes; device ``i`` of the mesh is numbered row-major
(the last axis varies fastest), as ``jax.make_mesh`` lays devices out, so an axis's *stride*
(how far apart in device numbering two neighbours along it are) tells the collective model
which physical network it rides: stride 1 and a small size stays inside a node or a torus ring,
a stride of a whole node crosses the scale-out network.

A ``Spec`` says, per tensor dimension, which mesh axes split it (major to minor, as in Shardy),
plus the axes over which the value is still an unreduced partial sum (after a contraction over
a sharded dimension; Shardy calls them ``unreduced``). Axes named nowhere are replicated.

Shardings are read with the MLIR Python bindings (the ``sdy`` attribute classes, and XLA's own
``HloSharding`` parser for the older ``mhlo.sharding`` strings), never by pattern-matching text.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from jax.extend.mlir import ir
from jaxlib.mlir.dialects import sdy

from explorer.graph.importer import make_context

_SUB = ":("   # sub-axis names look like 'data:(1)2' (Shardy's notation): the major 2 of axis 'data'


@dataclass(frozen=True)
class Mesh:
    """Named logical axes, major to minor. ``axes``: ((name, size), ...)."""

    axes: tuple[tuple[str, int], ...]
    device_ids: tuple[int, ...] = ()        # explicit device order (empty: 0..n-1)

    def __post_init__(self) -> None:
        names = [a for a, _ in self.axes]
        if len(set(names)) != len(names):
            raise ValueError(f"mesh axis names repeat: {names}")
        for name, size in self.axes:
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"mesh axis {name!r} has size {size!r}; sizes are positive ints")
            if _SUB in name:
                raise ValueError(f"mesh axis name {name!r} may not contain {_SUB!r}")

    @classmethod
    def of(cls, **sizes: int) -> "Mesh":
        """``Mesh.of(data=4, model=2)``."""
        return cls(tuple(sizes.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.axes)

    @property
    def devices(self) -> int:
        return math.prod(s for _, s in self.axes)

    def size(self, axis: str) -> int:
        base, pre, sub = _split_sub(axis)
        full = self._full(base)
        return full if sub is None else sub

    def stride(self, axis: str) -> int:
        """Distance in device numbering between neighbours along ``axis`` (row-major layout)."""
        base, pre, sub = _split_sub(axis)
        names = self.names
        i = names.index(self._check(base))
        inner = math.prod(s for _, s in self.axes[i + 1:])
        if sub is None:
            return inner
        return inner * (self._full(base) // (pre * sub))   # a major sub-axis strides over the minor part

    def group(self, axes: Sequence[str]) -> tuple[int, int]:
        """(size, stride) of the device group spanned by ``axes`` (stride of the most minor one)."""
        if not axes:
            return 1, 1
        return math.prod(self.size(a) for a in axes), min(self.stride(a) for a in axes)

    def _full(self, name: str) -> int:
        return dict(self.axes)[self._check(name)]

    def _check(self, name: str) -> str:
        if name not in self.names:
            raise KeyError(f"no mesh axis {name!r}; mesh axes: {', '.join(self.names) or 'none'}")
        return name

    def __str__(self) -> str:
        return "[" + ", ".join(f"{a}={s}" for a, s in self.axes) + "]"


def _split_sub(axis: str) -> tuple[str, int, int | None]:
    """'data:(1)2' -> ('data', 1, 2); 'data' -> ('data', 1, None)."""
    if _SUB not in axis:
        return axis, 1, None
    base, rest = axis.split(_SUB, 1)
    pre, sub = rest.split(")", 1)
    return base, int(pre), int(sub)


def sub_axis_name(axis: str, pre_size: int, size: int) -> str:
    return f"{axis}{_SUB}{pre_size}){size}"


@dataclass(frozen=True, eq=False)
class Spec:
    """Sharding of one tensor: per-dimension mesh axes, and pending partial-sum axes.

    Compared and hashed by value (``dims``, ``partial``), with the hash kept: the partitioner looks layouts up
    in its caches hundreds of thousands of times per search."""

    dims: tuple[tuple[str, ...], ...]
    partial: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        used = [a for d in self.dims for a in d]
        used.extend(self.partial)
        if len(used) > 1 and len(set(used)) != len(used):
            raise ValueError(f"a mesh axis appears twice in sharding {self}")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not Spec:
            return NotImplemented
        return self.dims == other.dims and self.partial == other.partial

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.dims, self.partial))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        # the kept hash is this process's (strings hash differently in another): a pickle leaves it behind
        state = dict(self.__dict__)
        state.pop("_hash", None)
        return state

    @classmethod
    def replicated(cls, rank: int) -> "Spec":
        return cls(((),) * rank)

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def axes(self) -> frozenset[str]:
        """Axes that split the tensor or are pending reduction."""
        return frozenset(a for d in self.dims for a in d) | frozenset(self.partial)

    @property
    def is_replicated(self) -> bool:
        return not self.axes

    def shards(self, mesh: Mesh, dim: int) -> int:
        return _shards(mesh.axes, self.dims[dim])

    def local_shape(self, shape: Sequence[int], mesh: Mesh) -> tuple[int, ...]:
        """Per-device shape (a dimension that does not divide is padded up, as the partitioner does)."""
        if len(shape) != self.rank:
            raise ValueError(f"sharding {self} has rank {self.rank}, tensor shape {tuple(shape)} has rank {len(shape)}")
        return _local_shape(mesh.axes, self.dims, tuple(shape))

    def without(self, axes: Sequence[str]) -> "Spec":
        drop = set(axes)
        return Spec(tuple(tuple(a for a in d if a not in drop) for d in self.dims),
                    tuple(a for a in self.partial if a not in drop))

    def __str__(self) -> str:
        body = ", ".join("{" + ", ".join(f'"{a}"' for a in d) + "}" for d in self.dims)
        tail = f", partial={{{', '.join(self.partial)}}}" if self.partial else ""
        return f"[{body}]{tail}"


@functools.lru_cache(maxsize=1 << 16)
def _shards(mesh_axes: tuple[tuple[str, int], ...], dim_axes: tuple[str, ...]) -> int:
    """Devices one dimension is split over (the partitioner asks this hundreds of thousands of times per search:
    cached on the mesh's axes, which alone decide it)."""
    mesh = Mesh(mesh_axes)
    return math.prod(mesh.size(a) for a in dim_axes)


@functools.lru_cache(maxsize=1 << 16)
def _local_shape(mesh_axes, dims, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-n // _shards(mesh_axes, dims[d])) for d, n in enumerate(shape))


# -- reading what JAX wrote ------------------------------------------------------------------------

def mlir_context():
    """An MLIR context with the dialects JAX's modules use (sdy, mhlo, stablehlo)."""
    return make_context()


def parse_mesh(text: str, context=None) -> Mesh:
    """``#sdy.mesh<["data"=4, "model"=2]>`` -> Mesh, through ``sdy.MeshAttr``."""
    ctx = context or mlir_context()
    with ctx:
        attr = sdy.MeshAttr(ir.Attribute.parse(text))
        axes = tuple((sdy.MeshAxisAttr(a).name, int(sdy.MeshAxisAttr(a).size)) for a in attr.axes)
        ids = tuple(int(i) for i in attr.device_ids)
    return Mesh(axes, ids)


def parse_sdy_sharding(text: str, meshes: Mapping[str, Mesh], context=None) -> tuple[str, Spec]:
    """``#sdy.sharding<@mesh, [{"data"}, {}]>`` -> (mesh name, Spec), through ``sdy.TensorShardingAttr``.

    Also accepts the bare ``<@mesh, [...]>`` body that ``sdy.sharding_constraint`` prints.
    Sub-axes (``"x":(1)2``) become axes named ``x:(1)2``; ``unreduced`` axes become ``partial``.
    """
    if text.startswith("<"):
        text = "#sdy.sharding" + text
    ctx = context or mlir_context()
    with ctx:
        try:
            attr = sdy.TensorShardingAttr(ir.Attribute.parse(text))
        except Exception as exc:
            raise ValueError(f"not a Shardy tensor sharding: {text!r} ({exc})") from None
        ref = attr.mesh_or_ref
        mesh_name = str(ref).lstrip("@")
        if mesh_name.startswith("#sdy.mesh") or mesh_name.startswith("<"):
            mesh_name = "(inline)"
        dims = []
        for d in attr.dimension_shardings:
            dim = sdy.DimensionShardingAttr(d)
            dims.append(tuple(_axis_ref_name(sdy, a) for a in dim.axes))
        partial = tuple(_axis_ref_name(sdy, a) for a in attr.unreduced_axes)
    if mesh_name != "(inline)" and mesh_name not in meshes:
        raise KeyError(f"sharding {text!r} names mesh @{mesh_name}, not declared in the module "
                       f"(meshes: {', '.join(meshes) or 'none'})")
    return mesh_name, Spec(tuple(dims), partial)


def _axis_ref_name(sdy, a) -> str:
    ref = sdy.AxisRefAttr(a)
    if ref.sub_axis_info is None:
        return ref.name
    info = sdy.SubAxisInfoAttr(ref.sub_axis_info)
    return sub_axis_name(ref.name, int(info.pre_size), int(info.size))


@dataclass(frozen=True)
class HloTiling:
    """An ``mhlo.sharding`` (GSPMD) sharding: tiles per dimension, replication, device order.

    GSPMD shardings carry no axis names; ``as_spec`` names the tiled dims ``t0``, ``t1``, ...
    on a synthetic mesh so they can be priced like Shardy ones.
    """

    tiles: tuple[int, ...]            # per tensor dimension
    replicas: int                     # copies of each tile (last_tile_dim_replicate)
    devices: tuple[int, ...]          # device ids in tile order
    maximal: bool = False             # the whole tensor on one device
    manual: bool = False

    def as_spec(self) -> tuple[Mesh, Spec]:
        axes, dims = [], []
        for d, t in enumerate(self.tiles):
            if t > 1:
                axes.append((f"t{d}", t))
                dims.append((f"t{d}",))
            else:
                dims.append(())
        if self.replicas > 1:
            axes.append(("replica", self.replicas))
        return Mesh(tuple(axes)), Spec(tuple(dims))


def parse_hlo_sharding(text: str, rank: int) -> HloTiling:
    """``{devices=[4,1,2]<=[8] last_tile_dim_replicate}`` -> HloTiling, through XLA's ``HloSharding`` parser."""
    from jax._src.lib import xla_client as xc

    try:
        s = xc.HloSharding.from_string(text)
    except Exception as exc:
        raise ValueError(f"not an HLO sharding: {text!r} ({exc})") from None
    if s.is_replicated():
        return HloTiling((1,) * rank, 1, ())
    if s.is_maximal():
        return HloTiling((1,) * rank, 1, tuple(s.tile_assignment_devices()), maximal=True)
    if s.is_manual():
        return HloTiling((1,) * rank, 1, (), manual=True)
    dims = list(s.tile_assignment_dimensions())
    replicas = 1
    if s.replicate_on_last_tile_dim():
        replicas = dims.pop()
    extra = len(dims) - rank      # subgroup dims (manual/replicated) beyond the tensor rank
    for _ in range(max(0, extra)):
        replicas *= dims.pop()
    if len(dims) != rank:
        raise ValueError(f"HLO sharding {text!r} tiles {len(dims)} dims, tensor has rank {rank}")
    return HloTiling(tuple(int(d) for d in dims), int(replicas), tuple(int(d) for d in s.tile_assignment_devices()))
