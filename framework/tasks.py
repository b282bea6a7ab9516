"""Tasks (``conf/task/*.yaml``): what a run learns. A task gives the loss the optimizer follows,
the metrics of each evaluation and the monitored objective (the best epoch, ``best.pt``, the
value returned to Hydra sweepers and the sweep report's ranking).

The interface (subclass :class:`Task` or write any class with the same members, selected by
``task._target_=mypkg.MyTask``):

- ``label_type`` (class attribute): the labels the dataset must give, ``class`` (int64 ``(B,)``),
  ``multi_hot`` (float32 ``(B, K)`` of 0/1) or ``value`` (float32 ``(B, K)``, or ``(B,)`` when
  ``K = 1``); passed to the dataset callable as ``label_type`` when it takes it.
- constructor runtime inputs ``num_classes`` (``K``, the model's outputs) and ``classes`` (names
  or None), each passed only when the constructor takes it.
- ``monitor`` (``val/loss``, ``train/loss`` or ``val/<metric>``) and ``mode`` (``max`` | ``min``),
  as in Lightning's ``ModelCheckpoint`` / ``EarlyStopping``.
- ``loss(outputs (B, K) float32, targets) -> 0-dim tensor``, the mean over the batch.
- ``metrics() -> dict[str, torchmetrics.Metric]``, names without the ``val/`` prefix (the
  framework adds ``val/`` or ``test/``); ``metric_inputs(outputs, targets)`` (optional) turns a
  batch into what the metrics' ``update`` takes; ``metric_names()`` (optional) lists the names
  without building the metrics.
- ``predict(outputs) -> dict[str, list]`` (optional): the columns of a predictions CSV.

torchmetrics is imported inside :meth:`Task.metrics` only (it costs about a second), so
``python train.py --help`` stays fast.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from framework.errors import ConfigError

#: Label formats a task can ask the dataset for (``Task.label_type``).
LABEL_TYPES = ("class", "multi_hot", "value")
#: Directions of the monitored metric: ``max`` (higher is better) or ``min``.
MODES = ("max", "min")
#: Metrics every run logs whatever its task (the loss the optimizer follows, in its units).
RUN_METRICS = ("val/loss", "train/loss")


class Task:
    """Base of the tasks: the label format, the loss, the metrics and the monitored objective.

    Subclasses set :attr:`label_type` and implement :meth:`loss` and :meth:`metrics`
    (:meth:`metric_names`, :meth:`metric_inputs` and :meth:`predict` have defaults). The
    framework checks ``monitor`` and ``mode`` once the task is built (:func:`check_task`).

    Args:
        num_classes: ``K``, outputs of the model (classes, labels or regression targets;
            runtime, the dataset's ``num_classes``), >= 1.
        classes: names of the ``K`` outputs (runtime, the dataset's ``classes``), or None.
        monitor: the metric that picks the best epoch: ``val/loss``, ``train/loss`` or
            ``val/<one of metric_names()>``.
        mode: ``max`` (higher is better) or ``min``.

    Raises:
        ConfigError: ``num_classes`` < 1, or ``classes`` of another length than ``num_classes``.
    """

    #: The labels this task trains on: ``class`` | ``multi_hot`` | ``value``.
    label_type: str = "class"

    def __init__(self, num_classes: int, classes: Optional[Sequence[str]] = None, monitor: str = "val/loss",
                 mode: str = "min"):
        if int(num_classes) < 1:
            raise ConfigError(f"task: the dataset has num_classes={num_classes}; a model needs >= 1 output, "
                              "check the dataset")
        if classes is not None and len(classes) != int(num_classes):
            raise ConfigError(f"task: the dataset names {len(classes)} classes but has num_classes={num_classes}; "
                              "check the dataset's class list")
        self.num_classes = int(num_classes)
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.monitor, self.mode = monitor, mode

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch (what the optimizer minimises).

        Args:
            outputs: model outputs ``(B, K)`` float32.
            targets: labels as :attr:`label_type` says.

        Returns:
            A 0-dim tensor on the outputs' device (no host sync).
        """
        raise NotImplementedError

    def metrics(self) -> dict[str, Any]:
        """New metric objects by name (no ``val/`` prefix), each a ``torchmetrics.Metric`` whose
        ``compute()`` is a scalar; the framework moves them to the device, resets them before each
        evaluation and updates them with :meth:`metric_inputs` of every batch."""
        return {}

    def metric_names(self) -> list[str]:
        """The names :meth:`metrics` returns, in its order (without building the metrics)."""
        return list(self.metrics())

    def metric_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the metrics' ``update(preds, target)`` takes for a batch: ``(outputs, targets)``
        here (outputs ``(B, K)`` float32)."""
        return outputs, targets

    def predict(self, outputs: torch.Tensor) -> dict[str, list]:
        """Columns of a predictions CSV for a batch of outputs ``(B, K)``: one value per sample in
        each list. Here the raw outputs, ``out/<name>`` per output (name: the class name or the
        index)."""
        return {f"out/{name}": outputs[:, i].tolist() for i, name in enumerate(_names(self))}


class Classification(Task):
    """Single-label classification: softmax cross-entropy on class indices.

    Loss: ``F.cross_entropy(outputs, targets, label_smoothing=eps)``, the mean over the batch
    (nats) of ``-sum_c q_c log softmax(z)_c`` with ``q = (1 - eps) onehot(y) + eps / K``
    (Szegedy et al., "Rethinking the Inception Architecture", 2016).

    Metrics (``torchmetrics.classification.MulticlassAccuracy``, ``average="micro"``):
    ``acc`` (top-1, fraction of samples whose highest output is the label) and ``acc_top5``
    (fraction whose label is among the 5 highest; only when ``K > 5``).

    Labels: ``class``, int64 ``(B,)`` in ``0 … K-1``.

    Args:
        num_classes: ``K`` (runtime), >= 2.
        classes: class names (runtime), or None.
        label_smoothing: ``eps``, in [0, 1); 0 = plain cross-entropy.
        monitor: ``val/acc`` (default), ``val/acc_top5``, ``val/loss`` or ``train/loss``.
        mode: ``max`` (default, for accuracies) or ``min`` (for losses).

    Raises:
        ConfigError: ``num_classes`` < 2, ``label_smoothing`` outside [0, 1), a bad
            ``monitor`` or ``mode`` (:func:`check_task`).
    """

    label_type = "class"

    def __init__(self, num_classes: int, classes: Optional[Sequence[str]] = None, label_smoothing: float = 0.0,
                 monitor: str = "val/acc", mode: str = "max"):
        if int(num_classes) < 2:
            raise ConfigError(f"task=classification: the dataset has num_classes={num_classes}; a classifier needs "
                              ">= 2 classes, use task=regression or a dataset with more classes")
        if isinstance(label_smoothing, bool) or not 0 <= label_smoothing < 1:
            raise ConfigError(f"task.label_smoothing={label_smoothing}: must be in [0, 1) (0 = none), e.g. 0.1")
        super().__init__(num_classes, classes, monitor, mode)
        self.label_smoothing = float(label_smoothing)
        check_task(self)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean (label-smoothed) cross-entropy, nats: outputs ``(B, K)`` logits, targets int64 ``(B,)``."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def metric_names(self) -> list[str]:
        """``acc`` and, with more than 5 classes, ``acc_top5``."""
        return ["acc", "acc_top5"] if self.num_classes > 5 else ["acc"]

    def metrics(self) -> dict[str, Any]:
        """``acc`` and ``acc_top5``: ``MulticlassAccuracy(average="micro", top_k=1 | 5)``
        (``validate_args=False``: no host sync per batch)."""
        from torchmetrics.classification import MulticlassAccuracy

        return {name: MulticlassAccuracy(num_classes=self.num_classes, average="micro", top_k=1 if name == "acc" else 5,
                                         validate_args=False) for name in self.metric_names()}

    def predict(self, outputs: torch.Tensor) -> dict[str, list]:
        """``pred_class`` (the class name, or the index without names), ``pred_index`` and
        ``prob`` (its softmax probability) of each sample of outputs ``(B, K)``."""
        prob, index = outputs.float().softmax(1).max(1)
        indices = index.tolist()
        names = [self.classes[i] for i in indices] if self.classes else indices
        return {"pred_class": names, "pred_index": indices, "prob": prob.tolist()}


class MultiLabel(Task):
    """Multi-label classification: ``K`` independent yes/no labels per sample.

    Loss: ``F.binary_cross_entropy_with_logits(outputs, targets)``, the mean over the ``B x K``
    entries (nats) of ``-(y log s(z) + (1 - y) log(1 - s(z)))``, ``s`` the sigmoid.

    Metrics, on the sigmoid probabilities (``torchmetrics.classification``, exact, ``thresholds=None``):

    - ``map``: ``MultilabelAveragePrecision(average="macro")``, the mean over the labels of each
      label's average precision ``AP = sum_n (R_n - R_{n-1}) P_n`` over the samples ranked by
      score (the area under the precision-recall curve without interpolation, as
      scikit-learn's ``average_precision_score``);
    - ``auroc``: ``MultilabelAUROC(average="macro")``, the mean over the labels of the area under
      the ROC curve (the probability that a random positive scores above a random negative;
      Fawcett, "An introduction to ROC analysis", 2006).

    (AP as in Manning, Raghavan & Schütze, "Introduction to Information Retrieval", 2008, §8.4,
    without interpolation; macro averages as scikit-learn's ``average="macro"``.)

    A label without positive samples in the evaluated set scores 0 in both (torchmetrics warns):
    use a validation set where every label occurs.

    Labels: ``multi_hot``, float32 ``(B, K)`` of 0/1.

    Args:
        num_classes: ``K``, labels per sample (runtime), >= 1.
        classes: label names (runtime), or None.
        monitor: ``val/map`` (default), ``val/auroc``, ``val/loss`` or ``train/loss``.
        mode: ``max`` (default) or ``min`` (for losses).

    Raises:
        ConfigError: a bad ``monitor`` or ``mode`` (:func:`check_task`).
    """

    label_type = "multi_hot"

    def __init__(self, num_classes: int, classes: Optional[Sequence[str]] = None, monitor: str = "val/map",
                 mode: str = "max"):
        super().__init__(num_classes, classes, monitor, mode)
        check_task(self)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy over the ``B x K`` entries, nats: outputs ``(B, K)`` logits,
        targets ``(B, K)`` of 0/1."""
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))

    def metric_names(self) -> list[str]:
        return ["map", "auroc"]

    def metrics(self) -> dict[str, Any]:
        """``map`` (``MultilabelAveragePrecision``) and ``auroc`` (``MultilabelAUROC``), macro averages."""
        from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision

        return {"map": MultilabelAveragePrecision(num_labels=self.num_classes, average="macro", thresholds=None,
                                                  validate_args=False),
                "auroc": MultilabelAUROC(num_labels=self.num_classes, average="macro", thresholds=None,
                                         validate_args=False)}

    def metric_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid probabilities ``(B, K)`` and int64 targets ``(B, K)`` (torchmetrics would apply
        the sigmoid only to a batch with an output outside [0, 1])."""
        return outputs.sigmoid(), targets.long()

    def predict(self, outputs: torch.Tensor) -> dict[str, list]:
        """``prob/<label>``: the sigmoid probability of each label (name, or index) of outputs ``(B, K)``."""
        probs = outputs.float().sigmoid()
        return {f"prob/{name}": probs[:, i].tolist() for i, name in enumerate(_names(self))}


class Regression(Task):
    """Regression of ``K`` real values per sample.

    Targets ``(B, K)``, or ``(B,)`` with ``K = 1``: outputs ``(B, 1)`` are then compared as
    ``(B,)`` (reshaped to the targets' shape, never broadcast to ``(B, B)``).

    Loss: ``mse`` = ``F.mse_loss``, mean of ``(output - target)^2`` over the ``B x K`` values
    (target units squared), or ``l1`` = ``F.l1_loss``, mean of ``|output - target|``.

    Metrics, over all ``B x K`` values of the evaluated set (``torchmetrics``):
    ``mae`` = ``MeanAbsoluteError``, mean ``|output - target|``; ``rmse`` =
    ``MeanSquaredError(squared=False)``, ``sqrt(mean (output - target)^2)`` (both in target units).

    Labels: ``value``, float32.

    Args:
        num_classes: ``K``, values per sample (runtime), >= 1.
        classes: names of the values (runtime), or None.
        loss: ``mse`` or ``l1``.
        monitor: ``val/rmse`` (default), ``val/mae``, ``val/loss`` or ``train/loss``.
        mode: ``min`` (default) or ``max``.

    Raises:
        ConfigError: an unknown ``loss``, a bad ``monitor`` or ``mode`` (:func:`check_task`);
            during training, targets whose shape does not fit the outputs (the dataset's
            ``num_classes`` must be the number of values per sample).
    """

    label_type = "value"
    LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}

    def __init__(self, num_classes: int, classes: Optional[Sequence[str]] = None, loss: str = "mse",
                 monitor: str = "val/rmse", mode: str = "min"):
        if loss not in self.LOSSES:
            raise ConfigError(f"task.loss={loss}: use mse (squared error) or l1 (absolute error)")
        super().__init__(num_classes, classes, monitor, mode)
        self.loss_name = loss
        self._loss = self.LOSSES[loss]
        check_task(self)

    def _shaped(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Outputs in the targets' shape: ``(B, 1)`` -> ``(B,)`` for ``(B,)`` targets."""
        if outputs.shape != targets.shape:
            if targets.ndim == 1 and outputs.shape == (targets.shape[0], 1):
                return outputs.reshape(targets.shape)
            raise ConfigError(f"task=regression: targets of shape {tuple(targets.shape)} do not fit the model's outputs "
                              f"{tuple(outputs.shape)}; the dataset's num_classes must be the number of values per "
                              "sample ((B,) targets: num_classes=1)")
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared (``mse``) or absolute (``l1``) error over the values: outputs ``(B, K)``,
        targets ``(B, K)`` or ``(B,)``."""
        return self._loss(self._shaped(outputs, targets), targets.to(outputs.dtype))

    def metric_names(self) -> list[str]:
        return ["mae", "rmse"]

    def metrics(self) -> dict[str, Any]:
        """``mae`` (``MeanAbsoluteError``) and ``rmse`` (``MeanSquaredError(squared=False)``)."""
        from torchmetrics import MeanAbsoluteError, MeanSquaredError

        return {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}

    def metric_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and float targets, both flattened to ``(B*K,)``: the metrics average every value."""
        return self._shaped(outputs, targets).reshape(-1), targets.to(outputs.dtype).reshape(-1)

    def predict(self, outputs: torch.Tensor) -> dict[str, list]:
        """``pred`` (one value, no names) or ``pred/<name>`` per value of outputs ``(B, K)``."""
        outputs = outputs.float()
        if self.num_classes == 1 and not self.classes:
            return {"pred": outputs.reshape(-1).tolist()}
        return {f"pred/{name}": outputs[:, i].tolist() for i, name in enumerate(_names(self))}


def _names(task: Any) -> list[str]:
    """The outputs' names: the task's ``classes``, else their indices as strings."""
    return list(task.classes) if getattr(task, "classes", None) else [str(i) for i in range(task.num_classes)]


def label_type_of(target: Any) -> str:
    """The ``label_type`` of a task class (or instance); ``class`` when it has none.

    Raises:
        ConfigError: a value other than ``class``, ``multi_hot`` or ``value``.
    """
    label_type = getattr(target, "label_type", "class")
    if label_type not in LABEL_TYPES:
        name = getattr(target, "__qualname__", type(target).__qualname__)
        raise ConfigError(f"task._target_: {name}.label_type={label_type!r}; use one of {', '.join(LABEL_TYPES)}")
    return label_type


def metric_names(task: Any) -> list[str]:
    """A task's metric names (no prefix): :meth:`Task.metric_names`, else the keys of ``metrics()``."""
    names = getattr(task, "metric_names", None)
    return list(names()) if callable(names) else list(task.metrics())


def monitor_of(task: Any) -> tuple[str, str]:
    """``(monitor, mode)`` of a task (``val/loss``, ``min`` for a task that sets neither)."""
    return getattr(task, "monitor", "val/loss"), getattr(task, "mode", "min")


def logged_metrics(task: Any) -> list[str]:
    """Every epoch metric a run of this task logs: ``train/loss``, ``val/loss``, ``val/<metric>``."""
    return ["train/loss", "val/loss", *(f"val/{m}" for m in metric_names(task))]


def check_task(task: Any) -> None:
    """Check a task's ``mode`` and ``monitor`` against what a run of it logs.

    Raises:
        ConfigError: ``mode`` not ``max``/``min``; ``monitor`` not ``val/loss``, ``train/loss``
            or ``val/<one of the task's metrics>``; a loss monitored with ``mode=max``; a user's
            task whose ``metrics()`` are not ``torchmetrics.Metric`` objects named as
            ``metric_names()`` says (built once here, so it fails before training).
    """
    monitor, mode = monitor_of(task)
    if mode not in MODES:
        raise ConfigError(f"task.mode={mode}: use max (higher {monitor} is better) or min")
    logged = logged_metrics(task)
    if monitor not in logged:
        from framework.errors import suggest

        raise ConfigError(f"task.monitor={monitor}: not a metric this task logs{suggest(monitor, logged)}; use one of "
                          f"{', '.join(logged)}")
    if monitor in RUN_METRICS and mode == "max":
        raise ConfigError(f"task.mode=max: task.monitor={monitor} is a loss (lower is better); use task.mode=min")
    if type(task).__module__ != __name__:  # a user's own task: its metrics are built once here
        import torchmetrics

        made = task.metrics()
        wrong = [name for name, metric in made.items() if not isinstance(metric, torchmetrics.Metric)]
        if list(made) != metric_names(task) or wrong:
            raise ConfigError(f"task._target_={type(task).__module__}.{type(task).__qualname__}: metrics() gives "
                              f"{list(made)} and metric_names() {metric_names(task)}"
                              + (f"; {wrong[0]} is not a torchmetrics.Metric" if wrong else "")
                              + "; make metric_names() list metrics()'s keys, each a torchmetrics.Metric")


def describe(task: Any) -> dict[str, Any]:
    """What ``summary.json`` and checkpoints record of a task: ``name`` (the class path),
    ``label_type``, ``monitor``, ``mode``."""
    cls = type(task)
    monitor, mode = monitor_of(task)
    return {"name": f"{cls.__module__}.{cls.__qualname__}", "label_type": label_type_of(task), "monitor": monitor,
            "mode": mode}


def is_better(value: float, best: Optional[float], mode: str) -> bool:
    """Whether an epoch's monitored ``value`` is strictly better than ``best`` under ``mode``
    (``max``: higher; ``min``: lower). A NaN is never better; anything but NaN beats a NaN or
    missing best."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def worst(mode: str) -> float:
    """The objective of a run with no usable result (diverged, failed): 0.0 for ``max`` (the
    worst accuracy or precision), ``+inf`` for ``min``."""
    return math.inf if mode == "min" else 0.0


def default_task(model: torch.nn.Module) -> Classification:
    """The task of a trainer built without one: :class:`Classification` over the model's outputs
    (``model.num_classes`` as timm sets it, else the ``out_features`` of its last ``Linear``).

    Raises:
        ValueError: neither is found; pass ``task=`` to the trainer.
    """
    k = getattr(model, "num_classes", None)
    if not isinstance(k, int):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        k = linears[-1].out_features if linears else None
    if k is None:
        raise ValueError("the trainer was given no task and the model's number of outputs is unknown; pass task=")
    return Classification(k)
