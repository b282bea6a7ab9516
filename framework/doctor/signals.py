"""The LR doctor's signals: what ``steps.csv`` says about a run's learning rate, interval by interval.

Pure functions of the step rows (no torch): the trainer feeds them live, ``python -m
framework.doctor`` and the run's summary read them from ``steps.csv`` after the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Iterable, Optional, Sequence

#: Intervals the planned run is cut into (an interval is ``ceil(T / INTERVALS)`` steps, at least
#: :data:`MIN_INTERVAL_STEPS`): the unit of "the smoothed loss rose"; 20 = 5% of the run each, so
#: the first 30% holds 6 of them (a choice, not a measured optimum).
INTERVALS = 20
#: (steps) the shortest interval: a mean over fewer batches is too noisy to compare (a choice).
MIN_INTERVAL_STEPS = 5
#: A gradient-norm spike: a step's norm above this multiple of the median norm of the steps of the
#: earlier intervals (a factor of 10: an order of magnitude, the scale Adam's instability reports
#: use, e.g. Molybog et al. 2023, "A Theory on Adam Instability in Large-Scale Machine Learning").
SPIKE_MULT = 10.0


def interval_steps(total_steps: int) -> int:
    """(steps) length of the doctor's intervals for a run of ``total_steps`` optimizer steps:
    ``max(MIN_INTERVAL_STEPS, ceil(total_steps / INTERVALS))``."""
    return max(MIN_INTERVAL_STEPS, math.ceil(max(int(total_steps), 1) / INTERVALS))


def number(value: Any) -> Optional[float]:
    """A CSV cell or a number as a float; None for an empty cell or NaN (inf is kept: a loss that
    overflowed)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if not math.isnan(out) else None  # inf is kept: a loss that overflowed


@dataclass
class Interval:
    """One interval of ``steps`` consecutive optimizer steps.

    Attributes:
        first, last: its first and last step ``k``.
        loss: mean step loss (the smoothed loss; the task's loss units, nats for cross-entropy).
        noise: spread of the step losses around the interval's least-squares line, over ``loss``
            (a fraction; 0 = every loss on the trend).
        lr: mean applied LR of each group (group name -> LR).
        lr_steps: sum of group 0's applied LR over the interval (LR x steps).
        spikes: steps whose gradient norm exceeded :data:`SPIKE_MULT` x the median norm of the
            earlier intervals' steps, among the steps that measured it
            (``trainer.grad_norm_every_n_steps``; rows with an empty ``grad_norm`` are not counted);
            None when no step of the interval measured it.
        update_ratio: median sampled ``‖Δw‖/‖w‖`` of each group (group name -> ratio; a group
            without a sample in the interval is absent).
    """

    first: int
    last: int
    loss: float
    noise: float
    lr: dict[str, float]
    lr_steps: float
    spikes: Optional[int] = 0
    update_ratio: dict[str, float] = field(default_factory=dict)


def _noise(losses: Sequence[float]) -> float:
    """Residual standard deviation of ``losses`` around their least-squares line, over their mean."""
    n = len(losses)
    mean = sum(losses) / n
    if n < 3 or mean == 0:
        return 0.0
    xs = range(n)
    xm = (n - 1) / 2
    sxx = sum((x - xm) ** 2 for x in xs)
    slope = sum((x - xm) * (y - mean) for x, y in zip(xs, losses)) / sxx
    residuals = [y - (mean + slope * (x - xm)) for x, y in zip(xs, losses)]
    return math.sqrt(sum(r * r for r in residuals) / (n - 2)) / abs(mean)


def group_names(columns: Iterable[str]) -> list[str]:
    """The groups a ``steps.csv`` header names: group 0 (``lr``) as ``"0"`` (the file does not
    name it), then one per ``lr/<name>`` column."""
    names = ["0"]
    names += [c[3:] for c in columns if c.startswith("lr/")]
    return names


