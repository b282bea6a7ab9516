"""One training run from a composed config: validate, build, train, write the run folder."""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from framework import distributed, interrupts, registry
from framework.config import RESERVED_KEYS, ConfigError, check_overrides, validate, with_values
from framework.resume import (NothingToResume, plain_config, prepare_resume, rerun_overrides, resume_requeued_job,
                              resume_trainer)

log = logging.getLogger(__name__)

OBJECTIVE = "val/acc"  # returned to Hydra sweepers (maximise)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device).

    Args:
        seed: any integer; NumPy gets ``seed % 2**32``.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str):
    """``auto`` -> CUDA if available, else Apple MPS, else CPU; other names as given. In a
    data-parallel run ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: the named device is not available here, or ``cuda:N`` in a data-parallel
            run (every process would take GPU N).
    """
    import torch

    if distributed.world_size() > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
        return torch.device("cuda", distributed.cuda_device_index())
    if distributed.world_size() > 1 and name.startswith("cuda:"):
        raise ConfigError(f"device={name}: under torchrun each process takes its own GPU (LOCAL_RANK); use "
                          "device=auto or device=cuda (pick GPUs with CUDA_VISIBLE_DEVICES)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available here; use device=auto or device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: Apple MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)


def count_steps(num_batches: int, accumulate: int, epochs: int, max_steps: Optional[int]) -> tuple[int, int]:
    """The run's optimizer steps ``T`` and steps per epoch (the LR contract, README).

    Args:
        num_batches: ``len(train_loader)``, batches per epoch (the last may be partial).
        accumulate: ``trainer.accumulate_grad_batches``, batches per optimizer step.
        epochs: passes over the data.
        max_steps: cap on ``T``; None = no cap.

    Returns:
        ``(T, steps_per_epoch)`` with ``steps_per_epoch = ceil(num_batches / accumulate)`` (a
        last partial accumulation group still steps) and ``T = epochs * steps_per_epoch``,
        capped at ``max_steps``.
    """
    spe = math.ceil(num_batches / accumulate)
    total = epochs * spe
    return (min(total, max_steps) if max_steps else total), spe


def warmup_length(cfg: DictConfig, steps_per_epoch: int) -> tuple[int, str]:
    """Warmup length ``W`` in optimizer steps, and the ``key=value`` that set it.

    Args:
        cfg: composed config (reads ``warmup_steps``, ``warmup_epochs``).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        ``(W, "warmup_steps=N")`` when ``warmup_steps`` is set, else
        ``(round(warmup_epochs * steps_per_epoch), "warmup_epochs=X")``, at least 1 step when
        ``warmup_epochs > 0``.
    """
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps), f"warmup_steps={cfg.warmup_steps}"
    steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.warmup_epochs > 0 and steps == 0:
        steps = 1  # a requested warmup is never dropped silently
    return steps, f"warmup_epochs={cfg.warmup_epochs}"


def global_batch(cfg: DictConfig) -> int:
    """Samples per optimizer step over all processes: ``batch_size x accumulate_grad_batches x
    world size`` (what ``lr_scaling`` scales by, Goyal et al. 2017)."""
    return cfg.batch_size * cfg.trainer.accumulate_grad_batches * distributed.world_size()


def build(cfg: DictConfig, run_dir: Path) -> Any:
    """Validate, then build dataset, loaders, LR plan, model, optimizer and trainer.

    Raises:
        ConfigError: any user mistake; raised before anything is written to ``run_dir``.
    """
    validate(cfg)
    from framework.data import make_loaders
    from framework.models import check_batch_norm_batches, check_model_name
    from framework.optim import lr_scale_factor, param_groups
    from framework.schedules import LRPlan

    device = resolve_device(cfg.device)
    if str(cfg.trainer.precision) == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16: needs CUDA (device is {device.type}); use bf16 or 32")
    world = distributed.world_size()
    if cfg.trainer.get("sync_batchnorm") and world > 1 and device.type != "cuda":
        raise ConfigError(f"trainer.sync_batchnorm=true: torch.nn.SyncBatchNorm needs CUDA (device is {device.type}); "
                          "use trainer.sync_batchnorm=false")
    check_model_name(cfg.model.name)
    seed_everything(cfg.seed)
    interrupts.check()  # a signal that came while Hydra composed or the imports above ran ends the program here
    with interrupts.interruptible():  # reading or downloading the data: Ctrl-C acts at once
        data = registry.instantiate(cfg.dataset, "dataset", seed=cfg.seed)
    loaders = make_loaders(data, cfg.batch_size, cfg.seed, device, cfg.loader, cfg.num_workers,
                           rank=distributed.rank(), world_size=world)
    T, spe = count_steps(len(loaders[0]), cfg.trainer.accumulate_grad_batches, cfg.epochs, cfg.max_steps)
    W, warmup_key = warmup_length(cfg, spe)
    takes_warmup = registry.accepts(cfg.scheduler, "warmup")
    plan = LRPlan(
        lambda units, warmup: registry.instantiate(
            cfg.scheduler, "scheduler", reserved=("interval",), total=units,
            **({"warmup": warmup} if takes_warmup else {}),
        ),
        total_steps=T,
        steps_per_epoch=spe,
        warmup_steps=W,
        warmup_start_factor=cfg.warmup_start_factor,
        interval=cfg.scheduler.get("interval", "step"),
        warmup_key=warmup_key,
        warmup_momentum=cfg.warmup_momentum,
        counts_warmup=getattr(registry.locate(cfg.scheduler._target_), "counts_warmup", None),  # None: built to see
    )
    with interrupts.interruptible():  # (pretrained weights may be downloaded)
        model = registry.instantiate(
            cfg.model, "model", num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
        )
    check_batch_norm_batches(model, loaders[0])
    optimizer = registry.instantiate(
        cfg.optimizer, "optimizer", reserved=RESERVED_KEYS["optimizer"],
        params=param_groups(model, cfg.optimizer.get("weight_decay", 0.0) or 0.0,
                            head_lr_mult=cfg.optimizer.get("head_lr_mult", 1.0),
                            layer_decay=cfg.optimizer.get("layer_decay"),
                            split_bias=cfg.scheduler.get("warmup_bias_lr") is not None),
    )
    if plan.sets_momentum and not any(k in optimizer.param_groups[0] for k in ("momentum", "betas")):
        key = "warmup_momentum" if cfg.warmup_momentum is not None else "scheduler.cycle_momentum"
        raise ConfigError(f"{key}: {type(optimizer).__name__} has no momentum or beta1 to set; use "
                          "scheduler.cycle_momentum=false and warmup_momentum=null, or an optimizer with momentum")
    scale = lr_scale_factor(cfg.lr_scaling, global_batch(cfg), cfg.lr_base_size)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] * group.get("lr_scale", 1.0) * scale
        group["lr"] = group["initial_lr"]
    return registry.instantiate(
        cfg.trainer, "trainer", config=plain_config(cfg), model=model, optimizer=optimizer, plan=plan, data=loaders, run_dir=run_dir, device=device
    )


def _earlier_lr0_auto(run_dir: Path) -> dict[str, Any]:
    """A resumed ``lr0=auto`` run keeps the record of how its lr0 was chosen."""
    from framework.loggers import read_summary

    earlier = read_summary(run_dir).get("lr0_auto")
    return {"lr0_auto": earlier} if earlier else {}


def _range_test(cfg: DictConfig, run_dir: Path) -> Any:
    """Build the run as configured (``lr0=auto``: with lr0 = 1 as the base the group LRs are
    ratios of), run the LR range test on it and write ``lr_find.csv/.json/.png``."""
    from omegaconf import OmegaConf

    from framework.lr_finder import write_outputs

    key = "lr0=auto" if cfg.lr0 == "auto" else "mode=lr_find"
    if OmegaConf.to_container(cfg.optimizer, resolve=False).get("lr") != "${lr0}":
        raise ConfigError(f"{key}: optimizer.lr is not ${{lr0}} here ({type(cfg.optimizer.get('lr')).__name__} "
                          f"{cfg.optimizer.get('lr')}), so the range test would probe an LR the optimizer does not "
                          "use; set optimizer.lr='${lr0}' or use another optimizer")
    validate(cfg)
    finder = registry.instantiate(cfg.lr_finder, "lr_finder")  # bad lr_finder.* values fail before any build
    probe_cfg = cfg
    if cfg.lr0 == "auto":
        probe_cfg = with_values(cfg, lr0=1.0)
    trainer = build(probe_cfg, run_dir)
    log.info("LR range test: %d probes from %g to %g (lr0 units)", finder.num_steps, finder.start_lr, finder.end_lr)
    result = finder.run(trainer, float(probe_cfg.lr0))
    write_outputs(result, run_dir)
    return result


def write_untrained_summary(run_dir: Path, status: str, **fields: Any) -> None:
    """``summary.json`` of a job that trained nothing (``mode=lr_find``, ``mode=plot_lr``, a
    sweep job that failed before training): no steps, no metrics, the git state, ``fields``."""
    from framework.loggers import git_state, write_json

    write_json({"status": status, "objective": None, "steps": 0, "best": {}, "final": {}, "run_dir": str(run_dir),
                **git_state(registry.CONF_DIR.parent), **fields}, run_dir / "summary.json")


def lr_find(cfg: DictConfig, run_dir: Path) -> float:
    """``mode=lr_find``: run the LR range test, write ``lr_find.*``, print the answer, train nothing.

    Returns:
        0.0 (no objective: nothing was trained).
    """
    from framework.lr_finder import answer

    result = _range_test(cfg, run_dir)
    print(answer(result))
    print(f"wrote {run_dir / 'lr_find.png'}, lr_find.csv, lr_find.json")
    write_untrained_summary(run_dir, "completed", mode="lr_find", lr0=result.lr, lr_find=result.to_json())
    return 0.0


def choose_lr0(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, Any]]:
    """``lr0=auto``: run the range test, then return the config with ``lr0`` = the chosen suggestion.

    The run is then built from scratch with that config (same seed, same initial weights and
    data order), so it equals a run started with ``lr0=<suggestion>``. The choice is written
    into ``.hydra/config.yaml`` (when Hydra wrote one) and returned for ``summary.json``.

    Raises:
        ConfigError: the range test found no suggestion (flat or too short a loss curve).
    """
    from omegaconf import OmegaConf

    from framework.lr_finder import answer

    result = _range_test(cfg, run_dir)
    if result.lr is not None:
        print(answer(result))
    else:
        raise ConfigError("lr0=auto: " + answer(result).split(": ", 1)[1] + "; or set lr0 to a number")
    chosen = with_values(cfg, lr0=result.lr)
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        text = OmegaConf.load(saved)
        text.lr0 = result.lr
        OmegaConf.save(text, saved)
    log.info("lr0=auto: lr0=%r (%s)", result.lr, result.chosen)
    return chosen, result.to_json()


