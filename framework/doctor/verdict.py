"""The LR doctor's verdict: too_high | too_low | ok | diverged | unsure, a factor for lr0, the evidence.

Pure functions of the rows of ``steps.csv`` (:mod:`framework.doctor.signals`); thresholds are
module constants, each with where it comes from.
"""
from __future__ import annotations

import math
from statistics import median
from typing import Any, Optional, Sequence

from framework.doctor.signals import Interval, column, group_names, interval_steps, intervals, number

#: The healthy band of the update-to-weight ratio ``‖Δw‖/‖w‖`` of the first optimizer step, at
#: lr0, in log10 units, by optimizer family (:func:`optimizer_family`). The first step's ratio is
#: exactly proportional to the LR, before the training dynamics (weights growing under
#: normalisation layers, gradients shrinking) change it: it is lr0 measured in the model's own
#: units. What it is proportional to depends on the family. An ``adaptive`` optimizer (Adam and
#: its kin: Kingma & Ba 2015, a first step of lr per weight, whatever the gradient) moves every
#: weight by about lr0, so its ratio is about lr0 / rms(w); an ``sgd`` step is lr0 x (1 + momentum
#: for Nesterov) x the gradient, so its ratio also carries ‖g‖/‖w‖, and the best runs' ratios sit
#: lower, by 0.3-1.1 decade on every pair of grids measured. Each centre is the mean of the
#: first-step ratios of the best runs of the ``bench/lr_doctor.py`` grids of that family, rounded
#: to 0.05 decade: sgd 10^-1.85 (resnet10t digits -1.49, resnet10t mnist5k -1.86, mobilenetv3
#: mnist5k -2.17), adaptive (AdamW) 10^-1.20 (resnet10t digits -1.15, mobilenetv3 mnist5k -1.05,
#: convnext_atto mnist5k -1.34); calibrated on three grids each, none alone (each grid judged with
#: the centre its family's other grids give: BENCHMARKS.md). Another optimizer (RAdam, whose first
#: steps are SGD-like; LAMB, LARS, Prodigy...) or an unknown one: the mean of all six, 10^-1.50.
#: Half-width 0.75 decade: half-way between the best LR's half-decade neighbours (+-0.5) and LRs
#: ten times off (+-1).
RATIO_CENTER_LOG10 = {"sgd": -1.85, "adaptive": -1.20}
RATIO_CENTER_OTHER_LOG10 = -1.50
#: Optimizer classes (by name) of each family: ``adaptive`` = a per-weight step of about lr on
#: the first step (the first moment over the root of the second: about sign(g)); ``sgd`` = a step
#: proportional to the gradient.
FAMILIES = {"adaptive": ("Adam", "AdamW", "NAdam", "NAdamW", "Adamax", "AdamP", "Lion"),
            "sgd": ("SGD", "SGDP")}
#: (Schedule-free optimizers, ``AdamWScheduleFree`` and ``SGDScheduleFree``, train at a point
#: that moves by a fraction of their step: neither family's band; they get the other band.)
RATIO_HALF_WIDTH_LOG10 = 0.75
#: (fraction) the smoothed loss fell by less than this share of the step-0 loss: it has not
#: learned (flat: the LR too low when the flat loss is quiet, too high when it is noisy); a
#: round figure, set before any benchmark run.
STALL_FRAC = 0.1
#: (fraction) relative spread of the step losses around an interval's trend above which a flat
#: loss counts as noisy: several times the spread of a batch mean of tens of samples (a few %).
NOISE_HIGH = 0.25
#: (fraction) the smoothed loss rose in more than this share of the intervals: it is not
#: descending (more rises than falls: a sign test, no tuned figure).
RISE_FRAC = 0.5
#: Rises or falls compared before the rise rule judges (a sign test over fewer than 3 says
#: nothing: one uptick of a flat loss would decide it).
MIN_RISES_JUDGED = 3
#: Intervals needed before any verdict (fewer: unsure): one rise or fall to compare.
MIN_INTERVALS = 2

