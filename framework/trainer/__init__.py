"""The training loop (``loop``) and its divergence guard (``guard``).

Config files name the loop as ``framework.trainer.Trainer``.
"""
from framework.trainer.guard import Diverged, DivergenceGuard
from framework.trainer.loop import Trainer, group_sizes

__all__ = ["Trainer", "Diverged", "DivergenceGuard", "group_sizes"]
