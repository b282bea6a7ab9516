"""The exporter of ``scheduler=piecewise``: a run folder's ``steps.csv`` -> a schedule file.

``python -m framework.schedules.piecewise <run folder> -o best_schedule.yaml`` (``__main__.py``)
calls :func:`export_schedule`; the file it writes is read by
:func:`framework.schedules.piecewise.load_trace` bit for bit (``repr`` of every float).
"""
from __future__ import annotations

import csv
import math
import re
import shlex
from pathlib import Path
from typing import Any, Optional

from framework.errors import ConfigError
from framework.search import SEARCH_KEY


def _yaml_float(value: float) -> str:
    """``repr(value)`` (reads back bit-identical), with ``.0`` before an exponent so YAML 1.1
    readers (PyYAML) see a float: ``1e-05`` -> ``1.0e-05``."""
    text = repr(float(value))
    return text.replace("e", ".0e") if "e" in text and "." not in text else text


#: ``steps.csv`` columns read besides the LRs: what a replay may also apply.
EXTRA = ("momentum", "weight_decay")


def read_steps(folder: Path) -> tuple[list[float], dict[str, list[float]], int]:
    """The ``lr`` of every step of a run folder's ``steps.csv``, of its other groups
    (``lr/<name>``) and its ``momentum`` and ``weight_decay`` where it has those columns.

    Rows are keyed by ``step``; a step logged twice (a resume after a crash runs it again) keeps
    its last row. The steps must then be ``0 … T-1``, every one.

    Returns:
        ``(lr, columns, replaced)``: the LR of step ``k`` at ``lr[k]``; each other column's values
        (``lr/<name>``, :data:`EXTRA`) by name; how many rows a later row of the same step replaced.

    Raises:
        ConfigError: no ``steps.csv``, no ``step`` / ``lr`` column, a value that is not a number
            or not a finite LR >= 0, no rows, or steps missing (which are said).
    """
    path = folder / "steps.csv"
    if not path.is_file():
        raise ConfigError(f"{folder}: no steps.csv there; give a run folder (outputs/runs/<date>/<time>)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c == "lr" or c.startswith("lr/") or c in EXTRA]
        if "step" not in (reader.fieldnames or []) or "lr" not in columns:
            raise ConfigError(f"{path}: has no step and lr columns; give the steps.csv of a run of this framework")
        rows: dict[int, dict[str, float]] = {}
        total = 0
        for line, row in enumerate(reader, 2):
            if None in row or None in row.values():  # fewer or more fields than the header
                raise ConfigError(f"{path}, line {line}: does not hold one value per column (cut short when the run was "
                                  "killed?); remove that row")
            try:
                values = {c: float(row[c]) for c in columns if row.get(c) not in (None, "")}
                step = int(row["step"])
            except (TypeError, ValueError):
                raise ConfigError(f"{path}, line {line}: step, {', '.join(columns)} must be numbers; fix or remove "
                                  "that row") from None
            if not (math.isfinite(values.get("lr", math.nan)) and values["lr"] >= 0 and step >= 0):
                raise ConfigError(f"{path}, line {line}: step {row['step']} has lr {row.get('lr')!r}; a step needs a "
                                  "finite lr >= 0")
            rows[step], total = values, total + 1
    if not rows:
        raise ConfigError(f"{path}: holds no steps; export a run that trained")
    missing = sorted(set(range(max(rows) + 1)) - set(rows))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise ConfigError(f"{path}: steps 0..{max(rows)} are not all there (missing {shown}), so the trace has gaps; "
                          "export a run whose steps.csv holds every step from 0")
    lr = [rows[k]["lr"] for k in range(len(rows))]
    groups = {c: [rows[k].get(c, math.nan) for k in range(len(rows))] for c in columns if c != "lr"}
    return lr, groups, total - len(rows)


def recorded(folder: Path) -> tuple[dict[str, Any], Any]:
    """The run's ``summary.json`` and its composed config (``.hydra/config.yaml``, None if absent)."""
    from framework.loggers import read_summary

    config = None
    if (folder / ".hydra" / "config.yaml").is_file():
        from omegaconf import OmegaConf

        try:
            config = OmegaConf.load(folder / ".hydra" / "config.yaml")
        except Exception:  # an unreadable config: the header says less
            config = None
    return read_summary(folder), config


def _value(config: Any, key: str) -> str:
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(config, key, default=None)
    except Exception:  # an interpolation that does not resolve here
        return "?"
    return "null" if value is None else str(value)


#: Overrides of the recorded run that a replay leaves out (what the trace replaces or the run's own place).
DROPPED = ("scheduler", "warmup_epochs", "warmup_steps", "warmup_start_factor", "lr0", "lr_scaling", "resume", "mode",
           "hydra", SEARCH_KEY, "hparams_search")


def replay_command(summary: dict[str, Any], config: Any, out_path: Any) -> str:
    """The command line that replays the exported file: the recorded overrides but for
    :data:`DROPPED`, then ``scheduler=piecewise scheduler.path=<out_path>`` and the knobs that
    must be off (warmup, ``lr_scaling``)."""
    overrides = [o for o in summary.get("overrides") or []
                 if not re.split(r"[.=/]", o.lstrip("+~"), maxsplit=1)[0] in DROPPED]
    warmup = True  # unknown: say it
    if config is not None:
        steps, epochs = _value(config, "warmup_steps"), _value(config, "warmup_epochs")
        warmup = steps not in ("null", "0") or epochs not in ("0", "0.0", "null")
    extra = ["warmup_epochs=0", "warmup_steps=null"] if warmup else []
    extra += [] if summary.get("lr_scaling", "none") == "none" else ["lr_scaling=none"]
    return " ".join(["python train.py", *map(shlex.quote, overrides), "scheduler=piecewise",
                     shlex.quote(f"scheduler.path={out_path}"), *extra])


def _ratios(lr: list[float], groups: dict[str, list[float]]) -> str:
    """``lr/head = 10 x lr, ...``: each other group's LR over the first's (its range if it varies)."""
    parts = []
    for name, values in groups.items():
        ratios = [v / a for v, a in zip(values, lr) if a > 0 and math.isfinite(v)]
        low, high = (min(ratios), max(ratios)) if ratios else (math.nan, math.nan)
        parts.append(f"{name} = {low:.6g} x lr" if high <= low * (1 + 1e-9) else
                     f"{name} = {low:.6g} to {high:.6g} x lr (varies)")
    return ", ".join(parts) or "none (one param group)"


def _momentum(values: Optional[list[float]]) -> Optional[list[float]]:
    """The momentum of every step when it changed during the run (else None: the replay's
    optimizer then keeps its configured one, which the replay command holds)."""
    if not values or any(not math.isfinite(v) for v in values) or len(set(values)) == 1:
        return None
    return values


def _weight_decays(values: Optional[list[float]], summary: dict[str, Any]) -> Optional[list[tuple[int, float]]]:
    """``[(step, wd), ...]``, each weight decay from its step on, when it changed during the run:
    from a ``weight_decay`` column (a replayed trace), else from a PBT trial's lineage
    (``summary.json``'s ``tune.lineage``: the ``optimizer.weight_decay`` of each segment from its
    ``from_step``). None when it stayed the same."""
    if values and all(math.isfinite(v) for v in values):
        pairs = [(k, v) for k, v in enumerate(values) if k == 0 or v != values[k - 1]]
    else:
        lineage = (summary.get("tune") or {}).get("lineage") or []
        pairs = []
        for seg in lineage:
            value = (seg.get("params") or {}).get("optimizer.weight_decay")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return None  # a segment without it: the trace would be incomplete
            if not pairs or float(value) != pairs[-1][1]:
                pairs.append((int(seg.get("from_step") or 0), float(value)))
    return pairs if len(pairs) > 1 else None


def export_schedule(source: Any, out_path: Any) -> Path:
    """Write the LR trace of a run folder as a schedule file that ``scheduler=piecewise`` replays.

    The file holds ``lr:``, the LR the first param group had at each optimizer step ``k = 0 …
    T-1`` (``steps.csv``'s ``lr`` column, :func:`read_steps`), one ``repr(float)`` per line (it
    reads back bit-identical), under a comment header: where it came from, the command that
    replays it, and the recorded config keys a replay must share (optimizer, batch size, param
    group ratios such as ``optimizer.head_lr_mult``, epochs: they fix ``T`` and the groups).
    When the momentum changed during the run it also holds ``momentum:`` (``steps.csv``'s
    ``momentum`` of every step), and when the weight decay did, ``weight_decay:`` (``[step, wd]``
    pairs, :func:`_weight_decays`): a PBT trial's perturbed momentum and weight decay replay too.

    Args:
        source: the run folder (holds ``steps.csv``; ``summary.json`` and ``.hydra/`` are read
            for the header when present).
        out_path: the YAML file to write (replaced atomically), relative to the current folder.

    Returns:
        ``Path(out_path)``.

    Raises:
        ConfigError: as :func:`read_steps`; an ``out_path`` that is not ``.yaml`` / ``.yml``
            (the header is YAML comments).
    """
    from framework.loggers import atomic_file

    folder, out = Path(source), Path(out_path)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"-o {out}: the exporter writes YAML (its header comments say where the trace came from); "
                          "name the file .yaml, e.g. -o best_schedule.yaml")
    lr, groups, replaced = read_steps(folder)
    summary, config = recorded(folder)
    momentum, decays = _momentum(groups.pop("momentum", None)), _weight_decays(groups.pop("weight_decay", None), summary)
    keys = " ".join(f"{k}={_value(config, k)}" for k in (
        "optimizer._target_", "optimizer.opt", "optimizer.head_lr_mult", "optimizer.head_prefix", "batch_size",
        "trainer.accumulate_grad_batches", "epochs", "max_steps", "dataset._target_", "model.name")
        if config is not None and _value(config, k) != "null")
    facts = " ".join(f"{k}={len(v) if isinstance(v, list) else v}" for k, v in summary.items()
                     if k in ("status", "global_batch", "world_size", "planned_steps", "rollbacks", "lr_scaling"))
    git = f", git {summary['git_commit']}{' (dirty)' if summary.get('git_dirty') else ''}" if summary.get("git_commit") else ""
    header = [
        "# LR schedule for scheduler=piecewise: lr[k] is the LR the first param group had at optimizer step k =",
        f"# 0..{len(lr) - 1}, as applied (the lr column of steps.csv); the other groups kept their ratios to it:",
        f"#   {_ratios(lr, groups)}",
        "# Replay it, from scratch, with the recorded run's config but for the scheduler (the trace holds the",
        "# warmup; lr0 is divided out; lr_scaling must be none):",
        f"#   {replay_command(summary, config, out)}",
        f"# Source: {folder.resolve()} (steps.csv: {len(lr)} steps"
        + (f"; {replaced} rows of steps run again after a resume replaced by their last row" if replaced else "") + ")",
        f"#   {facts or 'no summary.json'}{git}",
        "# A replay must share what fixes T and the param groups: optimizer, model, data, batch_size,",
        "# trainer.accumulate_grad_batches, processes, epochs / max_steps (or fewer steps), optimizer.head_lr_mult.",
        f"#   recorded: {keys or '(no .hydra/config.yaml)'}",
        f"#   overrides: {' '.join(summary.get('overrides') or []) or '(none recorded)'}",
        *(["# momentum[k]: the momentum (beta1) applied at step k, as it changed during the run (steps.csv)."]
          if momentum is not None else []),
        *(["# weight_decay: [step, wd] from which each weight decay applied, as it changed during the run "
           "(a weight_decay column, else PBT's lineage)."] if decays is not None else []),
        "# Written by python -m framework.schedules.piecewise (framework.schedules.piecewise.export_schedule).",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f:
        f.write("".join(" ".join(line.split("\n")) + "\n" for line in header))  # (an override with a newline: one line)
        f.write("lr:\n" + "".join(f"- {_yaml_float(v)}\n" for v in lr))
        if momentum is not None:
            f.write("momentum:\n" + "".join(f"- {_yaml_float(v)}\n" for v in momentum))
        if decays is not None:
            f.write("weight_decay:\n" + "".join(f"- [{k}, {_yaml_float(v)}]\n" for k, v in decays))
    return out


