"""Resuming runs: check ``resume=...`` against the run's config, load the checkpoint into a
built trainer, resume a requeued sweep job's unfinished run, and say how to continue a run."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from framework import distributed
from framework.config import plain_config, with_values
from framework.errors import ConfigError
from framework.search import SEARCH_KEY

log = logging.getLogger(__name__)


#: Optimizer keys that decide which state a torch optimizer keeps per parameter (Adam's
#: ``max_exp_avg_sq``, RMSprop's ``grad_avg``): a resume cannot change them.
STATE_SHAPING_KEYS = ("amsgrad", "centered")

#: Keys that may change between a run and its resume without being reported.
RESUME_FREE_KEYS = ("resume", "resume_allow_changes", "device", "mode", "trainer.stop_after_steps",
                    "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.grad_norm_every_n_steps",
                    "trainer.malloc_trim_threshold_mb", "loader", "num_workers", "lr_finder",
                    "logger", SEARCH_KEY)  # trackers and the search trial record; they change nothing trained


class NothingToResume(Exception):
    """``resume=`` names a run that completed, from its last checkpoint and with its own config,
    or one that early stopping ended (on purpose; unless the resume changes
    ``trainer.early_stopping``): there is nothing to continue (a requeued or repeated resume
    command is a no-op, exit 0).

    Attributes:
        folder: the run folder.
        summary: its ``summary.json``.
    """

    def __init__(self, folder: Path, summary: dict[str, Any]):
        self.folder, self.summary = folder, summary
        block = summary.get("early_stopping") or {}
        if summary.get("stop_reason") == "early_stopping" and block.get("stopped_after_epoch") is not None:
            epoch = block["stopped_after_epoch"] + 1
            super().__init__(f"resume={folder}: early stopping ended the run after epoch {epoch}"
                             f" ({block.get('monitor')} did not improve by more than {block.get('min_delta')} in "
                             f"{block.get('patience')} validations; summary.json); it ended on purpose, nothing to "
                             "continue (to train on, change trainer.early_stopping with resume_allow_changes=true)")
            return
        super().__init__(f"resume={folder}: the run completed all its {summary.get('steps')} steps (summary.json); "
                         "nothing to continue (to train it further, give it more epochs with resume_allow_changes=true)")


def prepare_resume(cfg: DictConfig) -> tuple[Path, dict[str, Any], DictConfig]:
    """Check ``resume=...`` before building anything.

    Returns:
        ``(run folder, checkpoint state, config)``: the config to build, ``cfg`` itself or, when
        it says ``lr0=auto``, a copy with the ``lr0`` the run chose (``cfg`` is not changed).

    Raises:
        ConfigError: missing or unreadable checkpoint, a config that differs from the run's
            (unless ``resume_allow_changes=true``), naming the differing keys, another kind of
            optimizer (its state cannot be carried over, whatever ``resume_allow_changes``) or
            another ``amsgrad`` / ``centered``,
            another number of data-parallel processes than the run had, or a ``steps.csv`` /
            ``epochs.csv`` that is unreadable or lacks the checkpoint's steps / epochs.
        NothingToResume: the run completed, and this is its last checkpoint and its config; or
            early stopping ended it, this is its last checkpoint, and ``trainer.early_stopping``
            is unchanged (other changes, allowed or not, would not make it train on).
    """
    from framework.checkpoint import config_differences, read_resume_checkpoint, resolve_resume

    file, folder = resolve_resume(cfg.resume)
    state = read_resume_checkpoint(file, "resume")
    saved_world, world = state.get("world_size", 1), distributed.world_size()
    if saved_world != world:
        raise ConfigError(f"resume={cfg.resume}: the run was trained by {saved_world} process(es) and this is "
                          f"{world} (data order and per-rank batches depend on it); resume with the same number of "
                          f"processes (torchrun --nnodes x --nproc_per_node = {saved_world})")
    saved_opt = (state.get("config") or {}).get("optimizer") or {}
    if saved_opt and any(saved_opt.get(k) != cfg.optimizer.get(k) for k in ("_target_", "opt")):
        def kind(node: Any) -> str:
            return str(node.get("opt") or node.get("_target_"))

        raise ConfigError(f"resume={cfg.resume}: the run was trained with optimizer {kind(saved_opt)} and this config "
                          f"builds {kind(cfg.optimizer)}; an optimizer's state cannot be carried to another kind: "
                          "resume with the run's optimizer, or start a new run")
    changed = [k for k in STATE_SHAPING_KEYS if saved_opt and saved_opt.get(k) != cfg.optimizer.get(k)]
    if changed:
        raise ConfigError(f"resume={cfg.resume}: optimizer.{changed[0]}={cfg.optimizer.get(changed[0])} changes what the "
                          f"optimizer keeps per parameter (the run had "
                          f"{saved_opt[changed[0]] if changed[0] in saved_opt else 'its default'}); resume with the "
                          "run's value, or start a new run")
    saved_lr0 = (state.get("config") or {}).get("lr0")
    if cfg.lr0 == "auto" and saved_lr0 is not None:  # the run chose it already: keep its value
        cfg = with_values(cfg, lr0=saved_lr0)
    diffs = config_differences(state.get("config") or {}, plain_config(cfg), RESUME_FREE_KEYS)
    if diffs and not cfg.resume_allow_changes:
        from framework.loggers import read_summary

        overrides = " ".join(rerun_overrides(read_summary(folder).get("overrides", [])))
        hint = f" ({overrides})" if overrides else ""
        raise ConfigError(f"resume={cfg.resume}: the config differs from the run's in {', '.join(diffs)}; "
                          f"use the run's overrides{hint}, or resume_allow_changes=true to continue anyway")
    from framework.loggers import read_summary

    earlier = read_summary(folder)
    last = earlier.get("status") == "completed" and state["step"] >= earlier.get("steps", float("inf"))
    if last and earlier.get("stop_reason") == "early_stopping" and not any(
            d.startswith("trainer.early_stopping.") for d in diffs):  # it ended on purpose
        raise NothingToResume(folder, earlier)
    if diffs:
        log.warning("resuming with changed keys: %s", ", ".join(diffs))
    elif last:
        raise NothingToResume(folder, earlier)
    _check_csvs(folder, state)
    return folder, state, cfg


def _check_csvs(folder: Path, state: dict[str, Any]) -> None:
    """The run's LR history is rebuilt from ``steps.csv`` and its epochs continue ``epochs.csv``:
    ``steps.csv`` must hold the checkpoint's steps ``0 … k-1`` with the LR of every param group,
    ``epochs.csv`` its finished epochs ``0 … e-1``.

    Raises:
        ConfigError: a file is missing, unreadable (not text, not CSV) or lacks rows or LR
            columns (nothing has been changed on disk).
    """
    import csv

    from framework.loggers import truncate_csv

    names = [g.get("name", str(i)) for i, g in enumerate(state["optimizer"]["param_groups"])]
    columns = ["lr"] + [f"lr/{name}" for name in names[1:]]
    fix = "restore the run's {0}, or start a new run"
    try:
        rows = truncate_csv(folder / "steps.csv", "step", state["step"], write=False)
        epochs = truncate_csv(folder / "epochs.csv", "epoch", state["epoch"], write=False)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise ConfigError(f"resume={folder}: a CSV of the run cannot be read ({type(exc).__name__}); "
                          + fix.format("steps.csv and epochs.csv"))
    if sorted(int(r["step"]) for r in rows) != list(range(state["step"])) or any(
            not r.get(c) for r in rows for c in columns):
        raise ConfigError(f"resume={folder}: steps.csv lacks rows or LR columns of the checkpoint's "
                          f"{state['step']} steps; " + fix.format("steps.csv"))
    if sorted(int(r["epoch"]) for r in epochs) != list(range(state["epoch"])):
        what = "is missing" if not (folder / "epochs.csv").is_file() else "lacks rows of"
        raise ConfigError(f"resume={folder}: epochs.csv {what} the checkpoint's {state['epoch']} finished "
                          "epochs; " + fix.format("epochs.csv"))


def resume_trainer(trainer: Any, state: dict[str, Any]) -> None:
    """Load ``state`` into a built trainer, cut its run folder's CSVs back to the checkpoint
    (``steps.csv`` was checked by :func:`prepare_resume`) and remove the temporary files a
    killed process left half-written (``*.tmp``; the files they were for are intact).

    Raises:
        ConfigError: the checkpoint holds another model or optimizer layout than the built one.
    """
    from framework.loggers import truncate_csv

    first, others = trainer.group_names[0], trainer.group_names[1:]
    steps_csv = trainer.run_dir / "steps.csv"
    rows = truncate_csv(steps_csv, "step", state["step"], write=False)
    trainer.load_state_dict(state)
    if trainer.is_main:  # rank 0 writes
        truncate_csv(steps_csv, "step", state["step"])
        truncate_csv(trainer.run_dir / "epochs.csv", "epoch", state["epoch"])
        for tmp in [*trainer.run_dir.glob("*.tmp"), *trainer.run_dir.glob("checkpoints/*.tmp")]:
            tmp.unlink(missing_ok=True)  # half-written by a killed process (its target is intact)
    trainer.history["step"] = [int(r["step"]) for r in rows]
    trainer.history[first] = [float(r["lr"]) for r in rows]
    for name in others:
        trainer.history[name] = [float(r[f"lr/{name}"]) for r in rows]
    log.info("resumed at step %d (epoch %d, batch %d) in %s", trainer.global_step, trainer.epoch, trainer.batch,
             trainer.run_dir)


def resume_requeued_job(cfg: DictConfig, run_dir: Path, hc: Any) -> DictConfig:
    """A multirun job whose folder holds an unfinished run with a checkpoint (a SLURM job
    preempted, timed out or lost with its node, then requeued by the submitit launcher into the
    same folder) resumes it instead of starting over; so does a run paused at a rung of ASHA with
    promotions (``pruned.rung`` in its summary), which the sweeper launches again to promote it.
    Completed, diverged and other pruned runs are left alone."""
    from hydra.types import RunMode

    from framework.loggers import read_summary

    if hc.mode != RunMode.MULTIRUN or cfg.resume is not None or not (run_dir / "checkpoints" / "last.pt").is_file():
        return cfg
    summary = read_summary(run_dir)
    status = summary.get("status")  # None: killed before it wrote its summary
    paused = status == "pruned" and (summary.get("pruned") or {}).get("rung") is not None
    if status in ("completed", "diverged", "pruned") and not paused:
        return cfg
    if paused:  # waiting at a rung of ASHA with promotions, and now promoted by the sweeper
        log.info("this job's folder holds its trial's run, paused after epoch %d: resuming it", summary["pruned"]["rung"])
    else:
        log.warning("this job's folder holds an unfinished run (status %s): resuming it (resume=%s)", status, run_dir)
    return with_values(cfg, resume=str(run_dir))


def rerun_overrides(overrides: list[str]) -> list[str]:
    """A run's command-line overrides without those that stopped or resumed it or placed its
    folder (a resume writes into the run's own folder), nor the search trial it reported to (a
    continued pruned trial trains on alone): what continues it."""
    return [o for o in overrides if not o.startswith(("resume=", "trainer.stop_after_steps=", "hydra.run.dir=",
                                                      "hydra.output_subdir=", f"{SEARCH_KEY}="))]


def continue_command(overrides: list[str], run_dir: Path, installed: bool = False) -> str:
    """The command that continues this run: ``python <this script>`` (as run, relative to the
    current folder when it lies below it), ``lrframe`` (the installed command; ``python -m
    framework`` as such, and ``installed=True``: a process some other program started, such as a
    Ray Tune worker), or torchrun with the same processes (``--standalone`` on one machine;
    several machines: the same ``--nnodes`` plus the user's own rendezvous arguments), the run's
    overrides (quoted for the shell where needed: ``'logger=[csv,mlflow]'``) and ``resume=<run_dir>``."""
    import shlex

    argv0 = "" if installed or not sys.argv else sys.argv[0]
    script: Optional[Path] = Path(argv0) if argv0.endswith(".py") and Path(argv0).name != "__main__.py" else None
    if script is not None and script.is_absolute() and script.resolve().is_relative_to(Path.cwd().resolve()):
        script = script.resolve().relative_to(Path.cwd().resolve())  # as typed from here: train.py
    program = str(script) if script is not None else "-m framework"  # torchrun / python take the package too
    world = distributed.world_size()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world == 1:
        start = f"python {script}" if script is not None else "lrframe"
    elif per_node == world:
        start = f"torchrun --standalone --nproc_per_node={world} {program}"
    else:
        start = f"torchrun --nnodes={world // per_node} --nproc_per_node={per_node} <rendezvous arguments> {program}"
    return " ".join([start, *map(shlex.quote, rerun_overrides(overrides)), shlex.quote(f"resume={run_dir}")])


def also_log_to(run_dir: Path) -> Optional[logging.Handler]:
    """A resumed run's log lines also go to its own ``train.log`` (Hydra's file handler writes
    into this invocation's folder); None when that is the same file."""
    root = logging.getLogger()
    target = (run_dir / "train.log").resolve()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if any(Path(h.baseFilename).resolve() == target for h in files):
        return None
    handler = logging.FileHandler(target, mode="a", delay=True)  # opened at its first line
    if files:
        handler.setFormatter(files[0].formatter)
    root.addHandler(handler)
    return handler
