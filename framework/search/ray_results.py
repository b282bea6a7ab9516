"""The end of ``python -m framework.tune``: every trial folder made whole, the sweep report, the
best trial and, after Population Based Training, its LR trace as a replayable schedule.

A trial that erred before its run wrote ``summary.json`` (a crash in the worker, a lost node) gets
one here (``status: failed`` with Ray's error), trials a Ctrl-C left running say ``stopped``; the
report is :func:`framework.report.write_report` on the tune folder; the best trial
(:func:`framework.search.best.best_trial`) is the one
with the best objective (the best epoch's monitored value) among the completed trials (else
among all).
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from framework.errors import first_line
from framework.search.best import SCHEDULE_NAME, best_trial, own_plan_note, replay_line, segments, trial_folders

__all__ = ["finish", "result_log"]

def _run_dir(tune_dir: Path, result: Any) -> Optional[Path]:
    """The run folder of a Ray result: ``<tune_dir>/<index>`` from its Ray folder ``trial_<index>``
    (the driver's ``trial_dirname_creator``); None for a folder not named so."""
    tail = Path(str(result.path)).name.rsplit("_", 1)[-1]
    return tune_dir / str(int(tail)) if tail.isdigit() else None


def _mend_failed(tune_dir: Path, results: Any, spec: Any, base: Any) -> int:
    """Write ``summary.json`` (and ``.hydra/``) of trials Ray reports as errors whose run wrote
    none; the number of errored trials."""
    from omegaconf import OmegaConf

    from framework.search.ray_trainable import trial_overrides
    from framework.summary import write_untrained_summary

    errors = 0
    for result in results:
        if result.error is None:
            continue
        errors += 1
        run_dir = _run_dir(tune_dir, result)
        if run_dir is None:
            continue
        overrides = trial_overrides(spec, dict(result.config or {}))
        if not (run_dir / ".hydra" / "config.yaml").is_file():
            (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(base, run_dir / ".hydra" / "config.yaml")
            OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
        if not (run_dir / "summary.json").is_file():
            write_untrained_summary(run_dir, "failed", error=f"{type(result.error).__name__}: "
                                    f"{first_line(result.error)}", overrides=overrides,
                                    objective_name=spec.monitor, objective_mode=spec.mode)
    return errors


def _mend_interrupted(tune_dir: Path, results: Any) -> None:
    """After a Ctrl-C, the trials the search left unfinished (Ray stops them as a scheduler would,
    so their run says ``pruned``): ``status: stopped``, ``stop_reason: tune interrupted``,
    resumable. A trial whose last result Tune marked ``done`` had ended."""
    from framework.loggers import read_summary, write_json

    for result in results:
        run_dir = _run_dir(tune_dir, result)
        if result.error is not None or (result.metrics or {}).get("done") or run_dir is None:
            continue
        summary = read_summary(run_dir)
        if summary.get("status") == "pruned":
            summary.pop("pruned", None)
            summary.update(status="stopped", stop_reason="tune interrupted", resume_with=f"resume={run_dir}")
            write_json(summary, run_dir / "summary.json")


#: Searched keys whose changes the exported schedule replays (the LR, its momentum and weight decay).
REPLAYED = ("lr0", "optimizer.momentum", "optimizer.weight_decay")


def _changed_besides_lr(summary: dict[str, Any]) -> list[str]:
    """Searched keys other than :data:`REPLAYED` whose value changed along the trial's lineage (PBT)."""
    lineage = (summary.get("tune") or {}).get("lineage") or []
    keys = {k for seg in lineage for k in (seg.get("params") or {}) if k not in REPLAYED}
    return sorted(k for k in keys if len({repr((seg.get("params") or {}).get(k)) for seg in lineage}) > 1)


def finish(tune_dir: Path, results: Any, spec: Any, base: Any, expected: int = 0, interrupted: bool = False) -> int:
    """Mend failed and interrupted trials, write the report, name the best trial, export PBT's
    best schedule, print what was done; the exit status (130 after a Ctrl-C, or when fewer than
    ``expected`` trials (``tune.num_samples``) ran, else 1 when a trial erred, else 0);
    ``interrupted``: a Ctrl-C ended the search (:func:`framework.search.ray_resume.fit_watching_sigint`):
    only then are trials left unfinished called ``stopped``, not those a scheduler ended."""
    from framework.report import write_report

    errors = _mend_failed(tune_dir, results, spec, base)
    ran = sum((folder / "summary.json").is_file() for folder in trial_folders(tune_dir))
    # a Ctrl-C; or trials it left unstarted (it took effect once no trial was running): not over
    interrupted = interrupted or ran < expected
    if interrupted:
        _mend_interrupted(tune_dir, results)
        print(f"tune: interrupted; trials that were running say status stopped. Continue the search: python -m "
              f"framework.tune tune.resume={tune_dir} (or one trial: lrframe <its overrides> resume=<its folder>)",
              file=sys.stderr)
    statuses: dict[str, int] = {}
    from framework.loggers import read_summary

    for folder in trial_folders(tune_dir):
        status = read_summary(folder).get("status", "incomplete")
        statuses[status] = statuses.get(status, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    print(f"tune: {sum(statuses.values())} trials ({counts}) in {tune_dir}", file=sys.stderr)
    found = best_trial(tune_dir)
    exported = _export(tune_dir, *found) if found is not None and spec.search == "pbt" else []  # the report shows it
    try:
        write_report(tune_dir)
        print(f"tune report: {tune_dir / 'report.md'}", file=sys.stderr)
    except Exception as exc:  # the trials' folders are the record; the report can be written again
        print(f"tune report: not written ({type(exc).__name__}: {first_line(exc)}); try python -m framework.report "
              f"{tune_dir}", file=sys.stderr)
    if found is None:
        print("tune: no trial has a result", file=sys.stderr)
        return 1
    folder, summary = found
    value = summary.get("objective")
    print(f"best: trial {folder.name} {summary.get('objective_name')} {value:.6g} ({summary.get('status')}): "
          f"{' '.join(map(shlex.quote, summary.get('overrides') or []))}", file=sys.stderr)
    for line in exported:
        print(line, file=sys.stderr)
    return 130 if interrupted else 1 if errors else 0


def _export(tune_dir: Path, folder: Path, summary: dict[str, Any]) -> list[str]:
    """Export the best PBT trial's applied LR trace; the lines that say what was written and how
    to replay it."""
    from framework.errors import ConfigError
    from framework.schedules.piecewise import export_schedule

    out = tune_dir / SCHEDULE_NAME
    try:
        export_schedule(folder, out)
    except (ConfigError, OSError) as exc:
        return [f"best schedule: not written ({first_line(exc)}); try python -m framework.schedules.piecewise {folder} "
                f"-o {out}"]
    parts = segments(summary)
    path = " -> ".join(f"trial {trial} (steps {first}-{last}"
                       + (f", lr0 {params['lr0']:.4g})" if isinstance(params.get("lr0"), float) else ")")
                       for trial, first, last, params in parts)
    from framework.schedules.piecewise import load_trace

    trace = load_trace(out)
    extra = "".join(f", {name}" for name, held in (("momentum", trace.momenta), ("weight decay", trace.weight_decays))
                    if held is not None)
    lines = [f"best schedule: {out} (the LR{extra} applied at every step of trial {folder.name}: {path})",
             f"replay: {replay_line(folder, summary, out)}"]
    if len(parts) <= 1:
        lines.append(f"note: {own_plan_note(folder.name)}")
    changed = _changed_besides_lr(summary)
    if changed:
        lines.append(f"note: PBT also changed {', '.join(changed)} along the way; the schedule replays the LR, momentum "
                     "and weight decay only (the command above has their final values)")
    return lines


def result_log(path: Path) -> Any:
    """A Tune callback that appends each result, in the order the scheduler judged them, to
    ``results.jsonl``: trial, Ray's trial_id, epoch, epochs_trained, step and the reported metrics
    (``tune.resume`` refills ASHA's rungs from them)."""
    from ray import tune

    from framework.search.ray_trainable import trial_index

    class ResultLog(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            keep = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k not in ("config",)}
            row = {"trial": trial_index(trial.trial_id), "trial_id": trial.trial_id, **{k: keep[k] for k in sorted(keep)}}
            with open(path, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")

    return ResultLog()
