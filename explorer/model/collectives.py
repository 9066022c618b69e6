"""Collectives on a physical topology: which algorithm a communication library would pick, and its time.

A collective runs over a *group* of devices, described as in ``Work``: ``group_size`` members,
``group_stride`` apart in the job's device numbering (row-major over the logical mesh), in a job of
``job_devices``. Devices are numbered innermost network first: the chips of one scale-up domain
(NVLink/xGMI node, ICI torus slice) are consecutive, and domains follow each other over the
scale-out network. So the group is *placed*: how many members share a domain (``n_in``) and how many
domains it spans (``n_out``); on a torus, which slice dimensions it rides, whether each is a full
(wrapped) axis, and how many physical hops separate logical neighbours.

Each algorithm is priced with an alpha-beta model, and the fastest one is taken (as NCCL's tuner
and XLA's collective lowering pick by their own cost models):

- ring (one level): ``steps * alpha + (n-1)/n * S / B`` (all-reduce twice that), B the per-chip
  bandwidth the topology gives the group (a switch: the chip's aggregate; a full mesh: only the
  links to the other members; a ring or torus: two links per wrapped axis, one per open axis,
  shared by groups interleaved on the same links);
- torus, several dimensions: per-dimension rings run concurrently, bandwidth adds over dimensions;
- in-network reduction (NVLink SHARP / NVLS, when ``in_network_reduction``): an all-reduce sends the
  buffer to the switch once and receives the result once:
  ``IN_NETWORK_LATENCY_S + S / (B * IN_NETWORK_EFFICIENCY)``;
- tree (double binary tree, scale-out only): ``2 log2(n)`` steps of latency, ``2 S / B``;
- hierarchical, for groups spanning domains: reduce-scatter inside each domain, all-reduce of the
  1/n_in shard across domains (every chip on its own NIC), all-gather inside; the stages are
  pipelined over chunks, so the slower stage sets the time;
- flat ring across domains: every chip's NIC carries 1/n_in of the ring traffic.

Pipelining granularity: a library moves a large buffer in chunks; the first chunk still has to make
every step of the algorithm, which costs ``steps * min(S / n, PIPELINE_CHUNK_BYTES) / B`` on top of
the bandwidth term (visible as the slow ramp of measured busbw between 1 MB and 1 GB).
The three calibrated constants are fitted on single points of the A100 and H100 8-GPU all-reduce
curves in the reference data (named beside each); ``benchmarks/validate_collectives.py`` reports
the error on every case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

# NVLS all-reduce reaches ~274 GB/s algorithm bandwidth on 8x H100 (479 GB/s busbw at 8 GB, Azure
# nccl-tests) against a 450 GB/s link: 0.61 of the link, i.e. 0.76 of the 0.8 ring efficiency.
IN_NETWORK_EFFICIENCY = 0.76
# ...and costs a fixed start-up (multicast set-up, switch reduction pipeline) fitted on the H100 8 MB point.
IN_NETWORK_LATENCY_S = 35e-6
# Chunk granularity of pipelined collectives, fitted on the 8 MB and 8 GB A100 ring all-reduce points.
PIPELINE_CHUNK_BYTES = 2.5e6

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "collective_permute", "collective_broadcast")


@dataclass(frozen=True)
class Span:
    """The part of a group that rides one network (or one torus dimension)."""

    network: str          # "scale_up", "scale_out", "scale_up[x]" for torus dimension x
    members: int
    bandwidth: float      # achievable bytes/s per chip, one direction, for this group's ring traffic
    latency: float        # per algorithm step
    in_network: bool = False
    wrap: bool = True


@dataclass(frozen=True)
class CollectiveTime:
    seconds: float
    algorithm: str
    spans: tuple[Span, ...]

    def bus_bandwidth(self, kind: str, nbytes: float, n: int) -> float:
        return bus_bandwidth(kind, nbytes, n, self.seconds)


def bus_bandwidth(kind: str, nbytes: float, n: int, seconds: float) -> float:
    """nccl-tests' busbw: all-reduce ``S * 2(n-1)/n / t``; gather / scatter / all-to-all ``S * (n-1)/n / t``."""
    if seconds <= 0 or n <= 1:
        return 0.0
    factor = 2.0 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n
    return nbytes * factor / seconds


