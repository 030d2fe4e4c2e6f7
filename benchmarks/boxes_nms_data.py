"""The boxes both box/NMS benchmark scripts time (NumPy only, so the torch venv can import it).

Random boxes on a 1000 x 1000 pixel image: centres uniform, widths and heights uniform in
[16, 128] pixels, scores uniform in [0, 1), all float32, from a fixed seed.
"""

import numpy as np

IMAGE = 1000.0
IOU_SIZE = 2000  # box_iou of IOU_SIZE x IOU_SIZE boxes
NMS_SIZES = (1_000, 10_000)
NMS_THRESHOLD = 0.7
REPEATS = 7  # timings are the median of this many runs, after one warm-up call


def make_boxes(n: int, seed: int = 0):
    """``(n, 4)`` float32 ``[x1, y1, x2, y2]`` and ``(n,)`` float32 scores."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, IMAGE, (n, 2))
    sizes = rng.uniform(16, 128, (n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    return boxes, scores
