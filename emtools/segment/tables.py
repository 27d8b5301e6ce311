"""The four text tables of the segmentation steps, each with its writer and its checked reader.

All are tab-separated text (:mod:`emtools.io.tables`) with ``# key=value`` comment lines:

=================  ==============================  ===========================================
table              columns                         written by / read by
=================  ==============================  ===========================================
merge history      a, b, cost                      ``segment --history`` / ``replay``
fragment offsets   spec, begin_zyx, end_zyx,       ``offsets`` / ``edges``, ``stitch``,
                   offset, count                   ``relabel``
edge table         u, v, score, area               ``edges`` (one per chunk) / ``stitch``
look-up table      threshold, fragment, segment    ``stitch`` / ``relabel``
=================  ==============================  ===========================================

(the steps are ``em-agglomerate`` subcommands, and functions of :mod:`emtools.segment.jobs`
and :mod:`emtools.segment.chunked`). Readers raise one-line :class:`~emtools.errors.EmError`
for a missing file, a wrong header, a malformed row or a table of another kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.io.tables import float_column, format_float, id_column, read_table, write_table
from emtools.segment.agglomerate import MergeHistory
from emtools.segment.stitch import fragment_offsets
from emtools.tiling.geometry import Box, first_overlap

__all__ = [
    "EDGE_COLUMNS", "HISTORY_COLUMNS", "LUT_COLUMNS", "OFFSET_COLUMNS", "ChunkOffset", "EdgeTable",
    "chunk_offsets", "read_edges", "read_history", "read_lookup", "read_offsets", "write_edges", "write_history",
    "write_lookup", "write_offsets",
]

HISTORY_COLUMNS = ["a", "b", "cost"]
OFFSET_COLUMNS = ["spec", "begin_zyx", "end_zyx", "offset", "count"]
EDGE_COLUMNS = ["u", "v", "score", "area"]
LUT_COLUMNS = ["threshold", "fragment", "segment"]


def _quote(spec: str) -> str:
    """Specs go into ``key=value`` comment words, which end at white space."""
    return spec.replace(" ", "%20")


# ----------------------------------------------------------------------------- merge history

def write_history(path: str, history: MergeHistory, fragments_spec: str) -> None:
    """The merge history of an agglomeration of ``fragments_spec`` (for :func:`read_history`)."""
    write_table(
        path,
        [f"emtools merge history score={history.score} until={history.until!r}",
         f"fragments={_quote(fragments_spec)} merges={len(history)}"],
        HISTORY_COLUMNS, [history.a, history.b, history.cost], ["%d", "%d", "%r"],
    )


def read_history(path: str) -> MergeHistory:
    info, columns = read_table(path, HISTORY_COLUMNS)
    if "until" not in info or "score" not in info:
        raise EmError(f"{path} is not an em-agglomerate merge history (no score/until line)")
    return MergeHistory(id_column(columns["a"], path), id_column(columns["b"], path),
                        float_column(columns["cost"], path), float(info["until"]), info["score"])


# ----------------------------------------------------------------------------- fragment offsets

@dataclasses.dataclass(frozen=True)
class ChunkOffset:
    """One fragment chunk: its file, the region it covers (global voxels), and where its ids go:
    fragment i of the chunk is global fragment ``offset + i``, for i in 1..count."""

    spec: str
    region: Box
    offset: int
    count: int


def chunk_offsets(chunks: Sequence[tuple[str, Box, int]]) -> list[ChunkOffset]:
    """(spec, region, fragment count) per chunk -> offsets in the chunks' z-major order.

    The order depends only on the regions, so the same chunks give the same ids however they
    are listed. Overlapping regions are an error (each voxel needs one fragment id).
    """
    rows = sorted(((region.begin, region.end, spec, int(count)) for spec, region, count in chunks))
    clash = first_overlap([Box(b, e) for b, e, _, _ in rows])
    if clash is not None:
        raise EmError(f"fragment chunks overlap: {clash[0].text()} and {clash[1].text()}")
    starts = fragment_offsets([r[3] for r in rows])
    return [ChunkOffset(spec, Box(b, e), int(start), count) for (b, e, spec, count), start in zip(rows, starts)]


def write_offsets(path: str, rows: Sequence[ChunkOffset]) -> None:
    """The offsets table (rows as :func:`chunk_offsets` orders them)."""
    write_table(
        path, [f"emtools fragment offsets chunks={len(rows)} fragments={sum(r.count for r in rows)}"], OFFSET_COLUMNS,
        [np.array([r.spec for r in rows], object),
         np.array([",".join(map(str, r.region.begin)) for r in rows], object),
         np.array([",".join(map(str, r.region.end)) for r in rows], object),
         np.array([r.offset for r in rows], np.uint64), np.array([r.count for r in rows])],
        ["%s", "%s", "%s", "%d", "%d"],
    )


def read_offsets(path: str) -> list[ChunkOffset]:
    _, columns = read_table(path, OFFSET_COLUMNS)
    rows = []
    try:
        for spec, b, e, off, count in zip(*(columns[c] for c in OFFSET_COLUMNS)):
            begin, end = tuple(map(int, b.split(","))), tuple(map(int, e.split(",")))
            if len(begin) != 3 or len(end) != 3:
                raise ValueError("not z,y,x")
            region = Box(begin, end)
            rows.append(ChunkOffset(spec, region, int(off), int(count)))
    except ValueError:
        raise EmError(f"{path}: malformed offsets table") from None
    return rows


# ----------------------------------------------------------------------------- edge tables

@dataclasses.dataclass(frozen=True)
class EdgeTable:
    """The contacts one chunk owns: global fragments ``u < v``, the threshold ``score`` at which
    the chunk's agglomeration joined them (inf: not below ``until``), and the contact ``area``
    (voxel faces) that lies in the chunk's responsible region."""

    u: np.ndarray  # uint64
    v: np.ndarray  # uint64
    score: np.ndarray  # float64
    area: np.ndarray  # int64
    score_name: str | None  # how merge costs were scored ("mean", "quantile:0.5", ...)
    until: float


