"""The LR range test over a built trainer, its result and its files.

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` optimizer steps
(Smith, "Cyclical Learning Rates for Training Neural Networks", 2015/2017); the loss of each
step is smoothed with a bias-corrected exponential moving average and the test stops once the
smoothed loss passes ``diverge_mult`` times its best (as fastai's ``lr_find`` and Lightning's
``Tuner.lr_find``). The model, optimizer, data order and random streams are restored afterwards,
so the test leaves no trace on the training that follows.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from framework import interrupts
from framework.lr_finder.rules import MIN_POINTS, SOURCES, SUGGESTIONS, finite_points, probe_lrs, smooth, suggest_all
from framework.schedules.base import Schedule

log = logging.getLogger("framework.lr_finder")


@dataclass
class RangeTestResult:
    """What a range test measured.

    Attributes:
        lrs: LR of each probe run (lr0 units: the LR group 0 gets with no scaling).
        losses: training loss of each probe (mean cross-entropy of its optimizer step, nats).
        smoothed: bias-corrected EMA of ``losses``.
        planned: probes planned (``num_steps``); ``len(lrs)`` is less when it stopped early.
        stop_reason: why it stopped early, or None.
        suggestions: LR by suggestion name (None when a suggestion has too few points).
        chosen: the name of the suggestion used.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    planned: int
    stop_reason: Optional[str] = None
    suggestions: dict[str, Optional[float]] = field(default_factory=dict)
    chosen: str = "steepest"

    @property
    def lr(self) -> Optional[float]:
        """The chosen suggestion's LR (None when it could not be computed)."""
        return self.suggestions.get(self.chosen)

    def to_json(self) -> dict[str, Any]:
        """The record of ``lr_find.json`` and of ``summary.json``'s ``lr0_auto``: the chosen
        suggestion and its LR (lr0 units), why, every suggestion with its source, probes run
        and planned, why it stopped and the LR range probed."""
        return {"chosen": self.chosen, "lr0": self.lr, "why": SOURCES[self.chosen],
                "suggestions": self.suggestions, "sources": SOURCES, "probes": len(self.lrs),
                "planned_probes": self.planned, "stop_reason": self.stop_reason,
                "lr_range": [self.lrs[0], self.lrs[-1]] if self.lrs else None}


