"""docs/explore.ipynb runs from top to bottom on the embedded model (nbclient), so it cannot
rot: every cell without an error, and each of its four figures a plotly figure."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "explore.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.mark.integration
def test_the_exploration_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed clean
    monkeypatch.setenv("PLOTLY_RENDERER", "plotly_mimetype")  # the kernel inherits both
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # a kernel of this interpreter (not whatever "python3" a user's Jupyter finds first)
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "steerlens-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    run = tmp_path / "run"
    run.mkdir()
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="steerlens-test", resources={"metadata": {"path": run}}
    ).execute()
    assert (run / "explore-run" / "cells.parquet").is_file()  # the sweep's finished folder
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if PLOTLY in o.get("data", {})]
    assert len(figures) == 4
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) == 1 and "<table" in html[0] and "generation" in html[0]  # no stray output
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not [t for t in stderr if "TqdmWarning" not in t]  # tqdm's own: no ipywidgets