def collective_seconds(target: Any, w) -> Any:
    """Time of the collective a ``Work`` describes on ``target`` (0 if it is not one).

    ``target`` may also be a vectorised sweep's view whose network figures are numpy arrays (one entry per
    variant): each distinct pair of networks among the variants is then priced on its own scalar figures (once per
    sweep), so every entry equals the scalar result.
    """
    if not w.collective or w.group_size <= 1:
        return 0.0
    return collective_seconds_of(target, w.collective, w.collective_bytes, w.group_size,
                                 getattr(w, "group_stride", 1) or 1, getattr(w, "job_devices", 0) or 0)


def collective_seconds_of(target: Any, kind: str, nbytes: float, group_size: int, stride: int = 1,
                          job_devices: int = 0) -> Any:
    """``collective_time(...).seconds``, also on a vectorised sweep's view (one entry per variant)."""
    args = (kind, nbytes, group_size, stride, job_devices)
    network_variants = getattr(target, "network_variants", None)
    nets = network_variants() if callable(network_variants) else None
    if nets is not None:          # a sweep's view: timed once per distinct pair of networks, looked up per variant
        views, index, memo = nets
        times = memo.get(args)
        if times is None:
            times = memo[args] = [collective_time(v, *args).seconds for v in views]
        return times[0] if len(times) == 1 else np.array(times)[index]
    variants = _variants(target)
    if variants is None:
        return collective_time(target, *args).seconds
    return np.array([collective_time(v, *args).seconds for v in variants])


_NET_FIELDS = ("topology", "domain_size", "torus_dims", "link_bandwidth_bytes_per_s", "links_per_chip",
               "chip_bandwidth_bytes_per_s", "latency_s", "efficiency", "in_network_reduction")


def _variants(target: Any) -> list[Any] | None:
    """Per-variant scalar views of a target whose network figures hold numpy arrays (None: already scalar)."""
    parts = {}
    count = 0
    for part in ("scale_up", "scale_out"):
        net = getattr(target, part)
        vals = {f: getattr(net, f, False if f == "in_network_reduction" else None) for f in _NET_FIELDS}
        for v in vals.values():
            for x in (v if isinstance(v, tuple) else (v,)):
                if isinstance(x, np.ndarray):
                    count = max(count, len(x))
        parts[part] = vals
    if count == 0:
        return None

    def pick(v, i):
        if isinstance(v, tuple):
            return tuple(pick(x, i) for x in v)
        if isinstance(v, np.ndarray):   # an object array holds one tuple per variant (torus_dims of resized tori)
            return v[i] if v.dtype == object else v[i].item()
        return v

    return [SimpleNamespace(name=getattr(target, "name", "target"),
                            **{p: SimpleNamespace(**{f: pick(v, i) for f, v in vals.items()}) for p, vals in parts.items()})
            for i in range(count)]


