"""An evolutionary Optuna sampler in the manner of Ultralytics' ``Tuner``: each new trial is a
mutated copy of one of the best trials so far, and pruned trials count, ranked below the
completed ones, so the search learns from trials that never finished (``hydra/sweeper/sampler=
mutation``, the sampler of ``hparams_search=lr_evolve``).

Algorithm (Ultralytics ``ultralytics/engine/tuner.py``, ``Tuner._mutate``):

1. Rank the ended trials: completed ones by their value (best first, as the study's
   direction), then pruned ones (and, with ASHA with promotions, those waiting at a rung) by the
   epochs they reached (more first), then by their last reported value. Keep the top ``parents``.
2. Pick one parent at random with weight ``parents - rank`` (rank 0 = best; Ultralytics weighs
   by fitness minus the worst fitness, which needs values on one scale; a pruned trial's value
   after 1 epoch is not on the scale of a completed one's, so the rank stands in for it).
3. Multiply each numeric key by a gain ``g = clip(1 + m * z * u * sigma, 0.3, 3.0)`` where
   ``m`` is 1 with probability ``mutation_prob`` (else 0), ``z ~ N(0, 1)`` per key and ``u ~
   U(0, 1)`` per trial; draw again until some gain differs from 1. Clip to the key's bounds
   (whole numbers rounded); a key at 0 (e.g. ``warmup_epochs``), which a product would keep at
   0, moves to ``low + |g - 1| * (high - low)`` instead. A categorical key takes a random choice with probability
   ``mutation_prob``, else the parent's.
4. Before any trial has ended (the first ``n_startup_trials`` asks, or while none ended):
   ``x0`` (the composed config's values, as Ultralytics starts from the current
   hyperparameters) for the first trial, then independent random draws (log-uniform on a log
   scale).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["MutationSampler", "rank_trials"]


#: The trial states a parent is drawn from: ended ones, and running ones that wait at a rung of ASHA
#: with promotions (``paused_at``), which may never be told how they end before the sweep does.
PARENT_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def rank_trials(study: "optuna.Study", trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Ended trials best first: completed by value (the study's direction), then pruned ones and
    those waiting at a rung (``hydra/sweeper/pruner=asha_promotion``) by the last step reached
    (more first), then by their last reported value; others left out."""
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    pruned = [t for t in trials if t.intermediate_values and (
        t.state == TrialState.PRUNED or (t.state == TrialState.RUNNING and t.user_attrs.get("paused_at") is not None))]
    complete.sort(key=lambda t: (sign * t.value, t.number))
    pruned.sort(key=lambda t: (-t.last_step, sign * t.intermediate_values[t.last_step], t.number))
    return complete + pruned


class MutationSampler(BaseSampler):
    """Mutate one of the best ended trials (Ultralytics' Tuner; see the module's docstring).

    Args:
        parents: (trials) the best ended trials a parent is drawn from (Ultralytics: 5).
        mutation_prob: probability that a key mutates (Ultralytics: 0.8).
        sigma: scale of the multiplicative mutation (Ultralytics: 0.2).
        n_startup_trials: (trials) drawn at random (after ``x0``) before mutating, even when
            some have ended.
        x0: the starting point (key -> value) of the first trial; keys missing or out of bounds
            are drawn at random.
        seed: seed of the random draws (the same trials on a rerun of the same study).

    Raises:
        ValueError: ``parents`` < 1, ``mutation_prob`` outside (0, 1] or ``sigma`` <= 0.
    """

    def __init__(self, parents: int = 5, mutation_prob: float = 0.8, sigma: float = 0.2, n_startup_trials: int = 1,
                 x0: Optional[dict[str, Any]] = None, seed: Optional[int] = None):
        if parents < 1 or not 0 < mutation_prob <= 1 or sigma <= 0:
            raise ValueError(f"parents={parents} (>= 1), mutation_prob={mutation_prob} (in (0, 1]), sigma={sigma} (> 0)")
        self.parents, self.mutation_prob, self.sigma = int(parents), float(mutation_prob), float(sigma)
        self.n_startup_trials, self.x0 = int(n_startup_trials), dict(x0 or {})
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        """New random streams (Optuna calls it for samplers shared by parallel workers)."""
        self._rng = np.random.RandomState()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: "optuna.Study", trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Every key of the ended trials (they share one space in a sweep)."""
        ended = rank_trials(study, study.get_trials(deepcopy=False, states=PARENT_STATES))
        return dict(ended[0].distributions) if ended else {}

    def sample_relative(self, study: "optuna.Study", trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """A mutated copy of a parent (empty while no trial has ended or during start-up)."""
        if not search_space or trial.number < self.n_startup_trials:
            return {}
        ranked = rank_trials(study, study.get_trials(deepcopy=False, states=PARENT_STATES))
        top = ranked[:self.parents]
        weights = np.arange(len(top), 0, -1, dtype=float)
        parent = top[self._rng.choice(len(top), p=weights / weights.sum())]
        numeric = [k for k, d in search_space.items() if not isinstance(d, CategoricalDistribution)]
        gains = np.ones(len(numeric))
        for _ in range(100):  # draw until some key changes (Ultralytics: no duplicate of the parent)
            mask = self._rng.random_sample(len(numeric)) < self.mutation_prob
            gains = np.clip(1 + mask * self._rng.randn(len(numeric)) * self._rng.random_sample() * self.sigma, 0.3, 3.0)
            if not numeric or np.any(gains != 1):
                break
        params = {}
        for key, dist in search_space.items():
            value = parent.params.get(key)
            if isinstance(dist, CategoricalDistribution):
                flip = self._rng.random_sample() < self.mutation_prob
                params[key] = dist.choices[self._rng.randint(len(dist.choices))] if flip or value is None else value
                continue
            if value is None:
                continue  # left to sample_independent
            gain = gains[numeric.index(key)]
            if value == 0:  # a product stays 0: move by the same relative amount of the key's range instead
                params[key] = self._clip(dist, abs(gain - 1) * (dist.high - dist.low) + dist.low)
            else:
                params[key] = self._clip(dist, float(value) * gain)
        return params

    @staticmethod
    def _clip(dist: BaseDistribution, value: float) -> Any:
        if isinstance(dist, IntDistribution):
            value = int(round((min(max(value, dist.low), dist.high) - dist.low) / dist.step)) * dist.step + dist.low
            return min(value, dist.high)
        assert isinstance(dist, FloatDistribution)
        value = min(max(value, dist.low), dist.high)
        if dist.step is not None:
            value = min(round((value - dist.low) / dist.step) * dist.step + dist.low, dist.high)
        return float(value)

    def sample_independent(self, study: "optuna.Study", trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """``x0``'s value for the first trial (when it lies in the bounds), else a random draw."""
        if trial.number == 0 and param_name in self.x0:
            value = self.x0[param_name]
            try:
                if param_distribution._contains(param_distribution.to_internal_repr(value)):
                    return value
            except (ValueError, TypeError):
                pass
        return self._random.sample_independent(study, trial, param_name, param_distribution)
