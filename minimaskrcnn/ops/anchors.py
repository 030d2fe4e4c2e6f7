"""Anchor generation, torchvision-compatible (``torchvision.models.detection.anchor_utils``).

For each feature level ``l`` with ``A`` cell anchors, a map of ``H_l x W_l`` cells and a stride of
``(stride_h, stride_w)`` input pixels per cell, the anchors are ``(H_l * W_l * A, 4)`` float32
``[x1, y1, x2, y2]`` in input pixels, ordered row-major over locations and then over the ``A``
cell anchors (torchvision's order, which the RPN head's ``(N, A * 4, H, W)`` output is reshaped
to)::

    anchor[(y * W_l + x) * A + a] = cell_anchor[a] + (x * stride_w, y * stride_h) * 2

The cell anchors are centred on the origin: for size ``s`` and aspect ratio ``r = h / w``,
``h_ratio = sqrt(r)``, ``w_ratio = 1 / h_ratio``, ``w = w_ratio * s``, ``h = h_ratio * s`` and the
anchor is ``round([-w, -h, w, h] / 2)`` (round half to even, in float32), ratios outer and sizes
inner, exactly as torchvision's ``AnchorGenerator.generate_anchors``.

No kernel tiers: generating anchors is one broadcast add of ``(H_l * W_l, 1, 4)`` shifts and
``(1, A, 4)`` cell anchors per level, done once per image size and memory-bound; NumPy (or CuPy,
via ``xp``) already does it at full memory speed, so a Numba or CUDA kernel would add code and
nothing else.
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn._validate import check_scalar

__all__ = ["AnchorGenerator"]


def _nested(name: str, value) -> tuple[tuple[float, ...], ...]:
    """Accept ``((8,), (16,))`` or the flat ``(8, 16)`` (one entry per level) like torchvision."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a tuple of per-level tuples, got {value!r}")
    if len(value) and not hasattr(value[0], "__len__"):
        value = tuple((v,) for v in value)
    out = []
    for level, per_level in enumerate(value):
        if isinstance(per_level, (str, bytes)) or not hasattr(per_level, "__len__") or not len(per_level):
            raise TypeError(f"{name}[{level}] must be a non-empty tuple of numbers, got {per_level!r}")
        for v in per_level:
            check_scalar(f"{name}[{level}]", v)
            if not v > 0 or not np.isfinite(v):
                raise ValueError(f"{name}[{level}] must hold positive finite numbers, got {v!r}")
        out.append(tuple(per_level))
    return tuple(out)


