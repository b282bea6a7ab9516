"""Preview LR plans before spending compute: the planned LR (and momentum) of every step.

``python train.py mode=plot_lr <overrides>`` draws one run's plan into its run folder;
``python -m framework.preview scheduler=cosine,wsd,onecycle epochs=30`` overlays several (any
comma list, ``range(...)`` or ``glob(...)`` of Hydra's override grammar; ``--grid`` draws one
panel per plan). T is computed from the real data loader, as in training; nothing is trained.
"""
from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence


@dataclass
class PlannedRun:
    """The plan of one composed config.

    Attributes:
        label: the overrides that made it (for legends).
        lrs: group name -> LR (absolute) of every step ``k = 0 … T-1``.
        momentum: momentum (or Adam beta1) of group 0 at every step; None without one.
        warmup_steps: ``W``.
        steps_per_epoch: optimizer steps per epoch.
    """

    label: str
    lrs: dict[str, list[float]]
    momentum: Optional[list[float]]
    warmup_steps: int
    steps_per_epoch: int


def plan_of(plan: Any, optimizer: Any, label: str = "") -> PlannedRun:
    """Evaluate an LR plan at every step over an optimizer's param groups, as training applies it
    (a metric-driven plan as it stands: flat); the optimizer is not changed."""
    groups = [dict(g) for g in optimizer.param_groups]  # copies: the plan may note a group's base momentum
    lrs = plan.group_lrs(optimizer)
    first = [plan.momentum_at(k, groups[0]) for k in range(plan.total_steps)]
    momentum = None if first and first[0] is None else first
    return PlannedRun(label, lrs, momentum, plan.warmup_steps, plan.steps_per_epoch)


def key_points(run: PlannedRun) -> dict[str, Any]:
    """First, end-of-warmup and final LR of group 0; the peak LR over all groups, its step and group."""
    lrs = next(iter(run.lrs.values()))
    peak_group = max(run.lrs, key=lambda name: max(run.lrs[name]))
    peak = max(range(len(lrs)), key=run.lrs[peak_group].__getitem__)
    return {
        "steps": len(lrs),
        "first_lr": lrs[0],
        "peak_lr": run.lrs[peak_group][peak],
        "peak_step": peak,
        "peak_group": peak_group,
        "warmup_end_step": run.warmup_steps,
        "lr_after_warmup": lrs[run.warmup_steps] if run.warmup_steps < len(lrs) else None,
        "final_lr": lrs[-1],
    }


def describe_plan(run: PlannedRun) -> str:
    """One line of key points, e.g. ``cosine: T=230, peak 0.01 at step 0, final 0.0001``."""
    p = key_points(run)
    warm = f", warmup to step {p['warmup_end_step']}" if p["warmup_end_step"] else ""
    group = f" ({p['peak_group']})" if len(run.lrs) > 1 and len(distinct(run.lrs)) > 1 else ""
    return (f"{run.label or 'plan'}: T={p['steps']}, first {p['first_lr']:.4g}, peak {p['peak_lr']:.4g}{group} at "
            f"step {p['peak_step']}{warm}, final {p['final_lr']:.4g}")


def distinct(lrs: dict[str, list[float]]) -> dict[str, list[float]]:
    """Merge groups whose LRs are identical: ``{"decay, no_decay": [...]}``."""
    merged: dict[tuple, list[str]] = {}
    for name, values in lrs.items():
        merged.setdefault(tuple(values), []).append(name)
    return {", ".join(names): list(values) for values, names in merged.items()}


def plot(runs: Sequence[PlannedRun], path: str | Path, grid: bool = False, title: str = "") -> None:
    """Draw the planned LR of every group of every run (momentum on a second axis) into a PNG.

    Args:
        runs: plans to draw; overlaid in one panel, or one panel each with ``grid``.
        path: output PNG.
        grid: one panel per run.
        title: figure title.
    """
    from framework.loggers import pyplot

    fig = figure(runs, grid, title)
    fig.savefig(path)
    pyplot().close(fig)


