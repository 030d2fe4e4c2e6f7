"""Sample a fixed-size, class-balanced minibatch of anchors or RoIs per image.

torchvision's ``models.detection._utils.BalancedPositiveNegativeSampler`` (paper section 3,
"Training": 256 anchors per image at most half positive for the RPN, and 512 -- here 256 --
RoIs per image with 25 % positives for the heads), with the randomness made explicit: an
``np.random.Generator`` is passed in, so a seed reproduces the sample.

Per image, with ``P`` positives and ``Q`` negatives:

- ``num_pos = min(P, int(batch_size_per_image * positive_fraction))``
- ``num_neg = min(Q, batch_size_per_image - num_pos)`` (negatives fill the positives' shortfall)
- positives and negatives are chosen uniformly at random without replacement (a random
  permutation of each set, cut at the count; torchvision uses ``torch.randperm`` the same way).
"""

from __future__ import annotations

import numpy as np

from minimaskrcnn._validate import check_array, check_scalar
from minimaskrcnn.backend import to_numpy

__all__ = ["BalancedPositiveNegativeSampler", "per_image_rngs"]


def per_image_rngs(rng, n: int) -> list[np.random.Generator]:
    """``n`` generators, one per image: ``rng`` itself ``n`` times (one stream shared by the
    batch, consumed image after image) or, for a list/tuple of ``n`` Generators, that list.

    Raises:
        TypeError: ``rng`` is neither a Generator nor a list of Generators.
        ValueError: a list whose length is not ``n``.
    """
    if isinstance(rng, np.random.Generator):
        return [rng] * n
    if isinstance(rng, (list, tuple)) and all(isinstance(r, np.random.Generator) for r in rng):
        if len(rng) != n:
            raise ValueError(f"rng: got {len(rng)} per-image generators for {n} images")
        return list(rng)
    raise TypeError("rng must be a numpy.random.Generator or a list of one Generator per image, "
                    f"got {type(rng).__name__}")


class BalancedPositiveNegativeSampler:
    """Choose ``batch_size_per_image`` elements per image, at most a ``positive_fraction`` positive.

    Args:
        batch_size_per_image: elements sampled per image (RPN 256, RoI heads 256 in nuclei-mini).
        positive_fraction: the largest share of positives (RPN 0.5, RoI heads 0.25).

    Raises:
        TypeError / ValueError: ``batch_size_per_image`` is not a non-negative integer, or
            ``positive_fraction`` is not in ``[0, 1]``.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        check_scalar("batch_size_per_image", batch_size_per_image, minimum=0, integer=True)
        check_scalar("positive_fraction", positive_fraction, minimum=0.0, maximum=1.0)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
                f"positive_fraction={self.positive_fraction})")

    def __call__(self, labels, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Sample positives and negatives in every image.

        Args:
            labels: list (one per image) of ``(N_i,)`` integer arrays: ``>= 1`` positive (1, or
                the class label 1..K as torchvision accepts), ``0`` negative, ``-1`` (any negative
                value) ignored.
            rng: a ``np.random.Generator`` shared by the batch (advanced in image order), or a
                list of one Generator per image (each image's sample then depends on its own
                stream only, so a batch split across data-parallel ranks samples exactly as one
                process does). Per image: two draws, positives then
                negatives draws per image).

        Returns:
            ``(pos_masks, neg_masks)``: two lists of ``(N_i,)`` bool arrays, ``True`` where the
            element was sampled as positive (negative). A mask never marks an ignored element.

        Raises:
            TypeError: ``labels`` is not a list/tuple of integer arrays, or ``rng`` is not a
                ``np.random.Generator``.
            ValueError: an element of ``labels`` is not 1-D.
        """
        if not isinstance(labels, (list, tuple)):
            raise TypeError(f"labels must be a list of (N,) integer arrays, one per image, "
                            f"got {type(labels).__name__}")
        rngs = per_image_rngs(rng, len(labels))
        pos_masks, neg_masks = [], []
        for i, (labels_per_image, rng_i) in enumerate(zip(labels, rngs, strict=True)):
            lab = check_array(f"labels[{i}]", labels_per_image, ndim=1, expected="(N,) int")
            if not np.issubdtype(lab.dtype, np.integer):
                raise TypeError(f"labels[{i}] must be an integer array, got {lab.dtype}")
            lab = to_numpy(lab)  # sampling runs on the host (CuPy labels are copied)
            positive = np.flatnonzero(lab >= 1)
            negative = np.flatnonzero(lab == 0)

            num_pos = min(positive.size, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.size, self.batch_size_per_image - num_pos)

            pos_chosen = positive[rng_i.permutation(positive.size)[:num_pos]]
            neg_chosen = negative[rng_i.permutation(negative.size)[:num_neg]]

            pos_mask = np.zeros(lab.shape, dtype=bool)
            neg_mask = np.zeros(lab.shape, dtype=bool)
            pos_mask[pos_chosen] = True
            neg_mask[neg_chosen] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
