"""Starting points for training: the checkpoints that ship with emtools, and fine-tuning from any.

``em-train --init NAME_OR_PATH`` (config key ``train.init_from``) starts from a checkpoint's
weights instead of random ones. ``NAME`` is a key of :data:`PRETRAINED` (``em-train --help`` lists
them); anything else is a checkpoint path. The run takes the checkpoint's model, targets and crop
size as its defaults (:func:`config_base`), so a config needs only the data; a config that changes
the backbone is refused (:func:`check_compatible`), while a different set of heads is fine:
heads present in both (same name, same channels) keep their weights and new ones start fresh
(:func:`load_for_finetuning`). The data must have the voxel size the weights were trained at, or a
finer one that em-train averages down to it (``data.model_voxel_size_nm``, the checkpoint's voxel
size by default; :func:`check_voxel_size`; ``--force`` trains at the data's own voxel size).

Adding a shipped model: train it (its config and data in ``examples/``), then
:func:`package` its ``last.pt`` into ``emtools/models/weights/NAME.pt`` (fp16 weights, no optimizer
state, the provenance in ``extra["pretrained"]``), add an entry to :data:`emtools.models.weights.PRETRAINED` and its scores to the README.
Never report a score on a volume the model was trained on.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import torch

from emtools.errors import EmError
from emtools.models.checkpoint import read_checkpoint, save_checkpoint, saved_spec
from emtools.models.spec import spec_difference, spec_from_dict
from emtools.models.weights import PRETRAINED, WEIGHTS_DIR, Pretrained
from emtools.values import did_you_mean

log = logging.getLogger("emtools")

def available() -> dict[str, Pretrained]:
    """The registered checkpoints whose files are installed."""
    return {name: p for name, p in PRETRAINED.items() if os.path.exists(os.path.join(WEIGHTS_DIR, p.file))}


def resolve(name_or_path: str) -> str:
    """The checkpoint file of a shipped name, or the path itself; one line when it is neither."""
    if name_or_path in PRETRAINED:
        path = os.path.join(WEIGHTS_DIR, PRETRAINED[name_or_path].file)
        if not os.path.exists(path):
            raise EmError(f"pretrained model '{name_or_path}' is not installed ({path} is missing)")
        return path
    if os.path.exists(name_or_path):
        return name_or_path
    raise EmError(f"'{name_or_path}' is neither a checkpoint file nor a shipped model "
                  f"({', '.join(PRETRAINED) or 'none'}){did_you_mean(name_or_path, PRETRAINED, otherwise='')}")


def config_base(payload: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
    """em-train config defaults from a checkpoint: its model spec, its heads' targets, its crop and
    (unless ``force``: train at the data's own voxel size) its voxel size as
    ``data.model_voxel_size_nm``, so finer data is averaged down to what the weights learned."""
    extra = payload.get("extra") or {}
    base: dict[str, Any] = {"model": saved_spec(dict(payload))}
    targets = extra.get("targets")
    if isinstance(targets, Mapping):
        base["targets"] = {name: dict(t) for name, t in targets.items()}
    data: dict[str, Any] = {}
    size = extra.get("input_size_zyx")
    if isinstance(size, Sequence) and len(size) == 3:
        data["patch_zyx"] = [int(v) for v in size]
    voxel = extra.get("voxel_size_nm")
    if not force and isinstance(voxel, Sequence) and len(voxel) == 3:
        data["model_voxel_size_nm"] = [float(v) for v in voxel]
    if data:
        base["data"] = data
    return base


def _backbone(spec_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec_dict.items() if k not in ("heads", "name")}


def check_compatible(payload: Mapping[str, Any], spec, path: str) -> None:
    """One line when the checkpoint's network (all but its heads) differs from ``spec``."""
    saved = spec_from_dict(saved_spec(dict(payload)), where=path).to_dict()
    difference = spec_difference(_backbone(saved), _backbone(spec.to_dict()))
    if difference is not None:
        raise EmError(f"--init {path} is a checkpoint of another architecture ({difference}); drop the model "
                      "settings from the config to take the checkpoint's, or start from scratch")


def check_voxel_size(payload: Mapping[str, Any], voxel_size_nm: Sequence[float], path: str,
                     force: bool = False) -> None:
    """The data's voxel size must be the one the weights learned (within 5%); ``force`` warns instead."""
    trained = (payload.get("extra") or {}).get("voxel_size_nm")
    if not trained:
        return
    if all(abs(float(a) - float(b)) <= 0.05 * float(a) for a, b in zip(trained, voxel_size_nm)):
        return
    said = ",".join(f"{float(v):g}" for v in trained)
    have = ",".join(f"{float(v):g}" for v in voxel_size_nm)
    if force:
        log.warning("--init %s was trained at %s nm, the data is %s nm (--force)", path, said, have)
        return
    raise EmError(f"--init {path} was trained at voxel size {said} nm but the data is {have} nm; "
                  "resample the data (em-tile convert) or pass --force")


def load_for_finetuning(model: torch.nn.Module, payload: Mapping[str, Any]) -> list[str]:
    """Load the checkpoint's weights into ``model``; heads it does not have start fresh.

    Every tensor but the output layer's must match in shape (:func:`check_compatible` ran). The
    output layer stacks the heads' channels in order; the channels of heads with the same name
    and size are copied. Returns the names of the heads that start from fresh weights.
    """
    old_heads = list((saved_spec(dict(payload)).get("heads") or {}).items())
    new_heads = list(model.spec.heads)
    state = model.state_dict()
    fresh = [name for name, ch in new_heads if (name, ch) not in old_heads]
    old_at = _offsets(old_heads)
    new_at = _offsets(new_heads)
    old_total, new_total = sum(c for _, c in old_heads), sum(c for _, c in new_heads)
    loaded = {}
    for key, value in payload["state_dict"].items():
        if key not in state:
            raise EmError(f"--init: the checkpoint has weights the model lacks ({key})")
        target = state[key]
        if tuple(value.shape) == tuple(target.shape) and (old_heads == new_heads or not _is_output(key)):
            loaded[key] = value
            continue
        axis = _channel_axis(value.shape, target.shape, old_total, new_total)
        if axis is None:
            raise EmError(f"--init: weights {key} have shape {tuple(value.shape)}, the model "
                          f"{tuple(target.shape)}")
        merged = target.detach().clone()
        for name, channels in new_heads:
            if (name, channels) in old_heads:
                src = value.narrow(axis, old_at[name], channels)
                merged.narrow(axis, new_at[name], channels).copy_(src)
        loaded[key] = merged
    model.load_state_dict(loaded, strict=True)
    return fresh


def _offsets(heads: Sequence[tuple[str, int]]) -> dict[str, int]:
    out, at = {}, 0
    for name, channels in heads:
        out[name] = at
        at += channels
    return out


def _is_output(key: str) -> bool:
    return key.split(".")[0] in ("out", "head")


def _channel_axis(old_shape, new_shape, old_total: int, new_total: int) -> int | None:
    """The one axis where the shapes differ as the heads' channel totals do (or agree, same totals)."""
    if len(old_shape) != len(new_shape):
        return None
    candidates = [a for a in range(len(old_shape)) if old_shape[a] == old_total and new_shape[a] == new_total
                  and all(old_shape[b] == new_shape[b] for b in range(len(old_shape)) if b != a)]
    return candidates[0] if candidates else None


def package(source: str, dest: str, name: str, provenance: Mapping[str, Any]) -> str:
    """Write ``source``'s model as a shipped checkpoint: fp16 weights, no optimizer state, and
    ``provenance`` (config, data, held-out scores, minutes) in ``extra["pretrained"]``."""
    payload = read_checkpoint(source)
    spec = spec_from_dict(saved_spec(payload), where=source)
    from emtools.models import build_model

    model = build_model(spec, seed=None)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.half()  # halves the file; loading copies the values back into fp32 parameters
    extra = dict(payload.get("extra") or {})
    extra["pretrained"] = {"name": name, **dict(provenance)}
    return save_checkpoint(dest, model, spec, extra)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emtools.models.pretrained pack SOURCE NAME PROVENANCE.json``: write
    ``weights/NAME.pt`` from a run's checkpoint (maintainers); ``list``: the shipped models."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m emtools.models.pretrained", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shipped models, installed or not")
    pack = sub.add_parser("pack", help="package a checkpoint as a shipped model")
    pack.add_argument("source")
    pack.add_argument("name")
    pack.add_argument("provenance", help="JSON: config, trained_on, held_out, scores, train_minutes")
    args = parser.parse_args(argv)
    if args.command == "list":
        installed = available()
        for name, entry in PRETRAINED.items():
            state = "installed" if name in installed else "missing"
            sys.stdout.write(f"{name}\t{state}\t{entry.modality}\t{entry.summary}\n")
        return 0
    with open(args.provenance) as handle:
        provenance = json.load(handle)
    dest = os.path.join(WEIGHTS_DIR, f"{args.name}.pt")
    sys.stdout.write(package(args.source, dest, args.name, provenance) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
