"""The LR doctor judged against 9-value lr0 grids: is each run's verdict right, and how early?

For each model / optimizer / dataset combination, a grid of lr0 = 1e-4, 3e-4, ..., 1
(``hparams_search=lr_grid``, every run to the end), then every run diagnosed by
:func:`framework.doctor.diagnose_run` twice: on its whole ``steps.csv`` (the verdict in
``summary.json``) and on its first 30% of steps only (what the live warning could know then).

A run is judged against the grid's best lr0 (best validation ``task.monitor``, ties broken by
the lower best ``val/loss``): at >= 10x the best lr0 the verdict must be ``too_high`` or
``diverged``, at <= 1/10 of it ``too_low``, the best and its two neighbours (3x or 3.33x away
on this grid: 1e-3, 3e-3, 1e-2) ``ok``; no other run is free on this grid.

Prints, and writes to ``--out``/results.json and confusion.md, the confusion table of each
combination (expected class x verdict), the share of judged runs called right, whether any best
run was called too high or too low, and the share of judged runs whose verdict from the first
30% of steps was already right.

    python bench/lr_doctor.py --out /tmp/lr_doctor                      # every combination
    python bench/lr_doctor.py --combos resnet10t_sgd_digits --reuse resnet10t_sgd_digits=<grid folder>
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework.doctor import diagnose_run  # noqa: E402

#: name -> (overrides, epochs): about the default job's length (10 epochs of digits: T = 230 steps;
#: 4 epochs of mnist5k: 252), its cosine schedule to lrf 0.01 and no warmup; three per optimizer
#: family (SGD, AdamW): the grids the LR doctor's bands are calibrated on
#: (framework.doctor.verdict.RATIO_CENTER_LOG10)
COMBOS = {
    "resnet10t_sgd_digits": (["model=resnet10t", "optimizer=sgd", "dataset=digits"], 10),
    "resnet10t_adamw_digits": (["model=resnet10t", "optimizer=adamw", "dataset=digits"], 10),
    "mobilenetv3_adamw_mnist5k": (["model=mobilenetv3_small_100", "optimizer=adamw", "dataset=mnist5k"], 4),
    "convnext_atto_adamw_mnist5k": (["model=convnext_atto", "optimizer=adamw", "dataset=mnist5k",
                                     "dataset.img_size=32"], 4),
    "resnet10t_sgd_mnist5k": (["model=resnet10t", "optimizer=sgd", "dataset=mnist5k"], 4),
    "mobilenetv3_sgd_mnist5k": (["model=mobilenetv3_small_100", "optimizer=sgd", "dataset=mnist5k"], 4),
}
CLASSES = ("too_low", "ok", "too_high")
VERDICTS = ("too_low", "ok", "too_high", "diverged", "unsure")
EARLY_FRAC = 0.3


def expected(lr0: float, best: float) -> str | None:
    """The class a run at ``lr0`` must get against the grid's ``best`` lr0 (None: free)."""
    ratio = lr0 / best
    if ratio >= 10 - 1e-9:
        return "too_high"
    if ratio <= 0.1 + 1e-12:
        return "too_low"
    if 1 / 3.4 <= ratio <= 3.4:  # the grid's neighbours: 3x or 3.33x away (1e-3, 3e-3, 1e-2 ...)
        return "ok"
    return None


def right(verdict: str, want: str) -> bool:
    return verdict == want or (want == "too_high" and verdict == "diverged")


def jobs(folder: Path) -> list[tuple[Path, dict]]:
    """The grid's job folders with their summaries, by lr0."""
    out = []
    for job in folder.iterdir():
        if job.is_dir() and job.name.isdigit() and (job / "steps.csv").is_file():
            out.append((job, json.loads((job / "summary.json").read_text())))
    return sorted(out, key=lambda t: t[1]["lr0"])


