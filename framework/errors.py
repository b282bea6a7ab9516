"""User mistakes, said in one line each: :class:`ConfigError`, the one-line formatting of
Hydra's, OmegaConf's and YAML's errors (:func:`user_messages`), and :func:`exit_on_user_error`,
which prints them as ``error: ...`` lines and exits with status 2.

This module imports no other module of the framework but the leaf :mod:`framework.schema`
(and :mod:`framework.distributed` when it exits), so every module can raise a
:class:`ConfigError` without an import cycle.
"""
from __future__ import annotations

import contextlib
import difflib
import re
import sys
from typing import Iterable, Iterator

from framework.schema import available


class ConfigError(ValueError):
    """A user mistake in the config: one line that names the key and says how to fix it.

    ``train.py`` prints each message on its own line and exits with status 2, before training.
    """

    def __init__(self, messages: list[str] | str):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("; ".join(self.messages))


def first_line(exc: BaseException | None, limit: int = 160) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters ("" if none)."""
    lines = str(exc).strip().splitlines() if exc is not None else []
    return lines[0][:limit] if lines else ""


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to ``name``, else an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


#: Names users bring from other tools, mapped to ours.
ALIASES = {"lr": "lr0", "learning_rate": "lr0", "max_epochs": "epochs", "warmup": "warmup_epochs",
           "min_lr": "lrf", "final_lr": "lrf", "bs": "batch_size", "batch": "batch_size"}


#: Hydra plugins the sweep configs use, by the override that selects them.
PLUGINS = {"hydra/launcher=joblib": "hydra-joblib-launcher", "hydra/launcher=submitit_local": "hydra-submitit-launcher",
           "hydra/launcher=submitit_slurm": "hydra-submitit-launcher"}


def user_messages(exc: BaseException) -> list[str] | None:
    """One message per user mistake in ``exc``, or None when ``exc`` is not a user mistake."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return exc.messages
    yaml_error = _yaml_error(exc)
    if yaml_error is not None:
        return [yaml_error]
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, name = exc.missing_cfg_file.rsplit("/", 1)
        # every option on the search path, the user's own included (Hydra lists none for an element of a
        # list, logger=[csv,x]: then the packaged ones)
        options = sorted(exc.options or []) or available(group)
        plugin = PLUGINS.get(f"{group}={name}")
        if plugin:
            return [f"{group}={name}: the Hydra plugin is not installed; pip install {plugin} "
                    "(or pip install -e '.[sweep]' for every sweep plugin)"]
        return [f"{group}={name}: no such option{suggest(name, options)}; available: {', '.join(options)}"]
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        append = re.search(r"use \+(\S+)", str(exc))
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and append:
            override = append.group(1)
            key = override.split("=", 1)[0]
            from framework.schema import TrainConfig, moved_key_message

            moved = moved_key_message(key, override.partition("=")[2])
            if moved is not None:
                return [moved]
            tracker = key.split(".")[1] if key.startswith("logger.") and key.count(".") >= 2 else None
            if tracker in available("logger"):
                return [f"{override}: {tracker} is not among this run's trackers; add it to the list, e.g. "
                        f"'logger=[csv,{tracker}]' {override}"]
            if "." in key:
                parent = getattr(cause, "parent_node", None)
                keys = [k for k in (parent.keys() if parent is not None else []) if not str(k).startswith("_")]
                leaf = key.rsplit(".", 1)[1]
                return [f"{override}: unknown key '{key}'{suggest(leaf, keys)}; "
                        f"{key.rsplit('.', 1)[0]} has {', '.join(map(str, keys)) or 'no keys of its own'} (a new key is added "
                        f"with +{override})"]
            top = list(TrainConfig.__dataclass_fields__)
            hint = f" (did you mean {ALIASES[key]}?)" if key in ALIASES else suggest(key, top)
            return [f"{override}: unknown key '{key}'{hint}; top-level keys are {', '.join(top)}"]
        merging = re.search(r"Error merging override (\S+)", str(exc))
        where = f"{merging.group(1)}: " if merging else ""
        kind = re.search(r"could not be converted to (Integer|Float)", str(cause))
        if merging and kind:  # a typed top-level knob: say what it takes, with its default as the example
            from framework.schema import TrainConfig

            key = merging.group(1).partition("=")[0].lstrip("+~")
            field = TrainConfig.__dataclass_fields__.get(key)
            example = f", e.g. {key}={field.default}" if field is not None and field.default is not None else ""
            wanted = "a whole number" if kind.group(1) == "Integer" else "a number"
            return [f"{merging.group(1)}: must be {wanted}{example}"]
        return [f"{where}{first_line(cause) or first_line(exc)}"]
    if isinstance(exc, (OverrideParseException, OmegaConfBaseException)):
        return [first_line(exc)]
    return None


def _yaml_error(exc: BaseException) -> str | None:
    """A YAML syntax error anywhere in ``exc``'s chain as ``<file>, line N: <problem>; fix``."""
    import yaml

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, yaml.YAMLError):
            mark = getattr(exc, "problem_mark", None)
            problem = str(getattr(exc, "problem", None) or first_line(exc))
            if "'\\t'" in problem or "\t" in problem:
                problem = "a tab character (YAML indents with spaces only)"
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "a config file"
            return f"{where}: YAML syntax error: {problem}; fix that line"
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a user mistake raised inside the block into ``error: ...`` lines and exit status 2.

    Used around the Hydra task body (so Hydra does not add its own "Error executing job" line)
    and around the Hydra main itself (composition errors). Other exceptions pass unchanged.
    """
    try:
        yield
    except Exception as exc:
        messages = user_messages(exc)
        if messages is None:
            raise
        from framework import distributed

        if distributed.is_main():  # torchrun: every rank finds the same mistake; one says it
            for message in messages:
                print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
