"""Oversegmentation consensus of two segmentations (google/ffn's "split" consensus).

Two flood-fill runs of the same volume (seeds in another order, or the FOV lattice shifted)
disagree where an object was grown wrongly in one of them: a merge in one run is rarely made
the same way in the other. The consensus keeps only what both agree on: every voxel gets the
pair (label in run a, label in run b), each distinct pair is one segment, split into its
6-connected components (a pair can occur in places that do not touch), and components under
``min_size`` voxels are dropped. A split in either run therefore splits the result; where the
runs agree, the object is kept whole::

    run a:  1 1 1 1 2 2        run b:  5 5 6 6 6 6        consensus:  1 1 2 2 3 3

The result is an oversegmentation: a good set of fragments for ``em-agglomerate`` (uint64,
numbered 1..n in raster order of first appearance, 0 = unsegmented; :func:`fragments_metadata`
adds the ``fragment_count`` that ``em-agglomerate offsets`` reads).

Voxels that only one run labelled (``one_run``):

- ``"drop"`` (default): unsegmented. The strictest: a voxel is in a fragment only if
  both runs put it in an object.
- ``"keep"``: kept, as the pair (a, 0) or (0, b); a region that one run left empty still gets
  fragments, split from its neighbours wherever the other run's objects begin.
- ``"first"``: google/ffn's ``split_segmentation_by_intersection`` rule: voxels of run a that
  run b left empty are kept, run b's alone are dropped (the runs are not symmetric).

:func:`flood_consensus` runs :func:`emtools.ffn.inference.flood_fill` twice (the second run
from the first run's origins in reverse order, and/or with the FOV lattice shifted by
``fov_offset_zyx``) and returns the consensus of the two.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from emtools.errors import EmError

__all__ = ["ONE_RUN_CHOICES", "ConsensusResult", "consensus", "flood_consensus", "fragments_metadata",
           "remove_states"]

ONE_RUN_CHOICES = ("drop", "keep", "first")


def _checked_labels(labels, name: str) -> np.ndarray:
    from emtools.segment.structures import check_labels, unsigned_view

    return unsigned_view(check_labels(labels, name, ndim=3))


def consensus(a: np.ndarray, b: np.ndarray, min_size: int = 0, *, one_run: str = "drop") -> np.ndarray:
    """The oversegmentation consensus of two label volumes (z, y, x) of the same shape.

    Each distinct pair (a, b) of a voxel's labels is one segment, split into 6-connected
    components; components under ``min_size`` voxels become 0. ``one_run`` decides about voxels
    that only one run labelled (``drop``, ``keep`` or ``first``; see the module's docstring).
    Returns uint64 labels 1..n, numbered in raster order of first appearance (deterministic;
    the numbering does not depend on the input ids). The inputs are not modified.
    """
    import cc3d
    import fastremap

    a = _checked_labels(a, "the first segmentation")
    b = _checked_labels(b, "the second segmentation")
    if a.shape != b.shape:
        raise EmError(f"the two segmentations differ in shape: {a.shape} and {b.shape}")
    if one_run not in ONE_RUN_CHOICES:
        raise EmError(f"unknown one_run {one_run!r}; choose one of {', '.join(ONE_RUN_CHOICES)}")
    if min_size < 0:
        raise EmError(f"min_size must be zero or positive, got {min_size}")
    if a.size == 0:
        return np.zeros(a.shape, np.uint64)
    # compact both id spaces so that one uint64 holds the pair (ids could be anything below 2^64)
    ia, map_a = fastremap.renumber(np.ascontiguousarray(a), preserve_zero=True, in_place=False)
    ib, map_b = fastremap.renumber(np.ascontiguousarray(b), preserve_zero=True, in_place=False)
    nb = np.uint64(max(map_b.values()) + 1)
    pairs = ia.astype(np.uint64) * nb + ib.astype(np.uint64)
    del ia
    if one_run == "drop":
        pairs[(a == 0) | (b == 0)] = 0
    elif one_run == "first":
        pairs[a == 0] = 0
    # "keep": (a, 0) and (0, b) are pairs like any other; (0, 0) is 0 already
    del ib
    components = cc3d.connected_components(pairs, connectivity=6, out_dtype=np.uint64)
    del pairs
    if min_size > 1:
        components = cc3d.dust(components, threshold=int(min_size), connectivity=6, in_place=True,
                               precomputed_ccl=True)
    out, _ = fastremap.renumber(components, preserve_zero=True, in_place=True)
    return out.astype(np.uint64, copy=False)


def fragments_metadata(meta, labels: np.ndarray, params: dict, inputs: Sequence = ()):
    """Metadata for writing a consensus as em-agglomerate fragments: ``meta`` (the image's:
    offset, voxel size) with ``fragment_count`` and a provenance record of ``params``.

    ``inputs``: (spec, Metadata) pairs the consensus was made from, for the record."""
    from emtools.meta import Metadata, provenance_record

    attrs = dict(meta.attrs)
    for key in ("normalization", "fragment_count", "threshold", "score"):
        attrs.pop(key, None)
    attrs["fragment_count"] = int(labels.max()) if labels.size else 0
    record = provenance_record("em-predict ffn consensus", params, list(inputs))
    return Metadata("zyx", meta.offset_nm, meta.voxel_size_nm, meta.provenance, attrs).with_record(record)


@dataclasses.dataclass
class ConsensusResult:
    """The consensus labels and the two runs it came from (``FloodResult`` each)."""

    labels: np.ndarray  # uint64 (z, y, x)
    first: object
    second: object

    @property
    def fovs(self) -> int:
        return int(self.first.fovs) + int(self.second.fovs)

    @property
    def seconds(self) -> float:
        return float(self.first.seconds) + float(self.second.seconds)


def _shifted(array: np.ndarray | None, offset: Sequence[int]) -> np.ndarray | None:
    """``array`` with ``offset`` voxels of reflected context added before each axis."""
    if array is None or not any(offset):
        return array
    return np.pad(array, [(int(o), 0) for o in offset], mode="reflect")


def flood_consensus(
    predict_fovs: Callable[[np.ndarray], np.ndarray],
    image_norm: np.ndarray,
    seeds: Iterable[Sequence[int]],
    fov_zyx: Sequence[int],
    deltas_zyx: Sequence[int],
    options=None,
    *,
    second_seeds: str | Iterable[Sequence[int]] = "inverse",
    fov_offset_zyx: Sequence[int] = (0, 0, 0),
    min_size: int | None = None,
    one_run: str = "drop",
    restrictor: np.ndarray | None = None,
    state_path: str | None = None,
    progress=None,
    flood: Callable | None = None,
) -> ConsensusResult:
    """Two flood-fill runs of one volume and their :func:`consensus`.

    The first run grows ``seeds`` in their order. The second grows ``second_seeds``:
    ``"inverse"`` (default: the first run's origins, last segment first:
    :func:`emtools.ffn.seeds.inverse`, google/ffn's inverse policy), ``"reverse"`` (``seeds``
    in reverse order) or a sequence of its own; with
    ``fov_offset_zyx`` (each 0 <= o < the volume's size) the second run also sees the volume
    shifted by that many voxels (reflected context before each axis), so its FOVs lie on another
    lattice (offsets that are not multiples of the deltas give other FOV positions).
    ``min_size``: smallest consensus fragment (default: ``options.min_size``). ``state_path``:
    each run checkpoints to ``state_path + ".first"`` / ``".second"`` (flood_fill's resume; a
    finished first run is not redone; :func:`remove_states` deletes both once the result is
    stored).
    ``flood``: the flood-fill function (default :func:`emtools.ffn.inference.flood_fill`;
    tests pass a test double with its signature).
    """
    if flood is None:
        from emtools.ffn.inference import flood_fill as flood
    if options is None:
        from emtools.ffn.inference import FloodOptions

        options = FloodOptions()
    image_norm = np.asarray(image_norm)
    offset = tuple(int(o) for o in fov_offset_zyx)
    if len(offset) != 3 or any(o < 0 or o >= s for o, s in zip(offset, image_norm.shape)):
        raise EmError(f"the FOV offset must be z,y,x with 0 <= offset < the volume's size {image_norm.shape}, "
                      f"got {','.join(map(str, fov_offset_zyx))}")
    seeds = [tuple(int(v) for v in s) for s in seeds]
    if min_size is None:
        min_size = int(getattr(options, "min_size", 0))
    state_first = state_path + ".first" if state_path else None
    state_second = state_path + ".second" if state_path else None
    first = flood(predict_fovs, image_norm, seeds, fov_zyx, deltas_zyx, options, restrictor=restrictor,
                  state_path=state_first, progress=progress)
    if isinstance(second_seeds, str):
        if second_seeds == "inverse":
            from emtools.ffn.seeds import inverse

            again = inverse(first.origins)
        elif second_seeds == "reverse":
            again = seeds[::-1]
        else:
            raise EmError(f"unknown second_seeds {second_seeds!r}; choose inverse, reverse or give seeds")
    else:
        again = [tuple(int(v) for v in s) for s in second_seeds]
    again = [tuple(v + o for v, o in zip(s, offset)) for s in again]
    second = flood(predict_fovs, _shifted(image_norm, offset), again, fov_zyx, deltas_zyx, options,
                   restrictor=_shifted(restrictor, offset), state_path=state_second, progress=progress)
    second_labels = np.asarray(second.labels)[tuple(slice(o, None) for o in offset)]
    labels = consensus(first.labels, second_labels, min_size, one_run=one_run)
    if any(offset) and dataclasses.is_dataclass(second):  # report the second run in the volume's coordinates
        changes = {"labels": second_labels,
                   "origins": {k: tuple(int(v) - o for v, o in zip(s, offset)) for k, s in second.origins.items()}}
        if getattr(second, "probabilities", None) is not None:
            changes["probabilities"] = second.probabilities[tuple(slice(o, None) for o in offset)]
        second = dataclasses.replace(second, **changes)
    return ConsensusResult(labels, first, second)


def remove_states(state_path: str | None) -> None:
    """Remove the two runs' checkpoint files of :func:`flood_consensus`, if any remain."""
    if not state_path:
        return
    for suffix in (".first", ".second"):
        try:
            os.remove(state_path + suffix)
        except FileNotFoundError:
            pass
