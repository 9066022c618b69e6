"""Pinned regressions: the stored figures hold; a moved number fails the check, ``--update`` pins it again."""
import json
import shutil
from pathlib import Path

import pytest

from explorer.workflows import regress
from explorer.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_pinned_cases_hold():
    report = regress.check(regress.DEFAULT_DIR)
    assert len(report.checked) >= 4
    assert report.ok, report.text()


@pytest.fixture()
def copy(tmp_path):
    """examples/ (model files and regressions) copied, so stored figures can be edited freely."""
    dst = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dst, ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    return dst / "regressions"


def test_a_moved_number_fails_and_update_pins_it_again(copy, capsys):
    case = "mlp_h100_sxm_default"
    path = copy / "expected" / f"{case}.json"
    doc = json.loads(path.read_text())
    true_seconds = doc["figures"]["seconds"]
    doc["figures"]["seconds"] = true_seconds * (1 + 1e-6)      # a cost rule moved the time by one part per million
    doc["figures"]["kernels"] += 1
    path.write_text(json.dumps(doc))

    report = regress.check(copy, [case])
    assert not report.ok
    assert {c.figure for c in report.changes} == {"seconds", "kernels"}
    moved = next(c for c in report.changes if c.figure == "seconds")
    assert moved.rel_change == pytest.approx(1 / (1 + 1e-6) - 1, rel=1e-6)
    assert main(["regress", "--dir", str(copy), "--case", case]) == 1
    out = capsys.readouterr().out
    assert f"{case}: 2 figure(s) moved" in out and "seconds:" in out and "-1.000e-06 relative" in out

    assert main(["regress", "--dir", str(copy), "--case", case, "--update"]) == 0
    assert json.loads(path.read_text())["figures"]["seconds"] == true_seconds
    assert main(["regress", "--dir", str(copy), "--case", case]) == 0
    assert f"{case}: ok" in capsys.readouterr().out


def test_tolerance_and_missing_figures(copy):
    case = "mlp_h100_sxm_default"
    path = copy / "expected" / f"{case}.json"
    doc = json.loads(path.read_text())
    doc["figures"]["memory_seconds"] *= 1 + 1e-12            # below the documented 1e-9: not a change
    path.write_text(json.dumps(doc))
    assert regress.check(copy, [case]).ok
    path.unlink()
    report = regress.check(copy, [case])
    assert report.missing == (case,) and "NO PINNED FIGURES" in report.text()


def test_compare_figures_rules():
    base = {f: 1.0 for f in regress.FIGURES} | {"unknown_ops": {"custom_call:foo": 2}, "kernels": 7}
    assert regress.compare_figures("c", base, dict(base)) == []
    moved = regress.compare_figures("c", base, base | {"unknown_ops": {}, "flops": 1.0 + 2e-9})
    assert [(c.figure, c.expected, c.actual) for c in moved] == [("flops", 1.0, 1.0 + 2e-9),
                                                                  ("unknown_ops", {"custom_call:foo": 2}, {})]
    assert regress.Change("c", "comm_seconds", 0.0, 1e-6).rel_change == float("inf")


def test_bad_cases_file_names_the_key(tmp_path):
    (tmp_path / "cases.toml").write_text('[[case]]\nname = "x"\nmodel = "m.py"\ntarget = "h100_sxm"\npipline = "none"\n')
    with pytest.raises(regress.RegressionError, match="case 'x': unknown key 'pipline'"):
        regress.load_cases(tmp_path)
    with pytest.raises(regress.RegressionError, match="no case 'nope'"):
        regress.check(regress.DEFAULT_DIR, ["nope"])


def test_the_default_directory_is_the_current_ones_never_the_packages(tmp_path, monkeypatch, copy):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(regress.RegressionError, match=r"no examples/regressions/cases.toml under the current "
                                                      r"directory .*pass --dir DIR"):
        regress.default_dir()
    with pytest.raises(regress.RegressionError, match="pass --dir"):
        main(["regress", "--update"])                 # nothing rewritten anywhere
    assert regress.default_dir(copy.parent.parent) == copy.parent.parent / "examples" / "regressions"
    monkeypatch.chdir(copy.parent.parent)             # a checkout-like directory: its own examples/regressions
    case = "mlp_h100_sxm_default"
    package_file = regress.DEFAULT_DIR / "expected" / f"{case}.json"
    before = package_file.stat().st_mtime_ns
    assert main(["regress", "--update", "--case", case]) == 0
    assert package_file.stat().st_mtime_ns == before
    assert (copy / "expected" / f"{case}.json").is_file()


def test_the_missing_figures_hint_names_the_directory(copy, capsys):
    case = "mlp_h100_sxm_default"
    (copy / "expected" / f"{case}.json").unlink()
    assert main(["regress", "--dir", str(copy), "--case", case]) == 1
    out = capsys.readouterr().out
    assert f"python -m explorer regress --dir {copy} --update --case {case}" in out


def test_update_never_writes_outside_the_directory(tmp_path):
    (tmp_path / "cases.toml").write_text('[[case]]\nname = "../../escape"\nmodel = "m.py"\ntarget = "h100_sxm"\n')
    with pytest.raises(regress.RegressionError, match=r"name '../../escape' must be letters"):
        regress.update(tmp_path)
