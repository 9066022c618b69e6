"""Collectives on topologies: alpha-beta formulas by hand, algorithm choice, placement of groups."""
from types import SimpleNamespace

import numpy as np
import pytest

import hw_targets
from explorer.model import collectives, timing
from explorer.model.collectives import bus_bandwidth, collective_time, place, slice_shape
from explorer.costs import Work


def _net(**kw):
    base = dict(topology="switch", domain_size=8, torus_dims=(), link_bandwidth_bytes_per_s=25e9, links_per_chip=12,
                chip_bandwidth_bytes_per_s=300e9, latency_s=3e-6, efficiency=0.8, in_network_reduction=False)
    base.update(kw)
    return SimpleNamespace(**base)


def _target(up=None, out=None):
    return SimpleNamespace(name="test", scale_up=up or _net(),
                           scale_out=out or _net(topology="fat_tree", domain_size=1024, link_bandwidth_bytes_per_s=25e9,
                                                 links_per_chip=1, chip_bandwidth_bytes_per_s=25e9, latency_s=5e-6))


@pytest.fixture
def no_chunks(monkeypatch):
    """The pure alpha-beta model (no pipelining granularity term)."""
    monkeypatch.setattr(collectives, "PIPELINE_CHUNK_BYTES", 0.0)


def test_ring_all_reduce_matches_the_alpha_beta_formula(no_chunks):
    n, S, alpha, B = 8, 1e9, 3e-6, 300e9 * 0.8
    t = collective_time(_target(), "all_reduce", S, n)
    assert t.algorithm == "ring"
    assert t.seconds == pytest.approx(2 * (n - 1) * alpha + 2 * (n - 1) / n * S / B, rel=1e-12)
    ag = collective_time(_target(), "all_gather", S, n)
    assert ag.seconds == pytest.approx((n - 1) * alpha + (n - 1) / n * S / B, rel=1e-12)


def test_pipelining_granularity_adds_one_chunk_per_step():
    n, S, alpha, B, c = 8, 1e9, 3e-6, 240e9, collectives.PIPELINE_CHUNK_BYTES
    t = collective_time(_target(), "all_reduce", S, n).seconds
    assert t == pytest.approx(2 * (n - 1) * alpha + 2 * (n - 1) / n * S / B + 2 * (n - 1) * c / B, rel=1e-12)
    small = 8e5     # S/n below one chunk: the fill term is the per-step share
    t = collective_time(_target(), "all_reduce", small, n).seconds
    assert t == pytest.approx(2 * (n - 1) * alpha + 2 * (n - 1) / n * small / B + 2 * (n - 1) * small / n / B, rel=1e-12)


def test_in_network_reduction_is_chosen_where_it_is_faster(no_chunks):
    tgt = _target(up=_net(chip_bandwidth_bytes_per_s=450e9, in_network_reduction=True))
    big = collective_time(tgt, "all_reduce", 8e9, 8)
    assert big.algorithm == "in-network reduction"
    assert big.seconds == pytest.approx(collectives.IN_NETWORK_LATENCY_S + 8e9 / (450e9 * 0.8 * collectives.IN_NETWORK_EFFICIENCY))
    # two GPUs, a small message: the ring's 2 steps of latency beat the switch reduction's start-up
    assert collective_time(tgt, "all_reduce", 1e5, 2).algorithm == "ring"
    assert collective_time(_target(), "all_reduce", 8e9, 8).algorithm == "ring"   # no NVLS on this switch


