"""Weights & Biases: the run's config, per-step metrics and summary; offline by default (files in
the run folder, ``wandb sync`` later), online once the user is logged in."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from framework.tracking.base import EPOCH_SKIP, INDEX_COLUMNS, RunInfo, Tracker, best_metrics, numbers, require

#: W&B's exit code for each ``summary.json`` status (0 = the run finished).
EXIT_CODE = {"completed": 0, "stopped": 0}
#: The run's log file in its folder (Hydra's job log, ``hydra.job.name: train``), saved with the run.
LOG_FILE = "train.log"


class WandbTracker(Tracker):
    """Log a run to Weights & Biases (https://docs.wandb.ai/ref/python/init).

    ``wandb.init`` gets the nested config, the run's name, ``dir`` = the run folder (the offline
    files land in ``<run folder>/wandb/``) and, for a sweep job, ``group`` = the sweep folder's
    name; each ``steps.csv`` row is logged at step ``k`` (``lr``, ``lr/<group>``, ``momentum``,
    ``loss``, ``grad_norm``), each epoch's metrics at its last ``k``; the final summary's status,
    objective and ``best/<metric>`` go to the run's summary, and the run folder's ``train.log``
    to its files, as it is when the run ends (W&B's console capture is off unless
    ``WANDB_CONSOLE`` says otherwise: it would see the trackers' process, not the training; its
    system metrics follow the training process, ``x_stats_pid``). A resumed run
    continues its W&B run (same id, ``resume="allow"``).

    Args:
        project: W&B project.
        entity: team or user; None = the logged-in user's default.
        mode: ``offline`` (default: nothing leaves the machine until ``wandb sync <run
            folder>/wandb/offline-run-*``), ``online`` (needs ``wandb login`` or
            ``WANDB_API_KEY``), ``disabled``.
        tags: tags of every run.
    """

    package, extra = "wandb", "wandb"

    def __init__(self, project: str = "lrframe", entity: Optional[str] = None, mode: str = "offline",
                 tags: Optional[Sequence[str]] = None):
        self.project, self.entity, self.mode = project, entity, str(mode)
        self.tags = list(tags or [])
        self.run: Any = None
        self.run_dir: Any = None

    def check(self) -> None:
        """Raises ConfigError: wandb missing, an unknown mode, or ``online`` without a login."""
        from framework.errors import ConfigError

        require("wandb", "wandb", self.extra)
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.wandb.mode={self.mode}: use offline, online or disabled")
        if self.mode == "online" and not logged_in():
            raise ConfigError("logger.wandb.mode=online: not logged in to W&B; run wandb login (or set "
                              "WANDB_API_KEY), or use logger.wandb.mode=offline and wandb sync later")

    def start(self, info: RunInfo) -> dict[str, Any]:
        """``wandb.init`` in the run folder (a new run, or the earlier one on resume)."""
        import wandb

        earlier = info.earlier.get("id")
        self.run = wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, dir=str(info.run_dir), name=info.name,
            config=info.config, tags=self.tags or None, reinit="create_new",
            settings=wandb.Settings(x_stats_pid=info.pid, console=os.environ.get("WANDB_CONSOLE", "off")),
            group=info.sweep_dir.name if info.sweep_dir is not None else None,
            job_type="sweep-job" if info.sweep_dir is not None else "train",
            **({"id": earlier, "resume": "allow"} if earlier else {}),
        )
        self.run.summary.update({"objective_name": info.facts.get("objective_name")})
        self.run_dir = info.run_dir
        return {"id": self.run.id, "project": self.project, "mode": self.mode}

    def log_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        """Each row's numeric columns at step ``k``."""
        for row in rows:
            self.run.log(numbers(row, INDEX_COLUMNS), step=int(row["step"]))

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """The epoch's metrics at step ``step`` (with ``epoch``, from 0)."""
        self.run.log({**numbers(metrics, EPOCH_SKIP), "epoch": metrics.get("epoch")}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        """Status, objective and ``best/<metric>`` into the run's summary; ``finish``."""
        best = best_metrics(summary)
        self.run.summary.update({"status": summary.get("status"), "objective": summary.get("objective"), **best})
        log_file = self.run_dir / LOG_FILE
        if log_file.is_file():  # the run's log, in place of W&B's capture of its own process's console: a copy
            import shutil  # in the W&B run's folder, which outlives a moved run folder (wandb sync later)

            shutil.copyfile(log_file, Path(self.run.dir) / LOG_FILE)
            self.run.save(str(Path(self.run.dir) / LOG_FILE), base_path=self.run.dir, policy="now")
        self.run.finish(exit_code=EXIT_CODE.get(summary.get("status"), 1))


def logged_in() -> bool:
    """A W&B API key is set (``WANDB_API_KEY``) or stored by ``wandb login`` (``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return base in hosts
