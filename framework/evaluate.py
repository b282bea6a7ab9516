"""``mode=test`` and ``mode=predict``: a trained checkpoint on a held-out split.

``lrframe mode=test resume=<run folder or .pt>`` rebuilds the run's model, task and data from the
checkpoint's own config (so nothing else has to be repeated), loads the weights (a run folder's
``checkpoints/best.pt``, else its ``last.pt``; a file as given) and evaluates the task's loss and
metrics on the dataset's test split (``eval_split=val``: the validation split) into ``test.json``
in the run folder (``val.json`` for the validation split). ``mode=predict`` writes
``predictions.csv`` there instead (``predictions_val.csv``): one row per sample
of the split, with its index, its file path when the dataset knows it, the task's prediction
columns (:meth:`framework.tasks.Task.predict`: class names for classification) and the known
labels (:func:`label_columns`; none for a CSV of image paths only). Overrides given
on the command line replace the run's values (``dataset.test_dir=other/``, ``batch_size=256``,
``device=cpu``, or a whole group: ``dataset=csv dataset.test=new.csv``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError

log = logging.getLogger(__name__)



def output_file(mode: str, split: str) -> str:
    """What a mode writes into the run folder for a split: ``test.json`` / ``predictions.csv``
    for the test split, ``val.json`` / ``predictions_val.csv`` for the validation split."""
    if mode == "test":
        return f"{split}.json"
    return "predictions.csv" if split == "test" else f"predictions_{split}.csv"


def checkpoint_to_evaluate(resume: str) -> tuple[Path, Path]:
    """The checkpoint that ``resume=<path>`` names for evaluation, and its run folder.

    Args:
        resume: a run folder (its ``checkpoints/best.pt``, the best epoch by the task's monitored
            metric, whose ``model`` holds the weights that made it best: the EMA weights when its
            ``best_weights`` says ``ema``; ``last.pt`` when there is no ``best.pt``) or a
            checkpoint file.

    Returns:
        ``(checkpoint file, run folder)``.

    Raises:
        ConfigError: no checkpoint there.
    """
    from framework.checkpoint import resolve_resume

    folder = Path(resume).expanduser()
    best = folder / "checkpoints" / "best.pt"
    return (best, folder) if folder.is_dir() and best.is_file() else resolve_resume(resume)


def evaluation_config(cfg: DictConfig, saved: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The run's own config (``saved``, from its checkpoint) with this command's overrides on top.

    Each key this command line sets (``dataset.test_dir=...``, ``+dataset.x=...``, a whole group
    ``dataset=csv``) takes its value from the composed ``cfg``; ``mode``, ``resume``,
    ``eval_split``, ``device`` and the loader keys always do, and so do top-level keys the run's
    config lacks (a run older than the ``task`` group gets the default task). ``model.pretrained``
    is off: the checkpoint's weights replace any pretrained ones.

    Args:
        cfg: the composed config of this command.
        saved: the checkpoint's ``config`` (resolved, plain).
        overrides: this command's overrides (``key=value`` strings, as Hydra got them).

    Returns:
        A new config; neither input is changed.
    """
    from framework.config import split_override

    merged = OmegaConf.create(saved)
    keys = ["mode", "resume", "eval_split", "device", "loader", "num_workers"]
    keys += [key for key in cfg if key not in merged]  # groups and knobs newer than the run (its task: the default)
    keys += [split_override(o)[0].lstrip("~+") for o in overrides]
    for key in dict.fromkeys(keys):  # (in order, once each)
        if key.startswith("hydra.") or OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.select(cfg, key)
        OmegaConf.update(merged, key, OmegaConf.to_container(value, resolve=True)
                         if OmegaConf.is_config(value) else value, merge=False, force_add=True)  # a group: replaced
    if "pretrained" in merged.get("model", {}):  # the checkpoint's weights replace them: no download
        merged.model.pretrained = False
    return merged


