"""Data-parallel runs: joining the process group that ``torchrun`` (or a multi-task submitit job)
describes, the rank and world size, and the few collectives the loop needs.

A run started by ``torchrun --nproc_per_node=N train.py ...`` has ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment (PyTorch's ``env://``
rendezvous). A submitit job with ``tasks_per_node > 1`` (Hydra's submitit launchers) has
submitit's own variables, exported to the same names with
``submitit.helpers.TorchDistributedEnvironment``. Either way :func:`init` joins one process group:
``gloo`` on the CPU, ``cpu:gloo,cuda:nccl`` when CUDA is present (NCCL for CUDA tensors, Gloo for
the host-side flags). Without those variables every function here describes a single process
(rank 0 of 1) and nothing is initialised.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

#: Environment variables torchrun sets for every worker (PyTorch's env:// rendezvous).
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _dist():
    """``torch.distributed`` when a process group is up, else None (never imports torch itself)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    dist = _dist()
    return dist.get_rank() if dist else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main() -> bool:
    """Rank 0, the one process that writes the run folder."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _submitit_tasks() -> int:
    """Tasks of the submitit job this process runs in (0 when not in one). Only submitit's own
    jobs count (``SUBMITIT_EXECUTOR``): a plain ``sbatch --ntasks=4`` script that starts one
    ``python train.py`` must not wait for three processes that never come."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 0
    try:
        from submitit import JobEnvironment

        return JobEnvironment().num_tasks
    except (ImportError, RuntimeError):
        return 0


def wanted() -> bool:
    """Whether the environment describes a data-parallel run of more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return _submitit_tasks() > 1


def init() -> bool:
    """Join the process group the environment describes, once.

    torchrun's variables are used as they are; in a submitit job with several tasks they are
    first exported from submitit's (``TorchDistributedEnvironment().export``, the master port
    derived from the job id). On CUDA each process takes GPU ``LOCAL_RANK`` (GPU 0 when it sees
    only one).

    Returns:
        True when this call initialised the group (the caller then calls :func:`shutdown`),
        False when there is nothing to do (a single process, or already initialised).

    Raises:
        RuntimeError: the rendezvous failed (from ``torch.distributed.init_process_group``).
    """
    if not wanted():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    if not all(k in os.environ for k in TORCHRUN_VARS):
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)
    log.info("data-parallel: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def shutdown(barrier: bool = True) -> None:
    """Leave the process group.

    Args:
        barrier: wait for every rank first (after a run that ended normally, so no rank exits
            while rank 0 still writes); False after an error, where another rank may never come.
    """
    dist = _dist()
    if dist:
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def cuda_device_index() -> int:
    """The GPU of this process: ``LOCAL_RANK`` (modulo the GPUs it sees)."""
    import torch

    return local_rank() % max(torch.cuda.device_count(), 1)


def shared(key: str, value_on_main) -> Any:
    """A string chosen by rank 0 and read by every rank through the rendezvous store (no
    collective, so ranks may ask at different moments).

    Args:
        key: a name unique within the run.
        value_on_main: called on rank 0 only; returns the string.
    """
    dist = _dist()
    if dist is None:
        return value_on_main()
    from torch.distributed.distributed_c10d import _get_default_store

    store = _get_default_store()
    if dist.get_rank() == 0:
        value = value_on_main()
        store.set(key, value)
        return value
    return store.get(key).decode()


def all_reduce_sum(tensor):
    """Sum ``tensor`` over the ranks in place and return it (unchanged in a single process)."""
    dist = _dist()
    if dist:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on some rank (one host-side all-reduce)."""
    dist = _dist()
    if dist is None:
        return flag
    import torch

    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, as DDP does before
    each training forward, so evaluation and checkpoints see the same model on every rank."""
    dist = _dist()
    if dist is None:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, 0)


def quiet_other_ranks() -> None:
    """Ranks other than 0 log warnings only, and to the console only (rank 0 keeps ``train.log``)."""
    if is_main():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    for name in ("framework", "__main__"):
        logging.getLogger(name).setLevel(logging.WARNING)
