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


@pytest.mark.long
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


@pytest.mark.long
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


@pytest.mark.long
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
    proc = multirun(sweep, *SWEEP, "epochs=1", "hparams_search=lr_tpe", "hydra.sweeper.n_trials=3",
                    "hydra/sweeper/pruner=none")
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


# --- LR search (hydra/sweeper=lr_search) folders, built by hand: every figure below is worked out in the comments


def fake_trial(sweep, job, status, steps, wall_s, curve, lr0, planned_steps=32, epochs=4, pruned=None, search=True):
    """A finished job folder as a sweep leaves it: .hydra/{config,overrides}.yaml, summary.json and
    epochs.csv (``curve``: val/acc of epochs 0, 1, ...), trained ``steps`` of ``planned_steps``."""
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    link = f"search={{_target_:framework.search.study.OptunaTrial,study:{sweep}/study.json,trial:{job}}}"
    overrides = ["+debug=tiny", f"epochs={epochs}", f"lr0={lr0}", "+note=two words", *([link] if search else [])]
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    trial = f"search: {{_target_: framework.search.study.OptunaTrial, trial: {job}}}\n" if search else ""
    (folder / ".hydra" / "config.yaml").write_text(f"lr0: {lr0}\nepochs: {epochs}\nnote: two words\n{trial}")
    columns = ("epoch", "train/loss", "val/loss", "val/acc", "lr", "time_s")
    rows = [dict(zip(columns, (e, 2.0 - v, 2.0 - v, v, lr0, 0.1))) for e, v in enumerate(curve)]
    (folder / "epochs.csv").write_text(",".join(columns) + "\n" + "".join(
        ",".join(str(r[c]) for c in columns) + "\n" for r in rows))
    best = max(rows, key=lambda r: r["val/acc"])
    summary = {"status": status, "objective_name": "val/acc", "objective_mode": "max", "objective": best["val/acc"],
               "lr0": lr0, "best": best, "final": rows[-1], "steps": steps, "planned_steps": planned_steps,
               "epochs": len(curve), "planned_epochs": epochs, "wall_time_s": wall_s, "pruned": pruned}
    if status == "diverged":
        summary["error"] = f"loss is nan at step {steps}"
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def search_sweep(tmp_path):
    """4 trials of 4 epochs x 8 steps (T = 32): two completed, one pruned after its first epoch (8
    steps), one diverged at step 12; study.json says the grid has 8 points."""
    sweep = tmp_path / "search"
    fake_trial(sweep, 0, "completed", 32, 10.0, [0.3, 0.5, 0.6, 0.55], 0.001)
    fake_trial(sweep, 1, "pruned", 8, 3.0, [0.2], 1.0,
               pruned={"epoch": 0, "step": 8, "trial": 1, "pruner": "MedianPruner", "value": 0.2})
    fake_trial(sweep, 2, "diverged", 12, 4.5, [0.1], 10.0)
    fake_trial(sweep, 3, "completed", 32, 12.0, [0.4, 0.6, 0.7, 0.65], 0.01)
    study = {"study_name": "lr_search", "storage": f"journal:{sweep}/optuna_journal.log", "direction": "maximize",
             "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0},
             "n_trials": 4, "grid_size": 8}
    (sweep / "study.json").write_text(json.dumps(study))
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n"
                                         "    _target_: hydra_plugins.lrframe_search.LRSearchSweeper\n"
                                         "    sampler:\n      _target_: optuna.samplers.GridSampler\n")
    return sweep


def test_search_report_shows_pruned_trials_the_best_command_and_the_compute(search_sweep):
    sweep = search_sweep
    result = write_report(sweep)
    assert [r["job"] for r in result["rows"]] == ["3", "0", "1", "2"]  # 0.7 > 0.6, then pruned, then diverged
    assert result["bad"] == 1  # the diverged job; a pruned one is not a problem
    md = (sweep / "report.md").read_text()
    assert "4 jobs: 2 completed, 1 diverged, 1 pruned." in md
    assert "| 3 | 1 | `lr0=1.0` | pruned (epoch 1 of 4, 8 of 32 steps) | 0.2 |" in md  # not bold
    assert "```bash\nlrframe +debug=tiny epochs=4 lr0=0.01 '+note=two words'\n```" in md
    assert "Best configuration (job 3, best val/acc 0.7)" in md
    # steps: 32 + 8 + 12 + 32 = 84 of 8 points x 32 = 256 -> 32.8%; wall: 10 + 3 + 4.5 + 12 = 29.5 s; at full budget
    # each: 10, 3 x 32/8 = 12, 4.5 x 32/12 = 12, 12 -> mean 11.5 s x 8 points = 92 s -> 29.5/92 = 32.1%
    assert ("Compute: 84 of 256 optimizer steps (32.8%) of a full grid of 8 points (the grid_size of study.json) at 32 "
            "steps each; wall time 29.5 s of an estimated 92 s (32.1%) for that grid") in md
    assert ("Search: study `lr_search` (maximize, 4 trials asked), sampler GridSampler, pruner "
            f"MedianPruner(n_startup_trials=2, n_warmup_steps=0), storage `journal:{sweep}/optuna_journal.log`.") in md
    assert "search=" not in md and "OptunaTrial" not in md and "search.trial" not in md  # plumbing: never shown
    assert "| job | lr0 |" in md  # the config differences: lr0 only
    assert "![curves](curves.png)" in md and (sweep / "curves.png").stat().st_size > 10_000
    rows = {r["job"]: r for r in read_csv(sweep / "report.csv")}
    assert (rows["1"]["status"], rows["1"]["epochs"], rows["1"]["planned_epochs"], rows["1"]["steps"]) == (
        "pruned", "1", "4", "8")
    assert "search=" not in rows["1"]["overrides"]
    search = json.loads((sweep / "search.json").read_text())
    assert {k: search[k] for k in ("steps_spent", "steps_full_grid", "grid_points", "grid_points_from", "fraction",
                                   "wall_s", "wall_full_grid_est_s", "n_trials", "n_pruned", "best_job", "best_value",
                                   "sampler", "pruner")} == {
        "steps_spent": 84, "steps_full_grid": 256, "grid_points": 8, "grid_points_from": "grid_size",
        "fraction": 84 / 256, "wall_s": 29.5, "wall_full_grid_est_s": 92.0, "n_trials": 4, "n_pruned": 1,
        "best_job": "3", "best_value": 0.7, "sampler": "GridSampler", "pruner": "MedianPruner"}
    assert search["best_overrides"] == ["+debug=tiny", "epochs=4", "lr0=0.01", "+note=two words"]
    assert search["best_command"] == "lrframe +debug=tiny epochs=4 lr0=0.01 '+note=two words'"


