"""Shared pieces of the RoI ops (RoIAlign, RoIWarp, RoIPool): box format and scalar arithmetic.

Geometry (docs/conventions.md): boxes are ``(x1, y1, x2, y2)`` in continuous input-pixel
coordinates; ``spatial_scale`` maps them to feature-map cells (1/4 for P2, ...). Cell ``(i, j)``
of a feature map covers ``[j, j+1) x [i, i+1)``. With ``aligned=False`` (torchvision's default) a
sample at continuous coordinate ``y`` interpolates as if cell ``i``'s value sat at ``y = i``; with
``aligned=True`` the RoI is first shifted by -0.5 so that cell ``i``'s value sits at its centre
``i + 0.5`` (Detectron2's "pixel model").

The scalar helpers below are plain Python functions written once. The NumPy reference calls them
directly, the Numba CPU tier compiles them with ``njit`` and the Numba CUDA tier with
``cuda.jit(device=True)`` (see :func:`jit_helpers`). So that all three targets accept them they
are *flat* (no helper calls another helper) and keep the working precision of their float
arguments: every literal is an ``np.float32`` (exact for 0.5, 1, small integers), so float32
kernels never promote to float64 while float64 kernels stay float64 (float32 op float64 ->
float64). A value that must *become* a constant is written ``v * np.float32(0) + c`` so that
it keeps ``v``'s dtype in plain Python too.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from minimaskrcnn._validate import check_array, check_scalar
from minimaskrcnn.backend import get_array_module, to_numpy

# --------------------------------------------------------------------------------------------
# Arguments shared by the public functions
# --------------------------------------------------------------------------------------------


def output_size_pair(output_size) -> tuple[int, int]:
    """``output_size`` (int or ``(Ph, Pw)``) -> ``(Ph, Pw)`` of positive ints.

    Raises:
        TypeError: not an int or a pair of ints.
        ValueError: a size < 1.
    """
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in output_size
    ):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"output_size must be an int or a pair (Ph, Pw) of ints, got {output_size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return pair


def check_input(name: str, x):
    """``x`` must be a float32/float64 ``(N, C, H, W)`` array; returns it C-contiguous.

    Raises:
        TypeError: not an array, or not float32/float64 (the message names ``name``).
        ValueError: not 4-D.
    """
    check_array(name, x, ndim=4, float_only=True, expected="(N, C, H, W) float32 or float64")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    xp = _xp(x)
    return xp.ascontiguousarray(x)


def check_input_shape(input_shape) -> tuple[int, int, int, int]:
    """``input_shape`` must be 4 non-negative ints ``(N, C, H, W)``; returns the int tuple.

    Raises:
        TypeError: not an iterable of numbers.
        ValueError: not 4 entries, a negative or non-integer entry.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple (N, C, H, W), got {input_shape!r}") from None
    if len(shape) != 4 or any(s < 0 for s in shape) or any(int(s) != s for s in input_shape):
        raise ValueError(f"input_shape must be 4 non-negative ints (N, C, H, W), got {input_shape!r}")
    return shape


def check_spatial_scale(spatial_scale) -> float:
    """Feature-map cells per input pixel (1/stride, e.g. 0.25 for P2) as a Python float.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite, zero or negative.
    """
    check_scalar("spatial_scale", spatial_scale)
    if not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be a finite positive number, got {spatial_scale!r}")
    return float(spatial_scale)


def check_sampling_ratio(sampling_ratio) -> int:
    """Samples per bin side as a Python int (<= 0: adaptive, ``ceil(roi size / pooled size)``
    as torchvision).

    Raises:
        TypeError: not a real number.
        ValueError: not an integer value.
    """
    check_scalar("sampling_ratio", sampling_ratio, integer=True)
    return int(sampling_ratio)


def _xp(x):
    return get_array_module(x)


def convert_boxes_to_rois(boxes, num_images: int, dtype, like=None):
    """Boxes in either accepted format -> ``(R, 5) [batch_idx, x1, y1, x2, y2]`` of ``dtype``.

    Args:
        boxes: ``(R, 5)`` float array ``[batch_idx, x1, y1, x2, y2]`` (input pixels), or a list
            of ``N`` or fewer ``(R_i, 4)`` float arrays, one per image (torchvision's two
            formats; the list's position is the batch index).
        num_images: ``N`` of the feature map; batch indices must lie in ``[0, N)``.
        dtype: the input's dtype; the rois are cast to it (torchvision requires equal dtypes).
        like: an array whose module (NumPy or CuPy) the result should use.

    Returns:
        ``(R, 5)`` C-contiguous array of ``dtype``.

    Raises:
        TypeError: ``boxes`` is neither an array nor a list/tuple of arrays, or not floating.
        ValueError: wrong shape, NaN/inf, or a batch index that is not an integer in ``[0, N)``.
    """
    xp = _xp(like) if like is not None else np
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            check_array(f"boxes[{i}]", b, ndim=2, last=4, float_only=True, finite=True,
                        expected="(R_i, 4) float [x1, y1, x2, y2]")
            idx = xp.full((b.shape[0], 1), i, dtype=dtype)
            parts.append(xp.concatenate([idx, xp.asarray(b, dtype=dtype)], axis=1))
        rois = xp.concatenate(parts, axis=0) if parts else xp.zeros((0, 5), dtype=dtype)
    else:
        check_array("boxes", boxes, ndim=2, last=5, float_only=True, finite=True,
                    expected="(R, 5) float [batch_idx, x1, y1, x2, y2] or a list of (R_i, 4)")
        rois = xp.asarray(boxes, dtype=dtype)
    if rois.shape[0]:
        bi = rois[:, 0]
        if not bool((bi == xp.floor(bi)).all()):
            raise ValueError("boxes: batch indices (column 0) must be integers")
        if bool((bi < 0).any()) or bool((bi >= num_images).any()):
            raise ValueError(f"boxes: batch indices must lie in [0, {num_images}) "
                             f"(the input has N={num_images} images)")
    return xp.ascontiguousarray(rois)


