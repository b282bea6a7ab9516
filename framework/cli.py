"""Command-line shell around the Hydra main: user mistakes become one line and exit status 2.

Hydra prints composition errors over several lines with a hint about ``HYDRA_FULL_ERROR`` and
exits with 1. :func:`run_cli` lets those errors (and :class:`~framework.errors.ConfigError`)
reach it, prints one ``error: <key>=<value>: <fix>`` line each, and exits with status 2. A
disk that cannot take the run's files (full, read-only) gives one line and exit status 1; a
SIGTERM / Ctrl-C before training one line and 143 / 130 (:mod:`framework.interrupts`). Any
other exception keeps its full traceback (exit status 1).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable

from framework.errors import ConfigError, exit_on_user_error, first_line, user_messages

_TASK_STARTED = False  # Hydra called the task: later errors are the run's, not the run folder's


def run_task(cfg) -> float:
    """Body of the Hydra main: train, and turn the ways a run can end into exit statuses.

    A user mistake prints ``error: ...`` lines and exits with status 2 (before training). A
    diverged run prints one ``diverged: ...`` line; alone it exits with status 1, inside a
    multirun it returns the worst objective (:func:`worst_objective`) so the sweep goes on. A first SIGTERM or
    Ctrl-C during training stops the run at a step boundary (``status: stopped``, exit 0; in a
    sweep, no later job starts); a second Ctrl-C exits with 130 once the run folder says
    ``stopped``; a signal before training exits with 143 / 130 and leaves no folder.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from framework import distributed

    global _TASK_STARTED
    _TASK_STARTED = True
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _share_cores(hc)
    started = distributed.init()  # a submitit job with several tasks (torchrun joined in run_cli)
    ok = False
    try:
        objective, ok = _run(cfg, hc, multirun, own_group=started)
        return objective
    finally:
        if started:  # after a failure on this rank no barrier: the other ranks may be stuck in a collective
            distributed.shutdown(barrier=ok)


def _run(cfg, hc, multirun: bool, own_group: bool = False) -> tuple[float, bool]:
    """``(objective, ended together)``: False when this job failed, perhaps on this rank alone.

    ``own_group``: this job joined its process group itself (a submitit job with several tasks)
    and leaves it afterwards. A sweep inside torchrun shares one group across its jobs, so a
    job that failed (perhaps on one rank alone) ends the sweep instead: the next job's
    collectives would not line up.
    """
    from framework import distributed
    from framework.run import train
    from framework.trainer import Diverged

    try:
        if multirun:  # a job's mistake fails that job, not the sweep
            return train(cfg), True
        try:
            with exit_on_user_error():
                return train(cfg), True
        except SystemExit:
            if distributed.is_main():
                _drop_unused_run_dir(hc.runtime.output_dir)
            raise
    except Diverged as exc:
        if distributed.is_main():  # every rank diverged at the same step; one says it
            print(f"diverged: {exc}", file=sys.stderr)
        if multirun:
            return worst_objective(cfg), True
        distributed.barrier()  # agreed on every rank: wait while rank 0 writes summary.json and lr.png
        sys.exit(1)
    except KeyboardInterrupt as exc:  # the run already said what is on disk if it was training
        from framework.interrupts import Interrupted

        if not isinstance(exc, Interrupted):
            sys.exit(130)
        if distributed.is_main():  # before training: nothing to keep; run_cli says so
            _drop_unused_run_dir(hc.runtime.output_dir)
        raise
    except Exception as exc:
        storage = _storage_error(exc)
        if storage is not None and not multirun:
            print(f"error: {storage}", file=sys.stderr)
            sys.exit(1)
        if not multirun or (distributed.world_size() > 1 and not own_group):
            raise
        return _failed_job(exc, hc, worst_objective(cfg)), False


#: errno values of a disk that cannot take the run's files (space, quota, read-only).
STORAGE_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS")


def _storage_error(exc: BaseException) -> str | None:
    """``<file>: <reason>; <fix>`` for an ``OSError`` of :data:`STORAGE_ERRNOS`, else None."""
    import errno

    if not isinstance(exc, OSError) or errno.errorcode.get(exc.errno or -1) not in STORAGE_ERRNOS:
        return None
    fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable"
    return (f"{exc.filename or 'a file of the run'}: {exc.strerror}; {fix}; temporary files were removed and the last "
            "good checkpoint, if any, is intact")


def _drop_unused_run_dir(folder: str) -> None:
    """A run refused or interrupted before training leaves no folder behind: remove Hydra's
    output folder when it holds nothing but ``.hydra/`` and ``train.log`` (the error went to
    the terminal). A folder with anything else (a resumed run's files, the user's own) and the
    current folder are never touched."""
    import shutil
    from pathlib import Path

    run_dir = Path(folder)
    try:
        names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else {"?"}
        if names <= {".hydra", "train.log"} and run_dir.resolve() != Path.cwd().resolve():
            shutil.rmtree(run_dir, ignore_errors=True)
    except OSError:
        pass  # unreadable: leave it


