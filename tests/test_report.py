"""Sweeps: failed and diverged jobs do not abort them, the automatic report, unique folders."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from framework.report import main as report_main
from framework.report import write_report
from tests.helpers import HANG_GUARD_S, ROOT, TINY, read_csv, run_cli_in_process, train_in_process

pytestmark = pytest.mark.slow  # end-to-end: train.py in subprocesses (deselect with -m "not slow")

SWEEP = [*TINY, "epochs=2", "device=cpu", "scheduler.lrf=0.01", "warmup_epochs=0"]


def multirun(sweep_dir, *overrides, cwd=ROOT, timeout=HANG_GUARD_S, subprocess_=False):
    """``python train.py -m <overrides>``: in this process (what it prints captured), or as a
    subprocess with ``subprocess_`` (``timeout`` then applies)."""
    extra = [f"hydra.sweep.dir={sweep_dir}"] if sweep_dir is not None else []
    args = [sys.executable, str(ROOT / "train.py"), "-m", *overrides, *extra]
    if subprocess_:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli_in_process(args[2:], None, cwd=cwd)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    """lr0 = 0.01 (trains) and 1000 (diverges) with SGD: a real two-job sweep."""
    sweep = tmp_path_factory.mktemp("sweep")
    proc = multirun(sweep, *SWEEP, "optimizer=sgd", "lr0=0.01,1000")
    return sweep, proc


def test_a_diverged_job_does_not_abort_the_sweep(lr_sweep):
    sweep, proc = lr_sweep
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job did not complete
    assert "Traceback" not in proc.stderr
    statuses = {json.loads((sweep / j / "summary.json").read_text())["lr0"]: json.loads(
        (sweep / j / "summary.json").read_text())["status"] for j in ("0", "1")}
    assert statuses == {0.01: "completed", 1000.0: "diverged"}
    assert "sweep report:" in proc.stderr and "1 not completed" in proc.stderr


def test_report_rows_cover_the_sweep_best_first(lr_sweep):
    sweep, _ = lr_sweep
    rows = read_csv(sweep / "report.csv")
    assert [(r["rank"], r["job"], r["status"]) for r in rows] == [("1", "0", "completed"), ("2", "1", "diverged")]
    epochs = read_csv(sweep / "0" / "epochs.csv")  # what the job logged, not what the report copies
    assert float(rows[0]["best_val_acc"]) == max(float(r["val/acc"]) for r in epochs)
    assert float(rows[0]["final_train_loss"]) == float(epochs[-1]["train/loss"])
    assert rows[0]["steps"] == "8" and rows[0]["overrides"].lower().split() == [*SWEEP, "optimizer=sgd", "lr0=0.01"]
    md = (sweep / "report.md").read_text()
    assert "| 2 | 1 |" in md and "**diverged**" in md and md.count("**diverged**") == 1
    assert "| job | lr0 | optimizer.lr |" in md  # config differences: what the sweep changed
    for name in ("sensitivity.png", "loss.png", "lr.png"):
        assert (sweep / name).stat().st_size > 10_000


def test_every_job_starts_at_its_lr0_and_ends_at_lr0_times_lrf(tmp_path):
    sweep = tmp_path / "s"
    proc = multirun(sweep, *SWEEP, "lr0=0.001,0.1", "optimizer=sgd,adamw", "scheduler=cosine", "lrf=0.01")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    for job in range(4):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        steps = read_csv(sweep / str(job) / "steps.csv")
        lr0 = next(float(o.split("=")[1]) for o in (sweep / str(job) / ".hydra" / "overrides.yaml").read_text()
                   .replace("- ", "").split() if o.startswith("lr0="))  # what the command line gave this job
        assert float(steps[0]["lr"]) == lr0 and summary["lr0"] == lr0
        assert float(steps[-1]["lr"]) == pytest.approx(lr0 * 0.01, rel=1e-12)


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """lr0=-1 fails validation in its job: status failed, error line kept, the other job runs."""
    sweep = tmp_path / "s"
    proc = multirun(sweep, *SWEEP, "epochs=1", "lr0=-1,0.01")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    failed = json.loads((sweep / "0" / "summary.json").read_text())
    assert failed["status"] == "failed" and "lr0=-1" in failed["error"] and failed["objective"] == 0.0
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    assert [r["status"] for r in read_csv(sweep / "report.csv")] == ["completed", "failed"]


def test_report_on_a_partial_sweep(lr_sweep, tmp_path):
    """A job killed before it wrote summary.json is reported as incomplete from its CSVs."""
    import shutil

    sweep, _ = lr_sweep
    copy = tmp_path / "partial"
    shutil.copytree(sweep, copy)
    (copy / "0" / "summary.json").unlink()
    steps = (copy / "0" / "steps.csv").read_text().splitlines(keepends=True)
    (copy / "0" / "steps.csv").write_text("".join(steps[:5]) + steps[5][:7])  # cut mid-row by a kill
    result = write_report(copy)
    row = next(r for r in result["rows"] if r["job"] == "0")
    assert row["status"] == "incomplete" and row["steps"] == 4 and result["bad"] == 2
    assert row["best"] == max(float(r["val/acc"]) for r in read_csv(copy / "0" / "epochs.csv"))  # task.monitor, max


def test_report_command_line(lr_sweep, tmp_path, capsys):
    sweep, _ = lr_sweep
    assert report_main([str(sweep)]) == 1  # a diverged job
    assert "# Sweep report" in capsys.readouterr().out
    assert report_main([str(tmp_path)]) == 2  # a folder that is not a sweep (no multirun.yaml)
    assert "not a sweep folder (no multirun.yaml)" in capsys.readouterr().err
    (tmp_path / "multirun.yaml").write_text("{}\n")  # a sweep that has no job yet
    assert report_main([str(tmp_path)]) == 2
    assert "no job folders" in capsys.readouterr().err


def test_two_sweeps_started_together_never_share_a_folder(tmp_path):
    """Same sweep folder asked for by two processes at once: each gets its own."""
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *SWEEP, "epochs=1", "lr0=0.01",  # one job: the race is the folder
           "hydra.sweep.dir=${unique_dir:" + str(tmp_path / "same") + "}"]
    other = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run_cli_in_process(cmd[2:], None) == 0  # this one while the other process starts its sweep
    _, err = other.communicate(timeout=HANG_GUARD_S)
    assert other.returncode == 0, err[-3000:]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["same", "same-1"]
    for folder in folders:
        assert len(read_csv(tmp_path / folder / "report.csv")) == 1
        assert sorted(p.name for p in (tmp_path / folder).iterdir() if p.is_dir()) == ["0"]


def test_joblib_launcher_shares_the_cores(tmp_path):
    import os

    sweep = tmp_path / "s"
    proc = multirun(sweep, *SWEEP, "epochs=1", "lr0=0.01,0.02", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cores = os.cpu_count() or 1
    for job in ("0", "1"):
        text = (sweep / job / "train.log").read_text()
        assert f"2 parallel jobs on {cores} cores" in text if cores >= 2 else "1 parallel jobs" in text
        threads = int(text.split("torch.set_num_threads(")[1].split(")")[0])
        assert threads >= 1 and (threads * 2 <= cores or threads == 1)  # 2 jobs never ask for more than the cores
    assert [r["status"] for r in read_csv(sweep / "report.csv")] == ["completed", "completed"]


def test_submitit_local_launcher_runs_each_job_on_two_processes(tmp_path):
    """Each job is a 2-process data-parallel job (submitit tasks joined by framework.distributed),
    as on SLURM with tasks_per_node = GPUs per node."""
    sweep = tmp_path / "s"  # (a divergence on every rank at the same step: tests/test_distributed.py)
    proc = multirun(sweep, *SWEEP, "lr0=0.01", "device=cpu", "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=10", "hydra.launcher.tasks_per_node=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["lr0"]: r for r in read_csv(sweep / "report.csv")}
    assert {float(k): r["status"] for k, r in rows.items()} == {0.01: "completed"}
    job = sweep / rows["0.01"]["job"]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["world_size"] == 2
    # each rank trains on half of every epoch: 256 samples, 128 per rank in batches of 64 -> 2 steps per
    # epoch, 2 epochs
    assert summary["planned_steps"] == 4 and summary["global_batch"] == 128
    assert [int(r["step"]) for r in read_csv(job / "steps.csv")] == [0, 1, 2, 3]


def test_optuna_search_maximises_the_returned_accuracy(tmp_path):
    import yaml

    sweep = tmp_path / "s"
    proc = multirun(sweep, *SWEEP, "epochs=1", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=3",
                    "~hydra.sweeper.params.scheduler")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed"}
    lrs = [float(r["lr0"]) for r in rows]
    assert all(1e-4 <= v <= 1.0 for v in lrs) and len(set(lrs)) == 3  # sampled from the log range
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(float(r["best_val_acc"]) for r in rows)


def test_a_missing_plugin_names_the_package_to_install():
    from hydra.errors import MissingConfigException

    from framework.errors import user_messages

    exc = MissingConfigException("Could not find 'hydra/launcher/joblib'", missing_cfg_file="hydra/launcher/joblib")
    assert user_messages(exc) == ["hydra/launcher=joblib: the Hydra plugin is not installed; pip install "
                             "hydra-joblib-launcher (or pip install -e '.[sweep]' for every sweep plugin)"]


def test_a_requeued_job_resumes_its_stopped_run(tmp_path):
    """A job stopped mid-run (as on SLURM preemption) and launched again into the same sweep
    folder (as submitit requeues it) continues exactly: same steps.csv as an uninterrupted job."""
    args = [*SWEEP, "epochs=3", "lr0=0.05"]
    train_in_process(tmp_path / "full" / "0", *args)  # the uninterrupted job
    first = multirun(tmp_path / "cut", *args, "trainer.stop_after_steps=5")
    assert first.returncode == 1  # a stopped job has not completed
    hint = next(ln for ln in first.stdout.splitlines() if "continue with: python train.py " in ln)
    assert "stop_after_steps" not in hint and hint.endswith(f"lr0=0.05 resume={tmp_path / 'cut' / '0'}")
    assert json.loads((tmp_path / "cut" / "0" / "summary.json").read_text())["status"] == "stopped"
    again = multirun(tmp_path / "cut", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming it" in (tmp_path / "cut" / "0" / "train.log").read_text()
    assert read_csv(tmp_path / "cut" / "0" / "steps.csv") == read_csv(tmp_path / "full" / "0" / "steps.csv")
