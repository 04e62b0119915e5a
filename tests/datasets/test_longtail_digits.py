"""Long-tailed digits: the exponential profile, the fixed balanced test split, the frequency groups."""

import numpy as np
import pytest
import torch

from datasets.longtail_digits import exponential_counts, group_accuracy, make_longtail_digits


def test_exponential_profile():
    counts = exponential_counts(120, 10, 10)
    assert counts[0] == 120 and counts[-1] == 12
    expected = [120 * 10 ** (-r / 9) for r in range(10)]
    assert all(abs(c - e) <= 0.5 for c, e in zip(counts, expected))
    assert exponential_counts(120, 10, 1) == [120] * 10
    with pytest.raises(ValueError, match="imbalance ratio"):
        exponential_counts(120, 10, 0.5)


def test_split_is_long_tailed_with_a_fixed_balanced_test_set():
    a, b = make_longtail_digits(10, seed=0), make_longtail_digits(50, seed=3)
    for split, ratio in ((a, 10), (b, 50)):
        train_counts = np.bincount(split.train_labels.numpy(), minlength=10).tolist()
        assert train_counts == split.counts
        assert sorted(split.counts, reverse=True) == exponential_counts(120, 10, ratio)
        assert np.bincount(split.test_labels.numpy()).tolist() == [50] * 10
        assert split.train_images.shape[1:] == (1, 8, 8) and 0 <= split.train_images.min()
        assert split.train_images.max() <= 1
        # No test image among the training images, compared by content.
        train_rows = {tuple(x.flatten().tolist()) for x in split.train_images}
        assert not any(tuple(x.flatten().tolist()) in train_rows for x in split.test_images)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)


def test_groups_follow_the_frequency_ranks():
    split = make_longtail_digits(50, seed=1)
    by_rank = sorted(range(10), key=lambda c: -split.counts[c])
    assert split.groups == {"Many": sorted(by_rank[:3]), "Medium": sorted(by_rank[3:7]),
                            "Few": sorted(by_rank[7:])}
    counts = split.counts
    assert min(counts[c] for c in split.groups["Many"]) > max(counts[c] for c in split.groups["Few"])


def test_group_accuracy_is_the_mean_over_the_groups_images():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 0])
    acc = group_accuracy(preds, labels, {"Many": [0], "Medium": [1], "Few": [2]})
    assert acc == pytest.approx({"All": 50.0, "Many": 50.0, "Medium": 100.0, "Few": 0.0})