def best_lr0(rows: list[tuple[Path, dict]]) -> float:
    """lr0 of the best run: highest objective (val/acc), then lowest best val/loss."""
    def key(t):
        s = t[1]
        obj = s.get("objective")
        obj = obj if isinstance(obj, (int, float)) and math.isfinite(obj) else -math.inf
        loss = (s.get("best") or {}).get("val/loss")
        loss = loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf
        return (obj if s.get("objective_mode", "max") == "max" else -obj, -loss)
    return max(rows, key=key)[1]["lr0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--combos", nargs="+", default=list(COMBOS), choices=list(COMBOS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/lr_doctor"))
    parser.add_argument("--reuse", nargs="*", default=[], metavar="COMBO=FOLDER",
                        help="take a combination's grid from a finished sweep folder (same overrides and epochs)")
    args = parser.parse_args()
    reuse = dict(item.split("=", 1) for item in args.reuse)
    grids = {}
    for name in args.combos:
        overrides, epochs = COMBOS[name]
        grid = Path(reuse[name]) if name in reuse else args.out / name / "grid"
        if name not in reuse and not (grid / "multirun.yaml").is_file():
            grid.parent.mkdir(parents=True, exist_ok=True)
            with open(grid.parent / "grid.log", "w") as log:
                proc = subprocess.run([sys.executable, "train.py", "-m", *overrides, f"epochs={epochs}",
                                       "hparams_search=lr_grid", "trainer.progress_bar=false",
                                       "trainer.save_checkpoints=false", f"hydra.sweep.dir={grid}"],
                                      cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            if proc.returncode not in (0, 1):
                sys.exit(f"{name}: the grid failed ({proc.returncode}); see {grid.parent / 'grid.log'}")
        rows = jobs(grid)
        grids[name] = (rows, best_lr0(rows))
    # the shipped band, then each combination judged with the band's centre placed where the
    # other combinations of its optimizer family put it (leave one out): how the band carries to a new one
    best_runs = {name: diagnose_run(job) for name, (rows, best) in grids.items() for job, s in rows if s["lr0"] == best}
    best_ratio = {name: math.log10(next(iter(d["evidence"]["update_ratio"].values()))) for name, d in best_runs.items()}
    family = {name: d["evidence"]["optimizer_family"] for name, d in best_runs.items()}
    results = {name: score(name, *grids[name]) for name in grids}
    lines = [line for name in grids for line in table_lines(name, results[name])]
    total = sum(r["judged"] for r in results.values())
    summary_line = (f"all: {sum(r['right'] for r in results.values())}/{total} right, "
                    f"{sum(r['early_right'] for r in results.values())}/{total} from the first 30%, best runs "
                    f"called too high/low: {sum(r['best_called_wrong'] for r in results.values())}")
    lines += [summary_line, "", "First-step update ratio (log10) of each grid's best run: "
              + ", ".join(f"{name} ({family[name]}) {v:.2f}" for name, v in best_ratio.items())]
    loo = {}
    for name in grids:
        others = [v for other, v in best_ratio.items() if other != name and family[other] == family[name]]
        if not others:
            continue
        center = statistics.mean(others)
        loo[name] = score(name, *grids[name], center=center)
        lines.append(f"leave one out: {name} with the centre at {center:.2f} (the mean of its family's other "
                     f"{len(others)}): {loo[name]['right']}/{loo[name]['judged']} right, {loo[name]['early_right']} "
                     "from the first 30%")
    if loo:
        lines.append(f"leave one out, all: {sum(r['right'] for r in loo.values())}/"
                     f"{sum(r['judged'] for r in loo.values())} right, best runs called too high/low: "
                     f"{sum(r['best_called_wrong'] for r in loo.values())}")
        results["leave_one_out"] = {n: {k: r[k] for k in ("right", "judged", "early_right")} for n, r in loo.items()}
    results["best_ratio_log10"] = best_ratio
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "confusion.md").write_text("\n".join(lines) + "\n")


def score(name: str, rows: list, best: float, center: float | None = None) -> dict:
    """Every run of a grid diagnosed (whole run and first 30%) and judged against ``best``."""
    table = {c: {v: 0 for v in VERDICTS} for c in CLASSES}
    runs, judged, good, early_good, best_wrong = [], 0, 0, 0, False
    for job, summary in rows:
        whole = diagnose_run(job, ratio_center_log10=center)
        early = diagnose_run(job, upto_frac=EARLY_FRAC, ratio_center_log10=center)
        want = expected(summary["lr0"], best)
        runs.append({"lr0": summary["lr0"], "objective": summary.get("objective"), "status": summary["status"],
                     "expected": want, "verdict": whole["verdict"], "factor": whole.get("factor"),
                     "early_verdict": early["verdict"], "reason": whole.get("reason")})
        if want is None:
            continue
        judged += 1
        table[want][whole["verdict"]] += 1
        good += right(whole["verdict"], want)
        early_good += right(early["verdict"], want)
        best_wrong |= summary["lr0"] == best and whole["verdict"] in ("too_high", "too_low", "diverged")
    return {"combo": name, "best_lr0": best, "judged": judged, "right": good, "early_right": early_good,
            "best_called_wrong": best_wrong, "table": table, "runs": runs}


def table_lines(name: str, result: dict) -> list[str]:
    """The markdown of one combination: every run, then the confusion table."""
    overrides, epochs = COMBOS[name]
    runs, table = result["runs"], result["table"]
    lines = [f"### {name} ({' '.join(overrides)} epochs={epochs}; best lr0 {result['best_lr0']:g})", "",
             "| lr0 | val acc | expected | verdict (whole run) | lr0 factor | verdict (first 30%) |",
             "|---:|---:|---|---|---:|---|"]
    lines += [f"| {r['lr0']:g} | {r['objective'] if r['objective'] is None else round(r['objective'], 4)} | "
              f"{r['expected'] or '(free)'} | {r['verdict']} | {r['factor'] or ''} | {r['early_verdict']} |"
              for r in runs]
    lines += ["", "| expected \\ verdict | " + " | ".join(VERDICTS) + " |", "|---|" + "---:|" * len(VERDICTS)]
    lines += [f"| {c} | " + " | ".join(str(table[c][v]) for v in VERDICTS) + " |" for c in CLASSES]
    lines += ["", f"right: {result['right']}/{result['judged']}; from the first 30%: {result['early_right']}/"
                  f"{result['judged']}; best run called too high/low: {'yes' if result['best_called_wrong'] else 'no'}",
              ""]
    return lines


if __name__ == "__main__":
    main()
