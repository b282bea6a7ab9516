"""The range test's arithmetic: probe LRs, the smoothed loss and the suggestion rules (each with
its source), as pure functions of the recorded curve."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

#: Smallest relative fall of the smoothed loss over the search window that counts as learning:
#: 1%. The smoothing (EMA, beta 0.98) damps a short test's fall several-fold (a 20-probe test of
#: a small ResNet whose raw loss fell 14% shows 2.7% smoothed), while a model that does not
#: learn at any probed LR stays within its noise, a few tenths of a percent.
MIN_FALL = 0.01

#: Fewest finite points a suggestion needs.
MIN_POINTS = 5


def probe_lrs(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """LR of each probe: ``lr_i = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``.

    Args:
        start_lr: LR of probe 0 (> 0).
        end_lr: LR of the last probe (> start_lr).
        num_steps: probes (optimizer steps), >= 2.

    Returns:
        ``num_steps`` LRs, geometric from ``start_lr`` to ``end_lr`` (both exact).
    """
    n = num_steps - 1
    return [start_lr * (end_lr / start_lr) ** (i / n) if 0 < i < n else (start_lr if i == 0 else end_lr)
            for i in range(num_steps)]


def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average: ``a_i = beta*a_{i-1} + (1-beta)*x_i``,
    ``s_i = a_i / (1 - beta**(i+1))`` (Kingma & Ba's correction, as fastai's ``lr_find``).

    Non-finite losses give non-finite smoothed values from there on.
    """
    avg, out = 0.0, []
    for i, x in enumerate(losses):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def finite_points(lrs: Sequence[float], losses: Sequence[float]) -> tuple[list[float], list[float]]:
    """The ``(lr, loss)`` points with a finite loss and a finite LR > 0, as two lists in order."""
    pts = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v) and math.isfinite(lr) and lr > 0]
    return [p[0] for p in pts], [p[1] for p in pts]


def suggest_steepest(lrs: Sequence[float], losses: Sequence[float]) -> Optional[float]:
    """LR where the smoothed loss falls fastest against ``log10(lr)`` (Smith 2017; Lightning's
    ``suggestion()``): the argmin of ``np.gradient(loss, log10(lr))``. Non-finite points are
    dropped first.

    Returns:
        The LR, or None with fewer than :data:`MIN_POINTS` finite points or no falling part.
    """
    import numpy as np

    x, y = finite_points(lrs, losses)
    if len(x) < MIN_POINTS:
        return None
    slope = np.gradient(np.asarray(y), np.log10(np.asarray(x)))
    i = int(np.argmin(slope))
    return float(x[i]) if slope[i] < 0 else None


def suggest_valley(lrs: Sequence[float], losses: Sequence[float]) -> Optional[float]:
    """fastai's ``valley`` (Z. Mueller, fastai 2.4, 2021): the longest stretch over which the loss
    keeps falling (longest decreasing subsequence of the finite points), and the LR at about
    half-way into it (index ``start + 1/3 + 1/6`` of its length), where the loss is still
    falling steadily, away from both the flat start and the minimum.

    Returns:
        The LR, or None with fewer than :data:`MIN_POINTS` finite points.
    """
    x, y = finite_points(lrs, losses)
    n = len(x)
    if n < MIN_POINTS:
        return None
    run = [1] * n  # run[i]: length of the longest decreasing subsequence ending at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end = i
    start = end - run[end]
    third = (end - start) / 3
    return float(x[max(0, start + int(third) + int(third / 2))])


def suggest_minimum(lrs: Sequence[float], losses: Sequence[float]) -> Optional[float]:
    """The LR of the lowest loss divided by 10 (fastai's ``minimum``; Smith's rule of thumb:
    an order of magnitude below where the loss is lowest).

    Returns:
        The LR, or None with fewer than :data:`MIN_POINTS` finite points.
    """
    x, y = finite_points(lrs, losses)
    if len(x) < MIN_POINTS:
        return None
    return float(x[min(range(len(y)), key=y.__getitem__)] / 10)


#: Suggestion rules by name, each its function and source (``lr_finder.suggestion`` picks one;
#: all are reported).
SUGGESTIONS: dict[str, tuple[Callable[[Sequence[float], Sequence[float]], Optional[float]], str]] = {
    "valley": (suggest_valley, "fastai valley: half-way into the longest falling stretch of the smoothed loss"),
    "steepest": (suggest_steepest, "steepest fall of the smoothed loss against log10(lr) (Smith 2017; Lightning)"),
    "minimum": (suggest_minimum, "LR of the lowest smoothed loss / 10 (fastai minimum)"),
}
SOURCES = {name: source for name, (_, source) in SUGGESTIONS.items()}


def search_window(smoothed: Sequence[float]) -> tuple[int, int]:
    """Probes the suggestions look at: from ``n // 10`` (the first tenth is skipped, where the
    bias-corrected average is still one noisy step, as Lightning skips 10 points and fastai
    10%) to the lowest smoothed loss after it (past it the model is breaking; a broken model's
    loss can fall again towards chance level, and that fall is not a good LR).

    Returns:
        ``(lo, hi)``, inclusive indices into the probes.
    """
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        return 0, -1
    lo = min(len(smoothed) // 10, finite[-1])
    after = [i for i in finite if i >= lo]
    hi = min(after, key=lambda i: smoothed[i])
    return lo, hi


def suggest_all(lrs: Sequence[float], smoothed: Sequence[float]) -> dict[str, Optional[float]]:
    """Every suggestion of :data:`SUGGESTIONS` over the :func:`search_window` of the probes; a
    suggestion on the first or last probe of the test is dropped (None): the best LR is then
    outside the tested range. All are None when the curve has no usable fall: the lowest
    smoothed loss of the window is not :data:`MIN_FALL` (1%) below the window's first one (the
    model barely learned at any probed LR, so any "steepest" point is noise)."""
    lo, hi = search_window(smoothed)
    if hi < lo or not smoothed[hi] <= (1 - MIN_FALL) * smoothed[lo]:
        return {name: None for name in SUGGESTIONS}
    out: dict[str, Optional[float]] = {}
    for name, (fn, _) in SUGGESTIONS.items():
        lr = fn(lrs[lo : hi + 1], smoothed[lo : hi + 1])
        out[name] = None if lr is None or not lrs[0] < lr < lrs[-1] else lr
    return out
