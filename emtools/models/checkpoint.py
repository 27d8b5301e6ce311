"""Self-describing checkpoints: the model spec travels with the weights.

A checkpoint is a ``torch.save`` dict::

    {"format": "emtools-model", "format_version": 1, "emtools_version": "...",
     "spec": {...ModelSpec.to_dict()...}, "state_dict": {...}, "extra": {...},
     "training": {...}}   # optional: em-train's state for an exact resume (optimizer, RNGs, ...)

so :func:`load_model` rebuilds the network from the file alone (it ignores ``training``).
Writing is atomic (a temporary file in the destination folder, then ``os.replace``): an
interrupted save leaves the old file or none. Loading uses ``weights_only=True``, so a
checkpoint cannot run code.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import torch

from emtools import __version__
from emtools.errors import EmError
from emtools.models import build_model
from emtools.models.spec import ModelSpec, spec_from_dict

FORMAT = "emtools-model"
FORMAT_VERSION = 1


def save_checkpoint(path: str, model: torch.nn.Module, spec: ModelSpec, extra: dict | None = None,
                    training: dict | None = None) -> str:
    """Write ``model``'s weights with ``spec`` and ``extra`` (JSON-like: step, loss, ...) to ``path``.

    ``training`` (tensors, numbers, strings, lists and dicts only) is stored beside them for
    resuming; readers that only want the model never look at it.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emtools_version": __version__,
        "spec": spec.to_dict(),
        # Plain contiguous CPU tensors: loadable on any device, whatever the training memory format.
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    if training is not None:
        payload["training"] = training
    folder = os.path.dirname(os.path.abspath(path))
    # the pid in the name lets a later run tell a killed run's temporary from a live one's
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str) -> dict[str, Any]:
    """The raw checkpoint dict, with one-line errors for files that are not ours or are damaged."""
    if not os.path.exists(path):
        raise EmError(f"checkpoint not found ({path})")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols in damaged files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmError(f"not a readable emtools checkpoint (truncated or not a torch file: {first[:120]}) ({path})") from None
    except Exception as exc:  # weights_only refuses pickles of other objects with its own error types
        raise EmError(f"not an emtools checkpoint ({type(exc).__name__}) ({path})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EmError(f"not an emtools model checkpoint (no '{FORMAT}' header) ({path})")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise EmError(f"checkpoint format {payload.get('format_version')} is newer than this emtools "
                      f"reads ({FORMAT_VERSION}); upgrade emtools ({path})")
    if not isinstance(payload.get("spec"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise EmError(f"checkpoint lacks its spec or weights ({path})")
    return payload


def saved_spec(payload: dict) -> dict[str, Any]:
    """The spec dict of a checkpoint read by :func:`read_checkpoint`, as today's spec keys read it.

    Checkpoints from before ``out_kernel`` existed used ``embed_kernel`` for the transposed output
    conv (the default is now that kernel rounded up to a multiple of the stride)."""
    spec = dict(payload["spec"])
    if spec.get("transposed_out") and "out_kernel" not in spec:
        spec["out_kernel"] = spec.get("embed_kernel", list(ModelSpec.embed_kernel))
    return spec


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelSpec, dict]:
    """Rebuild the model from the checkpoint's spec, load its weights; returns (model, spec, extra)."""
    payload = read_checkpoint(path)
    spec = spec_from_dict(saved_spec(payload), where=path)
    model = build_model(spec, seed=None)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise EmError(f"checkpoint weights do not match its spec: {detail} ({path})") from None
    return model.to(device), spec, dict(payload.get("extra") or {})
