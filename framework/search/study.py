"""The study a ``hydra/sweeper=lr_search`` sweep and its jobs share, and a job's side of it.

The sweeper writes ``<sweep folder>/study.json`` (the storage, the study's name, the pruner's
config, the direction) and passes each job ``search._target_=framework.search.study.OptunaTrial
search.study=<that file> search.trial=<trial number>``. The job opens the same storage, reports
its monitored validation value after every validated epoch (``Trial.report(value, epochs trained)``) and
stops when the pruner says so (``Trial.should_prune()``), telling the study the trial was pruned.
The sweeper tells the study how every other trial ended.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from framework.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["open_storage", "storage_url", "OptunaTrial", "refuse_other_sweeps", "write_best", "tell_state",
           "interrupted", "requeue_interrupted", "counted", "JOURNAL_NAME",
           "SPEC_NAME"]

#: The journal file of a sweep's study when ``hydra.sweeper.storage`` is null (in the sweep folder).
JOURNAL_NAME = "optuna_journal.log"
#: The file that names the study for the sweep's jobs (in the sweep folder).
SPEC_NAME = "study.json"


#: The pip package of each database driver SQLAlchemy may import for a storage URL (SQLAlchemy >= 2.1
#: takes psycopg 3 for ``postgresql://``; ``postgresql+psycopg2://`` asks for psycopg2).
DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
           "MySQLdb": "mysqlclient", "asyncpg": "asyncpg"}


def storage_url(storage: Optional[str], sweep_dir: Path) -> str:
    """The storage as stored in ``study.json``: ``journal:<absolute path>`` for a journal file (the
    default, ``<sweep_dir>/optuna_journal.log``; or ``journal:<path>``, or a path ending in
    ``.log``/``.journal``), else the database URL as given (``sqlite:///...``,
    ``postgresql://...``, ``mysql://...``).

    Raises:
        ConfigError: neither a URL nor a journal file (names ``hydra.sweeper.storage``).
    """
    if storage is None or str(storage).strip() == "":
        return f"journal:{(sweep_dir / JOURNAL_NAME).resolve()}"
    text = str(storage)
    if text.startswith("journal:"):
        return f"journal:{Path(text[len('journal:'):]).expanduser().resolve()}"
    if "://" not in text and text.endswith((".log", ".journal")):
        return f"journal:{Path(text).expanduser().resolve()}"
    if "://" not in text:
        raise ConfigError(f"hydra.sweeper.storage={text}: not a database URL nor a journal file; use null (a journal "
                          "in the sweep folder), journal:<file>, sqlite:///<file> or postgresql://<user>@<host>/<db>")
    return text


def open_storage(url: str) -> Any:
    """The Optuna storage behind :func:`storage_url`'s answer: a ``JournalStorage`` on a file
    (safe for parallel processes on one machine and on a shared file system: its lock is a
    symlink, which NFS honours) or Optuna's ``RDBStorage`` for a database URL.

    Raises:
        ConfigError: the database cannot be reached or its driver is missing (one line).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as exc:
        missing: Optional[BaseException] = exc  # Optuna re-raises SQLAlchemy's ModuleNotFoundError as its own
        while missing is not None and not getattr(missing, "name", None):
            missing = missing.__cause__ or missing.__context__
        module = str(getattr(missing, "name", None) or "").split(".")[0]
        package = DRIVERS.get(module, module or "the URL's driver")
        raise ConfigError(f"hydra.sweeper.storage={url}: needs the database driver {module or '(unknown)'} "
                          f"({missing or exc}); pip install {package}, or use null (a journal file in the sweep "
                          "folder)") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and the like
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"hydra.sweeper.storage={url}: cannot open the database ({first}); check the URL and that "
                          "the server answers, or use null (a journal file in the sweep folder)") from None


def read_spec(path: str | Path) -> dict[str, Any]:
    """``study.json`` as written by the sweeper.

    Raises:
        ConfigError: the file is missing or not the sweeper's (names ``search.study``).
    """
    try:
        spec = json.loads(Path(path).read_text())
        spec["study_name"], spec["storage"]  # noqa: B018 - the keys every job needs
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"search.study={path}: not a study file written by hydra/sweeper=lr_search ({exc}); run "
                          "the sweep with -m hydra/sweeper=lr_search, or set search=null") from None
    return spec


def build_pruner(config: Optional[dict[str, Any]]) -> Any:
    """The Optuna pruner of ``hydra.sweeper.pruner`` (a ``_target_`` config; null = none).

    Raises:
        hydra.errors.InstantiationException: the config does not build (the sweeper turns it
            into a one-line ``ConfigError`` before any job).
        ConfigError: a bad value of :class:`~framework.search.promotion.PromotionASHA`.
    """
    import optuna
    from hydra.utils import instantiate

    from framework.search.promotion import PromotionASHA, is_promotion

    if is_promotion(config):  # ours: its ConfigError as it is
        return PromotionASHA(**{k: v for k, v in config.items() if k != "_target_"})
    return optuna.pruners.NopPruner() if not config else instantiate(config)


