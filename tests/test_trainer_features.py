"""Model EMA, early stopping and ``val_every_n_epochs`` (README "Trainer: EMA, early stopping,
validation every n epochs"): values worked out by hand."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from framework.checkpoint import load_checkpoint
from framework.errors import ConfigError
from framework.trainer.early_stopping import EarlyStopping
from tests.helpers import TINY, build_run, read_csv, train_in_process

# -- model EMA -------------------------------------------------------------------------------------

X_TRAIN = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, -1.0]])  # one sample per batch: 3 SGD steps
Y_TRAIN = torch.tensor([1.0, 0.0, 2.0])
X_VAL, Y_VAL = torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([0.5, 1.0])


def linear_trainer(run_dir, framework_loaders=False, **kwargs):
    """nn.Linear(2, 1) (weight [0.1, -0.2], bias 0.05), plain SGD lr 0.1 on X_TRAIN in batches of
    one (T = 3 steps, one epoch), mean squared error; the raw weights after each applied step
    are recorded by an optimizer hook (``trainer.raw``). ``framework_loaders``: the framework's
    seeded loaders (they resume mid-epoch) instead of plain in-order ``DataLoader``s."""
    from framework.data import DataBundle, make_loaders
    from framework.schedules import Constant, LRPlan
    from framework.tasks import Regression
    from framework.trainer import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, -0.2]]))
        model.bias.fill_(0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    raw = []
    opt.register_step_post_hook(lambda *_: raw.append((model.weight.detach().clone(), model.bias.detach().clone())))
    train, val = TensorDataset(X_TRAIN, Y_TRAIN), TensorDataset(X_VAL, Y_VAL)
    loaders = (make_loaders(DataBundle(train, val, 1, 2, 1), 1, 0, torch.device("cpu")) if framework_loaders
               else (DataLoader(train, batch_size=1), DataLoader(val, batch_size=2)))
    trainer = Trainer(model, opt, LRPlan(Constant(3), 3, 3), loaders, run_dir, torch.device("cpu"),
                      task=Regression(num_classes=1), progress_bar=False, **kwargs)
    trainer.raw = raw
    return trainer


def hand_ema(raw, decays):
    """ema_1 = w_1 (d_1 = 0), then ema_n = d_n * ema_(n-1) + (1 - d_n) * w_n."""
    w, b = raw[0]
    for (wn, bn), d in zip(raw[1:], decays[1:]):
        w, b = d * w + (1 - d) * wn, d * b + (1 - d) * bn
    return w, b


# timm's ModelEmaV3.get_decay(n): 0 for n = 1; decay; with warmup min(decay, 1 - n^(-2/3))
DECAY = 0.5
HAND_DECAYS = {False: [0.0, 0.5, 0.5],
               True: [0.0, min(DECAY, 1 - 2 ** (-2 / 3)), min(DECAY, 1 - 3 ** (-2 / 3))]}  # 0, 0.37004, 0.5


@pytest.mark.parametrize("warmup", [False, True], ids=["no_warmup", "warmup"])
def test_ema_weights_after_three_sgd_steps_equal_the_hand_average(tmp_path, warmup):
    assert HAND_DECAYS[True][1] == pytest.approx(0.370040, abs=1e-6)  # 1 - 2^(-2/3), under the decay
    trainer = linear_trainer(tmp_path, ema_decay=DECAY, ema_warmup=warmup)
    trainer.fit()
    assert len(trainer.raw) == 3
    # the raw weights after step 1 are SGD's by hand: w - 0.1 * 2 * (w.x + b - y) * x, x = (1, 2), y = 1
    r1 = 0.1 * 1 - 0.2 * 2 + 0.05 - 1.0  # -1.25
    assert trainer.raw[0][0].flatten().tolist() == pytest.approx([0.1 - 0.2 * r1, -0.2 - 0.4 * r1], abs=1e-6)
    w, b = hand_ema(trainer.raw, HAND_DECAYS[warmup])
    ema = trainer.ema.module
    assert torch.allclose(ema.weight, w, atol=1e-7) and torch.allclose(ema.bias, b, atol=1e-7)
    assert not torch.allclose(ema.weight, trainer.raw[-1][0])  # it is an average, not the last weights
    # val_ema/loss is the EMA weights' mean squared error on the validation set
    row = read_csv(tmp_path / "epochs.csv")[0]
    ema_mse = ((X_VAL @ w.T + b).flatten() - Y_VAL).pow(2).mean().item()
    raw_mse = ((X_VAL @ trainer.raw[-1][0].T + trainer.raw[-1][1]).flatten() - Y_VAL).pow(2).mean().item()
    assert float(row["val_ema/loss"]) == pytest.approx(ema_mse, rel=1e-6)
    assert float(row["val/loss"]) == pytest.approx(raw_mse, rel=1e-6)
    # last.pt holds the EMA beside the raw weights; best.pt holds the better weights (val/rmse, min)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert torch.allclose(last["ema"]["weight"], w, atol=1e-7)
    assert torch.equal(last["model"]["weight"], trainer.raw[-1][0])
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    chosen = "ema" if ema_mse < raw_mse else "raw"  # rmse = sqrt(mse): the same order
    assert best["best_weights"] == trainer.best["best_weights"] == chosen
    expected = w if chosen == "ema" else trainer.raw[-1][0]
    assert torch.allclose(best["model"]["weight"], expected, atol=1e-7)
    assert torch.equal(best.get("train_model", best["model"])["weight"], trainer.raw[-1][0])  # a resume trains on raw


def test_ema_resumed_from_a_stop_equals_the_uninterrupted_ema(tmp_path):
    """Stopped after step 2 (last.pt mid-epoch) and resumed: the same EMA, bit for bit."""
    full = linear_trainer(tmp_path / "full", True, ema_decay=DECAY)
    full.fit()
    cut = linear_trainer(tmp_path / "cut", True, ema_decay=DECAY, stop_after_steps=2)
    assert cut.fit()["stopped"] == "stop_after_steps"
    resumed = linear_trainer(tmp_path / "cut", True, ema_decay=DECAY)
    resumed.load_state_dict(load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt"))
    resumed.fit()
    assert resumed.global_step == 3
    for a, b in zip(full.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_run_folder_and_mode_test_evaluate_the_best_weights(tmp_path):
    """epochs.csv gets val_ema/ columns; summary.json and best.pt say which weights are best;
    mode=test on the validation split repeats the best epoch's metrics of those weights."""
    from tests.helpers import run_cli_in_process

    run = tmp_path / "run"
    train_in_process(run, *TINY, "epochs=2", "dataset.train_size=64", "batch_size=32", "trainer.ema_decay=0.5")
    epochs = read_csv(run / "epochs.csv")
    assert list(epochs[0]) == ["epoch", "train/loss", "val/loss", "val/acc", "val/acc_top5", "val_ema/loss",
                               "val_ema/acc", "val_ema/acc_top5", "lr", "time_s"]
    summary = json.loads((run / "summary.json").read_text())
    weights, best = summary["best_weights"], summary["best"]
    prefix = "val_ema/" if weights == "ema" else "val/"
    assert summary["objective"] == best[prefix + "acc"]  # the better of val/acc and val_ema/acc ...
    assert best[prefix + "acc"] == max(max(float(r["val/acc"]), float(r["val_ema/acc"])) for r in epochs)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["best_weights"] == weights
    assert run_cli_in_process(["mode=test", f"resume={run}", "eval_split=val"], None) == 0
    result = json.loads((run / "val.json").read_text())
    assert result["weights"] == weights
    assert result["metrics"]["val/acc"] == best[prefix + "acc"]  # ... and mode=test evaluates those weights
    assert result["metrics"]["val/loss"] == pytest.approx(best[prefix + "loss"], rel=1e-6)


