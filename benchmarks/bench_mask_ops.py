"""Benchmark: the mask-head ops per tier at nuclei-mini sizes (see mask_ops_data.py).

Prints a Markdown table of the best of ``REPEATS`` runs in milliseconds per available tier, after
one warm-up call (which also compiles). The CUDA tier is timed only on a real GPU (the simulator is a
correctness tool), with NumPy inputs, so its times include the host-device copies. With
``--torch PYTHON`` torchvision's CPU functions are timed on the same inputs by running
``torch_mask_ops.py`` under that interpreter::

    python benchmarks/bench_mask_ops.py --torch $TORCH_VENV/bin/python
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
from mask_ops_data import REPEATS, M, loss_inputs, paste_inputs, target_inputs  # noqa: E402
from timing import time_ms, timed_tiers, torch_env  # noqa: E402

from minimaskrcnn.ops.mask_ops import (  # noqa: E402
    mask_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
)

CASES = {
    "targets": "project_masks_on_boxes: 64 RoIs, 30 masks 256x256, M=28",
    "loss": "mask_loss sigmoid (value + grad): 256 RoIs, K=1, M=28",
    "paste": "paste_masks_in_image: 100 masks 28x28 into 520x696",
}


def best_ms(fn, sync=None) -> float:
    return time_ms(fn, REPEATS, sync, reduce="min")  # the shared machine makes medians noisy


def run(tiers):
    masks, boxes, idx = target_inputs()
    logits, labels, targets = loss_inputs()
    pm, pb, shape = paste_inputs()
    calls = {
        "targets": lambda t: project_masks_on_boxes(masks, boxes, idx, M, tier=t),
        "loss": lambda t: mask_loss(logits, labels, targets, tier=t),
        "paste": lambda t: paste_masks_in_image(pm, pb, shape, tier=t),
    }
    table = {case: {} for case in CASES}
    for tier in tiers:
        sync = None
        if tier == "cuda":
            from numba import cuda  # noqa: PLC0415

            sync = cuda.synchronize
        for case, call in calls.items():
            table[case][tier] = best_ms(lambda c=call, t=tier: c(t), sync)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", metavar="PYTHON", help="interpreter with torch+torchvision")
    args = parser.parse_args()
    tiers = timed_tiers(exclude=("cupy",))
    table = run(tiers)
    cols = list(tiers)
    if args.torch:
        out = subprocess.run([args.torch, str(Path(__file__).parent / "torch_mask_ops.py"),
                              "--json"], capture_output=True, text=True, check=True,
                             env=torch_env())
        for case, ms in json.loads(out.stdout).items():
            table[case]["torchvision"] = ms
        cols.append("torchvision")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numba {numba.__version__}, NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")
    print()
    print("| case | " + " | ".join(f"{c} (ms)" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for case, label in CASES.items():
        print(f"| {label} | " + " | ".join(f"{table[case][c]:.2f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
