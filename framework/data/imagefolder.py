"""The user's own images in the class-per-folder layout, with timm's transform factory."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from framework.config import ConfigError
from framework.data.base import DataBundle, check_img_size

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagefolder(
    seed: int,
    root: str,
    train_dir: str = "train",
    val_dir: Optional[str] = "val",
    val_frac: Optional[float] = None,
    img_size: Optional[int] = None,
    augment: bool = True,
    model_name: Optional[str] = None,
    pretrained: bool = False,
    data_seed: int = 0,
) -> DataBundle:
    """Images in ``root/<train_dir>/<class>/*.jpg`` (and ``root/<val_dir>/<class>/...``, or a
    held-out fraction of the training folder), read by ``torchvision.datasets.ImageFolder``.

    Training images go through ``timm.data.create_transform(is_training=True)`` (random resized
    crop, flip, colour jitter) when ``augment``, evaluation images through its evaluation
    transform (resize, centre crop). With ``pretrained`` the input size, mean and std are the
    model's pretrained config (``timm.get_pretrained_cfg(model_name)``); else ImageNet's mean
    and std and ``img_size`` (default 224).

    Args:
        seed: run seed (runtime; the split depends on ``data_seed`` only).
        root: the dataset folder.
        train_dir: its training subfolder (one subfolder per class).
        val_dir: its validation subfolder; null = hold out ``val_frac`` of the training images.
        val_frac: fraction held out when ``val_dir`` is null, in (0, 1).
        img_size: side of the model's input, pixels; null = the pretrained config's or 224.
        augment: timm's training augmentation (else the evaluation transform for training too).
        model_name: the timm model (``${model.name}``), for its pretrained data config.
        pretrained: use the model's pretrained input size, mean and std (``${model.pretrained}``).
        data_seed: seed of the held-out split.

    Returns:
        A :class:`DataBundle` with items ``(image (3, S, S) float32, label int64)``.

    Raises:
        ConfigError: a missing folder, a folder without class subfolders of images, or
            ``val_frac`` missing or out of range when ``val_dir`` is null.
    """
    from timm.data import create_transform
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    check_img_size(img_size, "224 or the model's pretrained size")
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, img_size or 224
    if pretrained and model_name:
        import timm

        cfg = timm.get_pretrained_cfg(model_name)
        if cfg is not None:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
            size = img_size or cfg.input_size[-1]
    train_path = os.path.join(root, train_dir)
    if not os.path.isdir(train_path):
        raise ConfigError(f"dataset.root={root}: no {train_dir}/ folder there ({os.path.abspath(train_path)}); "
                          "put one subfolder of images per class in it, or set dataset.train_dir")
    train_tf = create_transform((3, size, size), is_training=augment, mean=mean, std=std,
                                **({} if augment else {"crop_pct": 1.0}))
    eval_tf = create_transform((3, size, size), is_training=False, mean=mean, std=std, crop_pct=1.0)

    def folder(path: str, transform) -> ImageFolder:
        try:
            return ImageFolder(path, transform=transform)
        except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
            raise ConfigError(f"dataset.root={root}: {' '.join(str(exc).split())[:160]}; expected "
                              f"{path}/<class>/<image files>")

    if val_dir is not None:
        val_path = os.path.join(root, val_dir)
        if not os.path.isdir(val_path):
            raise ConfigError(f"dataset.val_dir={val_dir}: no such folder ({os.path.abspath(val_path)}); "
                              "create it, or set dataset.val_dir=null dataset.val_frac=0.1 to hold out training images")
        train, val = folder(train_path, train_tf), folder(val_path, eval_tf)
        if train.classes != val.classes:
            raise ConfigError(f"dataset.val_dir={val_dir}: its classes {val.classes[:5]} differ from "
                              f"{train_dir}/'s {train.classes[:5]}; use the same class folders")
    else:
        if val_frac is None or not 0 < val_frac < 1:
            raise ConfigError(f"dataset.val_frac={val_frac}: with dataset.val_dir=null it must be in (0, 1), e.g. 0.1")
        full_train, full_eval = folder(train_path, train_tf), folder(train_path, eval_tf)
        order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(data_seed)).tolist()
        n_val = max(1, round(val_frac * len(order)))
        if n_val >= len(order):
            raise ConfigError(f"dataset.val_frac={val_frac}: leaves no training image of the {len(order)} in "
                              f"{train_path}; use a smaller fraction or a val_dir")
        train, val = Subset(full_train, order[n_val:]), Subset(full_eval, order[:n_val])
        train.classes = full_train.classes
    classes = train.classes
    log.info("imagefolder %s: %d classes, %d train / %d val images, %d px, mean %s", root, len(classes),
             len(train), len(val), size, mean)
    return DataBundle(train, val, len(classes), 3, size)
