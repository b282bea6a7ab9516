"""What a dataset returns (:class:`DataBundle`) and the in-memory image dataset they share."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset

from framework.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """What a dataset callable returns: the splits and what the model must adapt to.

    The dataset contract. A dataset is any callable named by ``dataset._target_`` (a function or
    a class; ``conf/dataset/<name>.yaml`` or your own config folder) that returns a
    ``DataBundle``. Besides its YAML keys, it is given the runtime inputs its signature takes
    (and no others):

    - ``seed`` (int): the run's seed (for a seeded subsample; a fixed split should use a seed
      of its own, e.g. ``data_seed``);
    - ``label_type`` (str): what the task trains on, ``class``, ``multi_hot`` or ``value``.

    A sample ``dataset[i]`` is ``(x, y)``:

    - ``x``: the model's input, usually an image ``(C, H, W)`` float32 (any tensor your model
      takes);
    - ``y``: by the task's ``label_type``: ``class`` an int64 scalar in ``[0, num_classes)``;
      ``multi_hot`` float32 ``(K,)`` of 0/1 (``K = num_classes``); ``value`` float32 ``(K,)``
      (or a scalar when ``K = 1``).

    Attributes:
        train: training samples (a ``torch.utils.data.Dataset``: ``len`` and ``[i]``).
        val: validation samples, same format (evaluated after every epoch).
        num_classes: the model's output size ``K``: classes, labels or regression targets.
        in_chans: input channels ``C`` (given to models that take ``in_chans``).
        img_size: input side ``H`` (= ``W``), pixels (given to models that take ``img_size``).
        test: test samples, same format, or None (no test split).
        classes: the names of the ``K`` outputs (class names, label or target column names),
            or None; kept in checkpoints and ``summary.json``.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    img_size: int
    test: Optional[Dataset] = None
    classes: Optional[list[str]] = None


def check_img_size(img_size: Optional[int], default: str = "") -> None:
    """``dataset.img_size``: None (the dataset's own size, named by ``default``) or >= 8 pixels.

    Raises:
        ConfigError: a size under 8 pixels.
    """
    if img_size is not None and img_size < 8:
        raise ConfigError(f"dataset.img_size={img_size}: must be >= 8 pixels" + (f" (or null for {default})" if default
                                                                                else ""))


#: Images per batch that the memory check of datasets making float32 images on access assumes.
BATCH_GUESS = 64


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations now: ``MemAvailable`` of ``/proc/meminfo``
    (Linux), else the machine's physical memory (``os.sysconf``), else None (unknown).

    The one place the data checks read it (tests monkeypatch it).
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(keys: str, nbytes: int, detail: str, fix: str, what: str = "the images") -> None:
    """Refuse, before allocating them, tensors that would not fit in the memory available.

    Args:
        keys: the config keys that set the size, as ``key=value`` (comma-separated); the
            message starts with them.
        nbytes: estimated size of the tensors, bytes.
        detail: what the estimate counts, e.g. ``1,797 images of 1x32x32 float32``.
        fix: what to change, e.g. ``use a smaller dataset.img_size``.
        what: the subject of the message.

    Raises:
        ConfigError: ``nbytes`` over :func:`available_memory` (GB = 10^9 bytes in the message);
            use smaller values of ``keys``, as ``fix`` says.
    """
    available = available_memory()
    if available is not None and nbytes > available:
        raise ConfigError(f"{keys}: {what} would take {nbytes / 1e9:,.1f} GB in memory ({detail}), "
                          f"{available / 1e9:,.1f} GB available; {fix}")


