"""Chapter 12 (keypoints), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/12_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import contextlib
import io

import numpy as np
from pycocotools.cocoeval import COCOeval

from minimaskrcnn.data.keypoint_shapes import keypoint_shapes_dataset
from minimaskrcnn.data.transforms import flip_keypoints
from minimaskrcnn.ops import keypoints_to_heatmap

ds = keypoint_shapes_dataset(2, seed=1)
sigmas = np.asarray(ds.keypoint_sigmas)

# 1. OKS by hand against pycocotools' computeOks. A "detection": the ground truth's keypoints
# moved by (1.5, -2) pixels.
ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=ds.image_ids[0]))[0]
gt = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
det = gt.copy()
det[:, :2] += (1.5, -2.0)
d2 = ((det[:, :2] - gt[:, :2]) ** 2).sum(1)
e = d2 / (2 * ann["area"] * (2 * sigmas) ** 2)
oks_by_hand = float(np.mean(np.exp(-e[gt[:, 2] > 0])))
with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
    dt = ds.coco.loadRes([{"image_id": ds.image_ids[0], "category_id": 1, "score": 1.0,
                           "keypoints": det.reshape(-1).tolist()}])
    ev = COCOeval(ds.coco, dt, iouType="keypoints")
    ev.params.kpt_oks_sigmas = sigmas
    ev.params.imgIds = [ds.image_ids[0]]
    ev.evaluate()  # fills ev.ious via computeOks
oks_coco = ev.ious[(ds.image_ids[0], 1)]
gt_index = [a["id"] for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=ds.image_ids[0]))].index(
    ann["id"])
assert abs(float(oks_coco[0, gt_index]) - oks_by_hand) < 1e-9
print(f"1. OKS by hand {oks_by_hand:.6f} = pycocotools {float(oks_coco[0, gt_index]):.6f}")

# 2. The ground-truth boxes are always among the training RoIs (torchvision adds them to the
# proposals), and a box computed from the annotation can have a keypoint exactly on its right or
# bottom edge. floor((x2 - x1) * m / (x2 - x1)) = m would put it one cell past the grid: the
# edge rule keeps it, in cell m - 1, instead of throwing away a labelled keypoint.
box = np.array([[10, 10, 20, 20]], np.float32)
on_edge = np.array([[[20, 20, 2]]], np.float32)
cells, valid = keypoints_to_heatmap(on_edge, box, 56)
assert valid.all() and cells[0, 0] == 55 * 56 + 55
print("2. a keypoint on the right/bottom edge of its box lands in cell (55, 55), valid")

# 3. Flips swap handedness; swapping the pair restores the convention.
_, target = ds[0]
kp = target["keypoints"][:1]


def handedness(k):
    mid = (k[0, 1, :2] + k[0, 2, :2]) / 2
    u, d = k[0, 0, :2] - mid, k[0, 1, :2] - mid
    return np.sign(u[0] * d[1] - u[1] * d[0])  # -1: left_base on the left (image axes)


assert handedness(kp) == -1
assert handedness(flip_keypoints(kp, 96, 0)) == 1  # mirrored, not swapped: convention broken
assert handedness(flip_keypoints(kp, 96, 0, ds.keypoint_flip_pairs)) == -1
print("3. a flip without the swap breaks left/right; with the swap (pairs",
      ds.keypoint_flip_pairs, ") it holds")
