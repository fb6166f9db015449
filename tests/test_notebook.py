"""The notebooks run from top to bottom (with the smoke configs)."""

import os

import pytest

from tests.helpers import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute_notebook(name: str, monkeypatch, timeout: int = 300):
    """The notebook at smoke size, executed in a kernel from the repository root: (the notebook
    with its outputs, the text every code cell printed)."""
    monkeypatch.setenv("VQJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("VQJAX_REPO", REPO_ROOT)
    notebook = nbformat.read(os.path.join(REPO_ROOT, "notebooks", name), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": REPO_ROOT}})
    client.execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    return notebook, outputs


def displayed_images(notebook) -> list:
    return [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.extended
def test_quickstart_notebook_executes(monkeypatch):
    notebook, outputs = execute_notebook("quickstart.ipynb", monkeypatch)
    assert "PSNR" in outputs
    assert displayed_images(notebook), "the reconstructions image was not displayed"


@pytest.mark.extended
def test_applications_notebook_executes(monkeypatch):
    """Tokenizer -> prior -> samples, inpainting, compression, anomaly maps: every step runs, the
    files decompress to the tokenizer's reconstructions exactly, and every figure is shown."""
    notebook, outputs = execute_notebook("applications.ipynb", monkeypatch)
    lines = outputs.splitlines()
    assert "decompress == the tokenizer's reconstruction: True" in lines, outputs
    assert "the same for the uniform code: True" in lines, outputs
    table = {line[:38].strip(): line[38:].split() for line in lines if len(line) > 38}
    for coder in ("vqjax, MaskGIT prior", "PNG (lossless)", "JPEG quality 75"):
        bytes_per_crop, bits_per_pixel, _ = (float(x) for x in table[coder])
        assert bytes_per_crop > 0 and bits_per_pixel == pytest.approx(8 * bytes_per_crop / 32 ** 2, abs=2e-3)
    assert any(line.startswith("prior nats per code:") for line in lines), outputs
    # Samples, inpainting, the decompressed crops and the anomaly maps.
    assert len(displayed_images(notebook)) == 4