def test_search_without_a_grid_size_compares_with_one_point_per_job(search_sweep):
    """A continuous search (TPE): grid_size null, so the grid has one point per trial: 4 x 32 = 128
    steps, 84/128 = 65.625%; wall 11.5 s x 4 = 46 s."""
    study = json.loads((search_sweep / "study.json").read_text())
    (search_sweep / "study.json").write_text(json.dumps({**study, "grid_size": None, "pruner": None}))
    search = write_report(search_sweep)["search"]
    assert (search["steps_full_grid"], search["fraction"], search["wall_full_grid_est_s"]) == (128, 0.65625, 46.0)
    md = (search_sweep / "report.md").read_text()
    assert "of a full grid of 4 points (one per job)" in md and "(65.6%)" in md and "pruner none" in md


def test_the_end_of_sweep_line_names_the_best_command(search_sweep, capsys, monkeypatch):
    from omegaconf import OmegaConf

    from framework import report

    monkeypatch.setattr(report, "LAST_SWEEP", None)  # restored after: in-process CLIs read it for their exit status
    report.SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(search_sweep)}}}))
    err = capsys.readouterr().err
    assert ("(4 jobs, 1 not completed, 1 pruned; best: job 3 val/acc 0.7: lrframe +debug=tiny epochs=4 lr0=0.01 "
            "'+note=two words')") in err
    assert "search=" not in err and report.LAST_SWEEP == (4, 1)


def test_a_grid_sweep_without_study_json_reports_its_full_compute(tmp_path):
    """Two completed grid jobs (no study.json, no search= override): 64 of 64 steps, 100%."""
    sweep = tmp_path / "grid"
    fake_trial(sweep, 0, "completed", 32, 8.0, [0.3, 0.5, 0.6, 0.55], 0.1, search=False)
    fake_trial(sweep, 1, "completed", 32, 12.0, [0.4, 0.6, 0.7, 0.65], 0.01, search=False)
    result = write_report(sweep)
    assert result["bad"] == 0 and [r["job"] for r in result["rows"]] == ["1", "0"]
    md = (sweep / "report.md").read_text()
    assert ("Compute: 64 of 64 optimizer steps (100.0%) of a full grid of 2 points (one per job) at 32 steps each; "
            "wall time 20 s of an estimated 20 s (100.0%) for that grid") in md
    assert "Search:" not in md and "| 1 | 1 | `lr0=0.01` | completed | 0.7 |" in md
    search = json.loads((sweep / "search.json").read_text())
    assert (search["fraction"], search["n_pruned"], search["sampler"], search["pruner"]) == (1.0, 0, None, None)
    assert search["best_command"] == "lrframe +debug=tiny epochs=4 lr0=0.01 '+note=two words'"
    assert (sweep / "curves.png").is_file()


def test_the_best_command_leaves_out_overrides_that_only_configure_the_sweep(tmp_path):
    """hparams_search=lr_tpe (framework/conf: @package _global_, sets hydra.sweeper only) is left
    out; optimizer=sgd and a user's global group file that sets epochs are kept."""
    from framework.report_search import best_command

    conf = tmp_path / "myconf"
    (conf / "mysearch").mkdir(parents=True)
    (conf / "mysearch" / "both.yaml").write_text(
        "# @package _global_\nepochs: 3\nhydra:\n  sweeper:\n    n_trials: 2\n")
    (conf / "mysearch" / "sweep_only.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: lr_search\nhydra:\n  sweeper:\n    n_trials: 2\n")
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    config_sources:\n"
        "    - {path: hydra.conf, schema: pkg, provider: hydra}\n"
        "    - {path: framework.conf, schema: pkg, provider: main}\n"
        f"    - {{path: {conf}, schema: file, provider: command-line}}\n")
    overrides = ["hparams_search=lr_tpe", "optimizer=sgd", "+mysearch=both", "+mysearch=sweep_only", "lr0=0.1",
                 "hydra.sweeper.n_trials=3"]
    row = {"folder": job, "override_list": overrides, "overrides": " ".join(overrides)}
    assert best_command(row) == "lrframe optimizer=sgd +mysearch=both lr0=0.1"


def test_a_single_run_after_a_sweep_with_failed_jobs_exits_0(tmp_path, monkeypatch):
    """The exit status of an earlier sweep run in the same process (jobs not completed: 1) does
    not leak into the next command's: a single run that stops as asked exits 0."""
    from framework import report

    monkeypatch.setattr(report, "LAST_SWEEP", (2, 1))  # as a multirun with a failed job leaves it
    assert run_cli_in_process([*TINY, "epochs=1", "device=cpu", "trainer.stop_after_steps=2"], tmp_path / "run") == 0
    assert report.LAST_SWEEP is None