# -- early stopping --------------------------------------------------------------------------------

def stop_epoch(values, mode, patience=2, min_delta=0.01):
    """Feed an EarlyStopping one value per validation; the epoch it stops after, or None."""
    stopper = EarlyStopping(patience=patience, min_delta=min_delta, mode=mode)
    for epoch, value in enumerate(values):
        if stopper.observe(epoch, value):
            return epoch, stopper
    return None, stopper


@pytest.mark.parametrize("mode, values, stop, best_epoch, best", [
    # max: 0.55 improves on 0.50 by 0.05; 0.555 and 0.559 beat it by < 0.01: waits 1, 2 -> stop after epoch 3
    ("max", [0.50, 0.55, 0.555, 0.559, 0.9], 3, 1, 0.55),
    # max: 0.505 (wait 1), 0.52 beats 0.50 by 0.02 (reset), 0.525 (wait 1), 0.529 (wait 2) -> stop after epoch 4
    ("max", [0.50, 0.505, 0.52, 0.525, 0.529, 0.9], 4, 2, 0.52),
    # min: 0.995 (wait 1), 0.98 beats 1.0 by 0.02 (reset), 0.975 and 0.971 beat 0.98 by < 0.01 -> stop after 4
    ("min", [1.0, 0.995, 0.98, 0.975, 0.971, 0.1], 4, 2, 0.98),
    # min: every value beats the best by more than 0.01: never stops
    ("min", [1.0, 0.98, 0.96, 0.94], None, 3, 0.94),
])
def test_early_stopping_by_hand_patience_2_min_delta_001(mode, values, stop, best_epoch, best):
    epoch, stopper = stop_epoch(values, mode)
    assert epoch == stop
    assert (stopper.best_epoch, stopper.best) == (best_epoch, best)


