"""Mask-head ops (Mask R-CNN, He et al. 2017, section 3): targets, loss, pasting.

- :func:`project_masks_on_boxes`: the ground-truth mask of each foreground RoI resampled into
  the RoI at ``M x M`` (the paper's "mask target is the intersection between an RoI and its
  associated ground-truth mask"), kept soft, by RoIAlign exactly as torchvision's
  ``roi_heads.project_masks_on_boxes`` does it. The reference tier calls RoIAlign's reference
  on the masks as floats. The Numba and CUDA tiers keep a kernel of their own that reads the
  uint8 masks directly (with RoIAlign's shared scalar helpers), for a measured reason: RoIAlign
  needs the masks as a float ``(G, 1, H, W)`` map (and the Numba tier then transposes it
  channels-last), which on full-size images costs far more than the resampling -- 200 masks of
  1024 x 1024, 128 RoIs: 268 ms through ``roi_align`` against 16 ms (equal on 256 x 256 crops,
  8 ms each). Both tiers are tested equal to ``roi_align`` bit for bit.
- :func:`mask_loss`: the class-specific per-pixel sigmoid binary cross-entropy on the
  ground-truth class's mask only (the paper's ``L_mask``), or the per-pixel softmax baseline of
  the paper's Table 2b; value and gradient with respect to the logits in one pass.
  :func:`mask_loss_backward` scales that gradient by an upstream scalar.
- :func:`paste_masks_in_image`: each ``M x M`` mask probability map resampled into its detection
  box in the image, torchvision's ``roi_heads.paste_masks_in_image`` (padding, box expansion,
  integer box, bilinear ``F.interpolate``). Thresholding at 0.5 is the caller's job.

Tiers (see :mod:`minimaskrcnn.backend`): ``reference.py`` (NumPy, the specification),
``numba_cpu.py`` (``@njit(parallel=True)``), ``numba_cuda.py`` (one thread per output element,
grid-stride loops; ``cupy.py`` runs those same kernels on CuPy arrays, so ``tier=None`` works for
CuPy inputs). All tiers implement every op and both loss modes; results agree to float
rounding (the loss is accumulated in float64 in every tier, in a fixed order, so each tier is
deterministic).

Shape letters: G ground truths, R RoIs, K classes (no background), M mask size, D detections,
H W image height and width.
"""

from __future__ import annotations

import numbers

import numpy as np

from minimaskrcnn import backend
from minimaskrcnn._validate import (
    check_array,
    check_float_array,
    check_scalar,
    check_size,
    shape_str,
)

__all__ = ["project_masks_on_boxes", "mask_loss", "mask_loss_backward", "paste_masks_in_image",
           "paste_binary_masks"]

MASK_LOSS_MODES = ("sigmoid", "softmax")
"""Mask losses (paper Table 2b): class-specific per-pixel sigmoid, or softmax across classes."""



def _check_int(name: str, x, expected: str):
    check_array(name, x, ndim=1, expected=expected)
    if not np.issubdtype(np.dtype(x.dtype), np.integer):
        raise TypeError(f"{name} must be an integer array {expected}, got {x.dtype}")
    return x



