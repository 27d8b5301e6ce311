"""Large volumes in overlapping subvolumes: segment each chunk, then stitch by overlap in the halo.

A flood-filling run holds its whole canvas in memory and takes minutes per Mvoxel, so a large
volume is cut into em-tile's chunks (:func:`emtools.tiling.geometry.plan_chunks`), each with a
halo, and every chunk is segmented on its own (any rank, any order)::

      chunk A's read region (segmented)
    |<------------------------------------>|
    +----------------------+---------------+----------------------+
    |  A responsible       |//// O ////////|       B responsible  |
    +----------------------+---------------+----------------------+
                           |<------------------------------------>|
                                          chunk B's read region (segmented)

    O = A.read & B.read: both chunks segmented it. A segment u of A and a segment v of B that
    share voxels there are one object when   score = 1 - |u & v| / min(|u|, |v|)  < threshold
    (|u|, |v| counted in O): more than half of the smaller one's voxels in O lie in the other
    at the default threshold 0.5; threshold 1 joins any overlap, 0 none.

Why the smaller one's share: flood-filling errs towards splits, and a piece that one chunk split
off lies inside its neighbour's segment, so it joins it (the split is undone), while segments
that merely touch or cross in O stay apart. The price: a merge that one chunk makes inside O
spreads to its neighbour's side too (each of the neighbour's objects lies inside the merged
segment there); a halo larger than the FOV keeps a chunk's own region away from such guesses.

The reconciliation is em-agglomerate's chunk stitching (:mod:`emtools.segment.stitch`,
:mod:`emtools.segment.tables`): chunk k's labels 1..n_k become global ids ``offset_k + i``
(the offsets table), each chunk writes the edge table of its overlaps with the chunks after
it (u, v, score, area), ``stitch_tables`` joins them by union-find into a look-up table, and
each chunk's responsible region is relabelled through it. Only the edge score differs from
``em-agglomerate edges`` (overlap instead of affinities), so the same tables can be read and
stitched again at other thresholds (``em-agglomerate stitch WORK/edges/*.tsv --offsets
WORK/offsets.tsv -t 0.3,0.7 -o lut.tsv``). The chunk files hold their halo, so
``em-agglomerate relabel`` (made for halo-free fragments) does not apply to them:
:func:`stitch_chunks` relabels.

The work folder (resumable: each chunk file is written atomically, so a killed run leaves
whole chunk files or none, and a rerun segments only the chunks that are missing)::

    WORK/plan.json                  volume, chunk, halo and the caller's fingerprint (a rerun
                                    with other settings is refused, not mixed in)
    WORK/chunks/seg_<box>.h5        one chunk's labels 1..n over its read region (<box> =
                                    z0-z1_y0-y1_x0-x1, the read region in global voxels)
    WORK/state/<box>                the segment function's checkpoint while its chunk runs
    WORK/offsets.tsv, WORK/edges/<box>.tsv, WORK/lut.tsv     the stitch (rank 0)

Under ``torchrun`` rank r segments chunks r, r + W, r + 2W, ... (:meth:`emtools.ranks.Ranks.mine`);
rank 0 then waits until every chunk file exists (the files are the barrier, so no process
group is needed and a shared folder works across nodes) and stitches; the other ranks return
without labels.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.tiling.geometry import Box, Chunk, chunk_attrs, plan_chunks

__all__ = [
    "ChunkedResult", "chunk_file", "flood_segmenter", "overlap_edges", "plan_subvolumes", "segment_chunked",
    "seeds_in_box", "segment_chunks", "stitch_chunks",
]

log = logging.getLogger("emtools")
PLAN_KIND = "emtools ffn chunks"
SCORE_NAME = "overlap"  # the edge tables' score name (em-agglomerate's stitch refuses mixed ones)

SegmentFn = Callable[[np.ndarray, Box, str], np.ndarray]


@dataclasses.dataclass
class ChunkedResult:
    """What :func:`segment_chunked` did: the stitched labels (rank 0; None on other ranks), the
    chunk files this rank segmented and those it found done, and the stitch's counts."""

    labels: np.ndarray | None
    computed: list[str]
    reused: list[str]
    fragments: int = 0  # chunk labels before stitching (sum over chunks)
    edges: int = 0  # overlapping (u, v) pairs
    segments: int = 0  # labels after stitching


# ----------------------------------------------------------------------------- plan

