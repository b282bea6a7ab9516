"""Mixup / CutMix (timm's Mixup) and gradient clipping by norm or by value, against values worked
out by hand on a hand-set nn.Linear; exact resume and the refusals at config level (+debug=tiny)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from framework.errors import ConfigError
from framework.schedules import Constant, LRPlan
from framework.tasks import Classification, Regression
from framework.trainer import Trainer
from tests.helpers import TINY, read_csv, run_cli_in_process, train_in_process

CPU = torch.device("cpu")


class OwnLossTask(Classification):
    """Class labels with a loss of its own (twice the cross-entropy): mixing would bypass it."""

    def loss(self, outputs, targets):
        return 2 * super().loss(outputs, targets)


class KeepsLossTask(Classification):
    """A subclass that keeps Classification's loss (its own default monitor): mixing is fine."""

    def __init__(self, num_classes, classes=None, label_smoothing=0.0, monitor="val/loss", mode="min"):
        super().__init__(num_classes, classes, label_smoothing, monitor, mode)


OWN_LOSS_LINE = ("trainer.mixup_alpha=0.4: a mixed batch trains on the soft-target cross-entropy of "
                 "framework.tasks.Classification, which would replace the loss of tests.test_mixup_clip.OwnLossTask; "
                 "use task=classification (or a subclass of it that keeps its loss), or set trainer.mixup_alpha=0 "
                 "trainer.cutmix_alpha=0 trainer.cutmix_minmax=null")

# -- mixup: 4 samples of 2 features, 3 classes, label smoothing 0.1, lam fixed at 0.7 ---------------

X = [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, -2.0]]
Y = [0, 1, 2, 1]
W = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # logits z = (x1, x2, x1 + x2)
EPS, LAM = 0.1, 0.7
# x' = 0.7 x + 0.3 x.flip(0): e.g. row 0 = 0.7 (1, 0) + 0.3 (4, -2) = (1.9, -0.6)
MIXED_X = [[1.9, -0.6], [0.6, 1.3], [1.4, 1.7], [3.1, -1.4]]
# smooth(onehot(c)) = 0.9 onehot(c) + 0.1/3; target = 0.7 smooth(y) + 0.3 smooth(y.flip(0)),
# y = (0, 1, 2, 1), y.flip(0) = (1, 2, 1, 0): each row has 0.7*0.9 + 0.1/3 at y, 0.3*0.9 + 0.1/3 at the
# flipped label and 0.1/3 at the third class
HI, MID, LO = 0.63 + 0.1 / 3, 0.27 + 0.1 / 3, 0.1 / 3
MIXED_T = [[HI, MID, LO], [LO, HI, MID], [LO, MID, HI], [MID, HI, LO]]


def logits(rows):
    """z = W x by hand for W above: (x1, x2, x1 + x2)."""
    return [[a, b, a + b] for a, b in rows]


def soft_ce(z_rows, t_rows):
    """-sum_c t_c log softmax(z)_c, averaged over the rows (math, no torch)."""
    total = 0.0
    for z, t in zip(z_rows, t_rows):
        log_norm = math.log(sum(math.exp(v) for v in z))
        total -= sum(tc * (zc - log_norm) for zc, tc in zip(z, t))
    return total / len(z_rows)


def flat(rows):
    return [v for row in rows for v in row]


def smooth(labels, k=3, eps=EPS):
    return [[(1 - eps) * (c == y) + eps / k for c in range(k)] for y in labels]


L_MIX = soft_ce(logits(MIXED_X), MIXED_T)  # the mixed batch's loss
L_PLAIN = soft_ce(logits(X), smooth(Y))  # the unmixed batch's label-smoothed cross-entropy


def linear(weight):
    model = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight))
    return model


def trainer_on(tmp_path, model, xs, ys, batch_size, epochs=1, lr=0.0, task=None, **kwargs):
    """A Trainer on (xs, ys) in order (no shuffling), SGD at a constant ``lr`` (0: the weights
    stay as set), the given task (default: 3-class classification with label smoothing 0.1)."""
    data = TensorDataset(torch.tensor(xs), torch.tensor(ys))
    loader = DataLoader(data, batch_size=batch_size)
    T = epochs * len(loader)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), LRPlan(Constant(T), T, len(loader)),
                   (loader, DataLoader(data, batch_size=batch_size)), tmp_path, CPU,
                   task=task or Classification(3, label_smoothing=EPS), progress_bar=False, save_checkpoints=False,
                   **kwargs)


@pytest.fixture
def lam_07(monkeypatch):
    """np.random.beta(a, a) -> 0.7, recording its arguments (timm draws lam with it)."""
    calls = []
    monkeypatch.setattr(np.random, "beta", lambda a, b, size=None: calls.append((a, b)) or LAM)
    return calls


