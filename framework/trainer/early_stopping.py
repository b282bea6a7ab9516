"""Early stopping: end a run once its monitored metric stops improving (Lightning's semantics)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional, Sequence

from framework.errors import ConfigError, suggest
from framework.tasks import MODES
from framework.trainer.ema import monitored

#: The keys of ``trainer.early_stopping``.
KEYS = ("patience", "monitor", "min_delta", "mode")

_KEY = "trainer.early_stopping"


def _shape_errors(node: Any) -> list[str]:
    """``trainer.early_stopping`` that is not a mapping (nor null), or has keys not in :data:`KEYS`."""
    if node is None:
        return []
    if not isinstance(node, Mapping):
        return [f"{_KEY}={node}: must be a mapping {{{', '.join(KEYS)}}} or null, e.g. {_KEY}.patience=3"]
    return [f"{_KEY}.{k}: not a key of early stopping{suggest(k, KEYS)}; use {', '.join(KEYS)}"
            for k in node if k not in KEYS]


def _value_errors(patience: Optional[int] = None, monitor: Optional[str] = None, min_delta: float = 0.0,
                  mode: Optional[str] = None) -> list[str]:
    """The keys' values out of range, as far as the config alone tells (``monitor`` is checked
    against the run's metrics by :class:`EarlyStopping`)."""
    errors = []
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        errors.append(f"{_KEY}.patience={patience}: must be an integer >= 1 (validations without improvement before "
                      "stopping) or null (off)")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
        errors.append(f"{_KEY}.min_delta={min_delta}: must be a number >= 0 (0 = any improvement counts)")
    if mode is not None and mode not in MODES:
        errors.append(f"{_KEY}.mode={mode}: use max, min or null (the task's mode)")
    return errors


def check_early_stopping_args(node: Any) -> list[str]:
    """The one-line messages of ``trainer.early_stopping``'s mistakes that the config alone shows
    (empty when there are none); pure, so :func:`framework.config.validate` reports them before
    anything is built: not a mapping nor null, an unknown key (with a suggestion), ``patience``,
    ``min_delta`` or ``mode`` out of range. Whether ``monitor`` is a metric the run logs needs
    the built task (:class:`EarlyStopping` checks it).

    Args:
        node: ``trainer.early_stopping``: a mapping of :data:`KEYS`, or None (off).
    """
    errors = _shape_errors(node)
    if errors or node is None:
        return errors
    return _value_errors(**node)


