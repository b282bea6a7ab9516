"""LR policies: pure functions of the step index returning a multiplier on each group's base LR.

Notation (the LR contract, README): ``T`` optimizer steps ``k = 0 … T-1``; warmup of ``W`` steps; after
warmup the main schedule sees ``t`` = interval units (steps, or epochs with
``scheduler.interval=epoch``) since warmup ended, out of ``total_units``. Decaying schedules
reach exactly ``lrf`` at ``t = total_units-1``, so the last step of the run uses ``lr0·lrf``.

A schedule holds no state (plateau, driven by a metric, is the one exception): the trainer owns
``k`` and has :class:`LRPlan` apply the LR of step ``k`` before the step (``plan.py``: the LR
contract). Config files name the classes as ``framework.schedules.<Class>``; PyTorch's scheduler
classes (and a user's own ``LRScheduler`` subclass) enter through :class:`TorchScheduler`
(``adapter.py``), which computes their multiplier of every unit ahead. :class:`Piecewise`
(``piecewise/``) replays a recorded LR trace, such as one a search found, exported from a run folder.
"""
from framework.schedules.adapter import TorchScheduler
from framework.schedules.base import Decay, Schedule
from framework.schedules.cycles import CosineRestarts, Cyclic, OneCycle
from framework.schedules.decay import (
    WSD,
    Constant,
    Cosine,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    NoSchedule,
    Poly,
    Step,
    Ultralytics,
)
from framework.schedules.piecewise import Piecewise
from framework.schedules.plan import LRPlan
from framework.schedules.plateau import Plateau

__all__ = [
    "Schedule", "Decay", "LRPlan", "Constant", "NoSchedule", "Step", "MultiStep", "Exponential",
    "Cosine", "Linear", "Poly", "InverseSqrt", "WSD", "OneCycle", "Cyclic", "CosineRestarts", "Plateau",
    "Ultralytics", "TorchScheduler", "Piecewise",
]
