"""Every notebook runs top to bottom against the current code."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import SHARED_DATA

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
# the public data notebooks read, passed in by environment where present
DATA = {"IOTML_AI4I_DATA": SHARED_DATA / "ai4i2020", "IOTML_SKAB_DATA": SHARED_DATA / "skab"}
NEEDS = {"defect_prediction": "IOTML_AI4I_DATA"}  # skipped without it (the others note a missing dataset and go on)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("IOTML_NOTEBOOK_WORK", str(tmp_path))
    monkeypatch.setenv("IOTML_AI4I_TREES", "5")  # the path, not the accuracy (tests/training/test_ai4i.py: 300 trees)
    for variable, data in DATA.items():
        if data.is_dir():
            monkeypatch.setenv(variable, str(data))
    if path.stem in NEEDS and not DATA[NEEDS[path.stem]].is_dir():
        pytest.skip(f"needs {DATA[NEEDS[path.stem]]}")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_there_is_a_notebook():
    assert NOTEBOOKS
