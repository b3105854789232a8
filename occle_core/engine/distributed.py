"""torch.distributed set-up: one code path for a single process and for any number of ranks under torchrun.

When ``WORLD_SIZE`` is set (torchrun) the process joins an ``env://`` process group (NCCL on CUDA, gloo on CPU);
each rank takes the GPU of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from occle_core.device import resolve_device


def dist_on() -> bool:
    """Whether a process group is initialised (this process is one rank of several)."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist_on():
        dist.barrier()


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the ``env://`` process group when launched by torchrun; pick this rank's device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (see
            :func:`occle_core.device.resolve_device`); ``cuda:N`` is honoured in a single process, under torchrun
            each rank takes ``cuda:LOCAL_RANK``.

    Returns:
        (rank, world_size, device).

    Raises:
        ValueError: a bad device name or CUDA requested where there is none.
    """
    dev = resolve_device(device)
    use_cuda = dev.type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist_on():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    rank = dist.get_rank() if dist_on() else 0
    world = dist.get_world_size() if dist_on() else 1
    if use_cuda and not (dev.index is not None and world == 1):
        dev = torch.device("cuda", local_rank)
    return rank, world, dev
