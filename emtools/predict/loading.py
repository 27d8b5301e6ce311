"""Loading a checkpoint for em-predict: the module, its heads and the selection to write, the
input normalisation, the training input size and the receptive field (torch: loaded lazily by
the callers, never for --help); and checking an input's header against it (:func:`inspect_input`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np

from emtools import io, resample
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

log = logging.getLogger("emtools")


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


@dataclasses.dataclass
class Job:
    spec: str
    meta: Metadata
    box: Box  # global voxels
    dtype: np.dtype
    anchor_zyx: tuple  # where the patch grid starts: the whole volume's first voxel
    scale_zyx: tuple = resample.ONE  # input voxels per model voxel (a model trained at a coarser voxel size)

    @property
    def model_box(self) -> Box:
        """The input's box in the model's voxels (global; clamps the interpolation back)."""
        return resample.coarse_box(self.box, self.scale_zyx)

    @property
    def model_anchor_zyx(self) -> tuple:
        return tuple(a // s for a, s in zip(self.anchor_zyx, self.scale_zyx))


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


def inspect_input(spec: str, model: LoadedModel, voxel_size_nm, force: bool) -> Job:
    """Check an input's header against the model (channels, voxel size, type): the job of predicting it,
    with the whole-number factors by which it is averaged when the model works at a coarser voxel size."""
    from emtools.normalize import dtype_scale

    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        shape, meta, box, dtype = source.shape, source.meta, source.box, np.dtype(source.dtype)
    channels = shape[0] if len(shape) == 4 else 1
    want = model.spec.in_channels
    if channels != want:
        raise EmError(f"{spec} has {channels} channel{'s' * (channels != 1)} but the model takes {want} (in_channels)")
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise EmError(f"{spec} is {dtype}; images must be integers or floats")
    voxel = meta.voxel_size_nm
    train = model.voxel_size_nm
    scale = resample.ONE
    if train is None:
        if not force:
            raise EmError(f"{model.path} does not record its training voxel size; pass --force to predict anyway")
        log.debug("%s does not record its training voxel size; predicting %s anyway (--force)", model.path, spec)
    elif any(abs(a - b) > 1e-3 * max(abs(b), 1e-9) for a, b in zip(voxel, train)):
        text = (f"voxel size {_text(voxel)} nm of {spec} differs from the training voxel size {_text(train)} nm "
                f"of {model.path}")
        finer = resample.factors(voxel, train)
        if finer == resample.ONE:
            finer = None  # close but not equal: still a mismatch for em-predict
        if force:
            log.warning("%s (--force: predicting at the input's voxel size)", text)
        elif finer is not None:
            scale = finer
            log.info("%s: the model works at %s nm: blocks of %s input voxels are averaged, the maps interpolated "
                     "back", spec, _text(train), "x".join(map(str, scale)))
        else:
            raise EmError(f"{text} (and is not finer by whole numbers); resample the input, set --voxel-size if the "
                          "file is wrong, or --force")
    if dtype.kind in "ub" and abs(dtype_scale(dtype) - model.normalization["scale"]) > 1e-6 * dtype_scale(dtype):
        log.warning("%s is %s but the model's normalisation scales by %g (trained on another type?)",
                    spec, dtype, model.normalization["scale"])
    attrs = meta.attrs
    anchor = tuple(attrs["volume_begin_vx"]) if "volume_begin_vx" in attrs else box.begin
    return Job(spec, meta, box, dtype, tuple(int(a) for a in anchor), scale)


def _text(values) -> str:
    return ",".join(f"{v:g}" for v in values)
