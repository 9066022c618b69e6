"""Issue 15, targets: every bad target input is a TargetError naming the file (or target), the field, the value
and, for numbers, the physically possible range; variants carry names that say what changed."""
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import explorer
import hw_targets
from hw_targets import TargetError
from hw_targets.schema import RANGES, range_of

PRESETS = Path(hw_targets.__file__).parent / "presets"
S = jax.ShapeDtypeStruct


def variant_file(tmp_path, old: str, new: str, preset: str = "h100_sxm", name: str = "bad.toml") -> Path:
    text = (PRESETS / f"{preset}.toml").read_text()
    assert old in text, old
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture(scope="module")
def h100():
    return hw_targets.load("h100_sxm")


@pytest.fixture(scope="module")
def prog():
    return explorer.lower(lambda a, b: jnp.tanh(a @ b), S((256, 512), jnp.bfloat16), S((512, 256), jnp.bfloat16))


# -- 1. NaN / inf in integer fields ------------------------------------------------------------------
@pytest.mark.parametrize("old, new, field", [
    ("matrix_units = 132", "matrix_units = nan", "compute.matrix_units"),
    ("matrix_units = 132", "matrix_units = inf", "compute.matrix_units"),
    ("domain_size = 8 ", "domain_size = nan ", "scale_up.domain_size"),
    ("links_per_chip = 18", "links_per_chip = -inf", "scale_up.links_per_chip"),
    ("matrix_tile = [128, 128, 64]", "matrix_tile = [128, nan, 64]", "compute.matrix_tile.n"),
])
def test_nan_or_inf_in_an_integer_field_names_file_and_field(tmp_path, old, new, field):
    with pytest.raises(TargetError, match=rf"bad.toml: field '{field}' must be a finite number, got -?(nan|inf)"):
        hw_targets.load(variant_file(tmp_path, old, new))


@pytest.mark.parametrize("knob", ["compute.matrix_units", "scale_up.domain_size", "scale_out.links_per_chip",
                                  "compute.matrix_tile.k"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_replace_and_sweep(h100, prog, knob, value):
    with pytest.raises(TargetError, match=rf"h100_sxm: knob '{knob}' must be a finite number"):
        h100.replace(**{knob: value})
    with pytest.raises(TargetError, match=rf"knob '{knob}' must be a finite number"):
        explorer.sweep(prog, h100, {knob: [value]})


def test_nan_in_a_target_file_through_the_cli(tmp_path):
    path = variant_file(tmp_path, "matrix_units = 132", "matrix_units = nan")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "explorer", "compare", "examples/mlp.py", "--target", str(path)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 1
    assert "bad.toml: field 'compute.matrix_units' must be a finite number, got nan" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- 2. not UTF-8 --------------------------------------------------------------------------------------
def test_a_file_that_is_not_utf8_names_the_file(tmp_path):
    text = (PRESETS / "h100_sxm.toml").read_text().replace("NVIDIA H100 SXM5 80GB, 8", "NVIDIA H100 SXM5 80GB \u00e9, 8")
    path = tmp_path / "latin1.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(TargetError, match=r"latin1.toml: not a UTF-8 text file \(byte b'\\xe9' at offset \d+, line \d+\)"):
        hw_targets.load(path)


# -- 3. physical ranges ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, old, new, expected", [
    ("tpu_v5p", "torus_dims = [16, 20, 28]", "torus_dims = [-16, -20, 28]",
     r"field 'scale_up.torus_dims' must be > 0, got -16"),
    ("h100_sxm", "in_network_reduction = true", "in_network_reduction = true\ntorus_dims = [2, 4]",
     r"field 'scale_up.torus_dims' only applies to a torus topology, not 'switch', got \(2, 4\)"),
    ("h100_sxm", 'name = "smem"', 'name = ""', r"field 'memory\[0\].name' must be a non-empty name"),
    ("h100_sxm", "capacity_bytes = 80e9", "capacity_bytes = 1e30",
     r"field 'memory\[2\].capacity_bytes' must be in \[1000, 1e\+16\] B, got 1e\+30"),
    ("h100_sxm", "bandwidth_bytes_per_s = 3.35e12", "bandwidth_bytes_per_s = 3.35",
     r"field 'memory\[2\].bandwidth_bytes_per_s' must be in \[1e\+06, 1e\+18\] B/s, got 3.35"),
    ("h100_sxm", "latency_s = 6e-7", "latency_s = 1e6",
     r"field 'memory\[2\].latency_s' must be in \[0, 0.001\] s, got 1000000.0"),
    ("h100_sxm", "clock_hz = 1.83e9", "clock_hz = 1.83",
     r"field 'compute.clock_hz' must be in \[1e\+06, 1e\+11\] Hz, got 1.83 .*informational"),
    ("h100_sxm", "matrix_units = 132", "matrix_units = 9007199254740993",
     r"field 'compute.matrix_units' must be in \[1, 1e\+07\] units, got 9007199254740993"),
    ("h100_sxm", "latency_s = 3e-6", "latency_s = -1e-6", r"field 'scale_up.latency_s' must be >= 0, got -1e-06"),
    ("h100_sxm", "tdp_w = 700", "tdp_w = 7e9", r"field 'tdp_w' must be in \(0, 1e\+06\] W, got 7000000000.0"),
    ("h100_sxm", "bf16 = 989.4e12", "bf16 = 989.4e22", r"field 'compute.matrix_flops_per_s.bf16' must be in \[1e\+06, 1e\+19\]"),
])
def test_values_outside_their_physical_range_name_file_field_value_and_range(tmp_path, preset, old, new, expected):
    with pytest.raises(TargetError, match=r"bad.toml: " + expected):
        hw_targets.load(variant_file(tmp_path, old, new, preset))


