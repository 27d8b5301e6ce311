"""Whole exports, paths in and a folder out: what ``em-export`` runs.

::

    from emtools.export.jobs import ExportSettings, export_volumes, layer_inputs
    layers = layer_inputs(images=["raw.h5:/raw"], segmentations=["seg.h5:/seg"])
    state = export_volumes(layers, "view", ExportSettings(min_voxels=500))

The folder that appears (atomically: it is built as ``.view.emtmp-PID-XXXX`` beside the target
and renamed at the end, so a failed or interrupted run leaves no partial export)::

    view/
      state.json          neuroglancer state opening every layer (sources under base_url)
      export.json         em-export's manifest: base_url, the layers and what they hold
      raw/info            precomputed image: scales 4_4_40/, 8_8_40/, ... of raw chunks
      raw/provenance      where the layer came from (the input's records + this export's)
      seg/info            precomputed segmentation (compressed_segmentation or raw chunks)
      seg/mesh/           legacy meshes of every segment of at least min_voxels voxels
      seg/skeletons/      skeletons of the same segments
      seg/segment_properties/info   every id with its voxel count

Each input is read whole (one volume in memory at a time, plus its pyramid and meshes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
from typing import Iterable, Sequence

import numpy as np

from emtools import interrupt, io
from emtools.errors import EmError
from emtools.export.downsample import METHODS, downsample, plan_scales
from emtools.export.meshes import mesh_segments, write_meshes
from emtools.export.precomputed import (
    ENCODINGS,
    SEGMENT_DTYPES,
    image_dtype,
    scale_entry,
    scale_key,
    segment_dtype,
    volume_info,
    write_scale,
)
from emtools.export.skeletons import skeletonize_segments, write_skeletons
from emtools.export.state import LayerView, viewer_state
from emtools.io.specs import TMP_MARK, pid_alive, split_h5_spec
from emtools.meta import Metadata, provenance_record

__all__ = ["EXTRA", "KINDS", "ExportSettings", "LayerInput", "export_volumes", "layer_inputs", "require_package"]

log = logging.getLogger("emtools")
TOOL = "em-export"
EXTRA = "view"  # the setup.cfg extra that installs zmesh, kimimaro and neuroglancer
KINDS = ("image", "prediction", "segmentation")
SEG_DOWNSAMPLE = ("mode", "stride")
# top-level names the server answers itself, or that the export writes
RESERVED = {"v", "events", "state", "action", "credentials", "volume_response", "socket", "state.json", "export.json"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NAMED_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)=(.+)$")


def require_package(module: str, purpose: str, instead: str | None = None) -> None:
    """One-line EmError naming the extra when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        hint = f", or {instead}" if instead else ""
        raise EmError(f"{purpose} need the {module} package: pip install 'emtools[{EXTRA}]'{hint}")


# ----------------------------------------------------------------------------- inputs

@dataclasses.dataclass(frozen=True)
class LayerInput:
    """One input volume: its kind (image, prediction, segmentation), spec and layer name."""

    kind: str
    spec: str
    name: str


def _stem(spec: str) -> str:
    h5 = split_h5_spec(spec)
    path = h5[0] if h5 else spec.rstrip("/")
    base = os.path.basename(path.split("*", 1)[0].rstrip("/")) or os.path.basename(os.path.dirname(path)) or "layer"
    stem = base.split(".", 1)[0] or base
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).lstrip("._-") or "layer"


