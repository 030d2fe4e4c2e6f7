"""Timing helpers shared by the benchmark scripts (ours and the torch_*.py side scripts).

This module must stay importable by the separate torch interpreter, which does not have
minimaskrcnn installed: it imports only the standard library at top level (``timed_tiers``
imports ``minimaskrcnn.backend`` when called).
"""

import statistics
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
