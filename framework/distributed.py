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


def is_distributed_launch() -> bool:
    """Whether the environment describes a data-parallel run of more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return _submitit_tasks() > 1


def init() -> bool:
    """Join the process group the environment describes, once.

    torchrun's variables are used as they are; in a submitit job with several tasks they are
    first exported from submitit's (``TorchDistributedEnvironment().export``, the master port
    derived from the job id) and, unless ``OMP_NUM_THREADS`` is set, each task takes its share
    of the cores it sees (``torch.set_num_threads``; torchrun sets ``OMP_NUM_THREADS=1``). On
    CUDA each process takes GPU ``LOCAL_RANK`` (GPU 0 when it sees only one).

    Returns:
        True when this call initialised the group (the caller then calls :func:`shutdown`),
        False when there is nothing to do (a single process, or already initialised).

    Raises:
        RuntimeError: the rendezvous failed (from ``torch.distributed.init_process_group``).
    """
    if not is_distributed_launch():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    if not all(k in os.environ for k in TORCHRUN_VARS):
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: the tasks of a node share its cores
            torch.set_num_threads(task_threads())
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(cuda_device_index())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)
    if dist.get_rank() == 0:
        log.info("data-parallel: %d processes (%s)", dist.get_world_size(), backend)
    return True


def task_threads() -> int:
    """Torch threads for one task of a multi-task submitit job: SLURM's ``--cpus-per-task``
    when set (SLURM binds each task to its own CPUs), else the CPUs this process may use
    divided by the tasks on this machine (``LOCAL_WORLD_SIZE``), at least 1."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process). Only where every rank is
    known to arrive: an outcome the ranks agreed on."""
    dist = _dist()
    if dist:
        dist.barrier()


def cuda_device_index() -> int:
    """The GPU of this process: ``LOCAL_RANK`` (modulo the GPUs it sees)."""
    import torch

    return local_rank() % max(torch.cuda.device_count(), 1)


def rank_zero_value(key: str, value_on_main) -> Any:
    """A string chosen by rank 0 and read by every rank through the rendezvous store (a
    key-value get, not a collective, so ranks may ask at different moments and any number of
    times).

    Args:
        key: a name unique within the run.
        value_on_main: called on rank 0 only; returns the string.

    Returns:
        Rank 0's string, on every rank (``value_on_main()`` itself without a process group).

    Raises:
        RuntimeError: rank 0 did not publish the key within the store's timeout (that of
            ``init_process_group``, 30 min by default): rank 0 failed before choosing.
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
    """Sum ``tensor`` over the ranks, in place, and return it (unchanged in a single process).

    A collective: every rank must call it at the same point with a tensor of the same shape and
    dtype. The tensor's device picks the backend of ``cpu:gloo,cuda:nccl`` (NCCL needs CUDA
    tensors; on a CPU-only run Gloo takes CPU tensors).

    Args:
        tensor: any shape, on this rank's device.
    """
    dist = _dist()
    if dist:
        dist.all_reduce(tensor)
    return tensor


def all_gather_float(value: float) -> list[float]:
    """Every rank's ``value`` (a float32 host scalar), in rank order; ``[value]`` in a single
    process. A collective on a CPU tensor (Gloo)."""
    dist = _dist()
    if dist is None:
        return [value]
    import torch

    parts = [torch.zeros((), dtype=torch.float32) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, torch.tensor(value, dtype=torch.float32))
    return [p.item() for p in parts]


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over the ranks, on every rank (one host-side all-reduce on a CPU
    tensor, Gloo); ``value`` in a single process. A collective: every rank calls it at the same
    point."""
    dist = _dist()
    if dist is None:
        return value
    import torch

    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_buffers(module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, as DDP does before
    each training forward, so evaluation and checkpoints see the same model on every rank. A
    collective (one broadcast per buffer, on the buffers' device); nothing in a single process.

    Args:
        module: the plain (unwrapped) model, the same architecture on every rank.
    """
    dist = _dist()
    if dist is None:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, 0)


def quiet_other_ranks() -> None:
    """Ranks other than 0 log errors only, and to the console only (rank 0 keeps ``train.log``
    and says what every rank would)."""
    if is_main():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    for name in ("framework", "__main__", "hydra"):  # their warnings repeat rank 0's
        logging.getLogger(name).setLevel(logging.ERROR)
