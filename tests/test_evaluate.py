"""``mode=test`` and ``mode=predict`` on a trained run (README "Use it on your own project")."""
from __future__ import annotations

import csv
import re
import json

import pytest

from tests.helpers import TINY, lines, run_cli_in_process

TRAIN = [*TINY, "epochs=2", "dataset.train_size=64", "batch_size=32"]  # 4 steps; 64 validation images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (classification of the synthetic images; no test split)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    assert run_cli_in_process(TRAIN, run) == 0
    return run


def test_mode_test_on_the_validation_split_repeats_the_best_epochs_metrics(trained, capfd):
    capfd.readouterr()
    assert run_cli_in_process(["mode=test", f"resume={trained}", "eval_split=val"], None) == 0
    result = json.loads((trained / "val.json").read_text())  # the validation split's file
    best = json.loads((trained / "summary.json").read_text())["best"]  # recorded while training
    with open(trained / "epochs.csv") as f:
        epochs = list(csv.DictReader(f))
    assert result["checkpoint"] == str(trained / "checkpoints" / "best.pt") and result["split"] == "val"
    assert result["samples"] == 64 and result["task"]["monitor"] == "val/acc"
    assert result["step"] == 2 * (best["epoch"] + 1)  # 2 steps per epoch: saved at the end of the best epoch
    assert result["epoch"] == best["epoch"] and result["dataset"]["_target_"] == "framework.data.synthetic"
    # best.pt holds the weights of the best epoch: the same images give the same numbers
    assert result["metrics"]["val/acc"] == best["val/acc"] == float(epochs[best["epoch"]]["val/acc"])
    assert result["metrics"]["val/loss"] == pytest.approx(best["val/loss"], rel=1e-6)
    assert "wrote " + str(trained / "val.json") in capfd.readouterr().out


