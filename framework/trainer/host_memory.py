"""Keeping the CPU heap's freed memory for the next step: glibc's trim and mmap thresholds.

A training step on the CPU frees and allocates the same tensors again (activations, gradients,
the optimizer's temporaries). glibc's malloc, left to its defaults, hands the free memory at the
top of its heap back to the system once it exceeds its trim threshold, and serves blocks above
its mmap threshold with fresh ``mmap`` calls; both thresholds move with what the process frees
(``mallopt(3)``, "dynamic mmap threshold": the mmap threshold rises to the largest mapped block
freed, up to ``DEFAULT_MMAP_THRESHOLD_MAX`` = 32 MiB on 64-bit, the trim threshold to twice it).
Memory handed back is faulted in again, page by page, at the next step: on 2 cores vit_tiny and
resnet18 at batch 64 took 2,700-9,000 minor page faults a step, 2-5% of their time, where a plain
loop in the same process, freeing in another order, took 0-400 (``bench/loop_vs_plain.py``,
BENCHMARKS.md runs AA-AB). Fixed thresholds keep it: the mmap threshold at 32 MiB (the largest
the dynamic one reaches and the largest older glibc accepts: blocks up to it come from the heap,
larger ones are still mapped and unmapped each time) and the trim threshold at
``trainer.malloc_trim_threshold_mb``. The trim threshold is a cut-off, not a cap: once the free
top of the heap exceeds it, glibc hands back all of it. PyTorch's CPU performance tuning guide
gets the effect by replacing the allocator (jemalloc, TCMalloc, through ``LD_PRELOAD``); the
environment variables ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` set the same
thresholds for a whole process.

The setting holds for the rest of the process: glibc cannot switch its dynamic thresholds back
on, so a later ``null`` in the same process (a Hydra multirun on the basic launcher, a notebook)
leaves it as it is, with a warning.
"""
from __future__ import annotations

import ctypes
import logging
import os
from typing import Any, Optional

log = logging.getLogger(__name__)

#: (MiB) ``trainer.malloc_trim_threshold_mb``'s default.
DEFAULT_TRIM_THRESHOLD_MB = 1024
#: ``mallopt`` parameter numbers (glibc's ``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: (bytes) the mmap threshold set: glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` (``4 MiB * sizeof(long)``,
#: 32 MiB on 64-bit), where its dynamic threshold stops.
MMAP_THRESHOLD = 4 * 2**20 * ctypes.sizeof(ctypes.c_long)
#: (MiB) the largest trim threshold ``mallopt`` takes (its value is a C ``int`` of bytes).
TRIM_THRESHOLD_MAX_MB = (2**31 - 1) // 2**20
#: Environment variables that set glibc's thresholds (any of them switches the dynamic ones off).
MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
#: Allocators that replace glibc's when preloaded: then nothing is set.
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied: Optional[int] = None  # (MiB) the trim threshold this process set, once set


def check_malloc_args(malloc_trim_threshold_mb: Any = DEFAULT_TRIM_THRESHOLD_MB) -> list[str]:
    """The one-line message of ``trainer.malloc_trim_threshold_mb`` out of range; pure, so
    :func:`framework.config.validate` reports it before anything is built.

    Args:
        malloc_trim_threshold_mb: (MiB) an integer in ``[1, TRIM_THRESHOLD_MAX_MB]`` or None.

    Returns:
        The messages (empty when the value is fine).
    """
    value = malloc_trim_threshold_mb
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= TRIM_THRESHOLD_MAX_MB):
        return []
    shown = repr(value) if isinstance(value, str) else value  # '512' (a string) is not 512
    return [f"trainer.malloc_trim_threshold_mb={shown}: must be an integer in [1, {TRIM_THRESHOLD_MAX_MB}] (MiB of "
            "freed heap memory kept for the next step) or null (glibc's own thresholds)"]


def is_glibc() -> bool:
    """Whether this process runs on glibc (``confstr(_CS_GNU_LIBC_VERSION)``, which only glibc answers)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # another C library, or no confstr (Windows)
        return False


def user_choice() -> Optional[str]:
    """The environment setting with which the user chose the allocator's behaviour, if any: a
    ``MALLOC_*_`` threshold (:data:`MALLOC_VARIABLES`), a ``glibc.malloc`` tunable or a preloaded
    allocator (jemalloc, TCMalloc, mimalloc)."""
    for name in MALLOC_VARIABLES:
        if name in os.environ:
            return name
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = os.environ.get("LD_PRELOAD", "")
    return "LD_PRELOAD" if any(name in preload for name in OTHER_ALLOCATORS) else None


def keep_freed_memory(trim_threshold_mb: Optional[int]) -> bool:
    """Set this process's glibc malloc to serve blocks up to :data:`MMAP_THRESHOLD` (32 MiB) from
    its heap (``mallopt(M_MMAP_THRESHOLD)``) and to keep the free memory at the top of its heap
    while it is at most ``trim_threshold_mb`` MiB (``mallopt(M_TRIM_THRESHOLD)``), so a step reuses
    the pages the previous step freed.

    It holds for the rest of the process (module docstring). DataLoader workers started by
    ``fork`` inherit it, each then keeping its own freed memory; workers started by ``spawn`` or
    ``forkserver`` do not. Nothing is set with ``trim_threshold_mb`` None, under another C library
    (macOS, musl), or when the environment already chose (:func:`user_choice`); a refused mmap
    threshold leaves glibc's defaults untouched.

    Args:
        trim_threshold_mb: (MiB) at most :data:`TRIM_THRESHOLD_MAX_MB`; None = leave glibc's
            thresholds as they are (its defaults, unless this process set them already: a warning).

    Returns:
        True when both thresholds were set (now or by an earlier call with the same value).

    Raises:
        ConfigError: ``trim_threshold_mb`` out of range (:func:`check_malloc_args`): set an
            integer number of MiB in range, or null.
    """
    global _applied
    from framework.errors import ConfigError  # (framework.errors imports nothing of the trainer)

    errors = check_malloc_args(trim_threshold_mb)
    if errors:
        raise ConfigError(errors)
    if trim_threshold_mb is None:
        if _applied is not None:
            log.warning("trainer.malloc_trim_threshold_mb=null: this process already keeps freed heap memory (up to "
                        "%d MiB, set by an earlier run in it); glibc cannot go back to its own thresholds", _applied)
        else:
            log.debug("malloc: glibc's own thresholds kept (trainer.malloc_trim_threshold_mb=null)")
        return False
    if _applied == trim_threshold_mb:
        return True
    if not is_glibc():
        return False
    chosen = user_choice()
    if chosen is not None:
        log.debug("malloc thresholds left as %s sets them", chosen)
        return False
    mallopt = _libc().mallopt
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):  # refused: no trim threshold either (it would switch the
        log.debug("malloc: mmap threshold %d refused; glibc's thresholds left as they are", MMAP_THRESHOLD)
        return False  # dynamic thresholds off and leave blocks over 128 KiB mapped each time)
    done = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold_mb * 2**20))
    if done:
        _applied = trim_threshold_mb
        log.info("CPU heap: freed memory kept for the next step while under %d MiB, blocks up to %d MiB from the heap "
                 "(trainer.malloc_trim_threshold_mb; for the rest of this process)", trim_threshold_mb,
                 MMAP_THRESHOLD // 2**20)
    return done


def _libc() -> ctypes.CDLL:
    """This process's C library (glibc: :func:`is_glibc`), ``mallopt`` typed ``(int, int) -> int``."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc
