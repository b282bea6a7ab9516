"""What a dataset returns (:class:`DataBundle`) and the in-memory image dataset they share."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset

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


def check_img_size(img_size: Optional[int], default: str = "") -> None:
    """``dataset.img_size``: None (the dataset's own size, named by ``default``) or >= 8 pixels.

    Raises:
        ConfigError: a size under 8 pixels.
    """
    if img_size is not None and img_size < 8:
        raise ConfigError(f"dataset.img_size={img_size}: must be >= 8 pixels" + (f" (or null for {default})" if default
                                                                                else ""))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of ``images / 255``, summed in float64 chunks so a
    large ``uint8`` dataset is never copied whole to float.

    Args:
        images: ``(N, C, H, W)`` uint8.
        chunk: images per chunk.

    Returns:
        ``(mean, std)``, ``C`` floats each.
    """
    c = images.shape[1]
    total, total_sq = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
    n = images.numel() // c
    mean = total / n
    var = (total_sq - n * mean * mean) / max(n - 1, 1)
    return mean.tolist(), var.clamp_min(0).sqrt().tolist()


def _subsample(x: torch.Tensor, y: torch.Tensor, n: Optional[int], seed: int, key: str):
    """First ``n`` samples of a seeded permutation (all of them when ``n`` is None)."""
    if n is None:
        return x, y
    if not 1 <= n <= len(x):
        raise ConfigError(f"{key}={n}: must be between 1 and {len(x)} for this dataset (or null)")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]



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

    def prepare(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """``uint8`` images ``(B, C, H, W)`` -> normalised float32 ``(B, C, S, S)``, ``S = img_size``
        (bilinear resize): the arithmetic of every sample and of the device loader's batches.

        Args:
            images: ``(B, C, H, W)`` uint8, on any device.
            mean, std: ``(C, 1, 1)`` on the images' device.
        """
        x = (images.float() / 255.0 - mean) / std
        if x.shape[-1] != self.img_size:
            x = torch.nn.functional.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False)
        return x

    def __getitem__(self, i: int):
        x = self.prepare(self.images[i][None], self.mean, self.std)[0]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]


