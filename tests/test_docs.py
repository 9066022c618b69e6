"""The README's promises that are not code: its two commands, and CI running the test command it gives."""
from __future__ import annotations

import re
from pathlib import Path

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
