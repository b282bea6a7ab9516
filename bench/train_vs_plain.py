"""Wall time of the default job as whole processes: ``python train.py`` against the same job in plain
PyTorch (``bench/plain_digits.py``), from launch to exit.

    python bench/train_vs_plain.py                 # 3 runs of each, alternating, + start-up baselines
    python bench/train_vs_plain.py --repeats 5 --no-baselines
    python bench/train_vs_plain.py --root /tmp/lrframe_head   # train.py of another checkout (a clone of a commit)

The two run alternately (which goes first alternates too), so a drift of the machine's speed hits
both; the ratio is the median of the pairs' ratios. Each run writes into its own temporary folder,
removed afterwards. On a shared machine each command waits (up to 10 min) until the CPUs are quiet
(busy share of all cores over 2 s under --quiet-below), and the share of the CPUs other processes
took during each run is printed: a run beside a busy neighbour is slower for reasons of neither
script. Baselines (same repeats): an empty interpreter, the plain script's imports, and
``python train.py --cfg job`` (Hydra composes and prints the config; no torch).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where train.py runs (--root)
PLAIN = Path(__file__).resolve().parent / "plain_digits.py"
PY = sys.executable


QUIET = 1.0  # busy share of the CPUs under which a command may start (--quiet-below)
OTHERS: list[float] = []  # share of the machine that other processes used during each command


def cpu_ticks() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (zeros where unreadable)."""
    try:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / hz, sum(v) / hz  # idle and iowait are not busy


def busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds``."""
    (b0, t0), _, (b1, t1) = cpu_ticks(), time.sleep(seconds), cpu_ticks()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def timed(cmd: list[str]) -> tuple[float, str]:
    """Seconds from launch to exit of ``cmd`` (run from the project root) and its stdout."""
    deadline = time.time() + 600
    while busy() > QUIET and time.time() < deadline:
        time.sleep(10)
    (b0, t0), own0 = cpu_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    (b1, t1), own1 = cpu_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    OTHERS.append(max(0.0, b1 - b0 - own) / (t1 - t0) if t1 > t0 else 0.0)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, done.stdout


def framework(tmp: Path) -> tuple[float, float]:
    out = tmp / "fw"
    wall, _ = timed([PY, "train.py", "trainer.progress_bar=false", f"hydra.run.dir={out}"])
    return wall, json.loads((out / "summary.json").read_text())["final"]["val/acc"]


def plain(tmp: Path) -> tuple[float, float]:
    wall, stdout = timed([PY, str(PLAIN), "--out", str(tmp / "plain")])
    return wall, float(re.search(r"final val/acc ([\d.]+)", stdout).group(1))


def row(name: str, walls: list[float], extra: str = "") -> None:
    print(f"{name:<44} {statistics.median(walls):>8.2f} {min(walls):>8.2f}   {extra}")


def main() -> None:
    global ROOT, QUIET
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--quiet-below", type=float, default=0.25, help="start a command only when the CPUs are "
                        "less busy than this share (1 = never wait)")
    parser.add_argument("--root", type=Path, default=ROOT, help="project checkout whose train.py runs")
    args = parser.parse_args()
    ROOT, QUIET = args.root.resolve(), args.quiet_below
    print(f"train.py of {ROOT}", file=sys.stderr)
    fw, pl, ratios, accs = [], [], [], set()
    for r in range(args.repeats):
        pair = [framework, plain] if r % 2 == 0 else [plain, framework]
        for run in pair:
            with tempfile.TemporaryDirectory(prefix="train_vs_plain_") as tmp:
                wall, acc = run(Path(tmp))
            (fw if run is framework else pl).append(wall)
            accs.add((run.__name__, acc))
        ratios.append(fw[-1] / pl[-1])
        print(f"pair {r + 1}: framework {fw[-1]:.2f} s, plain {pl[-1]:.2f} s (others took "
              f"{', '.join(f'{o:.0%}' for o in OTHERS[-2:])} of the CPUs)", file=sys.stderr)
    print(f"{'command (wall s, launch to exit)':<44} {'median':>8} {'min':>8}")
    row("python train.py trainer.progress_bar=false", fw,
        f"val/acc {sorted(a for n, a in accs if n == 'framework')}")
    row("python bench/plain_digits.py", pl, f"val/acc {sorted(a for n, a in accs if n == 'plain')}")
    print(f"{'ratio framework/plain':<44} {statistics.median(ratios):>8.3f} {min(fw) / min(pl):>8.3f}   "
          f"(median of pair ratios; ratio of mins); extra {statistics.median(fw) - statistics.median(pl):+.2f} s")
    print(f"other processes used up to {max(OTHERS):.0%} of the CPUs during a run (runs start below {QUIET:.0%})")
    if args.no_baselines:
        return
    for name, cmd in [("python -c pass", [PY, "-c", "pass"]),
                      ("python -c 'import torch, timm, sklearn...'",
                       [PY, "-c", "import torch, timm, sklearn.datasets, sklearn.model_selection"]),
                      ("python train.py --cfg job", [PY, "train.py", "--cfg", "job"])]:
        row(name, [timed(cmd)[0] for _ in range(args.repeats)])


if __name__ == "__main__":
    main()