def evaluate_checkpoint(cfg: DictConfig, overrides: list[str]) -> float:
    """Run ``mode=test`` or ``mode=predict`` (module docstring) and say where the result is.

    Args:
        cfg: the composed config (``mode``, ``resume``, ``eval_split``); the run's config with
            this command's keys on top is what gets validated and built.
        overrides: this command's overrides.

    Returns:
        ``mode=test``: the task's monitored metric on the split (``val/acc`` -> ``test/acc``), for
        Hydra; ``mode=predict``: 0.0.

    Raises:
        ConfigError: no ``resume``, no checkpoint there, an unreadable checkpoint, a key of this
            command that the run's config refuses, or a dataset without the split asked for
            (with what to set).
    """
    from framework.build import build_data, build_model, build_task, resolve_device
    from framework.checkpoint import read_resume_checkpoint
    from framework.config import validate
    from framework.errors import first_line
    from framework.data import eval_loader
    from framework.loggers import write_json
    from framework.tasks import describe, monitor_of
    from framework.trainer import host_memory
    from framework.trainer.engine import StepEngine

    mode = cfg.mode
    if cfg.resume is None:
        raise ConfigError(f"mode={mode}: give the trained run, resume=<run folder or checkpoint .pt>")
    file, folder = checkpoint_to_evaluate(cfg.resume)
    state = read_resume_checkpoint(file, "resume")
    run_cfg = validate(evaluation_config(cfg, state.get("config") or {}, overrides))
    device = resolve_device(run_cfg.device)
    data = build_data(run_cfg)
    split = run_cfg.eval_split
    dataset = data.test if split == "test" else data.val
    if dataset is None:
        raise ConfigError(f"mode={mode}: {run_cfg.dataset._target_} gives no test split; set its test data "
                          "(dataset.test_dir=<folder> for imagefolder, dataset.test=<csv> for csv), or evaluate the "
                          "validation split with eval_split=val")
    if mode == "test" and getattr(dataset, "labeled", True) is False:
        raise ConfigError(f"mode=test: the {split} split has no labels (a CSV of image paths only); mode=predict "
                          "predicts it, mode=test needs the label columns")
    task = build_task(run_cfg, data)
    check_same_outputs(state, data, task, cfg.resume)
    model = build_model(run_cfg, data)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # missing / unexpected keys, other shapes
        raise ConfigError(f"resume={cfg.resume}: the checkpoint's weights do not fit model._target_="
                          f"{run_cfg.model._target_} as configured now ({first_line(exc)[:160]}); evaluate with the "
                          "run's own model keys")
    loader = eval_loader(dataset, run_cfg.batch_size, device, run_cfg.num_workers)
    trainer_cfg = run_cfg.trainer
    engine = StepEngine(model, None, (None, loader), device, task=task, precision=trainer_cfg.get("precision", "32"),
                        channels_last=trainer_cfg.get("channels_last", False),
                        malloc_trim_threshold_mb=trainer_cfg.get("malloc_trim_threshold_mb",
                                                                 host_memory.DEFAULT_TRIM_THRESHOLD_MB))
    finished = state.get("epoch")  # epochs finished when the checkpoint was written
    source = {"checkpoint": str(file), "step": state.get("step"), "epoch": None if finished is None else finished - 1,
              "split": split, "samples": len(dataset),
              **({"weights": state["best_weights"]} if "best_weights" in state else {}),  # raw | ema (model EMA)
              "dataset": OmegaConf.to_container(run_cfg.dataset, resolve=True)}  # which files were evaluated
    out = folder / output_file(mode, split)
    if mode == "predict":
        outputs, labels = engine.outputs(loader)
        columns = task.predict(outputs)
        if getattr(dataset, "labeled", True):
            columns.update(label_columns(labels, getattr(task, "classes", None)))
        write_predictions(out, columns, sample_paths(dataset))
        print(f"predictions of {len(dataset)} {split} samples ({file.name}, step {state.get('step')}): {out}")
        return 0.0
    metrics = engine.evaluate(loader, prefix=f"{split}/")
    write_json({**source, "task": describe(task), "metrics": metrics}, out)
    print(f"{split} metrics of {file} (step {state.get('step')}, epoch {source['epoch']}, {len(dataset)} samples):")
    for name, value in metrics.items():
        print(f"  {name:<16} {value:.4f}")
    print(f"wrote {out}")
    monitored = f"{split}/" + monitor_of(task)[0].split("/", 1)[1]
    return float(metrics.get(monitored, 0.0))


