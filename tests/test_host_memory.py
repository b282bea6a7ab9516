"""The CPU heap keeps what a step frees (trainer.malloc_trim_threshold_mb): glibc's thresholds,
measured by the page faults of a fresh process that frees and allocates the same memory again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from framework.config import validate
from framework.errors import ConfigError
from framework.schedules import Constant, LRPlan
from framework.trainer import Trainer, host_memory
from tests.helpers import compose_cfg

GLIBC = host_memory.is_glibc()

#: 16 tensors of 8 MiB written (each page touched), freed, four times to settle, then four times
#: counted: 4 x 16 x 8 MiB touched in the counted rounds (131072 pages of 4 KiB).
CHURN = """
import importlib.util, resource, sys, torch
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])  # the module alone (no trainer, no timm)
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
done = host_memory.keep_freed_memory(int(sys.argv[1]))
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
PAGES = 4 * 16 * 8 * 2**20 // os.sysconf("SC_PAGE_SIZE")
#: Transparent huge pages on every mapping: a fault then brings in 2 MiB, and the control's count is no page count.
THP_ALWAYS = "[always]" in (Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
                            if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists() else "")


#: Every environment variable with which a user chooses the allocator's behaviour.
ALLOCATOR_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES", "LD_PRELOAD")


def no_allocator_env(monkeypatch) -> None:
    """None of :data:`ALLOCATOR_ENV` set, and no threshold set by an earlier trainer of this process."""
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(host_memory, "_applied", None)


def churn_faults(arg: str, **env: str) -> tuple[bool, int]:
    """(thresholds set, minor page faults of the counted rounds) in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", CHURN, arg, host_memory.__file__], capture_output=True, text=True,
                         check=True, env={**clean, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_kept_heap_touches_freed_memory_again_without_faulting_it_in():
    kept, faults = churn_faults("1024")
    assert kept and faults < 0.05 * PAGES  # the pages the last round freed are reused as they are
    if THP_ALWAYS:
        return
    # The control: the user's MALLOC_TRIM_THRESHOLD_ wins, and at 1 byte (the mmap threshold then fixed at
    # its 128 KiB default) every 8 MiB block is mapped afresh and unmapped: each page touched is a fault.
    # (Under glibc's dynamic defaults the count depends on the heap's history: small blocks allocated above
    # the freed ones keep them from the top, and 0 or every page came out over 12 runs here.)
    chosen, chosen_faults = churn_faults("1024", MALLOC_TRIM_THRESHOLD_="1")
    assert not chosen and chosen_faults > 0.8 * PAGES


def test_a_setting_in_the_environment_is_the_users_choice(monkeypatch):
    no_allocator_env(monkeypatch)
    assert host_memory.user_choice() is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # not the allocator's
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libasan.so")
    assert host_memory.user_choice() is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert host_memory.user_choice() == "LD_PRELOAD"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert host_memory.user_choice() == "GLIBC_TUNABLES"
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert host_memory.user_choice() == "MALLOC_MMAP_MAX_"
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert host_memory.user_choice() == "MALLOC_TOP_PAD_"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert host_memory.user_choice() == "MALLOC_MMAP_THRESHOLD_"
    monkeypatch.setattr(host_memory, "_libc", lambda: pytest.fail("mallopt called against the user's setting"))
    assert host_memory.keep_freed_memory(1024) is False


class FakeLibc:
    """``mallopt`` that records its calls and refuses the parameters in ``refused``."""

    def __init__(self, refused=()):
        self.calls, self.refused = [], refused

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 0 if param in self.refused else 1


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_mmap_threshold_goes_first_and_a_refusal_leaves_the_trim_threshold_alone(monkeypatch):
    no_allocator_env(monkeypatch)
    libc = FakeLibc()
    monkeypatch.setattr(host_memory, "_libc", lambda: libc)
    assert host_memory.keep_freed_memory(512) is True
    assert libc.calls == [(-3, 32 * 2**20), (-1, 512 * 2**20)]  # malloc.h: M_MMAP_THRESHOLD -3, M_TRIM_THRESHOLD -1
    assert host_memory.keep_freed_memory(512) is True and len(libc.calls) == 2  # set once per process
    monkeypatch.setattr(host_memory, "_applied", None)
    libc = FakeLibc(refused=(-3,))  # e.g. an older 32-bit glibc (its cap: 512 KiB)
    monkeypatch.setattr(host_memory, "_libc", lambda: libc)
    assert host_memory.keep_freed_memory(512) is False
    assert libc.calls == [(-3, 32 * 2**20)]  # the trim threshold would switch glibc's dynamic thresholds off


def test_null_after_a_run_set_the_thresholds_warns_that_the_process_keeps_them(monkeypatch, caplog):
    monkeypatch.setattr(host_memory, "_applied", 1024)
    monkeypatch.setattr(host_memory, "_libc", lambda: pytest.fail("nothing to set"))
    with caplog.at_level("WARNING", logger="framework.trainer.host_memory"):
        assert host_memory.keep_freed_memory(None) is False
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.malloc_trim_threshold_mb=null: this process already keeps freed heap memory (up to 1024 MiB, set by "
        "an earlier run in it); glibc cannot go back to its own thresholds"]
    monkeypatch.setattr(host_memory, "_applied", None)
    caplog.clear()
    assert host_memory.keep_freed_memory(None) is False and not caplog.records


@pytest.mark.parametrize("value, shown", [("0", "0"), ("-1", "-1"), ("2048", "2048"), ("1.5", "1.5"), ("true", "True"),
                                         ("big", "'big'"), ("'512'", "'512'")])
def test_a_trim_threshold_out_of_range_is_one_line_before_anything_is_built(value, shown):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(f"trainer.malloc_trim_threshold_mb={value}"))
    assert exc.value.messages == [f"trainer.malloc_trim_threshold_mb={shown}: must be an integer in [1, 2047] (MiB of "
                                  "freed heap memory kept for the next step) or null (glibc's own thresholds)"]
    with pytest.raises(ConfigError):
        host_memory.keep_freed_memory(OmegaConf.select(compose_cfg(f"trainer.malloc_trim_threshold_mb={value}"),
                                                       "trainer.malloc_trim_threshold_mb"))


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
