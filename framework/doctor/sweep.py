"""The LR doctor over a sweep: every job's verdict and the lr0 range the verdicts bracket."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

#: Verdicts that say lr0 was above the right range.
HIGH = ("too_high", "diverged")


def bracket(jobs: Sequence[tuple[Optional[float], Optional[str]]]) -> dict[str, Optional[float]]:
    """The lr0 range that the jobs' verdicts bracket, over jobs of one sweep that differ in lr0.

    ``too_low_upto``: the highest lr0 called ``too_low`` below every lr0 called too high;
    ``too_high_from``: the lowest lr0 called ``too_high`` or ``diverged`` above every lr0 called
    too low; ``ok``: ``[lowest, highest]`` lr0 called ``ok`` between them. Jobs without an lr0
    or a verdict are left out; verdicts that contradict each other (a too-low job above a
    too-high one) are kept apart as ``conflicting`` (their lr0s).

    Args:
        jobs: ``(lr0, verdict)`` per job.

    Returns:
        ``{"too_low_upto", "too_high_from", "ok": [lo, hi] or None, "conflicting": [lr0, ...]}``.
    """
    pairs = [(lr, v) for lr, v in jobs if isinstance(lr, (int, float)) and math.isfinite(lr) and v]
    lows = [lr for lr, v in pairs if v == "too_low"]
    highs = [lr for lr, v in pairs if v in HIGH]
    conflicting = sorted({lr for lr in lows if highs and lr >= min(highs)} |
                         {lr for lr in highs if lows and lr <= max(lows)})
    lows = [lr for lr in lows if lr not in conflicting]
    highs = [lr for lr in highs if lr not in conflicting]
    upto = max(lows) if lows else None
    start = min(highs) if highs else None
    oks = [lr for lr, v in pairs if v == "ok" and (upto is None or lr > upto) and (start is None or lr < start)]
    return {"too_low_upto": upto, "too_high_from": start, "ok": [min(oks), max(oks)] if oks else None,
            "conflicting": conflicting}


def verdict_cell(verdict: Optional[str], factor: Optional[float], factor_of: str = "lr0") -> str:
    """A verdict with its suggested factor, as tables show it: ``too_high (lr0 x0.3)``, ``ok``,
    ``-``; ``too_high (LRs x0.3)`` when the factor is ``of`` a replayed file's LRs
    (``factor_of="scheduler.path"``)."""
    if not verdict:
        return "-"
    return verdict + (f" ({'lr0' if factor_of == 'lr0' else 'LRs'} x{factor:g})" if factor else "")


def diagnosis_cell(diagnosis: Optional[dict[str, Any]]) -> str:
    """:func:`verdict_cell` of a diagnosis (:func:`framework.doctor.diagnose`'s dict, or None)."""
    if not diagnosis:
        return "-"
    return verdict_cell(diagnosis["verdict"], diagnosis.get("factor"), diagnosis.get("factor_of", "lr0"))


def bracket_line(found: dict[str, Any]) -> str:
    """One line: ``too low at and below 0.003, right 0.01-0.1, too high at and above 0.3``."""
    parts = []
    if found["too_low_upto"] is not None:
        parts.append(f"too low at and below {found['too_low_upto']:g}")
    if found["ok"]:
        lo, hi = found["ok"]
        parts.append(f"right at {lo:g}" if lo == hi else f"right from {lo:g} to {hi:g}")
    if found["too_high_from"] is not None:
        parts.append(f"too high at and above {found['too_high_from']:g}")
    if found["conflicting"]:
        parts.append("verdicts disagree at " + ", ".join(f"{v:g}" for v in found["conflicting"]))
    return "lr0: " + ("; ".join(parts) if parts else "no verdicts")


def job_diagnosis(folder: Any, summary: dict[str, Any],
                  rows: Optional[list[dict[str, Any]]] = None) -> Optional[dict[str, Any]]:
    """A job's diagnosis: ``summary.json``'s ``lr_diagnosis``, else made from its ``steps.csv``
    rows (``rows`` when read already; a run of a version without the doctor, or with
    ``trainer.lr_doctor=null``); None without steps or when they cannot be judged."""
    from framework.doctor import diagnose, read_steps, run_options

    if summary.get("lr_diagnosis"):
        return summary["lr_diagnosis"]
    rows = read_steps(folder) if rows is None else rows
    if not rows:
        return None
    try:
        return diagnose(rows, int(summary.get("planned_steps") or len(rows)), str(summary.get("status", "completed")),
                        **run_options(summary, folder))
    except Exception:  # a folder the doctor cannot read is shown without a verdict, never an error
        return None
