"""The LR doctor during training: one warning line as soon as the evidence says the LR is off."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from framework.doctor.signals import interval_steps
from framework.doctor.verdict import diagnose

log = logging.getLogger("framework.doctor")
_KEPT = ("step", "loss", "grad_norm")
_PREFIXES = ("lr", "update_ratio")


class LiveDoctor:
    """Watches the step rows as the trainer reads them (:attr:`StepLog.on_read
    <framework.trainer.steplog.StepLog.on_read>`: host values, no device synchronisation of its
    own) and, at the end of each of the doctor's intervals, runs :func:`~framework.doctor.diagnose`
    on the rows so far; once two judgements in a row say ``too_high`` (or ``too_low``), or one
    says ``diverged``, it logs one warning line with the reason and the suggested lr0, once per
    verdict.

    Args:
        lr0_auto: ``summary.json``'s ``lr0_auto`` record when ``lr0=auto`` chose lr0 (the range
            test's other suggestions are added to a too-high warning); None otherwise.

    Attributes:
        warnings: the lines logged so far.
    """

    def __init__(self, lr0_auto: Optional[dict[str, Any]] = None):
        self.lr0_auto = lr0_auto
        self.total_steps, self.every, self.base_lrs = 0, 1, {}
        self.schedule_file: Optional[str] = None
        self.optimizer: Optional[str] = None
        #: Why lr0 changed during the run (a PBT trial; :func:`framework.doctor.lr0_changes`), or None.
        self.lr0_changed: Optional[str] = None
        self.rows: dict[int, dict[str, Any]] = {}  # by step: a step redone after a rollback replaces its row
        self.warnings: list[str] = []
        self._last: Optional[str] = None  # the previous judgement's verdict
        self._said: set[str] = set()
        self._next = 1

    def start(self, total_steps: int, base_lrs: Optional[dict[str, float]] = None, run_dir: Optional[Path] = None,
              upto: int = 0, schedule_file: Optional[str] = None, optimizer: Optional[str] = None) -> None:
        """Before training a run of ``total_steps`` planned steps (``T``) whose groups have the
        base LRs ``base_lrs`` (name -> LR, in group order: the first step's ratio is judged at
        them, not at the highest LR seen so far, which a warmup keeps low); on a resume, the
        folder's ``steps.csv`` rows before step ``upto`` are the history the doctor judges with;
        ``schedule_file``: the file a ``scheduler=piecewise`` run replays (the advice scales its LRs);
        ``optimizer``: its class name (its family sets the healthy band)."""
        from framework.doctor import read_steps

        self.base_lrs, self.schedule_file, self.optimizer = dict(base_lrs or {}), schedule_file, optimizer
        self.total_steps, self.every = int(total_steps), interval_steps(total_steps)
        self.rows = {}
        if run_dir is not None and upto > 0:
            self.rows = {int(r["step"]): r for r in read_steps(run_dir) if int(r["step"]) < upto}
        self._next = (upto // self.every + 1) * self.every

    def observe(self, rows: list[dict[str, Any]]) -> None:
        """Rows just read (``step``, ``lr``..., ``loss``, ``update_ratio``...); judges at each
        interval's end."""
        for row in rows:  # only what the verdict reads (a long run keeps T of these)
            self.rows[int(row["step"])] = {k: v for k, v in row.items() if k in _KEPT or k.startswith(_PREFIXES)}
        if not rows:
            return
        done = int(rows[-1]["step"]) + 1
        if done < self._next:
            return
        self._next = (done // self.every + 1) * self.every
        result = diagnose([self.rows[k] for k in sorted(self.rows)], self.total_steps, base_lrs=self.base_lrs or None,
                          schedule_file=self.schedule_file, optimizer=self.optimizer,
                          lr0_changed=self.lr0_changed)
        verdict = result["verdict"]
        strong = verdict == "diverged" or (verdict in ("too_high", "too_low") and verdict == self._last)
        self._last = verdict
        if strong and verdict not in self._said:
            self._said.add(verdict)
            line = f"LR doctor at step {done}: {result['reason']}" + self._alternatives(verdict)
            self.warnings.append(line)
            log.warning("%s", line)

    def forget_from(self, step: int) -> None:
        """A rollback to step ``step``: the rows from it on are undone (they come again)."""
        self.rows = {k: r for k, r in self.rows.items() if k < step}
        self._next = (step // self.every + 1) * self.every

    def _alternatives(self, verdict: str) -> str:
        """After lr0=auto, the range test's other suggestions for a too-high verdict."""
        if verdict not in ("too_high", "diverged") or not self.lr0_auto:
            return ""
        return alternatives_line(self.lr0_auto)


def alternatives_line(lr0_auto: dict[str, Any]) -> str:
    """``"; lr0=auto chose <name> <lr>: the range test also suggested <name> <lr>, ..."``, or ""."""
    chosen = lr0_auto.get("chosen")
    others = [f"{name} {lr:.3g}" for name, lr in (lr0_auto.get("suggestions") or {}).items()
              if name != chosen and isinstance(lr, (int, float)) and lr < (lr0_auto.get("lr0") or float("inf"))]
    if not others:
        return ""
    return f"; lr0=auto chose {chosen} {lr0_auto.get('lr0'):.3g}: the range test also suggested {', '.join(others)}"
