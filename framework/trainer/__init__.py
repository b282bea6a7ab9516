"""The training loop (``loop``) and its divergence guard (``guard``).

Config files name the loop as ``framework.trainer.Trainer``.
"""
from framework.trainer.guard import Diverged, DivergenceGuard
from framework.trainer.loop import Trainer
from framework.trainer.steps import group_sizes

__all__ = ["Trainer", "Diverged", "DivergenceGuard", "group_sizes"]
