"""A user's own model (``model=custom model._target_=...``) and own data (the DataBundle contract,
``dataset=csv``, ``dataset=imagefolder`` with a test folder), without workarounds.

The user's code lives in a module the test writes into ``tmp_path`` and puts on ``sys.path``.
"""
from __future__ import annotations

import shutil
import sys
import textwrap

import pytest
import torch

from framework import registry
from framework.config import validate
from framework.errors import ConfigError
from tests.helpers import (TINY, build_run, compose_cfg, lines, read_csv, run_cli_in_process, train_in_process,
                           write_csv_images, write_imagefolder)

USER_NETS = '''
import torch
from torch import nn

calls = []  # the keyword arguments each callable was given, in call order


class StrictCNN(nn.Module):
    """A strict constructor: num_classes only (no in_chans, no img_size, no **kwargs)."""

    def __init__(self, num_classes):
        super().__init__()
        calls.append({"num_classes": num_classes})
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def build_net(num_classes, in_chans, width=4):
    """A factory function with a key of its own (width)."""
    calls.append({"num_classes": num_classes, "in_chans": in_chans, "width": width})
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def open_net(**kwargs):
    """Takes whatever it is given."""
    calls.append(dict(kwargs))
    return nn.Linear(3, kwargs["num_classes"])


def user_data(seed, label_type, n=10):
    """Own data: 10 images of 3x8x8, classes even/odd; records the runtime inputs it got."""
    from framework.data import DataBundle

    calls.append({"seed": seed, "label_type": label_type, "n": n})
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, torch.arange(n) % 2)
    return DataBundle(data, data, 2, 3, 8, classes=["even", "odd"])


def fixed_data():
    """Own data that takes no runtime input at all."""
    from framework.data import DataBundle

    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 8, 8), torch.arange(6) % 3)
    return DataBundle(data, data, 3, 3, 8)


def not_a_module(num_classes):
    return {"classes": num_classes}


class NeedsDepth(nn.Module):
    def __init__(self, num_classes, depth):
        super().__init__()
        self.fc = nn.Linear(depth, num_classes)


class TwoHeads(nn.Module):
    """fc and fc2: the prefix fc is fc's parameters, not fc2's."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(3, 3), nn.Linear(3, 2)
'''


