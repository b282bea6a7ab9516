"""Bad dataset inputs end in one ConfigError line: unreadable image files, datasets too big for memory."""
from __future__ import annotations

import io
import logging
import re

import pytest
import torch

from framework.errors import ConfigError
from framework.data import base, digits, imagefolder, mnist5k, synthetic, torchvision_dataset

FIX = "; fix or remove the file, or set dataset.skip_unreadable=true"


def write_folder(root):
    """``root/{train,val}/{cat,dog}/``: 2 PNG + 2 JPEG (8x8) per class in train, 1 + 1 in val.

    Returns the number of readable images: 8 in train, 4 in val (counted by hand)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                for ext in ("png", "jpg"):
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype("uint8")).save(folder / f"{k}.{ext}")
    return 8, 4


def truncated_jpeg(path):
    """Real JPEG bytes of a 64x64 image, cut in half."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype("uint8")).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])


def index_of(dataset, path) -> int:
    return [p for p, _ in dataset.samples].index(str(path))


def test_pil_keeps_refusing_truncated_images():
    from PIL import ImageFile

    import framework.data  # noqa: F401  (nothing we import turns truncated-image loading on)
    import timm  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty_image_files_are_refused_while_the_dataset_is_built(tmp_path):
    write_folder(tmp_path)
    empty = tmp_path / "train" / "cat" / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError) as info:
        imagefolder(seed=0, root=str(tmp_path), img_size=16)
    assert str(info.value) == f"dataset: cannot read image {empty} (empty file, 0 bytes){FIX}"
    (tmp_path / "val" / "dog" / "0.png").write_bytes(b"")  # a second one: named by the count
    with pytest.raises(ConfigError, match=re.escape(f"{empty} (empty file, 0 bytes; 2 empty files in all){FIX}")):
        imagefolder(seed=0, root=str(tmp_path), img_size=16)


def test_a_class_of_empty_files_only_names_the_empty_file(tmp_path):
    write_folder(tmp_path)
    for f in (tmp_path / "val" / "dog").iterdir():
        f.unlink()
    empty = tmp_path / "val" / "dog" / "a.png"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(f"dataset: cannot read image {empty} (empty file, 0 bytes){FIX}")):
        imagefolder(seed=0, root=str(tmp_path), img_size=16)


@pytest.mark.parametrize("case", ["truncated", "text"])
def test_an_unreadable_file_is_one_line_naming_it_at_first_access(tmp_path, case):
    write_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / ("cut.jpg" if case == "truncated" else "notes.png")
    if case == "truncated":
        truncated_jpeg(bad)
        reason = r"image file is truncated \(\d+ bytes not processed\)"
    else:
        bad.write_text("not an image\n")
        reason = re.escape("not an image format PIL can identify")
    data = imagefolder(seed=0, root=str(tmp_path), img_size=16)  # built: only 0-byte files are refused early
    assert len(data.train) == 9  # 8 good + the bad one
    x, _ = data.train[index_of(data.train, tmp_path / "train" / "dog" / "0.png")]
    assert x.shape == (3, 16, 16)
    with pytest.raises(ConfigError) as info:
        data.train[index_of(data.train, bad)]
    assert re.fullmatch(re.escape(f"dataset: cannot read image {bad} (") + reason + re.escape(f"){FIX}"),
                        str(info.value))


def test_the_one_line_survives_a_dataloader_worker(tmp_path):
    from torch.utils.data import DataLoader, Subset

    write_folder(tmp_path)
    bad = tmp_path / "train" / "cat" / "notes.png"
    bad.write_text("not an image\n")
    data = imagefolder(seed=0, root=str(tmp_path), img_size=16)
    loader = DataLoader(Subset(data.train, [index_of(data.train, bad)]), batch_size=1, num_workers=1)
    with pytest.raises(ConfigError) as info:
        next(iter(loader))
    line = f"dataset: cannot read image {bad} (not an image format PIL can identify){FIX}"
    assert str(info.value) == line and info.value.messages == [line]


