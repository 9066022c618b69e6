"""Calibration arithmetic on synthetic timings, and ``hw_targets.host()``'s cache/identity logic with
a fake measurement injected (no real timing anywhere in this file)."""
import importlib
import math

import pytest

import hw_targets
from explorer.model import calibration as cal
from explorer.costs import Gemm

host_mod = importlib.import_module("hw_targets.host")   # ``hw_targets.host`` itself is the function


# -- line and rate fits ------------------------------------------------------------------------
def test_fit_line_recovers_an_exact_line():
    xs = [1.0, 2.0, 4.0, 8.0]
    line = cal.fit_line(xs, [3.0 + 0.5 * x for x in xs])
    assert line.slope == pytest.approx(0.5)
    assert line.intercept == pytest.approx(3.0)
    assert line(10.0) == pytest.approx(8.0)


def test_fit_line_ignores_one_slow_sample():
    # a sample taken while another process held the core is 3x slow; least squares would tilt, Theil-Sen does not
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ys = [2.0 * x + 1.0 for x in xs]
    ys[3] *= 3.0
    line = cal.fit_line(xs, ys)
    assert line.slope == pytest.approx(2.0)
    assert line.intercept == pytest.approx(1.0)


def test_fit_line_rejects_degenerate_input():
    with pytest.raises(ValueError):
        cal.fit_line([1.0], [2.0])
    with pytest.raises(ValueError):
        cal.fit_line([2.0, 2.0], [1.0, 3.0])


def test_fit_rate_separates_rate_from_fixed_cost():
    nbytes = [1e6, 4e6, 16e6, 64e6]
    seconds = [2e-6 + b / 50e9 for b in nbytes]
    rate, fixed = cal.fit_rate(nbytes, seconds)
    assert rate == pytest.approx(50e9)
    assert fixed == pytest.approx(2e-6)
    with pytest.raises(ValueError):
        cal.fit_rate([1.0, 2.0], [2.0, 1.0])   # time falling with work: no rate


def test_kernel_sequence_overhead_never_below_a_tiny_kernel():
    rows = [[n, s, 2 * s, 2 * s * (1e-7 + host_mod.row_norm_bytes(n) / 2 / 50e9)] for n in (4096, 65536) for s in (4, 16)]
    assert cal.fit_kernel_sequence(rows, floor_s=3e-7) == pytest.approx(3e-7)
    assert cal.fit_kernel_sequence([], floor_s=3e-7) == 3e-7


def test_fit_kernel_overhead():
    kernels = [1, 32, 128]
    per_kernel, per_call = cal.fit_kernel_overhead(kernels, [3e-6 + 0.3e-6 * k for k in kernels])
    assert per_kernel == pytest.approx(0.3e-6)
    assert per_call == pytest.approx(3e-6)


# -- GEMM tile and rate ------------------------------------------------------------------------
SHAPES = [Gemm(1, 2, 512, 512), Gemm(1, 48, 512, 512), Gemm(1, 100, 100, 100), Gemm(1, 128, 128, 128),
          Gemm(1, 512, 512, 512), Gemm(1, 1024, 24, 1024), Gemm(16, 128, 64, 128), Gemm(1, 4096, 64, 64)]


def _synthetic(tile, rate, units=2, bw=math.inf):
    return [cal.GemmSample(g, cal.gemm_seconds(g, rate, tile, units, 0.0, bw)) for g in SHAPES]


def test_fit_gemm_recovers_the_tile_and_rate_that_made_the_timings():
    samples = _synthetic((64, 32, 8), 400e9)
    fit = cal.fit_gemm(samples, units=2)
    assert fit.rms_log_error < 1e-6
    assert fit.flops_per_s == pytest.approx(400e9, rel=1e-6)
    for s in samples:   # the recovered tile predicts every sample (another tile may tie on these shapes)
        assert cal.gemm_seconds(s.gemm, fit.flops_per_s, fit.tile, 2) == pytest.approx(s.seconds, rel=1e-6)


def test_fit_gemm_uses_the_memory_roofline_and_counted_flops():
    # a skinny GEMM limited by bandwidth, and a convolution whose counted flops are below 2*M*N*K
    g_mem, g_conv = Gemm(1, 16, 4096, 4096), Gemm(1, 1024, 16, 144)
    bw, rate = 20e9, 300e9
    mem = cal.GemmSample(g_mem, 4096 * 4096 * 4 / bw, nbytes=4096 * 4096 * 4.0)
    conv = cal.GemmSample(g_conv, 3.9e6 / rate, flops=3.9e6)
    big = cal.GemmSample(Gemm(1, 512, 512, 512), Gemm(1, 512, 512, 512).flops / rate)
    fit = cal.fit_gemm([mem, conv, big], units=1, tiles=[(16, 16, 8)], bytes_per_s=bw)
    assert fit.flops_per_s == pytest.approx(rate, rel=1e-6)
    assert fit.rms_log_error < 1e-6


