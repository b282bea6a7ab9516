"""Optimizers: named parameter groups (no weight decay on biases and norm weights) + any torch optimizer."""
from __future__ import annotations

from typing import Any

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into ``decay`` and ``no_decay`` groups (timm's convention).

    Parameters with ``ndim <= 1`` (biases, norm scales and shifts) and names ending in ``.bias``
    get no weight decay, as ``timm.optim.param_groups_weight_decay``. Frozen parameters are left
    out. Empty groups are dropped.

    Args:
        model: the network.
        weight_decay: decay of the ``decay`` group (L2 coefficient, or decoupled for AdamW).

    Returns:
        ``[{"name": "decay", "params": [...], "weight_decay": wd}, {"name": "no_decay", ...}]``.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
