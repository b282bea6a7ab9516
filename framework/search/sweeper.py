"""``hydra/sweeper=lr_search``: a Hydra sweeper on current Optuna (>= 4) whose jobs report their
validation metric after every epoch and are pruned when the study's pruner says so.

Hydra loads sweepers only from the ``hydra_plugins`` package; the class it finds there
(``hydra_plugins.lrframe_search.LRSearchSweeper``) is this one, renamed.

How a sweep runs: the study (``hydra.sweeper.study_name``) is created in, or loaded from, the
storage (``hydra.sweeper.storage``: null = ``<sweep folder>/optuna_journal.log``); the trials are
asked ``n_jobs`` at a time and launched together through the configured launcher (basic,
joblib, submitit), job number = trial number, so ``<sweep folder>/<n>`` is trial ``n``; each job
reports to its trial (:class:`~framework.search.study.OptunaTrial`) and tells it when pruned;
the sweeper tells the others how they ended (``COMPLETE`` with the returned objective, ``FAIL``
for a failed or stopped job). With ``hydra/sweeper/pruner=asha_promotion`` the jobs are chosen by
:func:`framework.search.promotion.sweep_with_promotions` instead: a trial pauses at each rung and
its job is launched again when it is promoted. Rerunning the same command with ``hydra.sweep.dir=<that folder>``
resumes the study: its finished trials count towards ``n_trials``; trials an interrupted sweep
left running are marked failed and run again with the same parameters.

Source: the sweeper API of Hydra 1.3 (``hydra.plugins.sweeper.Sweeper``, as
``hydra_plugins.hydra_optuna_sweeper`` uses it); Optuna's ask-and-tell interface
(``Study.ask``/``Study.tell``) and its pruning protocol (``Trial.report``/``Trial.should_prune``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError
from framework.search.budget import budget_error, record_spent, spent_runs, trials_that_fit
from framework.search.study import counted, interrupted, tell_state

log = logging.getLogger(__name__)

__all__ = ["LRSearchSweeperImpl"]

#: The objective directions a study takes.
DIRECTIONS = ("maximize", "minimize")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


class LRSearchSweeperImpl(Sweeper):
    """The ``lr_search`` sweeper (configured in ``conf/hydra/sweeper/lr_search.yaml``).

    Args:
        sampler: ``_target_`` config of an Optuna sampler (``hydra/sweeper/sampler=tpe|cmaes|
            random|grid|nsgaii|mutation``); a grid sampler without ``search_space`` gets the
            listed values of ``params``; the mutation sampler without ``x0`` starts from the
            composed config's values.
        pruner: ``_target_`` config of an Optuna pruner (``hydra/sweeper/pruner=median|
            successive_halving|hyperband|none``), rebuilt by every job from ``study.json``; or
            ``asha_promotion`` (:mod:`framework.search.promotion`: the sweeper pauses trials at
            rungs and promotes them).
        direction: ``maximize`` | ``minimize`` (default: the task's ``mode``; the objective is
            the best value of ``task.monitor``).
        study_name: the study's name in the storage (resume: the same name).
        storage: null (a journal file in the sweep folder), ``journal:<file>``, or a database
            URL (``sqlite:///...``, ``postgresql://...``) for jobs on several machines.
        n_trials: (trials) in the study in all, those of a resumed sweep included.
        n_jobs: (trials) asked and launched at once (the launcher runs them; e.g.
            ``hydra/launcher=joblib hydra.launcher.n_jobs=2``).
        budget_runs: (full runs) the steps the sweep may spend: the sum over its trials of each
            one's steps / planned steps; a trial is launched only while a full run still fits
            (:mod:`framework.search.budget`); null = no cap.
        params: key -> Hydra sweep string (``tag(log, interval(1e-4, 1))``, ``choice(a, b)``,
            ``range(1, 5)``); keys swept on the command line join them.

    Raises:
        ConfigError: (at :meth:`sweep`, before any job) a bad ``direction``, ``n_trials`` or
            ``n_jobs``, ``budget_runs``, a parameter Hydra cannot parse, a grid over an interval, a
            storage that cannot be opened, a bad ``asha_promotion`` value or that pruner without checkpoints;
            each in one line naming the key.
    """

    tell_state = staticmethod(tell_state)  # for framework.search.promotion, which does not import the study module

    def __init__(self, sampler: Any = None, pruner: Any = None, direction: str = "maximize",
                 study_name: str = "lr_search", storage: Optional[str] = None, n_trials: int = 20, n_jobs: int = 1,
                 params: Any = None, budget_runs: Optional[float] = None):
        self.sampler_cfg, self.pruner_cfg = _plain(sampler), _plain(pruner)
        self.direction, self.study_name, self.storage = str(direction), str(study_name), storage
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, _plain(params) or {}
        self.budget_runs = budget_runs
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        """Keep the config and instantiate the launcher (Hydra's sweeper protocol)."""
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # -- checks and the study -----------------------------------------------------------------

    def _check(self) -> None:
        errors = []
        if self.direction not in DIRECTIONS:
            errors.append(f"hydra.sweeper.direction={self.direction}: use maximize or minimize")
        for key, value in (("n_trials", self.n_trials), ("n_jobs", self.n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"hydra.sweeper.{key}={value}: must be an integer >= 1")
        errors += [e for e in [budget_error(self.budget_runs)] if e]
        if errors:
            raise ConfigError(errors)

    def _sampler(self, space: Any, seed_offset: int = 0) -> Any:
        """The sampler of ``hydra.sweeper.sampler``; ``seed_offset`` (the trials a resumed study
        holds) is added to its seed, so a resumed sweep does not draw the first sweep's values
        again, and a rerun of the same resume draws the same ones; not a grid's (its seed orders
        the grid, and its trials hold their place in that order)."""
        from hydra.utils import instantiate

        cfg = dict(self.sampler_cfg or {"_target_": "optuna.samplers.TPESampler"})
        grid = str(cfg.get("_target_", "")).endswith("GridSampler")
        if seed_offset and cfg.get("seed") is not None and not grid:  # a grid's seed orders it: trials keep their points
            cfg["seed"] = int(cfg["seed"]) + seed_offset
        if grid and not cfg.get("search_space"):
            cfg["search_space"] = space.grid()
        if str(cfg.get("_target_", "")).endswith("MutationSampler") and cfg.get("x0") is None and self.config is not None:
            cfg["x0"] = {k: OmegaConf.select(self.config, k, default=None) for k in space.distributions}
        try:
            return instantiate(cfg)
        except Exception as exc:
            raise ConfigError(f"hydra.sweeper.sampler: {cfg.get('_target_')} could not be built "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); check its keys") from None

    def _open_study(self, sweep_dir: Path, space: Any) -> tuple[Any, str]:
        """The study, created or loaded; the sweep folder is made only once the sampler, the
        pruner and a database storage are known to work (a mistake leaves nothing behind). A new
        sweep folder does not join a study that already has trials (a database or journal shared
        by several sweeps, whose presets share a ``study_name``): refused in one line."""
        import optuna

        from framework.search.study import SPEC_NAME, build_pruner, open_storage, storage_url

        url = storage_url(self.storage, sweep_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            pruner = build_pruner(self.pruner_cfg)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"hydra.sweeper.pruner: {(self.pruner_cfg or {}).get('_target_')} could not be built "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); check its keys") from None
        sampler = self._sampler(space)
        storage = None if url.startswith("journal:") else open_storage(url)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage or open_storage(url),
                                        sampler=sampler, pruner=pruner, direction=self.direction, load_if_exists=True)
        except ValueError as exc:  # e.g. an existing study with another direction
            raise ConfigError(f"hydra.sweeper.study_name={self.study_name}: {exc}; use another study_name or "
                              "sweep folder") from None
        if study.trials and not (sweep_dir / SPEC_NAME).is_file():  # a shared storage: another folder's study
            folders = sorted({str(Path(t.user_attrs["run_dir"]).parent) for t in study.trials if "run_dir" in t.user_attrs})
            resume = f"of {folders[0]}); resume it with hydra.sweep.dir={folders[0]}" if folders else \
                "of another sweep); resume it from that sweep's folder"
            raise ConfigError(f"hydra.sweeper.study_name={self.study_name}: {url} already holds this study "
                              f"({len(study.trials)} trial(s), {resume}, or start a new one with "
                              "hydra.sweeper.study_name=<another name>")
        if study.trials and (self.sampler_cfg or {}).get("seed") is not None:  # a resumed study: new draws
            study.sampler = self._sampler(space, seed_offset=len(study.trials))
        if study.direction.name.lower() != self.direction:
            raise ConfigError(f"hydra.sweeper.direction={self.direction}: study {self.study_name} in {url} was "
                              f"created to {study.direction.name.lower()}; use another study_name")
        return study, url

    # -- the sweep ----------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[Sequence[Any]]:
        """Run the study's trials in batches of ``n_jobs`` until ``n_trials`` have ended.

        Returns:
            The launcher's job returns, one list per batch (Hydra's convention).

        Raises:
            ConfigError: a mistake found before any job (see the class); the sweep folder, when
                this sweep reserved it and left it empty, is removed.
        """
        sweep_dir = Path(str(self.config.hydra.sweep.dir)) if self.config is not None else None
        try:
            return self._sweep(arguments)
        except ConfigError:
            if sweep_dir is not None and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
                sweep_dir.rmdir()  # reserved by ${unique_dir:...} for this sweep; nothing was run
            raise

    def _sweep(self, arguments: list[str]) -> list[Sequence[Any]]:
        """:meth:`sweep`'s body."""
        from framework.search.space import parse_space
        from framework.search.study import SPEC_NAME, refuse_other_sweeps, requeue_interrupted, write_best

        assert self.config is not None and self.launcher is not None
        try:
            import optuna
        except ImportError:
            raise ConfigError("hydra/sweeper=lr_search: needs Optuna (>= 4); pip install 'lrframe[search]'") from None
        if int(optuna.__version__.split(".")[0]) < 4:
            raise ConfigError(f"hydra/sweeper=lr_search: needs Optuna >= 4, found {optuna.__version__}; "
                              "pip install -U 'optuna>=4'")
        from framework.search.folders import rerun_folder
        from framework.search.promotion import check_promotion, is_promotion, sweep_with_promotions

        self._check()
        space = parse_space(self._known_params(arguments), arguments)
        if not space.distributions:
            raise ConfigError("hydra.sweeper.params: nothing to search; give a key a range, e.g. "
                              "'lr0=tag(log, interval(1e-4, 1))' on the command line, or use a preset "
                              "(hparams_search=lr_asha|lr_tpe|lr_evolve)")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if is_promotion(self.pruner_cfg):
            check_promotion(self.pruner_cfg, self.config, space, self.budget_runs)
        refuse_other_sweeps(sweep_dir, self.study_name, self.storage)
        spec_path = sweep_dir / SPEC_NAME
        # a key Hydra cannot compose fails here, before the study or the folder exist
        self.validate_batch_is_legal([[*space.overrides(space.probe()), self.search_override(spec_path, 0)]])
        study, url = self._open_study(sweep_dir, space)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        spec = {"study_name": self.study_name, "storage": url, "pruner": self.pruner_cfg, "direction": self.direction,
                "n_trials": self.n_trials, "grid_size": space.size(), "budget_runs": self.budget_runs}
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
        requeue_interrupted(study)
        target = self.n_trials
        if str((self.sampler_cfg or {}).get("_target_", "")).endswith("GridSampler"):
            target = min(target, space.size() or target)
        done = counted(study)
        waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))  # at a rung
        if done or waiting:
            log.info("study %s resumed from %s: %d trial(s) kept (%d waiting at a rung), %d to start", self.study_name,
                     url, done + waiting, waiting, max(target - done - waiting, 0))
        if is_promotion(self.pruner_cfg):
            returns = sweep_with_promotions(self, study, space, spec_path, target)
        else:
            returns = []
            while done < target:
                fit = trials_that_fit(self.budget_runs, spent_runs(study) if self.budget_runs is not None else 0.0)
                if not fit:
                    log.info("budget spent: %.2f of %s full runs (hydra.sweeper.budget_runs), %d of %d trials run",
                             spent_runs(study), self.budget_runs, done, target)
                    break
                trials = [study.ask(space.distributions) for _ in range(min(self.n_jobs, target - done, fit))]
                items = [(t, None, rerun_folder(study, t, sweep_dir)) for t in trials]
                results, statuses = self.launch_trials(study, space, spec_path, items)
                returns += results
                done = counted(study)
                if "stopped" in statuses.values():
                    self.say_stopped(sweep_dir)
                    break
        write_best(study, sweep_dir)
        return returns

    def launch_trials(self, study: Any, space: Any, spec_path: Path,
                      trials: list[tuple[Any, Optional[int], Optional[str]]]) -> tuple[list[Any], dict[int, Any]]:
        """Launch trials, each with the epochs it pauses at (None: to its end) and its folder under
        the sweep folder (None: where the sweep's ``hydra.sweep.subdir`` puts it, job n = trial n;
        a folder: a promotion's, or an interrupted run's that a rerun continues), and tell the
        study how they ended. Trials without a folder go in one launch per run of consecutive
        numbers (trials numbered apart, another sweeper's on the same study, go one by one); when
        any has one and the sweep's folders are numbered (``${hydra.job.num}``), all go in one
        launch, every job placed by ``hydra.sweep.subdir`` (a new trial's: its number); else those
        with a folder go in a launch of their own. No launch follows a job stopped on a signal.

        Returns:
            The launches' job returns, one list per launch; trial number -> the status :meth:`tell`
            returned (``stopped``: stopped on a signal, SIGTERM / Ctrl-C, so the sweep stops too;
            rerunning its command resumes it).
        """
        from framework.search.folders import numbered_subdirs
        from framework.search.space import override_value

        groups: list[list[tuple[Any, Optional[int], Optional[str]]]] = []
        placed = [item for item in trials if item[2] is not None]
        if placed and numbered_subdirs(self.config):
            groups = [[(t, until, subdir if subdir is not None else str(t.number)) for t, until, subdir in trials]]
        else:
            for item in trials:
                if item[2] is not None:
                    continue
                if groups and item[0].number == groups[-1][-1][0].number + 1:
                    groups[-1].append(item)
                else:
                    groups.append([item])
            groups += [placed] if placed else []
        returns, statuses = [], {}
        for group in groups:
            if "stopped" in statuses.values():
                break
            batch = [[*space.overrides(t.params), self.search_override(spec_path, t.number, until),
                      *([f"hydra.sweep.subdir={override_value(subdir)}"] if subdir is not None else [])]
                     for t, until, subdir in group]
            results = self.launcher.launch(batch, initial_job_idx=group[0][0].number)
            statuses.update({t.number: self.tell(study, t, r) for (t, _, _), r in zip(group, results)})
            returns.append(results)
        return returns, statuses

    @staticmethod
    def say_stopped(sweep_dir: Path) -> None:
        """Log that a job stopped on a signal (SIGTERM / Ctrl-C), so the sweep stops too, and how to resume it."""
        log.warning("a trial was stopped: the sweep stops; the same command with hydra.sweep.dir=%s resumes it",
                    sweep_dir)

    def _known_params(self, arguments: list[str]) -> dict[str, Any]:
        """``params`` without the keys this run's config lacks (a preset's ``optimizer.momentum``
        under ``optimizer=adamw``), each dropped with a warning; keys given on the command line,
        and ``+key`` additions, are kept (a misspelling there is the user's, and is refused)."""
        given = {a.split("=", 1)[0].lstrip("+~") for a in arguments}
        absent = object()
        kept = {}
        for key, value in self.params.items():
            name = str(key)
            if name in given or name.startswith("+") or OmegaConf.select(self.config, name, default=absent) is not absent:
                kept[key] = value
            else:
                log.warning("hydra.sweeper.params.%s: not a key of this run's config; not searched", name)
        return kept

    @staticmethod
    def search_override(spec_path: Path, number: int, until: Optional[int] = None) -> str:
        """The ``search=`` override of trial ``number``'s job; ``until`` (epochs): the rung it pauses
        at (ASHA with promotions), None to train to its end."""
        from framework.search.space import override_value

        pause = f",pause_at:{until}" if until is not None else ""
        return (f"search={{_target_:framework.search.study.OptunaTrial,"
                f"study:{override_value(str(spec_path.resolve()))},trial:{number}{pause}}}")

    def tell(self, study: Any, trial: Any, result: Any) -> Optional[str]:
        """Tell the study how a job ended, unless the job already did (pruned, diverged): its
        objective (completed), pruned (diverged), failed (failed; stopped on a signal: failed and
        marked ``interrupted``, its parameters queued to run again), nothing for a job paused at a
        rung (ASHA with promotions: the trial waits, running, user attribute ``paused_at``) or a
        promoted one stopped on a signal (it waits at its rung). Returns the job's status, or
        ``paused``."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        from framework.loggers import read_summary

        run_dir = None
        try:
            run_dir = Path(str(result.hydra_cfg.hydra.runtime.output_dir))
        except Exception:  # a launcher that returns no config
            pass
        summary = read_summary(run_dir) if run_dir is not None else {}
        status = summary.get("status") or ("failed" if result.status == JobStatus.FAILED else None)
        record_spent(study, trial, run_dir)
        if study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            return status  # the job told it (pruned, diverged)
        if run_dir is not None:
            study._storage.set_trial_user_attr(trial._trial_id, "run_dir", str(run_dir))
        rung = (summary.get("pruned") or {}).get("rung") if status == "pruned" else None
        if rung is not None:  # paused at a rung (ASHA with promotions): it waits, still running
            study._storage.set_trial_user_attr(trial._trial_id, "paused_at", int(rung))
            return "paused"
        if status == "stopped" and trial.user_attrs.get("paused_at") is not None:
            return status  # promoted, then stopped on a signal: it waits at its rung; a resumed sweep promotes it again
        if status is not None:
            study._storage.set_trial_user_attr(trial._trial_id, "status", status)
        value = result._return_value if result.status == JobStatus.COMPLETED else None
        if status == "diverged":
            tell_state(study, trial, state=TrialState.PRUNED)
        elif result.status == JobStatus.COMPLETED and status in ("completed", None) and isinstance(value, (int, float)) \
                and math.isfinite(value):
            tell_state(study, trial, float(value))
        else:
            if result.status == JobStatus.FAILED:
                log.warning("trial %d failed: %s", trial.number, result._return_value)
            if status == "stopped":  # resumable, not a result: it does not count, and runs again
                interrupted(study, trial)
            else:
                tell_state(study, trial, state=TrialState.FAIL)
        return status
