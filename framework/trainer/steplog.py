"""The buffered step log: ``steps.csv`` rows whose loss and gradient norm stay on the device
until a flush reads them all at once and the divergence guard checks them."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from framework import distributed
from framework.loggers import CSVLog
from framework.trainer.guard import Diverged, DivergenceGuard


class NullLog:
    """Stands in for :class:`~framework.loggers.CSVLog` on ranks other than 0 (they write no files)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def write(self, rows: Any) -> None:
        pass


def csv_log(path: Path, columns: Sequence[str], append: bool, write: bool) -> CSVLog | NullLog:
    """A :class:`~framework.loggers.CSVLog` of ``path`` (``append``: keep its rows, a resume),
    or a :class:`NullLog` when this process does not ``write`` files (ranks other than 0)."""
    return (CSVLog if write else NullLog)(path, columns, append=append)


class StepLog:
    """One row per applied optimizer step, held until the next flush (one device sync).

    A row is added with its step loss and total gradient norm (None on a step that does not
    measure it) and, with clipping on, its "clipped" flag, as 0-dim device tensors; a
    :meth:`check` reads every pending one (one transfer), averages the losses over the ranks,
    runs the divergence guard and moves the rows up to a diverging one to the rows to write; a
    :meth:`flush` also appends them to ``steps.csv`` (one file write).

    Args:
        path: ``steps.csv`` of the run folder.
        columns: its header (``step``, ``epoch``, ``lr``, ``lr/<group>``, ``momentum``, ``d``,
            ``loss``, ``grad_norm``, ``clipped`` with clipping on, ``update_ratio`` and
            ``update_ratio/<group>`` with the LR doctor's ratios on).
        guard: the divergence guard that judges each step's loss and gradient norm.
        world_size: processes of the run (losses are averaged over them).
        write: this process writes files (rank 0).
        trackers: :class:`~framework.tracking.Trackers` that get the rows appended to the file
            and the epochs' rows (:meth:`track`), in step order, once no rollback can undo them
            (queued: no I/O here); None = the file only.

    Attributes:
        last_loss: loss of the last checked step (mean cross-entropy, nats), None before any.
        on_read: called with each batch of rows once their device values are read (``loss``,
            ``grad_norm``, ``clipped`` 0/1), before they are written: the trainer counts the
            clipped steps there; None = nothing.
    """

    def __init__(self, path: Path, columns: Sequence[str], guard: DivergenceGuard, world_size: int = 1,
                 write: bool = True, trackers: Optional[Any] = None):
        self.path, self.columns, self.guard = Path(path), list(columns), guard
        self.world_size, self.write, self.trackers = world_size, write, trackers
        # rows not read yet: (row, loss, grad norm or None, clip flag or None, update ratios (G,) or None)
        self.pending: list[tuple[dict[str, Any], torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor],
                                 Optional[torch.Tensor]]] = []
        self.ratio_columns = [c for c in self.columns if c == "update_ratio" or c.startswith("update_ratio/")]
        self.checked: list[dict[str, Any]] = []  # rows read and checked, not written yet
        self.last_loss: Optional[float] = None
        self.on_read: Optional[Callable[[list[dict[str, Any]]], None]] = None
        self.held: list[tuple[int, str, Any]] = []  # (step k, tracker call, its argument) not final yet
        self._file: CSVLog | NullLog = NullLog()

    def open(self, append: bool) -> None:
        """Start the file (header) at the start of ``fit``; ``append`` keeps its rows (a resume)."""
        self.clear()
        self._file = csv_log(self.path, self.columns, append, self.write)

    def add(self, row: dict[str, Any], loss: torch.Tensor, norm: Optional[torch.Tensor],
            clipped: Optional[torch.Tensor] = None, ratios: Optional[torch.Tensor] = None) -> None:
        """Buffer an applied step's row (``step``, ``epoch``, LRs, ...) with its loss, gradient
        norm (None on a step that did not measure it: an empty ``grad_norm``) and, with clipping on, whether it was clipped (bool), 0-dim tensors on the device,
        and on a sampled step its update ratios ``(G,)`` (one per group, the
        ``update_ratio...`` columns in order); nothing is read now (the flag becomes the row's
        ``clipped``, 0 or 1)."""
        self.pending.append((row, loss, norm, clipped, ratios))

    def clear(self) -> None:
        """Drop every row not written yet and every tracker call not made yet (a rollback: they
        belong to steps that are redone)."""
        self.pending.clear()
        self.checked.clear()
        self.held.clear()

    def track(self, method: str, value: Any, step: int) -> None:
        """Hand ``value`` to the trackers (``log_steps``: a ``steps.csv`` row; ``log_epoch``: an
        ``epochs.csv`` row at the epoch's last ``k``) once step ``step`` can no longer be rolled
        back (:meth:`DivergenceGuard.final_before`); in the order of the calls."""
        if self.trackers:
            self.held.append((step, method, value))
            self.release()

    def release(self, everything: bool = False) -> None:
        """Send the held tracker calls of steps below the guard's restore point (all of them with
        ``everything``: the run is over), consecutive step rows in one ``log_steps``."""
        limit = math.inf if everything else self.guard.final_before()
        n = 0
        while n < len(self.held) and self.held[n][0] < limit:
            n += 1
        ready, self.held = self.held[:n], self.held[n:]
        rows: list[dict[str, Any]] = []
        for step, method, value in ready:
            if method == "log_steps":
                rows.append(value)
                continue
            if rows:
                self.trackers.log_steps(rows)
                rows = []
            self.trackers.log_epoch(value, step)
        if rows:
            self.trackers.log_steps(rows)

    def check(self) -> None:
        """Read the pending rows' losses, gradient norms and clip flags (one transfer; in a
        data-parallel run one all-reduce: the step loss is the mean over the ranks), run the
        guard on them and keep them to write, up to and including a diverging one.

        Raises:
            Diverged: a row failed the check (the rows after it are dropped).
        """
        if not self.pending:
            return
        pending = self.pending
        losses_t = torch.stack([p[1].float() for p in pending])  # (n,)
        if self.world_size > 1:  # the step loss of the global batch: mean over the ranks (norms agree already)
            losses_t = distributed.all_reduce_sum(losses_t) / self.world_size
        columns = [losses_t]
        flagged = pending[0][3] is not None  # clipping on: every row has its flag
        if flagged:
            columns.append(torch.stack([p[3].float() for p in pending]))
        measured = [i for i, p in enumerate(pending) if p[2] is not None]  # steps with a gradient norm
        sampled = [i for i, p in enumerate(pending) if p[4] is not None]  # steps with update ratios
        width, n = len(columns), len(pending)
        flat = torch.stack(columns, 1).flatten()  # (n * width,)
        tail = [torch.stack([pending[i][2].float() for i in measured]).to(flat.device)] if measured else []
        if sampled:
            tail.append(torch.stack([pending[i][4].to(flat.device) for i in sampled]).flatten())
        everything = torch.cat([flat, *tail]).tolist() if tail else flat.tolist()  # one transfer
        values = [everything[i * width:(i + 1) * width] for i in range(n)]  # (n, 1), (n, 2) with flags
        losses, norms = [v[0] for v in values], [None] * n
        for j, i in enumerate(measured):
            norms[i] = everything[n * width + j]
        rows = [{**p[0], "clipped": int(v[1])} if flagged else p[0] for p, v in zip(pending, values)]
        ratios, at = everything[n * width + len(measured):], len(self.ratio_columns)
        for j, i in enumerate(sampled):
            rows[i] = {**rows[i], **dict(zip(self.ratio_columns, ratios[j * at:(j + 1) * at]))}
        pending.clear()
        bad = self.guard.check([r["step"] for r in rows], losses, norms)
        end = len(rows) if bad is None else bad[0] + 1  # rows after a diverging step are dropped
        kept = [{**row, "loss": v, "grad_norm": n} for row, v, n in zip(rows[:end], losses, norms)]
        self._read(kept)
        self.last_loss = losses[end - 1]
        if bad is not None:
            raise Diverged(rows[bad[0]]["step"], rows[bad[0]]["lr"], bad[1])

    def _read(self, rows: list[dict[str, Any]]) -> None:
        """Rows whose values were read: handed to :attr:`on_read`, then kept to write."""
        if self.on_read is not None:
            self.on_read(rows)
        self.checked.extend(rows)

    def flush(self, reduce: bool = True) -> None:
        """:meth:`check` the pending rows and append every checked row to ``steps.csv``.

        Args:
            reduce: average the losses over the ranks (a collective); False (an error is
                unwinding on this rank alone) writes the rows unchecked with the loss left blank.

        Raises:
            Diverged: a row failed the check (the rows up to it are written).
        """
        try:
            if reduce:
                self.check()
            else:  # this rank's loss is not the step's (the mean over the ranks): left blank
                self._read([{**row, "grad_norm": None if norm is None else norm.item(),
                             **({} if flag is None else {"clipped": int(flag.item())}),
                             **({} if ratios is None else dict(zip(self.ratio_columns, ratios.tolist())))}
                            for row, _, norm, flag, ratios in self.pending])
                self.pending.clear()
        finally:
            if self.checked:
                self._file.write(self.checked)
                if self.trackers:
                    self.held.extend((row["step"], "log_steps", row) for row in self.checked)
                    self.release()
                self.checked.clear()