def test_the_same_ranges_hold_for_replace(h100, prog):
    # replace names the target and the knob as the user wrote it, not the preset file's field (the file is fine)
    with pytest.raises(TargetError) as info:
        h100.replace(**{"memory.hbm.capacity_bytes": 1e30})
    msg = str(info.value)
    assert msg.startswith("h100_sxm: knob 'memory.hbm.capacity_bytes' must be in [1000, 1e+16] B, got 1e+30")
    assert ".toml" not in msg and "memory[2]" not in msg
    with pytest.raises(TargetError, match=r"h100_sxm: knob 'compute.clock_hz' must be in .* got 1.83 .*informational"):
        h100.replace(**{"compute.clock_hz": 1.83})
    with pytest.raises(TargetError, match=r"knob 'compute.matrix_units' must be in \[1, 1e\+07\] units, got 9007199254740993"):
        h100.replace(**{"compute.matrix_units": 9007199254740993})
    with pytest.raises(TargetError, match=r"h100_sxm: knob 'memory.hbm.bandwidth_bytes_per_s' must be > 0, got -1.0"):
        h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": -1})
    with pytest.raises(TargetError, match=r"knob 'memory.hbm.bandwidth_bytes_per_s' must be in \[1e\+06, 1e\+18\] B/s, got 3.35"):
        explorer.sweep(prog, h100, {"memory.hbm.bandwidth_bytes_per_s": [3.35e12, 3.35]})


def test_a_network_of_topology_none_keeps_its_zero_bandwidth_through_replace(tmp_path):
    # no scale-out network at all: 0 B/s is its bandwidth (a file may say so, and so may replace)
    text = (PRESETS / "h100_sxm.toml").read_text().replace('topology = "fat_tree"', 'topology = "none"', 1)
    text = text.replace("link_bandwidth_bytes_per_s = 50e9", "link_bandwidth_bytes_per_s = 0", 1)
    path = tmp_path / "lonely.toml"
    path.write_text(text)
    t = hw_targets.load(path)
    assert t.scale_out.link_bandwidth_bytes_per_s == 0
    assert t.replace(**{"scale_out.chip_bandwidth_bytes_per_s": 0}).scale_out.chip_bandwidth_bytes_per_s == 0
    with pytest.raises(TargetError, match=r"knob 'scale_up.chip_bandwidth_bytes_per_s' must be > 0"):
        t.replace(**{"scale_up.chip_bandwidth_bytes_per_s": 0})    # the NVLink switch is a real network


