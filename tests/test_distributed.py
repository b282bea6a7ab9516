"""Data-parallel training through torchrun: 2 CPU processes with Gloo (tests/ddp_worker.py logs
each rank's applied LRs and final weights)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import HANG_GUARD_S, ROOT, TINY, read_csv, run_cli_in_process, train_in_process

pytestmark = pytest.mark.slow  # end-to-end: train.py in subprocesses (deselect with -m "not slow")

# 250 training samples: padded to 252, 126 per rank = 8 batches of 16 per epoch (the last of 14);
# the single process with the same global batch (32) also takes 8 steps per epoch (7 x 32 + 26).
# T = 16. 63 validation samples: 32 on rank 0, 31 on rank 1. Linear LR scaling by the global
# batch: lr0 x 32 / 64 = 0.025 (a rank's own batch, 16, would give 0.0125).
RUN = [*[o for o in TINY if not o.startswith(("dataset.train_size", "dataset.val_size"))],
       "dataset.train_size=250", "dataset.val_size=63", "batch_size=16", "epochs=2", "device=cpu", "warmup_epochs=0.5", "lrf=0.1", "lr0=0.05",
       "trainer.log_every_n_steps=4", "lr_scaling=linear", "lr_base_size=64"]


def torchrun(args: list[str], cwd: Path, probe_dir: Path, **faults: int) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py <args>`` from ``cwd``."""
    env = {**os.environ, "PROBE_DIR": str(probe_dir), "OMP_NUM_THREADS": "1",
           **{f"PROBE_{k.upper()}": str(v) for k, v in faults.items()}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "ddp_worker.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def per_rank(probe_dir: Path) -> tuple[list, list]:
    """Each rank's ``[[k, [lr of every group]], ...]`` and final weights."""
    lrs = [json.loads((probe_dir / f"lrs_rank{r}.json").read_text()) for r in range(2)]
    weights = [torch.load(probe_dir / f"weights_rank{r}.pt") for r in range(2)]
    return lrs, weights


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run, started without hydra.run.dir (Hydra's timestamped folder)."""
    cwd = tmp_path_factory.mktemp("ddp")
    result = torchrun(RUN, cwd, cwd / "probe")
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p for p in (cwd / "outputs" / "runs").glob("*/*") if p.is_dir())
    return cwd, folders, result


def test_two_ranks_one_folder_same_lrs_as_one_process(ddp_run, tmp_path):
    cwd, folders, _ = ddp_run
    assert len(folders) == 1, folders  # both ranks wrote into rank 0's folder
    run_dir = folders[0]
    lrs, weights = per_rank(cwd / "probe")
    assert [k for k, _ in lrs[0]] == list(range(16))  # T = 2 epochs x 8 steps, on every rank
    assert lrs[0] == lrs[1]  # every group's LR, every step, bit for bit
    assert_same_weights(weights[0], weights[1])  # parameters and batch-norm buffers
    rows = read_csv(run_dir / "steps.csv")  # written once (rank 0): one row per step
    assert [int(r["step"]) for r in rows] == list(range(16))
    assert [float(r["lr"]) for r in rows] == [g[0] for _, g in lrs[0]]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["planned_steps"] == 16
    assert len(read_csv(run_dir / "epochs.csv")) == 2
    # the logged validation metrics are those of the whole validation set: one process evaluating the
    # saved weights (the last epoch's) on all 63 samples gets the same
    from framework.checkpoint import load_checkpoint
    from tests.helpers import build_run

    trainer = build_run(tmp_path / "eval", *RUN).trainer
    trainer.model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    last = read_csv(run_dir / "epochs.csv")[-1]
    metrics = trainer.evaluate()
    assert metrics["val/acc"] == float(last["val/acc"])
    assert metrics["val/loss"] == pytest.approx(float(last["val/loss"]), rel=1e-6)
    # one process with the same global batch (2 x 16) applies the same LRs
    single = tmp_path / "single"
    train_in_process(single, *[o for o in RUN if not o.startswith("batch_size")], "batch_size=32")
    assert [float(r["lr"]) for r in read_csv(single / "steps.csv")] == [float(r["lr"]) for r in rows]
    # by hand, with the scaled lr0 = 0.025: warmup 4 steps from 0.1*lr0, then cosine from lr0 to lr0*lrf
    # over steps 4..15
    import math

    expected = [0.025 * (0.1 + 0.9 * k / 4) for k in range(4)] + [
        0.0025 + 0.5 * (0.025 - 0.0025) * (1 + math.cos(math.pi * (k - 4) / 11)) for k in range(4, 16)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-12)


@pytest.mark.long
def test_rank_stop_resume_equals_uninterrupted_run(ddp_run, tmp_path):
    cwd, folders, _ = ddp_run
    run_dir = tmp_path / "run"
    stop = torchrun([*RUN, f"hydra.run.dir={run_dir}"], tmp_path, tmp_path / "probe_stop", sigterm_at=5)
    assert stop.returncode == 0, stop.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 6  # SIGTERM on rank 1 stopped both after step 5
    lrs, weights = per_rank(tmp_path / "probe_stop")
    assert [k for k, _ in lrs[0]] == [k for k, _ in lrs[1]] == list(range(6))
    assert_same_weights(weights[0], weights[1])

    again = torchrun([*RUN, f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume_log'}"], tmp_path,
                     tmp_path / "probe_resume")
    assert again.returncode == 0, again.stderr[-12000:]
    lrs, weights = per_rank(tmp_path / "probe_resume")
    assert [k for k, _ in lrs[0]] == list(range(6, 16)) and lrs[0] == lrs[1]
    assert_same_weights(weights[0], weights[1])
    _, full_weights = per_rank(cwd / "probe")
    assert_same_weights(weights[0], full_weights[0])  # the same weights as the run that was not stopped
    full = folders[0]
    assert read_csv(run_dir / "steps.csv") == read_csv(full / "steps.csv")
    drop_time = [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(run_dir / "epochs.csv")]
    assert drop_time == [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(full / "epochs.csv")]


@pytest.mark.long
def test_nan_on_one_rank_rolls_back_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    result = torchrun([*RUN, "epochs=1", "trainer.on_divergence=rollback", "trainer.log_every_n_steps=2",
                       f"hydra.run.dir={run_dir}"], tmp_path, tmp_path / "probe", nan_at=5)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    # restore points are offered at steps 2, 4, ... (log_every_n_steps=2), each trusted once the next is
    # offered: at step 5 the last trusted one is step 2's
    assert [(r["diverged_step"], r["restored_step"], r["lr_backoff"]) for r in summary["rollbacks"]] == [(5, 2, 0.5)]
    lrs, weights = per_rank(tmp_path / "probe")
    # steps 0-5 ran, 5 diverged (rank 1's NaN batch, seen by both through the averaged gradient), 2-7 ran again
    assert [k for k, _ in lrs[0]] == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7] and lrs[0] == lrs[1]
    assert lrs[0][6][1][0] == pytest.approx(0.5 * lrs[0][2][1][0], rel=1e-12)  # step 2 again, at half the LR
    assert_same_weights(weights[0], weights[1])
    assert all(torch.isfinite(v).all() for v in weights[0].values() if v.is_floating_point())


@pytest.mark.long
def test_an_error_on_one_rank_ends_the_run_without_hanging(tmp_path):
    """Rank 1 raises at step 10 (epoch 2; epoch 1's checkpoint exists): rank 0 records the failure,
    names the checkpoint to resume from, and torchrun ends with an error instead of waiting."""
    run_dir = tmp_path / "run"
    result = torchrun([*RUN, f"hydra.run.dir={run_dir}"], tmp_path, tmp_path / "probe", raise_at=10)
    assert result.returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert f"the last checkpoint is {run_dir / 'checkpoints' / 'last.pt'} (step 8: the resume redoes the steps after " \
           "it); continue with: torchrun --standalone " \
           f"--nproc_per_node=2 {ROOT / 'train.py'} " in result.stderr  # the script as started, from outside ROOT
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["step"] == 8  # the epoch end


def test_resume_with_another_world_size_is_refused(ddp_run, tmp_path, capfd):
    _, folders, _ = ddp_run
    before = (folders[0] / "checkpoints" / "last.pt").read_bytes()
    status = run_cli_in_process([*RUN, f"resume={folders[0]}"], tmp_path / "one")
    err = capfd.readouterr().err
    assert status == 2
    assert "trained by 2 process(es) and this is 1" in err and "--nproc_per_node = 2" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert (folders[0] / "checkpoints" / "last.pt").read_bytes() == before


def test_sync_batchnorm_and_range_test_refused_where_they_cannot_work(tmp_path, monkeypatch):
    """Checked before anything is built: SyncBatchNorm on the CPU, the range test in a world of 2."""
    from framework import distributed
    from framework.errors import ConfigError
    from framework.run import train
    from tests.helpers import build_run, compose_cfg

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="trainer.sync_batchnorm=true: torch.nn.SyncBatchNorm needs CUDA"):
        build_run(tmp_path / "a", *RUN, "trainer.sync_batchnorm=true")
    for override in ("lr0=auto", "mode=lr_find"):
        with pytest.raises(ConfigError, match=f"{override}: the LR range test runs in one process"):
            train(compose_cfg(*RUN, override), tmp_path / "b")
    assert not (tmp_path / "b" / "steps.csv").exists()


def test_a_signal_during_the_stop_vote_waits_for_the_next_step(monkeypatch):
    """The ranks stop on the all-reduced request only: a SIGTERM handled on this rank after the
    vote (here: during it) does not stop it alone; the next step's vote stops every rank, and
    the strongest request (SIGUSR2, which submitit needs on rank 0) is every rank's reason."""
    from types import SimpleNamespace

    from framework import distributed
    from framework.trainer import StopSignals

    votes = []

    def vote(value):  # what the other rank sends: nothing, nothing, SIGUSR2 (code 3)
        votes.append(value)
        if len(votes) == 1:
            me.request = "SIGTERM"  # arrives while the first vote is in flight
        return max(value, [0, 0, 3][len(votes) - 1])

    monkeypatch.setattr(distributed, "max_over_ranks", vote)
    me = SimpleNamespace(world_size=2, request=None, stop_after_steps=None, global_step=3)
    assert StopSignals.should_stop(me) is False and me.request == "SIGTERM"  # pending, not acted on
    assert StopSignals.should_stop(me) is True and votes == [0, 2] and me.request == "SIGTERM"
    me.request = None
    assert StopSignals.should_stop(me) is True and votes[-1] == 0 and me.request == "SIGUSR2"

