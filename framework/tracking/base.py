"""The tracker interface, and the fan-out that calls every tracker in turn: in the trackers' own
process (:mod:`framework.tracking.process`) or, for a tracker that must share the training
process, from a background thread (:class:`ThreadWorker`); :class:`~framework.tracking.Trackers`
feeds both, so the training loop never waits on a tracker."""
from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

#: ``steps.csv`` columns that index a row rather than measure it (not logged as metrics).
INDEX_COLUMNS = ("step", "epoch")
#: (s) How long the end of a run waits for the trackers to take the rows still queued and close
#: their runs (and how long a trackers' process whose training process was killed takes at most).
FINISH_TIMEOUT_S = 60
#: ``epochs.csv`` columns not logged as epoch metrics: the index, and ``lr`` (the LR of the epoch's
#: last step, already logged with that step's row).
EPOCH_SKIP = ("epoch", "lr")


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told when the run starts.

    Attributes:
        run_dir: the run folder (holds ``steps.csv``, ``summary.json``, ``checkpoints/``).
        name: the run's name in a tracker: its folder relative to ``outputs/`` when it is there
            (``runs/2026-12-03/10-22-11-123456``, ``multirun/.../3``), else the folder's name.
        config: the resolved config as plain containers (no ``hydra`` node).
        params: ``config`` flattened to ``{"optimizer.lr": 0.01, ...}`` (leaves only).
        facts: ``summary.json``'s start: git commit and dirty flag, ``lrframe_version``,
            ``objective_name``, ``objective_mode``, ``overrides``, ``planned_steps``.
        start_step: ``k`` the run starts from (0, or a resume's step).
        earlier: what this tracker returned from :meth:`Tracker.start` in an earlier segment of
            the same run (``summary.json``'s ``trackers.<name>``: a resume continues that run).
        sweep_dir: the sweep folder of a multirun job (None for a single run); job: its number.
        plan: the planned LR of every group at every step (:class:`~framework.preview.PlannedRun`).
        pid: the training process's id (the trackers run in a process of their own).
    """

    run_dir: Path
    name: str
    config: dict[str, Any]
    params: dict[str, Any]
    facts: dict[str, Any]
    start_step: int = 0
    earlier: dict[str, Any] = field(default_factory=dict)
    sweep_dir: Optional[Path] = None
    job: Optional[int] = None
    plan: Any = None
    pid: int = field(default_factory=os.getpid)


class Tracker:
    """One experiment tracker (TensorBoard, MLflow, W&B): the calls a run makes, in order.

    A tracker's constructor only stores its config (no I/O); :meth:`start` opens it. Every call
    comes from one worker, in the order the run made them: by default a child process that the
    run starts for its trackers (the tracker is pickled there, so its work never holds the
    training process's interpreter lock; :mod:`framework.tracking.process`), or a background
    thread of the training process for a class that sets ``in_process = True`` (one that needs
    the training process's objects, or cannot be pickled). The
    values passed are those written to the run folder: :meth:`log_steps` gets the rows appended
    to ``steps.csv`` (as they are appended, every ``trainer.log_every_n_steps`` steps and at each
    epoch's end), :meth:`log_epoch` the row of ``epochs.csv``.

    Class attribute ``package``: the importable module it needs (checked before training without
    importing it; the trackers' process imports it while the run is built); ``extra``: the pip
    extra that installs it (``pip install 'lrframe[<extra>]'``); ``in_process``: run it in a
    thread of the training process rather than in the trackers' process.
    """

    package = ""
    extra = ""
    in_process = False

    def check(self) -> None:
        """Before training: raise :class:`~framework.errors.ConfigError` (one line) when the
        tracker cannot work (a server that does not answer, a login that is missing)."""

    def start(self, info: RunInfo) -> dict[str, Any]:
        """Open the tracker's run; return what identifies it (kept in ``summary.json`` under
        ``trackers.<name>`` and handed back as ``info.earlier`` on resume)."""
        raise NotImplementedError

    def log_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record ``steps.csv`` rows (``step`` = ``k``, ``lr``, ``lr/<group>``, ``momentum``,
        ``loss``, ``grad_norm``, ...; a value None or missing is not logged)."""
        raise NotImplementedError

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """Record an ``epochs.csv`` row (``train/loss``, ``val/loss``, ``val/<metric>``,
        ``time_s``; keys in :data:`EPOCH_SKIP` left out) at step ``k`` of the epoch's last step."""
        raise NotImplementedError

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the run: the final ``summary.json`` (its ``status`` says how it ended), files
        of the run folder as artifacts where the tracker keeps them."""
        raise NotImplementedError


def best_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``{"best/<metric>": value}`` of ``summary.json``'s best epoch (its numeric metrics)."""
    return {f"best/{k}": v for k, v in numbers(summary.get("best") or {}, EPOCH_SKIP).items()}


def numbers(row: dict[str, Any], skip: Sequence[str]) -> dict[str, float]:
    """The numeric values of a row, without the keys in ``skip`` (None, empty and text left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def left_open(names: Sequence[str]) -> None:
    """Warn that the trackers ``names`` did not finish within :data:`FINISH_TIMEOUT_S`."""
    log.warning("logger: the trackers did not take the run's last rows within %d s (%s); their runs are left open, "
                "the run folder has every value", FINISH_TIMEOUT_S, ", ".join(names))


def require(module: str, key: str, extra: str) -> None:
    """Check that ``module`` is installed for ``logger=<key>``, without importing it (the
    trackers import their packages in their own process, not in the training process).

    Raises:
        ConfigError: it is not installed: ``logger=<key>: needs the <module> package (not
            installed); pip install 'lrframe[<extra>]' (or leave <key> out of logger=)``.
    """
    import importlib.util

    from framework.errors import ConfigError

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or broken
        found = False
    if not found:
        raise ConfigError(f"logger={key}: needs the {module} package (not installed); "
                          f"pip install 'lrframe[{extra}]' (or leave {key} out of logger=)")


class Fanout:
    """Calls every tracker in turn, in the caller's thread; a tracker that raises while logging is
    dropped with one warning and the run goes on. The trackers' worker (a thread here, a child
    process in :mod:`framework.tracking.process`) drives it.

    Args:
        trackers: name -> tracker.
    """

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = dict(trackers)

    def start(self, info: RunInfo, earlier: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Open every tracker's run; on a failure close those already opened (as failed).

        Returns:
            ``{name: what its start returned}``.

        Raises:
            ConfigError: a tracker could not open its run (one line naming it).
        """
        from framework.errors import ConfigError, first_line

        opened = {}
        for name, tracker in self.trackers.items():
            try:
                opened[name] = tracker.start(replace(info, earlier=(earlier or {}).get(name) or {})) or {}
            except Exception as exc:  # a server, a database, a login: say which and why, before training
                for other in opened:  # close the runs already opened, as failed
                    self.call_one(other, "finish", ({"status": "failed", "error": str(exc)},))
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"logger={name}: could not start its run: {first_line(exc)}") from exc
        return opened

    def call(self, method: str, args: tuple) -> None:
        """``method(*args)`` of every tracker still logging."""
        for name in list(self.trackers):
            self.call_one(name, method, args)

    def call_one(self, name: str, method: str, args: tuple) -> None:
        """``method(*args)`` of tracker ``name``; it is dropped when that raises."""
        try:
            getattr(self.trackers[name], method)(*args)
        except Exception as exc:  # never let a tracker end the training
            from framework.errors import first_line

            log.warning("logger %s: %s failed (%s: %s); it logs nothing more for this run", name, method,
                        type(exc).__name__, first_line(exc))
            self.trackers.pop(name, None)


class ThreadWorker(Fanout):
    """The trackers that run in the training process (``in_process``), fed from one background
    thread: :meth:`put` only queues a call."""

    def __init__(self, trackers: dict[str, Tracker]):
        super().__init__(trackers)
        self._queue: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def start(self, info: RunInfo, earlier: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """:meth:`Fanout.start` in the caller's thread, then start the logging thread."""
        opened = super().start(info, earlier)
        self._thread = threading.Thread(target=self._work, name="lrframe-trackers", daemon=True)
        self._thread.start()
        return opened

    def put(self, item: tuple[str, tuple]) -> None:
        """Queue ``(method, args)`` for every tracker."""
        self._queue.put(item)

    def wait(self) -> None:
        """Return once every queued call has been made."""
        if self._thread is not None:
            self._queue.join()

    def finish(self, summary: dict[str, Any]) -> None:
        """Make the queued calls, then :meth:`Tracker.finish` each tracker (within
        :data:`FINISH_TIMEOUT_S`: a tracker that hangs is left, with a warning)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=FINISH_TIMEOUT_S)
            if self._thread.is_alive():  # a tracker hangs (a server that stopped answering): leave it
                left_open(list(self.trackers))
                return
            self._thread = None
        self.call("finish", (summary,))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            self.call(*item)
            self._queue.task_done()
