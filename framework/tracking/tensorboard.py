"""TensorBoard: event files in the run folder (``tensorboard --logdir outputs/``): every step's
applied LR, momentum, loss and gradient norm, the epoch metrics, the LR plan as a figure, and
the run's hyperparameters for the HParams tab."""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from framework.tracking.base import EPOCH_SKIP, INDEX_COLUMNS, RunInfo, Tracker, best_metrics, numbers, require


#: The HParams tab's session status for each ``summary.json`` status (others: unknown).
SESSION_STATUS = {"completed": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "diverged": "STATUS_FAILURE"}


class TensorBoardTracker(Tracker):
    """Write a run's TensorBoard events into its run folder, with TensorBoard's own event writer
    (``tensorboard.summary.writer.EventFileWriter``, the one ``torch.utils.tensorboard`` wraps;
    the trackers' process then need not import torch).

    Scalars are written in TensorBoard's own scalar format (``simple_value``, as ``add_scalar``
    writes it: float32, the only one its default loader shows; MLflow, W&B and the CSVs keep the
    float64 values): each is the ``steps.csv`` value rounded to float32. The values of one step
    go in one event (one ``Summary`` with a value per tag, read back by TensorBoard as separate
    scalars): 0.06 ms of the trackers' CPU per ``steps.csv`` row of 7 values, against
    0.23 ms with an event per value (measured on 2 CPU cores). Tag = the CSV column (``lr``,
    ``lr/<group>``, ``momentum``, ``loss``, ``grad_norm``; epoch metrics ``train/loss``,
    ``val/loss``, ``val/<metric>``, ``time_s`` at the epoch's last step ``k``). At the start: the
    planned LR of every group (image ``lr_plan``, a PNG). At the end: the hyperparameters (the
    flattened config; lists and null as text) with ``best/<metric>`` as the HParams tab's
    metrics (TensorBoard's ``hparams_config_pb`` and ``hparams_pb``, and the session's end status),
    so ``tensorboard --logdir <sweep folder>`` compares the jobs. A resumed run opens a new event
    file that starts with a ``SessionLog.START`` event at its first step (what
    ``SummaryWriter(purge_step=...)`` writes), so steps logged after the checkpoint and before
    the stop are replaced, not doubled.

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
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.info = info
        self.writer = EventFileWriter(str(info.run_dir), flush_secs=self.flush_secs)
        if info.start_step:  # TensorBoard drops the earlier files' records from this step on
            self.writer.add_event(Event(step=info.start_step, wall_time=time.time(),
                                        session_log=SessionLog(status=SessionLog.START)))
        if info.plan is not None and info.start_step == 0:
            from framework.loggers import pyplot
            from framework.preview import figure

            fig = figure([info.plan], title=info.plan.label)
            self._summary(image_summary("lr_plan", fig), 0)
            pyplot().close(fig)
        return {"logdir": str(info.run_dir.resolve())}

    def log_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every numeric column of each row at step ``k``."""
        for row in rows:
            self._scalars(numbers(row, INDEX_COLUMNS), int(row["step"]))

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """The epoch's metrics at step ``step`` (the epoch's last ``k``)."""
        self._scalars(numbers(metrics, EPOCH_SKIP), step)

    def finish(self, summary: dict[str, Any]) -> None:
        """The HParams summaries (config + ``best/<metric>``, the end status), then close the file."""
        try:
            steps = int(summary.get("steps") or 0)
            best = best_metrics(summary)
            if self.hparams and self.info is not None:
                values = {k: hparam_value(v) for k, v in self.info.params.items()}
                values["status"] = str(summary.get("status"))
                for part in hparams_summaries(values, list(best or {"best/none": 0.0}), self.info.name,
                                              SESSION_STATUS.get(summary.get("status"), "STATUS_UNKNOWN")):
                    self._summary(part, steps)
            self._scalars(best, steps)
        finally:
            self.writer.close()

    def _scalars(self, values: dict[str, float], step: int) -> None:
        """One event at ``step`` holding every ``tag: value`` (float32 ``simple_value`` s)."""
        if values:
            from tensorboard.compat.proto.summary_pb2 import Summary

            self._summary(Summary(value=[Summary.Value(tag=tag, simple_value=value)
                                         for tag, value in values.items()]), step)

    def _summary(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.writer.add_event(Event(summary=summary, step=step, wall_time=time.time()))


def image_summary(tag: str, fig: Any) -> Any:
    """A ``Summary`` holding a matplotlib figure as a PNG image (the Images tab).

    Args:
        tag: the image's tag; fig: a matplotlib ``Figure`` (saved at its own size and dpi; the
            caller closes it).
    """
    import io
    import struct

    from tensorboard.compat.proto.summary_pb2 import Summary

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
    return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=4,
                                                                    encoded_image_string=png))])


def hparams_summaries(values: dict[str, Any], metrics: list[str], trial: str, status: str) -> list[Any]:
    """The HParams plugin's three summaries, as ``torch.utils.tensorboard``'s ``add_hparams``
    writes them (TensorBoard's ``hparams_config_pb`` and ``hparams_pb``, and a session end).

    Args:
        values: hyperparameter name -> bool, int, float or text (:func:`hparam_value`).
        metrics: the tags of the HParams tab's metrics (``best/<metric>``, logged as scalars).
        trial: the session's name (the run's); status: an ``api_pb2.Status`` name
            (``STATUS_SUCCESS``, ``STATUS_FAILURE``, ``STATUS_UNKNOWN``).

    Returns:
        ``[experiment, session start, session end]`` ``Summary`` protos.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    end = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(
        status=api_pb2.Status.Value(status), end_time_secs=time.time()))
    return [hp.hparams_config_pb(hparams=[hp.HParam(k) for k in values], metrics=[hp.Metric(m) for m in metrics]),
            hp.hparams_pb(values, trial_id=trial),
            Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(end),
                                         tensor=metadata.NULL_TENSOR)])]


def hparam_value(value: Any) -> Any:
    """A config leaf as TensorBoard's HParams plugin takes it: bool, int, float or text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)
