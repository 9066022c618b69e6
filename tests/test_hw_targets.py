"""Hardware targets: every preset loads and is sourced; knobs round-trip; bad files give clear errors."""
import re
from pathlib import Path

import pytest

import hw_targets
from hw_targets import TargetError

PRESETS = Path(hw_targets.__file__).parent / "presets"
REQUIRED = {"a100_sxm", "h100_sxm", "h200", "b200", "mi300x", "tpu_v4", "tpu_v5e", "tpu_v5p", "tpu_v6e", "gaudi3",
            "trainium2", "hypo_sram_heavy", "h100_hbm4"}


def test_every_required_preset_loads():
    assert REQUIRED <= set(hw_targets.names())
    for name in hw_targets.names():
        t = hw_targets.load(name)
        assert t.name == name
        assert t.matrix_rate("bf16") > 0 and t.main_memory.kind == "main"
        assert t.main_memory.bandwidth_bytes_per_s > 0


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_figure_carries_its_source(name):
    for i, line in enumerate((PRESETS / f"{name}.toml").read_text().splitlines(), 1):
        if re.match(r"^\s*\w+\s*=\s*(\[?\s*[-+]?\d)", line):
            assert "#" in line and re.search(r"#\s*(source|derived|assumption)", line), f"{name}.toml:{i}: {line}"


def test_figures_match_the_reference_table():
    h100 = hw_targets.load("h100_sxm")
    assert h100.matrix_rate("bf16") == 989.4e12           # dense, not the sparse headline
    assert h100.main_memory.capacity_bytes == 80e9
    assert h100.scale_up.chip_bandwidth_bytes_per_s == 450e9   # unidirectional
    v5p = hw_targets.load("tpu_v5p")
    assert v5p.scale_up.torus_dims == (16, 20, 28) and v5p.scale_up.domain_size == 8960
    mi = hw_targets.load("mi300x")
    assert mi.scale_up.link_bandwidth_bytes_per_s == 64e9   # peer-to-peer, not the 448 GB/s aggregate


def test_dtype_fallbacks():
    v5e = hw_targets.load("tpu_v5e")
    assert v5e.matrix_rate("f8E4M3FN") == v5e.matrix_rate("bf16")       # no fp8 figure: bf16 rate
    assert v5e.matrix_rate("tf32") == v5e.vector_rate("f32")             # no f32 matrix path listed
    h100 = hw_targets.load("h100_sxm")
    assert h100.matrix_rate("f8E5M2") == 1978.9e12
    assert h100.matrix_rate("tf32") == 494.7e12
    assert h100.vector_rate("bf16") == h100.vector_rate("f32")


def test_knobs_round_trip_and_replace_changes_one_thing():
    t = hw_targets.load("h100_sxm")
    knobs = t.knobs()
    assert list(knobs) == list(hw_targets.load("h100_sxm").knobs())      # deterministic order
    for name, value in knobs.items():
        assert t.replace(**{name: value}) == t, name
    t2 = t.replace(**{"memory.hbm.bandwidth_bytes_per_s": 6.7e12})
    changed = {k for k, v in t2.knobs().items() if v != knobs[k]}
    assert changed == {"memory.hbm.bandwidth_bytes_per_s"}
    assert t.main_memory.bandwidth_bytes_per_s == 3.35e12                 # the original is untouched
    assert hash(t2) != hash(t)


def test_replace_rejects_bad_values():
    t = hw_targets.load("h100_sxm")
    with pytest.raises(TargetError, match="efficiency.matrix.*1.5"):
        t.replace(**{"efficiency.matrix": 1.5})
    with pytest.raises(TargetError, match="compute.matrix_units.*2.5"):
        t.replace(**{"compute.matrix_units": 2.5})
    assert t.replace(**{"compute.matrix_units": 64.0}).compute.matrix_units == 64
    with pytest.raises(TargetError, match="unknown knob 'memory.hbm.bandwith_bytes_per_s'.*did you mean"):
        t.replace(**{"memory.hbm.bandwith_bytes_per_s": 1e12})
    with pytest.raises(TargetError, match="must be > 0"):
        t.replace(**{"memory.hbm.bandwidth_bytes_per_s": -1})


