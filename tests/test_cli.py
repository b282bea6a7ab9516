"""User mistakes, signals outside the training loop and a full disk: one line each, a truthful status."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from framework.errors import user_messages
from framework.errors import ConfigError
from tests.helpers import TINY, compose_cfg, FullDisk, lines, run_cli_in_process


def test_describe_config_error_and_missing_option():
    assert user_messages(ConfigError(["a=1: bad", "b=2: worse"])) == ["a=1: bad", "b=2: worse"]
    with pytest.raises(MissingConfigException) as info:  # as Hydra raises it, with the options it found
        compose_cfg("optimizer=adamm")
    [line] = user_messages(info.value)
    assert line.startswith("optimizer=adamm: no such option (did you mean adam?); available: adabelief, adam, adamw, ")
    assert line.endswith(", sgd, sgd_schedulefree, sgdp")


def test_other_exceptions_are_not_user_mistakes():
    assert user_messages(RuntimeError("boom")) is None


# --- signals outside the training loop, a full disk: one line, a truthful status, no traceback ---


SHORT = [*TINY, "dataset.train_size=64", "dataset.val_size=32", "batch_size=32", "epochs=2", "device=cpu"]  # T = 4


@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_before_training_ends_in_one_line_and_leaves_no_folder(tmp_path, capfd, monkeypatch, name, code):
    import framework.build

    build = framework.build.build

    def signalled_build(cfg, run_dir, trackers=None):
        os.kill(os.getpid(), getattr(signal, name))  # arrives while the run is being built
        return build(cfg, run_dir, trackers)

    monkeypatch.setattr(framework.build, "build", signalled_build)
    assert run_cli_in_process(SHORT, tmp_path / "run") == code
    err = capfd.readouterr().err
    assert lines(err) == [f"stopped: {name}; before training started; nothing was trained"], err
    assert not (tmp_path / "run").exists()


def test_a_signal_while_training_starts_stops_at_the_first_step(tmp_path, capfd, monkeypatch):
    """SIGTERM between the end of building and the trainer's own handler: held, then the run
    stops at its first step boundary with a checkpoint, as a SIGTERM during training does."""
    import framework.interrupts

    set_training = framework.interrupts.set_training

    def signalled(training):
        set_training(training)
        if training:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(framework.interrupts, "set_training", signalled)
    assert run_cli_in_process(SHORT, tmp_path / "run") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["stop_reason"]) == ("stopped", 1, "SIGTERM")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_after_the_last_step_keeps_the_run_completed_with_its_files(tmp_path, capfd, monkeypatch, name):
    import framework.run

    finish = framework.run.finish

    def signalled_finish(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, name))  # arrives while summary.json and lr.png are written
        return finish(*args, **kwargs)

    monkeypatch.setattr(framework.run, "finish", signalled_finish)
    assert run_cli_in_process(SHORT, tmp_path / "run") == 0
    out, err = capfd.readouterr()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 4)
    assert (tmp_path / "run" / "lr.png").is_file() and "run completed" in out
    assert f"run folder: {tmp_path / 'run'}\n" in out  # the whole path once, not cut to the table's width
    assert lines(err)[-1] == f"{name} received after the last step: the run completed and its files are written"
    assert "Traceback" not in err


def test_a_full_disk_during_training_is_one_line_and_the_last_checkpoint_resumes(tmp_path, capfd, monkeypatch):
    """The disk fills while epoch 2's checkpoint is written: one line naming the file, exit 1,
    no temporary file, epoch 1's last.pt intact; resumed later, the run completes."""
    import builtins

    import framework.loggers
    from tests.helpers import read_csv

    saves = []

    def open_filling_up(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if str(path).endswith(".pt.tmp"):
            saves.append(path)
            if len(saves) > 1:  # epoch 1's last.pt fits (best.pt is a link to it), nothing after
                return FullDisk(f, 0)
        return f

    monkeypatch.setattr(framework.loggers, "open", open_filling_up, raising=False)
    run = tmp_path / "run"
    assert run_cli_in_process(SHORT, run) == 1
    err = capfd.readouterr().err
    assert lines(err)[-1].startswith(f"error: {run / 'checkpoints' / 'last.pt'}: No space left on device; free some "
                                      "space; temporary files were removed"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    assert run_cli_in_process([*SHORT, f"resume={run}"], None) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert [int(r["step"]) for r in read_csv(run / "steps.csv")] == [0, 1, 2, 3]


def test_resume_of_a_run_that_cannot_be_written_is_one_line(tmp_path, capfd, monkeypatch):
    """A run folder on a read-only mount (here: os.access says so, as it does there, even for
    root): refused before anything is built, the folder untouched."""
    from tests.helpers import folder_bytes

    run = tmp_path / "run"
    assert run_cli_in_process([*SHORT, "trainer.stop_after_steps=2"], run) == 0
    before = folder_bytes(run)
    capfd.readouterr()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path).startswith(str(run)) and
                        mode == os.W_OK else real_access(path, mode, **kw))
    assert run_cli_in_process([*SHORT, f"resume={run}"], None, cwd=tmp_path) == 2
    assert lines(capfd.readouterr().err) == [f"error: resume={run}: the run folder {run} cannot be written "
                                             "(read-only?); copy the run folder somewhere writable and resume from "
                                             "the copy"]
    assert folder_bytes(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_continue_command_runs_from_where_the_user_is_and_a_finished_run_is_not_resumed(tmp_path, capfd):
    """Started from another folder as python <checkout>/train.py: the printed command names that
    script; once the run completed, the same command again changes nothing and says so."""
    from tests.helpers import ROOT, folder_bytes

    run = tmp_path / "run"
    assert run_cli_in_process([*SHORT, "trainer.stop_after_steps=2"], run, cwd=tmp_path) == 0
    printed = next(x for x in lines(capfd.readouterr().out) if x.startswith("stopped at step 2 of 4"))
    assert f"; continue with: python {ROOT / 'train.py'} " in printed and printed.endswith(f" resume={run}")
    assert run_cli_in_process([*SHORT, f"resume={run}"], None, cwd=tmp_path) == 0
    capfd.readouterr()
    before = folder_bytes(run)
    assert run_cli_in_process([*SHORT, f"resume={run}"], None, cwd=tmp_path) == 0  # a requeue: a no-op
    assert lines(capfd.readouterr().err) == [f"resume={run}: the run completed all its 4 steps (summary.json); nothing "
                                             "to continue (to train it further, give it more epochs with "
                                             "resume_allow_changes=true)"]
    assert folder_bytes(run) == before


@pytest.mark.parametrize("argv0, start", [("/usr/local/bin/lrframe", "lrframe"),
                                          ("/site-packages/framework/__main__.py", "lrframe"),
                                          ("train.py", "python train.py")])
def test_the_continue_command_names_the_program_that_ran_and_quotes_for_the_shell(argv0, start, monkeypatch):
    from framework.resume import continue_command

    monkeypatch.setattr(sys, "argv", [argv0])
    assert continue_command(["logger=[csv,mlflow]", "lr0=0.1", "trainer.stop_after_steps=5"], Path("/runs/a b")) == (
        f"{start} 'logger=[csv,mlflow]' lr0=0.1 'resume=/runs/a b'")


def test_a_ray_trials_continue_command_is_lrframe_with_the_trials_own_overrides(monkeypatch):
    # a Ray Tune trial runs in Ray's worker process (argv[0] is Ray's script) and Hydra gave it no overrides:
    # the command is the installed one with the trial's overrides from its summary
    from framework.run import _continue

    monkeypatch.setattr(sys, "argv", ["/venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py"])
    summary = {"tune": {"trial": 3}, "overrides": ["+debug=tiny", "epochs=3", "lr0=0.0001164"]}
    assert _continue(summary, [], Path("/t/3")) == "lrframe +debug=tiny epochs=3 lr0=0.0001164 resume=/t/3"
    monkeypatch.setattr(sys, "argv", ["train.py"])  # not a trial: the program that ran, Hydra's overrides
    assert _continue({"overrides": ["lr0=0.1"]}, ["lr0=0.1"], Path("/r")) == "python train.py lr0=0.1 resume=/r"
