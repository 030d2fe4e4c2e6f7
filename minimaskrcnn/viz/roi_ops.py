"""Where the RoI ops sample: a figure for the notebooks and docs (matplotlib, imported when
drawing).

:func:`plot_roi_sampling` shows, on a small feature grid, where RoIPool, RoIWarp and RoIAlign
(``aligned=False`` / ``True``) take their values for the same box: the paper's Figure 3 and the
quantisation it argues against (Mask R-CNN, section 3; Table 2c). The geometry comes from the
same helpers the kernels use (:mod:`minimaskrcnn.ops._roi_common`).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn.ops._roi_common import (
    output_size_pair,
    pool_bin,
    quantized_span,
    sample_point,
    sampling_axis,
)

_PANELS = (
    ("RoIPool\nrounded box, whole-cell bins, max", "pool", False),
    ("RoIWarp\nrounded box, bilinear samples", "warp", False),
    ("RoIAlign, aligned=False\nexact box, samples half a cell off", "align", False),
    ("RoIAlign, aligned=True\nexact box, samples at pixel centres", "align", True),
)


def plot_roi_sampling(box, feature_shape, output_size, spatial_scale=1.0, sampling_ratio=2,
                      ax=None):
    """Draw the bins and sampling points of the four RoI ops for one box.

    Each panel shows the feature grid (cell ``(i, j)`` covers ``[j, j+1) x [i, i+1)``), the box
    times ``spatial_scale`` (dashed), and the op's bins and sampling points. Bilinear sampling
    reads cell ``i``'s value at coordinate ``i``, i.e. at the cell's corner, so the points are
    drawn at ``coordinate + 0.5``: where they actually sample in the pixel model. This is why
    ``aligned=False`` looks shifted by half a cell and ``aligned=True`` (which subtracts 0.5
    first) lines up with the box.

    Args:
        box: ``(4,)`` ``[x1, y1, x2, y2]`` in input pixels.
        feature_shape: ``(H, W)`` of the feature map, cells.
        output_size: ``Ph`` or ``(Ph, Pw)``.
        spatial_scale: feature cells per input pixel.
        sampling_ratio: samples per bin per axis for the bilinear ops (``<= 0``: adaptive).
        ax: ``None`` (a new 1 x 4 figure) or a sequence of 4 matplotlib axes.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ValueError: ``box`` is not 4 finite numbers, ``feature_shape`` not 2 positive ints, or
            ``ax`` is not 4 axes.
    """
    # pyplot (a notebook shows the figure inline) costs about 0.3 s to import: only here
    import matplotlib.pyplot as plt  # heavy (0.3 s): only when drawing
    from matplotlib.patches import Rectangle  # heavy (with pyplot): only when drawing

    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(f"box must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
    if len(feature_shape) != 2 or min(feature_shape) < 1:
        raise ValueError(f"feature_shape must be (H, W) >= 1, got {feature_shape!r}")
    H, W = int(feature_shape[0]), int(feature_shape[1])
    Ph, Pw = output_size_pair(output_size)
    if ax is None:
        fig, axes = plt.subplots(1, 4, figsize=(4.2 * 4, 4.6), constrained_layout=True)
    else:
        axes = list(ax)
        if len(axes) != 4:
            raise ValueError(f"ax must be 4 axes (one per op), got {len(axes)}")
        fig = axes[0].figure
    x1, y1, x2, y2 = box * np.float64(spatial_scale)
    colours = plt.get_cmap("tab10").colors

    for a, (title, kind, aligned) in zip(axes, _PANELS, strict=True):
        for i in range(H + 1):
            a.axhline(i, color="0.85", lw=0.8, zorder=0)
        for j in range(W + 1):
            a.axvline(j, color="0.85", lw=0.8, zorder=0)
        a.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ls="--", lw=2,
                              color="crimson", label="box x spatial_scale", zorder=3))
        if kind == "pool":
            xs, wq = quantized_span(x1, x2)
            ys, hq = quantized_span(y1, y2)
            bin_h, bin_w = np.float64(hq) / Ph, np.float64(wq) / Pw
            for ph in range(Ph):
                h0, h1 = pool_bin(ph, bin_h, ys, H)
                for pw in range(Pw):
                    w0, w1 = pool_bin(pw, bin_w, xs, W)
                    if h1 > h0 and w1 > w0:
                        a.add_patch(Rectangle((w0, h0), w1 - w0, h1 - h0, alpha=0.25,
                                              color=colours[(ph * Pw + pw) % 10], lw=0,
                                              label="bins (cells pooled)" if ph == pw == 0 else None))
        else:
            if kind == "warp":
                xs, wq = quantized_span(x1, x2)
                ys, hq = quantized_span(y1, y2)
                lo_x, hi_x, lo_y, hi_y = float(xs), float(xs + wq), float(ys), float(ys + hq)
            else:
                lo_x, hi_x, lo_y, hi_y = x1, x2, y1, y2
            sh, bh, gh = sampling_axis(lo_y, hi_y, Ph, sampling_ratio, aligned)
            sw, bw, gw = sampling_axis(lo_x, hi_x, Pw, sampling_ratio, aligned)
            for ph in range(Ph):
                for pw in range(Pw):
                    a.add_patch(Rectangle((sw + pw * bw + 0.5, sh + ph * bh + 0.5), bw, bh,
                                          fill=False, lw=1.2, color="navy", zorder=2,
                                          label="bins" if ph == pw == 0 else None))
            ys_ = [sample_point(sh, bh, ph, iy, gh) + 0.5 for ph in range(Ph) for iy in range(gh)]
            xs_ = [sample_point(sw, bw, pw, ix, gw) + 0.5 for pw in range(Pw) for ix in range(gw)]
            gx, gy = np.meshgrid(xs_, ys_)
            a.scatter(gx.ravel(), gy.ravel(), s=14, color="darkorange", zorder=4,
                      label="sampling points")
        a.set_xlim(0, W)
        a.set_ylim(H, 0)  # image convention: y grows downwards
        a.set_aspect("equal")
        a.set_title(title, fontsize=10)
        a.legend(loc="lower right", fontsize=7, framealpha=0.9)
    fig.suptitle(f"RoI {tuple(float(v) for v in box)} px x {spatial_scale:g} on a {H}x{W} grid, "
                 f"{Ph}x{Pw} bins, sampling_ratio={sampling_ratio}", fontsize=11)
    return fig