def collective_time(target: Any, kind: str, nbytes: float, group_size: int, stride: int = 1,
                    job_devices: int = 0) -> CollectiveTime:
    """The fastest algorithm's time for one collective.

    **Arguments**
    - ``kind``: all_reduce, reduce_scatter, all_gather, all_to_all, collective_permute, collective_broadcast.
    - ``nbytes``: per-device payload (all-reduce / reduce-scatter / all-to-all / permute: the local
      input; all-gather: the gathered output), as the cost rules count it.
    - ``group_size``, ``stride``: members and their distance in device numbering.
    - ``job_devices``: devices of the whole job (0: ``group_size * stride``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown collective {kind!r}; known: {', '.join(KINDS)}")
    if group_size < 1 or stride < 1:
        raise ValueError(f"group of {group_size} devices with stride {stride}: both must be >= 1")
    if group_size == 1 or nbytes <= 0:
        return CollectiveTime(0.0, "none", ())
    inner, outer = place(target, group_size, stride, job_devices or group_size * stride)
    options = _candidates(kind, float(nbytes), inner, outer)
    seconds, name = min(options, key=lambda o: (o[0], o[1]))
    return CollectiveTime(seconds, name, tuple(inner) + ((outer,) if outer else ()))


# -- placing a group on the physical topology ------------------------------------------------------

def slice_shape(net: Any, chips: int) -> tuple[int, ...]:
    """Dimensions (innermost first) of a torus slice of ``chips`` chips, as balanced as the torus allows."""
    dims = list(net.torus_dims) or [net.domain_size]
    shape = [1] * len(dims)
    left = chips
    f = 2
    factors = []
    while left > 1:
        while left % f == 0:
            factors.append(f)
            left //= f
        f += 1
        if f * f > left and left > 1:
            factors.append(left)
            break
    for f in sorted(factors, reverse=True):
        order = sorted(range(len(dims)), key=lambda i: (shape[i], i))
        for i in order:
            if shape[i] * f <= dims[i]:
                shape[i] *= f
                break
        else:
            raise ValueError(f"a slice of {chips} chips does not fit the {net.topology} {tuple(dims)}")
    return tuple(shape)


def _wraps(net: Any, size: int, full: int) -> bool:
    """Torus wrap-around exists only on full axes: a multiple of 4 on 3D tori (optical switches), the whole
    axis on 2D tori and rings (reference README, ICI notes)."""
    if size <= 2:
        return True          # two chips: the single link is the whole ring
    if net.topology == "torus_3d":
        return size % 4 == 0
    return size == full


def unread_network_knobs(target: Any) -> dict[str, str]:
    """Network knobs ``place`` never reads on ``target``'s topologies, each with why (a what-if that sweeps one of
    them moves nothing: the sweep warns, ``sensitivity`` notes it). A torus or ring is priced per link, a full mesh
    per link times its links, a switch, fat tree or the scale-out network at the chip's total bandwidth."""
    out: dict[str, str] = {}
    up = target.scale_up
    per_link = "its rings are priced per link (link_bandwidth_bytes_per_s, 2 links on a wrapped axis)"
    per_chip = "it is priced at chip_bandwidth_bytes_per_s (all of a chip's links together)"
    if up.topology == "none":
        for f in ("link_bandwidth_bytes_per_s", "links_per_chip", "chip_bandwidth_bytes_per_s"):
            out[f"scale_up.{f}"] = "the target has no scale-up network (topology 'none')"
    elif up.topology in ("torus_2d", "torus_3d", "ring"):
        out["scale_up.chip_bandwidth_bytes_per_s"] = f"the scale-up network is a {up.topology}: {per_link}"
        out["scale_up.links_per_chip"] = f"the scale-up network is a {up.topology}: {per_link}"
    elif up.topology == "full_mesh":
        out["scale_up.chip_bandwidth_bytes_per_s"] = ("the scale-up network is a full mesh: priced at "
                                                      "link_bandwidth_bytes_per_s x min(links_per_chip, peers)")
    else:
        out["scale_up.link_bandwidth_bytes_per_s"] = f"the scale-up network is a {up.topology}: {per_chip}"
        out["scale_up.links_per_chip"] = f"the scale-up network is a {up.topology}: {per_chip}"
    for f in ("link_bandwidth_bytes_per_s", "links_per_chip"):
        out[f"scale_out.{f}"] = ("the target has no scale-out network (topology 'none')"
                                 if target.scale_out.topology == "none" else f"across domains {per_chip}")
    return out