def plan_subvolumes(shape_zyx: Sequence[int], chunk_zyx: Sequence[int], halo_zyx: Sequence[int],
                    origin_vx: Sequence[int] = (0, 0, 0)) -> list[Chunk]:
    """em-tile's chunks of a volume of ``shape_zyx`` whose voxel 0 is ``origin_vx`` (global
    voxels), z-major. Chunk sizes are clipped to the volume (a chunk larger than the volume
    along an axis is the whole axis, and so is a halo)."""
    chunk, halo = _clipped(shape_zyx, chunk_zyx, halo_zyx)
    return plan_chunks(Box.from_shape(shape_zyx, origin_vx), chunk, halo)


def _clipped(shape_zyx, chunk_zyx, halo_zyx) -> tuple[list[int], list[int]]:
    """Chunk and halo no larger than the volume (a halo past the volume's end reads nothing)."""
    if len(chunk_zyx) != 3 or len(halo_zyx) != 3:
        raise EmError("chunk and halo must be z,y,x triples")
    chunk = [min(int(c), int(s)) for c, s in zip(chunk_zyx, shape_zyx)]
    halo = [min(int(h), int(s) - 1) for h, s in zip(halo_zyx, shape_zyx)]
    return chunk, halo


def chunk_file(work_dir: str, chunk: Chunk) -> str:
    """Where one chunk's labels go: ``WORK/chunks/seg_<read box>.h5``."""
    return os.path.join(work_dir, "chunks", f"seg_{chunk.read.name()}.h5")


def _state_path(work_dir: str, chunk: Chunk) -> str:
    return os.path.join(work_dir, "state", chunk.read.name())


def _check_plan(work_dir: str, plan: dict) -> None:
    """Write ``plan.json`` or check that the one there describes the same run."""
    from emtools.io import atomic_text

    path = os.path.join(work_dir, "plan.json")
    text = json.dumps(plan, sort_keys=True, indent=1)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError) as exc:
            raise EmError(f"cannot read {path}: {exc}") from None
        if found != json.loads(text):
            differ = sorted(k for k in set(found) | set(plan) if found.get(k) != json.loads(text).get(k))
            raise EmError(f"{work_dir} holds chunks of another run (different {', '.join(differ)}); "
                          "use a new folder or remove it")
        return
    with atomic_text(path) as f:
        f.write(text + "\n")


def _plan_record(volume: Box, chunk_zyx, halo_zyx, fingerprint: dict | None) -> dict:
    return {"kind": PLAN_KIND, "volume_begin_vx": list(volume.begin), "volume_end_vx": list(volume.end),
            "chunk_zyx": [int(c) for c in chunk_zyx], "halo_zyx": [int(h) for h in halo_zyx],
            "fingerprint": json.loads(json.dumps(fingerprint or {}, sort_keys=True, default=str))}


# ----------------------------------------------------------------------------- segment

def _renumbered(labels, shape, chunk: Chunk) -> tuple[np.ndarray, int]:
    import fastremap

    from emtools.segment.structures import check_labels, unsigned_view

    labels = unsigned_view(check_labels(labels, f"the segmentation of chunk {chunk.read.text()}", ndim=3))
    if labels.shape != tuple(shape):
        raise EmError(f"the segment function returned shape {labels.shape} for chunk {chunk.read.text()} "
                      f"of shape {tuple(shape)}")
    out, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    return out, max(mapping.values()) if mapping else 0


def _write_chunk(path: str, labels: np.ndarray, count: int, chunk: Chunk, volume: Box, voxel_size_nm,
                 sha: str) -> str:
    from emtools import io
    from emtools.meta import Metadata

    attrs = chunk_attrs(chunk.read, chunk.responsible, volume, chunk.index_zyx)
    attrs.update(fragment_count=int(count), plan_sha256=sha)
    offset = tuple(b * v for b, v in zip(chunk.read.begin, voxel_size_nm))
    meta = Metadata("zyx", offset, tuple(voxel_size_nm), (), attrs)
    return io.write_volume(path, labels, meta)


def _chunk_is_done(path: str, chunk: Chunk, sha: str) -> bool:
    if not os.path.exists(path):
        return False
    from emtools import io

    try:
        with io.open_volume(path) as source:
            ok = source.box == chunk.read and source.meta.attrs.get("plan_sha256") == sha
    except EmError as exc:
        log.warning("%s: redoing the chunk, its file cannot be read (%s)", path, exc)
        return False
    if not ok:
        log.warning("%s: redoing the chunk, its file belongs to another plan", path)
    return ok


