"""Datasets (``conf/dataset/*.yaml``) and the loaders built from them.

A dataset callable returns a :class:`DataBundle`: train and validation ``Dataset`` objects plus
what the model must adapt to (classes, channels, image size).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from framework.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """Train/val datasets and their shape.

    Attributes:
        train: training samples, each ``(image (C, H, W) float32, label int64)``.
        val: validation samples, same format.
        num_classes: number of labels.
        in_chans: ``C``.
        img_size: ``H`` (= ``W``), pixels.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    img_size: int


def _subsample(x: torch.Tensor, y: torch.Tensor, n: Optional[int], seed: int, key: str):
    """First ``n`` samples of a seeded permutation (all of them when ``n`` is None)."""
    if n is None:
        return x, y
    if not 1 <= n <= len(x):
        raise ConfigError(f"{key}={n}: must be between 1 and {len(x)} for this dataset (or null)")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


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
        ConfigError: ``val_frac``, ``img_size`` or ``train_size`` out of range.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < val_frac < 1:
        raise ConfigError(f"dataset.val_frac={val_frac}: must be in (0, 1), e.g. 0.2")
    if img_size < 8:
        raise ConfigError(f"dataset.img_size={img_size}: must be >= 8 pixels")
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_val = train_test_split(
        torch.arange(len(y)).numpy(), test_size=val_frac, stratify=y.numpy(), random_state=data_seed
    )
    if img_size != 8:
        x = torch.nn.functional.interpolate(x, size=img_size, mode="bilinear", align_corners=False)
    x_train, y_train = x[idx_train], y[idx_train]
    mean, std = x_train.mean(), x_train.std()
    x_train, x_val = (x_train - mean) / std, (x[idx_val] - mean) / std
    x_train, y_train = _subsample(x_train, y_train, train_size, seed, "dataset.train_size")
    return DataBundle(
        TensorDataset(x_train, y_train), TensorDataset(x_val, y[idx_val]), 10, 1, img_size
    )


def synthetic(
    seed: int,
    train_size: int = 512,
    val_size: int = 128,
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: int = 32,
    data_seed: int = 0,
) -> DataBundle:
    """Random images with learnable labels, for tests and benchmarks.

    Images are standard normal; the label of an image is the argmax of a fixed random linear
    map of it (seeded by ``data_seed``), so a model can fit the data.

    Args:
        seed: run seed (runtime; the data depend on ``data_seed`` only).
        train_size: number of training samples, >= 1.
        val_size: number of validation samples, >= 1.
        num_classes: number of labels, >= 2.
        in_chans: channels ``C``.
        img_size: side ``H = W``, pixels.
        data_seed: seed of the images and the labelling map.

    Returns:
        A :class:`DataBundle` with tensors ``(N, in_chans, img_size, img_size)``.

    Raises:
        ConfigError: a size or count out of range.
    """
    for key, value, low in (
        ("train_size", train_size, 1),
        ("val_size", val_size, 1),
        ("num_classes", num_classes, 2),
        ("in_chans", in_chans, 1),
        ("img_size", img_size, 1),
    ):
        if value < low:
            raise ConfigError(f"dataset.{key}={value}: must be >= {low}")
    g = torch.Generator().manual_seed(data_seed)
    n = train_size + val_size
    x = torch.randn(n, in_chans, img_size, img_size, generator=g)
    w = torch.randn(in_chans * img_size * img_size, num_classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return DataBundle(
        TensorDataset(x[:train_size], y[:train_size]),
        TensorDataset(x[train_size:], y[train_size:]),
        num_classes,
        in_chans,
        img_size,
    )


class ImageTensorDataset(Dataset):
    """Images kept as ``uint8`` ``(N, C, H, W)``, turned into normalised ``float32`` on access.

    Args:
        images: ``(N, C, H, W)`` uint8, values 0…255.
        labels: ``(N,)`` int64.
        mean: per-channel mean of ``images / 255``, ``C`` floats.
        std: per-channel std of ``images / 255``, ``C`` floats.
        img_size: output side ``S`` (bilinear resize when it differs from ``H``); None = keep.
        augment: random crop (padding ``S // 8``) and horizontal flip, for training splits.

    Items are ``(image (C, S, S) float32, label int64)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
                 img_size: Optional[int] = None, augment: bool = False):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.img_size = img_size if img_size is not None else images.shape[-1]
        self.augment = None
        if augment:
            from torchvision.transforms import v2

            self.augment = v2.Compose([v2.RandomCrop(self.img_size, padding=self.img_size // 8),
                                       v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = (self.images[i].float() / 255.0 - self.mean) / self.std
        if x.shape[-1] != self.img_size:
            x = torch.nn.functional.interpolate(x[None], size=self.img_size, mode="bilinear", align_corners=False)[0]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]


#: torchvision dataset classes by config name, with their classes and where their files go.
TORCHVISION = {
    "mnist": ("MNIST", 10, "MNIST/raw/ (train-images-idx3-ubyte, ..., unzipped)"),
    "fashion_mnist": ("FashionMNIST", 10, "FashionMNIST/raw/ (train-images-idx3-ubyte, ..., unzipped)"),
    "cifar10": ("CIFAR10", 10, "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)"),
    "cifar100": ("CIFAR100", 100, "cifar-100-python/ (the extracted cifar-100-python.tar.gz)"),
}


def torchvision_dataset(
    seed: int,
    name: str,
    root: str = "data",
    download: bool = False,
    img_size: Optional[int] = None,
    augment: bool = False,
    train_size: Optional[int] = None,
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

    Returns:
        A :class:`DataBundle` of :class:`ImageTensorDataset` ``(N, C, img_size, img_size)``.

    Raises:
        ConfigError: unknown ``name``; ``root`` missing or without the files (with the folder
            the files belong in); a failed download; ``img_size`` or ``train_size`` out of range.
    """
    import os

    import torchvision

    if name not in TORCHVISION:
        raise ConfigError(f"dataset.name={name}: unknown; use one of {', '.join(TORCHVISION)}")
    cls_name, num_classes, layout = TORCHVISION[name]
    if img_size is not None and img_size < 8:
        raise ConfigError(f"dataset.img_size={img_size}: must be >= 8 pixels (or null for the native size)")
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
    scaled = x_train.float() / 255.0
    mean, std = scaled.mean((0, 2, 3)).tolist(), scaled.std((0, 2, 3)).tolist()
    size = img_size or x_train.shape[-1]
    return DataBundle(ImageTensorDataset(x_train, y_train, mean, std, size, augment),
                      ImageTensorDataset(x_val, y_val, mean, std, size), num_classes, x_train.shape[1], size)


def _remove_empty_folders(root: str, keep_root: bool) -> None:
    """Remove the empty folders a failed download left under ``root`` (and ``root`` when it is
    empty and was not there before)."""
    import os

    if not os.path.isdir(root):
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
        if (folder != root or not keep_root) and not os.listdir(folder):
            os.rmdir(folder)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices that are a pure function of ``(seed, epoch)``, resumable mid-epoch.

    Epoch ``e`` visits ``torch.randperm(n)`` drawn from a generator seeded with
    ``seed * 1_000_003 + e`` (as ``DistributedSampler`` derives its order from seed and epoch),
    skipping the first ``start`` indices after :meth:`set_epoch` with ``start > 0``: a run
    resumed at batch ``b`` sees exactly the batches it would have seen.

    Args:
        num_samples: dataset length ``n``.
        seed: run seed.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed = num_samples, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select epoch ``epoch`` and skip its first ``start`` indices (samples already seen)."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g)[self.start:].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_loaders(data: DataBundle, batch_size: int, seed: int, device: torch.device):
    """Train loader (shuffled by ``seed``) and validation loader (in order, batch ×2).

    Args:
        data: the datasets.
        batch_size: samples per forward pass.
        seed: seeds the :class:`EpochSampler`, so the data order is a function of seed and epoch.
        device: pins memory when it is CUDA.

    Returns:
        ``(train_loader, val_loader)``; the train loader drops a last batch of exactly one
        sample (BatchNorm cannot train on it), so the step count ``T`` reflects that.
    """
    pin = device.type == "cuda"
    # A last batch of one sample breaks BatchNorm in training mode; drop it (one sample per epoch).
    drop_last = len(data.train) % batch_size == 1 and len(data.train) > 1
    if drop_last:
        log.info("batch_size=%d leaves a last batch of 1 sample: it is dropped each epoch", batch_size)
    train = DataLoader(data.train, batch_size=batch_size, sampler=EpochSampler(len(data.train), seed),
                       pin_memory=pin, drop_last=drop_last)
    val = DataLoader(data.val, batch_size=2 * batch_size, shuffle=False, pin_memory=pin)
    return train, val
