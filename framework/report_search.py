"""The LR-search part of the sweep report: pruned trials, validation curves, the best command,
the compute spent against a full grid (:mod:`framework.report` writes it into every report).

A ``hydra/sweeper=lr_search`` sweep (Optuna with pruning) leaves ``<sweep>/study.json``
(``study_name``, ``storage``, ``pruner`` (a ``_target_`` config or null), ``direction``,
``n_trials``, ``grid_size``: the number of grid points when every swept key is a list, else
null); a pruned job's ``summary.json`` says ``status: pruned`` and where it stopped
(``pruned.epoch``, 0-based; ``pruned.step``, optimizer steps done). A plain grid sweep has no
``study.json``: its figures are those of a grid of one point per job.

Compute against a full grid of ``N`` points (``grid_size`` when ``study.json`` gives one, else
one per job), each at its full budget ``T`` (``planned_steps``; the mean over the jobs when
they differ)::

    steps fraction = sum_j steps_j / (N * mean_j T_j)
    full-grid wall time (estimate) = N * mean_j (wall_time_s_j * T_j / steps_j)

(a job's wall time scaled to its full budget: exact for a completed job, an estimate for a
pruned or diverged one, which ran ``steps_j < T_j`` steps).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

from framework.loggers import read_json
from framework.report_rows import as_float, fmt, series_label, objective_label, override_list, swept_keys

#: Statuses whose best monitored value can name the best configuration.
SCORED_STATUSES = ("completed", "stopped", "pruned", "incomplete")


def read_study(sweep_dir: Path) -> Optional[dict[str, Any]]:
    """``<sweep_dir>/study.json`` (written by ``hydra/sweeper=lr_search``), or None for a sweep
    without one (a plain grid sweep) or an unreadable one."""
    return read_json(sweep_dir / "study.json") or None


def _short(target: Any) -> Optional[str]:
    """``optuna.pruners.MedianPruner`` -> ``MedianPruner``; None when not a ``_target_`` string."""
    return str(target).rsplit(".", 1)[-1] if target else None


def search_names(sweep_dir: Path, study: Optional[dict[str, Any]]) -> dict[str, Optional[str]]:
    """Class names of the sweep's sweeper, sampler and pruner when known: the sweeper and sampler
    from ``multirun.yaml`` (``hydra.sweeper._target_``, ``hydra.sweeper.sampler._target_``), the
    pruner from ``study.json`` (None: no pruner, or not a search)."""
    import yaml

    try:
        sweeper = ((yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}).get("hydra") or {}).get("sweeper")
    except (OSError, yaml.YAMLError, AttributeError):
        sweeper = None
    sweeper = sweeper if isinstance(sweeper, dict) else {}
    sampler = sweeper.get("sampler") if isinstance(sweeper.get("sampler"), dict) else {}
    pruner = (study or {}).get("pruner")
    return {"sweeper": _short(sweeper.get("_target_")), "sampler": _short(sampler.get("_target_")),
            "pruner": _short(pruner.get("_target_")) if isinstance(pruner, dict) else None}


def status_cell(row: dict[str, Any]) -> str:
    """A job's status in report.md's table: ``completed``; ``pruned (epoch 1 of 4, 8 of 32 steps)``
    (where the search's pruner stopped it: the epoch 1-based, of ``summary.json``'s
    ``planned_epochs`` or else the config's ``epochs``; optimizer steps done of ``planned_steps``);
    any other in bold (``**diverged**``: not completed)."""
    pruned = row.get("pruned")
    if row["status"] != "pruned":
        return row["status"] if row["status"] == "completed" else f"**{row['status']}**"
    if not isinstance(pruned, dict):
        return "pruned"
    epochs = row.get("planned_epochs") or row.get("config", {}).get("epochs")
    parts = []
    if pruned.get("epoch") is not None:
        parts.append(f"epoch {int(pruned['epoch']) + 1}" + (f" of {epochs}" if epochs else ""))
    steps = pruned.get("step", row.get("steps"))
    if steps is not None:
        parts.append(f"{steps} of {row['planned_steps']} steps" if row.get("planned_steps") else f"{steps} steps")
    return f"pruned ({', '.join(parts)})" if parts else "pruned"


def best_row(rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The best job: the first of ``rows`` (ranked, :func:`framework.report.collect`) with a best
    monitored value that did not diverge or fail; None when there is none."""
    return next((r for r in rows if r.get("best") is not None and r["status"] in SCORED_STATUSES), None)


def _group_file(folder: Optional[Path], group: str, option: str) -> Optional[Path]:
    """The file of config group option ``group=option`` in the job's config sources (the
    ``pkg``/``file`` entries of ``.hydra/hydra.yaml``'s ``hydra.runtime.config_sources``, Hydra's
    own left out); None when not found."""
    import importlib.resources

    import yaml

    try:
        hydra_yaml = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())  # type: ignore[operator]
        sources = hydra_yaml["hydra"]["runtime"]["config_sources"]
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return None
    for source in sources:
        try:
            if source.get("provider") == "hydra" or source.get("schema") not in ("pkg", "file"):
                continue
            base = (importlib.resources.files(source["path"]) if source["schema"] == "pkg" else Path(source["path"]))
            path = base / group / f"{option}.yaml"
            if path.is_file():
                return Path(str(path))
        except (ImportError, AttributeError, TypeError, OSError):
            continue
    return None