def refuse_other_sweeps(sweep_dir: Path, study_name: str, storage: Optional[str]) -> None:
    """Refuse a sweep folder that holds another study's trials, or a sweep of another kind, or
    its study in another storage than this command's (a resume that left out
    ``hydra.sweeper.storage``): it is not written over (its job folders would be replaced).

    Raises:
        ConfigError: one line naming ``hydra.sweep.dir`` and the key that resumes the folder.
    """
    from framework.loggers import read_json

    if not sweep_dir.is_dir():
        return
    spec = read_json(sweep_dir / SPEC_NAME)
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    url = storage_url(storage, sweep_dir)
    if spec and spec.get("study_name") == study_name and spec.get("storage") not in (None, url):
        raise ConfigError(f"hydra.sweep.dir={sweep_dir}: its study {study_name} is in {spec['storage']}, not "
                          f"{url}; resume it with hydra.sweeper.storage={spec['storage']}")
    if spec and spec.get("study_name") != study_name:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir}: holds study {spec.get('study_name')}, not "
                          f"{study_name}; resume it with hydra.sweeper.study_name={spec.get('study_name')} "
                          "(or its preset), or choose a new folder")
    if not spec and jobs:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir}: holds {len(jobs)} job folders of another sweep; "
                          "choose a new folder")


def write_best(study: Any, sweep_dir: Path) -> None:
    """Log the study's best trial and write ``optimization_results.yaml`` (``name``,
    ``best_params``, ``best_value``, as Hydra's Optuna sweeper does) in the sweep folder."""
    from omegaconf import OmegaConf

    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        log.warning("study %s: no trial completed", study.study_name)
        return
    log.info("study %s: best trial %d, objective %.6g, %s", study.study_name, best.number, best.value,
             " ".join(f"{k}={v}" for k, v in best.params.items()))
    OmegaConf.save(OmegaConf.create({"name": "lr_search", "best_trial": best.number, "best_params": best.params,
                                     "best_value": best.value}), sweep_dir / "optimization_results.yaml")