class EarlyStopping:
    """Stop after ``patience`` validations in a row without an improvement of the monitored value.

    An improvement is a value better than the best so far by more than ``min_delta``:
    ``value - min_delta > best`` (``mode=max``) or ``value + min_delta < best`` (``min``); the best
    starts at ``-inf`` (``max``) or ``+inf`` (``min``) and changes only on an improvement; the
    count ``wait`` of validations without one is reset by it, and the run stops after the
    validation where ``wait >= patience``. A NaN value is not an improvement (Lightning's
    ``check_finite`` would stop at once; a non-finite ``val/loss`` is a divergence here anyway).
    Only validated epochs are judged (``trainer.val_every_n_epochs``), so ``patience`` counts
    validations, not epochs.

    Formula: stop after validation j when #{validations i <= j since the last improvement} >= patience

    Source: Lightning ``lightning/pytorch/callbacks/early_stopping.py`` (``EarlyStopping``:
    ``monitor_op(current - min_delta, best_score)`` with ``min_delta`` negated for ``min``).

    Args:
        patience: (validations) without improvement before stopping, an integer >= 1; None = off.
        monitor: the metric judged, one the run logs each validated epoch (``val/loss``,
            ``train/loss``, ``val/<metric>``, ``val_ema/...`` with EMA); None = the task's
            ``monitor`` as the best epoch judges it (with EMA: the better of ``val/<m>`` and
            ``val_ema/<m>``).
        min_delta: (the metric's units) margin an improvement must exceed, >= 0.
        mode: ``max`` | ``min``; None = the task's mode for its own monitor, ``min`` for a loss.
        task_monitor: the task's ``monitor`` (runtime); task_mode: its ``mode`` (runtime).
        logged: the metrics a validated epoch has (runtime), to check ``monitor``.

    Raises:
        ConfigError: a key out of range, named with its fix (``trainer.early_stopping.<key>=...``;
            :func:`check_early_stopping_args`, every one at once), then a ``monitor`` the run does
            not log, or a null ``mode`` for a monitor that is neither the task's nor a loss.
    """

    def __init__(self, patience: Optional[int] = None, monitor: Optional[str] = None, min_delta: float = 0.0,
                 mode: Optional[str] = None, *, task_monitor: str = "val/loss", task_mode: str = "min",
                 logged: Sequence[str] = ()):
        key = _KEY
        errors = _value_errors(patience, monitor, min_delta, mode)
        if errors:
            raise ConfigError(errors)
        if monitor is not None and monitor not in logged:
            raise ConfigError(f"{key}.monitor={monitor}: not a metric this run logs; use one of {', '.join(logged)} "
                              "or null (the task's monitor)")
        if mode is None and monitor not in (None, task_monitor) and not monitor.endswith("loss"):
            raise ConfigError(f"{key}.mode=null: {monitor} is not the task's monitor ({task_monitor}); set "
                              f"{key}.mode=max or min")
        if mode is None:
            mode = task_mode if monitor in (None, task_monitor) else "min"
        self.patience, self.monitor, self.min_delta, self.mode = patience, monitor, float(min_delta), mode
        self.task_monitor = task_monitor
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch: Optional[int] = None
        self.wait = 0
        self.stopped_epoch: Optional[int] = None  # the epoch after which it stopped

    @classmethod
    def from_config(cls, node: Optional[dict[str, Any]], **runtime: Any) -> "EarlyStopping":
        """From ``trainer.early_stopping`` (a dict of :data:`KEYS`; None = off).

        Raises:
            ConfigError: not a mapping, or an unknown key (a typo), naming the keys there are; or
                as the constructor.
        """
        errors = _shape_errors(node)
        if errors:
            raise ConfigError(errors)
        return cls(**dict(node or {}), **runtime)

    @property
    def enabled(self) -> bool:
        """Early stopping is on (``patience`` set)."""
        return self.patience is not None

    def value_of(self, metrics: dict[str, Any]) -> Optional[float]:
        """A validated epoch's judged value: ``metrics[monitor]``, or for a null ``monitor`` the
        task's monitored value as the best epoch takes it (:func:`~framework.trainer.ema.monitored`)."""
        if self.monitor is not None:
            return metrics.get(self.monitor)
        return monitored(metrics, self.task_monitor, self.mode)[0]

    def observe(self, epoch: int, value: Optional[float]) -> bool:
        """Judge a validated epoch's monitored ``value``; True when the run should stop after it."""
        if value is not None and not math.isnan(value) and (
                value - self.min_delta > self.best if self.mode == "max" else value + self.min_delta < self.best):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def report(self, ema: bool = False) -> dict[str, Any]:
        """The ``early_stopping`` block of ``summary.json``: ``stopped_after_epoch`` (from 0),
        ``best_epoch`` and ``best_value`` (of the judged metric, its last improvement),
        ``monitor``, ``mode``, ``patience``, ``min_delta`` and ``validations_without_improvement``;
        ``monitor_weights`` says what a null ``monitor`` judged (``raw``, or ``better of raw and
        ema`` with EMA on)."""
        if self.monitor is None:
            weights = "better of raw and ema" if ema else "raw"
        else:
            weights = "ema" if self.monitor.startswith("val_ema/") else "raw"
        return {"stopped_after_epoch": self.stopped_epoch, "best_epoch": self.best_epoch,
                "best_value": self.best if math.isfinite(self.best) else None,
                "monitor": self.monitor or self.task_monitor, "monitor_weights": weights,
                "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
                "validations_without_improvement": self.wait}

    def state_dict(self) -> dict[str, Any]:
        """The judging state (for checkpoints, so a resume judges as the run would have)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a run resumed after it stopped (with another
        ``patience``, ``resume_allow_changes=true``) judges on from there."""
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.stopped_epoch = None
