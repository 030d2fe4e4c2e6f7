"""How many ground-truth boxes have an anchor at IoU >= 0.5 and >= 0.7: anchors checked
against the data.

For each box and each anchor shape (size, aspect ratio) of each level, the best anchor of that
shape is the one whose centre is the grid point nearest the box's centre on each axis (for two
axis-aligned boxes of fixed shapes the IoU only falls as their centres move apart along either
axis), so the best IoU over all anchors is a max over shapes, exact and cheap. The anchors are
``minimaskrcnn.ops.AnchorGenerator``'s (torchvision's: centres on multiples of the stride, the
cell anchors rounded), on the FPN strides 4, 8, 16, 32, 64, of the image resized by ``--scale``
(``ModelConfig.image_scale``; boxes scaled with it).

    python benchmarks/anchor_coverage.py dsb2018/train.json                 # the presets' anchors
    python benchmarks/anchor_coverage.py dsb2018/train.json --scale 2 \\
        --sizes 16,32,64,128,256 --sizes 16/20/25,32/40/50,64/80/101,128/161/203,256/322/406
                                                                            # compare candidates

Prints one row per (scale, sizes, ratios): boxes, the share at IoU >= 0.5 and >= 0.7, and the
median best IoU.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from minimaskrcnn.ops import AnchorGenerator

STRIDES = (4, 8, 16, 32, 64)


def best_anchor_iou(boxes: np.ndarray, image_hw: tuple[int, int], sizes, ratios,
                    strides=STRIDES) -> np.ndarray:
    """``(G,)`` best IoU of each ``(G, 4)`` box ``[x1, y1, x2, y2]`` with any anchor of an image
    of ``image_hw`` (pixels); ``sizes[l]`` the size (or a tuple of sizes) of level ``l`` on
    ``strides[l]``."""
    sizes = tuple(s if isinstance(s, tuple) else (s,) for s in sizes)
    gen = AnchorGenerator(sizes, tuple(tuple(ratios) for _ in sizes))
    h, w = image_hw
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    best = np.zeros(len(boxes))
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for cell, stride in zip(gen.cell_anchors, strides, strict=False):
        nx, ny = -(-w // stride), -(-h // stride)  # cells on the level (ceil)
        gx = np.clip(np.round(cx / stride), 0, nx - 1) * stride
        gy = np.clip(np.round(cy / stride), 0, ny - 1) * stride
        for a in cell.astype(np.float64):
            ax1, ay1, ax2, ay2 = gx + a[0], gy + a[1], gx + a[2], gy + a[3]
            iw = np.clip(np.minimum(ax2, boxes[:, 2]) - np.maximum(ax1, boxes[:, 0]), 0, None)
            ih = np.clip(np.minimum(ay2, boxes[:, 3]) - np.maximum(ay1, boxes[:, 1]), 0, None)
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + area_b - inter
            best = np.maximum(best, inter / union)
    return best


def coverage(coco: dict, sizes, ratios, scale: float) -> dict:
    images = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, bw, bh = ann["bbox"]
        by_image.setdefault(ann["image_id"], []).append([x, y, x + bw, y + bh])
    ious = []
    for image_id, boxes in by_image.items():
        h, w = images[image_id]
        b = np.asarray(boxes, np.float64) * scale
        ious.append(best_anchor_iou(b, (int(h * scale), int(w * scale)), sizes, ratios))
    ious = np.concatenate(ious)
    return {"boxes": int(ious.size), "iou>=0.5": float((ious >= 0.5).mean()),
            "iou>=0.7": float((ious >= 0.7).mean()), "median": float(np.median(ious))}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _sizes(text: str) -> tuple:
    """``8,16,32`` (one size per level) or ``8/10/13,16/20/25,...`` (several per level)."""
    return tuple(tuple(float(v) for v in level.split("/")) if "/" in level else float(level)
                 for level in text.split(","))


def _fmt(sizes) -> str:
    return ", ".join("/".join(f"{v:g}" for v in s) if isinstance(s, tuple) else f"{s:g}"
                     for s in sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("coco_json")
    ap.add_argument("--sizes", action="append", type=_sizes,
                    help="anchor sizes per level P2..P6, comma-separated; several sizes of one "
                         "level joined by '/' (repeatable)")
    ap.add_argument("--ratios", default="0.5,1,2", type=_floats, help="aspect ratios h / w")
    ap.add_argument("--scale", action="append", type=float, help="image_scale (repeatable)")
    args = ap.parse_args()
    with open(args.coco_json, encoding="utf-8") as f:
        coco = json.load(f)
    print(f"{args.coco_json}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    print("| scale | anchor sizes (P2..P6) | ratios | boxes | IoU >= 0.5 | IoU >= 0.7 | median best IoU |")
    print("|---|---|---|---|---|---|---|")
    for scale in args.scale or [1.0]:
        for sizes in args.sizes or [(8.0, 16.0, 32.0, 64.0, 128.0)]:
            r = coverage(coco, sizes, args.ratios, scale)
            print(f"| {scale:g} | {_fmt(sizes)} | "
                  f"{', '.join(f'{v:g}' for v in args.ratios)} | {r['boxes']} | "
                  f"{100 * r['iou>=0.5']:.1f} % | {100 * r['iou>=0.7']:.1f} % | {r['median']:.3f} |")


if __name__ == "__main__":
    main()
