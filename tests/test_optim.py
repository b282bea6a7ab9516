"""Parameter groups and optimizers."""
from __future__ import annotations

import pytest
import torch

from framework import registry
from framework.config import RESERVED_KEYS
from framework.optim import param_groups
from tests.helpers import compose_cfg


def test_no_weight_decay_on_biases_and_norm_weights():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    groups = {g["name"]: g for g in param_groups(net, 0.05)}
    decay = {id(p) for p in groups["decay"]["params"]}
    assert decay == {id(net[0].weight), id(net[3].weight)}
    assert len(groups["no_decay"]["params"]) == 4  # conv bias, bn weight, bn bias, linear bias
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0


def test_frozen_parameters_are_left_out():
    net = torch.nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    assert [g["name"] for g in param_groups(net, 0.1)] == ["decay"]


@pytest.mark.parametrize("name", registry.available("optimizer"))
def test_every_optimizer_reduces_the_loss_of_a_small_problem(name):
    lr0 = {"lars": 1.0, "lamb": 0.1}.get(name, 0.01)  # trust-ratio optimizers take larger LRs
    cfg = compose_cfg(f"optimizer={name}", f"lr0={lr0}")
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1)
    net = torch.nn.Linear(5, 1)
    opt = registry.instantiate(cfg.optimizer, "optimizer", reserved=RESERVED_KEYS["optimizer"], params=param_groups(net, cfg.optimizer.get("weight_decay", 0.0)))
    loss0 = torch.nn.functional.mse_loss(net(x), y).item()
    if hasattr(opt, "train"):
        opt.train()  # schedule-free optimizers step in train mode (the trainer switches them)
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * loss0


def test_layer_decay_scales_follow_timm_layer_ids():
    """test_vit has layers 0..7 (7 = head): scale of layer i = 0.75^(7-i)."""
    import timm

    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    groups = param_groups(model, 0.05, layer_decay=0.75)
    by_name = {g["name"]: g for g in groups}
    for i in range(8):
        for kind in ("decay", "no_decay"):
            if f"layer_{i}_{kind}" in by_name:
                assert by_name[f"layer_{i}_{kind}"]["lr_scale"] == pytest.approx(0.75 ** (7 - i), rel=1e-12)
    assert by_name["layer_7_decay"]["params"][0] is model.head.weight
    assert by_name["layer_0_decay"]["weight_decay"] == 0.05 and by_name["layer_0_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_head_lr_mult_puts_the_classifier_in_its_own_groups():
    import timm

    model = timm.create_model("test_resnet", num_classes=10)
    groups = {g["name"]: g for g in param_groups(model, 0.01, head_lr_mult=10.0)}
    assert [p is model.fc.weight for p in groups["head"]["params"]] == [True]
    assert [p is model.fc.bias for p in groups["head_no_decay"]["params"]] == [True]
    assert groups["head"]["lr_scale"] == 10.0 and groups["decay"]["lr_scale"] == 1.0
    assert groups["head"]["weight_decay"] == 0.01 and groups["head_no_decay"]["weight_decay"] == 0.0
    assert all(p is not model.fc.weight for p in groups["decay"]["params"])


def test_lr_scale_factor_hand_worked():
    from framework.optim import lr_scale_factor

    assert lr_scale_factor("linear", 512, 256) == 2.0
    assert lr_scale_factor("sqrt", 1024, 256) == 2.0
    assert lr_scale_factor("none", 1024, 256) == 1.0
    with pytest.raises(Exception, match="lr_scaling=cubic"):
        lr_scale_factor("cubic", 64, 256)


def test_timm_optimizer_names_are_checked():
    from framework.errors import ConfigError
    from framework.optim import timm_optimizer

    with pytest.raises(ConfigError, match="optimizer.opt=lamn: not a timm optimizer.*did you mean lamb"):
        timm_optimizer([torch.nn.Parameter(torch.zeros(1))], opt="lamn", lr=0.1)


def test_missing_optional_package_names_the_extra(monkeypatch):
    import sys

    from omegaconf import OmegaConf

    monkeypatch.setitem(sys.modules, "schedulefree", None)
    node = OmegaConf.create({"_target_": "schedulefree.SGDScheduleFree", "_partial_": True})
    assert registry.check_signature(node, "optimizer") == [
        "optimizer._target_=schedulefree.SGDScheduleFree: package 'schedulefree' is not installed; "
        "pip install -e '.[schedulefree]'"]


def test_schedule_free_optimizers_default_to_no_schedule():
    for name in ("sgd_schedulefree", "adamw_schedulefree", "prodigy"):
        assert compose_cfg(f"optimizer={name}").scheduler._target_ == "framework.schedules.NoSchedule"
    assert compose_cfg("optimizer=prodigy", "scheduler=cosine").scheduler._target_ == "framework.schedules.Cosine"
