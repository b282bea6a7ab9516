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

from framework.checkpoint import save_checkpoint
from framework.loggers import CSVLog
from framework.schedules import LRPlan

log = logging.getLogger(__name__)


def steps_per_epoch(num_batches: int, accumulate_grad_batches: int) -> int:
    """Optimizer steps in one epoch: ``ceil(num_batches / accumulate_grad_batches)``.

    The last, partial accumulation group of an epoch still steps (as Lightning does).
    """
    return math.ceil(num_batches / accumulate_grad_batches)


def group_sizes(num_samples: int, batch_size: int, accumulate_grad_batches: int) -> list[int]:
    """Samples in each accumulation group of an epoch of a non-dropping loader.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch (the last batch holds the remainder).
        accumulate_grad_batches: batches per optimizer step.

    Returns:
        One sample count per optimizer step of the epoch.
    """
    sizes = [batch_size] * (num_samples // batch_size) + ([num_samples % batch_size] if num_samples % batch_size else [])
    a = accumulate_grad_batches
    return [sum(sizes[i : i + a]) for i in range(0, len(sizes), a)]


class Trainer:
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
        log_every_n_steps: steps between reads of the on-device loss buffer (CSV flush).
        progress_bar: show a tqdm bar with epoch, step, loss and LR.
        save_checkpoints: write ``checkpoints/last.pt`` and ``best.pt`` after every epoch.
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
        log_every_n_steps: int = 50,
        progress_bar: bool = True,
        save_checkpoints: bool = True,
    ):
        self.model, self.optimizer, self.plan = model.to(device), optimizer, plan
        self.train_loader, self.val_loader = data
        self.run_dir, self.device = Path(run_dir), device
        self.accumulate = int(accumulate_grad_batches)
        self.clip = gradient_clip_val
        self.precision = str(precision)
        self.log_every = max(1, int(log_every_n_steps))
        self.progress_bar, self.save_checkpoints = progress_bar, save_checkpoints
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.group_names = [g.get("name", str(i)) for i, g in enumerate(optimizer.param_groups)]
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step = 0  # k: optimizer steps applied so far
        self.skipped_steps = 0
        self.history: dict[str, list] = {"step": [], **{n: [] for n in self.group_names}}

    def _autocast(self):
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _set_lr(self, k: int) -> list[float]:
        m = self.plan(k)
        lrs = []
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * m
            lrs.append(group["lr"])
        return lrs

    def _apply_step(self) -> tuple[bool, Optional[torch.Tensor]]:
        """Clip, step, zero grads. Returns (applied, grad_norm); fp16 overflow = not applied."""
        norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
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

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (mean cross-entropy, nats) and top-1 accuracy (fraction)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        n = 0
        for x, y in self.val_loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
        self.model.train()
        return {"val/loss": loss_sum.item() / n, "val/acc": correct.item() / n}

    def fit(self) -> dict[str, Any]:
        """Train for ``plan.total_steps`` optimizer steps, evaluating after every epoch.

        Writes ``steps.csv``, ``epochs.csv`` and checkpoints into ``run_dir``.

        Returns:
            ``{"steps", "epochs", "skipped_steps", "best": {...}, "final": {...}}``; the metric
            dicts hold ``epoch``, ``train/loss``, ``val/loss``, ``val/acc``, ``lr``.
        """
        from tqdm.auto import tqdm

        T, spe = self.plan.total_steps, self.plan.steps_per_epoch
        epochs = math.ceil(T / spe)
        lr_cols = ["lr"] + [f"lr/{n}" for n in self.group_names[1:]]
        step_cols = ["step", "epoch", *lr_cols, "loss"] + (["grad_norm"] if self.clip else [])
        steps_csv = CSVLog(self.run_dir / "steps.csv", step_cols)
        epochs_csv = CSVLog(self.run_dir / "epochs.csv", ["epoch", "train/loss", "val/loss", "val/acc", "lr", "time_s"])
        sizes = group_sizes(len(self.train_loader.dataset), self.train_loader.batch_size, self.accumulate)
        pending: list[tuple[dict[str, Any], torch.Tensor, Optional[torch.Tensor]]] = []
        interactive = sys.stderr.isatty()  # in log files, refresh the bar every 10 s only
        bar = tqdm(total=T, disable=not self.progress_bar, unit="step", dynamic_ncols=True,
                   mininterval=0.1 if interactive else 10.0)
        best: dict[str, Any] = {}
        final: dict[str, Any] = {}
        last_loss = float("nan")

        def flush() -> None:
            nonlocal last_loss
            if not pending:
                return
            values = torch.stack([p[1] for p in pending]).tolist()
            norms = [p[2] for p in pending]
            norm_values = torch.stack(norms).tolist() if self.clip else [None] * len(norms)
            steps_csv.write({**row, "loss": v, "grad_norm": g} for (row, _, _), v, g in zip(pending, values, norm_values))
            last_loss = values[-1]
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{pending[-1][0]['lr']:.3g}", refresh=False)
            pending.clear()

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            epoch_loss = torch.zeros((), device=self.device)
            epoch_samples = 0
            group_loss = torch.zeros((), device=self.device)
            g = 0
            lrs = self._set_lr(self.step)
            for i, (x, y) in enumerate(self.train_loader):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                weight = len(y) / sizes[g]
                with self._autocast():
                    loss = F.cross_entropy(self.model(x).float(), y)
                scaled = loss * weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                group_loss += scaled.detach()
                if (i + 1) % self.accumulate and i + 1 < len(self.train_loader):
                    continue
                applied, norm = self._apply_step()
                epoch_loss += group_loss * sizes[g]
                epoch_samples += sizes[g]
                if applied:
                    row = {"step": self.step, "epoch": epoch, "lr": lrs[0]}
                    row.update({f"lr/{n}": v for n, v in zip(self.group_names[1:], lrs[1:])})
                    pending.append((row, group_loss, norm))
                    self.history["step"].append(self.step)
                    for n, v in zip(self.group_names, lrs):
                        self.history[n].append(v)
                    self.step += 1
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lrs[0]:.3g}", refresh=False)
                    bar.update(1)
                    if len(pending) >= self.log_every:
                        flush()
                else:
                    self.skipped_steps += 1
                group_loss = torch.zeros((), device=self.device)
                g += 1
                if self.step >= T:
                    break
                lrs = self._set_lr(self.step)
            flush()
            metrics = {
                "epoch": epoch,
                "train/loss": (epoch_loss / max(epoch_samples, 1)).item(),
                **self.evaluate(),
                "lr": self.history[self.group_names[0]][-1] if self.history["step"] else lrs[0],
                "time_s": time.perf_counter() - t0,
            }
            epochs_csv.write([metrics])
            final = metrics
            is_best = not best or metrics["val/acc"] > best["val/acc"]
            if is_best:
                best = dict(metrics)
            if self.save_checkpoints:
                self._save(epoch, metrics, is_best)
            log.info(
                "epoch %d/%d  train/loss %.4f  val/loss %.4f  val/acc %.4f  lr %.4g",
                epoch + 1, epochs, metrics["train/loss"], metrics["val/loss"], metrics["val/acc"], metrics["lr"],
            )
            if self.step >= T:
                break
        bar.close()
        if self.skipped_steps:
            log.info("%d optimizer steps skipped by the fp16 grad scaler (LR schedule not advanced)", self.skipped_steps)
        return {"steps": self.step, "epochs": final.get("epoch", -1) + 1, "skipped_steps": self.skipped_steps,
                "best": best, "final": final}

    def _save(self, epoch: int, metrics: dict[str, Any], is_best: bool) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": epoch + 1,
            "metrics": metrics,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        folder = self.run_dir / "checkpoints"
        save_checkpoint(state, folder / "last.pt")
        if is_best:
            save_checkpoint(state, folder / "best.pt")
