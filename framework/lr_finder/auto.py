"""The range test as a run mode: ``mode=lr_find`` (test, write ``lr_find.*``, train nothing) and
``lr0=auto`` (test, then return the config with the chosen ``lr0``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework import registry
from framework.config import with_values
from framework.errors import ConfigError

log = logging.getLogger(__name__)


def range_test(cfg: DictConfig, run_dir: Path) -> Any:
    """Build the run as configured (``lr0=auto``: with lr0 = 1 as the base the group LRs are
    ratios of), run the LR range test on it and write ``lr_find.csv/.json/.png``.

    Args:
        cfg: a validated config; run_dir: where the ``lr_find.*`` files go.

    Returns:
        The :class:`RangeTestResult`.

    Raises:
        ConfigError: ``optimizer.lr`` is not ``${lr0}`` (the test would probe an LR the
            optimizer does not use), or the run cannot be built.
    """
    from framework.build import build
    from framework.lr_finder.finder import write_outputs

    key = "lr0=auto" if cfg.lr0 == "auto" else "mode=lr_find"
    if OmegaConf.to_container(cfg.optimizer, resolve=False).get("lr") != "${lr0}":
        raise ConfigError(f"{key}: optimizer.lr is not ${{lr0}} here ({type(cfg.optimizer.get('lr')).__name__} "
                          f"{cfg.optimizer.get('lr')}), so the range test would probe an LR the optimizer does not "
                          "use; set optimizer.lr='${lr0}' or use another optimizer")
    finder = registry.instantiate(cfg.lr_finder, "lr_finder")
    probe_cfg = with_values(cfg, lr0=1.0) if cfg.lr0 == "auto" else cfg
    trainer = build(probe_cfg, run_dir).trainer
    log.info("LR range test: %d probes from %g to %g (lr0 units)", finder.num_steps, finder.start_lr, finder.end_lr)
    result = finder.run(trainer, float(probe_cfg.lr0))
    write_outputs(result, run_dir)
    return result


def lr_find(cfg: DictConfig, run_dir: Path) -> float:
    """``mode=lr_find``: run the LR range test, write ``lr_find.*`` and ``summary.json``, print
    the answer, train nothing.

    Returns:
        0.0 (no objective: nothing was trained).

    Raises:
        ConfigError: as :func:`range_test`.
    """
    from framework.lr_finder.finder import answer
    from framework.summary import write_untrained_summary

    result = range_test(cfg, run_dir)
    print(answer(result))
    print(f"wrote {run_dir / 'lr_find.png'}, lr_find.csv, lr_find.json")
    write_untrained_summary(run_dir, "completed", mode="lr_find", lr0=result.lr, lr_find=result.to_json())
    return 0.0


def choose_lr0(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, Any]]:
    """``lr0=auto``: run the range test; return a new config with ``lr0`` = the chosen suggestion,
    and the test's record for ``summary.json``.

    The run is then built from scratch with that config (same seed, same initial weights and
    data order), so it equals a run started with ``lr0=<suggestion>``. ``cfg`` is not changed,
    nor is ``.hydra/config.yaml`` (the command as given); ``summary.json`` holds the choice.

    Raises:
        ConfigError: the range test found no suggestion (flat or too short a loss curve).
    """
    from framework.lr_finder.finder import answer

    result = range_test(cfg, run_dir)
    if result.lr is None:
        raise ConfigError("lr0=auto: " + answer(result).split(": ", 1)[1] + "; or set lr0 to a number")
    print(answer(result))
    log.info("lr0=auto: lr0=%r (%s)", result.lr, result.chosen)
    return with_values(cfg, lr0=result.lr), result.to_json()
