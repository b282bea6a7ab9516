"""The user's own images in the class-per-folder layout, with timm's transform factory."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from framework.errors import ConfigError
from framework.data.base import DataBundle, check_batch_memory, check_img_size

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class UnreadableImage(ConfigError):
    """An image file PIL cannot open or decode, found at first access: a :class:`ConfigError`
    whose one-line message survives a ``DataLoader`` worker process.

    A worker's exception comes back as ``type(exc)(text)``, ``text`` being ``"Caught
    UnreadableImage in DataLoader worker process 0.\nOriginal Traceback ..."`` down to the
    original ``framework.data.imagefolder.UnreadableImage: <message>`` line; the constructor
    takes ``<message>`` back out of it, so ``train.py`` still prints one line.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message[message.rindex(marker) + len(marker):].strip().splitlines()[0]
        super().__init__(message)


def unreadable(path: str, reason: str) -> str:
    """The one-line message for an image file that cannot be read."""
    return (f"dataset: cannot read image {path} ({reason}); fix or remove the file, "
            "or set dataset.skip_unreadable=true")


def read_image(path: str):
    """torchvision's ``pil_loader`` (open, decode, convert to RGB) that names the file it cannot read.

    PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False, so a truncated file fails here.

    Args:
        path: the image file.

    Returns:
        The decoded ``PIL.Image.Image`` in RGB.

    Raises:
        UnreadableImage: PIL cannot open or decode the file (a ConfigError: fix or remove the
            file, or set ``dataset.skip_unreadable=true``).
    """
    try:
        return _decode(path)
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, ... for broken files
        raise UnreadableImage(unreadable(path, _reason(exc))) from None


