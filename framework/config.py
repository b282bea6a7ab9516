"""Config validation, and the Hydra registrations the entry points make.

The user's knobs (``lr0``, ``lrf``, ``epochs`` ...) sit at the top level of the composed config
and are typed by :class:`~framework.schema.TrainConfig`, registered in Hydra's ConfigStore as
``train_schema`` so ``epochs=abc`` or an unknown key fails while Hydra composes (``lr0`` also
takes ``auto``, so ``lr0=abc`` is caught by :func:`validate`). :func:`validate` then checks
values and ranges and the group files' keys against the signatures of their ``_target_``
callables, reporting every problem at once, before anything is built; it returns the checked
config and never changes the one it is given.

This module imports neither torch nor timm, so ``python train.py --help`` stays fast.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from framework import registry
from framework.errors import ConfigError
from framework.schema import MOVED_KEYS, TrainConfig, knobs_help, moved_key_message

#: Config groups every run composes, in build order.
GROUPS = ("dataset", "model", "task", "optimizer", "scheduler", "trainer", "lr_finder")

#: Keys of a group file that configure the framework rather than the ``_target_`` callable.
RESERVED_KEYS = {"scheduler": ("interval",), "optimizer": ("head_lr_mult", "head_prefix", "layer_decay")}

#: Runtime arguments each group's callable receives at the call site (never written in YAML).
RUNTIME_ARGS = {
    "dataset": ("seed", "label_type"),
    "model": ("num_classes", "in_chans", "img_size"),
    "task": ("num_classes", "classes"),
    "optimizer": ("params",),
    "scheduler": ("total_units", "warmup_units"),
    "trainer": ("model", "optimizer", "plan", "data", "run_dir", "device", "config", "task", "trackers"),
    "lr_finder": (),
}

#: Optimizers whose ``lr`` is a multiplier on their own step-size estimate, not ``${lr0}``
#: (one estimate for all param groups: their LRs must not differ).
OWN_LR_TARGETS = ("prodigyopt.Prodigy",)

PRECISIONS = ("32", "bf16", "fp16")
MODES = ("train", "plot_lr", "lr_find", "test", "predict")
INTERVALS = ("step", "epoch")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def with_values(cfg: DictConfig, **values: Any) -> DictConfig:
    """A copy of ``cfg`` with top-level keys set (Hydra's own config is left as composed)."""
    import copy

    from omegaconf import open_dict

    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, value in values.items():
            out[key] = value
    return out


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain resolved containers, without Hydra's own node."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"dotted.key": leaf}`` (the top-level keys when ``prefix`` is "")."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


_RESERVED_DIRS: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """Reserve a new folder for a run or sweep: ``path`` itself, else ``path-1``, ``path-2``, ...

    The folder is created with ``os.makedirs(exist_ok=False)``, which fails when another
    process got there first, so two runs or sweeps started at the same moment never share a
    folder. The same ``path`` asked again by this process returns the folder already reserved
    (Hydra resolves its output folder more than once; its launchers copy the resolved values to
    every job with ``OmegaConf.copy_cache``, so jobs in other processes see the same folder).
    Resolving ``hydra.run.dir`` itself (``--cfg hydra --resolve``) reserves a folder too. Under
    ``torchrun`` rank 0 reserves the folder and the other ranks read its name from the rendezvous
    store, so every rank writes into one folder. Registered as the OmegaConf resolver
    ``${unique_dir:...}`` used by ``hydra.run.dir`` and ``hydra.sweep.dir``.

    Args:
        path: the wanted folder (e.g. ``outputs/multirun/<date>/<time>``).

    Returns:
        The reserved folder, as given or with a ``-N`` suffix.

    Raises:
        RuntimeError: 10,000 folders of that name exist already; set ``hydra.run.dir`` /
            ``hydra.sweep.dir`` to another place.
    """
    if path in _RESERVED_DIRS:
        return _RESERVED_DIRS[path]
    from framework import distributed

    if distributed.is_distributed_launch():  # torchrun: rank 0 reserves (its clock names the folder)
        folder = distributed.rank_zero_value(f"lrframe/unique_dir/{len(_RESERVED_DIRS)}", lambda: _reserve(path))
    else:
        folder = _reserve(path)
    _RESERVED_DIRS[path] = folder
    return folder


def reserved_dirs() -> list[str]:
    """The folders :func:`unique_dir` reserved in this process."""
    return list(_RESERVED_DIRS.values())


def _reserve(path: str) -> str:
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for n in range(10_000):
        candidate = path if n == 0 else f"{path}-{n}"
        try:
            os.makedirs(candidate)
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"{path}: 10,000 folders of that name exist; set hydra.run.dir or hydra.sweep.dir elsewhere")