# --------------------------------------------------------------------------------------------
# Mask targets
# --------------------------------------------------------------------------------------------


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M, *, tier=None):
    """Mask targets: each RoI's matched ground-truth mask, RoIAligned to ``M x M`` (soft).

    torchvision's ``roi_heads.project_masks_on_boxes``: ``roi_align(gt_masks[:, None] as float,
    [matched_idxs, boxes], (M, M), spatial_scale=1, sampling_ratio=-1, aligned=False)``. Each of
    the ``M x M`` bins of box ``r`` averages a ``ceil(h / M) x ceil(w / M)`` grid of bilinear
    samples of mask ``matched_idxs[r]`` (box sides shorter than 1 pixel count as 1; a sample
    more than one pixel outside the mask counts 0). Values lie in ``[0, 1]`` for 0/1 masks.

    Args:
        gt_masks: ``(G, H, W)`` masks of one image, uint8/bool 0-1 (any real dtype is accepted
            and converted to ``boxes``' dtype, as torchvision does).
        boxes: ``(R, 4)`` float32/float64 ``[x1, y1, x2, y2]`` RoIs in image pixels, finite.
        matched_idxs: ``(R,)`` integer, the ground truth of each RoI, in ``[0, G)``.
        M: mask size (28 in the paper and nuclei-mini).
        tier: ``"numpy"``, ``"numba"``, ``"cuda"`` or ``None`` (backend default).

    Returns:
        ``(R, M, M)`` targets in ``boxes``' dtype (float32 in the model); ``(0, M, M)`` when
        ``R == 0``, zeros when the masks are empty (``H == 0`` or ``W == 0``).

    Raises:
        TypeError: a non-array argument, non-float boxes, non-integer indices, non-int ``M``.
        ValueError: wrong shapes, NaN/inf boxes, ``R`` mismatch, an index outside ``[0, G)``,
            ``M < 1``.
        TierUnavailableError: the tier cannot run here.
    """
    check_array("gt_masks", gt_masks, ndim=3, expected="(G, H, W) uint8")
    check_float_array("boxes", boxes, "(R, 4) float [x1, y1, x2, y2]", 2)
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (R, 4), got {shape_str(boxes.shape)}")
    _check_int("matched_idxs", matched_idxs, "(R,) int64")
    M = check_size("M", M)
    R, G = boxes.shape[0], gt_masks.shape[0]
    if matched_idxs.shape[0] != R:
        raise ValueError(f"matched_idxs must have shape ({R},) like boxes' first axis, "
                         f"got {shape_str(matched_idxs.shape)}")
    xp = backend.get_array_module(boxes)
    if R and (bool((matched_idxs < 0).any()) or bool((matched_idxs >= G).any())):
        raise ValueError(f"matched_idxs must lie in [0, G) = [0, {G}) (gt_masks has G={G})")
    fn = backend.implementation(__name__, "project_masks_on_boxes", tier, gt_masks, boxes)
    if R == 0:
        return xp.zeros((0, M, M), dtype=boxes.dtype)
    if gt_masks.shape[1] == 0 or gt_masks.shape[2] == 0:  # nothing to sample from
        return xp.zeros((R, M, M), dtype=boxes.dtype)
    # 0/1 masks stay uint8 (the kernels read them as such: a float copy of every mask would cost
    # more than the resampling); any other dtype is converted to the boxes' dtype.
    if gt_masks.dtype == np.bool_:
        gt_masks = gt_masks.view(np.uint8)
    target_dtype = np.uint8 if gt_masks.dtype == np.uint8 else boxes.dtype
    gt_masks = xp.ascontiguousarray(gt_masks, dtype=target_dtype)
    boxes = xp.ascontiguousarray(boxes)
    matched_idxs = xp.ascontiguousarray(matched_idxs, dtype=np.int64)
    return fn(gt_masks, boxes, matched_idxs, M)


# --------------------------------------------------------------------------------------------
# Mask loss
# --------------------------------------------------------------------------------------------


