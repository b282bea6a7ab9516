"""The optimizer with its final base LRs: parameter groups (weight decay, head LR, layer-wise LR
decay, Ultralytics' bias group), batch-size LR scaling, timm optimizers."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from framework.errors import ConfigError

SCALING_RULES = ("none", "linear", "sqrt")


def _no_decay(name: str, p: torch.nn.Parameter, skip: set[str]) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or name in skip


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    layer_decay: Optional[float] = None,
    split_bias: bool = False,
    head_prefix: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Named parameter groups with weight decay and LR scales, following timm's conventions.

    - No weight decay for parameters with ``ndim <= 1`` (biases, norm scales and shifts), names
      ending in ``.bias`` and the model's ``no_weight_decay()`` set (timm's
      ``param_groups_weight_decay``): groups ``decay`` and ``no_decay``.
    - ``layer_decay``: layer-wise LR decay (Clark et al., ELECTRA 2020; BEiT), by timm's
      ``param_groups_layer_decay``: layer ``i`` of ``L`` gets ``lr_scale = layer_decay^(L-1-i)``;
      groups ``layer_<i>_decay`` / ``layer_<i>_no_decay``.
    - ``split_bias``: biases in their own ``bias`` group (no decay), apart from the norm weights
      (Ultralytics' three groups; its warmup treats biases apart, ``warmup_bias_lr``).
    - ``head_lr_mult``: the head in its own groups ``head`` / ``head_no_decay`` with its
      ``lr_scale`` multiplied by ``head_lr_mult`` (fine-tuning). The head is the parameters whose
      names start with ``head_prefix`` (``fc`` takes ``fc.weight`` and ``fc.bias``, not
      ``fc2.weight``), or, with ``head_prefix`` None, timm's ``model.get_classifier()``.
    Every group's base LR is ``lr0 * lr_scale``; all follow the same schedule shape.

    Args:
        model: the network (a timm model for ``layer_decay``, and for ``head_lr_mult`` without
            ``head_prefix``).
        weight_decay: decay of the decayed groups (L2 coefficient, or decoupled for AdamW).
        head_lr_mult: LR multiplier of the head, > 0.
        layer_decay: per-layer LR decay in (0, 1]; None = off.
        split_bias: put biases in a ``bias`` group (ignored with ``layer_decay``).
        head_prefix: parameter-name prefix of the head (``fc``, ``classifier.2``: a module's
            name as in ``model.named_modules()``); None = ``model.get_classifier()``. Checked
            whenever given.

    Returns:
        ``[{"name", "params", "weight_decay", "lr_scale"}, ...]``; frozen parameters and empty
        groups left out.

    Raises:
        ConfigError: a multiplier out of range; a ``head_prefix`` that names no parameter (the
            model's top-level modules listed); ``head_lr_mult`` on a model without
            ``get_classifier()`` and no ``head_prefix`` (set ``optimizer.head_prefix``);
            ``layer_decay`` on a model without timm's layer grouping (set it to null).
    """
    if not head_lr_mult > 0:
        raise ConfigError(f"optimizer.head_lr_mult={head_lr_mult}: must be > 0 (1 = same LR as the body)")
    head = head_parameters(model, head_prefix) if head_prefix is not None else None
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = {id(p): n for n, p in model.named_parameters()}
    if layer_decay is None:
        groups = [{"name": "decay", "params": [], "weight_decay": weight_decay, "lr_scale": 1.0},
                  {"name": "no_decay", "params": [], "weight_decay": 0.0, "lr_scale": 1.0},
                  {"name": "bias", "params": [], "weight_decay": 0.0, "lr_scale": 1.0}]
        for name, p in model.named_parameters():
            if p.requires_grad:
                index = 2 if split_bias and name.endswith(".bias") else int(_no_decay(name, p, skip))
                groups[index]["params"].append(p)
    else:
        groups = _layer_decay_groups(model, weight_decay, layer_decay, skip, names)
    if head_lr_mult != 1.0:
        if head is None:
            head = _classifier_parameters(model, head_lr_mult)
        groups = _split_head(groups, head, head_lr_mult, names, skip)
    return [g for g in groups if g["params"]]


def _top_level(model: torch.nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children()) or "(none)"


