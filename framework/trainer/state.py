"""Checkpoint state, resume, rollback and stop signals of the :class:`~framework.trainer.Trainer`."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from framework import distributed
from framework.checkpoint import rng_state, save_checkpoint, set_rng_state
from framework.trainer.guard import Diverged

log = logging.getLogger("framework.trainer.loop")


class StateMixin:
    """What a trainer saves, restores and rolls back to (mixed into ``Trainer``)."""

    _earlier_time_s = 0.0  # training time of the segments before a resume (s)
    late_signal = None  # a stop signal that arrived after the last step (the run completes)
    saved_step = None  # step k of the last.pt this process wrote last
    _fit_start = None

    @property
    def train_time_s(self) -> float:
        """Seconds spent in ``fit`` over every segment of the run (resumes included)."""
        import time

        now = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._earlier_time_s + now

    def _roll_back(self, exc: Diverged) -> None:
        """Restore the last good state, lower the LR by ``rollback_lr_factor``, forget later rows."""
        from framework.loggers import truncate_csv

        state = self.guard.restore_point()
        backoff = self.lr_backoff * self.guard.backoff
        self._pending.clear()
        self._checked.clear()
        earlier = self._earlier_time_s  # time spent is not rolled back
        self.load_state_dict(state)
        self.lr_backoff, self._earlier_time_s = backoff, earlier
        self._apply_backoff()
        keep = sum(1 for k in self.history["step"] if k < self.step)
        for key in self.history:
            del self.history[key][keep:]
        self.guard.rollbacks.append({"diverged_step": exc.step, "reason": exc.reason, "lr": exc.lr,
                                     "restored_step": self.step, "lr_factor": backoff})
        self._bar.n = self.step
        # last.pt first, then the CSVs: killed in between, a resume cuts the CSVs to last.pt itself;
        # killed before, the old last.pt replays the divergence and this rollback exactly
        if self.save_checkpoints:
            self._save(False)
        if self.is_global_zero:  # only rank 0 writes files
            truncate_csv(self.run_dir / "steps.csv", "step", self.step)
            truncate_csv(self.run_dir / "epochs.csv", "epoch", self.epoch)
        log.warning("rollback %d/%d: %s at step %d; back to step %d with the LR x%g",
                    len(self.guard.rollbacks), self.guard.max_rollbacks, exc.reason, exc.step, self.step, backoff)

    def _local_epoch_loss(self) -> float:
        """This rank's loss sum of the epoch so far (loss x samples, float32 as accumulated)."""
        return self._epoch_loss_t.item() if self._epoch_loss_t is not None else self._epoch_loss

    def _apply_backoff(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["initial_lr"] = base * self.lr_backoff

    def _catch_stop_signals(self):
        """SIGTERM, SIGUSR2 (submitit's warning before a SLURM time limit) and a first Ctrl-C
        request a stop at the next step boundary; returns the undo."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def request(signum, frame):
            name = signal.Signals(signum).name
            if self.step >= self.plan.total_steps:  # nothing left to stop: the run finishes its files
                self.late_signal = self.late_signal or name
                return
            if self._stop_request is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            self._stop_request = name
            log.warning("%s received: stopping after this step with a resumable checkpoint", self._stop_request)

        signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])
        previous = {sig: signal.signal(sig, request) for sig in signals}
        from framework.interrupts import take_pending

        early = take_pending()  # a signal held while fit() was starting: stop at the first step
        if early is not None and self._stop_request is None:
            request(signal.Signals[early], None)
        self._previous_handlers = {signal.Signals(sig).name: h for sig, h in previous.items()}
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]

    def forward_stop_signal(self) -> None:
        """After a run stopped on SIGUSR2 has written its checkpoint and summary, hand the signal
        to the handler that was there before (submitit's, which requeues the SLURM job)."""
        handler = getattr(self, "_previous_handlers", {}).get(self.stopped or "")
        if self.stopped == "SIGUSR2" and callable(handler):
            handler(signal.SIGUSR2, None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, scaler, LR-plan state,
        position (step ``k``, epoch, batch within it), epoch accumulators, metrics, RNG streams.

        In a data-parallel run every rank calls it at the same step: each rank's epoch loss sum
        is gathered (so each continues its own exactly) and rank 0's batch-norm buffers copied to
        all (as DDP's next forward would), so the state is the same on every rank."""
        distributed.broadcast_buffers(self.model)
        per_rank = distributed.all_gather_float(self._local_epoch_loss())
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plan": self.plan.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_loss": sum(per_rank),  # the epoch's loss sum so far over all ranks
            "epoch_loss_per_rank": per_rank,
            "lr_backoff": self.lr_backoff,
            "guard": self.guard.state_dict(),
            "epoch_samples": self._epoch_samples,  # per rank (the same on every rank)
            "world_size": self.world_size,
            "train_time_s": self.train_time_s,
            "best": self.best,
            "final": self.final,
            "skipped_steps": self.skipped_steps,
            "rng": rng_state(),
            "config": self.config,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (RNG streams last, so nothing after draws from them).

        The base LR, momentum and every other hyperparameter the optimizer's config sets
        (``weight_decay``, ``betas``, ``eps``, ...) stay those of the current config: a resume
        with ``resume_allow_changes=true`` applies the changed values from its first step.

        Raises:
            ConfigError: the checkpoint holds another model or optimizer layout.
        """
        from framework.config import ConfigError, first_line

        try:  # a schedule-free stop saved its averaged weights and, apart, the iterate it trains on
            self.model.load_state_dict(state.get("train_model", state["model"]))
        except RuntimeError as exc:
            raise ConfigError(f"resume: the checkpoint holds a different model ({first_line(exc, 120)}); "
                              "resume with the run's own model config")
        # this config's hyperparameters win over the checkpoint's (a resume may change them)
        hyper = {"initial_lr", "initial_momentum", *self._optimizer_keys()}
        keep = [{k: g[k] for k in hyper if k in g} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ConfigError(f"resume: the checkpoint's optimizer does not fit ({exc}); resume with the run's optimizer")
        for group, kept in zip(self.optimizer.param_groups, keep):
            group.update(kept)
        self.lr_backoff = state.get("lr_backoff", 1.0)
        self._earlier_time_s = state.get("train_time_s", 0.0)
        if "guard" in state:
            rollbacks = self.guard.rollbacks  # a rollback in progress keeps its own record
            self.guard.load_state_dict(state["guard"])
            if len(rollbacks) > len(self.guard.rollbacks):
                self.guard.rollbacks = rollbacks
        if "guard_points" in state and self.guard.policy == "rollback":  # a resume: the run's restore points
            self.guard.snapshot, self.guard.candidate = state["guard_points"]
        self._apply_backoff()
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.plan.load_state_dict(state.get("plan", {}))
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        # each rank continues its own float32 sum exactly (same world size: checked by prepare_resume)
        self._epoch_loss = state.get("epoch_loss_per_rank", [state["epoch_loss"]])[distributed.rank()]
        self._epoch_samples = state["epoch_samples"]
        self._epoch_loss_t = None
        self.best, self.final, self.skipped_steps = state["best"], state["final"], state["skipped_steps"]
        set_rng_state(state["rng"])

    def _averaged_weights(self) -> dict[str, Any]:
        """A schedule-free optimizer's averaged weights ``x`` (what it evaluates), taken while it
        trains on its iterate ``y``; the parameters are put back bit for bit afterwards (its
        ``eval()``/``train()`` round trip is not exact in floating point)."""
        import torch

        params = list(self.model.parameters())
        kept = [p.detach().clone() for p in params]
        self.optimizer.eval()
        averaged = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with torch.no_grad():
            for p, value in zip(params, kept):
                p.copy_(value)
        for group in self.optimizer.param_groups:
            group["train_mode"] = True
        return averaged

    def _optimizer_keys(self) -> set[str]:
        """The optimizer's hyperparameters as the config names them (``weight_decay``,
        ``momentum``, ``betas``, ...; not ``lr``, which the plan sets every step)."""
        from framework.config import RESERVED_KEYS

        node = (self.config or {}).get("optimizer") or {}
        return {k for k in node if not k.startswith("_") and k not in ("lr", *RESERVED_KEYS["optimizer"])}

    def _save(self, is_best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt``); ``model`` holds the weights to use (a schedule-free
        optimizer's averaged weights, also when a stop saves mid-epoch; the iterate it trains on is
        then ``train_model``); with ``on_divergence=rollback`` the checkpoint also
        holds the guard's two restore points (up to 2 more copies of the weights and optimizer
        state), so a resumed run rolls back exactly as the run would have."""
        state = self.state_dict()  # every rank: it sums the epoch loss over the ranks
        if not self.is_global_zero:
            return
        if any(g.get("train_mode") for g in self.optimizer.param_groups):  # schedule-free, stopped mid-epoch
            state["train_model"], state["model"] = state["model"], self._averaged_weights()
        if self.guard.policy == "rollback":
            state["guard_points"] = [self.guard.snapshot, self.guard.candidate]
        folder = self.run_dir / "checkpoints"
        save_checkpoint(state, folder / "last.pt")
        self.saved_step = self.step
        if is_best:  # the best weights, without the rollback restore points (1/3 of the size)
            save_checkpoint({k: v for k, v in state.items() if k != "guard_points"}, folder / "best.pt")
