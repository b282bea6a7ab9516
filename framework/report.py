"""Sweep report: one row per job of a multirun folder, best first, with the LR sensitivity plot.

Written automatically when a multirun ends (:class:`SweepReport`, a Hydra callback set in
``conf/train.yaml``) and on demand::

    python -m framework.report outputs/multirun/<date>/<time>

The objective is each job's monitored metric (``task.monitor``, ``objective_name`` in its
``summary.json``: ``val/acc`` for classification, ``val/rmse`` for regression, ...), better when
higher or lower as ``task.mode`` says (``objective_mode``; ``max`` for summaries older than
tasks). Files written into the sweep folder: ``report.csv`` and ``report.md`` (one row per job:
its overrides, status, best and final monitored metric, final ``train/loss``, wall time, steps),
``sensitivity.png`` (the best monitored metric against ``lr0`` on a log axis, one line per
combination of the other swept keys, e.g. one per scheduler), ``loss.png`` (training loss per
step of every job), ``lr.png`` (the applied LR per step of every job), and with
:mod:`framework.report_search`: ``curves.png``, the best command, the compute against a full grid
(``search.json``), pruned trials. Jobs still running or killed (no ``summary.json``) are reported
as ``incomplete`` with what their CSVs hold. A search's ``search=...`` override is never shown.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Optional

from framework.report_rows import (BAD_STATUSES, COLUMNS, as_float, fmt, _key, series_label, collect, csv_header,
                                   objective_label, override_list, swept_keys, varying_keys)

try:  # Hydra's callback base class; the report also works without Hydra's experimental API
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


def plot(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``sensitivity.png``, ``loss.png`` and ``lr.png`` for the jobs in ``rows``; returns the files.

    The sensitivity curve: each job's best monitored metric (``val/acc``, ``val/rmse``, ...)
    against its ``lr0`` on a log axis, one line per combination of the other swept keys; diverged
    jobs are drawn as red crosses at the worst end (0 for ``max`` metrics, the top of the plotted
    values for ``min`` ones).
    """
    from framework.loggers import pyplot

    plt = pyplot()

    swept = swept_keys(rows)
    others = [k for k in swept if k != "lr0"]
    files = []
    series: dict[str, list[tuple[float, Optional[float], str]]] = {}
    for r in rows:
        if r["lr0"] is not None:
            series.setdefault(series_label(r, others), []).append((r["lr0"], r["best"], r["status"]))
    if len(series) > 8:  # continuous keys (Optuna): one point per job, drawn as one scatter
        series = {"all jobs": [p for points in series.values() for p in points]}
    minimise = bool(rows) and all(r.get("objective_mode") == "min" for r in rows)
    plotted = [r["best"] for r in rows if r["best"] is not None and r["status"] not in ("diverged", "failed")]
    worst_y = (max(plotted) if plotted else 1.0) if minimise else 0.0  # where a diverged job is drawn
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        good = [(x, y) for x, y, s in points if s not in ("diverged", "failed") and y is not None]
        if good:
            ax.plot(*zip(*good), marker="o", label=label, ls="-" if label != "all jobs" or len(series) == 1 else "")
        bad = [x for x, _, s in points if s == "diverged"]
        if bad:
            ax.scatter(bad, [worst_y] * len(bad), marker="x", color="red", zorder=3)
    if any(r["status"] == "diverged" for r in rows):
        ax.scatter([], [], marker="x", color="red", label="diverged")
    ax.set_xscale("log")
    ax.set_xlabel("lr0")
    ax.set_ylabel(f"best {objective_label(rows)}" + (" (lower is better)" if minimise else ""))
    ax.set_title("LR sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out_dir / "sensitivity.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    for column, name, ylabel in (("loss", "loss.png", "train loss (per step)"), ("lr", "lr.png", "applied LR (group 0)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in sorted(rows, key=lambda r: r["job"]):
            pts = [(int(s["step"]), as_float(s.get(column))) for s in r["steps_rows"]]
            pts = [(k, v) for k, v in pts if v is not None and v > 0]
            if pts:
                ax.plot(*zip(*pts), lw=1, label=f"{r['job']}: {series_label(r, swept)}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step k")
        ax.set_ylabel(ylabel)
        if len(rows) <= 12 and ax.lines:
            ax.legend(fontsize=6)
        fig.tight_layout()
        files.append(out_dir / name)
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    return files


def write_report(sweep_dir: str | Path) -> dict[str, Any]:
    """Write ``report.csv``, ``report.md`` and the figures into ``sweep_dir``.

    Args:
        sweep_dir: a multirun folder (``outputs/multirun/<date>/<time>``), finished or not.

    Returns:
        ``{"rows": [...], "bad": number of jobs not completed (pruned ones aside), "files": [...],
        "search": search.json's content}``.

    Raises:
        FileNotFoundError: no job folder (with ``.hydra/config.yaml``) under ``sweep_dir``.
    """
    from framework import report_search
    from framework.doctor.sweep import verdict_cell

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (with .hydra/config.yaml) here; "
                                "pass a multirun folder, e.g. outputs/multirun/<date>/<time>")
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        header = csv_header(rows)
        writer = csv.DictWriter(f, fieldnames=[header[c] for c in COLUMNS] + ["error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**{header[c]: r.get(c) for c in COLUMNS}, "error": r.get("error")} for r in rows)
    files = plot(rows, sweep_dir)
    files.insert(1, report_search.plot_curves(rows, sweep_dir))
    search_lines, search = report_search.header_lines(sweep_dir, rows)
    report_search.write_search_json(sweep_dir, search)
    bad = [r for r in rows if r["status"] in BAD_STATUSES]
    swept = swept_keys(rows)
    common = [o for o in override_list(rows[0]) if _key(o) not in swept]
    metric = objective_label(rows)
    modes = {r.get("objective_mode", "max") for r in rows}
    order = ("higher" if modes == {"max"} else "lower" if modes == {"min"} else "each job's task.mode") + " is better"
    lines = [f"# Sweep report: {sweep_dir}", "",
             f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in _counts(rows)) + f". Best first by {metric} "
             f"({order}); **bold** status = not completed"
             + (" (pruned: stopped by the search's pruner, on purpose)." if search["n_pruned"] else "."), "",
             *search_lines,
             f"Overrides common to every job: `{' '.join(common) or '(none)'}`", "",
             *_doctor_lines(rows),
             f"| rank | job | swept overrides | status | best {metric} | final {metric} | final train/loss | "
             "wall time (s) | steps | LR doctor |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        steps = f"{r['steps']}/{r['planned_steps']}" if r["planned_steps"] else str(r["steps"])
        lines.append(f"| {r['rank']} | {r['job']} | `{series_label(r, swept)}` | {report_search.status_cell(r)} | "
                     f"{fmt(r['best'])} | "
                     f"{fmt(r['final'])} | {fmt(r['final_train_loss'])} | {fmt(r['wall_time_s'], 3)} | {steps} | "
                     f"{verdict_cell(r.get('lr_verdict'), r.get('lr0_factor'), r.get('lr_factor_of', 'lr0'))} |")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- job {r['job']} ({r['status']}): {r['error']}" for r in errors]
    diffs = varying_keys(rows)
    lines += ["", "## Config differences between jobs", ""]
    if diffs:
        lines += ["| job | " + " | ".join(diffs) + " |", "|---:|" + "---|" * len(diffs)]
        for r in sorted(rows, key=lambda r: (not r["job"].isdigit(), int(r["job"]) if r["job"].isdigit() else r["job"])):
            lines.append(f"| {r['job']} | " + " | ".join(fmt(r["config"].get(k)) for k in diffs) + " |")
    else:
        lines.append("None: every job has the same config.")
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in files]
    (sweep_dir / "report.md").write_text("\n".join(lines) + "\n")
    return {"rows": rows, "bad": len(bad), "files": files, "search": search}


def _doctor_lines(rows: list[dict[str, Any]]) -> list[str]:
    """report.md's line on the lr0 range the jobs' LR doctor verdicts bracket, when no key but lr0
    differs between the jobs (:func:`framework.doctor.sweep.bracket`), or nothing."""
    from framework.doctor.sweep import bracket, bracket_line

    if not set(swept_keys(rows)) <= {"lr0"} or not any(r.get("lr_verdict") for r in rows):
        return []
    return [f"LR doctor (`python -m framework.doctor <job folder>` for the evidence): "
            f"{bracket_line(bracket([(r['lr0'], r.get('lr_verdict')) for r in rows]))}", ""]


def _counts(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return sorted(out.items())


#: Outcome of the last sweep reported in this process: ``(jobs, jobs not completed)``.
LAST_SWEEP: Optional[tuple[int, int]] = None


class SweepReport(Callback):
    """Hydra callback: write the sweep report when a multirun ends (``hydra.callbacks`` in
    ``conf/train.yaml``) and remember how many jobs did not complete, for the exit status."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Write the report of the sweep folder ``config.hydra.sweep.dir`` and print one line;
        a report that cannot be written is one line too, never a traceback after the sweep."""
        global LAST_SWEEP
        from framework import distributed

        if not distributed.is_main():  # a sweep inside torchrun: rank 0 writes the report
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            result = write_report(sweep_dir)
        except FileNotFoundError:
            return
        except Exception as exc:
            print(f"sweep report: not written ({type(exc).__name__}: {exc}); "
                  f"try python -m framework.report {sweep_dir}", file=sys.stderr)
            return
        LAST_SWEEP = (len(result["rows"]), result["bad"])
        search = result["search"]
        pruned = f", {search['n_pruned']} pruned" if search["n_pruned"] else ""
        best = (f"best: job {search['best_job']} {search['objective_name']} {fmt(search['best_value'])}: "
                f"{search['best_command']}" if search["best_job"] is not None else "no best job")
        print(f"sweep report: {sweep_dir / 'report.md'} ({len(result['rows'])} jobs, {result['bad']} not completed"
              f"{pruned}; {best})", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m framework.report <sweep folder>``: write the report, print it; exit status 1
    when some job did not complete, 2 when the folder holds no jobs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m framework.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. outputs/multirun/<date>/<time>")
    args = parser.parse_args(argv)
    if Path(args.sweep_dir).is_dir() and not (Path(args.sweep_dir) / "multirun.yaml").is_file():
        print(f"error: {args.sweep_dir}: not a sweep folder (no multirun.yaml); pass a multirun folder, "
              "e.g. outputs/multirun/<date>/<time>", file=sys.stderr)
        return 2
    try:
        result = write_report(args.sweep_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.sweep_dir) / "report.md").read_text())
    return 1 if result["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
