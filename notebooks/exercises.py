"""Check a learner's answer to a chapter's exercise: ``check("04.2", answer)``.

Each chapter ends with exercises that are experiments: run something on the code or on the
trained model, read off a number (a count, a threshold, a level, an AP), and write it into the
stub cell::

    answer = None   # your answer: the number of FPN levels that pool at least one RoI
    check("04.2", answer)

``check`` prints one line: whether the answer is right, close, or not yet, without giving the
expected value away. The expected value is what ``exercise_2()`` of
``notebooks/solutions/04_solutions.py`` returns: the solutions run the experiment themselves
(``tests/test_solutions.py`` runs every solution and checks that ``check`` accepts its value and
refuses a wrong one).

Comparison: numbers within the tolerance the solution module declares in ``TOLERANCE``
(``{2: 0.05}``: 5 % relative for exercise 2; default 1e-6 relative, 1e-9 absolute), arrays and
sequences element by element the same way, sets and strings exactly (strings ignoring case and
surrounding spaces), dicts key by key.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from functools import cache
from pathlib import Path

import numpy as np

SOLUTIONS = Path(__file__).resolve().parent / "solutions"
DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-9


@cache
def solutions_module(chapter: str):
    """The module ``solutions/<chapter>_solutions.py`` (imported once)."""
    path = SOLUTIONS / f"{chapter}_solutions.py"
    if not path.exists():
        raise ValueError(f"no solutions for chapter {chapter!r} ({path.name} missing)")
    spec = importlib.util.spec_from_file_location(f"solutions_{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(exercise: str) -> tuple[str, int]:
    try:
        chapter, number = exercise.split(".")
        return f"{int(chapter):02d}", int(number)
    except ValueError:
        raise ValueError(f"exercise must look like '04.2' (chapter.number), got {exercise!r}") from None


@cache
def expected(exercise: str):
    """The solution's value of ``exercise`` (``"04.2"``), computed once."""
    chapter, number = _parse(exercise)
    module = solutions_module(chapter)
    fn = getattr(module, f"exercise_{number}", None)
    if fn is None:
        raise ValueError(f"chapter {chapter} has no exercise {number}")
    return fn()


def tolerance(exercise: str) -> float:
    chapter, number = _parse(exercise)
    return getattr(solutions_module(chapter), "TOLERANCE", {}).get(number, DEFAULT_RTOL)


def matches(answer, truth, rtol: float) -> bool:
    """Whether ``answer`` equals ``truth`` (see the module docstring for the rules)."""
    if isinstance(truth, bool) or isinstance(answer, bool):
        return isinstance(answer, (bool, np.bool_)) and bool(answer) == bool(truth)
    if isinstance(truth, str):
        return isinstance(answer, str) and answer.strip().lower() == truth.strip().lower()
    if isinstance(truth, numbers.Number):
        if not isinstance(answer, numbers.Number):
            return False
        a, t = float(answer), float(truth)
        return math.isclose(a, t, rel_tol=rtol, abs_tol=DEFAULT_ATOL) or (math.isnan(a) and math.isnan(t))
    if isinstance(truth, (set, frozenset)):
        return isinstance(answer, (set, frozenset, list, tuple)) and set(answer) == set(truth)
    if isinstance(truth, dict):
        return (isinstance(answer, dict) and set(answer) == set(truth)
                and all(matches(answer[k], truth[k], rtol) for k in truth))
    if isinstance(truth, (list, tuple, np.ndarray)):
        try:
            a = np.asarray(answer, dtype=np.float64)
            t = np.asarray(truth, dtype=np.float64)
        except (TypeError, ValueError):
            return (isinstance(answer, (list, tuple)) and len(answer) == len(truth)
                    and all(matches(x, y, rtol) for x, y in zip(answer, truth, strict=True)))
        return a.shape == t.shape and bool(np.allclose(a, t, rtol=rtol, atol=DEFAULT_ATOL))
    return answer == truth


def check(exercise: str, answer) -> bool | None:
    """Print whether ``answer`` to ``exercise`` (``"04.2"``) is right; return True / False, or
    None while the answer is still ``None`` (nothing is computed then)."""
    if answer is None:
        print(f"exercise {exercise}: no answer yet (replace None with yours and run the cell again)")
        return None
    truth = expected(exercise)
    ok = matches(answer, truth, tolerance(exercise))
    if ok:
        print(f"exercise {exercise}: right")
    else:
        kind = type(truth).__name__
        shape = f" of shape {np.shape(truth)}" if isinstance(truth, (list, tuple, np.ndarray)) else ""
        print(f"exercise {exercise}: not yet (the answer is a {kind}{shape}); "
              f"the solution is in solutions/{_parse(exercise)[0]}_solutions.py")
    return ok
