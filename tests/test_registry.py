"""The config tree is the registry; keys are checked against signatures."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from framework import registry
from framework import schema
from framework.errors import ConfigError


def test_available_lists_the_yaml_files(tmp_path, monkeypatch):
    """A group's options are its folder's YAML files, by name, sorted; nothing else counts."""
    for name in ("wsd.yaml", "cosine.yaml", "notes.txt", "old.yaml.bak", "sub/inner.yaml"):
        (tmp_path / "scheduler" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "scheduler" / name).write_text("# x\n")
    monkeypatch.setattr(schema, "CONF_DIR", tmp_path)  # (defined in the leaf module; registry re-exports it)
    assert registry.available("scheduler") == ["cosine", "wsd"]
    assert registry.available("nope") == []


def test_check_signature_messages():
    node = OmegaConf.create({"_target_": "framework.schedules.Step", "_partial_": True,
                             "step_sise": 3, "total_units": 5, "interval": "epoch"})
    errors = registry.check_signature(node, "scheduler", runtime=("total_units",), reserved=("interval",))
    assert any(e.startswith("scheduler.step_sise: not an argument") and "did you mean step_size" in e for e in errors)
    assert "scheduler.total_units: is passed at run time; remove it from the YAML" in errors
    assert any(e.startswith("scheduler.step_size: required") for e in errors)
    assert len(errors) == 3


def test_unimportable_target_is_reported():
    node = OmegaConf.create({"_target_": "framework.schedules.Nope", "_partial_": True})
    assert registry.check_signature(node, "scheduler") == [
        "scheduler._target_=framework.schedules.Nope: module framework.schedules has no Nope; fix the name"]


def test_instantiate_passes_runtime_arguments_and_wraps_rejections():
    node = OmegaConf.create({"_target_": "framework.schedules.Step", "_partial_": True, "step_size": 2,
                             "gamma": 0.5, "interval": "step"})
    sched = registry.instantiate(node, "scheduler", reserved=("interval",), total_units=10)
    assert [sched(t) for t in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    bad = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "nesterov": True})
    import torch

    with pytest.raises(ConfigError, match="optimizer: torch.optim.SGD rejected its arguments: Nesterov"):
        registry.instantiate(bad, "optimizer", params=[torch.nn.Parameter(torch.zeros(1))])


def test_takes_reads_constructors_and_tolerates_callables_without_a_signature():
    from framework import schedules

    assert registry.takes(schedules.InverseSqrt, "warmup_units")  # its __init__ takes it
    assert not registry.takes(schedules.Cosine, "warmup_units")
    assert registry.takes(schedules.Cosine, "total_units")
    assert not registry.takes(max, "total_units")  # a built-in with no readable signature: False, no error
