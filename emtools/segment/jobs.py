"""Whole-volume jobs, path in and path out: ``em-watershed`` and ``em-agglomerate segment|replay``.

Each job checks all its arguments (one-line :class:`~emtools.errors.EmError`) before reading
anything, reads through :mod:`emtools.io`, calls the array functions of this package, writes
atomically with a provenance record, logs to the ``emtools`` logger and returns what it wrote.
The click commands only map their options to these calls; a library user does the same::

    from emtools.segment.jobs import WatershedSettings, agglomerate_volume, watershed_volume
    watershed_volume("affs.h5:/affs", "frags.h5", WatershedSettings(mode="3d", min_size=50))
    watershed_volume("lr_affs.h5:/affs", "seg.h5", WatershedSettings(method="mutex", min_size=50))
    agglomerate_volume("frags.h5", "affs.h5:/affs", [0.3, 0.5], "seg_{threshold}.h5")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata, provenance_record, require_same_region
from emtools.segment import mutex, watershed
from emtools.segment.agglomerate import merge_history, segmentations
from emtools.segment.files import (
    as_thresholds,
    check_voxel_size,
    chunk_regions,
    crop_and_renumber,
    cropped_metadata,
    read_distance,
    read_labels,
    read_map,
    threshold_outputs,
)
from emtools.segment.region_graph import DEFAULT_BINS, compact_labels, region_graph
from emtools.segment.scores import needs_histogram, parse_score
from emtools.segment.tables import read_history, write_history
from emtools.values import unknown_choice

__all__ = ["WatershedSettings", "agglomerate_volume", "replay_volume", "watershed_labels", "watershed_volume"]

log = logging.getLogger("emtools")
AGGLOMERATE = "em-agglomerate"

# ----------------------------------------------------------------------------- watershed

_UNIT = ("threshold", "seed_foreground", "seed_contour", "mask_foreground")  # must lie in [0, 1]
_NON_NEGATIVE = ("radius", "min_distance", "sigma", "min_size", "min_seed_size")
_CHOICES = {"method": ("watershed", "mutex"), "seed_method": watershed.SEED_METHODS, "mode": ("auto", "2d", "3d"), "small": ("merge", "remove"),
            "affinity_reduce": ("mean", "min"), "instance": (None, "bc", "bcd")}


# fields of one method only: a value other than the default with the other method is an error
_MUTEX_ONLY = ("offsets", "bias", "stride", "long_range_fraction", "subset_seed")
_WATERSHED_ONLY = ("seed_method", "threshold", "radius", "min_distance", "sigma", "min_seed_size", "affinity_reduce",
                   "invert", "instance")


def _flag(field: str) -> str:
    """The em-watershed option of a settings field: ``min_size`` -> ``--min-size``."""
    return "--" + field.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class WatershedSettings:
    """How em-watershed makes fragments (or BC/BCD instances); the fields are its options.

    Fragments (``instance=None``): boundary map (``affinity_reduce`` of affinities, or the map,
    ``invert``-ed for interior maps) -> seeds (``seed_method``: distance-transform maxima of
    boundary < ``threshold`` within ``radius`` voxels, at least ``min_distance`` from the
    boundary, smoothed by ``sigma``; or components of at least ``min_seed_size`` voxels) ->
    seeded watershed per section (``mode`` 2d) or in 3D -> fragments below ``min_size`` voxels
    merge into a neighbour or are removed (``small``). Instances (``instance`` bc or bcd): see
    :func:`emtools.segment.watershed.instance_segmentation` for the ``seed_*``/``mask_*``
    thresholds. ``mode='auto'``: 2d when z voxels are >= 2x the in-plane size.

    ``method='mutex'``: the mutex watershed on long-range affinities instead
    (:func:`emtools.segment.mutex.mutex_watershed` with ``offsets``, or the file's
    ``affinity_offsets``; ``bias``, ``stride`` and ``long_range_fraction``/``subset_seed`` as there),
    then the same ``min_size``/``small`` filter; it makes segments, with no agglomeration.
    """

    method: str = "watershed"

    seed_method: str = "distance"
    mode: str = "auto"
    threshold: float = 0.3
    radius: float = 4.0
    min_distance: float = 1.0
    sigma: float = 0.0
    min_seed_size: int = 1
    min_size: int = 20
    small: str = "merge"
    affinity_reduce: str = "mean"
    invert: bool = False
    instance: str | None = None
    seed_foreground: float = 0.9
    seed_contour: float = 0.8
    seed_distance: float = 0.5
    mask_foreground: float = 0.85
    mask_distance: float = 0.0
    offsets: tuple | None = None
    bias: float = 0.0
    stride: tuple = (1, 1, 1)
    long_range_fraction: float = 1.0
    subset_seed: int = 0

    def validate(self) -> WatershedSettings:
        """One-line error for the first value out of range (named by its em-watershed option)."""
        for name in _UNIT:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise EmError(f"{_flag(name)} must be in [0, 1], got {value:g}")
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if value < 0:
                raise EmError(f"{_flag(name)} must not be negative, got {value:g}")
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise unknown_choice(f"{_flag(name)} value", str(value), [str(c) for c in choices if c is not None])
        self._validate_mutex()
        return self

    def _validate_mutex(self) -> None:
        if not -1.0 <= self.bias <= 1.0:
            raise EmError(f"--bias must be in [-1, 1], got {self.bias:g}")
        if len(self.stride) != 3 or any(int(s) != s or s < 1 for s in self.stride):
            raise EmError(f"--stride must be three positive integers z,y,x, got {','.join(str(s) for s in self.stride)}")
        if not 0.0 < self.long_range_fraction <= 1.0:
            raise EmError(f"--long-range-fraction must be in (0, 1], got {self.long_range_fraction:g}")
        if self.offsets is not None:
            try:
                mutex.check_offsets(self.offsets)
            except EmError as exc:
                raise EmError(f"--offsets: {exc}") from None
        default = WatershedSettings()
        this_only, other = (_MUTEX_ONLY, "mutex") if self.method == "watershed" else (_WATERSHED_ONLY, "watershed")
        for name in this_only:
            if getattr(self, name) != getattr(default, name):
                raise EmError(f"{_flag(name)} is for --method {other}")

    def check_inputs(self, contour: bool, distance: bool) -> None:
        """One-line error unless the instance mode has exactly the maps it needs."""
        if self.instance is None and (contour or distance):
            raise EmError("--contour and --distance are for --instance bc/bcd")
        if self.instance is not None and not contour:
            raise EmError(f"--instance {self.instance} needs --contour")
        if self.instance == "bcd" and not distance:
            raise EmError("--instance bcd needs --distance")
        if self.instance == "bc" and distance:
            raise EmError("--distance is for --instance bcd")

    def resolved_mode(self, voxel_size_nm: Sequence[float]) -> str:
        """``2d`` or ``3d``; ``auto`` is 2d when z voxels are >= 2x the in-plane size."""
        if self.mode != "auto":
            return self.mode
        voxel = voxel_size_nm
        return "2d" if voxel[0] >= 2.0 * min(voxel[1], voxel[2]) else "3d"

    def record(self, voxel_size_nm: Sequence[float], from_affinities: bool, offsets=None) -> dict:
        """The resolved parameters that a provenance record lists (``offsets``: those the
        mutex watershed used)."""
        params = {"mode": self.resolved_mode(voxel_size_nm), "voxel_size_nm": list(voxel_size_nm)}
        if self.method == "mutex":
            params.update(method="mutex", offsets=[list(o) for o in (offsets or self.offsets or [])])
            names = ("bias", "stride", "long_range_fraction", "subset_seed", "min_size", "small")
            params.update((name, list(getattr(self, name)) if name == "stride" else getattr(self, name))
                          for name in names)
            return params
        if self.instance is None:
            if from_affinities:
                params["affinity_reduce"] = self.affinity_reduce
            names = ("threshold", "radius", "min_distance", "sigma", "min_seed_size", "min_size", "small", "invert")
            params["seeds"] = self.seed_method
        else:
            names = ("instance", "seed_foreground", "seed_contour", "seed_distance", "mask_foreground",
                     "mask_distance", "min_seed_size", "min_size", "invert")
        params.update((name, getattr(self, name)) for name in names)
        return params


def watershed_labels(values: np.ndarray, settings: WatershedSettings = WatershedSettings(),
                     voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0), contour: np.ndarray | None = None,
                     distance: np.ndarray | None = None) -> np.ndarray:
    """Labels (uint64, 1..n) over the whole of ``values``: affinities (3, z, y, x) or a boundary
    map (z, y, x) for fragments; the foreground probability (with ``contour`` and, for bcd,
    ``distance``) for instances; affinities (C, z, y, x) with ``settings.offsets`` for the
    mutex watershed. ``invert`` is for the reader (see :func:`watershed_volume`)."""
    mode = settings.resolved_mode(voxel_size_nm)
    if settings.method == "mutex":
        if settings.offsets is None:
            raise EmError("--method mutex needs the affinity offsets (--offsets)")
        return mutex.mutex_watershed(
            values, settings.offsets, mode=mode, bias=settings.bias, stride_zyx=settings.stride,
            long_range_fraction=settings.long_range_fraction, seed=settings.subset_seed, min_size=settings.min_size,
            merge_small=settings.small == "merge",
        )
    if settings.instance is not None:
        return watershed.instance_segmentation(
            values, contour, distance, seed_foreground=settings.seed_foreground, seed_contour=settings.seed_contour,
            seed_distance=settings.seed_distance, mask_foreground=settings.mask_foreground,
            mask_distance=settings.mask_distance, min_seed_size=settings.min_seed_size,
            min_size=settings.min_size, mode=mode,
        )
    if values.ndim == 4:
        values = watershed.boundary_from_affinities(values, settings.affinity_reduce)
    return watershed.fragments(
        values, seed_method=settings.seed_method, mode=mode, threshold=settings.threshold,
        voxel_size_nm=voxel_size_nm, radius=settings.radius, min_distance=settings.min_distance,
        sigma=settings.sigma, min_seed_size=settings.min_seed_size, min_size=settings.min_size,
        merge_small=settings.small == "merge",
    )


def watershed_volume(input_spec: str, output: str, settings: WatershedSettings = WatershedSettings(), *,
                     contour_spec: str | None = None, distance_spec: str | None = None, voxel_size_nm=None,
                     compression: str = "gzip", skip_existing: bool = False) -> str:
    """The em-watershed job: fragments (or instances) of ``input_spec`` written to ``output``.

    A chunk from ``em-tile split`` is processed with its halo and the output covers only its
    responsible region, renumbered 1..n (``fragment_count`` in the metadata). Returns the file
    written (or found, with ``skip_existing``).
    """
    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    io.output_format(output)
    check_voxel_size(voxel_size_nm)
    settings.validate()
    settings.check_inputs(contour_spec is not None, distance_spec is not None)
    if skip_existing and os.path.exists(io.output_file(output)):
        log.info("exists, skipped: %s", output)
        return io.output_file(output)

    started = time.perf_counter()
    if settings.method == "mutex":
        return _mutex_volume(input_spec, output, settings, voxel_size_nm, compression, started)
    instance = settings.instance
    source = read_map(input_spec, voxel_size_nm, invert=settings.invert, kind="auto" if instance is None else "boundary")
    meta = source.meta
    data_box, responsible = chunk_regions(meta, source.box)
    voxel = meta.voxel_size_nm
    inputs = [(input_spec, meta)]
    params = settings.record(voxel, from_affinities=source.kind == "affinities")
    if instance is None:
        values = source.values
        if source.kind == "affinities":  # the affinities can go before the watershed needs memory
            values = watershed.boundary_from_affinities(values, settings.affinity_reduce)
        del source
        labels = watershed_labels(values, settings, voxel)
    else:
        contour = read_map(contour_spec, voxel_size_nm, kind="boundary")
        require_same_region((input_spec, meta, source.box), (contour_spec, contour.meta, contour.box))
        inputs.append((contour_spec, contour.meta))
        distance = None
        if distance_spec is not None:
            distance, distance_meta, distance_box = read_distance(distance_spec, voxel_size_nm)
            require_same_region((input_spec, meta, source.box), (distance_spec, distance_meta, distance_box))
            inputs.append((distance_spec, distance_meta))
        labels = watershed_labels(source.values, settings, voxel, contour.values, distance)

    if responsible != data_box:
        labels = crop_and_renumber(labels, data_box.local(responsible))
    count = int(labels.max()) if labels.size else 0
    out_meta = cropped_metadata(meta, responsible, {"fragment_count": count})
    out_meta = out_meta.with_record(provenance_record("em-watershed", params, inputs))
    path = io.write_volume(output, labels, out_meta, compression=compression)
    elapsed = time.perf_counter() - started
    log.info("%d %s, responsible for %s (global voxels z,y,x), %.1f s, %.2f Mvoxel/s",
             count, "instances" if instance else "fragments", responsible.text(), elapsed,
             data_box.size / max(elapsed, 1e-9) / 1e6)
    return path


def _read_long_range(spec: str, voxel_size_nm, offsets) -> tuple[np.ndarray, list[list[int]], Metadata, object]:
    """All channels of long-range affinities, their offsets (the file's ``affinity_offsets`` or
    ``offsets``; both must agree), metadata and box; one-line errors for what cannot be used."""
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        shape, meta, box, dtype = source.shape, source.meta, source.box, np.dtype(source.dtype)
        if len(shape) != 4:
            raise EmError(f"--method mutex needs affinities (C, z, y, x) with long-range offsets, but {spec} is 3D")
        if dtype != np.uint8 and dtype.kind != "f":
            raise EmError(f"{spec}: affinities must be float32, float16 or uint8 (0..255), got {dtype}")
        stored = meta.attrs.get("affinity_offsets")
        if stored is not None:
            stored = [[int(v) for v in o] for o in stored]
            if offsets is not None and [list(o) for o in offsets] != stored:
                raise EmError(f"--offsets {[list(o) for o in offsets]} differ from the affinity_offsets of {spec} "
                              f"({stored})")
            offsets = stored
        if offsets is None and shape[0] == 3:
            raise EmError(f"--method mutex needs long-range affinities, but {spec} has only the 3 nearest-neighbour "
                          "channels")
        if offsets is None:
            raise EmError(f"{spec} has {shape[0]} channels and no affinity_offsets in its metadata; "
                          "give them with --offsets")
        try:
            offsets = mutex.check_offsets(offsets, shape[0])
        except EmError as exc:
            raise EmError(f"{exc} ({spec})") from None
        values = source.read()
    return values, offsets, meta, box


def _mutex_volume(input_spec, output, settings, voxel_size_nm, compression, started) -> str:
    """The em-watershed job for ``--method mutex``: reads all channels, writes segments."""
    values, offsets, meta, box = _read_long_range(input_spec, voxel_size_nm, settings.offsets)
    data_box, responsible = chunk_regions(meta, box)
    voxel = meta.voxel_size_nm
    resolved = dataclasses.replace(settings, offsets=tuple(tuple(o) for o in offsets))
    try:
        labels = watershed_labels(values, resolved, voxel)
    except EmError as exc:
        raise EmError(f"{exc} ({input_spec})") from None
    del values
    if responsible != data_box:
        labels = crop_and_renumber(labels, data_box.local(responsible))
    count = int(labels.max()) if labels.size else 0
    params = settings.record(voxel, from_affinities=True, offsets=offsets)
    out_meta = cropped_metadata(meta, responsible, {"fragment_count": count})
    out_meta = out_meta.with_record(provenance_record("em-watershed", params, [(input_spec, meta)]))
    path = io.write_volume(output, labels, out_meta, compression=compression)
    elapsed = time.perf_counter() - started
    log.info("%d segments (mutex watershed), responsible for %s (global voxels z,y,x), %.1f s, %.2f Mvoxel/s",
             count, responsible.text(), elapsed, data_box.size / max(elapsed, 1e-9) / 1e6)
    return path


# ----------------------------------------------------------------------------- agglomerate

def _segment_metadata(meta: Metadata, threshold: float, score: str, record: dict) -> Metadata:
    attrs = dict(meta.attrs)
    attrs.pop("fragment_count", None)
    attrs.update(threshold=threshold, score=score)
    return Metadata("zyx", meta.offset_nm, meta.voxel_size_nm, meta.provenance, attrs).with_record(record)


def agglomerate_volume(fragments_spec: str, map_spec: str, thresholds, output: str, *, history_path: str | None = None,
                       score: str = "mean", bins: int = DEFAULT_BINS, invert: bool = False, voxel_size_nm=None,
                       compression: str = "gzip", on_written: Callable[[str], None] | None = None) -> list[str]:
    """The em-agglomerate segment job: one segmentation of ``fragments_spec`` per threshold.

    ``map_spec``: affinities (3, z, y, x) or a boundary map (z, y, x). ``thresholds``:
    increasing numbers in [0, 1] or their text ``"0.3,0.5"``; ``output`` must contain
    ``{threshold}`` when there are several. The merge history is computed once, up to the
    largest threshold (and written to ``history_path`` if given). Returns the paths written,
    segmentations first; ``on_written(path)`` is called as each one is complete.
    """
    started = time.perf_counter()
    name, q = parse_score(score)
    thresholds = as_thresholds(thresholds)
    outputs = threshold_outputs(output, thresholds, compression)
    if history_path:
        io.check_output_path(history_path)
    histogram = needs_histogram(name)
    if histogram and not 0 < bins <= 65536:
        raise EmError(f"--bins must be in 1..65536, got {bins}")
    labels, fmeta, fbox = read_labels(fragments_spec, voxel_size_nm)
    source = read_map(map_spec, voxel_size_nm, invert=invert)
    require_same_region((fragments_spec, fmeta, fbox), (map_spec, source.meta, source.box))
    map_meta = source.meta
    read_s = time.perf_counter() - started
    nodes = compact_labels(labels)
    del labels
    graph = region_graph(nodes[0], bins=bins if histogram else 0, nodes=nodes, **source.region_graph_input)
    del source
    history = merge_history(graph, thresholds[-1], name, q, consume=True)
    log.info("%d fragments, %d edges, %d merges up to %g (%s)", graph.n_nodes, graph.n_edges, len(history),
             thresholds[-1], history.score)
    del graph
    params = {"thresholds": thresholds, "score": history.score, "bins": bins, "invert": invert}
    record = provenance_record(f"{AGGLOMERATE} segment", params, [(fragments_spec, fmeta), (map_spec, map_meta)])
    if history_path:
        write_history(history_path, history, fragments_spec)
    written = _write_segmentations(history, thresholds, outputs, nodes, fmeta, record, compression, on_written)
    if history_path:
        written.append(history_path)
        if on_written is not None:
            on_written(history_path)
    elapsed = time.perf_counter() - started
    log.info("%d thresholds in %.1f s (reading %.1f s), %.2f Mvoxel/s", len(thresholds), elapsed, read_s,
             fbox.size / max(elapsed, 1e-9) / 1e6)
    return written


def replay_volume(fragments_spec: str, history_path: str, thresholds, output: str, *, voxel_size_nm=None,
                  compression: str = "gzip", on_written: Callable[[str], None] | None = None) -> list[str]:
    """The em-agglomerate replay job: segmentations at new thresholds from a saved merge history
    (no map, no rerun). Thresholds may not exceed the one the history was computed up to."""
    thresholds = as_thresholds(thresholds)
    outputs = threshold_outputs(output, thresholds, compression)
    history = read_history(history_path)
    for t in thresholds:
        history.prefix(t)  # one-line error for thresholds beyond the history, before any work
    labels, fmeta, _ = read_labels(fragments_spec, voxel_size_nm)
    nodes = compact_labels(labels)
    del labels
    record = provenance_record(f"{AGGLOMERATE} replay", {"thresholds": thresholds, "history": history_path,
                                                         "score": history.score}, [(fragments_spec, fmeta)])
    return _write_segmentations(history, thresholds, outputs, nodes, fmeta, record, compression, on_written)


def _write_segmentations(history, thresholds, outputs, nodes, fmeta, record, compression, on_written) -> list[str]:
    written = []
    # one buffer for all thresholds: each segmentation is written before the next is built
    for t, spec, seg in zip(thresholds, outputs, segmentations(None, history, thresholds, nodes=nodes, reuse_buffer=True)):
        path = io.write_volume(spec, seg, _segment_metadata(fmeta, t, history.score, record), compression=compression)
        written.append(path)
        if on_written is not None:
            on_written(path)
    return written
