"""PyTorch's LR schedulers (and a user's own ``LRScheduler`` subclass) as pure multiplier schedules.

``scheduler=torch scheduler.name=ExponentialLR scheduler.gamma=0.9`` picks a class of
``torch.optim.lr_scheduler`` by name (or any ``LRScheduler`` subclass by dotted path); a group file
whose ``_target_`` is such a class is turned into the same form by
:func:`framework.registry.adapted`. :class:`TorchScheduler` steps the class ahead, once, on a
throwaway optimizer whose LR is 1, and keeps the LR it held at every unit: the schedule is then a
pure function of ``t`` like every other, so ``T``, warmup, resume, logging and the preview need no
special case (the LR contract, README).

This module imports torch only when a scheduler is checked or built.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Optional

from framework import registry
from framework.errors import ConfigError, suggest
from framework.schedules.base import Schedule

#: Where ``scheduler.name`` without a dot is looked up.
MODULE = "torch.optim.lr_scheduler"

#: Arguments of every ``LRScheduler`` that the adapter owns: never config keys.
NEVER_KEYS = {
    "optimizer": "the adapter builds the class on an optimizer of its own",
    "last_epoch": "resume restores the step index, and with it the LR",
    "verbose": "deprecated by PyTorch; the LR of every step is in steps.csv",
}

_CALLABLE = ("takes a Python function ({arg}), which a config file cannot hold; write the policy as a "
             "framework.schedules.Schedule subclass (README: \"Your own schedule\")")
_CHAINS = ("chains schedulers built on an optimizer; warmup is the warmup_epochs / warmup_steps knobs, any other "
           "composition a framework.schedules.Schedule subclass (README: \"Your own schedule\")")

#: Classes of ``torch.optim.lr_scheduler`` refused as they are (a subclass that fills their
#: arguments itself is fine), and why.
REFUSED = {
    "LambdaLR": _CALLABLE.format(arg="lr_lambda"),
    "MultiplicativeLR": _CALLABLE.format(arg="lr_lambda"),
    "SequentialLR": _CHAINS,
    "ChainedScheduler": _CHAINS,
    "LRScheduler": "is the base class; name one of its subclasses",
    "_LRScheduler": "is the base class; name one of its subclasses",
}

#: Refused with every subclass: the LR follows a metric, it cannot be computed ahead.
PLATEAU_FIX = ("is metric-driven: its LR follows a metric and cannot be computed ahead; use scheduler=plateau "
               "(the same policy, judged once per epoch, floor lr0*lrf)")

#: Arguments filled by the adapter when the class takes them and the config leaves them null.
FILLED = ("total_units", "total_steps", "max_lr")

#: Durations, in the schedule's units (for the unit hint of a message).
DURATIONS = ("T_max", "T_0", "step_size", "milestones", "total_iters", "step_size_up", "step_size_down", "total_steps")

#: Example values for a missing required argument.
EXAMPLES = {"T_max": "100", "T_0": "10", "step_size": "30", "milestones": "[30,60]", "gamma": "0.9",
            "base_lr": "0.01", "max_lr": "1.0", "total_iters": "5"}

#: Momentum of the throwaway optimizer: a class that changes it prescribes the momentum.
PROBE_MOMENTUM = 0.9

_META = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def class_names() -> list[str]:
    """The classes of ``torch.optim.lr_scheduler`` that ``scheduler.name`` may take."""
    from torch.optim import lr_scheduler

    return sorted(n for n, c in vars(lr_scheduler).items() if inspect.isclass(c) and not n.startswith("_")
                  and issubclass(c, lr_scheduler.LRScheduler) and n not in REFUSED and n != "ReduceLROnPlateau")


def scheduler_class(name: Any) -> tuple[type, str]:
    """The class ``scheduler.name`` names, and its dotted path.

    Args:
        name: a class name of ``torch.optim.lr_scheduler`` (``CosineAnnealingLR``) or the dotted
            path of an ``LRScheduler`` subclass (``mypkg.schedules.MyLR``).

    Raises:
        ConfigError: no name, a name that is not a class there, a path that cannot be imported,
            something that is not an ``LRScheduler`` subclass, or a refused class (:data:`REFUSED`,
            ``ReduceLROnPlateau``), each with its fix.
    """
    from torch.optim import lr_scheduler

    if not name or not isinstance(name, str):
        raise ConfigError("scheduler.name: pick a class of torch.optim.lr_scheduler, e.g. scheduler.name=ExponentialLR "
                          "scheduler.gamma=0.9, or give the dotted path of your own LRScheduler subclass")
    if "." not in name:
        cls, path = getattr(lr_scheduler, name, None), f"{MODULE}.{name}"
        if not (inspect.isclass(cls) and issubclass(cls, lr_scheduler.LRScheduler)):
            names = class_names()
            raise ConfigError(f"scheduler.name={name}: not a class of {MODULE}{suggest(name, names)}; use one of "
                              f"{', '.join(names)}, or the dotted path of your own LRScheduler subclass")
    else:
        path = name
        try:
            cls = registry.locate(name)
        except Exception as exc:  # ConfigError saying why (no module, no such name, the import raised)
            why = str(exc).split(": ", 1)[-1] if isinstance(exc, ConfigError) else f"cannot be imported ({exc})"
            raise ConfigError(f"scheduler.name={name}: {why}") from None
        if not (inspect.isclass(cls) and issubclass(cls, lr_scheduler.LRScheduler)):
            raise ConfigError(f"scheduler.name={name}: not a subclass of {MODULE}.LRScheduler; name one (a class of "
                              f"{MODULE} or your own), or pick a framework schedule with scheduler=<name>")
    if issubclass(cls, lr_scheduler.ReduceLROnPlateau):
        raise ConfigError(f"scheduler: {path} {PLATEAU_FIX}")
    if cls.__module__ == MODULE and cls.__name__ in REFUSED:
        raise ConfigError(f"scheduler: {path} {REFUSED[cls.__name__]}")
    return cls, path


def key_errors(cls: type, path: str, given: dict[str, Any], runtime: Iterable[str] = (),
               in_node: Optional[Iterable[str]] = None, interval: Optional[str] = None) -> list[str]:
    """Check the class's arguments as configured, before anything is built.

    Args:
        cls: the scheduler class; path: its dotted path (for messages).
        given: the configured arguments whose value is not null (``name`` and ``interval`` aside).
        runtime: keys passed at run time (``total_units``, ``warmup_units``): never in YAML.
        in_node: keys present in the group (a missing one is added with ``+scheduler.<key>``);
            None = all of them.
        interval: ``scheduler.interval``, for the unit of a missing duration.

    Returns:
        One message per problem: a runtime or adapter-owned key set, a key the class does not
        take, a required argument missing.
    """
    named, var_kw = registry.parameters(cls) or ({}, True)
    valid = [n for n in named if n not in NEVER_KEYS and n != "total_units"]
    errors = []
    for key, value in given.items():
        if key in runtime:
            errors.append(f"scheduler.{key}: is passed at run time; remove it from the YAML")
        elif key in NEVER_KEYS:
            errors.append(f"scheduler.{key}={value}: not a config key ({NEVER_KEYS[key]}); remove it")
        elif key not in named and not var_kw:
            errors.append(f"scheduler.{key}={value}: not an argument of {path}{suggest(key, valid)}; its keys: "
                          f"{', '.join(valid) or 'none'} (set the others to null or remove them, or start from "
                          f"scheduler=torch scheduler.name={path}, a file of PyTorch's arguments)")
    for name, p in named.items():
        if p.default is p.empty and name not in given and name not in NEVER_KEYS and name not in FILLED:
            plus = "" if in_node is None or name in in_node else "+"
            unit = ""
            if name in DURATIONS and interval is not None:
                unit = " (epochs, as scheduler.interval=epoch)" if interval == "epoch" else \
                    " (optimizer steps, as scheduler.interval=step)"
            errors.append(f"scheduler.{name}: required by {path}; set it, e.g. "
                          f"{plus}scheduler.{name}={EXAMPLES.get(name, '<value>')}{unit}")
    return errors


class TorchScheduler(Schedule):
    """A PyTorch LR scheduler class (or a user's own ``LRScheduler`` subclass) as a multiplier.

    The class is built once on a throwaway ``SGD(lr=1, momentum=0.9)`` with one param group and
    stepped ``total_units - 1`` times; the LR that group holds before each ``step()`` is ``m(t)``.
    ``scheduler.interval`` says what a unit is: ``epoch`` (PyTorch's usual ``step()`` once per
    epoch: the LR changes at epoch starts and the class's durations, ``T_max``, ``step_size``,
    ``milestones``, ..., count epochs) or ``step`` (``step()`` after every optimizer step, after
    gradient accumulation: they count optimizer steps). Warmup comes first, as for every schedule:
    the class starts at ``t = 0`` when warmup ends (source: PyTorch's class itself).

    Formula: m(t) = the LR of the class's param group after t calls of step(), built on an optimizer whose LR is 1

    Decisions:

    - LRs the class takes as absolute values (``OneCycleLR.max_lr``, ``CyclicLR.base_lr`` /
      ``max_lr``, ``CosineAnnealingLR.eta_min``, ``CosineAnnealingWarmRestarts.eta_min``) are
      multiples of each param group's base LR (``lr0`` x the group's ratio), since the class runs
      on an LR of 1: ``eta_min=0.01`` is a floor of ``lr0*0.01``. One value serves every group
      (ratios between groups are ``optimizer.head_lr_mult`` / ``layer_decay``).
    - Filled by the adapter when the class takes them and the config leaves them null:
      ``total_units`` (the main phase's units), ``total_steps`` (= ``total_units``, unless
      ``epochs`` and ``steps_per_epoch`` are given: ``OneCycleLR`` spans the run after warmup)
      and ``max_lr`` (= 1: the peak is the base LR, as ``scheduler=onecycle``). Every other
      argument keeps PyTorch's default when null (``LinearLR.total_iters`` stays 5, not the run).
    - ``optimizer``, ``last_epoch`` and ``verbose`` are never config keys; a key set to null is
      not given (``conf/scheduler/torch.yaml`` lists the arguments of PyTorch's classes as null).
    - Momentum: a class that changes the momentum (``OneCycleLR`` / ``CyclicLR`` with
      ``cycle_momentum``, or a user's class that writes ``momentum``) has it recorded too, and
      :meth:`momentum` prescribes it (SGD ``momentum``, Adam ``beta1``): exact, since PyTorch
      writes absolute momenta.
    - Refused: ``ReduceLROnPlateau`` (metric-driven; ``scheduler=plateau``), ``LambdaLR`` and
      ``MultiplicativeLR`` (a Python function; a ``Schedule`` subclass), ``SequentialLR`` and
      ``ChainedScheduler`` (schedulers built on an optimizer).

    Args:
        total_units: units of the main phase, after warmup (runtime); >= 1.
        name: a class name of ``torch.optim.lr_scheduler`` or a dotted path to an
            ``LRScheduler`` subclass.
        **kwargs: the class's own arguments, by PyTorch's names; null ones are not given.

    Raises:
        ConfigError: a refused class or bad name (:func:`scheduler_class`), a key the class does
            not take or a required one missing (:func:`key_errors`), the class rejecting its
            arguments or failing while stepped (fix the named keys), or an LR multiplier that is
            negative or not finite (check the arguments).
    """

    def __init__(self, total_units: int, name: Optional[str] = None, **kwargs: Any):
        super().__init__(total_units)
        cls, path = scheduler_class(name)
        given = {k: v for k, v in kwargs.items() if v is not None}
        errors = key_errors(cls, path, given)
        if errors:
            raise ConfigError(errors)
        self.path = path
        self.lrs, momenta = record(cls, path, fill(cls, given, self.total_units), self.total_units)
        #: Recorded momentum of every unit, or None when the class leaves the momentum alone.
        self.momenta = momenta

    def __call__(self, t: int) -> float:
        return self.lrs[t]

    def momentum(self, t: int) -> Optional[float]:
        return None if self.momenta is None else self.momenta[t]

    def __repr__(self) -> str:
        return f"TorchScheduler({self.path})"

    @classmethod
    def check_config(cls, node: Any, group: str = "scheduler", runtime: Iterable[str] = (),
                     reserved: Iterable[str] = ()) -> list[str]:
        """The problems of a ``scheduler`` group for this adapter, before anything is built
        (called by :func:`framework.registry.check_signature`).

        Args:
            node: the group's config (``name``, ``interval``, the class's arguments).
            group: the group's name; runtime: keys passed at run time; reserved: framework keys.

        Returns:
            One message per problem (empty when the group is fine).
        """
        from omegaconf import OmegaConf

        try:
            data = OmegaConf.to_container(node, resolve=True)
        except Exception:  # an unresolved interpolation: reported by the other checks
            return []
        interval = data.get("interval")
        skip = set(_META) | set(reserved) | {"name"}
        try:
            target, path = scheduler_class(data.get("name"))
        except ConfigError as exc:
            return exc.messages
        given = {k: v for k, v in data.items() if k not in skip and v is not None}
        return key_errors(target, path, given, runtime=runtime, in_node=list(data), interval=interval)


def fill(cls: type, given: dict[str, Any], total_units: int) -> dict[str, Any]:
    """The class's arguments: ``given`` plus what the adapter fills (:data:`FILLED`)."""
    named, _ = registry.parameters(cls) or ({}, True)
    args = dict(given)
    if "total_units" in named:
        args["total_units"] = total_units
    if "total_steps" in named and not {"total_steps", "epochs", "steps_per_epoch"} & set(given):
        args["total_steps"] = total_units
    if "max_lr" in named and "max_lr" not in given:
        args["max_lr"] = 1.0
    return args


def record(cls: type, path: str, args: dict[str, Any], total_units: int) -> tuple[list[float], Optional[list[float]]]:
    """Step ``cls(optimizer, **args)`` on an optimizer whose LR is 1 and note its LR (and momentum)
    before each ``step()``.

    Returns:
        ``(lrs, momenta)``: ``total_units`` multipliers; the momenta, or None when the class
        does not set the momentum.

    Raises:
        ConfigError: the class rejects its arguments or fails while stepped, or gives a negative
            or non-finite multiplier.
    """
    import warnings

    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=PROBE_MOMENTUM)
    group = optimizer.param_groups[0]
    lrs, momenta = [], []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch's advice on calling order and get_last_lr(): not the user's
            scheduler = cls(optimizer, **args)
            optimizer.step()  # no gradient: changes nothing; PyTorch expects optimizer.step() before its step()
            for t in range(total_units):
                lrs.append(float(group["lr"]))
                momenta.append(float(group["momentum"]))
                if t < total_units - 1:
                    scheduler.step()
    except ConfigError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())
        where = "rejected its arguments" if not lrs else f"failed at unit {len(lrs)} of the run's {total_units}"
        raise ConfigError(f"scheduler: {path} {where}: {type(exc).__name__}: {message}; fix the scheduler keys") from None
    bad = next((i for i, m in enumerate(lrs) if not (math.isfinite(m) and m >= 0)), None)
    if bad is not None:
        raise ConfigError(f"scheduler: {path} gives the LR multiplier {lrs[bad]!r} at unit {bad}; an LR must be finite "
                          "and >= 0: check its arguments")
    sets_momentum = bool(getattr(scheduler, "cycle_momentum", False)) or any(m != PROBE_MOMENTUM for m in momenta)
    return lrs, (momenta if sets_momentum else None)