def check_same_outputs(state: dict[str, Any], data: Any, task: Any, resume: str) -> None:
    """The data evaluated now name the model's outputs as the run did: the same number of
    outputs and, where both are known, the same class names in the same order and the same
    label type (the checkpoint's ``classes`` and ``task``).

    Raises:
        ConfigError: they differ (predictions would carry other names), naming both.
    """
    saved_classes, saved_task = state.get("classes"), state.get("task") or {}
    classes = getattr(data, "classes", None)
    if saved_classes is not None and classes is not None and list(saved_classes) != list(classes):
        raise ConfigError(f"resume={resume}: the run was trained on the classes {list(saved_classes)[:6]} and the "
                          f"data evaluated now have {list(classes)[:6]}; evaluate data with the run's classes, in its "
                          "order")
    saved_type = saved_task.get("label_type")
    if saved_type is not None and saved_type != getattr(task, "label_type", saved_type):
        raise ConfigError(f"resume={resume}: the run was trained on {saved_type} labels and the task now has "
                          f"{task.label_type}; evaluate with the run's task")
    if saved_classes is not None and len(saved_classes) != data.num_classes:
        raise ConfigError(f"resume={resume}: the run's model has {len(saved_classes)} outputs and the data evaluated "
                          f"now have num_classes={data.num_classes}; evaluate data with the run's classes")


def label_columns(labels: torch.Tensor, classes: Optional[list[str]]) -> dict[str, list]:
    """The known labels as predictions.csv columns beside the predictions: ``label`` (the class
    name, or the index without names, for int64 ``(N,)``; the value for float ``(N,)``) or
    ``label/<name>`` per output for ``(N, K)`` (0/1 labels or values)."""
    if labels.ndim == 1:
        values = labels.tolist()
        if not labels.is_floating_point() and classes:
            values = [classes[i] for i in values]
        return {"label": values}
    names = list(classes) if classes else [str(i) for i in range(labels.shape[1])]
    return {f"label/{name}": labels[:, i].tolist() for i, name in enumerate(names)}


def sample_paths(dataset: Any) -> Optional[list[str]]:
    """The file of each sample of ``dataset`` when it knows them (a ``paths`` list, or
    ``ImageFolder``'s ``samples``; through ``Subset`` indices), else None."""
    indices = None
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    paths = getattr(dataset, "paths", None)
    if paths is None and getattr(dataset, "samples", None) is not None:
        paths = [str(s[0]) for s in dataset.samples]
    if paths is None:
        return None
    return [str(paths[i]) for i in indices] if indices is not None else [str(p) for p in paths]


def write_predictions(path: Path, columns: dict[str, list], paths: Optional[list[str]]) -> None:
    """Write ``predictions.csv``: ``index`` (sample of the split), ``path`` (when known), then the
    task's columns, one row per sample; written to a temporary file and renamed.

    Raises:
        OSError: the file cannot be written (an earlier ``predictions.csv`` stays as it was).
    """
    import csv
    import os

    n = len(next(iter(columns.values()))) if columns else 0
    header = ["index", *(["path"] if paths is not None else []), *columns]
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i in range(n):
                writer.writerow([i, *([paths[i]] if paths is not None else []), *(c[i] for c in columns.values())])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
