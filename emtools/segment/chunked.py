"""Chunked segmentation as pipeline steps: each takes paths, writes one file, returns its path.

A volume too large for one process is cut into chunks with a halo; every step below runs once
per chunk (any order, any machine) except ``fragment_offsets_table`` and ``stitch_tables``,
which read small tables only. The model is the one of :mod:`emtools.segment.stitch`::

    split_map          volume -> chunk files (data box = responsible region + halo)
    watershed_volume   chunk -> fragments 1..n_k over its responsible region   (segment.jobs)
    fragment_offsets_table   all fragment chunks -> offsets.tsv (global ids offset_k + i)
    chunk_edges        chunk + offsets -> edge table of the contacts it owns (u, v, score, area)
    stitch_tables      all edge tables -> lut.tsv: fragment -> segment, per threshold
    relabel_chunk      fragment chunk + lut -> segmentation chunk
    merge_labels       segmentation chunks -> one volume

The ``em-agglomerate offsets|edges|stitch|relabel`` commands call these functions; their
pure numpy parts (:func:`owned_edges`, :func:`relabel_fragments`) work on arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.meta import provenance_record
from emtools.segment.agglomerate import joining_scores, merge_history
from emtools.segment.files import (
    as_thresholds,
    chunk_regions,
    cropped_metadata,
    read_labels,
    read_map,
)
from emtools.segment.region_graph import DEFAULT_BINS, compact_labels, region_graph
from emtools.segment.scores import needs_histogram, parse_score
from emtools.segment.structures import check_label_dtype
from emtools.segment.stitch import apply_table, best_edges, lookup_tables
from emtools.segment.tables import (
    ChunkOffset,
    EdgeTable,
    chunk_offsets,
    read_edges,
    read_lookup,
    read_offsets,
    write_edges,
    write_lookup,
    write_offsets,
)
from emtools.tiling.geometry import Box

__all__ = [
    "assemble_fragments", "chunk_edges", "fragment_offsets_table", "merge_labels", "owned_edges",
    "relabel_chunk", "relabel_fragments", "split_map", "stitch_tables",
]

log = logging.getLogger("emtools")
TOOL = "em-agglomerate"


def split_map(volume_spec: str, out_dir: str, chunk_zyx: Sequence[int], halo_zyx: Sequence[int], *,
              compression: str = "gzip") -> list[str]:
    """Cut a map into chunk files with a halo (as ``em-tile split``); the paths, z-major."""
    from emtools.tiling.chunk_files import split_volume

    io.parse_compression(compression)
    os.makedirs(out_dir, exist_ok=True)
    with io.open_volume(volume_spec) as source:
        params = {"chunk_zyx": list(chunk_zyx), "halo_zyx": list(halo_zyx), "format": "h5",
                  "compression": compression, "voxel_size_nm": list(source.meta.voxel_size_nm),
                  "offset_nm": list(source.meta.offset_nm)}
        record = provenance_record("em-tile split", params, [(volume_spec, source.meta)])
        return list(split_volume(source, out_dir, chunk_zyx, halo_zyx, compression=compression, record=record))


def merge_labels(chunk_paths: Sequence[str], output: str, *, compression: str = "gzip") -> str:
    """Assemble label chunks into one volume, each from its responsible region (as
    ``em-tile merge``); the path written."""
    from emtools.tiling.chunk_files import inspect_chunks, merge_chunks

    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    io.output_format(output)
    infos = inspect_chunks(list(chunk_paths))
    params = {"blend": "none", "fill": None, "compression": compression, "chunks": len(infos)}
    record = provenance_record("em-tile merge", params, [(i.spec, i.meta) for i in infos])

    def writer(volume_box, dtype, channels, meta):
        shape = ((channels,) if channels else ()) + volume_box.shape
        return io.VolumeWriter(output, shape, dtype, meta, compression=compression)

    return merge_chunks(infos, writer, blend="none", record=record)


# ----------------------------------------------------------------------------- offsets

def fragment_offsets_table(fragment_chunks: Sequence[str], out_path: str) -> str:
    """Give each fragment chunk (from ``watershed_volume``, no halo) a global id range; write
    the offsets table. Reads only the files' metadata (``fragment_count``) where it can."""
    io.check_output_path(out_path)
    chunks = []
    for spec in fragment_chunks:
        with io.open_volume(spec) as source:
            check_label_dtype(source.dtype, spec)
            _, responsible = chunk_regions(source.meta, source.box)
            if responsible != source.box:
                raise EmError(f"{spec} holds a halo; use fragments from em-watershed (cropped to their region)")
            count = source.meta.attrs.get("fragment_count")
            if count is None:
                count = int(source.read().max())
            chunks.append((spec, responsible, int(count)))
    write_offsets(out_path, chunk_offsets(chunks))
    return out_path


