"""MNIST, Fashion-MNIST, CIFAR-10/100 through ``torchvision.datasets`` (``dataset.root``, ``dataset.download``)."""
from __future__ import annotations

import logging
import re
from typing import Optional

import torch

from framework.errors import ConfigError
from framework.data.augment import check_augment
from framework.data.base import (DataBundle, ImageTensorDataset, _subsample, channel_stats, check_batch_memory,
                                 check_img_size)

log = logging.getLogger(__name__)


#: torchvision dataset classes by config name, with their classes, channels, native side (pixels)
#: and where their files go.
TORCHVISION = {
    "mnist": ("MNIST", 10, 1, 28, "MNIST/raw/ (train-images-idx3-ubyte, ..., unzipped)"),
    "fashion_mnist": ("FashionMNIST", 10, 1, 28, "FashionMNIST/raw/ (train-images-idx3-ubyte, ..., unzipped)"),
    "cifar10": ("CIFAR10", 10, 3, 32, "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)"),
    "cifar100": ("CIFAR100", 100, 3, 32, "cifar-100-python/ (the extracted cifar-100-python.tar.gz)"),
}


def torchvision_dataset(
    seed: int,
    name: str,
    root: str = "data",
    download: bool = False,
    img_size: Optional[int] = None,
    augment: bool = False,
    train_size: Optional[int] = None,
    auto_augment: Optional[str] = None,
    re_prob: float = 0.0,
    re_mode: str = "const",
    re_count: int = 1,
) -> DataBundle:
    """MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 through ``torchvision.datasets``.

    The official train split trains and the official test split validates. Pixels are scaled to
    [0, 1] and normalised per channel with the training split's mean and std.

    Args:
        seed: run seed (runtime); picks the ``train_size`` subsample.
        name: ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
        root: folder holding the files in torchvision's layout (relative to the working directory).
        download: fetch the files into ``root`` when they are missing.
        img_size: output side, pixels (bilinear resize); None = native (28 or 32).
        augment: random crop (padding ``img_size // 8``) and horizontal flip of training images.
        train_size: keep this many training samples (seeded subsample); null = all.
        auto_augment: timm's augmentation policy for training images, applied to the stored
            image before normalisation (the strings of ``dataset=imagefolder``:
            ``rand-m9-mstd0.5-inc1``, ...); null = none. Needs ``augment``.
        re_prob: timm's random-erasing probability per training image, in [0, 1]; 0 = off.
        re_mode: random-erasing fill, ``const``, ``rand`` or ``pixel``.
        re_count: most erased rectangles per image, >= 1.

    Returns:
        A :class:`DataBundle` of :class:`ImageTensorDataset` ``(N, C, img_size, img_size)``, with
        torchvision's class names (``classes``).

    Raises:
        ConfigError: unknown ``name``; ``root`` missing or without the files (with the folder
            the files belong in); a failed download; ``img_size`` or ``train_size`` out of range;
            a batch of 64 images at ``img_size`` (``64 x C x img_size² x 4`` bytes, made on
            access) over the memory available (checked before any download); an augmentation
            key out of range, set with ``augment`` off, or a policy timm does not know.
    """
    import os

    import torchvision

    if name not in TORCHVISION:
        raise ConfigError(f"dataset.name={name}: unknown; use one of {', '.join(TORCHVISION)}")
    cls_name, num_classes, chans, native, layout = TORCHVISION[name]
    check_img_size(img_size, "the native size")
    check_augment(augment, auto_augment, re_prob, re_mode, re_count)
    check_batch_memory(img_size, chans, img_size or native)
    where = os.path.abspath(os.path.expanduser(root))
    if not download and not os.path.isdir(where):
        raise ConfigError(f"dataset.root={root}: no such folder ({where}); put the {cls_name} files in "
                          f"{os.path.join(where, layout)} or use dataset.download=true")
    cls = getattr(torchvision.datasets, cls_name)
    existed = os.path.isdir(where)
    try:
        train, val = (cls(where, train=split, download=download) for split in (True, False))
    except (RuntimeError, OSError) as exc:  # "Dataset not found or corrupted", "Error downloading", no network
        _remove_empty_folders(where, keep_root=existed)
        text = " ".join(str(exc).split())
        fetching = download and ("download" in text.lower() or isinstance(exc, OSError))
        reason = re.search(r"<urlopen error (.*?)>", text)
        text = reason.group(1) if reason else (text if len(text) <= 160 else text[:157].rsplit(" ", 1)[0] + " ...")
        if fetching:
            raise ConfigError(f"dataset.download=true: fetching {cls_name} into {where} failed ({text}; no network?); "
                              f"download the files elsewhere and put them in {os.path.join(where, layout)}")
        raise ConfigError(f"dataset.root={root}: no readable {cls_name} files there ({text}); "
                          f"put them in {os.path.join(where, layout)}"
                          + ("" if download else " or use dataset.download=true"))

    def tensors(ds):
        x = torch.as_tensor(ds.data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, H, W) or (N, H, W, C) -> (N, C, H, W)
        return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)

    (x_train, y_train), (x_val, y_val) = tensors(train), tensors(val)
    x_train, y_train = _subsample(x_train, y_train, train_size, seed, "dataset.train_size")
    mean, std = channel_stats(x_train)
    size = img_size or x_train.shape[-1]
    classes = [str(c) for c in getattr(train, "classes", None) or []] or None  # torchvision's names
    return DataBundle(ImageTensorDataset(x_train, y_train, mean, std, size, augment, auto_augment, re_prob, re_mode,
                                         re_count),
                      ImageTensorDataset(x_val, y_val, mean, std, size), num_classes, x_train.shape[1], size,
                      classes=classes)


def _remove_empty_folders(root: str, keep_root: bool) -> None:
    """Remove the empty folders a failed download left under ``root`` (and ``root`` when it is
    empty and was not there before)."""
    import os

    if not os.path.isdir(root):
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
        if (folder != root or not keep_root) and not os.listdir(folder):
            os.rmdir(folder)


