"""Command-line shell around the Hydra main: user mistakes become one line and exit status 2.

Hydra prints composition errors over several lines with a hint about ``HYDRA_FULL_ERROR`` and
exits with 1. :func:`run_cli` lets those errors (and :class:`~framework.config.ConfigError`)
reach it, prints one ``error: <key>=<value>: <fix>`` line each, and exits with status 2. Any
other exception keeps its full traceback (exit status 1).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable

from framework.config import ConfigError, TrainConfig
from framework.registry import available, suggest


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""


def describe(exc: BaseException) -> list[str] | None:
    """One message per user mistake in ``exc``, or None when ``exc`` is not a user mistake."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return exc.messages
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, name = exc.missing_cfg_file.rsplit("/", 1)
        options = available(group) or list(exc.options or [])
        return [f"{group}={name}: no such option{suggest(name, options)}; available: {', '.join(options)}"]
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        append = re.search(r"use \+(\S+)", str(exc))
        if isinstance(cause, ConfigKeyError) and append:
            override = append.group(1)
            key = override.split("=", 1)[0]
            top = [k for k in TrainConfig.__dataclass_fields__]
            return [
                f"{override}: unknown key '{key}'{suggest(key.split('.')[-1], top)}; "
                f"top-level keys are {', '.join(top)} (use +{override} to add a new key on purpose)"
            ]
        merging = re.search(r"Error merging override (\S+)", str(exc))
        where = f"{merging.group(1)}: " if merging else ""
        return [f"{where}{_first_line(cause) or _first_line(exc)}"]
    if isinstance(exc, (OverrideParseException, OmegaConfBaseException)):
        return [_first_line(exc)]
    return None


def run_cli(main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function; report user mistakes on one line each, exit status 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let exceptions reach us, unformatted
    try:
        main()
    except Exception as exc:
        messages = describe(exc)
        if messages is None:
            raise
        for message in messages:
            print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
