"""The trainer's side of the divergence guard's rollback: offer restore points, restore the last
good state with a lower LR, and forget what came after it (in memory and in the CSVs)."""
from __future__ import annotations

import logging
import math

import torch

from framework.trainer.guard import Diverged

log = logging.getLogger("framework.trainer.loop")


class Rollbacks:
    """Rollback methods of :class:`~framework.trainer.Trainer` (a mixin: they use its
    ``run_state``, ``guard``, ``steplog``, ``history``, ``_params``, checkpoints and run folder); the policy
    itself is :class:`~framework.trainer.guard.DivergenceGuard`'s."""

    def _keep(self) -> None:
        """Offer the state to the rollback guard at a regular point: every
        ``log_every_n_steps``-th step, and each epoch's end once its validation loss is finite.
        Stops never take one, so a resumed run takes the same restore points as the run that
        went on (a point already offered at this step is not offered again)."""
        if self.guard.policy == "rollback" and self.guard.kept_step != self.run_state.global_step:
            self.guard.keep(self.state_dict())
            self.steplog.release()  # the restore point moved: the steps before it are final for the trackers

    def _check_weights(self) -> None:
        """Before a checkpoint is written: every weight is finite.

        Raises:
            Diverged: a weight is NaN or inf, blamed on the last step (a non-finite gradient on a
                step whose norm was not measured, whose next loss has not been read yet), so that no
                checkpoint holds such weights.
        """
        if not bool(torch.stack([torch.isfinite(p).all() for p in self._params]).all()):  # one sync
            lrs = self.history[self.group_names[0]]
            raise Diverged(self.run_state.global_step - 1, lrs[-1] if lrs else math.nan,
                           "the weights after it are not finite")

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
        if self.doctor is not None:  # the live LR doctor forgets the undone steps too
            self.doctor.forget_from(rs.global_step)
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