MAX_CELL_COORDINATE = float(2**24)
"""Largest ``|coordinate * spatial_scale|`` a RoI may have, in feature cells: beyond 2**24 a
float32 cannot tell neighbouring sample positions apart (and +-3e38 overflows to inf)."""

MAX_SAMPLES_PER_ROI = 2**22
"""Largest number of bilinear samples one RoI may ask for (``Ph * Pw * grid_h * grid_w``): 4.2 M
samples already take ~0.2 GB of sample tables in the Numba tier and seconds in the reference.
A huge ``sampling_ratio``, or adaptive sampling (``sampling_ratio <= 0``) on a box of millions
of cells, stops here with one clear error, the same in every tier."""


def check_roi_extent(op: str, rois, spatial_scale: float, pooled_h: int = 0, pooled_w: int = 0,
                     sampling_ratio: int | None = None, aligned: bool = False,
                     quantize: bool = False) -> None:
    """Bound what a call may ask for, before any tier runs (same error in every tier).

    Checks that every scaled coordinate lies within :data:`MAX_CELL_COORDINATE` cells and, for the
    bilinear ops (``sampling_ratio`` given), that no RoI needs more than
    :data:`MAX_SAMPLES_PER_ROI` samples. Computed on the host in float64 (the RoIs are small).

    Args:
        op: the op's name for the message (``"roi_align"``, ...).
        rois: ``(R, 5)`` validated rois (NumPy or CuPy).
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, quantize: as the op's.

    Raises:
        ValueError: naming the first offending RoI, what it asks for and the limit.
    """
    if rois.shape[0] == 0:
        return
    r = to_numpy(rois).astype(np.float64)
    cells = r[:, 1:] * float(spatial_scale)
    big = np.nonzero(np.abs(cells).max(axis=1) > MAX_CELL_COORDINATE)[0]
    if big.size:
        i = int(big[0])
        raise ValueError(f"{op}: RoI {i} {r[i, 1:].tolist()} times spatial_scale "
                         f"{spatial_scale} reaches beyond +-{MAX_CELL_COORDINATE:.0f} feature "
                         "cells; check the box coordinates")
    if sampling_ratio is None:
        return
    if quantize:
        cells = np.floor(np.abs(cells) + 0.5) * np.sign(cells)
        cells[:, 2:] += 1  # the quantised box covers whole cells (inclusive end)
    h = cells[:, 3] - cells[:, 1]
    w = cells[:, 2] - cells[:, 0]
    if not aligned:
        h, w = np.maximum(h, 1.0), np.maximum(w, 1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = np.full(r.shape[0], float(sampling_ratio))
    else:
        grid_h = np.maximum(np.ceil(h / pooled_h), 0.0)
        grid_w = np.maximum(np.ceil(w / pooled_w), 0.0)
    samples = grid_h * grid_w * float(pooled_h * pooled_w)
    over = np.nonzero(samples > MAX_SAMPLES_PER_ROI)[0]
    if over.size:
        i = int(over[0])
        how = (f"sampling_ratio={sampling_ratio}" if sampling_ratio > 0 else
               f"adaptive sampling (sampling_ratio={sampling_ratio}) on a box of "
               f"{h[i]:.0f} x {w[i]:.0f} cells")
        raise ValueError(f"{op}: RoI {i} needs {samples[i]:.0f} samples ({pooled_h} x {pooled_w} "
                         f"bins, {grid_h[i]:.0f} x {grid_w[i]:.0f} per bin, {how}), more than "
                         f"the limit of {MAX_SAMPLES_PER_ROI} per RoI; use a smaller "
                         "sampling_ratio or check the box")


def rois_by_image(batch_idx: np.ndarray, num_images: int):
    """RoIs grouped by image, each group in increasing RoI order (for one-writer backward passes).

    Args:
        batch_idx: ``(R,)`` integer batch index of each RoI.
        num_images: ``N``.

    Returns:
        ``(order, starts)``: ``order`` ``(R,)`` int64 RoI indices sorted stably by image, and
        ``starts`` ``(N + 1,)`` int64 so that image ``n``'s RoIs are
        ``order[starts[n]:starts[n + 1]]``.
    """
    batch_idx = np.asarray(batch_idx).astype(np.int64)
    order = np.argsort(batch_idx, kind="stable").astype(np.int64)
    counts = np.bincount(batch_idx, minlength=num_images)[:num_images]
    starts = np.zeros(num_images + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return order, starts


# --------------------------------------------------------------------------------------------
# Scalar helpers (flat; reference, njit and cuda.jit(device=True) versions share this code)
# --------------------------------------------------------------------------------------------


def sampling_axis(lo, hi, pooled, sampling_ratio, aligned):
    """One axis of a RoIAlign/RoIWarp sampling grid (torchvision's roi_align index arithmetic).

    Args:
        lo, hi: the RoI's ends on this axis in feature-map cells (already times spatial_scale).
        pooled: number of bins on this axis (Ph or Pw).
        sampling_ratio: samples per bin on this axis if > 0, else adaptive ``ceil(length/pooled)``.
        aligned: shift by -0.5 (pixel-centre model); otherwise clamp the length to >= 1.

    Returns:
        ``(start, bin_size, grid)``: the first bin starts at ``start`` (cells), bins are
        ``bin_size`` long, ``grid`` samples per bin (0 or negative means an empty grid).
    """
    if aligned:
        lo = lo - np.float32(0.5)
        hi = hi - np.float32(0.5)
    length = hi - lo
    if not aligned and length < 1:
        length = length * np.float32(0.0) + np.float32(1.0)  # 1, in length's dtype
    bin_size = length / np.float32(pooled)
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        grid = int(math.ceil(length / np.float32(pooled)))  # an integer in every tier
    return lo, bin_size, grid


def sample_point(start, bin_size, p, i, grid):
    """Coordinate of sample ``i`` of bin ``p``: ``start + p*bin + (i + 0.5) * bin / grid``."""
    return (start + np.float32(p) * bin_size
            + (np.float32(i) + np.float32(0.5)) * bin_size / np.float32(grid))


def interp_axis(y, size):
    """Linear interpolation along one axis, with torchvision's border rules.

    A coordinate ``y < -1`` or ``y > size`` is outside (``valid`` False, weights 0). Otherwise
    ``y <= 0`` clamps to 0, and ``y`` at or beyond the last cell ``size - 1`` uses that cell
    alone. The 2-D bilinear weights are the products of the two axes' weights
    (``w1 = hy * hx`` for ``(y_low, x_low)``, ...), exactly torchvision's ``bilinear_interpolate``.

    Returns:
        ``(valid, low, high, w_low, w_high)`` with ``w_low + w_high == 1`` when valid.
    """
    if y < np.float32(-1.0) or y > np.float32(size):
        return False, 0, 0, np.float32(0.0), np.float32(0.0)
    if y <= np.float32(0.0):
        y = y * np.float32(0.0)  # 0, in y's dtype
    low = int(y)
    if low >= size - 1:
        return True, size - 1, size - 1, np.float32(1.0), np.float32(0.0)
    frac = y - np.float32(low)
    return True, low, low + 1, np.float32(1.0) - frac, frac


def quantized_span(lo, hi):
    """RoIPool's quantisation of one axis: ends rounded half away from zero (C ``round``).

    Args:
        lo, hi: the RoI's ends in feature-map cells (already times spatial_scale).

    Returns:
        ``(start, length)`` ints: the quantised RoI covers cells ``start .. start + length - 1``
        with ``length = max(round(hi) - round(lo) + 1, 1)`` (Fast R-CNN's inclusive width).
    """
    half = np.float32(0.5)
    qlo = int(lo)  # truncates toward zero
    if lo - np.float32(qlo) >= half:  # exact: a float minus its integer part
        qlo += 1
    elif np.float32(qlo) - lo >= half:
        qlo -= 1
    qhi = int(hi)
    if hi - np.float32(qhi) >= half:
        qhi += 1
    elif np.float32(qhi) - hi >= half:
        qhi -= 1
    return qlo, max(qhi - qlo + 1, 1)


def pool_bin(p, bin_size, start, size):
    """Cells ``[lo, hi)`` of RoIPool bin ``p``: ``[floor(p*b), ceil((p+1)*b))`` + start, clipped.

    ``bin_size`` carries the working dtype; an empty bin has ``hi <= lo``.
    """
    lo = int(math.floor(np.float32(p) * bin_size)) + start  # integers in every tier
    hi = int(math.ceil(np.float32(p + 1) * bin_size)) + start
    lo = min(max(lo, 0), size)
    hi = min(max(hi, 0), size)
    return lo, hi


HELPERS = ("sampling_axis", "sample_point", "interp_axis", "quantized_span", "pool_bin")


def jit_helpers(decorator) -> dict:
    """Compile every scalar helper with ``decorator`` (``njit(...)``, ``cuda.jit(device=True)``).

    Returns:
        ``{name: compiled function}`` for the names in :data:`HELPERS`.
    """
    g = globals()
    return {name: decorator(g[name]) for name in HELPERS}
