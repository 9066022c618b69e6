"""The README's promises that are not code: its two commands, and CI running the test command it gives."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_quickstart_is_two_one_line_commands_from_a_fresh_venv():
    main, tests = _quickstart_commands()
    for cmd in (main, tests):
        assert "\n" not in cmd.strip()
        assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install ")
    assert "explorer compare examples/" in main and "--target" in main
    assert tests.endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command():
    _, tests = _quickstart_commands()
    after_venv = tests.split(". .venv/bin/activate && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert after_venv.replace("pip install ", "pip install -q ", 1) in ci, (after_venv, ci)


def test_no_placeholder_is_left_in_the_docs():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert not re.search(r"\b(TODO|FIXME|XXX|FIDELITY_SUMMARY)\b", text), path


# -- every Python snippet of the README and the docs runs as written --------------------------------------
DOCS = ["README.md", "docs/remat.md", "docs/sharding.md", "docs/workflows.md"]


def _snippets(path: Path) -> list[tuple[int, str]]:
    """(line, code) of each ```python block."""
    text = path.read_text()
    out = []
    for m in re.finditer(r"```python\n(.*?)\n```", text, flags=re.S):
        out.append((text[:m.start()].count("\n") + 2, m.group(1)))
    return out


@pytest.fixture(scope="module")
def small_step():
    """The names the snippets take as given (a user's own train step): GPT-2 at its small test size."""
    from explorer.frontend.model_files import load_module, program_fn
    spec = str(ROOT / "examples" / "gpt2_train.py")
    train_step, args = program_fn(spec)(**dict(load_module(spec).SMALL_CONFIG))
    return train_step, args


@pytest.mark.parametrize("doc", DOCS)
# the Ray snippet starts a local cluster with subprocess (fork then exec: no Python runs in the child), which JAX's
# fork hook warns about as if the child went on running JAX
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
def test_every_python_snippet_runs_as_written(doc, small_step, tmp_path, monkeypatch):
    import jax

    import explorer
    import hw_targets
    from explorer.workflows.sweep import SweepWarning

    train_step, args = small_step
    (tmp_path / "examples").symlink_to(ROOT / "examples")         # relative paths in the snippets resolve
    (tmp_path / "module.mlir").write_text(jax.jit(train_step).lower(*args).as_text())
    monkeypatch.chdir(tmp_path)
    params, opt_state, batch = args
    prog = explorer.lower(train_step, *args)
    namespace = {"__name__": "__main__", "explorer": explorer, "hw_targets": hw_targets, "train_step": train_step,
                 "args": args, "params": params, "opt_state": opt_state, "batch": batch, "prog": prog,
                 "micro_prog": prog}
    snippets = _snippets(ROOT / doc)
    assert snippets, doc
    for line, code in snippets:
        if "compiler=\"xla\"" in code and not _has_gpu_plugin():
            continue   # needs the xla-gpu extra (CI installs it)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", SweepWarning)     # a snippet that misleads its reader fails
                exec(compile(code, f"{doc}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{doc}, the snippet at line {line} fails: {type(exc).__name__}: {exc}") from exc


def _has_gpu_plugin() -> bool:
    import importlib.util
    return importlib.util.find_spec("jax_plugins") is not None and \
        importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