def test_mixed_batch_target_and_loss_by_hand(tmp_path, lam_07):
    model = linear(W)
    trainer = trainer_on(tmp_path, model, X, Y, batch_size=4, mixup_alpha=0.4)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    loss = trainer.micro_step(torch.tensor(X), torch.tensor(Y), 1.0, True)
    assert lam_07 == [(0.4, 0.4)]
    assert flat(seen[0].tolist()) == pytest.approx(flat(MIXED_X), abs=1e-6)
    assert loss.item() == pytest.approx(L_MIX, rel=1e-6)
    mixed, target = trainer.mixup(torch.tensor(X), torch.tensor(Y))  # the mixer the trainer built
    assert flat(mixed.tolist()) == pytest.approx(flat(MIXED_X), abs=1e-6)
    assert flat(target.tolist()) == pytest.approx(flat(MIXED_T), abs=1e-6)


def test_from_mixup_off_epoch_on_the_batches_are_plain(tmp_path, lam_07):
    """mixup_off_epoch=2 of 3 epochs (one step each, LR 0): epochs 0 and 1 train on the mixed
    batch, epoch 2 on the plain one with the task's loss; validation is the task's loss always."""
    model = linear(W)
    trainer = trainer_on(tmp_path, model, X, Y, batch_size=4, epochs=3, mixup_alpha=0.4, mixup_off_epoch=2)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()) if m.training else None)
    trainer.fit()
    assert [flat(x.tolist()) for x in seen] == [pytest.approx(flat(MIXED_X), abs=1e-6)] * 2 + [flat(X)]
    rows = read_csv(tmp_path / "steps.csv")
    assert [float(r["loss"]) for r in rows] == pytest.approx([L_MIX, L_MIX, L_PLAIN], rel=1e-6)
    epochs = read_csv(tmp_path / "epochs.csv")
    assert [float(r["val/loss"]) for r in epochs] == pytest.approx([L_PLAIN] * 3, rel=1e-6)
    assert len(lam_07) == 2 and trainer.mixup.mixup_enabled is False


def test_odd_last_batch_is_trained_unmixed(tmp_path, lam_07):
    """7 samples in batches of 4: the last batch of 3 cannot be paired; it trains on the task's
    loss, unmixed, and nothing fails."""
    extra_x, extra_y = [[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]], [2, 1, 0]
    model = linear(W)
    trainer = trainer_on(tmp_path, model, X + extra_x, Y + extra_y, batch_size=4, mixup_alpha=0.4)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()) if m.training else None)
    trainer.fit()
    assert seen[1].tolist() == extra_x
    losses = [float(r["loss"]) for r in read_csv(tmp_path / "steps.csv")]
    assert losses == pytest.approx([L_MIX, soft_ce(logits(extra_x), smooth(extra_y))], rel=1e-6)
    assert len(lam_07) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"mixup_alpha": 0.4, "batch": 3}, "trainer.mixup_alpha=0.4: timm's Mixup pairs sample i with sample B-1-i and "
                                       "needs an even batch_size, got batch_size=3; use batch_size=2 or 4"),
    ({"mixup_alpha": 0.4, "task": "regression"}, "trainer.mixup_alpha=0.4: Mixup / CutMix mix class labels, but the "
                                                 "task Regression trains on value labels"),
    ({"cutmix_alpha": 1.0}, "trainer.cutmix_alpha=1.0: CutMix pastes boxes between images (C, H, W), but the "
                            "training samples have shape (2,)"),
    ({"mixup_alpha": -1}, "trainer.mixup_alpha=-1: must be a number >= 0"),
    ({"cutmix_minmax": [0.8, 0.2]}, "trainer.cutmix_minmax=[0.8, 0.2]: must be null or [min, max]"),
    ({"mixup_prob": 1.5}, "trainer.mixup_prob=1.5: must be in [0, 1]"),
    ({"mixup_mode": "pairs"}, "trainer.mixup_mode=pairs: use batch"),
    ({"mixup_alpha": 0.4, "mixup_off_epoch": 0}, "trainer.mixup_off_epoch=0: must be an integer >= 1"),
    ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "l2"}, "trainer.gradient_clip_algorithm=l2: use norm"),
    ({"gradient_clip_val": 0}, "trainer.gradient_clip_val=0: must be > 0 or null"),
    ({"grad_norm_every_n_steps": 1.5}, "trainer.grad_norm_every_n_steps=1.5: must be an integer >= 0"),
    ({"mixup_alpha": 0.4, "task": "own_loss"}, OWN_LOSS_LINE),
])
def test_refused_settings_name_the_key_and_the_fix(tmp_path, kwargs, message):
    batch = kwargs.pop("batch", 4)
    task = {"regression": Regression(1), "own_loss": OwnLossTask(3), None: None}[kwargs.pop("task", None)]
    regression = isinstance(task, Regression)
    ys = [0.5, 1.0, 1.5, 2.0] if regression else Y
    with pytest.raises(ConfigError) as info:
        trainer_on(tmp_path, linear([[1.0, 0.0]] if regression else W), X, ys, batch_size=batch, task=task, **kwargs)
    assert len(info.value.messages) == 1 and info.value.messages[0].startswith(message), info.value.messages