VERDICTS = ("too_high", "too_low", "ok", "diverged", "unsure")


def _nonfinite(value: Any) -> bool:
    """A loss cell that holds NaN or inf (an empty cell is not)."""
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def first_ratio(rows: Sequence[dict[str, Any]], column: str, lr_column: str,
                peak_lr: Optional[float] = None) -> Optional[float]:
    """The update ratio of the first sampled step, scaled to the group's peak LR:
    ``ratio_k x peak_lr / lr_k`` (the first step's ratio is proportional to its LR); None when no
    step has a ratio.

    Args:
        rows: ``steps.csv`` rows in step order.
        column, lr_column: the group's ratio and LR columns (``update_ratio``, ``lr``, or
            ``update_ratio/<group>``, ``lr/<group>``).
        peak_lr: the group's base LR (lr0 x its multipliers; ``summary.json``'s ``base_lrs``);
            None = the highest LR in ``rows``.
    """
    peak = peak_lr or max((number(r.get(lr_column)) or 0.0 for r in rows), default=0.0)
    for r in rows:
        ratio, lr = number(r.get(column)), number(r.get(lr_column))
        if ratio is not None and math.isfinite(ratio) and lr and lr > 0:
            return ratio * peak / lr
    return None


def optimizer_family(name: Optional[str]) -> Optional[str]:
    """``adaptive``, ``sgd`` or None (another, or unknown) for an optimizer class name
    (``AdamW``, ``SGD``; ``summary.json``'s ``optimizer``) or timm's name for it (``nadamw``,
    ``sgdp``), by :data:`FAMILIES`, whatever the case."""
    key = (name or "").lower()
    return next((family for family, names in FAMILIES.items() if key in {n.lower() for n in names}), None)


def ratio_center(optimizer: Optional[str]) -> float:
    """The healthy band's centre (log10) for an optimizer class name: its family's
    :data:`RATIO_CENTER_LOG10`, else :data:`RATIO_CENTER_OTHER_LOG10`."""
    return RATIO_CENTER_LOG10.get(optimizer_family(optimizer) or "", RATIO_CENTER_OTHER_LOG10)


def _band(ratio: Optional[float], center: float) -> tuple[Optional[str], Optional[float]]:
    """(too_high | too_low | ok, lr0 factor) of a first-step update ratio at lr0; (None, None)
    without one. The factor moves the ratio to the band's centre in half-decade steps."""
    if ratio is None or ratio <= 0:
        return None, None
    off = math.log10(ratio) - center  # decades from the band's centre
    if abs(off) <= RATIO_HALF_WIDTH_LOG10:
        return "ok", None
    return ("too_high" if off > 0 else "too_low"), _factor(-round(off / 0.5))


def _factor(half_decades: int) -> float:
    """10^(n/2) as people write it (x3, x10, x0.3, x0.1 ...), n clipped to +-4 (x100, x0.01)."""
    return {-4: 0.01, -3: 0.03, -2: 0.1, -1: 0.3, 0: 1.0, 1: 3.0, 2: 10.0, 3: 30.0, 4: 100.0}[max(-4, min(4, half_decades))]


