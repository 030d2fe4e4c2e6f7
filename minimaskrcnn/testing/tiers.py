"""Tier parametrisation shared by the tests (and usable from notebooks).

``tier_params()`` gives one ``pytest.param`` per tier, marked ``cuda`` / ``gpu`` and skipped with
the backend's reason when the tier cannot run here. CI runs the suite twice: once normally
(numpy, numba; cuda and cupy skip), once with ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda``.
"""

from __future__ import annotations

from minimaskrcnn import backend


def tier_params(tiers=backend.TIERS):
    """``pytest.param`` objects for ``tiers``, with marks and skip reasons."""
    import pytest  # noqa: PLC0415  (a test-only dependency; notebooks import this module too)

    params = []
    for t in tiers:
        marks = []
        if t == "cuda":
            marks.append(pytest.mark.cuda)
        if t == "cupy":
            marks.append(pytest.mark.gpu)
        reason = backend.tier_unavailable_reason(t)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(t, marks=marks, id=t))
    return params
