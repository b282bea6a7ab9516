"""Loaders: the seeded, resumable :class:`EpochSampler` and the train / validation loaders."""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from framework.data.base import DataBundle

log = logging.getLogger(__name__)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices that are a pure function of ``(seed, epoch)``, resumable mid-epoch, and
    split over the ranks of a data-parallel run.

    Epoch ``e`` visits ``torch.randperm(n)`` drawn from a generator seeded with
    ``seed * 1_000_003 + e`` (as ``DistributedSampler`` derives its order from seed and epoch),
    skipping the first ``start`` indices after :meth:`set_epoch` with ``start > 0``: a run
    resumed at batch ``b`` sees exactly the batches it would have seen. With ``world_size = W``
    the permutation is padded by wrapping around to ``W * ceil(n / W)`` indices and rank ``r``
    takes every ``W``-th from ``r`` (``torch.utils.data.distributed.DistributedSampler``'s rule),
    so every rank has ``ceil(n / W)`` samples and the same number of steps.

    Args:
        num_samples: dataset length ``n``.
        seed: run seed.
        rank: this process's rank ``r`` (0 in a single process).
        world_size: processes ``W`` (1 in a single process).
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.seed = num_samples, seed
        self.rank, self.world_size = rank, world_size
        self.epoch_length = math.ceil(num_samples / world_size)  # this rank's samples per epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select epoch ``epoch`` and skip its first ``start`` indices (samples already seen)."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g)
        if self.world_size > 1:
            total = self.epoch_length * self.world_size
            order = order.repeat(math.ceil(total / self.num_samples))[:total][self.rank::self.world_size]
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return self.epoch_length - self.start


class DeviceLoader:
    """Batches cut by index from a dataset held whole on the device: no worker processes, no
    per-sample collation, one host-to-device copy in all.

    Yields exactly what a ``DataLoader`` with the same sampler yields (tested bitwise): for a
    ``TensorDataset`` the rows ``x[idx]``; for an :class:`ImageTensorDataset` its ``uint8``
    images normalised (and resized) per batch with the same arithmetic it applies per sample.

    Args:
        dataset: a ``TensorDataset(x, y)`` or an :class:`ImageTensorDataset` without augmentation.
        batch_size: samples per batch.
        device: where the tensors live and the batches are cut.
        sampler: index order (e.g. :class:`EpochSampler`); None = in order.
        drop_last: drop an incomplete last batch.

    Raises:
        ValueError: the dataset is not tensor-backed or augments per sample (see :func:`fits_on_device`).
    """

    def __init__(self, dataset: Any, batch_size: int, device: torch.device, sampler: Optional[Any] = None,
                 drop_last: bool = False):
        x, y, prep = _tensors(dataset)
        self.dataset, self.batch_size, self.sampler, self.drop_last = dataset, batch_size, sampler, drop_last
        self.device, self._prep = device, prep
        self.x, self.y = x.to(device), y.to(device)
        if prep is not None:
            self._mean, self._std = dataset.mean.to(device), dataset.std.to(device)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size + (1 if n % self.batch_size and not self.drop_last else 0)

    def __iter__(self):
        order = list(self.sampler) if self.sampler is not None else range(len(self.dataset))
        order = torch.as_tensor(order, dtype=torch.int64, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.x[idx]
            if self._prep is not None:
                x = self.dataset.prepare(x, self._mean, self._std)
            yield x, self.y[idx]


def _tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor, Optional[str]]:
    """``(images, labels, prep)`` of a tensor-backed dataset; prep = "image" for ImageTensorDataset."""
    from torch.utils.data import TensorDataset

    from framework.data.base import ImageTensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1], None
    if isinstance(dataset, ImageTensorDataset) and dataset.augment is None:
        return dataset.images, dataset.labels, "image"
    raise ValueError(f"{type(dataset).__name__}: not a tensor dataset without per-sample augmentation")