def changes_config(override: str, folder: Optional[Path]) -> bool:
    """False for an override that only configures the sweep: ``hydra.*`` keys, ``hydra/...``
    groups and a group option (``hparams_search=lr_tpe``) whose file is ``@package _global_`` and
    sets nothing but ``hydra`` (its defaults all ``/hydra/...``); True for every other."""
    import yaml

    key, _, value = override.lstrip("+~").partition("=")
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return False
    path = _group_file(folder, key, value) if value and "." not in key and not override.startswith("~") else None
    if path is None:
        return True
    try:
        text = path.read_text()
        body = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError):
        return True
    defaults = (body.get("defaults") or []) if isinstance(body, dict) else None
    if "@package _global_" not in text or not isinstance(defaults, list) or set(body) - {"defaults", "hydra"}:
        return True
    names = [d if isinstance(d, str) else next(iter(d), "") if isinstance(d, dict) else "" for d in defaults]
    return not all(n.replace("override ", "").strip().startswith(("/hydra/", "hydra/")) for n in names)


def config_overrides(row: dict[str, Any]) -> list[str]:
    """The job's overrides that change its config (:func:`changes_config`: not the sweep's
    settings), never the search's plumbing (``search=...``)."""
    return [o for o in override_list(row) if changes_config(o, row.get("folder"))]


def best_command(row: dict[str, Any]) -> str:
    """The job's configuration as one shell command: ``lrframe <its config overrides>``
    (:func:`config_overrides`), each quoted for a POSIX shell (``shlex.quote``)."""
    return " ".join(["lrframe", *(shlex.quote(o) for o in config_overrides(row))])


