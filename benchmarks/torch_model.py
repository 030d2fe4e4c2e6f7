"""PyTorch side of benchmarks/bench_model.py: torchvision's MaskRCNN built to nuclei-mini, timed
on the same batch and images (run with the separate torch venv; never imported by the package).

    $TORCH_VENV/bin/python benchmarks/torch_model.py DATA.npz [--threads 1] [--iters 5] [--max-dets 500]

DATA.npz (written by bench_model.py --torch): train images/boxes/labels/masks of one batch and
the val images. The model is assembled to docs/nuclei-mini.md (ResNet-GN stem + four one-block
stages, FPN 64 with LastLevelMaxPool, one anchor size per level, the preset's RPN/RoI numbers, no
resizing, zero mean / unit std since the images are standardised already). Prints one JSON
object: parameter count, median training seconds per iteration (forward + backward), median
inference seconds per image, detections per image.
"""

import argparse
import json
import statistics
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


def gn(c):
    return nn.GroupNorm(8, c)


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), gn(32), nn.ReLU())
        layers, cin = [], 32
        for cout in (32, 64, 128, 256):
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), gn(cout))
            layers.append(BasicBlock(cin, cout, 2, down, norm_layer=gn))
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.fpn = FeaturePyramidNetwork([32, 64, 128, 256], 64, extra_blocks=LastLevelMaxPool())
        self.out_channels = 64
        for m in [self.stem, self.layers]:
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stem(x)
        feats = OrderedDict()
        for i, layer in enumerate(self.layers):
            x = layer(x)
            feats[str(i)] = x
        return self.fpn(feats)


def build(max_dets):
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    names = ["0", "1", "2", "3"]
    model = MaskRCNN(
        Body(), num_classes=None, rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(names, 7, 2), mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
        box_head=TwoMLPHead(64 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, 2),
        mask_head=MaskRCNNHeads(64, [64, 64, 64, 64], 1), mask_predictor=MaskRCNNPredictor(64, 64, 2),
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], min_size=256, max_size=4096,
        rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_train=1000,
        rpn_post_nms_top_n_test=1000, box_detections_per_img=max_dets, box_batch_size_per_image=256,
    )
    model.transform.resize = lambda image, target: (image, target)  # native resolution
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--max-dets", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the val images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = np.load(args.data)
    n_train = int(d["n_train"])
    images = [torch.from_numpy(d[f"image{i}"]) for i in range(n_train)]
    targets = [{"boxes": torch.from_numpy(d[f"boxes{i}"]), "labels": torch.from_numpy(d[f"labels{i}"]),
                "masks": torch.from_numpy(d[f"masks{i}"])} for i in range(n_train)]
    model = build(args.max_dets)
    params = sum(p.numel() for p in model.parameters())
    model.train()
    times = []
    for it in range(args.iters + 2):
        t0 = time.perf_counter()
        losses = model(images, targets)
        sum(losses.values()).backward()
        if it >= 2:
            times.append(time.perf_counter() - t0)
        model.zero_grad()
    model.eval()
    val = [torch.from_numpy(d[f"val{i}"]) for i in range(int(d["n_val"]))]
    inf, dets = [], []
    with torch.no_grad():
        model([val[0]])
        for rep in range(args.repeats):
            for im in val:
                t0 = time.perf_counter()
                out = model([im])
                inf.append(time.perf_counter() - t0)
                if rep == 0:
                    dets.append(int(out[0]["boxes"].shape[0]))
    print(json.dumps({"params": params, "train_s": statistics.median(times),
                      "infer_s": statistics.median(inf), "dets": dets, "threads": args.threads}))


if __name__ == "__main__":
    main()