class LRFinder:
    """LR range test over a built :class:`~framework.trainer.Trainer`'s model, optimizer and data.

    Probe ``i`` sets every param group's LR to ``lr_i * (group's base LR / lr0)`` (so head and
    layer-decay ratios and ``lr_scaling`` hold), runs one optimizer step (with the trainer's
    accumulation, precision and clipping) and records its loss. Afterwards the weights, optimizer
    state, LRs, grad scaler, data sampler and every random stream are restored exactly.

    Args:
        start_lr: LR of the first probe, > 0 (lr0 units).
        end_lr: LR of the last probe, > start_lr.
        num_steps: probes (optimizer steps), >= MIN_POINTS.
        beta: EMA coefficient of the smoothed loss, in [0, 1).
        diverge_mult: stop once the smoothed loss exceeds this multiple of its best (> 1).
        suggestion: the suggestion used for ``lr0=auto``: steepest (default: within 2% of the best
            grid accuracy on every pair of ``bench/lr_find_vs_grid.py``), valley or minimum.

    Raises:
        ValueError: an argument out of range (reported as a config error).
    """

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100, beta: float = 0.98,
                 diverge_mult: float = 4.0, suggestion: str = "steepest"):
        def number(key: str, value: Any, integer: bool = False) -> None:
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
                raise ValueError(f"lr_finder.{key}={value}: must be a finite {'integer' if integer else 'number'}")

        for key, value in (("start_lr", start_lr), ("end_lr", end_lr), ("beta", beta), ("diverge_mult", diverge_mult)):
            number(key, value)
        number("num_steps", num_steps, integer=True)
        if not 0 < start_lr < end_lr:
            raise ValueError(f"lr_finder.start_lr={start_lr}, end_lr={end_lr}: need 0 < start_lr < end_lr, e.g. 1e-7 and 10")
        if num_steps < MIN_POINTS:
            raise ValueError(f"lr_finder.num_steps={num_steps}: must be >= {MIN_POINTS}, e.g. 100")
        if not 0 <= beta < 1:
            raise ValueError(f"lr_finder.beta={beta}: must be in [0, 1), e.g. 0.98")
        if not diverge_mult > 1:
            raise ValueError(f"lr_finder.diverge_mult={diverge_mult}: must be > 1, e.g. 4")
        if suggestion not in SUGGESTIONS:
            raise ValueError(f"lr_finder.suggestion={suggestion}: use one of {', '.join(SUGGESTIONS)}")
        self.start_lr, self.end_lr, self.num_steps = start_lr, end_lr, int(num_steps)
        self.beta, self.diverge_mult, self.suggestion = beta, diverge_mult, suggestion

    def run(self, trainer: Any, lr0: float) -> RangeTestResult:
        """Run the test on ``trainer`` (built, not yet fitted) and restore it.

        Args:
            trainer: a :class:`~framework.trainer.Trainer`.
            lr0: the lr0 the trainer was built with (its groups' base LRs are ratios of it).

        Returns:
            The :class:`RangeTestResult` with every suggestion.
        """
        from framework.checkpoint import rng_state, set_rng_state

        saved = {"model": copy.deepcopy(trainer.model.state_dict()),
                 "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
                 "groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
                            for g in trainer.optimizer.param_groups],
                 "scaler": copy.deepcopy(trainer.scaler.state_dict()) if trainer.scaler is not None else None,
                 "rng": rng_state(), "training": trainer.model.training}
        sampler = trainer.train_loader.sampler
        sampler_state = (getattr(sampler, "epoch", None), getattr(sampler, "start", None))
        try:
            lrs, losses, reason = self._probe(trainer, lr0)
        finally:
            trainer.model.load_state_dict(saved["model"])
            trainer.optimizer.load_state_dict(saved["optimizer"])
            for group, kept in zip(trainer.optimizer.param_groups, saved["groups"]):
                group.update(kept)
            if saved["scaler"] is not None:
                trainer.scaler.load_state_dict(saved["scaler"])
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.model.train(saved["training"])
            if sampler_state[0] is not None:
                sampler.set_epoch(*sampler_state)
            set_rng_state(saved["rng"])
        smoothed = smooth(losses, self.beta)
        result = RangeTestResult(lrs, losses, smoothed, self.num_steps, reason, chosen=self.suggestion)
        result.suggestions = suggest_all(lrs, smoothed)
        return result

    def _probe(self, trainer: Any, lr0: float) -> tuple[list[float], list[float], Optional[str]]:
        """The probes, through the trainer's step API (``micro_batches``, ``micro_step``,
        ``optimizer_step``), LRs set by an :class:`LRPlan` of :class:`ProbeSchedule`; epochs repeat
        until every probe ran or the loss diverged. Returns LRs (lr0 units), losses, stop reason."""
        from framework.schedules import LRPlan

        planned = probe_lrs(self.start_lr, self.end_lr, self.num_steps)
        plan = LRPlan(ProbeSchedule(planned, lr0), total_steps=len(planned),
                      steps_per_epoch=trainer.plan.steps_per_epoch)
        lrs: list[float] = []
        losses: list[float] = []
        avg, best = 0.0, math.inf
        trainer.train_mode()
        trainer.optimizer.zero_grad(set_to_none=True)
        epoch = 0
        while len(lrs) < len(planned):
            step_loss, first = 0.0, True
            for _, x, y, samples, closes in trainer.micro_batches(epoch):
                interrupts.check()  # Ctrl-C during the range test: the program ends before training
                if first:  # probe len(lrs): group LR = initial_lr * lr / lr0, set once before its micro-steps
                    plan.apply(trainer.optimizer, len(lrs))
                step_loss = step_loss + trainer.micro_step(x, y, len(y) / samples, closes)  # read once per probe
                first = closes
                if not closes:
                    continue
                applied, _, _ = trainer.optimizer_step()
                if not applied:  # fp16 overflow: the probe is repeated at the same LR
                    step_loss = 0.0
                    continue
                lr = planned[len(lrs)]
                lrs.append(lr)
                losses.append(float(step_loss))  # one read per probe: it decides whether to stop
                step_loss = 0.0
                if not math.isfinite(losses[-1]):
                    return lrs, losses, f"loss not finite at lr {lr:.3g}"
                n = len(losses)
                avg = self.beta * avg + (1 - self.beta) * losses[-1]
                smoothed = avg / (1 - self.beta**n)
                best = min(best, smoothed)
                if n > 1 and smoothed > self.diverge_mult * best:
                    return lrs, losses, f"smoothed loss {smoothed:.4g} > {self.diverge_mult:g} x its best {best:.4g} at lr {lr:.3g}"
                if len(lrs) == len(planned):
                    break
            epoch += 1
        return lrs, losses, None


