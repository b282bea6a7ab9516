"""The rows of a sweep report: one dict per job folder of a multirun (its overrides, status,
best and final monitored metric, steps, wall time), read from the folder's ``summary.json``,
CSVs and ``.hydra/``; shared by :mod:`framework.report` and :mod:`framework.report_search`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from framework.config import flatten
from framework.loggers import read_rows
from framework.errors import first_line
from framework.search import SEARCH_KEY

#: Columns of ``report.csv``; ``best`` and ``final`` (the monitored metric of the best and of the last
#: epoch) are written as ``best_<metric>`` / ``final_<metric>`` (``best_val_acc``), or
#: ``best_objective`` / ``final_objective`` when the jobs monitor different metrics (:func:`csv_header`).
COLUMNS = ["rank", "job", "overrides", "status", "best", "final", "final_train_loss", "lr0",
           "wall_time_s", "steps", "planned_steps", "objective_name", "objective_mode", "epochs", "planned_epochs",
           "lr_verdict", "lr0_factor", "lr_factor_of"]
#: Statuses that count as a problem for the sweep's exit status (``pruned``: the search at work, not one).
BAD_STATUSES = ("failed", "diverged", "stopped", "incomplete")
#: Override key of a job's link to its search trial (``search={_target_:...,trial:3}``): never shown.
PLUMBING_KEY = SEARCH_KEY


def as_float(value: Any) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def job_folders(sweep_dir: str | Path) -> list[Path]:
    """Job folders of a sweep: subfolders holding Hydra's ``.hydra/`` (any depth), by job number."""
    root = Path(sweep_dir)
    jobs = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    key = lambda p: (int(p.name) if p.name.isdigit() else math.inf, str(p))
    return sorted((j for j in jobs if j != root), key=key)


def read_job(folder: Path) -> dict[str, Any]:
    """One report row from a job folder (``summary.json``, ``.hydra/``, the CSVs).

    The monitored metric and its mode come from ``summary.json`` (``objective_name``,
    ``objective_mode``), else from the job's task config (``task.monitor``, ``task.mode``: a job
    killed before it wrote its summary), else ``val/acc``, ``max`` (jobs older than tasks).

    Returns:
        The :data:`COLUMNS` values (``lr_verdict``, ``lr0_factor``, ``lr_factor_of``: the LR doctor's, from
        ``summary.json``'s ``lr_diagnosis`` or made from ``steps.csv``) plus ``override_list`` (``search=`` left out; ``overrides``
        joins them), ``pruned`` (``summary.json``'s), ``config`` (the flattened composed config),
        ``steps_rows`` (``steps.csv``), ``epochs_rows`` (``epochs.csv``) and ``error``.
    """
    from omegaconf import OmegaConf

    from framework.loggers import read_summary
    from framework.trainer.ema import best_value  # (with EMA on, the value of the weights that made it best)

    summary = read_summary(folder)
    hydra_dir = folder / ".hydra"
    loaded = OmegaConf.load(hydra_dir / "config.yaml")
    try:  # resolved, so ${lr0} in optimizer.lr shows its value
        config = OmegaConf.to_container(loaded, resolve=True)
    except Exception:  # an interpolation that needs Hydra's runtime: show it as written
        config = OmegaConf.to_container(loaded, resolve=False)
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")] if (hydra_dir / "overrides.yaml").is_file() else []
    overrides = [o for o in overrides if _key(o).split(".")[0] != PLUMBING_KEY]
    steps = read_rows(folder / "steps.csv")
    epochs = read_rows(folder / "epochs.csv")
    best, final = summary.get("best") or {}, summary.get("final") or {}
    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    monitor = summary.get("objective_name") or task.get("monitor") or "val/acc"
    mode = summary.get("objective_mode") or task.get("mode") or "max"
    values = [v for v in (as_float(r.get(monitor)) for r in epochs) if v is not None]
    return {
        "job": folder.name,
        "folder": folder,
        "overrides": " ".join(overrides),
        "override_list": overrides,
        "status": summary.get("status", "incomplete"),
        "objective_name": monitor,
        "objective_mode": mode,
        "best": as_float(best_value(best, monitor)) if summary else (
            (max if mode == "max" else min)(values) if values else None),
        "final": as_float(final.get(monitor)) if summary else (values[-1] if values else None),
        "final_train_loss": as_float(final.get("train/loss")) if summary else (
            as_float(epochs[-1].get("train/loss")) if epochs else None),
        "lr0": as_float(summary.get("lr0", config.get("lr0"))),
        "wall_time_s": as_float(summary.get("wall_time_s")),
        "steps": summary.get("steps", len(steps)),
        "planned_steps": summary.get("planned_steps"),
        "epochs": summary.get("epochs", len(epochs)),
        "planned_epochs": summary.get("planned_epochs", config.get("epochs")),
        "pruned": summary.get("pruned"),
        **_verdict(folder, summary, steps),
        "error": summary.get("error", ""),
        "config": flatten(config),
        "steps_rows": steps,
        "epochs_rows": epochs,
    }