def test_mode_predict_writes_one_row_per_sample_with_its_label(trained):
    assert run_cli_in_process(["mode=predict", f"resume={trained}", "eval_split=val"], None) == 0
    with open(trained / "predictions_val.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and list(rows[0]) == ["index", "pred_class", "pred_index", "prob", "label"]
    assert json.loads((trained / "summary.json").read_text())["classes"] is None  # synthetic images: no names
    for row in rows:
        assert 0 <= int(row["pred_index"]) < 10 and 0.1 <= float(row["prob"]) <= 1  # the top of 10 probabilities
        assert row["pred_class"] == row["pred_index"]  # without names, the class is its index
    # the argmax rows against their labels give the accuracy torchmetrics logged for the best epoch
    best = json.loads((trained / "summary.json").read_text())["best"]
    assert sum(r["pred_index"] == r["label"] for r in rows) / 64 == best["val/acc"]
    assert run_cli_in_process(["mode=predict", f"resume={trained}", "eval_split=val",
                               "dataset.val_size=20"], None) == 0  # a key given here replaces the run's
    with open(trained / "predictions_val.csv") as f:
        assert [r["index"] for r in csv.DictReader(f)] == [str(i) for i in range(20)]


@pytest.mark.parametrize("args, message", [
    (["mode=test"], "error: mode=test: give the trained run, resume=<run folder or checkpoint .pt>"),
    (["mode=predict", "resume={run}"], "error: mode=predict: framework.data.synthetic gives no test split; set its "
                                       "test data (dataset.test_dir=<folder> for imagefolder, dataset.test=<csv> for "
                                       "csv), or evaluate the validation split with eval_split=val"),
    (["mode=test", "resume={run}/nothing.pt"], "error: resume={run}/nothing.pt: no checkpoint there"),
    (["mode=test", "resume={run}", "eval_split=train"], "error: eval_split=train: use test or val"),
])
def test_mode_test_mistakes_are_one_line(trained, capfd, args, message):
    before = sorted(p.name for p in trained.iterdir())
    capfd.readouterr()
    assert run_cli_in_process([a.format(run=trained) for a in args], None) == 2
    err = lines(capfd.readouterr().err)
    assert len(err) == 1 and err[0].startswith(message.format(run=trained))
    assert sorted(p.name for p in trained.iterdir()) == before  # nothing written into the run folder


@pytest.mark.parametrize("classes, num_classes, label_type, message", [
    (["cat", "zebra"], 2, "class", "resume=run: the run was trained on the classes ['cat', 'dog'] and the data "
                                   "evaluated now have ['cat', 'zebra']"),
    (None, 3, "class", "resume=run: the run's model has 2 outputs and the data evaluated now have num_classes=3"),
    (["cat", "dog"], 2, "multi_hot", "resume=run: the run was trained on class labels and the task now has multi_hot"),
])
def test_data_that_name_the_outputs_otherwise_are_refused(classes, num_classes, label_type, message):
    from types import SimpleNamespace

    from framework.errors import ConfigError
    from framework.evaluate import check_same_outputs

    state = {"classes": ["cat", "dog"], "task": {"label_type": "class"}}
    data, task = SimpleNamespace(classes=classes, num_classes=num_classes), SimpleNamespace(label_type=label_type)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_same_outputs(state, data, task, "run")
    check_same_outputs(state, SimpleNamespace(classes=["cat", "dog"], num_classes=2), SimpleNamespace(label_type="class"),
                       "run")  # the run's own: fine


def test_a_group_given_on_the_command_line_replaces_the_runs_group_and_a_key_changes_one_key():
    from omegaconf import OmegaConf

    from framework.evaluate import evaluation_config

    saved = {"mode": "train", "resume": None, "batch_size": 64, "eval_split": "test", "device": "auto",
             "loader": "auto", "num_workers": 0, "dataset": {"_target_": "mydata.build", "n_train": 5},
             "model": {"_target_": "framework.models.create_model", "name": "resnet18", "pretrained": True}}
    composed = OmegaConf.create({**saved, "mode": "test", "resume": "run", "batch_size": 8,
                                 "dataset": {"_target_": "framework.data.csv_dataset", "test": "new.csv"},
                                 "task": {"_target_": "framework.tasks.Classification"}})
    merged = evaluation_config(composed, saved, ["mode=test", "resume=run", "dataset=csv", "++dataset.test=new.csv"])
    assert OmegaConf.to_container(merged.dataset) == {"_target_": "framework.data.csv_dataset", "test": "new.csv"}
    assert merged.batch_size == 64 and merged.mode == "test" and merged.resume == "run"  # batch_size not given here
    assert merged.task._target_ == "framework.tasks.Classification"  # a run older than the task group: the default
    assert merged.model.name == "resnet18" and merged.model.pretrained is False  # the checkpoint holds the weights
    composed = OmegaConf.create({**saved, "batch_size": 8, "dataset": {"_target_": "framework.data.digits",
                                                                       "img_size": 32, "n_train": 7}})  # the default + key
    merged = evaluation_config(composed, saved, ["batch_size=8", "++dataset.n_train=7"])
    assert merged.batch_size == 8 and OmegaConf.to_container(merged.dataset) == {"_target_": "mydata.build", "n_train": 7}


def test_mode_test_sets_the_heap_threshold_of_its_command(trained, monkeypatch):
    """``trainer.malloc_trim_threshold_mb`` may change freely on resume: this command's value is
    the one the evaluation's engine sets (the run's when the command gives none)."""
    from framework.trainer import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", calls.append)
    assert run_cli_in_process(["mode=test", f"resume={trained}", "eval_split=val",
                               "trainer.malloc_trim_threshold_mb=null"], None) == 0
    assert run_cli_in_process(["mode=test", f"resume={trained}", "eval_split=val",
                               "trainer.malloc_trim_threshold_mb=64"], None) == 0
    assert run_cli_in_process(["mode=test", f"resume={trained}", "eval_split=val"], None) == 0
    assert calls == [None, 64, 1024]
