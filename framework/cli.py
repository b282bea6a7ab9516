"""Command-line shell around the Hydra main: user mistakes become one line and exit status 2.

Hydra prints composition errors over several lines with a hint about ``HYDRA_FULL_ERROR`` and
exits with 1. :func:`run_cli` lets those errors (and :class:`~framework.config.ConfigError`)
reach it, prints one ``error: <key>=<value>: <fix>`` line each, and exits with status 2. Any
other exception keeps its full traceback (exit status 1).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Callable, Iterator

from framework.config import ConfigError, TrainConfig
from framework.registry import available, suggest


#: Names users bring from other tools, mapped to ours.
ALIASES = {"lr": "lr0", "learning_rate": "lr0", "max_epochs": "epochs", "warmup": "warmup_epochs",
           "min_lr": "lrf", "final_lr": "lrf", "bs": "batch_size", "batch": "batch_size"}


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""


def describe(exc: BaseException) -> list[str] | None:
    """One message per user mistake in ``exc``, or None when ``exc`` is not a user mistake."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return exc.messages
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, name = exc.missing_cfg_file.rsplit("/", 1)
        options = available(group) or list(exc.options or [])
        return [f"{group}={name}: no such option{suggest(name, options)}; available: {', '.join(options)}"]
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        append = re.search(r"use \+(\S+)", str(exc))
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and append:
            override = append.group(1)
            key = override.split("=", 1)[0]
            if "." in key:
                parent = getattr(cause, "parent_node", None)
                keys = [k for k in (parent.keys() if parent is not None else []) if not str(k).startswith("_")]
                leaf = key.rsplit(".", 1)[1]
                return [f"{override}: unknown key '{key}'{suggest(leaf, keys)}; "
                        f"{key.rsplit('.', 1)[0]} has {', '.join(map(str, keys))}"]
            top = list(TrainConfig.__dataclass_fields__)
            hint = f" (did you mean {ALIASES[key]}?)" if key in ALIASES else suggest(key, top)
            return [f"{override}: unknown key '{key}'{hint}; top-level keys are {', '.join(top)}"]
        merging = re.search(r"Error merging override (\S+)", str(exc))
        where = f"{merging.group(1)}: " if merging else ""
        return [f"{where}{_first_line(cause) or _first_line(exc)}"]
    if isinstance(exc, (OverrideParseException, OmegaConfBaseException)):
        return [_first_line(exc)]
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
        messages = describe(exc)
        if messages is None:
            raise
        for message in messages:
            print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def run_task(cfg) -> float:
    """Body of the Hydra main: train, and turn the ways a run can end into exit statuses.

    A user mistake prints ``error: ...`` lines and exits with status 2 (before training). A
    diverged run prints one ``diverged: ...`` line; alone it exits with status 1, inside a
    multirun it returns 0.0 (the worst accuracy) so the sweep goes on. Ctrl-C exits with 130
    after the run folder is written (``status: stopped``).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from framework.run import train
    from framework.trainer import Diverged

    try:
        with exit_on_user_error():
            return train(cfg)
    except Diverged as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return 0.0
        sys.exit(1)
    except KeyboardInterrupt:
        print("stopped: interrupted; summary.json says status: stopped", file=sys.stderr)
        sys.exit(130)


def run_cli(main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function; report composition mistakes on one line each, exit 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let exceptions reach us, unformatted
    with exit_on_user_error():
        main()
