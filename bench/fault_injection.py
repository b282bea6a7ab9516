"""Fault injection: SIGKILL a training run at random moments, resume it each time, compare.

    python bench/fault_injection.py --kills 5 --seed 0

Runs the same small job (synthetic data, timm test_resnet, CPU) once without interruption and
once under repeated SIGKILLs, each followed by `python train.py ... resume=<run folder>` (a fresh
start when no checkpoint was written yet), and compares the two `steps.csv` and `epochs.csv`
files (wall times aside). Prints one line per kill and a final verdict; exit status 1 on a
difference.
"""
from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ["dataset=synthetic", "dataset.img_size=16", "dataset.train_size=512", "model.name=test_resnet",
       "epochs=120", "device=cpu", "trainer.progress_bar=false"]


def rows(path: Path, drop: str = "") -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != drop} for r in csv.DictReader(f)]


def command(run: Path, resume: bool) -> list[str]:
    extra = [f"resume={run}"] if resume else []
    return [sys.executable, str(ROOT / "train.py"), *JOB, *extra, f"hydra.run.dir={run if not resume else run / 'resumes' / str(time.time_ns())}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs to inject (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: %(default)s)")
    parser.add_argument("--min-delay", type=float, default=4.0, help="seconds after start, at least")
    parser.add_argument("--max-delay", type=float, default=9.0, help="seconds after start, at most")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fault_injection_"))
    ref, run = work / "reference", work / "killed"
    subprocess.run(command(ref, False), cwd=ROOT, check=True, capture_output=True)
    kills = 0
    while True:
        resume = (run / "checkpoints" / "last.pt").exists()
        proc = subprocess.Popen(command(run, resume), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < args.kills:
            try:
                proc.wait(timeout=rng.uniform(args.min_delay, args.max_delay))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
                done = len(rows(run / "steps.csv")) if (run / "steps.csv").exists() else 0
                print(f"kill {kills}: SIGKILL with {done} step rows on disk ({'resumed run' if resume else 'fresh run'})")
                continue
        else:
            proc.wait()
        if proc.returncode != 0:
            print(proc.stderr.read().decode()[-2000:])
            return 1
        break
    same_steps = rows(ref / "steps.csv") == rows(run / "steps.csv")
    same_epochs = rows(ref / "epochs.csv", "time_s") == rows(run / "epochs.csv", "time_s")
    print(f"kills survived: {kills}; steps.csv identical: {same_steps} ({len(rows(run / 'steps.csv'))} rows); "
          f"epochs.csv identical: {same_epochs}; folders in {work}")
    return 0 if same_steps and same_epochs else 1


if __name__ == "__main__":
    sys.exit(main())
