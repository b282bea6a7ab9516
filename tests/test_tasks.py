"""Tasks (framework/tasks.py): losses and metrics against values worked out by hand, the best
epoch under max and min, the objective and the sweep report following monitor and mode, one
tiny run per task."""
from __future__ import annotations

import json
import math

import pytest
import torch

from framework import tasks
from framework.errors import ConfigError
from framework.tasks import Classification, MultiLabel, Regression
from tests.helpers import TINY, build_run, compose_cfg, read_csv, train_in_process

# Four samples, six classes. Each row of logits is a permutation of 5, 4, 3, 2, 1, 0, so the
# log-sum-exp of every row is L = ln(e^0 + e^1 + ... + e^5) and the cross-entropy of label y is
# L - z_y.
#   s0: label 0 has the highest logit (5)        -> top-1 yes, top-5 yes, CE = L - 5
#   s1: label 0 is second (4)                    -> top-1 no,  top-5 yes, CE = L - 4
#   s2: label 0 is last (0)                      -> top-1 no,  top-5 no,  CE = L - 0
#   s3: label 4 has the highest logit (5)        -> top-1 yes, top-5 yes, CE = L - 5
# acc = 2/4, acc_top5 = 3/4, mean CE = L - (5 + 4 + 0 + 5) / 4 = L - 3.5.
LOGITS = torch.tensor([[5., 4, 3, 2, 1, 0], [4, 5, 3, 2, 1, 0], [0, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 0]])
LABELS = torch.tensor([0, 0, 0, 4])
L = math.log(sum(math.exp(j) for j in range(6)))


class Identity(torch.nn.Module):
    """A "model" whose outputs are its inputs: the evaluation sees the logits written above."""

    def forward(self, x):
        return x


def engine(task, x, y, batch_size=3):
    """A StepEngine over (x, y) in batches of 3 (4 samples: a batch of 3 and one of 1)."""
    from torch.utils.data import DataLoader, TensorDataset

    from framework.trainer.engine import StepEngine

    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    return StepEngine(Identity(), opt, (loader, loader), torch.device("cpu"), task=task)


def compute(task, outputs, targets):
    """Every metric of ``task`` over one batch, as the engine feeds them."""
    metrics = task.metrics()
    preds, target = task.metric_inputs(outputs, targets)
    out = {}
    for name, metric in metrics.items():
        metric.update(preds, target)
        out[name] = metric.compute().item()
    return out


def test_classification_accuracy_top5_and_loss_by_hand():
    task = Classification(6)
    assert compute(task, LOGITS, LABELS) == {"acc": 0.5, "acc_top5": 0.75}
    assert task.loss(LOGITS, LABELS).item() == pytest.approx(L - 3.5, rel=1e-6)
    # over two batches (3 + 1): the loss is each batch's mean times its size over N, the metrics count every sample
    result = engine(task, LOGITS, LABELS).evaluate()
    assert result == pytest.approx({"val/loss": L - 3.5, "val/acc": 0.5, "val/acc_top5": 0.75}, rel=1e-6)
    assert list(engine(task, LOGITS, LABELS).evaluate(prefix="test/")) == ["test/loss", "test/acc", "test/acc_top5"]
    assert Classification(5).metric_names() == ["acc"]  # top-5 of 5 classes would always be 1


def test_label_smoothing_follows_the_formula():
    """q = (1 - eps) onehot(y) + eps / K; loss = -sum_c q_c (z_c - L) = (1 - eps)(L - z_y) + eps (L - mean z);
    for s0: z_y = 5 and mean z = 2.5."""
    eps = 0.1
    task = Classification(6, label_smoothing=eps)
    assert task.loss(LOGITS[:1], LABELS[:1]).item() == pytest.approx((1 - eps) * (L - 5) + eps * (L - 2.5), rel=1e-6)


