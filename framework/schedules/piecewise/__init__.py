"""Replay a recorded LR trace exactly (``scheduler=piecewise``), and export one from a run folder.

A search that changes the LR while it trains (Population Based Training) finds a schedule no
formula gives. ``python -m framework.schedules.piecewise <run folder> -o best_schedule.yaml``
writes the LR its first param group had at every optimizer step (``steps.csv``'s ``lr`` column),
and ``python train.py scheduler=piecewise scheduler.path=best_schedule.yaml`` replays it, step for
step (to float rounding, ~1e-16 relative), from scratch. A file may also hold
``breakpoints: [[step, lr], ...]``, linear between them. Beside the LR it may hold the momentum
of every step (``momentum: [m0, m1, ...]``, SGD ``momentum`` or Adam ``beta1``) and the weight
decay (``weight_decay: [[step, wd], ...]``, each held until the next): the exporter writes them
when the recorded run changed them (a PBT trial whose momentum and weight decay were perturbed).

The file's LRs are absolute and apply as they are: the schedule divides them by the first
group's base LR (``base_lr: ${optimizer.lr}``, i.e. ``lr0``), so ``lr0`` changes nothing and the
other groups keep their ratios (``optimizer.head_lr_mult``). The trace holds its own warmup, so a
warmup is refused, as are batch-size scaling (``lr_scaling``, already in the recorded LRs) and
``optimizer.layer_decay`` (its first group's ratio depends on the model).

The exporter is :mod:`framework.schedules.piecewise.export` (:func:`export_schedule`, re-exported
here), its command line ``__main__.py``.
"""
from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from framework import registry
from framework.errors import ConfigError, suggest
from framework.schedules.base import Schedule

log = logging.getLogger(__name__)

KEY = "scheduler.path"
#: The two forms of a schedule file, as an example for messages.
FORMS = "lr: [v0, v1, ...] (the LR of every optimizer step) or breakpoints: [[0, 0.1], [1000, 0.001]]"
#: Keys a file may hold beside the LR.
OPTIONAL = ("momentum", "weight_decay")
_META = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


@dataclass(frozen=True)
class Trace:
    """A schedule file's content: ``lrs[i]`` is the LR (absolute) of step ``steps[i]``; ``steps``
    is None for a per-step list (``lrs[k]`` is step ``k``'s LR). ``momenta[k]`` is step ``k``'s
    momentum (None: the optimizer's own); ``weight_decays`` holds ``(step, wd)`` pairs, each wd
    applying from its step until the next pair's (None: the optimizer's own)."""

    lrs: tuple[float, ...]
    steps: Optional[tuple[int, ...]] = None
    momenta: Optional[tuple[float, ...]] = None
    weight_decays: Optional[tuple[tuple[int, float], ...]] = None

    def weight_decay(self, k: int) -> Optional[float]:
        """Weight decay of step ``k``: that of the last pair at or before ``k`` (None without pairs)."""
        if self.weight_decays is None:
            return None
        i = bisect.bisect_right([s for s, _ in self.weight_decays], k) - 1
        return self.weight_decays[max(i, 0)][1]

    def lr(self, k: int) -> float:
        """LR of optimizer step ``k``: ``lrs[k]``, or linear between the breakpoints around ``k``
        (``v_i + (v_{i+1} - v_i) * (k - s_i) / (s_{i+1} - s_i)``), the last one's after it."""
        if self.steps is None:
            return self.lrs[k]
        i = bisect.bisect_right(self.steps, k) - 1
        if i == len(self.steps) - 1:
            return self.lrs[i]
        (s0, s1), (v0, v1) = self.steps[i:i + 2], self.lrs[i:i + 2]
        return v0 + (v1 - v0) * (k - s0) / (s1 - s0)


@functools.lru_cache(maxsize=None)
def _loader() -> type:
    """PyYAML's safe loader that also reads ``1e-3`` as a float (YAML 1.2, as OmegaConf does)."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def _parse(text: str, path: Path, shown: str) -> Any:
    """The file's data (JSON for ``.json``, else YAML). Raises ConfigError on a syntax error."""
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{KEY}={shown}: JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg}; fix that line") from None
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{KEY}={shown}: YAML syntax error{where}: {problem}; fix that line") from None


def _lr(value: Any, where: str, shown: str, what: str = "an LR", high: float = math.inf,
        example: str = "0.01") -> float:
    """``value`` as an LR (or ``what``): a finite number in ``[0, high)``. Raises ConfigError naming
    ``where`` (``lr[3]``)."""
    bound = "finite and >= 0" if high == math.inf else f"in [0, {high:g})"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = "; [step, lr] pairs go under breakpoints:" if where.startswith("lr[") and isinstance(value, list) else ""
        raise ConfigError(f"{KEY}={shown}: {where} = {value!r} is not a number; {what} is a number "
                          f"{'>= 0' if high == math.inf else bound}, e.g. {example}{hint}")
    if not (math.isfinite(value) and 0 <= value < high):
        raise ConfigError(f"{KEY}={shown}: {where} = {value!r}: {what} must be {bound}; fix that value")
    return float(value)