def test_odd_batch_size_with_mixup_exits_2_in_one_line(tmp_path, capfd):
    code = run_cli_in_process([*TINY, "batch_size=33", "trainer.mixup_alpha=0.2"], tmp_path / "run")
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(said) == 1, err
    assert "trainer.mixup_alpha=0.2: timm's Mixup pairs sample i with sample B-1-i and needs an even batch_size, got " \
           "batch_size=33; use batch_size=32 or 34" in said[0]


def test_mixing_takes_classification_or_a_subclass_that_keeps_its_loss():
    from framework.tasks import MultiLabel
    from framework.trainer.mixing import check_mixup_task

    key = "trainer.mixup_alpha=0.4"
    assert check_mixup_task(key, Classification) == check_mixup_task(key, KeepsLossTask) == []
    assert check_mixup_task(key, OwnLossTask) == [OWN_LOSS_LINE]
    assert check_mixup_task(key, MultiLabel)[0].startswith(f"{key}: Mixup / CutMix mix class labels, but the task "
                                                           "MultiLabel trains on multi_hot labels")


def test_mixing_with_a_custom_task_loss_exits_2_in_one_line_before_anything_is_built(tmp_path, capfd, monkeypatch):
    """task=custom with class labels and its own loss: refused by validate, no run folder."""
    def built(*_args, **_kwargs):
        raise AssertionError("built after a config error")

    monkeypatch.setattr("framework.build.build", built)
    code = run_cli_in_process([*TINY, "task=custom", "task._target_=tests.test_mixup_clip.OwnLossTask",
                               "trainer.mixup_alpha=0.4"], tmp_path / "run")
    said = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and said == [f"error: {OWN_LOSS_LINE}"]
    assert not (tmp_path / "run").exists()


# -- clipping: y = w . x, MSE, batches of 1, SGD LR 1, w0 = (0, 0), clip value 1 ---------------------
# step 0: x = (1, 0), y = -0.25: r = w.x - y = 0.25, grad 2 r x = (0.5, 0), norm 0.5: not clipped; w = (-0.5, 0)
# step 1: x = (0, 1), y = -2: r = 2, grad (0, 4), norm 4: clipped by both, to (0, 1); w = (-0.5, -1)
# step 2: x = (1, 1), y = -1.9: r = -1.5 + 1.9 = 0.4, grad (0.8, 0.8), norm 0.8 sqrt 2 = 1.131 > 1 but
#   every |element| 0.8 <= 1: norm clips it to (1/sqrt 2, 1/sqrt 2), value leaves it
CLIP_X, CLIP_Y = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [-0.25, -2.0, -1.9]
R2 = 1 / math.sqrt(2)
CLIP_CASES = {
    "norm": {"grads": [[0.5, 0.0], [0.0, 1.0], [R2, R2]], "clipped": [0, 1, 1], "w": [-0.5 - R2, -1 - R2]},
    "value": {"grads": [[0.5, 0.0], [0.0, 1.0], [0.8, 0.8]], "clipped": [0, 1, 0], "w": [-1.3, -1.8]},
}


@pytest.mark.parametrize("algorithm", sorted(CLIP_CASES))
def test_clipping_by_norm_and_by_value_by_hand(tmp_path, algorithm):
    case = CLIP_CASES[algorithm]
    model = linear([[0.0, 0.0]])
    trainer = trainer_on(tmp_path, model, CLIP_X, CLIP_Y, batch_size=1, lr=1.0, task=Regression(1),
                         gradient_clip_val=1.0, gradient_clip_algorithm=algorithm, grad_norm_every_n_steps=1)
    applied = []  # the gradient the optimizer applies (after clipping)
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kw: applied.append(model.weight.grad[0].tolist()))
    trainer.fit()
    assert applied == [pytest.approx(g, rel=1e-5) for g in case["grads"]]
    assert model.weight[0].tolist() == pytest.approx(case["w"], rel=1e-5)
    rows = read_csv(tmp_path / "steps.csv")
    assert list(rows[0])[-3:] == ["loss", "grad_norm", "clipped"]
    assert [int(r["clipped"]) for r in rows] == case["clipped"]
    assert [float(r["grad_norm"]) for r in rows] == pytest.approx([0.5, 4.0, 0.8 * math.sqrt(2)], rel=1e-5)  # before
    assert [float(r["loss"]) for r in rows] == pytest.approx([0.0625, 4.0, 0.16], rel=1e-5)  # r^2
    assert trainer.clipped_steps == sum(case["clipped"])
    assert trainer.clipped_frac == pytest.approx(sum(case["clipped"]) / 3, abs=1e-15)  # 2/3 by norm, 1/3 by value


