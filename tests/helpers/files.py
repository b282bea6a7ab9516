"""Tiny dataset files in the real on-disk formats (torchvision's MNIST / CIFAR files, an image folder)."""
from __future__ import annotations


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


def write_csv_images(root, classes=("cat", "dog"), per_class=(6, 3), size=40, seed=0):
    """:func:`write_imagefolder`'s PNG files listed in ``root/train.csv`` and ``root/val.csv``:
    a header ``path,label``, then one row per image (its path relative to ``root``, its class
    name), in class order."""
    write_imagefolder(root, classes, per_class, size, seed)
    for split, n in zip(("train", "val"), per_class):
        rows = [f"{split}/{name}/{k}.png,{name}" for name in classes for k in range(n)]
        (root / f"{split}.csv").write_text("\n".join(["path,label", *rows]) + "\n")
