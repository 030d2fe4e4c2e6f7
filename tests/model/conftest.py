"""Fixtures of the model tests."""

import ctypes
import glob
import os

import numpy as np
import pytest


def _openblas():
    """NumPy's bundled OpenBLAS (scipy-openblas) and its thread-count functions, or None."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            return lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
        except (OSError, AttributeError):
            continue
    return None


@pytest.fixture
def single_thread():
    """Run the test with one BLAS thread and one Numba thread, then restore both.

    The overfit test multiplies tiny matrices thousands of times: threads only add overhead,
    and on a shared 2-core machine a multi-threaded OpenBLAS made it ~30x slower (165 s instead
    of ~6 s). threadpoolctl would be the library for this; it is not a dependency, so NumPy's
    bundled OpenBLAS is asked directly (silently skipped when it is another BLAS).
    """
    import numba  # noqa: PLC0415  (tests may; the package never imports numba outside tiers)

    blas = _openblas()
    old_blas = blas[0]() if blas else None
    old_numba = numba.get_num_threads()
    if blas:
        blas[1](1)
    numba.set_num_threads(1)
    try:
        yield
    finally:
        if blas:
            blas[1](old_blas)
        numba.set_num_threads(old_numba)
