"""Execute every chapter notebook top to bottom (CI runs them; they are committed without outputs).

Each notebook runs in a fresh ``python3`` kernel of the current interpreter with
``MINIMASKRCNN_QUICK=1`` (fewer iterations, smaller inputs) and ``MPLBACKEND=Agg``, from the
``notebooks/`` folder. A cell that raises fails the test with the cell's traceback. The notebooks
are not marked ``cuda``: the simulator run (``pytest -m cuda``) leaves them out, and the chapters
that show the CUDA tier do so only when it is available. Chapters 10 and 11 load the trained
weights that ship with the package (``minimaskrcnn.data.load_pretrained``). README's chapter table
links every chapter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MINIMASKRCNN_QUICK"] = "1"
    env["MPLBACKEND"] = "Agg"
    # Make sure the kernel is this interpreter's environment (a fresh venv may have no PATH entry).
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_notebooks_found():
    assert NOTEBOOKS, f"no chapter notebooks in {NOTEBOOK_DIR}"


def test_readme_lists_every_chapter():
    readme = (NOTEBOOK_DIR.parent / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if f"(notebooks/{p.name})" not in readme]
    assert not missing, f"README's chapter table does not link {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path):
    nb = nbformat.read(path, as_version=4)
    # Committed notebooks carry no outputs (the repository stays diffable).
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: commit notebooks with outputs cleared"
            )
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute(env=_kernel_env())  # passed to the kernel manager's start_kernel
    except nbclient.exceptions.CellExecutionError as e:  # the message shows the failing cell
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
