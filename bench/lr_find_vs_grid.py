"""Is the LR range test's suggestion good? Range test + training vs a log-spaced lr0 grid.

For each model / optimizer pair on digits: one ``mode=lr_find`` run gives the three suggestions
(valley, steepest, minimum); one training run per suggestion; and a sweep over the 9-value
log grid ``hparams_search=lr_grid`` (1e-4 ... 1). Prints, per pair and suggestion, the best
validation accuracy reached with the suggested lr0 as a fraction of the best grid accuracy, and
the compute (optimizer steps, wall seconds) of the range test against the whole grid.

    python bench/lr_find_vs_grid.py                      # the three pairs, 5 epochs each
    python bench/lr_find_vs_grid.py --epochs 3 --pairs sgd

Everything runs on this machine's default device, one job after another.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "sgd": ["model=resnet10t", "optimizer=sgd"],
    "adamw": ["model=resnet10t", "optimizer=adamw"],
    "convnext_adamw": ["model=convnext_atto", "optimizer=adamw"],
}


def run(args: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "trainer.progress_bar=false",
                           "trainer.save_checkpoints=false", f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="lr_find_bench_"))
    common = [f"epochs={args.epochs}", "scheduler=cosine", "warmup_epochs=0"]
    rows = []
    for name in args.pairs:
        pair = [*PAIRS[name], *common]
        base = root / name
        grid_s = run(["-m", *pair, "hparams_search=lr_grid"], base / "grid")
        grid = list(csv.DictReader(open(base / "grid" / "report.csv")))
        best = max(grid, key=lambda r: float(r["best_val_acc"] or 0))
        grid_steps = sum(int(r["steps"] or 0) for r in grid)
        find_s = run([*pair, "mode=lr_find"], base / "find")
        found = json.loads((base / "find" / "lr_find.json").read_text())
        for method, lr in found["suggestions"].items():
            if lr is None:
                rows.append([name, method, "-", "-", "-"])
                continue
            train_s = run([*pair, f"lr0={lr!r}"], base / method)
            summary = json.loads((base / method / "summary.json").read_text())
            acc = summary["best"].get("val/acc", 0.0) if summary["status"] == "completed" else 0.0
            rows.append([name, method, lr, acc, acc / float(best["best_val_acc"]), found["probes"],
                         summary["steps"], find_s + train_s])
        print(f"\n{name}: grid ({len(grid)} runs, {grid_steps} steps, {grid_s:.0f} s): best lr0={best['lr0']} "
              f"val/acc {float(best['best_val_acc']):.4f}; range test {found['probes']} probes, {find_s:.0f} s")
        for r in grid:
            print(f"  grid lr0={float(r['lr0']):<8g} {r['status']:<10} best val/acc {r['best_val_acc']}")
        for r in rows:
            if r[0] == name and r[2] != "-":
                print(f"  {r[1]:<9} lr0={r[2]:.4g}  val/acc {r[3]:.4f}  = {r[4]:.3f} of the grid's best; "
                      f"compute {r[5]} probe + {r[6]} train steps, {r[7]:.0f} s")
    print(f"\nruns kept in {root}")


if __name__ == "__main__":
    main()