class ProbeSchedule(Schedule):
    """The range test's probe LRs as a schedule (a unit is a probe): every group gets probe ``t``'s
    LR times its ratio to lr0 (head, layer decay, ``lr_scaling``) from :meth:`LRPlan.apply`.

    Formula: m(t) = lr_t / lr0

    Args:
        lrs: the probes' LRs in lr0 units (:func:`probe_lrs`); lr0: the trainer's lr0 (> 0).
    """

    def __init__(self, lrs: Sequence[float], lr0: float):
        super().__init__(len(lrs))
        self.multipliers = [lr / lr0 for lr in lrs]

    def __call__(self, t: int) -> float:
        return self.multipliers[t]


def write_outputs(result: RangeTestResult, run_dir: Path) -> None:
    """``lr_find.csv`` (lr, loss, smoothed_loss per probe), ``lr_find.json`` (suggestions, the
    chosen one and why) and ``lr_find.png`` (log-x curve with every suggestion marked)."""
    import csv

    from framework.loggers import pyplot, write_json

    plt = pyplot()

    with open(run_dir / "lr_find.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss"])
        w.writerows((i, lr, loss, s) for i, (lr, loss, s) in enumerate(zip(result.lrs, result.losses, result.smoothed)))
    write_json(result.to_json(), run_dir / "lr_find.json")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x, y = finite_points(result.lrs, result.smoothed)
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(x, y, color="C0", label="smoothed loss")
    for k, (name, lr) in enumerate(result.suggestions.items()):
        if lr is not None:
            style = "-" if name == result.chosen else "--"
            ax.axvline(lr, color=f"C{k + 1}", ls=style, label=f"{name}: {lr:.3g}" + (" (chosen)" if name == result.chosen else ""))
    ax.set_xscale("log")
    ax.set_xlabel("lr0 (log scale; group LRs keep their ratios to it)")
    ax.set_ylabel("train loss")
    if y:
        top = min(max(y[: max(1, len(y) // 10)]) * 1.5, max(y))
        ax.set_ylim(min(y) * 0.9, top * 1.05)
    ax.set_title(f"LR range test ({len(result.lrs)} of {result.planned} probes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "lr_find.png", dpi=120)
    plt.close(fig)


def answer(result: RangeTestResult) -> str:
    """The one-line answer printed after a range test."""
    others = ", ".join(f"{n} {v:.3g}" for n, v in result.suggestions.items() if n != result.chosen and v is not None)
    if result.lr is None:
        early = len(result.lrs) < max(MIN_POINTS, result.planned // 10)
        fix = ("lower lr_finder.start_lr (the loss blew up at once)" if early
               else "widen lr_finder.start_lr/end_lr, raise lr_finder.num_steps, or use a larger "
                    "dataset.train_size")
        return (f"lr_find: no {result.chosen} suggestion ({len(result.lrs)} probes; "
                f"{result.stop_reason or 'no usable fall of the loss'}); {fix}")
    return f"lr_find: use lr0={result.lr!r} ({result.chosen}; {others})"
