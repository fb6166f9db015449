"""The quickstart notebook runs from top to bottom (with the smoke config)."""

import os

import pytest

from tests.helpers import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


@pytest.mark.extended
def test_quickstart_notebook_executes(monkeypatch):
    monkeypatch.setenv("VQJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("VQJAX_REPO", REPO_ROOT)
    notebook = nbformat.read(os.path.join(REPO_ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": REPO_ROOT}})
    client.execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "PSNR" in outputs
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the reconstructions image was not displayed"