def assemble_fragments(rows: Sequence[ChunkOffset], box: Box) -> np.ndarray:
    """Global fragment ids over ``box`` (global voxels) from the chunks that overlap it; an
    error where no chunk covers a voxel."""
    out = np.zeros(box.shape, np.uint64)
    covered = 0
    for row in rows:
        part = row.region.intersect(box)
        if part is None:
            continue
        with io.open_volume(row.spec) as source:
            data = source.read(part.shift(tuple(-b for b in source.box.begin))).astype(np.uint64)
        data[data != 0] += np.uint64(row.offset)
        out[box.local(part)] = data
        covered += part.size
    if covered != box.size:
        raise EmError(f"the fragment chunks in the offsets table do not cover {box.text()} (missing chunks?)")
    return out


# ----------------------------------------------------------------------------- edges

def _check_until(until: float) -> None:
    if not 0.0 <= until <= 1.0:
        raise EmError(f"--until must be in [0, 1], got {until:g}")


def owned_edges(fragments: np.ndarray, responsible: Box | None = None, *, affinities: np.ndarray | None = None,
                boundary: np.ndarray | None = None, until: float = 1.0, score: str = "mean",
                bins: int = DEFAULT_BINS) -> tuple[EdgeTable, int, int]:
    """Agglomerate one chunk (fragments with global ids over chunk + halo) up to ``until``;
    (edge table of the contacts it owns, fragments in the chunk, merges made).

    ``responsible``: the chunk's own region in array coordinates (None: all of it). A contact
    is owned when its voxel further along the axis lies in that region, so chunks that tile a
    volume own every contact once; its score is the threshold at which *this* chunk's
    agglomeration (which sees the halo) joined its two fragments.
    """
    name, q = parse_score(score)
    until = float(until)
    _check_until(until)
    nodes = compact_labels(fragments)
    values = {"affinities": affinities} if affinities is not None else {"boundary": boundary}
    region = None if responsible is None else (responsible.begin, responsible.end)
    owned = region_graph(nodes[0], bins=0, nodes=nodes, region=region, **values)
    graph = region_graph(nodes[0], bins=bins if needs_histogram(name) else 0, nodes=nodes, **values)
    history = merge_history(graph, until, name, q)
    join = joining_scores(graph, history)
    # owned edges are a subset of the graph's; both are sorted by (id u, id v)
    gkey = graph.u * (graph.n_nodes + 1) + graph.v
    okey = owned.u * (owned.n_nodes + 1) + owned.v
    where = np.searchsorted(gkey, okey)
    table = EdgeTable(graph.ids[owned.u], graph.ids[owned.v], join[where], owned.count, history.score, until)
    return table, graph.n_nodes, len(history)


