"""Where a run stands: the step index ``k``, the position in the data, the epoch's loss sum, the
metrics so far, the rollbacks' LR back-off and the training time."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from framework import distributed


@dataclass
class RunState:
    """The run's position and running totals, saved in every checkpoint.

    Attributes:
        global_step: ``k``, optimizer steps applied so far (the LR plan's index; an fp16 step
            the grad scaler skipped does not count).
        epoch: current epoch (from 0); batch: batches of it already trained.
        epoch_loss: this rank's loss sum of the epoch before :meth:`begin_epoch` (loss x
            samples, nats; float32 as accumulated); epoch_samples: samples in it, per rank.
        best: metrics of the best epoch so far (by the task's ``monitor`` and ``mode``); final: of
            the last finished one.
        skipped_steps: optimizer steps the fp16 grad scaler skipped.
        clipped_steps: applied steps whose gradients were clipped (counted when the step log
            reads their flags; 0 without clipping).
        lr_backoff: product of the rollbacks' ``rollback_lr_factor`` so far (1 = none), a
            multiplier on every group's base LR.
        earlier_time_s: training time of the segments before a resume or rollback (s).
        wall_start: ``time.time()`` (s since the epoch) at which the run started, moved back by
            its earlier segments' wall time; set by :func:`framework.run.train` (None: not
            counted, e.g. a trainer built by hand); each checkpoint stores ``wall_time_s``, the
            time from it to the save, from which a resume counts on. A checkpoint taken over from
            another run (a PBT exploit) brings that run's time, as it brings its ``train_time_s``
            and steps; the time a segment spent after its last checkpoint (final files, closing
            trackers) is not in it.
    """

    global_step: int = 0
    epoch: int = 0
    batch: int = 0
    epoch_loss: float = 0.0
    epoch_samples: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    skipped_steps: int = 0
    clipped_steps: int = 0
    lr_backoff: float = 1.0
    earlier_time_s: float = 0.0
    started: Optional[float] = None  # time.perf_counter() when this segment's fit started
    wall_start: Optional[float] = None
    epoch_loss_t: Optional[torch.Tensor] = None  # the epoch's loss sum on the device, while it runs

    def count_clipped(self, rows: list[dict[str, Any]]) -> None:
        """The step log read these rows: add their ``clipped`` flags (0/1) to :attr:`clipped_steps`
        (only rows that count: a diverging step's later rows are never read; a rollback restores
        the count of its restore point, a resume that of its checkpoint)."""
        self.clipped_steps += sum(row.get("clipped", 0) for row in rows)

    def clipped_frac(self) -> Optional[float]:
        """Fraction of the applied steps whose gradients were clipped, ``clipped_steps / k``;
        None before the first step."""
        return self.clipped_steps / self.global_step if self.global_step else None

    def start_clock(self) -> None:
        """Start counting this segment's training time (at the start of ``fit``)."""
        self.started = time.perf_counter()

    @property
    def train_time_s(self) -> float:
        """Seconds spent in ``fit`` over every segment of the run (resumes included)."""
        now = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.earlier_time_s + now

    def begin_epoch(self, device: torch.device) -> torch.Tensor:
        """The epoch's loss sum as a 0-dim float32 tensor on ``device``, continuing
        :attr:`epoch_loss` (a resumed epoch); add each step's ``loss x samples`` to it in place."""
        self.epoch_loss_t = torch.full((), self.epoch_loss, device=device)
        return self.epoch_loss_t

    def end_epoch(self) -> None:
        """Reset the epoch's accumulators once its mean loss is taken."""
        self.epoch_loss, self.epoch_samples, self.epoch_loss_t = 0.0, 0, None

    def local_epoch_loss(self) -> float:
        """This rank's loss sum of the epoch so far (loss x samples, float32 as accumulated)."""
        return self.epoch_loss_t.item() if self.epoch_loss_t is not None else self.epoch_loss

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's position keys (``step`` = ``k``, ``epoch``, ``batch``, ...).

        In a data-parallel run every rank calls it at the same step (a collective): each rank's
        epoch loss sum is gathered, so each continues its own exactly.
        """
        per_rank = distributed.all_gather_float(self.local_epoch_loss())
        return {
            "step": self.global_step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_loss": sum(per_rank),  # the epoch's loss sum so far over all ranks
            "epoch_loss_per_rank": per_rank,
            "lr_backoff": self.lr_backoff,
            "epoch_samples": self.epoch_samples,  # per rank (the same on every rank)
            "train_time_s": self.train_time_s,
            "wall_time_s": time.time() - self.wall_start if self.wall_start is not None else None,
            "best": self.best,
            "final": self.final,
            "skipped_steps": self.skipped_steps,
            "clipped_steps": self.clipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (this rank's own epoch loss sum: the world size is
        the checkpoint's, checked by :func:`framework.resume.prepare_resume`)."""
        self.global_step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.epoch_loss = state.get("epoch_loss_per_rank", [state["epoch_loss"]])[distributed.rank()]
        self.epoch_samples, self.epoch_loss_t = state["epoch_samples"], None
        self.best, self.final, self.skipped_steps = state["best"], state["final"], state["skipped_steps"]
        self.lr_backoff = state.get("lr_backoff", 1.0)
        self.clipped_steps = state.get("clipped_steps", 0)
        self.earlier_time_s = state.get("train_time_s", 0.0)
