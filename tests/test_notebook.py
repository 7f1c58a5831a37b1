"""The tutorial notebook (notebooks/tutorial.ipynb) runs top to bottom, and the committed copy reads well without running."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "tutorial.ipynb"


def _executor():
    """notebooks/execute.py as a module (notebooks/ is not a package): the same runner the committed outputs came from."""
    spec = importlib.util.spec_from_file_location("tutorial_execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def committed() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_carries_outputs_of_a_full_run(committed):
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert len(code) >= 15
    # Executed once, top to bottom, in one kernel: counts 1, 2, 3, ...
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert [i for i, c in enumerate(code) if not c.outputs] == [], "code cells without outputs"
    bad = [(i, o.output_type) for i, c in enumerate(code) for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert bad == [], "errors or warnings in the committed outputs"
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 10, "the static figures GitHub shows"
    assert "setting: full" in _text(code[0]), "commit the outputs of the full setting, not REGCORE_TUTORIAL_FAST=1"
    # No plotly.js embedded (megabytes), so the file stays light enough for GitHub's viewer.
    assert NOTEBOOK.stat().st_size < 5_000_000


def test_every_section_has_an_explanation(committed):
    headings = [c.source.splitlines()[0] for c in committed.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert [h.split(".")[0] for h in headings] == [f"## {i}" for i in range(1, 9)]


@pytest.mark.timeout(900)
def test_notebook_executes_in_fast_setting():
    """Runs the whole notebook with REGCORE_TUTORIAL_FAST=1; any cell error fails the test (nbclient raises)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # One extra cell: which interpreter ran the kernel (it must be this one, so the packages are the venv's).
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    # One torch thread: the suite's other work and any background load cannot then oversubscribe the cores.
    _executor().run(nb, NOTEBOOK.parent, fast=True, timeout=600, threads=1)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert "setting: FAST" in _text(code[0])
    assert Path(_text(code[-1]).strip()).resolve() == Path(sys.prefix).resolve()
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) >= 10
