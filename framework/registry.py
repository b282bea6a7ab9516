"""The config tree is the registry: ``conf/<group>/<name>.yaml`` exists = the component exists.

Every group file names a callable with ``_target_`` and sets ``_partial_: true``; runtime inputs
(parameters, the number of steps, datasets) are passed at the call site by :func:`instantiate`.
:func:`check_signature` compares a group file's keys with its callable's signature before
anything is built (pattern of torchtune's ``config._validate``).
"""
from __future__ import annotations

import inspect
import sys
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from framework import schema
from framework.errors import ConfigError, suggest

#: The packaged config tree (``framework/conf/``, installed with the package) and the options of
#: each group (defined in the leaf module :mod:`framework.schema`); a user's own config folder is
#: layered on top by Hydra (``--config-dir`` or ``hydra.searchpath``).
CONF_DIR, available = schema.CONF_DIR, schema.available

#: Packages behind optional config options -> the pyproject extra that installs them.
OPTIONAL_EXTRAS = {"schedulefree": "schedulefree", "prodigyopt": "prodigy"}

_META_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")

#: Foreign classes a group builds through an adapter: group -> (module, base class, adapter, key).
#: A ``_target_`` that subclasses the base (any ``torch.optim.lr_scheduler.LRScheduler``) is built
#: by the adapter, with the class's path as the adapter's ``key`` (:func:`adapted`).
ADAPTERS = {"scheduler": ("torch.optim.lr_scheduler", "LRScheduler", "framework.schedules.TorchScheduler", "name")}


def _signature(target: Any) -> inspect.Signature:
    return inspect.signature(target.__init__ if inspect.isclass(target) else target)


#: Example ``_target_`` of each group, for the message of a ``_target_`` left unset (``???``).
TARGET_EXAMPLES = {"model": "mypkg.nets.build_net", "dataset": "mypkg.data.build_data", "task": "mypkg.tasks.MyTask"}


def missing_target(group: str) -> str:
    """The one-line message for a group whose ``_target_`` is ``???`` (``conf/model/custom.yaml``)."""
    example = TARGET_EXAMPLES.get(group, f"mypkg.{group}.build")
    return f"{group}._target_: set it to your callable, e.g. {group}._target_={example}"


def locate(path: str, group: str = "") -> Any:
    """The object named by a dotted ``_target_`` path (``mypkg.nets.build_net``): its first name
    imported as a module, then each next name taken as an attribute, or else imported as a
    submodule (Hydra's rule: ``framework.data.imagefolder`` is the function, not its module).

    Args:
        path: the import path of a module attribute (a class, a function, ...).
        group: the config group, to name the key in messages (``model``).

    Returns:
        The object.

    Raises:
        ConfigError: one line naming the key and what went wrong: a module that does not exist
            (run from the folder that holds the package, or add it to ``PYTHONPATH``; an
            optional package names its pip extra), a module without that attribute (fix the
            name), or a module whose import raised (the exception and where; fix that file).
    """
    key = f"{group + '.' if group else ''}_target_={path}"
    if not isinstance(path, str) or not path or any(not part.isidentifier() for part in path.split(".")):
        raise ConfigError(f"{key}: not an import path; name a class or function by its dotted path, e.g. "
                          f"{group or 'model'}._target_={TARGET_EXAMPLES.get(group, 'mypkg.nets.build_net')}")
    parts = path.split(".")
    obj = _import(parts[0], key, top=True)
    for i, part in enumerate(parts[1:], 1):
        where = ".".join(parts[:i])
        if hasattr(obj, part):  # an attribute wins over a submodule of the same name (hydra's rule)
            obj = getattr(obj, part)
        elif inspect.ismodule(obj) and _import(f"{where}.{part}", key) is not None:
            obj = sys.modules[f"{where}.{part}"]
        else:
            owner = f"module {where}" if inspect.ismodule(obj) else where
            names = [a for a in dir(obj) if not a.startswith("_")]
            raise ConfigError(f"{key}: {owner} has no {part}{suggest(part, names)}; fix the name")
    return obj