def _pairs(values: Any, name: str, shown: str, check: Any, noun: str = "pair",
           form: str = "[step, value]") -> tuple[list[int], list[float]]:
    """``[[step, value], ...]`` checked: whole steps >= 0, strictly increasing, the first 0;
    each value through ``check(value, where)``. Raises ConfigError naming ``name[i]``."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{KEY}={shown}: {name} must be a non-empty list of {form} pairs, e.g. [[0, 0.1]]")
    steps, out = [], []
    for i, pair in enumerate(values):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
                and not isinstance(pair[0], bool) and pair[0] >= 0):
            raise ConfigError(f"{KEY}={shown}: {name}[{i}] = {pair!r}: each {noun} is {form} with a whole "
                              "step >= 0, e.g. [500, 0.01]")
        if steps and pair[0] <= steps[-1]:
            raise ConfigError(f"{KEY}={shown}: {noun} steps must be strictly increasing, but {name}[{i}] is at "
                              f"step {pair[0]} after step {steps[-1]}; fix the order")
        steps.append(pair[0])
        out.append(check(pair[1], f"{name}[{i}] value"))
    if steps[0] != 0:
        raise ConfigError(f"{KEY}={shown}: the first {noun} is at step {steps[0]}; it must be at step 0 (the "
                          f"value the run starts with), e.g. [[0, {out[0]!r}], [{steps[0]}, {out[0]!r}], ...]")
    return steps, out


def _trace(data: Any, shown: str) -> Trace:
    """Check a schedule file's data (:data:`FORMS`, and :data:`OPTIONAL`) and return its :class:`Trace`."""
    if not isinstance(data, dict):
        what = "nothing" if data is None else f"a {type(data).__name__}, {str(data)[:40]!r}"
        raise ConfigError(f"{KEY}={shown}: holds {what}; it must hold exactly one of {FORMS}")
    known = ["lr", "breakpoints", *OPTIONAL]
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        raise ConfigError(f"{KEY}={shown}: unknown key {unknown[0]}{suggest(unknown[0], known)}; "
                          f"it must hold exactly one of {FORMS} (and may hold {', '.join(OPTIONAL)})")
    forms = [k for k in data if k in ("lr", "breakpoints")]
    if len(forms) != 1:
        raise ConfigError(f"{KEY}={shown}: holds {'both lr and breakpoints' if forms else 'neither lr nor breakpoints'}; "
                          f"it must hold exactly one of {FORMS}")
    name, values = forms[0], data[forms[0]]
    momenta = data.get("momentum")
    if momenta is not None:
        if not isinstance(momenta, list) or not momenta:
            raise ConfigError(f"{KEY}={shown}: momentum must be a non-empty list (the momentum of every optimizer "
                              "step), e.g. momentum: [0.9, 0.9, 0.85]")
        momenta = tuple(_lr(v, f"momentum[{k}]", shown, "a momentum", 1.0, "0.9") for k, v in enumerate(momenta))
    decays = data.get("weight_decay")
    if decays is not None:
        decays = tuple(zip(*_pairs(decays, "weight_decay", shown,
                                   lambda v, where: _lr(v, where, shown, "a weight decay", example="0.0005"),
                                   "weight_decay pair", "[step, wd]")))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{KEY}={shown}: {name} must be a non-empty list; write {FORMS}")
    if name == "lr":
        return Trace(tuple(_lr(v, f"lr[{k}]", shown) for k, v in enumerate(values)), None, momenta, decays)
    steps, lrs = _pairs(values, "breakpoints", shown, lambda v, where: _lr(v, where.replace("value", "LR"), shown),
                        "breakpoint", "[step, lr]")
    return Trace(tuple(lrs), tuple(steps), momenta, decays)


