"""The trial side of ``python -m framework.tune``: the search hook a Ray Tune trial's run reports
to (:class:`RayTrial`), the run's thread (:func:`run_trial`) and the files a Ray checkpoint
carries between trials (:func:`save_files`, :func:`restore_files`).

How a trial runs: the trainable (:class:`framework.search.ray_trainable.LRTrainable`, in a Ray
worker) starts :func:`run_trial` on a thread and waits on a :class:`Channel`. After every
validated epoch, once ``checkpoints/last.pt`` of that epoch is saved, the run's
:class:`RayTrial` puts the epoch's result on the channel and waits for Ray's decision: the
trainable returns the result to Tune as one training iteration (``Trainable.step``) and, when
Tune asks for the next, tells the run to go on. When Tune ends the trial (a scheduler's stop, a
pause for Population Based Training or HyperBand), Ray calls ``Trainable.cleanup`` (or, when it
reuses the worker for the next trial, ``Trainable.reset_config``): the trainable tells the
waiting run to stop and waits until the run has written its files, so the
run folder always ends consistent: ``summary.json`` says ``pruned`` with the epoch, step and
scheduler, and ``checkpoints/last.pt`` is that epoch's. A paused trial that Tune starts again
continues from its checkpoint and rewrites the summary when it ends.

(Ray's function API, ``ray.tune.report``, ends a stopped trial by raising ``SystemExit`` in the
training thread and then ends the worker process without waiting for it, which can cut the run
short before it has written ``summary.json``; the class API lets the trainable wait.)

This module imports no Ray: the hook runs inside the training run.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

__all__ = ["Channel", "RayTrial", "run_trial", "save_files", "restore_files", "steps_done", "result_rows", "TIME_ATTR"]

#: The result key Ray's schedulers measure a trial's progress in: epochs trained (``epoch + 1``).
TIME_ATTR = "epochs_trained"
#: The channel of each trial running in this process, by trial index (one per Ray worker).
CHANNELS: dict[int, "Channel"] = {}
#: Files of a run folder a Ray checkpoint carries: the run's checkpoint and its CSV history.
CARRIED = ("checkpoints/last.pt", "checkpoints/best.pt", "steps.csv", "epochs.csv")
META = "meta.json"


@dataclass
class Channel:
    """What a trial's run and its trainable pass each other.

    Attributes:
        results: run -> trainable: ``("epoch", result)`` after each validated epoch, then
            ``("end", None)`` (the run ended: completed, diverged, early-stopped or pruned) or
            ``("error", exception)``.
        decisions: trainable -> run: ``"continue"`` or ``"stop"`` after each ``("epoch", ...)``.
        info: the summary's ``tune`` block (trial index, search, params, lineage).
        overrides: the trial's command-line overrides (summary ``overrides``, the replay command).
        scheduler: the scheduler's name as the pruned block says it (``ASHA``, ``HyperBand``, ``PBT``).
        monitor, mode: the task's monitored metric and its direction (the reported result's key).
    """

    info: dict[str, Any]
    overrides: list[str]
    scheduler: str
    monitor: str
    mode: str
    results: "queue.Queue[tuple[str, Any]]" = field(default_factory=lambda: queue.Queue(1))
    decisions: "queue.Queue[str]" = field(default_factory=lambda: queue.Queue(1))


def steps_done(run_dir: Path) -> int:
    """Optimizer steps a run folder's ``steps.csv`` holds: its last row's ``step`` + 1 (0 when
    empty), read from the file's end (the trainer writes every row of an epoch before its
    validation)."""
    path = Path(run_dir) / "steps.csv"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        first = line.split(",", 1)[0].strip()
        if first.isdigit():
            return int(first) + 1
    return 0


class RayTrial:
    """The search hook of a Ray Tune trial (``search._target_=framework.search.ray_trial.RayTrial``,
    set by ``python -m framework.tune``; see :mod:`framework.search` for the protocol).

    Args:
        trial: the trial's index (its folder ``<tune folder>/<trial>``); its :class:`Channel`
            must be registered in :data:`CHANNELS` by the trainable.

    Raises:
        ConfigError: (at :meth:`start`) no trainable runs this trial in this process (the run was
            started outside ``python -m framework.tune``).
    """

    def __init__(self, trial: int):
        self.trial = int(trial)
        self.channel: Optional[Channel] = None
        self.pruned: Optional[dict[str, Any]] = None
        self.run_dir: Optional[Path] = None
        self.planned = (math.inf, math.inf)  # (epochs, steps) of the run's plan

    def start(self, run_dir: Path, summary: dict[str, Any], resumed: bool = False) -> None:
        """Attach to the trial's channel; add the ``tune`` block and the trial's overrides to the summary."""
        from framework.errors import ConfigError

        self.channel = CHANNELS.get(self.trial)
        if self.channel is None:
            raise ConfigError(f"search.trial={self.trial}: no Ray Tune trial runs here (this hook is set by python -m "
                              "framework.tune); set search=null for a plain run")
        self.run_dir = Path(run_dir)
        self.planned = (summary.get("planned_epochs") or math.inf, summary.get("planned_steps") or math.inf)
        summary["tune"] = self.channel.info
        summary["overrides"] = list(self.channel.overrides)

    def should_prune(self, epoch: int, metrics: dict[str, Any], value: Optional[float]) -> bool:
        """Hand the epoch's result to Tune and wait for its decision; True when Tune ends the
        trial before the run's last epoch (a stop at the last epoch changes nothing: the run ends)."""
        from framework.tasks import worst

        assert self.channel is not None and self.run_dir is not None
        ch = self.channel
        step = steps_done(self.run_dir)
        good = value is not None and math.isfinite(value)
        result = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        result.update({ch.monitor: float(value) if good else worst(ch.mode), "epoch": epoch, TIME_ATTR: epoch + 1,
                       "step": step, "trial": self.trial, "run_dir": str(self.run_dir)})
        if epoch + 1 >= self.planned[0] or step >= self.planned[1]:  # the run's last epoch: Tune ends the trial
            result["done"] = True  # (no scheduler judges it: PBT would otherwise exploit at the end, again and again)
        ch.results.put(("epoch", result))
        decision = ch.decisions.get()
        if decision != "stop" or epoch + 1 >= self.planned[0] or step >= self.planned[1]:
            return False
        self.pruned = {"scheduler": ch.scheduler, "trial": self.trial, "value": result[ch.monitor]}
        return True

    def report(self) -> dict[str, Any]:
        """What ``summary.json``'s ``pruned`` block adds: ``scheduler``, ``trial``, ``value``."""
        return dict(self.pruned or {})

    def finish(self, summary: dict[str, Any]) -> None:
        """Nothing: :func:`run_trial` tells the trainable the run ended, once ``train`` returned."""


