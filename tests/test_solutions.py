"""Run the answers to the chapters' exercises (``notebooks/solutions/NN_solutions.py``).

Each file checks its answers with asserts when run as a script; a failing assert fails the test.
They use small inputs and run in seconds.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SOLUTION_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"
SOLUTIONS = sorted(SOLUTION_DIR.glob("[0-9][0-9]_solutions.py"))
NOTEBOOKS = sorted(SOLUTION_DIR.parent.glob("[0-9][0-9]_*.ipynb"))


def test_every_chapter_has_solutions():
    chapters = {p.name[:2] for p in NOTEBOOKS}
    assert chapters and chapters <= {p.name[:2] for p in SOLUTIONS}


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_run(path: Path, capsys):
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"