def layer_inputs(images: Iterable[str] = (), predictions: Iterable[str] = (),
                 segmentations: Iterable[str] = ()) -> list[LayerInput]:
    """Layers from ``[NAME=]SPEC`` texts, in the order image, prediction, segmentation.

    Without NAME a layer is named after its file (``raw.h5:/x`` -> ``raw``); two layers of one
    file also get the dataset's name (``a.h5:/raw`` -> ``a-raw``). Names must be unique.
    """
    given = [(kind, text) for kind, texts in zip(KINDS, (images, predictions, segmentations)) for text in texts]
    parsed = []
    for kind, text in given:
        match = _NAMED_SPEC.match(text)
        if match and not os.path.exists(text):
            parsed.append((kind, match.group(2), match.group(1)))
        else:
            parsed.append((kind, text, None))
    defaults = [_stem(spec) for _, spec, _ in parsed]
    layers = []
    for (kind, spec, name), default in zip(parsed, defaults):
        if name is None:
            name = default
            h5 = split_h5_spec(spec)
            if defaults.count(default) > 1 and h5 and h5[1]:
                name = f"{default}-{_stem(h5[1].strip('/').replace('/', '_'))}"
        layers.append(LayerInput(kind, spec, name))
    names = [layer.name for layer in layers]
    for layer in layers:
        if not _NAME.match(layer.name):
            raise EmError(f"bad layer name {layer.name!r}: use letters, digits, '_', '.', '-'")
        if layer.name in RESERVED:
            raise EmError(f"the layer name {layer.name!r} is reserved; name it as NAME={layer.spec}")
        if names.count(layer.name) > 1:
            raise EmError(f"two layers are named {layer.name!r}; name them as NAME=SPEC")
    return layers


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """How em-export writes layers; the fields are its options.

    ``chunk_zyx`` chunk size in voxels; ``max_scales`` most scales (None: halve until the volume
    fits one chunk; 1: no pyramid); ``seg_downsample`` mode or stride; ``seg_dtype`` uint64 or
    uint32; ``seg_encoding`` compressed_segmentation or raw; ``meshes``/``skeletons`` for
    segments of at least ``min_voxels`` voxels; ``mesh_reduction`` (zmesh reduction factor, 0:
    none) and ``mesh_error_nm`` (None: the finest voxel side); ``skeleton_scale`` and
    ``skeleton_const_nm`` (TEASAR invalidation ball); ``show`` the largest N segments shown at
    first; ``base_url`` where the folder will be served.
    """

    chunk_zyx: tuple[int, int, int] = (64, 64, 64)
    max_scales: int | None = None
    seg_downsample: str = "mode"
    seg_dtype: str = "uint64"
    seg_encoding: str = "compressed_segmentation"
    meshes: bool = True
    skeletons: bool = True
    min_voxels: int = 100
    mesh_reduction: int = 10
    mesh_error_nm: float | None = None
    skeleton_scale: float = 1.5
    skeleton_const_nm: float = 300.0
    show: int = 20
    base_url: str = "http://127.0.0.1:9000"

    def __post_init__(self):
        object.__setattr__(self, "chunk_zyx", tuple(int(c) for c in self.chunk_zyx))
        if len(self.chunk_zyx) != 3 or any(c < 1 for c in self.chunk_zyx):
            raise EmError(f"--chunk needs three positive sizes z,y,x, got {','.join(map(str, self.chunk_zyx))}")
        if self.max_scales is not None and self.max_scales < 1:
            raise EmError(f"--scales must be at least 1, got {self.max_scales}")
        checks = ((self.seg_downsample, SEG_DOWNSAMPLE, "--seg-downsample"), (self.seg_dtype, SEGMENT_DTYPES, "--seg-dtype"),
                  (self.seg_encoding, ENCODINGS, "--seg-encoding"))
        for value, choices, flag in checks:
            if value not in choices:
                raise EmError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        for value, flag in ((self.min_voxels, "--min-voxels"), (self.mesh_reduction, "--mesh-reduction"), (self.show, "--show"),
                            (self.skeleton_scale, "--skeleton-scale"), (self.skeleton_const_nm, "--skeleton-const")):
            if value < 0:
                raise EmError(f"{flag} must be >= 0, got {value}")
        if self.mesh_error_nm is not None and self.mesh_error_nm < 0:
            raise EmError(f"--mesh-error must be >= 0 nm, got {self.mesh_error_nm}")
        if not re.match(r"^[a-z][a-z0-9+.\-]*://\S+$", self.base_url):
            raise EmError(f"--base-url must be a URL such as http://127.0.0.1:9000, got {self.base_url!r}")
        assert set(SEG_DOWNSAMPLE) <= set(METHODS)


# ----------------------------------------------------------------------------- the export

