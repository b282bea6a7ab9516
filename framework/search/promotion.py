"""ASHA with promotions (``hydra/sweeper/pruner=asha_promotion``): successive halving whose trials
pause at each rung and are resumed from their checkpoints when promoted, so the steps a search
spends are bounded whatever order good learning rates come in.

The stopping form of ASHA (Optuna's ``SuccessiveHalvingPruner``, Ray's ``ASHAScheduler``) decides
when a trial reaches a rung: the first trials to arrive go on while they lead, and in some draws
three or more of 9 trials train to the end. Here a trial launched to rung ``k`` trains until
``rungs[k]`` epochs, saves its checkpoint and pauses (its job ends with status ``pruned``); the
sweeper then chooses the next job as Algorithm 2 of the paper does:

1. from the highest rung down, while fewer than ``floor(n_k / eta)`` of the ``n_k`` trials that
   reached rung ``k`` have gone on to rung ``k + 1``, the best trial waiting at rung ``k`` among
   its top ``floor(n_k / eta)`` is promoted: its job is launched again into its folder and
   resumes from its checkpoint (exactly, as ``resume=`` does) up to rung ``k + 1``;
2. else a new trial is asked from the sampler, up to ``n_trials``;
3. else, once nothing runs and no trial has trained to ``max_resource``, the best trial of the
   highest rung any waiting trial reached is promoted (a finite search ends with a trained run).

Rungs: ``min_resource * eta^k`` epochs below ``max_resource``, then ``max_resource``. With ``n``
trials at most ``floor(n / eta)`` reach the second rung, ``floor(floor(n / eta) / eta)`` the
third, and so on, plus the one trial of rule 3: 9 trials, rungs 1, 4, 16 epochs, spend at most
9 x 1 + 2 x 3 + 1 x 12 = 27 epochs, 18.75% of a 9-point grid of 16-epoch runs.

Source: Li et al., "A System for Massively Parallel Hyperparameter Tuning" (MLSys 2020),
Algorithm 2 (``get_job``, promotions from the top rung down; the same form is Syne Tune's
``HyperbandScheduler(type="promotion")``). Two rules are ours, for a search with a fixed number of
trials: the count of promotions out of a rung (the paper promotes any waiting trial in the current
top ``1/eta``, so trials that improve one after another, as a sampler that learns proposes them,
can all be promoted), and rule 3.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from optuna.pruners import BasePruner

from framework.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PromotionASHA", "Rung", "Job", "is_promotion"]


def is_promotion(pruner_cfg: Optional[dict[str, Any]]) -> bool:
    """Whether ``hydra.sweeper.pruner`` (a ``_target_`` config) is :class:`PromotionASHA`."""
    return str((pruner_cfg or {}).get("_target_", "")).endswith("PromotionASHA")


@dataclass
class Rung:
    """What the scheduler knows of one trial.

    Attributes:
        number: the trial's number.
        values: epochs trained -> the monitored validation value reported then.
        paused_at: (epochs) the rung it waits at, or None (running, or ended).
        complete: it trained its full budget.
    """

    number: int
    values: dict[int, float] = field(default_factory=dict)
    paused_at: Optional[int] = None
    complete: bool = False


@dataclass
class Job:
    """The next job: a new trial (``number`` None) or a promotion, to train until ``until`` epochs."""

    number: Optional[int]
    until: int


class PromotionASHA(BasePruner):
    """The scheduler of ASHA with promotions; an Optuna pruner that prunes nothing itself (the
    sweeper pauses and promotes, see the module), so the study and its jobs can carry it.

    Args:
        min_resource: (epochs) of the first rung, >= 1.
        reduction_factor: eta, >= 2: one trial in eta of a rung is promoted to the next.
        max_resource: (epochs) of a full trial (``${epochs}``), >= min_resource.

    Raises:
        ConfigError: a value out of range (names the key under ``hydra.sweeper.pruner``).
    """

    def __init__(self, min_resource: int = 1, reduction_factor: int = 4, max_resource: int = 16):
        errors = []
        for key, value, low in (("min_resource", min_resource, 1), ("reduction_factor", reduction_factor, 2),
                                ("max_resource", max_resource, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                errors.append(f"hydra.sweeper.pruner.{key}={value}: must be an integer >= {low}")
        if not errors and max_resource < min_resource:
            errors.append(f"hydra.sweeper.pruner.max_resource={max_resource}: must be >= min_resource ({min_resource})")
        if errors:
            raise ConfigError(errors)
        self.min_resource, self.eta, self.max_resource = min_resource, reduction_factor, max_resource

    def prune(self, study: Any, trial: Any) -> bool:
        """Never: a trial pauses at the rung it was launched to (``OptunaTrial(pause_at=...)``)."""
        return False

    @property
    def rungs(self) -> list[int]:
        """(epochs) ``min_resource * eta^k`` below ``max_resource``, then ``max_resource``: 1, 4, 16 for
        1, 4, 16; 1, 4, 9 for 1, 4, 9."""
        rungs, epochs = [], self.min_resource
        while epochs < self.max_resource:
            rungs.append(epochs)
            epochs *= self.eta
        return [*rungs, self.max_resource]

    @staticmethod
    def value_at(trial: Rung, epochs: int) -> Optional[float]:
        """The value ``trial`` reported at the first validated epoch count >= ``epochs`` (a run
        validated every epoch: at ``epochs``), or None when it never got there."""
        reached = [e for e in trial.values if e >= epochs]
        return trial.values[min(reached)] if reached else None

    def _ranked(self, trials: list[Rung], epochs: int, maximize: bool) -> list[Rung]:
        """The trials that reached ``epochs``, best first (ties: the lower number first)."""
        at = [(self.value_at(t, epochs), t.number, t) for t in trials]
        at = [(v, n, t) for v, n, t in at if v is not None]
        at.sort(key=lambda x: (-x[0] if maximize else x[0], x[1]))
        return [t for _, _, t in at]

    def next_job(self, trials: list[Rung], started: int, n_trials: int, busy: dict[int, int],
                 maximize: bool) -> Optional[Job]:
        """The next job (see the module's rules 1-3), or None when there is none now.

        Args:
            trials: every trial of the study that reported or waits (not the interrupted ones).
            started: trials asked so far, the new ones in ``busy`` included.
            n_trials: the search's number of trials.
            busy: trial number -> epochs it trains until, for the jobs chosen for the batch being formed.
            maximize: the objective's direction.
        """
        rungs = self.rungs
        for k in range(len(rungs) - 2, -1, -1):  # rule 1, the highest rung first
            ranked = self._ranked(trials, rungs[k], maximize)
            slots = len(ranked) // self.eta - sum(1 for t in trials if self.value_at(t, rungs[k + 1]) is not None) \
                - sum(1 for until in busy.values() if until == rungs[k + 1])
            for trial in ranked[:len(ranked) // self.eta] if slots > 0 else []:
                if trial.paused_at is not None and trial.number not in busy and rungs[k] <= trial.paused_at < rungs[k + 1]:
                    return Job(trial.number, rungs[k + 1])
        if started < n_trials:  # rule 2
            return Job(None, rungs[0])
        if busy or any(t.complete for t in trials):
            return None
        waiting = [t for t in trials if t.paused_at is not None]
        if not waiting:
            return None
        top = max(t.paused_at for t in waiting)  # rule 3
        best = self._ranked([t for t in waiting if t.paused_at == top], top, maximize)[0]
        return Job(best.number, next((r for r in rungs if r > top), rungs[-1]))


def ladder(study: Any) -> list[Rung]:
    """:class:`Rung` records of a study's trials from its storage: complete ones, pruned or failed
    ones that reported, and those waiting at a rung (running, user attribute ``paused_at``);
    interrupted trials are left out."""
    from optuna.trial import TrialState

    records = []
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)  # not WAITING (queued)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.user_attrs.get("interrupted"):
            continue
        paused = t.user_attrs.get("paused_at") if t.state == TrialState.RUNNING else None
        records.append(Rung(t.number, {int(k): float(v) for k, v in t.intermediate_values.items()},
                            int(paused) if paused is not None else None, t.state == TrialState.COMPLETE))
    return records


def run(sweeper: Any, study: Any, space: Any, spec_path: Path, target: int) -> list[Any]:
    """The sweep of :class:`PromotionASHA`: batches of up to ``hydra.sweeper.n_jobs`` jobs chosen by
    :meth:`PromotionASHA.next_job`, new trials launched as the sweeper launches any, promotions
    relaunched into their own folders (``hydra.sweep.subdir``), where each resumes its paused run
    (:func:`framework.resume.resume_requeued_job`);
    at the end, the trials still waiting are told to the study as pruned.

    Returns:
        The launcher's job returns, one list per launch.
    """
    from optuna.trial import TrialState

    scheduler: PromotionASHA = study.pruner
    maximize = sweeper.direction == "maximize"
    returns: list[Any] = []
    while True:
        trials = ladder(study)
        started = len(trials)
        busy: dict[int, int] = {}
        new, promoted = [], []
        for _ in range(sweeper.n_jobs):
            job = scheduler.next_job(trials, started + len(new), target, busy, maximize)
            if job is None:
                break
            if job.number is None:
                trial = study.ask(space.distributions)
                new.append((trial, job.until))
                busy[trial.number] = job.until
            else:
                promoted.append((next(t for t in study.get_trials(deepcopy=False) if t.number == job.number), job.until))
                busy[job.number] = job.until
        if not new and not promoted:
            break
        if promoted and _numbered_subdirs(sweeper.config):  # every job placed by its folder's name: one launch
            returns, stopped = _extend(returns, _launch(sweeper, study, space, spec_path, new + promoted))
        else:  # new trials where the sweep's subdir pattern puts them, then the promotions
            pause = [(t, until if until < scheduler.max_resource else None) for t, until in new]
            returns, stopped = _extend(returns, sweeper.launch_trials(study, space, spec_path, pause))
            if promoted and not stopped:
                returns, stopped = _extend(returns, _launch(sweeper, study, space, spec_path, promoted))
        if stopped:
            sweeper.say_stopped(spec_path.parent)
            return returns
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("paused_at") is not None:  # never promoted: pruned at its rung
            study._storage.set_trial_user_attr(t._trial_id, "status", "pruned")
            sweeper.tell_state(study, t.number, state=TrialState.PRUNED)
    return returns


def _extend(returns: list[Any], launched: tuple[list[Any], bool]) -> tuple[list[Any], bool]:
    return returns + launched[0], launched[1]


def _numbered_subdirs(config: Any) -> bool:
    """Whether the sweep's job folders are ``<sweep folder>/<job number>`` (Hydra's
    ``hydra.sweep.subdir: ${hydra.job.num}``, this package's default)."""
    from omegaconf import OmegaConf

    sweep = OmegaConf.to_container(config.hydra.sweep, resolve=False) if config is not None else {}
    return str(sweep.get("subdir")) == "${hydra.job.num}"


def _launch(sweeper: Any, study: Any, space: Any, spec_path: Path, jobs: list[tuple[Any, int]]) -> tuple[list[Any], bool]:
    """Launch new trials and promoted ones together, each into its own folder (``hydra.sweep.subdir``:
    a promoted trial's folder, where its job resumes the paused run; a new trial's number), each
    to train until its epochs; tell the study how they ended."""
    scheduler: PromotionASHA = study.pruner
    sweep_dir = spec_path.parent.resolve()
    batch = []
    for trial, until in jobs:
        folder = trial.user_attrs.get("run_dir")
        if folder is not None:  # promoted: it waits at a rung (and still does, for a resumed sweep, if stopped)
            log.info("trial %d promoted: resumed after epoch %d, to train until epoch %d", trial.number,
                     max(trial.intermediate_values, default=0), until)
        subdir = Path(folder).resolve().relative_to(sweep_dir) if folder is not None else trial.number
        batch.append([*space.overrides(trial.params),
                      sweeper.search_override(spec_path, trial.number, until if until < scheduler.max_resource else None),
                      f"hydra.sweep.subdir={subdir}"])
    results = sweeper.launcher.launch(batch, initial_job_idx=jobs[0][0].number)
    stopped = any([sweeper.tell(study, t, r) == "stopped" for (t, _), r in zip(jobs, results)])
    return [results], stopped
