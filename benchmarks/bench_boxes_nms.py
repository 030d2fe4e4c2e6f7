"""Benchmark: box_iou (2000 x 2000) and nms (1,000 and 10,000 boxes at IoU 0.7) per tier.

Prints a Markdown table of median milliseconds per available tier (one warm-up call, which
also compiles, then ``REPEATS`` runs). The CUDA tier is timed only on a real GPU (the simulator
is a correctness tool), with NumPy inputs, so its times include the host-device copies; the
CuPy tier gets CuPy inputs. With ``--torch PYTHON`` the same boxes are also timed with
torchvision's CPU ops by running ``torch_boxes_nms.py`` under that interpreter::

    python benchmarks/bench_boxes_nms.py --torch $TORCH_VENV/bin/python
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from boxes_nms_data import IOU_SIZE, NMS_SIZES, NMS_THRESHOLD, REPEATS, make_boxes  # noqa: E402
from timing import time_ms, timed_tiers, torch_env  # noqa: E402

from minimaskrcnn.ops import box_iou, nms  # noqa: E402


def median_ms(fn, sync=None) -> float:
    return time_ms(fn, REPEATS, sync)


def run(tiers):
    """``{case: {tier: ms}}`` and the number of boxes each NMS case keeps."""
    table, kept = {}, {}
    cases = [(f"box_iou {IOU_SIZE}x{IOU_SIZE}", None)] + [
        (f"nms {n} @ {NMS_THRESHOLD}", n) for n in NMS_SIZES
    ]
    for case, n in cases:
        table[case] = {}
        if n is None:
            boxes, _ = make_boxes(IOU_SIZE, seed=0)
        else:
            boxes, scores = make_boxes(n, seed=n)
            kept[case] = len(nms(boxes, scores, NMS_THRESHOLD, tier="numpy"))
        for tier in tiers:
            sync = None
            b = boxes
            s = None if n is None else scores
            if tier == "cupy":
                import cupy  # noqa: PLC0415

                b = cupy.asarray(boxes)
                s = None if n is None else cupy.asarray(scores)
                sync = cupy.cuda.Device().synchronize
            elif tier == "cuda":
                from numba import cuda  # noqa: PLC0415

                sync = cuda.synchronize
            if n is None:
                table[case][tier] = median_ms(lambda b=b, t=tier: box_iou(b, b, tier=t), sync)
            else:
                table[case][tier] = median_ms(
                    lambda b=b, s=s, t=tier: nms(b, s, NMS_THRESHOLD, tier=t), sync
                )
    return table, kept


def torch_numbers(python: str) -> dict:
    script = Path(__file__).with_name("torch_boxes_nms.py")
    out = subprocess.run([python, str(script), "--json"], check=True, capture_output=True,
                         text=True, env=torch_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", metavar="PYTHON",
                        help="interpreter with torch + torchvision for a comparison column")
    args = parser.parse_args()

    tiers = timed_tiers()
    table, kept = run(tiers)
    columns = list(tiers)
    torch_info = None
    if args.torch:
        torch_info = torch_numbers(args.torch)
        for case, ms in torch_info["results"].items():
            table[case]["torchvision CPU"] = ms
        columns.append("torchvision CPU")

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, numba {numba.__version__} "
          f"({numba.get_num_threads()} threads)"
          + (f", torch threads {torch_info['torch_threads']}" if torch_info else "")
          + f"; median of {REPEATS} runs, milliseconds")
    print()
    print("| case | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for case, row in table.items():
        label = case + (f" (keeps {kept[case]})" if case in kept else "")
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
