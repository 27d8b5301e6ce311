"""Training checkpoints and exact resume.

A training checkpoint is a model checkpoint (:mod:`emtools.models.checkpoint`: spec, weights,
``extra`` for em-predict) with the training state beside it under ``training``::

    {"step": N, "optimizer": ..., "schedule": ..., "scaler": ... | None,
     "rng": [per rank: {"python", "numpy", "torch", "cuda"}], "sampler": {"next_index", "world_size"},
     "config": {...resolved config...}, "best": {"metric", "value", "step"} | None}

Files in the run folder (only rank 0 writes; every write is atomic)::

    step_N.pt   every train.checkpoint_every steps; the newest train.keep are kept
    last.pt     the newest checkpoint (a hard link to the newest step_N.pt, or its own file)
    best.pt     weights of the best validation metric (no training state)

Samples are a function of (seed, global index) (:mod:`emtools.train.sampling`), so with the
optimizer, schedule and RNG states restored, a resumed run computes the same steps as one that
was never stopped.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from typing import Any, Mapping

import numpy as np
import torch

from emtools.errors import EmError
from emtools.models.checkpoint import read_checkpoint, save_checkpoint, saved_spec
from emtools.models.spec import ModelSpec, spec_difference, spec_from_dict

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
LAST, BEST = "last.pt", "best.pt"
# .NAME.pt.PID.tmp (a link being put in place) or .NAME.pt.PID.XXXXXXXX.tmp (a checkpoint being written)
TEMPORARY = re.compile(r"^\..+\.pt\.(\d+)(\.[^.]+)?\.tmp$")


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states, in types a ``weights_only`` load accepts."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, key.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def step_files(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the step_N.pt files in ``run_dir``, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), os.path.join(run_dir, name)) for name in os.listdir(run_dir)
             if (m := STEP_FILE.match(name))]
    return sorted(found)


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Delete the checkpoint temporaries of killed runs in ``run_dir`` (those whose process no longer
    exists: a SIGKILL between writing and renaming leaves one); returns their names."""
    from emtools.io.specs import pid_alive

    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(run_dir):
            found = TEMPORARY.match(name)
            if found and not pid_alive(int(found.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(run_dir, name))
                    removed.append(name)
    return removed


def _replace_with_link(source: str, target: str) -> None:
    """Atomically make ``target`` the same file as ``source`` (hard link, or a copy)."""
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_checkpoint(run_dir: str, step: int, model: torch.nn.Module, spec: ModelSpec, extra: dict,
                     training: dict, keep: int) -> str:
    """``step_N.pt`` (when ``keep`` > 0) and ``last.pt`` for ``step``; prunes old step files. Returns last.pt."""
    last = os.path.join(run_dir, LAST)
    if keep <= 0:
        return save_checkpoint(last, model, spec, extra, training)
    path = save_checkpoint(os.path.join(run_dir, f"step_{step}.pt"), model, spec, extra, training)
    _replace_with_link(path, last)
    for _, old in step_files(run_dir)[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old)
    return last


def write_best(run_dir: str, model: torch.nn.Module, spec: ModelSpec, extra: dict) -> str:
    return save_checkpoint(os.path.join(run_dir, BEST), model, spec, extra)


def read_resume(path: str) -> dict[str, Any]:
    """The checkpoint at ``path`` with its training state; one-line errors."""
    payload = read_checkpoint(path)
    training = payload.get("training")
    if not isinstance(training, dict) or "optimizer" not in training or "config" not in training:
        raise EmError(f"{path} holds no training state to resume from (it is a model-only checkpoint; "
                      "use train.init_from to start from its weights)")
    return payload


def check_same_spec(payload: Mapping[str, Any], spec: ModelSpec, path: str,
                    advice: str = "resume with its model settings or start a new run") -> None:
    """One line when the checkpoint's model spec differs from the configured one."""
    difference = spec_difference(spec_from_dict(saved_spec(payload), where=path).to_dict(), spec.to_dict())
    if difference is not None:
        raise EmError(f"{path} is a checkpoint of a different model ({difference}); {advice}")
