"""Datasets: real digits split, synthetic shapes, seeded shuffling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from framework.errors import ConfigError
from framework.data import digits, make_loaders, mnist5k, synthetic
from tests.helpers import write_cifar10, write_mnist, write_torchvision_files


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


def test_mnist_idx_files_load_through_torchvision(tmp_path):
    from framework.data import torchvision_dataset

    images = write_mnist(tmp_path)
    bundle = torchvision_dataset(seed=0, name="mnist", root=str(tmp_path))
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (10, 1, 28)
    assert (len(bundle.train), len(bundle.val)) == (64, 20)
    x, y = bundle.train[3]
    scaled = images.float() / 255  # normalised with the train split's own statistics
    assert torch.allclose(x[0], (scaled[3] - scaled.mean()) / scaled.std(), atol=1e-5)
    assert y.item() == 3


def test_cifar10_pickle_batches_load_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    from framework.data import torchvision_dataset

    batches = write_cifar10(tmp_path)
    # the real files are checked against their published MD5s; these tiny ones cannot match them
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    bundle = torchvision_dataset(seed=0, name="cifar10", root=str(tmp_path), img_size=16)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size, len(bundle.train), len(bundle.val)) == (10, 3, 16, 40, 8)
    first = torch.from_numpy(batches["data_batch_1"][0].reshape(3, 32, 32)).float() / 255  # (C, H, W)
    all_train = torch.from_numpy(np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])).float() / 255
    all_train = all_train.view(-1, 3, 32 * 32)
    mean, std = all_train.mean((0, 2)), all_train.std((0, 2))
    want = F.interpolate(((first - mean[:, None, None]) / std[:, None, None])[None], size=16, mode="bilinear",
                         align_corners=False)[0]
    x, y = bundle.train[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, want, atol=1e-5) and y.item() == 0


def test_missing_root_and_missing_files_are_config_errors(tmp_path):
    from framework.data import torchvision_dataset

    with pytest.raises(ConfigError, match=r"dataset.root=.*nowhere: no such folder .* put the MNIST files in "
                                          r".*MNIST/raw/ .* or use dataset.download=true"):
        torchvision_dataset(seed=0, name="mnist", root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"dataset.root=.*: no readable CIFAR10 files there .*cifar-10-batches-py/"):
        torchvision_dataset(seed=0, name="cifar10", root=str(tmp_path))
    with pytest.raises(ConfigError, match="dataset.name=svhn: unknown; use one of mnist, fashion_mnist"):
        torchvision_dataset(seed=0, name="svhn", root=str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_configs_train_one_epoch_on_generated_files(tmp_path, name):
    from tests.helpers import TINY, read_csv, train_in_process

    write_torchvision_files(name, tmp_path / "data")
    args = [*TINY, "dataset.img_size=16"]  # the tiny model on this dataset
    train_in_process(tmp_path / "run", *args, f"dataset={name}", f"dataset.root={tmp_path / 'data'}",
                     "dataset.download=false", "epochs=1", "batch_size=16")
    assert len(read_csv(tmp_path / "run" / "steps.csv")) == 4


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_configs_train_one_epoch_on_generated_files(tmp_path, monkeypatch, name):
    import torchvision.datasets.cifar

    from tests.helpers import TINY, read_csv, train_in_process

    write_torchvision_files(name, tmp_path / "data")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    args = [*TINY, "dataset.img_size=16"]  # the tiny model on this dataset
    train_in_process(tmp_path / "run", *args, f"dataset={name}", f"dataset.root={tmp_path / 'data'}",
                     "dataset.download=false", "epochs=1", "batch_size=16")
    assert len(read_csv(tmp_path / "run" / "steps.csv")) == {"cifar10": 3, "cifar100": 2}[name]  # 40 or 32 samples


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("name", ["digits", "mnist5k", "synthetic"])
def test_device_loader_gives_the_standard_batches(name):
    """Same seed: the device-resident loader yields bitwise the DataLoader's batches, for whole
    epochs and for an epoch resumed mid-way (mnist5k resized 28 -> 32 per batch)."""
    from framework.data import DeviceLoader
    from framework.data.loaders import EpochSampler
    from torch.utils.data import DataLoader

    data = {"digits": lambda: digits(seed=0), "mnist5k": lambda: mnist5k(seed=0, img_size=32, train_size=600),
            "synthetic": lambda: synthetic(seed=0, train_size=300)}[name]()
    cpu = torch.device("cpu")
    fast = DeviceLoader(data.train, 64, cpu, EpochSampler(len(data.train), seed=3))
    slow = DataLoader(data.train, batch_size=64, sampler=EpochSampler(len(data.train), seed=3))
    assert len(fast) == len(slow)
    for epoch, start in ((0, 0), (1, 0), (2, 128)):
        fast.sampler.set_epoch(epoch, start)
        slow.sampler.set_epoch(epoch, start)
        a, b = _batches(fast), _batches(slow)
        assert len(a) == len(b) > 0
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    val_a, val_b = _batches(DeviceLoader(data.val, 128, cpu)), _batches(DataLoader(data.val, batch_size=128))
    assert len(val_a) == len(val_b) > 0
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(val_a, val_b))


def test_loader_choice_and_same_training(tmp_path):
    from framework.data import DeviceLoader
    from framework.data.loaders import make_loaders
    from tests.helpers import TINY, read_csv, train_in_process

    cpu = torch.device("cpu")
    assert isinstance(make_loaders(synthetic(seed=0), 32, 0, cpu)[0], DeviceLoader)  # auto: it fits
    augmented = torchvision_like_augmented()
    assert not isinstance(make_loaders(augmented, 32, 0, cpu)[0], DeviceLoader)  # per-sample augmentation
    with pytest.raises(ConfigError, match="loader=device: ImageTensorDataset: not a tensor dataset without "
                                          "per-sample augmentation; use loader=standard"):
        make_loaders(augmented, 32, 0, cpu, loader="device")
    for loader in ("device", "standard"):
        train_in_process(tmp_path / loader, *TINY, "device=cpu", "epochs=2", f"loader={loader}")
    assert read_csv(tmp_path / "device" / "steps.csv") == read_csv(tmp_path / "standard" / "steps.csv")


def torchvision_like_augmented():
    from framework.data import DataBundle, ImageTensorDataset

    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(40) % 10
    return DataBundle(ImageTensorDataset(x, y, [0.5] * 3, [0.25] * 3, 32, augment=True),
                      ImageTensorDataset(x, y, [0.5] * 3, [0.25] * 3, 32), 10, 3, 32)


def test_mnist5k_is_the_bundled_real_mnist_with_a_stratified_split():
    data = mnist5k(seed=0)
    assert (len(data.train), len(data.val), data.num_classes, data.in_chans, data.img_size) == (4000, 1000, 10, 1, 28)
    assert torch.bincount(data.val.labels).tolist() == [100] * 10
    x, _ = data.train[0]
    assert x.shape == (1, 28, 28)
    again = mnist5k(seed=5)  # the split depends on data_seed only
    assert torch.equal(again.val.images, data.val.images)


def test_imagefolder_with_val_folder_and_with_a_held_out_fraction(tmp_path):
    from framework.data import imagefolder
    from tests.helpers import write_imagefolder

    write_imagefolder(tmp_path)
    data = imagefolder(seed=0, root=str(tmp_path), img_size=32)
    assert (data.num_classes, data.in_chans, data.img_size, len(data.train), len(data.val)) == (2, 3, 32, 12, 6)
    x, y = data.val[5]  # evaluation transform: resize + centre crop + ImageNet normalisation
    assert x.shape == (3, 32, 32) and y == 1
    split = imagefolder(seed=0, root=str(tmp_path), val_dir=None, val_frac=0.25, img_size=32)
    assert (len(split.train), len(split.val)) == (9, 3)
    again = imagefolder(seed=7, root=str(tmp_path), val_dir=None, val_frac=0.25, img_size=32)
    assert split.val.indices == again.val.indices  # the split depends on data_seed only
    with pytest.raises(ConfigError, match="dataset.val_frac=None: with dataset.val_dir=null it must be in"):
        imagefolder(seed=0, root=str(tmp_path), val_dir=None)
    with pytest.raises(ConfigError, match=r"dataset.root=.*nowhere: no train/ folder there"):
        imagefolder(seed=0, root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="dataset.val_frac=0.99: leaves no training image of the 12"):
        imagefolder(seed=0, root=str(tmp_path), val_dir=None, val_frac=0.99)  # round(0.99 * 12) = 12 held out
    with pytest.raises(ConfigError, match=r"dataset.img_size=-5: must be >= 8 pixels \(or null for 224"):
        imagefolder(seed=0, root=str(tmp_path), img_size=-5)


def test_imagefolder_pretrained_takes_the_model_data_config(tmp_path):
    from framework.data import imagefolder
    from tests.helpers import write_imagefolder

    write_imagefolder(tmp_path)
    data = imagefolder(seed=0, root=str(tmp_path), model_name="vit_tiny_patch16_224", pretrained=True, augment=False)
    assert data.img_size == 224  # vit_tiny_patch16_224's pretrained weights: 224 px, mean = std = 0.5 (not ImageNet's)
    normalize = data.train.transform.transforms[-1]
    assert normalize.mean.tolist() == pytest.approx([0.5] * 3) and normalize.std.tolist() == pytest.approx([0.5] * 3)


def test_imagefolder_config_trains_one_epoch(tmp_path):
    from tests.helpers import TINY, read_csv, train_in_process, write_imagefolder

    write_imagefolder(tmp_path / "images")
    args = [*TINY]  # the tiny model on this dataset
    train_in_process(tmp_path / "run", *args, "dataset=imagefolder", f"dataset.root={tmp_path / 'images'}",
                     "dataset.img_size=32", "epochs=1", "batch_size=4")
    assert len(read_csv(tmp_path / "run" / "steps.csv")) == 3  # 12 images / 4
    assert len(read_csv(tmp_path / "run" / "epochs.csv")) == 1


def test_mnist5k_config_trains_one_epoch(tmp_path):
    from tests.helpers import TINY, read_csv, train_in_process

    args = [*TINY, "dataset.img_size=16"]  # the tiny model on this dataset
    train_in_process(tmp_path, *args, "dataset=mnist5k", "dataset.train_size=256", "epochs=1", "batch_size=64")
    assert len(read_csv(tmp_path / "steps.csv")) == 4


def test_channel_stats_equal_torch_mean_and_std():
    from framework.data.base import channel_stats

    images = torch.randint(0, 256, (37, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = channel_stats(images, chunk=8)  # chunks of 8 images, a last one of 5
    ref = images.double() / 255
    assert mean == pytest.approx(ref.mean((0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(ref.std((0, 2, 3)).tolist(), abs=1e-12)


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (10, 3), (2, 4)])
def test_epoch_sampler_deals_like_torch_distributed_sampler(n, world):
    """Rank r's indices of epoch e equal DistributedSampler's (shuffle, seed = seed*1_000_003, the
    same padding by wrap-around); together the ranks cover every sample, each ceil(n/W) of them."""
    import math

    from torch.utils.data.distributed import DistributedSampler

    from framework.data.loaders import EpochSampler

    seen = []
    for rank in range(world):
        ours = EpochSampler(n, seed=5, rank=rank, world_size=world)
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5 * 1_000_003)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)
        assert len(ours) == ours.epoch_length == math.ceil(n / world)
        ours.set_epoch(3, start=1)  # resumed after its first sample of epoch 3
        assert list(ours) == list(ref)[1:]
        ours.set_epoch(0)
        seen += list(ours)
    assert set(seen) == set(range(n)) and len(seen) == world * math.ceil(n / world)