class AnchorGenerator:
    """Anchors for a feature pyramid (Ren et al. 2015 sec. 3.1.1; Lin et al. 2017 FPN sec. 4.1).

    Args:
        sizes: per level, the anchor sizes (square-root of the area, input pixels). A flat tuple
            ``(32, 64)`` means one size per level.
        aspect_ratios: per level, the ratios ``h / w``, e.g. ``((0.5, 1.0, 2.0),) * L``. A flat
            tuple of ratios is used for every level.

    Attributes:
        cell_anchors: list of ``L`` arrays ``(A_l, 4)`` float32, origin-centred
            ``[x1, y1, x2, y2]``; ``A_l = len(sizes[l]) * len(aspect_ratios[l])``.

    Raises:
        TypeError / ValueError: malformed sizes or ratios, non-positive values, or a different
            number of levels in ``sizes`` and ``aspect_ratios``.
    """

    def __init__(
        self,
        sizes=((8,), (16,), (32,), (64,), (128,)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,
    ):
        self.sizes = _nested("sizes", sizes)
        if len(aspect_ratios) and not hasattr(aspect_ratios[0], "__len__"):
            aspect_ratios = (tuple(aspect_ratios),) * len(self.sizes)  # torchvision does this too
        self.aspect_ratios = _nested("aspect_ratios", aspect_ratios)
        if len(self.sizes) != len(self.aspect_ratios):
            raise ValueError(
                f"sizes and aspect_ratios must have one entry per level, got {len(self.sizes)} "
                f"and {len(self.aspect_ratios)} levels"
            )
        self.cell_anchors = [
            self.generate_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)
        ]

    @staticmethod
    def generate_anchors(scales, aspect_ratios, dtype=np.float32) -> np.ndarray:
        """Origin-centred anchors ``(len(aspect_ratios) * len(scales), 4)``, ratios outer."""
        scales = np.asarray(scales, dtype=dtype)
        aspect_ratios = np.asarray(aspect_ratios, dtype=dtype)
        h_ratios = np.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        base = np.stack([-ws, -hs, ws, hs], axis=1) / dtype(2)
        return np.round(base)  # half to even, like torch.round

    def num_anchors_per_location(self) -> list[int]:
        """``A`` for each level: ``len(sizes[l]) * len(aspect_ratios[l])``."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def grid_anchors(self, feature_shapes, strides, *, xp=np) -> list:
        """Anchors of every location of every level.

        Args:
            feature_shapes: ``L`` pairs ``(H_l, W_l)``, feature-map cells.
            strides: ``L`` pairs ``(stride_h, stride_w)``, input pixels per cell.
            xp: array module of the result (``numpy`` or ``cupy``).

        Returns:
            list of ``L`` arrays ``(H_l * W_l * A_l, 4)`` float32 ``[x1, y1, x2, y2]``, input
            pixels, row-major over locations then over the ``A_l`` cell anchors.

        Raises:
            ValueError: the number of levels differs from the generator's.
        """
        feature_shapes = [tuple(int(v) for v in s) for s in feature_shapes]
        strides = [tuple(int(v) for v in s) for s in strides]
        if not (len(feature_shapes) == len(strides) == len(self.cell_anchors)):
            raise ValueError(
                f"feature_shapes and strides must have one (H, W) pair per level "
                f"({len(self.cell_anchors)} levels), got {len(feature_shapes)} and {len(strides)}"
            )
        anchors = []
        for (grid_h, grid_w), (stride_h, stride_w), base in zip(
            feature_shapes, strides, self.cell_anchors, strict=True
        ):
            shifts_x = xp.arange(grid_w, dtype=xp.float32) * xp.float32(stride_w)
            shifts_y = xp.arange(grid_h, dtype=xp.float32) * xp.float32(stride_h)
            shift_y, shift_x = xp.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H_l, W_l)
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = xp.stack((shift_x, shift_y, shift_x, shift_y), axis=1)  # (H_l * W_l, 4)
            level = shifts[:, None, :] + xp.asarray(base)[None, :, :]  # (H_l * W_l, A_l, 4)
            anchors.append(level.reshape(-1, 4))
        return anchors

    def __call__(self, image_size, feature_shapes, *, xp=np) -> list:
        """Anchors for an image (batch) of ``image_size`` and its pyramid's feature shapes.

        The strides are ``image_size // feature_size`` per axis, as torchvision derives them
        from the padded batch tensor and the feature maps.

        Args:
            image_size: ``(H, W)`` of the (padded) input, pixels.
            feature_shapes: ``L`` pairs ``(H_l, W_l)``, cells.
            xp: array module of the result.

        Returns:
            list of ``L`` arrays ``(H_l * W_l * A_l, 4)`` float32 (see :meth:`grid_anchors`).

        Raises:
            ValueError: a non-positive size, or the wrong number of levels.
        """
        img_h, img_w = (int(v) for v in image_size)
        feature_shapes = [tuple(int(v) for v in s) for s in feature_shapes]
        for s in feature_shapes:
            if len(s) != 2 or min(s) <= 0:
                raise ValueError(f"feature_shapes must be positive (H_l, W_l) pairs, got {s}")
        if img_h <= 0 or img_w <= 0:
            raise ValueError(f"image_size must be a positive (H, W), got {image_size}")
        strides = [(img_h // h, img_w // w) for h, w in feature_shapes]
        return self.grid_anchors(feature_shapes, strides, xp=xp)
