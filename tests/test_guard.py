"""Divergence guard: stop at the first bad step, or roll back and lower the LR."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from framework.checkpoint import load_checkpoint
from framework.trainer import Diverged, DivergenceGuard
from tests.helpers import TINY, build_run, read_csv, train_in_process
from tests.test_schedules import torch_lrs

RUN = [*TINY, "epochs=3", "device=cpu"]  # 4 steps per epoch, T = 12


def test_sgd_at_lr0_1000_stops_at_the_first_non_finite_step(tmp_path):
    with pytest.raises(Diverged) as info:
        train_in_process(tmp_path, *RUN, "lr0=1000", "trainer.grad_norm_every_n_steps=1")
    rows = read_csv(tmp_path / "steps.csv")
    finite = [math.isfinite(float(r["loss"])) and math.isfinite(float(r["grad_norm"])) for r in rows]
    first_bad = len(rows) - 1  # the log ends at the diverging step: every row before it is finite
    assert finite[:first_bad] == [True] * first_bad and [int(r["step"]) for r in rows] == list(range(len(rows)))
    assert info.value.step == first_bad
    # its own loss or gradient is not finite, or (last step of an epoch) the weights it made are not
    assert not finite[-1] or info.value.reason == "validation loss is not finite"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == first_bad
    assert summary["diverged_lr"] == float(rows[first_bad]["lr"]) == summary["last_lr"]
    assert summary["steps"] == first_bad + 1  # steps run after it (before the check) are not counted
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
    factors = [rb["lr_backoff"] for rb in summary["rollbacks"]]
    assert factors == pytest.approx([0.01 ** (i + 1) for i in range(len(factors))], rel=1e-12)  # 0.01, 1e-4, ...
    assert all(rb["restored_step"] <= rb["diverged_step"] for rb in summary["rollbacks"])
    for rb in summary["rollbacks"]:  # each rollback lowers the LR from the step it restored on
        for k in range(rb["restored_step"], 12):
            factor[k] = rb["lr_backoff"]
    for k, row in enumerate(rows):
        assert float(row["lr"]) == pytest.approx(cosine[k] * factor[k], rel=1e-12)
    assert float(rows[-1]["lr"]) < 1e6 * 0.01  # finished below the planned final LR
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["lr_backoff"] == summary["rollbacks"][-1]["lr_backoff"]
    # the back-off multiplies the plan's LR; the groups' base LR stays lr0 (1e6) through every rollback
    assert [g["initial_lr"] for g in last["optimizer"]["param_groups"]] == [1e6, 1e6]


def test_exploding_loss_counts_as_divergence(tmp_path):
    with pytest.raises(Diverged, match="exploded past 5 x its best smoothed"):
        train_in_process(tmp_path, *RUN, "lr0=30", "trainer.divergence_loss_mult=5")


def test_guard_check_hand_worked():
    guard = DivergenceGuard(loss_mult=3.0, min_steps=2, beta=0.5)
    assert guard.check([0, 1, 2], [2.0, 2.0, 2.0], [None] * 3) is None  # smoothed best = 2
    assert guard.check([3, 4], [5.0, 7.0], [None, None]) == (1, "loss 7 exploded past 3 x its best smoothed 2")
    assert guard.check([5], [1.0], [float("inf")]) == (0, "gradient norm is not finite")
    with pytest.raises(ValueError, match="trainer.on_divergence=retry"):
        DivergenceGuard(policy="retry")



def test_stop_policy_takes_no_snapshots(tmp_path):
    """Snapshots copy the weights; with on_divergence=stop (default) none is ever taken."""
    trainer = build_run(tmp_path, *RUN, "trainer.save_checkpoints=false").trainer
    calls = []
    trainer.state_dict = lambda: calls.append(1) or {}
    trainer.fit()
    assert calls == [] and trainer.guard.snapshot is None


def _train_with(monkeypatch, tmp_path, hook, *overrides):
    """Train through ``framework.run.train`` with ``hook(trainer)`` applied to the built trainer."""
    import framework.build

    build = framework.build.build

    def build_and_hook(cfg, run_dir, trackers=None):
        built = build(cfg, run_dir, trackers)
        hook(built.trainer)
        return built

    monkeypatch.setattr(framework.build, "build", build_and_hook)
    return train_in_process(tmp_path, *RUN, *overrides)


def nan_gradient_on_backward(n):
    """A build hook for :func:`_train_with`: the first weight's gradient is NaN on the ``n``-th
    backward pass (1-based; one per step here), its loss finite."""
    calls = []

    def poison(trainer):
        weight = next(trainer.model.parameters())
        weight.register_hook(lambda g: calls.append(1) or (g * math.nan if len(calls) == n else g))
    return poison


def test_a_nan_gradient_with_a_finite_loss_stops_at_its_step(monkeypatch, tmp_path):
    """Step 5's backward yields a NaN gradient while its loss is finite (log read every 4 steps):
    the run stops at step 5, the log ends there and no later row is written."""
    poison = nan_gradient_on_backward(6)  # step 5's

    with pytest.raises(Diverged) as info:
        _train_with(monkeypatch, tmp_path, poison, "trainer.log_every_n_steps=4", "trainer.grad_norm_every_n_steps=1")
    assert (info.value.step, info.value.reason) == (5, "gradient norm is not finite")
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert math.isfinite(float(rows[5]["loss"])) and math.isnan(float(rows[5]["grad_norm"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["diverged_step"]) == ("diverged", 5)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4  # epoch 1's, all finite


def test_a_nan_gradient_on_a_step_without_its_norm_stops_at_the_next_step(monkeypatch, tmp_path):
    """The same NaN gradient at step 5 with the norm measured on steps 0 and 4 only (every 4th):
    SGD writes it into the weights, so step 6's loss is NaN and the run stops there; step 5's row
    has no norm, and the last checkpoint is still epoch 1's."""
    poison = nan_gradient_on_backward(6)  # step 5's

    with pytest.raises(Diverged) as info:
        _train_with(monkeypatch, tmp_path, poison, "trainer.grad_norm_every_n_steps=4")
    assert (info.value.step, info.value.reason) == (6, "loss is not finite")
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert [bool(r["grad_norm"]) for r in rows] == [True, False, False, False, True, False, False]
    assert math.isfinite(float(rows[5]["loss"])) and math.isnan(float(rows[6]["loss"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["diverged_step"]) == ("diverged", 6)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4


def test_a_nan_gradient_before_an_unvalidated_checkpoint_never_reaches_it(monkeypatch, tmp_path):
    """The NaN gradient on step 3, epoch 0's last step (not measured: every 10th step), with
    validation every 2 epochs: no later loss is read before epoch 0's last.pt would be written,
    so the check of the weights before it stops the run at step 3 and no checkpoint exists."""
    poison = nan_gradient_on_backward(4)  # step 3's

    with pytest.raises(Diverged) as info:
        _train_with(monkeypatch, tmp_path, poison, "trainer.val_every_n_epochs=2")
    assert (info.value.step, info.value.reason) == (3, "the weights after it are not finite")
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3] and all(math.isfinite(float(r["loss"])) for r in rows)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["diverged_step"]) == ("diverged", 3)