def diagnose(rows: Sequence[dict[str, Any]], total_steps: int, status: str = "completed",
             upto: Optional[int] = None, base_lrs: Optional[dict[str, float]] = None,
             ratio_center_log10: Optional[float] = None, schedule_file: Optional[str] = None,
             optimizer: Optional[str] = None, lr0_changed: Optional[str] = None) -> dict[str, Any]:
    """The LR doctor's verdict on a run from its ``steps.csv`` rows.

    Rules, in order (the first that applies):

    1. ``diverged``: the run's status is ``diverged`` or a logged loss is not finite (lr0 x0.1).
    2. ``too_high`` from the loss: the last smoothed loss (interval means,
       :mod:`~framework.doctor.signals`) is more than :data:`STALL_FRAC` above the step-0 loss;
       or it is flat (less than :data:`STALL_FRAC` below it) and noisy (median relative spread >
       :data:`NOISE_HIGH`); or, not flat, it rose in more than :data:`RISE_FRAC` of at least
       :data:`MIN_RISES_JUDGED` intervals compared (lr0 x0.3, or the ratio's factor when it says more).
    3. ``too_low`` from the loss: flat and quiet (x3, or more), unless the first step's ratio is
       above the band (rule 4): then ``too_high`` (a network stuck after its first, too large steps).
    4. Group 0's update ratio of the first step at lr0 against the healthy band
       ``10^(centre ± RATIO_HALF_WIDTH_LOG10)``, the centre the optimizer family's
       (:func:`ratio_center`): above it ``too_high``, below it
       ``too_low``, inside it ``ok``; the factor brings the ratio to the band's centre in
       half-decade steps (x0.3, x0.1, x3, x10 ...).
    5. ``unsure``: fewer than :data:`MIN_INTERVALS` intervals, or no ratio to judge (sampling
       off, group 0 frozen, Prodigy: its step is ``d x lr``; a PBT trial whose lr0 changed) and
       no loss rule applied. The loss
       rules need a positive step-0 loss (a loss that can be <= 0 is judged by the ratio only).

    Groups whose base LR differs from group 0's (a head at 10x) get their own verdict from their
    own first-step ratio (rule 4) in ``groups``.

    Args:
        rows: ``steps.csv`` rows (``step``, ``lr``, ``lr/<group>``, ``loss``, ``grad_norm``,
            ``update_ratio``, ``update_ratio/<group>``; numbers or CSV strings) in step order.
        total_steps: (steps) the run's planned ``T`` (sets the interval length).
        status: the run's ``summary.json`` status (``diverged`` is a verdict by itself).
        upto: judge only the steps before this one (what was known then); None = every row.
        base_lrs: group name -> base LR (``summary.json``'s ``base_lrs``); None = the highest LR
            of each group in ``rows``.
        ratio_center_log10: the healthy band's centre (log10); None = the optimizer's
            (:func:`ratio_center`; another value: calibrating the band, ``bench/lr_doctor.py``).
        schedule_file: the file a ``scheduler=piecewise`` run replayed (``summary.json``'s
            ``schedule_file``): its LRs set the run's LR, lr0 does not, so the first step's ratio
            is judged at the highest LR the rows applied (not at ``base_lrs``) and the advice is
            to scale the file's LRs; None = the advice is a new lr0.
        optimizer: the optimizer's class name (``summary.json``'s ``optimizer``, e.g. ``AdamW``):
            its family sets the band (:func:`ratio_center`); None = the band of other optimizers.
        lr0_changed: why lr0 changed during the run (a PBT trial that continued another trial's
            run at another lr0: :func:`framework.doctor.lr0_changes`): the first step's ratio
            then says nothing of the last lr0 and is not judged (rule 5); None = one lr0.

    Raises:
        KeyError: a row without ``step`` (not a ``steps.csv`` row).

    Returns:
        ``{"verdict", "factor", "factor_of", "reason", "at_step", "evidence", "groups"}``:
        ``factor`` the suggested multiplier (None for ok / unsure) of ``factor_of``: ``lr0``, or
        ``scheduler.path`` (every LR of the replayed file), ``reason`` one line, ``at_step``
        the last step judged, ``evidence`` the figures behind it (``loss_start`` (step 0),
        ``loss_end``, ``loss_max`` (smoothed), ``loss_drop_frac``, ``rose`` / ``judged_rises``
        (intervals whose smoothed loss rose, of those compared), ``noise`` (median relative
        spread around the trend), ``grad_spikes`` (among the steps that measured the norm; None: none did),
        ``loss_drop_per_lr`` (smoothed-loss drop per unit of LR x steps), ``update_ratio`` (first
        step at lr0, by group), ``ratio_band``,
        ``optimizer_family`` (``adaptive``, ``sgd`` or None),
        ``intervals``, ``interval_steps``, ``total_steps``).
    """
    rows = [r for r in rows if upto is None or int(float(r["step"])) < upto]
    names = group_names(rows[0].keys()) if rows else ["0"]
    if base_lrs:  # group 0 by its name (steps.csv's lr column does not say it)
        names[0] = next(iter(base_lrs))
    if schedule_file and base_lrs:  # a replay applies its file's LRs, not lr0: judged at the highest it applied
        base_lrs = {name: None for name in base_lrs}
    at = "the replayed peak LR" if schedule_file else "lr0"
    ivs = intervals(rows, total_steps, names)
    losses = [number(r.get("loss")) for r in rows]
    center = ratio_center(optimizer) if ratio_center_log10 is None else ratio_center_log10
    evidence = {**_evidence(rows, ivs, names, total_steps, losses, base_lrs or {}, center),
                "optimizer_family": optimizer_family(optimizer)}
    lr0 = (base_lrs or {}).get(names[0]) or max((number(r.get("lr")) or 0.0 for r in rows), default=0.0)
    out = {"verdict": "unsure", "factor": None, "factor_of": "scheduler.path" if schedule_file else "lr0", "reason": "",
           "at_step": int(float(rows[-1]["step"])) if rows else None, "evidence": evidence, "groups": {}}
    if status == "diverged" or any(_nonfinite(r.get("loss")) for r in rows):
        return {**out, "verdict": "diverged", "factor": 0.1,
                "reason": f"the loss became non-finite at {at} {lr0:.3g}: the LR is far too high; "
                          + advice(lr0, 0.1, schedule_file)}
    if len(ivs) < MIN_INTERVALS:
        return {**out, "reason": f"{len(ivs)} interval(s) of {evidence['interval_steps']} steps: too early to judge"}
    ratio = evidence["update_ratio"].get(names[0])
    if (rows and "d" in rows[0]) or lr0_changed:  # Prodigy: its step is d x lr (lr0 is not its knob); PBT
        ratio = None
    band, factor = _band(ratio, center)
    verdict, reason = _loss_verdict(evidence, band, ratio)
    if verdict == "too_high":
        factor = min(factor or 1.0, 0.3) if band == "too_high" else 0.3
    elif verdict == "too_low":
        factor = max(factor or 1.0, 3.0) if band == "too_low" else 3.0
    elif band is None:
        reason = (f"the loss fell; the first step's update ratio is not judged ({lr0_changed})" if lr0_changed else
                  "the loss fell; the first step's update ratio is not judged (Prodigy sets its own step size)"
                  if rows and "d" in rows[0] else
                  "the loss fell; no update ratio of the first step (trainer.lr_doctor.update_ratio_every_n_steps=0, "
                  "or frozen or all-zero weights in group 0)")
    else:
        verdict = band
        low, high = evidence["ratio_band"]
        reason = f"the first step's update ratio at {at} {lr0:.3g} is {ratio:.2g} (healthy {low:.2g}-{high:.2g})"
    if verdict in ("too_high", "too_low"):
        reason += f": the LR looks {verdict.replace('_', ' ')}; " + advice(lr0, factor, schedule_file)
    elif verdict == "ok":
        reason += ": the LR looks right"
    out.update(verdict=verdict, factor=factor if verdict in ("too_high", "too_low") else None, reason=reason,
               groups=_group_verdicts(rows, names, evidence, base_lrs or {}, center))
    return out


