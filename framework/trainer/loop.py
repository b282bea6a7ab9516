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
import torch.nn.functional as F
from torch.utils.data import DataLoader

from framework import distributed
from framework.loggers import CSVLog
from framework.schedules import LRPlan
from framework.trainer.guard import Diverged, DivergenceGuard
from framework.trainer.state import StateMixin
from framework.trainer.steps import loader_group_sizes, momentum_key, total_norm

log = logging.getLogger(__name__)

#: Stop requests ranked for the data-parallel agreement (the strongest wins on every rank).
STOP_SIGNALS = {1: "SIGINT", 2: "SIGTERM", 3: "SIGUSR2"}
STOP_CODES = {name: code for code, name in STOP_SIGNALS.items()}


class Trainer(StateMixin):
    """Trains a classifier with an exact, step-indexed LR plan.

    Each micro-batch loss (mean cross-entropy) is weighted by its share of the accumulation
    group's samples, so ``batch_size=8, accumulate_grad_batches=4`` gives the same gradient as
    ``batch_size=32`` (up to batch-norm statistics). Before optimizer step ``k`` every param group
    gets ``lr = initial_lr * plan(k)``; that value is logged as the step's LR.

    Args:
        model: network mapping ``(B, C, H, W)`` to logits ``(B, num_classes)`` (runtime).
        optimizer: optimizer over the model's parameter groups (runtime).
        plan: the LR multiplier of every step (runtime).
        data: ``(train_loader, val_loader)`` (runtime).
        run_dir: folder for CSVs and checkpoints (runtime).
        device: where to train (runtime).
        accumulate_grad_batches: batches per optimizer step, >= 1.
        gradient_clip_val: max total gradient L2 norm; None = no clipping.
        precision: ``32``, ``bf16`` (autocast) or ``fp16`` (autocast + grad scaler, CUDA only).
        log_every_n_steps: steps between reads of the on-device loss buffer (CSV flush and
            the divergence check); on the CPU, where a read costs nothing, every step is read.
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

    Data-parallel runs (``torchrun``, see :mod:`framework.distributed`): the model is wrapped in
    ``DistributedDataParallel`` (gradients averaged over the ranks after each optimizer step's
    last micro-batch; ``no_sync`` before), so every rank holds the same weights and applies the
    same LR at the same ``k``. Each logged step loss is the mean over the ranks; evaluation
    metrics are summed over the ranks' shards of the validation set; a stop request or a
    divergence on one rank stops (or rolls back) every rank at the same step; only rank 0 writes
    files.
    """

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
        log_every_n_steps: int = 10,
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
    ):
        self.channels_last = channels_last
        self.world_size, self.is_global_zero = distributed.world_size(), distributed.is_main()
        if sync_batchnorm and self.world_size > 1:  # same Parameter objects: the optimizer keeps them
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        self.model, self.optimizer, self.plan = model, optimizer, plan
        self._params = list(model.parameters())  # walked once: model.parameters() recurses every module
        self.ddp = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        # torch.compile wraps the forward; the plain module keeps the weights, so checkpoints stay the same
        train_module = self.ddp or model
        self.forward = torch.compile(train_module) if compile else train_module
        self.eval_forward = (torch.compile(model) if self.ddp else self.forward) if compile else model
        if cudnn_benchmark and device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.train_loader, self.val_loader = data
        self.run_dir, self.device = Path(run_dir), device
        self.accumulate = int(accumulate_grad_batches)
        self.clip = gradient_clip_val
        self.precision = str(precision)
        self.log_every = max(1, int(log_every_n_steps))
        self.progress_bar, self.save_checkpoints = progress_bar, save_checkpoints
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.group_names = [g.get("name", str(i)) for i, g in enumerate(optimizer.param_groups)]
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            key = momentum_key(group)
            if key is not None:
                group.setdefault("initial_momentum", group["momentum"] if key == "momentum" else group["betas"][0])
        self.momentum_key = momentum_key(optimizer.param_groups[0])
        self.step = 0  # k: optimizer steps applied so far
        self._postfix: dict[str, str] = {}  # progress-bar fields (loss once it has been read)
        self.best: dict[str, Any] = {}  # metrics of the best epoch so far (by val/acc)
        self.final: dict[str, Any] = {}  # metrics of the last finished epoch
        self.skipped_steps = 0
        self.history: dict[str, list] = {"step": [], **{n: [] for n in self.group_names}}
        self.stop_after_steps, self.config = stop_after_steps, config
        self.epoch, self.batch = 0, 0  # position: current epoch, batches of it already trained
        self._epoch_loss, self._epoch_samples = 0.0, 0  # the epoch's loss sum (loss x samples), samples
        self.batches_per_epoch = len(self.train_loader) if self.train_loader is not None else 0
        self.stopped: Optional[str] = None  # why fit() stopped early, if it did
        self._stop_request: Optional[str] = None
        self.guard = DivergenceGuard(on_divergence, divergence_loss_mult, rollback_lr_factor, max_rollbacks)
        self.lr_backoff = 1.0  # product of the rollback LR factors applied so far
        self._base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._epoch_loss_t: Optional[torch.Tensor] = None  # the epoch's loss sum, on the device

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ``(B, C, H, W)`` on the device (non-blocking from pinned memory), channels-last
        when asked."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def _autocast(self):
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _set_lr(self, k: int) -> list[float]:
        """Set every group's LR (and momentum, when the plan prescribes it) for step ``k``."""
        lrs = []
        self._d = self.optimizer.param_groups[0].get("d")  # Prodigy's d used by this step: applied LR = d*lr
        for name, group in zip(self.group_names, self.optimizer.param_groups):
            group["lr"] = self.plan.group_lr(k, group["initial_lr"], name)
            lrs.append(group["lr"])
            key = momentum_key(group)
            if key is not None and self.plan.sets_momentum:
                value = self.plan.momentum(k, group["initial_momentum"])
                if key == "momentum":
                    group["momentum"] = value
                else:
                    group["betas"] = (value, *tuple(group["betas"])[1:])
        return lrs

    def _momentum(self) -> Optional[float]:
        """Momentum (or Adam beta1) of group 0 now; None for optimizers without one."""
        group = self.optimizer.param_groups[0]
        if self.momentum_key is None:
            return None
        return group["momentum"] if self.momentum_key == "momentum" else group["betas"][0]

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, share: float) -> torch.Tensor:
        """One micro-batch: forward (autocast), mean cross-entropy times ``share`` (its part of
        the accumulation group's samples), backward (through the grad scaler under fp16).

        Args:
            x: images ``(B, C, H, W)`` from the loader; y: labels ``(B,)``.
            share: ``B / samples of the accumulation group``.

        Returns:
            The weighted loss, a detached 0-dim tensor on the device (no sync).
        """
        x, y = self._to_device(x), y.to(self.device, non_blocking=True)
        with self._autocast():
            loss = F.cross_entropy(self.forward(x).float(), y)
        loss = loss * share
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def _apply_step(self) -> tuple[bool, torch.Tensor]:
        """Clip, step, zero grads. Returns (applied, total gradient L2 norm before clipping, a
        0-dim tensor on the device); fp16 overflow = not applied."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # the total norm is read by the divergence guard at the next flush (no sync here)
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.clip)
        else:
            norm = total_norm([p.grad for p in self._params if p.grad is not None])
        applied = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def _optimizer_mode(self, mode: str) -> None:
        """Schedule-free optimizers keep two points: ``train()`` before steps, ``eval()`` before
        evaluating or saving (the averaged weights). Other optimizers have no such methods."""
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (mean cross-entropy, nats) and top-1 accuracy (fraction).

        Runs the model in eval mode on the validation loader; batches ``(B, C, H, W)``, labels
        ``(B,)``; schedule-free optimizers are switched to their averaged weights first. In a
        data-parallel run each rank evaluates its shard and the sums are added over the ranks.
        """
        self._optimizer_mode("eval")
        distributed.broadcast_buffers(self.model)  # rank 0's batch-norm statistics, as DDP's next forward would
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        n = 0
        for x, y in self.val_loader:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.eval_forward(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
        self.model.train()
        if self.world_size > 1:  # each rank saw its shard: sum the sums
            totals = torch.stack((loss_sum.double(), correct.double(), torch.tensor(n, dtype=torch.float64,
                                                                                    device=self.device)))
            loss, right, n = distributed.all_reduce_sum(totals).tolist()
            return {"val/loss": loss / n, "val/acc": right / n}
        return {"val/loss": loss_sum.item() / n, "val/acc": correct.item() / n}

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
            the metric dicts hold ``epoch`` (from 0), ``train/loss`` and ``val/loss`` (mean
            cross-entropy, nats), ``val/acc`` (fraction), ``lr`` (of the epoch's last step),
            ``time_s``; ``stopped`` is None, ``stop_after_steps``, ``SIGTERM`` or ``SIGINT``.

        Raises:
            Diverged: the loss of some step was NaN or inf; rows up to it are written and no
                checkpoint is saved after it.
        """
        from tqdm.auto import tqdm

        T, spe = self.plan.total_steps, self.plan.steps_per_epoch
        epochs = math.ceil(T / spe)
        lr_cols = ["lr"] + [f"lr/{n}" for n in self.group_names[1:]]
        resuming = self.step > 0
        log_file = CSVLog if self.is_global_zero else _Discard  # only rank 0 writes files
        self._steps_csv = log_file(self.run_dir / "steps.csv",
                                 ["step", "epoch", *lr_cols, *(["momentum"] if self.momentum_key else []),
                                  *(["d"] if "d" in self.optimizer.param_groups[0] else []), "loss", "grad_norm"],
                                 append=resuming)
        epochs_csv = log_file(self.run_dir / "epochs.csv", ["epoch", "train/loss", "val/loss", "val/acc", "lr", "time_s"],
                            append=resuming)
        self._pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []  # rows not read yet
        self._checked: list[dict[str, Any]] = []  # rows read and checked, not written yet
        self._bar = tqdm(total=T, initial=self.step, disable=not (self.progress_bar and self.is_global_zero), unit="step",
                         dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)  # log files: every 10 s
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        restore_signals = self._catch_stop_signals()
        self._fit_start = time.perf_counter()
        # a fresh start is a good state to roll back to; a resumed run brought its restore points
        if self.guard.policy == "rollback" and self.step == 0:  # snapshots copy the weights: only when used
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
                self._flush(reduce=together or self.world_size == 1)
            finally:
                self._bar.close()
        if self._stop_request is not None and not self.stopped:  # it came with the last step: nothing to stop
            self.late_signal = self.late_signal or self._stop_request
        if self.skipped_steps:
            log.warning("%d optimizer steps skipped by the fp16 grad scaler: the LR plan stopped at step %d of %d",
                        self.skipped_steps, self.step, T)
        return {"steps": self.step, "epochs": self.final.get("epoch", -1) + 1, "skipped_steps": self.skipped_steps,
                "best": self.best, "final": self.final, "stopped": self.stopped}

    def _run_epochs(self, T: int, epochs: int, epochs_csv: CSVLog) -> None:
        """Epochs from the current position to step ``T`` (or a stop request)."""
        for epoch in range(self.epoch, epochs):
            t0 = time.perf_counter()
            self._bar.set_description(f"epoch {epoch + 1}/{epochs}")
            train_loss = self._train_epoch(epoch, T)
            if self.stopped:
                break
            metrics = {"epoch": epoch, "train/loss": train_loss, **self.evaluate(),
                       "lr": self.history[self.group_names[0]][-1], "time_s": time.perf_counter() - t0}
            if not math.isfinite(metrics["val/loss"]):  # finite train losses, yet the model now overflows
                raise Diverged(self.step - 1, metrics["lr"], "validation loss is not finite")
            epochs_csv.write([metrics])
            self.plan.observe(epoch, metrics)
            self.final = metrics
            is_best = not self.best or metrics["val/acc"] > self.best["val/acc"]
            if is_best:
                self.best = dict(metrics)
            self.epoch, self.batch = epoch + 1, 0
            self._keep()
            if self.save_checkpoints:
                self._save(is_best)
            log.info("epoch %d/%d  train/loss %.4f  val/loss %.4f  val/acc %.4f  lr %.4g", epoch + 1, epochs,
                     metrics["train/loss"], metrics["val/loss"], metrics["val/acc"], metrics["lr"])
            if self.step >= T:
                break

    def _train_epoch(self, epoch: int, T: int) -> float:
        """One pass over the train loader from batch ``self.batch`` (or until step ``T``, or a
        stop request); returns the mean train loss of the epoch."""
        loader = self.train_loader
        sizes = loader_group_sizes(loader, self.accumulate)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch, start=self.batch * loader.batch_size)
        self._epoch_loss_t = epoch_loss = torch.full((), self._epoch_loss, device=self.device)
        group_loss = torch.zeros((), device=self.device)
        g = self.batch // self.accumulate
        self._optimizer_mode("train")
        lrs = self._set_lr(self.step)
        for i, (x, y) in enumerate(loader, start=self.batch):
            steps_now = not (i + 1) % self.accumulate or i + 1 == self.batches_per_epoch
            # DDP averages the gradients once per optimizer step, after its last micro-batch
            with self.ddp.no_sync() if self.ddp is not None and not steps_now else contextlib.nullcontext():
                group_loss += self._forward_backward(x, y, len(y) / sizes[g])
            if not steps_now:
                continue
            applied, norm = self._apply_step()
            epoch_loss += group_loss * sizes[g]
            self._epoch_samples += sizes[g]
            self.batch = i + 1
            if applied:
                self._record(epoch, lrs, group_loss, norm)
            else:
                self.skipped_steps += 1
            group_loss = torch.zeros((), device=self.device)
            g += 1
            if self.step >= T:
                break
            if self._should_stop():
                self._flush()
                self.stopped = self._stop_request or "stop_after_steps"
                self._save(False)
                log.warning("stopped at step %d (%s); continue with resume=%s", self.step, self.stopped, self.run_dir)
                return float("nan")
            lrs = self._set_lr(self.step)
        self._flush()  # the epoch's restore point is taken once its validation passed (_run_epochs)
        mean = (distributed.all_reduce_sum(epoch_loss) / max(self._epoch_samples * self.world_size, 1)).item()
        self._epoch_loss, self._epoch_samples, self._epoch_loss_t = 0.0, 0, None
        return mean

    def _forget_after(self, step: int) -> None:
        """The run ends diverged at ``step``: the steps run after it (before the check read them)
        are not counted in ``steps`` nor in the LR history."""
        keep = sum(1 for k in self.history["step"] if k <= step)
        for key in self.history:
            del self.history[key][keep:]
        self.step = min(self.step, step + 1)

    def _should_stop(self) -> bool:
        """A stop request (signal) or ``stop_after_steps`` reached.

        In a data-parallel run the ranks decide together from one host-side all-reduce per
        step: the strongest request on any rank (SIGUSR2 > SIGTERM > SIGINT) stops every rank at
        this step with that reason (a rank keeps a stronger one of its own that arrived after
        its vote), so rank 0 hands SIGUSR2 on to submitit. A signal that arrives on some rank
        after the all-reduce stays pending there until the next step.
        """
        if self.world_size > 1:
            own = STOP_CODES.get(self._stop_request, 0)
            code = distributed.max_over_ranks(own)
            if code:  # a stronger signal of this rank's own (it came after its vote) is kept
                self._stop_request = STOP_SIGNALS[max(code, own)]
            stop = bool(code)
        else:
            stop = self._stop_request is not None
        return stop or (self.stop_after_steps is not None and self.step >= self.stop_after_steps)

    def _record(self, epoch: int, lrs: list[float], loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Log applied step ``k`` (its LRs now, its loss at the next flush) and advance ``k``."""
        row = {"step": self.step, "epoch": epoch, "lr": lrs[0], "momentum": self._momentum(), "d": self._d}
        row.update({f"lr/{n}": v for n, v in zip(self.group_names[1:], lrs[1:])})
        self._pending.append((row, loss, norm))
        self.history["step"].append(self.step)
        for name, value in zip(self.group_names, lrs):
            self.history[name].append(value)
        self.step += 1
        self._bar.set_postfix(self._postfix | {"lr": f"{lrs[0]:.3g}"}, refresh=False)
        self._bar.update(1)
        if self.step % self.log_every == 0:
            self._flush(keep=True)
        elif self.device.type == "cpu":  # no device to wait for: check every step (no file I/O), stop at once
            self._check(self._pending)

    def _flush(self, keep: bool = False, reduce: bool = True) -> None:
        """Read the buffered losses and gradient norms from the device (one sync), check them, and
        append every checked row to ``steps.csv`` (one file write).

        Args:
            keep: a regular point (every ``log_every_n_steps``-th step, never a stop): see
                :meth:`_keep`.
            reduce: average the losses over the ranks (a collective); False (an error is
                unwinding on this rank alone) writes the rows unchecked with the loss left blank.

        Raises:
            Diverged: a row failed the guard's check.
        """
        try:
            if getattr(self, "_pending", None):
                if reduce:
                    self._check(self._pending)
                else:  # this rank's loss is not the step's (the mean over the ranks): left blank
                    self._checked.extend({**row, "grad_norm": norm.item()} for row, _, norm in self._pending)
                    self._pending.clear()
        finally:
            if getattr(self, "_checked", None):
                self._steps_csv.write(self._checked)
                self._checked.clear()
        if keep:
            self._keep()

    def _keep(self) -> None:
        """Offer the state to the rollback guard at a regular point: every
        ``log_every_n_steps``-th step, and each epoch's end once its validation loss is finite.
        Stops never take one, so a resumed run takes the same restore points as the run that
        went on (a point already offered at this step is not offered again)."""
        if self.guard.policy == "rollback" and self.guard.kept_step != self.step:
            self.guard.keep(self.state_dict())

    def _check(self, pending: list) -> None:
        """Read ``pending`` rows' loss and gradient norm (one transfer), run the divergence guard
        on them and move them to the rows to write, up to and including a diverging one.

        Raises:
            Diverged: a row failed the check (the rows after it are dropped).
        """
        losses_t = torch.stack([p[1].float() for p in pending])  # (n,)
        if self.world_size > 1:  # the step loss of the global batch: mean over the ranks (norms agree already)
            losses_t = distributed.all_reduce_sum(losses_t) / self.world_size
        values = torch.stack((losses_t, torch.stack([p[2].float() for p in pending])), 1).tolist()  # (n, 2)
        losses, norms = [v[0] for v in values], [v[1] for v in values]
        rows = [p[0] for p in pending]
        pending.clear()
        bad = self.guard.check([r["step"] for r in rows], losses, norms)
        end = len(rows) if bad is None else bad[0] + 1  # rows after a diverging step are dropped
        self._checked.extend({**row, "loss": v, "grad_norm": n} for row, v, n in zip(rows[:end], losses, norms))
        self._postfix = {"loss": f"{losses[end - 1]:.4f}"}
        if bad is not None:
            raise Diverged(rows[bad[0]]["step"], rows[bad[0]]["lr"], bad[1])



class _Discard:
    """Stands in for :class:`CSVLog` on ranks other than 0 (they write no files)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def write(self, rows: Any) -> None:
        pass
