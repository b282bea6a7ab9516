"""The LR contract of a run, in one place: ``T`` from the loader, the warmup length, the plan of
every optimizer step, and applying it to an optimizer.

Notation (README, "The LR contract"): ``T`` optimizer steps ``k = 0 … T-1``; ``W`` warmup
steps; the main schedule sees ``t`` units (steps, or epochs with ``scheduler.interval=epoch``)
out of ``total_units``. Every param group's LR at step ``k`` is ``initial_lr * plan(k)``, where
``initial_lr`` is the group's final base LR (``lr0`` x its ratio x the batch-size scaling,
:func:`framework.optim.build_optimizer`).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

from framework import registry
from framework.config import RESERVED_KEYS
from framework.errors import ConfigError
from framework.schedules.base import Schedule


def count_steps(num_batches: int, accumulate: int, epochs: int, max_steps: Optional[int]) -> tuple[int, int]:
    """The run's optimizer steps ``T`` and steps per epoch.

    Args:
        num_batches: ``len(train_loader)``, batches per epoch (the last may be partial).
        accumulate: ``trainer.accumulate_grad_batches``, batches per optimizer step.
        epochs: passes over the data.
        max_steps: cap on ``T``; None = no cap.

    Returns:
        ``(T, steps_per_epoch)`` with ``steps_per_epoch = ceil(num_batches / accumulate)`` (a
        last partial accumulation group still steps) and ``T = epochs * steps_per_epoch``,
        capped at ``max_steps``.
    """
    spe = math.ceil(num_batches / accumulate)
    total = epochs * spe
    return (min(total, max_steps) if max_steps else total), spe


def warmup_length(cfg: Any, steps_per_epoch: int) -> tuple[int, str]:
    """Warmup length ``W`` in optimizer steps, and the ``key=value`` that set it.

    Args:
        cfg: composed config (reads ``warmup_steps``, ``warmup_epochs``).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        ``(W, "warmup_steps=N")`` when ``warmup_steps`` is set, else
        ``(round(warmup_epochs * steps_per_epoch), "warmup_epochs=X")``, at least 1 step when
        ``warmup_epochs > 0``.
    """
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps), f"warmup_steps={cfg.warmup_steps}"
    steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.warmup_epochs > 0 and steps == 0:
        steps = 1  # a requested warmup is never dropped silently
    return steps, f"warmup_epochs={cfg.warmup_epochs}"


def schedule_units(total_steps: int, warmup_steps: int, steps_per_epoch: int, interval: str,
                   counts_warmup: bool) -> tuple[int, int]:
    """What the main schedule is built over: ``(total_units, warmup_units)``.

    Args:
        total_steps: ``T``; warmup_steps: ``W`` (< ``T``); steps_per_epoch: optimizer steps per epoch.
        interval: ``step`` (a unit is a step) or ``epoch`` (a unit is an epoch; the LR changes
            at epoch starts).
        counts_warmup: the schedule counts ``t`` from step 0, warmup included (Ultralytics).

    Returns:
        ``total_units``: ``T - W`` steps, or the epochs from the one warmup ends in to the last
        (``(T-1)//spe - W//spe + 1``); the whole run's units when ``counts_warmup``.
        ``warmup_units``: ``W`` steps, or ``round(W / spe)`` epochs.
    """
    T, W, spe = total_steps, warmup_steps, steps_per_epoch
    if interval == "step":
        return (T if counts_warmup else T - W), W
    whole = (T - 1) // spe + 1
    return (whole if counts_warmup else (T - 1) // spe - W // spe + 1), round(W / spe)


def build_plan(cfg: Any, num_batches: int) -> "LRPlan":
    """The LR plan of the run ``cfg`` describes, over a train loader of ``num_batches`` batches.

    The one place where ``T``, ``W`` and the schedule's units are worked out: training, the
    range test's config, ``mode=plot_lr``, ``python -m framework.preview`` and the tests all
    call it. The schedule (``conf/scheduler/<name>.yaml``) receives ``total_units`` and, when its
    signature takes it, ``warmup_units``; whether it counts warmup is its class attribute
    ``counts_warmup``.

    Args:
        cfg: a validated config (reads ``epochs``, ``max_steps``, the warmup keys,
            ``trainer.accumulate_grad_batches`` and the ``scheduler`` group).
        num_batches: ``len(train_loader)`` of this process.

    Returns:
        The :class:`LRPlan`.

    Raises:
        ConfigError: warmup covers the whole run, or the schedule rejects its arguments.
    """
    T, spe = count_steps(num_batches, cfg.trainer.get("accumulate_grad_batches", 1), cfg.epochs, cfg.max_steps)
    W, warmup_key = warmup_length(cfg, spe)
    if W >= T:
        raise ConfigError(f"{warmup_key}: gives {W} warmup steps but the run has only {T} optimizer steps; "
                          "lower the warmup or raise epochs")
    node = registry.adapted(cfg.scheduler, "scheduler")  # a PyTorch scheduler class: framework.schedules.TorchScheduler
    make = functools.partial(registry.instantiate, node, "scheduler", reserved=RESERVED_KEYS["scheduler"])
    return plan_from(registry.locate(node._target_), make, T, spe, warmup_steps=W,
                     warmup_start_factor=cfg.warmup_start_factor, interval=cfg.scheduler.get("interval", "step"),
                     warmup_momentum=cfg.warmup_momentum)


def plan_from(schedule_class: Any, make_schedule: Callable[..., Schedule], total_steps: int, steps_per_epoch: int,
              warmup_steps: int = 0, warmup_start_factor: float = 0.1, interval: str = "step",
              warmup_momentum: Optional[float] = None) -> "LRPlan":
    """The plan of a run of ``total_steps``: its schedule built over the units it runs on.

    Args:
        schedule_class: the schedule's class (or factory): its ``counts_warmup`` attribute and
            whether its signature takes ``warmup_units`` decide the runtime inputs.
        make_schedule: builds the schedule from those inputs (``total_units=``, and
            ``warmup_units=`` when taken), e.g. the class with its configured keys bound.
        total_steps, steps_per_epoch, warmup_steps, warmup_start_factor, interval,
            warmup_momentum: as :class:`LRPlan`.

    Returns:
        The :class:`LRPlan`.
    """
    counts_warmup = bool(getattr(schedule_class, "counts_warmup", False))
    total_units, warmup_units = schedule_units(total_steps, warmup_steps, steps_per_epoch, interval, counts_warmup)
    runtime = {"total_units": total_units}
    if registry.takes(schedule_class, "warmup_units"):
        runtime["warmup_units"] = warmup_units
    return LRPlan(make_schedule(**runtime), total_steps, steps_per_epoch, warmup_steps=warmup_steps,
                  warmup_start_factor=warmup_start_factor, interval=interval, warmup_momentum=warmup_momentum)


def momentum_key(group: dict[str, Any]) -> Optional[str]:
    """``momentum`` (SGD, RMSprop), ``betas`` (Adam family: beta1) or None for a param group."""
    return "momentum" if "momentum" in group else "betas" if "betas" in group else None


def group_momentum(group: dict[str, Any]) -> Optional[float]:
    """A param group's momentum (or Adam beta1) now; None for optimizers without one."""
    key = momentum_key(group)
    return None if key is None else group["momentum"] if key == "momentum" else group["betas"][0]


class LRPlan:
    """The LR multiplier (and momentum, and weight decay when the schedule sets them) of every
    optimizer step ``k`` of a run.

    Warmup (``k < W``): ``m = s + (1 - s) * k / W``, as ``LinearLR(start_factor=s,
    total_iters=W)``; step ``W`` is the main schedule's first unit. After warmup the main
    schedule is evaluated at ``t = k - W`` (interval ``step``) or at ``t = epoch(k) - epoch(W)``
    with ``epoch(k) = k // steps_per_epoch`` (interval ``epoch``, LR changes at epoch starts); a
    schedule with ``counts_warmup`` sees ``t`` from step 0 and warmup rises toward its value.
    A param group with ``warmup_start_lr`` (the biases under ``warmup_bias_lr``, Ultralytics)
    warms up on a line from that absolute LR to its first main-schedule LR instead.
    Momentum: during warmup, with ``warmup_momentum`` set, it rises linearly from it to the
    schedule's first momentum (or the optimizer's own), as Ultralytics does; afterwards it is the
    schedule's (one-cycle, cyclic) or the optimizer's own.

    Args:
        schedule: the main schedule, built over this run's units (:func:`build_plan`).
        total_steps: ``T``, optimizer steps of the whole run (after accumulation and caps).
        steps_per_epoch: optimizer steps per epoch (``ceil(batches / accumulate_grad_batches)``).
        warmup_steps: ``W``, optimizer steps of warmup, ``0 <= W < T``.
        warmup_start_factor: ``s`` in (0, 1], multiplier of warmup step 0.
        interval: ``step`` or ``epoch``.
        warmup_momentum: momentum (beta1) of warmup step 0; None = no momentum warmup.

    Raises:
        ValueError: ``W`` not in ``[0, T)``.
    """

    def __init__(self, schedule: Schedule, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.1, interval: str = "step", warmup_momentum: Optional[float] = None):
        T, W, spe = int(total_steps), int(warmup_steps), int(steps_per_epoch)
        if not 0 <= W < T:
            raise ValueError(f"warmup_steps={W}: must be in [0, total_steps={T})")
        self.schedule, self.total_steps, self.warmup_steps, self.steps_per_epoch = schedule, T, W, spe
        self.start_factor, self.interval = float(warmup_start_factor), interval
        self.warmup_momentum = warmup_momentum
        self.offset = 0 if schedule.counts_warmup else W if interval == "step" else W // spe
        #: True when the plan prescribes the momentum (momentum warmup or a cycling schedule).
        self.sets_momentum = warmup_momentum is not None or schedule.momentum(0) is not None
        #: True when the schedule prescribes the weight decay (a replayed PBT trace).
        self.sets_weight_decay = schedule.weight_decay(0) is not None

    def unit(self, k: int) -> int:
        """Index ``t`` of step ``k`` in the main schedule (steps or epochs since warmup ended, or
        since step 0 for a schedule that counts warmup)."""
        if self.interval == "step":
            return k - self.offset
        return k // self.steps_per_epoch - self.offset

    def _warmup_target(self, k: int) -> float:
        """What warmup rises to: 1, or the schedule's value now when it counts warmup (Ultralytics)."""
        return self.schedule(self.unit(k)) if self.schedule.counts_warmup else 1.0

    def __call__(self, k: int) -> float:
        """Multiplier on the base LR applied at optimizer step ``k`` (``0 <= k < T``)."""
        if k < self.warmup_steps:
            s = self.start_factor
            return s + (self._warmup_target(k) - s) * k / self.warmup_steps
        return self.schedule(self.unit(k))

    def group_lrs(self, optimizer: Any) -> dict[str, list[float]]:
        """The planned LR (absolute) of every param group at every step ``k = 0 … T-1``, by group
        name (``name``, else its index), as training applies it without rollbacks (a
        metric-driven plan as it stands: flat from now); the optimizer is not changed."""
        groups = [dict(g) for g in optimizer.param_groups]  # copies: nothing is noted on the optimizer's
        return {g.get("name", str(i)): [self.group_lr(k, g) for k in range(self.total_steps)]
                for i, g in enumerate(groups)}

    def group_lr(self, k: int, group: dict[str, Any], lr_backoff: float = 1.0) -> float:
        """LR (absolute) of param group ``group`` at step ``k``.

        Args:
            k: optimizer step.
            group: the optimizer's param group (reads ``initial_lr``, its base LR, and
                ``warmup_start_lr`` when set).
            lr_backoff: multiplier on the base LR (the product of the rollbacks' ``rollback_lr_factor``).

        Returns:
            ``initial_lr * lr_backoff * plan(k)``; during warmup, for a group with
            ``warmup_start_lr``: ``w + (target - w) * k / W`` with ``target`` its LR at the end of
            warmup (Ultralytics' ``warmup_bias_lr``).
        """
        base = group["initial_lr"] * lr_backoff
        start = group.get("warmup_start_lr")
        if k < self.warmup_steps and start is not None:
            return start + (base * self._warmup_target(k) - start) * k / self.warmup_steps
        return base * self(k)

    def momentum(self, k: int, base: float) -> float:
        """Momentum (or beta1) for step ``k``, given the optimizer's configured value ``base``."""
        main = self.schedule.momentum(self.unit(max(k, self.warmup_steps)) if not self.schedule.counts_warmup
                                      else self.unit(k))
        target = base if main is None else main
        if k < self.warmup_steps and self.warmup_momentum is not None:
            return self.warmup_momentum + (target - self.warmup_momentum) * k / self.warmup_steps
        return target

    def apply(self, optimizer: Any, k: int, lr_backoff: float = 1.0) -> list[float]:
        """Set every param group's LR (and momentum, and weight decay, when the plan prescribes
        them) for step ``k``.

        A group's base LR is its ``initial_lr`` (set from its ``lr`` the first time, as
        PyTorch's ``LRScheduler`` does), its base momentum ``initial_momentum`` likewise. A
        prescribed weight decay goes to the groups whose ``initial_weight_decay`` is > 0.

        Args:
            optimizer: a ``torch.optim.Optimizer``.
            k: the optimizer step about to be taken.
            lr_backoff: multiplier on every base LR (the product of the rollbacks' ``rollback_lr_factor``).

        Returns:
            The LR set in each group, in ``optimizer.param_groups`` order.
        """
        lrs = []
        decay = self.schedule.weight_decay(self.unit(max(k, self.warmup_steps))) if self.sets_weight_decay else None
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            if decay is not None and (group.setdefault("initial_weight_decay", group.get("weight_decay", 0.0)) or 0) > 0:
                group["weight_decay"] = decay
            group["lr"] = self.group_lr(k, group, lr_backoff)
            lrs.append(group["lr"])
            key = momentum_key(group)
            if key is not None and self.sets_momentum:
                value = self.momentum_at(k, group)
                if key == "momentum":
                    group["momentum"] = value
                else:
                    group["betas"] = (value, *tuple(group["betas"])[1:])
        return lrs

    def momentum_at(self, k: int, group: dict[str, Any]) -> Optional[float]:
        """Momentum (or beta1) of param group ``group`` at step ``k``: :meth:`momentum` of its
        base ``initial_momentum`` when the plan sets it, else the base itself; None for an
        optimizer without momentum."""
        if momentum_key(group) is None:
            return None
        base = group.setdefault("initial_momentum", group_momentum(group))
        return self.momentum(k, base) if self.sets_momentum else base

    def check_optimizer(self, optimizer: Any) -> None:
        """Refuse a plan that sets the momentum for an optimizer without one, or the weight decay
        of an optimizer none of whose groups decays.

        Raises:
            ConfigError: naming ``warmup_momentum`` (when set), ``scheduler.path`` (a replayed
                file with a momentum or weight decay trace) or ``scheduler.cycle_momentum``.
        """
        name = type(optimizer).__name__
        if self.sets_weight_decay and not any(
                g.get("initial_weight_decay", g.get("weight_decay", 0.0)) or 0.0 for g in optimizer.param_groups):
            raise ConfigError(f"scheduler.path={getattr(self.schedule, 'path', '?')}: holds a weight_decay trace, but no "
                              f"param group of {name} decays (optimizer.weight_decay=0); set optimizer.weight_decay "
                              "to the recorded run's (> 0), or remove weight_decay:")
        if self.sets_momentum and momentum_key(optimizer.param_groups[0]) is None:
            if self.warmup_momentum is None and self.schedule.replays_file:  # scheduler=piecewise
                raise ConfigError(f"scheduler.path={self.schedule.path}: holds a momentum trace, but {name} has no "
                                  "momentum or beta1 to set; replay it with the recorded optimizer, or remove momentum:")
            key = "warmup_momentum" if self.warmup_momentum is not None else "scheduler.cycle_momentum"
            raise ConfigError(f"{key}: {name} has no momentum or beta1 to set; use "
                              "scheduler.cycle_momentum=false and warmup_momentum=null, or an optimizer with momentum")

    @property
    def schedule_file(self) -> Optional[str]:
        """The file a ``scheduler=piecewise`` plan replays (absolute path), else None: its LRs, not
        lr0, set the run's LR (the LR doctor's advice names it)."""
        if not getattr(self.schedule, "replays_file", False):
            return None
        return str(Path(os.path.expanduser(self.schedule.path)).resolve())

    @property
    def total_epochs(self) -> int:
        """Epochs the run reaches: ``ceil(T / steps_per_epoch)`` (the last may be cut by ``max_steps``)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

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
