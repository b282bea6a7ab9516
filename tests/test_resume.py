"""Exact resume, stop at a step boundary (stop_after_steps, SIGTERM), unreadable checkpoints."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from framework.errors import ConfigError
from tests.helpers import HANG_GUARD_S, ROOT, TINY, folder_bytes, lines, read_csv, run_cli_in_process, train_in_process
from framework.registry import CONF_DIR

RUN = [*TINY, "epochs=3", "device=cpu"]  # 4 steps per epoch, T = 12


def same_run(a, b):
    """steps.csv identical; epochs.csv identical but for the wall time."""
    assert read_csv(a / "steps.csv") == read_csv(b / "steps.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert strip(read_csv(a / "epochs.csv")) == strip(read_csv(b / "epochs.csv"))


# stopped mid-epoch, at an epoch boundary, and mid-epoch after plateau judged an epoch (4 steps per epoch)
@pytest.mark.parametrize("scheduler, stop", [("cosine", 2), ("cosine", 4), ("plateau", 7)])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, stop, scheduler):
    extra = [f"scheduler={scheduler}"] + (["scheduler.patience=0", "scheduler.threshold=0.05"]
                                          if scheduler == "plateau" else [])
    train_in_process(tmp_path / "full", *RUN, *extra)
    train_in_process(tmp_path / "cut", *RUN, *extra, f"trainer.stop_after_steps={stop}")
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == stop
    assert len(read_csv(tmp_path / "cut" / "steps.csv")) == stop
    train_in_process(tmp_path / "ignored", *RUN, *extra, f"resume={tmp_path / 'cut'}")
    same_run(tmp_path / "full", tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "completed"


def test_multistep_example_resumed_after_3_epochs(tmp_path, caplog):
    """multistep milestones=[4] gamma=0.1 lr0=0.1 epochs=6, stopped after 3 epochs (12 steps).
    The resumed run's log lines go to the run's own train.log too."""
    import logging

    args = [*TINY, "scheduler=multistep", "scheduler.milestones=[4]", "scheduler.gamma=0.1", "lr0=0.1", "epochs=6"]
    train_in_process(tmp_path, *args, "trainer.stop_after_steps=12")
    caplog.set_level(logging.INFO, logger="framework")
    train_in_process(tmp_path / "x", *args, f"resume={tmp_path}")
    assert [float(r["lr"]) for r in read_csv(tmp_path / "epochs.csv")] == pytest.approx([0.1] * 4 + [0.01] * 2)
    text = (tmp_path / "train.log").read_text()
    # stopped after the 12th step, before epoch 3's validation: epoch index 2, its 4 batches done
    assert "resumed at step 12 (epoch 2, batch 4)" in text and "epoch 6/6" in text
    assert not any(getattr(h, "baseFilename", "").startswith(str(tmp_path)) for h in logging.getLogger().handlers)


def test_cosine_first_epoch_after_resume_is_not_at_lr0(tmp_path):
    args = [*TINY, "scheduler=cosine", "lr0=0.1", "epochs=6"]
    train_in_process(tmp_path, *args, "trainer.stop_after_steps=12")
    train_in_process(tmp_path / "x", *args, f"resume={tmp_path}")
    steps = read_csv(tmp_path / "steps.csv")
    assert all(float(r["lr"]) < 0.1 for r in steps if int(r["epoch"]) == 3)
    assert [int(r["step"]) for r in steps] == list(range(24))


def test_resume_with_a_different_config_is_refused_naming_the_keys(tmp_path):
    train_in_process(tmp_path, *RUN, "trainer.stop_after_steps=2")
    with pytest.raises(ConfigError, match=r"differs from the run's in epochs, lr0, optimizer.lr; .*resume_allow_changes=true"):
        train_in_process(tmp_path / "x", *TINY, "epochs=4", "lr0=0.5", f"resume={tmp_path}")
    train_in_process(tmp_path / "x", *TINY, "epochs=4", f"resume={tmp_path}", "resume_allow_changes=true")
    assert len(read_csv(tmp_path / "steps.csv")) == 16


def test_resume_of_a_different_model_is_refused(tmp_path):
    train_in_process(tmp_path, *RUN, "trainer.stop_after_steps=2")
    with pytest.raises(ConfigError, match="resume: the checkpoint holds a different model"):
        train_in_process(tmp_path / "x", *RUN, "model.name=resnet10t", f"resume={tmp_path}", "resume_allow_changes=true")


def corrupt_variants(tmp_path):
    good = tmp_path / "good" / "checkpoints" / "last.pt"
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "text.pt").write_text("root:x:0:0:root:/root:/bin/bash\n" * 20)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": {}, "step": 0, "x": Evil()}, f, protocol=2)
    return ["trunc.pt", "garbage.pt", "text.pt", "evil.pt"]


def test_truncated_corrupt_and_malicious_checkpoints_are_refused(tmp_path):
    train_in_process(tmp_path / "good", *RUN, "trainer.stop_after_steps=2")
    for name in corrupt_variants(tmp_path):
        with pytest.raises(ConfigError, match=f"resume={tmp_path / name}: not a readable checkpoint"):
            train_in_process(tmp_path / "x", *RUN, f"resume={tmp_path / name}")
    assert not (tmp_path / "pwned").exists()


def test_bad_resume_paths_from_the_command_line(tmp_path, capfd):
    train_in_process(tmp_path / "good", *RUN, "trainer.stop_after_steps=2")
    before = sorted(p.name for p in (tmp_path / "good").rglob("*"))
    corrupt_variants(tmp_path)
    for target, text in [(tmp_path / "missing", "no checkpoint there"), (tmp_path / "trunc.pt", "not a readable")]:
        capfd.readouterr()
        code = run_cli_in_process([*RUN, f"resume={target}"], tmp_path / "run")  # train.py's __main__, here
        err = capfd.readouterr().err
        said = lines(err)
        assert code == 2 and len(said) == 1 and text in said[0], err
    assert sorted(p.name for p in (tmp_path / "good").rglob("*")) == before  # nothing damaged


@pytest.mark.parametrize("damage", ["missing", "short", "no lr column"])
def test_resume_with_a_damaged_steps_csv_is_refused_before_anything_changes(tmp_path, damage):
    """The LR history is rebuilt from steps.csv: without the checkpoint's 5 rows and their LRs the
    resume is refused in one line, and the folder is left as it was."""
    from framework.errors import ConfigError

    train_in_process(tmp_path / "run", *RUN, "trainer.stop_after_steps=5")
    steps = tmp_path / "run" / "steps.csv"
    lines = steps.read_text().splitlines()
    if damage == "missing":
        steps.unlink()
    elif damage == "short":
        steps.write_text("\n".join(lines[:4]) + "\n")  # header + steps 0-2
    else:
        steps.write_text("\n".join(",".join(c for i, c in enumerate(l.split(",")) if i != lines[0].split(",").index("lr"))
                                   for l in lines) + "\n")
    before = folder_bytes((tmp_path / "run"))
    with pytest.raises(ConfigError, match="steps.csv lacks rows or LR columns of the checkpoint's 5 steps"):
        train_in_process(tmp_path / "x", *RUN, f"resume={tmp_path / 'run'}")
    assert folder_bytes((tmp_path / "run")) == before


@pytest.mark.parametrize("damage,message", [
    ("random bytes", "a CSV of the run cannot be read (UnicodeDecodeError)"),
    ("epochs.csv deleted", "epochs.csv is missing the checkpoint's 1 finished epochs"),
    ("epochs.csv cut", "epochs.csv lacks rows of the checkpoint's 1 finished epochs"),
])
def test_resume_with_unreadable_or_incomplete_csvs_is_refused(tmp_path, damage, message):
    """Stopped at step 5 = epoch 1 (4 steps per epoch) finished: steps.csv must read as text and
    epochs.csv must hold epoch 0, else nothing would rebuild them; the folder is left as it was."""
    train_in_process(tmp_path / "run", *RUN, "trainer.stop_after_steps=5")
    run = tmp_path / "run"
    if damage == "random bytes":
        (run / "steps.csv").write_bytes(bytes(range(128, 256)) * 8)
    elif damage == "epochs.csv deleted":
        (run / "epochs.csv").unlink()
    else:
        text = (run / "epochs.csv").read_text()
        (run / "epochs.csv").write_text(text[: len(text.splitlines()[0]) + 8])  # header + a cut row
    before = folder_bytes(run)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_in_process(tmp_path / "x", *RUN, f"resume={run}")
    assert folder_bytes(run) == before


OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").rglob("*.yaml"))
SMALL = [*TINY, "dataset.train_size=64", "dataset.val_size=32", "batch_size=32", "epochs=2", "device=cpu",
         "trainer.log_every_n_steps=1"]  # 2 steps per epoch, T = 4


def test_optimizer_files_found():
    assert len(OPTIMIZERS) >= 10 and "adamw_schedulefree" in OPTIMIZERS and "prodigy" in OPTIMIZERS


#: One optimizer of each kind of state in the default run (momentum, Adam moments, schedule-free, a step-size
#: estimate, a sign update); the others, whose state is of one of these kinds, with -m long.
DEFAULT_RUN_OPTIMIZERS = ("sgd", "adamw", "adamw_schedulefree", "prodigy", "lion")


@pytest.mark.parametrize("optimizer", [o if o in DEFAULT_RUN_OPTIMIZERS else pytest.param(o, marks=pytest.mark.long)
                                       for o in OPTIMIZERS])
def test_every_optimizer_stops_and_resumes_to_the_uninterrupted_run(tmp_path, optimizer):
    """Stopped mid-epoch (step 3 of 4), resumed: the same steps.csv (LR, momentum, d, loss) and
    epochs.csv as without the stop; its checkpoints load with weights_only=True (plain values,
    no OmegaConf containers)."""
    from framework.checkpoint import load_checkpoint

    args = [*SMALL, f"optimizer={optimizer}", "lr0=0.002"]
    train_in_process(tmp_path / "full", *args)
    train_in_process(tmp_path / "cut", *args, "trainer.stop_after_steps=3")
    assert len(read_csv(tmp_path / "cut" / "steps.csv")) == 3
    train_in_process(tmp_path / "x", *args, f"resume={tmp_path / 'cut'}")
    same_run(tmp_path / "full", tmp_path / "cut")
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(tmp_path / "cut" / "checkpoints" / name)["step"] >= 2


def test_a_schedule_free_stop_saves_the_averaged_weights(tmp_path):
    """Schedule-free AdamW trains on y and evaluates x = y + (1 - 1/beta1) (z - y) (Defazio et
    al. 2024, schedulefree's eval()); a stop mid-epoch saves x as ``model`` and y apart."""
    from framework import registry
    from framework.checkpoint import load_checkpoint
    from framework.optim import param_groups
    from tests.helpers import compose_cfg

    args = [*SMALL, "optimizer=adamw_schedulefree", "lr0=0.01"]
    train_in_process(tmp_path, *args, "trainer.stop_after_steps=3")
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    cfg = compose_cfg(*args)
    model = registry.instantiate(cfg.model, "model", num_classes=10, in_chans=3, img_size=16)
    groups = param_groups(model, cfg.optimizer.weight_decay)
    params = [p for g in groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    beta1 = cfg.optimizer.betas[0]
    checked = 0
    for index, p in enumerate(params):  # torch numbers the optimizer state by position over the groups
        name = names[id(p)]
        y, z = state["train_model"][name], state["optimizer"]["state"][index]["z"]
        assert torch.allclose(state["model"][name], y + (1 - 1 / beta1) * (z - y), atol=1e-7)
        checked += not torch.equal(y, z)
    assert checked > 0  # the two points differ, so the check could fail
    assert all(g["train_mode"] for g in state["optimizer"]["param_groups"])  # resumes on y, exactly


def test_changed_optimizer_values_apply_from_the_resumed_step(tmp_path):
    """momentum 0.9 -> 0.5 and weight decay 5e-4 -> 0.01 at resume (allowed): steps 2-3 run
    with them (logged momentum), the optimizer holds them (no decay on biases and norms)."""
    from framework.checkpoint import load_checkpoint

    train_in_process(tmp_path, *SMALL, "trainer.stop_after_steps=2")
    train_in_process(tmp_path / "x", *SMALL, f"resume={tmp_path}", "optimizer.momentum=0.5",
                     "optimizer.weight_decay=0.01", "resume_allow_changes=true")
    assert [r["momentum"] for r in read_csv(tmp_path / "steps.csv")] == ["0.9", "0.9", "0.5", "0.5"]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    decay = {g["name"]: (g["weight_decay"], g["momentum"]) for g in state["optimizer"]["param_groups"]}
    assert decay == {"decay": (0.01, 0.5), "no_decay": (0.0, 0.5)}
    assert state["config"]["optimizer"]["momentum"] == 0.5


def test_resume_with_another_optimizer_is_refused_in_one_line(tmp_path):
    train_in_process(tmp_path, *SMALL, "trainer.stop_after_steps=2")
    before = folder_bytes(tmp_path)
    with pytest.raises(ConfigError, match="trained with optimizer torch.optim.SGD and this config builds "
                                          "torch.optim.Adam; an optimizer's state cannot be carried"):
        train_in_process(tmp_path / "x", *SMALL, "optimizer=adam", f"resume={tmp_path}", "resume_allow_changes=true")
    assert folder_bytes(tmp_path) == before


def test_resume_that_changes_the_optimizer_state_layout_is_refused(tmp_path):
    """amsgrad=true makes Adam keep max_exp_avg_sq per parameter, which the run's state lacks."""
    train_in_process(tmp_path, *SMALL, "optimizer=adam", "trainer.stop_after_steps=2")
    with pytest.raises(ConfigError, match=r"optimizer.amsgrad=True changes what the optimizer keeps per parameter "
                                          r"\(the run had its default\)"):
        train_in_process(tmp_path / "x", *SMALL, "optimizer=adam", "+optimizer.amsgrad=true", f"resume={tmp_path}",
                         "resume_allow_changes=true")


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs in the killed code path."""


@pytest.mark.parametrize("instant", ["before last.pt is written", "after last.pt, before the CSVs are cut"])
def test_a_kill_during_a_rollback_resumes_exactly(tmp_path, monkeypatch, instant):
    """Step 5 (the first of epoch 2; 4 steps per epoch) gets a NaN gradient once; restore points
    every 3 steps, so the rollback goes back to step 3, behind epoch 1's last.pt (step 4). A run
    killed in the middle of that rollback continues (resume=) to the same steps.csv, epochs.csv
    and rollbacks as the run that was never killed."""
    import math

    import framework.build
    import framework.loggers
    import framework.trainer.checkpointing as checkpointing_module
    import framework.trainer.loop as loop_module

    build = framework.build.build

    def build_with_nan_at_step_5(cfg, run_dir, trackers=None):
        built = build(cfg, run_dir, trackers)
        trainer = built.trainer
        weight = next(trainer.model.parameters())
        weight.register_hook(lambda g: g * math.nan if trainer.global_step == 5 and not trainer.guard.rollbacks else g)
        return built

    monkeypatch.setattr(framework.build, "build", build_with_nan_at_step_5)
    args = [*RUN, "trainer.on_divergence=rollback", "trainer.log_every_n_steps=3", "trainer.grad_norm_every_n_steps=1"]
    train_in_process(tmp_path / "full", *args)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert full["status"] == "completed"
    assert [(r["diverged_step"], r["restored_step"]) for r in full["rollbacks"]] == [(5, 3)]

    rolling = {"on": False}
    roll_back = loop_module.Trainer._roll_back

    def killed_roll_back(self, exc):
        rolling["on"] = True
        roll_back(self, exc)

    def kill_if_rolling(original):
        def wrapper(*a, **k):
            if rolling["on"]:
                raise Killed()
            return original(*a, **k)
        return wrapper

    with monkeypatch.context() as m:
        m.setattr(loop_module.Trainer, "_roll_back", killed_roll_back)
        if instant.startswith("before"):
            m.setattr(checkpointing_module, "save_checkpoint", kill_if_rolling(checkpointing_module.save_checkpoint))
        else:
            m.setattr(framework.loggers, "truncate_csv", kill_if_rolling(framework.loggers.truncate_csv))
        with pytest.raises(Killed):
            train_in_process(tmp_path / "cut", *args)
    expected_last = 4 if instant.startswith("before") else 3
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["step"] == expected_last
    half_written = tmp_path / "cut" / "checkpoints" / "last.pt.tmp"  # as a SIGKILL mid-write leaves it
    half_written.write_bytes(b"PK\x03\x04")
    train_in_process(tmp_path / "x", *args, f"resume={tmp_path / 'cut'}")
    assert not half_written.exists()
    same_run(tmp_path / "full", tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["rollbacks"] == full["rollbacks"]


def test_a_plain_resume_leaves_no_new_folder(tmp_path):
    """resume=<run> from the command line logs into the run's own train.log; no folder holding
    only a log is left beside it."""
    from tests.helpers import run_cli_in_process

    run = tmp_path / "outputs" / "run"
    assert run_cli_in_process([*SMALL, "trainer.stop_after_steps=2"], run) == 0
    hydra_files = {p: p.read_bytes() for p in (run / ".hydra").iterdir()}
    assert run_cli_in_process([*SMALL, f"resume={run}"], None, cwd=tmp_path) == 0  # Hydra's default: ./outputs/runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["run"]
    assert {p: p.read_bytes() for p in (run / ".hydra").iterdir()} == hydra_files  # the run's own config kept
    assert "resumed at step 2" in (run / "train.log").read_text()
    assert [int(r["step"]) for r in read_csv(run / "steps.csv")] == [0, 1, 2, 3]


def test_sigterm_stops_at_a_step_boundary_with_a_resumable_checkpoint(tmp_path):
    args = [*TINY, "epochs=15", "device=cpu"]  # 4 steps per epoch, 60 in all
    train_in_process(tmp_path / "full", *args, "trainer.save_checkpoints=false")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and len(read_csv(run / "steps.csv") if (run / "steps.csv").exists() else []) < 20:
        time.sleep(0.2)  # until 20 steps are on disk, however long the machine takes
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == "SIGTERM" and summary["steps"] < 60
    assert (run / "checkpoints" / "last.pt").exists()
    train_in_process(tmp_path / "x", *args, f"resume={run}")
    same_run(tmp_path / "full", run)


@pytest.mark.parametrize("stop,every", [(3, 2), (10, 2), (4, 3)])
def test_rollback_run_stopped_and_resumed_equals_uninterrupted(tmp_path, stop, every):
    """The guard's restore points travel in the checkpoint: a resumed run rolls back to the same
    step with the same LR factor as the run that went on (also when the stop falls on an epoch's
    last step between two regular checks: 4 and 8 with checks every 3 steps)."""
    args = [*RUN, "lr0=1e6", "trainer.on_divergence=rollback", "trainer.rollback_lr_factor=0.01",
            "trainer.max_rollbacks=3", f"trainer.log_every_n_steps={every}"]
    train_in_process(tmp_path / "full", *args)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert full["status"] == "completed" and 1 <= len(full["rollbacks"]) <= 3
    cut = tmp_path / "cut"
    train_in_process(cut, *args, f"trainer.stop_after_steps={stop}")
    before = json.loads((cut / "summary.json").read_text())["rollbacks"]
    train_in_process(tmp_path / "x", *args, f"resume={cut}")
    after = json.loads((cut / "summary.json").read_text())
    assert after["status"] == "completed" and after["rollbacks"][: len(before)] == before
    assert after["rollbacks"] == full["rollbacks"]
    same_run(tmp_path / "full", cut)


def test_a_resume_may_change_how_often_the_gradient_norm_is_measured(tmp_path):
    """Stopped at step 6 measuring every 10th step (step 0 only), resumed measuring every step:
    not refused (nothing trained changes), and the norm is on step 0 and on steps 6-11."""
    train_in_process(tmp_path, *RUN, "trainer.stop_after_steps=6")
    train_in_process(tmp_path / "x", *RUN, "trainer.grad_norm_every_n_steps=1", f"resume={tmp_path}")
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert [bool(r["grad_norm"]) for r in rows] == [True] + [False] * 5 + [True] * 6


def test_resume_with_an_extra_column_keeps_the_rows(tmp_path):
    """A run folder whose steps.csv lacks a column the trainer now writes (grad_norm, from an
    earlier version) keeps its rows; the new column is empty for them."""
    import csv

    every = "trainer.grad_norm_every_n_steps=1"
    train_in_process(tmp_path, *RUN, every, "trainer.stop_after_steps=6")
    old = [{k: v for k, v in r.items() if k != "grad_norm"} for r in read_csv(tmp_path / "steps.csv")]
    with open(tmp_path / "steps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    train_in_process(tmp_path / "x", *RUN, every, f"resume={tmp_path}")
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert all(r["grad_norm"] == "" for r in rows[:6]) and all(r["grad_norm"] for r in rows[6:])


def test_training_time_adds_up_over_resumes(tmp_path):
    train_in_process(tmp_path, *RUN, "trainer.stop_after_steps=6")
    first = json.loads((tmp_path / "summary.json").read_text())["train_time_s"]
    train_in_process(tmp_path / "x", *RUN, f"resume={tmp_path}")
    total = json.loads((tmp_path / "summary.json").read_text())
    assert first > 0 and total["train_time_s"] > first and total["wall_time_s"] < total["train_time_s"] + 60


def test_wall_time_goes_on_from_the_checkpoint_even_without_the_summary(tmp_path):
    """The checkpoint records the run's wall time so far; a resume counts on from it even when
    the run folder has lost its summary.json (a Ray trial restored from its checkpoint). The
    checkpoint's value is set to 1000 s, far above what this run can take, so the resumed
    summary's figure can only come from it."""
    from framework.checkpoint import load_checkpoint, save_checkpoint

    train_in_process(tmp_path, *RUN, "trainer.stop_after_steps=6")
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    first = json.loads((tmp_path / "summary.json").read_text())["wall_time_s"]
    assert 0 < state["wall_time_s"] <= first  # saved at step 6, before the summary was written
    state["wall_time_s"] = 1000.0
    save_checkpoint(state, last)
    (tmp_path / "summary.json").unlink()
    train_in_process(tmp_path / "x", *RUN, f"resume={tmp_path}")
    total = json.loads((tmp_path / "summary.json").read_text())
    assert total["steps"] == 12 and 1000.0 < total["wall_time_s"] < 1000.0 + total["train_time_s"] + 600
    assert 1000.0 < load_checkpoint(last)["wall_time_s"] <= total["wall_time_s"]


def test_a_checkpoint_without_its_wall_time_counts_on_from_the_summary(tmp_path):
    """A checkpoint from before the wall time was recorded in it: the resume counts on from the
    ``wall_time_s`` of the run folder's summary.json (set to 1000 s, far above this run's)."""
    from framework.checkpoint import load_checkpoint, save_checkpoint

    train_in_process(tmp_path, *RUN, "trainer.stop_after_steps=6")
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["wall_time_s"]
    save_checkpoint(state, last)
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "wall_time_s": 1000.0}))
    train_in_process(tmp_path / "x", *RUN, f"resume={tmp_path}")
    total = json.loads((tmp_path / "summary.json").read_text())
    assert total["steps"] == 12 and 1000.0 < total["wall_time_s"] < 1000.0 + total["train_time_s"] + 600
