"""LR policies: pure functions of the step index returning a multiplier on each group's base LR.

Notation (DESIGN.md §3): ``T`` optimizer steps ``k = 0 … T-1``; warmup of ``W`` steps; after
warmup the main schedule sees ``t`` = interval units (steps, or epochs with
``scheduler.interval=epoch``) since warmup ended, out of ``total`` units. Decaying schedules
reach exactly ``lrf`` at ``t = total-1``, so the last step of the run uses ``lr0·lrf``.

A schedule holds no state: the trainer owns ``k`` and asks :class:`LRPlan` for the multiplier
of step ``k`` before applying it. Resuming therefore needs ``k`` and nothing else.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

from framework.config import ConfigError


def _progress(t: int, total: int) -> float:
    """Fraction ``p = t/(total-1)`` of the decay done at unit ``t`` (``total >= 2``)."""
    return t / (total - 1)


def _check_lrf(lrf: float) -> None:
    if not 0 <= lrf <= 1:
        raise ConfigError(f"scheduler.lrf={lrf}: must be in [0, 1] (set the top-level lrf)")


class Schedule:
    """Base class: ``schedule(t)`` is the LR multiplier at unit ``t`` of the main phase.

    Args:
        total: number of units (steps or epochs) of the main phase, after warmup; >= 1.
    """

    def __init__(self, total: int):
        if total < 1:
            raise ConfigError(f"scheduler: the run leaves {total} units after warmup; shorten warmup")
        self.total = int(total)

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class Constant(Schedule):
    """Constant LR after warmup.

    Formula: m(t) = 1
    """

    def __call__(self, t: int) -> float:
        return 1.0


class Step(Schedule):
    """Step decay: multiply by ``gamma`` every ``step_size`` units, as ``torch.optim.lr_scheduler.StepLR``.

    Formula: m(t) = gamma^floor(t / step_size)

    Args:
        total: units in the main phase (runtime).
        step_size: units (steps or epochs, per ``scheduler.interval``) between decays; >= 1.
        gamma: decay factor per step_size, in (0, 1].

    Raises:
        ConfigError: step_size < 1 or gamma outside (0, 1].
    """

    def __init__(self, total: int, step_size: int, gamma: float = 0.1):
        super().__init__(total)
        if int(step_size) != step_size or step_size < 1:
            raise ConfigError(f"scheduler.step_size={step_size}: must be an integer >= 1")
        if not 0 < gamma <= 1:
            raise ConfigError(f"scheduler.gamma={gamma}: must be in (0, 1], e.g. gamma=0.1")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class MultiStep(Schedule):
    """Decay by ``gamma`` at each milestone, as ``torch.optim.lr_scheduler.MultiStepLR``.

    Formula: m(t) = gamma^(number of milestones <= t)

    Args:
        total: units in the main phase (runtime).
        milestones: strictly increasing units (steps or epochs) at which the LR drops; each >= 1.
        gamma: decay factor per milestone, in (0, 1].

    Raises:
        ConfigError: milestones not strictly increasing positive integers, or gamma out of range.
    """

    def __init__(self, total: int, milestones: Sequence[int], gamma: float = 0.1):
        super().__init__(total)
        ms = list(milestones)
        if any(int(m) != m or m < 1 for m in ms) or ms != sorted(set(ms)):
            raise ConfigError(
                f"scheduler.milestones={ms}: must be strictly increasing integers >= 1, e.g. [30,60]"
            )
        if not 0 < gamma <= 1:
            raise ConfigError(f"scheduler.gamma={gamma}: must be in (0, 1], e.g. gamma=0.1")
        self.milestones, self.gamma = [int(m) for m in ms], float(gamma)

    def __call__(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class Decay(Schedule):
    """Base of schedules that run once over the main phase and end at ``lrf`` exactly.

    Args:
        total: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total-1``; in [0, 1].

    Raises:
        ConfigError: ``lrf`` outside [0, 1], or a decay phase shorter than 2 units (its first
            unit must be 1 and its last ``lrf``).
    """

    def __init__(self, total: int, lrf: float):
        super().__init__(total)
        _check_lrf(lrf)
        if total < 2:
            raise ConfigError(
                f"scheduler: {type(self).__name__.lower()} has {total} unit (step, or epoch with "
                "scheduler.interval=epoch) left after warmup to decay over and needs 2; raise epochs, "
                "shorten the warmup or use scheduler.interval=step"
            )
        self.lrf = float(lrf)


class Cosine(Decay):
    """Cosine annealing from 1 to ``lrf`` over the main phase (Loshchilov & Hutter, SGDR, 2017).

    Equals ``CosineAnnealingLR(T_max=total-1, eta_min=lr0*lrf)`` step for step.

    Formula: m(t) = lrf + (1 - lrf) * (1 + cos(pi * t / (total - 1))) / 2

    Args:
        total: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total-1``; in [0, 1].
    """

    def __call__(self, t: int) -> float:
        return self.lrf + (1 - self.lrf) * (1 + math.cos(math.pi * _progress(t, self.total))) / 2


class Linear(Decay):
    """Linear decay from 1 to ``lrf`` over the main phase (Ultralytics' default ``lf``).

    Equals ``LinearLR(start_factor=1, end_factor=lrf, total_iters=total-1)`` step for step.

    Formula: m(t) = lrf + (1 - lrf) * (1 - t / (total - 1))

    Args:
        total: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total-1``; in [0, 1].
    """

    def __call__(self, t: int) -> float:
        return self.lrf + (1 - self.lrf) * (1 - _progress(t, self.total))


class OneCycle(Schedule):
    """One-cycle policy (Smith & Topin, 2018), phases as ``torch.optim.lr_scheduler.OneCycleLR``.

    Rises from ``1/div_factor`` to 1 over the first ``pct_start`` of the phase, then anneals to
    ``lrf``. Equals ``OneCycleLR(max_lr=lr0, total_steps=total, div_factor=div_factor,
    final_div_factor=1/(div_factor*lrf))`` step for step (its floor moved to ``lr0*lrf``).

    Formula: m(t) = cos_anneal(1/div_factor, 1, t/(r-1)) for t <= r-1, else cos_anneal(1, lrf, (t-r+1)/(total-r)), with r = pct_start*total and cos_anneal(a, b, x) = b + (a-b)*(1+cos(pi*x))/2

    ``cos_anneal`` becomes ``b + (a - b) * (1 - x)`` with ``anneal_strategy=linear``.
    With ``three_phase`` the phases are 1/div_factor → 1 → 1/div_factor → lrf, ends
    ``[pct_start*total - 1, 2*pct_start*total - 2, total - 1]`` (fast.ai's variant).

    Args:
        total: units in the main phase (runtime).
        lrf: final multiplier, reached exactly at ``t = total-1``; in [0, 1].
        pct_start: fraction of the phase spent rising; the rise must span more than one unit.
        div_factor: start multiplier is ``1/div_factor``; > 0.
        anneal_strategy: ``cos`` or ``linear``.
        three_phase: use the three-phase variant.

    Raises:
        ConfigError: bad ``pct_start``, ``div_factor``, ``anneal_strategy`` or ``lrf``.
    """

    def __init__(
        self,
        total: int,
        lrf: float,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        anneal_strategy: str = "cos",
        three_phase: bool = False,
    ):
        super().__init__(total)
        _check_lrf(lrf)
        rise = pct_start * total
        last_rise_end = 2 * rise - 2 if three_phase else rise - 1
        if not (0 < pct_start < 1 and rise > 1 and last_rise_end < total - 1):
            raise ConfigError(
                f"scheduler.pct_start={pct_start}: gives a {rise:g}-unit rise in a {total}-unit "
                "cycle; it must span more than 1 unit and end before the last (raise epochs or "
                "change pct_start)"
            )
        if not div_factor > 0:
            raise ConfigError(f"scheduler.div_factor={div_factor}: must be > 0, e.g. 25")
        if anneal_strategy not in ("cos", "linear"):
            raise ConfigError(f"scheduler.anneal_strategy={anneal_strategy}: use cos or linear")
        low = 1.0 / div_factor
        if three_phase:
            self.phases = [(rise - 1, low, 1.0), (2 * rise - 2, 1.0, low), (total - 1, low, lrf)]
        else:
            self.phases = [(rise - 1, low, 1.0), (total - 1, 1.0, lrf)]
        self.cos = anneal_strategy == "cos"

    def __call__(self, t: int) -> float:
        start = 0.0
        for i, (end, a, b) in enumerate(self.phases):
            if t <= end or i == len(self.phases) - 1:
                x = (t - start) / (end - start)
                return b + (a - b) / 2.0 * (math.cos(math.pi * x) + 1) if self.cos else b + (a - b) * (1 - x)
            start = end
        raise AssertionError("unreachable")  # pragma: no cover


class LRPlan:
    """The LR multiplier of every optimizer step ``k`` of a run: warmup, then the main schedule.

    Warmup (``k < W``): ``m = s + (1 - s) * k / W``, as ``LinearLR(start_factor=s,
    total_iters=W)``; step ``W`` is the main schedule's first unit. After warmup the main
    schedule is evaluated at ``t = k - W`` (interval ``step``) or at ``t = epoch(k) - epoch(W)``
    with ``epoch(k) = k // steps_per_epoch`` (interval ``epoch``, LR changes at epoch starts).

    Args:
        make_schedule: builds the main schedule from its length in units (``total``).
        total_steps: ``T``, optimizer steps of the whole run (after accumulation and caps).
        steps_per_epoch: optimizer steps per epoch (``ceil(batches / accumulate_grad_batches)``).
        warmup_steps: ``W``, optimizer steps of warmup; must be < ``T``.
        warmup_start_factor: ``s`` in (0, 1], multiplier of warmup step 0.
        interval: ``step`` or ``epoch``.
        warmup_key: the config key that set ``W``, for the error message.

    Raises:
        ConfigError: warmup covers the whole run, or the schedule rejects its arguments.
    """

    def __init__(
        self,
        make_schedule: Callable[[int], Schedule],
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        warmup_key: str = "warmup_steps",
    ):
        T, W, spe = int(total_steps), int(warmup_steps), int(steps_per_epoch)
        if W >= T:
            raise ConfigError(
                f"{warmup_key}: gives {W} warmup steps but the run has only {T} optimizer steps; "
                "lower the warmup or raise epochs"
            )
        self.total_steps, self.warmup_steps, self.steps_per_epoch = T, W, spe
        self.start_factor, self.interval = float(warmup_start_factor), interval
        if interval == "step":
            units = T - W
        else:
            units = (T - 1) // spe - W // spe + 1
        self.schedule = make_schedule(units)

    def unit(self, k: int) -> int:
        """Index ``t`` of step ``k`` in the main schedule (steps or epochs since warmup ended)."""
        if self.interval == "step":
            return k - self.warmup_steps
        return k // self.steps_per_epoch - self.warmup_steps // self.steps_per_epoch

    def __call__(self, k: int) -> float:
        """Multiplier on the base LR applied at optimizer step ``k`` (``0 <= k < T``)."""
        if k < self.warmup_steps:
            s = self.start_factor
            return s + (1 - s) * k / self.warmup_steps
        return self.schedule(self.unit(k))

    def multipliers(self) -> list[float]:
        """The multiplier of every step ``k = 0 … T-1``."""
        return [self(k) for k in range(self.total_steps)]