def figure(runs: Sequence[PlannedRun], grid: bool = False, title: str = "") -> Any:
    """The matplotlib figure of :func:`plot` (the caller saves or hands it on, and closes it)."""
    from framework.loggers import pyplot

    plt = pyplot()

    n = len(runs) if grid else 1
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols if grid else 8, 3.0 * rows if grid else 4),
                             dpi=100, squeeze=False)
    for i, run in enumerate(runs):
        ax = axes[i // cols][i % cols] if grid else axes[0][0]
        lines = distinct(run.lrs)
        for name, values in lines.items():
            label = name if grid else f"{run.label} ({name})" if len(lines) > 1 else run.label
            ax.plot(values, lw=1.5, label=label)
        if grid:
            ax.set_title(run.label, fontsize=9)
            if run.momentum is not None and len(set(run.momentum)) > 1:
                twin = ax.twinx()
                twin.plot(run.momentum, color="0.6", lw=1, ls="--")
                twin.set_ylabel("momentum", fontsize=7, color="0.4")
                twin.tick_params(labelsize=6)
        ax.set_xlabel("optimizer step k", fontsize=8)
        ax.set_ylabel("LR", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    for ax in axes.flat:
        if len(ax.get_legend_handles_labels()[0]) > (0 if not grid else 1):
            ax.legend(fontsize=7)
    if title:
        import textwrap

        title = "\n".join(textwrap.wrap(title, 110 if not grid else 40 * cols))
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else (0, 0, 1, 1))
    return fig


def write_plan(built: Any, run_dir: Path, label: str) -> float:
    """``mode=plot_lr``: write ``lr_plan.png`` and ``lr_plan.json`` (key points, each group's
    first LR) and ``summary.json``, print the key points, train nothing.

    Args:
        built: the built run (:class:`~framework.build.Built`); run_dir: its folder;
        label: the overrides that made it (the plot's title).

    Returns:
        0.0 (no objective: nothing was trained).
    """
    from framework.loggers import write_json
    from framework.summary import write_untrained_summary

    run = plan_of(built.plan, built.trainer.optimizer, label or type(built.plan.schedule).__name__)
    plot([run], run_dir / "lr_plan.png", grid=True)
    write_json({**key_points(run), "groups": {n: v[0] for n, v in run.lrs.items()}}, run_dir / "lr_plan.json")
    print(describe_plan(run))
    print(f"wrote {run_dir / 'lr_plan.png'}")
    write_untrained_summary(run_dir, "completed", mode="plot_lr", planned_steps=built.plan.total_steps)
    return 0.0


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of Hydra sweep overrides (``a=1,2``, ``range``, ``glob`` of a group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    from framework.registry import available

    choices = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.get_key_element()
        if isinstance(o.value(), Glob):
            values = o.value().filter(available(key))
        elif o.is_sweep_override():
            values = list(o.sweep_string_iterator())
        else:
            values = [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.product(*choices)]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m framework.preview [--out PNG] [--grid] OVERRIDES...``"""
    from hydra import compose, initialize_config_dir

    from framework.build import build
    from framework.config import register_configs, validate
    from framework.errors import ConfigError, exit_on_user_error
    from framework.registry import CONF_DIR

    parser = argparse.ArgumentParser(prog="python -m framework.preview", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides; comma lists / range / glob are expanded")
    parser.add_argument("--out", default="outputs/lr_preview.png", help="output PNG (default: %(default)s)")
    parser.add_argument("--grid", action="store_true", help="one panel per plan instead of one overlay")
    parser.add_argument("--config-dir", "-cd", help="your own config folder, layered on the packaged one "
                        "(as lrframe --config-dir)")
    args = parser.parse_args(argv)
    searchpath = [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"] if args.config_dir else []
    register_configs()
    runs = []
    with exit_on_user_error():
        combos = expand(args.overrides)
        varying = [i for i in range(len(combos[0])) if len({c[i] for c in combos}) > 1]
        for combo in combos:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="train", overrides=[*searchpath, *combo])
            label = " ".join(combo[i] for i in varying) or " ".join(combo)
            if cfg.lr0 == "auto":
                raise ConfigError("lr0=auto: a preview draws the plan of a number; give lr0=<value> (python train.py "
                                  "mode=lr_find suggests one)")
            built = build(validate(cfg, combo), Path.cwd())
            runs.append(plan_of(built.plan, built.trainer.optimizer, label))
    fixed = " ".join(o for i, o in enumerate(combos[0]) if i not in varying)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out, grid=args.grid, title=fixed)
    for run in runs:
        print(describe_plan(run))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
