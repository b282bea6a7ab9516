"""Base classes and helpers of the LR policies."""
from __future__ import annotations

import logging
from typing import Optional

from framework.errors import ConfigError

log = logging.getLogger(__name__)


def progress(t: int, total_units: int) -> float:
    """Fraction ``p = t/(total_units-1)`` of a decay of ``total_units >= 2`` units done at unit ``t``."""
    return t / (total_units - 1)


def check_lrf(lrf: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= lrf <= 1``."""
    if not 0 <= lrf <= 1:
        raise ConfigError(f"scheduler.lrf={lrf}: must be in [0, 1] (set the top-level lrf)")


def to_units(value: float, total_units: int, key: str) -> tuple[int, bool]:
    """A duration in schedule units: an integer >= 1 as given, or a fraction in (0, 1) of ``total_units``.

    Args:
        value: the configured duration (``3`` epochs, or ``0.3`` of the run).
        total_units: units of the main phase.
        key: config key for messages (``scheduler.step_size``).

    Returns:
        ``(units, was_fraction)``; a fraction becomes ``max(1, round(value * total_units))``.

    Raises:
        ConfigError: neither a whole number >= 1 nor a fraction in (0, 1).
    """
    if 0 < value < 1:
        return max(1, round(value * total_units)), True
    if value >= 1 and int(value) == value:
        return int(value), False
    raise ConfigError(f"{key}={value}: use a whole number of units (>= 1) or a fraction of the run in (0, 1)")


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
        total_units: number of units of the main phase, after warmup; >= 1.

    Raises:
        ConfigError: ``total_units < 1``.
    """

    #: True for metric-driven policies (plateau): they carry state and need :meth:`observe`.
    stateful = False
    #: True when the last unit of the main phase is exactly ``lrf`` (the LR contract, README).
    ends_at_lrf = False
    #: True when ``t`` counts from step 0, warmup included, and warmup rises toward ``m(t)``
    #: instead of 1 (Ultralytics); False: ``t`` starts after warmup, which rises to 1.
    counts_warmup = False
    #: True for a schedule that replays a file (``scheduler.path``): its errors name that key.
    replays_file = False

    def __init__(self, total_units: int):
        if total_units < 1:
            raise ConfigError(f"scheduler: the run leaves {total_units} units after warmup; shorten warmup")
        self.total_units = int(total_units)

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def momentum(self, t: int) -> Optional[float]:
        """Momentum (or beta1) to apply at unit ``t``; None = leave the optimizer's own."""
        return None

    def weight_decay(self, t: int) -> Optional[float]:
        """Weight decay to apply at unit ``t`` to the groups that decay; None = leave the optimizer's own."""
        return None


class Decay(Schedule):
    """Base of schedules that run once over the main phase and end at ``lrf`` exactly.

    Args:
        total_units: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total_units-1``; in [0, 1].

    A main phase of a single unit (one epoch with ``interval=epoch``, or a warmup of ``T-1``
    steps) holds the multiplier at 1, as Ultralytics' one-epoch runs do: there is nothing to
    decay over, and a warning says so.

    Raises:
        ConfigError: ``lrf`` outside [0, 1].
    """

    ends_at_lrf = True

    def __init__(self, total_units: int, lrf: float):
        super().__init__(total_units)
        check_lrf(lrf)
        if total_units == 1:
            log.warning(
                "scheduler: %s has a single unit (step, or epoch with scheduler.interval=epoch) after "
                "warmup: the LR stays at lr0 (raise epochs or use scheduler.interval=step to decay)",
                type(self).__name__.lower(),
            )
        self.lrf = float(lrf)

    def __call__(self, t: int) -> float:
        return 1.0 if self.total_units == 1 else self.decay(progress(t, self.total_units))

    def decay(self, p: float) -> float:  # pragma: no cover - abstract
        """Multiplier at decay progress ``p`` in [0, 1]."""
        raise NotImplementedError