def advice(lr0: float, factor: float, schedule_file: Optional[str] = None) -> str:
    """``consider lr0≈0.03``; for a run that replayed ``schedule_file`` (whose LRs lr0 does not
    change), ``consider the LRs of <file> x0.3 (lr0 does not change a replay)``."""
    if schedule_file:
        return f"consider the LRs of {schedule_file} x{factor:g} (lr0 does not change a replay)"
    return f"consider lr0≈{lr0 * factor:.3g}"


def _loss_verdict(evidence: dict[str, Any], band: Optional[str], ratio: Optional[float]) -> tuple[str, str]:
    """Rules 2 and 3 of :func:`diagnose`: (too_high | too_low, what the loss did), or ("unsure", "").
    A flat, quiet loss after a first step above the band is a stuck network (too high), not slow
    learning."""
    start, end, drop = evidence["loss_start"], evidence["loss_end"], evidence["loss_drop_frac"]
    rose, judged = evidence["rose"], evidence["judged_rises"]
    if start is None or end is None or drop is None or start <= 0:  # a loss that can be <= 0: no relative drop
        return "unsure", ""
    if end > start * (1 + STALL_FRAC):  # more than the flat band above the step-0 loss
        return "too_high", f"the smoothed loss is at {end:.3g}, above the step-0 loss {start:.3g}"
    if drop < STALL_FRAC:  # flat: within STALL_FRAC of the step-0 loss, whichever way it wobbled
        where = f"{abs(drop):.0%} {'below' if drop >= 0 else 'above'} its start"
        if evidence["noise"] > NOISE_HIGH:
            return "too_high", (f"the loss is flat ({where}) and noisy "
                                f"(spread {evidence['noise']:.2f} of its level)")
        if band == "too_high":
            return "too_high", (f"the loss is flat ({where}) after a first step of update ratio "
                                f"{ratio:.2g}: stuck")
        return "too_low", f"the loss is flat ({where}) and quiet (spread {evidence['noise']:.2f})"
    if judged >= MIN_RISES_JUDGED and rose / judged > RISE_FRAC:
        return "too_high", f"the smoothed loss rose in {rose} of {judged} intervals"
    return "unsure", ""


