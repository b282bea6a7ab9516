"""The buffered step log: ``steps.csv`` rows whose loss and gradient norm stay on the device
until a flush reads them all at once and the divergence guard checks them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

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

    A row is added with its step loss and total gradient norm as 0-dim device tensors; a
    :meth:`check` reads every pending one (one transfer), averages the losses over the ranks,
    runs the divergence guard and moves the rows up to a diverging one to the rows to write; a
    :meth:`flush` also appends them to ``steps.csv`` (one file write).

    Args:
        path: ``steps.csv`` of the run folder.
        columns: its header (``step``, ``epoch``, ``lr``, ``lr/<group>``, ``momentum``, ``d``,
            ``loss``, ``grad_norm``).
        guard: the divergence guard that judges each step's loss and gradient norm.
        world_size: processes of the run (losses are averaged over them).
        write: this process writes files (rank 0).

    Attributes:
        last_loss: loss of the last checked step (mean cross-entropy, nats), None before any.
    """

    def __init__(self, path: Path, columns: Sequence[str], guard: DivergenceGuard, world_size: int = 1,
                 write: bool = True):
        self.path, self.columns, self.guard = Path(path), list(columns), guard
        self.world_size, self.write = world_size, write
        self.pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []  # rows not read yet
        self.checked: list[dict[str, Any]] = []  # rows read and checked, not written yet
        self.last_loss: Optional[float] = None
        self._file: CSVLog | NullLog = NullLog()

    def open(self, append: bool) -> None:
        """Start the file (header) at the start of ``fit``; ``append`` keeps its rows (a resume)."""
        self.clear()
        self._file = csv_log(self.path, self.columns, append, self.write)

    def add(self, row: dict[str, Any], loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Buffer an applied step's row (``step``, ``epoch``, LRs, ...) with its loss and
        gradient norm, 0-dim tensors on the device (not read now)."""
        self.pending.append((row, loss, norm))

    def clear(self) -> None:
        """Drop every row not written yet (a rollback: they belong to steps that are redone)."""
        self.pending.clear()
        self.checked.clear()

    def check(self) -> None:
        """Read the pending rows' losses and gradient norms (one transfer; in a data-parallel run
        one all-reduce: the step loss is the mean over the ranks), run the guard on them and
        keep them to write, up to and including a diverging one.

        Raises:
            Diverged: a row failed the check (the rows after it are dropped).
        """
        if not self.pending:
            return
        pending = self.pending
        losses_t = torch.stack([p[1].float() for p in pending])  # (n,)
        if self.world_size > 1:  # the step loss of the global batch: mean over the ranks (norms agree already)
            losses_t = distributed.all_reduce_sum(losses_t) / self.world_size
        values = torch.stack((losses_t, torch.stack([p[2].float() for p in pending])), 1).tolist()  # (n, 2)
        losses, norms = [v[0] for v in values], [v[1] for v in values]
        rows = [p[0] for p in pending]
        pending.clear()
        bad = self.guard.check([r["step"] for r in rows], losses, norms)
        end = len(rows) if bad is None else bad[0] + 1  # rows after a diverging step are dropped
        self.checked.extend({**row, "loss": v, "grad_norm": n} for row, v, n in zip(rows[:end], losses, norms))
        self.last_loss = losses[end - 1]
        if bad is not None:
            raise Diverged(rows[bad[0]]["step"], rows[bad[0]]["lr"], bad[1])

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
                self.checked.extend({**row, "grad_norm": norm.item()} for row, _, norm in self.pending)
                self.pending.clear()
        finally:
            if self.checked:
                self._file.write(self.checked)
                self.checked.clear()
