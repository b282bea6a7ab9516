"""Monotone policies: constant, step-wise, exponential and smooth decays (one pass over the run)."""
from __future__ import annotations

import bisect
import logging
import math
from typing import Optional, Sequence

from framework.errors import ConfigError
from framework.schedules.base import Decay, Schedule, check_gamma, check_lrf, to_units

log = logging.getLogger(__name__)


class Constant(Schedule):
    """Constant LR (``lr0``) after warmup.

    Formula: m(t) = 1
    """

    def __call__(self, t: int) -> float:
        return 1.0


class NoSchedule(Constant):
    """No schedule: the optimizer's LR is left at ``lr0`` (schedule-free and LR-free optimizers).

    Same values as :class:`Constant`; a warmup still applies if one is asked for.

    Formula: m(t) = 1
    """


class Step(Schedule):
    """Step decay: multiply by ``gamma`` every ``step_size`` units, as ``torch.optim.lr_scheduler.StepLR``.

    Formula: m(t) = gamma^floor(t / step_size)

    Args:
        total_units: units in the main phase (runtime).
        step_size: units (steps or epochs, per ``scheduler.interval``) between decays, an
            integer >= 1; or a fraction in (0, 1) of the main phase.
        gamma: decay factor per step_size, in (0, 1].

    Raises:
        ConfigError: a bad step_size, one (in units) not shorter than the run, or gamma outside
            (0, 1].
    """

    def __init__(self, total_units: int, step_size: float, gamma: float = 0.1):
        super().__init__(total_units)
        units, fraction = to_units(step_size, total_units, "scheduler.step_size")
        check_gamma(gamma)
        self.step_size, self.gamma = units, float(gamma)
        if units >= total_units:
            given = f"{step_size} ({units} of this run's units)" if fraction else f"{step_size}"
            message = (f"scheduler.step_size={given}: not shorter than the run's {total_units} units after "
                       "warmup, the LR would never drop")
            if not fraction:
                raise ConfigError(message + "; lower it or give a fraction of the run, e.g. 0.3")
            log.warning(message)

    def __call__(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class MultiStep(Schedule):
    """Decay by ``gamma`` at each milestone, as ``torch.optim.lr_scheduler.MultiStepLR``.

    Formula: m(t) = gamma^(number of milestones <= t)

    Args:
        total_units: units in the main phase (runtime).
        milestones: strictly increasing units (steps or epochs) at which the LR drops, each an
            integer >= 1 or a fraction in (0, 1) of the main phase (``[0.5, 0.75]``).
        gamma: decay factor per milestone, in (0, 1].

    Raises:
        ConfigError: milestones not strictly increasing, a milestone in units past the end of
            the run, or gamma out of range.
    """

    def __init__(self, total_units: int, milestones: Sequence[float], gamma: float = 0.1):
        super().__init__(total_units)
        given = list(milestones)
        converted = [to_units(m, total_units, "scheduler.milestones") for m in given]
        ms = [u for u, _ in converted]
        if ms != sorted(ms) or len(set(given)) != len(given):  # fractions may round to one unit
            raise ConfigError(
                f"scheduler.milestones={given}: must be strictly increasing (units >= 1 or fractions), e.g. [30,60]"
            )
        check_gamma(gamma)
        self.milestones, self.gamma = ms, float(gamma)
        late = [g for g, (u, fraction) in zip(given, converted) if u >= total_units and not fraction]
        if late:
            raise ConfigError(f"scheduler.milestones={given}: {late} past the end of the run ({total_units} units after "
                              "warmup); lower them or give fractions of the run, e.g. [0.5,0.75]")
        if any(u >= total_units for u in ms):
            log.warning("scheduler.milestones=%s: some fall at or after the run's end (%d units)", given, total_units)

    def __call__(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class Exponential(Schedule):
    """Exponential decay by ``gamma`` per unit, as ``torch.optim.lr_scheduler.ExponentialLR``.

    Formula: m(t) = gamma^t

    Args:
        total_units: units in the main phase (runtime).
        gamma: decay factor per unit (step or epoch), in (0, 1].

    Raises:
        ConfigError: gamma outside (0, 1].
    """

    def __init__(self, total_units: int, gamma: float = 0.95):
        super().__init__(total_units)
        check_gamma(gamma)
        self.gamma = float(gamma)

    def __call__(self, t: int) -> float:
        return self.gamma**t


class Cosine(Decay):
    """Cosine annealing from 1 to ``lrf`` over the main phase (Loshchilov & Hutter, SGDR, 2017).

    Equals ``CosineAnnealingLR(T_max=total_units-1, eta_min=lr0*lrf)`` step for step.

    Formula: m(t) = lrf + (1 - lrf) * (1 + cos(pi * t / (total_units - 1))) / 2

    Args and Raises: as :class:`~framework.schedules.base.Decay` (``total_units``, ``lrf``).
    """

    def decay(self, p: float) -> float:
        return self.lrf + (1 - self.lrf) * (1 + math.cos(math.pi * p)) / 2


class Linear(Decay):
    """Linear decay from 1 to ``lrf`` over the main phase (Ultralytics' default ``lf``).

    Equals ``LinearLR(start_factor=1, end_factor=lrf, total_iters=total_units-1)`` step for step.

    Formula: m(t) = lrf + (1 - lrf) * (1 - t / (total_units - 1))

    Args and Raises: as :class:`~framework.schedules.base.Decay` (``total_units``, ``lrf``).
    """

    def decay(self, p: float) -> float:
        return self.lrf + (1 - self.lrf) * (1 - p)


class Poly(Decay):
    """Polynomial decay from 1 to ``lrf`` (DeepLab's "poly" policy, Chen et al., 2017).

    With ``lrf=0`` it equals ``PolynomialLR(total_iters=total_units-1, power=power)`` step for step.

    Formula: m(t) = lrf + (1 - lrf) * (1 - t / (total_units - 1))^power

    Args:
        total_units: units in the main phase (runtime), >= 2.
        lrf: final multiplier, reached exactly at ``t = total_units-1``; in [0, 1].
        power: exponent, > 0 (1 = linear; DeepLab uses 0.9).

    Raises:
        ConfigError: power <= 0.
    """

    def __init__(self, total_units: int, lrf: float, power: float = 1.0):
        super().__init__(total_units, lrf)
        if not power > 0:
            raise ConfigError(f"scheduler.power={power}: must be > 0, e.g. 0.9 or 2")
        self.power = float(power)

    def decay(self, p: float) -> float:
        return self.lrf + (1 - self.lrf) * (1 - p) ** self.power


class InverseSqrt(Schedule):
    """Inverse square-root decay after warmup (Vaswani et al., 2017; fairseq's ``inverse_sqrt``).

    With ``timescale`` = the warmup length ``W`` (the default when there is a warmup) this is
    fairseq's rule ``lr0*sqrt(W/k)`` at step ``k >= W``. Without a warmup the default timescale
    is a tenth of the main phase. Never below ``lrf``.

    Formula: m(t) = max(lrf, sqrt(timescale / (timescale + t)))

    Args:
        total_units: units in the main phase (runtime).
        warmup_units: warmup length in units (runtime); the timescale when ``timescale`` is null.
        lrf: floor multiplier, in [0, 1].
        timescale: units after which the LR has fallen to ``lr0/sqrt(2)``; null = the warmup
            length, or ``max(1, total_units // 10)`` without warmup.

    Raises:
        ConfigError: a timescale < 1.
    """

    def __init__(self, total_units: int, warmup_units: int = 0, lrf: float = 0.0, timescale: Optional[int] = None):
        super().__init__(total_units)
        check_lrf(lrf)
        scale = (warmup_units or max(1, total_units // 10)) if timescale is None else timescale
        if scale < 1:
            raise ConfigError(f"scheduler.timescale={timescale}: must be >= 1 (units) or null")
        self.timescale, self.lrf = float(scale), float(lrf)

    def __call__(self, t: int) -> float:
        return max(self.lrf, math.sqrt(self.timescale / (self.timescale + t)))


class WSD(Schedule):
    """Warmup-stable-decay (Hu et al., MiniCPM, 2024): hold lr0, then decay to ``lrf`` at the end.

    The decay covers the last ``D = round(decay_frac * total_units)`` units; its ``j``-th unit
    (``j = 0 … D-1``) has done ``p = (j+1)/D`` of the decay, so the last unit is ``lrf``.

    Formula: m(t) = 1 for t < total_units - D, else lrf + (1 - lrf) * f(p), p = (t - total_units + D + 1)/D, f = 1 - p (linear), (1 + cos(pi*p))/2 (cosine), 1 - sqrt(p) (1-sqrt)

    Args:
        total_units: units in the main phase (runtime).
        lrf: final multiplier; in [0, 1].
        decay_frac: fraction of the main phase spent decaying, in (0, 1].
        decay_shape: ``linear``, ``cosine`` or ``1-sqrt`` (Hägele et al., 2024).

    Raises:
        ConfigError: a decay shorter than one unit or longer than the run, or a bad shape.
    """

    SHAPES = {
        "linear": lambda p: 1 - p,
        "cosine": lambda p: (1 + math.cos(math.pi * p)) / 2,
        "1-sqrt": lambda p: 1 - math.sqrt(p),
    }

    ends_at_lrf = True

    def __init__(self, total_units: int, lrf: float, decay_frac: float = 0.2, decay_shape: str = "linear"):
        super().__init__(total_units)
        check_lrf(lrf)
        if decay_shape not in self.SHAPES:
            raise ConfigError(f"scheduler.decay_shape={decay_shape}: use linear, cosine or 1-sqrt")
        decay = int(round(decay_frac * total_units))
        if not 0 < decay_frac <= 1 or decay_frac * total_units < 1:
            raise ConfigError(
                f"scheduler.decay_frac={decay_frac}: gives a decay of {decay_frac * total_units:g} of {total_units} "
                "units; it must cover at least 1 unit and at most the whole run"
            )
        self.lrf, self.decay, self.shape = float(lrf), decay, self.SHAPES[decay_shape]

    def __call__(self, t: int) -> float:
        start = self.total_units - self.decay
        if t < start:
            return 1.0
        return self.lrf + (1 - self.lrf) * self.shape((t - start + 1) / self.decay)


class Ultralytics(Decay):
    """Ultralytics' YOLO recipe: per-epoch linear (or ``cos_lr``) decay from 1 to ``lrf``.

    Use with ``scheduler.interval=epoch`` (its file's default), ``warmup_epochs`` and
    ``warmup_momentum`` (Ultralytics: 3 and 0.8), and ``warmup_bias_lr`` (0.1: the biases'
    LR falls from it during warmup, see :class:`~framework.schedules.plan.LRPlan`), as
    ``+experiment=ultralytics`` sets them. Every group warms up toward its LR of the current epoch,
    ``lr0*lf(epoch)``, and the epochs are counted from 0, warmup included, as Ultralytics does.
    Two differences, from the LR contract: Ultralytics' ``lf`` reaches ``lrf`` one epoch after
    the last (here the last epoch uses exactly ``lr0*lrf``), and its other groups warm up from
    0 (here from ``lr0*warmup_start_factor``: a step never has LR 0).

    Formula: m(t) = lrf + (1 - lrf) * (1 - t/(total_units-1)), or lrf + (1 - lrf) * (1 + cos(pi*t/(total_units-1)))/2 with cos_lr

    Args:
        total_units: epochs of the main phase (runtime), >= 2.
        lrf: final multiplier; in [0, 1].
        cos_lr: cosine instead of linear decay.

    Raises:
        ConfigError: ``lrf`` out of range.
    """

    counts_warmup = True  # t counts epochs from 0, warmup included; warmup rises toward m(t)

    def __init__(self, total_units: int, lrf: float, cos_lr: bool = False):
        super().__init__(total_units, lrf)
        self.cos_lr = cos_lr

    def decay(self, p: float) -> float:
        shape = (1 + math.cos(math.pi * p)) / 2 if self.cos_lr else 1 - p
        return self.lrf + (1 - self.lrf) * shape
