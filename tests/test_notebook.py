"""The fusion-exploration notebook runs top to bottom (so it never rots)."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_fusion_exploration_notebook_executes(monkeypatch):
    path = ROOT / "examples" / "fusion_exploration.ipynb"
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("GPT2_LAYERS", "2")     # GPT-2 small's blocks, two of them, to keep the suite quick
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "fusion[" in outputs and "time saved" in outputs
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