def _import(name: str, key: str, top: bool = False) -> Any:
    """The module ``name``; None when it does not exist (a top-level one: ConfigError).

    Raises:
        ConfigError: the top-level package is not installed or not on ``sys.path``; or the
            module exists and its code raised while it was imported.
    """
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # an import inside the module failed: the user's code
            raise ConfigError(f"{key}: importing it raised {_raised(exc)}; fix that file") from None
        if not top:
            return None
        extra = OPTIONAL_EXTRAS.get(name)
        if extra:
            raise ConfigError(f"{key}: package '{name}' is not installed; pip install -e '.[{extra}]'") from None
        raise ConfigError(f"{key}: cannot import module '{name}' (No module named '{name}'); run from the folder "
                          f"that holds {name}/ (or {name}.py) or add that folder to PYTHONPATH") from None
    except Exception as exc:  # SyntaxError, NameError, ImportError, ... raised by the module's code
        raise ConfigError(f"{key}: importing it raised {_raised(exc)}; fix that file") from None


def _raised(exc: BaseException) -> str:
    """``Type: message (file, line N)`` of an exception raised while importing a user's module:
    the innermost frame outside the import machinery (a syntax error's own file and line)."""
    import traceback

    message = " ".join(str(exc.msg if isinstance(exc, SyntaxError) else exc).split())
    if len(message) > 160:
        message = message[:157] + "..."
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({exc.filename}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
    if frames and frames[-1].filename != __file__:
        return f"{text} ({frames[-1].filename}, line {frames[-1].lineno})"
    return text


def adapted(node: DictConfig, group: str) -> DictConfig:
    """``node`` itself, or, when its ``_target_`` is a foreign class that ``group`` takes through an
    adapter (:data:`ADAPTERS`), a resolved copy with the adapter as ``_target_`` and the class's
    path under the adapter's key (``scheduler.name``).

    Raises:
        ConfigError: the node also names a different class under that key.
    """
    spec = ADAPTERS.get(group)
    path = node.get("_target_") if spec is not None and isinstance(node, DictConfig) else None
    if not isinstance(path, str):
        return node
    module, base, adapter, key = spec
    try:
        target = locate(path)
    except Exception:  # reported by check_signature
        return node
    base_class = getattr(sys.modules.get(module), base, None)  # imported already when the target subclasses it
    if not (inspect.isclass(target) and base_class is not None and issubclass(target, base_class)):
        return node
    named = node.get(key)
    if named is not None and named not in (path, path.rsplit(".", 1)[-1]):
        raise ConfigError(f"{group}.{key}={named}: {group}._target_={path} names the class already; keep one "
                          f"(~{group}.{key}, or {group}.{key}={path} without the _target_ override)")
    try:
        data = OmegaConf.to_container(node, resolve=True)
    except Exception:  # an unresolved interpolation: reported by the other checks
        return node
    data.update({"_target_": adapter, key: path})
    return OmegaConf.create(data)


def parameters(target: Any) -> Optional[tuple[dict[str, inspect.Parameter], bool]]:
    """The one signature reader: ``target``'s named parameters (a class: its constructor's,
    ``self`` aside; ``*args`` and ``**kwargs`` aside) and whether it takes ``**kwargs``; None
    when it has no signature to read (some built-ins)."""
    try:
        params = _signature(target).parameters
    except (TypeError, ValueError):
        return None
    named = {n: p for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def takes(target: Any, name: str) -> bool:
    """True when ``target`` names an argument ``name`` (``**kwargs`` does not count); False when
    it has no signature to read."""
    found = parameters(target)
    return found is not None and name in found[0]


def accepts(target: Any, name: str) -> bool:
    """True when ``target`` can be called with a keyword ``name``: it takes that argument or
    ``**kwargs``, or it has no signature to read (then it is given everything)."""
    found = parameters(target)
    return found is None or name in found[0] or found[1]


def default_of(target: Any, name: str, fallback: Any = None) -> Any:
    """The default value of ``target``'s argument ``name``; ``fallback`` when it has none (no
    such argument, a required one, or no signature to read)."""
    param = (parameters(target) or ({}, False))[0].get(name)
    return fallback if param is None or param.default is param.empty else param.default


def check_signature(
    node: DictConfig, group: str, runtime: Iterable[str] = (), reserved: Iterable[str] = ()
) -> list[str]:
    """Check a group file's keys against the signature of its ``_target_``.

    The target is any callable (a class: its constructor; a function): the runtime inputs are
    passed only where its signature accepts them (:func:`instantiate`), so a target that takes
    fewer of them is fine, and one that requires an argument nobody gives is reported. A foreign
    class is checked through its group's adapter (:func:`adapted`); a class target with a
    ``check_config`` classmethod (that adapter, whose ``**kwargs`` are another class's arguments)
    checks the node itself.

    Args:
        node: the group's composed config (holds ``_target_``).
        group: the group's name, used in the messages (``scheduler``).
        runtime: argument names passed at the call site; they must not be set in YAML.
        reserved: keys read by the framework itself (``interval``), not passed to the target.

    Returns:
        One message per problem, empty when the node is fine: a ``_target_`` left unset
        (``???``), one that cannot be imported (:func:`locate`: missing module, missing name,
        an import that raised) or is not callable, an unknown key, a runtime key written in
        YAML, a key left ``???``, a required argument that neither the YAML nor the framework
        gives.
    """
    if OmegaConf.is_missing(node, "_target_"):
        return [missing_target(group)]
    try:
        node = adapted(node, group)
    except ConfigError as exc:
        return exc.messages
    path = node.get("_target_")
    try:
        target = locate(path, group)
    except ConfigError as exc:
        return exc.messages
    if not callable(target):
        return [f"{group}._target_={path}: is a {type(target).__name__}, not a class or function; name the callable"]
    hook = getattr(target, "check_config", None) if inspect.isclass(target) else None
    if callable(hook):  # a target that takes **kwargs for another class checks them itself (the adapter)
        return hook(node, group, runtime=tuple(runtime), reserved=tuple(reserved))
    found = parameters(target)
    if found is None:
        return []
    params, has_var_kw = found
    names = list(params)
    runtime = tuple(runtime)
    passed = f" (the framework passes {', '.join(runtime)})" if runtime else ""
    runtime, reserved = set(runtime), set(reserved)
    errors = []
    keys = [k for k in node.keys() if k not in _META_KEYS and k not in reserved]
    for key in keys:
        if key in runtime:
            errors.append(f"{group}.{key}: is passed at run time; remove it from the YAML")
        elif key not in names and not has_var_kw:
            valid = [n for n in names if n not in runtime] + sorted(reserved)
            errors.append(f"{group}.{key}: not an argument of {path}{suggest(key, valid)}; "
                          f"valid keys: {', '.join(valid) or '(none)'}")
        elif OmegaConf.is_missing(node, key):
            errors.append(f"{group}.{key}: has no value (???); set it, e.g. {group}.{key}=<value>")
    for name, p in params.items():
        if p.default is p.empty and name not in keys and name not in runtime:
            errors.append(f"{group}.{name}: required by {path}{passed}; add it to the group file "
                          f"or the command line, +{group}.{name}=<value>")
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

    data = OmegaConf.to_container(adapted(node, group), resolve=True)
    for key in reserved:
        data.pop(key, None)
    data["_partial_"] = True
    data["_convert_"] = "all"  # plain lists and dicts, never ListConfig/DictConfig (checkpoints hold them)
    try:
        target = locate(data["_target_"], group)
        runtime = {name: value for name, value in runtime.items() if accepts(target, name)}
        return hydra_instantiate(data)(**runtime)
    except ConfigError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        message = " ".join(str(exc).split())
        if message.startswith(f"{group}."):  # the target named the key and the fix itself
            raise ConfigError(message)
        rejected = [name for name in runtime if f"'{name}'" in message]
        if rejected and not takes(target, rejected[0]):  # handed on through **kwargs to something that refuses it
            raise ConfigError(f"{group}._target_={data.get('_target_')}: takes **kwargs, so the framework gave it "
                              f"{rejected[0]} (one of its runtime inputs), which it then refused ({message}); wrap it "
                              f"in a function that takes the inputs it uses, e.g. def build(num_classes): ...")
        raise ConfigError(f"{group}: {data.get('_target_')} rejected its arguments: {message}; fix the {group} keys")