def test_a_chip_100x_beyond_todays_and_every_sensitivity_or_sweep_step_stays_valid():
    for name in hw_targets.names():
        t = hw_targets.load(name)
        knobs = t.knobs()
        big = {k: v * 100 for k, v in knobs.items()
               if v and not k.startswith("efficiency") and k != "compute.clock_hz"
               and not k.endswith((".efficiency", "latency_s", "overhead_s"))}
        t.replace(**big)                                             # 100x every figure: still loads
        for k, v in knobs.items():
            if v == 0 or k == "compute.clock_hz":
                continue
            r = range_of(k)
            if r.integer:
                continue
            for f in (0.99, 1.01, 0.5, 2.0):
                x = v * f
                if r.contains(x):
                    t.replace(**{k: x})
                else:       # only fractions at their top (efficiency 1.0 x 1.01) may leave the range
                    assert r.hi == 1 and f > 1, (name, k, x)


def test_every_knob_of_every_preset_has_a_physical_range():
    for name in hw_targets.names():
        t = hw_targets.load(name)
        for knob, value in t.knobs().items():
            r = range_of(knob)
            assert r is not None, (name, knob)
            assert r.contains(value) or (value == 0 and knob.endswith("bandwidth_bytes_per_s")), (name, knob, value)


def test_one_range_table_in_schema():
    assert {"memory.*.capacity_bytes", "compute.matrix_units", "scale_*.torus_dims", "efficiency.*"} <= set(RANGES)
    assert range_of("memory.hbm.bandwidth_bytes_per_s").unit == "B/s"
    assert range_of("scale_out.domain_size").integer


# -- 4. replace edge cases, duplicates, paths -----------------------------------------------------
def test_a_dotted_level_name_is_rejected_clearly_and_replace_never_silently_does_nothing(tmp_path, h100):
    with pytest.raises(TargetError, match=r"bad.toml: field 'memory\[1\].name' must not contain '.'.*got 'l2.cache'"):
        hw_targets.load(variant_file(tmp_path, 'name = "l2"', 'name = "l2.cache"'))
    with pytest.raises(TargetError, match=r"unknown knob 'memory.l2.cache.capacity_bytes' \(did you mean 'memory.l2.capacity_bytes'"):
        h100.replace(**{"memory.l2.cache.capacity_bytes": 1e9})
    assert h100.replace(**{"memory.l2.capacity_bytes": 1e9}).memory_level("l2").capacity_bytes == 1e9


def test_numpy_scalars_are_valid_values(h100):
    t = h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": np.float32(6.7e12), "compute.matrix_units": np.int64(264)})
    assert t.main_memory.bandwidth_bytes_per_s == float(np.float32(6.7e12))
    assert t.compute.matrix_units == 264 and type(t.compute.matrix_units) is int
    assert h100.replace(**{"efficiency.matrix": np.float64(0.5)}).efficiency.matrix == 0.5
    with pytest.raises(TargetError, match="must be a number, got np.True_|must be a number, got True"):
        h100.replace(**{"efficiency.matrix": np.bool_(True)})


def test_a_duplicate_toml_key_names_the_key(tmp_path):
    with pytest.raises(TargetError, match=r"bad.toml: not valid TOML: duplicate key 'tdp_w' \(line \d+"):
        hw_targets.load(variant_file(tmp_path, "tdp_w = 700", "tdp_w = 700\ntdp_w = 800"))
    with pytest.raises(TargetError, match=r"duplicate key 'compute.matrix_units'"):
        hw_targets.load(variant_file(tmp_path, "matrix_units = 132", "matrix_units = 132\nmatrix_units = 133"))


