"""Mixup and CutMix of the training batches (timm's ``timm.data.Mixup``) for classification: the
keys of ``conf/trainer/default.yaml`` checked and turned into the mixer the step engine applies.

Sources: Zhang et al., "mixup: Beyond Empirical Risk Minimization", 2018; Yun et al., "CutMix:
Regularization Strategy to Train Strong Classifiers with Localizable Features", 2019; the
reference implementation is timm's ``timm/data/mixup.py`` and its use in timm's ``train.py``
(the task's label smoothing moves into the mixed targets, the loss becomes the soft-target
cross-entropy, ``mixup_enabled = False`` from ``mixup_off_epoch`` on).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from framework.errors import ConfigError

#: How timm's Mixup draws ``lam``: one per batch, one per pair of samples ``(i, B-1-i)``, one per sample.
MIXUP_MODES = ("batch", "pair", "elem")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_mixup_args(mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                     cutmix_minmax: Optional[Sequence[float]] = None, mixup_prob: float = 1.0,
                     mixup_switch_prob: float = 0.5, mixup_mode: str = "batch",
                     mixup_off_epoch: Optional[int] = None) -> list[str]:
    """The one-line messages of every out-of-range mixing key (empty when all are fine); pure, so
    :func:`framework.config.validate` reports them before anything is built.

    Args:
        mixup_alpha: Beta(a, a) of mixup's ``lam``, >= 0 (0 = no mixup).
        cutmix_alpha: Beta(a, a) of CutMix's ``lam``, >= 0 (0 = no CutMix).
        cutmix_minmax: ``[min, max]`` fractions of the image side for CutMix boxes,
            ``0 < min < max <= 1``, or None.
        mixup_prob: chance a batch (or pair, or sample) is mixed, in [0, 1].
        mixup_switch_prob: chance of CutMix rather than mixup when both are on, in [0, 1].
        mixup_mode: ``batch``, ``pair`` or ``elem``.
        mixup_off_epoch: first epoch (from 0) trained without mixing, >= 1, or None.
    """
    errors = []
    if not (_number(mixup_alpha) and mixup_alpha >= 0):
        errors.append(f"trainer.mixup_alpha={mixup_alpha}: must be a number >= 0 (0 = no mixup), e.g. 0.8")
    if not (_number(cutmix_alpha) and cutmix_alpha >= 0):
        errors.append(f"trainer.cutmix_alpha={cutmix_alpha}: must be a number >= 0 (0 = no CutMix), e.g. 1.0")
    if cutmix_minmax is not None and not (
            isinstance(cutmix_minmax, (list, tuple)) and len(cutmix_minmax) == 2 and all(map(_number, cutmix_minmax))
            and 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1):
        errors.append(f"trainer.cutmix_minmax={cutmix_minmax}: must be null or [min, max] fractions of the image side "
                      "with 0 < min < max <= 1, e.g. [0.2,0.8]")
    for key, value, meaning, example in (
            ("mixup_prob", mixup_prob, "the chance a batch is mixed", 1.0),
            ("mixup_switch_prob", mixup_switch_prob, "the chance of CutMix over mixup", 0.5)):
        if not (_number(value) and 0 <= value <= 1):
            errors.append(f"trainer.{key}={value}: must be in [0, 1] ({meaning}), e.g. {example}")
    if mixup_mode not in MIXUP_MODES:
        errors.append(f"trainer.mixup_mode={mixup_mode}: use batch (one lam per batch), pair (one per pair of samples) "
                      "or elem (one per sample)")
    if mixup_off_epoch is not None and not (isinstance(mixup_off_epoch, int) and not isinstance(mixup_off_epoch, bool)
                                            and mixup_off_epoch >= 1):
        errors.append(f"trainer.mixup_off_epoch={mixup_off_epoch}: must be an integer >= 1 (the first epoch, counted "
                      "from 0, trained without mixing) or null (mix every epoch)")
    return errors


def active_key(mixup_alpha: float, cutmix_alpha: float, cutmix_minmax: Optional[Sequence[float]]) -> Optional[str]:
    """The first key that switches mixing on (``trainer.mixup_alpha=0.8``, ...), or None when
    mixing is off (as timm's ``train.py``: ``mixup > 0 or cutmix > 0 or cutmix_minmax``)."""
    for key, value, on in (("mixup_alpha", mixup_alpha, mixup_alpha > 0),
                           ("cutmix_alpha", cutmix_alpha, cutmix_alpha > 0),
                           ("cutmix_minmax", cutmix_minmax, cutmix_minmax is not None)):
        if on:
            return f"trainer.{key}={list(value) if key == 'cutmix_minmax' else value}"
    return None


def check_mixup_task(key: str, task_type: type) -> list[str]:
    """Whether a task's class can train on mixed batches: one message when it cannot, else none.

    A mixed batch has soft targets ``(B, K)`` and trains on the soft-target cross-entropy
    (:meth:`~framework.trainer.engine.StepEngine.micro_step`), which is the loss of
    :class:`framework.tasks.Classification` (its label smoothing moves into the targets). So
    mixing is allowed for that class and for a subclass that keeps its ``loss``; a task whose
    labels are not class indices, or a task with a loss of its own (``task=custom``, or a
    subclass that overrides ``loss``), is refused, since mixing would silently replace its loss.
    Pure (the class, not an instance): :func:`framework.config.validate` checks the task's
    ``_target_`` with it, :func:`build_mixup` the built task's class.

    Args:
        key: the key that switches mixing on (:func:`active_key`), e.g. ``trainer.mixup_alpha=0.8``.
        task_type: the task's class.

    Raises:
        ConfigError: the class's ``label_type`` is not one of the known ones
            (:func:`framework.tasks.label_type_of`).
    """
    from framework import tasks

    label_type = tasks.label_type_of(task_type)
    off = "set trainer.mixup_alpha=0 trainer.cutmix_alpha=0 trainer.cutmix_minmax=null"
    if label_type != "class":
        return [f"{key}: Mixup / CutMix mix class labels, but the task {task_type.__name__} trains on {label_type} "
                f"labels; {off}, or use task=classification"]
    if not (isinstance(task_type, type) and issubclass(task_type, tasks.Classification)
            and task_type.loss is tasks.Classification.loss):
        return [f"{key}: a mixed batch trains on the soft-target cross-entropy of framework.tasks.Classification, "
                f"which would replace the loss of {task_type.__module__}.{task_type.__qualname__}; use "
                f"task=classification (or a subclass of it that keeps its loss), or {off}"]
    return []


def build_mixup(task: Any, train_loader: Any, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                cutmix_minmax: Optional[Sequence[float]] = None, mixup_prob: float = 1.0,
                mixup_switch_prob: float = 0.5, mixup_mode: str = "batch",
                mixup_off_epoch: Optional[int] = None) -> Optional[Any]:
    """timm's ``Mixup`` for a classification task's training batches, or None when mixing is off.

    Batch mode mixes ``x' = lam x + (1 - lam) x.flip(0)`` (CutMix: a box of ``x.flip(0)`` pasted
    into ``x``, ``lam`` = 1 - the box's share of the image) and gives the soft targets
    ``t = lam s(y) + (1 - lam) s(y.flip(0))``, ``s(c) = (1 - eps) onehot(c) + eps / K`` with the
    task's ``label_smoothing`` ``eps`` (``K`` classes); ``lam ~ Beta(a, a)`` from NumPy's global
    RNG (saved in checkpoints, so a resumed run draws the same).

    Args:
        task: the run's task; mixing needs :class:`framework.tasks.Classification` or a subclass
            that keeps its loss (:func:`check_mixup_task`; its ``num_classes``, its
            ``label_smoothing``).
        train_loader: the train loader: its ``batch_size`` (per process) and, for CutMix, the
            shape of its dataset's first sample ``(C, H, W)``.
        mixup_alpha, cutmix_alpha, cutmix_minmax, mixup_prob, mixup_switch_prob, mixup_mode,
            mixup_off_epoch: as :func:`check_mixup_args` (``mixup_off_epoch`` is applied by the
            trainer; checked here).

    Returns:
        A ``timm.data.Mixup`` (``label_smoothing`` = the task's; ``correct_lam=True``, timm's
        default), or None.

    Raises:
        ConfigError: a key out of range; mixing switched on for a task whose labels are not
            class indices or which has a loss of its own (:func:`check_mixup_task`; set the alphas
            to 0 and ``cutmix_minmax`` to null); an odd
            ``batch_size`` (timm pairs sample ``i`` with ``B-1-i``; use an even one); CutMix on
            samples that are not images ``(C, H, W)``, or a ``cutmix_minmax`` that leaves no
            box size to draw on images this small.
    """
    errors = check_mixup_args(mixup_alpha, cutmix_alpha, cutmix_minmax, mixup_prob, mixup_switch_prob, mixup_mode,
                              mixup_off_epoch)
    if errors:
        raise ConfigError(errors)
    key = active_key(mixup_alpha, cutmix_alpha, cutmix_minmax)
    if key is None:
        return None
    errors = check_mixup_task(key, type(task))
    if errors:
        raise ConfigError(errors)
    batch_size = train_loader.batch_size
    if batch_size % 2:
        raise ConfigError(f"{key}: timm's Mixup pairs sample i with sample B-1-i and needs an even batch_size, got "
                          f"batch_size={batch_size}; use batch_size={batch_size - 1} or {batch_size + 1}")
    if cutmix_alpha > 0 or cutmix_minmax is not None:
        _check_cutmix_images(train_loader, key, cutmix_minmax)
    from timm.data import Mixup

    return Mixup(mixup_alpha=float(mixup_alpha), cutmix_alpha=float(cutmix_alpha),
                 cutmix_minmax=list(cutmix_minmax) if cutmix_minmax is not None else None, prob=float(mixup_prob),
                 switch_prob=float(mixup_switch_prob), mode=mixup_mode,
                 label_smoothing=float(getattr(task, "label_smoothing", 0.0)), num_classes=int(task.num_classes))


def _check_cutmix_images(train_loader: Any, key: str, cutmix_minmax: Optional[Sequence[float]]) -> None:
    """CutMix pastes boxes of images: the first training sample must be ``(C, H, W)``, and a
    ``cutmix_minmax`` must leave timm a box side to draw (``int(H min) < int(H max)``)."""
    import torch

    shape = tuple(torch.as_tensor(train_loader.dataset[0][0]).shape)
    if len(shape) != 3:
        raise ConfigError(f"{key}: CutMix pastes boxes between images (C, H, W), but the training samples have shape "
                          f"{shape}; set trainer.cutmix_alpha=0 trainer.cutmix_minmax=null (mixup_alpha alone mixes "
                          "any input)")
    if cutmix_minmax is not None and any(int(side * cutmix_minmax[0]) >= int(side * cutmix_minmax[1])
                                         for side in shape[1:]):
        raise ConfigError(f"trainer.cutmix_minmax={list(cutmix_minmax)}: on {shape[1]}x{shape[2]} images the box sides "
                          "int(side x min) and int(side x max) are equal, so timm has no size to draw; widen the "
                          "range, e.g. [0.2,0.8]")
