"""Cyclical policies: one-cycle, cyclic (CLR) and cosine with warm restarts (SGDR)."""
from __future__ import annotations

import logging
import math
from typing import Optional

from framework.errors import ConfigError
from framework.schedules.base import Schedule, check_lrf, check_momentum_bounds, to_units

log = logging.getLogger(__name__)


def cos_anneal(a: float, b: float, x: float) -> float:
    """Cosine from ``a`` (x = 0) to ``b`` (x = 1), as PyTorch's ``OneCycleLR``: ``b + (a-b)(1+cos(pi x))/2``."""
    return b + (a - b) / 2.0 * (math.cos(math.pi * x) + 1)


def linear_anneal(a: float, b: float, x: float) -> float:
    """Straight line from ``a`` (x = 0) to ``b`` (x = 1), exact at ``x = 1``: ``b + (a-b)(1-x)``."""
    return b + (a - b) * (1 - x)


class OneCycle(Schedule):
    """One-cycle policy (Smith & Topin, 2018), phases as ``torch.optim.lr_scheduler.OneCycleLR``.

    Rises from ``1/div_factor`` to 1 over the first ``pct_start`` of the phase, then anneals to
    ``lrf``. Equals ``OneCycleLR(max_lr=lr0, total_steps=total_units, div_factor=div_factor,
    final_div_factor=1/(div_factor*lrf))`` step for step (its floor moved to ``lr0*lrf``),
    momentum included: it cycles inversely, ``max_momentum`` → ``base_momentum`` → ``max_momentum``
    (SGD ``momentum`` or Adam ``beta1``).

    Formula: m(t) = cos_anneal(1/div_factor, 1, t/(r-1)) for t <= r-1, else cos_anneal(1, lrf, (t-r+1)/(total_units-r)), with r = pct_start*total_units and cos_anneal(a, b, x) = b + (a-b)*(1+cos(pi*x))/2

    ``cos_anneal`` becomes ``b + (a - b) * (1 - x)`` with ``anneal_strategy=linear``.
    With ``three_phase`` the phases are 1/div_factor → 1 → 1/div_factor → lrf, ends
    ``[pct_start*total_units - 1, 2*pct_start*total_units - 2, total_units - 1]`` (fast.ai's variant).

    Args:
        total_units: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total_units-1``; in [0, 1].
        pct_start: fraction of the phase spent rising; the rise must span more than one unit.
        div_factor: start multiplier is ``1/div_factor``; > 0.
        anneal_strategy: ``cos`` or ``linear``.
        three_phase: use the three-phase variant.
        cycle_momentum: cycle the momentum (beta1) inversely to the LR.
        base_momentum: momentum at the LR peak.
        max_momentum: momentum at the start and the end.

    Raises:
        ConfigError: bad ``pct_start``, ``div_factor``, ``anneal_strategy``, ``lrf`` or momenta.
    """

    ends_at_lrf = True

    def __init__(
        self,
        total_units: int,
        lrf: float,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        anneal_strategy: str = "cos",
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ):
        super().__init__(total_units)
        check_lrf(lrf)
        rise = pct_start * total_units
        last_rise_end = 2 * rise - 2 if three_phase else rise - 1
        if not (0 < pct_start < 1 and rise > 1 and last_rise_end < total_units - 1):
            raise ConfigError(
                f"scheduler.pct_start={pct_start}: gives a {rise:g}-unit rise in a {total_units}-unit "
                "cycle; it must span more than 1 unit and end before the last (raise epochs or "
                "change pct_start)"
            )
        if not div_factor > 0:
            raise ConfigError(f"scheduler.div_factor={div_factor}: must be > 0, e.g. 25")
        if anneal_strategy not in ("cos", "linear"):
            raise ConfigError(f"scheduler.anneal_strategy={anneal_strategy}: use cos or linear")
        check_momentum_bounds(base_momentum, max_momentum)
        low, lo_m, hi_m = 1.0 / div_factor, base_momentum, max_momentum
        if three_phase:
            self.phases = [(rise - 1, low, 1.0, hi_m, lo_m), (2 * rise - 2, 1.0, low, lo_m, hi_m),
                           (total_units - 1, low, lrf, hi_m, hi_m)]
        else:
            self.phases = [(rise - 1, low, 1.0, hi_m, lo_m), (total_units - 1, 1.0, lrf, lo_m, hi_m)]
        self.anneal = cos_anneal if anneal_strategy == "cos" else linear_anneal
        self.cycle_momentum = cycle_momentum

    def _phase(self, t: int) -> tuple[float, tuple]:
        start = 0.0
        for i, phase in enumerate(self.phases):
            if t <= phase[0] or i == len(self.phases) - 1:
                return (t - start) / (phase[0] - start), phase
            start = phase[0]
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(self, t: int) -> float:
        x, (_, a, b, _, _) = self._phase(t)
        return self.anneal(a, b, x)

    def momentum(self, t: int) -> Optional[float]:
        if not self.cycle_momentum:
            return None
        x, (_, _, _, a, b) = self._phase(t)
        return self.anneal(a, b, x)


