"""ASHA with promotions for Ray Tune (``python -m framework.tune tune.search=asha
tune.asha_rule=promotion``): the rule of :mod:`framework.search.rungs` as a Ray scheduler.

A trial trains until the rung it was started or resumed for; there the scheduler answers
``PAUSE``, Ray saves the trial's checkpoint (our run's own files, :mod:`~framework.search.ray_trainable`)
and frees its worker. When a worker is free, Ray asks :meth:`RayPromotionASHA.choose_trial_to_run`
for the trial to run: a paused trial to promote (Ray restores it from its checkpoint and it trains
on to the next rung), a pending trial to start, or none. Ray also starts pending trials by itself
when it has resources (``TuneController._maybe_add_actors``); that changes only the order in which
new trials start: each is recorded when the scheduler first sees it running, and pauses at the
first rung. Once nothing runs and nothing is left to start or promote, the trials still paused
are stopped: their run folders say ``pruned`` at their rung.

Source: Li et al. 2020, Algorithm 2, with the budget bound of :mod:`framework.search.rungs`;
Ray Tune 2.x's ``TrialScheduler`` interface (``on_trial_result`` answering ``CONTINUE`` / ``PAUSE``,
``choose_trial_to_run``, as its ``HyperBandScheduler`` pauses and resumes trials).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from framework.search.rungs import PromotionRule, TrialRecord

log = logging.getLogger(__name__)

__all__ = ["RayPromotionASHA"]

#: Ray's statuses of a trial that will not run again.
ENDED = (Trial.TERMINATED, Trial.ERROR)


class RayPromotionASHA(FIFOScheduler):
    """Ray's side of ASHA with promotions.

    Args:
        time_attr: the result key that counts epochs trained.
        max_t: (epochs) of a full trial; grace_period: (epochs) of the first rung;
        reduction_factor: eta, an integer >= 2.
        num_samples: (trials) of the search.
        index: Ray's trial id -> the trial's number (``trial_index``).

    Raises:
        ConfigError: a bad ``grace_period``, ``reduction_factor`` or ``max_t`` (one line, ``tune.`` key).
    """

    def __init__(self, time_attr: str, max_t: int, grace_period: int, reduction_factor: int, num_samples: int,
                 index: Callable[[str], int]):
        super().__init__()
        self.rule = PromotionRule(min_resource=grace_period, reduction_factor=reduction_factor, max_resource=max_t,
                                  prefix="tune")
        self.time_attr, self.num_samples, self.index = time_attr, int(num_samples), index
        self.mode: Optional[str] = None
        self.records: dict[int, TrialRecord] = {}  # number -> what is known of a started trial
        self.trials: dict[int, Trial] = {}
        self.running: set[int] = set()  # chosen to run or seen running, not paused nor ended since

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec: Any) -> bool:
        """Take the metric and mode of ``TuneConfig`` (Ray's protocol)."""
        self._metric, self.mode = metric or self._metric, mode or self.mode
        return True

    def _record(self, trial: Trial) -> TrialRecord:
        """The trial's record, made (started, to the first rung) when first seen."""
        number = self.index(trial.trial_id)
        return self.records.setdefault(number, TrialRecord(number, until=self.rule.rungs[0]))

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        """Know the trial (a restored one that ended does not wait at a rung)."""
        number = self.index(trial.trial_id)
        self.trials[number] = trial
        if trial.status in ENDED and number in self.records:
            self.records[number].paused_at = None

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        """Record the epoch's value; ``PAUSE`` at the rung the trial trains until (short of its end)."""
        record = self._record(trial)
        self.running.add(record.number)
        epochs = int(result.get(self.time_attr, 0))
        value = result.get(self._metric)
        if isinstance(value, (int, float)):
            record.values[epochs] = float(value)
        if epochs < self.rule.max_resource and epochs >= (record.until or self.rule.rungs[0]):
            record.paused_at = epochs
            self.running.discard(record.number)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        """The trial ended by itself (its last epoch, or early stopping): complete."""
        record = self._record(trial)
        record.complete, record.paused_at = True, None
        self.running.discard(record.number)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        """A trial stopped (at the end, by this scheduler) or removed: it runs no more."""
        self.on_trial_error(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        """A trial that failed: it runs no more and waits nowhere."""
        record = self.records.get(self.index(trial.trial_id))
        if record is not None:
            record.paused_at = None
            self.running.discard(record.number)

    def choose_trial_to_run(self, tune_controller: Any) -> Optional[Trial]:
        """The next job of :meth:`PromotionRule.next_job`: a paused trial to promote (or, after
        ``tune.resume``, a restored pending one), a pending one to start, or None; once the search
        is over, the paused trials left are stopped."""
        trials = tune_controller.get_trials()
        busy = set()
        for t in trials:
            if t.status == Trial.PAUSED or t.status in ENDED:
                self.running.discard(self.index(t.trial_id))
            elif t.status == Trial.RUNNING:  # Ray may start pending trials itself: count them
                record = self._record(t)  # one that answered PAUSE is RUNNING until Ray has saved it: busy too
                busy.add(record.number)
                if record.paused_at is None and not record.complete:
                    self.running.add(record.number)
        while True:
            job = self.rule.next_job(list(self.records.values()), len(self.records), self.num_samples,
                                     busy | self.running, self.mode != "min")
            if job is None or job.number is None:
                break
            trial = self.trials.get(job.number)
            if trial is None or trial.status in ENDED:  # restored as ended: it waits nowhere; ask again
                self.records[job.number].paused_at = None
                continue
            log.info("trial %d promoted: resumed after epoch %d, to train until epoch %d", job.number,
                     self.records[job.number].paused_at, job.until)
            self.records[job.number].paused_at = None
            self.running.add(job.number)
            return trial
        if job is not None:  # a new trial, once Ray has made one
            pending = [t for t in trials if t.status == Trial.PENDING and self.index(t.trial_id) not in self.records]
            if not pending:
                return None
            trial = min(pending, key=lambda t: self.index(t.trial_id))
            self.running.add(self._record(trial).number)
            return trial
        if not busy and not self.running and len(self.records) >= self.num_samples:  # over: the paused ones end here
            for t in trials:
                record = self.records.get(self.index(t.trial_id))
                if record is not None and record.paused_at is not None and t.status in (Trial.PAUSED, Trial.PENDING):
                    record.paused_at = None
                    tune_controller.stop_trial(t)
        return None

    def seed(self, results: Path) -> int:
        """Refill what the scheduler knew from an interrupted search's ``results.jsonl`` (``tune.resume``):
        each trial's values by epochs; a trial that had not trained to its end waits at its last
        epoch (a paused trial, or one stopped mid-way: both continue from their checkpoints when
        promoted; one Ray restores as ended waits nowhere, see :meth:`on_trial_add`).

        Returns:
            The number of rows read (0 when the file is missing).
        """
        from framework.search.ray_trial import result_rows

        count = 0
        for row in result_rows(results):
            epochs, value = row.get(self.time_attr), row.get(self._metric)
            if "trial_id" not in row or not isinstance(epochs, int) or not isinstance(value, (int, float)):
                continue
            number = self.index(row["trial_id"])
            record = self.records.setdefault(number, TrialRecord(number))
            record.values[epochs] = float(value)
            record.until = max(record.until or 0, epochs)
            record.complete = max(record.values) >= self.rule.max_resource or bool(row.get("done"))
            record.paused_at = None if record.complete else max(record.values)
            count += 1
        return count

    def debug_string(self) -> str:
        """Ray's progress line for this scheduler."""
        waiting = sum(1 for r in self.records.values() if r.paused_at is not None)
        return (f"ASHA with promotions: rungs {self.rule.rungs} epochs, {len(self.records)}/{self.num_samples} trials "
                f"started, {waiting} paused")
