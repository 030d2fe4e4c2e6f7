"""torchvision's CPU box_iou and nms on the boxes of bench_boxes_nms.py, for comparison.

Run with the separate torch interpreter (torch is never a dependency of minimaskrcnn)::

    $TORCH_VENV/bin/python benchmarks/torch_boxes_nms.py [--json]

Prints median milliseconds (one warm-up call, then ``REPEATS`` runs).
"""

import json
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from boxes_nms_data import IOU_SIZE, NMS_SIZES, NMS_THRESHOLD, REPEATS, make_boxes  # noqa: E402
from timing import time_ms  # noqa: E402


def median_ms(fn) -> float:
    return time_ms(fn, REPEATS)


def main():
    results = {}
    boxes, _ = make_boxes(IOU_SIZE, seed=0)
    b = torch.from_numpy(boxes)
    results[f"box_iou {IOU_SIZE}x{IOU_SIZE}"] = median_ms(lambda: torchvision.ops.box_iou(b, b))
    for n in NMS_SIZES:
        boxes, scores = make_boxes(n, seed=n)
        b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
        results[f"nms {n} @ {NMS_THRESHOLD}"] = median_ms(
            lambda b=b, s=s: torchvision.ops.nms(b, s, NMS_THRESHOLD)
        )
    if "--json" in sys.argv:
        print(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}))
    else:
        print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"{torch.get_num_threads()} threads")
        for name, ms in results.items():
            print(f"{name:22s} {ms:10.2f} ms")


if __name__ == "__main__":
    main()
