"""Reduce-on-plateau: the one metric-driven (stateful) policy."""
from __future__ import annotations

import math
from typing import Any

from framework.errors import ConfigError
from framework.schedules.base import Schedule, check_lrf

#: Epoch metrics every run reports to :meth:`Plateau.observe`, whatever its task; the task adds
#: ``val/<metric>`` for each of its metrics (``val/acc``, ``val/map``, ``val/rmse``, ...).
MONITORS = ("val/loss", "train/loss")


class Plateau(Schedule):
    """Reduce the LR by ``factor`` when a metric stops improving, as ``ReduceLROnPlateau``.

    Judged once per epoch on ``monitor``, only on epochs that start after warmup. Equals
    ``ReduceLROnPlateau(mode, factor, patience, threshold, threshold_mode, cooldown,
    min_lr=lr0*lrf)`` fed the same metrics, except that PyTorch skips a reduction that would
    change the LR by less than ``eps=1e-8`` (absolute), which only matters for LRs near 1e-8;
    here every reduction applies. Its state is saved in checkpoints.

    Formula: m(t) = max(lrf, factor^n), n = reductions so far (one each time the metric has not improved for more than patience judged epochs, outside cooldown)

    Args:
        total_units: units in the main phase (runtime; unused, the metric drives it).
        lrf: floor multiplier, in [0, 1].
        monitor: a metric the run logs each epoch: ``val/loss``, ``train/loss`` or
            ``val/<one of the task's metrics>`` (``val/acc`` for classification); checked
            against the run's task when the run is built (:meth:`check_monitor`).
        mode: ``min`` (loss, error) or ``max`` (accuracy, mAP).
        factor: multiplier per reduction, in (0, 1).
        patience: judged epochs without improvement tolerated before a reduction, >= 0.
        threshold: minimum change that counts as an improvement, >= 0.
        threshold_mode: ``rel`` (fraction of the best) or ``abs``.
        cooldown: judged epochs to wait after a reduction before counting again, >= 0.

    Raises:
        ConfigError: any argument out of range; a ``monitor`` that is not ``train/loss`` nor
            ``val/<name>``.
    """

    stateful = True

    def __init__(self, total_units: int, lrf: float, monitor: str = "val/loss", mode: str = "min",
                 factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0):
        super().__init__(total_units)
        check_lrf(lrf)
        checks = [
            ("monitor", monitor, isinstance(monitor, str) and (monitor == "train/loss" or (
                monitor.startswith("val/") and len(monitor) > 4)),
             f"use {', '.join(MONITORS)} or val/<a metric of the task>, e.g. val/acc"),
            ("mode", mode, mode in ("min", "max"), "use min or max"),
            ("factor", factor, 0 < factor < 1, "must be in (0, 1), e.g. 0.1"),
            ("patience", patience, int(patience) == patience and patience >= 0, "must be an integer >= 0"),
            ("threshold", threshold, threshold >= 0, "must be >= 0"),
            ("threshold_mode", threshold_mode, threshold_mode in ("rel", "abs"), "use rel or abs"),
            ("cooldown", cooldown, int(cooldown) == cooldown and cooldown >= 0, "must be an integer >= 0"),
        ]
        for key, value, ok, fix in checks:
            if not ok:
                raise ConfigError(f"scheduler.{key}={value}: {fix}")
        self.lrf, self.monitor, self.mode, self.factor = float(lrf), monitor, mode, float(factor)
        self.patience, self.threshold, self.threshold_mode = int(patience), float(threshold), threshold_mode
        self.cooldown = int(cooldown)
        self.multiplier = 1.0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def __call__(self, t: int) -> float:
        return self.multiplier

    def _is_better(self, value: float) -> bool:
        if self.mode == "min":
            bound = self.best * (1 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return value < bound
        bound = self.best * (1 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return value > bound

    def check_monitor(self, logged: list[str]) -> None:
        """Check ``monitor`` against the metrics the run logs each epoch (the build calls it once
        the task is known).

        Args:
            logged: the run's epoch metrics (``train/loss``, ``val/loss``, ``val/<task metric>``).

        Raises:
            ConfigError: ``monitor`` is not one of them; pick one.
        """
        if self.monitor not in logged:
            raise ConfigError(f"scheduler.monitor={self.monitor}: not a metric this run logs; use one of "
                              f"{', '.join(logged)}")

    def observe(self, metrics: dict[str, float]) -> None:
        """Judge one epoch: ``metrics[monitor]`` is its value (a number).

        Raises:
            ConfigError: the epoch's metrics have no ``monitor`` (a run built without
                :meth:`check_monitor`); pick one of the keys they have.
        """
        if self.monitor not in metrics:
            logged = [k for k in metrics if "/" in k]
            raise ConfigError(f"scheduler.monitor={self.monitor}: not a metric this run logs; use one of "
                              f"{', '.join(logged)}")
        value = float(metrics[self.monitor])
        if self._is_better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.multiplier = max(self.multiplier * self.factor, self.lrf)
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        """The state that evolves with the metric (for checkpoints)."""
        return {k: getattr(self, k) for k in ("multiplier", "best", "num_bad_epochs", "cooldown_counter")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for key, value in state.items():
            setattr(self, key, value)
