"""notebooks/featinv.ipynb runs top to bottom (bundled photos, tiny settings injected after its
`parameters` cell, as papermill would), so the notebook a Colab user opens cannot rot."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "featinv.ipynb"


def test_the_notebook_runs_top_to_bottom(samples, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    where = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    settings = {
        "INSTALL": False, "USE_DRIVE": False, "DATA": str(samples / "train"), "VAL_DATA": str(samples / "val"),
        "WORK": str(tmp_path / "work"), "CACHE": str(tmp_path / "cache"), "BACKBONE": "efficientnet_lite0", "WEIGHTS": "imagenet",
        "LAYER_SETS": ["stage1", "all"], "EPOCHS": 1, "MAX_IMAGES": 3, "BATCH_SIZE": 3, "WIDTH": 16,
        "MY_PHOTO": str(samples / "val" / "coffee.jpg"),
    }
    injected = "# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in settings.items())
    nb.cells.insert(where + 1, nbformat.v4.new_code_cell(injected))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    sweep = tmp_path / "work" / "sweep-efficientnet_lite0-imagenet"
    assert (sweep / "report.html").is_file() and (tmp_path / "work" / "my_photo_depths.png").is_file()
    assert len(json.loads((sweep / "summary.json").read_text())) == 2
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("data:image/png;base64" in o["data"]["text/html"] for o in html)  # report and photo shown inline
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "decoders: efficientnet_lite0 (imagenet), the sweep's decoders" in printed  # its own, not the shipped
    assert "TqdmWarning" not in printed  # progress bars without ipywidgets fall back quietly


def test_the_notebook_fits_colab_and_says_what_it_uses():
    """The defects a Colab user met: a placeholder REPO cloned silently, the 9.8 GB cache written to
    Drive, no idea how long the study takes, and "your photo" decoded by EfficientNet-Lite0's shipped
    decoders after a study of another backbone."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert 'check=False' not in code and '"OWNER" in REPO' in code  # a placeholder stops with a sentence
    assert 'CACHE = "/content/featinv-cache"' in code and "data = CACHE" in code  # local disk, not Drive
    assert "hours" in text and "estimated" in text
    assert "sweep_dir / \"runs\"" in code and "print(\"decoders:\", which)" in code
