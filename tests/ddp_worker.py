"""``torchrun --standalone --nproc_per_node=N tests/ddp_worker.py <train.py overrides>``: train.py
with per-rank probes, for the data-parallel tests.

Environment:
    PROBE_DIR: folder for this rank's ``lrs_rank<r>.json`` (step ``k`` and the LR of every
        param group as set on the optimizer when step ``k`` was applied) and
        ``weights_rank<r>.pt`` (the model's parameters and buffers when ``fit`` returned).
    PROBE_RANK: the rank the two faults below hit (default 1).
    PROBE_SIGTERM_AT: that rank sends itself SIGTERM once step ``k`` is applied.
    PROBE_NAN_AT: that rank's training batch of step ``k`` is NaN (once per process).
    PROBE_RAISE_AT: that rank raises ``RuntimeError`` (as a CUDA out-of-memory would) at step ``k``.
"""
import json
import os
import runpy
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework.trainer import Trainer  # noqa: E402

RANK = int(os.environ["RANK"])
PROBE_DIR = Path(os.environ["PROBE_DIR"])
FAULT_RANK = int(os.environ.get("PROBE_RANK", "1"))
SIGTERM_AT = int(os.environ.get("PROBE_SIGTERM_AT", "-1"))
NAN_AT = int(os.environ.get("PROBE_NAN_AT", "-1"))
RAISE_AT = int(os.environ.get("PROBE_RAISE_AT", "-1"))
applied: list = []
injected: list = []

record, fit, to_device = Trainer._record, Trainer.fit, Trainer._to_device


def probed_record(self, epoch, lrs, loss, norm, *rest):  # rest: the clip flag
    applied.append([self.global_step, [g["lr"] for g in self.optimizer.param_groups]])
    record(self, epoch, lrs, loss, norm, *rest)
    if RANK == FAULT_RANK and self.global_step - 1 == SIGTERM_AT:
        os.kill(os.getpid(), signal.SIGTERM)


def probed_to_device(self, x):
    x = to_device(self, x)
    if RANK == FAULT_RANK and self.model.training and self.global_step == RAISE_AT:
        raise RuntimeError(f"out of memory (simulated on rank {RANK})")
    if RANK == FAULT_RANK and self.model.training and self.global_step == NAN_AT and not injected:
        injected.append(self.global_step)
        x = x * float("nan")
    return x


def probed_fit(self):
    try:
        return fit(self)
    finally:
        PROBE_DIR.mkdir(parents=True, exist_ok=True)
        (PROBE_DIR / f"lrs_rank{RANK}.json").write_text(json.dumps(applied))
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   PROBE_DIR / f"weights_rank{RANK}.pt")


Trainer._record, Trainer.fit, Trainer._to_device = probed_record, probed_fit, probed_to_device
sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