def mask_loss(mask_logits, labels, mask_targets, *, mode="sigmoid", tier=None):
    """Mask loss and its gradient with respect to the logits.

    ``mode="sigmoid"`` (the paper's ``L_mask``, torchvision's ``maskrcnn_loss``): for RoI ``r``
    only channel ``c = labels[r] - 1`` is used; per pixel the binary cross-entropy with logits
    ``max(x, 0) - x t + log(1 + exp(-|x|))`` (the stable softplus form of
    ``-t log s(x) - (1 - t) log(1 - s(x))``); the loss is the mean over all ``R M M`` pixels. The
    gradient is ``(sigmoid(x) - t) / (R M M)`` on channel ``c`` and 0 on the other ``K - 1``
    channels (they do not compete: the paper's decoupling of mask and class).

    ``mode="softmax"`` (the per-pixel softmax + multinomial loss baseline of the paper's Table
    2b, FCN-style, masks across classes compete): the head outputs K logits per pixel and has no
    background channel, so the background logit is fixed at 0 (a (K+1)-way softmax is invariant
    to a shared shift, so no expressiveness is lost): ``p_k = exp(x_k) / Z``, ``p_bg = 1 / Z``,
    ``Z = 1 + sum_k exp(x_k)``. The target distribution of a pixel puts ``t`` on the RoI's class
    and ``1 - t`` on background (the hard FCN target when ``t`` is 0 or 1), so per pixel
    ``-(t log p_c + (1 - t) log p_bg) = log Z - t x_c``, mean over the ``R M M`` pixels; the
    gradient ``(p_k - t [k == c]) / (R M M)`` reaches every channel. With ``K = 1`` (nuclei-mini)
    ``p_1 = sigmoid(x)`` and the two modes are identical: the ablation is degenerate and needs
    ``K >= 2`` (shapes-mini) to mean anything.

    Args:
        mask_logits: ``(R, K, M, M)`` float32/float64 mask-head outputs (logits), finite.
        labels: ``(R,)`` integer class of each RoI's ground truth, in ``1..K``.
        mask_targets: ``(R, M, M)`` float targets in ``[0, 1]`` (soft, from
            :func:`project_masks_on_boxes`), cast to the logits' dtype.
        mode: ``"sigmoid"`` or ``"softmax"``.
        tier: ``"numpy"``, ``"numba"``, ``"cuda"`` or ``None`` (backend default).

    Returns:
        ``(loss, grad)``: ``loss`` a Python float (accumulated in float64), ``grad`` the
        ``(R, K, M, M)`` gradient d loss / d mask_logits in the logits' dtype. ``R == 0`` gives
        ``(0.0, zeros (0, K, M, M))`` (torchvision returns ``mask_logits.sum() * 0``); so does
        ``M == 0``.

    Raises:
        TypeError: non-array arguments, non-float logits/targets, non-integer labels.
        ValueError: wrong or mismatched shapes, non-square masks, NaN/inf, a label outside
            ``1..K``, an unknown ``mode``.
        TierUnavailableError: the tier cannot run here.
    """
    check_float_array("mask_logits", mask_logits, "(R, K, M, M) float", 4)
    R, K, M, M2 = mask_logits.shape
    if M != M2:
        raise ValueError(f"mask_logits must be (R, K, M, M) with square masks, "
                         f"got {shape_str(mask_logits.shape)}")
    _check_int("labels", labels, "(R,) int64 in 1..K")
    check_array("mask_targets", mask_targets, ndim=3, float_only=True, finite=True,
                expected="(R, M, M) float")
    if labels.shape[0] != R:
        raise ValueError(f"labels must have shape ({R},) like mask_logits' first axis, "
                         f"got {shape_str(labels.shape)}")
    if tuple(mask_targets.shape) != (R, M, M):
        raise ValueError(f"mask_targets must have shape {shape_str((R, M, M))} to match "
                         f"mask_logits {shape_str(mask_logits.shape)}, "
                         f"got {shape_str(mask_targets.shape)}")
    if mode not in MASK_LOSS_MODES:
        raise ValueError(f"mode must be one of {MASK_LOSS_MODES}, got {mode!r}")
    if R and (bool((labels < 1).any()) or bool((labels > K).any())):
        raise ValueError(f"labels must lie in 1..K = 1..{K} (mask_logits has K={K} channels)")
    fn = backend.implementation(__name__, "mask_loss", tier, mask_logits, mask_targets)
    xp = backend.get_array_module(mask_logits)
    if R == 0 or M == 0:  # no pixel: torchvision returns mask_logits.sum() * 0
        return 0.0, xp.zeros(mask_logits.shape, dtype=mask_logits.dtype)
    mask_logits = xp.ascontiguousarray(mask_logits)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    mask_targets = xp.ascontiguousarray(mask_targets, dtype=mask_logits.dtype)
    return fn(mask_logits, labels, mask_targets, mode)


def mask_loss_backward(dloss, grad):
    """Chain an upstream scalar into :func:`mask_loss`'s gradient: ``dloss * grad``.

    :func:`mask_loss` computes the loss and its gradient in one fused pass (the gradient is the
    "cache"); this is the backward of the loss node when the loss is weighted or scaled.

    Args:
        dloss: d total / d loss (1.0 when the mask loss enters the total with weight 1).
        grad: the ``(R, K, M, M)`` gradient returned by :func:`mask_loss`.

    Returns:
        ``(R, K, M, M)`` d total / d mask_logits, dtype of ``grad``.

    Raises:
        TypeError / ValueError: ``dloss`` not a finite real, ``grad`` not a 4-D float array.
    """
    check_scalar("dloss", dloss)
    check_array("grad", grad, ndim=4, float_only=True, expected="(R, K, M, M) float")
    return grad * grad.dtype.type(dloss)