def head_parameters(model: torch.nn.Module, head_prefix: str) -> set[int]:
    """The ``id`` of each parameter of the head named by ``head_prefix``: those whose name is
    ``head_prefix`` or starts with ``head_prefix + "."``.

    Raises:
        ConfigError: no parameter has that prefix; the message lists the model's top-level
            modules (``named_children``) to pick from.
    """
    prefix = str(head_prefix)
    head = {id(p) for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")}
    if not head:
        from framework.errors import suggest

        modules = [n for n, _ in model.named_modules() if n]
        raise ConfigError(f"optimizer.head_prefix={prefix}: no parameter of {type(model).__name__} starts with "
                          f"'{prefix}'{suggest(prefix, modules)}; its top-level modules are {_top_level(model)}")
    return head


def _classifier_parameters(model: torch.nn.Module, head_lr_mult: float) -> set[int]:
    """The ``id`` of each parameter of timm's ``model.get_classifier()``.

    Raises:
        ConfigError: the model has no ``get_classifier()``; set ``optimizer.head_prefix``.
    """
    if not hasattr(model, "get_classifier"):
        raise ConfigError(f"optimizer.head_lr_mult={head_lr_mult}: {type(model).__name__} has no get_classifier() "
                          "(timm's), so the head is not known; set optimizer.head_prefix to the name of its head "
                          f"module (its top-level modules are {_top_level(model)})")
    return {id(p) for p in model.get_classifier().parameters()}


def _layer_decay_groups(model, weight_decay, layer_decay, skip, names) -> list[dict[str, Any]]:
    if not 0 < layer_decay <= 1:
        raise ConfigError(f"optimizer.layer_decay={layer_decay}: must be in (0, 1], e.g. 0.75, or null")
    if not hasattr(model, "group_matcher"):
        raise ConfigError(f"optimizer.layer_decay={layer_decay}: {type(model).__name__} has no layer grouping (timm "
                          "models tell which layer each parameter is in with group_matcher(); yours does not); set "
                          "optimizer.layer_decay=null (optimizer.head_lr_mult with optimizer.head_prefix still gives "
                          "the head its own LR)")
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    layer_max = max(layer_map.values())
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=tuple(skip),
                                      layer_decay=layer_decay)
    for g in groups:
        first = names[id(g["params"][0])]
        kind = "no_decay" if _no_decay(first, g["params"][0], skip) else "decay"
        g["name"] = f"layer_{layer_map.get(first, layer_max)}_{kind}"
    return groups


def _split_head(groups, head, head_lr_mult, names, skip) -> list[dict[str, Any]]:
    out, heads = [], {}
    for g in groups:
        body = [p for p in g["params"] if id(p) not in head]
        out.append({**g, "params": body})
        for p in g["params"]:
            if id(p) in head:
                name = "head_no_decay" if _no_decay(names[id(p)], p, skip) else "head"
                heads.setdefault(name, {**g, "name": name, "params": [], "lr_scale": g["lr_scale"] * head_lr_mult})
                heads[name]["params"].append(p)
    return out + list(heads.values())


def lr_scale_factor(rule: str, global_batch_size: int, lr_base_size: int) -> float:
    """Batch-size LR scaling factor, applied to ``lr0``.

    ``linear``: ``B / lr_base_size`` (Goyal et al., 2017, "Accurate, Large Minibatch SGD");
    ``sqrt``: ``sqrt(B / lr_base_size)`` (Krizhevsky, 2014; for adaptive optimizers, as timm's
    ``--lr-base-scale sqrt``); ``none``: 1.

    Args:
        rule: ``none``, ``linear`` or ``sqrt``.
        global_batch_size: samples per optimizer step = batch_size x accumulate_grad_batches x
            world size.
        lr_base_size: batch size that ``lr0`` was tuned for.

    Raises:
        ConfigError: unknown rule or a base size < 1.
    """
    if rule not in SCALING_RULES:
        raise ConfigError(f"lr_scaling={rule}: use none, linear or sqrt")
    if lr_base_size < 1:
        raise ConfigError(f"lr_base_size={lr_base_size}: must be >= 1 (the batch size lr0 was tuned for)")
    ratio = global_batch_size / lr_base_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def global_batch(cfg: Any) -> int:
    """Samples per optimizer step over all processes: ``batch_size x accumulate_grad_batches x
    world size`` (what ``lr_scaling`` scales by, Goyal et al. 2017)."""
    from framework import distributed

    return cfg.batch_size * cfg.trainer.get("accumulate_grad_batches", 1) * distributed.world_size()


