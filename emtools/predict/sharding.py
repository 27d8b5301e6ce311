"""Sharing work across ``torchrun`` ranks (see :mod:`emtools.ranks`: rank, device, one owner per item).

Work items (chunk files, or the blocks of one big volume) are dealt round-robin, so no two ranks
ever write the same file, and every rank knows who owns what without talking to the others.

For one big volume, the ranks send their finished blocks to rank 0, which alone writes the
output (:class:`Group`: a gloo process group, CPU tensors, on GPU nodes too, since the blocks
travel through host memory to the writer anyway).

On several nodes (``torchrun --nnodes N``) ranks are global: rank 0 of the whole job, on
whichever node the rendezvous puts it, writes a single volume; with several inputs each rank
writes its own files, so the output folder should be one shared file system path on every node
(otherwise each node's folder holds only the files of its own ranks). Every node reads the
checkpoint and the inputs at the same paths.
"""

from __future__ import annotations

import datetime
import os
from typing import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.ranks import Ranks, ranks_from_env, select_device

__all__ = ["Group", "Ranks", "ranks_from_env", "select_device"]


class Group:
    """A gloo process group for the ranks of one torchrun job (a no-op for a single process).

    ``send``/``recv`` move numpy arrays whose shape and dtype both sides already know.
    """

    def __init__(self, ranks: Ranks, timeout_s: float = 24 * 3600.0):
        self.ranks = ranks
        self.timeout_s = timeout_s
        self._dist = None

    def __enter__(self) -> "Group":
        if not self.ranks.distributed:
            return self
        import torch.distributed as dist

        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise EmError(f"WORLD_SIZE={self.ranks.world_size} but {' and '.join(missing)} not set: start the ranks with torchrun")
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.ranks.rank, world_size=self.ranks.world_size,
                                    timeout=datetime.timedelta(seconds=self.timeout_s))
        self._dist = dist
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._dist is not None and self._dist.is_initialized():
            if exc_type is None:
                self._dist.barrier()
            self._dist.destroy_process_group()
        return False

    def send(self, array: np.ndarray, dest: int) -> None:
        import torch

        self._dist.send(torch.from_numpy(np.ascontiguousarray(array)), dst=dest)

    def recv(self, shape: Sequence[int], dtype, source: int) -> np.ndarray:
        import torch

        out = np.empty(tuple(shape), dtype=dtype)
        self._dist.recv(torch.from_numpy(out), src=source)
        return out
