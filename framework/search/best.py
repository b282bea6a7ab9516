"""The best trial of a ``python -m framework.tune`` folder and, after PBT, the report's section on
its exported schedule (:mod:`framework.search.ray_results` writes the file; the sweep report,
:mod:`framework.report_search`, shows it). Reads the trials' folders only: no Ray needed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

__all__ = ["SCHEDULE_NAME", "best_trial", "pbt_section", "replay_line", "trial_folders"]

#: The file PBT's best LR trace is exported to, in the tune folder.
SCHEDULE_NAME = "best_schedule.yaml"


def trial_folders(tune_dir: Path) -> list[Path]:
    """The trial folders of a tune folder (``0``, ``1`` ...), by index."""
    return sorted((p for p in tune_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def best_trial(tune_dir: Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """``(run folder, summary)`` of the trial with the best objective under its
    ``objective_mode``: among the completed trials, else among all that have one; the lower index
    on a tie. None when no trial has an objective."""
    from framework.loggers import read_summary

    rows = [(p, read_summary(p)) for p in trial_folders(tune_dir)]
    rows = [(p, s) for p, s in rows if isinstance(s.get("objective"), (int, float)) and math.isfinite(s["objective"])]
    done = [(p, s) for p, s in rows if s.get("status") == "completed"] or rows
    if not done:
        return None
    sign = lambda s: -1.0 if s.get("objective_mode", "max") == "max" else 1.0  # noqa: E731
    return min(done, key=lambda r: (sign(r[1]) * r[1]["objective"], int(r[0].name)))


def replay_line(best: Path, summary: dict[str, Any], out: Path) -> str:
    """The ``lrframe`` command that replays ``out``
    (:func:`framework.schedules.piecewise.export.replay_command`, named as the installed command)."""
    from framework.schedules.piecewise.export import recorded, replay_command

    command = replay_command(summary, recorded(best)[1], out)
    return "lrframe" + command[len("python train.py"):] if command.startswith("python train.py") else command


def pbt_section(tune_dir: Path) -> list[str]:
    """report.md's section on a PBT search's best trial (:func:`best_trial`): the exported
    :data:`SCHEDULE_NAME` and the command that replays it, then the trial's lineage, one row per
    segment: the trial that trained it, its optimizer steps ``k`` (first..last, 0-based) and the
    searched values it trained with (a segment continued from the checkpoint of the one before
    it: PBT's exploit). Empty when no trial has an objective."""
    found = best_trial(tune_dir)
    if found is None:
        return []
    folder, summary = found
    lineage = (summary.get("tune") or {}).get("lineage") or []
    out = tune_dir / SCHEDULE_NAME
    lines = ["## PBT: the best trial's schedule", ""]
    if out.is_file():
        lines += [f"`{SCHEDULE_NAME}` holds what trial {folder.name} applied at every one of its {summary.get('steps')} "
                  "steps (the LR, and the momentum and weight decay when they changed); the best configuration above "
                  "has only its last values. Replay it from scratch:", "", "```bash", replay_line(folder, summary, out),
                  "```", ""]
    else:
        lines += [f"`{SCHEDULE_NAME}` was not written; export trial {folder.name}'s schedule with "
                  f"`python -m framework.schedules.piecewise {folder} -o {out}`.", ""]
    if len(lineage) <= 1:
        return lines + [f"Trial {folder.name} never continued from another trial's checkpoint: its schedule is its "
                        "own plan.", ""]
    keys = sorted({k for seg in lineage for k in (seg.get("params") or {})})
    last = int(summary.get("steps") or 0) - 1
    lines += [f"Trial {folder.name}'s lineage ({len(lineage) - 1} exploit(s): each segment continued from the "
              "checkpoint the one before it left):", "",
              "| segment | trained by | steps | " + " | ".join(f"`{k}`" for k in keys) + " |",
              "|---:|---|---|" + "---:|" * len(keys)]
    for i, seg in enumerate(lineage, 1):
        end = seg["to_step"] - 1 if seg.get("to_step") is not None else last
        values = " | ".join(f"{v:.4g}" if isinstance(v := (seg.get("params") or {}).get(k), float) else str(v)
                            for k in keys)
        lines.append(f"| {i} | trial {seg['trial']} | {seg['from_step']}-{end} | {values} |")
    return lines + [""]
