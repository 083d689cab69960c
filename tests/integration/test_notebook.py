"""docs/explore.ipynb runs from top to bottom on the embedded model (nbclient), so it cannot
rot: every cell without an error, and each of its four figures a plotly figure."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "explore.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.mark.integration
def test_the_exploration_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed clean
    monkeypatch.setenv("PLOTLY_RENDERER", "plotly_mimetype")  # the kernel inherits both
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if PLOTLY in o.get("data", {})]
    assert len(figures) == 4
    steered = next(o for o in outputs if "text/html" in o.get("data", {}))["data"]["text/html"]
    assert "generation" in steered