def test_skip_unreadable_drops_every_unreadable_file_before_training(tmp_path, caplog):
    n_train, n_val = write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "empty.jpg").write_bytes(b"")
    truncated_jpeg(tmp_path / "train" / "dog" / "cut.jpg")
    (tmp_path / "val" / "cat" / "notes.png").write_text("not an image\n")
    with caplog.at_level(logging.WARNING, logger="framework.data.imagefolder"):
        data = imagefolder(seed=0, root=str(tmp_path), img_size=16, skip_unreadable=True)
    assert (len(data.train), len(data.val)) == (n_train, n_val) == (8, 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 3 unreadable image files" in warnings[0]
    assert all(str(p) in warnings[0] for p in (tmp_path / "train" / "cat" / "empty.jpg",
                                               tmp_path / "train" / "dog" / "cut.jpg"))
    assert all(data.train[i][0].shape == (3, 16, 16) for i in range(n_train))  # every one left reads
    assert all(data.val[i][0].shape == (3, 16, 16) for i in range(n_val))
    held_out = imagefolder(seed=0, root=str(tmp_path), img_size=16, val_dir=None, val_frac=0.25, skip_unreadable=True)
    assert (len(held_out.train), len(held_out.val)) == (6, 2)  # 8 readable training images: round(0.25 * 8) held out


def test_skip_unreadable_with_nothing_readable_left(tmp_path):
    write_folder(tmp_path)
    for f in (tmp_path / "val").rglob("*.*"):
        f.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"dataset.skip_unreadable=true: no readable image left in .*val"):
        imagefolder(seed=0, root=str(tmp_path), img_size=16, skip_unreadable=True)


def test_cli_prints_the_one_line_and_exits_2(tmp_path, capfd):
    from tests.helpers import lines, run_cli_in_process

    write_folder(tmp_path / "images")
    bad = tmp_path / "images" / "train" / "dog" / "cut.jpg"
    truncated_jpeg(bad)
    code = run_cli_in_process(["dataset=imagefolder", f"dataset.root={tmp_path / 'images'}", "model.name=test_resnet",
                               "dataset.img_size=16", "epochs=1", "trainer.progress_bar=false", "device=cpu",
                               "loader=standard", "num_workers=1"], tmp_path / "run")
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    assert re.fullmatch(re.escape(f"error: dataset: cannot read image {bad} (image file is truncated (")
                        + r"\d+" + re.escape(f" bytes not processed)){FIX}"), lines(err)[-1])
    assert "Traceback" not in err


# ---- memory -------------------------------------------------------------------------------


