"""Base classes and helpers of the LR policies."""
from __future__ import annotations

from typing import Optional

from framework.config import ConfigError


def progress(t: int, total: int) -> float:
    """Fraction ``p = t/(total-1)`` of a decay of ``total >= 2`` units done at unit ``t``."""
    return t / (total - 1)


def check_lrf(lrf: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= lrf <= 1``."""
    if not 0 <= lrf <= 1:
        raise ConfigError(f"scheduler.lrf={lrf}: must be in [0, 1] (set the top-level lrf)")


def check_gamma(gamma: float, key: str = "gamma") -> None:
    """Raise :class:`ConfigError` unless ``0 < gamma <= 1``."""
    if not 0 < gamma <= 1:
        raise ConfigError(f"scheduler.{key}={gamma}: must be in (0, 1], e.g. {key}=0.1")


def check_momentum_bounds(base_momentum: float, max_momentum: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= base_momentum <= max_momentum < 1``."""
    if not 0 <= base_momentum <= max_momentum < 1:
        raise ConfigError(
            f"scheduler.base_momentum={base_momentum}, scheduler.max_momentum={max_momentum}: need "
            "0 <= base_momentum <= max_momentum < 1, e.g. 0.85 and 0.95"
        )


class Schedule:
    """Base class: ``schedule(t)`` is the LR multiplier at unit ``t`` of the main phase.

    Units are optimizer steps, or epochs with ``scheduler.interval=epoch``. A schedule may also
    prescribe the momentum (SGD ``momentum`` or Adam ``beta1``) through :meth:`momentum`.

    Args:
        total: number of units of the main phase, after warmup; >= 1.

    Raises:
        ConfigError: ``total < 1``.
    """

    #: True for metric-driven policies (plateau): they carry state and need :meth:`observe`.
    stateful = False
    #: True when the last unit of the main phase is exactly ``lrf`` (DESIGN.md §3).
    ends_at_lrf = False

    def __init__(self, total: int):
        if total < 1:
            raise ConfigError(f"scheduler: the run leaves {total} units after warmup; shorten warmup")
        self.total = int(total)

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def momentum(self, t: int) -> Optional[float]:
        """Momentum (or beta1) to apply at unit ``t``; None = leave the optimizer's own."""
        return None


class Decay(Schedule):
    """Base of schedules that run once over the main phase and end at ``lrf`` exactly.

    Args:
        total: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total-1``; in [0, 1].

    Raises:
        ConfigError: ``lrf`` outside [0, 1], or a decay phase shorter than 2 units (its first
            unit must be 1 and its last ``lrf``).
    """

    ends_at_lrf = True

    def __init__(self, total: int, lrf: float):
        super().__init__(total)
        check_lrf(lrf)
        if total < 2:
            raise ConfigError(
                f"scheduler: {type(self).__name__.lower()} has {total} unit (step, or epoch with "
                "scheduler.interval=epoch) left after warmup to decay over and needs 2; raise epochs, "
                "shorten the warmup or use scheduler.interval=step"
            )
        self.lrf = float(lrf)
