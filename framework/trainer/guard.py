"""Divergence guard: detect a diverging step and, on request, roll back and lower the LR."""
from __future__ import annotations

import copy
import math
from typing import Any, Optional, Sequence


class Diverged(RuntimeError):
    """Training diverged at optimizer step ``step``.

    Attributes:
        step: index ``k`` of the first diverging step.
        lr: LR applied at that step (group 0).
        reason: what was seen (non-finite loss or gradient norm, or an exploding loss).
    """

    def __init__(self, step: int, lr: float, reason: str = "loss is not finite"):
        self.step, self.lr, self.reason = step, lr, reason
        super().__init__(f"{reason} at step {step} (lr {lr:.6g}); lower lr0 or add warmup")


class DivergenceGuard:
    """Watches step losses (read in batches from the device) and keeps the last good state.

    A step diverges when its loss or gradient norm (on the steps that measure it) is NaN or inf,
    or when its loss exceeds ``loss_mult`` times the lowest smoothed loss seen so far (smoothing:
    bias-corrected EMA with ``beta``, as fastai's LR finder; judged after ``min_steps`` steps). A
    non-finite gradient on a step that does not measure it makes the weights non-finite, so in
    practice the next step's loss is (that step is the one found), and the trainer checks the
    weights before writing any checkpoint.
    With ``policy="rollback"`` the trainer restores the last good state (weights, optimizer,
    schedule position, RNG streams), multiplies every group's LR by ``rollback_lr_factor`` for the
    rest of the run and retries, at most ``max_rollbacks`` times.

    Args:
        policy: ``stop`` or ``rollback``.
        loss_mult: explosion threshold (ratio to the best smoothed loss); None = non-finite only.
        rollback_lr_factor: LR multiplier after each rollback, in (0, 1).
        max_rollbacks: retries before giving up (then as ``stop``).
        beta: EMA coefficient of the smoothed loss.
        min_steps: steps before the explosion test applies.

    Raises:
        ValueError: an argument out of range (reported as a config error by the caller).
    """

    def __init__(self, policy: str = "stop", loss_mult: Optional[float] = None, rollback_lr_factor: float = 0.5,
                 max_rollbacks: int = 3, beta: float = 0.9, min_steps: int = 5):
        if policy not in ("stop", "rollback"):
            raise ValueError(f"trainer.on_divergence={policy}: use stop or rollback")
        if loss_mult is not None and not loss_mult > 1:
            raise ValueError(f"trainer.divergence_loss_mult={loss_mult}: must be > 1 or null")
        if not 0 < rollback_lr_factor < 1:
            raise ValueError(f"trainer.rollback_lr_factor={rollback_lr_factor}: must be in (0, 1), e.g. 0.5")
        if max_rollbacks < 0:
            raise ValueError(f"trainer.max_rollbacks={max_rollbacks}: must be >= 0")
        self.policy, self.loss_mult, self.max_rollbacks = policy, loss_mult, max_rollbacks
        self.rollback_lr_factor = rollback_lr_factor
        self.beta, self.min_steps = beta, min_steps
        self.avg, self.seen, self.best = 0.0, 0, math.inf
        self.rollbacks: list[dict[str, Any]] = []
        self.kept_step = -1  # step k of the last state offered to keep()
        self.snapshot: Optional[dict[str, Any]] = None  # last state known good
        self.candidate: Optional[dict[str, Any]] = None  # newer state, good once a later loss is finite

    def check(self, steps: Sequence[int], losses: Sequence[float], norms: Sequence[Optional[float]]) -> Optional[tuple[int, str]]:
        """Index of the first diverging step in a flushed batch and why, or None.

        Updates the smoothed loss with the good steps before it.
        """
        for i, (loss, norm) in enumerate(zip(losses, norms)):
            if not math.isfinite(loss):
                return i, "loss is not finite"
            if norm is not None and not math.isfinite(norm):
                return i, "gradient norm is not finite"
            if self.loss_mult is not None and self.seen >= self.min_steps and loss > self.loss_mult * self.best:
                return i, f"loss {loss:.4g} exploded past {self.loss_mult:g} x its best smoothed {self.best:.4g}"
            self.seen += 1
            self.avg = self.beta * self.avg + (1 - self.beta) * loss
            smoothed = self.avg / (1 - self.beta**self.seen)
            if self.seen >= self.min_steps:
                self.best = min(self.best, smoothed)
        return None

    def keep(self, state: dict[str, Any], trusted: bool = False) -> None:
        """Offer a state after a clean check (only with the rollback policy: it copies the weights).

        Weights after a step are proven only by the loss of the next step, so the state offered
        now becomes the restore point at the next clean check; the previous one becomes it now.
        ``trusted`` (the start of training) makes it the restore point at once.
        """
        if self.policy != "rollback":
            return
        self.kept_step = state["step"]
        state = copy.deepcopy({**state, "guard": (self.avg, self.seen, self.best)})
        if trusted:
            self.snapshot, self.candidate = state, None
        else:
            if self.candidate is not None:
                self.snapshot = self.candidate
            self.candidate = state

    def state_dict(self) -> dict[str, Any]:
        """Smoothed-loss statistics and the rollbacks so far (saved in checkpoints)."""
        return {"avg": self.avg, "seen": self.seen, "best": self.best, "rollbacks": list(self.rollbacks),
                "kept_step": self.kept_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.avg, self.seen, self.best = state["avg"], state["seen"], state["best"]
        self.rollbacks = list(state["rollbacks"])
        self.kept_step = state.get("kept_step", -1)

    def can_roll_back(self) -> bool:
        return self.policy == "rollback" and self.snapshot is not None and len(self.rollbacks) < self.max_rollbacks

    def final_before(self) -> float:
        """Steps ``k`` below this can no longer be undone by a rollback: the restore point's step
        while one is left to use (with the rollback policy), else infinity (every step is final)."""
        return self.snapshot["step"] if self.can_roll_back() else math.inf

    def restore_point(self) -> dict[str, Any]:
        """The last good state; resets the smoothed loss to what it was then."""
        state = copy.deepcopy(self.snapshot)
        self.avg, self.seen, self.best = state.pop("guard")
        self.candidate, self.kept_step = None, state["step"]
        return state