def test_available_memory_reads_meminfo_and_falls_back_to_physical_memory(monkeypatch):
    import os

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < base.available_memory() <= physical

    def no_file(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(base, "open", no_file, raising=False)
    assert base.available_memory() == physical


def test_synthetic_beyond_any_machine_is_one_line():
    # n = 10**12 + 128 images of 3x32x32 float32, a (3072, 10) float32 map, (n, 10) float32 logits, (n,) int64
    # labels: n * (3072 * 4 + 40 + 8) + 3072 * 40 = 12,336,000,001,701,888 bytes = 12,336,000.0 GB
    with pytest.raises(ConfigError) as info:
        synthetic(seed=0, train_size=10**12)
    assert re.fullmatch(re.escape("dataset.train_size=1000000000000, dataset.img_size=32: the images and their labels "
                                  "would take 12,336,000.0 GB in memory (1,000,000,000,128 images of 3x32x32 float32, "
                                  "10 classes), ") + r"[\d,]+\.\d GB available; "
                        + re.escape("use a smaller dataset.train_size or dataset.img_size"), str(info.value))


def test_synthetic_boundary(monkeypatch):
    # 12 images of 1x8x8: 12*64*4 = 3072, map 64*2*4 = 512, logits 12*2*4 = 96, labels 12*8 = 96: 3,776 bytes
    small = dict(seed=0, train_size=10, val_size=2, num_classes=2, in_chans=1, img_size=8)
    monkeypatch.setattr(base, "available_memory", lambda: 3776)
    assert len(synthetic(**small).train) == 10
    monkeypatch.setattr(base, "available_memory", lambda: 3775)
    with pytest.raises(ConfigError, match=re.escape("dataset.train_size=10, dataset.img_size=8: the images and their "
                                                    "labels would take 0.0 GB in memory (12 images of 1x8x8 float32, "
                                                    "2 classes), 0.0 GB available")):
        synthetic(**small)
    monkeypatch.setattr(base, "available_memory", lambda: 2_500_000_000)
    with pytest.raises(ConfigError, match=re.escape("2.5 GB available")):
        synthetic(seed=0, train_size=10**12)


def test_digits_boundary_counts_the_resized_images_and_the_subsample(monkeypatch):
    # 1,797 images resized to 1x16x16 float32: 1797*256*4 = 1,840,128 bytes; train_size=100 adds 100*256*4 = 102,400
    monkeypatch.setattr(base, "available_memory", lambda: 1_840_128)
    assert digits(seed=0, img_size=16).img_size == 16
    monkeypatch.setattr(base, "available_memory", lambda: 1_840_127)
    with pytest.raises(ConfigError, match=re.escape("dataset.img_size=16: the images would take 0.0 GB in memory "
                                                    "(1,797 images of 1x16x16 float32)")):
        digits(seed=0, img_size=16)
    monkeypatch.setattr(base, "available_memory", lambda: 1_942_528)
    assert len(digits(seed=0, img_size=16, train_size=100).train) == 100
    monkeypatch.setattr(base, "available_memory", lambda: 1_942_527)
    with pytest.raises(ConfigError, match="dataset.img_size=16, dataset.train_size=100: "):
        digits(seed=0, img_size=16, train_size=100)


def test_digits_values_are_those_of_the_whole_set_resized_then_split():
    """Resizing each split on its own (and normalising in place) gives bitwise the tensors of
    resizing all 1,797 images first, then splitting and normalising."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_val = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2, stratify=y.numpy(),
                                          random_state=0)
    x = torch.nn.functional.interpolate(x, size=20, mode="bilinear", align_corners=False)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    data = digits(seed=0, img_size=20)
    assert torch.equal(data.train.tensors[0], (x[idx_train] - mean) / std)
    assert torch.equal(data.val.tensors[0], (x[idx_val] - mean) / std)
    assert torch.equal(data.val.tensors[1], y[idx_val])


@pytest.mark.parametrize("make,chans", [
    (lambda s: mnist5k(seed=0, img_size=s), 1),
    (lambda s: torchvision_dataset(seed=0, name="mnist", root="/nowhere", img_size=s), 1),
    (lambda s: torchvision_dataset(seed=0, name="cifar10", root="/nowhere", img_size=s), 3),
    (lambda s: imagefolder(seed=0, root="/nowhere", img_size=s), 3),
], ids=["mnist5k", "mnist", "cifar10", "imagefolder"])
def test_an_image_side_no_batch_can_hold_is_refused_first(make, chans):
    # a batch of 64 images of C x 10^6 x 10^6 float32: 64 * C * 10^12 * 4 bytes = C * 256,000.0 GB
    with pytest.raises(ConfigError) as info:
        make(10**6)
    gb = f"{chans * 256_000:,}.0"
    assert re.fullmatch(re.escape(f"dataset.img_size=1000000: a batch of 64 images would take {gb} GB in memory "
                                  f"(64 x {chans}x1000000x1000000 float32), ") + r"[\d,]+\.\d GB available; "
                        + re.escape("use a smaller dataset.img_size"), str(info.value))


def test_lazy_boundary(tmp_path, monkeypatch):
    from tests.helpers import write_mnist

    # imagefolder at 16 px: 64 * 3 * 16 * 16 * 4 = 196,608 bytes; MNIST at its native 28 px: 64 * 28 * 28 * 4 = 200,704
    write_folder(tmp_path / "images")
    monkeypatch.setattr(base, "available_memory", lambda: 196_608)
    assert len(imagefolder(seed=0, root=str(tmp_path / "images"), img_size=16).train) == 8
    monkeypatch.setattr(base, "available_memory", lambda: 196_607)
    with pytest.raises(ConfigError, match=re.escape("dataset.img_size=16: a batch of 64 images would take 0.0 GB")):
        imagefolder(seed=0, root=str(tmp_path / "images"), img_size=16)
    write_mnist(tmp_path)
    monkeypatch.setattr(base, "available_memory", lambda: 200_704)
    assert torchvision_dataset(seed=0, name="mnist", root=str(tmp_path)).img_size == 28
    monkeypatch.setattr(base, "available_memory", lambda: 200_703)
    with pytest.raises(ConfigError, match=re.escape("dataset.img_size=null: a batch of 64 images would take 0.0 GB "
                                                    "in memory (64 x 1x28x28 float32)")):
        torchvision_dataset(seed=0, name="mnist", root=str(tmp_path))


def test_cli_synthetic_too_big_is_one_line(tmp_path, capfd):
    from tests.helpers import lines, run_cli_in_process

    code = run_cli_in_process(["dataset=synthetic", "dataset.train_size=1000000000"], tmp_path / "run")
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    assert lines(err) == [lines(err)[0]] and lines(err)[0].startswith(
        "error: dataset.train_size=1000000000, dataset.img_size=32: the images and their labels would take "
        "12,336.0 GB in memory") and not (tmp_path / "run").exists()
