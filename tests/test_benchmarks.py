"""The validators read the shared reference data from beside the repository and never stop on a row
they cannot read: they skip it and say why (the rows below are written the ways real sources write them)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

reference_data = importlib.import_module("reference_data")

ATTENTION = {"case_id": "attn_x", "category": "attention_kernel", "hardware": "NVIDIA H100 SXM5", "num_chips": "1",
             "dtype": "bf16", "framework": "flash_attn_3", "workload": "attention forward", "heads": "16",
             "head_dim": "", "seq_len": "", "measured_value": "500", "measured_unit": "TFLOP/s",
             "measured_metric": "achieved forward throughput", "source": "somewhere", "op_shape_or_message": ""}


def test_shared_reference_data_is_found_relative_to_the_repository():
    assert reference_data.DEFAULT_CASES == BENCHMARKS.parent.parent / "shared" / "reference" / "validation_cases.csv"
    assert "/work/" not in "".join(p.read_text() for p in BENCHMARKS.glob("validate_*.py"))


@pytest.mark.parametrize("text,dims", [
    ("B=2,H=16,S=8192,D=128 (B*S=16k, H*D=2048)", (2, 16, 8192, 128)),
    ("batch=2, seq=8192, head_dim=64", (2, 16, 8192, 64)),          # heads from the row's column
    ("bs=4, nheads=8, seqlen=1024, headdim=128", (4, 8, 1024, 128)),
])
def test_attention_shapes_in_the_spellings_sources_use(text, dims):
    assert reference_data.attention_dims({**ATTENTION, "op_shape_or_message": text}) == dims


def test_an_unreadable_attention_row_is_skipped_with_the_reason():
    vr = importlib.import_module("validate_reference")
    rows = [{**ATTENTION, "op_shape_or_message": "batch=2, seq=8192, head_dim=64"},
            {**ATTENTION, "case_id": "attn_missing", "heads": "", "op_shape_or_message": "seq=8192"},
            {**ATTENTION, "case_id": "attn_bad_value", "op_shape_or_message": "B=1,H=1,S=128,D=64",
             "measured_value": "n/a"}]
    plan = vr.plan_cases(rows)
    assert [c.case_id for c in plan.cases] == ["attn_x"]
    why = {cid: reason for cid, _, reason in plan.skipped}
    assert "no batch, heads" in why["attn_missing"]
    assert "could not convert string to float: 'n/a'" in why["attn_bad_value"]


def test_an_unreadable_training_row_is_skipped_with_the_reason():
    vt = importlib.import_module("validate_training")
    row = {"case_id": "train_moe", "category": "train_step", "hardware": "NVIDIA H100", "workload": "MoE",
           "ffn": "10944 dense / 1408 per expert", "heads": "16", "hidden": "2048", "derived_step_time_s": "1.0",
           "recompute": "", "dtype": "bf16"}
    skipped: list = []
    assert list(reference_data.parse_each([row], vt.parse, skipped)) == []
    assert skipped[0].case == "train_moe" and "column 'ffn' is not a number: '10944 dense / 1408 per expert'" in \
        skipped[0].reason


def test_a_missing_cases_file_is_named():
    with pytest.raises(SystemExit, match="no_such.csv: no such file"):
        reference_data.read_rows(Path("no_such.csv"))