def _decode(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")  # convert() decodes the whole file


def _reason(exc: Exception) -> str:
    """Why PIL could not read a file, in a few words (the path left out: the message names it)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL can identify"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _why_unreadable(path: str) -> Optional[str]:
    """None when :func:`read_image` can read ``path``, else the reason."""
    try:
        _decode(path)
    except Exception as exc:
        return _reason(exc)
    return None


class _ImageFiles:
    """``is_valid_file`` of ``ImageFolder``: a file with an image extension that is not empty.

    Empty (0-byte) files are left out and kept in :attr:`empty` (``os.stat`` only, no reading).
    """

    def __init__(self):
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        self.empty: list[str] = []
        self._is_image = lambda path: has_file_allowed_extension(path, IMG_EXTENSIONS)

    def __call__(self, path: str) -> bool:
        if not self._is_image(path):
            return False
        try:
            if os.stat(path).st_size == 0:
                if path not in self.empty:
                    self.empty.append(path)
                return False
        except OSError:  # a broken link: read_image names it
            pass
        return True

    def refuse_empty(self) -> None:
        """Refuse the empty files found so far.

        Raises:
            ConfigError: naming the first empty file (and how many there are); remove them, or
                set ``dataset.skip_unreadable=true``.
        """
        if self.empty:
            more = f"; {len(self.empty)} empty files in all" if len(self.empty) > 1 else ""
            raise ConfigError(unreadable(self.empty[0], f"empty file, 0 bytes{more}"))


def _drop_unreadable(folders: list, empty: list[str]) -> None:
    """Decode every image of ``folders`` (``ImageFolder`` objects) once, in threads, and drop the
    unreadable ones from their samples; one warning line with the count and the first paths."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted({path for folder in folders for path, _ in folder.samples})
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        reasons = dict(zip(paths, pool.map(_why_unreadable, paths)))
    for folder in folders:
        folder.samples = [(path, target) for path, target in folder.samples if reasons[path] is None]
        folder.imgs, folder.targets = folder.samples, [target for _, target in folder.samples]
    dropped = [(path, "empty file") for path in empty] + [(path, why) for path, why in reasons.items() if why]
    if dropped:
        log.warning("dataset.skip_unreadable=true: dropped %d unreadable image file%s: %s", len(dropped),
                    "s" if len(dropped) > 1 else "", ", ".join(f"{path} ({why})" for path, why in dropped[:3])
                    + (", ..." if len(dropped) > 3 else ""))


def image_transforms(img_size: Optional[int], augment: bool, model_name: Optional[str] = None,
                     pretrained: bool = False, auto_augment: Optional[str] = None, re_prob: float = 0.0,
                     re_mode: str = "const", re_count: int = 1):
    """timm's transforms for image files, as :func:`imagefolder` and the ``csv`` dataset use them.

    ``timm.data.create_transform(is_training=True)`` (random resized crop, flip, colour jitter;
    with ``auto_augment`` its policy instead of the colour jitter; random erasing after the
    normalisation when ``re_prob > 0``) for training when ``augment``, its evaluation transform
    (resize, centre crop at ``crop_pct=1``) otherwise and for evaluation (never augmented).
    With ``pretrained`` and a timm ``model_name`` the input size, mean and std are the model's
    pretrained config (``timm.get_pretrained_cfg``); else ImageNet's mean and std and
    ``img_size`` (default 224).

    Args:
        img_size: side of the model's input, pixels; None = the pretrained config's or 224.
        augment: training augmentation for the training transform.
        model_name: a timm architecture (``${model.name}``; None for a model of your own).
        pretrained: take size, mean and std from the model's pretrained config.
        auto_augment: timm's policy string (``rand-m9-mstd0.5-inc1`` RandAugment,
            ``rand-m10-n1-p1-mstd101-inc1`` TrivialAugment, ``augmix-...``, ``original``, ...);
            None = no policy.
        re_prob: random-erasing probability per training image, in [0, 1]; 0 = off.
        re_mode: random-erasing fill: ``const`` (zeros after normalisation), ``rand`` (a normal
            colour per channel) or ``pixel`` (normal noise per pixel).
        re_count: most erased rectangles per image (1 to ``re_count`` drawn), >= 1.

    Returns:
        ``(train_transform, eval_transform, size, mean)``: PIL RGB image -> float32
        ``(3, size, size)``; ``mean`` the 3 channel means used.

    Raises:
        ConfigError: ``img_size`` under 8 pixels; a batch of 64 images at that size
            (``64 x 3 x S² x 4`` bytes) over the memory available; an augmentation key out of
            range, or set with ``augment`` off, or a policy timm does not know
            (:func:`~framework.data.augment.check_augment`).
    """
    from timm.data import create_transform

    from framework.data.augment import built, check_augment

    check_augment(augment, auto_augment, re_prob, re_mode, re_count)
    check_img_size(img_size, "224 or the model's pretrained size")
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, img_size or 224
    if pretrained and model_name:
        import timm

        cfg = timm.get_pretrained_cfg(model_name)
        if cfg is not None:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
            size = img_size or cfg.input_size[-1]
    check_batch_memory(img_size, 3, size)
    train_tf = built(lambda: create_transform(
        (3, size, size), is_training=augment, mean=mean, std=std,
        **(dict(auto_augment=auto_augment, re_prob=re_prob, re_mode=re_mode, re_count=re_count) if augment
           else {"crop_pct": 1.0})), auto_augment)
    eval_tf = create_transform((3, size, size), is_training=False, mean=mean, std=std, crop_pct=1.0)
    return train_tf, eval_tf, size, mean


def imagefolder(
    seed: int,
    root: str,
    train_dir: str = "train",
    val_dir: Optional[str] = "val",
    test_dir: Optional[str] = None,
    val_frac: Optional[float] = None,
    img_size: Optional[int] = None,
    augment: bool = True,
    model_name: Optional[str] = None,
    pretrained: bool = False,
    data_seed: int = 0,
    skip_unreadable: bool = False,
    auto_augment: Optional[str] = None,
    re_prob: float = 0.0,
    re_mode: str = "const",
    re_count: int = 1,
) -> DataBundle:
    """Images in ``root/<train_dir>/<class>/*.jpg`` (and ``root/<val_dir>/<class>/...``, or a
    held-out fraction of the training folder; optionally ``root/<test_dir>/<class>/...``), read
    by ``torchvision.datasets.ImageFolder``; the class of an image is its folder's name (the
    classes sorted by name, label ``i`` = the ``i``-th).

    Training images go through ``timm.data.create_transform(is_training=True)`` (random resized
    crop, flip, colour jitter; plus timm's ``auto_augment`` policy and random erasing when set,
    ``augment=randaugment|trivialaugment|randerase``) when ``augment``, validation and test images through its
    evaluation transform (resize, centre crop): :func:`image_transforms`. With ``pretrained``
    the input size, mean and std are the model's pretrained config
    (``timm.get_pretrained_cfg(model_name)``); else ImageNet's mean and std and ``img_size``
    (default 224). Every split has ``paths``: the image file of each sample, by index.

    Image files are read at first access (:func:`read_image`): a file PIL cannot open or decode
    (corrupt, truncated, not an image) ends the run with one line naming it. Empty (0-byte)
    files are refused while the dataset is built. With ``skip_unreadable`` every image is
    decoded once here and the unreadable ones are left out (one warning line), so the sample
    count, and with it the run's number of steps, is exact.

    Args:
        seed: run seed (runtime; the split depends on ``data_seed`` only).
        root: the dataset folder.
        train_dir: its training subfolder (one subfolder per class).
        val_dir: its validation subfolder; null = hold out ``val_frac`` of the training images.
        test_dir: its test subfolder (the same class folders as ``train_dir``); null = no test
            split.
        val_frac: fraction held out when ``val_dir`` is null, in (0, 1).
        img_size: side of the model's input, pixels; null = the pretrained config's or 224.
        augment: timm's training augmentation (else the evaluation transform for training too).
        model_name: the timm model (``${model.name}``), for its pretrained data config.
        pretrained: use the model's pretrained input size, mean and std (``${model.pretrained}``).
        data_seed: seed of the held-out split.
        skip_unreadable: decode every image once now and leave out the unreadable ones (and the
            empty ones) instead of refusing them.
        auto_augment: timm's augmentation policy for training images (``augment=randaugment``:
            ``rand-m9-mstd0.5-inc1``); null = none. Needs ``augment``.
        re_prob: random-erasing probability per training image, in [0, 1]; 0 = off.
        re_mode: random-erasing fill, ``const``, ``rand`` or ``pixel``.
        re_count: most erased rectangles per image, >= 1.

    Returns:
        A :class:`DataBundle` with items ``(image (3, S, S) float32, label int64)``, ``classes``
        the class folder names, ``test`` the test split or None.

    Raises:
        ConfigError: a missing folder, a folder without class subfolders of images, a
            ``val_dir`` or ``test_dir`` whose class folders differ from ``train_dir``'s, or
            ``val_frac`` missing or out of range when ``val_dir`` is null; an empty (0-byte)
            image file (remove it, or set ``skip_unreadable``); no readable image left after
            ``skip_unreadable``; a batch of 64 images at the input size (``64 x 3 x S² x 4``
            bytes) over the memory available; an augmentation key out of range, set with
            ``augment`` off, or a policy timm does not know.
        UnreadableImage: (a ConfigError, raised later, when the file is first read) an image
            file PIL cannot open or decode; fix or remove it, or set ``skip_unreadable``.
    """
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    train_tf, eval_tf, size, mean = image_transforms(img_size, augment, model_name, pretrained, auto_augment,
                                                     re_prob, re_mode, re_count)
    train_path = os.path.join(root, train_dir)
    if not os.path.isdir(train_path):
        raise ConfigError(f"dataset.root={root}: no {train_dir}/ folder there ({os.path.abspath(train_path)}); "
                          "put one subfolder of images per class in it, or set dataset.train_dir")
    test_path = os.path.join(root, test_dir) if test_dir is not None else None
    if test_path is not None and not os.path.isdir(test_path):
        raise ConfigError(f"dataset.test_dir={test_dir}: no such folder ({os.path.abspath(test_path)}); "
                          "create it with the class folders of the training images, or set dataset.test_dir=null")

    files = _ImageFiles()

    def folder(path: str, transform) -> ImageFolder:
        try:
            found = ImageFolder(path, transform=transform, loader=read_image, is_valid_file=files)
        except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
            if not skip_unreadable:
                files.refuse_empty()
            raise ConfigError(f"dataset.root={root}: {' '.join(str(exc).split())[:160]}; expected "
                              f"{path}/<class>/<image files>"
                              + (f" ({len(files.empty)} empty files left out)" if files.empty else ""))
        return found

    def readable(*folders: ImageFolder) -> None:  # after the scan of every folder: all the empty files at once
        if not skip_unreadable:
            files.refuse_empty()
        else:
            _drop_unreadable(list(folders), files.empty)
            for f in folders:
                if not f.samples:
                    raise ConfigError(f"dataset.skip_unreadable=true: no readable image left in {f.root}; "
                                      "put readable images in it")

    def same_classes(split: ImageFolder, key: str, value: str, reference: list[str]) -> None:
        if split.classes != reference:
            extra = sorted(set(split.classes) - set(reference))
            missing = sorted(set(reference) - set(split.classes))
            diff = "; ".join(part for part in (f"not in {train_dir}/: {', '.join(extra[:5])}" if extra else "",
                                               f"missing: {', '.join(missing[:5])}" if missing else "") if part)
            raise ConfigError(f"dataset.{key}={value}: its class folders differ from {train_dir}/'s ({diff}); "
                              "use the same class folders")

    if val_dir is not None:
        val_path = os.path.join(root, val_dir)
        if not os.path.isdir(val_path):
            raise ConfigError(f"dataset.val_dir={val_dir}: no such folder ({os.path.abspath(val_path)}); "
                              "create it, or set dataset.val_dir=null dataset.val_frac=0.1 to hold out training images")
        train, val = folder(train_path, train_tf), folder(val_path, eval_tf)
        same_classes(val, "val_dir", val_dir, train.classes)
        test = folder(test_path, eval_tf) if test_path is not None else None
        if test is not None:
            same_classes(test, "test_dir", test_dir, train.classes)
        readable(*(f for f in (train, val, test) if f is not None))
        for split in (train, val, test):
            if split is not None:
                split.paths = [path for path, _ in split.samples]
    else:
        if val_frac is None or not 0 < val_frac < 1:
            raise ConfigError(f"dataset.val_frac={val_frac}: with dataset.val_dir=null it must be in (0, 1), e.g. 0.1")
        full_train, full_eval = folder(train_path, train_tf), folder(train_path, eval_tf)
        test = folder(test_path, eval_tf) if test_path is not None else None
        if test is not None:
            same_classes(test, "test_dir", test_dir, full_train.classes)
        readable(*(f for f in (full_train, full_eval, test) if f is not None))
        order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(data_seed)).tolist()
        n_val = max(1, round(val_frac * len(order)))
        if n_val >= len(order):
            raise ConfigError(f"dataset.val_frac={val_frac}: leaves no training image of the {len(order)} in "
                              f"{train_path}; use a smaller fraction or a val_dir")
        train, val = Subset(full_train, order[n_val:]), Subset(full_eval, order[:n_val])
        for split in (train, val):
            split.classes = full_train.classes
            split.paths = [full_train.samples[i][0] for i in split.indices]
        if test is not None:
            test.paths = [path for path, _ in test.samples]
    classes = list(train.classes)
    log.info("imagefolder %s: %d classes, %d train / %d val%s images, %d px, mean %s", root, len(classes),
             len(train), len(val), f" / {len(test)} test" if test is not None else "", size, mean)
    return DataBundle(train, val, len(classes), 3, size, test=test, classes=classes)
