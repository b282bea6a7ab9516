"""LR search with early stopping against the full 9-value lr0 grid: accuracy reached and compute spent.

For each model / optimizer pair on digits, a full-budget grid (``hparams_search=lr_grid``: lr0 =
1e-4, 3e-4, ..., 1, every run to the last epoch) and then each search:

- ``asha``: ``hparams_search=lr_asha`` (random lr0, Optuna's successive-halving pruner);
- ``asha_promotion``: the same with ``hydra/sweeper/pruner=asha_promotion`` (trials paused at each
  rung and resumed when promoted: the steps spent are bounded);
- ``tpe``: ``hparams_search=lr_tpe`` (TPE over lr0 and lrf, the median pruner);
- ``evolve``: ``hparams_search=lr_evolve`` (Ultralytics' Tuner's mutation over lr0, lrf,
  momentum, warmup, weight decay, starting from the configured values; successive halving);
  ``evolve_promotion``: the same with ``hydra/sweeper/pruner=asha_promotion``;
- ``ray_asha``: ``python -m framework.tune tune.search=asha tune.num_samples=9`` (Ray Tune's
  ASHA, a local Ray, ``--jobs`` trials at a time); ``ray_asha_promotion``: the same with
  ``tune.asha_rule=promotion`` (trials paused at rungs and promoted);
- ``pbt``: ``python -m framework.tune tune.search=pbt tune.num_samples=4`` (4 trials together,
  one core each, lr0/momentum/weight decay perturbed every epoch), then its exported schedule
  (``best_schedule.yaml``) replayed from scratch with ``scheduler=piecewise``.

Prints and writes (``--out``/results.json) per pair and search: the best validation accuracy
(``task.monitor``) as a fraction of the grid's best, the optimizer steps summed over the
trials as a fraction of the grid's, and the wall time of each (the whole command: start-up,
every trial, the report).

    python bench/lr_search_vs_grid.py --out /tmp/lsb --epochs 16     # both pairs, every search
    python bench/lr_search_vs_grid.py --pairs sgd --searches asha tpe --epochs 9
    python bench/lr_search_vs_grid.py --out /tmp/lsb16 --epochs 16 --reuse-grid --searches ray_asha --seed 1

``--seed N`` (default 0, the presets' and ``tune.seed``'s) reseeds every search's sampler
(``hydra.sweeper.sampler.seed``, ``tune.seed``); a seed other than 0 keeps its results apart
(``<search>_s<N>`` in the folder and in results.json), so the spread over seeds can be shown.

One job after another on this machine's default device (``--jobs 2``: two trials at a time).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1
PAIRS = {
    "sgd": ["model=resnet10t", "optimizer=sgd"],
    "adamw": ["model=resnet10t", "optimizer=adamw"],
    "convnext_adamw": ["model=convnext_atto", "optimizer=adamw"],
}
SEARCHES = ("asha", "asha_promotion", "tpe", "evolve", "evolve_promotion", "ray_asha", "ray_asha_promotion", "pbt")


def run(argv: list[str], log: Path) -> float:
    """Run a command from the checkout, its output to ``log``; the wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode not in (0, 1):  # 1: a job diverged or failed, the sweep went on
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}; see {log}")
    return time.perf_counter() - t0


def trials(folder: Path) -> list[dict]:
    """The summaries of a sweep folder's numbered job folders."""
    rows = []
    for job in sorted(folder.iterdir(), key=lambda p: p.name):
        if job.is_dir() and job.name.isdigit() and (job / "summary.json").is_file():
            rows.append(json.loads((job / "summary.json").read_text()))
    return rows


