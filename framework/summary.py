"""What a run says about itself when it ends: ``summary.json``, ``lr.png``, the results table and
the one line on how a failed or interrupted run ended."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from framework import distributed
from framework.errors import ConfigError

log = logging.getLogger("framework.run")


def objective_of(best: dict[str, Any], monitor: str, mode: str) -> float:
    """The objective a run returns to Hydra sweepers: the best epoch's ``monitor`` value (with
    EMA on, of the weights its ``best_weights`` names: ``val_ema/<m>`` for ``ema``), or the
    worst value for ``mode`` when there is none (0.0 for ``max``, ``+inf`` for ``min``: a
    diverged or failed run, a run stopped before its first epoch ended)."""
    from framework.tasks import worst
    from framework.trainer.ema import best_value

    value = best_value(best, monitor) if best else None
    return float(value) if value is not None else worst(mode)


def json_number(value: Optional[float]) -> Optional[float]:
    """``value`` as ``summary.json`` holds it: None (``null``) for a missing or non-finite value,
    so the file stays standard JSON."""
    import math

    return float(value) if value is not None and math.isfinite(value) else None


def returned_objective(summary: dict[str, Any]) -> float:
    """The objective of a finished run from its ``summary.json``: ``objective``, or the worst
    value for its ``objective_mode`` (``max`` when absent: summaries older than tasks) when it is
    ``null``."""
    from framework.tasks import worst

    value = summary.get("objective")
    return float(value) if value is not None else worst(summary.get("objective_mode") or "max")


def start_summary(cfg: Any, built: Any, run_dir: Path, overrides: list[str], lr0_auto: Optional[dict[str, Any]],
                  resumed: bool) -> dict[str, Any]:
    """The summary of a run about to train (status ``failed`` until it ends otherwise): its LR
    facts as built (:class:`~framework.build.Built`), its plan's length, where and how it runs.

    Args:
        cfg: the config the run was built from; built: the built run; run_dir: its folder;
        overrides: the command line's overrides; lr0_auto: how ``lr0=auto`` chose lr0, if it did;
        resumed: the run continues from a checkpoint (an earlier ``lr0_auto`` record is kept).
    """
    from framework.tasks import describe, monitor_of

    plan = built.plan
    task = built.trainer.task
    monitor, mode = monitor_of(task)
    return {
        "status": "failed",
        "objective_name": monitor,
        "objective_mode": mode,
        "objective": None,
        "task": describe(task),
        "classes": getattr(task, "classes", None),
        "lr0": cfg.lr0,
        "lrf": cfg.lrf,
        "lr0_effective": built.lr0_effective,
        "lr_scaling": cfg.lr_scaling,
        "base_lrs": built.base_lrs,
        "optimizer": type(built.trainer.optimizer).__name__,  # its class: the LR doctor's band is its family's
        **({"schedule_file": plan.schedule_file} if plan.schedule_file else {}),
        "planned_steps": plan.total_steps,
        "planned_epochs": plan.total_epochs,
        "global_batch": built.global_batch,
        "device": str(built.device),
        "world_size": distributed.world_size(),
        "run_dir": str(run_dir),
        "overrides": overrides,
        **({"lr0_auto": lr0_auto} if lr0_auto else _earlier_lr0_auto(run_dir) if resumed else {}),
        **project_state(),
    }


def project_state() -> dict[str, Any]:
    """What the run's code and configs were: the git commit and dirty flag of the project the
    command ran from (the current folder's checkout: the user's project, or this framework's
    checkout for ``python train.py``) and the installed ``lrframe`` version."""
    from importlib.metadata import PackageNotFoundError, version

    from framework.loggers import git_state

    try:
        installed = version("lrframe")
    except PackageNotFoundError:  # run from a checkout that was never installed
        installed = None
    return {**git_state(Path.cwd()), "lrframe_version": installed}


def earlier_wall(run_dir: Path) -> float:
    """(s) The ``wall_time_s`` a resumed run's ``summary.json`` holds, its earlier segments' (0 if
    none), for a checkpoint that does not record its own (``wall_time_s`` in the checkpoint, which
    a Ray trial restored from its checkpoint also has); the run's ``start`` moves back by it, so
    its ``wall_time_s`` covers every segment, as ``train_time_s`` does."""
    from framework.loggers import read_summary

    value = read_summary(run_dir).get("wall_time_s")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _earlier_lr0_auto(run_dir: Path) -> dict[str, Any]:
    """A resumed ``lr0=auto`` run keeps the record of how its lr0 was chosen."""
    from framework.loggers import read_summary

    earlier = read_summary(run_dir).get("lr0_auto")
    return {"lr0_auto": earlier} if earlier else {}


def write_untrained_summary(run_dir: Path, status: str, **fields: Any) -> None:
    """``summary.json`` of a job that trained nothing (``mode=lr_find``, ``mode=plot_lr``, a
    sweep job that failed before training): no steps, no metrics, the git state, ``fields``."""
    from framework.loggers import write_json

    write_json({"status": status, "objective": None, "steps": 0, "best": {}, "final": {}, "run_dir": str(run_dir),
                **project_state(), **fields}, run_dir / "summary.json")


def print_table(summary: dict[str, Any]) -> None:
    """Print a finished run's results as a rich table (the best epoch's monitored metric, the
    final metrics, base -> last LR (a replay: its file -> last LR), epochs and steps against the
    plan, an early stop, batch, device, wall time), then the whole run folder."""
    from rich.console import Console
    from rich.table import Table

    from framework.doctor.sweep import diagnosis_cell
    from framework.trainer.ema import best_value as value_of

    best, final = summary["best"], summary["final"]
    monitor = summary.get("objective_name", "val/acc")
    table = Table(title=f"run {summary['status']}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    weights = f", {best['best_weights']} weights" if best and "best_weights" in best else ""
    best_value = (f"{value_of(best, monitor):.4f} (epoch {best['epoch'] + 1} of {summary['planned_epochs']}{weights})"
                  if best and value_of(best, monitor) is not None else "- (no epoch finished)")
    shown = [k for k in final if k.startswith("val/") and k != "val/loss"] if final else []
    rows = [
        (f"best {monitor} ({summary.get('objective_mode', 'max')})", best_value),
        *((f"final {k}", f"{final[k]:.4f}" if k in final else "-") for k in (*shown, "val/loss", "train/loss")),
        (("replayed lr -> last lr", f"{Path(summary['schedule_file']).name} (not lr0) -> {summary['last_lr']:.4g}")
         if summary.get("schedule_file") and summary.get("last_lr") is not None else
         ("base lr -> last lr", f"{next(iter(summary['base_lrs'].values())):.4g} -> {summary['last_lr']:.4g}")),
        ("epochs / steps", f"{summary['epochs']} / {summary['steps']} of {summary['planned_epochs']} / "
                           f"{summary['planned_steps']}"),
        *([("early stopping", _early_stop_line(summary["early_stopping"]))] if "early_stopping" in summary else []),
        ("batch", f"{summary['global_batch']} global ({summary['world_size']} process(es))"),
        ("device", summary["device"]),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
        *([("LR doctor", diagnosis_cell(summary["lr_diagnosis"]))] if summary.get("lr_diagnosis") else []),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    if summary.get("lr_diagnosis"):
        print(f"LR doctor: {summary['lr_diagnosis']['reason']}")
    print(f"run folder: {summary['run_dir']}")  # whole, never cut to the table's width


def _early_stop_line(block: dict[str, Any]) -> str:
    """The results table's line on an early stop: after which epoch, and the judged metric's best."""
    best = "-" if block["best_value"] is None else f"{block['best_value']:.4f} at epoch {block['best_epoch'] + 1}"
    return (f"after epoch {block['stopped_after_epoch'] + 1}: no {block['monitor']} improvement > "
            f"{block['min_delta']:g} in {block['patience']} validations (best {best})")


def say_how_it_ended(exc: BaseException, summary: dict[str, Any], written: bool, trainer: Any, command: str) -> None:
    """One line on stderr for a run that failed or was interrupted: its status as
    ``summary.json`` holds it (or that the file could not be written), and how to continue.
    Nothing for a user mistake found during training (an unreadable image): its own line says
    what to fix."""
    if isinstance(exc, ConfigError):
        return
    last = Path(summary["run_dir"]) / "checkpoints" / "last.pt"
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    said = f"summary.json says status: {summary['status']}" if written else "summary.json could not be written"
    step = trainer.global_step
    if last.is_file():
        saved = f" (step {trainer.saved_step}: the resume redoes the steps after it)" if trainer.saved_step not in (
            None, step) else ""
        print(f"{what} at step {step}; {said}; the last checkpoint is {last}{saved}; continue with: {command}",
              file=sys.stderr)
    else:
        print(f"{what} at step {step} before the first checkpoint; {said}; start the run again", file=sys.stderr)


def finish(trainer: Any, summary: dict[str, Any], start: float, cfg: Any) -> Optional[OSError]:
    """Complete and write ``summary.json`` and ``lr.png``, however the run ended. With EMA on,
    ``best_weights`` (``raw`` or ``ema``) says which weights the best epoch and ``best.pt`` are
    of. A run that early stopping ended also gets ``lr_plan.csv``, the LR it planned for every
    step up to ``T`` and every group (:func:`framework.loggers.write_plan_csv`), drawn dashed in
    ``lr.png`` beside the applied one.

    Returns:
        None, or the error that kept ``summary.json`` from being written (disk full, folder
        gone): the run's other files stay as they are; the caller says so.
    """
    from framework.loggers import plot_lr, write_json, write_plan_csv

    history, plan, first = trainer.history, trainer.plan, trainer.group_names[0]
    summary.update(
        best=trainer.best,
        **({"best_weights": trainer.best.get("best_weights")} if getattr(trainer, "ema", None) is not None else {}),
        final=trainer.final,
        steps=trainer.global_step,
        epochs=trainer.final.get("epoch", -1) + 1,
        skipped_steps=trainer.skipped_steps,
        clipped_frac=trainer.clipped_frac,  # share of the applied steps that were clipped; null without clipping
        rollbacks=trainer.guard.rollbacks,
        last_lr=history[first][-1] if history["step"] else None,
        wall_time_s=time.time() - start,  # every segment's: a resume's start moved back (earlier_wall)
        train_time_s=trainer.train_time_s,
    )
    if getattr(trainer, "lr_doctor", None) is not None and history["step"]:
        summary["lr_diagnosis"] = lr_diagnosis(trainer.run_dir, summary)
    try:
        write_json(summary, trainer.run_dir / "summary.json")
    except OSError as exc:
        return exc
    if history["step"]:
        try:
            planned = None
            if summary.get("stop_reason") == "early_stopping":  # what it planned, beside what it applied
                planned = plan.group_lrs(trainer.optimizer)
                write_plan_csv(planned, trainer.run_dir / "lr_plan.csv")
            plot_lr(history["step"], {n: history[n] for n in trainer.group_names}, trainer.run_dir / "lr.png",
                    warmup_steps=plan.warmup_steps,
                    title=plan_title(plan, cfg), planned=planned)
        except OSError as exc:
            log.error("could not write lr.png: %s", exc)
    return None


def lr_diagnosis(run_dir: Path, summary: dict[str, Any]) -> Optional[dict[str, Any]]:
    """``summary.json``'s ``lr_diagnosis``: :func:`framework.doctor.diagnose_run` on the run's
    ``steps.csv`` (its per-interval signals written as ``lr_doctor.csv``), with the range test's
    lower suggestions in the reason when ``lr0=auto`` chose lr0 and the verdict is too high; None
    when it cannot be made (it never fails the run)."""
    from framework.doctor import diagnose_run
    from framework.doctor.live import alternatives_line

    try:
        diagnosis = diagnose_run(run_dir, summary=summary, write=True)
    except Exception as exc:  # a diagnosis is never worth the run's record
        log.error("LR doctor: no diagnosis: %s: %s", type(exc).__name__, exc)
        return None
    if summary.get("lr0_auto") and diagnosis["verdict"] in ("too_high", "diverged"):
        said = alternatives_line(summary["lr0_auto"])
        if said:
            diagnosis["reason"] += said
    return diagnosis


def plan_title(plan: Any, cfg: Any) -> str:
    """The LR figures' title: the schedule's class, ``lr0`` and ``lrf``."""
    return f"{type(plan.schedule).__name__} (lr0={cfg.lr0:g}, lrf={cfg.lrf:g})"
