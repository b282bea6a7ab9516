"""Run-folder writers."""
from __future__ import annotations

import subprocess

from framework.loggers import CSVLog, git_state, plot_lr
from tests.helpers import read_csv


def test_csv_keeps_floats_bit_for_bit(tmp_path):
    log = CSVLog(tmp_path / "s.csv", ["step", "lr"])
    values = [0.1 * 0.01, 1 / 3, 5e-6]
    log.write({"step": i, "lr": v} for i, v in enumerate(values))
    assert [float(r["lr"]) for r in read_csv(tmp_path / "s.csv")] == values


def test_git_state_commit_and_dirty_flag(tmp_path):
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "a")
    head = git("rev-parse", "HEAD").stdout.strip()
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "new.yaml").write_text("x: 1")  # untracked config file: the run is not reproducible
    assert git_state(tmp_path)["git_dirty"] is True


def test_plot_lr_writes_a_png(tmp_path):
    plot_lr([0, 1, 2], {"decay": [0.1, 0.05, 0.01]}, tmp_path / "lr.png", warmup_steps=1)
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncate_csv_drops_later_rows_and_a_row_cut_by_a_kill(tmp_path):
    from framework.loggers import truncate_csv

    path = tmp_path / "steps.csv"
    path.write_text("step,lr,loss\n0,0.1,2.3\n1,0.1,2.2\n2,0.1,2.1\n3,0.1\n")  # last row cut short
    assert [r["step"] for r in truncate_csv(path, "step", 2)] == ["0", "1"]
    assert path.read_text() == "step,lr,loss\n0,0.1,2.3\n1,0.1,2.2\n"
    path.write_text("step,lr,loss\n0,0.1,2.3\n1")
    assert [r["step"] for r in truncate_csv(path, "step", 5)] == ["0"]
