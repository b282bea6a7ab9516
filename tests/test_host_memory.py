"""The CPU heap keeps what a step frees (trainer.malloc_trim_threshold_mb): glibc's thresholds,
measured by the page faults of a fresh process that frees and allocates the same memory again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from framework.config import validate
from framework.errors import ConfigError
from framework.schedules import Constant, LRPlan
from framework.trainer import Trainer, host_memory
from tests.helpers import compose_cfg

GLIBC = host_memory.is_glibc()

#: 16 tensors of 8 MiB written (each page touched), freed, four times to settle, then four times
#: counted: 4 x 16 x 2048 = 131072 pages touched in the counted rounds. Under glibc's defaults the
#: 128 MiB freed at the top of the heap exceed its trim threshold whatever the process did before
#: (the dynamic threshold is twice the mmap threshold, which stops at 32 MiB), so it is handed back.
CHURN = """
import resource, sys, torch
from framework.trainer import host_memory
arg = sys.argv[1]
done = host_memory.keep_freed_memory(None if arg == "none" else int(arg))
def churn():
    tensors = [torch.ones(2**21) for _ in range(16)]
    del tensors
for _ in range(4):
    churn()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    churn()
print(done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""
PAGES = 4 * 16 * 2048


def churn_faults(arg: str, **env: str) -> tuple[bool, int]:
    """(thresholds set, minor page faults of the counted rounds) in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                                               "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", CHURN, arg], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_kept_heap_touches_freed_memory_again_without_faulting_it_in_and_glibcs_defaults_do_not():
    kept, faults = churn_faults("1024")
    assert kept and faults < 0.05 * PAGES  # the pages the last round freed are reused as they are
    default, default_faults = churn_faults("none")  # the control: glibc's own thresholds hand it back
    assert not default and default_faults > 0.8 * PAGES
    chosen, chosen_faults = churn_faults("1024", MALLOC_TRIM_THRESHOLD_="1")  # the user's setting wins:
    assert not chosen and chosen_faults > 0.8 * PAGES  # 1 byte, everything handed back at once


def test_a_setting_in_the_environment_is_the_users_choice(monkeypatch):
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert host_memory.user_choice() is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # not the allocator's
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libasan.so")
    assert host_memory.user_choice() is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert host_memory.user_choice() == "LD_PRELOAD"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert host_memory.user_choice() == "GLIBC_TUNABLES"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert host_memory.user_choice() == "MALLOC_MMAP_THRESHOLD_"
    assert host_memory.keep_freed_memory(1024) is False


@pytest.mark.parametrize("value", [0, -1, 2048, 1.5, True, "big"])
def test_a_trim_threshold_out_of_range_is_one_line_before_anything_is_built(value):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(f"trainer.malloc_trim_threshold_mb={value}"))
    assert exc.value.messages == [f"trainer.malloc_trim_threshold_mb={value}: must be an integer in [1, 2047] (MiB of "
                                  "freed heap memory kept for the next step) or null (glibc's own thresholds)"]
    with pytest.raises(ConfigError):
        host_memory.keep_freed_memory(value)


@pytest.mark.parametrize("value", [None, 1, 2047])
def test_a_trim_threshold_in_range_passes(value):
    assert host_memory.check_malloc_args(value) == []


def test_a_cpu_trainer_sets_the_threshold_it_is_given_once_built(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", calls.append)
    data = TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    model = nn.Linear(2, 2)
    for value in (512, None):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), LRPlan(Constant(2), 2, 2),
                (DataLoader(data, batch_size=2), DataLoader(data, batch_size=2)), tmp_path, torch.device("cpu"),
                progress_bar=False, malloc_trim_threshold_mb=value)
    assert calls == [512, None]
