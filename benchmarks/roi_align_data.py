"""The inputs both RoIAlign benchmark scripts time (NumPy only, so the torch venv can import it).

Feature maps are standard normal float32; RoIs are ``[batch_idx, x1, y1, x2, y2]`` in input
pixels of an image ``stride`` times the map's size (``spatial_scale = 1 / stride``), centres
uniform over the image, widths and heights uniform in ``[16, 256]`` pixels (clipped to the
image), batch indices uniform, all from a fixed seed.
"""

import numpy as np

CASES = (
    # name, (N, C, H, W), number of RoIs, output size, stride
    ("(2, 64, 64, 64), 512 RoIs, 7x7", (2, 64, 64, 64), 512, 7, 4),
    ("(1, 256, 200, 272), 1000 RoIs, 7x7", (1, 256, 200, 272), 1000, 7, 4),
    ("(1, 256, 200, 272), 1000 RoIs, 14x14", (1, 256, 200, 272), 1000, 14, 4),
)
SAMPLING_RATIO = 2
ALIGNED = False
REPEATS = 5  # timings are the median of this many runs, after one warm-up call


def make_inputs(shape, num_rois, output_size, stride, seed=0):
    """``(features, rois, grad_output)`` float32 arrays for one case."""
    rng = np.random.default_rng(seed)
    N, C, H, W = shape
    img_h, img_w = H * stride, W * stride
    features = rng.standard_normal(shape, dtype=np.float32)
    centres = rng.uniform([0, 0], [img_w, img_h], (num_rois, 2))
    sizes = rng.uniform(16, 256, (num_rois, 2))
    x1y1 = np.clip(centres - sizes / 2, 0, [img_w, img_h])
    x2y2 = np.clip(centres + sizes / 2, 0, [img_w, img_h])
    batch = rng.integers(0, N, num_rois)
    rois = np.concatenate([batch[:, None], x1y1, x2y2], axis=1).astype(np.float32)
    grad = rng.standard_normal((num_rois, C, output_size, output_size), dtype=np.float32)
    return features, rois, grad
