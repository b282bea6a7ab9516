"""The config tree is the registry: ``conf/<group>/<name>.yaml`` exists = the component exists.

Every group file names a callable with ``_target_`` and sets ``_partial_: true``; runtime inputs
(parameters, the number of steps, datasets) are passed at the call site by :func:`instantiate`.
:func:`check_signature` compares a group file's keys with its callable's signature before
anything is built (pattern of torchtune's ``config._validate``).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError, suggest

#: The packaged config tree (``framework/conf/``, installed with the package); a user's own
#: config folder is layered on top by Hydra (``--config-dir`` or ``hydra.searchpath``).
CONF_DIR = Path(__file__).resolve().parent / "conf"

#: Packages behind optional config options -> the pyproject extra that installs them.
OPTIONAL_EXTRAS = {"schedulefree": "schedulefree", "prodigyopt": "prodigy"}

_META_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def available(group: str) -> list[str]:
    """Names of the options of a config group, from ``conf/<group>/*.yaml`` (sorted)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _signature(target: Any) -> inspect.Signature:
    return inspect.signature(target.__init__ if inspect.isclass(target) else target)


def locate(path: str) -> Any:
    """The object named by a dotted ``_target_`` path (Hydra's ``get_object``, without its log line)."""
    import logging

    from hydra.utils import get_object

    logger = logging.getLogger("hydra.utils")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return get_object(path)
    finally:
        logger.setLevel(level)


def takes(target: Any, name: str) -> bool:
    """True when ``target`` (a class: its constructor; any other callable) takes an argument
    called ``name``; False when it has no signature to read (some built-ins)."""
    try:
        return name in _signature(target).parameters
    except (TypeError, ValueError):
        return False


def accepts(target: Any, name: str) -> bool:
    """True when ``target`` can be called with a keyword ``name``: it takes that argument or
    ``**kwargs``, or it has no signature to read (then it is given everything)."""
    try:
        params = _signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_signature(
    node: DictConfig, group: str, runtime: Iterable[str] = (), reserved: Iterable[str] = ()
) -> list[str]:
    """Check a group file's keys against the signature of its ``_target_``.

    Args:
        node: the group's composed config (holds ``_target_``).
        group: the group's name, used in the messages (``scheduler``).
        runtime: argument names passed at the call site; they must not be set in YAML.
        reserved: keys read by the framework itself (``interval``), not passed to the target.

    Returns:
        One message per problem (unknown key, runtime key written in YAML, missing required
        argument, target that cannot be imported); empty when the node is fine.
    """
    path = node.get("_target_")
    try:
        target = locate(path)
    except Exception as exc:  # ImportError, AttributeError, ValueError from hydra's locate
        module = str(path).split(".")[0]
        if isinstance(exc.__cause__ or exc, ModuleNotFoundError) or "No module named" in str(exc):
            extra = OPTIONAL_EXTRAS.get(module)
            if extra:
                return [f"{group}._target_={path}: package '{module}' is not installed; "
                        f"pip install -e '.[{extra}]'"]
        return [f"{group}._target_={path}: cannot be imported ({type(exc).__name__}); fix the path"]
    try:
        params = _signature(target).parameters
    except (TypeError, ValueError):
        return []
    names = [n for n in params if n != "self"]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    runtime, reserved = set(runtime), set(reserved)
    errors = []
    keys = [k for k in node.keys() if k not in _META_KEYS and k not in reserved]
    for key in keys:
        if key in runtime:
            errors.append(f"{group}.{key}: is passed at run time; remove it from the YAML")
        elif key not in names and not has_var_kw:
            valid = [n for n in names if n not in runtime] + sorted(reserved)
            errors.append(
                f"{group}.{key}: not an argument of {path}{suggest(key, valid)}; valid keys: {', '.join(valid)}"
            )
    for name, p in params.items():
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if name != "self" and required and name not in keys and name not in runtime:
            errors.append(f"{group}.{name}: required by {path}; add it to the group file")
    return errors


def instantiate(node: DictConfig, group: str, reserved: Iterable[str] = (), **runtime: Any) -> Any:
    """Build a group's component: Hydra's ``instantiate`` on the node, then call it with the
    runtime inputs its signature :func:`accepts` (a user's model that takes no ``img_size`` is
    not given one).

    Args:
        node: group config with ``_target_`` and ``_partial_: true``.
        group: the group's name (``optimizer``), for error messages.
        reserved: framework keys to drop before the call (``interval``).
        **runtime: call-site arguments (``params=...``, ``total_units=...``), each passed only
            when the target accepts it.

    Returns:
        What the target returns.

    Raises:
        ConfigError: the target rejected its arguments (``TypeError``, ``ValueError`` or
            ``IndexError``, e.g.
            ``optimizer.momentum=0`` with ``nesterov: true``), with the target's own message.
    """
    from hydra.utils import instantiate as hydra_instantiate

    data = OmegaConf.to_container(node, resolve=True)
    for key in reserved:
        data.pop(key, None)
    data["_partial_"] = True
    data["_convert_"] = "all"  # plain lists and dicts, never ListConfig/DictConfig (checkpoints hold them)
    try:
        target = locate(data["_target_"])
        runtime = {name: value for name, value in runtime.items() if accepts(target, name)}
        return hydra_instantiate(data)(**runtime)
    except ConfigError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        message = " ".join(str(exc).split())
        if message.startswith(f"{group}."):  # the target named the key and the fix itself
            raise ConfigError(message)
        raise ConfigError(f"{group}: {data.get('_target_')} rejected its arguments: {message}; fix the {group} keys")