def test_early_stopping_rejects_bad_keys_in_one_line():
    logged = ["train/loss", "val/loss", "val/acc"]
    for node, key in [({"patience": 0}, "patience=0"), ({"patience": 2, "min_delta": -1}, "min_delta=-1"),
                      ({"patience": 2, "monitor": "val/nope"}, "monitor=val/nope"),
                      ({"patience": 2, "monitor": "val/acc"}, "mode=null"),  # not the task's monitor, not a loss
                      ({"patince": 2}, "patince")]:
        with pytest.raises(ValueError, match=f"^trainer.early_stopping.{key}"):
            EarlyStopping.from_config(node, task_monitor="val/loss", task_mode="min", logged=logged)
    assert EarlyStopping(patience=1, monitor="train/loss", logged=logged, task_mode="max").mode == "min"


def fake_metric(monkeypatch, key, values):
    """StepEngine.evaluate as it is, with ``key`` of the raw weights' i-th evaluation replaced by
    ``values[i]``; returns the list of epochs (``run_state.epoch``) evaluated."""
    from framework.trainer.engine import StepEngine

    real, calls = StepEngine.evaluate, []

    def evaluate(self, *args, **kwargs):
        metrics = real(self, *args, **kwargs)
        if kwargs.get("module") is None:
            metrics[key] = values[len(calls)]
            calls.append(self.run_state.epoch)
        return metrics

    monkeypatch.setattr(StepEngine, "evaluate", evaluate)
    return calls


def test_an_early_stopped_run_completes_with_its_block_its_plan_and_no_resume(tmp_path, monkeypatch, capfd):
    """val/acc (max) 0.50, 0.505, 0.52, 0.525, 0.529 with patience 2, min_delta 0.01: stops after
    epoch 4 of 8 (best 0.52 at epoch 2 for early stopping; the best epoch, strictly better, is 4)."""
    from tests.helpers import run_cli_in_process

    calls = fake_metric(monkeypatch, "val/acc", [0.50, 0.505, 0.52, 0.525, 0.529, 0.9, 0.9, 0.9])
    args = [*TINY, "epochs=8", "warmup_epochs=0", "trainer.early_stopping.patience=2",
            "trainer.early_stopping.min_delta=0.01"]
    objective = train_in_process(tmp_path, *args)
    assert calls == [0, 1, 2, 3, 4]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"]) == ("completed", "early_stopping")
    assert summary["early_stopping"] == {
        "stopped_after_epoch": 4, "best_epoch": 2, "best_value": 0.52, "monitor": "val/acc", "monitor_weights": "raw",
        "mode": "max", "patience": 2, "min_delta": 0.01, "validations_without_improvement": 2}
    assert objective == summary["objective"] == 0.529 and summary["best"]["epoch"] == 4
    assert (summary["steps"], summary["planned_steps"]) == (20, 32)  # 4 steps per epoch, 5 of 8 epochs
    # the plan (every step to T) and the applied LRs are both in the folder
    plan, steps = read_csv(tmp_path / "lr_plan.csv"), read_csv(tmp_path / "steps.csv")
    assert list(plan[0]) == ["step", "lr", "lr/no_decay"] and [int(r["step"]) for r in plan] == list(range(32))
    assert [r["lr"] for r in plan[:20]] == [r["lr"] for r in steps]  # cosine: planned = applied so far
    assert float(plan[-1]["lr"]) == pytest.approx(0.01 * 0.01, rel=1e-12)  # eta_(T-1) = lr0 * lrf
    # resuming it trains nothing and says why in one line
    capfd.readouterr()
    before = (tmp_path / "steps.csv").read_bytes()
    assert run_cli_in_process([*args, f"resume={tmp_path}"], None) == 0
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert err == [f"resume={tmp_path}: early stopping ended the run after epoch 5 (val/acc did not improve by more "
                   "than 0.01 in 2 validations; summary.json); it ended on purpose, nothing to continue (to train "
                   "on, change trainer.early_stopping with resume_allow_changes=true)"]
    assert (tmp_path / "steps.csv").read_bytes() == before


# -- validation every n epochs ---------------------------------------------------------------------

