"""Trackers (``logger=``): what TensorBoard, MLflow and W&B record is read back from their own
files (the event file, the SQLite store, the offline run file) and compared with ``steps.csv``,
``epochs.csv`` and the config; a sweep's jobs sit under one MLflow parent run; a tracker that is
missing or unreachable is one line before training."""
from __future__ import annotations

import glob
import json
import sqlite3
import struct
import sys
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD_S, ROOT, TINY, compose_cfg, lines, read_csv, run_cli_in_process, train_in_process

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

#: A run with two param groups (the head at 10x), a warmup that moves the momentum, two epochs.
OVERRIDES = [*TINY, "epochs=2", "optimizer.head_lr_mult=10", "warmup_epochs=1", "warmup_momentum=0.8",
             "trainer.log_every_n_steps=3"]


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory) -> Path:
    """One MLflow SQLite store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_db) -> Path:
    """The folder of one tiny run logged to TensorBoard, MLflow and W&B (offline)."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    train_in_process(run_dir, *OVERRIDES, "logger=[csv,tensorboard,mlflow,wandb]",
                     f"logger.mlflow.tracking_uri=sqlite:///{mlflow_db}", "logger.wandb.mode=offline")
    return run_dir


def csv_values(path: Path, skip=("step", "epoch")) -> dict[str, list[tuple[int, float]]]:
    """``{column: [(step, value), ...]}`` of steps.csv in row order (the values as the CSV holds them)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in read_csv(path):
        for key, value in row.items():
            if key not in skip and value != "":
                out.setdefault(key, []).append((int(row["step"]), float(value)))
    return out


def f32(records: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The records with each value rounded to float32, as TensorBoard stores scalars."""
    import numpy as np

    return [(k, float(np.float32(v))) for k, v in records]