def write_edges(path: str, table: EdgeTable, chunk_spec: str, responsible: Box, n_fragments: int) -> None:
    write_table(
        path,
        [f"emtools edge table score={table.score_name} until={table.until!r} chunk={_quote(chunk_spec)}",
         f"responsible={responsible.text()} fragments={n_fragments} edges={len(table.u)}"],
        EDGE_COLUMNS, [table.u, table.v, np.array([format_float(s) for s in table.score], object), table.area],
        ["%d", "%d", "%s", "%d"],
    )


def read_edges(path: str, up_to: float | None = None) -> EdgeTable:
    """Read an edge table; ``up_to``: the highest threshold the caller will use (an error if
    the chunk's agglomeration stopped below it)."""
    info, columns = read_table(path, EDGE_COLUMNS)
    if "until" not in info:
        raise EmError(f"{path} is not an em-agglomerate edge table")
    if up_to is not None and up_to > float(info["until"]) + 1e-12:
        raise EmError(f"threshold {up_to:g} is above {info['until']}, where {path} stops; "
                      "rerun edges with a higher --until")
    return EdgeTable(id_column(columns["u"], path), id_column(columns["v"], path),
                     float_column(columns["score"], path), id_column(columns["area"], path).astype(np.int64),
                     info.get("score"), float(info["until"]))


# ----------------------------------------------------------------------------- look-up tables

def write_lookup(path: str, thresholds: Sequence[float], tables: Sequence[tuple[np.ndarray, np.ndarray]],
                 score_name: str | None, n_fragments: int, n_edges: int) -> None:
    """Per threshold, the (fragments, segments) pairs of :func:`emtools.segment.stitch.lookup_tables`."""
    columns = [np.concatenate([np.full(len(f), t) for t, (f, _) in zip(thresholds, tables)]),
               np.concatenate([f for f, _ in tables]), np.concatenate([s for _, s in tables])]
    write_table(path, [f"emtools look-up table score={score_name} thresholds={','.join(f'{t:g}' for t in thresholds)}",
                       f"fragments={n_fragments} edges={n_edges}"],
                LUT_COLUMNS, columns, ["%r", "%d", "%d"])


def read_lookup(path: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(fragments sorted, their segments) at ``threshold``, one of the table's thresholds."""
    info, columns = read_table(path, LUT_COLUMNS)
    known = [float(t) for t in info.get("thresholds", "").split(",") if t]
    if not any(abs(t - threshold) <= 1e-12 for t in known):
        raise EmError(f"{path} has no threshold {threshold:g} (it has {info.get('thresholds', 'none')})")
    at = np.isclose(float_column(columns["threshold"], path), threshold, rtol=0, atol=1e-12)
    fragments = id_column(columns["fragment"], path)[at]
    segments = id_column(columns["segment"], path)[at]
    order = np.argsort(fragments)
    return fragments[order], segments[order]
