"""Loading a checkpoint for em-predict: the module, its heads and the selection to write, the
input normalisation, the training input size and the receptive field (torch: loaded lazily by
the callers, never for --help)."""

from __future__ import annotations

import dataclasses
import hashlib

from emtools.errors import EmError


@dataclasses.dataclass
class LoadedModel:
    module: object
    spec: object
    heads: list
    selection: list
    reduce: dict
    normalization: dict
    voxel_size_nm: list | None
    patch_zyx: tuple
    train_zyx: tuple | None  # the training input size (sets the auto crop), when the checkpoint records it
    rf_size: tuple
    rf_lo: tuple
    rf_hi: tuple
    sha256: str
    path: str


def load_for_prediction(path, patch_zyx, head_names, channel_ranges, tta_reduce, normalization) -> LoadedModel:
    from emtools.models.checkpoint import load_model
    from emtools.models.geometry import check_input_size, receptive_field
    from emtools.models.heads import default_heads, heads_from_dict
    from emtools.normalize import check_normalization
    from emtools.predict.engine import parse_channel_ranges, select_heads

    module, spec, extra = load_model(path)
    heads = heads_from_dict(extra["heads"], spec.heads) if extra.get("heads") else default_heads(spec.heads)
    names = [n.strip() for n in head_names.split(",") if n.strip()] if head_names else None
    selection = select_heads(heads, names, parse_channel_ranges(channel_ranges))
    if normalization is not None:
        norm = parse_normalization(normalization)
    elif extra.get("normalization") is not None:
        norm = extra["normalization"]
    else:
        raise EmError(f"{path} records no input normalisation; pass --normalization SCALE,MEAN,STD "
                      "(e.g. 0.00392157,0.5,0.25 for uint8 images)")
    norm = check_normalization(norm)
    train_zyx = tuple(int(v) for v in extra["input_size_zyx"]) if extra.get("input_size_zyx") else None
    if patch_zyx is None:
        if not extra.get("input_size_zyx"):
            raise EmError(f"{path} records no training input size; pass --patch Z,Y,X")
        patch_zyx = tuple(int(v) for v in extra["input_size_zyx"])
    check_input_size(spec, tuple(patch_zyx))
    voxel = extra.get("voxel_size_nm")
    size, lo, hi = receptive_field(spec)
    from emtools.predict.tta import parse_reduce  # torch: loaded here, never for --help

    return LoadedModel(module, spec, heads, selection, parse_reduce(tta_reduce, [s.name for s in selection]),
                       norm, [float(v) for v in voxel] if voxel else None, tuple(patch_zyx), train_zyx, size, lo, hi,
                       file_sha256(path), path)


def parse_normalization(text: str) -> dict:
    parts = [p.strip() for p in text.split(",")]
    try:
        scale, mean, std = (float(p) for p in parts)
    except ValueError:
        raise EmError(f"--normalization {text!r}: give SCALE,MEAN,STD, e.g. 0.00392157,0.5,0.25") from None
    return {"scale": scale, "mean": mean, "std": std}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