def fits_on_device(data: DataBundle, device: torch.device) -> tuple[bool, str]:
    """Whether both splits can be held on ``device``: tensor-backed, no per-sample augmentation,
    and (CUDA) their stored bytes under a quarter of the free memory. Returns ``(ok, why not)``."""
    try:
        tensors = [_tensors(d) for d in (data.train, data.val)]
    except ValueError as exc:
        return False, str(exc)
    if device.type == "cuda":
        size = sum(t.numel() * t.element_size() for x, y, _ in tensors for t in (x, y))
        free, _ = torch.cuda.mem_get_info(device)
        if size > free / 4:
            return False, f"{size / 2**30:.2f} GiB is over a quarter of the {free / 2**30:.1f} GiB free"
    return True, ""


def make_loaders(data: DataBundle, batch_size: int, seed: int, device: torch.device, loader: str = "auto",
                 num_workers: int = 0, rank: int = 0, world_size: int = 1):
    """Train loader (shuffled by ``seed``) and validation loader (in order, batch ×2).

    Args:
        data: the datasets.
        batch_size: samples per forward pass.
        seed: seeds the :class:`EpochSampler`, so the data order is a function of seed and epoch.
        device: where the batches go (pinned memory and workers for CUDA on the standard path).
        loader: ``device`` (:class:`DeviceLoader`), ``standard`` (``torch.utils.data.DataLoader``)
            or ``auto`` (device when :func:`fits_on_device`).
        num_workers: ``DataLoader`` worker processes on the standard path (persistent when > 0).
        rank: this process's rank in a data-parallel run (0 otherwise).
        world_size: processes of the run: each rank trains on its split of every epoch
            (:class:`EpochSampler`) and evaluates every ``world_size``-th validation sample.

    Returns:
        ``(train_loader, val_loader)`` of this rank; the train loader drops a last batch of
        exactly one sample (BatchNorm cannot train on it), so the step count ``T`` reflects that.

    Raises:
        ConfigError: ``loader=device`` for data that cannot be held on the device.
    """
    from framework.errors import ConfigError

    # A last batch of one sample breaks BatchNorm in training mode; drop it (one sample per epoch).
    sampler = EpochSampler(len(data.train), seed, rank, world_size)
    drop_last = sampler.epoch_length % batch_size == 1 and sampler.epoch_length > 1
    if drop_last:
        log.info("batch_size=%d leaves a last batch of 1 sample: it is dropped each epoch", batch_size)
    val_shard = range(rank, len(data.val), world_size) if world_size > 1 else None  # no padding: each sample once
    ok, why = fits_on_device(data, device) if loader != "standard" else (False, "")
    if world_size > 1 and loader != "standard":  # one choice for all ranks (free GPU memory differs)
        from framework import distributed

        if distributed.max_over_ranks(int(not ok)) and ok:
            ok, why = False, "another rank's device cannot hold the dataset"
    if loader == "device" and not ok:
        raise ConfigError(f"loader=device: {why}; use loader=standard (or auto)")
    if ok:
        log.info("device-resident loader: the dataset is held on %s, batches are cut by index", device)
        return (DeviceLoader(data.train, batch_size, device, sampler, drop_last),
                DeviceLoader(data.val, 2 * batch_size, device, val_shard))
    pin = device.type == "cuda"
    train = DataLoader(data.train, batch_size=batch_size, sampler=sampler, pin_memory=pin, drop_last=drop_last,
                       num_workers=num_workers, persistent_workers=num_workers > 0)
    return train, eval_loader(data.val, batch_size, device, num_workers, val_shard)


def eval_loader(dataset: Any, batch_size: int, device: torch.device, num_workers: int = 0,
                shard: Optional[range] = None) -> DataLoader:
    """A loader that evaluates ``dataset`` in order, ``2 x batch_size`` samples per batch (no
    gradients are kept), pinned for CUDA.

    Args:
        dataset: the validation or test split.
        batch_size: the run's samples per training forward pass.
        device: where the batches go.
        num_workers: ``DataLoader`` worker processes (persistent when > 0).
        shard: this rank's sample indices in a data-parallel run; None = every sample.
    """
    return DataLoader(dataset, batch_size=2 * batch_size, sampler=shard, shuffle=False, pin_memory=device.type == "cuda",
                      num_workers=num_workers, persistent_workers=num_workers > 0)
