"""Where a process stands among ``torchrun``'s ranks, and its device: shared by em-train and em-predict.

``torchrun`` (one node or several) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` for every process; nothing here picks a port. Without them the same command
runs as one process (rank 0 of 1). Work items are dealt round-robin (item ``i`` belongs to rank
``i % world_size``), so no two ranks write the same file and no rank needs to ask who owns what.
Each rank uses ``cuda:LOCAL_RANK`` when it runs on GPUs. torch is imported only to pick a device.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence, TypeVar

from emtools.errors import EmError

T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world_size`` (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes shared outputs (checkpoints, metrics, volumes)."""
        return self.rank == 0

    def owner(self, index: int) -> int:
        return index % self.world_size

    def mine(self, items: Sequence[T]) -> list[T]:
        """The items this rank owns (round-robin)."""
        return list(items[self.rank :: self.world_size])


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The :class:`Ranks` that torchrun's variables describe; one-line errors for broken ones.

    ``LOCAL_RANK`` defaults to 0; several ranks also need ``MASTER_ADDR`` and ``MASTER_PORT`` (the
    env:// rendezvous).
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return Ranks()
    values = {}
    for key, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0")):
        text = environ.get(key, default)
        if text is None:
            other = "WORLD_SIZE" if key == "RANK" else "RANK"
            raise EmError(f"{key} is not set, but {other} is: start several processes with torchrun")
        try:
            values[key] = int(text)
        except ValueError:
            raise EmError(f"environment variable {key}={text!r} is not an integer (torchrun sets it)") from None
    ranks = Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size or ranks.local_rank < 0:
        raise EmError(f"inconsistent torchrun environment: RANK={ranks.rank} WORLD_SIZE={ranks.world_size} "
                      f"LOCAL_RANK={ranks.local_rank}")
    if ranks.distributed:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(k)]
        if missing:
            raise EmError(f"WORLD_SIZE={ranks.world_size} but {' and '.join(missing)} not set: "
                          "start several processes with torchrun")
    return ranks


def select_device(requested: str, local_rank: int = 0, option: str = "--device"):
    """``cpu``, ``cuda`` (``cuda:LOCAL_RANK``; an error without CUDA) or ``auto`` (CUDA when there is one).

    ``option`` names the setting in error messages (``--device``, ``train.device``).
    """
    import torch

    if requested not in DEVICES:
        raise EmError(f"unknown device {requested!r} for {option}; choose {', '.join(DEVICES)}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EmError(f"{option} cuda, but this torch ({torch.__version__}) finds no CUDA device; use cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise EmError(f"LOCAL_RANK {local_rank} has no GPU: this node has {count} "
                      f"(start at most {count} processes per node)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