def _check_output(out_dir: str, skip_existing: bool, overwrite: bool) -> bool:
    """True when ``out_dir`` exists and is to be kept (--skip-existing); errors for bad targets."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise EmError(f"output folder does not exist: {os.path.dirname(out_dir) or '.'}")
    if not os.access(parent, os.W_OK):
        raise EmError(f"output folder is not writable: {os.path.dirname(out_dir) or '.'}")
    if not os.path.lexists(out_dir):
        return False
    if skip_existing:
        return True
    if overwrite:
        if not os.path.isfile(os.path.join(out_dir, "export.json")):
            raise EmError(f"output exists and is no em-export folder, not replaced: {out_dir}")
        return False
    raise EmError(f"output exists: {out_dir} (--overwrite replaces it, --skip-existing keeps it)")


def _open_checked(layer: LayerInput, voxel_size_nm) -> tuple[tuple, np.dtype, Metadata]:
    """Open ``layer`` (metadata only) and refuse what it cannot show, before any work."""
    with io.open_volume(layer.spec, voxel_size_nm=voxel_size_nm) as source:
        shape, dtype, meta = source.shape, source.dtype, source.meta
    if layer.kind == "segmentation":
        if len(shape) != 3:
            raise EmError(f"{layer.spec} has {shape[0]} channels; a segmentation is one (z, y, x) volume")
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise EmError(f"{layer.spec} holds {dtype} values; a segmentation needs integer ids")
    else:
        image_dtype(dtype)
    return shape, dtype, meta


def _stale_temps(out_dir: str) -> None:
    """Remove temporaries of this output left by killed runs (their process is gone)."""
    folder, name = os.path.split(os.path.abspath(out_dir))
    prefix = f".{name}{TMP_MARK}"
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            pid = entry[len(prefix):].split("-")[0] if entry.startswith(prefix) else ""
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)




def _write_json(path: str, value) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, sort_keys=True, indent=1)
        handle.write("\n")


def _pyramid(folder: str, array: np.ndarray, meta: Metadata, settings: ExportSettings, method: str,
             dtype, encoding: str) -> list[dict]:
    """Write every scale of ``array`` into ``folder``; returns the info's ``scales``."""
    begin, voxel = meta.origin_vx, meta.voxel_size_nm
    steps = plan_scales(array.shape[-3:], voxel, settings.chunk_zyx, settings.max_scales)
    scales = []
    for k in range(len(steps) + 1):
        interrupt.check()
        write_scale(os.path.join(folder, scale_key(voxel)), array, begin, settings.chunk_zyx, dtype, encoding,
                    check=interrupt.check)
        scales.append(scale_entry(voxel, begin, array.shape[-3:], settings.chunk_zyx, encoding))
        if k < len(steps):
            array, begin = downsample(array, begin, steps[k], method)
            voxel = tuple(v * f for v, f in zip(voxel, steps[k]))
    return scales


def _export_image(folder: str, layer: LayerInput, data: np.ndarray, meta: Metadata, settings: ExportSettings) -> LayerView:
    dtype = image_dtype(data.dtype)
    data = data.astype(dtype, copy=False)
    scales = _pyramid(folder, data, meta, settings, "mean", dtype, "raw")
    channels = data.shape[0] if data.ndim == 4 else 1
    _write_json(os.path.join(folder, "info"), volume_info("image", dtype, channels, scales))
    log.info("%s: %s %s, %d scale(s)", layer.name, layer.kind, dtype.name, len(scales))
    return LayerView(layer.name, layer.kind, meta.voxel_size_nm, meta.offset_nm, data.shape[-3:], channels)


def _largest(ids: np.ndarray, counts: np.ndarray, n: int) -> list[int]:
    order = np.lexsort((ids, -counts.astype(np.int64)))  # most voxels first, ties to the smaller id
    return [int(i) for i in ids[order[:n]]]


def _export_segmentation(folder: str, layer: LayerInput, labels: np.ndarray, meta: Metadata,
                         settings: ExportSettings) -> tuple[LayerView, dict]:
    import fastremap

    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    low, high = (int(v) for v in fastremap.minmax(labels))
    dtype = segment_dtype(labels.dtype, low, high, settings.seg_dtype, layer.spec)
    labels = labels.astype(dtype, copy=False)
    ids, counts = fastremap.unique(labels, return_counts=True)
    keep = ids != 0
    ids, counts = ids[keep], counts[keep]
    sized = ids[counts >= max(settings.min_voxels, 1)]
    meshes, skeletons = {}, {}
    if settings.meshes:  # the folder (with its info) even when no segment is large enough
        meshes = mesh_segments(labels, meta.voxel_size_nm, meta.offset_nm, sized, settings.mesh_reduction,
                               settings.mesh_error_nm, check=interrupt.check)
        write_meshes(os.path.join(folder, "mesh"), meshes)
    if settings.skeletons:
        skeletons = skeletonize_segments(labels, meta.voxel_size_nm, meta.offset_nm, sized, settings.skeleton_scale,
                                         settings.skeleton_const_nm, check=interrupt.check)
        write_skeletons(os.path.join(folder, "skeletons"), skeletons)
    properties = {
        "@type": "neuroglancer_segment_properties",
        "inline": {
            "ids": [str(int(i)) for i in ids],
            "properties": [{"id": "voxels", "type": "number", "description": "voxels of the segment",
                            "data_type": "uint32" if counts.size == 0 or counts.max() < 2**32 else "float32",
                            "values": [int(c) for c in counts]}],
        },
    }
    os.makedirs(os.path.join(folder, "segment_properties"))
    _write_json(os.path.join(folder, "segment_properties", "info"), properties)
    scales = _pyramid(folder, labels, meta, settings, settings.seg_downsample, dtype, settings.seg_encoding)
    info = volume_info("segmentation", dtype, 1, scales, mesh="mesh" if settings.meshes else None,
                       skeletons="skeletons" if settings.skeletons else None, segment_properties="segment_properties")
    _write_json(os.path.join(folder, "info"), info)
    if settings.meshes or settings.skeletons:
        pool = np.array(sorted(set(meshes) | set(skeletons)), dtype=dtype)
        pool_counts = counts[np.searchsorted(ids, pool)] if len(pool) else counts[:0]
        shown = _largest(pool, pool_counts, settings.show)
    else:
        shown = _largest(ids, counts, settings.show)
    log.info("%s: %d segments, %d meshes, %d skeletons, %d scale(s)", layer.name, len(ids), len(meshes),
             len(skeletons), len(scales))
    view = LayerView(layer.name, layer.kind, meta.voxel_size_nm, meta.offset_nm, labels.shape, 1, tuple(shown))
    return view, {"segments": int(len(ids)), "meshes": len(meshes), "skeletons": len(skeletons)}