def run_trial(cfg: Any, run_dir: Path, channel: Channel) -> None:
    """Train one trial (``framework.run.train``) and tell the trainable how it ended; the run's
    log lines also go to ``<run_dir>/train.log``. A failure before the run wrote its summary
    leaves a ``summary.json`` with ``status: failed`` and the error's first line."""
    from framework.errors import first_line, user_messages
    from framework.resume import also_log_to
    from framework.run import train
    from framework.summary import write_untrained_summary
    from framework.trainer import Diverged

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = also_log_to(run_dir)
    if handler is not None:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().setLevel(logging.INFO)
    try:
        train(cfg, run_dir=run_dir)
        channel.results.put(("end", None))
    except Diverged:  # summary.json says diverged; the search goes on
        channel.results.put(("end", None))
    except BaseException as exc:  # noqa: BLE001 - every ending is told, or the trainable would wait forever
        if not (run_dir / "summary.json").is_file():
            messages = user_messages(exc) if isinstance(exc, Exception) else None
            error = "; ".join(messages) if messages else f"{type(exc).__name__}: {first_line(exc)}"
            try:
                write_untrained_summary(run_dir, "failed", error=error, overrides=list(channel.overrides),
                                        objective_name=channel.monitor, objective_mode=channel.mode,
                                        tune=channel.info)
            except OSError:
                pass
        channel.results.put(("error", exc))
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def save_files(run_dir: Path, target: Path, meta: dict[str, Any]) -> None:
    """Put a run folder's state into a Ray checkpoint folder ``target``: ``checkpoints/last.pt``
    and ``best.pt`` (hard links where the filesystem allows: ``last.pt`` is replaced, never
    rewritten, so the link keeps this epoch's bytes), copies of ``steps.csv`` and ``epochs.csv``
    and ``meta.json`` (``meta``: the trial, its epoch and step, its params and lineage). Called
    while the run waits between epochs, so the files belong to one epoch."""
    from framework.checkpoint import copy_checkpoint

    target = Path(target)
    (target / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in CARRIED:
        source = Path(run_dir) / name
        if not source.is_file():
            continue
        if name.endswith(".pt"):
            copy_checkpoint(source, target / name)
        else:
            shutil.copyfile(source, target / name)
    (target / META).write_text(json.dumps(meta, indent=1, default=str) + "\n")


def restore_files(source: Path, run_dir: Path) -> dict[str, Any]:
    """Put a Ray checkpoint folder's run state (:func:`save_files`) into ``run_dir``, replacing
    its own, and return the checkpoint's ``meta.json``. The run then resumes there with
    ``resume=<run_dir> resume_allow_changes=true``: ``steps.csv`` holds the donor's rows up to the
    checkpoint step (the resume cuts any later ones), then the trial's own. A ``summary.json``
    of the trial's earlier life is removed (the run continues; a stale one would say it ended).

    Returns:
        ``meta`` (``{}`` for a folder without ``meta.json``); ``has_checkpoint``: whether it
        held a ``last.pt`` (a checkpoint taken before the first epoch holds none: start afresh).
    """
    from framework.checkpoint import copy_checkpoint

    source, run_dir = Path(source), Path(run_dir)
    meta = json.loads((source / META).read_text()) if (source / META).is_file() else {}
    has = (source / "checkpoints" / "last.pt").is_file()
    meta["has_checkpoint"] = has
    if not has:
        return meta
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in CARRIED:
        src, dst = source / name, run_dir / name
        if not src.is_file():
            dst.unlink(missing_ok=True)  # e.g. the trial's own best.pt of another lineage
        elif name.endswith(".pt"):
            copy_checkpoint(src, dst)
        else:
            shutil.copyfile(src, dst)
    (run_dir / "summary.json").unlink(missing_ok=True)
    return meta


def result_rows(results: Path) -> Iterator[dict[str, Any]]:
    """The rows of a tune folder's ``results.jsonl`` in order, without a line a killed driver cut
    short (none when the file is missing)."""
    if not results.is_file():
        return
    for line in results.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue
