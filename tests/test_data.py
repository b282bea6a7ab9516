"""Datasets: real digits split, synthetic shapes, seeded shuffling."""
from __future__ import annotations

import pytest
import torch

from framework.config import ConfigError
from framework.data import digits, make_loaders, synthetic


def test_digits_split_is_stratified_normalised_and_fixed():
    a = digits(seed=0)
    x, y = a.train.tensors
    xv, yv = a.val.tensors
    assert (len(x), len(xv)) == (1437, 360)  # 1,797 images, 20% held out
    assert x.shape[1:] == (1, 32, 32) and (a.num_classes, a.in_chans, a.img_size) == (10, 1, 32)
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-4
    per_class = torch.bincount(torch.cat([y, yv]), minlength=10)  # 178, 182, 177, ... images per digit
    assert ((torch.bincount(yv, minlength=10) - 0.2 * per_class).abs() <= 1).all()  # stratified
    b = digits(seed=123)  # the split does not depend on the run's seed
    assert torch.equal(b.val.tensors[0], xv)


def test_train_size_is_a_seeded_subsample():
    a, b, c = digits(seed=0, train_size=100), digits(seed=0, train_size=100), digits(seed=1, train_size=100)
    assert len(a.train) == 100
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    with pytest.raises(ConfigError, match="dataset.train_size=5000"):
        digits(seed=0, train_size=5000)


def test_synthetic_shapes_and_learnable_labels():
    d = synthetic(seed=0, train_size=50, val_size=10, num_classes=4, in_chans=2, img_size=8)
    assert d.train.tensors[0].shape == (50, 2, 8, 8) and len(d.val) == 10
    assert set(d.train.tensors[1].tolist()) <= set(range(4))
    with pytest.raises(ConfigError, match="dataset.num_classes=1"):
        synthetic(seed=0, num_classes=1)


def test_train_loader_order_is_a_function_of_the_seed():
    d = synthetic(seed=0, train_size=64, val_size=8, img_size=4)
    order = lambda seed: torch.cat([y for _, y in make_loaders(d, 8, seed, torch.device("cpu"))[0]])
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    val = make_loaders(d, 8, 0, torch.device("cpu"))[1]
    assert torch.equal(torch.cat([y for _, y in val]), d.val.tensors[1])  # not shuffled
