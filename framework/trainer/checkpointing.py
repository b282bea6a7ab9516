"""What a trainer saves, restores and rolls back to: weights, optimizer, grad scaler, LR-plan
state, the run's position and the random streams, in one checkpoint dict."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from framework import distributed
from framework.checkpoint import copy_checkpoint, rng_state, save_checkpoint, set_rng_state
from framework.errors import ConfigError, first_line
from framework.schedules import LRPlan
from framework.trainer.guard import DivergenceGuard
from framework.trainer.state import RunState


class TrainerCheckpoint:
    """The state of a training run as a dict (``state_dict``), loaded back exactly, and written
    to ``checkpoints/last.pt`` and ``best.pt``.

    Args:
        model: the plain module (not the DDP or compiled wrapper), whose keys checkpoints hold.
        optimizer: its optimizer.
        plan: the LR plan (a metric-driven schedule's state).
        guard: the divergence guard (smoothed loss, rollbacks, restore points).
        run_state: the run's position and totals.
        scaler: the fp16 grad scaler, or None.
        config: the run's resolved config (stored to check resumes; its ``optimizer`` keys are
            the hyperparameters a resume takes from the current config).
        folder: where ``last.pt`` and ``best.pt`` go.
        is_main: this process writes files (rank 0).
        meta: plain values stored as they are in every checkpoint, e.g. ``task`` (the task's
            name, ``label_type``, ``monitor``, ``mode``) and ``classes`` (the output names or None).
        ema: the EMA of the weights (:class:`~framework.trainer.ema.WeightEma`, ``ema``), or None.
        early_stopping: the early-stopping judge (``early_stopping``), or None when off.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: LRPlan,
                 guard: DivergenceGuard, run_state: RunState, scaler: Optional[Any], config: Optional[dict[str, Any]],
                 folder: Path, is_main: bool = True, meta: Optional[dict[str, Any]] = None,
                 ema: Optional[Any] = None, early_stopping: Optional[Any] = None):
        self.model, self.optimizer, self.plan, self.guard = model, optimizer, plan, guard
        self.ema, self.early_stopping = ema, early_stopping
        self.run_state, self.scaler, self.config = run_state, scaler, config
        self.folder, self.is_main = Path(folder), is_main
        self.meta = dict(meta or {})

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, scaler, LR-plan state,
        position (``step`` = ``k``, ``epoch``, ``batch`` within it), epoch accumulators, metrics,
        rollback back-off and record, RNG streams, config, and the ``meta`` values (``task``,
        ``classes``); with EMA on its weights (``ema``), with early stopping its state.

        In a data-parallel run every rank calls it at the same step: rank 0's batch-norm buffers
        are copied to all (as DDP's next forward would) and each rank's epoch loss sum gathered,
        so the state is the same on every rank."""
        distributed.broadcast_buffers(self.model)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plan": self.plan.state_dict(),
            **self.run_state.state_dict(),
            "guard": self.guard.state_dict(),
            "world_size": distributed.world_size(),
            "rng": rng_state(),
            "config": self.config,
            **self.meta,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (RNG streams last, so nothing after draws from them).

        The base LR (``initial_lr``), momentum and every other hyperparameter the optimizer's
        config sets (``weight_decay``, ``betas``, ``eps``, ...) stay those of the current config:
        a resume with ``resume_allow_changes=true`` applies the changed values from its first
        step. A rollback in progress keeps its own record of rollbacks.

        Raises:
            ConfigError: the checkpoint holds another model or optimizer layout; resume with the
                run's own model and optimizer config.
        """
        try:  # a schedule-free stop saved its averaged weights and, apart, the iterate it trains on
            self.model.load_state_dict(state.get("train_model", state["model"]))
        except RuntimeError as exc:
            raise ConfigError(f"resume: the checkpoint holds a different model ({first_line(exc, 120)}); "
                              "resume with the run's own model config")
        # this config's hyperparameters win over the checkpoint's (a resume may change them)
        hyper = {"initial_lr", "initial_momentum", "initial_weight_decay", *self._optimizer_keys()}
        keep = [{k: g[k] for k in hyper if k in g} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ConfigError(f"resume: the checkpoint's optimizer does not fit ({exc}); resume with the run's optimizer")
        for group, kept in zip(self.optimizer.param_groups, keep):
            group.update(kept)
        if "guard" in state:
            rollbacks = self.guard.rollbacks  # a rollback in progress keeps its own record
            self.guard.load_state_dict(state["guard"])
            if len(rollbacks) > len(self.guard.rollbacks):
                self.guard.rollbacks = rollbacks
        if "guard_points" in state and self.guard.policy == "rollback":  # a resume: the run's restore points
            self.guard.snapshot, self.guard.candidate = state["guard_points"]
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # a run that had no EMA (resume_allow_changes): it starts at the weights
            self.ema.set(self.model)
        if self.early_stopping is not None and "early_stopping" in state:
            self.early_stopping.load_state_dict(state["early_stopping"])
        self.plan.load_state_dict(state.get("plan", {}))
        self.run_state.load_state_dict(state)
        set_rng_state(state["rng"])

    def save(self, state: dict[str, Any], is_best: bool, best_weights: Optional[str] = None) -> bool:
        """Write ``state`` (:meth:`state_dict`, taken on every rank) as ``last.pt`` (and
        ``best.pt``) on rank 0, each to a temporary file renamed into place.

        With EMA on, ``best.pt`` records ``best_weights`` (``raw`` or ``ema``: the weights whose
        monitored value made the epoch best); for ``ema`` its ``model`` holds the EMA weights
        (what ``mode=test`` evaluates) and ``train_model`` the raw ones (what a resume from it
        trains on).

        ``model`` holds the weights to use: a schedule-free optimizer's averaged weights, also
        when a stop saves mid-epoch (the iterate it trains on is then ``train_model``). With
        ``on_divergence=rollback``, ``last.pt`` also holds the guard's two restore points (up to
        2 more copies of the weights and optimizer state), so a resumed run rolls back exactly
        as the run would have.

        Returns:
            True when this process wrote the files (rank 0).

        Raises:
            OSError: a write failed (disk full); the previous files are intact.
        """
        if not self.is_main:
            return False
        if any(g.get("train_mode") for g in self.optimizer.param_groups):  # schedule-free, stopped mid-epoch
            state["train_model"], state["model"] = state["model"], self._averaged_weights()
        if self.guard.policy == "rollback":
            state["guard_points"] = [self.guard.snapshot, self.guard.candidate]
        save_checkpoint(state, self.folder / "last.pt")
        if is_best and best_weights is not None:  # EMA on: which weights are best, recorded (a file of its own)
            best = {k: v for k, v in state.items() if k != "guard_points"}
            if best_weights == "ema":
                best.update(model=state["ema"], train_model=state.get("train_model", state["model"]))
            save_checkpoint({**best, "best_weights": best_weights}, self.folder / "best.pt")
        elif is_best and "guard_points" in state:  # the best weights, without the restore points (1/3 of the size)
            save_checkpoint({k: v for k, v in state.items() if k != "guard_points"}, self.folder / "best.pt")
        elif is_best:  # the same state: the same bytes, linked, not written again
            copy_checkpoint(self.folder / "last.pt", self.folder / "best.pt")
        return True

    def _averaged_weights(self) -> dict[str, Any]:
        """A schedule-free optimizer's averaged weights ``x`` (what it evaluates), taken while it
        trains on its iterate ``y``; the parameters are put back bit for bit afterwards (its
        ``eval()``/``train()`` round trip is not exact in floating point)."""
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
