"""ASHA with promotions for the Optuna sweeper (``hydra/sweeper/pruner=asha_promotion``): successive
halving whose trials pause at each rung and are resumed from their checkpoints when promoted, so
the steps a search spends are bounded whatever order good learning rates come in.

The stopping form of ASHA (Optuna's ``SuccessiveHalvingPruner``, Ray's ``ASHAScheduler``) decides
when a trial reaches a rung: the first trials to arrive go on while they lead, and in some draws
three or more of 9 trials train to the end. Here a trial launched to a rung trains until it,
saves its checkpoint and pauses (its job ends with status ``pruned`` and ``pruned.rung``; its
Optuna trial stays running, user attribute ``paused_at``); the sweeper chooses the next jobs by
the rule of :mod:`framework.search.rungs` and launches a promoted trial's job again into its own
folder, where it resumes the paused run (:func:`framework.resume.resume_requeued_job`). When the
search is over, the trials still waiting are told to the study as pruned.

Source: Li et al. 2020, Algorithm 2, with the budget bound of :mod:`framework.search.rungs`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from optuna.pruners import BasePruner

from framework.search.folders import subdir_of
from framework.search.rungs import PromotionRule, TrialRecord

log = logging.getLogger(__name__)

__all__ = ["PromotionASHA", "check_promotion", "is_promotion", "records", "sweep_with_promotions"]


def is_promotion(pruner_cfg: Optional[dict[str, Any]]) -> bool:
    """Whether ``hydra.sweeper.pruner`` (a ``_target_`` config) is :class:`PromotionASHA`."""
    return str((pruner_cfg or {}).get("_target_", "")).endswith("PromotionASHA")


def check_promotion(pruner_cfg: dict[str, Any], config: Any, space: Any, budget_runs: Optional[float]) -> None:
    """Refuse, before any job, what :class:`PromotionASHA` cannot run: a sweep without checkpoints
    (a promoted trial resumes from its own), a ``hydra.sweeper.budget_runs`` (the rule bounds the
    steps itself), a ``max_resource`` other than the trials' ``epochs`` (the last rung is a full
    run; not checked when ``epochs`` is searched).

    Args:
        pruner_cfg: ``hydra.sweeper.pruner`` (resolved: ``max_resource`` is the number).
        config: the composed config (``trainer.save_checkpoints``, ``epochs``).
        space: the search space (:class:`~framework.search.space.SearchSpace`): a searched or
            fixed ``epochs`` is the trials'.
        budget_runs: ``hydra.sweeper.budget_runs`` (full runs; None = no cap).

    Raises:
        ConfigError: one line naming the key and the fix.
    """
    from omegaconf import OmegaConf

    from framework.errors import ConfigError

    if OmegaConf.select(config, "trainer.save_checkpoints") is False:
        raise ConfigError("trainer.save_checkpoints=false: hydra/sweeper/pruner=asha_promotion resumes a promoted "
                          "trial from its checkpoint; drop it, or use hydra/sweeper/pruner=successive_halving")
    if budget_runs is not None:
        raise ConfigError(f"hydra.sweeper.budget_runs={budget_runs}: hydra/sweeper/pruner=asha_promotion bounds the "
                          "steps itself (n_trials and its rungs); set hydra.sweeper.budget_runs=null, or use "
                          "another pruner")
    if "epochs" in space.distributions:  # searched: each trial plans its own; the last rung is the user's call
        return
    rule = PromotionASHA(**{k: v for k, v in pruner_cfg.items() if k != "_target_"})  # its own one-line checks
    epochs = OmegaConf.select(config, "epochs")
    for fixed in space.fixed:  # epochs=<n> in hydra.sweeper.params: every trial's
        key, _, value = fixed.partition("=")
        if key.lstrip("+") == "epochs" and value.strip().isdigit():
            epochs = int(value)
    last = rule.max_resource
    if last != epochs:
        raise ConfigError(f"hydra.sweeper.pruner.max_resource={last}: the last rung is a full run, the trials' "
                          f"epochs={epochs}; set hydra.sweeper.pruner.max_resource='${{epochs}}'")


class PromotionASHA(PromotionRule, BasePruner):
    """:class:`~framework.search.rungs.PromotionRule` as an Optuna pruner that prunes nothing
    itself (the sweeper pauses and promotes), so the study and its jobs can carry it.

    Args:
        min_resource: (epochs) of the first rung, >= 1.
        reduction_factor: eta, an integer >= 2.
        max_resource: (epochs) of a full trial (``${epochs}``), >= min_resource.

    Raises:
        ConfigError: a value out of range (names the key under ``hydra.sweeper.pruner``).
    """

    def __init__(self, min_resource: int = 1, reduction_factor: int = 4, max_resource: int = 16):
        super().__init__(min_resource, reduction_factor, max_resource, prefix="hydra.sweeper.pruner")

    def prune(self, study: Any, trial: Any) -> bool:
        """Never: a trial pauses at the rung it was launched to (``OptunaTrial(pause_at=...)``)."""
        return False


def records(study: Any) -> list[TrialRecord]:
    """:class:`~framework.search.rungs.TrialRecord` of a study's trials from its storage: complete
    ones, pruned or failed ones that reported, and those waiting at a rung (running, user
    attribute ``paused_at``); ``until`` from the user attribute the sweeper sets at each launch;
    interrupted and queued trials are left out."""
    from optuna.trial import TrialState

    kept = []
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)  # not WAITING (queued)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.user_attrs.get("interrupted"):
            continue
        paused = t.user_attrs.get("paused_at") if t.state == TrialState.RUNNING else None
        until = t.user_attrs.get("until")
        kept.append(TrialRecord(t.number, {int(k): float(v) for k, v in t.intermediate_values.items()},
                                int(paused) if paused is not None else None, t.state == TrialState.COMPLETE,
                                int(until) if until is not None else None))
    return kept


def sweep_with_promotions(sweeper: Any, study: Any, space: Any, spec_path: Path, target: int) -> list[Any]:
    """The sweep of :class:`PromotionASHA`: batches of up to ``hydra.sweeper.n_jobs`` jobs chosen by
    :meth:`~framework.search.rungs.PromotionRule.next_job` and launched by the sweeper's
    :meth:`~framework.search.sweeper.LRSearchSweeperImpl.launch_trials` (a promotion into its own
    folder, ``hydra.sweep.subdir``); a promoted job that trained nothing (it failed before
    training) is told failed; at the end, the trials still waiting are told pruned.

    Args:
        sweeper: the ``lr_search`` sweeper (its ``n_jobs``, ``direction``, config and launcher).
        study: the study, its pruner a :class:`PromotionASHA`.
        space: the search space (:mod:`framework.search.space`).
        spec_path: the sweep's ``study.json``.
        target: (trials) to start in all.

    Returns:
        The launcher's job returns, one list per launch.
    """
    from optuna.trial import TrialState

    rule: PromotionASHA = study.pruner
    maximize = sweeper.direction == "maximize"
    returns: list[Any] = []
    while True:
        trials = records(study)
        busy: set[int] = set()
        items: list[tuple[Any, Optional[int], Optional[str]]] = []  # (trial, pause at, folder)
        for _ in range(sweeper.n_jobs):
            job = rule.next_job(trials, len(trials), target, busy, maximize)
            if job is None:
                break
            if job.number is None:
                trial, subdir = study.ask(space.distributions), None
                trials.append(TrialRecord(trial.number, until=job.until))
            else:
                trial = next(t for t in study.get_trials(deepcopy=False) if t.number == job.number)
                subdir = subdir_of(trial, spec_path.parent)
                log.info("trial %d promoted: resumed after epoch %d, to train until epoch %d", trial.number,
                         max(trial.intermediate_values, default=0), job.until)
            study._storage.set_trial_user_attr(trial._trial_id, "until", job.until)
            busy.add(trial.number)
            items.append((trial, job.until if job.until < rule.max_resource else None, subdir))
        if not items:
            break
        before = {t.number: _state_of(t) for t, _, subdir in items if subdir is not None}
        results, statuses = sweeper.launch_trials(study, space, spec_path, items)
        returns += results
        for number in _fail_stalled(sweeper, study, before):
            statuses.pop(number, None)  # its folder's summary is an earlier segment's: not what its job did
        if "stopped" in statuses.values():
            sweeper.say_stopped(spec_path.parent)
            return returns
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("paused_at") is not None:  # never promoted: pruned at its rung
            study._storage.set_trial_user_attr(t._trial_id, "status", "pruned")
            sweeper.tell_state(study, t.number, state=TrialState.PRUNED)
    return returns


def _state_of(trial: Any) -> tuple[int, Any]:
    """What shows that a promoted trial's job trained: the epochs it reported, its folder's summary."""
    from framework.loggers import read_summary

    return max(trial.intermediate_values, default=0), read_summary(Path(trial.user_attrs["run_dir"]))


def _fail_stalled(sweeper: Any, study: Any, before: dict[int, tuple[int, Any]]) -> list[int]:
    """Promoted trials whose job reported no epoch and left their folder's summary as it was (it
    failed before training: a resume refused, the study unreachable) are told failed, so the sweep
    does not promote them again and again. Returns their numbers."""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in before and _state_of(t) == before[t.number]:
            log.warning("trial %d: its promoted job trained nothing (see %s): failed", t.number,
                        t.user_attrs.get("run_dir"))
            study._storage.set_trial_user_attr(t._trial_id, "status", "failed")
            sweeper.tell_state(study, t.number, state=TrialState.FAIL)
            failed.append(t.number)
    return failed
