"""The chapters' exercises: every solution runs (its asserts hold), and ``check`` (the learner's
checker, ``notebooks/exercises.py``) accepts each solution's value and refuses a wrong one.

Each ``notebooks/solutions/NN_solutions.py`` defines ``exercise_1()``, ``exercise_2()``, ...:
each runs its experiment, checks it with asserts, and returns the answer a learner writes into
the chapter's stub cell.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import sys
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOLUTION_DIR = NOTEBOOK_DIR / "solutions"
SOLUTIONS = sorted(SOLUTION_DIR.glob("[0-9][0-9]_solutions.py"))
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _exercises_module():
    spec = importlib.util.spec_from_file_location("exercises", NOTEBOOK_DIR / "exercises.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("exercises", module)
    spec.loader.exec_module(module)
    return module


exercises = _exercises_module()


def wrong(value):
    """A value that must not pass ``check`` for the answer ``value``."""
    if isinstance(value, (bool, np.bool_)):
        return not value
    if isinstance(value, str):
        return value + " not"
    if isinstance(value, numbers.Number):
        return float(value) * 1.5 + 1.0 if math.isfinite(float(value)) else 0.0
    if isinstance(value, (set, frozenset)):
        return set(value) | {"an element of no answer"}
    if isinstance(value, dict):
        k = next(iter(value))
        return {**value, k: wrong(value[k])}
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            return [0]
        out = list(value)
        out[0] = wrong(out[0])
        return out
    return object()


def test_every_chapter_has_solutions():
    chapters = {p.name[:2] for p in NOTEBOOKS}
    assert chapters and chapters <= {p.name[:2] for p in SOLUTIONS}


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solutions_run_and_check_accepts_them(path: Path, capsys):
    chapter = path.name[:2]
    module = exercises.solutions_module(chapter)
    numbers_ = sorted(int(n.split("_")[1]) for n in dir(module)
                      if n.startswith("exercise_") and n.split("_")[1].isdigit())
    assert numbers_ and numbers_ == list(range(1, len(numbers_) + 1)), numbers_
    for n in numbers_:
        key = f"{chapter}.{n}"
        truth = exercises.expected(key)  # runs the experiment and its asserts
        assert truth is not None, f"{key}: the solution returns no answer"
        assert exercises.check(key, truth) is True, f"{key}: check refuses the solution's value"
        assert exercises.check(key, wrong(truth)) is False, f"{key}: check accepts a wrong value"
        assert exercises.check(key, None) is None
    out = capsys.readouterr().out
    assert "right" in out and "not yet" in out


def test_check_rules():
    m = exercises.matches
    assert m(3, 3.0, 1e-6) and not m(3, 4, 1e-6) and m(1.04, 1.0, 0.05)
    assert m({"a", "b"}, {"b", "a"}, 0) and not m({"a"}, {"a", "b"}, 0)
    assert m(" P3 ", "p3", 0) and not m("p4", "p3", 0)
    assert m([1, 2], np.array([1.0, 2.0]), 1e-6) and not m([1, 2, 3], [1, 2], 1e-6)
    assert m({"x": 1.0}, {"x": 1}, 1e-6) and not m({"x": 2}, {"x": 1}, 1e-6)
    assert m(True, True, 0) and not m(1, True, 0)
    with pytest.raises(ValueError, match="chapter.number"):
        exercises.check("4-2", 1)