def check_batch_memory(img_size: Optional[int], chans: int, size: int) -> None:
    """For datasets that make each float32 image on access (resize, transforms): refuse an image
    side whose batch of :data:`BATCH_GUESS` images would not fit in memory.

    Args:
        img_size: the ``dataset.img_size`` value (for the message; None = the dataset's default).
        chans: channels ``C``.
        size: the side ``S`` the images are made at, pixels.

    Raises:
        ConfigError: ``BATCH_GUESS x C x S x S x 4`` bytes over the memory available; use a
            smaller ``dataset.img_size``.
    """
    check_memory(f"dataset.img_size={'null' if img_size is None else img_size}", BATCH_GUESS * chans * size * size * 4,
                 f"{BATCH_GUESS} x {chans}x{size}x{size} float32", "use a smaller dataset.img_size",
                 what=f"a batch of {BATCH_GUESS} images")


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


def _check_count(n: Optional[int], available: int, key: str) -> None:
    """``key=n``: None, or between 1 and the ``available`` samples.

    Raises:
        ConfigError: ``n`` out of that range.
    """
    if n is not None and not 1 <= n <= available:
        raise ConfigError(f"{key}={n}: must be between 1 and {available} for this dataset (or null)")


def _subsample(x: torch.Tensor, y: torch.Tensor, n: Optional[int], seed: int, key: str):
    """First ``n`` samples of a seeded permutation (all of them when ``n`` is None).

    Raises:
        ConfigError: ``n`` not between 1 and ``len(x)``.
    """
    _check_count(n, len(x), key)
    if n is None:
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]



class ImageTensorDataset(Dataset):
    """Images kept as ``uint8`` ``(N, C, H, W)``, turned into normalised ``float32`` on access.

    With ``augment`` a training sample is made as: timm's ``auto_augment`` policy on the
    ``uint8`` image (as a PIL image, mode ``L`` or ``RGB``, at its stored side ``H``; the same
    policy strings as ``dataset=imagefolder``) -> normalise and resize to ``S`` -> random crop
    (padding ``S // 8``) and horizontal flip -> timm's random erasing (``re_prob``). Such a
    dataset augments per sample, so the device-resident loader never takes it
    (:func:`~framework.data.loaders.fits_on_device`).

    Args:
        images: ``(N, C, H, W)`` uint8, values 0…255.
        labels: ``(N,)`` int64.
        mean: per-channel mean of ``images / 255``, ``C`` floats.
        std: per-channel std of ``images / 255``, ``C`` floats.
        img_size: output side ``S`` (bilinear resize when it differs from ``H``); None = keep.
        augment: random crop (padding ``S // 8``) and horizontal flip, for training splits.
        auto_augment: timm's policy string (``rand-m9-mstd0.5-inc1``, ...); None = none.
            Needs ``augment``.
        re_prob: random-erasing probability per image, in [0, 1]; 0 = off. Needs ``augment``.
        re_mode: random-erasing fill, ``const``, ``rand`` or ``pixel``.
        re_count: most erased rectangles per image, >= 1.

    Items are ``(image (C, S, S) float32, label int64)``.

    Raises:
        ConfigError: an augmentation key out of range, set without ``augment``, or a policy
            timm does not know (:func:`~framework.data.augment.check_augment`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
                 img_size: Optional[int] = None, augment: bool = False, auto_augment: Optional[str] = None,
                 re_prob: float = 0.0, re_mode: str = "const", re_count: int = 1):
        from framework.data.augment import check_augment, policy_transform, random_erasing

        check_augment(augment, auto_augment, re_prob, re_mode, re_count)
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.img_size = img_size if img_size is not None else images.shape[-1]
        self.augment = None
        self.policy = None  # timm's auto_augment policy, PIL -> PIL, before normalisation
        if augment:
            from torchvision.transforms import v2

            erase = random_erasing(re_prob, re_mode, re_count)
            self.augment = v2.Compose([v2.RandomCrop(self.img_size, padding=self.img_size // 8),
                                       v2.RandomHorizontalFlip()] + ([erase] if erase is not None else []))
            self.policy = policy_transform(auto_augment, images.shape[1], images.shape[-1], mean)

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
        image = self.images[i]
        if self.policy is not None:
            from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

            image = pil_to_tensor(self.policy(to_pil_image(image)))
        x = self.prepare(image[None], self.mean, self.std)[0]
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]
