"""Training checkpoints: the files, pruning, RNG states, spec checks; model loaders ignore the state."""

import os
import random

import numpy as np
import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from emtools.train import state

SPEC = resolve_spec("rsunet", ["widths=2,4", "heads=boundary:1"])


def _draws():
    return random.random(), float(np.random.random()), float(torch.rand(()))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = state.rng_state()
    expected = _draws()
    path = str(tmp_path / "s.pt")
    torch.save({"rng": saved}, path)
    loaded = torch.load(path, weights_only=True)["rng"]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state.set_rng_state(loaded)
    assert _draws() == expected


def test_step_files_are_pruned_and_last_is_the_newest(tmp_path):
    model = build_model(SPEC, seed=0)
    run = str(tmp_path)
    for step in (2, 4, 6):
        with torch.no_grad():
            next(model.parameters()).fill_(step)
        last = state.write_checkpoint(run, step, model, SPEC, {"step": step}, {"step": step, "optimizer": {}}, keep=2)
    assert [s for s, _ in state.step_files(run)] == [4, 6]
    assert os.path.samefile(last, os.path.join(run, "step_6.pt"))
    loaded, spec, extra = load_model(last)  # the model loader ignores the training state
    assert spec == SPEC and extra == {"step": 6} and float(next(loaded.parameters()).detach().flatten()[0]) == 6.0
    assert read_checkpoint(last)["training"] == {"step": 6, "optimizer": {}}
    assert not [n for n in os.listdir(run) if n.startswith(".")]  # no temporaries left


def test_keep_zero_writes_only_last(tmp_path):
    state.write_checkpoint(str(tmp_path), 3, build_model(SPEC), SPEC, {}, {"step": 3}, keep=0)
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_a_checkpoint_of_another_spec_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, build_model(SPEC), SPEC, {}, {"optimizer": {}, "config": {}, "step": 1})
    payload = state.read_resume(path)
    state.check_same_spec(payload, SPEC, path)
    other = resolve_spec("rsunet", ["widths=2,8", "heads=boundary:1"])
    with pytest.raises(EmError, match=r"different model \(widths: \[2,4\] vs \[2,8\]\)"):
        state.check_same_spec(payload, other, path)


def test_resuming_from_a_model_only_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, build_model(SPEC), SPEC, {})
    with pytest.raises(EmError, match="no training state"):
        state.read_resume(path)


def test_a_killed_runs_temporaries_are_removed_and_live_ones_kept(tmp_path):
    """A SIGKILL between writing a checkpoint and renaming it leaves .NAME.pt.PID[.X].tmp; the next
    run in the folder removes those of dead processes only (and nothing else)."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    names = {f".last.pt.{dead}.tmp": False, f".step_8.pt.{dead}.k2j_x9.tmp": False,
             f".last.pt.{os.getpid()}.tmp": True, f".step_8.pt.{os.getpid()}.abc.tmp": True,
             "step_8.pt": True, ".notes.txt": True, f".frags.h5.{dead}.tmp": True}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(state.remove_stale_temporaries(str(tmp_path))) == sorted(n for n, kept in names.items() if not kept)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, kept in names.items() if kept)


def test_checkpoint_temporaries_carry_the_writers_pid(tmp_path, monkeypatch):
    from emtools.models import checkpoint

    seen = []
    real = checkpoint.tempfile.mkstemp
    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", lambda **kw: seen.append(kw["prefix"]) or real(**kw))
    spec = resolve_spec("rsunet", ["widths=4,8", "depth=2"])
    checkpoint.save_checkpoint(str(tmp_path / "a.pt"), build_model(spec), spec)
    assert seen == [f".a.pt.{os.getpid()}."] and state.TEMPORARY.match(f".a.pt.{os.getpid()}.q1w2e3.tmp")