def column(base: str, group: int, name: str) -> str:
    """``steps.csv``'s column of ``base`` (``lr``, ``update_ratio``) for param group number
    ``group`` named ``name``: ``base`` for group 0 (the file does not name it), ``base/<name>``
    for the others."""
    return base if group == 0 else f"{base}/{name}"


def intervals(rows: Sequence[dict[str, Any]], total_steps: int, groups: Optional[list[str]] = None) -> list[Interval]:
    """Cut ``steps.csv`` rows (dicts with ``step``, ``lr``, ``lr/<group>``, ``loss``,
    ``grad_norm``, ``update_ratio``...) into consecutive :class:`Interval` s of
    :func:`interval_steps` (``total_steps``) steps; a last, unfinished interval is left out.

    Args:
        rows: the step rows in step order (values as numbers or CSV strings; a row repeated after
            a rollback: the last one counts).
        total_steps: (steps) the run's planned ``T`` (sets the interval length).
        groups: the param groups' names (group 0 first); None = from the rows' keys.

    Raises:
        KeyError: a row without ``step`` (not a ``steps.csv`` row).
    """
    if not rows:
        return []
    groups = groups or group_names(rows[0].keys())
    by_step = {int(float(r["step"])): r for r in rows}  # a step redone after a rollback: its last row
    steps = sorted(by_step)
    m = interval_steps(total_steps)
    out: list[Interval] = []
    norms_before: list[float] = []
    for start in range(0, len(steps) - m + 1, m):
        chunk = [by_step[k] for k in steps[start:start + m]]
        reference = median(norms_before) if norms_before else None  # once per interval: O(T log T) a call
        losses = [number(r.get("loss")) for r in chunk]
        losses = [v for v in losses if v is not None]
        if not losses:
            continue
        lrs = {name: [number(r.get(column("lr", g, name))) or 0.0 for r in chunk] for g, name in enumerate(groups)}
        norms = [v for v in (number(r.get("grad_norm")) for r in chunk) if v is not None]
        spikes = sum(reference is not None and v > SPIKE_MULT * reference for v in norms) if norms else None
        norms_before += norms
        ratios = {}
        for g, name in enumerate(groups):
            sampled = [v for v in (number(r.get(column("update_ratio", g, name))) for r in chunk) if v is not None]
            if sampled:
                ratios[name] = median(sampled)
        finite = [v for v in losses if math.isfinite(v)]
        out.append(Interval(first=int(float(chunk[0]["step"])), last=int(float(chunk[-1]["step"])),
                            loss=sum(losses) / len(losses) if len(finite) == len(losses) else math.inf,
                            noise=_noise(finite) if len(finite) == len(losses) else math.inf,
                            lr={name: sum(v) / len(v) for name, v in lrs.items()},
                            lr_steps=sum(lrs[groups[0]]), spikes=spikes, update_ratio=ratios))
    return out


def interval_rows(ivs: Sequence[Interval]) -> list[dict[str, Any]]:
    """``lr_doctor.csv``'s rows, one per interval: ``first``, ``last`` (steps), ``loss`` (smoothed),
    ``noise``, ``rose`` (1: its smoothed loss is above the previous interval's), ``lr`` (group 0's
    mean), ``lr_steps``, ``loss_drop_per_lr`` (the drop from the previous interval over this one's
    LR x steps), ``grad_spikes``, ``update_ratio`` / ``update_ratio/<group>`` (median sampled)."""
    out = []
    for i, iv in enumerate(ivs):
        before = ivs[i - 1] if i else None
        first_group = next(iter(iv.lr))
        row = {"first": iv.first, "last": iv.last, "loss": iv.loss, "noise": iv.noise,
               "rose": "" if before is None else int(iv.loss > before.loss), "lr": iv.lr[first_group],
               "lr_steps": iv.lr_steps,
               "loss_drop_per_lr": "" if before is None or not iv.lr_steps else (before.loss - iv.loss) / iv.lr_steps,
               "grad_spikes": "" if iv.spikes is None else iv.spikes}
        for j, name in enumerate(iv.lr):
            row[column("update_ratio", j, name)] = iv.update_ratio.get(name, "")
        out.append(row)
    return out
