"""torchvision's CPU mask-head functions on the inputs of bench_mask_ops.py, for comparison.

Run with the separate torch interpreter (torch is never a dependency of minimaskrcnn)::

    $TORCH_VENV/bin/python benchmarks/torch_mask_ops.py [--json]

``roi_heads.project_masks_on_boxes``, ``F.binary_cross_entropy_with_logits`` forward + backward
on the label channel (what ``maskrcnn_loss`` does), ``roi_heads.paste_masks_in_image``.
Prints the best of ``REPEATS`` runs in milliseconds, after one warm-up call.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads

sys.path.insert(0, str(Path(__file__).parent))
from mask_ops_data import REPEATS, M, loss_inputs, paste_inputs, target_inputs  # noqa: E402
from timing import time_ms  # noqa: E402


def best_ms(fn) -> float:
    return time_ms(fn, REPEATS, reduce="min")  # the shared machine makes medians noisy


def main():
    results = {}
    masks, boxes, idx = (torch.from_numpy(a) for a in target_inputs())
    results["targets"] = best_ms(lambda: roi_heads.project_masks_on_boxes(masks, boxes, idx, M))

    logits, labels, targets = (torch.from_numpy(a) for a in loss_inputs())

    def loss_step():
        x = logits.clone().requires_grad_()
        loss = F.binary_cross_entropy_with_logits(x[torch.arange(len(labels)), labels - 1],
                                                  targets)
        loss.backward()

    results["loss"] = best_ms(loss_step)
    pm, pb, shape = paste_inputs()
    pm, pb = torch.from_numpy(pm)[:, None], torch.from_numpy(pb)
    results["paste"] = best_ms(lambda: roi_heads.paste_masks_in_image(pm, pb, shape, padding=1))
    if "--json" in sys.argv:
        print(json.dumps(results))
    else:
        for k, v in results.items():
            print(f"{k}: {v:.2f} ms")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
