"""The training loop: owns the step index ``k`` and applies the LR plan before every step."""
from __future__ import annotations

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
from framework.schedules.plan import group_momentum, momentum_key
from framework.trainer.checkpointing import TrainerCheckpoint
from framework.trainer.engine import StepEngine
from framework.trainer.guard import Diverged, DivergenceGuard
from framework.trainer.signals import StopSignals
from framework.trainer.state import RunState
from framework.trainer.steplog import StepLog, csv_log

log = logging.getLogger(__name__)


def _run_state_view(name: str, doc: str) -> property:
    """A read-only view of ``trainer.run_state.<name>`` (the run's position and totals)."""
    return property(lambda self: getattr(self.run_state, name), doc=doc)


class Trainer(StepEngine):
    """Trains a model on its task (:mod:`framework.tasks`) with an exact, step-indexed LR plan.

    The steps themselves (accumulation, precision, clipping, data parallelism) are those of its
    base, :class:`~framework.trainer.engine.StepEngine`. Before optimizer step ``k`` every param
    group gets ``lr = initial_lr * lr_backoff * plan(k)`` (:meth:`LRPlan.apply`); that value is
    logged as the step's LR. The trainer owns ``k`` (:attr:`global_step`, in its
    :class:`~framework.trainer.state.RunState`), the step log, the divergence guard, the stop
    signals and the checkpoints. The best epoch (``best.pt``, :attr:`best`) is the one with the
    strictly best value of the task's ``monitor`` under its ``mode`` (``max`` or ``min``).

    Args:
        model: network mapping ``(B, C, H, W)`` to outputs ``(B, num_classes)`` (runtime).
        optimizer: optimizer over the model's parameter groups (runtime).
        plan: the LR multiplier of every step (runtime).
        data: ``(train_loader, val_loader)`` (runtime).
        run_dir: folder for CSVs and checkpoints (runtime).
        device: where to train (runtime).
        accumulate_grad_batches: batches per optimizer step, >= 1.
        gradient_clip_val: max total gradient L2 norm; None = no clipping.
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
        task: the loss, the metrics and the monitored objective (runtime; :mod:`framework.tasks`);
            None = classification over the model's outputs (:func:`~framework.tasks.default_task`).

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
        task: Optional[Any] = None,
    ):
        super().__init__(model, optimizer, data, device, accumulate_grad_batches, gradient_clip_val, precision,
                         channels_last, compile, cudnn_benchmark, sync_batchnorm, task)
        self.monitor, self.mode = tasks.monitor_of(self.task)
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
        self.signals = StopSignals(self.world_size)
        self.checkpoint = TrainerCheckpoint(self.model, optimizer, plan, self.guard, self.run_state, self.scaler, config,
                                            self.run_dir / "checkpoints", self.is_main,
                                            meta={"task": tasks.describe(self.task),
                                                  "classes": getattr(self.task, "classes", None)})
        group0 = optimizer.param_groups[0]
        columns = ["step", "epoch", "lr", *[f"lr/{n}" for n in self.group_names[1:]],
                   *(["momentum"] if momentum_key(group0) else []), *(["d"] if "d" in group0 else []), "loss", "grad_norm"]
        self.steplog = StepLog(self.run_dir / "steps.csv", columns, self.guard, self.world_size, self.is_main)
        self._d: Optional[float] = None  # Prodigy's d of group 0 for the step being taken (applied LR = d*lr)
        self._bar: Any = None  # the tqdm progress bar while fit() runs

    def _apply_lr(self) -> list[float]:
        """Set every group's LR (and momentum) for step ``k`` through the plan, with the rollbacks'
        back-off; returns the LRs. Prodigy's ``d`` of group 0 is read first: this step uses it."""
        self._d = self.optimizer.param_groups[0].get("d")
        return self.plan.apply(self.optimizer, self.run_state.global_step, self.run_state.lr_backoff)

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

    def _save(self, is_best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt``) on rank 0; every rank takes the state."""
        if self.checkpoint.save(self.state_dict(), is_best):
            self.saved_step = self.run_state.global_step

    @property
    def late_signal(self) -> Optional[str]:
        """A stop signal that arrived after the last step (the run completed), or None."""
        return self.signals.late

    def forward_stop_signal(self) -> None:
        """After a run stopped on SIGUSR2 has written its checkpoint and summary, hand the signal
        to the handler that was there before (submitit's, which requeues the SLURM job)."""
        self.signals.forward(self.stopped)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train until step ``T`` (from where :meth:`load_state_dict` left it), evaluating after
        every epoch.

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
            ``stopped`` is None, ``stop_after_steps``, ``SIGTERM``, ``SIGINT`` or ``SIGUSR2``.

        Raises:
            Diverged: the loss of some step was NaN or inf (and no rollback was left); rows up to
                it are written and no checkpoint is saved after it.
        """
        from tqdm.auto import tqdm

        rs = self.run_state
        T = self.plan.total_steps
        epochs = self.plan.total_epochs
        resuming = rs.global_step > 0
        self.steplog.open(append=resuming)
        epochs_csv = csv_log(self.run_dir / "epochs.csv",
                             ["epoch", "train/loss", "val/loss", *(f"val/{m}" for m in self.metric_names), "lr", "time_s"],
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
            finally:
                self._bar.close()
        self.signals.settle(self.stopped)
        if rs.skipped_steps:
            log.warning("%d optimizer steps skipped by the fp16 grad scaler: the LR plan stopped at step %d of %d",
                        rs.skipped_steps, rs.global_step, T)
        return {"steps": rs.global_step, "epochs": rs.final.get("epoch", -1) + 1, "skipped_steps": rs.skipped_steps,
                "best": rs.best, "final": rs.final, "stopped": self.stopped}

    def _run_epochs(self, T: int, epochs: int, epochs_csv: Any) -> None:
        """Epochs from the current position to step ``T`` (or a stop request)."""
        rs = self.run_state
        for epoch in range(rs.epoch, epochs):
            t0 = time.perf_counter()
            self._bar.set_description(f"epoch {epoch + 1}/{epochs}")
            train_loss = self._train_epoch(epoch, T)
            if self.stopped:
                break
            metrics = {"epoch": epoch, "train/loss": train_loss, **self.evaluate(),
                       "lr": self.history[self.group_names[0]][-1], "time_s": time.perf_counter() - t0}
            if not math.isfinite(metrics["val/loss"]):  # finite train losses, yet the model now overflows
                raise Diverged(rs.global_step - 1, metrics["lr"], "validation loss is not finite")
            epochs_csv.write([metrics])
            self.plan.observe(epoch, metrics)
            rs.final = metrics
            is_best = not rs.best or tasks.is_better(metrics[self.monitor], rs.best.get(self.monitor), self.mode)
            if is_best:
                rs.best = dict(metrics)
            rs.epoch, rs.batch = epoch + 1, 0
            self._keep()
            if self.save_checkpoints:
                self._save(is_best)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" in k)  # train/loss, val/...
            log.info("epoch %d/%d  %s  lr %.4g", epoch + 1, epochs, shown, metrics["lr"])
            if rs.global_step >= T:
                break

    def _train_epoch(self, epoch: int, T: int) -> float:
        """One pass over the train loader from batch ``run_state.batch`` (or until step ``T``, or a
        stop request); returns the mean train loss of the epoch."""
        rs = self.run_state
        epoch_loss = rs.begin_epoch(self.device)
        group_loss = torch.zeros((), device=self.device)
        self.train_mode()
        lrs = self._apply_lr()
        for i, x, y, samples, closes in self.micro_batches(epoch, start=rs.batch):
            group_loss += self.micro_step(x, y, len(y) / samples, closes)
            if not closes:
                continue
            applied, norm = self.optimizer_step()
            epoch_loss += group_loss * samples
            rs.epoch_samples += samples
            rs.batch = i + 1
            if applied:
                self._record(epoch, lrs, group_loss, norm)
            else:
                rs.skipped_steps += 1
            group_loss = torch.zeros((), device=self.device)
            if rs.global_step >= T:
                break
            if self._should_stop():
                self.steplog.flush()
                self.stopped = self.signals.request or "stop_after_steps"
                self._save(False)
                log.warning("stopped at step %d (%s); continue with resume=%s", rs.global_step, self.stopped,
                            self.run_dir)
                return float("nan")
            lrs = self._apply_lr()
        self.steplog.flush()  # the epoch's restore point is taken once its validation passed (_run_epochs)
        mean = (distributed.all_reduce_sum(epoch_loss) / max(rs.epoch_samples * self.world_size, 1)).item()
        rs.end_epoch()
        return mean

    def _should_stop(self) -> bool:
        """A stop signal (voted on by every rank: :meth:`StopSignals.should_stop`) or
        ``stop_after_steps`` reached."""
        stop = self.signals.should_stop()  # first: every rank takes part in the vote at every step
        return stop or (self.stop_after_steps is not None and self.run_state.global_step >= self.stop_after_steps)

    def _record(self, epoch: int, lrs: list[float], loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Log applied step ``k`` (its LRs now, its loss at the next check) and advance ``k``."""
        k = self.run_state.global_step
        row = {"step": k, "epoch": epoch, "lr": lrs[0], "momentum": group_momentum(self.optimizer.param_groups[0]),
               "d": self._d, **{f"lr/{n}": v for n, v in zip(self.group_names[1:], lrs[1:])}}
        self.steplog.add(row, loss, norm)
        self.history["step"].append(k)
        for name, value in zip(self.group_names, lrs):
            self.history[name].append(value)
        self.run_state.global_step = k = k + 1
        last = self.steplog.last_loss
        self._bar.set_postfix(({} if last is None else {"loss": f"{last:.4f}"}) | {"lr": f"{lrs[0]:.3g}"}, refresh=False)
        self._bar.update(1)
        if k % self.log_every == 0:
            self.steplog.flush()
            self._keep()
        elif self.device.type == "cpu":  # no device to wait for: check every step (no file I/O), stop at once
            self.steplog.check()

    def _keep(self) -> None:
        """Offer the state to the rollback guard at a regular point: every
        ``log_every_n_steps``-th step, and each epoch's end once its validation loss is finite.
        Stops never take one, so a resumed run takes the same restore points as the run that
        went on (a point already offered at this step is not offered again)."""
        if self.guard.policy == "rollback" and self.guard.kept_step != self.run_state.global_step:
            self.guard.keep(self.state_dict())

    def _forget_after(self, step: int) -> None:
        """The run ends diverged at ``step``: the steps run after it (before the check read them)
        are not counted in ``steps`` nor in the LR history."""
        self._drop_history(step + 1)
        self.run_state.global_step = min(self.run_state.global_step, step + 1)

    def _drop_history(self, first: int) -> None:
        """Forget the LR history of steps ``k >= first``."""
        keep = sum(1 for k in self.history["step"] if k < first)
        for key in self.history:
            del self.history[key][keep:]

    def _roll_back(self, exc: Diverged) -> None:
        """Restore the last good state and lower the LR for the rest of the run: ``lr_backoff``
        times ``rollback_lr_factor`` (the groups' ``initial_lr`` stay as built); forget the rows
        after the restored step, in memory and in the CSVs."""
        from framework.loggers import truncate_csv

        rs = self.run_state
        state = self.guard.restore_point()
        backoff = rs.lr_backoff * self.guard.rollback_lr_factor
        self.steplog.clear()
        earlier = rs.earlier_time_s  # time spent is not rolled back
        self.load_state_dict(state)
        rs.lr_backoff, rs.earlier_time_s = backoff, earlier
        self._drop_history(rs.global_step)
        self.guard.rollbacks.append({"diverged_step": exc.step, "reason": exc.reason, "lr": exc.lr,
                                     "restored_step": rs.global_step, "lr_backoff": backoff})
        self._bar.n = rs.global_step
        # last.pt first, then the CSVs: killed in between, a resume cuts the CSVs to last.pt itself;
        # killed before, the old last.pt replays the divergence and this rollback exactly
        if self.save_checkpoints:
            self._save(False)
        if self.is_main:  # only rank 0 writes files
            truncate_csv(self.run_dir / "steps.csv", "step", rs.global_step)
            truncate_csv(self.run_dir / "epochs.csv", "epoch", rs.epoch)
        log.warning("rollback %d/%d: %s at step %d; back to step %d with the LR x%g",
                    len(self.guard.rollbacks), self.guard.max_rollbacks, exc.reason, exc.step, rs.global_step, backoff)
