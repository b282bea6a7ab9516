"""``hydra.sweeper.budget_runs``: a cap on the optimizer steps a sweep spends, in full runs.

A trial's full run is its planned steps (``planned_steps`` in its ``summary.json``: every epoch
of its LR plan); what a trial spent is its share of its own full run, ``steps / planned_steps``,
and the sweep's spend is the sum of these shares. When every trial plans the same steps (lr0,
lrf, momentum... searched, not ``epochs`` or ``batch_size``) that is the sweep's optimizer steps
over one run's; a swept ``epochs`` makes a short trial's full run count as much as a long one's.
The shares are kept in the study, one per run folder (study user attributes ``spent_runs:<run
folder>``: a trial that pruned itself is finished, and Optuna refuses to change a finished
trial's attributes), so a resumed sweep, and one spread over several machines, counts what was
spent before, and a run continued in its folder (a promotion, the rerun of an interrupted
trial) is counted once: its summary's steps cover all its segments.

The sweeper launches a trial only while a full run of it still fits: before each batch, at most
``floor(budget_runs - spent)`` trials (a pruned trial spends less, so later batches may fit
more). Hence the sweep never spends more than ``budget_runs`` full runs, whatever its sampler,
its pruner and the order good learning rates come in, and no trial is cut short by the cap.
With a 9-value grid in mind, ``budget_runs: 3`` is a third of the grid's steps.

The same cap as Optuna's ``timeout`` and Ray Tune's ``time_budget_s``, counted in optimizer
steps rather than seconds, so that it does not depend on the machine.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

__all__ = ["SPENT_ATTR", "budget_error", "record_spent", "spent_runs", "trials_that_fit"]

#: The study user attribute ``<SPENT_ATTR>:<run folder>`` (``<SPENT_ATTR>:trial <n>`` for a trial
#: without one): the share of its own full run that the folder's run trained (steps / planned steps).
SPENT_ATTR = "spent_runs"


def budget_error(budget: Any) -> Optional[str]:
    """The one-line message for a bad ``hydra.sweeper.budget_runs`` (None when it is fine): null
    or a number >= 1 (full runs; below one, no trial would fit)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 1:
        return (f"hydra.sweeper.budget_runs={budget}: must be a number >= 1 (full runs: the steps of that many trials "
                "trained to their end), or null for no cap, e.g. hydra.sweeper.budget_runs=3")
    return None


def record_spent(study: Any, trial: Any, run_dir: Optional[Path]) -> None:
    """Store the share of a full run that trial ``trial``'s job trained, from its run folder:
    ``steps / planned_steps`` of its ``summary.json``; for a job killed before it wrote one (a
    lost node, an OOM kill, a sweep killed around it), the rows of its ``steps.csv`` over the
    ``planned_steps`` the job recorded in the trial when it started (user attribute), or a whole
    run when that is unknown, so the cap is never passed by what was not told; 0 for a job that
    trained nothing. The value is the folder's: a run continued there (a promotion, a rerun of
    an interrupted trial) replaces it, its summary counting the steps of all its segments.

    Args:
        study: the Optuna study (its storage takes the value).
        trial: the trial (``number`` and, for the fallback, ``user_attrs`` or the storage's).
        run_dir: the job's folder (None: unknown; then 0 unless the trial names one).
    """
    from framework.loggers import read_summary

    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    run_dir = Path(run_dir) if run_dir is not None else (Path(attrs["run_dir"]) if attrs.get("run_dir") else None)
    summary = read_summary(run_dir) if run_dir is not None else {}
    planned = summary.get("planned_steps") or attrs.get("planned_steps")
    steps = summary.get("steps")
    if not isinstance(steps, int):  # no summary: count the logged steps
        steps = _logged_steps(run_dir / "steps.csv") if run_dir is not None else 0
    if not steps:
        share = 0.0
    else:
        share = steps / planned if isinstance(planned, int) and planned > 0 else 1.0
    key = str(run_dir.resolve()) if run_dir is not None else f"trial {trial.number}"
    study.set_user_attr(f"{SPENT_ATTR}:{key}", float(share))


def _logged_steps(path: Path) -> int:
    """Rows of a ``steps.csv`` (one per optimizer step; 0 when the file is missing)."""
    if not path.is_file():
        return 0
    with open(path) as f:
        return max(sum(1 for _ in f) - 1, 0)


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