def task_mode(node: Any) -> str:
    """The direction of a task's monitored metric, ``max`` or ``min``, read from its config node:
    its ``mode`` key, else the default of its ``_target_``'s ``mode`` argument (or class
    attribute), else ``min`` (a task that sets neither monitors ``val/loss``, as
    :func:`framework.tasks.monitor_of` says). Never raises: a node it cannot read counts as
    ``max`` (validation says why)."""
    try:
        mode = node.get("mode") if node is not None else None
        if mode is None and node is not None and node.get("_target_"):
            target = registry.locate(node.get("_target_"), "task")
            mode = registry.default_of(target, "mode", getattr(target, "mode", "min"))
    except Exception:  # an unreadable node: validate() reports it
        return "max"
    return mode if mode in ("max", "min") else "max"


def objective_direction(node: Any) -> str:
    """``maximize`` or ``minimize``: Optuna's direction for a task config node (:func:`task_mode`).
    Registered as the resolver ``${objective_direction:${task}}`` used by
    ``conf/hydra/sweeper/lr_search.yaml`` (the presets ``hparams_search=lr_asha|lr_tpe|lr_evolve``)."""
    return "minimize" if task_mode(node) == "min" else "maximize"


def register_configs() -> None:
    """Register :class:`~framework.schema.TrainConfig` as ``train_schema`` in Hydra's
    ConfigStore, and the resolvers ``unique_dir``, ``knobs_help`` (``--help``) and
    ``objective_direction`` (the Optuna preset's direction)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True)
    if not OmegaConf.has_resolver("knobs_help"):
        OmegaConf.register_new_resolver("knobs_help", knobs_help)
    if not OmegaConf.has_resolver("objective_direction"):
        OmegaConf.register_new_resolver("objective_direction", objective_direction)


def _number_errors(cfg: DictConfig) -> list[str]:
    errors = []

    def check(key: str, ok: bool, fix: str) -> None:
        if not ok:
            errors.append(f"{key}={cfg[key]}: {fix}")

    lr0 = cfg.lr0
    if lr0 == "auto":
        check("mode", cfg.mode != "plot_lr", "mode=plot_lr needs a number for lr0, not auto")
    else:
        check("lr0", isinstance(lr0, (int, float)) and not isinstance(lr0, bool) and 0 < lr0 <= 1e30,
              "must be a number in (0, 1e30] (float32 range), e.g. lr0=0.01, or auto (LR range test)")
    check("lrf", 0 <= cfg.lrf <= 1, "must be in [0, 1] (final LR = lr0*lrf), e.g. lrf=0.01")
    check("epochs", cfg.epochs >= 1, "must be >= 1, e.g. epochs=10")
    check("max_steps", cfg.max_steps is None or cfg.max_steps >= 1, "must be >= 1 or null (no cap)")
    check("batch_size", cfg.batch_size >= 1, "must be >= 1, e.g. batch_size=64")
    check("warmup_epochs", 0 <= cfg.warmup_epochs < math.inf, "must be a finite number >= 0 (0 = no warmup)")
    check("warmup_steps", cfg.warmup_steps is None or cfg.warmup_steps >= 0, "must be >= 0 or null")
    check(
        "warmup_start_factor",
        0 < cfg.warmup_start_factor <= 1,
        "must be in (0, 1] so warmup step 0 never has LR 0, e.g. warmup_start_factor=0.1",
    )
    check("warmup_bias_lr", cfg.warmup_bias_lr is None or 0 <= cfg.warmup_bias_lr < math.inf,
          "must be a finite LR >= 0 or null (off), e.g. warmup_bias_lr=0.1")
    check(
        "warmup_momentum",
        cfg.warmup_momentum is None or 0 <= cfg.warmup_momentum < 1,
        "must be in [0, 1) or null (no momentum warmup), e.g. warmup_momentum=0.8",
    )
    check("lr_scaling", cfg.lr_scaling in ("none", "linear", "sqrt"), "use none, linear or sqrt")
    check("lr_base_size", cfg.lr_base_size >= 1, "must be >= 1 (samples), e.g. 256")
    check("mode", cfg.mode in MODES, f"use one of {', '.join(MODES)}")
    check("eval_split", cfg.eval_split in ("test", "val"), "use test or val")
    check("loader", cfg.loader in ("auto", "device", "standard"), "use auto, device or standard")
    check("num_workers", cfg.num_workers >= 0, "must be >= 0 (0 = load in the main process)")
    check("device", bool(_DEVICE_RE.match(str(cfg.device))), "use auto, cpu, cuda, cuda:N or mps")
    return errors


def _group_errors(cfg: DictConfig) -> list[str]:
    errors = [moved_key_message(key, OmegaConf.select(cfg, key)) for key in MOVED_KEYS
              if OmegaConf.select(cfg, key, default=None) is not None]
    if errors:  # (the signature check would call it an unknown argument)
        return errors
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or ("_target_" not in node and not OmegaConf.is_missing(node, "_target_")):
            errors.append(f"{group}: the group has no _target_; pick one of {registry.available(group)}")
            continue
        timm_keys = _timm_model_keys(node) if group == "model" else []
        if timm_keys:
            errors.append(timm_keys[0])
            continue
        refused, message = _augment_keys(cfg, node) if group == "dataset" else ([], None)
        if message:  # one line for the preset's keys, then the dataset's other keys as usual
            errors.append(message)
            node = OmegaConf.masked_copy(node, [k for k in node if k not in refused])
        errors += registry.check_signature(
            node, group, runtime=RUNTIME_ARGS[group], reserved=RESERVED_KEYS.get(group, ())
        )
    errors += _logger_errors(cfg)
    if not errors:
        interval = cfg.scheduler.get("interval", "step")
        if interval not in INTERVALS:
            errors.append(f"scheduler.interval={interval}: use step or epoch")
        precision = str(cfg.trainer.get("precision", "32"))
        if precision not in PRECISIONS:
            errors.append(f"trainer.precision={precision}: use 32, bf16 or fp16")
        accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
        if not isinstance(accumulate, int) or accumulate < 1:
            errors.append(f"trainer.accumulate_grad_batches={accumulate}: must be an integer >= 1")
        stop = cfg.trainer.get("stop_after_steps")
        if stop is not None and not (isinstance(stop, int) and stop >= 1):
            errors.append(f"trainer.stop_after_steps={stop}: must be an integer >= 1 or null")
        momentum = cfg.optimizer.get("momentum")
        if isinstance(momentum, (int, float)) and not 0 <= momentum < 1:
            errors.append(f"optimizer.momentum={momentum}: must be in [0, 1), e.g. 0.9")
        betas = cfg.optimizer.get("betas")
        if betas is not None and (not isinstance(betas, ListConfig) or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            shown = list(betas) if isinstance(betas, ListConfig) else betas
            errors.append(f"optimizer.betas={shown}: must be two numbers in [0, 1) (beta1, beta2), e.g. [0.9,0.999]")
        decay = cfg.optimizer.get("weight_decay")
        if isinstance(decay, (int, float)) and math.isfinite(decay) and not decay >= 0:
            errors.append(f"optimizer.weight_decay={decay}: must be >= 0 (0 = no weight decay), e.g. 5e-4")
        errors += _non_finite(cfg)
        if cfg.optimizer.get("_target_") in OWN_LR_TARGETS:  # one step-size estimate shared by every group
            ratios = {"optimizer.head_lr_mult": cfg.optimizer.get("head_lr_mult", 1.0) not in (None, 1, 1.0),
                      "optimizer.layer_decay": cfg.optimizer.get("layer_decay") is not None,
                      "warmup_bias_lr": cfg.warmup_bias_lr is not None}
            errors += [f"{key}={OmegaConf.select(cfg, key)}: {cfg.optimizer._target_} needs the same lr in every param "
                       f"group (it estimates one step size for all); set {key}={'1.0' if 'head' in key else 'null'}"
                       for key, differs in ratios.items() if differs]

        head_prefix = cfg.optimizer.get("head_prefix")
        if head_prefix is not None and (isinstance(head_prefix, bool) or not isinstance(head_prefix, (str, int))
                                        or not str(head_prefix)):
            errors.append(f"optimizer.head_prefix={head_prefix}: must be the name prefix of the head's parameters "
                          "(e.g. fc, head, classifier.2) or null (timm's get_classifier())")
        if cfg.warmup_bias_lr is not None and cfg.optimizer.get("layer_decay") is not None:
            errors.append(f"warmup_bias_lr={cfg.warmup_bias_lr}: optimizer.layer_decay groups parameters by layer, so "
                          "the biases have no group of their own; set warmup_bias_lr=null or optimizer.layer_decay=null")
    if isinstance(cfg.get("trainer"), DictConfig):  # (also beside other groups' errors: they are independent)
        errors += _trainer_errors(cfg)
    if not any(e.startswith("lr_finder") for e in errors):  # a group the run may not use is checked all the same
        try:
            registry.instantiate(cfg.lr_finder, "lr_finder")
        except ConfigError as exc:
            errors += exc.messages
    return errors


def _trainer_errors(cfg: DictConfig) -> list[str]:
    """The trainer keys' mistakes that the config alone shows, every one: clipping
    and the gradient norm's sampling (:func:`~framework.trainer.engine.check_grad_args`), Mixup / CutMix
    (:func:`~framework.trainer.mixing.check_mixup_args`, and the task's class when mixing is on,
    :func:`~framework.trainer.mixing.check_mixup_task`), validation, EMA and early stopping
    (:func:`~framework.trainer.validation.check_validation_args`), the heap's trim threshold
    (:func:`~framework.trainer.host_memory.check_malloc_args`), the LR doctor
    (:func:`~framework.doctor.config.check_lr_doctor_args`). Each function gets the keys
    of ``cfg.trainer`` it names (a key the node lacks keeps the function's default); the trainer
    runs the same functions when it is built, where the checks that need built objects (the
    loader's batch size, the samples' shape, the metrics the task logs) follow."""
    import inspect

    from framework.doctor.config import check_lr_doctor_args
    from framework.trainer import engine, host_memory, mixing, validation  # (imports torch: only when validating)

    node = OmegaConf.to_container(cfg.trainer, resolve=True)

    def keys(check: Any) -> dict[str, Any]:
        return {name: node[name] for name in registry.parameters(check)[0] if name in node}

    mixup = keys(mixing.check_mixup_args)
    mixup_errors = mixing.check_mixup_args(**mixup)
    errors = engine.check_grad_args(**keys(engine.check_grad_args)) + mixup_errors
    errors += validation.check_validation_args(**keys(validation.check_validation_args))
    errors += host_memory.check_malloc_args(**keys(host_memory.check_malloc_args))
    errors += check_lr_doctor_args(node.get("lr_doctor"))
    active = None if mixup_errors else mixing.active_key(mixup.get("mixup_alpha", 0.0), mixup.get("cutmix_alpha", 0.0),
                                                         mixup.get("cutmix_minmax"))
    task = cfg.get("task")
    if active is not None and isinstance(task, DictConfig) and not OmegaConf.is_missing(task, "_target_"):
        try:
            target = registry.locate(task._target_, "task")
            if inspect.isclass(target):  # (a function that makes the task: checked on the built task)
                errors += mixing.check_mixup_task(active, target)
        except ConfigError:
            pass  # the task's own refusal comes when it is built
    return errors


#: The timm model factory of the packaged model files, and the keys only it takes.
TIMM_FACTORY, TIMM_KEYS = "framework.models.create_model", ("name", "pretrained", "drop_rate")


def _timm_model_keys(node: DictConfig) -> list[str]:
    """A model file's timm keys (``name``, ``pretrained``, ``drop_rate``) left under another
    ``_target_`` that does not take them (``model._target_=mypkg.nets.Net`` on ``model=resnet10t``):
    one message pointing to ``model=custom``, or none."""
    if OmegaConf.is_missing(node, "_target_") or node.get("_target_") == TIMM_FACTORY:
        return []
    left = [k for k in TIMM_KEYS if k in node]
    if not left:
        return []
    try:
        target = registry.locate(node._target_, "model")
    except ConfigError:
        return []  # check_signature says why
    refused = [k for k in left if not registry.accepts(target, k)]
    if "name" not in refused:  # (pretrained from an experiment on model=custom: check_signature names the key)
        return []
    return [f"model._target_={node._target_}: the timm keys {', '.join(f'model.{k}' for k in refused)} of the model "
            f"file are not arguments of it; start from model=custom (model=custom model._target_={node._target_})"]


def _logger_errors(cfg: DictConfig) -> list[str]:
    """``logger.<name>`` entries: each null (``csv``) or a tracker with a ``_target_`` whose
    signature takes its keys (:func:`~framework.registry.check_signature`)."""
    errors: list[str] = []
    nodes = cfg.get("logger")
    if nodes is None:
        return errors
    if not isinstance(nodes, DictConfig):
        return [f"logger={nodes}: pick trackers from {registry.available('logger')}, e.g. logger=[csv,tensorboard]"]
    for name, node in nodes.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            errors.append(f"logger.{name}: a tracker needs a _target_; pick from {registry.available('logger')}")
            continue
        errors += registry.check_signature(node, f"logger.{name}")
    return errors


def _augment_keys(cfg: DictConfig, node: DictConfig) -> tuple[list[str], Optional[str]]:
    """A dataset given augmentation keys it does not take (``augment=randaugment dataset=digits``):
    the keys it refuses and one message naming ``augment=`` and the datasets that take them
    (the packaged ``conf/dataset/`` files whose callable has an ``auto_augment`` argument);
    ``([], None)`` when there is nothing to say (``check_signature`` reports the rest)."""
    from framework.data.augment import AUGMENT_KEYS  # (imports torch: only when validating)

    timm_keys = [k for k in AUGMENT_KEYS[1:] if k in node]  # augment alone is a key of many datasets
    if not timm_keys or OmegaConf.is_missing(node, "_target_"):
        return [], None
    try:
        target = registry.locate(node._target_, "dataset")
    except ConfigError:
        return [], None
    refused = [k for k in AUGMENT_KEYS if k in node and not registry.accepts(target, k)]
    if not set(refused) & set(timm_keys):
        return [], None
    choices = _choices(cfg)
    preset, dataset = choices.get("augment"), choices.get("dataset")
    first = next((k for k in refused if k in timm_keys and node.get(k) not in (None, 0)),
                 next(k for k in refused if k in timm_keys))
    value = node.get(first)
    head = f"augment={preset}" if preset else f"dataset.{first}={'null' if value is None else value}"
    who = f"dataset={dataset} ({node._target_})" if dataset else f"dataset._target_={node._target_}"
    keys = ", ".join(f"dataset.{k}" for k in refused)
    return refused, (f"{head}: {who} takes no augmentation keys ({keys}); augment= works with "
                     f"dataset={', '.join(_augment_datasets())}: pick one of them, or drop augment=")


def _choices(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's group choices of the run (``{"dataset": "digits", "augment": "randaugment", ...}``):
    those of a config composed with its ``hydra`` node, else of the running Hydra app, else none."""
    found = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if found is None:
        from hydra.core.hydra_config import HydraConfig

        found = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return dict(found)


def _augment_datasets() -> list[str]:
    """The packaged dataset options whose callable takes ``auto_augment`` (sorted)."""
    names = []
    for name in registry.available("dataset"):
        node = OmegaConf.load(registry.CONF_DIR / "dataset" / f"{name}.yaml")
        if OmegaConf.is_missing(node, "_target_") or "_target_" not in node:
            continue
        try:
            if registry.takes(registry.locate(node._target_, "dataset"), "auto_augment"):
                names.append(name)
        except ConfigError:
            continue
    return names


def _non_finite(cfg: DictConfig) -> list[str]:
    """``group.key=nan`` or ``inf`` anywhere in a group: a number no component can use."""
    errors = []
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        for key, value in flatten(OmegaConf.to_container(node, resolve=True), f"{group}.").items():
            if isinstance(value, float) and not math.isfinite(value):
                errors.append(f"{key}={value}: must be a finite number; set a real value")
    return errors


def split_override(override: str) -> tuple[str, Optional[str]]:
    """``key`` and ``value`` of a Hydra override ``[+|++|~]key=value`` (value None without ``=``)."""
    key, sep, value = override.lstrip("+~").partition("=")
    return key, value if sep else None


def check_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse command-line overrides that would make the run's records false: ``optimizer.lr``
    (a group's LR is ``${lr0}`` by contract; summary, plots and reports name ``lr0``).

    Args:
        cfg: the composed config.
        overrides: Hydra's task overrides (``key=value`` strings as typed).

    Raises:
        ConfigError: an override of ``optimizer.lr`` for an optimizer whose LR is ``lr0``.
    """
    for override in overrides:
        key, value = split_override(override)
        if key == "optimizer.lr" and value is not None and cfg.optimizer.get("_target_") not in OWN_LR_TARGETS:
            try:
                example = f"lr0={float(value):g}"
            except ValueError:
                example = "lr0=<a number>, e.g. lr0=0.01"
            raise ConfigError(f"{override}: the optimizer's LR is lr0 (summary, plots and reports name it); set "
                              f"{example} instead, and optimizer.head_lr_mult / layer_decay for ratios between groups")


def _unknown_top_level(cfg: DictConfig) -> list[str]:
    known = set(TrainConfig.__dataclass_fields__) | {"hydra"}
    return [f"{key}: unknown top-level key (added with +{key}=...); remove it" for key in cfg if key not in known]


def validate(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """Check the composed config before anything is built; ``cfg`` itself is left unchanged.

    Args:
        cfg: the config composed by Hydra from ``conf/train.yaml``.
        overrides: the command line's overrides (:func:`check_overrides`).

    Returns:
        The checked config: ``cfg``, or a copy with a numeric string ``lr0`` as a float (YAML
        1.1 reads ``lr0: 1e-3`` as a string; ``lr0`` is typed loosely to allow ``auto``).

    Raises:
        ConfigError: with one line per problem (all of them, not just the first), each naming
            the key and the fix.
    """
    check_overrides(cfg, list(overrides))
    if isinstance(cfg.get("lr0"), str) and cfg.lr0 != "auto":
        try:
            cfg = with_values(cfg, lr0=float(cfg.lr0))
        except ValueError:
            pass  # reported below
    errors = _unknown_top_level(cfg) + _number_errors(cfg) + _group_errors(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg
