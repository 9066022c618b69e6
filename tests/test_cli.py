"""The command line, as a user runs it."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp

from explorer.cli import main


def test_targets_lists_every_preset(capsys):
    import hw_targets
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in hw_targets.names():
        assert name in out


def test_compare_an_example_on_two_targets(capsys):
    assert main(["compare", "examples/mlp.py", "--target", "h100_sxm", "--target", "tpu_v5p"]) == 0
    out = capsys.readouterr().out
    assert "h100_sxm" in out and "tpu_v5p" in out and "unknown ops: none" in out


def test_compare_pipelines(capsys):
    assert main(["compare", "examples/mlp.py", "--target", "h100_sxm", "--pipeline", "fuse{strategy=none}",
                 "--pipeline", "fuse{strategy=xla}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["pipeline"] for r in rows] == ["fuse{strategy=none}", "fuse{strategy=xla}"]
    assert rows[1]["kernels"] < rows[0]["kernels"]


def test_show_a_named_program_with_overrides(capsys):
    assert main(["show", "examples/llama_infer.py:decode", "--target", "h100_sxm", "--set", "n_layers=2",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["target"] == "h100_sxm" and d["seconds"] > 0 and d["layers"]


def test_show_a_stablehlo_file(tmp_path, capsys):
    text = jax.jit(lambda a, b: a @ b).lower(jax.ShapeDtypeStruct((64, 64), jnp.float32),
                                             jax.ShapeDtypeStruct((64, 64), jnp.float32)).as_text()
    path = tmp_path / "mm.mlir"
    path.write_text(text)
    assert main(["show", str(path), "--target", "tpu_v5e"]) == 0
    assert "tpu_v5e" in capsys.readouterr().out


def test_errors_name_the_bad_input():
    proc = subprocess.run([sys.executable, "-m", "explorer", "compare", "examples/mlp.py", "--target", "no_such_chip"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "no_such_chip" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "explorer", "show", "examples/llama_infer.py:nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "nope" in proc.stderr and "decode" in proc.stderr


def _run(*args, cwd=None):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True,
                          cwd=cwd or root)


def test_a_file_that_is_not_a_model_is_named_clearly():
    proc = _run("show", "README.md")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "README.md: not a model file: expected a Python file (.py)" in proc.stderr
    assert "AttributeError" not in proc.stderr


def test_set_values_are_checked_against_the_config():
    import pytest
    from explorer.model_files import ModelFileError, load_program

    with pytest.raises(ModelFileError, match=r"gpt2_train.py: --set n_layers='abc': field 'n_layers' expects an int, got str 'abc'"):
        load_program("examples/gpt2_train.py", {"n_layers": "abc"})
    with pytest.raises(ModelFileError, match=r"gpt2_train.py: unknown --set field 'no_such_field'; the fields of its "
                                             r"Config are vocab_size, n_ctx, .*scan_layers"):
        load_program("examples/gpt2_train.py", {"no_such_field": 1})
    proc = _run("show", "examples/mlp.py", "--set", "n_layers=abc")
    assert proc.returncode == 1 and "field 'n_layers' expects an int, got str 'abc'" in proc.stderr
    assert "TypeError" not in proc.stderr
    proc = _run("show", "examples/mlp.py", "--set", "no_such_field=1")
    assert proc.returncode == 1 and "examples/mlp.py: unknown --set field 'no_such_field'" in proc.stderr
    assert "_explorer_model_" not in proc.stderr            # never the internal module name


def test_set_converts_what_is_unambiguous(capsys):
    # bool fields take true/false, float fields take ints
    assert main(["show", "examples/gpt2_train.py", "--set", "scan_layers=true", "--set", "n_layers=2",
                 "--set", "vocab_size=64", "--set", "n_ctx=16", "--set", "d_model=32", "--set", "n_heads=4",
                 "--set", "d_ff=64", "--set", "batch=1", "--set", "seq=8", "--set", "learning_rate=1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seconds"] > 0


def test_regress_outside_a_checkout_says_how_to_pass_dir(tmp_path):
    proc = _run("regress", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no examples/regressions/cases.toml under the current directory" in proc.stderr and "--dir" in proc.stderr
