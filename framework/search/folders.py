"""The job folders of an ``lr_search`` sweep: where a job is launched again to continue a run (a
promotion of ASHA with promotions, a rerun of an interrupted trial), as ``hydra.sweep.subdir``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

__all__ = ["numbered_subdirs", "rerun_folder", "subdir_of"]


def numbered_subdirs(config: Any) -> bool:
    """Whether the sweep's job folders are ``<sweep folder>/<job number>`` (Hydra's
    ``hydra.sweep.subdir: ${hydra.job.num}``, this package's default)."""
    from omegaconf import OmegaConf

    sweep = OmegaConf.to_container(config.hydra.sweep, resolve=False) if config is not None else {}
    return str(sweep.get("subdir")) == "${hydra.job.num}"


def rerun_folder(study: Any, trial: Any, sweep_dir: Path) -> Optional[str]:
    """The folder (relative to the sweep folder) in which a rerun of an interrupted trial (user
    attribute ``rerun_of``: stopped on a signal, or left running by a killed sweep) continues its
    first attempt's run from its checkpoint (:func:`framework.resume.resume_requeued_job`), when
    that folder holds a checkpoint and no ended run; None otherwise (a new folder, from the
    start). Its budget share is the folder's: the resumed summary counts every segment's steps."""
    from framework.loggers import read_summary

    first = trial.user_attrs.get("rerun_of")
    if first is None:
        return None
    original = next((t for t in study.get_trials(deepcopy=False) if t.number == first), None)
    run_dir = (original.user_attrs.get("run_dir") if original is not None else None) or None
    if run_dir is None or not (Path(run_dir) / "checkpoints" / "last.pt").is_file() \
            or read_summary(Path(run_dir)).get("status") not in (None, "stopped"):
        return None
    log.info("trial %d continues trial %d's run from its checkpoint in %s", trial.number, first, run_dir)
    return subdir_of(original, sweep_dir)


def subdir_of(trial: Any, sweep_dir: Path) -> str:
    """A trial's folder (user attribute ``run_dir``) relative to the sweep folder, as
    ``hydra.sweep.subdir`` takes it; its last part if the sweep folder has moved since."""
    folder = Path(trial.user_attrs["run_dir"])
    try:
        return str(folder.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        return folder.name
