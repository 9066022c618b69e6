"""The command line, as a user runs it."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

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


# -- the commands the README and docs/workflows.md give, run as written (issue 15) ----------------------------------
def _doc_commands():
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmds = []
    for doc in ("README.md", "docs/workflows.md"):
        text = (root / doc).read_text()
        for block in re.findall(r"```bash\n(.*?)\n```", text, flags=re.DOTALL):
            # each command of a line (the quickstart's last one follows its venv setup after "&&")
            for line in (part.strip() for row in block.splitlines() for part in row.split("&&")):
                words = shlex.split(line, comments=True)
                if words[:1] == ["explorer"]:
                    words = words[1:]
                elif words[:3] == ["python", "-m", "explorer"]:
                    words = words[3:]
                else:
                    continue            # venv set-up, pip, pytest: tests/test_docs.py checks those
                if "--update" in words or "path/to/my/regressions" in words:
                    continue            # rewrites pinned files / a placeholder directory
                if words == ["regress"]:
                    continue            # every pinned case: tests/test_regress.py runs them
                cmds.append((doc, line.split("#")[0].strip(), words))
    return cmds


def test_the_docs_have_commands_to_run():
    cmds = [c for _, c, _ in _doc_commands()]
    assert any(c.startswith("explorer show module.mlir") for c in cmds) and any("--plot" in c for c in cmds)
    assert any(c.startswith("python -m explorer regress --case") for c in cmds)
    assert any(c.endswith("--target mi300x") for c in cmds)            # the quickstart's own command


def test_every_command_of_the_readme_and_docs_runs_as_written(tmp_path):
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "examples").symlink_to(root / "examples")          # the docs' relative paths resolve
    lowered = jax.jit(lambda x, w: jnp.tanh(x @ w)).lower(jax.ShapeDtypeStruct((64, 128), jnp.float32),
                                                          jax.ShapeDtypeStruct((128, 32), jnp.float32))
    (tmp_path / "module.mlir").write_text(lowered.as_text())
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if not __import__("importlib").util.find_spec("matplotlib"):
        pytest.skip("matplotlib is not installed (the --plot commands need it)")
    for doc, line, words in _doc_commands():
        proc = subprocess.run([sys.executable, "-m", "explorer", *words], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=600, check=False)
        assert proc.returncode == 0, f"{doc}: `{line}` exits {proc.returncode}: {proc.stderr[-1500:]}"
        assert proc.stdout.strip(), f"{doc}: `{line}` prints nothing"
        if "--json" in words:
            assert json.loads(proc.stdout)["seconds"] > 0
        for opt in ("--plot", "--trace"):
            if opt in words:
                out = tmp_path / words[words.index(opt) + 1]
                assert out.is_file() and out.stat().st_size > 0, (doc, line, opt)


def _set_examples_in_the_readme():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"`--set ([a-z_]\w*)=[^`]*`", text)        # not the KEY=VALUE placeholder


def test_the_readme_has_a_set_example():
    assert _set_examples_in_the_readme()


def test_the_readmes_set_example_names_a_real_config_field():
    import dataclasses
    from pathlib import Path

    from explorer.frontend.model_files import load_module

    examples = Path(__file__).resolve().parents[1] / "examples"
    fields = set()
    for path in sorted(examples.glob("*.py")):
        config = getattr(load_module(path), "Config", None)
        if dataclasses.is_dataclass(config):
            fields |= {f.name for f in dataclasses.fields(config)}
    assert "n_layers" in fields
    for name in _set_examples_in_the_readme():
        assert name in fields, name
