"""ASHA's rule for Ray Tune as Optuna's pruner applies it: a trial that reaches a rung goes on only
when it is among the best ``max(1, floor(n / eta))`` of the ``n`` trials recorded at that rung,
itself included (``tune.asha_rule=top_k``, the default of ``python -m framework.tune``), so that
``tune.search=asha`` and ``hparams_search=lr_asha`` stop trials alike.

Ray's own ``ASHAScheduler`` (``tune.asha_rule=percentile``) lets a trial go on when its reward is
at least the ``(1 - 1/eta)`` percentile of the rewards recorded before it, linearly interpolated
(``numpy.nanpercentile``). With few trials at a rung that keeps trials outside the best ``1/eta``:
at eta = 4, after rewards 0.1, 0.1, 0.106 and 0.272 its cutoff is 0.1475, so a fifth trial at
0.15 goes on although it is not the best of five, where the top-``k`` rule (k = floor(5/4) = 1)
stops it. The top-``k`` rule is the harsher one while a rung holds fewer than ``eta`` trials:
each newcomer must then beat every earlier one. The first trial at a rung goes on under both.
Both decide when a trial arrives at a rung (stopping), where the paper's ASHA promotes paused
trials later; a pruned trial's checkpoint is kept, so ``resume=<its folder>`` trains it on.

Sources: Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", Algorithm 2
(promote from the top ``floor(|rung| / eta)``); Optuna's ``SuccessiveHalvingPruner`` (the same
``k`` at the moment a trial reports, counting the trial itself, at least 1); Ray Tune 2.x
``ray.tune.schedulers.async_hyperband`` (the scheduler and its ``_Bracket``, whose ``on_result``
asks ``cutoff(recorded)`` at each rung: the method this replaces).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

#: ``tune.asha_rule`` values (``promotion``: :mod:`framework.search.ray_promotion`).
ASHA_RULES = ("top_k", "percentile", "promotion")


def top_k_cutoff(recorded: Sequence[float], reduction_factor: float) -> Optional[float]:
    """The reward a new trial at a rung must reach to go on under the top-``k`` rule, or None (it
    goes on: no finite reward recorded yet).

    With ``n`` rewards recorded before it, the new trial is the ``(n + 1)``-th at the rung and goes
    on when it is among the best ``k = max(1, floor((n + 1) / reduction_factor))``: when its reward
    is at least the ``k``-th largest recorded one (ties go on, as in Ray and Optuna). Rewards are
    "larger is better" (Ray negates a metric with mode ``min``). A NaN reward counts in ``n`` but
    ranks below every number; a trial whose own reward is NaN goes on (Ray compares
    ``reward < cutoff``, False for NaN), as under Ray's rule.

    Args:
        recorded: the rewards of the trials that reached the rung before (any order).
        reduction_factor: ``eta`` > 1.
    """
    values = sorted((v for v in recorded if not math.isnan(v)), reverse=True)
    if not values:
        return None
    k = max(1, math.floor((len(recorded) + 1) / reduction_factor))
    return values[k - 1] if k <= len(values) else None


def asha_scheduler(rule: str, **kwargs: Any) -> Any:
    """Ray's ``ASHAScheduler(**kwargs)`` deciding by ``rule``: ``percentile`` is
    Ray's own; ``top_k`` the same scheduler whose brackets use :func:`top_k_cutoff`.

    Raises:
        ValueError: an unknown rule (the command line checks it first).
    """
    from ray.tune.schedulers import ASHAScheduler

    if rule not in ("top_k", "percentile"):  # promotion: framework.search.ray_promotion's scheduler
        raise ValueError(f"tune.asha_rule={rule}: use top_k or percentile here")
    scheduler = ASHAScheduler(**kwargs)
    if rule == "top_k":
        for bracket in scheduler._brackets:  # Ray's _Bracket.on_result asks cutoff(recorded) at each rung
            bracket.cutoff = lambda recorded, rf=bracket.rf: top_k_cutoff(list(recorded.values()), rf)
    return scheduler
