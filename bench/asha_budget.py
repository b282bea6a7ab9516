"""How often ASHA stays within a compute budget: a model built from a grid sweep's curves.

ASHA decides when a trial reaches a rung (the stopping form, Optuna's ``SuccessiveHalvingPruner``
and Ray's ``ASHAScheduler`` with ``tune.asha_rule=top_k``): the trial goes on when it is among the
best ``max(1, floor(n / eta))`` of the ``n`` trials recorded at the rung, itself counted. With few
trials, one after another, a trial that leads every rung when it arrives trains to the end, so
the steps spent depend on the order in which good learning rates are drawn. This script draws
that order many times: ``--trials`` lr0 values log-uniform on ``[--low, --high]``, each trial's
validation curve interpolated (linearly in log10 lr0, epoch by epoch) between the curves of the
grid's runs (``epochs.csv``, ``--monitor``), plus Gaussian noise of ``--noise`` (absolute, each
epoch) for the run-to-run spread; rungs at ``grace * eta^k`` epochs below the run's epochs.

Prints, per ``--eta``: the mean steps spent as a share of the grid's (the grid: its runs at
full length), the share of draws above ``--budget``, and the share whose best value (any
trial's best epoch) is below ``--quality`` of the grid's best. A model, not a measurement: the
measured runs are ``bench/lr_search_vs_grid.py --seed N``.

    python bench/asha_budget.py /tmp/lsb16/sgd/grid --eta 3 4 --noise 0 0.03
"""
from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import random
from pathlib import Path


def _number(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def grid_curves(folder: Path, monitor: str) -> tuple[list[float], list[list[float]]]:
    """``(log10 lr0 ascending, curves)`` of a grid sweep folder's jobs (``summary.json`` lr0,
    ``epochs.csv`` ``monitor`` per epoch). A run cut short (diverged) keeps its last value for
    the epochs it did not train; an empty or non-finite value counts as the grid's lowest."""
    rows = []
    for job in folder.iterdir():
        if job.is_dir() and job.name.isdigit() and (job / "epochs.csv").is_file():
            lr0 = json.loads((job / "summary.json").read_text())["lr0"]
            with open(job / "epochs.csv", newline="") as f:
                rows.append((math.log10(lr0), [_number(r.get(monitor, "")) for r in csv.DictReader(f)]))
    if len(rows) < 2:
        raise SystemExit(f"{folder}: needs a grid of at least 2 runs with epochs.csv")
    rows.sort()
    lowest = min((v for _, c in rows for v in c if not math.isnan(v)), default=0.0)
    epochs = max(len(c) for _, c in rows)
    curves = []
    for _, c in rows:
        c = [lowest if math.isnan(v) else v for v in c] or [lowest]
        curves.append(c + [c[-1]] * (epochs - len(c)))
    return [x for x, _ in rows], curves


def curve_at(x: float, xs: list[float], curves: list[list[float]]) -> list[float]:
    """The curve at log10 lr0 ``x``: linear between the two grid curves around it."""
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    w = min(max((x - xs[i]) / (xs[i + 1] - xs[i]), 0.0), 1.0)
    return [(1 - w) * a + w * b for a, b in zip(curves[i], curves[i + 1])]


def one_search(rng: random.Random, xs: list[float], curves: list[list[float]], args: argparse.Namespace,
               eta: int, noise: float) -> tuple[int, float]:
    """Epochs spent and best value of one ASHA search of ``args.trials`` trials (maximised metric)."""
    epochs = len(curves[0])
    rungs, r = [], args.grace
    while r < epochs:
        rungs.append(r)
        r *= eta
    seen: dict[int, list[float]] = {r: [] for r in rungs}
    spent, best = 0, -math.inf
    for _ in range(args.trials):
        x = rng.uniform(math.log10(args.low), math.log10(args.high))
        curve = [v + rng.gauss(0.0, noise) for v in curve_at(x, xs, curves)] if noise else curve_at(x, xs, curves)
        stop = epochs
        for rung in rungs:
            value = curve[rung - 1]
            k = max(1, (len(seen[rung]) + 1) // eta)
            beaten_by = sum(v > value for v in seen[rung])
            seen[rung].append(value)
            if beaten_by >= k:
                stop = rung
                break
        spent += stop
        best = max(best, max(curve[:stop]))
    return spent, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="a grid sweep folder (hparams_search=lr_grid)")
    parser.add_argument("--monitor", default="val/acc", help="the maximised metric in epochs.csv")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--eta", type=int, nargs="+", default=[4], help="reduction factors")
    parser.add_argument("--grace", type=int, default=1, help="(epochs) of the first rung")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0], help="(metric units) std of each epoch")
    parser.add_argument("--low", type=float, default=1e-4)
    parser.add_argument("--high", type=float, default=1.0)
    parser.add_argument("--budget", type=float, default=0.35, help="share of the grid's steps")
    parser.add_argument("--quality", type=float, default=0.99, help="share of the grid's best value")
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    xs, curves = grid_curves(args.grid, args.monitor)
    grid_epochs = len(curves) * len(curves[0])
    grid_best = max(max(c) for c in curves)
    print(f"{args.grid}: {len(curves)} runs x {len(curves[0])} epochs, best {args.monitor} {grid_best:.4f}")
    for eta in args.eta:
        for noise in args.noise:
            rng = random.Random(args.seed)
            shares, low_quality = [], 0
            for _ in range(args.draws):
                spent, best = one_search(rng, xs, curves, args, eta, noise)
                shares.append(spent / grid_epochs)
                low_quality += best < args.quality * grid_best
            over = sum(s > args.budget for s in shares) / args.draws
            print(f"eta {eta} noise {noise:g}: mean {sum(shares) / args.draws:.1%} of the grid's steps, "
                  f"{over:.1%} of draws above {args.budget:.0%}, {low_quality / args.draws:.1%} below "
                  f"{args.quality:g} of its best ({args.trials} trials, {args.draws} draws)")


if __name__ == "__main__":
    main()