def test_val_every_2_of_3_epochs_validates_after_epochs_2_and_3_and_plateau_judges_only_them(tmp_path, monkeypatch):
    """Validations after epochs 1 and 2 (from 0); plateau (patience 0, factor 0.5) is fed val/loss
    1.0 then 2.0: one improvement, one reduction (it would fail on epoch 0's missing val/loss).
    The task monitors val/loss (min): epoch 0 is not validated, epoch 1's 1.0 beats epoch 2's 2.0,
    so the best epoch is 1 and the objective 1.0."""
    calls = fake_metric(monkeypatch, "val/loss", [1.0, 2.0])
    train_in_process(tmp_path, *TINY, "epochs=3", "warmup_epochs=0", "trainer.val_every_n_epochs=2",
                     "scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5", "task.monitor=val/loss",
                     "task.mode=min")
    assert calls == [1, 2]
    rows = read_csv(tmp_path / "epochs.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [r["val/loss"] for r in rows] == ["", "1.0", "2.0"] and rows[0]["val/acc"] == rows[0]["val/acc_top5"] == ""
    assert all(r["train/loss"] and r["lr"] for r in rows)
    plateau = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["plan"]
    assert (plateau["best"], plateau["multiplier"]) == (1.0, 0.5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"]["epoch"] == 1 and summary["best"]["val/loss"] == 1.0 and "val/acc" in summary["best"]
    assert summary["objective"] == 1.0


def test_bad_val_every_and_ema_decay_are_config_errors_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.val_every_n_epochs=0: must be an integer >= 1"):
        build_run(tmp_path, *TINY, "trainer.val_every_n_epochs=0")
    with pytest.raises(ConfigError, match=r"^trainer.ema_decay=1.5: must be in \(0, 1\)"):
        build_run(tmp_path, *TINY, "trainer.ema_decay=1.5")
    assert not any(tmp_path.iterdir())


# -- the trainer keys are checked by validate, every mistake at once, before anything is built -------

@pytest.mark.parametrize("args, expected", [
    (["trainer.early_stopping.patience=0", "trainer.mixup_alpha=-1"],
     ["trainer.mixup_alpha=-1: must be a number >= 0 (0 = no mixup), e.g. 0.8",
      "trainer.early_stopping.patience=0: must be an integer >= 1 (validations without improvement before stopping) "
      "or null (off)"]),
    (["trainer.early_stopping=5"],
     ["trainer.early_stopping=5: must be a mapping {patience, monitor, min_delta, mode} or null, e.g. "
      "trainer.early_stopping.patience=3"]),
], ids=["patience_and_mixup", "early_stopping_not_a_mapping"])
def test_trainer_key_mistakes_are_all_reported_before_anything_is_built(tmp_path, capfd, monkeypatch, args, expected):
    """The reviewer's inputs: validate names every mistake (both of the first input), and the
    command line prints them as they are, exit 2, with nothing built and no run folder."""
    from framework.config import validate
    from tests.helpers import compose_cfg, lines, run_cli_in_process

    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*TINY, *args))
    assert info.value.messages == expected

    def built(*_args, **_kwargs):
        raise AssertionError("built after a config error")

    monkeypatch.setattr("framework.build.build", built)
    code = run_cli_in_process([*TINY, *args], tmp_path / "run")
    assert code == 2
    assert lines(capfd.readouterr().err) == [f"error: {line}" for line in expected]
    assert not (tmp_path / "run").exists()


def test_check_functions_are_pure_and_list_every_mistake():
    from framework.trainer.early_stopping import check_early_stopping_args
    from framework.trainer.validation import check_validation_args

    assert check_early_stopping_args(None) == [] and check_early_stopping_args({"patience": 3, "mode": "max"}) == []
    assert check_early_stopping_args({"patince": 3, "min_delta": -1}) == [
        "trainer.early_stopping.patince: not a key of early stopping (did you mean patience?); use patience, monitor, "
        "min_delta, mode"]  # (the values are judged once the keys are known)
    assert check_early_stopping_args({"min_delta": -1, "mode": "up"}) == [
        "trainer.early_stopping.min_delta=-1: must be a number >= 0 (0 = any improvement counts)",
        "trainer.early_stopping.mode=up: use max, min or null (the task's mode)"]
    assert check_validation_args(0, 1.5, "yes", "x") == [
        "trainer.val_every_n_epochs=0: must be an integer >= 1 (1 = every epoch)",
        "trainer.ema_decay=1.5: must be in (0, 1), e.g. 0.9998, or null (no EMA)",
        "trainer.ema_warmup=yes: use true (the decay rises from 0) or false",
        "trainer.early_stopping=x: must be a mapping {patience, monitor, min_delta, mode} or null, e.g. "
        "trainer.early_stopping.patience=3"]
    assert check_validation_args() == []


def test_nan_is_never_an_improvement():
    epoch, stopper = stop_epoch([0.5, math.nan, math.nan], "max", patience=2, min_delta=0.0)
    assert epoch == 2 and stopper.best == 0.5
