"""Timing helpers shared by the benchmark scripts (ours and the torch_*.py side scripts).

This module must stay importable by the separate torch interpreter, which does not have
minimaskrcnn installed: it imports only the standard library at top level (``timed_tiers``
imports ``minimaskrcnn.backend`` when called).
"""

import os
import statistics
import sys
import time

REDUCERS = {"median": statistics.median, "min": min}


def time_ms(fn, repeats, sync=None, reduce="median", warmup=1, clock=time.perf_counter) -> float:
    """Milliseconds per call of ``fn()``: ``warmup`` untimed calls (compilation, caches), then
    ``repeats`` timed calls reduced with ``reduce`` ("median", or "min" = best of, which is less
    noisy on a shared machine). ``sync`` (e.g. ``cuda.synchronize``) is called after every call,
    inside the timed region, so asynchronous GPU work is counted. Raises ValueError for
    ``repeats < 1`` or an unknown ``reduce``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if reduce not in REDUCERS:
        raise ValueError(f"reduce must be one of {sorted(REDUCERS)}, got {reduce!r}")
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        if sync:
            sync()
        times.append(clock() - t0)
    return 1e3 * REDUCERS[reduce](times)


def timed_tiers(exclude=()):
    """The available minimaskrcnn tiers worth timing: all but those in ``exclude`` and the CUDA
    tier under the simulator (a correctness tool, not a timing target)."""
    from minimaskrcnn import backend  # noqa: PLC0415  (lazy: torch scripts lack the package)

    return [t for t in backend.available_tiers()
            if t not in exclude and not (t == "cuda" and backend.cuda_simulator_enabled())]


SGEMM_SNIPPET = """
import time, numpy as np
n = {n}
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = a.T.copy()
a @ b
times = []
for _ in range(5):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
print(2 * n ** 3 / min(times) / 1e9)
"""


def sgemm_gflops(threads: int, n: int = 2048) -> float:
    """The machine's float32 matrix-product rate, GFLOP/s: best of 5 ``(n x n) @ (n x n)``
    products by NumPy's BLAS with ``threads`` threads, in a fresh interpreter (the BLAS reads
    its thread count at load). The ceiling a model's products can reach on these cores: the
    floor of an iteration is its FLOPs over this rate."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", SGEMM_SNIPPET.format(n=n)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def torch_env() -> dict:
    """The environment for a torch side script: ours, less the ``OMP_WAIT_POLICY=PASSIVE`` that
    importing minimaskrcnn set (torch's OpenMP threads keep their default, spinning, policy;
    passive ones made torchvision's inference ~15 % slower)."""
    env = dict(os.environ)
    package = sys.modules.get("minimaskrcnn")
    if package is not None and getattr(package, "OMP_WAIT_POLICY_SET", False):
        env.pop("OMP_WAIT_POLICY", None)
    return env
