"""LR search that stops bad learning rates early.

- :mod:`framework.search.sweeper`: ``hydra/sweeper=lr_search``, a Hydra sweeper on current
  Optuna (>= 4): samplers TPE, CMA-ES, random, grid, NSGA-II; pruners median, successive
  halving (ASHA), Hyperband; a study shared by every job (a journal file in the sweep folder by
  default, any database URL for a cluster); a sweep resumed under the same folder keeps its
  finished trials.
- :mod:`framework.search.study`: the job's side: the trial a run reports its monitored
  validation value to, after every validated epoch.
- :mod:`framework.search.space`: Hydra's sweep syntax as Optuna distributions.
- :mod:`framework.search.ray_tune` (``python -m framework.tune``): Ray Tune's ASHA, HyperBand
  and Population Based Training over the same syntax, each trial a run in a Ray worker
  (:mod:`~framework.search.ray_trainable`, :mod:`~framework.search.ray_trial`); the best PBT
  trial's applied LR exported for ``scheduler=piecewise`` (:mod:`~framework.search.ray_results`).

A run takes part in a search through the top-level ``search`` key (set by the sweeper; null in
a plain run): a ``_target_`` config of a *trial hook*, an object with

- ``start(run_dir: Path, summary: dict, resumed: bool) -> None``: before training;
- ``should_prune(epoch: int, metrics: dict, value: float | None) -> bool``: after each validated
  epoch (0-based) once its checkpoint is saved, the last one included (its value is a result
  too); ``value`` is the task's monitored value as the best epoch takes it; True stops the run
  with ``status: pruned`` (resumable with ``resume=``). A hook never prunes at the run's last
  epoch (``summary["planned_epochs"]``, known at ``start``): such a run is complete;
- ``report() -> dict``: what ``summary.json``'s ``pruned`` block adds;
- ``finish(summary: dict) -> None``: after ``summary.json`` is written, however the run ended.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from framework.errors import ConfigError

__all__ = ["start_trial", "SEARCH_KEY", "RAY_SEARCHES"]

#: The top-level key that links a run to its search trial: plumbing set by the sweeper or
#: ``framework.tune``, left out of every command that re-creates or continues a run.
SEARCH_KEY = "search"
#: ``python -m framework.tune``'s ``tune.search`` values and their scheduler's name (summaries, reports).
RAY_SEARCHES = {"asha": "ASHA", "hyperband": "HyperBand", "pbt": "PBT"}


def start_trial(cfg: Any, run_dir: Path, summary: dict[str, Any], resumed: bool) -> Optional[Any]:
    """The run's trial hook built from ``cfg.search`` and started (None when ``search`` is null).

    Raises:
        ConfigError: ``search`` is not a ``_target_`` mapping, its target cannot be built, or
            the hook cannot reach its study (one line, before training).
    """
    node = cfg.get(SEARCH_KEY)
    if node is None:
        return None
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"search={node}: must be null or a trial hook config with _target_ (set by "
                          "hydra/sweeper=lr_search); set search=null for a plain run")
    from framework.registry import instantiate

    hook = instantiate(node, "search")
    hook.start(run_dir, summary, resumed)
    return hook