def test_groups_are_placed_by_stride(no_chunks):
    tgt = _target()
    inner, outer = place(tgt, 8, 1, 32)                 # the inner mesh axis: one NVLink node
    assert [s.members for s in inner] == [8] and outer is None
    inner, outer = place(tgt, 4, 8, 32)                 # the outer axis: one GPU per node, over the NICs
    assert inner == [] and outer.members == 4 and outer.bandwidth == 25e9 * 0.8
    inner, outer = place(tgt, 16, 1, 32)                # two nodes: 8 inside each, 2 across
    assert [s.members for s in inner] == [8] and outer.members == 2
    t = collective_time(tgt, "all_reduce", 4e9, 4, stride=8, job_devices=32)
    n = 4
    assert t.seconds == pytest.approx(min(2 * (n - 1) * 5e-6 + 2 * (n - 1) / n * 4e9 / 20e9,
                                          4 * 5e-6 + 2 * 4e9 / 20e9), rel=1e-12)


def test_hierarchical_all_reduce_pipelines_inner_and_outer_stages(no_chunks):
    tgt = _target()
    S = 8e9
    t = collective_time(tgt, "all_reduce", S, 16, 1, 16)
    assert t.algorithm == "hierarchical"
    intra = 2 * 7 * 3e-6 + 2 * 7 / 8 * S / 240e9          # reduce-scatter + all-gather in the node
    inter = 2 * 1 * 5e-6 + 2 * 1 / 2 * (S / 8) / 20e9      # all-reduce of each GPU's 1/8 shard over 2 nodes, own NIC
    assert t.seconds == pytest.approx(max(intra, inter) + 4 * 5e-6, rel=1e-12)


def test_torus_rings_use_two_links_per_wrapped_axis(no_chunks):
    v5p = hw_targets.load("tpu_v5p")
    assert slice_shape(v5p.scale_up, 64) == (4, 4, 4)
    inner, outer = place(v5p, 4, 1, 64)
    (x,) = inner
    assert x.wrap and x.bandwidth == 2 * 90e9 * 0.85 and outer is None
    S, n = 1e9, 4
    t = collective_time(v5p, "all_gather", S, n, 1, 64)
    assert t.seconds == pytest.approx((n - 1) * 1e-6 + (n - 1) / n * S / (2 * 90e9 * 0.85), rel=1e-12)
    inner, _ = place(v5p, 16, 1, 64)                    # two axes at once: bandwidths add
    assert [s.members for s in inner] == [4, 4]
    v5e = hw_targets.load("tpu_v5e")
    inner, _ = place(v5e, 8, 1, 64)                     # an 8x8 slice of a 16x16 torus: no wrap-around
    assert slice_shape(v5e.scale_up, 64) == (8, 8) and not inner[0].wrap
    assert inner[0].bandwidth == 45e9 * 0.85


def test_bus_bandwidth_convention():
    assert bus_bandwidth("all_reduce", 1e9, 8, 1e-2) == pytest.approx(1e9 * 2 * 7 / 8 / 1e-2)
    assert bus_bandwidth("all_gather", 1e9, 8, 1e-2) == pytest.approx(1e9 * 7 / 8 / 1e-2)


def test_timing_delegates_and_vectorised_variants_match_scalar():
    h100 = hw_targets.load("h100_sxm")
    w = Work(collective="all_reduce", collective_bytes=6e8, group_size=16, group_stride=1, job_devices=16)
    scalar = timing.collective_seconds(h100, w)
    assert scalar == collective_time(h100, "all_reduce", 6e8, 16, 1, 16).seconds
    arr = SimpleNamespace(name="v", scale_up=h100.scale_up,
                          scale_out=SimpleNamespace(**{**h100.scale_out.__dict__,
                                                       "chip_bandwidth_bytes_per_s": np.array([50e9, 25e9])}))
    both = collectives.collective_seconds(arr, w)
    slow = h100.replace(**{"scale_out.chip_bandwidth_bytes_per_s": 25e9})
    assert list(both) == [scalar, timing.collective_seconds(slow, w)]


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown collective 'all_sum'"):
        collective_time(_target(), "all_sum", 1.0, 2)
    with pytest.raises(ValueError, match="stride 0"):
        collective_time(_target(), "all_reduce", 1.0, 2, 0)
    with pytest.raises(ValueError, match="does not fit"):
        slice_shape(hw_targets.load("tpu_v5e").scale_up, 1024)