def place(target: Any, n: int, stride: int, job: int) -> tuple[list[Span], Span | None]:
    """(spans inside one scale-up domain, span across domains or None) for a group of ``n`` at ``stride``."""
    up, out = target.scale_up, target.scale_out
    domain = up.domain_size if up.topology != "none" else 1
    chips_in_domain = min(job, domain)
    inner: list[Span] = []
    members, step = n, stride
    if up.topology in ("torus_2d", "torus_3d", "ring") and chips_in_domain > 1:
        if up.topology == "ring":
            dims = (chips_in_domain,)
        elif chips_in_domain == domain and up.torus_dims:
            dims = tuple(up.torus_dims)
        else:
            dims = slice_shape(up, chips_in_domain)
        full = tuple(up.torus_dims) or (up.domain_size,)
        for i, size in enumerate(dims):
            if members <= 1:
                break
            if step >= size:
                step = max(1, step // size)
                continue
            u = min(members, size // step)
            if u <= 1:
                step = 1
                continue
            wrap = u * step == size and _wraps(up, size, full[i] if i < len(full) else size)
            links = 2 if wrap else 1
            bw = links * up.link_bandwidth_bytes_per_s * up.efficiency / step
            inner.append(Span(f"scale_up[{'xyz'[i] if i < 3 else i}]", u, bw, up.latency_s * step, False, wrap))
            members //= u
            step = 1
    elif chips_in_domain > 1 and step < chips_in_domain:
        u = min(members, chips_in_domain // step)
        if u > 1:
            if up.topology == "full_mesh":
                bw = up.link_bandwidth_bytes_per_s * min(up.links_per_chip, u - 1) * up.efficiency
            else:
                bw = up.chip_bandwidth_bytes_per_s * up.efficiency
            inner.append(Span("scale_up", u, bw, up.latency_s, bool(up.in_network_reduction)))
            members //= u
        step = 1
    else:
        step = max(1, step // max(1, chips_in_domain))
    outer = None
    if members > 1:
        if out.topology == "none":
            raise ValueError(f"group of {n} devices (stride {stride}) leaves the scale-up domain of {domain} "
                             f"chips, and {target.name} has no scale-out network")
        outer = Span("scale_out", members, out.chip_bandwidth_bytes_per_s * out.efficiency, out.latency_s,
                     bool(getattr(out, "in_network_reduction", False)))
    return inner, outer


# -- algorithms ----------------------------------------------------------------------------------------

def _fill(steps: float, per_step: float, bw: float) -> float:
    return steps * min(per_step, PIPELINE_CHUNK_BYTES) / bw


def _ring(kind: str, S: float, spans: Sequence[Span]) -> float:
    """Rings over one network (several torus dimensions run concurrently: their bandwidths add)."""
    n = math.prod(s.members for s in spans)
    bw = sum(s.bandwidth for s in spans)
    lat_steps = sum((s.members - 1) * s.latency for s in spans)
    if kind == "all_reduce":
        return 2 * lat_steps + 2 * (n - 1) / n * S / bw + _fill(2 * (n - 1), S / n, bw)
    if kind in ("reduce_scatter", "all_gather", "collective_broadcast"):
        return lat_steps + (n - 1) / n * S / bw + _fill(n - 1, S / n, bw)
    if kind == "all_to_all":
        if any(s.network.startswith("scale_up[") for s in spans):
            # on a torus a message travels n/4 hops (wrapped) or n/2 (open) on average: bisection-bound
            hops = max(s.members / (4 if s.wrap else 2) for s in spans)
            return lat_steps + (n - 1) / n * S * max(1.0, hops) / bw
        return 2 * max(s.latency for s in spans) + (n - 1) / n * S / bw
    # collective_permute: one send to a neighbour, over one link (a switch gives the chip's bandwidth)
    s0 = spans[0]
    return s0.latency + S / s0.bandwidth


def _in_network(S: float, span: Span) -> float:
    bw = span.bandwidth * IN_NETWORK_EFFICIENCY
    return IN_NETWORK_LATENCY_S + S / bw + _fill(2, S, bw)


def _tree(kind: str, S: float, span: Span) -> float:
    steps = 2 * math.ceil(math.log2(span.members))
    return steps * span.latency + 2 * S / span.bandwidth + _fill(steps, S, span.bandwidth)


def _one_level(kind: str, S: float, spans: Sequence[Span]) -> list[tuple[float, str]]:
    if kind == "collective_permute":
        return [(_ring(kind, S, spans), "point-to-point")]
    opts = [(_ring(kind, S, spans), "ring" if len(spans) == 1 else f"torus rings ({len(spans)} dims)")]
    if kind == "all_reduce" and len(spans) == 1:
        if spans[0].in_network:
            opts.append((_in_network(S, spans[0]), "in-network reduction"))
        if spans[0].network == "scale_out" and spans[0].members > 2:
            opts.append((_tree(kind, S, spans[0]), "tree"))
    return opts


def _candidates(kind: str, S: float, inner: list[Span], outer: Span | None) -> list[tuple[float, str]]:
    if outer is None:
        return _one_level(kind, S, inner)
    if not inner:
        return _one_level(kind, S, [outer])
    n_in = math.prod(s.members for s in inner)
    lat = 0.0
    if kind in ("all_reduce", "reduce_scatter", "all_gather"):
        # hierarchical: intra-domain stage(s) on the full buffer, inter-domain stage on 1/n_in of it (own NIC each)
        intra = min(t for t, _ in _one_level(kind, S, inner))
        inter = min(t for t, _ in _one_level(kind, S / n_in, [outer]))
        lat = 2 * outer.latency * (2 if kind == "all_reduce" else 1)
        hier = max(intra, inter) + lat
        # flat ring through every member: each chip's NIC carries 1/n_in of the traffic
        flat_bw = min(sum(s.bandwidth for s in inner), n_in * outer.bandwidth)
        flat_span = Span("scale_up+scale_out", n_in * outer.members, flat_bw, max(outer.latency, inner[0].latency))
        return [(hier, "hierarchical"), (_ring(kind, S, [flat_span]), "flat ring")]
    if kind == "all_to_all":
        n = n_in * outer.members
        intra = _ring(kind, S * n_in / n, inner)
        inter = (n - n_in) / n * S / outer.bandwidth + outer.latency * 2
        return [(intra + inter, "two-level all-to-all")]
    return [(_ring(kind, S, [outer]), "point-to-point")]
