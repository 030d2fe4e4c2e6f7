"""Seeded training batches: a pure function of (seed, iteration), so a resumed run sees exactly
the data an uninterrupted one would.

Every random draw of a run comes from ``sample_rng(seed, stream, counter) =
np.random.default_rng([seed, stream, counter])``, one :class:`Stream` per purpose.

Data order: the training images are visited in epochs, each a permutation drawn from stream
``DATA_ORDER`` (counter: the epoch); sample number ``p = iteration * batch_size + k`` (k-th image
of the batch) is image ``perm(p // n)[p % n]``. Its crop and flips are drawn from stream
``CROPS`` (counter ``p``), and the model samples its anchors and RoIs for that image from stream
``SAMPLING`` (counter ``p``); the initial weights come from ``MODEL_INIT`` (counter 0). Nothing
else is consumed, so the batch of iteration t needs no state from iterations 0..t-1 (the
checkpoint stores ``seed`` and ``iteration``, which is the whole data RNG state), and every
image's draws depend on its sample number alone: a data-parallel rank that takes images ``ks``
of each batch sees exactly what one process sees of them.
"""

from __future__ import annotations

import enum

import numpy as np

from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.transforms import (
    NO_AUGMENTATION,
    Augmentation,
    crop_instances,
    sample_crop,
    standardize,
)

__all__ = ["Stream", "TrainBatches", "sample_rng"]


class Stream(enum.IntEnum):
    """The random streams of a run, by purpose. The numbers are part of every run's data (a
    checkpoint resumes on them, the golden batch is drawn from them): never renumber."""

    DATA_ORDER = 0
    """The permutation of the training images in each epoch (counter: the epoch)."""
    CROPS = 1
    """One image's crop window and flips (counter: its sample number)."""
    SAMPLING = 2
    """The model's anchor and RoI sampling for one image (counter: its sample number)."""
    MODEL_INIT = 3
    """The initial weights (counter 0)."""

    @classmethod
    def describe(cls) -> str:
        """One line naming the streams and their counters (stored in checkpoints)."""
        counters = {cls.DATA_ORDER: "epoch", cls.CROPS: "sample", cls.SAMPLING: "sample",
                    cls.MODEL_INIT: "0"}
        return ("np.random.default_rng([seed, stream, counter]); "
                + ", ".join(f"stream {s.value} {s.name.lower()} (counter {counters[s]})"
                            for s in cls))


def sample_rng(seed: int, stream: Stream | int, counter: int) -> np.random.Generator:
    """The generator of one counter of one :class:`Stream`: ``np.random.default_rng([seed,
    stream, counter])`` (``DATA_ORDER``: counter the epoch; ``CROPS`` and ``SAMPLING``: the
    sample number; ``MODEL_INIT``: 0)."""
    return np.random.default_rng([int(seed), int(stream), int(counter)])


class TrainBatches:
    """Training batches of random crops, standardised.

    Args:
        dataset: a :class:`CocoDataset`.
        batch_size: images per iteration (one crop each).
        crop_size, hflip_prob, vflip_prob: the transform (see ``transforms``).
        seed: the run's seed.
        indices: the dataset indices to train on; default every image with at least one
            non-crowd instance (as torchvision's reference drops empty images from training).
        image_scale: crops of the images resized by this factor (``ModelConfig.image_scale``;
            :func:`~minimaskrcnn.data.transforms.sample_crop`).
        augment: scale jitter, rotations and photometric jitter
            (:class:`~minimaskrcnn.data.transforms.Augmentation`; default none).

    ``batches.batch(t)`` -> list of ``batch_size`` pairs ``(image (3, crop, crop) float32,
    target)``; target as :func:`~minimaskrcnn.data.transforms.random_crop_flip` returns it.

    Raises:
        ValueError: no image to train on, or a batch size < 1.
    """

    def __init__(self, dataset: CocoDataset, batch_size: int, crop_size: int, hflip_prob: float,
                 vflip_prob: float, seed: int, indices=None, image_scale: float = 1.0,
                 augment: Augmentation = NO_AUGMENTATION):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if indices is None:
            indices = [i for i in range(len(dataset)) if dataset.has_instances(i)]
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError(f"{dataset.source}: no image with instances to train on")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        self.hflip_prob = float(hflip_prob)
        self.vflip_prob = float(vflip_prob)
        self.seed = int(seed)
        self.image_scale = image_scale
        self.augment = augment
        self._perm_epoch = -1
        self._perm = None

    @classmethod
    def from_config(cls, dataset: CocoDataset, train_cfg, indices=None, *,
                    image_scale: float = 1.0) -> TrainBatches:
        """Batches as a :class:`~minimaskrcnn.config.TrainConfig` describes them (and the
        model's ``image_scale``)."""
        return cls(dataset, train_cfg.batch_size, train_cfg.crop_size, train_cfg.hflip_prob,
                   train_cfg.vflip_prob, train_cfg.seed, indices, image_scale,
                   Augmentation.from_config(train_cfg))

    def image_index(self, position: int) -> int:
        """Dataset index of sample number ``position`` of the run."""
        n = self.indices.size
        epoch, offset = divmod(int(position), n)
        if epoch != self._perm_epoch:
            rng = sample_rng(self.seed, Stream.DATA_ORDER, epoch)
            self._perm = rng.permutation(self.indices)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def positions(self, iteration: int, ks=None) -> list[int]:
        """Sample numbers ``p = iteration * batch_size + k`` of the batch's images ``k`` in
        ``ks`` (default: all): the key of each image's crop and sampling streams."""
        ks = range(self.batch_size) if ks is None else ks
        return [iteration * self.batch_size + int(k) for k in ks]

    def instance_counts(self, iteration: int) -> list[int]:
        """The instances of each crop of the batch of ``iteration`` (``batch_size`` ints), from
        the annotations alone (:func:`~minimaskrcnn.data.transforms.crop_instances`, the same
        draws as :meth:`batch`): what every data-parallel rank knows of the batch's work before
        the forward pass, cheaply (no image is read)."""
        return [crop_instances(self.dataset, self.image_index(p), self.crop_size,
                               sample_rng(self.seed, Stream.CROPS, p),
                               image_scale=self.image_scale, augment=self.augment)
                for p in self.positions(iteration)]

    def batch(self, iteration: int, ks=None) -> list[tuple[np.ndarray, dict]]:
        """The batch of ``iteration``, or only its images ``ks`` (a data-parallel rank's share,
        :func:`minimaskrcnn.distributed.balance_batch`): each image is a function of its
        sample number alone, so a share is exactly those images of the whole batch.

        Raises:
            ValueError: an index in ``ks`` outside ``[0, batch_size)``.
        """
        if ks is not None and any(not 0 <= int(k) < self.batch_size for k in ks):
            raise ValueError(f"batch indices must lie in [0, {self.batch_size}), got {list(ks)}")
        out = []
        for p in self.positions(iteration, ks):
            image, target = sample_crop(self.dataset, self.image_index(p), self.crop_size,
                                        self.hflip_prob, self.vflip_prob,
                                        sample_rng(self.seed, Stream.CROPS, p),
                                        image_scale=self.image_scale, augment=self.augment)
            out.append((standardize(image), target))
        return out

    def __iter__(self):
        t = 0
        while True:
            yield self.batch(t)
            t += 1
