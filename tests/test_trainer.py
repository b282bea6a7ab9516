"""The loop honours the LR contract: T from the real loader, logged LR = applied LR, exact tables."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from framework.checkpoint import load_checkpoint
from framework.trainer import group_sizes
from tests.helpers import TINY, build_run, read_csv, train_in_process
from tests.test_schedules import FILE_INPUTS, assert_close, torch_lrs

LR0, LRF = 0.1, 0.01

# 1000 samples, batch 64 -> 16 batches (the last one of 40), accumulation 4 -> 4 steps/epoch, T=12
ACCUM_RUN = [*TINY, "dataset.train_size=1000", "batch_size=64", "trainer.accumulate_grad_batches=4",
             "epochs=3", f"lr0={LR0}", f"lrf={LRF}", "warmup_epochs=0", "trainer.save_checkpoints=false"]

REFERENCES = {
    "cosine": lambda T: (lambda o: tls.CosineAnnealingLR(o, T_max=T - 1, eta_min=LR0 * LRF)),
    "linear": lambda T: (lambda o: tls.LinearLR(o, start_factor=1.0, end_factor=LRF, total_iters=T - 1)),
    "onecycle": lambda T: (lambda o: tls.OneCycleLR(o, max_lr=LR0, total_steps=T, final_div_factor=1 / (25 * LRF),
                                                    cycle_momentum=False)),
    "step": lambda T: (lambda o: tls.StepLR(o, step_size=5, gamma=0.5)),
    "multistep": lambda T: (lambda o: tls.MultiStepLR(o, milestones=[3, 7], gamma=0.1)),
}
SCHED_ARGS = {
    "step": ["scheduler.interval=step", "scheduler.step_size=5", "scheduler.gamma=0.5"],
    "multistep": ["scheduler.interval=step", "scheduler.milestones=[3,7]", "scheduler.gamma=0.1"],
}


def test_total_norm_hand_worked_and_against_vector_norm():
    from framework.trainer.steps import total_norm

    # by hand: |(3, 4)| = 5 with a second tensor (12,) -> sqrt(9 + 16 + 144) = 13
    assert total_norm([torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])]).item() == pytest.approx(13.0, rel=1e-7)
    assert total_norm([torch.tensor([3.0, -4.0])], math.inf).item() == 4.0
    assert total_norm([]).item() == 0.0
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(64, 3, 7, 7, generator=g), torch.randn(10, generator=g, dtype=torch.float64).float(),
             torch.randn(8, 4, 3, 3, generator=g).to(memory_format=torch.channels_last)]  # the last one not contiguous
    reference = torch.linalg.vector_norm(torch.cat([t.reshape(-1).double() for t in grads]))
    assert total_norm(grads).item() == pytest.approx(reference.item(), rel=1e-6)
    assert total_norm(grads[:2]).item() == pytest.approx(torch.linalg.vector_norm(
        torch.cat([t.reshape(-1).double() for t in grads[:2]])).item(), rel=1e-6)
    for bad in (float("nan"), float("inf")):
        assert not math.isfinite(total_norm([grads[0], torch.tensor([1.0, bad])]).item())


def test_group_sizes_hand_worked():
    assert group_sizes(1000, 64, 4) == [256, 256, 256, 232]
    assert group_sizes(256, 8, 4) == [32] * 8
    assert group_sizes(10, 3, 2) == [6, 4]


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_logged_lr_equals_pytorch_reference_with_accumulation(tmp_path, name):
    train_in_process(tmp_path, *ACCUM_RUN, f"scheduler={name}", *SCHED_ARGS.get(name, []))
    rows = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(12))  # T = 3 epochs x 4 steps
    assert [int(r["epoch"]) for r in rows] == [0] * 4 + [1] * 4 + [2] * 4
    lrs = [float(r["lr"]) for r in rows]
    assert_close(lrs, torch_lrs(REFERENCES[name](12), 12))
    assert all(float(r["lr/no_decay"]) == float(r["lr"]) for r in rows)
    if name in ("cosine", "linear", "onecycle"):
        assert lrs[11] == LR0 * LRF
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == summary["planned_steps"] == 12


def test_onecycle_accumulation_example_peaks_at_lr0(tmp_path):
    """T = 12; pct_start=0.25 puts the end of the rise on step 2, which applies lr0 exactly."""
    train_in_process(tmp_path, *ACCUM_RUN, "scheduler=onecycle", "scheduler.pct_start=0.25")
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "steps.csv")]
    assert len(lrs) == 12 and max(lrs) == lrs[2] == LR0 and lrs[11] == LR0 * LRF


def test_step_schedule_accumulation_equals_large_batch(tmp_path):
    """256 samples, batch 8 x accumulation 4 = batch 32: T = 8, LR halves every 2 steps."""
    common = [*TINY, "dataset.train_size=256", "epochs=1", "lr0=0.1", "warmup_epochs=0", "scheduler=step",
              "scheduler.interval=step", "scheduler.step_size=2", "scheduler.gamma=0.5",
              "trainer.save_checkpoints=false"]
    expected = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125]
    train_in_process(tmp_path / "a", *common, "batch_size=8", "trainer.accumulate_grad_batches=4")
    train_in_process(tmp_path / "b", *common, "batch_size=32")
    for run in ("a", "b"):
        assert [float(r["lr"]) for r in read_csv(tmp_path / run / "steps.csv")] == expected


def test_max_steps_caps_the_run_and_the_schedule_horizon(tmp_path):
    train_in_process(tmp_path, *TINY, "batch_size=32", "epochs=5", "max_steps=11", "warmup_steps=3",
                     "scheduler=cosine", "lr0=0.1", "lrf=0.01", "trainer.save_checkpoints=false")
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "steps.csv")]
    assert len(lrs) == 11
    assert lrs[:3] == pytest.approx([0.01, 0.04, 0.07], abs=1e-15)  # 0.1*(0.1 + 0.9*k/3)
    assert lrs[3] == 0.1 and lrs[10] == 0.1 * 0.01
    assert len(read_csv(tmp_path / "epochs.csv")) == 2  # 8 steps per epoch: 11 steps end in epoch 1


def test_epoch_interval_multistep_per_epoch_lrs(tmp_path):
    """multistep milestones=[4] gamma=0.1 lr0=0.1 epochs=6: epoch LRs 0.1 x4 then 0.01 x2."""
    train_in_process(tmp_path, *TINY, "batch_size=64", "epochs=6", "lr0=0.1", "warmup_epochs=0",
                     "scheduler=multistep", "scheduler.milestones=[4]", "scheduler.gamma=0.1",
                     "trainer.save_checkpoints=false")
    epoch_lrs = [float(r["lr"]) for r in read_csv(tmp_path / "epochs.csv")]
    assert epoch_lrs == pytest.approx([0.1] * 4 + [0.01] * 2, rel=1e-15)
    steps = read_csv(tmp_path / "steps.csv")
    assert all(float(r["lr"]) == epoch_lrs[int(r["epoch"])] for r in steps)


def test_run_folder_contents(tmp_path):
    objective = train_in_process(tmp_path, *TINY, "epochs=2", "trainer.gradient_clip_val=1.0")
    assert {"steps.csv", "epochs.csv", "summary.json", "lr.png", "checkpoints"} <= {p.name for p in tmp_path.iterdir()}
    steps = read_csv(tmp_path / "steps.csv")
    assert list(steps[0]) == ["step", "epoch", "lr", "lr/no_decay", "momentum", "loss", "grad_norm", "clipped",
                              "update_ratio", "update_ratio/no_decay"]  # the LR doctor's, every 25th step
    assert len(steps) == 8 and all(math.isfinite(float(r["loss"])) for r in steps)
    assert float(steps[0]["update_ratio"]) > 0 and all(r["update_ratio"] == "" for r in steps[1:])
    epochs = read_csv(tmp_path / "epochs.csv")
    assert list(epochs[0]) == ["epoch", "train/loss", "val/loss", "val/acc", "val/acc_top5", "lr", "time_s"]  # 10 classes
    assert len(epochs) == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["objective_name"], summary["objective_mode"]) == ("val/acc", "max")  # the default task's
    assert summary["objective"] == objective == max(float(r["val/acc"]) for r in epochs)
    assert summary["best"]["val/acc"] == objective and summary["final"]["epoch"] == 1
    assert set(summary) >= {"git_commit", "git_dirty", "wall_time_s", "steps", "overrides"}
    assert summary["last_lr"] == float(steps[-1]["lr"])
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "checkpoints" / name)
        assert set(state) >= {"model", "optimizer", "step", "epoch"}
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 8
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_same_seed_same_numbers_on_cpu(tmp_path):
    args = [*TINY, "epochs=2", "trainer.save_checkpoints=false", "device=cpu"]
    train_in_process(tmp_path / "a", *args)
    train_in_process(tmp_path / "b", *args)
    train_in_process(tmp_path / "c", *args, "seed=1")
    a, b, c = (read_csv(tmp_path / r / "steps.csv") for r in "abc")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


def test_bf16_on_cpu_trains(tmp_path):
    # 32 px: at 16 px the last stage convolves a 1x1 map with stride 2, where PyTorch 2.14's CPU
    # bf16 convolution backward returns NaN weight gradients in about 2 runs of 5 (the guard stops them)
    train_in_process(tmp_path, *TINY, "dataset.img_size=32", "epochs=1", "trainer.precision=bf16",
                     "trainer.save_checkpoints=false", "trainer.grad_norm_every_n_steps=1")
    rows = read_csv(tmp_path / "steps.csv")
    assert len(rows) == 4 and all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["grad_norm"])) for r in rows)


def test_accumulation_gives_the_large_batch_losses(tmp_path):
    """With no batch-dependent layers (ViT: LayerNorm), batch 8 x 4 with a last partial group
    trains exactly like batch 32: same step losses (weighted micro-batch losses)."""
    common = [*TINY, "model.name=test_vit", "dataset.train_size=200", "epochs=2", "optimizer=adamw",
              "lr0=0.001", "trainer.save_checkpoints=false", "device=cpu"]
    train_in_process(tmp_path / "a", *common, "batch_size=8", "trainer.accumulate_grad_batches=4")
    train_in_process(tmp_path / "b", *common, "batch_size=32")
    a, b = (read_csv(tmp_path / r / "steps.csv") for r in "ab")
    assert len(a) == len(b) == 14  # 200/32 -> 7 steps per epoch, the last of 8 samples
    for ra, rb in zip(a, b):
        assert ra["lr"] == rb["lr"]
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-4, abs=1e-6)


def test_divergence_is_detected_at_its_step_and_reported(tmp_path):
    from framework.trainer import Diverged

    with pytest.raises(Diverged) as info:
        train_in_process(tmp_path, *TINY, "epochs=3", "lr0=1e6", "warmup_epochs=0")
    rows = read_csv(tmp_path / "steps.csv")
    first_bad = next(int(r["step"]) for r in rows if not math.isfinite(float(r["loss"])))
    assert info.value.step == first_bad
    assert info.value.lr == float(rows[first_bad]["lr"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == first_bad
    assert summary["objective"] == 0.0
    for ckpt in (tmp_path / "checkpoints").glob("*.pt"):  # none after the divergence
        state = load_checkpoint(ckpt)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_last_batch_of_one_sample_is_dropped_for_batchnorm(tmp_path):
    """65 samples, batch 64: the 1-sample batch would crash BatchNorm; it is dropped, T = 1/epoch."""
    train_in_process(tmp_path, *TINY, "dataset.train_size=65", "batch_size=64", "epochs=2",
                     "trainer.save_checkpoints=false")
    assert [int(r["step"]) for r in read_csv(tmp_path / "steps.csv")] == [0, 1]


def test_short_warmup_epochs_is_never_dropped(tmp_path):
    """warmup_epochs=0.05 of 4 steps/epoch rounds to 0 steps; it becomes 1 step (LR lr0*s at step 0)."""
    train_in_process(tmp_path, *TINY, "epochs=2", "warmup_epochs=0.05", "lr0=0.1", "scheduler=constant",
                     "trainer.save_checkpoints=false")
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "steps.csv")]
    assert lrs[0] == pytest.approx(0.01, abs=1e-15) and lrs[1:] == [0.1] * 7


def test_cyclic_with_adam_cycles_beta1_and_logs_it(tmp_path):
    """cyclic + Adam must not crash; the momentum column is beta1, as CyclicLR sets it."""
    train_in_process(tmp_path, *TINY, "optimizer=adam", "scheduler=cyclic", "scheduler.step_size_up=2",
                     "lr0=0.01", "lrf=0.1", "epochs=2", "trainer.save_checkpoints=false")
    rows = read_csv(tmp_path / "steps.csv")
    ref_lr, ref_m = [], []
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = tls.CyclicLR(opt, base_lr=0.001, max_lr=0.01, step_size_up=2, base_momentum=0.8, max_momentum=0.9)
    for _ in rows:
        ref_lr.append(opt.param_groups[0]["lr"])
        ref_m.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert_close([float(r["lr"]) for r in rows], ref_lr)
    assert_close([float(r["momentum"]) for r in rows], ref_m)


def test_sgd_momentum_is_logged_and_warmed_up(tmp_path):
    train_in_process(tmp_path, *TINY, "epochs=2", "warmup_steps=4", "warmup_momentum=0.5",
                     "trainer.save_checkpoints=false")
    moms = [float(r["momentum"]) for r in read_csv(tmp_path / "steps.csv")]
    assert moms == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9], abs=1e-15)


def test_plateau_in_a_run_follows_reduce_lr_on_plateau_and_checkpoints_its_state(tmp_path):
    """The epoch LRs of a plateau run equal ReduceLROnPlateau fed the val/loss the run logged."""
    train_in_process(tmp_path, *TINY, "epochs=6", "scheduler=plateau", "scheduler.patience=0",
                     "scheduler.factor=0.5", "scheduler.threshold=0.05", "lr0=0.05", "lrf=0.1")
    epochs = read_csv(tmp_path / "epochs.csv")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    ref_sched = tls.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0, threshold=0.05, min_lr=0.005)
    ref = []
    for row in epochs:
        ref.append(opt.param_groups[0]["lr"])
        ref_sched.step(float(row["val/loss"]))
    assert_close([float(r["lr"]) for r in epochs], ref)
    assert len(set(ref)) > 1  # the run did reduce at least once
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["plan"]
    assert state["multiplier"] * 0.05 == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
    assert state["best"] == pytest.approx(ref_sched.best)


def test_group_lrs_and_batch_scaling_in_steps_csv(tmp_path):
    """head_lr_mult=10 and lr_scaling=linear (batch 128 / 256 = 0.5): every group follows one shape."""
    train_in_process(tmp_path, *TINY, "epochs=2", "batch_size=128", "lr0=0.1", "lr_scaling=linear",
                     "optimizer.head_lr_mult=10", "trainer.save_checkpoints=false")
    rows = read_csv(tmp_path / "steps.csv")
    ref = torch_lrs(lambda o: tls.CosineAnnealingLR(o, T_max=3, eta_min=0.05 * 0.01), 4, lr0=0.05)
    assert_close([float(r["lr"]) for r in rows], ref)
    assert_close([float(r["lr/head"]) for r in rows], [10 * v for v in ref])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lr0"] == 0.1 and summary["lr0_effective"] == 0.05


def test_schedule_free_optimizer_is_switched_to_its_averaged_weights_for_eval(tmp_path):
    """A run with sgd_schedulefree trains in train mode and evaluates and saves in eval mode."""
    trainer = build_run(tmp_path, *TINY, "optimizer=sgd_schedulefree", "epochs=2", "trainer.save_checkpoints=true").trainer
    modes = []  # (model.training, optimizer train_mode) at every forward pass
    trainer.model.register_forward_hook(
        lambda m, i, o: modes.append((m.training, trainer.optimizer.param_groups[0]["train_mode"])))
    trainer.fit()
    assert {mode for training, mode in modes if training} == {True}  # steps at the train point
    assert {mode for training, mode in modes if not training} == {False}  # eval at the averaged point
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_ultralytics_experiment_bias_warmup_in_steps_csv(tmp_path):
    """+experiment=ultralytics, 5 epochs of 4 steps, 3 warmup epochs (W = 12): the bias LR falls
    from 0.1 while the others rise toward lr0*lf(epoch), lf(t) = 0.01 + 0.99*(1 - t/4), momentum
    rises 0.8 -> 0.937, then per-epoch decay to lr0*lrf."""
    train_in_process(tmp_path, *TINY, "+experiment=ultralytics", "epochs=5", "trainer.save_checkpoints=false")
    rows = read_csv(tmp_path / "steps.csv")
    assert float(rows[0]["lr/bias"]) == 0.1 and float(rows[0]["lr"]) == pytest.approx(0.001, abs=1e-15)
    assert float(rows[0]["momentum"]) == 0.8
    assert float(rows[6]["momentum"]) == pytest.approx(0.8 + 0.137 * 6 / 12, abs=1e-12)
    lf = [0.01 + 0.99 * (1 - t / 4) for t in range(5)]
    assert_close([float(r["lr"]) for r in rows[:12]],
                 [0.01 * (0.1 + (lf[k // 4] - 0.1) * k / 12) for k in range(12)], tol=1e-15)
    assert_close([float(r["lr"]) for r in rows[12:]], [0.01 * lf[3]] * 4 + [0.01 * 0.01] * 4, tol=1e-15)
    assert [float(r["lr/bias"]) for r in rows[12:]] == [float(r["lr"]) for r in rows[12:]]
    assert all(float(r["momentum"]) == 0.937 for r in rows[12:])


def test_cyclic_adam_issue_example_table(tmp_path):
    """cyclic triangular with Adam, bounds 0.001 ... 0.01, half-cycle 4 steps, T = 9 (288 / 32)."""
    train_in_process(tmp_path, *TINY, "dataset.train_size=288", "batch_size=32", "epochs=1", "optimizer=adam",
                     "scheduler=cyclic", "scheduler.step_size_up=4", "lr0=0.01", "lrf=0.1",
                     "trainer.save_checkpoints=false")
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "steps.csv")]
    assert_close(lrs, [0.001, 0.00325, 0.0055, 0.00775, 0.01, 0.00775, 0.0055, 0.00325, 0.001], tol=1e-15)


@pytest.mark.parametrize("name", __import__("framework.registry", fromlist=["available"]).available("scheduler"))
def test_every_scheduler_trains_one_epoch(tmp_path, name):
    """The sweep `-m scheduler=glob(*) dataset=synthetic epochs=1` (512 samples: 8 steps), job by job."""
    train_in_process(tmp_path, *TINY, "dataset.train_size=512", f"scheduler={name}", "epochs=1",
                     "trainer.save_checkpoints=false", *FILE_INPUTS.get(name, []))  # (piecewise: its example file)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8


def test_fp16_overflow_skipped_step_does_not_advance_the_schedule(tmp_path):
    """A step whose gradients overflow is skipped by the grad scaler: k stays, the LR plan waits."""
    from framework.data import make_loaders, synthetic
    from framework.schedules import LRPlan, Step
    from framework.trainer import Trainer

    torch.manual_seed(0)
    data = synthetic(seed=0, train_size=64, val_size=8, img_size=4, in_chans=1)
    loaders = make_loaders(data, 8, 0, torch.device("cpu"))  # 8 batches = 8 steps per epoch
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    calls = []
    model[1].weight.register_hook(lambda g: g * float("inf") if len(calls.append(1) or calls) in (3, 4) else g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = LRPlan(Step(8, step_size=1, gamma=0.5), 8, 8)  # T = 8 steps of 8 per epoch, one unit per step
    trainer = Trainer(model, opt, plan, loaders, tmp_path, torch.device("cpu"), precision="fp16",
                      progress_bar=False, save_checkpoints=False)
    result = trainer.fit()
    rows = read_csv(tmp_path / "steps.csv")
    assert result["skipped_steps"] == 2 and result["steps"] == 6
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["lr"]) for r in rows] == [0.1 * 0.5**k for k in range(6)]  # no LR was skipped


def test_micro_batches_close_each_accumulation_group(tmp_path):
    """76 samples in batches of 8 = 10 batches (the last of 4), accumulation 4: the groups hold
    32, 32 and 12 samples and close at batches 3, 7 and 9 (the partial last group steps too);
    from batch 4 (a resumed epoch) the same groups follow."""
    from framework.data import make_loaders, synthetic
    from framework.schedules import Constant, LRPlan
    from framework.trainer import Trainer

    data = synthetic(seed=0, train_size=76, val_size=8, img_size=4, in_chans=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), LRPlan(Constant(3), 3, 3),
                      make_loaders(data, 8, 0, torch.device("cpu")), tmp_path, torch.device("cpu"),
                      accumulate_grad_batches=4, progress_bar=False, save_checkpoints=False)
    batches = [(i, len(y), samples, closes) for i, _, y, samples, closes in trainer.micro_batches(0)]
    assert [b[0] for b in batches] == list(range(10)) and [b[1] for b in batches] == [8] * 9 + [4]
    assert [b[2] for b in batches] == [32] * 8 + [12] * 2
    assert [i for i, _, _, closes in batches if closes] == [3, 7, 9]
    assert [(i, s, c) for i, _, _, s, c in trainer.micro_batches(0, start=4)] == [(i, s, c) for i, _, s, c in batches[4:]]


def test_channels_last_trains_the_same_run(tmp_path):
    """channels-last changes the memory layout, not the maths: same LRs, losses equal to float
    rounding (convolution kernels differ by layout)."""
    for name, flag in (("a", "false"), ("b", "true")):
        train_in_process(tmp_path / name, *TINY, "device=cpu", "epochs=1", f"trainer.channels_last={flag}",
                         "trainer.save_checkpoints=false")
    a, b = (read_csv(tmp_path / r / "steps.csv") for r in "ab")
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert [float(r["loss"]) for r in a] == pytest.approx([float(r["loss"]) for r in b], rel=1e-4)
    trainer = build_run(tmp_path / "c", *TINY, "device=cpu", "trainer.channels_last=true").trainer
    weight = next(p for p in trainer.model.parameters() if p.ndim == 4)  # the layout the flag asks for
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    x, _ = next(iter(trainer.train_loader))
    assert trainer._to_device(x).is_contiguous(memory_format=torch.channels_last)


def test_compile_wraps_the_forward_and_keeps_plain_checkpoint_keys(tmp_path):
    trainer = build_run(tmp_path, *TINY, "device=cpu", "trainer.compile=true").trainer
    assert trainer.forward is not trainer.model and hasattr(trainer.forward, "_orig_mod")
    assert not any(k.startswith("_orig_mod") for k in trainer.state_dict()["model"])
