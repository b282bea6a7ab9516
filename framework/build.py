"""Building a run from a validated config, in one direction: device (:func:`resolve_device`) and
seeds -> data -> model -> task (loss, metrics) -> optimizer with its final base LRs -> LR plan ->
trainer. Nothing built later is read back to correct something built earlier.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import distributed, interrupts, registry
from framework.config import plain_config
from framework.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device).

    Args:
        seed: any integer; NumPy gets ``seed % 2**32``.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str):
    """``auto`` -> CUDA if available, else Apple MPS, else CPU; other names as given. In a
    data-parallel run ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: the named device is not available here, or ``cuda:N`` in a data-parallel
            run (every process would take GPU N).
    """
    import torch

    if distributed.world_size() > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
        return torch.device("cuda", distributed.cuda_device_index())
    if distributed.world_size() > 1 and name.startswith("cuda:"):
        raise ConfigError(f"device={name}: under torchrun each process takes its own GPU (LOCAL_RANK); use "
                          "device=auto or device=cuda (pick GPUs with CUDA_VISIBLE_DEVICES)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available here; use device=auto or device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: Apple MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Built:
    """What :func:`build` made, with the LR facts as they were worked out on the way.

    Attributes:
        trainer: the :class:`~framework.trainer.Trainer` (model, optimizer, plan, loaders).
        plan: the run's :class:`~framework.schedules.LRPlan`.
        device: where the run trains.
        lr_scaling_factor: the batch-size rule's factor on ``optimizer.lr`` (1 for ``none``).
        base_lr: ``optimizer.lr`` as configured (``lr0``, or Prodigy's own multiplier).
        base_lrs: each param group's final base LR (``initial_lr``) by group name, as built.
        global_batch: samples per optimizer step over all processes.
        task: the run's task (:mod:`framework.tasks`: loss, metrics, monitored objective).
    """

    trainer: Any
    plan: Any
    device: Any
    lr_scaling_factor: float
    base_lr: float
    base_lrs: dict[str, float]
    global_batch: int
    task: Any = None

    @property
    def lr0_effective(self) -> float:
        """The LR a group of ratio 1 has after warmup: ``optimizer.lr x lr_scaling_factor``."""
        return self.base_lr * self.lr_scaling_factor


def task_labels(cfg: DictConfig) -> str:
    """The ``label_type`` of the config's task class (:func:`framework.tasks.label_type_of`): what
    the dataset is asked for (``class``, ``multi_hot`` or ``value``).

    Raises:
        ConfigError: the task's ``_target_`` cannot be imported, or its ``label_type`` is unknown.
    """
    from framework import tasks

    return tasks.label_type_of(registry.locate(cfg.task._target_, "task"))


#: What a sample's label looks like for each label type (for the one-line refusal).
LABEL_FORMS = {"class": "an integer class index", "multi_hot": "a float tensor (K,) of 0/1",
               "value": "a float tensor (K,), a float when K = 1"}


def check_labels(data: Any, label_type: str, cfg: DictConfig) -> None:
    """The first training sample's label has the task's form: an integer for ``class``, a
    floating-point tensor of ``num_classes`` values for ``multi_hot`` and ``value`` (a scalar when
    ``num_classes`` is 1); a dataset that ignores ``label_type`` is caught here, before training.

    Args:
        data: the built :class:`~framework.data.DataBundle`.
        label_type: the task's (:func:`task_labels`).
        cfg: the config, for the message.

    Raises:
        ConfigError: naming the dataset, the task and the label found.
    """
    import torch

    y = torch.as_tensor(data.train[0][1])
    if label_type == "class":
        ok = not y.is_floating_point() and y.numel() == 1
    else:
        ok = y.is_floating_point() and y.numel() == data.num_classes  # a scalar value when K = 1
    if not ok:
        raise ConfigError(f"task._target_={cfg.task._target_}: trains on {label_type} labels ({LABEL_FORMS[label_type]},"
                          f" K = num_classes = {data.num_classes}), but dataset._target_={cfg.dataset._target_} gives "
                          f"{y.dtype} labels of shape {tuple(y.shape)}; pick the task that fits the data, or make the "
                          "dataset give that form (its callable can take label_type)")


def build_data(cfg: DictConfig) -> Any:
    """The config's dataset (a :class:`~framework.data.DataBundle`), given the run's ``seed`` and
    the task's ``label_type`` (:func:`task_labels`) where its callable takes them.

    Raises:
        ConfigError: the dataset's own refusals (missing files, bad keys), or labels of another
            form than the task's (:func:`check_labels`).
        Interrupted: SIGTERM / Ctrl-C while the data were read or downloaded (acts at once).
    """
    label_type = task_labels(cfg)  # the task's label format, asked of the dataset
    with interrupts.interruptible():  # reading or downloading the data: Ctrl-C acts at once
        data = registry.instantiate(cfg.dataset, "dataset", seed=cfg.seed, label_type=label_type)
    check_labels(data, label_type, cfg)
    return data


def build_model(cfg: DictConfig, data: Any) -> Any:
    """The config's model for ``data``: ``num_classes``, ``in_chans`` and ``img_size`` are passed
    where its callable takes them; on the CPU, as built.

    Raises:
        ConfigError: the callable rejects its arguments, or returns no trainable ``nn.Module``.
        Interrupted: SIGTERM / Ctrl-C while it was made (pretrained weights may be downloaded).
    """
    from framework.models import check_module

    with interrupts.interruptible():
        model = registry.instantiate(
            cfg.model, "model", num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
        )
    check_module(model, cfg.model._target_)
    return model


def build_task(cfg: DictConfig, data: Any) -> Any:
    """The config's task (:mod:`framework.tasks`) for ``data``'s outputs and class names, checked.

    Raises:
        ConfigError: a bad task key (``monitor``, ``mode``, ``loss``, ...).
    """
    from framework import tasks

    task = registry.instantiate(cfg.task, "task", num_classes=data.num_classes, classes=getattr(data, "classes", None))
    tasks.check_task(task)
    return task


def build(cfg: DictConfig, run_dir: Path, trackers: Any = None) -> Built:
    """Build dataset, loaders, model, task, optimizer, LR plan and trainer from a validated config.

    Args:
        cfg: the output of :func:`framework.config.validate` (with a numeric ``lr0``).
        run_dir: the run folder the trainer will write into (nothing is written here).
        trackers: the trainer's :class:`~framework.tracking.Trackers` (not started yet), or None.

    Returns:
        The :class:`Built` run.

    Raises:
        ConfigError: a mistake only the built parts reveal (a device that is not here, a model
            name timm does not know, a warmup longer than the run, ...), before any training
            and before anything is written.
        Interrupted: SIGTERM / Ctrl-C while the data or the model was being made.
    """
    from framework import tasks
    from framework.data import make_loaders
    from framework.models import check_batch_norm_batches, check_model_name, check_outputs
    from framework.optim import build_optimizer, global_batch
    from framework.schedules.plan import build_plan

    device = resolve_device(cfg.device)
    if str(cfg.trainer.precision) == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16: needs CUDA (device is {device.type}); use bf16 or 32")
    world = distributed.world_size()
    if cfg.trainer.get("sync_batchnorm") and world > 1 and device.type != "cuda":
        raise ConfigError(f"trainer.sync_batchnorm=true: torch.nn.SyncBatchNorm needs CUDA (device is {device.type}); "
                          "use trainer.sync_batchnorm=false")
    if cfg.model._target_ == "framework.models.create_model":  # (a user's model takes no timm name)
        check_model_name(cfg.model.name)  # before the data are read: a misspelt name fails at once
    seed_everything(cfg.seed)
    interrupts.check()  # a signal that came while Hydra composed or the imports above ran ends the program here
    data = build_data(cfg)
    loaders = make_loaders(data, cfg.batch_size, cfg.seed, device, cfg.loader, cfg.num_workers,
                           rank=distributed.rank(), world_size=world)
    model = build_model(cfg, data)
    check_batch_norm_batches(model, loaders[0])
    task = build_task(cfg, data)
    check_outputs(model, data, task, cfg.model._target_)
    optimizer, scaling = build_optimizer(cfg, model)
    base_lrs = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    plan = build_plan(cfg, len(loaders[0]))
    plan.check_optimizer(optimizer)
    check_monitor = getattr(plan.schedule, "check_monitor", None)  # a metric-driven schedule (plateau)
    if callable(check_monitor):
        check_monitor(tasks.logged_metrics(task))
    trainer = registry.instantiate(cfg.trainer, "trainer", config=plain_config(cfg), model=model, optimizer=optimizer,
                                   plan=plan, data=loaders, run_dir=run_dir, device=device, task=task,
                                   trackers=trackers)
    return Built(trainer, plan, device, scaling, float(cfg.optimizer.lr), base_lrs, global_batch(cfg), task)
