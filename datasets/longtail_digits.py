"""Long-tailed handwritten digits: scikit-learn's ``load_digits`` (1,797 real 8x8 images, 10 classes,
174-183 per class) made long-tailed the way CIFAR-10-LT is made from CIFAR-10.

- Test: a balanced split of ``test_per_class`` images per class, drawn once with a fixed seed (the same
  for every run seed and every imbalance ratio), never subsampled.
- Train: from the remaining images, class of frequency rank r (0 = most frequent) keeps
  round(n_max * ratio ** (-r / (K - 1))) images (the exponential profile), drawn with the run seed.
  Which digit gets which rank is also drawn with the run seed, so that the tail is not always the
  same, possibly harder, digits.
- Many / Medium / Few: the long-tail literature (ImageNet-LT) splits classes by training-set size at
  100 and 20 images, thresholds made for up to 1,280 images per class; with at most 120 here, "Many"
  would hold one class at ratio 10. The classes are split by frequency rank instead, in thirds as
  CIFAR-10-LT studies do: the 3 most frequent (Many), the next 4 (Medium), the 3 rarest (Few).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NUM_CLASSES = 10
TEST_SPLIT_SEED = 0
GROUP_SIZES = {"Many": 3, "Medium": 4, "Few": 3}


@dataclass
class LongTailSplit:
    """Images (N, 1, 8, 8) scaled to [0, 1] and labels (N,); ``counts[c]`` training images of class c;
    ``groups`` maps Many/Medium/Few to their classes."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    counts: list[int]
    groups: dict[str, list[int]]


def exponential_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images per frequency rank: n_max * ratio ** (-r / (K - 1)), rounded, at least 1."""
    if ratio < 1:
        raise ValueError(f"imbalance ratio must be at least 1, got {ratio}")
    return [max(1, round(n_max * ratio ** (-r / (num_classes - 1)))) for r in range(num_classes)]


def frequency_groups(class_by_rank: list[int]) -> dict[str, list[int]]:
    """Many/Medium/Few classes from the classes listed most frequent first (sizes ``GROUP_SIZES``)."""
    groups, start = {}, 0
    for name, size in GROUP_SIZES.items():
        groups[name] = sorted(class_by_rank[start:start + size])
        start += size
    return groups


def make_longtail_digits(
    ratio: float, seed: int, test_per_class: int = 50, n_max: int = 120
) -> LongTailSplit:
    """The long-tailed train split of imbalance ``ratio`` for run ``seed``, and the balanced test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    fixed = np.random.default_rng(TEST_SPLIT_SEED)
    run = np.random.default_rng(seed)
    class_by_rank = [int(c) for c in run.permutation(NUM_CLASSES)]
    counts_by_rank = exponential_counts(n_max, NUM_CLASSES, ratio)
    counts = [0] * NUM_CLASSES
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        idx = fixed.permutation(np.flatnonzero(digits.target == c))
        if len(idx) < test_per_class + n_max:
            raise ValueError(f"digit {c} has {len(idx)} images: too few for {test_per_class} test "
                             f"and n_max {n_max} training images")
        test_idx.append(idx[:test_per_class])
    for rank, c in enumerate(class_by_rank):
        pool = np.setdiff1d(np.flatnonzero(digits.target == c), test_idx[c])
        counts[c] = counts_by_rank[rank]
        train_idx.append(run.choice(pool, counts[c], replace=False))
    train = torch.from_numpy(np.sort(np.concatenate(train_idx)))
    test = torch.from_numpy(np.sort(np.concatenate(test_idx)))
    return LongTailSplit(images[train], labels[train], images[test], labels[test], counts,
                         frequency_groups(class_by_rank))


def group_accuracy(predictions: Tensor, labels: Tensor, groups: dict[str, list[int]]) -> dict[str, float]:
    """Top-1 accuracy (%) over all test images and over the images of each group's classes."""
    correct = (predictions == labels).float()
    out = {"All": 100.0 * correct.mean().item()}
    for name, classes in groups.items():
        mask = torch.isin(labels, torch.tensor(classes))
        out[name] = 100.0 * correct[mask].mean().item()
    return out
