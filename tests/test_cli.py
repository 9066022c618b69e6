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