def build_optimizer(cfg: Any, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer of ``conf/optimizer/<name>.yaml`` over the model's parameter groups, each
    built with its final base LR.

    Group ``g`` gets ``lr = initial_lr = optimizer.lr x lr_scale_g x scaling`` (``optimizer.lr``
    is ``${lr0}``, or the optimizer's own multiplier for Prodigy; ``lr_scale_g`` its head /
    layer-decay ratio; ``scaling`` the batch-size rule :func:`lr_scale_factor`), and the bias
    group ``warmup_start_lr = warmup_bias_lr`` when that is set; ``initial_momentum`` is each
    group's momentum (or Adam beta1) as configured, ``initial_weight_decay`` its weight decay
    (0 for the no-decay groups). The LR plan multiplies ``initial_lr`` at every step; nothing
    corrects these values afterwards.

    Args:
        cfg: a validated config (reads ``optimizer``, ``lr_scaling``, ``lr_base_size``,
            ``warmup_bias_lr``, ``batch_size``, ``trainer.accumulate_grad_batches``).
        model: the network whose trainable parameters are grouped (:func:`param_groups`).

    Returns:
        ``(optimizer, scaling)``.

    Raises:
        ConfigError: no ``optimizer.lr``, a ratio out of range, or the optimizer rejected its
            arguments.
    """
    from framework import registry
    from framework.config import RESERVED_KEYS
    from framework.schedules.plan import group_momentum

    node = cfg.optimizer
    base = node.get("lr")
    if not isinstance(base, (int, float)) or isinstance(base, bool):
        raise ConfigError(f"optimizer.lr={base}: the base LR must be a number; set lr: ${{lr0}} in the optimizer file")
    scaling = lr_scale_factor(cfg.lr_scaling, global_batch(cfg), cfg.lr_base_size)
    bias_lr = cfg.get("warmup_bias_lr")
    groups = param_groups(model, node.get("weight_decay", 0.0) or 0.0, head_lr_mult=node.get("head_lr_mult", 1.0),
                          layer_decay=node.get("layer_decay"), split_bias=bias_lr is not None,
                          head_prefix=node.get("head_prefix"))
    for group in groups:
        group["lr"] = group["initial_lr"] = base * group["lr_scale"] * scaling
        if group["name"] == "bias" and bias_lr is not None:
            group["warmup_start_lr"] = float(bias_lr)
    optimizer = registry.instantiate(node, "optimizer", reserved=RESERVED_KEYS["optimizer"], params=groups)
    for group in optimizer.param_groups:  # the base the plan's momentum schedules start from (the optimizer's default)
        if group_momentum(group) is not None:
            group["initial_momentum"] = group_momentum(group)
        group["initial_weight_decay"] = float(group.get("weight_decay", 0.0) or 0.0)  # (a replayed trace's groups)
    return optimizer, scaling


def timm_optimizer(params: list[dict[str, Any]], opt: str, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9, **kwargs: Any) -> torch.optim.Optimizer:
    """Any optimizer of timm's family (``lamb``, ``lars``, ``lion``, ``adabelief``, ``nadamw``,
    ``sgdp``, ...) through ``timm.optim.create_optimizer_v2``, on our named parameter groups.

    Args:
        params: parameter groups (runtime, from :func:`param_groups`).
        opt: timm optimizer name (``timm.optim.list_optimizers()``).
        lr: base LR (``${lr0}``).
        weight_decay: default decay (the groups carry their own).
        momentum: momentum for the optimizers that take one.
        **kwargs: passed to the optimizer (``betas``, ``eps``, ...).

    Raises:
        ConfigError: an unknown optimizer name.
    """
    from timm.optim import create_optimizer_v2, list_optimizers

    if opt.lower() not in list_optimizers():
        from framework.errors import suggest

        raise ConfigError(f"optimizer.opt={opt}: not a timm optimizer{suggest(opt, list_optimizers())}")
    return create_optimizer_v2(params, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs)