# --------------------------------------------------------------------------------------------
# Pasting
# --------------------------------------------------------------------------------------------


def expand_boxes_to_int(boxes, M: int, padding: int):
    """torchvision's ``expand_masks`` scale and ``expand_boxes``, then ``.to(int64)``.

    ``scale = (M + 2 padding) / M``; each box is scaled about its centre (half-sizes times
    ``scale``) in ``boxes``' dtype, and the coordinates are truncated toward zero (C cast, as
    ``Tensor.to(torch.int64)``), so the integer box ``(x0, y0, x1, y1)`` covers pixels
    ``x0 .. x1``, ``y0 .. y1`` inclusive.

    Args:
        boxes: ``(D, 4)`` float ``[x1, y1, x2, y2]`` image pixels.
        M: the masks' width (torchvision takes the scale from the last axis).
        padding: pixels of zero padding on each side of the mask.

    Returns:
        ``(D, 4)`` int64 expanded boxes.
    """
    xp = backend.get_array_module(boxes)
    dt = boxes.dtype.type
    scale = dt(float(M + 2 * padding) / M)
    half = dt(0.5)
    w_half = (boxes[:, 2] - boxes[:, 0]) * half * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * half * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * half
    y_c = (boxes[:, 3] + boxes[:, 1]) * half
    expanded = xp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)
    return expanded.astype(np.int64)


