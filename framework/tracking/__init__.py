"""Experiment trackers (the ``logger`` config group): TensorBoard, MLflow, W&B, or a user's own.

``steps.csv``, ``epochs.csv`` and ``summary.json`` are always written (``logger=csv``, the
default); ``logger=[csv,tensorboard,mlflow]`` adds trackers that receive the same values. The
run checks every tracker before it builds anything (:func:`check`: installed, reachable), opens
their runs once built (:meth:`Trackers.start`), hands them the step rows as ``steps.csv`` gets
them and each epoch's row (in the trackers' own process, :mod:`framework.tracking.process`), and
closes them with the final summary.
A tracker is any ``_target_`` that builds a :class:`Tracker`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from framework.tracking.base import RunInfo, ThreadWorker, Tracker
from framework.tracking.process import ProcessWorker, runs_in_process

log = logging.getLogger(__name__)

__all__ = ["RunInfo", "Tracker", "Trackers", "configured", "check", "run_info", "start_trackers", "sweep_of"]

#: The run folder's record of its trackers' runs (written as they open: a killed run's resume finds them).
TRACKERS_FILE = "trackers.json"


def configured(cfg: Any) -> dict[str, Tracker]:
    """The trackers of ``cfg.logger`` (``{name: config or null}``; ``csv: null`` adds none), built
    from their ``_target_`` (no I/O yet).

    Raises:
        ConfigError: a target that cannot be built (the registry's one-line message).
    """
    from framework import registry

    nodes = cfg.get("logger") or {}
    return {str(name): registry.instantiate(node, f"logger.{name}") for name, node in nodes.items()
            if node is not None}


def check(trackers: dict[str, Tracker]) -> None:
    """Every tracker's :meth:`Tracker.check` (installed, reachable), before anything is built.

    Raises:
        ConfigError: the first tracker that cannot work, in one line naming the extra to
            install or the URI.
    """
    for tracker in trackers.values():
        check_one = getattr(tracker, "check", None)  # optional for a user's tracker
        if callable(check_one):
            check_one()


def run_info(cfg: Any, run_dir: Path, facts: dict[str, Any], start_step: int, plan: Any = None) -> RunInfo:
    """What the trackers are told at the start (:class:`RunInfo`): names, config, params, facts,
    the sweep this job belongs to (Hydra's multirun) and the planned LRs."""
    from framework.config import flatten, plain_config

    config = plain_config(cfg)
    sweep_dir, job = sweep_of()
    return RunInfo(run_dir=run_dir, name=run_name(run_dir), config=config, params=flatten(config), facts=facts,
                   start_step=start_step, sweep_dir=sweep_dir, job=job, plan=plan)


def start_trackers(cfg: Any, built: Any, facts: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Open the built trainer's trackers (``built.trainer.trackers``) for this run: a resume
    continues the runs ``trackers.json`` names; what identifies each run is written there at
    once (a run killed without warning still names them) and returned for ``summary.json``.

    Args:
        cfg: the run's config; built: :class:`~framework.build.Built`; facts: ``summary.json``'s
            start (git state, objective, overrides); run_dir: the run folder.

    Raises:
        ConfigError: a tracker could not open its run (the others opened are closed as failed).
    """
    from framework.loggers import write_json
    from framework.preview import plan_of
    from framework.summary import plan_title

    trainer = built.trainer
    info = run_info(cfg, run_dir, facts, trainer.global_step, plan_of(built.plan, trainer.optimizer,
                                                                      plan_title(built.plan, cfg)))
    earlier = earlier_runs(run_dir) if trainer.global_step else {}
    opened = trainer.trackers.start(info, earlier)
    write_json(opened, run_dir / TRACKERS_FILE)
    return opened


def earlier_runs(run_dir: Path) -> dict[str, Any]:
    """``{tracker name: its start's record}`` of an earlier segment of the run in ``run_dir``."""
    from framework.loggers import read_json

    return read_json(Path(run_dir) / TRACKERS_FILE)


def run_name(run_dir: Path) -> str:
    """The run folder relative to the ``outputs`` folder that holds it (``runs/<date>/<time>``,
    ``multirun/<date>/<time>/3``), else its own path as given."""
    parts = Path(run_dir).resolve().parts
    if "outputs" in parts:
        i = len(parts) - 1 - parts[::-1].index("outputs")
        if i + 1 < len(parts):
            return "/".join(parts[i + 1:])
    return str(run_dir)


def sweep_of() -> tuple[Optional[Path], Optional[int]]:
    """``(sweep folder, job number)`` of a Hydra multirun job; ``(None, None)`` otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    return Path(str(hc.sweep.dir)), int(hc.job.num)


class Trackers:
    """Every configured tracker: those that can be pickled run in one child process
    (:class:`~framework.tracking.process.ProcessWorker`), the others in a background thread
    (:class:`ThreadWorker`): ``in_process``, defined in ``__main__``, not picklable, a system
    that is not POSIX, or a child process that could not be started
    (:func:`~framework.tracking.process.runs_in_process`).

    :meth:`start` waits until every tracker has opened its run (a tracker that cannot fails
    before training); :meth:`log_steps` and :meth:`log_epoch` only queue their rows (no I/O, no
    device sync in the training loop); :meth:`finish` waits for the queue, then closes every
    tracker. A tracker that raises while logging is dropped with one warning; the run goes on.

    Args:
        trackers: name (``tensorboard``, ``mlflow``, ``wandb``, or a user's) -> tracker.
    """

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = dict(trackers)
        self.workers: list[Any] = []
        self._process: Any = None  # the ProcessWorker made by prepare(), not started yet
        self.in_thread: Optional[set[str]] = None  # the trackers that log from a thread (set by prepare())

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def prepare(self) -> None:
        """Decide where each tracker runs, and start the trackers' process now, so that it imports
        their packages while the run is built (:meth:`start` does it otherwise). Once per run."""
        if self.in_thread is not None:
            return
        self.in_thread = {k for k, t in self.trackers.items() if runs_in_process(t)}
        away = {k: t for k, t in self.trackers.items() if k not in self.in_thread}
        if away:
            try:
                self._process = ProcessWorker(away)
            except OSError as exc:  # no process or file descriptor left: log from a thread instead
                log.warning("logger: could not start the trackers' process (%s); %s log from a thread of the "
                            "training process", exc, ", ".join(away))
                self.in_thread.update(away)

    def close(self) -> None:
        """End the trackers' process that :meth:`prepare` started, when :meth:`start` will not come
        (the run failed first); no-op otherwise."""
        if self._process is not None:
            self._process.close()
            self._process = None

    def start(self, info: RunInfo, earlier: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Open every tracker's run and start their workers.

        Args:
            info: the run (its ``earlier`` is set per tracker from ``earlier``).
            earlier: ``{name: what its start returned}`` in an earlier segment of this run
                (``summary.json``'s ``trackers``; a resume continues those runs).

        Returns:
            ``{name: what its start returned}`` (for ``summary.json``'s ``trackers``), in the
            order of ``logger``.

        Raises:
            ConfigError: a tracker could not open its run (the runs opened are closed as failed).
        """
        self.prepare()
        here = {k: t for k, t in self.trackers.items() if k in self.in_thread}
        opened: dict[str, Any] = {}
        try:
            if self._process is not None:  # a worker is kept once its trackers have opened their runs
                worker, self._process = self._process, None
                opened.update(worker.start(info, earlier))
                self.workers.append(worker)
            if here:
                worker = ThreadWorker(here)
                opened.update(worker.start(info, earlier))
                self.workers.append(worker)
        except Exception as exc:
            for worker in self.workers:  # close the runs already opened, as failed
                worker.finish({"status": "failed", "error": str(exc)})
            self.workers = []
            raise
        return {name: opened[name] for name in self.trackers if name in opened}

    def lost(self) -> list[str]:
        """The trackers whose process ended before the run closed them (their runs are left as
        they were: MLflow's ``RUNNING``, W&B's and TensorBoard's files cut short)."""
        return [name for worker in self.workers if isinstance(worker, ProcessWorker) and worker.ended()
                for name in worker.names]

    def log_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue ``steps.csv`` rows for every tracker (:meth:`Tracker.log_steps`)."""
        for worker in self.workers:
            worker.put(("log_steps", (list(rows),)))

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """Queue an ``epochs.csv`` row at step ``step`` (:meth:`Tracker.log_epoch`)."""
        for worker in self.workers:
            worker.put(("log_epoch", (dict(metrics), step)))

    def wait(self) -> None:
        """Return once every queued row has been handed to the trackers."""
        for worker in self.workers:
            worker.wait()

    def finish(self, summary: dict[str, Any]) -> None:
        """Log what is queued, then :meth:`Tracker.finish` each tracker with the final summary
        (a failure is a warning: the run's own files are already written)."""
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.finish(summary)
