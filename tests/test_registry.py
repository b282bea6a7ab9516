"""The config tree is the registry; keys are checked against signatures."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from framework import registry
from framework.config import ConfigError


def test_available_lists_the_yaml_files():
    assert registry.available("scheduler") == sorted(
        p.stem for p in (registry.CONF_DIR / "scheduler").glob("*.yaml"))
    assert "cosine" in registry.available("scheduler") and registry.available("nope") == []


def test_check_signature_messages():
    node = OmegaConf.create({"_target_": "framework.schedules.Step", "_partial_": True,
                             "step_sise": 3, "total": 5, "interval": "epoch"})
    errors = registry.check_signature(node, "scheduler", runtime=("total",), reserved=("interval",))
    assert any(e.startswith("scheduler.step_sise: not an argument") and "did you mean step_size" in e for e in errors)
    assert "scheduler.total: is passed at run time; remove it from the YAML" in errors
    assert any(e.startswith("scheduler.step_size: required") for e in errors)
    assert len(errors) == 3


def test_unimportable_target_is_reported():
    node = OmegaConf.create({"_target_": "framework.schedules.Nope", "_partial_": True})
    [error] = registry.check_signature(node, "scheduler")
    assert error.startswith("scheduler._target_=framework.schedules.Nope: cannot be imported")


def test_instantiate_passes_runtime_arguments_and_wraps_rejections():
    node = OmegaConf.create({"_target_": "framework.schedules.Step", "_partial_": True, "step_size": 2,
                             "gamma": 0.5, "interval": "step"})
    sched = registry.instantiate(node, "scheduler", reserved=("interval",), total=10)
    assert [sched(t) for t in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    bad = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "nesterov": True})
    import torch

    with pytest.raises(ConfigError, match="optimizer: torch.optim.SGD rejected its arguments: Nesterov"):
        registry.instantiate(bad, "optimizer", params=[torch.nn.Parameter(torch.zeros(1))])