def export_volumes(
    layers: Sequence[LayerInput],
    out_dir: str,
    settings: ExportSettings = ExportSettings(),
    voxel_size_nm: Sequence[float] | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    params: dict | None = None,
) -> dict:
    """Export ``layers`` into the folder ``out_dir``; returns the neuroglancer state (also in
    ``out_dir/state.json``). ``voxel_size_nm`` overrides every input's; ``params`` (the tool's
    resolved options) go into the provenance records."""
    if not layers:
        raise EmError("nothing to export: give --image, --prediction or --segmentation")
    if _check_output(out_dir, skip_existing, overwrite):
        log.info("exists, skipped: %s", out_dir)
        from emtools.export.serve import read_state

        return read_state(out_dir)[0]
    if any(layer.kind == "segmentation" for layer in layers):
        if settings.meshes:
            require_package("zmesh", "meshes", "--no-meshes")
        if settings.skeletons:
            require_package("kimimaro", "skeletons", "--no-skeletons")
    for layer in layers:  # every input is checked before any work
        _open_checked(layer, voxel_size_nm)
    _stale_temps(out_dir)
    parent, name = os.path.split(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(tmp)
    except OSError as exc:
        raise EmError(f"cannot create the output {out_dir}: {(exc.strerror or str(exc)).lower()}") from exc
    try:
        views, manifest_layers = [], []
        for layer in layers:
            data, meta = io.read_volume(layer.spec, voxel_size_nm=voxel_size_nm)
            folder = os.path.join(tmp, layer.name)
            os.mkdir(folder)
            if layer.kind == "segmentation":
                view, counts = _export_segmentation(folder, layer, data, meta, settings)
            else:
                view, counts = _export_image(folder, layer, data, meta, settings), {}
            del data
            record = provenance_record(TOOL, {**(params or {}), "layer": layer.name, "kind": layer.kind},
                                       [(layer.spec, meta)])
            _write_json(os.path.join(folder, "provenance"), {
                "description": f"{layer.kind} layer written by {TOOL}", "owners": [], "sources": [layer.spec],
                "processing": list(meta.provenance) + [record]})
            views.append(view)
            manifest_layers.append({"name": layer.name, "kind": layer.kind, "spec": layer.spec,
                                    "shape_zyx": list(view.shape_zyx), "voxel_size_nm": list(view.voxel_size_nm),
                                    "offset_nm": list(view.offset_nm), "num_channels": view.num_channels, **counts})
        state = viewer_state(views, settings.base_url)
        _write_json(os.path.join(tmp, "state.json"), state)
        from emtools import __version__

        _write_json(os.path.join(tmp, "export.json"), {"tool": TOOL, "version": __version__,
                                                        "base_url": settings.base_url, "layers": manifest_layers})
        interrupt.check()  # never rename a result into place after a signal
        _put_in_place(tmp, out_dir)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return state


def _put_in_place(tmp: str, out_dir: str) -> None:
    """Rename the finished temporary folder to ``out_dir`` (replacing an old export)."""
    if not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    parent, name = os.path.split(os.path.abspath(out_dir))
    old = os.path.join(parent, f".{name}{TMP_MARK}{os.getpid()}-old-{secrets.token_hex(4)}")
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