def paste_masks_in_image(masks, boxes, image_shape, padding=1, *, tier=None):
    """Paste each detection's mask probabilities into the full image (torchvision semantics).

    torchvision's ``roi_heads.paste_masks_in_image`` / ``paste_mask_in_image``, step by step:

    1. ``expand_masks``: the ``M x M`` mask is zero-padded by ``padding`` on every side and
       ``scale = (M + 2 padding) / M`` (so the padded mask's border lands just outside the box);
    2. ``expand_boxes``: the box is scaled by ``scale`` about its centre, then truncated toward
       zero to ints ``(x0, y0, x1, y1)`` (see :func:`expand_boxes_to_int`);
    3. the padded mask is resized to ``h = max(y1 - y0 + 1, 1)`` by ``w = max(x1 - x0 + 1, 1)``
       pixels with ``F.interpolate(mode="bilinear", align_corners=False)`` (source coordinate
       ``(dst + 0.5) * in / out - 0.5`` clamped at 0, last cell repeated);
    4. the part of that patch inside the image is written at rows ``y0..y1``, columns
       ``x0..x1``; everything else is 0.

    One deliberate difference: when the integer box lies entirely outside the image, nothing is
    pasted (torchvision's Python slicing then wraps negative ends or raises a shape error); boxes
    clipped to the image, as the model's are, never get there.

    Args:
        masks: ``(D, M, M)`` float32/float64 probabilities (the predicted class's channel after
            the sigmoid), finite.
        boxes: ``(D, 4)`` float ``[x1, y1, x2, y2]`` detection boxes in image pixels, finite.
        image_shape: ``(H, W)`` of the image (unpadded), non-negative ints.
        padding: non-negative int (torchvision and the paper's implementation: 1).
        tier: ``"numpy"``, ``"numba"``, ``"cuda"`` or ``None`` (backend default).

    Returns:
        ``(D, H, W)`` array of ``masks``' dtype with the pasted probabilities (not thresholded;
        the model binarises at 0.5). ``(0, H, W)`` when ``D == 0``.

    Raises:
        TypeError: non-array arguments, non-float masks or boxes, non-int sizes.
        ValueError: wrong shapes, ``D`` mismatch, non-square or empty masks, NaN/inf, negative
            ``padding`` or image size.
        TierUnavailableError: the tier cannot run here.
    """
    check_float_array("masks", masks, "(D, M, M) float probabilities", 3)
    D, M, M2 = masks.shape
    if M != M2 or M == 0:
        raise ValueError(f"masks must be (D, M, M) with square, non-empty masks, "
                         f"got {shape_str(masks.shape)}")
    check_array("boxes", boxes, ndim=2, last=4, float_only=True, finite=True,
                expected="(D, 4) float [x1, y1, x2, y2]")
    if boxes.shape[0] != D:
        raise ValueError(f"boxes must have shape ({D}, 4) like masks' first axis, "
                         f"got {shape_str(boxes.shape)}")
    try:
        H, W = image_shape
    except (TypeError, ValueError):
        raise TypeError(f"image_shape must be a pair (H, W) of ints, got {image_shape!r}") from None
    for name, v in (("image_shape[0]", H), ("image_shape[1]", W), ("padding", padding)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    H, W, padding = int(H), int(W), int(padding)
    fn = backend.implementation(__name__, "paste_masks_in_image", tier, masks, boxes)
    xp = backend.get_array_module(masks)
    if D == 0 or H == 0 or W == 0:
        return xp.zeros((D, H, W), dtype=masks.dtype)
    int_boxes = xp.ascontiguousarray(expand_boxes_to_int(boxes, M, padding))
    return fn(xp.ascontiguousarray(masks), int_boxes, H, W, padding)


PASTE_CHUNK_BYTES = 1 << 28
"""Float scratch that :func:`paste_binary_masks` allows itself at once (256 MiB, as Detectron2's
``GPU_MEM_LIMIT`` chunking of ``paste_masks_in_image``)."""


def paste_binary_masks(masks, boxes, image_shape, threshold=0.5, padding=1, *, rle=False,
                       chunk_bytes=PASTE_CHUNK_BYTES, tier=None):
    """Paste and binarise masks a few at a time (:func:`paste_masks_in_image`, then ``>=
    threshold``), so the float scratch stays under ``chunk_bytes`` whatever ``D`` is.

    A 3000 x 3000 image with 500 detections would need one (500, 3000, 3000) float32 array
    (16.8 GiB) if pasted at once; here at most ``max(1, chunk_bytes // (4 H W))`` masks are pasted
    together. With ``rle=True`` every chunk is run-length encoded (pycocotools) before the next
    one, so memory is bounded by the image, not by detections x image; with ``rle=False`` the
    result is a dense bool array (``D H W`` bytes).

    Args:
        masks: ``(D, M, M)`` float probabilities; boxes: ``(D, 4)`` float detection boxes,
            image pixels; image_shape: ``(H, W)``; padding: as :func:`paste_masks_in_image`.
        threshold: a pixel is in the mask when its pasted probability is ``>= threshold``.
        rle: return COCO RLEs instead of a bool array.
        chunk_bytes: the float scratch allowed at once (>= 1).

    Returns:
        ``(D, H, W)`` bool (NumPy), or a list of D pycocotools RLE dicts (``size``, ``counts``
        bytes).

    Raises:
        TypeError / ValueError: as :func:`paste_masks_in_image`; a non-finite ``threshold``;
            ``chunk_bytes`` < 1.
    """
    check_scalar("threshold", threshold)
    if not np.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    check_scalar("chunk_bytes", chunk_bytes, minimum=1, integer=True)
    try:
        H, W = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise TypeError(f"image_shape must be a pair (H, W) of ints, got {image_shape!r}") from None
    D = int(masks.shape[0]) if hasattr(masks, "shape") and len(masks.shape) else 0
    step = max(1, int(chunk_bytes) // max(4 * H * W, 1))
    dense = None if rle else np.zeros((D, H, W), dtype=bool)
    encoded = []
    for s in range(0, max(D, 1), step):
        part = paste_masks_in_image(masks[s:s + step], boxes[s:s + step], (H, W), padding,
                                    tier=tier)
        binary = backend.to_numpy(part >= part.dtype.type(threshold))  # (d, H, W) bool
        if rle:
            if binary.shape[0]:
                from pycocotools import mask as mask_util  # noqa: PLC0415  (RLE output only)

                encoded += mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)
                                                              .astype(np.uint8)))
        else:
            dense[s:s + binary.shape[0]] = binary
        del part, binary
    return encoded if rle else dense
