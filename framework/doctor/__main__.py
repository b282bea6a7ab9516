"""``python -m framework.doctor <run folder | sweep folder>``: was the learning rate too high, too low or right?

A run folder: its diagnosis (verdict, suggested lr0 factor, the evidence), printed, and in the
folder ``lr_doctor.png`` (loss and its trend, applied LR, update ratios per group) and
``lr_doctor.csv`` (the signals of each interval).
A sweep folder (``multirun.yaml``): every job's verdict and the lr0 range the verdicts bracket
(``too low at and below 0.003; right from 0.01 to 0.1; too high at and above 0.3``).
Exit status 0, or 2 with one line when the folder holds neither.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional


def _run(folder: Path, out: Optional[Path]) -> int:
    from framework.doctor import diagnose_run, read_steps
    from framework.doctor.figure import plot_diagnosis
    from framework.doctor.sweep import diagnosis_cell
    from framework.loggers import read_summary

    summary = read_summary(folder)
    try:
        diagnosis = diagnose_run(folder, summary=summary, write=True)
    except FileNotFoundError as exc:  # a header and no row yet
        print(f"error: {exc}; diagnose it once it has trained a step", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as exc:  # not a steps.csv the framework wrote
        print(f"error: {folder / 'steps.csv'}: not a run's step log (no readable {exc} column); pass a run folder "
              "the framework wrote", file=sys.stderr)
        return 2
    cell = diagnosis_cell(diagnosis)
    print(f"{folder}: {cell}")
    print(f"  {diagnosis['reason']}")
    for name, group in diagnosis["groups"].items():
        print(f"  group {name} (lr {group['lr']:.3g}): {group['verdict']}, update ratio {group['update_ratio']:.2g}")
    shown = {k: v for k, v in diagnosis["evidence"].items() if v is not None}
    for key, value in shown.items():
        text = (", ".join(f"{k} {v:.3g}" for k, v in value.items()) if isinstance(value, dict) else
                ", ".join(f"{v:.3g}" for v in value) if isinstance(value, list) else
                f"{value:.4g}" if isinstance(value, float) else str(value))
        print(f"  {key:18s} {text}{MEANING.get(key, '')}")
    path = out or folder / "lr_doctor.png"
    plot_diagnosis(read_steps(folder), diagnosis, path, title=f"{folder.name}: {cell}")
    print(f"figure: {path}")
    return 0


def _sweep(folder: Path) -> int:
    from framework.doctor.sweep import bracket, bracket_line, diagnosis_cell, job_diagnosis
    from framework.loggers import read_summary
    from framework.report_rows import job_folders, swept_keys

    jobs: list[tuple[Any, Any]] = []
    summaries: list[dict[str, Any]] = []
    print(f"{'job':>4}  {'lr0':>10}  {'status':10}  {'verdict':20}  reason")
    for job in job_folders(folder):
        summary = read_summary(job)
        summaries.append(summary)
        diagnosis = job_diagnosis(job, {**summary, "lr_diagnosis": None}) if summary else None  # judged afresh
        verdict = diagnosis["verdict"] if diagnosis else None
        lr0 = summary.get("lr0") if summary else None
        jobs.append((lr0 if isinstance(lr0, (int, float)) else None, verdict))
        cell = diagnosis_cell(diagnosis)
        shown = f"{lr0:.4g}" if isinstance(lr0, (int, float)) else "-"  # 0.0001164422375176788 would overflow
        print(f"{job.name:>4}  {shown:>10}  {summary.get('status', '-'):10}  "
              f"{cell:20}  {diagnosis['reason'] if diagnosis else 'no steps.csv'}")
    swept = swept_keys([{"override_list": summary.get("overrides") or []} for summary in summaries])
    if set(swept) <= {"lr0"}:
        print(bracket_line(bracket(jobs)))
    else:  # as the sweep report: an lr0 range only when nothing but lr0 differs between the jobs
        print(f"lr0: no range (the jobs differ in {', '.join(k for k in swept if k != 'lr0')}"
              f"{' as well as lr0' if 'lr0' in swept else ''})")
    return 0


#: What an evidence figure is, where its key alone does not say (printed after its value).
MEANING = {"loss_start": "  (loss of step 0)", "loss_end": "  (mean loss of the last interval)",
           "loss_max": "  (highest interval mean loss)", "loss_drop_frac": "  (1 - loss_end / loss_start)",
           "rose": "  (intervals whose mean loss rose)", "judged_rises": "  (intervals compared)",
           "noise": "  (median relative spread around the trend)",
           "loss_drop_per_lr": "  (interval-mean loss drop per unit of LR x steps)",
           "update_ratio": "  (||dw||/||w|| of the first sampled step, scaled to the base LR, by group)",
           "ratio_band": "  (the healthy update ratio, low and high, of the optimizer family)",
           "optimizer_family": "  (sets the band: adaptive = Adam-type, sgd, or None = another optimizer)"}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.doctor", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("folder", help="a run folder (steps.csv) or a sweep folder (multirun.yaml)")
    parser.add_argument("-o", "--out", type=Path, help="the run's figure (default: <run folder>/lr_doctor.png)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if folder.name == "steps.csv" and folder.is_file():  # the run's steps.csv itself: its folder
        folder = folder.parent
    if not folder.is_dir():
        print(f"error: {folder}: no such folder; pass a run folder (with steps.csv) or a sweep folder "
              "(with multirun.yaml)", file=sys.stderr)
        return 2
    if (folder / "multirun.yaml").is_file():
        return _sweep(folder)
    if (folder / "steps.csv").is_file():
        return _run(folder, args.out)
    print(f"error: {folder}: neither a run folder (steps.csv) nor a sweep folder (multirun.yaml); pass e.g. "
          "outputs/runs/<date>/<time> or outputs/multirun/<date>/<time>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
