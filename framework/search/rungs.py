"""The rule of ASHA with promotions, shared by the Optuna sweeper (:mod:`framework.search.promotion`,
``hydra/sweeper/pruner=asha_promotion``) and Ray Tune (:mod:`framework.search.ray_promotion`,
``tune.asha_rule=promotion``); it imports neither.

A trial trains until the rung it was launched to (``min_resource * eta^k`` epochs below
``max_resource``, then ``max_resource``), then waits there. The next job is:

0. a trial promoted but stopped before the rung it was sent to (an interrupted sweep, resumed)
   goes on to that rung, from its last checkpoint;
1. from the highest rung down, while fewer than ``floor(n_k / eta)`` of the ``n_k`` trials that
   reached rung ``k`` have been sent on to rung ``k + 1``, the best trial waiting at rung ``k``
   among its top ``floor(n_k / eta)``, promoted to rung ``k + 1`` (resumed from its checkpoint);
2. else a new trial, up to ``n_trials``;
3. else, once nothing runs and no trial has trained its full budget, the best trial waiting at
   the highest rung any trial waits at, promoted to the next rung (a finite search ends with a
   trained run).

A trial counts as sent on when it was launched to a later rung, whether or not it got there (a
promotion that diverged or failed keeps its place), so with ``n`` trials at most
``floor(n / eta)`` ever train past the first rung, ``floor(floor(n / eta) / eta)`` past the
second, and so on, plus the one trial of rule 3: 9 trials, rungs 1, 4, 16 epochs, spend at most
9 x 1 + 2 x 3 + 1 x 12 = 27 epochs, 18.75% of a 9-point grid of 16-epoch runs.

Source: Li et al., "A System for Massively Parallel Hyperparameter Tuning" (MLSys 2020),
Algorithm 2 (``get_job``: promotions from the top rung down; the same form is Syne Tune's
``HyperbandScheduler(type="promotion")``). Two rules are ours, for a search with a fixed number of
trials: the count of promotions out of a rung (the paper promotes any waiting trial in the current
top ``1/eta``, so trials that improve one after another, as a sampler that learns proposes them,
can all be promoted) and rule 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from framework.errors import ConfigError

__all__ = ["TrialRecord", "Job", "PromotionRule"]


@dataclass
class TrialRecord:
    """What the rule knows of one trial.

    Attributes:
        number: the trial's number.
        values: epochs trained -> the monitored validation value reported then.
        paused_at: (epochs) where it waits, or None (running, or ended).
        complete: it trained its full budget.
        until: (epochs) the rung it was last launched to train until (None: not known; then
            the epochs it reported stand in).
    """

    number: int
    values: dict[int, float] = field(default_factory=dict)
    paused_at: Optional[int] = None
    complete: bool = False
    until: Optional[int] = None

    @property
    def sent_to(self) -> int:
        """(epochs) the furthest it was launched to or got to."""
        return max(self.until or 0, max(self.values, default=0))


@dataclass
class Job:
    """The next job: a new trial (``number`` None) or a promotion, to train until ``until`` epochs."""

    number: Optional[int]
    until: int


class PromotionRule:
    """Rungs and the choice of the next job (see the module).

    Args:
        min_resource: (epochs) of the first rung, >= 1.
        reduction_factor: eta, an integer >= 2: one trial in eta of a rung goes on.
        max_resource: (epochs) of a full trial, >= min_resource.
        prefix: the keys' prefix in error messages (``hydra.sweeper.pruner``, ``tune``).

    Raises:
        ConfigError: a value out of range, one line per key naming it.
    """

    def __init__(self, min_resource: int = 1, reduction_factor: int = 4, max_resource: int = 16,
                 prefix: str = "hydra.sweeper.pruner"):
        errors = []
        for key, value, low in (("min_resource", min_resource, 1), ("reduction_factor", reduction_factor, 2),
                                ("max_resource", max_resource, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                errors.append(f"{prefix}.{key}={value}: must be an integer >= {low}")
        if not errors and max_resource < min_resource:
            errors.append(f"{prefix}.max_resource={max_resource}: must be >= min_resource ({min_resource})")
        if errors:
            raise ConfigError(errors)
        self.min_resource, self.eta, self.max_resource = min_resource, reduction_factor, max_resource

    @property
    def rungs(self) -> list[int]:
        """(epochs) ``min_resource * eta^k`` while below ``max_resource``, then ``max_resource``:
        e.g. [1, 4, 16] for min_resource 1, eta 4, max_resource 16; [1, 4, 9] for max_resource 9."""
        rungs, epochs = [], self.min_resource
        while epochs < self.max_resource:
            rungs.append(epochs)
            epochs *= self.eta
        return [*rungs, self.max_resource]

    @staticmethod
    def value_at(trial: TrialRecord, epochs: int) -> Optional[float]:
        """The value ``trial`` reported at the first validated epoch count >= ``epochs`` (a run
        validated every epoch: at ``epochs``), or None when it never got there."""
        reached = [e for e in trial.values if e >= epochs]
        return trial.values[min(reached)] if reached else None

    def ranked(self, trials: list[TrialRecord], epochs: int, maximize: bool) -> list[TrialRecord]:
        """The trials that reached ``epochs``, best first by their value there (ties: the lower number)."""
        at = [(self.value_at(t, epochs), t.number, t) for t in trials]
        at = [(v, n, t) for v, n, t in at if v is not None]
        at.sort(key=lambda x: (-x[0] if maximize else x[0], x[1]))
        return [t for _, _, t in at]

    def next_job(self, trials: list[TrialRecord], started: int, n_trials: int, busy: set[int],
                 maximize: bool) -> Optional[Job]:
        """The next job (the module's rules 0-3). A chosen promotion's ``until`` is set on its
        record, so a batch formed by calling this again counts it.

        Args:
            trials: every trial started so far (not interrupted ones), new ones of the batch included.
            started: how many those are (trials asked so far).
            n_trials: the search's number of trials.
            busy: numbers of the trials running, or chosen for the batch being formed.
            maximize: the objective's direction.

        Returns:
            The job, or None: nothing to do until a running trial reports (or the search is over).
        """
        rungs = self.rungs
        for trial in trials:  # a promotion stopped on the way (an interrupted sweep): it goes on first
            if trial.paused_at is not None and trial.until is not None and trial.until > trial.paused_at \
                    and trial.number not in busy:
                return Job(trial.number, trial.until)
        for k in range(len(rungs) - 2, -1, -1):  # rule 1, the highest rung first
            ranked = self.ranked(trials, rungs[k], maximize)
            top = ranked[:len(ranked) // self.eta]
            slots = len(top) - sum(1 for t in trials if t.sent_to >= rungs[k + 1])
            for trial in top if slots > 0 else []:
                waits_here = trial.paused_at is not None and rungs[k] <= trial.paused_at < rungs[k + 1]
                if waits_here and trial.number not in busy:
                    trial.until = rungs[k + 1]
                    return Job(trial.number, rungs[k + 1])
        if started < n_trials:  # rule 2
            return Job(None, rungs[0])
        if busy or any(t.complete for t in trials):
            return None
        waiting = [t for t in trials if t.paused_at is not None]
        if not waiting:
            return None
        top_rung = max(t.paused_at for t in waiting)  # rule 3
        best = self.ranked([t for t in waiting if t.paused_at == top_rung], top_rung, maximize)[0]
        best.until = next((r for r in rungs if r > top_rung), rungs[-1])
        return Job(best.number, best.until)
