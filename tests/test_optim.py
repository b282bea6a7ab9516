"""Parameter groups and optimizers."""
from __future__ import annotations

import pytest
import torch

from framework import registry
from framework.optim import param_groups
from tests.conftest import compose_cfg


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
    cfg = compose_cfg(f"optimizer={name}", "lr0=0.01")
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1)
    net = torch.nn.Linear(5, 1)
    opt = registry.instantiate(cfg.optimizer, "optimizer", params=param_groups(net, cfg.optimizer.get("weight_decay", 0.0)))
    loss0 = torch.nn.functional.mse_loss(net(x), y).item()
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * loss0
