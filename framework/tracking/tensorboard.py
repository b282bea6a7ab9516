"""TensorBoard: event files in the run folder (``tensorboard --logdir outputs/``): every step's
applied LR, momentum, loss and gradient norm, the epoch metrics, the LR plan as a figure, and
the run's hyperparameters for the HParams tab."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from framework.tracking.base import EPOCH_SKIP, INDEX_COLUMNS, RunInfo, Tracker, best_metrics, numbers, require


class TensorBoardTracker(Tracker):
    """Write a run's TensorBoard events into its run folder (``torch.utils.tensorboard``).

    Scalars are written in TensorBoard's own scalar format (``simple_value``, as ``add_scalar``
    writes it: float32, the only one its default loader shows; MLflow, W&B and the CSVs keep the
    float64 values): each is the ``steps.csv`` value rounded to float32. The values of one step
    go in one event (one ``Summary`` with a value per tag, read back by TensorBoard as separate
    scalars): 0.06 ms of the trackers' CPU per ``steps.csv`` row of 7 values, against
    0.23 ms with an event per value (measured on 2 CPU cores). Tag = the CSV column (``lr``, ``lr/<group>``, ``momentum``, ``loss``, ``grad_norm``; epoch
    metrics ``train/loss``, ``val/loss``, ``val/<metric>``, ``time_s`` at the epoch's last
    step ``k``). At the start: the planned LR of every group (figure ``lr_plan``). At the end:
    the hyperparameters (the flattened config; lists and null as text) with ``best/<metric>``
    as the HParams tab's metrics, so ``tensorboard --logdir <sweep folder>`` compares the jobs.
    A resumed run opens a new event file with ``purge_step`` = its first step, so steps logged
    after the checkpoint and before the stop are replaced, not doubled.

    Args:
        flush_secs: (s) how often the writer flushes its events to disk.
        hparams: write the HParams summary when the run ends.
    """

    package, extra = "tensorboard", "tensorboard"

    def __init__(self, flush_secs: int = 30, hparams: bool = True):
        self.flush_secs, self.hparams = int(flush_secs), hparams
        self.writer: Any = None
        self.info: Optional[RunInfo] = None

    def check(self) -> None:
        """Raises ConfigError when the ``tensorboard`` package is missing."""
        require("tensorboard", "tensorboard", self.extra)

    def start(self, info: RunInfo) -> dict[str, Any]:
        """Open the event file in the run folder and draw the LR plan."""
        from torch.utils.tensorboard import SummaryWriter

        self.info = info
        self.writer = SummaryWriter(str(info.run_dir), flush_secs=self.flush_secs,
                                    purge_step=info.start_step if info.start_step else None)
        if info.plan is not None and info.start_step == 0:
            from framework.preview import figure

            self.writer.add_figure("lr_plan", figure([info.plan], title=info.plan.label), global_step=0)
        return {"logdir": str(info.run_dir.resolve())}

    def log_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every numeric column of each row at step ``k``."""
        for row in rows:
            self._scalars(numbers(row, INDEX_COLUMNS), int(row["step"]))

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """The epoch's metrics at step ``step`` (the epoch's last ``k``)."""
        self._scalars(numbers(metrics, EPOCH_SKIP), step)

    def finish(self, summary: dict[str, Any]) -> None:
        """The HParams summary (config + ``best/<metric>``), then close the file."""
        try:
            if self.hparams and self.info is not None:
                from torch.utils.tensorboard.summary import hparams

                best = best_metrics(summary)
                values = {k: hparam_value(v) for k, v in self.info.params.items()}
                values["status"] = str(summary.get("status"))
                for part in hparams(values, best or {"best/none": 0.0}):
                    self.writer.file_writer.add_summary(part)
                self._scalars(best, int(summary.get("steps") or 0))
        finally:
            self.writer.close()

    def _scalars(self, values: dict[str, float], step: int) -> None:
        """One event at ``step`` holding every ``tag: value`` (float32 ``simple_value`` s)."""
        if values:
            from tensorboard.compat.proto.summary_pb2 import Summary

            self.writer.file_writer.add_summary(
                Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]), step)


def hparam_value(value: Any) -> Any:
    """A config leaf as TensorBoard's HParams plugin takes it: bool, int, float or text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)
