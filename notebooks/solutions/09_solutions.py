"""Chapter 9 (kernels on the GPU), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/09_solutions.py`` (``tests/test_solutions.py`` runs it too).
Each ``exercise_k()`` runs the experiment and returns the answer that ``check("09.k", answer)``
in the chapter compares a learner's with.
"""

import json
import math
import os
import subprocess
import sys

from minimaskrcnn import backend
from minimaskrcnn.ops._cuda_common import ROI_MAX_BLOCKS, launch_1d

CHANNELS, BINS = 64, 7 * 7  # nuclei-mini's FPN width, the box head's 7 x 7 RoIAlign


def gpu_launch(n):
    """``launch_1d(n, ROI_MAX_BLOCKS)`` as a GPU gets it (under the simulator ``launch_1d``
    answers 2 blocks of 32 threads whatever ``n``: the same rule is then computed here)."""
    if backend.cuda_simulator_enabled():
        return max(1, min(math.ceil(n / 256), ROI_MAX_BLOCKS)), 256
    return launch_1d(n, ROI_MAX_BLOCKS)


def exercise_1():
    """RoIAlign's forward kernel on a GPU is launched with ``launch_1d(R * C * 7 * 7,
    ROI_MAX_BLOCKS)`` (one output element per thread, grid-stride loop). From how many RoIs R
    (C = 64 channels) does some thread compute more than one output element?

    256 threads a block, at most ROI_MAX_BLOCKS = 4096 blocks: 1,048,576 threads at most. R RoIs
    have R * 3136 outputs: 334 RoIs (1,047,424 outputs, 4092 blocks) still fit one element a
    thread; from 335 (1,050,560 outputs) the grid is capped at 4096 blocks and the grid-stride
    loop gives the first threads a second element. nuclei-mini's box head sees 256 sampled RoIs
    per training image, so a batch of two images already runs strided.
    """
    def busiest(r):
        n = r * CHANNELS * BINS
        blocks, threads = gpu_launch(n)
        return math.ceil(n / (blocks * threads))

    r = 1
    while busiest(r) == 1:
        r += 1
    assert gpu_launch(334 * CHANNELS * BINS) == (4092, 256)
    assert gpu_launch(r * CHANNELS * BINS) == (ROI_MAX_BLOCKS, 256) and busiest(r) == 2
    return r


SIMULATED_COMPARISON = r"""
import json
import numpy as np
import minimaskrcnn.ops as ops
from minimaskrcnn import backend
assert backend.cuda_simulator_enabled()
rows = []
for seed in (0, 1):
    rng = np.random.default_rng(seed)
    feat = rng.normal(size=(1, 1, 8, 8)).astype(np.float32)
    xy = rng.uniform(0, 16, (4, 2))
    rois = np.concatenate([np.zeros((4, 1)), xy, xy + rng.uniform(8, 16, (4, 2))], 1).astype(np.float32)
    grad = rng.normal(size=(4, 1, 7, 7)).astype(np.float32)
    fwd = [ops.roi_align(feat, rois, 7, 0.25, 2, tier=t) for t in ("numpy", "cuda")]
    bwd = [ops.roi_align_backward(grad, rois, feat.shape, 7, 0.25, 2, tier="numpy")]
    bwd += [ops.roi_align_backward(grad, rois, feat.shape, 7, 0.25, 2, tier="cuda", deterministic=d)
            for d in (False, True)]
    for got, ref in ((fwd[1], fwd[0]), (bwd[1], bwd[0]), (bwd[2], bwd[0])):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)   # right to float rounding
    rows.append([bool(np.array_equal(fwd[1], fwd[0])), bool(np.array_equal(bwd[1], bwd[0])),
                 bool(np.array_equal(bwd[2], bwd[0]))])
print(json.dumps(rows))
"""


def exercise_2():
    """On the simulator, which of RoIAlign's CUDA kernels give the NumPy tier's float32 result
    bit for bit: the forward, the backward with atomics, the deterministic backward?

    The forward: each output is one thread's sum of its bin's samples, the same expression in
    the same order as the reference, so the bits agree. Both backwards agree only to rounding:
    a gradient cell sums the contributions of several RoIs and bins, and float32 addition is
    not associative. The atomic kernel adds them in thread order, the gather kernel in its own
    fixed order (cell by cell, RoI by RoI), neither in the reference's order (RoI, bin, sample
    scattered to four corners). Deterministic means the same bits on every run, not the
    reference's bits. (On a GPU even the forward may differ in the last bit: the compiler fuses
    multiply-adds, which the simulator, running Python, never does.)

    Runs in a fresh interpreter: the simulator must be switched on before Numba is imported.
    """
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    out = subprocess.run([sys.executable, "-c", SIMULATED_COMPARISON], env=env, check=True,
                         capture_output=True, text=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    assert all(row == rows[0] for row in rows), rows  # the same on two random inputs
    assert rows[0] == [True, False, False]
    return rows[0]


def main():
    print("1. RoIs from which a RoIAlign forward thread computes two outputs:", exercise_1())
    print("2. bit for bit on the simulator [forward, atomic backward, deterministic backward]:",
          exercise_2())


if __name__ == "__main__":
    main()
