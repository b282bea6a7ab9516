"""ASHA with promotions for Ray Tune (``python -m framework.tune tune.search=asha
tune.asha_rule=promotion``): the rule of :mod:`framework.search.promotion` as a Ray scheduler.

A trial trains until the rung it was started or resumed for; there the scheduler answers
``PAUSE``, Ray saves the trial's checkpoint (our run's own files, :mod:`~framework.search.ray_trainable`)
and frees its worker. When a worker is free, Ray asks :meth:`RayPromotionASHA.choose_trial_to_run`,
which takes :meth:`PromotionASHA.next_job <framework.search.promotion.PromotionASHA.next_job>`'s
answer: a paused trial to promote (Ray restores it from its checkpoint and it trains on to the
next rung), a pending trial to start, or nothing. Once nothing runs and nothing is left to start
or promote, the trials still paused are stopped: their run folders say ``pruned`` at their rung.

Source: Li et al. 2020, Algorithm 2, with the budget bound of :mod:`framework.search.promotion`;
Ray Tune 2.x's ``TrialScheduler`` interface (``on_trial_result`` answering ``CONTINUE`` / ``PAUSE``,
``choose_trial_to_run``, as its ``HyperBandScheduler`` pauses and resumes trials).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from framework.search.promotion import PromotionASHA, Rung

log = logging.getLogger(__name__)

__all__ = ["RayPromotionASHA"]


class RayPromotionASHA(FIFOScheduler):
    """Ray's side of ASHA with promotions.

    Args:
        time_attr: the result key that counts epochs trained.
        max_t: (epochs) of a full trial; grace_period: (epochs) of the first rung;
        reduction_factor: eta (an integer >= 2).
        num_samples: the search's number of trials.
        index: trial -> its number (``trial_index(trial.trial_id)``).

    Raises:
        ConfigError: a bad ``grace_period``, ``reduction_factor`` or ``max_t`` (one line).
    """

    def __init__(self, time_attr: str, max_t: int, grace_period: int, reduction_factor: float, num_samples: int,
                 index: Any):
        super().__init__()
        self.rule = PromotionASHA(min_resource=int(grace_period), reduction_factor=int(reduction_factor),
                                  max_resource=int(max_t))
        self.time_attr, self.num_samples, self.index = time_attr, int(num_samples), index
        self.mode: Optional[str] = None
        self.rungs: dict[int, Rung] = {}  # number -> what is known of the trial
        self.until: dict[int, int] = {}  # number -> epochs it trains until, once started
        self.trials: dict[int, Trial] = {}
        self.running: set[int] = set()  # chosen to run (Ray may not call them RUNNING yet), not paused nor ended

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec: Any) -> bool:
        """Take the metric and mode of ``TuneConfig`` (Ray's protocol)."""
        self._metric, self.mode = metric or self._metric, mode or self.mode
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        number = self.index(trial.trial_id)
        self.trials[number] = trial
        self.rungs.setdefault(number, Rung(number))

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        """Record the epoch's value; ``PAUSE`` at the rung the trial trains until (short of its end)."""
        number = self.index(trial.trial_id)
        epochs = int(result.get(self.time_attr, 0))
        value = result.get(self.metric)
        rung = self.rungs.setdefault(number, Rung(number))
        if isinstance(value, (int, float)):
            rung.values[epochs] = float(value)
        if epochs < self.rule.max_resource and epochs >= self.until.get(number, self.rule.rungs[0]):
            rung.paused_at = epochs
            self.running.discard(number)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        rung = self.rungs.setdefault(self.index(trial.trial_id), Rung(self.index(trial.trial_id)))
        rung.complete = bool(result) and int(result.get(self.time_attr, 0)) >= self.rule.max_resource
        rung.paused_at = None
        self.running.discard(rung.number)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.on_trial_error(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        number = self.index(trial.trial_id)
        if number in self.rungs and trial.status != Trial.PAUSED:
            self.rungs[number].paused_at = None
            self.running.discard(number)

    def choose_trial_to_run(self, tune_controller: Any) -> Optional[Trial]:
        """The next job of :meth:`PromotionASHA.next_job`: a paused trial to promote, a pending one
        to start, or None; at the search's end, the paused trials left are stopped."""
        trials = tune_controller.get_trials()
        busy = {n: self.until[n] for n in self.running}
        started = [self.rungs[n] for n in self.until if n in self.rungs]
        job = self.rule.next_job(started, len(self.until), self.num_samples, busy, self.mode != "min")
        if job is not None and job.number is not None:
            trial = self.trials.get(job.number)
            if trial is not None and trial.status in (Trial.PAUSED, Trial.PENDING):  # PENDING: restored (tune.resume)
                log.info("trial %d promoted: resumed after epoch %d, to train until epoch %d", job.number,
                         self.rungs[job.number].paused_at, job.until)
                self.until[job.number] = job.until
                self.rungs[job.number].paused_at = None
                self.running.add(job.number)
                return trial
            return None
        if job is not None:  # a new trial, once Ray has made one
            pending = [t for t in trials if t.status == Trial.PENDING and self.index(t.trial_id) not in self.until]
            if not pending:
                return None
            trial = min(pending, key=lambda t: self.index(t.trial_id))
            self.until[self.index(trial.trial_id)] = job.until
            self.running.add(self.index(trial.trial_id))
            return trial
        if not busy and len(self.until) >= self.num_samples:  # the search is over: the paused ones end here
            for t in trials:
                if t.status == Trial.PAUSED or (t.status == Trial.PENDING and self.index(t.trial_id) in self.until):
                    self.rungs[self.index(t.trial_id)].paused_at = None
                    tune_controller.stop_trial(t)
        return None

    def seed(self, results: Path) -> int:
        """Refill what the scheduler knew from an interrupted search's ``results.jsonl`` (``tune.resume``):
        each trial's values by epochs; a trial that had not trained to its end waits at its last
        epoch (a paused trial, or one stopped mid-way: both continue from their checkpoints if promoted).

        Returns:
            The number of rows read (0 when the file is missing).
        """
        import json

        if not results.is_file():
            return 0
        count = 0
        for line in results.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed driver
                continue
            epochs, value = row.get(self.time_attr), row.get(self._metric)
            if "trial_id" not in row or not isinstance(epochs, int) or not isinstance(value, (int, float)):
                continue
            number = self.index(row["trial_id"])
            rung = self.rungs.setdefault(number, Rung(number))
            rung.values[epochs] = float(value)
            self.until[number] = max(self.until.get(number, 0), epochs)
            rung.complete = max(rung.values) >= self.rule.max_resource
            rung.paused_at = None if rung.complete else max(rung.values)
            count += 1
        return count

    def debug_string(self) -> str:
        waiting = sum(1 for r in self.rungs.values() if r.paused_at is not None)
        return (f"ASHA with promotions: rungs {self.rule.rungs} epochs, {len(self.until)}/{self.num_samples} trials "
                f"started, {waiting} paused")
