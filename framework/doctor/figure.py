"""``lr_doctor.png``: a run's loss and its trend, its applied LR and its update ratios per group."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from framework.doctor.signals import column, group_names, intervals, number


def _num(value: Any) -> float:
    """A cell as a float for plotting: NaN (a gap) when empty."""
    out = number(value)
    return math.nan if out is None else out


def plot_diagnosis(rows: Sequence[dict[str, Any]], diagnosis: dict[str, Any], path: str | Path,
                   title: str = "") -> None:
    """Save three panels over the optimizer step ``k``: the step loss with the doctor's smoothed
    (interval-mean) loss, the applied LR of each group, and the sampled update ratios
    ``‖Δw‖/‖w‖`` of each group on a log axis with the healthy band shaded.

    Args:
        rows: ``steps.csv`` rows.
        diagnosis: :func:`framework.doctor.diagnose`'s result for them.
        path: the PNG to write.
        title: the figure's title.

    Raises:
        OSError: ``path`` cannot be written.
    """
    from framework.loggers import pyplot

    plt = pyplot()
    names = group_names(rows[0].keys()) if rows else ["0"]
    named = list(diagnosis.get("evidence", {}).get("update_ratio", {}))
    if named and named[0] not in names:  # group 0 by the name the diagnosis knows it by (base_lrs)
        names[0] = named[0]
    steps = [int(_num(r["step"])) for r in rows]
    fig, (ax_loss, ax_lr, ax_ratio) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    ax_loss.plot(steps, [_num(r.get("loss")) for r in rows], lw=0.6, color="0.6", label="step loss")
    evidence = diagnosis.get("evidence", {})
    ivs = intervals(rows, evidence.get("total_steps") or len(rows), names)
    if ivs:
        ax_loss.plot([(iv.first + iv.last) / 2 for iv in ivs], [iv.loss for iv in ivs], marker="o", ms=3,
                     color="C3", label="smoothed (interval mean)")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss")
    ax_loss.legend(fontsize=8)
    for i, name in enumerate(names):
        ax_lr.plot(steps, [_num(r.get(column("lr", i, name))) for r in rows], lw=1.2, label=name)
        sampled = [(k, _num(r.get(column("update_ratio", i, name)))) for k, r in zip(steps, rows)]
        sampled = [(k, v) for k, v in sampled if v > 0]
        if sampled:
            ax_ratio.plot(*zip(*sampled), marker=".", lw=0.8, label=name)
    ax_lr.set_ylabel("applied LR")
    ax_lr.legend(fontsize=8)
    band = evidence.get("ratio_band")
    if band:
        ax_ratio.axhspan(band[0], band[1], color="C2", alpha=0.12, label="healthy first step at lr0")
    ax_ratio.set_yscale("log")
    ax_ratio.set_ylabel("update ratio ‖Δw‖/‖w‖")
    ax_ratio.set_xlabel("optimizer step k")
    if ax_ratio.lines or band:
        ax_ratio.legend(fontsize=8)
    for ax in (ax_loss, ax_lr, ax_ratio):
        ax.grid(alpha=0.3)
    fig.suptitle(title or diagnosis.get("verdict", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
