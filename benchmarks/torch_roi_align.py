"""torchvision's CPU roi_align on the inputs of bench_roi_align.py; prints JSON {case: {fwd, bwd}}.

Run with the torch venv (torch is never imported by the package or its tests)::

    $TORCH_VENV/bin/python benchmarks/torch_roi_align.py

Two intra-op threads (``torch.set_num_threads(2)``), float32, median milliseconds of
``REPEATS`` runs after one warm-up. Backward is timed alone: ``torch.autograd.grad`` of the
output with the benchmark's ``grad_output``.
"""

import json
import sys
from pathlib import Path

import torch
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).parent))
from roi_align_data import ALIGNED, CASES, REPEATS, SAMPLING_RATIO, make_inputs  # noqa: E402
from timing import time_ms  # noqa: E402


def median_ms(fn):
    return time_ms(fn, REPEATS)


def main():
    torch.set_num_threads(2)
    results = {}
    for name, shape, num_rois, size, stride in CASES:
        x, rois, grad = (torch.from_numpy(a) for a in make_inputs(shape, num_rois, size, stride))
        x.requires_grad_(True)
        args = (size, 1.0 / stride, SAMPLING_RATIO, ALIGNED)
        with torch.no_grad():
            fwd = median_ms(lambda: roi_align(x, rois, *args))  # noqa: B023
        out = roi_align(x, rois, *args)
        bwd = median_ms(lambda: torch.autograd.grad(out, x, grad, retain_graph=True))  # noqa: B023
        results[name] = {"fwd": fwd, "bwd": bwd}
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
               "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
