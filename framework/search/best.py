"""The best trial of a ``python -m framework.tune`` folder and, after PBT, the report's section on
its exported schedule (:mod:`framework.search.ray_results` writes the file; the sweep report,
:mod:`framework.report_search`, shows it). Reads the trials' folders only: no Ray needed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

__all__ = ["SCHEDULE_NAME", "best_trial", "own_plan_note", "pbt_section", "replay_line", "segments", "trial_folders"]

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


def segments(summary: dict[str, Any]) -> list[tuple[Any, int, int, dict[str, Any]]]:
    """A PBT trial's lineage (``summary.json``'s ``tune.lineage``) as ``(trial, first step, last
    step, searched values)``, steps ``k`` 0-based and inclusive (a segment ends where the next one
    took over; the last at the run's last step)."""
    lineage = (summary.get("tune") or {}).get("lineage") or []
    last = int(summary.get("steps") or 0) - 1
    return [(seg["trial"], int(seg["from_step"]), int(seg["to_step"]) - 1 if seg.get("to_step") is not None else last,
             dict(seg.get("params") or {})) for seg in lineage]


def own_plan_note(name: str) -> str:
    """The note for a best trial that PBT never moved: its schedule is its own plan."""
    return f"trial {name} never continued from another trial's checkpoint: its schedule is its own plan, unperturbed"


def _exported_from(path: Path) -> Optional[str]:
    """The name of the run folder an exported schedule file says it came from (its ``# Source:``
    line, :func:`framework.schedules.piecewise.export_schedule`), None without one."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("# Source: "):
                    return Path(line[len("# Source: "):].split(" (steps.csv", 1)[0].strip()).name
                if not line.startswith("#"):
                    return None
    except OSError:
        return None
    return None


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
    out = tune_dir / SCHEDULE_NAME
    lines = ["## PBT: the best trial's schedule", ""]
    if _exported_from(out) == folder.name:
        lines += [f"`{SCHEDULE_NAME}` holds what trial {folder.name} applied at every one of its {summary.get('steps')} "
                  "steps (the LR, and the momentum and weight decay when they changed); the best configuration above "
                  "has only its last values. Replay it from scratch:", "", "```bash", replay_line(folder, summary, out),
                  "```", ""]
    else:  # none, or one left from another trial (an earlier best) by a run whose export failed
        lines += [f"`{SCHEDULE_NAME}` was not written for it; export trial {folder.name}'s schedule with "
                  f"`python -m framework.schedules.piecewise {folder} -o {out}`.", ""]
    parts = segments(summary)
    if len(parts) <= 1:
        note = own_plan_note(folder.name)
        return lines + [note[0].upper() + note[1:] + ".", ""]
    keys = sorted({k for *_, params in parts for k in params})
    lines += [f"Trial {folder.name}'s lineage ({len(parts) - 1} exploit(s): each segment continued from the "
              "checkpoint the one before it left):", "",
              "| segment | trained by | steps | " + " | ".join(f"`{k}`" for k in keys) + " |",
              "|---:|---|---|" + "---:|" * len(keys)]
    for i, (trial, first, last, params) in enumerate(parts, 1):
        values = " | ".join(f"{v:.4g}" if isinstance(v := params.get(k), float) else str(v) for k in keys)
        lines.append(f"| {i} | trial {trial} | {first}-{last} | {values} |")
    return lines + [""]
