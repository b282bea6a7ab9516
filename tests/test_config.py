"""Every YAML composes, validates and instantiates; bad input is one line, exit 2, no artefacts."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from framework import registry
from framework.config import GROUPS, RESERVED_KEYS, validate
from framework.errors import ConfigError
from framework.optim import build_optimizer
from framework.schedules.plan import build_plan
from framework.schema import TrainConfig
from tests.helpers import (HANG_GUARD_S, ROOT, TINY, compose_cfg, lines as stderr_lines, run_cli, run_cli_in_process,
                           write_csv_images, write_imagefolder, write_torchvision_files)

GROUP_FILES = sorted(p for g in GROUPS for p in (registry.CONF_DIR / g).rglob("*.yaml"))
DEBUG_FILES = sorted((registry.CONF_DIR / "debug").rglob("*.yaml"))
#: Groups without a callable of their own (trackers by name, presets of dataset keys).
OTHER_FILES = sorted(p for g in ("logger", "augment") for p in (registry.CONF_DIR / g).rglob("*.yaml"))


EXPERIMENT_FILES = sorted((registry.CONF_DIR / "experiment").rglob("*.yaml"))
SEARCH_FILES = sorted((registry.CONF_DIR / "hparams_search").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_every_experiment_composes_validates_and_heads_with_its_command(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_" and lines[1] == f"# python train.py +experiment={path.stem}"
    validate(compose_cfg(f"+experiment={path.stem}"))


@pytest.mark.parametrize("path", SEARCH_FILES, ids=lambda p: p.stem)
def test_every_sweep_file_composes_and_heads_with_its_command(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_" and lines[1] == f"# python train.py -m hparams_search={path.stem}"
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(registry.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hparams_search={path.stem}"], return_hydra_config=True)
    assert "lr0" in cfg.hydra.sweeper.params
    validate(cfg)


def test_lr_grid_is_log_spaced():
    text = (registry.CONF_DIR / "hparams_search" / "lr_grid.yaml").read_text()
    values = [float(v) for v in text.split("lr0: ")[1].split("#")[0].split(",")]
    assert len(values) >= 7 and values[0] == 1e-4 and values[-1] == 1.0
    ratios = [b / a for a, b in zip(values, values[1:])]
    assert all(2.99 < r < 3.34 for r in ratios)  # ~sqrt(10) per step: 1, 3 per decade


def test_ultralytics_experiment_sets_the_recipe():
    cfg = compose_cfg("+experiment=ultralytics")
    assert cfg.scheduler._target_ == "framework.schedules.Ultralytics" and cfg.scheduler.interval == "epoch"
    assert (cfg.warmup_epochs, cfg.warmup_momentum, cfg.optimizer.momentum) == (3.0, 0.8, 0.937)


def test_config_tree_found():
    assert len(GROUP_FILES) >= 20 and len(EXPERIMENT_FILES) >= 3 and len(SEARCH_FILES) >= 2
    for group in GROUPS:
        assert registry.available(group), group


def test_every_yaml_starts_with_a_purpose_comment():
    assert len(OTHER_FILES) >= 7
    for path in [registry.CONF_DIR / "train.yaml", *GROUP_FILES, *DEBUG_FILES, *OTHER_FILES]:
        assert path.read_text().startswith("# "), path


def test_every_key_has_a_comment():
    """Convention: every key carries a short `# (unit) meaning` comment (_target_/_partial_ aside)."""
    import re

    key_line = re.compile(r"^\s*[A-Za-z_][\w.]*:\s*\S")
    for path in [registry.CONF_DIR / "train.yaml", *GROUP_FILES, *EXPERIMENT_FILES, *SEARCH_FILES, *DEBUG_FILES,
                 *OTHER_FILES]:
        block_indent = None
        for line in path.read_text().splitlines():
            indent = len(line) - len(line.lstrip())
            if block_indent is not None and (not line.strip() or indent > block_indent):
                continue  # inside a block scalar (|)
            block_indent = indent if re.search(r":\s*\|", line) else None
            if key_line.match(line) and not line.lstrip().startswith(("_target_", "_partial_")):
                assert " # " in line, f"{path.name}: {line.strip()}"


#: What a group file that names no callable of its own (``_target_: ???``), or no file of its own
#: (``path: ???``: a schedule replayed from a file), is tested with.
OWN_TARGETS = {"model/custom": ["model._target_=tests.helpers.nets.StrictCNN"],
               "dataset/custom": ["dataset._target_=framework.data.synthetic"],
               "task/custom": ["task._target_=framework.tasks.Regression", "dataset=synthetic"],
               "scheduler/piecewise": [f"scheduler.path={ROOT / 'examples/schedules/warmup_hold_decay.yaml'}"]}


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_file_composes_validates_and_instantiates(path, tmp_path, monkeypatch):
    group = path.parent.name
    cfg = compose_cfg(f"{group}={path.stem}", *OWN_TARGETS.get(f"{group}/{path.stem}", []))
    validate(cfg)
    node = cfg[group]
    if group == "dataset" and node._target_ == "framework.data.torchvision_dataset":  # offline: tiny real-format files
        import torchvision.datasets.cifar

        write_torchvision_files(node.name, tmp_path)
        monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # published MD5s
        node.root, node.download = str(tmp_path), False
    if group == "dataset" and node._target_ == "framework.data.imagefolder":  # a generated class-per-folder tree
        write_imagefolder(tmp_path)
        node.root, node.img_size = str(tmp_path), 32
    if group == "dataset" and node._target_ == "framework.data.csv_dataset":  # the same images listed in CSV files
        write_csv_images(tmp_path)
        node.train, node.val, node.img_size = str(tmp_path / "train.csv"), str(tmp_path / "val.csv"), 32
    if group == "dataset":
        data = registry.instantiate(node, group, seed=0)
        x, y = data.train[0]
        assert x.shape == (data.in_chans, data.img_size, data.img_size) and 0 <= int(y) < data.num_classes
    elif group == "model":
        model = registry.instantiate(node, group, num_classes=10, in_chans=1, img_size=32)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    elif group == "optimizer":  # through the production path: groups with their final base LRs
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        opt, scaling = build_optimizer(validate(cfg), net)
        expected = 1.0 if path.stem == "prodigy" else 0.01  # lr0 = 0.01; Prodigy's LR multiplies its own d
        assert scaling == 1.0 and [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
        assert all(g["lr"] == g["initial_lr"] == expected for g in opt.param_groups)
    elif group == "scheduler":  # 10 epochs of 20 steps, 10 warmup steps (none for a replayed trace: it holds its own)
        own, warmup = OWN_TARGETS.get(f"scheduler/{path.stem}", []), [] if path.stem == "piecewise" else ["warmup_steps=10"]
        plan = build_plan(validate(compose_cfg(f"scheduler={path.stem}", *warmup, *own)), num_batches=20)
        assert plan.total_steps == 200 and all(0 < m <= 1 for m in plan.multipliers())
    elif group == "task":  # 10 outputs: a finite loss on labels of its label_type, its monitor among its metrics
        from framework.tasks import check_task, label_type_of, metric_names

        task = registry.instantiate(node, group, num_classes=10, classes=None)
        check_task(task)
        labels = {"class": torch.arange(4) % 10, "multi_hot": (torch.arange(40).view(4, 10) % 3 == 0).float(),
                  "value": torch.randn(4, 10)}[label_type_of(task)]
        assert torch.isfinite(task.loss(torch.randn(4, 10), labels)) and task.loss(torch.randn(4, 10), labels).ndim == 0
        assert task.monitor in ("val/loss", "train/loss", *(f"val/{m}" for m in metric_names(task)))
        assert list(task.metrics()) == metric_names(task)
    elif group == "lr_finder":
        finder = registry.instantiate(node, group)
        assert finder.num_steps == node.num_steps and finder.suggestion == node.suggestion
    elif group == "trainer":
        net = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        trainer = registry.instantiate(
            node, group, model=net, optimizer=opt, plan=None, data=(None, None), run_dir=".", device=torch.device("cpu")
        )
        assert trainer.accumulate == node.accumulate_grad_batches


def test_top_level_knobs_and_defaults():
    cfg = compose_cfg()
    for key in TrainConfig.__dataclass_fields__:
        assert key in cfg
    assert cfg.lr0 == 0.01 and cfg.lrf == 0.01 and cfg.max_steps is None and cfg.warmup_steps is None
    assert cfg.device == "auto" and cfg.resume is None
    assert cfg.optimizer.lr == cfg.lr0  # interpolated: an override of lr0 reaches the optimizer


def test_lr0_override_reaches_optimizer_as_the_literal_float():
    cfg = compose_cfg("lr0=5e-6", "optimizer=adamw")
    assert isinstance(cfg.lr0, float) and cfg.lr0 == 5e-6
    opt = registry.instantiate(cfg.optimizer, "optimizer", reserved=RESERVED_KEYS["optimizer"], params=[torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == float("5e-6")


def test_yaml_exponent_without_dot_reaches_the_optimizer_as_a_float(tmp_path):
    """`lr0: 1e-3` in train.yaml and `weight_decay: 5e-4` in a group file (no dot: YAML 1.1
    reads them as strings) reach torch.optim.SGD as the floats 0.001 and 0.0005."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(registry.CONF_DIR, conf)
    text = (conf / "train.yaml").read_text()
    assert "\nlr0:" not in text  # the default comes from the schema
    (conf / "train.yaml").write_text(text.replace("\nhydra:\n", "\nlr0: 1e-3  # (LR) written as YAML 1.1 reads a string\nhydra:\n"))
    assert "\nweight_decay: 5e-4 " in (conf / "optimizer" / "sgd.yaml").read_text()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        composed = compose(config_name="train", overrides=["optimizer=sgd"])
    cfg = validate(composed)
    opt, _ = build_optimizer(cfg, torch.nn.Linear(2, 2))
    decay = opt.param_groups[0]
    assert type(decay["lr"]) is float and decay["lr"] == 0.001
    assert type(decay["weight_decay"]) is float and decay["weight_decay"] == 0.0005


