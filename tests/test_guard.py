"""Divergence guard: stop at the first bad step, or roll back and lower the LR."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from framework.checkpoint import load_checkpoint
from framework.trainer import Diverged, DivergenceGuard
from tests.conftest import TINY, read_csv, train_in_process
from tests.test_schedules import torch_lrs

RUN = [*TINY, "epochs=3", "device=cpu"]  # 4 steps per epoch, T = 12


def test_sgd_at_lr0_1000_stops_at_the_first_non_finite_step(tmp_path):
    with pytest.raises(Diverged) as info:
        train_in_process(tmp_path, *RUN, "lr0=1000")
    rows = read_csv(tmp_path / "steps.csv")
    losses = [float(r["loss"]) for r in rows]
    first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
    assert info.value.step == first_bad and all(math.isfinite(v) for v in losses[:first_bad])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == first_bad
    assert summary["diverged_lr"] == float(rows[first_bad]["lr"])
    for ckpt in (tmp_path / "checkpoints").glob("*.pt"):
        state = load_checkpoint(ckpt)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_rollback_recovers_and_finishes_with_a_lower_lr(tmp_path):
    train_in_process(tmp_path, *RUN, "lr0=1e6", "trainer.on_divergence=rollback",
                     "trainer.rollback_lr_factor=0.01", "trainer.max_rollbacks=3")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and 1 <= len(summary["rollbacks"]) <= 3
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    cosine = torch_lrs(lambda o: tls.CosineAnnealingLR(o, T_max=11, eta_min=1e6 * 0.01), 12, lr0=1e6)
    factor = [1.0] * 12
    for rb in summary["rollbacks"]:  # each rollback lowers the LR from the step it restored on
        for k in range(rb["restored_step"], 12):
            factor[k] = rb["lr_factor"]
    for k, row in enumerate(rows):
        assert float(row["lr"]) == pytest.approx(cosine[k] * factor[k], rel=1e-12)
    assert float(rows[-1]["lr"]) < 1e6 * 0.01  # finished below the planned final LR
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["lr_backoff"] == summary["rollbacks"][-1]["lr_factor"]


def test_exploding_loss_counts_as_divergence(tmp_path):
    with pytest.raises(Diverged, match="exploded past 5 x its best smoothed"):
        train_in_process(tmp_path, *RUN, "lr0=100", "trainer.divergence_loss_mult=5")


def test_guard_check_hand_worked():
    guard = DivergenceGuard(loss_mult=3.0, min_steps=2, beta=0.5)
    assert guard.check([0, 1, 2], [2.0, 2.0, 2.0], [None] * 3) is None  # smoothed best = 2
    assert guard.check([3, 4], [5.0, 7.0], [None, None]) == (1, "loss 7 exploded past 3 x its best smoothed 2")
    assert guard.check([5], [1.0], [float("inf")]) == (0, "gradient norm is not finite")
    with pytest.raises(ValueError, match="trainer.on_divergence=retry"):
        DivergenceGuard(policy="retry")



def test_stop_policy_takes_no_snapshots(tmp_path):
    """Snapshots copy the weights; with on_divergence=stop (default) none is ever taken."""
    from framework.run import build
    from tests.conftest import compose_cfg

    trainer = build(compose_cfg(*RUN, "trainer.save_checkpoints=false"), tmp_path)
    calls = []
    trainer.state_dict = lambda: calls.append(1) or {}
    trainer.fit()
    assert calls == [] and trainer.guard.snapshot is None
