"""The LR plan of a run: warmup, then the main schedule, evaluated at every optimizer step."""
from __future__ import annotations

from typing import Any, Callable, Optional

from framework.config import ConfigError
from framework.schedules.base import Schedule


class LRPlan:
    """The LR multiplier (and momentum) of every optimizer step ``k`` of a run.

    Warmup (``k < W``): ``m = s + (1 - s) * k / W``, as ``LinearLR(start_factor=s,
    total_iters=W)``; step ``W`` is the main schedule's first unit. After warmup the main
    schedule is evaluated at ``t = k - W`` (interval ``step``) or at ``t = epoch(k) - epoch(W)``
    with ``epoch(k) = k // steps_per_epoch`` (interval ``epoch``, LR changes at epoch starts).
    Momentum: during warmup, with ``warmup_momentum`` set, it rises linearly from it to the
    schedule's first momentum (or the optimizer's own), as Ultralytics does; afterwards it is the
    schedule's (one-cycle, cyclic) or the optimizer's own.

    Args:
        make_schedule: builds the main schedule from its length and the warmup length, both in
            units (``make_schedule(total, warmup)``).
        total_steps: ``T``, optimizer steps of the whole run (after accumulation and caps).
        steps_per_epoch: optimizer steps per epoch (``ceil(batches / accumulate_grad_batches)``).
        warmup_steps: ``W``, optimizer steps of warmup; must be < ``T``.
        warmup_start_factor: ``s`` in (0, 1], multiplier of warmup step 0.
        interval: ``step`` or ``epoch``.
        warmup_key: the config key that set ``W``, for the error message.
        warmup_momentum: momentum (beta1) of warmup step 0; None = no momentum warmup.
        counts_warmup: the schedule counts ``t`` from step 0, warmup included (its class's
            ``counts_warmup``); None = find out by building it once over the main phase.

    Raises:
        ConfigError: warmup covers the whole run, or the schedule rejects its arguments.
    """

    def __init__(
        self,
        make_schedule: Callable[[int, int], Schedule],
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        warmup_key: str = "warmup_steps",
        warmup_momentum: Optional[float] = None,
        counts_warmup: Optional[bool] = None,
    ):
        T, W, spe = int(total_steps), int(warmup_steps), int(steps_per_epoch)
        if W >= T:
            raise ConfigError(
                f"{warmup_key}: gives {W} warmup steps but the run has only {T} optimizer steps; "
                "lower the warmup or raise epochs"
            )
        self.total_steps, self.warmup_steps, self.steps_per_epoch = T, W, spe
        self.start_factor, self.interval = float(warmup_start_factor), interval
        self.warmup_momentum = warmup_momentum
        if interval == "step":
            units, warmup_units = T - W, W
        else:
            units, warmup_units = (T - 1) // spe - W // spe + 1, round(W / spe)
        whole_run = T if interval == "step" else (T - 1) // spe + 1
        # only the schedule that runs is built (its warnings are about this run's plan)
        self.schedule = make_schedule(whole_run if counts_warmup else units, warmup_units)
        if counts_warmup is None and getattr(self.schedule, "counts_warmup", False):  # t from step 0
            self.schedule = make_schedule(whole_run, warmup_units)
        self.offset = 0 if self.schedule.counts_warmup else W if interval == "step" else W // spe
        #: True when the plan prescribes the momentum (momentum warmup or a cycling schedule).
        self.sets_momentum = warmup_momentum is not None or self.schedule.momentum(0) is not None

    def group_lr(self, k: int, base_lr: float, group: str) -> float:
        """LR of param group ``group`` (base LR ``base_lr``) at step ``k``.

        ``base_lr * self(k)``, except during warmup for the ``bias`` group of a schedule with a
        ``warmup_bias_lr`` (Ultralytics): a line from ``warmup_bias_lr`` at step 0 to the
        group's first main-schedule LR at step ``W``.
        """
        bias_lr = getattr(self.schedule, "warmup_bias_lr", None)
        if k < self.warmup_steps and bias_lr is not None and group == "bias":
            target = base_lr * self._warmup_target(k)
            return bias_lr + (target - bias_lr) * k / self.warmup_steps
        return base_lr * self(k)

    def _warmup_target(self, k: int) -> float:
        """What warmup rises to: 1, or the schedule's value now when it counts warmup (Ultralytics)."""
        return self.schedule(self.unit(k)) if self.schedule.counts_warmup else 1.0

    def unit(self, k: int) -> int:
        """Index ``t`` of step ``k`` in the main schedule (steps or epochs since warmup ended, or
        since step 0 for a schedule that counts warmup)."""
        if self.interval == "step":
            return k - self.offset
        return k // self.steps_per_epoch - self.offset

    def __call__(self, k: int) -> float:
        """Multiplier on the base LR applied at optimizer step ``k`` (``0 <= k < T``)."""
        if k < self.warmup_steps:
            s = self.start_factor
            return s + (self._warmup_target(k) - s) * k / self.warmup_steps
        return self.schedule(self.unit(k))


    def momentum(self, k: int, base: float) -> float:
        """Momentum (or beta1) for step ``k``, given the optimizer's configured value ``base``."""
        main = self.schedule.momentum(self.unit(max(k, self.warmup_steps)) if not self.schedule.counts_warmup
                                      else self.unit(k))
        target = base if main is None else main
        if k < self.warmup_steps and self.warmup_momentum is not None:
            return self.warmup_momentum + (target - self.warmup_momentum) * k / self.warmup_steps
        return target

    def multipliers(self) -> list[float]:
        """The multiplier of every step ``k = 0 … T-1`` (for a stateful schedule: as it stands)."""
        return [self(k) for k in range(self.total_steps)]

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        """Report an epoch's metrics; a metric-driven schedule judges epochs that start after warmup."""
        if self.schedule.stateful and epoch * self.steps_per_epoch >= self.warmup_steps:
            self.schedule.observe(metrics)

    def state_dict(self) -> dict[str, Any]:
        """State of a metric-driven schedule (empty for pure ones: ``k`` is all they need)."""
        return self.schedule.state_dict() if self.schedule.stateful else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.schedule.stateful:
            self.schedule.load_state_dict(state)