def tensorboard_events(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, object]]:
    """Every scalar record of the event files ``{tag: [(step, value), ...]}`` (in file order; a
    file opened with ``purge_step`` drops the earlier records from that step on, as TensorBoard
    does) and the other summaries by tag."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    other: dict[str, object] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {tag: [(k, v) for k, v in seen if k < event.step] for tag, seen in scalars.items()}
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(value.tag, []).append(
                        (event.step, tensor_util.make_ndarray(value.tensor).item()))
                else:
                    other[value.tag] = value
    return scalars, other


def mlflow_run(db: Path, run_id: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str], dict[str, str], str]:
    """Every metric record ``{key: [(step, value), ...]}`` (by step, then time), params, tags and
    status of a run, read from the SQLite file."""
    con = sqlite3.connect(db)
    try:
        metrics: dict[str, list[tuple[int, float]]] = {}
        for key, value, step in con.execute("select key, value, step from metrics where run_uuid = ? "
                                            "order by step, timestamp", (run_id,)):
            metrics.setdefault(key, []).append((step, value))
        params = dict(con.execute("select key, value from params where run_uuid = ?", (run_id,)).fetchall())
        tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
        (status,) = con.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()
    finally:
        con.close()
    return metrics, params, tags, status


@pytest.mark.parametrize("name", ["csv", "tensorboard", "mlflow", "wandb"])
def test_every_logger_file_composes_validates_and_builds_its_tracker(name):
    from framework import tracking
    from framework.config import validate
    from framework.registry import CONF_DIR

    assert sorted(p.stem for p in (CONF_DIR / "logger").glob("*.yaml")) == ["csv", "mlflow", "tensorboard", "wandb"]
    built = tracking.configured(validate(compose_cfg(*TINY, f"logger=[csv,{name}]")))
    assert list(built) == ([] if name == "csv" else [name])
    for tracker in built.values():
        assert isinstance(tracker, tracking.Tracker) and tracker.package == name
        tracker.check()  # installed (the dev extra), the local store reachable


def test_tensorboard_event_file_holds_the_values_of_steps_csv(tracked):
    steps = csv_values(tracked / "steps.csv")
    assert {"lr", "lr/head", "momentum", "loss", "grad_norm"} <= set(steps)
    assert len({v for _, v in steps["momentum"]}) > 1  # the warmup moves it
    assert steps["lr/head"][-1][1] == pytest.approx(10 * steps["lr"][-1][1], rel=1e-12)
    scalars, other = tensorboard_events(tracked)
    for column, values in steps.items():
        assert scalars[column] == f32(values), column  # every record once: TensorBoard's scalars are float32
    epochs = read_csv(tracked / "epochs.csv")
    for key in ("train/loss", "val/loss", "val/acc"):  # at each epoch's last k (4 steps an epoch)
        assert scalars[key] == f32([(3, float(epochs[0][key])), (7, float(epochs[1][key]))]), key
    from tensorboard.util import tensor_util

    image = other["lr_plan"]  # the planned LR as a PNG of the figure's size (8 x 4 in at 100 dpi), as the
    width, height, png = tensor_util.make_ndarray(image.tensor)  # Images tab reads it: [width, height, PNG]
    assert image.metadata.plugin_data.plugin_name == "images" and (width, height) == (b"800", b"400")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (800, 400)
    summary = json.loads((tracked / "summary.json").read_text())
    assert scalars[f"best/{summary['objective_name']}"] == f32([(summary["steps"], summary["objective"])])


def test_tensorboard_hparams_hold_the_config(tracked):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    _, other = tensorboard_events(tracked)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        other["_hparams_/session_start_info"].metadata.plugin_data.content).session_start_info
    config = json.loads((tracked / "summary.json").read_text())
    assert start.hparams["lr0"].number_value == config["lr0"] == 0.01
    assert start.hparams["optimizer.head_lr_mult"].number_value == 10
    assert start.hparams["scheduler._target_"].string_value.endswith("Cosine")
    assert start.hparams["status"].string_value == "completed"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        other["_hparams_/experiment"].metadata.plugin_data.content).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"best/train/loss", "best/val/loss", "best/val/acc",
                                                             "best/val/acc_top5", "best/time_s"}
    assert {h.name for h in experiment.hparam_infos} == set(start.hparams)
    end = plugin_data_pb2.HParamsPluginData.FromString(
        other["_hparams_/session_end_info"].metadata.plugin_data.content).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS  # the run completed


def test_mlflow_store_holds_the_values_params_and_tags_of_the_run(tracked, mlflow_db):
    summary = json.loads((tracked / "summary.json").read_text())
    record = summary["trackers"]["mlflow"]
    assert record["tracking_uri"] == f"sqlite:///{mlflow_db}"
    metrics, params, tags, status = mlflow_run(mlflow_db, record["run_id"])
    steps = csv_values(tracked / "steps.csv")
    for column, values in steps.items():
        assert metrics[column] == values, column  # every record once
    epochs = read_csv(tracked / "epochs.csv")
    assert metrics["val/acc"] == [(3, float(epochs[0]["val/acc"])), (7, float(epochs[1]["val/acc"]))]
    assert status == "FINISHED" and tags["status"] == "completed"
    assert params["lr0"] == "0.01" and params["optimizer.head_lr_mult"] == "10" and params["epochs"] == "2"
    assert params["trainer.gradient_clip_val"] == "null"
    assert tags["mlflow.source.git.commit"] == summary["git_commit"]
    assert tags["run_dir"] == str(tracked)
    assert artifact_names(mlflow_db, record["run_id"]) == ["epochs.csv", "lr.png", "steps.csv", "summary.json"]


def artifact_names(db: Path, run_id: str) -> list[str]:
    """The files of a run's artifacts (beside the store: ``mlartifacts/<experiment>/<run>/artifacts``)."""
    return sorted(str(p.relative_to(next(p for p in p.parents if p.name == "artifacts")))
                  for p in (db.parent / "mlartifacts").rglob("*") if p.is_file() and run_id in str(p))


