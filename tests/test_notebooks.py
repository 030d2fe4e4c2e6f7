"""The chapter notebooks as committed: found, listed in README, and without outputs.

The chapters are executed by the book's build (``tests/test_book.py`` runs ``book/build --quick``:
every chapter top to bottom in a fresh kernel with ``MINIMASKRCNN_QUICK=1``; a cell that raises
fails the build with its traceback), so that each runs once per test run. To run one chapter
alone: ``python benchmarks/time_chapters.py --quick 04``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_found():
    assert NOTEBOOKS, f"no chapter notebooks in {NOTEBOOK_DIR}"


def test_readme_lists_every_chapter():
    readme = (NOTEBOOK_DIR.parent / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if f"(notebooks/{p.name})" not in readme]
    assert not missing, f"README's chapter table does not link {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path: Path):
    # the repository stays diffable; the book carries the outputs
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: cell {i} has outputs; clear them before committing "
                f"(jupyter nbconvert --clear-output --inplace notebooks/{path.name})")
