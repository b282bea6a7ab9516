"""The LR doctor: reads a run's steps and says whether its learning rate was too high, too low or right.

- :mod:`framework.doctor.signals`: the per-interval signals (smoothed loss, its noise, gradient
  spikes, update ratios) from ``steps.csv``;
- :mod:`framework.doctor.verdict`: :func:`diagnose`, the verdict, the lr0 factor and the evidence;
- :mod:`framework.doctor.live`: the trainer's live warning;
- ``python -m framework.doctor <run or sweep folder>``: the diagnosis with a figure, or every
  job's verdict and the LR range they bracket.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

from framework.doctor.verdict import VERDICTS, diagnose

__all__ = ["VERDICTS", "diagnose", "diagnose_run", "lr0_changes", "read_steps", "run_options"]


def read_steps(run_dir: str | Path) -> list[dict[str, str]]:
    """``steps.csv`` of a run folder as dicts of strings (:func:`framework.loggers.read_rows`:
    empty when there is none; a row cut by a kill is dropped)."""
    from framework.loggers import read_rows

    return read_rows(Path(run_dir) / "steps.csv")


def diagnose_run(run_dir: str | Path, upto_frac: Optional[float] = None,
                 summary: Optional[dict[str, Any]] = None, write: bool = False, **options: Any) -> dict[str, Any]:
    """:func:`diagnose` a run folder from its ``steps.csv`` and ``summary.json`` (its planned
    steps ``T`` and status).

    Args:
        run_dir: the run folder.
        upto_frac: judge only the first ``ceil(upto_frac x T)`` steps (what a live doctor knew
            then); None = every step.
        summary: the run's summary dict when it is at hand (not yet written); None = read
            ``summary.json`` (its ``planned_steps``, ``status``, ``base_lrs``, ``schedule_file`` and
            ``optimizer``).
        write: also write the per-interval signals as ``lr_doctor.csv`` in the folder
            (:func:`framework.doctor.signals.interval_rows`).
        options: passed to :func:`diagnose` (``ratio_center_log10``).

    Raises:
        FileNotFoundError: the folder has no ``steps.csv`` rows.
    """
    from framework.loggers import read_summary

    rows = read_steps(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no steps.csv rows to diagnose")
    summary = summary if summary is not None else read_summary(run_dir)
    total = int(summary.get("planned_steps") or len(rows))
    upto = None if upto_frac is None else math.ceil(upto_frac * total)
    if write:
        from framework.doctor.signals import group_names, interval_rows, intervals
        from framework.loggers import atomic_file

        table = interval_rows(intervals(rows, total, group_names(rows[0].keys())))
        if table:
            with atomic_file(Path(run_dir) / "lr_doctor.csv", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
    return diagnose(rows, total, str(summary.get("status", "completed")), upto=upto,
                    **{**run_options(summary, run_dir), **options})


def run_options(summary: dict[str, Any], run_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """What :func:`diagnose` takes from a run's ``summary.json``: ``base_lrs``, ``schedule_file``
    (a replay's file), ``optimizer`` (its class name: the band's family) and ``lr0_changed``
    (:func:`lr0_changes`). A summary written before it named the optimizer: the class its
    ``run_dir``'s ``.hydra/config.yaml`` instantiates (``optimizer._target_``:
    ``torch.optim.SGD`` -> ``SGD``; timm's by ``optimizer.opt``, e.g. ``nadamw``)."""
    optimizer = summary.get("optimizer")
    if optimizer is None and run_dir is not None:
        import yaml

        try:
            node = (yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text()) or {})["optimizer"]
            optimizer = str(node["_target_"]).rsplit(".", 1)[-1]
            if optimizer == "timm_optimizer":  # timm's optimizer by its name (optimizer.opt: nadamw, sgdp ...)
                optimizer = str(node["opt"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            optimizer = None
    return {"base_lrs": summary.get("base_lrs"), "schedule_file": summary.get("schedule_file"), "optimizer": optimizer,
            "lr0_changed": lr0_changes(summary)}


def lr0_changes(summary: dict[str, Any]) -> Optional[str]:
    """``PBT changed lr0 during the run (0.0012 from step 0, 0.52 from step 4)`` for a Ray Tune
    trial whose lineage (``summary.json``'s ``tune.lineage``) trained at more than one lr0, else
    None."""
    lineage = (summary.get("tune") or {}).get("lineage") or []
    values = [(seg.get("params") or {}).get("lr0") for seg in lineage]
    if len({repr(v) for v in values}) < 2:
        return None
    return "PBT changed lr0 during the run (" + ", ".join(
        f"{v:.3g} from step {seg.get('from_step')}" if isinstance(v, (int, float)) else f"? from step {seg.get('from_step')}"
        for v, seg in zip(values, lineage)) + ")"
