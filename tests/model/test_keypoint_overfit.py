"""Overfitting a few synthetic keypoint images: Keypoint R-CNN (masks and keypoints trained
together, paper section 5) must learn to find every triangle and place its three keypoints well
enough for a COCO keypoint AP (OKS, pycocotools, sigma 0.1) above 0.8 on the training images.

Two 80x80 images, three triangles, 300 SGD steps. The learning rate is a quarter of the mask
overfit test's: the spatial softmax loss is normalised by the number of visible keypoints (a
handful here), not by pixels, so its gradients are far larger than the mask loss's; at 0.01 or
0.02 this tiny keypoint head's ReLUs all died within 75 steps (loss stuck at log(56^2) = 8.05).
With 0.005, a 50-step warm-up and 32 channels the loss falls from 8.4 to ~0.4 and OKS AP is 1.0
(about 22 s of CPU time on one core; 61 s of wall time on a shared, loaded 2-core machine).
"""

import numpy as np
import pytest

from minimaskrcnn.config import ModelConfig
from minimaskrcnn.data import standardize
from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.keypoint_shapes import make_keypoint_shapes
from minimaskrcnn.evaluation import evaluate_coco
from minimaskrcnn.model import build_model
from minimaskrcnn.training.optim import SGD

CFG = ModelConfig(
    num_classes=1, stem_channels=8, stage_channels=(8, 16, 16, 16), fpn_channels=16,
    rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=200, rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32,
    representation_size=32, mask_head_channels=8, detections_per_img=20,
    num_keypoints=3, keypoint_head_convs=2, keypoint_head_channels=32,
)
ITERATIONS = 300
LR = 0.005
WARMUP = 50
DECAY_AT = 225


@pytest.mark.slow
def test_tiny_keypoint_model_overfits(single_thread):
    pictures, coco = make_keypoint_shapes(2, seed=5, image_size=80, max_shapes=2, min_size=32,
                                          max_size=44)
    ds = CocoDataset(coco, images=pictures)
    assert len(coco["annotations"]) == 3
    images, targets = [], []
    for i in range(len(ds)):
        image, t = ds[i]
        images.append(standardize(image))
        targets.append(t)
    model = build_model(CFG, np.random.default_rng(0))
    opt = SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.0)
    rng = np.random.default_rng(1)
    history = []
    for it in range(ITERATIONS):
        opt.lr = LR * min(1.0, (it + 1) / WARMUP) * (0.1 if it >= DECAY_AT else 1.0)
        model.zero_grad()
        _, losses, cache = model.forward_train(images, targets, rng)
        model.backward(None, cache)
        opt.step()
        history.append(losses["loss_keypoint"])
    assert np.all(np.isfinite(history))
    assert np.mean(history[-10:]) < history[0] / 3, (history[0], history[-10:])
    results = {int(ds.image_ids[i]): det for i, det in enumerate(model.predict(images))}
    metrics = evaluate_coco(ds.coco, results, ds.category_ids, (20,),
                            iou_types=("keypoints", "bbox"), keypoint_sigmas=ds.keypoint_sigmas)
    assert metrics["keypoints"]["AP"] > 0.8, metrics