class OptunaTrial:
    """A sweep job's trial: reports the monitored validation value of each validated epoch to
    the study and says when the study's pruner stops the run.

    Args:
        study: path of the sweep's ``study.json`` (written by the sweeper).
        trial: the trial's number in the study (its job number in the sweep).
        pause_at: (epochs) with ASHA with promotions (:mod:`framework.search.promotion`), the rung
            this job trains to: at the first validated epoch count >= ``pause_at`` short of the
            run's end the run stops (status ``pruned``, ``pruned.rung`` = the epochs trained), its
            trial still running in the study, waiting for the sweeper to promote (resume) it or
            end it; None: the study's pruner decides.

    Raises:
        ConfigError: ``study.json`` unreadable, or its storage unreachable (at :meth:`start`).
    """

    def __init__(self, study: str, trial: int, pause_at: Optional[int] = None):
        self.spec_path, self.number = study, int(trial)
        self.pause_at = None if pause_at is None else int(pause_at)
        self.study: Any = None
        self.trial: Any = None
        self.reported: dict[int, float] = {}
        self.pruned: Optional[dict[str, Any]] = None
        self.planned_epochs = math.inf  # the run's last epoch is reported, never pruned

    def start(self, run_dir: Path, summary: dict[str, Any], resumed: bool = False) -> None:
        """Open the study and the trial before training. A trial that has already ended (a
        pruned trial continued with ``resume=``) is not reported to again: the run trains on
        alone, as a normal run."""
        import optuna
        from optuna.trial import TrialState

        self.planned_epochs = summary.get("planned_epochs") or math.inf
        spec = read_spec(self.spec_path)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(spec["storage"])
        self.study = optuna.load_study(study_name=spec["study_name"], storage=storage,
                                       pruner=build_pruner(spec.get("pruner")))
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        frozen = trials.get(self.number)
        if frozen is None:
            raise ConfigError(f"search.trial={self.number}: no such trial in study {spec['study_name']} "
                              f"({self.spec_path}); set search=null to train without the study")
        if frozen.state != TrialState.RUNNING:
            log.warning("trial %d of study %s has ended (%s): this run is not reported to the study", self.number,
                        spec["study_name"], frozen.state.name.lower())
            return
        # a Trial for a trial asked by another process (the sweeper): Optuna's public class, built
        # from the storage's id, as the ask-and-tell interface does internally
        self.trial = optuna.trial.Trial(self.study, frozen._trial_id)
        self.reported = dict(frozen.intermediate_values)  # a requeued job resumes after these
        self.trial.set_user_attr("run_dir", str(run_dir))
        self.trial.set_user_attr("planned_steps", summary.get("planned_steps"))  # a killed job's budget share

    def should_prune(self, epoch: int, metrics: dict[str, Any], value: Optional[float]) -> bool:
        """Report ``value`` (the run's monitored value after validated ``epoch``, 0-based) at step
        ``epoch + 1`` (the pruners' step is the resource spent: epochs trained, so ASHA's rungs
        1, 4, 16 mean after 1, 4, 16 epochs) and ask the pruner. True: the study has been told the
        trial is pruned; or, with ``pause_at``, the run pauses at its rung (the trial, still
        running, gets the user attribute ``paused_at``). Never raises: a study that cannot be told
        (the trial ended elsewhere, the storage is gone) is logged once and the run trains on
        without it."""
        if self.trial is None or value is None or not math.isfinite(value):
            return False
        from optuna.trial import TrialState

        step = epoch + 1
        try:
            if step not in self.reported:  # a requeued job re-reaching a reported epoch reports nothing twice
                self.trial.report(float(value), step)
                self.reported[step] = float(value)
            if step >= self.planned_epochs:  # at its end a run is complete
                return False
            if self.pause_at is not None:  # promotion ASHA: pause at the rung; the sweeper decides the rest
                if step < self.pause_at:
                    return False
                self.trial.set_user_attr("paused_at", step)  # it waits, even if the sweeper is killed before it hears
                self.pruned = {"trial": self.number, "pruner": type(self.study.pruner).__name__, "value": float(value),
                               "rung": step}
                return True
            if not self.trial.should_prune():
                return False
            self.trial.set_user_attr("status", "pruned")
            self.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
        except Exception as exc:  # the trial ended elsewhere, the storage went away: train on, unreported
            log.warning("trial %d: the study cannot be told epoch %d (%s: %s); the run goes on without it",
                        self.number, epoch + 1, type(exc).__name__, exc)
            self.trial = None
            return False
        self.pruned = {"trial": self.number, "pruner": type(self.study.pruner).__name__, "value": float(value)}
        return True

    def report(self) -> dict[str, Any]:
        """What ``summary.json``'s ``pruned`` block adds: ``trial``, ``pruner``, ``value``."""
        return dict(self.pruned or {})

    def finish(self, summary: dict[str, Any]) -> None:
        """After the run: record its status on the trial; a diverged run is told to the study as
        pruned (so samplers treat its LR as bad, as TPE ranks pruned trials below complete ones);
        every other ending is told by the sweeper, from the job's return."""
        if self.trial is None or self.pruned is not None:  # a pruned trial has ended: nothing to add
            return
        from optuna.trial import TrialState

        status = summary.get("status")
        try:
            self.trial.set_user_attr("status", status)
            if status == "diverged":
                self.study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)
        except Exception as exc:  # the study is a record; the run's own files are already written
            log.warning("could not record the end of trial %d in the study: %s", self.number, exc)


def tell_state(study: Any, trial: Any, value: Optional[float] = None, state: Any = None) -> None:
    """``study.tell``, except that a grid sampler's ``Study.stop()`` (its ``after_trial`` calls
    it once every point was asked; meant for ``optimize()``) does not end the sweep: the
    trial's state is already stored by then."""
    try:
        study.tell(getattr(trial, "number", trial), value, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def interrupted(study: Any, trial: Any) -> None:
    """A trial that ended without a result (a sweep killed around it, a job stopped on a
    signal): failed and marked ``interrupted`` (it does not count towards ``n_trials``), and
    its parameters queued to run again."""
    from optuna.trial import TrialState

    # the storage sets a user attribute by the trial's id: a FrozenTrial has no setter
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    tell_state(study, trial.number, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def requeue_interrupted(study: Any) -> int:
    """Trials left running by an interrupted sweep: what their jobs trained charged to the
    budget (:func:`~framework.search.budget.record_spent`), failed (marked ``interrupted``), and
    their parameters queued to run again. Returns their number."""
    from optuna.trial import TrialState

    from framework.search.budget import record_spent

    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get("paused_at") is None]  # a trial waiting at a rung is not interrupted
    for trial in running:
        record_spent(study, trial, None)
        interrupted(study, trial)
    if running:
        log.warning("%d trial(s) left running by an earlier sweep: marked failed, queued to run again (%s)",
                    len(running), ", ".join(str(t.number) for t in running))
    return len(running)


def counted(study: Any) -> int:
    """Trials that count towards ``n_trials``: ended (complete, pruned, failed), not interrupted."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=ended) if not t.user_attrs.get("interrupted"))
