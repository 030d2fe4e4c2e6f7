"""One-off check of the keypoint ops against torchvision's Keypoint R-CNN functions.

Runs in the torch venv (torch is never a dependency of the project): it imports
``minimaskrcnn`` from the checkout (``PYTHONPATH``) and torchvision's
``models.detection.roi_heads`` functions, feeds both the same random RoIs, keypoints, logits
and heatmaps, and prints how they compare:

    PYTHONPATH=. $TORCH_VENV/bin/python benchmarks/torch_keypoints_check.py

(``minimaskrcnn``'s own dependencies -- NumPy, Numba, pycocotools -- must be importable from the
torch venv too: ``$TORCH_VENV/bin/pip install numba pycocotools threadpoolctl tqdm``.)
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection import roi_heads as tv

from minimaskrcnn.ops import keypoints as ours


def main():
    rng = np.random.default_rng(0)
    R, K, m = 64, 5, 56
    xy = rng.uniform(0, 200, (R, 2))
    wh = rng.uniform(4, 120, (R, 2))
    rois = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    kp = np.empty((R, K, 3), np.float32)
    # mostly inside the RoI, some outside (invalid)
    kp[..., 0] = rois[:, :1] + rng.uniform(-0.15, 1.15, (R, K)) * wh[:, :1]
    kp[..., 1] = rois[:, 1:2] + rng.uniform(-0.15, 1.15, (R, K)) * wh[:, 1:]
    kp[..., 2] = rng.integers(0, 3, (R, K))
    kp[:4, 0, 0] = rois[:4, 2]  # on the right edge: torchvision keeps them
    kp[:4, 0, 1] = rois[:4, 3]
    kp[:4, 0, 2] = 2
    t_tv, v_tv = tv.keypoints_to_heatmap(torch.from_numpy(kp), torch.from_numpy(rois), m)
    t, v = ours.keypoints_to_heatmap(kp, rois, m, tier="numpy")
    v_tv = v_tv.numpy().astype(bool)
    print(f"keypoints_to_heatmap: valid equal {np.array_equal(v, v_tv)} "
          f"({int(v.sum())} valid of {v.size}); targets equal where valid "
          f"{np.array_equal(t[v], t_tv.numpy()[v_tv])}")

    logits = rng.standard_normal((R, K, m, m)).astype(np.float32)
    loss_tv = tv.keypointrcnn_loss(torch.from_numpy(logits), [torch.from_numpy(rois)],
                                   [torch.from_numpy(kp)], [torch.arange(R)])
    loss, _ = ours.keypoint_loss(logits, t, v, tier="numpy")
    print(f"keypoint_loss: ours {float(loss):.7f}, torchvision {float(loss_tv):.7f}, "
          f"relative difference {abs(float(loss) - float(loss_tv)) / float(loss_tv):.1e}")

    maps = rng.standard_normal((R, K, m, m)).astype(np.float32)
    k_tv, s_tv = tv.heatmaps_to_keypoints(torch.from_numpy(maps), torch.from_numpy(rois))
    k, s = ours.heatmaps_to_keypoints(maps, rois, tier="numpy")
    dk = np.abs(k[..., :2] - k_tv.numpy()[..., :2])
    ds = np.abs(s - s_tv.numpy())
    same_cell = (dk.max(axis=-1) < 1e-3).mean()
    print(f"heatmaps_to_keypoints: keypoints equal to 1e-3 px for {100 * same_cell:.2f}% of "
          f"{R * K}, max |dx, dy| {dk.max():.2e} px; scores max |d| {ds.max():.2e}")


if __name__ == "__main__":
    main()