def best_of(rows: list[dict]) -> tuple[float, dict]:
    """The best objective (maximised: val/acc on digits) over the trials, and its summary."""
    scored = [(r["objective"], r) for r in rows if isinstance(r.get("objective"), (int, float))]
    return max(scored, key=lambda t: t[0]) if scored else (float("nan"), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=9, help="(epochs) of a full-budget run")
    parser.add_argument("--pairs", nargs="+", default=["sgd", "adamw"], choices=list(PAIRS))
    parser.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=SEARCHES)
    parser.add_argument("--jobs", type=int, default=1, help="trials at a time (joblib launcher / Ray)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lr_search_bench"))
    parser.add_argument("--reuse-grid", action="store_true", help="take the grid from an earlier run into --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of every search's sampler (0: the presets')")
    args = parser.parse_args()
    py = sys.executable
    common = [f"epochs={args.epochs}", "trainer.progress_bar=false", "warmup_epochs=0"]
    parallel = ([] if args.jobs == 1 else
                ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}", f"hydra.sweeper.n_jobs={args.jobs}"])
    results = {}
    for name in args.pairs:
        pair, base = [*PAIRS[name], *common], args.out / name
        base.mkdir(parents=True, exist_ok=True)
        grid_dir = base / "grid"
        if args.reuse_grid and (base / "grid_wall_s.txt").is_file():  # the grid of an earlier run of this bench
            wall = float((base / "grid_wall_s.txt").read_text())
        else:
            wall = run([py, "train.py", "-m", *pair, "hparams_search=lr_grid", "trainer.save_checkpoints=false",
                        f"hydra.sweep.dir={grid_dir}"], base / "grid.log")
            (base / "grid_wall_s.txt").write_text(f"{wall}\n")
        grid = trials(grid_dir)
        grid_best, grid_run = best_of(grid)
        grid_steps = sum(r["steps"] for r in grid)
        res = {"grid": {"best": grid_best, "lr0": grid_run.get("lr0"), "steps": grid_steps, "wall_s": wall,
                        "trials": len(grid)}}
        print(f"{name} grid: best {grid_best:.4f} (lr0 {grid_run.get('lr0')}), {grid_steps} steps, {wall:.0f} s",
              flush=True)
        for search in args.searches:
            tag = search if args.seed == 0 else f"{search}_s{args.seed}"
            out = base / tag
            if out.exists():  # a search run again replaces its folder
                shutil.rmtree(out)
            if search in ("asha", "asha_promotion", "tpe", "evolve", "evolve_promotion"):
                preset_name, _, promotion = search.partition("_")
                preset = [f"hparams_search=lr_{preset_name}",
                          *(["hydra/sweeper/pruner=asha_promotion"] if promotion else [])]
                wall = run([py, "train.py", "-m", *pair, *preset, *parallel,
                            f"hydra.sweeper.sampler.seed={args.seed}", f"hydra.sweep.dir={out}"], base / f"{tag}.log")
            elif search in ("ray_asha", "ray_asha_promotion"):  # as many trials as the grid has points, --jobs at once
                rule = ["tune.asha_rule=promotion"] if search == "ray_asha_promotion" else []
                wall = run([py, "-m", "framework.tune", *pair, "tune.search=asha", "tune.num_samples=9", *rule,
                            f"tune.cpus_per_trial={max(1, CORES // args.jobs)}", f"tune.seed={args.seed}",
                            f"tune.dir={out}"], base / f"{tag}.log")
            else:  # PBT: a population of 4 trained together (one core each), lr0 perturbed every epoch
                wall = run([py, "-m", "framework.tune", *pair, "tune.search=pbt", "tune.num_samples=4",
                            "tune.cpus_per_trial=1", f"tune.seed={args.seed}", f"tune.dir={out}"], base / f"{tag}.log")
            rows = trials(out)
            best, run_ = best_of(rows)
            steps = sum(r["steps"] for r in rows)
            entry = {"best": best, "of_grid": best / grid_best, "steps": steps, "steps_frac": steps / grid_steps,
                     "wall_s": wall, "wall_frac": wall / res["grid"]["wall_s"], "trials": len(rows),
                     "pruned": sum(r["status"] == "pruned" for r in rows), "best_lr0": run_.get("lr0")}
            said = [line for line in (base / f"{tag}.log").read_text().splitlines() if line.startswith("replay: ")]
            if search == "pbt" and said:  # the command framework.tune printed (the best trial's keys, its schedule)
                replay = base / f"{tag}_replay"
                command = shlex.split(said[-1][len("replay: "):])[1:]  # without "lrframe"
                run([py, "train.py", *command, f"hydra.run.dir={replay}"], base / f"{tag}_replay.log")
                summary = json.loads((replay / "summary.json").read_text())
                entry.update(replay_best=summary["objective"], replay_of_grid=summary["objective"] / grid_best,
                             replay_steps=summary["steps"])
            res[tag] = entry
            print(f"{name} {tag}: best {best:.4f} = {entry['of_grid']:.3f} of grid, {steps} steps = "
                  f"{entry['steps_frac']:.1%}, {wall:.0f} s = {entry['wall_frac']:.1%}, {entry['pruned']}/{len(rows)} "
                  f"pruned" + (f", replay {entry['replay_of_grid']:.3f} of grid" if "replay_best" in entry else ""),
                  flush=True)
        results[name] = res
        done = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").is_file() else {}
        done.setdefault(name, {}).update(res)  # searches of an earlier run of this bench are kept
        (args.out / "results.json").write_text(json.dumps(done, indent=1) + "\n")


if __name__ == "__main__":
    main()
