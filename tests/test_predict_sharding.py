"""The gloo group that carries a single volume's blocks to rank 0 (ranks themselves: test_ranks.py)."""

import pytest

from emtools.errors import EmError
from emtools.predict.sharding import Group, Ranks


def test_group_needs_torchrun_rendezvous(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with Group(Ranks()) as group:  # one process: nothing to set up
        assert group._dist is None
    with pytest.raises(EmError, match="MASTER_ADDR and MASTER_PORT not set: start the ranks with torchrun"):
        with Group(Ranks(0, 2)):
            pass
