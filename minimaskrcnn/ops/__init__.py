"""Detection ops, torchvision.ops-compatible, each with tiers side by side.

Every op lives in its own package (``nms/``, ``roi_align/``, ...) with ``reference.py`` (NumPy),
``numba_cpu.py``, ``numba_cuda.py`` and, where natural, ``cupy.py``; the package's
``__init__`` validates arguments and asks :mod:`minimaskrcnn.backend` for the tier.
"""
