"""An epoch's end as the trainer judges it: whether it validates (``val_every_n_epochs``), which
weights it evaluates (raw, and the EMA beside them), whether it is the best epoch and by which
weights, and whether early stopping ends the run after it."""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from framework import tasks
from framework.errors import ConfigError
from framework.trainer.early_stopping import EarlyStopping, check_early_stopping_args
from framework.trainer.ema import EMA_PREFIX, WeightEma, best_value, check_ema_args, monitored

log = logging.getLogger("framework.trainer.loop")


def check_validation_args(val_every_n_epochs: int = 1, ema_decay: Optional[float] = None, ema_warmup: bool = False,
                          early_stopping: Any = None) -> list[str]:
    """The one-line messages of every epoch-end key the config alone shows wrong (empty when all
    are fine): ``val_every_n_epochs`` not an integer >= 1, the EMA keys
    (:func:`~framework.trainer.ema.check_ema_args`) and ``early_stopping``
    (:func:`~framework.trainer.early_stopping.check_early_stopping_args`). Pure, so
    :func:`framework.config.validate` reports them all before anything is built.

    Args:
        val_every_n_epochs, ema_decay, ema_warmup, early_stopping: as :class:`Validation`.
    """
    errors = []
    if isinstance(val_every_n_epochs, bool) or not isinstance(val_every_n_epochs, int) or val_every_n_epochs < 1:
        errors.append(f"trainer.val_every_n_epochs={val_every_n_epochs}: must be an integer >= 1 (1 = every epoch)")
    return errors + check_ema_args(ema_decay, ema_warmup) + check_early_stopping_args(early_stopping)


class Validation:
    """The validation schedule, the EMA of the weights and early stopping of one trainer.

    Validated epochs: every ``val_every_n_epochs``-th (epochs ``n-1, 2n-1, ...`` from 0) and the
    last one. Only they can be the best epoch, feed a plateau schedule and count for early
    stopping. An epoch's monitored value is ``val/<m>`` of the task's ``monitor``; with EMA on, the
    better of ``val/<m>`` and ``val_ema/<m>`` (:func:`~framework.trainer.ema.monitored`; a tie
    goes to the raw weights), and the best epoch records which weights gave it (``best_weights``).

    Args:
        val_every_n_epochs: (epochs) between validations, an integer >= 1.
        ema_decay: ``trainer.ema_decay`` (:class:`~framework.trainer.ema.WeightEma`); None = no EMA.
        ema_warmup: ``trainer.ema_warmup``.
        early_stopping: ``trainer.early_stopping`` (:class:`~framework.trainer.early_stopping.EarlyStopping`).
        model: the plain module the EMA copies (runtime).
        task: the run's task (runtime): its ``monitor``, ``mode`` and metric names.

    Raises:
        ConfigError: keys out of range, each named with its fix (``trainer.<key>=...: ...``), all
            at once (:func:`check_validation_args`); then an early-stopping ``monitor`` this task
            does not log (:class:`~framework.trainer.early_stopping.EarlyStopping`).
    """

    def __init__(self, val_every_n_epochs: int, ema_decay: Optional[float], ema_warmup: bool,
                 early_stopping: Optional[dict[str, Any]], model: torch.nn.Module, task: Any):
        errors = check_validation_args(val_every_n_epochs, ema_decay, ema_warmup, early_stopping)
        if errors:
            raise ConfigError(errors)
        self.every = val_every_n_epochs
        self.monitor, self.mode = tasks.monitor_of(task)
        self.ema = WeightEma(model, ema_decay, ema_warmup) if ema_decay is not None else None
        #: the EMA weights' columns of ``epochs.csv`` (none without EMA)
        self.columns = [f"{EMA_PREFIX}{m}" for m in ("loss", *tasks.metric_names(task))] if self.ema is not None else []
        self.early_stopping = EarlyStopping.from_config(early_stopping, task_monitor=self.monitor, task_mode=self.mode,
                                                        logged=[*tasks.logged_metrics(task), *self.columns])

    def due(self, epoch: int, epochs: int, finished: bool) -> bool:
        """Whether epoch ``epoch`` (from 0) of ``epochs`` validates: every n-th, and the last one
        (``finished``: no optimizer step is left)."""
        return (epoch + 1) % self.every == 0 or epoch == epochs - 1 or finished

    def evaluate(self, engine: Any) -> dict[str, float]:
        """The task's loss and metrics on the validation set for the raw weights (``val/...``)
        and, with EMA on, for the EMA weights (``val_ema/...``): :meth:`StepEngine.evaluate`."""
        metrics = engine.evaluate()
        if self.ema is not None:
            metrics.update(engine.evaluate(module=self.ema.module, prefix=EMA_PREFIX))
        return metrics

    def judge(self, metrics: dict[str, Any], best: dict[str, Any]) -> tuple[bool, Optional[str]]:
        """Whether a validated epoch is strictly better than ``best`` (the best epoch so far, or
        ``{}``), and which weights its value comes from.

        Returns:
            ``(is_best, best_weights)``: ``best_weights`` is ``raw`` or ``ema`` with EMA on, else None.
        """
        value, weights = monitored(metrics, self.monitor, self.mode)
        is_best = not best or tasks.is_better(value, best_value(best, self.monitor), self.mode)
        return is_best, weights if self.ema is not None else None

    def should_stop(self, epoch: int, metrics: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Early stopping's verdict on a validated epoch: its ``summary.json`` block
        (:meth:`EarlyStopping.report`) when the run stops after it, else None."""
        stopper = self.early_stopping
        if not stopper.enabled or not stopper.observe(epoch, stopper.value_of(metrics)):
            return None
        report = stopper.report(ema=self.ema is not None)
        log.info("early stopping after epoch %d: %s did not improve by more than %g in %d validations",
                 epoch + 1, report["monitor"], stopper.min_delta, stopper.patience)
        return report
