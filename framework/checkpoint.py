"""Checkpoints: written atomically (temporary file, then rename), read without running code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` to ``path`` atomically.

    The file is written to ``<path>.tmp`` in the same folder, flushed to disk, then renamed
    over ``path`` (``os.replace``), so a run killed mid-write leaves the previous file intact.

    Args:
        state: tensors, numbers, strings, lists and dicts only (loadable with ``weights_only``).
        path: destination file; its folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no pickled code is run).

    Args:
        path: file written by :func:`save_checkpoint`.
        map_location: device to load tensors onto.

    Returns:
        The saved dict.
    """
    return torch.load(path, map_location=map_location, weights_only=True)
