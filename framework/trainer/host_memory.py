"""Keeping the CPU heap's freed memory for the next step: glibc's trim and mmap thresholds.

A training step on the CPU frees and allocates the same tensors again (activations, gradients,
the optimizer's temporaries). glibc's malloc, left to its defaults, returns a freed block at the
top of its heap to the system once the top exceeds its trim threshold, and serves blocks above its
mmap threshold with fresh ``mmap`` calls; both thresholds move with what the process frees
(``mallopt(3)``, "dynamic mmap threshold"). Memory handed back is faulted in again, page by page,
at the next step: on 2 cores, vit_tiny at batch 64 took up to 3,900 minor page faults a step (a
plain loop in the same process, freeing in another order, 0-400) and trained 3-4% slower
(``bench/loop_vs_plain.py``, BENCHMARKS.md). Fixed thresholds keep it: ``M_TRIM_THRESHOLD`` (free memory the
heap keeps at its top) and ``M_MMAP_THRESHOLD`` at glibc's largest, 32 MiB (blocks up to that size
come from the heap, larger ones are still mapped and unmapped each time). PyTorch's performance
tuning guide gets the same effect by replacing the allocator (jemalloc, TCMalloc, through
``LD_PRELOAD``); the environment variables ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_``
set the same thresholds for a whole process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any, Optional

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers (glibc's ``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: (bytes) glibc's largest mmap threshold on a 64-bit system (``HEAP_MAX_SIZE / 2``).
MMAP_THRESHOLD_MAX = 32 * 2**20
#: (MiB) the largest trim threshold ``mallopt`` takes (its value is a C ``int`` of bytes).
TRIM_THRESHOLD_MAX_MB = (2**31 - 1) // 2**20
#: Allocators that replace glibc's when preloaded: then nothing is set.
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def check_malloc_args(malloc_trim_threshold_mb: Any = 1024) -> list[str]:
    """The one-line message of ``trainer.malloc_trim_threshold_mb`` out of range (empty when it is
    fine): an integer in ``[1, TRIM_THRESHOLD_MAX_MB]`` or None."""
    value = malloc_trim_threshold_mb
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= TRIM_THRESHOLD_MAX_MB):
        return []
    return [f"trainer.malloc_trim_threshold_mb={value}: must be an integer in [1, {TRIM_THRESHOLD_MAX_MB}] (MiB of "
            "freed heap memory kept for the next step) or null (glibc's own thresholds)"]


def is_glibc() -> bool:
    """Whether this process runs on glibc (``confstr(_CS_GNU_LIBC_VERSION)``, which only glibc answers)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # another C library, or no confstr (Windows)
        return False


def user_choice() -> Optional[str]:
    """The environment setting with which the user chose the allocator's behaviour, if any: a
    ``MALLOC_*_`` threshold, a ``glibc.malloc`` tunable or a preloaded allocator (jemalloc, TCMalloc,
    mimalloc)."""
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"):
        if name in os.environ:
            return name
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = os.environ.get("LD_PRELOAD", "")
    return "LD_PRELOAD" if any(name in preload for name in OTHER_ALLOCATORS) else None


def keep_freed_memory(trim_threshold_mb: Optional[int]) -> bool:
    """Set this process's glibc malloc to keep up to ``trim_threshold_mb`` MiB of freed memory at
    the top of its heap (``mallopt(M_TRIM_THRESHOLD)``) and to serve blocks up to 32 MiB from the
    heap (``mallopt(M_MMAP_THRESHOLD)``), so a step reuses the pages the previous step freed.

    Processes forked later (DataLoader workers) inherit it. Nothing is set with
    ``trim_threshold_mb`` None, under another C library (macOS, musl), or when the environment
    already chose (:func:`user_choice`).

    Args:
        trim_threshold_mb: (MiB) freed memory the heap keeps, at most :data:`TRIM_THRESHOLD_MAX_MB`;
            None = leave glibc's defaults.

    Returns:
        True when both thresholds were set.

    Raises:
        ConfigError: ``trim_threshold_mb`` out of range (:func:`check_malloc_args`).
    """
    errors = check_malloc_args(trim_threshold_mb)
    if errors:
        from framework.errors import ConfigError

        raise ConfigError(errors)
    if trim_threshold_mb is None or not is_glibc():
        return False
    chosen = user_choice()
    if chosen is not None:
        log.debug("malloc thresholds left as %s sets them", chosen)
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    done = bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold_mb * 2**20)) and bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
    log.debug("malloc: freed heap memory kept up to %d MiB, blocks up to 32 MiB from the heap: %s", trim_threshold_mb,
              "set" if done else "refused")
    return done