def load_trace(path: Any) -> Trace:
    """Read and check a schedule file (YAML, or JSON for ``.json``).

    Args:
        path: the file, relative to the current folder.

    Returns:
        Its :class:`Trace` (read once per content: a file is cached by size and modification time).

    Raises:
        ConfigError: one line naming ``scheduler.path``: no such file (a run folder: export it
            first), a syntax error (line and column), not exactly one of ``lr:`` /
            ``breakpoints:``, an LR that is not a finite number >= 0, a breakpoint that is not
            ``[step, lr]``, steps not strictly increasing or not starting at 0.
    """
    shown = str(path)
    file = Path(os.path.expanduser(shown))
    if not shown or not file.is_file():
        fix = (f"it is a folder; export its schedule first: python -m framework.schedules.piecewise {shown} -o "
               "schedule.yaml" if file.is_dir() else f"no such file (looked from {Path.cwd()}); give the path of a "
               "schedule file (python -m framework.schedules.piecewise <run folder> writes one)")
        raise ConfigError(f"{KEY}={shown}: {fix}")
    try:
        stat = file.stat()
        return _cached(str(file.resolve()), stat.st_mtime_ns, stat.st_size, shown)
    except OSError as exc:
        raise ConfigError(f"{KEY}={shown}: cannot be read ({exc.strerror}); check its permissions") from None


@functools.lru_cache(maxsize=8)
def _cached(resolved: str, mtime_ns: int, size: int, shown: str) -> Trace:
    path = Path(resolved)
    return _trace(_parse(path.read_text(), path, shown), shown)


def input_errors(base_lr: Any, lr_scaling: Any, layer_decay: Any) -> list[str]:
    """The config values a replay cannot honour, one message each (empty when all is well).

    Args:
        base_lr: the first group's base LR before scaling (``${optimizer.lr}``, i.e. ``lr0``).
        lr_scaling: the top-level ``lr_scaling``.
        layer_decay: ``optimizer.layer_decay`` (null when unset).
    """
    errors = []
    if base_lr == "auto":
        errors.append("lr0=auto: scheduler=piecewise applies the file's LRs as they are (lr0 is divided out), so a "
                      "range test would change nothing; set lr0 to a number (any: e.g. lr0=0.01)")
    elif isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or not 0 < base_lr < math.inf:
        errors.append(f"scheduler.base_lr={base_lr}: must be the optimizer's LR (> 0); leave it at ${{optimizer.lr}}")
    from framework.optim import SCALING_RULES

    if lr_scaling in SCALING_RULES and lr_scaling != "none":  # (an unknown rule: the knob's own check says so)
        errors.append(f"lr_scaling={lr_scaling}: scheduler=piecewise applies the file's LRs as they are (they hold the "
                      "recorded run's batch-size scaling already); set lr_scaling=none")
    if layer_decay is not None:
        errors.append(f"optimizer.layer_decay={layer_decay}: scheduler=piecewise replays the first param group's LR, "
                      "whose ratio to lr0 layer-wise decay makes depend on the model; set optimizer.layer_decay=null")
    return errors


