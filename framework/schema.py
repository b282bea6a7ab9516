"""The top level of the config: the user's knobs, their types, defaults, units and help.

:class:`TrainConfig` is the single source of the top-level defaults (``conf/train.yaml`` sets
none of them) and of the knobs part of ``python train.py --help`` (:func:`knobs_help`, the
``${knobs_help:}`` resolver of ``hydra.help.header``). It is registered in Hydra's ConfigStore
as ``train_schema``, so ``epochs=abc`` or an unknown key fails while Hydra composes.

A leaf module: it imports nothing of the framework, so every module may read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

#: The packaged config tree (``framework/conf``): one folder per group, one YAML file per option.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def available(group: str) -> list[str]:
    """Names of the options of a config group, from ``conf/<group>/*.yaml`` (sorted)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def knob(default: Any, help: str) -> Any:
    """A top-level field with its default and its one-line help (units first, in parentheses)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Typed schema of the top level of the composed config (``python train.py --cfg job``)."""

    model: Any = MISSING
    task: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    dataset: Any = MISSING
    trainer: Any = MISSING
    lr_finder: Any = MISSING
    logger: Any = MISSING
    lr0: Any = knob(0.01, "(LR) initial learning rate, reached at the end of warmup; auto = run the LR range "
                          "test and use its suggestion")
    lrf: float = knob(0.01, "(fraction) final LR = lr0 * lrf for decaying schedules")
    epochs: int = knob(10, "(epochs) passes over the training set")
    max_steps: Optional[int] = knob(None, "(steps) cap on optimizer steps; null = no cap")
    batch_size: int = knob(64, "(samples) per forward pass of each process, before trainer.accumulate_grad_batches")
    warmup_epochs: float = knob(0.0, "(epochs) linear warmup from lr0*warmup_start_factor to lr0; fractions allowed")
    warmup_steps: Optional[int] = knob(None, "(steps) warmup length in optimizer steps; wins over warmup_epochs")
    warmup_start_factor: float = knob(0.1, "(fraction) LR of warmup step 0 = lr0 * warmup_start_factor")
    warmup_momentum: Optional[float] = knob(None, "(coefficient) momentum / Adam beta1 of warmup step 0, rising to "
                                                  "the optimizer's; null = off")
    warmup_bias_lr: Optional[float] = knob(None, "(LR) the biases' LR at warmup step 0, moving to their LR at the "
                                                 "end of warmup (Ultralytics); null = off")
    seed: int = knob(0, "RNG seed of everything (data order, init); same seed + CPU = same numbers")
    device: str = knob("auto", "auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps")
    resume: Optional[str] = knob(None, "run folder (or its checkpoints/*.pt) to continue exactly where it "
                                       "stopped; null = start fresh")
    resume_allow_changes: bool = knob(False, "resume even if the config differs from the run's (the differing "
                                             "keys are listed)")
    lr_scaling: str = knob("none", "none | linear (Goyal et al.) | sqrt: lr0 x (global batch / lr_base_size), "
                                   "or its sqrt")
    lr_base_size: int = knob(256, "(samples) global batch size (batch x accumulation x processes) lr0 was tuned for")
    mode: str = knob("train", "train | plot_lr (draw the planned LR of every step, train nothing) | lr_find "
                              "(LR range test) | test (evaluate resume=<run>'s best checkpoint: test.json) | predict "
                              "(its predictions: predictions.csv)")
    eval_split: str = knob("test", "test | val: the split mode=test and mode=predict evaluate")
    loader: str = knob("auto", "auto (device-resident when the dataset fits) | device | standard (torch DataLoader)")
    num_workers: int = knob(0, "(processes) DataLoader workers of the standard loader; 0 = main process")
    search: Any = knob(None, "the search trial this run reports to (set by hydra/sweeper=lr_search and "
                             "python -m framework.tune); null = a plain run")


#: Keys that moved to the top level: old dotted key -> knob (a config or command line that still
#: uses the old key is told where it went).
MOVED_KEYS = {"scheduler.warmup_bias_lr": "warmup_bias_lr"}


def moved_key_message(key: str, value: Any) -> Optional[str]:
    """``<key>=<value>: moved to the top level; use <knob>=<value>`` for a moved key, else None."""
    knob_name = MOVED_KEYS.get(key.lstrip("+~"))
    return None if knob_name is None else f"{key}={value}: moved to the top level; use {knob_name}={value}"


#: The top-level knobs (every field but the config groups).
KNOBS = tuple(f.name for f in fields(TrainConfig) if "help" in f.metadata)


def knobs_help() -> str:
    """The knobs part of ``--help``: one line per top-level key, ``name  (default)  help``."""
    rows = [(f.name, "null" if f.default is None else str(f.default).lower() if isinstance(f.default, bool)
             else str(f.default), f.metadata["help"]) for f in fields(TrainConfig) if f.name in KNOBS]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"  {name:<{width}}  {default:<6}  {text}" for name, default, text in rows)
