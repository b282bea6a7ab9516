"""``trainer.lr_doctor``: its keys and the one-line messages of their mistakes."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from framework.errors import suggest

#: The keys of ``trainer.lr_doctor`` and their defaults.
DEFAULTS = {"update_ratio_every_n_steps": 25, "warn": True}
_KEY = "trainer.lr_doctor"


def check_lr_doctor_args(node: Any) -> list[str]:
    """The one-line messages of ``trainer.lr_doctor``'s mistakes (empty when there are none):
    not a mapping nor null, an unknown key (with a suggestion), ``update_ratio_every_n_steps``
    not an integer >= 0, ``warn`` not a boolean. Pure: :func:`framework.config.validate` runs it
    before anything is built.

    Args:
        node: ``trainer.lr_doctor``: a mapping of :data:`DEFAULTS`' keys, or None (off).
    """
    if node is None:
        return []
    if not isinstance(node, Mapping):
        return [f"{_KEY}={node}: must be a mapping {{{', '.join(DEFAULTS)}}} or null (off), "
                f"e.g. {_KEY}.update_ratio_every_n_steps=25"]
    errors = [f"{_KEY}.{k}: not a key of the LR doctor{suggest(k, DEFAULTS)}; use {', '.join(DEFAULTS)}"
              for k in node if k not in DEFAULTS]
    every = node.get("update_ratio_every_n_steps", DEFAULTS["update_ratio_every_n_steps"])
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        errors.append(f"{_KEY}.update_ratio_every_n_steps={every}: must be an integer >= 0 (steps between "
                      "measured update ratios; 0 = never)")
    warn = node.get("warn", DEFAULTS["warn"])
    if not isinstance(warn, bool):
        errors.append(f"{_KEY}.warn={warn}: must be true or false")
    return errors


def settings(node: Any) -> dict[str, Any]:
    """``trainer.lr_doctor`` with its defaults filled in, or None when it is off (null)."""
    return None if node is None else {**DEFAULTS, **dict(node)}