def preview(trainer: Any, run_dir: Path, label: str) -> float:
    """``mode=plot_lr``: write ``lr_plan.png`` and ``lr_plan.json`` (key points), print them, train nothing.

    Returns:
        0.0 (no objective: nothing was trained).
    """
    from framework.loggers import write_json
    from framework.preview import describe, key_points, plan_of, plot

    run = plan_of(trainer, label or type(trainer.plan.schedule).__name__)
    plot([run], run_dir / "lr_plan.png", grid=True)
    write_json({**key_points(run), "groups": {n: v[0] for n, v in run.lrs.items()}}, run_dir / "lr_plan.json")
    print(describe(run))
    print(f"wrote {run_dir / 'lr_plan.png'}")
    write_untrained_summary(run_dir, "completed", mode="plot_lr", planned_steps=trainer.plan.total_steps)
    return 0.0


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    best, final = summary["best"], summary["final"]
    table = Table(title=f"run {summary['status']}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    best_acc = (f"{best['val/acc']:.4f} (epoch {best['epoch'] + 1} of {summary['planned_epochs']})" if best
                else "- (no epoch finished)")
    rows = [
        ("best val/acc", best_acc),
        *((f"final {k}", f"{final[k]:.4f}" if final else "-") for k in ("val/acc", "val/loss", "train/loss")),
        ("base lr -> last lr", f"{next(iter(summary['base_lrs'].values())):.4g} -> {summary['last_lr']:.4g}"),
        ("epochs / steps", f"{summary['epochs']} / {summary['steps']} of {summary['planned_epochs']} / "
                           f"{summary['planned_steps']}"),
        ("batch", f"{summary['global_batch']} global ({summary['world_size']} process(es))"),
        ("device", summary["device"]),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    print(f"run folder: {summary['run_dir']}")  # whole, never cut to the table's width


def train(cfg: DictConfig, run_dir: Optional[str | Path] = None) -> float:
    """Run one training job described by ``cfg`` and return the objective (best ``val/acc``).

    Writes into the run folder (Hydra's output dir unless ``run_dir`` is given): ``steps.csv``,
    ``epochs.csv``, ``summary.json``, ``lr.png`` and ``checkpoints/``.

    Args:
        cfg: the composed config (``conf/train.yaml``).
        run_dir: output folder; default Hydra's ``runtime.output_dir``.

    Returns:
        Best validation top-1 accuracy (fraction), for Hydra sweepers to maximise.

    Raises:
        ConfigError: a user mistake, before any training and before any file is written (an
            unreadable image file of ``dataset=imagefolder`` is found when it is first read,
            during training: the run's ``summary.json`` says ``failed``).
        Interrupted: SIGTERM / Ctrl-C before training (nothing trained).
        OSError: the disk could not take the run's files (the last good checkpoint is kept).
        Diverged: the loss became non-finite; ``summary.json`` says ``status: diverged`` with
            the step and LR (objective 0.0, the worst accuracy).
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
    check_overrides(cfg, overrides)
    run_dir = Path(run_dir)
    distributed.quiet_other_ranks()
    if distributed.world_size() > 1 and (cfg.mode == "lr_find" or cfg.lr0 == "auto"):
        key = "mode=lr_find" if cfg.mode == "lr_find" else "lr0=auto"
        raise ConfigError(f"{key}: the LR range test runs in one process; run python train.py mode=lr_find "
                          "(same config, batch_size = the global batch) and start torchrun with lr0=<its answer>")
    resume_state = None
    if cfg.resume is not None and cfg.mode == "train":
        validate(cfg)
        try:
            run_dir, resume_state = prepare_resume(cfg)
        except NothingToResume as done:  # the same command again (a requeue, a second paste): a no-op
            print(str(done), file=sys.stderr)
            return float(done.summary.get("objective") or 0.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _also_log_to(run_dir) if resume_state is not None and distributed.is_main() else None
    try:
        return _train(cfg, run_dir, resume_state, overrides, start)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _also_log_to(run_dir: Path) -> Optional[logging.Handler]:
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


def _train(cfg: DictConfig, run_dir: Path, resume_state: Optional[dict[str, Any]], overrides: list[str],
           start: float) -> float:
    """:func:`train` once the run folder is known (and a resume's checkpoint read)."""
    if cfg.mode == "lr_find":
        return lr_find(cfg, run_dir)
    lr0_auto = None
    if cfg.lr0 == "auto":
        cfg, lr0_auto = choose_lr0(cfg, run_dir)
    trainer = build(cfg, run_dir)
    if cfg.mode == "plot_lr":
        return preview(trainer, run_dir, " ".join(overrides)) if distributed.is_main() else 0.0
    if resume_state is not None:
        resume_trainer(trainer, resume_state)

    from framework.loggers import git_state
    from framework.trainer import Diverged

    plan = trainer.plan
    log.info(
        "T=%d optimizer steps (%d per epoch), warmup %d steps, scheduler %s, device %s, global batch %d (%d "
        "process(es))", plan.total_steps, plan.steps_per_epoch, plan.warmup_steps,
        type(plan.schedule).__name__, trainer.device, global_batch(cfg), distributed.world_size(),
    )
    if plan.warmup_steps and plan.schedule(0) < 1:
        log.warning(
            "%s starts at %.3g*lr0, so after the %d-step warmup to lr0 the LR drops; it has its own "
            "rise: consider warmup_epochs=0", type(plan.schedule).__name__, plan.schedule(0), plan.warmup_steps,
        )
    groups = trainer.optimizer.param_groups
    base_lrs = {name: g["initial_lr"] for name, g in zip(trainer.group_names, groups)}
    lr0_effective = groups[0]["initial_lr"] / groups[0].get("lr_scale", 1.0)
    if cfg.lr_scaling != "none":
        log.info("lr_scaling=%s: lr0 %g x %.4g (global batch %d / lr_base_size %d%s) = %g effective",
                 cfg.lr_scaling, cfg.lr0, lr0_effective / cfg.lr0, global_batch(cfg), cfg.lr_base_size,
                 ", sqrt" if cfg.lr_scaling == "sqrt" else "", lr0_effective)
    elif lr0_effective != cfg.lr0:
        log.info("base LR from optimizer.lr=%g (lr0=%g is not used by this optimizer config)", lr0_effective, cfg.lr0)
    if len(set(base_lrs.values())) > 1:
        log.info("base LR per group: %s", ", ".join(f"{n} {v:.4g}" for n, v in base_lrs.items()))
    summary: dict[str, Any] = {
        "status": "failed",
        "objective_name": OBJECTIVE,
        "objective": None,
        "lr0": cfg.lr0,
        "lrf": cfg.lrf,
        "lr0_effective": lr0_effective,
        "lr_scaling": cfg.lr_scaling,
        "base_lrs": base_lrs,
        "planned_steps": plan.total_steps,
        "planned_epochs": math.ceil(plan.total_steps / plan.steps_per_epoch),
        "global_batch": global_batch(cfg),
        "device": str(trainer.device),
        "world_size": distributed.world_size(),
        "run_dir": str(run_dir),
        "overrides": overrides,
        **({"lr0_auto": lr0_auto} if lr0_auto else _earlier_lr0_auto(run_dir) if resume_state is not None else {}),
        **git_state(registry.CONF_DIR.parent),
    }
    interrupts.set_training(True)  # a signal from here on: the trainer stops at a step boundary, or the files are finished
    ended: Optional[BaseException] = None  # how fit() failed, if it did (not a divergence)
    unwritten: Optional[OSError] = None  # why summary.json could not be written, if it could not
    try:
        result = trainer.fit()
        stopped = result["stopped"]
        summary.update(status="stopped" if stopped else "completed", objective=trainer.best.get(OBJECTIVE, 0.0),
                       **({"stop_reason": stopped, "resume_with": f"resume={run_dir}"} if stopped else {}))
    except Diverged as exc:
        summary.update(status="diverged", objective=0.0, diverged_step=exc.step, diverged_lr=exc.lr, error=str(exc))
        raise
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        summary.update(status="stopped" if interrupted else "failed", objective=trainer.best.get(OBJECTIVE),
                       error=f"{type(exc).__name__}: {exc}",
                       **({"stop_reason": "SIGINT (second, mid-step)", "resume_with": f"resume={run_dir}"}
                          if interrupted else {}))
        ended = exc
        raise
    finally:
        if distributed.is_main():
            unwritten = _finish(trainer, summary, start, cfg)
            if ended is not None:
                _say_how_it_ended(ended, summary, unwritten is None, trainer, continue_command(overrides, run_dir))
    if unwritten is not None:  # trained, but its record is missing: not a success
        raise unwritten
    if distributed.is_main():
        _print_table(summary)
        if summary["status"] == "stopped":
            print(f"stopped at step {summary['steps']} of {summary['planned_steps']}; continue with: "
                  f"{continue_command(overrides, run_dir)}")
    late = interrupts.take_pending() or trainer.late_signal
    if summary.get("stop_reason") in ("SIGTERM", "SIGINT") and _in_sweep():
        interrupts.hold(summary["stop_reason"])  # the sweep's next job does not start
    if late is not None and distributed.is_main() and summary["status"] == "completed":
        print(f"{late} received after the last step: the run completed and its files are written", file=sys.stderr)
    trainer.forward_stop_signal()
    return float(summary["objective"])


def continue_command(overrides: list[str], run_dir: Path) -> str:
    """The command that continues this run: ``python <this script>`` (as run, relative to the
    current folder when it lies below it), or torchrun with the same
    processes (``--standalone`` on one machine; several machines: the same ``--nnodes`` plus the
    user's own rendezvous arguments), the run's overrides and ``resume=<run_dir>``."""
    import os

    script = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else Path("train.py")
    if script.is_absolute() and script.resolve().is_relative_to(Path.cwd().resolve()):
        script = script.resolve().relative_to(Path.cwd().resolve())  # as typed from here: train.py
    world = distributed.world_size()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world == 1:
        start = f"python {script}"
    elif per_node == world:
        start = f"torchrun --standalone --nproc_per_node={world} {script}"
    else:
        start = f"torchrun --nnodes={world // per_node} --nproc_per_node={per_node} <rendezvous arguments> {script}"
    return " ".join([start, *rerun_overrides(overrides), f"resume={run_dir}"])


def _in_sweep() -> bool:
    """True inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _say_how_it_ended(exc: BaseException, summary: dict[str, Any], written: bool, trainer: Any, command: str) -> None:
    """One line on stderr for a run that failed or was interrupted: its status as
    ``summary.json`` holds it (or that the file could not be written), and how to continue.
    Nothing for a user mistake found during training (an unreadable image): its own line says
    what to fix."""
    if isinstance(exc, ConfigError):
        return
    last = Path(summary["run_dir"]) / "checkpoints" / "last.pt"
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    said = f"summary.json says status: {summary['status']}" if written else "summary.json could not be written"
    step = trainer.step
    if last.is_file():
        saved = f" (step {trainer.saved_step}: the resume redoes the steps after it)" if trainer.saved_step not in (
            None, step) else ""
        print(f"{what} at step {step}; {said}; the last checkpoint is {last}{saved}; continue with: {command}",
              file=sys.stderr)
    else:
        print(f"{what} at step {step} before the first checkpoint; {said}; start the run again", file=sys.stderr)


def _finish(trainer: Any, summary: dict[str, Any], start: float, cfg: DictConfig) -> Optional[OSError]:
    """Complete and write ``summary.json`` and ``lr.png``, however the run ended.

    Returns:
        None, or the error that kept ``summary.json`` from being written (disk full, folder
        gone): the run's other files stay as they are; the caller says so.
    """
    from framework.loggers import plot_lr, write_json

    history, plan, first = trainer.history, trainer.plan, trainer.group_names[0]
    summary.update(
        best=trainer.best,
        final=trainer.final,
        steps=trainer.step,
        epochs=trainer.final.get("epoch", -1) + 1,
        skipped_steps=trainer.skipped_steps,
        rollbacks=trainer.guard.rollbacks,
        last_lr=history[first][-1] if history["step"] else None,
        wall_time_s=time.time() - start,
        train_time_s=trainer.train_time_s,
    )
    try:
        write_json(summary, trainer.run_dir / "summary.json")
    except OSError as exc:
        return exc
    if history["step"]:
        try:
            plot_lr(history["step"], {n: history[n] for n in trainer.group_names}, trainer.run_dir / "lr.png",
                    warmup_steps=plan.warmup_steps,
                    title=f"{type(plan.schedule).__name__} (lr0={cfg.lr0:g}, lrf={cfg.lrf:g})")
        except OSError as exc:
            log.error("could not write lr.png: %s", exc)
    return None
