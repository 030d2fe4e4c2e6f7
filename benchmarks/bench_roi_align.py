"""Benchmark: roi_align forward and backward per tier on realistic loads (float32).

Cases (``roi_align_data.CASES``): features ``(2, 64, 64, 64)`` with 512 RoIs, 7x7; and
``(1, 256, 200, 272)`` with 1,000 RoIs, 7x7 and 14x14; sampling_ratio 2, aligned False,
spatial_scale 1/4. Prints a Markdown table of median milliseconds (one warm-up call, which also
compiles, then ``REPEATS`` runs).

* The NumPy reference is timed on the first ``REFERENCE_ROIS`` RoIs only and scaled linearly
  to the full count (its cost is a Python loop per RoI, bin and sample); the table marks it.
* The CUDA tier is timed only on a real GPU (the simulator is a correctness tool), with NumPy
  inputs, so its times include host-device copies; the CuPy tier gets CuPy inputs.
* With ``--torch PYTHON`` the same inputs are timed with torchvision's CPU ``roi_align`` by
  running ``torch_roi_align.py`` under that interpreter (2 threads), and the last column gives
  torchvision's time divided by the Numba CPU tier's::

    python benchmarks/bench_roi_align.py --torch $TORCH_VENV/bin/python
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numba

sys.path.insert(0, str(Path(__file__).parent))
from roi_align_data import ALIGNED, CASES, REPEATS, SAMPLING_RATIO, make_inputs  # noqa: E402
from timing import time_ms, timed_tiers, torch_env  # noqa: E402

from minimaskrcnn.ops import roi_align, roi_align_backward  # noqa: E402

REFERENCE_ROIS = 16


def median_ms(fn, sync=None, repeats=REPEATS) -> float:
    return time_ms(fn, repeats, sync)


def time_case(tier, shape, num_rois, size, stride):
    """``(forward ms, backward ms)`` of one tier on one case."""
    x, rois, grad = make_inputs(shape, num_rois, size, stride)
    scale = 1.0 / stride
    factor, repeats, sync = 1.0, REPEATS, None
    if tier == "numpy":
        rois, grad = rois[:REFERENCE_ROIS], grad[:REFERENCE_ROIS]
        factor, repeats = num_rois / REFERENCE_ROIS, 1
    if tier == "cupy":
        import cupy  # noqa: PLC0415

        x, rois, grad = cupy.asarray(x), cupy.asarray(rois), cupy.asarray(grad)
        sync = cupy.cuda.Device().synchronize
    args = (size, scale, SAMPLING_RATIO, ALIGNED)
    fwd = median_ms(lambda: roi_align(x, rois, *args, tier=tier), sync, repeats)
    bwd = median_ms(lambda: roi_align_backward(grad, rois, shape, *args, tier=tier), sync, repeats)
    return fwd * factor, bwd * factor


def torch_times(python):
    script = Path(__file__).with_name("torch_roi_align.py")
    out = subprocess.run([python, str(script)], check=True, capture_output=True, text=True,
                         env=torch_env())
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", metavar="PYTHON", help="interpreter with torch/torchvision")
    args = parser.parse_args()
    tiers = timed_tiers()
    results = {name: {t: time_case(t, shape, n, size, stride) for t in tiers}
               for name, shape, n, size, stride in CASES}
    torch = torch_times(args.torch) if args.torch else None

    cols = ["case", "pass"] + [f"{t} ms" for t in tiers]
    if torch:
        cols += ["torchvision CPU ms", "torchvision / numba"]
    print(f"roi_align, float32, sampling_ratio={SAMPLING_RATIO}, aligned={ALIGNED}; median of "
          f"{REPEATS} runs; numpy reference timed on {REFERENCE_ROIS} RoIs and scaled")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numba threads {numba.get_num_threads()}"
          + (f"; torch {torch['torch']} with {torch['threads']} threads" if torch else ""))
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(["---"] * len(cols)) + "|")
    for name, per_tier in results.items():
        for k, label in enumerate(("forward", "backward")):
            row = [name, label] + [f"{per_tier[t][k]:.1f}" for t in tiers]
            if torch:
                tv = torch["results"][name]["fwd" if k == 0 else "bwd"]
                ratio = tv / per_tier["numba"][k] if "numba" in per_tier else float("nan")
                row += [f"{tv:.1f}", f"{ratio:.1f}x"]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