def worst_objective(cfg) -> float:
    """The objective of a sweep job with no result (diverged, failed): :func:`framework.tasks.worst`
    of its task's ``mode`` (:func:`framework.config.task_mode`)."""
    from framework.config import task_mode
    from framework.tasks import worst

    return worst(task_mode(cfg.get("task") if cfg is not None else None))


def _failed_job(exc: Exception, hc, worst: float = 0.0) -> float:
    """Record a multirun job that failed (a config mistake or a crash) and let the sweep go on.

    Writes ``summary.json`` with ``status: failed`` and the one-line error (unless the run
    already wrote one), logs the traceback of an unexpected error to the job's log, prints one
    ``failed:`` line and returns ``worst`` (:func:`worst_objective`) for the sweeper; the summary's
    ``objective`` is ``worst``, or ``null`` when it is ``+inf`` (standard JSON).
    """
    import logging
    from pathlib import Path

    from framework import distributed
    from framework.summary import write_untrained_summary

    messages = user_messages(exc)
    text = "; ".join(messages) if messages else f"{type(exc).__name__}: {first_line(exc)}"
    if messages is None:
        logging.getLogger("framework.run").error("job %s failed", hc.job.num, exc_info=exc)
    run_dir = Path(hc.runtime.output_dir)
    if distributed.is_main() and not (run_dir / "summary.json").is_file():  # rank 0 writes files
        try:
            write_untrained_summary(run_dir, "failed", objective=worst if math.isfinite(worst) else None,
                                    objective_mode="min" if worst > 0 else "max", error=text,
                                    overrides=list(hc.overrides.task))
        except OSError as write_error:  # a full disk: the sweep goes on, the line below says what failed
            logging.getLogger("framework.run").error("job %s: summary.json not written: %s", hc.job.num, write_error)
    print(f"failed: job {hc.job.num}: {text}", file=sys.stderr)
    return worst


def _share_cores(hc) -> None:
    """Parallel jobs on one machine (the joblib launcher) split the CPU cores between them:
    ``torch.set_num_threads(cores // n_jobs)`` instead of every job using every core."""
    launcher = hc.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    import torch

    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs", -1) or -1
    n_jobs = min(max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs), cores)  # joblib: -1 = all cores, -2 = all but one
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    import logging

    logging.getLogger(__name__).info("joblib launcher: %d parallel jobs on %d cores, torch.set_num_threads(%d) per job",
                                     n_jobs, cores, threads)


def _argv_value(argv: list[str], key: str) -> str | None:
    """The value of the last ``key=value`` override in ``argv`` (``+``/``++`` allowed), or None."""
    from framework.config import split_override

    found = None
    for arg in argv:
        name, value = split_override(arg)
        if value is not None and name == key:
            found = value
    return found


#: Modes whose ``resume=<run>`` writes into that run's own folder (its log, test.json, predictions.csv).
RUN_FOLDER_MODES = ("train", "test", "predict")


def _forced(arg: str) -> str:
    """``group.key=value`` as ``++group.key=value`` (set, or add when missing): ``mode=test`` and
    ``mode=predict`` apply such keys to the evaluated run's own config
    (:func:`framework.evaluate.evaluation_config`), whose groups the default config composed
    on this command line may lack (``dataset.test=new.csv`` for a csv run)."""
    from framework.config import split_override

    name, value = split_override(arg)
    if value is None or arg.startswith(("+", "~")) or "." not in name or name.startswith("hydra."):
        return arg
    return "++" + arg


def _check_argv(argv: list[str]) -> None:
    """Command-line checks Hydra cannot make, before it creates any folder; and a plain resume
    (``resume=<run>``, one run, no ``hydra.run.dir``; training, ``mode=test`` or ``mode=predict``)
    logs into the resumed run's own folder (``mode=test`` / ``predict``: dotted keys become
    :func:`_forced`)
    instead of leaving a new folder that holds only a log (``argv`` is extended in place).

    Raises:
        ConfigError: an empty ``hydra.run.dir`` / ``hydra.sweep.dir`` (it would write into the
            current folder), or a resumed run folder that cannot be written.
    """
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        value = _argv_value(argv, key)
        if value is not None and not value.strip().strip("'\"").strip():
            raise ConfigError(f"{key}= is empty: the run would write into the current folder; give a folder, "
                              f"e.g. {key}=outputs/my_run")
    if (_argv_value(argv, "mode") or "train") in ("test", "predict"):
        argv[:] = [_forced(arg) for arg in argv]
    resume = _argv_value(argv, "resume")
    if not resume or resume == "null" or _argv_value(argv, "hydra.run.dir") is not None:
        return
    if any(a in ("-m", "--multirun") for a in argv) or (_argv_value(argv, "mode") or "train") not in RUN_FOLDER_MODES:
        return
    from framework.checkpoint import resolve_resume

    try:
        _, folder = resolve_resume(resume)
    except ConfigError:
        return  # said in one line once the config is composed
    checkpoints = folder / "checkpoints"
    if not os.access(folder, os.W_OK) or (checkpoints.is_dir() and not os.access(checkpoints, os.W_OK)):
        raise ConfigError(f"resume={resume}: the run folder {folder} cannot be written (read-only?); copy the "
                          "run folder somewhere writable and resume from the copy")
    if "'" not in str(folder) and "\\" not in str(folder):  # (else Hydra's own new folder, as for any run)
        argv += [f"hydra.run.dir='{folder}'", "hydra.output_subdir=null"]  # its .hydra/ stays as the run wrote it


