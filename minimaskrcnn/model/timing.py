"""Per-stage wall-clock timing of the model (used by ``benchmarks/bench_model.py``).

``forward_train``/``predict`` take an optional ``timer``; each stage runs inside
``with timer("stage"):``. :class:`NullTimer` (the default) does nothing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class StageTimer:
    """Wall-clock seconds per named stage, summed over calls: ``timer.seconds[name]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class NullTimer:
    """A timer that records nothing."""

    @contextmanager
    def __call__(self, name: str):
        yield self
