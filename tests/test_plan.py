"""Step counting and warmup length (the LR contract, README), worked out by hand."""
from __future__ import annotations

from omegaconf import OmegaConf

from framework.schedules.plan import count_steps, warmup_length


def test_count_steps():
    assert count_steps(16, 4, 3, None) == (12, 4)  # 1000 samples / batch 64 = 16 batches
    assert count_steps(23, 1, 10, None) == (230, 23)
    assert count_steps(23, 4, 10, None) == (60, 6)  # ceil(23/4): the last group of 3 batches steps
    assert count_steps(23, 1, 10, 50) == (50, 23)


def test_warmup_length():
    cfg = lambda **kw: OmegaConf.create({"warmup_steps": None, "warmup_epochs": 0.0, **kw})
    assert warmup_length(cfg(warmup_epochs=1.5), 10) == (15, "warmup_epochs=1.5")
    assert warmup_length(cfg(warmup_epochs=0.0), 10) == (0, "warmup_epochs=0.0")
    assert warmup_length(cfg(warmup_epochs=0.01), 10) == (1, "warmup_epochs=0.01")
    assert warmup_length(cfg(warmup_epochs=3.0, warmup_steps=7), 10) == (7, "warmup_steps=7")