def run_cli(main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function; report composition mistakes on one line each, exit 2.

    After a multirun, exits with status 1 when some job did not complete (failed, diverged,
    stopped), as the sweep report counted them. A SIGTERM or Ctrl-C before training ends the
    program with one line, no traceback and no run folder (exit 143 or 130).
    """
    import atexit
    import gc

    from framework import interrupts

    # At exit the interpreter's collector would walk the whole heap (torch, timm, Hydra: ~0.9 s on
    # 2 CPU cores) to free what the exiting process gives back anyway; frozen objects are skipped.
    # Nothing else changes: every atexit handler still runs, logging's flush included
    # (bench/train_vs_plain.py measures it).
    atexit.unregister(gc.freeze)  # once per process, however many runs it starts
    atexit.register(gc.freeze)
    if os.getcwd() not in sys.path:  # the user's own modules (model._target_=mynets.build), as python -m does
        sys.path.insert(0, os.getcwd())
    interrupts.install()  # train.py did it already, before importing Hydra; setting it again changes nothing
    try:
        interrupts.arm()
        _run_cli(main)
        late = interrupts.take_pending()  # held while the run's last words were written
        if late is not None:
            print(f"{late} received as the program was ending: every file is written and the run's status stands",
                  file=sys.stderr)
    except interrupts.Interrupted as exc:  # anywhere before training, in our code or Hydra's
        interrupts.set_training(True)  # a second signal now is held: nothing interrupts this message
        from framework.config import reserved_dirs

        folders = reserved_dirs()
        if "hydra" in sys.modules:
            from hydra.core.hydra_config import HydraConfig
            from omegaconf import OmegaConf

            if HydraConfig.initialized():  # (composed only in part when the signal came during composition)
                folders.append(OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None,
                                                throw_on_missing=False))
        if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 owns the folder and says it once
            for folder in filter(None, folders):
                _drop_unused_run_dir(folder)
            sweep = any(a in ("-m", "--multirun") for a in sys.argv[1:])
            print(f"stopped: {exc.signal_name}; " + ("the sweep ends here: jobs that ran keep their folders and "
                                                      "summary.json (no sweep report)" if sweep else
                                                      "before training started; nothing was trained"), file=sys.stderr)
        sys.exit(exc.exit_code)
    finally:  # all is written and said: a late signal must not kill the exiting interpreter (it resets
        interrupts.ignore()  # Python handlers to the default action while it shuts down, not SIG_IGN)


def _run_cli(main: Callable[[], object]) -> None:
    """:func:`run_cli` once the signal handling is armed."""
    from framework import distributed

    global _TASK_STARTED
    _TASK_STARTED = False
    from framework import report

    report.LAST_SWEEP = None  # this command's sweep decides the exit status, not one an earlier call ran
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us, unformatted (whatever the user's shell set)
    with exit_on_user_error():
        argv = sys.argv[1:]
        _check_argv(argv)
        sys.argv[1:] = argv
    started = distributed.init()  # torchrun: join before Hydra picks the run folder
    if started and not distributed.is_main():
        sys.argv.append("hydra.output_subdir=null")  # rank 0 writes .hydra/ (config, overrides)
    ok = False
    try:
        with exit_on_user_error():
            main()
        ok = True
    except OSError as exc:  # Hydra could not create or write the run folder, before the task started
        import errno

        if _TASK_STARTED or errno.errorcode.get(exc.errno or -1) not in (*STORAGE_ERRNOS, "EACCES", "EPERM",
                                                                          "EEXIST", "ENOTDIR", "EISDIR"):
            raise
        print(f"error: hydra.run.dir: cannot create or write {exc.filename or 'the run folder'} ({exc.strerror}); "
              "choose a writable folder with hydra.run.dir=<folder>", file=sys.stderr)
        sys.exit(2)
    finally:
        if started:
            distributed.shutdown(barrier=ok)
    if report.LAST_SWEEP is not None and report.LAST_SWEEP[1]:
        sys.exit(1)