@pytest.fixture
def usernets(tmp_path, monkeypatch):
    """The module ``usernets`` (the source above) and the package ``brokenpkg`` (a module whose
    import raises), importable from ``tmp_path``."""
    (tmp_path / "usernets.py").write_text(textwrap.dedent(USER_NETS))
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("")
    (tmp_path / "brokenpkg" / "nets.py").write_text("import torch\n\nWIDTH = undefined_name * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("usernets", "brokenpkg")]:
        monkeypatch.delitem(sys.modules, name)
    yield sys.modules.get("usernets") or __import__("usernets")
    for name in [m for m in sys.modules if m.split(".")[0] in ("usernets", "brokenpkg")]:
        del sys.modules[name]


def errors_of(*overrides: str) -> list[str]:
    """The lines of ``validate``'s ConfigError for ``python train.py <overrides>`` ([] when valid)."""
    try:
        validate(compose_cfg(*overrides))
    except ConfigError as exc:
        return exc.messages
    return []


# --- own model ---------------------------------------------------------------------------------


def test_each_callable_gets_only_the_runtime_inputs_it_accepts(usernets, tmp_path):
    """+debug=tiny: synthetic data with 10 classes, 3 channels, 16 px. A constructor taking only
    num_classes gets only that; a factory taking in_chans gets it too, and its own key from the
    command line; a **kwargs callable gets all three runtime inputs."""
    custom = [*TINY, "model=custom"]
    build_run(tmp_path / "a", *custom, "model._target_=usernets.StrictCNN")
    build_run(tmp_path / "b", *custom, "model._target_=usernets.build_net", "+model.width=6")
    model = registry.instantiate(compose_cfg(*custom, "model._target_=usernets.open_net").model, "model",
                                 num_classes=10, in_chans=3, img_size=16)
    assert usernets.calls == [{"num_classes": 10}, {"num_classes": 10, "in_chans": 3, "width": 6},
                              {"num_classes": 10, "in_chans": 3, "img_size": 16}]
    assert isinstance(model, torch.nn.Linear)


def test_a_factory_function_trains_in_the_tiny_run(usernets, tmp_path):
    """256 samples, batch 64, 1 epoch: 4 optimizer steps."""
    train_in_process(tmp_path / "run", *TINY, "model=custom", "model._target_=usernets.build_net", "+model.width=4",
                     "epochs=1")
    assert [row["step"] for row in read_csv(tmp_path / "run" / "steps.csv")] == ["0", "1", "2", "3"]
    assert usernets.calls[-1] == {"num_classes": 10, "in_chans": 3, "width": 4}


def test_mistakes_in_an_own_model_are_one_line_each(usernets, tmp_path):
    assert errors_of(*TINY, "model=custom", "model._target_=usernets.NeedsDepth") == [
        "model.depth: required by usernets.NeedsDepth (the framework passes num_classes, in_chans, img_size); add it "
        "to the group file or the command line, +model.depth=<value>"]
    assert errors_of(*TINY, "model=custom", "model._target_=usernets.NeedsDepth", "+model.depth=3") == []
    assert errors_of(*TINY, "model=custom", "model._target_=usernets.build_net", "+model.widht=8") == [
        "model.widht: not an argument of usernets.build_net (did you mean width?); valid keys: width"]
    with pytest.raises(ConfigError) as exc:
        build_run(tmp_path, *TINY, "model=custom", "model._target_=usernets.not_a_module")
    assert exc.value.messages == [
        "model._target_=usernets.not_a_module: returned a dict, not a torch.nn.Module; make it return the network "
        "(a class deriving from nn.Module, or a function returning one)"]
    assert errors_of(*TINY, "model._target_=usernets.StrictCNN") == [  # on a timm model file: its keys stay
        "model._target_=usernets.StrictCNN: the timm keys model.name, model.pretrained, model.drop_rate of the model "
        "file are not arguments of it; start from model=custom (model=custom model._target_=usernets.StrictCNN)"]


def test_the_three_import_failures_are_told_apart(usernets, tmp_path):
    custom = [*TINY, "model=custom"]
    assert errors_of(*custom, "model._target_=mypkg.nets.build_net") == [
        "model._target_=mypkg.nets.build_net: cannot import module 'mypkg' (No module named 'mypkg'); run from the "
        "folder that holds mypkg/ (or mypkg.py) or add that folder to PYTHONPATH"]
    assert errors_of(*custom, "model._target_=usernets.build_nett") == [
        "model._target_=usernets.build_nett: module usernets has no build_nett (did you mean build_net?); fix the name"]
    assert errors_of(*custom, "model._target_=brokenpkg.nets.build_net") == [
        "model._target_=brokenpkg.nets.build_net: importing it raised NameError: name 'undefined_name' is not defined "
        f"({tmp_path / 'brokenpkg' / 'nets.py'}, line 3); fix that file"]
    assert errors_of(*custom, "model._target_=brokenpkg.other.build_net") == [  # a module the package does not have
        "model._target_=brokenpkg.other.build_net: module brokenpkg has no other; fix the name"]


def test_a_forgotten_target_is_one_line_and_exit_2_from_the_command_line(tmp_path, capfd):
    code = run_cli_in_process([*TINY, "model=custom"], tmp_path / "run")
    assert code == 2
    assert lines(capfd.readouterr().err) == [
        "error: model._target_: set it to your callable, e.g. model._target_=mypkg.nets.build_net"]
    assert not (tmp_path / "run").exists()


def test_head_prefix_puts_the_named_module_in_the_head_groups(usernets, tmp_path):
    """lr0 = 0.05, head_lr_mult = 10: fc.weight gets 0.5 (group head, with weight decay),
    fc.bias 0.5 (head_no_decay); the body keeps 0.05."""
    built = build_run(tmp_path, *TINY, "model=custom", "model._target_=usernets.StrictCNN", "lr0=0.05",
                      "optimizer.head_lr_mult=10", "optimizer.head_prefix=fc")
    model, optimizer = built.trainer.model, built.trainer.optimizer
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert built.base_lrs == pytest.approx({"decay": 0.05, "no_decay": 0.05, "head": 0.5, "head_no_decay": 0.5},
                                           rel=1e-12)
    assert [p is model.fc.weight for p in groups["head"]["params"]] == [True]
    assert [p is model.fc.bias for p in groups["head_no_decay"]["params"]] == [True]
    assert [p is model.body[0].weight for p in groups["decay"]["params"]] == [True]
    assert groups["head"]["weight_decay"] == 5e-4 and groups["head_no_decay"]["weight_decay"] == 0.0


def test_head_prefix_is_a_name_prefix_and_mistakes_name_the_modules(usernets):
    from framework.optim import param_groups

    two = usernets.TwoHeads()
    groups = {g["name"]: g for g in param_groups(two, 0.0, head_lr_mult=3.0, head_prefix="fc")}
    assert [id(p) for p in groups["head"]["params"]] == [id(two.fc.weight)]  # not fc2.weight
    assert groups["head"]["lr_scale"] == 3.0 and groups["decay"]["lr_scale"] == 1.0
    strict = usernets.StrictCNN(2)
    with pytest.raises(ConfigError) as exc:
        param_groups(strict, 0.0, head_lr_mult=10.0, head_prefix="fcc")
    assert exc.value.messages == ["optimizer.head_prefix=fcc: no parameter of StrictCNN starts with 'fcc' "
                                  "(did you mean fc?); its top-level modules are body, fc"]
    with pytest.raises(ConfigError) as exc:
        param_groups(strict, 0.0, head_lr_mult=10.0)
    assert exc.value.messages == ["optimizer.head_lr_mult=10.0: StrictCNN has no get_classifier() (timm's), so the "
                                  "head is not known; set optimizer.head_prefix to the name of its head module (its "
                                  "top-level modules are body, fc)"]
    with pytest.raises(ConfigError, match=r"^optimizer.layer_decay=0.75: StrictCNN has no layer grouping .*; set "
                                          r"optimizer.layer_decay=null"):
        param_groups(strict, 0.0, layer_decay=0.75)


# --- own data ----------------------------------------------------------------------------------


def test_an_own_dataset_callable_gets_seed_and_label_type_only_when_it_takes_them(usernets, tmp_path):
    """dataset=custom: the model is sized by the bundle (2 classes); the callable gets the run's
    seed and the task's label_type (class); one that takes neither is called without them."""
    build_run(tmp_path / "a", *TINY, "dataset=custom", "dataset._target_=usernets.user_data", "+dataset.n=10",
              "model=custom", "model._target_=usernets.StrictCNN", "seed=3", "batch_size=4")
    assert usernets.calls == [{"seed": 3, "label_type": "class", "n": 10}, {"num_classes": 2}]
    build_run(tmp_path / "b", *TINY, "dataset=custom", "dataset._target_=usernets.fixed_data", "batch_size=4")
    assert errors_of(*TINY, "dataset=custom") == [
        "dataset._target_: set it to your callable, e.g. dataset._target_=mypkg.data.build_data"]



def test_databundle_keeps_its_positional_fields_and_adds_test_and_classes():
    from framework.data import DataBundle, digits

    bundle = DataBundle("train", "val", 3, 1, 8)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size, bundle.test, bundle.classes) == (3, 1, 8, None, None)
    assert digits(seed=0).classes == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]