def _group_verdicts(rows: Sequence[dict[str, Any]], names: list[str], evidence: dict[str, Any],
                    base_lrs: dict[str, float], center: float) -> dict[str, Any]:
    """Verdicts of the groups whose base LR differs from group 0's, from their own first-step ratios."""
    if len(names) < 2 or not rows:
        return {}
    peak = {n: base_lrs.get(n) or max((number(r.get(column("lr", i, n))) or 0.0) for r in rows)
            for i, n in enumerate(names)}
    out = {}
    for name in names[1:]:
        if math.isclose(peak[name], peak[names[0]], rel_tol=1e-9):
            continue
        band, factor = _band(evidence["update_ratio"].get(name), center)
        if band is not None:
            out[name] = {"verdict": band, "factor": factor, "lr": peak[name],
                         "update_ratio": evidence["update_ratio"][name]}
    return out


def _evidence(rows: Sequence[dict[str, Any]], ivs: list[Interval], names: list[str], total_steps: int,
              losses: list[Optional[float]], base_lrs: dict[str, float], center: float) -> dict[str, Any]:
    """The figures :func:`diagnose` judges by (its ``evidence``)."""
    start = losses[0] if losses and losses[0] is not None and math.isfinite(losses[0]) else None
    rises = [b.loss > a.loss for a, b in zip(ivs, ivs[1:])]
    ratios = {}
    for i, name in enumerate(names):
        ratio = first_ratio(rows, column("update_ratio", i, name), column("lr", i, name), base_lrs.get(name))
        if ratio is not None:
            ratios[name] = ratio
    end = ivs[-1].loss if ivs else None
    lr_steps = sum(iv.lr_steps for iv in ivs[1:])
    return {
        "loss_start": start, "loss_end": end, "loss_max": max((iv.loss for iv in ivs), default=None),
        "loss_drop_frac": (1 - end / start) if start and start > 0 and end is not None and math.isfinite(end) else None,
        "rose": sum(rises), "judged_rises": len(rises),
        "noise": median(iv.noise for iv in ivs) if ivs else None,
        "grad_spikes": None if all(iv.spikes is None for iv in ivs) else sum(iv.spikes or 0 for iv in ivs),
        "loss_drop_per_lr": (ivs[0].loss - ivs[-1].loss) / lr_steps if len(ivs) > 1 and lr_steps > 0 else None,
        "update_ratio": ratios,
        "ratio_band": [10 ** (center - RATIO_HALF_WIDTH_LOG10), 10 ** (center + RATIO_HALF_WIDTH_LOG10)],
        "intervals": len(ivs), "interval_steps": interval_steps(total_steps), "total_steps": int(total_steps),
    }
