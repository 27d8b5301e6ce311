"""torchrun ranks from the environment, round-robin ownership, device choice (em-train and em-predict)."""

import pytest
import torch

from emtools.errors import EmError
from emtools.ranks import Ranks, ranks_from_env, select_device

RENDEZVOUS = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_without_torchrun_one_process():
    assert ranks_from_env({}) == Ranks(0, 1, 0)
    assert Ranks().is_main and not Ranks().distributed


def test_ranks_from_env():
    ranks = ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", **RENDEZVOUS})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.distributed, ranks.is_main) == (3, 4, 1, True, False)
    assert ranks_from_env({"RANK": "2", "WORLD_SIZE": "4", **RENDEZVOUS}) == Ranks(2, 4, 0)  # LOCAL_RANK defaults to 0
    assert ranks_from_env({"RANK": "0", "WORLD_SIZE": "1"}) == Ranks()  # one rank needs no rendezvous


@pytest.mark.parametrize("environ,fragment", [
    ({"RANK": "0"}, "WORLD_SIZE is not set, but RANK is"),
    ({"WORLD_SIZE": "2"}, "RANK is not set, but WORLD_SIZE is"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"RANK": "4", "WORLD_SIZE": "4", **RENDEZVOUS}, "RANK=4 WORLD_SIZE=4"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1", **RENDEZVOUS}, "inconsistent"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT not set"),
])
def test_broken_environments_are_one_line_errors(environ, fragment):
    with pytest.raises(EmError, match=fragment):
        ranks_from_env(environ)


def test_every_item_has_exactly_one_owner():
    items = list(range(11))
    shares = [Ranks(r, 3).mine(items) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == items
    assert all(Ranks(0, 3).owner(i) == r for r, share in enumerate(shares) for i in share)
    assert Ranks().mine(items) == items


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto", 1) == torch.device("cpu")
        with pytest.raises(EmError, match="--device cuda, but this torch"):
            select_device("cuda")
        with pytest.raises(EmError, match="train.device cuda"):
            select_device("cuda", option="train.device")
    with pytest.raises(EmError, match="unknown device 'tpu'"):
        select_device("tpu")
