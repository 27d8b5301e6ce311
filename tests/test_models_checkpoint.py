"""Self-describing checkpoints: a file alone rebuilds its model; damaged files are one-line errors."""

from __future__ import annotations

import os

import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import load_model, read_checkpoint, save_checkpoint

torch.set_num_threads(1)


@pytest.fixture
def saved(tmp_path):
    spec = resolve_spec("rsunet-efficient", ["widths=4,8,8", "pools=2x2x2,1x2x2", "heads=affinity:3,foreground:1"])
    model = build_model(spec, seed=3)
    # Change the weights and batch-norm statistics so that a rebuild from the seed would differ.
    model.train()(torch.randn(1, 1, 4, 32, 32))
    with torch.no_grad():
        model.out.weight.mul_(1.5)
    path = str(tmp_path / "model.pt")
    save_checkpoint(path, model.to(memory_format=torch.channels_last_3d), spec, {"step": 12, "loss": 0.25})
    return path, model.eval(), spec


def test_round_trip_rebuilds_from_the_file_alone(saved):
    path, model, spec = saved
    loaded, loaded_spec, extra = load_model(path)
    assert loaded_spec == spec and extra == {"step": 12, "loss": 0.25}
    x = torch.randn(1, 1, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert os.listdir(os.path.dirname(path)) == ["model.pt"]  # no temporary file left


def test_a_checkpoint_from_before_out_kernel_keeps_its_kernel(saved, tmp_path):
    """Older checkpoints have no out_kernel: their transposed output conv used embed_kernel (1x5x5)."""
    path, _, spec = saved
    old_spec = resolve_spec("rsunet-efficient", ["widths=4,8,8", "pools=2x2x2,1x2x2", "heads=affinity:3,foreground:1",
                                                 "out_kernel=1x5x5"])
    model = build_model(old_spec, seed=3)
    old_path = str(tmp_path / "old.pt")
    save_checkpoint(old_path, model, old_spec)
    payload = torch.load(old_path, weights_only=True)
    del payload["spec"]["out_kernel"]
    torch.save(payload, old_path)
    loaded, loaded_spec, _ = load_model(old_path)
    assert loaded_spec.transposed_kernel == (1, 5, 5) and loaded.out.kernel_size == (1, 5, 5)
    assert load_model(path)[1].transposed_kernel == spec.transposed_kernel == (1, 6, 6)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    spec = resolve_spec("rsunet", ["widths=4,8", "pools=1x2x2"])
    model = build_model(spec)
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, model, spec, {"version": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(path, model, spec, {"version": 2})
    monkeypatch.undo()
    assert load_model(path)[2] == {"version": 1}  # the old file is intact
    assert os.listdir(tmp_path) == ["m.pt"]


def test_truncated_checkpoint(saved, tmp_path):
    path = saved[0]
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmError, match="not a readable emtools checkpoint"):
        load_model(str(cut))


@pytest.mark.parametrize("content", [b"hello, I am text\n", b""])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(EmError, match="checkpoint"):
        load_model(str(path))


def test_a_torch_file_that_is_not_ours(tmp_path):
    path = str(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(EmError, match="not an emtools model checkpoint"):
        read_checkpoint(path)
    with pytest.raises(EmError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "missing.pt"))


def test_weights_that_do_not_match_the_spec(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    payload["spec"]["widths"] = [4, 8, 16]
    path = str(tmp_path / "mismatch.pt")
    torch.save(payload, path)
    with pytest.raises(EmError, match="do not match its spec"):
        load_model(path)