def segment_chunks(segment_fn: SegmentFn, image, chunks: Sequence[Chunk], work_dir: str, *, volume: Box,
                   voxel_size_nm=(1.0, 1.0, 1.0), plan_sha: str = "") -> tuple[list[str], list[str]]:
    """Segment ``chunks`` (this rank's) that have no chunk file yet; (computed, reused) paths.

    ``segment_fn(block, box, state_path)``: labels (any non-negative integers, 0 =
    unsegmented) for ``block = image[box]`` (``box``: the chunk's read region in the image's
    array coordinates); it may checkpoint to ``state_path`` and resume from it.
    """
    os.makedirs(os.path.join(work_dir, "chunks"), exist_ok=True)
    os.makedirs(os.path.join(work_dir, "state"), exist_ok=True)
    computed, reused = [], []
    origin = volume.begin
    for chunk in chunks:
        path = chunk_file(work_dir, chunk)
        if _chunk_is_done(path, chunk, plan_sha):
            reused.append(path)
            continue
        local = chunk.read.shift(tuple(-o for o in origin))
        started = time.perf_counter()
        block = np.asarray(image[_slices(local)])
        state = _state_path(work_dir, chunk)
        labels, count = _renumbered(segment_fn(block, local, state), block.shape, chunk)
        _write_chunk(path, labels, count, chunk, volume, voxel_size_nm, plan_sha)
        for leftover in glob.glob(glob.escape(state) + "*"):  # the chunk is done: its checkpoints go
            os.remove(leftover)
        computed.append(path)
        log.info("chunk %s: %d segments in %.1f s", chunk.read.text(), count, time.perf_counter() - started)
    return computed, reused


# ----------------------------------------------------------------------------- stitch

def overlap_edges(a: np.ndarray, b: np.ndarray, min_overlap: int = 1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments of ``a`` and ``b`` (two labellings of one region) that share voxels: (u of a,
    v of b, score, area), sorted by (u, v).

    ``area`` = |u & v| (voxels labelled u in a and v in b), at least ``min_overlap``; ``score``
    = 1 - area / min(|u|, |v|), with |u| and |v| the voxels of each in the region: 0 when the
    smaller one lies wholly in the other.
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise EmError(f"the two labellings differ in size: {a.size} and {b.size}")
    both = (a != 0) & (b != 0)
    empty = (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.float64), np.zeros(0, np.int64))
    if not both.any():
        return empty
    ids_a, size_a = np.unique(a[a != 0], return_counts=True)
    ids_b, size_b = np.unique(b[b != 0], return_counts=True)
    ia = np.searchsorted(ids_a, a[both])
    ib = np.searchsorted(ids_b, b[both])
    keys, area = np.unique(ia.astype(np.int64) * len(ids_b) + ib, return_counts=True)
    ku, kv = keys // len(ids_b), keys % len(ids_b)
    keep = area >= max(int(min_overlap), 1)
    ku, kv, area = ku[keep], kv[keep], area[keep]
    score = 1.0 - area / np.minimum(size_a[ku], size_b[kv])
    return ids_a[ku].astype(np.uint64), ids_b[kv].astype(np.uint64), score.astype(np.float64), area.astype(np.int64)


def _read_part(path: str, part: Box) -> np.ndarray:
    from emtools import io

    with io.open_volume(path) as source:
        return source.read(part.shift(tuple(-b for b in source.box.begin))).astype(np.uint64)


def _chunk_edge_table(k: int, chunks: Sequence[Chunk], paths: Sequence[str], offsets: Sequence[int],
                      min_overlap: int):
    """Edges between chunk k and every later chunk whose read region overlaps k's."""
    from emtools.segment.tables import EdgeTable

    columns: list[list[np.ndarray]] = [[], [], [], []]
    for j in range(k + 1, len(chunks)):
        shared = chunks[k].read.intersect(chunks[j].read)
        if shared is None:
            continue
        u, v, score, area = overlap_edges(_read_part(paths[k], shared), _read_part(paths[j], shared), min_overlap)
        for column, values in zip(columns, (u + np.uint64(offsets[k]), v + np.uint64(offsets[j]), score, area)):
            column.append(values)
    dtypes = (np.uint64, np.uint64, np.float64, np.int64)
    u, v, score, area = (np.concatenate(c).astype(t) if c else np.zeros(0, t) for c, t in zip(columns, dtypes))
    return EdgeTable(u, v, score, area, SCORE_NAME, 1.0)


