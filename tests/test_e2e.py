"""End to end: train.py in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import HANG_GUARD_S, ROOT, TINY, read_csv, run_cli, run_cli_in_process

pytestmark = pytest.mark.slow  # end-to-end: train.py in subprocesses (deselect with -m "not slow")


def test_train_py_runs_and_leaves_a_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, "epochs=2", "trainer.progress_bar=true", "scheduler=onecycle"], run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "best val/acc" in proc.stdout and "run completed" in proc.stdout  # final table
    assert "epoch 2/2" in proc.stderr and "lr=" in proc.stderr and "loss=" in proc.stderr  # progress bar
    names = {p.name for p in run_dir.iterdir()}
    assert {".hydra", "steps.csv", "epochs.csv", "summary.json", "lr.png", "checkpoints"} <= names
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert "scheduler=onecycle" in summary["overrides"]


def test_multirun_grid_one_folder_per_job_with_literal_lrs(tmp_path):
    sweep = tmp_path / "sweep"
    code = run_cli_in_process(["-m", "scheduler=cosine,step", "lr0=1e-5,1e-9", "epochs=1", *TINY,
                               "trainer.save_checkpoints=false", f"hydra.sweep.dir={sweep}"], None)
    assert code == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed"
        literal = next(o.split("=")[1] for o in summary["overrides"] if o.startswith("lr0="))
        first = read_csv(job / "steps.csv")[0]
        assert float(first["lr"]) == float(literal)  # no warmup: step 0 applies lr0 exactly
        assert summary["lr0"] == float(literal)
        seen.add((next(o for o in summary["overrides"] if o.startswith("scheduler=")), float(literal)))
    assert seen == {(s, v) for s in ("scheduler=cosine", "scheduler=step") for v in (1e-5, 1e-9)}


def test_help_and_cfg_do_not_import_torch(tmp_path):
    out = {}
    for args in (["--help"], ["--cfg", "job"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train.py"), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert "hydra" in imported and "torch" not in imported and "timm" not in imported
        out[args[0]] = proc.stdout
    help_text = out["--help"]
    # every top-level knob with its default and its help, from the schema (framework/schema.py)
    assert "  lr0                   0.01    (LR) initial learning rate, reached at the end of warmup" in help_text
    assert "  warmup_bias_lr        null    (LR) the biases' LR at warmup step 0" in help_text


@pytest.mark.long
def test_default_run_reaches_97_percent_on_digits(tmp_path):
    """The main job, no arguments: resnet10t + SGD + cosine, 10 epochs on the real digits."""
    run_dir = tmp_path / "run"
    proc = run_cli([], run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["device"] in ("cpu", "cuda", "mps")
    assert summary["objective"] >= 0.97 and summary["final"]["val/acc"] >= 0.97
    lrs = [float(r["lr"]) for r in read_csv(run_dir / "steps.csv")]
    assert len(lrs) == 230 and lrs[0] == 0.01 and lrs[-1] == 0.01 * 0.01  # 1437 / 64 -> 23 steps x 10


def test_diverged_run_exits_1_with_one_line(tmp_path, capfd):
    run_dir = tmp_path / "run"
    code = run_cli_in_process([*TINY, "epochs=2", "lr0=1e6"], run_dir)  # train.py's __main__, in this process
    err = capfd.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("diverged:")]
    assert len(lines) == 1 and "step" in lines[0] and "Traceback" not in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