def test_fit_gemm_is_deterministic():
    samples = _synthetic((128, 64, 64), 250e9)
    assert cal.fit_gemm(samples, units=4) == cal.fit_gemm(samples, units=4)


# -- accuracy figures --------------------------------------------------------------------------
def test_ape_and_mdape():
    assert cal.ape(1.25, 1.0) == pytest.approx(0.25)
    assert cal.ape(0.5, 1.0) == pytest.approx(0.5)
    assert cal.mdape([(1.1, 1.0), (0.8, 1.0), (3.0, 1.0)]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        cal.mdape([])


# -- the host target from (synthetic) microbenchmarks -------------------------------------------
TRUE = {"call_s": 3e-6, "dispatch_base_s": 2e-6, "per_array_s": 0.5e-6, "kernel_s": 0.3e-6, "bw": 80e9,
        "seq_kernel_s": 1.5e-6, "seq_bw": 60e9,
        "fixed_s": 4e-6, "fp32": 200e9, "bf16": 20e9, "trans": 5e9, "tile": (16, 8, 8),
        "matrix": {"fp32": 450e9, "bf16": 400e9, "fp16": 300e9, "int8": 600e9, "fp8": 350e9}}


def fake_raw() -> dict:
    """What ``measure_host`` returns, generated from the known parameters in ``TRUE``."""
    t = TRUE
    gemm = {}
    shapes = {"fp32": host_mod.GEMM_SHAPES_FP32, "bf16": host_mod.GEMM_SHAPES_OTHER, "fp16": host_mod.GEMM_SHAPES_OTHER,
              "int8": host_mod.GEMM_SHAPES_OTHER, "fp8": host_mod.GEMM_SHAPES_OTHER}
    for d, rows in shapes.items():
        gemm[d] = [[b, m, n, k, t["call_s"] + cal.gemm_seconds(Gemm(b, m, n, k), t["matrix"][d], t["tile"], 2)]
                   for b, m, n, k in rows]
    conv = []
    for row in host_mod.CONV_SHAPES:
        s = cal.conv_sample((*row, 0.0), 0.0)
        conv.append([*row, t["call_s"] + cal.gemm_seconds(s.gemm, t["matrix"]["fp32"], t["tile"], 2, flops=s.flops)])
    return {
        "caches": [{"name": "l2", "level": 2, "capacity_bytes": 2 << 20}, {"name": "llc", "level": 3, "capacity_bytes": 32 << 20}],
        "memory_bytes": 16e9, "clock_hz": 3e9, "cores": 2, "loaded_samples": 0, "call_s": t["call_s"],
        "dispatch": [[n, t["dispatch_base_s"] + t["per_array_s"] * n] for n in (2, 32, 128)],
        "kernel_chain": [[k, t["call_s"] + t["kernel_s"] * k] for k in (1, 32, 128)],
        "kernel_sequence": [[n, steps, 2 * steps, t["call_s"] + 2 * steps * (
            t["seq_kernel_s"] + host_mod.row_norm_bytes(n) / 2 / t["seq_bw"])] for n in (4096, 65536) for steps in (4, 16)],
        "stream": [[kind, b, t["fixed_s"] + b / t["bw"]] for kind in ("scale", "add") for b in (2e6, 8e6, 32e6)],
        "levels": {"l2": [1 << 20, t["fixed_s"] + (1 << 20) / 160e9], "llc": [16 << 20, t["fixed_s"] + (16 << 20) / 120e9]},
        "vector": {"fp32": [[f, 5e-6 + f / t["fp32"]] for f in (1e6, 4e6, 8e6)],
                   "bf16": [[f, 5e-6 + f / t["bf16"]] for f in (1e6, 4e6, 8e6)]},
        # k transcendentals + 2 flops per term: time = fixed + n*k*(1/trans + 2/fp32)
        "transcendental": [[n, 6e-6 + n * (1 / t["trans"] + 2 / t["fp32"])] for n in (1e5, 4e5, 8e5)],
        "gemm": gemm, "conv": conv,
    }


def test_fit_measurements_recovers_the_parameters():
    fit = cal.fit_measurements(fake_raw())
    t = TRUE
    assert fit.tiny_kernel_overhead_s == pytest.approx(t["kernel_s"])
    assert fit.launch_overhead_s == pytest.approx(t["seq_kernel_s"])
    assert fit.stream_bytes_per_s == pytest.approx(t["bw"])
    assert fit.level_bytes_per_s["l2"] == pytest.approx(160e9)
    assert fit.vector_flops_per_s["fp32"] == pytest.approx(t["fp32"])
    assert fit.vector_flops_per_s["bf16"] == pytest.approx(t["bf16"])
    assert fit.transcendental_per_s == pytest.approx(t["trans"])
    assert fit.dispatch_per_array_s == pytest.approx(t["per_array_s"])
    assert host_mod.dispatch_seconds(fit, 10) == pytest.approx(t["dispatch_base_s"] + 10 * t["per_array_s"])
    for d, rate in t["matrix"].items():
        assert fit.matrix_flops_per_s[d] == pytest.approx(rate, rel=1e-4), d
    assert fit.matrix_flops_per_s["tf32"] == fit.matrix_flops_per_s["fp32"]
    assert fit.gemm_rms_log_error["fp32"] < 1e-4


def test_build_target_fits_the_schema():
    target = host_mod.build_target({"cpu_model": "Test CPU", "jax": "0.0"}, cal.fit_measurements(fake_raw()))
    assert isinstance(target, hw_targets.Target)
    assert target.kind == "cpu" and target.name == "host"
    assert target.compute.matrix_units == 2
    assert [m.kind for m in target.memory] == ["cache", "cache", "main"]
    assert target.main_memory.bandwidth_bytes_per_s == pytest.approx(TRUE["bw"])
    assert target.scale_up.topology == "none" and target.scale_out.topology == "none"
    assert target.matrix_rate("f32") == pytest.approx(TRUE["matrix"]["fp32"], rel=1e-4)
    # a what-if knob works on the measured target like on any preset
    faster = target.replace(**{"memory.dram.bandwidth_bytes_per_s": 2 * TRUE["bw"]})
    assert faster.main_memory.bandwidth_bytes_per_s == pytest.approx(2 * TRUE["bw"])


def test_the_host_runs_its_kernels_one_after_another_on_one_stream():
    """XLA:CPU runs a call's kernels on the calling thread: no host running ahead of a device. The fitted fixed
    cost per kernel is the gap between kernels, the call's launch is free (its dispatch is measured apart), f32
    matmuls run natively and there is no collective stream to overlap."""
    fit = cal.fit_measurements(fake_raw())
    target = host_mod.build_target({"cpu_model": "Test CPU", "jax": "0.0"}, fit)
    assert (target.launch_mode, target.launch_overhead_s, target.kernel_gap_s) == ("graph", 0.0, fit.launch_overhead_s)
    assert target.f32_matmul_mode == "fp32" and target.async_collectives is False
    # so a chain of n tiny dependent kernels costs n x (body + gap): the sum the fit inverted
    import jax
    import jax.numpy as jnp

    import explorer

    def chain(x):
        for _ in range(6):
            x = jnp.sin(x)
        return x
    est = explorer.estimate(explorer.lower(chain, jax.ShapeDtypeStruct((8,), jnp.float32)), target,
                            pipeline="fuse{strategy=none}")
    assert est.seconds == pytest.approx(sum(k.seconds for k in est.kernels), rel=1e-12)
    assert est.overhead_seconds == pytest.approx(6 * fit.launch_overhead_s, rel=1e-9)


class FakeMeasure:
    def __init__(self):
        self.calls = 0

    def __call__(self, say):
        self.calls += 1
        say("fake measurement")
        return fake_raw()


IDENT = {"cpu_model": "Test CPU", "cores": 2, "jax": "0.0", "jaxlib": "0.0", "xla_flags": "", "format": 1}


def test_host_measures_once_then_reads_the_cache(tmp_path):
    fake = FakeMeasure()
    a = hw_targets.host(cache_dir=tmp_path, measure=fake, ident=IDENT, progress=False)
    b = hw_targets.host(cache_dir=tmp_path, measure=fake, ident=IDENT, progress=False)
    assert fake.calls == 1
    assert a == b
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_host_remeasure_and_a_new_identity_measure_again(tmp_path):
    fake = FakeMeasure()
    hw_targets.host(cache_dir=tmp_path, measure=fake, ident=IDENT, progress=False)
    hw_targets.host(remeasure=True, cache_dir=tmp_path, measure=fake, ident=IDENT, progress=False)
    assert fake.calls == 2
    hw_targets.host(cache_dir=tmp_path, measure=fake, ident={**IDENT, "jaxlib": "0.1"}, progress=False)
    assert fake.calls == 3
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_host_ignores_a_corrupt_cache_file(tmp_path):
    fake = FakeMeasure()
    hw_targets.host(cache_dir=tmp_path, measure=fake, ident=IDENT, progress=False)
    (cached,) = tmp_path.glob("*.json")
    cached.write_text("{not json")
    hw_targets.host(cache_dir=tmp_path, measure=fake, ident=IDENT, progress=False)
    assert fake.calls == 2


def test_host_reports_progress_on_stderr(tmp_path, capsys):
    hw_targets.host(cache_dir=tmp_path, measure=FakeMeasure(), ident=IDENT)
    err = capsys.readouterr().err
    assert "fake measurement" in err and "cached in" in err


def test_identity_names_what_the_measurements_depend_on():
    ident = host_mod.identity()
    for key in ("cpu_model", "cores", "jax", "jaxlib", "xla_flags"):
        assert key in ident
    assert host_mod.identity_key(ident) == host_mod.identity_key(dict(ident))
    assert host_mod.identity_key(ident) != host_mod.identity_key({**ident, "cores": ident["cores"] + 1})