def write_variant(tmp_path, old: str, new: str, name: str = "bad.toml") -> Path:
    text = (PRESETS / "h100_sxm.toml").read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("old, new, expected", [
    ("bandwidth_bytes_per_s = 3.35e12", "bandwidth_bytes_per_s = -3.0", r"bad.toml: field 'memory\[2\].bandwidth_bytes_per_s' must be > 0, got -3.0"),
    ("bandwidth_bytes_per_s = 3.35e12", "bandwith_bytes_per_s = 3.35e12", r"bad.toml: unknown field 'memory\[2\].bandwith_bytes_per_s' = 3350000000000.0 \(did you mean 'memory\[2\].bandwidth_bytes_per_s'\?\)"),
    ("matrix = 0.70", "matrix = 1.7", r"bad.toml: field 'efficiency.matrix' must be in \(0, 1\], got 1.7"),
    ('topology = "switch"', 'topology = "hypercube"', r"bad.toml: field 'scale_up.topology' must be one of .*got 'hypercube'"),
    ("tdp_w = 700", 'tdp_w = "seven hundred"', r"bad.toml: field 'tdp_w' must be a number, got 'seven hundred'"),
    ('kind = "main"', 'kind = "cache"', r"bad.toml: field 'memory' must have exactly one level of kind 'main'"),
    ("bf16 = 989.4e12", "bf17 = 989.4e12", r"bad.toml: field 'compute.matrix_flops_per_s.bf17' is not a dtype"),
    ("matrix_units = 132", "matrix_units = 13.5", r"bad.toml: field 'compute.matrix_units' must be an integer, got 13.5"),
    ('name = "smem"', 'name = "hbm"', r"bad.toml: field 'memory\[2\].name' duplicates another memory level, got 'hbm'"),
])
def test_bad_files_name_the_file_field_and_value(tmp_path, old, new, expected):
    with pytest.raises(TargetError, match=expected):
        hw_targets.load(write_variant(tmp_path, old, new))


def test_torus_dims_must_match_domain(tmp_path):
    text = (PRESETS / "tpu_v5e.toml").read_text().replace("torus_dims = [16, 16]", "torus_dims = [16, 8]")
    path = tmp_path / "torus.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=r"torus.toml: field 'scale_up.torus_dims' must multiply to domain_size 256, got \(16, 8\)"):
        hw_targets.load(path)


def test_missing_field_syntax_error_and_unknown_preset(tmp_path):
    with pytest.raises(TargetError, match=r"bad.toml: missing required field 'tdp_w'"):
        hw_targets.load(write_variant(tmp_path, "tdp_w = 700", ""))
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(TargetError, match="broken.toml: not valid TOML"):
        hw_targets.load(broken)
    with pytest.raises(TargetError, match="unknown target 'h100_sx'.*did you mean 'h100_sxm'"):
        hw_targets.load("h100_sx")
    with pytest.raises(TargetError, match="no such target file"):
        hw_targets.load(tmp_path / "nope.toml")


def test_a_new_chip_is_one_toml_file(tmp_path):
    path = write_variant(tmp_path, 'name = "h100_sxm"', 'name = "my_chip"', name="my_chip.toml")
    t = hw_targets.load(path)
    assert t.name == "my_chip" and t.source == str(path)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_knob_of_every_preset_round_trips(name):
    t = hw_targets.load(name)
    for knob, value in t.knobs().items():
        assert t.replace(**{knob: value}) == t, f"{name}: {knob}"


def test_resizing_a_torus_keeps_the_dims_only_when_the_size_is_unchanged():
    v5e = hw_targets.load("tpu_v5e")
    assert v5e.replace(**{"scale_up.domain_size": 256}).scale_up.torus_dims == (16, 16)
    assert v5e.replace(**{"scale_up.domain_size": 128}).scale_up.torus_dims == ()


# Copied from ../shared/reference/hardware_specs.csv (hbm_capacity_GB, hbm_bw_TBps, bf16_dense_tflops):
# preset -> (CSV accelerator, CSV variant substring, HBM GB, HBM TB/s, dense bf16 TFLOP/s).
CSV_FIGURES = {
    "a100_sxm": ("NVIDIA A100", "80GB", 80, 2.039, 312),
    "h100_sxm": ("NVIDIA H100", "SXM5", 80, 3.35, 989.4),
    "h200": ("NVIDIA H200", "141GB", 141, 4.8, 989.4),
    "b200": ("NVIDIA B200", "HGX", 180, 8.0, 2250),
    "mi300x": ("AMD Instinct MI300X", "OAM", 192, 5.3, 1307.4),
    "tpu_v4": ("Google TPU v4", "v4", 34.4, 1.2, 275),
    "tpu_v5e": ("Google TPU v5e", "v5litepod", 16, 0.819, 197),
    "tpu_v5p": ("Google TPU v5p", "v5p", 95, 2.765, 459),
    "tpu_v6e": ("Google TPU v6e (Trillium)", "v6e", 32, 1.64, 918),
    "gaudi3": ("Intel Gaudi 3", "HL-325L", 128, 3.67, 1677),   # CSV: 1835 spec / 1677 at the shipping 1600 MHz
    "trainium2": ("AWS Trainium2 (Trn2)", "Trainium2", 103, 2.9, 667),
}