def stitch_chunks(chunks: Sequence[Chunk], work_dir: str, *, threshold: float = 0.5, min_overlap: int = 1,
                  volume: Box) -> tuple[np.ndarray, int, int]:
    """Join the chunk files of ``chunks`` into one volume: (uint64 labels over ``volume``,
    fragments, edges). Writes offsets.tsv, edges/<box>.tsv and lut.tsv in the work folder.

    Labels are numbered 1..n in raster order of first appearance, so the result does not
    depend on the chunking wherever the chunks agree with a whole-volume run.
    """
    import fastremap

    from emtools import io
    from emtools.segment.chunked import relabel_fragments, stitch_tables
    from emtools.segment.tables import (
        chunk_offsets,
        read_lookup,
        write_edges,
        write_offsets,
    )

    paths = [chunk_file(work_dir, c) for c in chunks]
    counts = []
    for path in paths:
        with io.open_volume(path) as source:
            counts.append(int(source.meta.attrs["fragment_count"]))
    rows = chunk_offsets([(p, c.responsible, n) for p, c, n in zip(paths, chunks, counts)])
    offset_of = {r.spec: r.offset for r in rows}
    offsets = [offset_of[p] for p in paths]
    offsets_path = os.path.join(work_dir, "offsets.tsv")
    write_offsets(offsets_path, rows)
    os.makedirs(os.path.join(work_dir, "edges"), exist_ok=True)
    edge_paths, n_edges = [], 0
    for k, chunk in enumerate(chunks):
        table = _chunk_edge_table(k, chunks, paths, offsets, min_overlap)
        path = os.path.join(work_dir, "edges", f"{chunk.read.name()}.tsv")
        write_edges(path, table, paths[k], chunk.responsible, counts[k])
        edge_paths.append(path)
        n_edges += len(table.u)
    lut_path = os.path.join(work_dir, "lut.tsv")
    stitch_tables(edge_paths, offsets_path, [threshold], lut_path)
    fragments, segments = read_lookup(lut_path, threshold)
    out = np.zeros(volume.shape, np.uint64)
    for chunk, path, offset in zip(chunks, paths, offsets):
        part = _read_part(path, chunk.responsible)
        out[volume.local(chunk.responsible)] = relabel_fragments(part, offset, fragments, segments)
    out, _ = fastremap.renumber(out, preserve_zero=True, in_place=True)
    return out.astype(np.uint64, copy=False), int(sum(counts)), n_edges


# ----------------------------------------------------------------------------- all of it

def _wait_for(paths: Sequence[str], timeout_s: float | None, poll_s: float) -> None:
    started = time.monotonic()
    while True:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing:
            return
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise EmError(f"{len(missing)} chunk files still missing after {timeout_s:g} s "
                          f"(first: {missing[0]}); did another rank fail?")
        time.sleep(poll_s)