def chunk_edges(chunk_spec: str, offsets_path: str, out_path: str, *, until: float = 1.0, score: str = "mean",
                bins: int = DEFAULT_BINS, invert: bool = False, voxel_size_nm=None) -> str:
    """Write the edge table of one map chunk (affinities or boundary, with its halo, from
    ``split_map``); its fragments come from the fragment chunks listed in the offsets table.

    ``until``: the highest threshold :func:`stitch_tables` may ask for. ``score``: how a
    contact's affinities become a merge cost (a name of :mod:`emtools.segment.scores`).
    """
    parse_score(score)  # one-line errors for the arguments before any reading
    _check_until(until)
    io.check_output_path(out_path)
    rows = read_offsets(offsets_path)
    source = read_map(chunk_spec, voxel_size_nm, invert=invert)
    data_box, responsible = chunk_regions(source.meta, source.box)
    fragments = assemble_fragments(rows, data_box)
    local = responsible.shift(tuple(-b for b in data_box.begin))
    table, n_fragments, n_merges = owned_edges(fragments, local, until=until, score=score, bins=bins,
                                               **source.region_graph_input)
    del source, fragments
    write_edges(out_path, table, chunk_spec, responsible, n_fragments)
    log.info("%s: %d fragments, %d edges owned, %d merges", chunk_spec, n_fragments, len(table.u), n_merges)
    return out_path


# ----------------------------------------------------------------------------- stitch

def stitch_tables(edge_paths: Sequence[str], offsets_path: str, thresholds, out_path: str) -> str:
    """Join the chunks' edge tables into one look-up table (fragment -> segment) per threshold.

    An edge seen by several chunks is decided by the chunk that owns most of its contact;
    union-find over the edges with score < t; a segment takes its smallest fragment id.
    ``thresholds``: increasing numbers in [0, 1], or their text ``"0.3,0.5"``.
    """
    thresholds = as_thresholds(thresholds)
    io.check_output_path(out_path)
    n_fragments = sum(row.count for row in read_offsets(offsets_path))
    tables = [read_edges(path, up_to=thresholds[-1]) for path in edge_paths]
    if not tables:
        raise EmError("no edge tables given")
    scores = {t.score_name for t in tables}
    if len(scores) > 1:
        raise EmError(f"the edge tables were made with different scores: {', '.join(sorted(map(str, scores)))}")
    u, v, score, _ = best_edges(*(np.concatenate([getattr(t, c) for t in tables]) for c in ("u", "v", "score", "area")))
    n_tables = len(tables)
    del tables
    lookup = lookup_tables(n_fragments, u, v, score, thresholds)
    write_lookup(out_path, thresholds, lookup, scores.pop(), n_fragments, len(u))
    log.info("%d fragments, %d edges from %d tables", n_fragments, len(u), n_tables)
    return out_path


# ----------------------------------------------------------------------------- relabel

def relabel_fragments(labels: np.ndarray, offset: int, fragments: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """A chunk's fragments 1..n -> global ids ``offset + i`` -> segments (uint64; 0 stays 0).

    ``fragments`` (sorted) and ``segments``: a look-up table; ids not in it are their own segment.
    """
    labels = np.asarray(labels).astype(np.uint64)
    labels[labels != 0] += np.uint64(offset)
    return apply_table(labels, fragments, segments)


def relabel_chunk(fragments_spec: str, offsets_path: str, lut_path: str, threshold: float, out_path: str, *,
                  compression: str = "gzip") -> str:
    """Relabel one fragment chunk (as listed in the offsets table) through the look-up table at
    ``threshold``; the output keeps the chunk's region, so :func:`merge_labels` assembles it."""
    io.parse_compression(compression)
    io.check_output_path(io.output_file(out_path))
    fragments, segments = read_lookup(lut_path, threshold)
    matches = [r for r in read_offsets(offsets_path) if os.path.abspath(r.spec) == os.path.abspath(fragments_spec)]
    if not matches:
        raise EmError(f"{fragments_spec} is not in {offsets_path}")
    labels, meta, box = read_labels(fragments_spec)
    offset = matches[0].offset
    seg = relabel_fragments(labels, offset, fragments, segments)
    del labels
    _, responsible = chunk_regions(meta, box)
    record = provenance_record(f"{TOOL} relabel", {"threshold": threshold, "lut": lut_path, "offset": int(offset)},
                               [(fragments_spec, meta)])
    out_meta = cropped_metadata(meta, responsible, {"threshold": threshold}).with_record(record)
    return io.write_volume(out_path, seg, out_meta, compression=compression)
