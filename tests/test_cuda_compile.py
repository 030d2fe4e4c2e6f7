"""Every CUDA kernel compiles for real GPUs (PTX for compute capability 8.0 and 9.0), no GPU needed.

The kernels are found, not listed (``minimaskrcnn/testing/cuda_kernels.py``): every Numba CUDA
kernel and device function is compiled with its signatures from ``NUMBA_SIGNATURES`` through
NVVM, every CuPy ``RAW_MODULE`` with NVRTC, one test case each. A new kernel without signatures,
or a CuPy source that is not declared, fails ``test_every_*``. Skipped (with the reason) only
when libNVVM / libNVRTC cannot be loaded: the ``cuda-compile`` extra (also in ``dev``) installs
them. Not run under the simulator (``NUMBA_ENABLE_CUDASIM=1`` replaces the dispatchers).
"""

from __future__ import annotations

import re

import pytest

from minimaskrcnn.backend import cuda_simulator_enabled
from minimaskrcnn.testing import cuda_kernels as ck

pytestmark = [
    pytest.mark.cuda_compile,
    pytest.mark.skipif(cuda_simulator_enabled(),
                       reason="the Numba simulator replaces the kernels; compile without it"),
]

SIMULATOR = cuda_simulator_enabled()
DISPATCHERS = {} if SIMULATOR else ck.numba_cuda_dispatchers()
CUPY_SOURCES, CUPY_PROBLEMS = ck.cupy_sources()
NVVM_REASON = None if SIMULATOR else ck.nvvm_unavailable_reason()
NVRTC_REASON = ck.nvrtc_unavailable_reason()


def test_every_numba_kernel_has_signatures():
    assert DISPATCHERS, "no Numba CUDA kernel found: the enumeration is broken"
    missing = sorted(set(DISPATCHERS) - set(ck.NUMBA_SIGNATURES))
    stale = sorted(set(ck.NUMBA_SIGNATURES) - set(DISPATCHERS))
    assert not missing, (f"CUDA kernels / device functions without an entry in "
                         f"minimaskrcnn/testing/cuda_kernels.py NUMBA_SIGNATURES: {missing}")
    assert not stale, f"NUMBA_SIGNATURES entries for kernels that no longer exist: {stale}"


def test_every_cupy_source_is_declared():
    assert CUPY_SOURCES, "no CuPy RAW_MODULE found: the enumeration is broken"
    assert not CUPY_PROBLEMS, "\n".join(CUPY_PROBLEMS)


@pytest.mark.skipif(NVVM_REASON is not None, reason=NVVM_REASON or "")
@pytest.mark.parametrize("key", sorted(set(DISPATCHERS) & set(ck.NUMBA_SIGNATURES)))
def test_numba_kernel_compiles(key):
    signatures = ck.NUMBA_SIGNATURES[key]
    assert signatures, f"{key}: no signatures"
    ptx = ck.compile_numba(DISPATCHERS[key], signatures, ck.ARCHS)
    assert len(ptx) == len(signatures) * len(ck.ARCHS)
    for (sig, cc), code in ptx.items():
        assert f".target sm_{cc[0]}{cc[1]}" in code, (key, sig, cc)
        if not ck.is_device_function(DISPATCHERS[key]):
            assert ".entry" in code, (key, sig, cc)


@pytest.mark.skipif(NVRTC_REASON is not None, reason=NVRTC_REASON or "")
@pytest.mark.parametrize("source", CUPY_SOURCES, ids=[s.key for s in CUPY_SOURCES])
def test_cupy_source_compiles(source):
    for cc in ck.ARCHS:
        ptx, log, lowered = ck.compile_nvrtc(source.code, source.options,
                                             source.name_expressions, cc,
                                             filename=f"{source.key}.cu")
        assert "warning" not in log.lower(), f"{source.key} compute_{cc[0]}{cc[1]}:\n{log}"
        assert f".target sm_{cc[0]}{cc[1]}" in ptx
        for name, mangled in lowered.items():
            assert re.search(rf"\.entry\s+{re.escape(mangled)}\b", ptx), (source.key, name)
        if not source.name_expressions:  # extern "C" kernels keep their names
            for k in ck.global_kernels(source.code):
                assert re.search(rf"\.entry\s+{k}\b", ptx), (source.key, k)