def wandb_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` of every history record in a W&B offline run file (the LevelDB
    log format: 7-byte file header, 32 KiB blocks of records with a 7-byte header each)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, block, buf = Path(path).read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    out: dict[str, list[tuple[int, float]]] = {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for key, value in items.items():
                    if not key.startswith("_"):
                        out.setdefault(key, []).append((items["_step"], value))
    return out


def test_wandb_offline_run_holds_the_values_of_steps_csv(tracked):
    history = wandb_history(tracked)
    for column, values in csv_values(tracked / "steps.csv").items():
        assert history[column] == values, column
    assert json.loads((tracked / "summary.json").read_text())["trackers"]["wandb"]["mode"] == "offline"


def test_wandb_watches_the_training_process_not_its_own(tmp_path, monkeypatch):
    import os

    import wandb

    from framework.tracking import RunInfo
    from framework.tracking.wandb import WandbTracker

    seen = {}

    def init(**kwargs):
        seen.update(kwargs)
        raise InterruptedError("seen")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_CONSOLE", raising=False)
    training_pid = os.getpid() + 1  # not this process's: the tracker runs in another than the training
    with pytest.raises(InterruptedError):
        WandbTracker().start(RunInfo(run_dir=tmp_path, name="run", config={}, params={}, facts={}, pid=training_pid))
    assert seen["settings"].x_stats_pid == training_pid and seen["settings"].console == "off"


def test_trackers_do_not_change_what_is_trained(tracked, tmp_path):
    train_in_process(tmp_path / "plain", *OVERRIDES)
    assert (tmp_path / "plain" / "steps.csv").read_bytes() == (tracked / "steps.csv").read_bytes()
    strip = [{k: v for k, v in row.items() if k != "time_s"} for row in read_csv(tracked / "epochs.csv")]
    assert strip == [{k: v for k, v in row.items() if k != "time_s"}
                     for row in read_csv(tmp_path / "plain" / "epochs.csv")]


def test_a_sweep_of_two_jobs_sits_under_one_mlflow_parent(tmp_path, mlflow_db, capfd):
    sweep = tmp_path / "sweep"
    code = run_cli_in_process(["-m", *TINY, "epochs=1", "lr0=0.01,0.02", "logger=mlflow",
                               f"logger.mlflow.tracking_uri=sqlite:///{mlflow_db}", f"hydra.sweep.dir={sweep}"], None)
    assert code == 0, capfd.readouterr().err[-2000:]
    parent = json.loads((sweep / "mlflow_parent.json").read_text())["run_id"]
    jobs = [json.loads((sweep / str(j) / "summary.json").read_text())["trackers"]["mlflow"]["run_id"] for j in (0, 1)]
    con = sqlite3.connect(mlflow_db)
    children = {r for (r,) in con.execute("select run_uuid from tags where key = 'mlflow.parentRunId' and value = ?",
                                          (parent,))}
    lr0s = {r: v for r, v in con.execute("select run_uuid, value from params where key = 'lr0'")}
    (status,) = con.execute("select status from runs where run_uuid = ?", (parent,)).fetchone()
    tags = dict(con.execute("select key, value from tags where run_uuid = ?", (parent,)).fetchall())
    con.close()
    assert (tags["jobs"], tags["jobs_not_completed"]) == ("2", "0")
    assert children == set(jobs) and [lr0s[j] for j in jobs] == ["0.01", "0.02"]
    assert status == "FINISHED"
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "summary.json"} <= set(artifact_names(mlflow_db, jobs[0]))
    assert {"report.md", "report.csv"} <= set(artifact_names(mlflow_db, parent))


def test_a_tracker_that_cannot_work_is_one_line_before_training(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    assert run_cli_in_process([*TINY, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"], run) == 2
    err = lines(capfd.readouterr().err)
    assert err == ["error: logger.mlflow.tracking_uri=http://127.0.0.1:9: the tracking server does not answer ([Errno "
                   "111] Connection refused); start it, or use the local store "
                   "logger.mlflow.tracking_uri=sqlite:///outputs/mlflow.db"]
    assert not (run / "steps.csv").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert run_cli_in_process([*TINY, "logger=[csv,wandb]"], run) == 2
    err = lines(capfd.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: logger=wandb: needs the wandb package (")
    assert err[0].endswith("pip install 'lrframe[wandb]' (or leave wandb out of logger=)")


class Recording:
    """A user's own tracker (any ``_target_``): appends every call to ``path`` (JSON lines; it runs
    in the trackers' process) with the process id. ``fail_on``: raise in that call; ``exit_on``:
    end the process there (exit status 3), as if it were killed."""

    def __init__(self, path: str, fail_on: str = "", exit_on: str = ""):
        self.path, self.fail_on, self.exit_on = path, fail_on, exit_on

    def _record(self, name, *args):
        import os

        if name == self.fail_on:
            raise RuntimeError("the server went away")
        if name == self.exit_on:
            os._exit(3)
        with open(self.path, "a") as f:
            f.write(json.dumps([self.fail_on, os.getpid(), name, *args]) + "\n")

    def start(self, info):
        self._record("start", info.name, info.start_step, info.pid)
        return {"mine": 1}

    def log_steps(self, rows):
        self._record("log_steps", [dict(r) for r in rows])

    def log_epoch(self, metrics, step):
        self._record("log_epoch", dict(metrics), step)

    def finish(self, summary):
        self._record("finish", summary["status"])


class RecordingHere(Recording):
    """The same tracker, run in a thread of the training process."""

    in_process = True


def recorded(path: Path) -> list[list]:
    """The calls ``Recording`` wrote: ``[fail_on, pid, method, *args]`` each."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("cls", ["Recording", "RecordingHere"])
def test_a_users_tracker_gets_the_rows_and_a_failing_one_is_dropped(tmp_path, caplog, cls):
    import os

    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    train_in_process(run, *TINY, "epochs=2", "trainer.log_every_n_steps=3",
                     f"+logger.mine._target_={__name__}.{cls}", "+logger.mine._partial_=true", f"+logger.mine.path={calls}",
                     f"+logger.bad._target_={__name__}.{cls}", "+logger.bad._partial_=true", f"+logger.bad.path={calls}",
                     "+logger.bad.fail_on=log_steps")
    pids = {c[1] for c in recorded(calls)}
    assert (pids == {os.getpid()}) == (cls == "RecordingHere") and len(pids) == 1  # the trackers' process, or this one
    assert {c[5] for c in recorded(calls) if c[2] == "start"} == {os.getpid()}  # info.pid: the training process
    mine = [c[2:] for c in recorded(calls) if c[0] == ""]
    assert [c[0] for c in mine] == ["start", "log_steps", "log_steps", "log_epoch", "log_steps", "log_steps",
                                    "log_epoch", "finish"]  # 4 steps an epoch: rows written after 3, 4, 6, 8 steps
    rows = [r for c in mine if c[0] == "log_steps" for r in c[1]]
    assert [{k: repr(v) if isinstance(v, float) else str(v) for k, v in r.items() if v is not None} for r in rows] == [
        {k: v for k, v in r.items() if v != ""} for r in read_csv(run / "steps.csv")]
    epochs = read_csv(run / "epochs.csv")
    assert [(c[1]["val/acc"], c[2]) for c in mine if c[0] == "log_epoch"] == [
        (float(epochs[0]["val/acc"]), 3), (float(epochs[1]["val/acc"]), 7)]
    assert mine[-1] == ["finish", "completed"]
    bad = [c[2] for c in recorded(calls) if c[0] == "log_steps"]
    assert bad == ["start"]  # dropped at its first failure: no more calls, not even finish
    assert any("logger bad: log_steps failed (RuntimeError: the server went away)" in r.message for r in caplog.records)
    assert json.loads((run / "summary.json").read_text())["trackers"] == {"mine": {"mine": 1}, "bad": {"mine": 1}}


KILLED_PARENT = """
import os, signal, sys, time
from pathlib import Path
from framework.tracking import RunInfo
from framework.tracking.process import ProcessWorker
from tests.test_tracking import Recording
calls, holder = sys.argv[1], sys.argv[2]
worker = ProcessWorker({"mine": Recording(calls)})
worker.start(RunInfo(run_dir=Path(calls).parent, name="run", config={}, params={}, facts={}))
worker.put(("log_steps", ([{"step": 0, "lr": 0.1}],)))
worker.put(("log_steps", ([{"step": 1, "lr": 0.2}],)))
worker.wait()
pid = os.fork()
if pid == 0:  # holds the pipe open, as a DataLoader worker forked by the run would
    time.sleep(600)
    os._exit(0)
Path(holder).write_text(str(pid))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_trackers_process_closes_its_runs_when_the_training_process_is_killed(tmp_path):
    """``kill -9`` of the training process while a process it forked keeps the pipe open: the
    trackers' process sees its parent gone, makes the calls it has received and closes the runs
    as failed, while the pipe's other holder still runs."""
    import os
    import signal
    import subprocess
    import time

    calls, holder = tmp_path / "calls.jsonl", tmp_path / "holder.pid"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(calls), str(holder)], cwd=ROOT)
    assert proc.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
    pid, deadline = int(holder.read_text()), time.monotonic() + HANG_GUARD_S
    try:
        while not (recorded(calls) and recorded(calls)[-1][2] == "finish") and time.monotonic() < deadline:
            time.sleep(0.2)  # however long the machine takes
        os.kill(pid, 0)  # the pipe's other holder still runs: the parent's pid told the trackers' process
    finally:
        os.kill(pid, signal.SIGKILL)
    assert [c[2:] for c in recorded(calls)] == [["start", "run", 0, proc.pid], ["log_steps", [{"step": 0, "lr": 0.1}]],
                                                ["log_steps", [{"step": 1, "lr": 0.2}]], ["finish", "failed"]]


def test_a_trackers_process_that_dies_is_one_line_before_training_and_recorded_after(tmp_path, capfd):
    calls = tmp_path / "calls.jsonl"
    mine = [f"+logger.mine._target_={__name__}.Recording", "+logger.mine._partial_=true", f"+logger.mine.path={calls}"]
    assert run_cli_in_process([*TINY, *mine, "+logger.mine.exit_on=start"], tmp_path / "a") == 2
    assert lines(capfd.readouterr().err) == ["error: logger=mine: the trackers' process ended (exit status 3) before "
                                             "their runs opened; any error it printed is above"]
    run = tmp_path / "b"
    train_in_process(run, *TINY, "epochs=2", "trainer.log_every_n_steps=3", *mine, "+logger.mine.exit_on=log_epoch")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["trackers_lost"] == ["mine"]
    assert [c[2] for c in recorded(calls)] == ["start", "log_steps", "log_steps"]  # then it died in log_epoch
    said = capfd.readouterr()  # (the CLI run before set Hydra's logging up: the warning goes to its console handler)
    assert "the trackers' process ended (exit status 3); mine log nothing more" in said.out + said.err


def test_a_stop_signal_to_the_whole_process_group_stops_the_run_and_its_trackers_log_every_step(tmp_path):
    """SLURM signals every process of a job step (SIGUSR2 before the time limit): the trackers'
    process ignores it, and closes the run once the training process has stopped it."""
    import os
    import signal
    import subprocess
    import time

    calls, run = tmp_path / "calls.jsonl", tmp_path / "run"
    args = [*TINY, "epochs=15", "device=cpu", "trainer.log_every_n_steps=1", f"+logger.mine._target_={__name__}.Recording",
            "+logger.mine._partial_=true", f"+logger.mine.path={calls}", f"hydra.run.dir={run}", "logger=[csv,wandb]",
            "logger.wandb.mode=offline"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    while proc.poll() is None and len([c for c in recorded(calls) if c[2] == "log_steps"]) < 8:
        time.sleep(0.2)  # until the trackers' process has logged 8 steps, however long the machine takes
    os.killpg(proc.pid, signal.SIGUSR2)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == "SIGUSR2" and summary["steps"] < 60
    made = recorded(calls)
    assert made[-1][2:] == ["finish", "stopped"] and "trackers_lost" not in summary
    logged = [r["step"] for c in made if c[2] == "log_steps" for r in c[3]]
    assert logged == [int(r["step"]) for r in read_csv(run / "steps.csv")] == list(range(summary["steps"]))
    assert [k for k, _ in wandb_history(run)["lr"]] == logged
    (saved,) = glob.glob(str(run / "wandb" / "offline-run-*" / "files" / "train.log"))  # W&B keeps the run's log:
    assert not Path(saved).is_symlink()  # a copy, with the run's lines up to the end
    assert "SIGUSR2 received: stopping after this step" in Path(saved).read_text()


def test_a_trackers_process_never_starts_another(tmp_path, monkeypatch):
    """A tracker's module that starts a run when the trackers' process imports it would start a
    process in a chain: there the trackers run in a thread, and a ProcessWorker is refused."""
    from framework.tracking.process import CHILD_ENV, ProcessWorker, runs_in_process

    tracker = Recording(str(tmp_path / "calls.jsonl"))
    assert not runs_in_process(tracker)
    monkeypatch.setenv(CHILD_ENV, "1")  # as ProcessWorker sets it for its child
    assert runs_in_process(tracker)
    with pytest.raises(RuntimeError, match="does not start another"):
        ProcessWorker({"mine": tracker})


def test_a_resumed_run_continues_its_tracker_runs(tmp_path, mlflow_db):
    run = tmp_path / "run"
    args = [*TINY, "epochs=2", "trainer.log_every_n_steps=2", f"logger.mlflow.tracking_uri=sqlite:///{mlflow_db}"]
    train_in_process(run, *args, "logger=[csv,mlflow]", "trainer.stop_after_steps=3")
    first = json.loads((run / "summary.json").read_text())["trackers"]["mlflow"]["run_id"]
    # the resume adds TensorBoard: trackers may change between a run and its resume
    train_in_process(tmp_path / "elsewhere", *args, "logger=[csv,tensorboard,mlflow]", f"resume={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["trackers"]["mlflow"]["run_id"] == first
    steps = csv_values(run / "steps.csv")
    assert len(steps["lr"]) == 8
    metrics, _, _, status = mlflow_run(mlflow_db, first)
    scalars, _ = tensorboard_events(run)
    for column, values in steps.items():
        assert metrics[column] == values, column
        # from the resumed step on (update_ratio, sampled at step 0 only, has no TensorBoard tag then)
        assert scalars.get(column, []) == f32([(k, v) for k, v in values if k >= 3]), column
    assert status == "FINISHED"


def test_a_crash_after_the_checkpoint_and_a_resume_log_each_step_once(tmp_path, mlflow_db, monkeypatch):
    """Steps 4 and 5 are logged, the run crashes at step 6 (its last.pt is at step 4, the end of
    epoch 0), the resume trains steps 4-7 again: each tracker holds every step once, = steps.csv."""
    from framework.trainer import loop

    run = tmp_path / "run"
    args = [*TINY, "epochs=2", "trainer.log_every_n_steps=1", "logger=[csv,tensorboard,mlflow]",
            f"logger.mlflow.tracking_uri=sqlite:///{mlflow_db}"]
    step = loop.Trainer.optimizer_step

    def crash_at_6(self, *args):
        if self.run_state.global_step == 6:
            raise RuntimeError("out of memory (simulated)")
        return step(self, *args)

    monkeypatch.setattr(loop.Trainer, "optimizer_step", crash_at_6)
    with pytest.raises(RuntimeError):
        train_in_process(run, *args)
    assert [k for k, _ in csv_values(run / "steps.csv")["lr"]] == [0, 1, 2, 3, 4, 5]
    monkeypatch.setattr(loop.Trainer, "optimizer_step", step)
    train_in_process(tmp_path / "elsewhere", *args, f"resume={run}")
    summary = json.loads((run / "summary.json").read_text())
    metrics, _, _, status = mlflow_run(mlflow_db, summary["trackers"]["mlflow"]["run_id"])
    scalars, _ = tensorboard_events(run)
    steps = csv_values(run / "steps.csv")
    assert [k for k, _ in steps["lr"]] == list(range(8))
    for column, values in steps.items():
        assert metrics[column] == values and scalars[column] == f32(values), column
    assert status == "FINISHED" and summary["status"] == "completed"


def test_a_rollback_leaves_the_trackers_with_the_rows_of_steps_csv(tmp_path, mlflow_db):
    """lr0=1e6 diverges; each rollback restores an earlier state at a lower LR: the steps redone
    replace the diverged ones in steps.csv, and the trackers never saw the diverged ones."""
    run = tmp_path / "run"
    train_in_process(run, *TINY, "epochs=2", "lr0=1e6", "trainer.on_divergence=rollback", "trainer.rollback_lr_factor=0.01",
                     "trainer.max_rollbacks=3", "trainer.log_every_n_steps=2", "logger=[csv,tensorboard,mlflow]",
                     f"logger.mlflow.tracking_uri=sqlite:///{mlflow_db}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rollbacks"]  # it did roll back
    metrics, _, _, _ = mlflow_run(mlflow_db, summary["trackers"]["mlflow"]["run_id"])
    scalars, _ = tensorboard_events(run)
    steps = csv_values(run / "steps.csv")
    assert [k for k, _ in steps["lr"]] == list(range(len(steps["lr"])))
    for column, values in steps.items():
        assert metrics[column] == values and scalars[column] == f32(values), column


def test_a_tracker_that_cannot_start_closes_the_runs_already_opened(tmp_path, mlflow_db, capfd):
    run = tmp_path / "run"
    assert run_cli_in_process([*TINY, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{mlflow_db}",
                               f"+logger.bad._target_={__name__}.Recording", "+logger.bad._partial_=true",
                               f"+logger.bad.path={tmp_path / 'calls.jsonl'}", "+logger.bad.fail_on=start"], run) == 2
    err = [ln for ln in lines(capfd.readouterr().err) if "INFO mlflow" not in ln]  # (MLflow making a new store)
    assert err == ["error: logger=bad: could not start its run: the server went away"]
    con = sqlite3.connect(mlflow_db)
    statuses = con.execute("select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'run_dir' and t.value = ?", (str(run),)).fetchall()
    con.close()
    assert statuses == [("FAILED",)]  # the MLflow run opened first is not left RUNNING
