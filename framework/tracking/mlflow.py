"""MLflow: params, per-step metrics, artifacts and tags of a run in a tracking store (a local
SQLite database by default, any tracking URI for a team server); sweep jobs under one parent run."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from framework.tracking.base import EPOCH_SKIP, INDEX_COLUMNS, RunInfo, Tracker, best_metrics, numbers, require

#: The sweep folder's record of its MLflow parent run (written when a multirun starts).
PARENT_FILE = "mlflow_parent.json"
#: MLflow's run status for each ``summary.json`` status.
STATUS = {"completed": "FINISHED", "stopped": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
#: Files of the run folder logged as artifacts when the run ends (those that exist).
ARTIFACTS = ("summary.json", "epochs.csv", "steps.csv", "lr.png", "lr_plan.csv", ".hydra/config.yaml",
             ".hydra/overrides.yaml")


class MLflowTracker(Tracker):
    """Log a run to MLflow (https://mlflow.org/docs/latest/tracking.html).

    The run gets: the flattened config as params (values over MLflow's 6,000-character limit
    cut), every ``steps.csv`` column as a metric at step ``k`` and every ``epochs.csv`` metric
    at the epoch's last ``k``, tags (``mlflow.source.git.commit``, ``git_dirty``,
    ``lrframe_version``, ``run_dir``, ``overrides``), and when it ends its status
    (``FINISHED``, ``KILLED`` for a resumable stop, ``FAILED``), ``best/<metric>`` values, and the
    run folder's ``summary.json``, CSVs, ``lr.png`` and Hydra config as artifacts. A sweep's jobs
    are children of one parent run (``mlflow.parentRunId``; :class:`~framework.tracking.sweep.TrackerSweepCallback`).
    A resumed run continues its MLflow run; steps it holds already (logged after the checkpoint,
    before a crash, and trained again) are not logged twice: the first value stays (the same
    value on the CPU, where training is deterministic).

    Args:
        tracking_uri: where the store is: ``sqlite:///outputs/mlflow.db`` (a relative path is
            relative to the working directory; see it with ``mlflow ui --backend-store-uri
            sqlite:///outputs/mlflow.db``), ``http://host:5000`` (a tracking server), ...
        experiment_name: the MLflow experiment (created when missing).
        artifact_location: where a new experiment keeps its artifacts; None = ``mlartifacts/``
            beside a local SQLite database, the server's default otherwise.
        run_name: None = the run folder relative to ``outputs/``.
        tags: extra tags for every run.
        log_checkpoints: also upload ``checkpoints/best.pt`` (may be large).
    """

    package, extra = "mlflow", "mlflow"

    def __init__(self, tracking_uri: str = "sqlite:///outputs/mlflow.db", experiment_name: str = "lrframe",
                 artifact_location: Optional[str] = None, run_name: Optional[str] = None,
                 tags: Optional[dict[str, Any]] = None, log_checkpoints: bool = False):
        self.tracking_uri, self.experiment_name = str(tracking_uri), str(experiment_name)
        self.artifact_location, self.run_name = artifact_location, run_name
        self.tags, self.log_checkpoints = dict(tags or {}), log_checkpoints
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.run_dir: Optional[Path] = None
        self.logged_through = -1  # on resume, the last step the run already holds (not logged again)

    # -- before training --------------------------------------------------------------------------

    def check(self) -> None:
        """The package is installed and the store can be reached.

        Raises:
            ConfigError: mlflow missing; a SQLite database whose folder cannot be made; a server
                that does not answer (``logger.mlflow.tracking_uri=<uri>: ...``).
        """
        from framework.errors import ConfigError

        require("mlflow", "mlflow", self.extra)
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"logger.mlflow.tracking_uri={self.tracking_uri}: cannot create {db.parent} "
                                  f"({exc.strerror}); pick a writable folder") from None
        elif self.tracking_uri.startswith(("http://", "https://")):
            try:
                with _quick_http():
                    self.connect().search_experiments(max_results=1)
            except Exception as exc:
                raise ConfigError(f"logger.mlflow.tracking_uri={self.tracking_uri}: the tracking server does not "
                                  f"answer ({why(exc)}); start it, or use the local store "
                                  "logger.mlflow.tracking_uri=sqlite:///outputs/mlflow.db") from None

    # -- the run ----------------------------------------------------------------------------------

    def start(self, info: RunInfo) -> dict[str, Any]:
        """Create (or, on resume, reopen) the MLflow run; log params and tags."""
        from mlflow.entities import Param, RunTag

        self.run_dir = info.run_dir
        client = self.connect()
        if info.earlier.get("run_id") and info.earlier.get("tracking_uri") == self.tracking_uri:
            self.run_id = info.earlier["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            # steps logged after the checkpoint, before a crash, are trained again: log each step once
            self.logged_through = max((m.step for m in client.get_metric_history(self.run_id, "lr")), default=-1)
            return self._facts()
        experiment_id = experiment(client, self.experiment_name, self.artifact_root())
        tags = {"mlflow.source.name": "lrframe", "run_dir": str(info.run_dir),
                "overrides": " ".join(info.facts.get("overrides") or []) or "(none)",
                **{k: str(v) for k, v in self.tags.items()}}
        for key, name in (("git_commit", "mlflow.source.git.commit"), ("git_dirty", "git_dirty"),
                          ("lrframe_version", "lrframe_version")):
            if info.facts.get(key) is not None:
                tags[name] = str(info.facts[key])
        parent = parent_run(info.sweep_dir, self.tracking_uri)
        if parent:
            tags["mlflow.parentRunId"] = parent
            tags["job"] = str(info.job)
        run = client.create_run(experiment_id, tags=tags, run_name=self.run_name or info.name)
        self.run_id = run.info.run_id
        params = [Param(k[:250], param_text(v)) for k, v in info.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i:i + 100])
        client.log_batch(self.run_id, tags=[RunTag("objective_name", str(info.facts.get("objective_name")))])
        return self._facts()

    def log_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every numeric column of each row at step ``k`` (MLflow stores float64: the CSV's values)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(k, v, now, int(row["step"])) for row in rows if row["step"] > self.logged_through
                   for k, v in numbers(row, INDEX_COLUMNS).items()])

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """The epoch's metrics (``train/loss``, ``val/...``, ``time_s``) at step ``step``."""
        from mlflow.entities import Metric

        if step <= self.logged_through:  # logged before a crash, trained again after the resume
            return
        now = int(time.time() * 1000)
        self._log([Metric(k, v, now, step) for k, v in numbers(metrics, EPOCH_SKIP).items()])

    def finish(self, summary: dict[str, Any]) -> None:
        """``best/<metric>``, the status tags, the artifacts, then the run's end status."""
        from mlflow.entities import Metric, RunTag

        client, now = self.client, int(time.time() * 1000)
        steps = int(summary.get("steps") or 0)
        self._log([Metric(k, v, now, steps) for k, v in best_metrics(summary).items()])
        client.log_batch(self.run_id, tags=[RunTag("status", str(summary.get("status")))])
        files = [self.run_dir / name for name in ARTIFACTS]
        if self.log_checkpoints:
            files.append(self.run_dir / "checkpoints" / "best.pt")
        for path in files:
            if path.is_file():
                client.log_artifact(self.run_id, str(path), str(Path(path.relative_to(self.run_dir)).parent)
                                    if path.parent != self.run_dir else None)
        client.set_terminated(self.run_id, STATUS.get(summary.get("status"), "FAILED"))

    # -- helpers ----------------------------------------------------------------------------------

    def connect(self) -> Any:
        """The ``MlflowClient`` of ``tracking_uri`` (made once)."""
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri)
        return self.client

    def _log(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def artifact_root(self) -> Optional[str]:
        """Where a new experiment keeps artifacts: ``artifact_location``, else ``mlartifacts/``
        beside a local SQLite database (a file URI), else None (the server's default)."""
        if self.artifact_location is not None:
            return str(self.artifact_location)
        db = sqlite_path(self.tracking_uri)
        return (db.parent.resolve() / "mlartifacts").as_uri() if db is not None else None

    def _facts(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment_name": self.experiment_name, "run_id": self.run_id}


def why(exc: BaseException) -> str:
    """Why a request failed, short: the operating system's reason (``[Errno 111] Connection
    refused``) when the message holds one, else its first line cut at a word (120 characters)."""
    import re

    from framework.errors import first_line

    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))
    if found:
        return found.group(0).strip()
    text = first_line(exc, 400)
    return text if len(text) <= 120 else text[:120].rsplit(" ", 1)[0] + " ..."


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///<path>`` URI (relative to the working directory, or
    absolute with four slashes), None for another kind of store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def experiment(client: Any, name: str, artifact_location: Optional[str]) -> str:
    """The id of experiment ``name``, created when missing (a sweep's jobs may race to create it:
    the loser reads the winner's)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def param_text(value: Any) -> str:
    """A config value as an MLflow param: YAML-like text (``null``, ``true``, ``[0.9, 0.999]``),
    cut to MLflow's 6,000 characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def parent_run(sweep_dir: Optional[Path], tracking_uri: str) -> Optional[str]:
    """The sweep's MLflow parent run id (``<sweep_dir>/mlflow_parent.json``) when it lives in the
    same store, else None."""
    from framework.loggers import read_json

    if sweep_dir is None:
        return None
    record = read_json(Path(sweep_dir) / PARENT_FILE)
    return record.get("run_id") if record.get("tracking_uri") == tracking_uri else None


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's HTTP client without its retries and with a 5 s timeout (a reachability probe)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
