"""Checkpoints: written atomically (temporary file, then rename), read without running code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from framework.loggers import atomic_file


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` to ``path`` atomically.

    The file is written to ``<path>.tmp`` in the same folder, flushed to disk, then renamed
    over ``path`` (``os.replace``), so a run killed mid-write leaves the previous file intact.

    Args:
        state: tensors, numbers, strings, lists and dicts only (loadable with ``weights_only``).
        path: destination file; its folder is created when missing.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``, disk full), with ``filename`` = ``path``;
            the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # PyTorch >= 2.6
        from torch.utils.serialization import config
    except ImportError:
        config = None
    crc_off = config is not None and not config.save.compute_crc32
    if crc_off:  # someone switched PyTorch's CRC-32 off; our checkpoints carry it (verify_checkpoint reads it)
        config.save.compute_crc32 = True
    try:
        with atomic_file(path, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(state, sink)
            except RuntimeError:  # torch's zip writer reports a failed write as "unexpected pos"
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
    finally:
        if crc_off:
            config.save.compute_crc32 = False


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """Give ``path`` the bytes of the checkpoint ``source`` (written by :func:`save_checkpoint`),
    atomically: a hard link ``<path>.tmp`` to the same data (no copy, nothing rewritten; the data
    were made durable when ``source`` was written) renamed over ``path``. Where the filesystem has
    no hard links, the bytes are copied and flushed to disk. ``source`` is later replaced by a new
    file, never changed in place, so ``path`` keeps these bytes.

    Raises:
        OSError: the link or the copy failed (disk full), with ``filename`` = ``path``; the
            temporary file is removed and ``path`` keeps its previous content.
    """
    import shutil

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network or FUSE filesystems): a real copy
            with open(source, "rb") as src, atomic_file(path, "wb") as f:
                shutil.copyfileobj(src, f)
                f.flush()
                os.fsync(f.fileno())
            return
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(path)
        raise


class _Sink:
    """A binary file as ``torch.save`` writes to it, keeping the first ``OSError`` of a write
    (disk full) that torch's zip writer would otherwise turn into a ``RuntimeError``."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def verify_checkpoint(path: str | Path) -> None:
    """Check every record of a checkpoint against the CRC-32 that ``torch.save`` stored for it.

    ``torch.save`` writes a zip archive with a CRC-32 per record, but ``torch.load`` does not
    check them, so a flipped byte in tensor data would load silently; Python's
    :meth:`zipfile.ZipFile.testzip` reads every record and compares.

    Args:
        path: file written by ``torch.save`` (zip format, the default since PyTorch 1.6).

    Raises:
        ValueError: the file is not a zip archive, or a record fails its CRC (corrupt file).
    """
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError("not a torch.save zip archive (truncated, or another format)")
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"record {bad} fails its CRC-32 check (the file is corrupt)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify a checkpoint's CRCs, then read it with ``torch.load(weights_only=True)`` (no pickled
    code is run).

    Args:
        path: file written by :func:`save_checkpoint`.
        map_location: device to load tensors onto.

    Returns:
        The saved dict.

    Raises:
        ValueError: corrupt or truncated file (see :func:`verify_checkpoint`).
        pickle.UnpicklingError: the file holds objects other than tensors and containers.
    """
    verify_checkpoint(path)
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every random stream a run draws from: Python, NumPy, torch CPU and CUDA (if any).

    Returns:
        Tensors, ints and floats only (loadable with ``weights_only=True``).
    """
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(path: str | Path) -> tuple[Path, Path]:
    """The checkpoint file and the run folder that ``resume=<path>`` names.

    Args:
        path: a run folder (its ``checkpoints/last.pt`` is used) or a checkpoint file inside a
            run folder's ``checkpoints/``.

    Returns:
        ``(checkpoint file, run folder)``.

    Raises:
        ConfigError: the path or the checkpoint does not exist.
    """
    from framework.errors import ConfigError

    p = Path(path).expanduser()
    file = p / "checkpoints" / "last.pt" if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"resume={path}: no checkpoint there (expected a run folder with checkpoints/last.pt "
                          "or a .pt file); check the path")
    folder = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    return file, folder


def read_resume_checkpoint(file: Path, key: str) -> dict[str, Any]:
    """Load a checkpoint for resuming, turning unreadable files into one-line errors.

    Raises:
        ConfigError: the file is truncated, corrupt, not a checkpoint, or holds pickled code
            (refused by ``weights_only=True``).
    """
    from framework.errors import ConfigError, first_line

    import pickle

    try:
        state = load_checkpoint(file)
    except pickle.UnpicklingError:  # torch's own text advises weights_only=False: never pass that on
        raise ConfigError(f"{key}={file}: holds pickled Python objects besides tensors and plain values, which could "
                          "run code when loaded; refused. Point resume at a checkpoint this framework wrote")
    except Exception as exc:  # truncated, corrupt, text: never a traceback
        raise ConfigError(f"{key}={file}: not a readable checkpoint ({type(exc).__name__}: {first_line(exc)}); "
                          "point resume at a checkpoint this framework wrote")
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ConfigError(f"{key}={file}: not a checkpoint of this framework (no model/step); check the path")
    return state


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (``ignore``: key prefixes)."""
    from framework.config import flatten

    a, b = flatten(saved), flatten(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [k for k in keys if not any(k == i or k.startswith(i + ".") for i in ignore)]