def test_a_rollback_after_an_unmeasured_nan_gradient_goes_back_to_a_proven_state(monkeypatch, tmp_path):
    """The NaN gradient of step 5 (not measured) with the rollback policy: found at step 6 by its
    loss. Restore points are offered at the start (trusted) and at epoch 0's end (k = 4), which
    becomes the restore point only when the next one is offered (epoch 1's end, never reached): so
    the run goes back to k = 0 once, and completes its 12 steps with finite weights."""
    def poison(trainer):
        weight = next(trainer.model.parameters())
        weight.register_hook(lambda g: g * math.nan if trainer.global_step == 5 and not trainer.guard.rollbacks else g)

    _train_with(monkeypatch, tmp_path, poison, "trainer.on_divergence=rollback")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [(r["diverged_step"], r["restored_step"], r["reason"]) for r in summary["rollbacks"]] == [
        (6, 0, "loss is not finite")]
    assert [int(r["step"]) for r in read_csv(tmp_path / "steps.csv")] == list(range(12))
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_non_finite_validation_loss_is_divergence(monkeypatch, tmp_path):
    """Finite training losses, but the weights after epoch 2's last step (k = 7) give an inf
    validation loss: diverged at step 7, and no checkpoint of that epoch is written."""
    def overflow_in_eval(trainer):
        trainer.model.register_forward_hook(lambda m, i, out: out if m.training or trainer.epoch < 1 else out * math.inf)

    with pytest.raises(Diverged) as info:
        _train_with(monkeypatch, tmp_path, overflow_in_eval)
    assert (info.value.step, info.value.reason) == (7, "validation loss is not finite")
    assert len(read_csv(tmp_path / "epochs.csv")) == 1
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4
