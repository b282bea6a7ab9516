"""The training loop: owns the step index ``k`` and applies the LR plan before every step."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from framework import distributed, tasks
from framework.schedules import LRPlan
from framework.trainer import host_memory
from framework.trainer.checkpointing import TrainerCheckpoint
from framework.trainer.engine import StepEngine
from framework.trainer.guard import Diverged, DivergenceGuard
from framework.trainer.mixing import build_mixup
from framework.trainer.rollback import Rollbacks
from framework.trainer.signals import EarlyStops, StopSignals
from framework.trainer.state import RunState
from framework.trainer.steplog import StepLog, csv_log
from framework.trainer.records import StepRecords
from framework.trainer.validation import Validation

log = logging.getLogger(__name__)


def _run_state_view(name: str, doc: str) -> property:
    """A read-only view of ``trainer.run_state.<name>`` (the run's position and totals)."""
    return property(lambda self: getattr(self.run_state, name), doc=doc)


class Trainer(StepRecords, Rollbacks, EarlyStops, StepEngine):
    """Trains a model on its task (:mod:`framework.tasks`) with an exact, step-indexed LR plan.

    The steps themselves (accumulation, precision, clipping, Mixup / CutMix, data parallelism) are those of its
    base, :class:`~framework.trainer.engine.StepEngine`. Before optimizer step ``k`` every param
    group gets ``lr = initial_lr * lr_backoff * plan(k)`` (:meth:`LRPlan.apply`); that value is
    logged as the step's LR. The trainer owns ``k`` (:attr:`global_step`, in its
    :class:`~framework.trainer.state.RunState`), the step log, the divergence guard, the stop
    signals and the checkpoints. The best epoch (``best.pt``, :attr:`best`) is the validated epoch
    with the strictly best value of the task's ``monitor`` under its ``mode`` (``max`` or ``min``);
    with EMA on, an epoch's value is the better of ``val/<m>`` and ``val_ema/<m>`` (a tie: the raw
    weights), ``best.pt`` holds those weights and ``best_weights`` says which.

    Args:
        model: network mapping ``(B, C, H, W)`` to outputs ``(B, num_classes)`` (runtime).
        optimizer: optimizer over the model's parameter groups (runtime).
        plan: the LR multiplier of every step (runtime).
        data: ``(train_loader, val_loader)`` (runtime).
        run_dir: folder for CSVs and checkpoints (runtime).
        device: where to train (runtime).
        accumulate_grad_batches: batches per optimizer step, >= 1.
        gradient_clip_val: the clipping threshold (gradient units; see ``gradient_clip_algorithm``);
            None = no clipping. With clipping on, ``steps.csv`` has a ``clipped`` column (1: the
            step's gradients were clipped) and :attr:`clipped_frac` is the share of clipped steps.
        gradient_clip_algorithm: ``norm`` (scale every gradient by ``gradient_clip_val / total L2
            norm`` when the norm exceeds it; clipped = total norm > ``gradient_clip_val``) or
            ``value`` (clamp every element to ``[-gradient_clip_val, gradient_clip_val]``;
            clipped = some ``|grad| > gradient_clip_val``); Lightning's names. ``grad_norm`` is the
            norm before clipping.
        grad_norm_every_n_steps: (steps) log and guard the gradient norm of every n-th step (see
            :class:`~framework.trainer.engine.StepEngine`).
        precision: ``32``, ``bf16`` (autocast) or ``fp16`` (autocast + grad scaler, CUDA only).
        log_every_n_steps: steps between reads of the on-device loss buffer (CSV flush, the
            divergence check and, with ``on_divergence=rollback``, a restore point); on the
            CPU, where a read costs nothing, every step is checked.
        progress_bar: show a tqdm bar with epoch, step, loss and LR.
        save_checkpoints: write ``checkpoints/last.pt`` and ``best.pt`` after every epoch.
        stop_after_steps: stop after this many optimizer steps with a resumable checkpoint, as
            on SIGTERM (the schedule keeps its horizon ``T``); None = run to the end.
        on_divergence: ``stop`` (end the run, status ``diverged``) or ``rollback`` (restore the
            last good state, lower the LR, retry); see :class:`DivergenceGuard`.
        divergence_loss_mult: a step loss above this multiple of the best smoothed loss counts
            as divergence; None = only NaN/inf losses and gradient norms.
        rollback_lr_factor: LR multiplier applied for the rest of the run at each rollback.
        max_rollbacks: rollbacks before giving up as ``stop`` would.
        config: the run's resolved config (runtime), stored in checkpoints to check resumes.
        channels_last: model and input batches in ``torch.channels_last`` memory format (faster
            convolutions on tensor cores).
        compile: run the forward passes through ``torch.compile`` (first steps pay the compilation).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark = True`` on CUDA (picks the fastest
            convolution algorithms; runs are then not bitwise reproducible on the GPU).
        sync_batchnorm: in a data-parallel run, batch-norm statistics over the global batch
            (``torch.nn.SyncBatchNorm``, CUDA only) instead of each rank's own batch.
        mixup_alpha, cutmix_alpha, cutmix_minmax, mixup_prob, mixup_switch_prob, mixup_mode,
            mixup_off_epoch: Mixup / CutMix of the training batches with timm's names and meaning
            (``timm.data.Mixup``, built by :func:`~framework.trainer.mixing.build_mixup`; each key in
            :func:`~framework.trainer.mixing.check_mixup_args`): classification only, an even ``batch_size``; the task's
            ``label_smoothing`` goes into the mixed targets, the training loss is their soft-target
            cross-entropy; ``mixup_off_epoch`` (from 0) is the first epoch trained unmixed; an odd
            last batch trains unmixed; ``lam`` comes from NumPy's global RNG, which checkpoints save.
        val_every_n_epochs: (epochs) validate after every n-th epoch and after the last; only
            validated epochs can be best, feed early stopping and a plateau schedule.
        ema_decay: decay per applied optimizer step of an EMA of the weights (timm's
            ``ModelEmaV3``: :class:`~framework.trainer.ema.WeightEma`), validated as
            ``val_ema/...``; None = no EMA.
        ema_warmup: the EMA's decay rises from 0 toward ``ema_decay`` (timm's ``use_warmup``).
        early_stopping: ``{patience, monitor, min_delta, mode}``
            (:class:`~framework.trainer.early_stopping.EarlyStopping`); ``patience`` None = off.
        task: the loss, the metrics and the monitored objective (runtime; :mod:`framework.tasks`);
            None = classification over the model's outputs (:func:`~framework.tasks.default_task`).
        trackers: the ``logger`` group's trackers (runtime; :class:`~framework.tracking.Trackers`): they get
            the rows ``steps.csv`` gets, when it gets them, and each ``epochs.csv`` row; None = CSVs only.
        lr_doctor: ``{update_ratio_every_n_steps, warn}``: the update-to-weight ratio of every
            group on every n-th step (:class:`~framework.trainer.update_ratio.UpdateRatios`;
            ``update_ratio``, ``update_ratio/<group>`` columns) and, with ``warn``, a one-line
            warning once the LR doctor (:mod:`framework.doctor`) finds the LR too high or too low
            during training; None = neither.
        malloc_trim_threshold_mb: (MiB) on the CPU, see :class:`~framework.trainer.engine.StepEngine`.

    Data-parallel runs (``torchrun``, see :mod:`framework.distributed`): the model is wrapped in
    ``DistributedDataParallel`` (gradients averaged over the ranks after each optimizer step's
    last micro-batch; ``no_sync`` before), so every rank holds the same weights and applies the
    same LR at the same ``k``. Each logged step loss is the mean over the ranks; each rank
    evaluates its shard of the validation set and the loss sums and the metrics' states are
    combined over the ranks (the metrics by torchmetrics); a stop request or a
    divergence on one rank stops (or rolls back) every rank at the same step; only rank 0 writes
    files.
    """

    global_step = _run_state_view("global_step", "``k``: optimizer steps applied so far (the LR plan's index).")
    epoch = _run_state_view("epoch", "Current epoch (from 0).")
    batch = _run_state_view("batch", "Batches of the current epoch already trained.")
    best = _run_state_view("best", "Metrics of the best epoch so far (by the task's ``monitor`` and ``mode``).")
    final = _run_state_view("final", "Metrics of the last finished epoch.")
    skipped_steps = _run_state_view("skipped_steps", "Optimizer steps the fp16 grad scaler skipped.")
    clipped_steps = _run_state_view("clipped_steps", "Applied steps whose gradients were clipped.")
    lr_backoff = _run_state_view("lr_backoff", "Product of the rollbacks' LR factors so far (1 = none).")
    train_time_s = _run_state_view("train_time_s", "Seconds spent in ``fit`` over every segment of the run.")

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: LRPlan,
        data: tuple[DataLoader, DataLoader],
        run_dir: str | Path,
        device: torch.device,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: Optional[float] = None,
        precision: str | int = "32",
        log_every_n_steps: int = 50,
        progress_bar: bool = True,
        save_checkpoints: bool = True,
        stop_after_steps: Optional[int] = None,
        on_divergence: str = "stop",
        divergence_loss_mult: Optional[float] = None,
        rollback_lr_factor: float = 0.5,
        max_rollbacks: int = 3,
        config: Optional[dict[str, Any]] = None,
        channels_last: bool = False,
        compile: bool = False,
        cudnn_benchmark: bool = True,
        sync_batchnorm: bool = False,
        gradient_clip_algorithm: str = "norm",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: Optional[list[float]] = None,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
        mixup_off_epoch: Optional[int] = None,
        val_every_n_epochs: int = 1,
        ema_decay: Optional[float] = None,
        ema_warmup: bool = False,
        early_stopping: Optional[dict[str, Any]] = None,
        task: Optional[Any] = None,
        trackers: Optional[Any] = None,
        lr_doctor: Optional[dict[str, Any]] = None,
        grad_norm_every_n_steps: int = 10,
        malloc_trim_threshold_mb: Optional[int] = host_memory.DEFAULT_TRIM_THRESHOLD_MB,
    ):
        super().__init__(model, optimizer, data, device, accumulate_grad_batches, gradient_clip_val, precision,
                         channels_last, compile, cudnn_benchmark, sync_batchnorm, task, gradient_clip_algorithm,
                         grad_norm_every_n_steps=grad_norm_every_n_steps,
                         malloc_trim_threshold_mb=malloc_trim_threshold_mb)
        self.mixup = build_mixup(self.task, self.train_loader, mixup_alpha, cutmix_alpha, cutmix_minmax, mixup_prob,
                                 mixup_switch_prob, mixup_mode, mixup_off_epoch)
        self.mixup_off_epoch, (self.monitor, self.mode) = mixup_off_epoch, tasks.monitor_of(self.task)
        self.plan, self.run_dir = plan, Path(run_dir)
        self.log_every = max(1, int(log_every_n_steps))
        self.progress_bar, self.save_checkpoints = progress_bar, save_checkpoints
        self.stop_after_steps, self.config = stop_after_steps, config
        self.group_names = [g.get("name", str(i)) for i, g in enumerate(optimizer.param_groups)]
        self.history: dict[str, list] = {"step": [], **{n: [] for n in self.group_names}}  # applied LR by step
        self.stopped: Optional[str] = None  # why fit() stopped early, if it did
        self.saved_step: Optional[int] = None  # step k of the last.pt this process wrote last
        self.run_state = RunState()
        self.guard = DivergenceGuard(on_divergence, divergence_loss_mult, rollback_lr_factor, max_rollbacks)
        self.validation = Validation(val_every_n_epochs, ema_decay, ema_warmup, early_stopping, self.model, self.task)
        self.ema, self.early_stopping = self.validation.ema, self.validation.early_stopping
        self.early_stopped: Optional[dict[str, Any]] = None  # summary.json's early_stopping block, once it stopped
        self.trial: Any = None  # a search's trial hook (framework.search; True on ranks > 0): may prune the run
        self.pruned: Optional[dict[str, Any]] = None  # summary.json's pruned block, once pruned
        self._asked = 0  # questions put to the trial hook
        self.signals = StopSignals(self.world_size)
        self.checkpoint = TrainerCheckpoint(self.model, optimizer, plan, self.guard, self.run_state, self.scaler, config,
                                            self.run_dir / "checkpoints", self.is_main,
                                            meta={"task": tasks.describe(self.task),
                                                  "classes": getattr(self.task, "classes", None)}, ema=self.ema,
                                            early_stopping=self.early_stopping if self.early_stopping.enabled else None)
        self.trackers = trackers if self.is_main else None  # rank 0 logs, as it writes the files
        self.steplog = StepLog(self.run_dir / "steps.csv", self._step_columns(optimizer, lr_doctor), self.guard,
                               self.world_size, self.is_main, self.trackers)
        self.steplog.on_read = self._rows_read
        self._d: Optional[float] = None  # Prodigy's d of group 0 for the step being taken (applied LR = d*lr)
        self._bar: Any = None  # the tqdm progress bar while fit() runs

    # -- checkpoints, stop signals ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (:meth:`TrainerCheckpoint.state_dict`); a collective in a
        data-parallel run."""
        return self.checkpoint.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (:meth:`TrainerCheckpoint.load_state_dict`).

        Raises:
            ConfigError: the checkpoint holds another model or optimizer layout.
        """
        self.checkpoint.load_state_dict(state)

    def _save(self, is_best: bool, best_weights: Optional[str] = None) -> None:
        """Write ``last.pt`` (and ``best.pt``, of ``best_weights`` with EMA on) on rank 0; every
        rank takes the state. Non-finite weights raise :class:`Diverged` first (:meth:`_check_weights`)."""
        self._check_weights()
        if self.checkpoint.save(self.state_dict(), is_best, best_weights):
            self.saved_step = self.run_state.global_step

    @property
    def clipped_frac(self) -> Optional[float]:
        """:meth:`RunState.clipped_frac` (``summary.json``'s); None without clipping."""
        return self.run_state.clipped_frac() if self.clip is not None else None

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train until step ``T`` (from where :meth:`load_state_dict` left it) or an early stop,
        evaluating after every ``val_every_n_epochs``-th epoch and the last.

        Writes ``steps.csv``, ``epochs.csv`` (appending when resuming) and checkpoints into
        ``run_dir``. Step rows are buffered on the device and written every
        ``log_every_n_steps`` steps, at the end of each epoch and when training stops for any
        reason. SIGTERM or Ctrl-C (and ``stop_after_steps``) stop at the next step boundary with
        a resumable ``checkpoints/last.pt``; a second Ctrl-C interrupts at once.

        Returns:
            ``{"steps", "epochs", "skipped_steps", "best": {...}, "final": {...}, "stopped"}``;
            the metric dicts hold ``epoch`` (from 0), ``train/loss`` and ``val/loss`` (the
            task's mean loss; nats for cross-entropy), ``val/<metric>`` for each of the task's
            metrics (e.g. ``val/acc``, a fraction), ``lr`` (of the epoch's last step),
            ``time_s``; ``best`` is the epoch with the best ``monitor`` under ``mode``;
            ``stopped`` is None, ``stop_after_steps``, ``SIGTERM``, ``SIGINT`` or ``SIGUSR2``;
            with EMA on, ``val_ema/loss`` and ``val_ema/<metric>`` beside ``val/...`` and ``best``
            has ``best_weights``; ``early_stopping``: :meth:`EarlyStopping.report` when it stopped
            the run (which then completed), else None. An epoch without validation has no
            ``val/...`` keys (empty cells in ``epochs.csv``).

        Raises:
            Diverged: the loss of some step was NaN or inf (and no rollback was left); rows up to
                it are written and no checkpoint is saved after it.
        """
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        rs = self.run_state
        T = self.plan.total_steps
        epochs = self.plan.total_epochs
        resuming = rs.global_step > 0
        self.steplog.open(append=resuming)
        if self.doctor is not None:  # a resume: the rows before step k are its history
            self.doctor.start(T, {n: g.get("initial_lr", g["lr"]) for n, g in zip(self.group_names, self.optimizer.param_groups)},
                              self.run_dir if resuming else None, rs.global_step, self.plan.schedule_file,
                              type(self.optimizer).__name__)
        epochs_csv = csv_log(self.run_dir / "epochs.csv",
                             ["epoch", "train/loss", "val/loss", *(f"val/{m}" for m in self.metric_names),
                              *self.validation.columns, "lr", "time_s"],
                             resuming, self.is_main)
        self._bar = tqdm(total=T, initial=rs.global_step, disable=not (self.progress_bar and self.is_main),
                         unit="step", dynamic_ncols=True,
                         mininterval=0.1 if sys.stderr.isatty() else 10.0)  # log files: every 10 s
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        restore_signals = self.signals.catch(lambda: rs.global_step >= T)
        rs.start_clock()
        # a fresh start is a good state to roll back to; a resumed run brought its restore points
        if self.guard.policy == "rollback" and rs.global_step == 0:  # snapshots copy the weights: only when used
            self.guard.keep(self.state_dict(), trusted=True)
        together = True  # every rank reaches the final flush at the same step (no error on one rank)
        console = contextlib.ExitStack()  # undone last: the bar closes first, then the log handlers are back
        if not self._bar.disable:  # log lines (the LR doctor's warning...) go above the bar, not into its line
            console.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        console.callback(self._bar.close)
        try:
            while True:
                try:
                    self._run_epochs(T, epochs, epochs_csv)
                    break
                except Diverged as exc:  # the ranks agree on it: checked on reduced losses and norms
                    if not self.guard.can_roll_back():
                        self._forget_after(exc.step)
                        raise
                    self._roll_back(exc)
        except Diverged:
            raise
        except BaseException:
            together = False
            raise
        finally:
            restore_signals()
            try:
                # after an error on this rank alone, no collective: the others may never come
                self.steplog.flush(reduce=together or self.world_size == 1)
                self.steplog.release(everything=True)  # the run is over: no rollback can undo a step
            finally:
                console.close()
        self.signals.settle(self.stopped)
        if rs.skipped_steps:
            log.warning("%d optimizer steps skipped by the fp16 grad scaler: the LR plan stopped at step %d of %d",
                        rs.skipped_steps, rs.global_step, T)
        return {"steps": rs.global_step, "epochs": rs.final.get("epoch", -1) + 1, "skipped_steps": rs.skipped_steps,
                "best": rs.best, "final": rs.final, "stopped": self.stopped, "early_stopping": self.early_stopped,
                "pruned": self.pruned}

    def _run_epochs(self, T: int, epochs: int, epochs_csv: Any) -> None:
        """Epochs from the current position to step ``T`` (or a stop request, or an early stop)."""
        rs = self.run_state
        for epoch in range(rs.epoch, epochs):
            t0 = time.perf_counter()
            self._bar.set_description(f"epoch {epoch + 1}/{epochs}")
            train_loss = self._train_epoch(epoch, T)
            if self.stopped:
                break
            validated = self.validation.due(epoch, epochs, rs.global_step >= T)
            metrics = {"epoch": epoch, "train/loss": train_loss,
                       **(self.validation.evaluate(self) if validated else {}),
                       "lr": self.history[self.group_names[0]][-1], "time_s": time.perf_counter() - t0}
            if validated and not math.isfinite(metrics["val/loss"]):  # finite train losses, yet the model overflows
                raise Diverged(rs.global_step - 1, metrics["lr"], "validation loss is not finite")
            epochs_csv.write([metrics])
            self.steplog.track("log_epoch", metrics, rs.global_step - 1)
            if validated:  # a metric-driven schedule judges validated epochs only
                self.plan.observe(epoch, metrics)
            rs.final = metrics
            is_best, weights = self.validation.judge(metrics, rs.best) if validated else (False, None)
            if is_best:  # with EMA on, best_weights: raw or ema, whichever gave the monitored value
                rs.best = {**metrics, **({"best_weights": weights} if weights else {})}
            self.early_stopped = self.validation.should_stop(epoch, metrics) if validated else None
            rs.epoch, rs.batch = epoch + 1, 0
            self._keep()
            if self.save_checkpoints:
                self._save(is_best, weights)
            if validated and self.trial is not None and self._pruned(epoch, metrics):
                break
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" in k)  # train/loss, val/...
            log.info("epoch %d/%d  %s  lr %.4g", epoch + 1, epochs, shown, metrics["lr"])
            if self.early_stopped or rs.global_step >= T:
                break

    def _train_epoch(self, epoch: int, T: int) -> float:
        """One pass over the train loader from batch ``run_state.batch`` (or until step ``T``, or a
        stop request); returns the mean train loss of the epoch."""
        rs = self.run_state
        if self.mixup is not None:  # a function of the epoch alone: a resumed epoch mixes as the first run did
            self.mixup.mixup_enabled = self.mixup_off_epoch is None or epoch < self.mixup_off_epoch
        epoch_loss = rs.begin_epoch(self.device)
        group_loss = torch.zeros((), device=self.device)
        self.train_mode()
        lrs = self._apply_lr()
        for i, x, y, samples, closes in self.micro_batches(epoch, start=rs.batch):
            group_loss += self.micro_step(x, y, len(y) / samples, closes)
            if not closes:
                continue
            self.update_ratios.before_step(rs.global_step)
            applied, norm, clipped = self.optimizer_step(rs.global_step)
            ratios = self.update_ratios.after_step()
            epoch_loss += group_loss * samples
            rs.epoch_samples += samples
            rs.batch = i + 1
            if applied:
                if self.ema is not None:  # update n = k + 1 (1-based), before a restore point is taken
                    self.ema.update(self.model, rs.global_step + 1)
                self._record(epoch, lrs, group_loss, norm, clipped, ratios)
            else:
                rs.skipped_steps += 1
            group_loss = torch.zeros((), device=self.device)
            if rs.global_step >= T:
                break
            if self._should_stop():
                self.steplog.flush()
                self._save(False)
                self.stopped = self.signals.request or "stop_after_steps"
                log.warning("stopped at step %d (%s); continue with resume=%s", rs.global_step, self.stopped,
                            self.run_dir)
                return float("nan")
            lrs = self._apply_lr()
        self.steplog.flush()  # the epoch's restore point is taken once its validation passed (_run_epochs)
        mean = (distributed.all_reduce_sum(epoch_loss) / max(rs.epoch_samples * self.world_size, 1)).item()
        rs.end_epoch()
        return mean