@pytest.mark.parametrize("name", sorted(CSV_FIGURES))
def test_every_preset_matches_the_reference_table(name):
    _, _, hbm_gb, hbm_tbps, bf16_tflops = CSV_FIGURES[name]
    t = hw_targets.load(name)
    assert t.main_memory.capacity_bytes == pytest.approx(hbm_gb * 1e9, rel=0.01)   # GiB figures rounded in the CSV
    assert t.main_memory.bandwidth_bytes_per_s == pytest.approx(hbm_tbps * 1e12, rel=1e-9)
    assert t.matrix_rate("bf16") == pytest.approx(bf16_tflops * 1e12, rel=1e-9)


def test_embedded_figures_agree_with_the_csv_where_it_is_checked_out():
    import csv

    root = Path(__file__).resolve().parents[1]
    found = [p for p in (root / "shared", root.parent / "shared") if (p / "reference/hardware_specs.csv").is_file()]
    if not found:
        pytest.skip("shared/reference/hardware_specs.csv is not checked out here")
    rows = list(csv.DictReader((found[0] / "reference/hardware_specs.csv").open()))
    for name, (accelerator, variant, hbm_gb, hbm_tbps, bf16_tflops) in CSV_FIGURES.items():
        row = next(r for r in rows if r["accelerator"] == accelerator and variant in r["variant"])
        assert float(row["hbm_capacity_GB"]) == hbm_gb, name
        assert float(row["hbm_bw_TBps"]) == hbm_tbps, name
        assert str(bf16_tflops) in row["bf16_dense_tflops"], name


# -- the fields the step scheduler and the precision rule read (issue 12) -----------------------------------
@pytest.mark.parametrize("name", hw_targets.names())
def test_every_preset_says_how_it_launches_and_runs_f32(name):
    """Every preset sets the launch mode, the gap between kernels, async collectives and the f32 matmul mode
    itself (each line with its source), rather than leaning on the defaults."""
    text = (PRESETS / f"{name}.toml").read_text()
    for key in ("launch_mode", "kernel_gap_s", "async_collectives", "f32_matmul"):
        line = next((ln for ln in text.splitlines() if ln.split("=")[0].strip() == key), None)
        assert line is not None, f"{name}.toml has no {key}"
        assert re.search(r"#\s*(source|derived|assumption)", line), f"{name}.toml: {line}"
    t = hw_targets.load(name)
    assert t.launch_mode in ("per_kernel", "graph") and t.f32_matmul_mode in ("tf32", "bf16_passes", "fp32")
    assert t.knobs()["kernel_gap_s"] == t.kernel_gap_s
    if t.kind == "tpu":
        assert t.launch_mode == "graph" and t.f32_matmul_mode == "bf16_passes"


@pytest.mark.parametrize("old, new, expected", [
    ('launch_mode = "graph"', 'launch_mode = "eager"',
     r"bad.toml: field 'launch_mode' must be one of 'per_kernel', 'graph', got 'eager'"),
    ("kernel_gap_s = 4e-6", "kernel_gap_s = -1e-6", r"bad.toml: field 'kernel_gap_s' must be >= 0, got -1e-06"),
    ("kernel_gap_s = 4e-6", "kernel_gap_s = 1.0", r"bad.toml: field 'kernel_gap_s' must be in \[0, 0.01\] s, got 1.0"),
    ("async_collectives = true", 'async_collectives = "yes"',
     r"bad.toml: field 'async_collectives' must be true or false, got 'yes'"),
    ('f32_matmul = "tf32"', 'f32_matmul = "tf16"',
     r"bad.toml: field 'compute.f32_matmul' must be one of 'tf32', 'bf16_passes', 'fp32', got 'tf16'"),
    ('launch_mode = "graph"', 'launch_mod = "graph"', r"bad.toml: unknown field 'launch_mod' = 'graph' \(did you mean 'launch_mode'\?\)"),
])
def test_bad_schedule_fields_name_the_file_field_and_value(tmp_path, old, new, expected):
    with pytest.raises(TargetError, match=expected):
        hw_targets.load(write_variant(tmp_path, old, new))


def test_schedule_fields_default_when_a_file_leaves_them_out(tmp_path):
    text = (PRESETS / "h100_sxm.toml").read_text()
    keep = [ln for ln in text.splitlines() if ln.split("=")[0].strip() not in
            ("launch_mode", "kernel_gap_s", "async_collectives", "f32_matmul")]
    path = tmp_path / "plain.toml"
    path.write_text("\n".join(keep) + "\n")
    t = hw_targets.load(path)
    # per-kernel launches, no gap, async collectives; TF32 because the chip lists a tf32 rate
    assert (t.launch_mode, t.kernel_gap_s, t.async_collectives, t.compute.f32_matmul) == ("per_kernel", 0.0, True, "")
    assert t.f32_matmul_mode == "tf32"
    assert t.replace(kernel_gap_s=2e-6).kernel_gap_s == 2e-6
