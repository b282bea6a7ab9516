"""The Ray Tune trainable of ``python -m framework.tune``: one of our training runs per trial,
in its own Ray worker, in ``<tune folder>/<trial index>/``.

:class:`LRTrainable` is a class trainable (``ray.tune.Trainable``): each ``step`` is one
validated epoch of the run (:mod:`framework.search.ray_trial` explains how the run and the
trainable wait on each other), ``save_checkpoint`` puts the run's own checkpoint and CSVs into
Ray's checkpoint folder, ``load_checkpoint`` puts them back into the trial's run folder, which
then resumes from them (``resume=<run folder> resume_allow_changes=true``) with the trial's
current config: a Population Based Training exploit continues from the donor's exact
``checkpoints/last.pt`` (weights, optimizer state, LR-plan position) with the new ``lr0``, and
the trial's ``steps.csv`` holds the LR applied at every step of its lineage.

Source: the class API of Ray Tune 2.x (``ray.tune.Trainable``: ``setup``, ``step``,
``save_checkpoint``, ``load_checkpoint``, ``cleanup``).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ray import tune
from ray.tune.result import RESULT_DUPLICATE

from framework.search.ray_trial import CHANNELS, TIME_ATTR, Channel, restore_files, run_trial, save_files, steps_done

__all__ = ["TrialSpec", "LRTrainable", "compose_config", "trial_overrides", "trial_index"]


@dataclass
class TrialSpec:
    """What every trial of a tune run shares (sent once to the workers).

    Attributes:
        tune_dir: the tune folder (absolute; each trial's run folder is ``<tune_dir>/<index>``).
        fixed: the overrides every trial gets (``epochs=10``, ``+debug=tiny``).
        prefixes: ``+``/``++`` of each searched key, as written.
        config_dir: the user's config folder (``--config-dir``), absolute, or None.
        cwd: the folder the command ran in: trials run there (relative paths, the user's modules).
        search: ``asha`` | ``pbt`` | ``hyperband``; scheduler: its name in the pruned block.
        monitor, mode: the task's monitored metric and direction.
        cpus_per_trial: torch threads of each trial.
    """

    tune_dir: str
    fixed: list[str]
    prefixes: dict[str, str] = field(default_factory=dict)
    config_dir: Optional[str] = None
    cwd: str = "."
    search: str = "asha"
    scheduler: str = "ASHA"
    monitor: str = "val/acc"
    mode: str = "max"
    cpus_per_trial: float = 1


def compose_config(overrides: list[str], config_dir: Optional[str] = None) -> Any:
    """The config ``lrframe <overrides>`` (``--config-dir <config_dir>``) would get, without
    Hydra's own node.

    Raises:
        ConfigError: a composition mistake, in one line (:func:`framework.errors.user_messages`).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from framework.config import register_configs
    from framework.errors import ConfigError, user_messages
    from framework.schema import CONF_DIR

    register_configs()
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[*overrides, *extra])
    except Exception as exc:
        messages = user_messages(exc)
        if messages is None:
            raise
        raise ConfigError(messages) from None


def trial_overrides(spec: TrialSpec, params: dict[str, Any]) -> list[str]:
    """A trial's command-line overrides: the fixed ones, then ``key=value`` per searched key."""
    from framework.search.space import override_value

    return [*spec.fixed, *(f"{spec.prefixes.get(k, '')}{k}={override_value(v)}" for k, v in params.items())]


def trial_index(trial_id: str) -> int:
    """A trial's index from its Ray id (``<prefix>_00003`` -> 3: Tune's counter of created trials)."""
    return int(str(trial_id).rsplit("_", 1)[-1])


class LRTrainable(tune.Trainable):
    """One training run per trial (see the module docstring). ``config`` holds the trial's
    searched keys (``{"lr0": 0.0123, ...}``); :class:`TrialSpec` comes through
    ``tune.with_parameters(LRTrainable, spec=...)``."""

    def setup(self, config: dict[str, Any], spec: Optional[TrialSpec] = None) -> None:
        """Take the trial's folder, go to the command's folder, use ``cpus_per_trial`` threads."""
        assert spec is not None
        self.spec = spec
        self._begin()

    def _begin(self) -> None:
        """The state of a new trial (:meth:`setup`; :meth:`reset_config` when Tune reuses the worker)."""
        import torch

        spec = self.spec
        self.index = trial_index(self.trial_id)
        self.run_dir = Path(spec.tune_dir) / str(self.index)
        if Path(spec.cwd).is_dir():  # Ray starts trials in its own trial folder
            os.chdir(spec.cwd)
            if spec.cwd not in sys.path:  # the user's modules (model._target_=mynets.build)
                sys.path.insert(0, spec.cwd)
        torch.set_num_threads(max(1, int(spec.cpus_per_trial)))
        self.restored: Optional[dict[str, Any]] = None  # meta.json of the checkpoint this trial continues from
        self.thread: Optional[threading.Thread] = None
        self.channel: Optional[Channel] = None
        self.last: Optional[dict[str, Any]] = None  # the last epoch's result

    def _lineage(self) -> list[dict[str, Any]]:
        """The runs whose steps this trial's ``steps.csv`` holds: ``[{trial, from_step, to_step,
        params}, ...]``, the last one this trial's own (``to_step`` null: still going)."""
        own = {"trial": self.index, "from_step": 0, "to_step": None, "params": dict(self.config)}
        if not self.restored or not self.restored.get("has_checkpoint"):
            return [own]
        earlier = [dict(seg) for seg in self.restored.get("lineage", [])]
        if earlier and earlier[-1]["trial"] == self.index and earlier[-1]["params"] == own["params"]:
            earlier[-1]["to_step"] = None  # a pause (HyperBand, PBT's time-sharing): the same run goes on
            return earlier
        return [*earlier, {**own, "from_step": self.restored.get("step", 0)}]

    def _start(self) -> None:
        """Compose the trial's config, write its ``.hydra/``, start the run's thread."""
        from omegaconf import OmegaConf

        from framework.config import with_values

        overrides = trial_overrides(self.spec, dict(self.config))
        cfg = compose_config(overrides, self.spec.config_dir)
        resume = bool(self.restored and self.restored.get("has_checkpoint"))
        own = self.restored is None and (self.run_dir / "checkpoints" / "last.pt").is_file()  # tune.resume
        if not (resume or own) and self.run_dir.is_dir():  # an attempt cut before its first checkpoint: start afresh
            for leftover in self.run_dir.iterdir():
                if leftover.is_dir() and leftover.name != ".hydra":
                    shutil.rmtree(leftover)
                elif not leftover.is_dir():
                    leftover.unlink()
        hydra_dir = self.run_dir / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, hydra_dir / "config.yaml")  # as the report reads a job: its config, its overrides
        OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
        if resume or own:  # (own: an interrupted trial, continued from its last epoch)
            cfg = with_values(cfg, resume=str(self.run_dir), resume_allow_changes=True)
        cfg = with_values(cfg, search={"_target_": "framework.search.ray_trial.RayTrial", "trial": self.index})
        restored = {k: self.restored[k] for k in ("trial", "epoch", "step")} if resume else None
        info = {"trial": self.index, "search": self.spec.search, "params": dict(self.config),
                "restored_from": restored, "lineage": self._lineage()}
        self.channel = Channel(info, overrides, self.spec.scheduler, self.spec.monitor, self.spec.mode)
        CHANNELS[self.index] = self.channel
        self.thread = threading.Thread(target=run_trial, args=(cfg, self.run_dir, self.channel),
                                       name=f"trial-{self.index}", daemon=True)
        self.thread.start()

    def step(self) -> dict[str, Any]:
        """The next validated epoch's result; when the run has ended, Tune's end-of-trial result.

        Raises:
            Exception: the run's own error (a crash, a config mistake): the trial errs.
        """
        if self.thread is None:
            self._start()
        else:
            self.channel.decisions.put("continue")
        kind, payload = self.channel.results.get()
        if kind == "epoch":
            self.last = payload
            return dict(payload)
        self.thread.join()
        if kind == "error":
            raise payload
        if self.last is not None:  # Tune repeats the last result, marked done (as for its function API)
            return {RESULT_DUPLICATE: True}
        return self._ended_without_result()

    def _ended_without_result(self) -> dict[str, Any]:
        """Tune's last result of a run that validated no epoch here (resumed at its last step):
        its summary's last epoch's monitored value (the worst value when there is none)."""
        from framework.loggers import read_summary
        from framework.tasks import worst

        summary = read_summary(self.run_dir)
        final = summary.get("final") or {}
        value = final.get(self.spec.monitor)
        epochs = final.get("epoch", -1) + 1
        return {self.spec.monitor: worst(self.spec.mode) if value is None else float(value), "epoch": epochs - 1,
                TIME_ATTR: epochs, "step": summary.get("steps", 0), "trial": self.index, "run_dir": str(self.run_dir),
                "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """The run's ``last.pt``, ``best.pt``, ``steps.csv`` and ``epochs.csv`` of the last
        reported epoch (the run waits meanwhile) and ``meta.json``: trial, epoch, step, params,
        lineage (closed at this step)."""
        step = steps_done(self.run_dir)
        lineage = self._lineage()
        lineage[-1]["to_step"] = step
        meta = {"trial": self.index, "epoch": (self.last or self.restored or {}).get("epoch"), "step": step,
                "params": dict(self.config), "lineage": lineage}
        save_files(self.run_dir, Path(checkpoint_dir), meta)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Put the checkpoint's run state (this trial's own after a pause, or a donor's) into this
        trial's run folder; the run resumes from it at the next ``step``."""
        self.restored = restore_files(Path(checkpoint_dir), self.run_dir)

    def cleanup(self) -> None:
        """Tune ends the trial: tell a waiting run to stop and wait until it has written its files
        (``summary.json`` says ``pruned`` unless this was its last epoch)."""
        if self.thread is not None and self.thread.is_alive():
            self.channel.decisions.put("stop")
            self.thread.join()
        CHANNELS.pop(self.index, None)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Tune reuses this worker for another trial (or for this one with a new config, a PBT
        exploit): end the previous trial's run as :meth:`cleanup` does, then start afresh (Tune
        has set ``self.config`` and the trial's id; a checkpoint, if any, is loaded next)."""
        self.cleanup()
        self._begin()
        return True