def _verdict(folder: Path, summary: dict[str, Any], steps: list[dict[str, str]]) -> dict[str, Any]:
    """The LR doctor's verdict and suggested factor of a job (``lr_verdict``, ``lr0_factor``, None
    without steps; ``lr_factor_of``: ``lr0``, or ``scheduler.path`` when the factor scales a
    replayed file's LRs; :func:`framework.doctor.sweep.job_diagnosis`)."""
    from framework.doctor.sweep import job_diagnosis

    diagnosis = job_diagnosis(folder, summary, steps)
    return {"lr_verdict": diagnosis["verdict"] if diagnosis else None,
            "lr0_factor": diagnosis["factor"] if diagnosis else None,
            "lr_factor_of": diagnosis.get("factor_of", "lr0") if diagnosis else "lr0"}


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job of the sweep, best first: completed, stopped and pruned jobs (in this order) by
    their best monitored metric (descending for ``objective_mode`` ``max``, ascending for ``min``;
    a job without one last), then incomplete, diverged and failed ones. Adds ``rank`` (1 = best)."""
    rows = []
    for folder in job_folders(sweep_dir):
        try:
            rows.append(read_job(folder))
        except Exception as exc:  # a job killed while Hydra wrote .hydra/: report it, go on
            rows.append({**dict.fromkeys(COLUMNS), "job": folder.name, "folder": folder, "overrides": "",
                         "override_list": [], "status": "incomplete", "steps": 0, "config": {}, "steps_rows": [],
                         "epochs_rows": [],
                         "error": f"unreadable job folder ({type(exc).__name__}: {first_line(exc, 120)})"})
    order = {"completed": 0, "stopped": 1, "pruned": 2, "incomplete": 3, "diverged": 4, "failed": 5}
    rows.sort(key=lambda r: (order.get(r["status"], 6), _objective_key(r), int(r["job"]) if r["job"].isdigit() else 0))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def _objective_key(row: dict[str, Any]) -> tuple[int, float]:
    """Sort key of a job's best monitored metric: better first under its mode, a missing one last."""
    value = row.get("best")
    if value is None:
        return (1, 0.0)
    return (0, -value if row.get("objective_mode", "max") == "max" else value)


def objective_label(rows: list[dict[str, Any]]) -> str:
    """The sweep's monitored metric (``val/acc``), or ``objective`` when its jobs monitor different ones."""
    names = {r.get("objective_name") or "val/acc" for r in rows}
    return names.pop() if len(names) == 1 else "objective"


def csv_header(rows: list[dict[str, Any]]) -> dict[str, str]:
    """``report.csv``'s header name of each of :data:`COLUMNS`: ``best`` -> ``best_val_acc`` (the
    monitored metric with ``/`` as ``_``), or ``best_objective`` for jobs monitoring different ones."""
    slug = objective_label(rows).replace("/", "_")
    return {c: f"{c}_{slug}" if c in ("best", "final") else c for c in COLUMNS}


def varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose values differ between jobs (what the sweep changed; the
    search's plumbing, ``search.trial``, left out)."""
    keys = sorted({k for r in rows for k in r["config"] if k.split(".")[0] != PLUMBING_KEY})
    return [k for k in keys if len({repr(r["config"].get(k)) for r in rows}) > 1]


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def override_list(row: dict[str, Any]) -> list[str]:
    """A report row's overrides, one string each (a value may hold spaces), ``search=`` left out."""
    return list(row["override_list"]) if row.get("override_list") is not None else row["overrides"].split()


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between jobs (the rest are common to the sweep)."""
    keys = {_key(o) for r in rows for o in override_list(r)}
    value = lambda r, k: next((o for o in override_list(r) if _key(o) == k), "")
    return sorted(k for k in keys if len({value(r, k) for r in rows}) > 1)


def series_label(row: dict[str, Any], swept: list[str]) -> str:
    """The job's values of the swept group choices and keys other than ``lr0`` (one curve each)."""
    parts = [o for o in override_list(row) if _key(o) in swept]
    return " ".join(parts) or "all jobs"