def test_torchvision_sets_carry_their_class_names(tmp_path):
    from framework.data import torchvision_dataset
    from tests.helpers import write_mnist

    write_mnist(tmp_path, n_train=8, n_test=4)
    data = torchvision_dataset(seed=0, name="mnist", root=str(tmp_path))
    assert data.classes == ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                            "7 - seven", "8 - eight", "9 - nine"]


def test_csv_one_class_column(tmp_path):
    """write_csv_images: train.csv lists cat/0..2 then dog/0..2, val.csv cat/0, dog/0."""
    from framework.data import csv_dataset

    write_csv_images(tmp_path, per_class=(3, 1), size=20)
    data = csv_dataset(train=str(tmp_path / "train.csv"), val=str(tmp_path / "val.csv"), img_size=16)
    assert (data.num_classes, data.in_chans, data.img_size, data.classes) == (2, 3, 16, ["cat", "dog"])
    assert (len(data.train), len(data.val), data.test) == (6, 2, None)
    x, y = data.val[1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == () and int(y) == 1
    assert data.val.paths == [str(tmp_path / "val" / "cat" / "0.png"), str(tmp_path / "val" / "dog" / "0.png")]
    held = csv_dataset(train=str(tmp_path / "train.csv"), val_frac=0.5, img_size=16)  # 3 of the 6 rows held out
    assert (len(held.train), len(held.val)) == (3, 3)
    assert sorted(held.train.paths + held.val.paths) == sorted(data.train.paths)
    assert held.val.paths == csv_dataset(train=str(tmp_path / "train.csv"), val_frac=0.5, img_size=16).val.paths


def test_csv_integer_classes_sort_as_numbers_and_root(tmp_path):
    from framework.data import csv_dataset

    write_imagefolder(tmp_path / "img", classes=("a",), per_class=(4, 1), size=12)
    (tmp_path / "labels.csv").write_text("file,digit\n0.png,10\n1.png,2\n2.png,1\n3.png,2\n")
    data = csv_dataset(train=str(tmp_path / "labels.csv"), val=str(tmp_path / "labels.csv"),
                       root=str(tmp_path / "img" / "train" / "a"), path_column="file", label_columns=["digit"],
                       img_size=8, augment=False)
    assert data.classes == ["1", "2", "10"]
    assert [int(data.val[i][1]) for i in range(4)] == [2, 1, 0, 1]


def test_csv_multi_label_and_value_columns(tmp_path):
    from framework.data import csv_dataset

    write_imagefolder(tmp_path, classes=("a",), per_class=(3, 1), size=12)
    (tmp_path / "attrs.csv").write_text("path,round,red,size\ntrain/a/0.png,1,0,2.5\ntrain/a/1.png,0,1,-1\n"
                                        "train/a/2.png,1,1,0\n")
    multi = csv_dataset(train=str(tmp_path / "attrs.csv"), val=str(tmp_path / "attrs.csv"),
                        label_columns=["round", "red"], label_type="multi_hot", img_size=8)
    assert (multi.num_classes, multi.classes) == (2, ["round", "red"])
    y = multi.val[0][1]
    assert y.dtype == torch.float32 and y.tolist() == [1.0, 0.0] and multi.val[2][1].tolist() == [1.0, 1.0]
    value = csv_dataset(train=str(tmp_path / "attrs.csv"), val=str(tmp_path / "attrs.csv"), label_columns=["size"],
                        label_type="value", img_size=8)
    assert (value.num_classes, value.classes) == (1, ["size"])
    assert [value.val[i][1].tolist() for i in range(3)] == [[2.5], [-1.0], [0.0]]


def test_csv_mistakes_are_one_line_before_training(tmp_path):
    from framework.data import csv_dataset

    write_csv_images(tmp_path, per_class=(2, 1), size=12)
    train, val = str(tmp_path / "train.csv"), str(tmp_path / "val.csv")

    def error(**kwargs) -> list[str]:
        with pytest.raises(ConfigError) as exc:
            csv_dataset(**{"train": train, "val": val, "img_size": 8, **kwargs})
        return exc.value.messages

    assert error(train=str(tmp_path / "nope.csv")) == [
        f"dataset.train={tmp_path / 'nope.csv'}: no such file ({tmp_path / 'nope.csv'}); give the CSV of image paths "
        "and labels (a header row, then one row per image)"]
    assert error(label_columns=["species"]) == [
        f"dataset.label_columns=[species]: no column 'species' in dataset.train={train}; its columns are path, label"]
    assert error(path_column="file") == [
        f"dataset.path_column=file: no column 'file' in dataset.train={train}; its columns are path, label"]
    (tmp_path / "multi.csv").write_text("path,cat,dog\ntrain/cat/0.png,1,0\ntrain/cat/1.png,2,0\n")
    assert error(train=str(tmp_path / "multi.csv"), val=None, label_columns=["cat", "dog"], label_type="multi_hot") == [
        f"dataset.label_columns: column 'cat' of dataset.train={tmp_path / 'multi.csv'} holds 2 on line 3; a "
        "multi-label column (label_type multi_hot) holds 0 or 1"]
    assert error(label_columns=["path", "label"]) == [
        "dataset.label_columns=[path,label]: label_type class takes one column (the class of each image); several 0/1 "
        "columns are a multi-label task (label_type multi_hot)"]
    (tmp_path / "gone.csv").write_text("path,label\ntrain/cat/0.png,cat\ntrain/cat/7.png,cat\ntrain/dog/9.png,dog\n")
    assert error(train=str(tmp_path / "gone.csv")) == [
        f"dataset.train={tmp_path / 'gone.csv'}: 2 of its 3 image files are missing, the first "
        f"{tmp_path / 'train' / 'cat' / '7.png'} (line 3); fix the paths (relative to the CSV's folder; or set "
        "dataset.root), or set dataset.skip_unreadable=true to leave them out"]
    (tmp_path / "bird.csv").write_text("path,label\nval/cat/0.png,cat\nval/dog/0.png,bird\n")
    assert error(val=str(tmp_path / "bird.csv")) == [
        f"dataset.val={tmp_path / 'bird.csv'}: class bird (line 3) not in dataset.train's classes (cat, dog); every "
        "class needs training images"]
    gone = csv_dataset(train=str(tmp_path / "gone.csv"), val=val, img_size=8, skip_unreadable=True)
    assert gone.train.paths == [str(tmp_path / "train" / "cat" / "0.png")]  # the missing two left out


def test_csv_config_trains_with_a_test_split(tmp_path):
    """6 training rows, batch 4: 2 steps; the test CSV is the validation one."""
    write_csv_images(tmp_path / "data", per_class=(3, 1), size=20)
    data = tmp_path / "data"
    train_in_process(tmp_path / "run", *TINY, "dataset=csv",
                     f"dataset.train={data / 'train.csv'}", f"dataset.val={data / 'val.csv'}",
                     f"dataset.test={data / 'val.csv'}", "dataset.img_size=16", "epochs=1", "batch_size=4")
    assert len(read_csv(tmp_path / "run" / "steps.csv")) == 2
    # new images to predict: a CSV of paths only (no label column)
    (data / "new.csv").write_text("path\nval/dog/0.png\nval/cat/0.png\ntrain/cat/1.png\n")
    assert run_cli_in_process(["mode=predict", f"resume={tmp_path / 'run'}", f"dataset.test={data / 'new.csv'}"],
                              None) == 0
    rows = read_csv(tmp_path / "run" / "predictions.csv")
    assert [r["path"] for r in rows] == [str(data / "val" / "dog" / "0.png"), str(data / "val" / "cat" / "0.png"),
                                         str(data / "train" / "cat" / "1.png")]
    assert all(r["pred_class"] in ("cat", "dog") and 0.5 <= float(r["prob"]) <= 1 for r in rows)  # the top of 2
    assert run_cli_in_process(["mode=test", f"resume={tmp_path / 'run'}", f"dataset.test={data / 'new.csv'}"],
                              None) == 2  # no labels to test against


def test_imagefolder_test_dir(tmp_path):
    from framework.data import imagefolder

    write_imagefolder(tmp_path, per_class=(3, 2), size=12)
    shutil.copytree(tmp_path / "val", tmp_path / "test")
    data = imagefolder(seed=0, root=str(tmp_path), test_dir="test", img_size=8)
    assert (len(data.test), data.classes) == (4, ["cat", "dog"])
    assert data.test.paths[2] == str(tmp_path / "test" / "dog" / "0.png") and data.test[2][1] == 1
    assert imagefolder(seed=0, root=str(tmp_path), img_size=8).test is None
    held = imagefolder(seed=0, root=str(tmp_path), val_dir=None, val_frac=0.5, test_dir="test", img_size=8)
    assert (len(held.train), len(held.val), len(held.test)) == (3, 3, 4)
    assert sorted(held.train.paths + held.val.paths) == sorted(data.train.paths)
    shutil.copytree(tmp_path / "val", tmp_path / "test2")
    (tmp_path / "test2" / "bird").mkdir()
    shutil.copy(tmp_path / "val" / "cat" / "0.png", tmp_path / "test2" / "bird" / "0.png")
    with pytest.raises(ConfigError) as exc:
        imagefolder(seed=0, root=str(tmp_path), test_dir="test2", img_size=8)
    assert exc.value.messages == ["dataset.test_dir=test2: its class folders differ from train/'s (not in train/: "
                                  "bird); use the same class folders"]
    with pytest.raises(ConfigError) as exc:
        imagefolder(seed=0, root=str(tmp_path), test_dir="tset", img_size=8)
    assert exc.value.messages == [f"dataset.test_dir=tset: no such folder ({tmp_path / 'tset'}); create it with the "
                                  "class folders of the training images, or set dataset.test_dir=null"]


def test_imagefolder_config_resolves_for_an_own_model(usernets):
    """imagefolder.yaml reads model.name / model.pretrained only if the model has them."""
    cfg = compose_cfg(*TINY, "dataset=imagefolder", "model=custom",
                      "model._target_=usernets.StrictCNN")
    assert (cfg.dataset.model_name, cfg.dataset.pretrained) == (None, False)
    assert errors_of(*TINY, "dataset=imagefolder", "model=custom",
                     "model._target_=usernets.StrictCNN") == []
