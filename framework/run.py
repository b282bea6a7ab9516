"""One training run from a composed config: validate once, resume or choose lr0, build, train,
and leave the run folder saying how it ended.

The order is one-way (README, "Layout"): compose -> :func:`~framework.config.validate` -> (a
resume's checkpoint, or ``lr0=auto``'s range test, each giving a new config) ->
:func:`~framework.build.build` -> ``Trainer.fit`` -> ``summary.json``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from framework import distributed, interrupts, tracking
from framework.config import validate
from framework.errors import ConfigError
from framework.resume import (NothingToResume, also_log_to, continue_command, prepare_resume, resume_requeued_job,
                              resume_trainer)
from framework.summary import (earlier_wall, finish, json_number, objective_of, print_table, returned_objective,
                               say_how_it_ended, start_summary)

log = logging.getLogger(__name__)

__all__ = ["train"]


def train(cfg: DictConfig, run_dir: Optional[str | Path] = None) -> float:
    """Run one training job described by ``cfg`` and return the objective: the best epoch's value
    of the task's ``monitor`` (``val/acc`` for classification).

    Writes into the run folder (Hydra's output dir unless ``run_dir`` is given): ``steps.csv``,
    ``epochs.csv``, ``summary.json``, ``lr.png`` and ``checkpoints/``.

    Args:
        cfg: the composed config (``conf/train.yaml``).
        run_dir: output folder; default Hydra's ``runtime.output_dir``.

    Returns:
        The best epoch's ``task.monitor`` value, for Hydra sweepers to maximise or minimise as
        ``task.mode`` says (``hydra.sweeper.direction``).

    Raises:
        ConfigError: a user mistake, before any training and before any file is written (an
            unreadable image file of ``dataset=imagefolder`` is found when it is first read,
            during training: the run's ``summary.json`` says ``failed``).
        Interrupted: SIGTERM / Ctrl-C before training (nothing trained).
        OSError: the disk could not take the run's files (the last good checkpoint is kept).
        Diverged: the loss became non-finite; ``summary.json`` says ``status: diverged`` with
            the step and LR (objective the worst value: 0.0 for ``mode=max``, ``null`` for
            ``min``, whose worst is ``+inf``).
    """
    interrupts.set_training(False)  # until fit() starts, a signal ends the program (nothing trained yet)
    interrupts.check()
    start = time.time()
    overrides: list[str] = []
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        run_dir, overrides = hc.runtime.output_dir, list(hc.overrides.task)
        cfg = resume_requeued_job(cfg, Path(run_dir), hc)
    if cfg.mode in ("test", "predict"):  # the evaluated run's own config, validated there
        from framework.evaluate import evaluate_checkpoint

        if distributed.world_size() > 1:
            raise ConfigError(f"mode={cfg.mode}: evaluates in one process; run it without torchrun")
        return evaluate_checkpoint(cfg, overrides)
    cfg = validate(cfg, overrides)  # once; later stages get new config values, never an edited one
    run_dir = Path(run_dir)
    distributed.quiet_other_ranks()
    if distributed.world_size() > 1 and (cfg.mode == "lr_find" or cfg.lr0 == "auto"):
        key = "mode=lr_find" if cfg.mode == "lr_find" else "lr0=auto"
        raise ConfigError(f"{key}: the LR range test runs in one process; run python train.py mode=lr_find "
                          "(same config, batch_size = the global batch) and start torchrun with lr0=<its answer>")
    resume_state = None
    if cfg.resume is not None and cfg.mode == "train":
        try:
            run_dir, resume_state, cfg = prepare_resume(cfg)
        except NothingToResume as done:  # the same command again (a requeue, a second paste): a no-op
            print(str(done), file=sys.stderr)
            return returned_objective(done.summary)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = also_log_to(run_dir) if resume_state is not None and distributed.is_main() else None
    try:
        return _train(cfg, run_dir, resume_state, overrides, start)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _train(cfg: DictConfig, run_dir: Path, resume_state: Optional[dict[str, Any]], overrides: list[str],
           start: float) -> float:
    """:func:`train` once the run folder is known (and a resume's checkpoint read)."""
    from framework.build import build
    from framework.lr_finder.auto import choose_lr0, lr_find

    if cfg.mode == "lr_find":
        return lr_find(cfg, run_dir)
    trackers = tracking.configured(cfg) if cfg.mode == "train" and distributed.is_main() else {}
    tracking.check(trackers)  # installed and reachable, before the range test or the build
    trackers = tracking.Trackers(trackers)
    trackers.prepare()  # the trackers' process imports their packages while the run is built
    try:
        lr0_auto = None
        if cfg.lr0 == "auto":
            cfg, lr0_auto = choose_lr0(cfg, run_dir)
        built = build(cfg, run_dir, trackers)
        if cfg.mode == "plot_lr":
            from framework.preview import write_plan

            return write_plan(built, run_dir, " ".join(overrides)) if distributed.is_main() else 0.0
        trainer = built.trainer
        if trainer.doctor is not None and lr0_auto:  # a too-high warning names the range test's other suggestions
            trainer.doctor.lr0_auto = lr0_auto
        if resume_state is not None:
            resume_trainer(trainer, resume_state)
        _log_lr_facts(cfg, built)
        summary = start_summary(cfg, built, run_dir, overrides, lr0_auto, resumed=resume_state is not None)
        if cfg.get("search") is not None:  # before the trackers: a study out of reach opens no tracker run
            trainer.trial = _start_search(cfg, run_dir, summary, resume_state is not None)
            if trainer.doctor is not None:  # a PBT trial that went on from another's run at another lr0
                from framework.doctor import lr0_changes

                trainer.doctor.lr0_changed = lr0_changes(summary)
        if trackers:
            summary["trackers"] = tracking.start_trackers(cfg, built, summary, run_dir)
    except BaseException:  # the run ends before its trackers opened their runs: end their process now
        trackers.close()
        raise
    if resume_state is not None:  # the wall time of the run's earlier segments counts too (the checkpoint's,
        earlier = resume_state.get("wall_time_s")  # else an older checkpoint's summary's)
        start -= earlier if earlier is not None else earlier_wall(run_dir)
    trainer.run_state.wall_start = start  # each checkpoint records the wall time so far
    return _fit(trainer, summary, cfg, overrides, start)


def _start_search(cfg: DictConfig, run_dir: Path, summary: dict[str, Any], resumed: bool) -> Any:
    """The run's search trial hook (:func:`framework.search.start_trial`) on rank 0; True on the
    other ranks (they follow rank 0's decisions). Every rank learns whether it started.

    Raises:
        ConfigError: the hook could not start (on every rank, with rank 0's message).
    """
    from framework.search import start_trial

    hook: Any = True
    refusal: Optional[ConfigError] = None

    def start() -> str:
        nonlocal hook, refusal
        try:
            hook = start_trial(cfg, run_dir, summary, resumed)
        except ConfigError as exc:
            refusal = exc
            return "\n".join(exc.messages)
        return ""

    said = distributed.rank_zero_value("search/start", start)
    if refusal is not None:
        raise refusal
    if said:
        raise ConfigError(said.splitlines())
    return hook


def _log_lr_facts(cfg: DictConfig, built: Any) -> None:
    """Log the plan's length, the warmup and the base LRs as built (batch-size scaling, groups)."""
    plan = built.plan
    log.info(
        "T=%d optimizer steps (%d per epoch), warmup %d steps, scheduler %s, device %s, global batch %d (%d "
        "process(es))", plan.total_steps, plan.steps_per_epoch, plan.warmup_steps,
        type(plan.schedule).__name__, built.device, built.global_batch, distributed.world_size(),
    )
    if plan.warmup_steps and plan.schedule(0) < 1:
        log.warning(
            "%s starts at %.3g*lr0, so after the %d-step warmup to lr0 the LR drops; it has its own "
            "rise: consider warmup_epochs=0", type(plan.schedule).__name__, plan.schedule(0), plan.warmup_steps,
        )
    if cfg.lr_scaling != "none":
        log.info("lr_scaling=%s: lr0 %g x %.4g (global batch %d / lr_base_size %d%s) = %g effective",
                 cfg.lr_scaling, cfg.lr0, built.lr_scaling_factor, built.global_batch, cfg.lr_base_size,
                 ", sqrt" if cfg.lr_scaling == "sqrt" else "", built.lr0_effective)
    elif built.base_lr != cfg.lr0:
        log.info("base LR from optimizer.lr=%g (lr0=%g is not used by this optimizer config)", built.base_lr, cfg.lr0)
    if len(set(built.base_lrs.values())) > 1:
        log.info("base LR per group: %s", ", ".join(f"{n} {v:.4g}" for n, v in built.base_lrs.items()))


def _continue(summary: dict[str, Any], overrides: list[str], run_dir: Path) -> str:
    """:func:`~framework.resume.continue_command` of this run: a Ray Tune trial (its summary has a
    ``tune`` block) runs in Ray's worker process with its overrides in the summary, so its command is
    ``lrframe <the trial's overrides> resume=<folder>``."""
    trial = summary.get("tune") is not None
    return continue_command(list(summary.get("overrides") or []) if trial else overrides, run_dir, installed=trial)


def _fit(trainer: Any, summary: dict[str, Any], cfg: DictConfig, overrides: list[str], start: float) -> float:
    """Train, then complete ``summary.json`` however it ended and say so; the objective."""
    from framework.trainer import Diverged

    run_dir = Path(summary["run_dir"])
    monitor, mode = summary["objective_name"], summary["objective_mode"]
    objective = objective_of({}, monitor, mode)  # the worst, until an epoch is best
    interrupts.set_training(True)  # a signal from here on: the trainer stops at a step boundary, or the files are finished
    ended: Optional[BaseException] = None  # how fit() failed, if it did (not a divergence)
    unwritten: Optional[OSError] = None  # why summary.json could not be written, if it could not
    try:
        result = trainer.fit()
        stopped = result["stopped"]
        objective = objective_of(trainer.best, monitor, mode)
        summary.update(status="stopped" if stopped else "completed", objective=json_number(objective),
                       **({"stop_reason": stopped, "resume_with": f"resume={run_dir}"} if stopped else {}))
        if result.get("early_stopping"):  # ended on purpose: completed, and why before T
            summary.update(stop_reason="early_stopping", early_stopping=result["early_stopping"])
        if result.get("pruned"):  # the search's pruner stopped it: resumable, but the sweep has moved on
            summary.update(status="pruned", pruned=result["pruned"], resume_with=f"resume={run_dir}")
    except Diverged as exc:
        summary.update(status="diverged", objective=json_number(objective), diverged_step=exc.step, diverged_lr=exc.lr,
                       error=str(exc))
        raise
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        summary.update(status="stopped" if interrupted else "failed",
                       objective=json_number(objective_of(trainer.best, monitor, mode)) if trainer.best else None,
                       error=f"{type(exc).__name__}: {exc}",
                       **({"stop_reason": "SIGINT (second, mid-step)", "resume_with": f"resume={run_dir}"}
                          if interrupted else {}))
        ended = exc
        raise
    finally:
        if distributed.is_main():
            lost = trainer.trackers.lost() if trainer.trackers else []
            if lost:
                summary["trackers_lost"] = lost
            unwritten = finish(trainer, summary, start, cfg)
            if trainer.trial not in (None, True):
                trainer.trial.finish(summary)
            if trainer.trackers:  # after summary.json and lr.png exist: they are artifacts
                trainer.trackers.finish(summary)
            if ended is not None:
                say_how_it_ended(ended, summary, unwritten is None, trainer, _continue(summary, overrides, run_dir))
    if unwritten is not None:  # trained, but its record is missing: not a success
        raise unwritten
    if distributed.is_main():
        print_table(summary)
        if summary["status"] in ("stopped", "pruned"):
            print(f"{summary['status']} at step {summary['steps']} of {summary['planned_steps']}; continue with: "
                  f"{_continue(summary, overrides, run_dir)}")
    late = interrupts.take_pending() or trainer.late_signal
    if summary.get("stop_reason") in ("SIGTERM", "SIGINT") and _in_sweep():
        interrupts.hold(summary["stop_reason"])  # the sweep's next job does not start
    if late is not None and distributed.is_main() and summary["status"] == "completed":
        print(f"{late} received after the last step: the run completed and its files are written", file=sys.stderr)
    trainer.forward_stop_signal()
    return objective


def _in_sweep() -> bool:
    """True inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
