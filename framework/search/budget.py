"""``hydra.sweeper.budget``: a cap on the optimizer steps a sweep spends, in full runs.

A full run is a trial's planned steps (``planned_steps`` in its ``summary.json``: every epoch of
its LR plan). Each trial's share of a full run, ``steps / planned_steps``, is kept in the study as
the study user attribute ``spent_runs:<trial number>`` once its job ends (a trial that pruned
itself is finished, and Optuna refuses to change a finished trial's attributes), so a resumed sweep, and one spread over
several machines, counts what was spent before. The sweeper launches a trial only while a full
run of it still fits: before each batch, at most ``floor(budget - spent)`` trials (a pruned trial
spends less, so later batches may fit more). Hence the sweep never spends more than ``budget``
full runs, whatever its sampler, pruner and the order good learning rates come in, and no trial
is cut short by the cap. With 9 trials of a grid in mind, ``budget: 3`` is a third of the grid's
steps.

The same cap as Optuna's ``timeout`` and Ray Tune's ``time_budget_s``, counted in optimizer
steps rather than seconds, so that it does not depend on the machine.
"""
from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["SPENT_ATTR", "budget_error", "record_spent", "spent_runs", "trials_that_fit"]

#: The study user attribute ``<SPENT_ATTR>:<trial number>``: the share of a full run that trial's job
#: trained (steps / planned steps).
SPENT_ATTR = "spent_runs"


def budget_error(budget: Any) -> Optional[str]:
    """The one-line message for a bad ``hydra.sweeper.budget`` (None when it is fine): null or a
    number >= 1 (full runs; below one, no trial would fit)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 1:
        return (f"hydra.sweeper.budget={budget}: must be a number >= 1 (full runs: the steps of that many trials "
                "trained to their end), or null for no cap, e.g. hydra.sweeper.budget=3")
    return None


def record_spent(study: Any, trial: Any, summary: dict[str, Any]) -> None:
    """Store the share of a full run that a job's ``summary.json`` says its trial trained
    (``steps / planned_steps``; a job without them, which failed before training, spent 0). A
    promoted trial's job reports its steps over all its segments, so the value is replaced."""
    steps, planned = summary.get("steps"), summary.get("planned_steps")
    share = steps / planned if isinstance(steps, int) and isinstance(planned, int) and planned > 0 else 0.0
    study.set_user_attr(f"{SPENT_ATTR}:{trial.number}", float(share))


def spent_runs(study: Any) -> float:
    """(full runs) What the study's trials have spent so far, summed over every trial (failed and
    interrupted ones too: their steps were trained)."""
    prefix = f"{SPENT_ATTR}:"
    return sum(float(v) for k, v in study.user_attrs.items() if k.startswith(prefix))


def trials_that_fit(budget: Optional[float], spent: float) -> float:
    """How many more trials may be launched now: ``floor(budget - spent)`` (each may train a full
    run), ``inf`` without a budget. A tolerance of 1e-9 keeps float sums of shares from losing a
    trial (``3.15 - (0.22 + 0.93)`` is 1.9999999999999998 in floats: 2 trials)."""
    if budget is None:
        return math.inf
    return max(0, math.floor(budget - spent + 1e-9))
