"""The training loop (``loop``) and its parts: the divergence guard (``guard``) and the rollbacks
(``rollback``), the buffered step log (``steplog``), stop signals (``signals``), the run's
position (``state``), its checkpoint dict (``checkpointing``), and what an epoch's end judges
(``validation``: how often it validates, the weights' EMA (``ema``), early stopping
(``early_stopping``)).

Config files name the loop as ``framework.trainer.Trainer``.
"""
from framework.trainer.guard import Diverged, DivergenceGuard
from framework.trainer.loop import Trainer
from framework.trainer.signals import StopSignals
from framework.trainer.steps import group_sizes

__all__ = ["Trainer", "Diverged", "DivergenceGuard", "StopSignals", "group_sizes"]