# Four samples, two labels; logits (the sigmoid keeps the order) and 0/1 targets.
#   label 0: logits 2, 1, -1, -2 with targets 1, 0, 1, 0. Ranked: +, -, +, -.
#     AP = (precision at the 1st positive, rank 1: 1/1 + at the 2nd, rank 3: 2/3) / 2 = 5/6
#     AUROC = pairs (positive above negative) / (2 x 2): s0>s1, s0>s3, s2<s1, s2>s3 -> 3/4
#   label 1: logits -2, 1, 2, 0 with targets 1, 1, 1, 0. Ranked: s2 +, s1 +, s3 -, s0 +.
#     AP = (1/1 + 2/2 + 3/4) / 3 = 11/12
#     AUROC = (s2>s3, s1>s3, s0<s3) / (3 x 1) = 2/3
# map = (5/6 + 11/12) / 2 = 7/8; auroc = (3/4 + 2/3) / 2 = 17/24.
ML_LOGITS = torch.tensor([[2., -2], [1, 1], [-1, 2], [-2, 0]])
ML_TARGETS = torch.tensor([[1., 1], [0, 1], [1, 1], [0, 0]])


def test_multilabel_map_auroc_and_bce_by_hand():
    task = MultiLabel(2)
    assert compute(task, ML_LOGITS, ML_TARGETS) == pytest.approx({"map": 7 / 8, "auroc": 17 / 24}, rel=1e-6)
    result = engine(task, ML_LOGITS, ML_TARGETS).evaluate()  # batches of 3 and 1: exact metrics over all four
    assert result["val/map"] == pytest.approx(7 / 8, rel=1e-6) and result["val/auroc"] == pytest.approx(17 / 24, rel=1e-6)
    # BCE: a logit of ln 3 is a probability of 3/4: -ln(3/4) for a 1, -ln(1/4) for a 0; logit 0: ln 2 either way
    out, y = torch.tensor([[math.log(3), math.log(3), 0.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    assert task.loss(out, y).item() == pytest.approx((math.log(4 / 3) + math.log(4) + math.log(2)) / 3, rel=1e-6)


def test_regression_mae_rmse_and_losses_by_hand():
    """outputs 1, 2, 3, 4 against targets 1, 0, 3, 8: errors 0, 2, 0, -4; MAE = 6/4, MSE = 20/4 = 5,
    RMSE = sqrt(5). Over batches of 3 and 1 the RMSE is over all four (the mean of the batches'
    RMSEs, (sqrt(4/3) + 4) / 2, would be wrong)."""
    out, y = torch.tensor([[1.], [2], [3], [4]]), torch.tensor([1., 0, 3, 8])  # (B, 1) outputs, (B,) targets
    assert compute(Regression(1), out, y) == pytest.approx({"mae": 1.5, "rmse": math.sqrt(5)}, rel=1e-6)
    assert Regression(1).loss(out, y).item() == pytest.approx(5.0)  # not broadcast to (B, B)
    assert Regression(1, loss="l1").loss(out, y).item() == pytest.approx(1.5)
    result = engine(Regression(1), out, y).evaluate()
    assert result == pytest.approx({"val/loss": 5.0, "val/mae": 1.5, "val/rmse": math.sqrt(5)}, rel=1e-6)
    two = Regression(2)  # (B, K) targets: every value counts; errors 1, 1, 0, 2 -> MAE 1, RMSE sqrt(6/4)
    got = compute(two, torch.tensor([[1., 1], [0, 2]]), torch.tensor([[0., 2], [0, 0]]))
    assert got == pytest.approx({"mae": 1.0, "rmse": math.sqrt(1.5)}, rel=1e-6)
    with pytest.raises(ConfigError, match="task=regression: targets of shape"):
        Regression(3).loss(torch.zeros(4, 3), torch.zeros(4))


def test_predict_columns():
    # softmax of (0, ln 3) is (1/4, 3/4); sigmoid of 0 and ln 3 are 1/2 and 3/4
    out = torch.tensor([[0.0, math.log(3)]])
    columns = Classification(2, classes=["a", "b"]).predict(out)
    assert columns["pred_class"] == ["b"] and columns["pred_index"] == [1] and columns["prob"] == pytest.approx([0.75])
    assert Classification(2).predict(out)["pred_class"] == [1]
    columns = MultiLabel(2, classes=["x", "y"]).predict(out)
    assert list(columns) == ["prob/x", "prob/y"] and columns["prob/x"] + columns["prob/y"] == pytest.approx([0.5, 0.75])
    assert Regression(1).predict(torch.tensor([[2.5]])) == {"pred": [2.5]}
    assert list(Regression(2).predict(out)) == ["pred/0", "pred/1"]


@pytest.mark.parametrize("make,message", [
    (lambda: Classification(10, label_smoothing=1.0), "task.label_smoothing=1.0: must be in [0, 1)"),
    (lambda: Classification(10, label_smoothing=-0.1), "task.label_smoothing=-0.1"),
    (lambda: Classification(1), "task=classification: the dataset has num_classes=1"),
    (lambda: Regression(1, loss="huber"), "task.loss=huber: use mse"),
    (lambda: Regression(1, mode="down"), "task.mode=down: use max"),
    (lambda: Classification(10, monitor="val/f1"), "task.monitor=val/f1: not a metric this task logs"),
    (lambda: Classification(4, monitor="val/acc_top5"), "task.monitor=val/acc_top5"),  # no top-5 of 4 classes
    (lambda: MultiLabel(3, monitor="val/rmse"), "use one of train/loss, val/loss, val/map, val/auroc"),
    (lambda: Regression(1, monitor="val/loss", mode="max"), "task.mode=max: task.monitor=val/loss is a loss"),
])
def test_bad_task_values_are_one_line_config_errors(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert len(info.value.messages) == 1 and message in info.value.messages[0]


def test_best_epoch_is_strictly_better_under_the_mode():
    def best_index(values, mode):
        best = None
        for i, v in enumerate(values):
            if best is None or tasks.is_better(v, values[best], mode):
                best = i
        return best

    assert best_index([3.0, 2.0, 2.0, 2.5, 1.0, float("nan")], "min") == 4  # hand: 1.0 is the lowest
    assert best_index([3.0, 2.0, 2.0, 2.5], "min") == 1  # a tie keeps the earlier epoch
    assert best_index([0.1, 0.3, 0.3, 0.2], "max") == 1
    assert best_index([float("nan"), 5.0, 4.0], "min") == 2  # a NaN first epoch is beaten by any number
    assert tasks.worst("max") == 0.0 and tasks.worst("min") == math.inf


def test_plateau_monitor_is_checked_against_the_task():
    from framework.schedules import Plateau

    logged = tasks.logged_metrics(MultiLabel(3))
    assert logged == ["train/loss", "val/loss", "val/map", "val/auroc"]
    Plateau(10, lrf=0.01, monitor="val/map", mode="max").check_monitor(logged)
    with pytest.raises(ConfigError, match="scheduler.monitor=val/acc: not a metric this run logs; use one of train/loss"):
        Plateau(10, lrf=0.01, monitor="val/acc", mode="max").check_monitor(logged)
    with pytest.raises(ConfigError, match="scheduler.monitor=acc: use val/loss, train/loss or val/<a metric"):
        Plateau(10, lrf=0.01, monitor="acc")
    with pytest.raises(ConfigError, match="scheduler.monitor=val/map: not a metric this run logs; use one of val/loss"):
        Plateau(10, lrf=0.01, monitor="val/map").observe({"epoch": 0, "val/loss": 1.0, "lr": 0.1})


def test_worst_objective_and_optuna_direction_follow_the_task_mode():
    from framework.cli import worst_objective
    from framework.config import objective_direction

    assert worst_objective(compose_cfg("task=regression")) == math.inf
    assert worst_objective(compose_cfg()) == 0.0
    assert worst_objective(compose_cfg("task=regression", "task.mode=max")) == 0.0
    from hydra import compose, initialize_config_dir

    from framework.registry import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # with Hydra's node, as a sweep sees it
        for overrides, direction in ((["task=regression"], "minimize"), ([], "maximize")):
            cfg = compose("train", overrides=["hparams_search=lr_tpe", *overrides], return_hydra_config=True)
            assert cfg.hydra.sweeper.direction == direction
    assert objective_direction({"_target_": "framework.tasks.Regression"}) == "minimize"  # the class's default mode


def test_synthetic_labels_of_each_type():
    from framework.data import synthetic

    kw = dict(seed=0, train_size=40, val_size=8, num_classes=3, in_chans=1, img_size=4)
    cls, hot, val = (synthetic(**kw, label_type=t) for t in ("class", "multi_hot", "value"))
    x = cls.train.tensors[0]
    assert torch.equal(hot.train.tensors[0], x) and torch.equal(val.train.tensors[0], x)  # the same images
    y_cls, y_hot, y_val = cls.train.tensors[1], hot.train.tensors[1], val.train.tensors[1]
    assert y_cls.dtype == torch.int64 and y_cls.shape == (40,)
    assert y_hot.dtype == torch.float32 and y_hot.shape == (40, 3) and set(y_hot.unique().tolist()) <= {0.0, 1.0}
    assert y_val.dtype == torch.float32 and y_val.shape == (40, 3)
    # all three are functions of one score per label: the class is the argmax, a label is on when it is > 0
    assert torch.equal(y_val.argmax(1), y_cls) and torch.equal((y_val > 0).float(), y_hot)
    one = synthetic(**{**kw, "num_classes": 1}, label_type="value")
    assert one.train.tensors[1].shape == (40,) and one.num_classes == 1
    with pytest.raises(ConfigError, match="dataset.num_classes=1: must be >= 2"):
        synthetic(**{**kw, "num_classes": 1})


class DuckMAE:
    """A task written without the base class: L1 loss, one metric, minimised."""

    label_type = "value"

    def __init__(self, num_classes, monitor="val/mae", mode="min"):
        self.num_classes, self.monitor, self.mode = num_classes, monitor, mode

    def loss(self, outputs, targets):
        return (outputs - targets).abs().mean()

    def metrics(self):
        from torchmetrics import MeanAbsoluteError

        return {"mae": MeanAbsoluteError()}


@pytest.mark.parametrize("task", [
    ["task=classification"], ["task=multilabel"], ["task=regression", "dataset.num_classes=1"]],
    ids=lambda t: t[0])
def test_one_tiny_run_per_task(tmp_path, task):
    """epochs.csv has the task's metrics, the best epoch is the best of the logged monitor under
    its mode, summary.json and the checkpoints say which task it was."""
    objective = train_in_process(tmp_path, *TINY, "device=cpu", "epochs=2", *task)
    summary = json.loads((tmp_path / "summary.json").read_text())
    monitor, mode = summary["objective_name"], summary["objective_mode"]
    expected = {"task=classification": ("val/acc", "max", ["val/acc", "val/acc_top5"], "class", "Classification"),
                "task=multilabel": ("val/map", "max", ["val/map", "val/auroc"], "multi_hot", "MultiLabel"),
                "task=regression": ("val/rmse", "min", ["val/mae", "val/rmse"], "value", "Regression")}[task[0]]
    assert (monitor, mode) == expected[:2]
    epochs = read_csv(tmp_path / "epochs.csv")
    assert list(epochs[0]) == ["epoch", "train/loss", "val/loss", *expected[2], "lr", "time_s"]
    values = [float(r[monitor]) for r in epochs]
    best = (max if mode == "max" else min)(values)
    assert summary["objective"] == objective == best and summary["best"]["epoch"] == values.index(best)
    assert summary["task"] == {"name": f"framework.tasks.{expected[4]}",
                               "label_type": expected[3], "monitor": monitor, "mode": mode}
    assert summary["classes"] is None
    state = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert state["task"] == summary["task"] and state["classes"] is None and state["epoch"] == values.index(best) + 1


def test_a_task_of_ones_own_and_the_range_test_on_its_loss(tmp_path):
    """A duck-typed task (no base class) selected by _target_ gets value labels from the dataset;
    the LR range test runs on the task's loss."""
    from framework.lr_finder import LRFinder

    built = build_run(tmp_path, *TINY, "device=cpu", "task=regression", "task._target_=tests.test_tasks.DuckMAE",
                      "~task.loss", "task.monitor=val/mae", "dataset.num_classes=2")
    trainer = built.trainer
    assert isinstance(built.task, DuckMAE) and trainer.metric_names == ["mae"]
    assert set(trainer.evaluate()) == {"val/loss", "val/mae"}
    result = LRFinder(num_steps=6, start_lr=1e-4, end_lr=1e-2).run(trainer, lr0=0.01)
    assert len(result.losses) == 6 and all(math.isfinite(v) for v in result.losses)


def test_a_diverged_min_mode_run_writes_null_and_returns_inf(tmp_path):
    from framework.trainer import Diverged

    with pytest.raises(Diverged):
        train_in_process(tmp_path, *TINY, "device=cpu", "epochs=1", "task=regression", "lr0=1e6",
                         "trainer.save_checkpoints=false")
    summary = json.loads((tmp_path / "summary.json").read_text())  # standard JSON: no Infinity
    assert summary["status"] == "diverged" and summary["objective"] is None and summary["objective_mode"] == "min"
    from framework.summary import returned_objective

    assert returned_objective(summary) == math.inf and returned_objective({"objective": None}) == 0.0


def fake_job(folder, monitor, mode, best, status="completed", lr0=0.01):
    """A sweep job folder as a run leaves it: .hydra/config.yaml, overrides, summary.json."""
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(f"lr0: {lr0}\n")
    (hydra / "overrides.yaml").write_text(f"- lr0={lr0}\n")
    summary = {"status": status, "objective_name": monitor, "objective": best, "lr0": lr0,
               "best": {monitor: best, "epoch": 0} if best is not None else {},
               "final": {monitor: best, "train/loss": 1.0} if best is not None else {}}
    if mode is not None:
        summary["objective_mode"] = mode
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_ranks_by_the_objective_mode(tmp_path):
    from framework.report import write_report

    sweep = tmp_path / "min"  # val/rmse: lower is better; the diverged job last whatever its number
    for job, (best, status) in enumerate([(0.5, "completed"), (0.2, "completed"), (0.9, "completed"),
                                          (None, "diverged")]):
        fake_job(sweep / str(job), "val/rmse", "min", best, status, lr0=10.0 ** -job)
    rows = write_report(sweep)["rows"]
    assert [r["job"] for r in rows] == ["1", "0", "2", "3"]  # by hand: 0.2 < 0.5 < 0.9, then diverged
    csv_rows = read_csv(sweep / "report.csv")
    assert [r["best_val_rmse"] for r in csv_rows[:3]] == ["0.2", "0.5", "0.9"]
    md = (sweep / "report.md").read_text()
    assert "| best val/rmse | final val/rmse |" in md and "(lower is better)" in md
    old = tmp_path / "old"  # summaries older than tasks: no objective_mode, val/acc, maximised
    for job, best in enumerate([0.5, 0.9, 0.7]):
        fake_job(old / str(job), "val/acc", None, best, lr0=10.0 ** -job)
    assert [r["job"] for r in write_report(old)["rows"]] == ["1", "2", "0"]
    assert "best_val_acc" in read_csv(old / "report.csv")[0]
