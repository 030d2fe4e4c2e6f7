"""BalancedPositiveNegativeSampler: counts, seeding, shortfalls, worked out by hand."""

import numpy as np
import pytest

from minimaskrcnn.model.sampler import BalancedPositiveNegativeSampler


def _labels(num_pos, num_neg, num_ignored, rng):
    lab = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignored, dtype=np.int64)
    return lab[rng.permutation(lab.size)]


def test_counts_and_subsets(rng):
    lab = _labels(10, 100, 20, rng)
    (pos,), (neg,) = BalancedPositiveNegativeSampler(16, 0.25)([lab], rng)
    assert pos.dtype == bool and pos.shape == lab.shape
    assert pos.sum() == 4 and neg.sum() == 12  # int(16 * 0.25) = 4 positives, 16 - 4 negatives
    assert (lab[pos] == 1).all() and (lab[neg] == 0).all()  # never an ignored element
    assert not (pos & neg).any()


def test_fewer_positives_than_allowed_are_filled_with_negatives(rng):
    lab = _labels(2, 50, 5, rng)
    (pos,), (neg,) = BalancedPositiveNegativeSampler(16, 0.5)([lab], rng)
    assert pos.sum() == 2 and neg.sum() == 14
    assert (lab[pos] == 1).all()


def test_fewer_negatives_than_needed(rng):
    lab = _labels(10, 3, 0, rng)
    (pos,), (neg,) = BalancedPositiveNegativeSampler(16, 0.5)([lab], rng)
    assert pos.sum() == 8 and neg.sum() == 3


def test_positive_count_is_truncated_and_class_labels_count_as_positive(rng):
    lab = np.array([2, 3, 1, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1], dtype=np.int64)
    (pos,), (neg,) = BalancedPositiveNegativeSampler(10, 0.25)([lab], rng)
    assert pos.sum() == 2 and neg.sum() == 8  # int(2.5) = 2
    assert (lab[pos] >= 1).all()


def test_several_images_and_an_empty_one(rng):
    labs = [_labels(3, 4, 1, rng), np.zeros(0, np.int64), np.full(5, -1, np.int64)]
    pos, neg = BalancedPositiveNegativeSampler(4, 0.5)(labs, rng)
    assert [p.shape for p in pos] == [(8,), (0,), (5,)]
    assert [int(p.sum()) for p in pos] == [2, 0, 0]
    assert [int(n.sum()) for n in neg] == [2, 0, 0]


def test_seeded_reproducibility():
    lab = _labels(30, 300, 10, np.random.default_rng(1))
    sampler = BalancedPositiveNegativeSampler(32, 0.25)
    a = sampler([lab, lab], np.random.default_rng(7))
    b = sampler([lab, lab], np.random.default_rng(7))
    c = sampler([lab, lab], np.random.default_rng(8))
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert any((x != y).any() for x, y in zip(a[0] + a[1], c[0] + c[1], strict=True))


def test_selection_is_uniform():
    # 2 of 4 positives per draw: each is chosen with probability 1/2, i.e. ~1000 of 2000 draws
    # (binomial sd ~22; the bounds are ~9 sd wide, and the seed makes it deterministic anyway).
    lab = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=np.int64)
    sampler = BalancedPositiveNegativeSampler(4, 0.5)
    rng = np.random.default_rng(0)
    counts = np.zeros(lab.size)
    for _ in range(2000):
        (pos,), (neg,) = sampler([lab], rng)
        counts += pos + neg
    np.testing.assert_array_less(np.abs(counts[:4] - 1000), 200)
    np.testing.assert_array_less(np.abs(counts[4:] - 2000 / 3), 200)  # 2 of 6 negatives


def test_bad_input(rng):
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedPositiveNegativeSampler(16, 1.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedPositiveNegativeSampler(-1, 0.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedPositiveNegativeSampler(2.5, 0.5)
    s = BalancedPositiveNegativeSampler(16, 0.5)
    with pytest.raises(TypeError, match="labels"):
        s(np.zeros(4, np.int64), rng)
    with pytest.raises(TypeError, match="rng"):
        s([np.zeros(4, np.int64)], 0)
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        s([np.zeros((2, 2), np.int64)], rng)
    with pytest.raises(TypeError, match=r"labels\[0\]"):
        s([np.zeros(4, np.float32)], rng)


def test_per_image_generators_make_each_image_independent_of_the_others():
    """With one Generator per image, an image's sample depends on its own stream only: sampling
    a batch equals sampling each image alone with the same stream (a split batch samples as
    the whole one)."""
    rng = np.random.default_rng(0)
    labs = [_labels(10, 100, 20, rng), _labels(3, 40, 5, rng), _labels(50, 60, 0, rng)]
    sampler = BalancedPositiveNegativeSampler(16, 0.25)
    pos, neg = sampler(labs, [np.random.default_rng([1, i]) for i in range(3)])
    for i, lab in enumerate(labs):
        (p,), (n,) = sampler([lab], [np.random.default_rng([1, i])])
        np.testing.assert_array_equal(p, pos[i])
        np.testing.assert_array_equal(n, neg[i])
    # one shared stream is consumed image after image: the second image's sample changes
    shared = sampler(labs, np.random.default_rng([1, 0]))
    assert not np.array_equal(shared[1][1], neg[1])
    with pytest.raises(ValueError, match="3 images"):
        sampler(labs, [np.random.default_rng(0)])
    with pytest.raises(TypeError, match="Generator"):
        sampler(labs, 0)
