"""Data-parallel training under ``torchrun``: the environment, the process group, DDP.

``torchrun`` (one node or several) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; nothing here picks a port. Without them the same code runs one process.
The backend is gloo on CPU and NCCL on GPU (each rank on ``cuda:LOCAL_RANK``). Only rank 0
writes checkpoints, metrics and plots.

    torchrun --nproc-per-node=4 -m emtools.cli.train --config c.yaml -o run/
    torchrun --nnodes=2 --node-rank=$N --rdzv-endpoint=$HOST:29400 --nproc-per-node=8 \\
        -m emtools.cli.train --config c.yaml -o run/         # static rendezvous: rank 0 on node 0
    torchrun --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=$HOST:29400 --rdzv-id=$JOB \\
        --nproc-per-node=8 -m emtools.cli.train --config c.yaml -o run/   # c10d: rank 0 on any node

``RANK`` is global across the nodes (rank 0 of the whole job writes; ``LOCAL_RANK`` only picks
the GPU), and the ranks split one global batch of ``data.batch_size x WORLD_SIZE`` samples
(:mod:`emtools.train.sampling`). On several nodes every node reads the data at the same paths,
and the run folder belongs on a shared file system: rank 0 may be on any node, and ``--resume``
reads ``last.pt`` on every rank.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch

from emtools.errors import EmError
from emtools.ranks import Ranks
from emtools.ranks import select_device as ranks_select_device

# The torchrun environment (emtools.ranks.ranks_from_env) and the device are shared with em-predict.


def select_device(requested: str, env: Ranks) -> torch.device:
    """``cpu``, or ``cuda:LOCAL_RANK`` (``auto``: when CUDA is available)."""
    return ranks_select_device(requested, env.local_rank, option="train.device")


def init_process_group(env: Ranks, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the other ranks (env:// rendezvous: MASTER_ADDR/MASTER_PORT from torchrun)."""
    if not env.distributed or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device
    try:
        torch.distributed.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                                             world_size=env.world_size,
                                             timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise EmError(f"cannot join the other ranks ({backend}): {' '.join(str(exc).split())[:200]}") from None


def destroy(env: Ranks) -> None:
    if env.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model: torch.nn.Module, env: Ranks, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """DistributedDataParallel over the ranks (the model itself in a single process)."""
    if sync_batchnorm:
        if device.type != "cuda":
            raise EmError("train.sync_batchnorm needs CUDA devices; on CPU use model.norm=group or instance")
        if env.distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def all_reduce_sum(values: torch.Tensor, env: Ranks) -> torch.Tensor:
    """The element-wise sum over the ranks (the tensor itself in a single process)."""
    if env.distributed:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values


def gather_objects(obj: Any, env: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: Ranks) -> None:
    if env.distributed:
        torch.distributed.barrier()