class Cyclic(Schedule):
    """Cyclical LR (Smith, 2017) between ``lrf`` and 1, as ``torch.optim.lr_scheduler.CyclicLR``.

    Equals ``CyclicLR(base_lr=lr0*lrf, max_lr=lr0, step_size_up, step_size_down, mode, gamma)``
    step for step, momentum included (it cycles inversely between ``max_momentum`` and
    ``base_momentum``; SGD ``momentum`` or Adam ``beta1``).

    Formula: m(t) = lrf + (1 - lrf) * s(x) * scale, with c = floor(1 + t/L), x = 1 + t/L - c, L = step_size_up + step_size_down, s(x) = x/r for x <= r else (x-1)/(r-1), r = step_size_up/L, scale = 1 (triangular), 1/2^(c-1) (triangular2), gamma^t (exp_range)

    Args:
        total_units: units in the main phase (runtime).
        lrf: lower bound as a fraction of lr0, in [0, 1].
        step_size_up: units (steps, or epochs with ``interval=epoch``) of the rising half, >= 1.
        step_size_down: units of the falling half; null = ``step_size_up``.
        mode: ``triangular``, ``triangular2`` (amplitude halves every cycle) or ``exp_range``.
        gamma: amplitude decay per unit in ``exp_range`` mode, in (0, 1].
        cycle_momentum: cycle the momentum (beta1) inversely to the LR.
        base_momentum: momentum at the LR peak.
        max_momentum: momentum at the LR trough.

    Raises:
        ConfigError: bad sizes, mode, gamma, lrf or momenta.
    """

    MODES = ("triangular", "triangular2", "exp_range")

    def __init__(
        self,
        total_units: int,
        lrf: float,
        step_size_up: int = 2000,
        step_size_down: Optional[int] = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
    ):
        super().__init__(total_units)
        check_lrf(lrf)
        down = step_size_up if step_size_down is None else step_size_down
        for key, value in (("step_size_up", step_size_up), ("step_size_down", down)):
            if int(value) != value or value < 1:
                raise ConfigError(f"scheduler.{key}={value}: must be an integer >= 1 (units)")
        if mode not in self.MODES:
            raise ConfigError(f"scheduler.mode={mode}: use triangular, triangular2 or exp_range")
        if not 0 < gamma <= 1:
            raise ConfigError(f"scheduler.gamma={gamma}: must be in (0, 1]")
        check_momentum_bounds(base_momentum, max_momentum)
        self.lrf, self.mode, self.gamma = float(lrf), mode, float(gamma)
        self.size = float(step_size_up + down)
        self.ratio = step_size_up / self.size
        if step_size_up >= total_units:
            log.warning("scheduler.step_size_up=%d: not shorter than the run's %d units, the LR only "
                        "rises; lower it to see a cycle", step_size_up, total_units)
        self.cycle_momentum, self.base_m, self.max_m = cycle_momentum, base_momentum, max_momentum

    def _shape(self, t: int) -> float:
        cycle = math.floor(1 + t / self.size)
        x = 1.0 + t / self.size - cycle
        factor = x / self.ratio if x <= self.ratio else (x - 1) / (self.ratio - 1)
        if self.mode == "triangular":
            return factor
        if self.mode == "triangular2":
            return factor / (2.0 ** (cycle - 1))
        return factor * self.gamma**t

    def __call__(self, t: int) -> float:
        return self.lrf + (1 - self.lrf) * self._shape(t)

    def momentum(self, t: int) -> Optional[float]:
        return self.max_m - (self.max_m - self.base_m) * self._shape(t) if self.cycle_momentum else None


class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, 2017).

    Cycles of ``T_0``, ``T_0*T_mult``, ... units, each a cosine from its peak ``decay^i`` (cycle
    ``i`` from 0) down toward ``lrf``; cycles keep their own length (not stretched to the run).
    With ``decay=1`` it equals ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min=lr0*lrf)``.

    Formula: m(t) = lrf + (max(decay^i, lrf) - lrf) * (1 + cos(pi * t_i / T_i)) / 2, with cycle i holding t, T_i = T_0 * T_mult^i and t_i = t - (T_0 + ... + T_{i-1})

    Args:
        total_units: units in the main phase (runtime).
        lrf: floor multiplier, in [0, 1].
        T_0: units of the first cycle, an integer >= 1 (not longer than the run) or a fraction in
            (0, 1) of the main phase.
        T_mult: growth factor of the cycle length, an integer >= 1.
        decay: peak multiplier per restart (timm's ``cycle_decay``), in (0, 1].

    Raises:
        ConfigError: bad ``T_0``, ``T_mult``, ``decay`` or ``lrf``.
    """

    def __init__(self, total_units: int, lrf: float, T_0: int = 10, T_mult: int = 1, decay: float = 1.0):
        super().__init__(total_units)
        check_lrf(lrf)
        units, fraction = to_units(T_0, total_units, "scheduler.T_0")
        if units > total_units and not fraction:
            raise ConfigError(f"scheduler.T_0={T_0}: the first cycle is longer than the run ({total_units} units after "
                              "warmup); lower it or give a fraction of the run, e.g. 0.25")
        if int(T_mult) != T_mult or T_mult < 1:
            raise ConfigError(f"scheduler.T_mult={T_mult}: must be an integer >= 1")
        if not 0 < decay <= 1:
            raise ConfigError(f"scheduler.decay={decay}: must be in (0, 1] (1 = every restart at lr0)")
        self.lrf, self.T_0, self.T_mult, self.decay = float(lrf), units, int(T_mult), float(decay)

    def __call__(self, t: int) -> float:
        i, t_i, length = 0, t, self.T_0
        while t_i >= length:
            t_i, length, i = t_i - length, length * self.T_mult, i + 1
        peak = max(self.decay**i, self.lrf)  # a decayed peak never goes below the floor
        return self.lrf + (peak - self.lrf) * (1 + math.cos(math.pi * t_i / length)) / 2