def compute(rows: list[dict[str, Any]], study: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer steps and wall time spent by the sweep against a full grid of the same size
    (the formulas in the module docstring).

    Returns:
        ``steps_spent`` (steps), ``grid_points`` and ``grid_points_from`` (``"grid_size"``:
        ``study.json``'s; ``"jobs"``: one per job), ``steps_full_grid`` (steps), ``fraction``
        (spent / full grid, 0..1), ``wall_s`` (s, the jobs' wall times added),
        ``wall_full_grid_est_s`` (s, estimated) and ``wall_fraction``; None where unknown
        (no job knows its ``planned_steps`` or its wall time).
    """
    grid_size = (study or {}).get("grid_size")
    points = int(grid_size) if grid_size else len(rows)
    planned = [int(r["planned_steps"]) for r in rows if r.get("planned_steps")]
    steps_spent = sum(int(r.get("steps") or 0) for r in rows)
    steps_full = round(points * sum(planned) / len(planned)) if planned else None
    walls = [r["wall_time_s"] for r in rows if r.get("wall_time_s") is not None]
    full = [r["wall_time_s"] * int(r["planned_steps"]) / int(r["steps"]) for r in rows
            if r.get("wall_time_s") is not None and r.get("planned_steps") and r.get("steps")]
    wall_full = points * sum(full) / len(full) if full else None
    return {"steps_spent": steps_spent, "grid_points": points, "grid_points_from": "grid_size" if grid_size else "jobs",
            "steps_full_grid": steps_full, "fraction": steps_spent / steps_full if steps_full else None,
            "wall_s": sum(walls) if walls else None, "wall_full_grid_est_s": wall_full,
            "wall_fraction": sum(walls) / wall_full if walls and wall_full else None}


def compute_line(c: dict[str, Any], planned: list[int]) -> str:
    """report.md's compute sentence for :func:`compute`'s answer ``c`` (``planned``: the jobs'
    ``planned_steps``)."""
    if c["steps_full_grid"] is None:
        return f"Compute: {c['steps_spent']} optimizer steps (no job knows its planned steps: no full grid to compare)."
    each = planned[0] if len(set(planned)) == 1 else f"a mean of {fmt(sum(planned) / len(planned))}"
    source = "the grid_size of study.json" if c["grid_points_from"] == "grid_size" else "one per job"
    line = (f"Compute: {c['steps_spent']} of {c['steps_full_grid']} optimizer steps ({100 * c['fraction']:.1f}%) of a "
            f"full grid of {c['grid_points']} points ({source}) at {each} steps each")
    if c["wall_full_grid_est_s"] is not None:
        line += (f"; wall time {fmt(c['wall_s'], 3)} s of an estimated {fmt(c['wall_full_grid_est_s'], 3)} s "
                 f"({100 * c['wall_fraction']:.1f}%) for that grid (estimate: each job's wall time x planned_steps "
                 "/ steps)")
    return line + "."


#: ``tune.<key>`` values the report names, by ``tune.search`` (``python -m framework.tune``).
TUNE_KEYS = {"asha": ("grace_period", "reduction_factor", "asha_rule"), "hyperband": ("reduction_factor",),
             "pbt": ("perturbation_interval",)}


def read_tune(sweep_dir: Path) -> Optional[dict[str, Any]]:
    """The ``tune`` node of a ``python -m framework.tune`` folder's ``multirun.yaml`` (``search``
    one of :data:`TUNE_KEYS`), else None."""
    import yaml

    try:
        tune = (yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}).get("tune")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return tune if isinstance(tune, dict) and tune.get("search") in TUNE_KEYS else None


def tune_line(tune: dict[str, Any]) -> str:
    """``Search: Ray Tune ASHA (grace_period=1, ...), 9 trials, seed 0.`` from a
    ``python -m framework.tune`` folder's ``tune`` node (:func:`read_tune`)."""
    from framework.search import RAY_SEARCHES

    search = tune["search"]
    args = ", ".join(f"{k}={tune.get(k)}" for k in TUNE_KEYS[search])
    seed = "random" if tune.get("seed") is None else tune["seed"]
    return (f"Search: Ray Tune {RAY_SEARCHES[search]} ({args}), {tune.get('num_samples')} trials, seed {seed}, space "
            + ", ".join(f"`{k}`" for k in (tune.get("space") or {})) + ".")


def header_lines(sweep_dir: Path, rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """report.md's search lines (the study when there is one, the best command, the compute)
    and ``search.json``'s content (:func:`write_search_json`)."""
    study = read_study(sweep_dir)
    names = search_names(sweep_dir, study)
    best = best_row(rows)
    c = compute(rows, study)
    lines = []
    if study is not None:
        pruner = study.get("pruner")
        args = ", ".join(f"{k}={v}" for k, v in pruner.items() if k != "_target_") if isinstance(pruner, dict) else ""
        budget = study.get("budget_runs")
        spent = sum(float(r["steps"]) / float(r["planned_steps"]) for r in rows
                    if r.get("steps") and r.get("planned_steps"))
        lines += [f"Search: study `{study.get('study_name')}` ({study.get('direction')}, {study.get('n_trials')} "
                  f"trials asked), sampler {names['sampler'] or 'unknown'}, pruner "
                  + (f"{names['pruner']}({args})" if names["pruner"] else "none")
                  + f", storage `{study.get('storage')}`"
                  + (f", budget {budget} full runs (`hydra.sweeper.budget_runs`; these jobs spent {spent:.2f})"
                     if budget is not None else "") + ".", ""]
    tune = read_tune(sweep_dir) if study is None else None
    if tune is not None:
        lines += [tune_line(tune), ""]
    if best is not None:
        lines += [f"Best configuration (job {best['job']}, best {best['objective_name']} {fmt(best['best'])}):", "",
                  "```bash", best_command(best), "```", ""]
    lines += [compute_line(c, [int(r["planned_steps"]) for r in rows if r.get("planned_steps")]), ""]
    if tune is not None and tune["search"] == "pbt":  # the best trial's schedule and lineage
        from framework.search.best import pbt_section

        lines += pbt_section(sweep_dir)
    data = {**c, "n_trials": len(rows), "n_pruned": sum(r["status"] == "pruned" for r in rows),
            "best_job": best["job"] if best else None,
            "best_overrides": config_overrides(best) if best else None,
            "best_command": best_command(best) if best else None, "best_value": best["best"] if best else None,
            "objective_name": best["objective_name"] if best else objective_label(rows), **names}
    return lines, data


def write_search_json(sweep_dir: Path, data: dict[str, Any]) -> Path:
    """``<sweep_dir>/search.json``: :func:`header_lines`'s figures (steps and seconds as in
    :func:`compute`, ``n_trials`` = jobs in the folder, ``n_pruned``, ``best_job``,
    ``best_overrides``, ``best_command``, ``best_value``, ``sampler``/``pruner``/``sweeper``
    class names or null)."""
    path = sweep_dir / "search.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def plot_curves(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """``curves.png``: every job's monitored metric (its ``objective_name``) per validated epoch
    (1-based, from ``epochs.csv``), one line per job; a pruned job's line ends in a cross where it
    stopped, a diverged one's in a red cross; the best job (:func:`best_row`) drawn thick and black."""
    from matplotlib.ticker import MaxNLocator

    from framework.loggers import pyplot

    plt = pyplot()
    best, swept = best_row(rows), swept_keys(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in sorted(rows, key=lambda r: (r is best, int(r["job"]) if r["job"].isdigit() else 0)):  # best on top
        values = {}
        for e in r.get("epochs_rows") or []:
            epoch, value = as_float(e.get("epoch")), as_float(e.get(r.get("objective_name") or "val/acc"))
            if epoch is not None and value is not None:
                values[int(epoch) + 1] = value  # an epoch validated again (after a rollback): its last value
        if not values:
            continue
        xs, ys = zip(*sorted(values.items()))
        label = f"{r['job']}: {series_label(r, swept)}" + (" (best)" if r is best else "")
        style = {"color": "black", "lw": 2.5, "zorder": 3} if r is best else {"lw": 1, "alpha": 0.8}
        (line,) = ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label if len(rows) <= 12 or r is best
                          else None, **style)
        if r["status"] in ("pruned", "diverged"):
            ax.scatter([xs[-1]], [ys[-1]], marker="X", s=70, zorder=4,
                       color="red" if r["status"] == "diverged" else line.get_color())
    for status, color in (("pruned", "gray"), ("diverged", "red")):
        if any(r["status"] == status for r in rows):
            ax.scatter([], [], marker="X", color=color, label=f"{status} (stopped there)")
    minimise = bool(rows) and all(r.get("objective_mode") == "min" for r in rows)
    ax.set_xlabel("epoch")
    ax.set_ylabel(objective_label(rows) + (" (lower is better)" if minimise else ""))
    ax.set_title("Validation curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
