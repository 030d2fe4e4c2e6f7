"""Helpers for the tests and the notebooks (the toolbox floor: it may import any package).

    gradcheck.py     numerical gradient checks in float64 (gradcheck, check_layer): every
                     hand-written backward is tested with them
    tiers.py         tier_params: one pytest param per kernel tier, skipped with the backend's
                     reason where the tier cannot run
    roi_cases.py     random RoI test inputs with the awkward cases (outside, empty, inverted)
    tiny.py          a tiny two-class Mask R-CNN and a two-image batch for whole-network tests
    fake_device.py   a stand-in GPU: CuPy-like arrays that refuse implicit host copies and count
                     every host synchronisation (the device path tested without a GPU)
    cuda_kernels.py  every CUDA kernel compiled for real GPUs without one (Numba's PTX, NVRTC)

Property tests draw their inputs with hypothesis directly in ``tests/`` (``@given`` with
``hypothesis.strategies``); no strategies live here.
"""

from minimaskrcnn.testing.gradcheck import GradcheckError, check_layer, gradcheck

__all__ = ["GradcheckError", "check_layer", "gradcheck"]