class Piecewise(Schedule):
    """A recorded LR trace, replayed step by step: ``lr[k]`` (per-step list) or linear between
    breakpoints, constant after the last; the LRs are absolute (the first param group's).

    The multiplier divides the file's LR by the first group's base LR, so that group gets the
    file's LR exactly (``base_lr * lr(t) / base_lr``, ~1e-16 relative) whatever ``lr0`` is, and
    every other group keeps its ratio to it (``optimizer.head_lr_mult``), as in the recorded run.
    Units are optimizer steps (``scheduler.interval=step``); the trace holds its own warmup.
    A file's ``momentum`` (per step) and ``weight_decay`` (``[step, wd]`` pairs, held) are applied
    as they are: the momentum (beta1) of every group, the weight decay of every group whose
    configured weight decay is > 0 (the no-decay groups keep 0).
    Source: the run's ``steps.csv`` (:func:`export_schedule`), or breakpoints written by hand.

    Formula: m(t) = lr(t) / base_lr, lr(t) = lr[t] (per-step list), or v_i + (v_{i+1} - v_i) * (t - s_i) / (s_{i+1} - s_i) between breakpoints (s_i, v_i) and (s_{i+1}, v_{i+1}), v_last after the last

    Args:
        total_units: optimizer steps of the run (runtime).
        path: the schedule file (YAML, or JSON), relative to the current folder (:func:`load_trace`).
        base_lr: the first group's base LR before batch-size scaling (``${optimizer.lr}``: ``lr0``).
        lr_scaling: the top-level ``lr_scaling``; must be ``none``.
        layer_decay: ``optimizer.layer_decay``; must be null.
        warmup_units: warmup steps (runtime); must be 0.

    Raises:
        ConfigError: a bad file (:func:`load_trace`), a per-step LR or momentum list shorter than
            the run (shorten it: ``max_steps``, ``epochs``; or give a longer trace), a warmup (set
            ``warmup_epochs=0 warmup_steps=null``), or :func:`input_errors`.
    """

    replays_file = True

    def __init__(self, total_units: int, path: str, base_lr: float, lr_scaling: str = "none",
                 layer_decay: Optional[float] = None, warmup_units: int = 0):
        super().__init__(total_units)
        errors = input_errors(base_lr, lr_scaling, layer_decay)
        if errors:
            raise ConfigError(errors)
        if warmup_units:
            raise ConfigError(f"warmup_epochs / warmup_steps: the run asks for {warmup_units} warmup steps, but "
                              "scheduler=piecewise replays the file's LR of every step, its warmup included; set "
                              "warmup_epochs=0 warmup_steps=null")
        trace = load_trace(path)
        T = self.total_units
        if trace.steps is None and len(trace.lrs) < T:
            raise ConfigError(f"{KEY}={path}: holds the LR of {len(trace.lrs)} optimizer steps, but this run has {T}; "
                              f"shorten the run (max_steps={len(trace.lrs)}, or fewer epochs) or give a longer trace")
        if trace.steps is None and len(trace.lrs) > T:
            log.warning("%s=%s: holds %d steps; this run of %d replays the first %d", KEY, path, len(trace.lrs), T, T)
        if trace.momenta is not None and len(trace.momenta) < T:
            raise ConfigError(f"{KEY}={path}: holds the momentum of {len(trace.momenta)} optimizer steps, but this run "
                              f"has {T}; give one per step (or remove momentum: the optimizer's own then applies)")
        self.path, self.base_lr = str(path), float(base_lr)
        #: The absolute LR of the first param group at every step of the run.
        self.lrs = [trace.lr(k) for k in range(T)]
        self.trace = trace
        #: The weight decay of every step (looked up once here, not at every step), or None.
        self.decays = None if trace.weight_decays is None else [trace.weight_decay(k) for k in range(T)]

    def __call__(self, t: int) -> float:
        return self.lrs[t] / self.base_lr

    def momentum(self, t: int) -> Optional[float]:
        """The file's momentum (or beta1) of step ``t``; None when it holds none."""
        return None if self.trace.momenta is None else self.trace.momenta[t]

    def weight_decay(self, t: int) -> Optional[float]:
        """The file's weight decay of step ``t`` (held from its pair's step); None when it holds none."""
        return None if self.decays is None else self.decays[t]

    def __repr__(self) -> str:
        return f"Piecewise({self.path})"

    @classmethod
    def check_config(cls, node: Any, group: str = "scheduler", runtime: Iterable[str] = (),
                     reserved: Iterable[str] = ()) -> list[str]:
        """The problems of a ``scheduler=piecewise`` group before anything is built (called by
        :func:`framework.registry.check_signature`): its keys against the signature, then
        ``scheduler.interval``, :func:`input_errors` and the file itself (:func:`load_trace`).

        Returns:
            One message per problem (empty when the group is fine).
        """
        from omegaconf import OmegaConf

        named = registry.parameters(cls)[0]
        runtime, errors = tuple(runtime), []
        valid = [n for n in named if n not in runtime]
        for key in (k for k in node.keys() if k not in _META and k not in reserved):
            if key in runtime:
                errors.append(f"{group}.{key}: is passed at run time; remove it from the YAML")
            elif key not in named:
                errors.append(f"{group}.{key}: not an argument of framework.schedules.Piecewise{suggest(key, valid)}; "
                              f"valid keys: {', '.join(valid + list(reserved))}")
            elif OmegaConf.is_missing(node, key):
                example = ("best_schedule.yaml (python -m framework.schedules.piecewise <run folder> -o "
                           "best_schedule.yaml writes one)" if key == "path" else "<value>")
                errors.append(f"{group}.{key}: has no value (???); set it, e.g. {group}.{key}={example}")
        errors += [f"{group}.{n}: required by framework.schedules.Piecewise; add it, e.g. +{group}.{n}=<value>"
                   for n, p in named.items() if p.default is p.empty and n not in runtime and n not in node.keys()]
        if errors:
            return errors
        try:
            data = OmegaConf.to_container(node, resolve=True)
        except Exception:  # an unresolved interpolation: reported by the other checks (the optimizer's lr)
            return []
        if data.get("interval") == "epoch":  # (another wrong value: the interval's own check says so)
            errors.append(f"{group}.interval={data['interval']}: scheduler=piecewise holds one LR per optimizer step; "
                          f"use {group}.interval=step")
        errors += input_errors(data.get("base_lr"), data.get("lr_scaling", "none"), data.get("layer_decay"))
        try:
            load_trace(data["path"])
        except ConfigError as exc:
            errors += exc.messages
        return errors


from framework.schedules.piecewise.export import export_schedule, read_steps, replay_command  # noqa: E402

__all__ = ["Piecewise", "Trace", "load_trace", "input_errors", "export_schedule", "read_steps", "replay_command"]