def test_validate_turns_a_numeric_string_lr0_into_a_float_in_a_new_config():
    """lr0 is typed loosely (it also takes auto): a quoted '1e-3' is checked as the number 0.001,
    and the config given to validate is left as it was."""
    from framework.config import with_values

    composed = with_values(compose_cfg(), lr0="1e-3")
    checked = validate(composed)
    assert composed.lr0 == "1e-3" and checked.lr0 == 0.001 and type(checked.lr0) is float
    assert checked.optimizer.lr == 0.001  # ${lr0} follows


def test_validate_reports_all_errors_at_once():
    cfg = compose_cfg("lr0=-1", "lrf=1.5", "epochs=0", "+scheduler.gama=0.5")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    text = str(info.value)
    for key in ("lr0=", "lrf=", "epochs=", "scheduler.gama"):
        assert key in text


def test_misspelled_scheduler_key_is_refused():
    with pytest.raises(ConfigError, match="scheduler.intervall: not an argument of framework.schedules.Cosine "
                                          r"\(did you mean interval\?\)"):
        validate(compose_cfg("+scheduler.intervall=step"))


def test_runtime_argument_in_yaml_is_refused():
    cfg = compose_cfg("+optimizer.params=[1]")
    with pytest.raises(ConfigError, match="optimizer.params: is passed at run time"):
        validate(cfg)