def segment_chunked(
    segment_fn: SegmentFn,
    image,
    chunk_zyx: Sequence[int],
    halo_zyx: Sequence[int],
    work_dir: str,
    *,
    ranks=None,
    threshold: float = 0.5,
    min_overlap: int = 1,
    voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
    origin_vx: Sequence[int] = (0, 0, 0),
    fingerprint: dict | None = None,
    wait_timeout_s: float | None = None,
    poll_s: float = 1.0,
) -> ChunkedResult:
    """Segment ``image`` (z, y, x; anything sliceable with a ``shape``, e.g. an array or an
    h5py dataset) chunk by chunk in ``work_dir`` and stitch the chunks; see the module's docstring.

    ``segment_fn(block, box, state_path) -> labels``: segments one chunk's read region
    (``box`` in ``image``'s array coordinates); :func:`flood_segmenter` makes one from a model.
    ``ranks``: an :class:`emtools.ranks.Ranks` (default: from torchrun's environment).
    ``threshold``/``min_overlap``: when two chunks' segments are one object (see
    :func:`overlap_edges`). ``voxel_size_nm``/``origin_vx``: where the image lies (chunk files
    carry it; boxes are in global voxels). ``fingerprint``: what must not change between a run
    and its resumption (model, options, image): a work folder made with another one is refused.
    Rank 0 waits up to ``wait_timeout_s`` (None: for ever) for the other ranks' chunks.
    """
    from emtools.ranks import ranks_from_env

    if ranks is None:
        ranks = ranks_from_env()
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3:
        raise EmError(f"the image must be 3D (z, y, x), got shape {shape}")
    chunks = plan_subvolumes(shape, chunk_zyx, halo_zyx, origin_vx)
    volume = Box.from_shape(shape, origin_vx)
    if not 0.0 <= float(threshold) <= 1.0:
        raise EmError(f"the stitch threshold must be in [0, 1], got {threshold:g}")
    os.makedirs(work_dir, exist_ok=True)
    plan = _plan_record(volume, *_clipped(shape, chunk_zyx, halo_zyx), fingerprint)
    _check_plan(work_dir, plan)
    sha = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    computed, reused = segment_chunks(segment_fn, image, ranks.mine(chunks), work_dir, volume=volume,
                                      voxel_size_nm=voxel_size_nm, plan_sha=sha)
    if not ranks.is_main:
        return ChunkedResult(None, computed, reused)
    _wait_for([chunk_file(work_dir, c) for c in chunks], wait_timeout_s, poll_s)
    labels, fragments, edges = stitch_chunks(chunks, work_dir, threshold=threshold, min_overlap=min_overlap,
                                             volume=volume)
    segments = int(labels.max()) if labels.size else 0
    log.info("%d chunks: %d fragments, %d overlapping pairs, %d segments", len(chunks), fragments, edges, segments)
    return ChunkedResult(labels, computed, reused, fragments, edges, segments)


def flood_segmenter(
    predict_fovs: Callable[[np.ndarray], np.ndarray],
    fov_zyx: Sequence[int],
    deltas_zyx: Sequence[int],
    options=None,
    seeds: Callable[[np.ndarray, np.ndarray | None, Box], Iterable[Sequence[int]]] | None = None,
    *,
    restrictor: np.ndarray | None = None,
    consensus: bool = False,
    consensus_options: dict | None = None,
    progress=None,
    flood: Callable | None = None,
) -> SegmentFn:
    """A ``segment_fn`` for :func:`segment_chunked` that flood-fills each chunk.

    ``seeds(block, mask, box) -> seeds`` (z, y, x in the block) places the seeds of one
    chunk's image (normalised, as flood_fill wants it; ``mask``: the chunk's part of
    ``restrictor``, a mask over the whole image, or None; ``box``: the chunk's read region in
    the image), e.g. ``lambda block, mask, box: seeds.peaks(block, mask)`` with
    :mod:`emtools.ffn.seeds`, or :func:`seeds_in_box` for one list over the whole image.
    ``consensus``: each chunk is the
    :func:`emtools.ffn.consensus.flood_consensus` of two runs (``consensus_options``: its
    keyword arguments, e.g. ``fov_offset_zyx``). ``options``: a ``FloodOptions`` (None: the
    defaults). ``flood``: flood_fill (the default) or a test double with its signature.
    """
    if seeds is None:
        raise EmError("flood_segmenter needs a seed policy (seeds(block, mask, box) -> z,y,x positions)")

    def segment(block: np.ndarray, box: Box, state_path: str) -> np.ndarray:
        run = flood
        if run is None:
            from emtools.ffn.inference import flood_fill as run
        mask = None if restrictor is None else np.asarray(restrictor[_slices(box)])
        positions = list(seeds(block, mask, box))
        if consensus:
            from emtools.ffn.consensus import flood_consensus

            return flood_consensus(predict_fovs, block, positions, fov_zyx, deltas_zyx, options, restrictor=mask,
                                   state_path=state_path, progress=progress, flood=run,
                                   **(consensus_options or {})).labels
        return run(predict_fovs, block, positions, fov_zyx, deltas_zyx, options, restrictor=mask,
                   state_path=state_path, progress=progress).labels

    return segment


def seeds_in_box(seeds: Iterable[Sequence[int]], box: Box) -> list[tuple[int, int, int]]:
    """The seeds (z, y, x in the image) that lie in ``box``, in the box's coordinates, in order."""
    out = []
    for s in seeds:
        if all(b <= int(p) < e for p, b, e in zip(s, box.begin, box.end)):
            out.append(tuple(int(p) - b for p, b in zip(s, box.begin)))
    return out  # type: ignore[return-value]


def _slices(box: Box) -> tuple[slice, slice, slice]:
    return tuple(slice(b, e) for b, e in zip(box.begin, box.end))  # type: ignore[return-value]