# Without clipping, step 1 applies (0, 4): w = (-0.5, -4); step 2: r = -4.5 + 1.9 = -2.6, grad
# 2 r x = (-5.2, -5.2), norm 5.2 sqrt 2. With clipping (value: (0, 1), norm: (0, 1)), step 2's norm is 0.8 sqrt 2.
@pytest.mark.parametrize("clip, every, norms", [
    (None, 2, [0.5, None, 5.2 * math.sqrt(2)]),  # steps 0 and 2 measured, step 1 empty
    (None, 0, [None, None, None]),
    ("value", 2, [0.5, None, 0.8 * math.sqrt(2)]),
    ("norm", 0, [0.5, 4.0, 0.8 * math.sqrt(2)]),  # clip_grad_norm_ computes it: every step has it
])
def test_grad_norm_on_every_nth_step_by_hand(tmp_path, clip, every, norms):
    clipping = {} if clip is None else {"gradient_clip_val": 1.0, "gradient_clip_algorithm": clip}
    trainer = trainer_on(tmp_path, linear([[0.0, 0.0]]), CLIP_X, CLIP_Y, batch_size=1, lr=1.0, task=Regression(1),
                         grad_norm_every_n_steps=every, **clipping)
    trainer.fit()
    got = [float(r["grad_norm"]) if r["grad_norm"] else None for r in read_csv(tmp_path / "steps.csv")]
    assert got == [None if v is None else pytest.approx(v, rel=1e-5) for v in norms]


def test_grad_norm_every_n_steps_below_0_exits_2_in_one_line(tmp_path, capfd):
    code = run_cli_in_process([*TINY, "trainer.grad_norm_every_n_steps=-1"], tmp_path / "run")
    said = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and said == ["error: trainer.grad_norm_every_n_steps=-1: must be an integer >= 0 (1 = every "
                                  "step, 0 = only when clipping by norm computes it)"]
    assert not (tmp_path / "run").exists()


def test_no_clipping_no_column_and_no_fraction(tmp_path):
    trainer = trainer_on(tmp_path, linear([[0.0, 0.0]]), CLIP_X, CLIP_Y, batch_size=1, lr=1.0, task=Regression(1))
    trainer.fit()
    assert list(read_csv(tmp_path / "steps.csv")[0])[-2:] == ["loss", "grad_norm"]
    assert trainer.clipped_frac is None and trainer.clipped_steps == 0


# -- both on a tiny run: stopped and resumed = uninterrupted --------------------------------------

def test_mixup_cutmix_and_clipping_resume_exactly(tmp_path):
    """Mixup + CutMix per sample (lam from NumPy's RNG, which checkpoints save) switched off from
    epoch 2, and norm clipping; stopped mid-epoch 1 and resumed: the same steps.csv, epochs.csv
    and clipped_frac as the uninterrupted run."""
    args = [*TINY, "epochs=3", "device=cpu", "task.label_smoothing=0.1", "trainer.mixup_alpha=0.4",
            "trainer.cutmix_alpha=1.0", "trainer.mixup_mode=elem", "trainer.mixup_off_epoch=2",
            "trainer.gradient_clip_val=2.0"]
    train_in_process(tmp_path / "full", *args)
    train_in_process(tmp_path / "cut", *args, "trainer.stop_after_steps=6")
    assert len(read_csv(tmp_path / "cut" / "steps.csv")) == 6
    train_in_process(tmp_path / "ignored", *args, f"resume={tmp_path / 'cut'}")
    full, cut = (read_csv(tmp_path / run / "steps.csv") for run in ("full", "cut"))
    assert full == cut and len(full) == 12
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert strip(read_csv(tmp_path / "full" / "epochs.csv")) == strip(read_csv(tmp_path / "cut" / "epochs.csv"))
    clipped = [int(r["clipped"]) for r in full]
    assert clipped == [int(float(r["grad_norm"]) > 2.0) for r in full] and 0 < sum(clipped) < 12
    fracs = [json.loads((tmp_path / run / "summary.json").read_text())["clipped_frac"] for run in ("full", "cut")]
    assert fracs == [sum(clipped) / 12] * 2