BAD_INPUTS = [
    (["lr=0.1"], "lr0"),
    (["scheduler=cosin"], "scheduler=cosin"),
    (["lr0=-1"], "lr0="),
    (["lr0=abc"], "lr0=abc"),
    (["lrf=1.5"], "lrf=1.5"),
    (["epochs=0"], "epochs=0"),
    (["epochs=abc"], "epochs=abc: must be a whole number, e.g. epochs=10"),
    (["batch_size=1.5"], "batch_size=1.5: must be a whole number, e.g. batch_size=64"),
    (["warmup_epochs=abc"], "warmup_epochs=abc: must be a number, e.g. warmup_epochs=0.0"),
    (["batch_size=0"], "batch_size=0"),
    (["dataset=synthetic", "epochs=2", "warmup_epochs=2"], "warmup_epochs"),
    (["model.name=notamodel"], "model.name=notamodel"),
    (["dataset=synthetic", "trainer.precision=fp16", "device=cpu"], "trainer.precision=fp16"),
    (["dataset=synthetic", "scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0"),
    (["dataset=synthetic", "optimizer.momentum=0"], "optimizer: torch.optim.SGD rejected"),
    (["dataset=synthetic", "+foo=1"], "foo: unknown top-level key"),
    (["dataset=synthetic", "model.drop_rate=2"], "model.drop_rate=2"),
    (["dataset=synthetic", "optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be two numbers"),
    # schedules whose durations do not fit the run, impossible pairs, out-of-range optimizer values
    (["dataset=synthetic", "scheduler=multistep", "scheduler.milestones=[5,50]"], "scheduler.milestones=[5, 50]"),
    (["dataset=synthetic", "scheduler=cosine_restarts", "scheduler.T_0=50"], "scheduler.T_0=50"),
    (["dataset=synthetic", "scheduler=wsd", "scheduler.decay_frac=1.5"], "scheduler.decay_frac=1.5"),
    (["dataset=synthetic", "scheduler=onecycle", "optimizer=lamb", "optimizer.opt=adagrad"],
     "scheduler.cycle_momentum: Adagrad has no momentum"),
    (["dataset=synthetic", "warmup_start_factor=0"], "warmup_start_factor=0"),
    (["dataset=synthetic", "optimizer.momentum=-0.5"], "optimizer.momentum=-0.5: must be in [0, 1)"),
    (["dataset=synthetic", "optimizer.momentum=1.5"], "optimizer.momentum=1.5: must be in [0, 1)"),
    (["dataset=synthetic", "optimizer=adam", "optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]"),
    (["dataset=synthetic", "trainer.stop_after_steps=0"], "trainer.stop_after_steps=0"),
    (["dataset=synthetic", "lr0=1e39"], "lr0=1e+39: must be a number in (0, 1e30]"),
    (["dataset=synthetic", "optimizer.weight_decay=-1"], "optimizer.weight_decay=-1: must be >= 0"),
    # non-finite numbers, the optimizer's LR set apart from lr0, unused groups, impossible batches
    (["dataset=synthetic", "warmup_epochs=inf"], "warmup_epochs=inf: must be a finite number"),
    (["dataset=synthetic", "optimizer.weight_decay=nan"], "optimizer.weight_decay=nan: must be a finite number"),
    (["dataset=synthetic", "optimizer.lr=abc"], "optimizer.lr=abc: the optimizer's LR is lr0"),
    (["dataset=synthetic", "optimizer.lr=0.1"], "set lr0=0.1 instead"),
    (["dataset=synthetic", "lr_finder.suggestion=valey"], "lr_finder.suggestion=valey: use one of"),
    (["dataset=synthetic", "optimizer=prodigy", "optimizer.head_lr_mult=10"],
     "optimizer.head_lr_mult=10: prodigyopt.Prodigy needs the same lr in every param group"),
    # test_resnet on 16 px: its last stage is 1x1 pixels, so a batch of 1 gives batch norm one value per channel
    (["dataset=synthetic", "dataset.train_size=1"], "dataset.train_size=1: a training batch of 1 sample reaches a "
                                                    "BatchNorm2d layer as one value per channel"),
    (["dataset=synthetic", "batch_size=1"], "batch_size=1: a training batch of 1 sample reaches a BatchNorm2d"),
    (["dataset=synthetic", "scheduler=step", "scheduler.gamma=0"], "scheduler.gamma=0"),
    (["dataset=synthetic", "scheduler=ultralytics", "scheduler.warmup_bias_lr=0.1"],
     "scheduler.warmup_bias_lr=0.1: moved to the top level; use warmup_bias_lr=0.1"),
    (["dataset=synthetic", "scheduler=ultralytics", "+scheduler.warmup_bias_lr=0.2"],
     "scheduler.warmup_bias_lr=0.2: moved to the top level; use warmup_bias_lr=0.2"),
    (["dataset=synthetic", "warmup_bias_lr=0.1", "optimizer.layer_decay=0.7"],
     "warmup_bias_lr=0.1: optimizer.layer_decay groups parameters by layer"),
    (["dataset=synthetic", "warmup_bias_lr=-1"], "warmup_bias_lr=-1.0: must be a finite LR >= 0 or null"),
    (["dataset=synthetic", "epochs=2", "warmup_epochs=10"], "warmup_epochs"),
    (["dataset=synthetic", "epochs=2", "scheduler=step", "scheduler.step_size=10"], "scheduler.step_size=10"),
    (["dataset=synthetic", "resume=/nonexistent/run"], "resume=/nonexistent/run: no checkpoint there"),
    (["dataset=mnist", "dataset.root=/nonexistent/data", "dataset.download=false"],
     "dataset.root=/nonexistent/data: no such folder"),
    # tasks: bad values, a monitor the run does not log, labels the dataset cannot give
    (["dataset=synthetic", "task.label_smoothing=1.5"], "task.label_smoothing=1.5: must be in [0, 1)"),
    (["dataset=synthetic", "task=regression", "task.monitor=val/acc"], "task.monitor=val/acc: not a metric"),
    (["dataset=synthetic", "scheduler=plateau", "scheduler.monitor=val/map"], "scheduler.monitor=val/map: not a metric"),
    (["task=multilabel"], "trains on multi_hot labels (a float tensor (K,) of 0/1, K = num_classes = 10), but "
                          "dataset._target_=framework.data.digits gives torch.int64 labels of shape ()"),
    # trackers and presets: a misspelled option (also inside a list), a key of a tracker not chosen
    (["logger=[csv,tensorbord]"], "logger=tensorbord: no such option (did you mean tensorboard?); available: csv, "
                                  "mlflow, tensorboard, wandb"),
    (["logger.mlflow.tracking_uri=http://x:1"], "logger.mlflow.tracking_uri=http://x:1: mlflow is not among this run's "
                                                "trackers; add it to the list, e.g. 'logger=[csv,mlflow]'"),
    (["augment=randaugmnt"], "augment=randaugmnt: no such option (did you mean randaugment?)"),
    (["hparams_search=lr_gird"], "hparams_search=lr_gird: no such option (did you mean lr_grid?)"),
]


@pytest.mark.parametrize("args,key", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_exit_2_before_training(tmp_path, capfd, args, key):
    """Run in this process (a subprocess per case costs ~4 s of imports); the subprocess path
    is covered by test_bad_input_from_a_real_command_line."""
    run_dir = tmp_path / "run"
    code = run_cli_in_process(["model.name=test_resnet", *args], run_dir)  # the smallest model unless a row names one
    out, err = capfd.readouterr()
    assert code == 2, err
    lines = stderr_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and key in lines[0]
    assert "Traceback" not in out + err
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())  # a refusal leaves no folder


@pytest.mark.parametrize("args,key", [BAD_INPUTS[0]], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_from_a_real_command_line(tmp_path, args, key):
    proc = run_cli(args, tmp_path / "run")
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr


def test_unknown_group_option_lists_the_available_names(tmp_path):
    proc = run_cli(["scheduler=cosin"], tmp_path / "run")
    assert "did you mean cosine" in proc.stderr
    for name in registry.available("scheduler"):
        assert name in proc.stderr


@pytest.mark.parametrize("text,line,problem", [
    ("_target_: timm.create_model\n_partial_: true\nname: [test_resnet\n", 4, "expected ',' or ']'"),
    ("_target_: timm.create_model\n_partial_: true\n\tname: test_resnet\n", 3, "a tab character"),
])
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capfd, text, line, problem):
    """A broken file in a config folder (here the user's, layered with --config-dir)."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    broken = tmp_path / "conf" / "model" / "broken.yaml"
    broken.write_text(text)
    code = run_cli_in_process(["--config-dir", str(tmp_path / "conf"), "model=broken"], tmp_path / "run")
    err = capfd.readouterr().err
    lines = stderr_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {broken}, line {line}, column 1: YAML syntax error: ") and problem in lines[0]
    assert not (tmp_path / "run").exists()


def test_hydra_full_error_0_in_the_environment_still_gives_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "scheduler=cosin", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
                          timeout=HANG_GUARD_S)
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: scheduler=cosin: no such option")


@pytest.mark.parametrize("where,reason", [("file", "File exists"), ("under_file", "Not a directory"),
                                          ("empty", "is empty")])
def test_an_unusable_run_folder_is_one_line_and_nothing_is_written(tmp_path, capfd, where, reason):
    (tmp_path / "file").write_text("keep me\n")
    target = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "run", "empty": ""}[where]
    code = run_cli_in_process([*TINY, "epochs=1", f"hydra.run.dir={target}"], None, cwd=tmp_path)  # "" = tmp_path
    err = capfd.readouterr().err
    lines = stderr_lines(err)
    assert code == 2 and len(lines) == 1 and reason in lines[0] and "hydra.run.dir" in lines[0], err
    assert (tmp_path / "file").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
