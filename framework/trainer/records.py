"""How the trainer records its applied steps: the LRs it sets, the rows of ``steps.csv`` and
what reads them (the clipped-step count, the live LR doctor)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from framework.doctor.config import settings
from framework.doctor.live import LiveDoctor
from framework.schedules.plan import group_momentum, momentum_key
from framework.trainer.update_ratio import UpdateRatios, ratio_columns


class StepRecords:
    """A mixin of :class:`~framework.trainer.Trainer` (it uses the trainer's ``optimizer``, ``plan``,
    ``run_state``, ``steplog``, ``group_names``, ``history``, ``clip``, ``is_main``,
    ``log_every``, ``device`` and ``_bar``): the LR of step ``k`` set through the plan, the
    step's row handed to the step log, the LR doctor's update ratios and live judgement."""

    def _step_columns(self, optimizer: torch.optim.Optimizer, lr_doctor: Optional[dict[str, Any]]) -> list[str]:
        """Set up the LR doctor (``trainer.lr_doctor``: :attr:`lr_doctor` with its defaults,
        :attr:`update_ratios`, :attr:`doctor` on rank 0 with ``warn``) and return ``steps.csv``'s
        header: ``step``, ``epoch``, ``lr``, ``lr/<group>``, ``momentum``, ``weight_decay`` (when
        the schedule sets it: a replayed PBT trace), ``d`` (Prodigy), ``loss``, ``grad_norm``,
        ``clipped`` (with clipping), ``update_ratio``... (with the ratios)."""
        group0 = optimizer.param_groups[0]
        self.lr_doctor = settings(lr_doctor)  # None = off
        self.update_ratios = UpdateRatios(optimizer, (self.lr_doctor or {}).get("update_ratio_every_n_steps", 0))
        warn = self.lr_doctor is not None and self.lr_doctor["warn"] and self.is_main
        self.doctor = LiveDoctor() if warn else None  # run.py gives it lr0=auto's record
        self._logs_weight_decay = bool(getattr(self.plan, "sets_weight_decay", False))  # a replayed trace sets it
        return ["step", "epoch", "lr", *[f"lr/{n}" for n in self.group_names[1:]],
                *(["momentum"] if momentum_key(group0) else []),
                *(["weight_decay"] if self._logs_weight_decay else []), *(["d"] if "d" in group0 else []), "loss",
                "grad_norm", *(["clipped"] if self.clip is not None else []),
                *(ratio_columns(self.group_names) if self.update_ratios.every else [])]

    def _rows_read(self, rows: list[dict[str, Any]]) -> None:
        """Step rows just read from the device: clipped steps counted, the live LR doctor told."""
        self.run_state.count_clipped(rows)
        if self.doctor is not None:
            self.doctor.observe(rows)

    def _apply_lr(self) -> list[float]:
        """Set every group's LR (and momentum) for step ``k`` through the plan, with the rollbacks'
        back-off; returns the LRs. Prodigy's ``d`` of group 0 is read first: this step uses it."""
        self._d = self.optimizer.param_groups[0].get("d")
        return self.plan.apply(self.optimizer, self.run_state.global_step, self.run_state.lr_backoff)

    def _record(self, epoch: int, lrs: list[float], loss: torch.Tensor, norm: Optional[torch.Tensor],
                clipped: Optional[torch.Tensor] = None, ratios: Optional[torch.Tensor] = None) -> None:
        """Log applied step ``k`` (its LRs now; its loss, gradient norm, clip flag and update
        ratios at the next check) and advance ``k``."""
        k = self.run_state.global_step
        group0 = self.optimizer.param_groups[0]
        row = {"step": k, "epoch": epoch, "lr": lrs[0], "momentum": group_momentum(group0), "d": self._d,
               **({"weight_decay": group0.get("weight_decay")} if self._logs_weight_decay else {}),
               **{f"lr/{n}": v for n, v in zip(self.group_names[1:], lrs[1:])}}
        self.steplog.add(row, loss, norm, clipped, ratios)
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
