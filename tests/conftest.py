"""Shared helpers: compose configs like train.py does, run training in-process or as a CLI."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework.config import register_configs
from framework.registry import CONF_DIR

ROOT = CONF_DIR.parent
#: Small, fast settings for runs in tests: a tiny timm ResNet on small synthetic images.
TINY = [
    "dataset=synthetic",
    "dataset.img_size=16",
    "dataset.train_size=256",
    "dataset.val_size=64",
    "model.name=test_resnet",
    "trainer.progress_bar=false",
]

register_configs()


def compose_cfg(*overrides: str):
    """The config ``python train.py <overrides>`` would get."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def train_in_process(run_dir: Path, *overrides: str) -> float:
    """Run ``framework.run.train`` on the composed config, writing into ``run_dir``."""
    from framework.run import train

    return train(compose_cfg(*overrides), run_dir=run_dir)


def lines(text: str) -> list[str]:
    """The non-blank lines of what a program printed."""
    return [line for line in text.splitlines() if line.strip()]


def folder_bytes(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` with its bytes: compare before and after to see nothing changed."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class FullDisk:
    """A binary or text file on a disk with ``room`` bytes left: writes past it fail with
    ``ENOSPC``, as on a full disk (a write to an open file names no file)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        import errno

        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


#: Seconds after which a subprocess of a test counts as hung: a guard against a hang, far above
#: any run's time on a loaded machine (no test result depends on how long something takes).
HANG_GUARD_S = 3600


def run_cli(args: list[str], run_dir: Path | None = None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess from the project root."""
    extra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def run_cli_in_process(args: list[str], run_dir: Path | None, cwd: Path = ROOT) -> int:
    """``python train.py <args>`` in this process (as ``train.py``'s ``__main__`` does): the
    exit status; what it prints is left to pytest's ``capfd``. ``run_dir`` None: ``args`` say
    where (or Hydra's default folder, under ``cwd``, the folder it runs in)."""
    import os
    import runpy

    import signal

    from hydra.core.global_hydra import GlobalHydra

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # train.py sets its own
    argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [str(ROOT / "train.py"), *args, *([f"hydra.run.dir={run_dir}"] if run_dir is not None else [])]
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
def compose_fn():
    return compose_cfg


def write_mnist(root, folder="MNIST", n_train=64, n_test=20, seed=0):
    """Tiny MNIST files in the real idx format (big-endian header, then uint8), unzipped as
    torchvision keeps them in ``<root>/<folder>/raw/``. Returns the train images ``(n, 28, 28)``."""
    import struct

    import torch

    g = torch.Generator().manual_seed(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + images.numpy().tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels.numpy().tobytes())
        out[split] = images
    return out["train"]


def write_cifar10(root, n_per_batch=8, seed=0):
    """Tiny CIFAR-10 pickle batches (rows of 3072 bytes, channel-major) in ``cifar-10-batches-py/``."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        batches[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(n_per_batch)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return batches


def write_cifar100(root, n_train=32, n_test=8, seed=0):
    """Tiny CIFAR-100 pickles (``train``, ``test``, ``meta``, fine labels) in ``cifar-100-python/``."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [i % 100 for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


def write_torchvision_files(name, root):
    """Tiny files in the real on-disk format of ``conf/dataset/<name>.yaml``'s torchvision dataset."""
    {"mnist": lambda: write_mnist(root), "fashion_mnist": lambda: write_mnist(root, "FashionMNIST"),
     "cifar10": lambda: write_cifar10(root), "cifar100": lambda: write_cifar100(root)}[name]()


def write_imagefolder(root, classes=("cat", "dog"), per_class=(6, 3), size=40, seed=0):
    """A class-per-folder tree of PNG files: ``root/train/<class>/`` and ``root/val/<class>/``
    (``per_class`` images each); class ``i`` images are brighter with ``i``, so they can be learnt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                pixels = rng.integers(0, 100, (size, size, 3)) + 100 * c
                Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(folder / f"{k}.png")