@pytest.mark.parametrize("name", ["chip.TOML", "chip", "chip.target"])
def test_a_path_to_an_existing_file_is_loaded_whatever_its_suffix(tmp_path, monkeypatch, name):
    path = variant_file(tmp_path, 'name = "h100_sxm"', 'name = "my_chip"', name=name)
    assert hw_targets.load(path).name == "my_chip"
    assert hw_targets.load(str(path)).name == "my_chip"
    monkeypatch.chdir(tmp_path)
    assert hw_targets.load(name).name == "my_chip"            # relative, suffix-less: still a file
    with pytest.raises(TargetError, match="unknown target 'no_such_chip'"):
        hw_targets.load("no_such_chip")


# -- 5. variants have names -------------------------------------------------------------------------
def test_replace_names_variants(h100):
    faster = h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": 6.7e12})
    assert faster.name == "h100_sxm[memory.hbm.bandwidth_bytes_per_s=6.7e12]"
    assert h100.replace(name="my_chip", **{"tdp_w": 800}).name == "my_chip"
    assert h100.replace(**{"tdp_w": 700}) == h100                 # nothing changed: the same target, same name
    both = faster.replace(**{"compute.matrix_units": 264})
    assert both.name == "h100_sxm[memory.hbm.bandwidth_bytes_per_s=6.7e12,compute.matrix_units=264]"
    # the name reloads the variant (what plots and reports do with est.target)
    assert hw_targets.load(both.name) == both
    assert hw_targets.load(faster.name).main_memory.bandwidth_bytes_per_s == 6.7e12
    with pytest.raises(TargetError, match="must be a non-empty string"):
        h100.replace(name="")


def test_a_comparison_shows_the_variants_apart_and_the_roofline_finds_them(prog, h100):
    pytest.importorskip("matplotlib")
    faster = h100.replace(**{"memory.hbm.bandwidth_bytes_per_s": 2 * h100.main_memory.bandwidth_bytes_per_s})
    cmp = explorer.compare(prog, [h100, faster])
    names = [r["target"] for r in cmp.rows()]
    assert names == ["h100_sxm", "h100_sxm[memory.hbm.bandwidth_bytes_per_s=6.7e12]"]
    text = cmp.table()
    assert all(n in text for n in names)
    est = explorer.estimate(prog, faster)
    fig = explorer.plots.roofline(est)            # reloads the target by est.target
    assert "6.7 TB/s" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_sweeps_stay_bit_identical_with_named_variants(prog, h100):
    grid = {"memory.hbm.bandwidth_bytes_per_s": [1e12, 6.7e12], "compute.matrix_units": [66, 132]}
    res = explorer.sweep(prog, h100, grid)
    assert res.method == "vectorised"
    for row in res.rows():
        t = h100.replace(**{k: row[k] for k in grid})
        assert float(row["seconds"]).hex() == explorer.estimate(prog, t).seconds.hex()


# -- 6. a pathlib.Path is a target as a str path is ----------------------------------------------------
def test_load_takes_a_path_object(tmp_path):
    path = variant_file(tmp_path, 'name = "h100_sxm"', 'name = "my_chip"', name="chip.toml")
    assert hw_targets.load(path) == hw_targets.load(str(path))
    assert hw_targets.load(path).name == "my_chip"


@pytest.mark.parametrize("call", ["estimate", "compare", "sweep", "sensitivity"])
def test_a_path_object_target_works_everywhere_a_path_string_does(prog, call):
    path = PRESETS / "h100_sxm.toml"
    if call == "estimate":
        assert explorer.estimate(prog, path).seconds == explorer.estimate(prog, str(path)).seconds
    elif call == "compare":
        assert [r["target"] for r in explorer.compare(prog, [path]).rows()] == ["h100_sxm"]
    elif call == "sweep":
        assert len(explorer.sweep(prog, path, {"tdp_w": [600, 700]}).rows()) == 2
    else:
        assert explorer.sensitivity(prog, path, knobs=["memory.hbm.bandwidth_bytes_per_s"]).knobs
