"""Hydra callback: a multirun logged to MLflow gets one parent run that holds its jobs."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class TrackerSweepCallback(Callback):
    """When a multirun starts with ``logger.mlflow`` configured, create the sweep's parent run
    (named after the sweep folder) and record it in ``<sweep folder>/mlflow_parent.json``; every
    job's run is then its child (``mlflow.parentRunId``). When the multirun ends the parent gets
    the sweep report (``report.md``, ``report.csv``, its plots), the tags ``jobs`` and
    ``jobs_not_completed``, and ends ``FINISHED``, or ``FAILED`` when a job did not complete (as
    the multirun's exit status 1 says; a job refused before training has no run of its own).
    Registered in ``conf/train.yaml`` (``hydra.callbacks.trackers``, before the report: Hydra calls
    the end hooks in reverse order, so the report exists when this one runs). A
    store that cannot be reached is a warning here: each job then says so in one line.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Create the parent run (MLflow only)."""
        tracker = self._mlflow(config)
        if tracker is None:
            return
        from framework.tracking.mlflow import PARENT_FILE, experiment

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            tracker.check()
            client = tracker.connect()
            experiment_id = experiment(client, tracker.experiment_name, tracker.artifact_root())
            from framework.tracking import run_name

            run = client.create_run(experiment_id, run_name=run_name(sweep_dir),
                                    tags={"mlflow.source.name": "lrframe", "sweep_dir": str(sweep_dir)})
        except Exception as exc:
            log.warning("logger.mlflow: no parent run for the sweep (%s)", exc)
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps(
            {"run_id": run.info.run_id, "tracking_uri": tracker.tracking_uri, "experiment_id": experiment_id}) + "\n")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Log the sweep report to the parent run and end it."""
        tracker = self._mlflow(config)
        if tracker is None:
            return
        from framework.tracking.mlflow import PARENT_FILE, parent_run

        sweep_dir = Path(str(config.hydra.sweep.dir))
        run_id = parent_run(sweep_dir, tracker.tracking_uri)
        if run_id is None:
            return
        try:
            client = tracker.connect()
            for path in sorted(sweep_dir.glob("report*")) + sorted(sweep_dir.glob("*.png")):
                if path.is_file() and path.name != PARENT_FILE:
                    client.log_artifact(run_id, str(path))
            from framework import report

            jobs, bad = report.LAST_SWEEP if report.LAST_SWEEP else (None, 0)
            if jobs is not None:
                client.set_tag(run_id, "jobs", str(jobs))
                client.set_tag(run_id, "jobs_not_completed", str(bad))
            client.set_terminated(run_id, "FAILED" if bad else "FINISHED")  # as the multirun's exit status
        except Exception as exc:
            log.warning("logger.mlflow: the sweep's parent run was not closed (%s)", exc)

    @staticmethod
    def _mlflow(config: Any) -> Any:
        """The MLflow tracker of the sweep's config, or None when it has none."""
        from framework import distributed

        node = (config.get("logger") or {}).get("mlflow")
        if node is None or not distributed.is_main():
            return None
        from framework import registry

        try:
            return registry.instantiate(node, "logger.mlflow")
        except Exception as exc:  # each job reports a bad config in one line
            log.warning("logger.mlflow: %s", exc)
            return None
