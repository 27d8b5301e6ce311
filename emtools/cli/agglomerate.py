"""em-agglomerate: merge supervoxels hierarchically; whole volumes or chunk by chunk."""

from __future__ import annotations

import os
import time

import click
import numpy as np

from emtools import io
from emtools.cli.common import (
    FLOAT_TRIPLE,
    contract,
    emit,
    expand_stdin_specs,
    log,
    version_option,
)
from emtools.cli.segment_common import (
    as_float,
    as_uint64,
    check_label_dtype,
    chunk_regions,
    cropped_metadata,
    fmt_threshold,
    output_for_threshold,
    parse_thresholds,
    read_labels,
    read_map,
    read_table,
    write_table,
)
from emtools.errors import EmError
from emtools.meta import Metadata, provenance_record, require_same_region
from emtools.tiling.geometry import Box, first_overlap

TOOL = "em-agglomerate"
HISTORY_COLUMNS = ["a", "b", "cost"]
OFFSET_COLUMNS = ["spec", "begin_zyx", "end_zyx", "offset", "count"]
EDGE_COLUMNS = ["u", "v", "score", "area"]
LUT_COLUMNS = ["threshold", "fragment", "segment"]

SCORE_HELP = ("Merge cost 1 - s, s of the contact affinities: mean, max, min, or quantile[:Q] "
              "(Q in (0,1] or percent; from a histogram, as waterz's HistogramQuantileAffinity).")


@click.group(
    epilog="Examples:\n\n\b\n"
    "  em-agglomerate segment frags.h5 affs.h5:/affs -t 0.1,0.3,0.5 -o 'seg_{threshold}.h5:/seg'\n"
    "  em-agglomerate replay frags.h5 --history merges.tsv -t 0.35 -o seg_0.35.h5\n"
    "  em-agglomerate offsets frags/*.h5 -o offsets.tsv\n"
)
@version_option(TOOL)
def main():
    """Merge supervoxels (from em-watershed) into segments, several thresholds in one pass.

    Costs are 1 - a statistic of the affinities along each contact (waterz's convention): a
    pair merges at threshold t when its cost is below t; higher thresholds merge more.
    Affinities (3, z, y, x) or a boundary map (z, y, x; a contact's affinity is 1 - the larger
    boundary value of its two voxels) give the contacts their values.

    \b
    Chunk by chunk (each step one command per chunk, so make -j or a job array runs them):
      em-tile split affs.h5:/affs --chunk 64,512,512 --halo 8,64,64 -o chunks/
      em-watershed chunks/C.h5 -o frags/C.h5                      # per chunk
      em-agglomerate offsets frags/*.h5 -o offsets.tsv            # global ids
      em-agglomerate edges chunks/C.h5 --offsets offsets.tsv -o edges/C.tsv   # per chunk
      em-agglomerate stitch edges/*.tsv --offsets offsets.tsv -t 0.3,0.5 -o lut.tsv
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 -o seg/C.h5
      em-tile merge seg/*.h5 -o seg.h5:/seg
    """


def _score_option(func):
    return click.option("--score", default="mean", show_default=True, help=SCORE_HELP)(func)


def _map_options(func):
    func = click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
                        help="Voxel size z,y,x in nm (overrides the files').")(func)
    func = click.option("--invert", is_flag=True, help="The map is high inside cells: use 1 - map.")(func)
    func = click.option("--bins", type=int, default=256, show_default=True,
                        help="Histogram bins per edge for quantile scores (memory: 4 bytes x bins per edge).")(func)
    return func


def _compression_option(func):
    return click.option("--compression", default="gzip", show_default=True, help="gzip[:LEVEL], lzf (HDF5 only) or none.")(func)


def _thresholds(text: str) -> list[float]:
    from emtools.segment.agglomerate import check_thresholds

    return check_thresholds(parse_thresholds(text))


def _outputs(template: str, thresholds: list[float], compression: str) -> list[str]:
    io.parse_compression(compression)
    outputs = [output_for_threshold(template, t, len(thresholds) > 1) for t in thresholds]
    for spec in outputs:
        io.check_output_path(io.output_file(spec))
        io.output_format(spec)
    if len({io.output_file(o) for o in outputs}) != len(outputs):
        raise EmError("the outputs for different thresholds name the same file; put {threshold} in the file name")
    return outputs


def _segment_metadata(meta: Metadata, threshold: float, score: str, record: dict) -> Metadata:
    attrs = dict(meta.attrs)
    attrs.pop("fragment_count", None)
    attrs.update(threshold=threshold, score=score)
    return Metadata("zyx", meta.offset_nm, meta.voxel_size_nm, meta.provenance, attrs).with_record(record)


def _write_history(path: str, history, fragments_spec: str) -> None:
    write_table(
        path,
        [f"emtools merge history score={history.score} until={history.until!r}",
         f"fragments={fragments_spec.replace(' ', '%20')} merges={len(history)}"],
        HISTORY_COLUMNS, [history.a, history.b, history.cost], ["%d", "%d", "%r"],
    )


def _read_history(path: str):
    from emtools.segment.agglomerate import MergeHistory

    info, columns = read_table(path, HISTORY_COLUMNS)
    if "until" not in info or "score" not in info:
        raise EmError(f"{path} is not an em-agglomerate merge history (no score/until line)")
    return MergeHistory(as_uint64(columns["a"], path), as_uint64(columns["b"], path),
                        as_float(columns["cost"], path), float(info["until"]), info["score"])


# ----------------------------------------------------------------------------- segment

@main.command()
@click.argument("fragments_spec", metavar="FRAGMENTS")
@click.argument("map_spec", metavar="AFFINITIES_OR_BOUNDARY")
@click.option("-t", "--thresholds", "thresholds_text", required=True, help="Comma-separated increasing thresholds in [0, 1].")
@click.option("-o", "--output", required=True, help="Output spec; with several thresholds it must contain {threshold}.")
@click.option("--history", "history_path", default=None, help="Also write the merge history (TSV) here, for em-agglomerate replay.")
@_score_option
@_map_options
@_compression_option
@contract(TOOL)
def segment(fragments_spec, map_spec, thresholds_text, output, history_path, score, bins, invert, voxel_size_nm, compression):
    """Agglomerate FRAGMENTS with AFFINITIES_OR_BOUNDARY; write one segmentation per threshold.

    The merge history is computed once up to the largest threshold; each output is the
    history's prefix at its threshold (as waterz's thresholds). Segment ids are the smallest
    fragment id they contain. Prints each written path.

    \b
    Examples:
      em-agglomerate segment frags.h5 affs.h5:/affs -t 0.1,0.2,0.3,0.4,0.5 -o 'seg_{threshold}.h5:/seg'
      em-agglomerate segment frags.h5 probs.h5:/boundary --score quantile:50 -t 0.5 -o seg.h5 --history merges.tsv
    """
    from emtools.segment import agglomerate, region_graph

    started = time.perf_counter()
    name, q = agglomerate.parse_score(score)
    thresholds = _thresholds(thresholds_text)
    outputs = _outputs(output, thresholds, compression)
    if history_path:
        io.check_output_path(history_path)
    if not 0 < bins <= 65536 and name == "quantile":
        raise EmError(f"--bins must be in 1..65536, got {bins}")
    labels, fmeta, fbox = read_labels(fragments_spec, voxel_size_nm)
    source = read_map(map_spec, voxel_size_nm, invert=invert)
    require_same_region((fragments_spec, fmeta, fbox), (map_spec, source.meta, source.box))
    map_meta = source.meta
    read_s = time.perf_counter() - started
    nodes = region_graph.compact_labels(labels)
    del labels
    graph = region_graph.region_graph(
        nodes[0], bins=bins if name == "quantile" else 0, nodes=nodes,
        **{"affinities" if source.kind == "affinities" else "boundary": source.values},
    )
    del source
    history = agglomerate.merge_history(graph, thresholds[-1], name, q, consume=True)
    log.info("%d fragments, %d edges, %d merges up to %g (%s)", graph.n_nodes, graph.n_edges, len(history),
             thresholds[-1], history.score)
    del graph
    params = {"thresholds": thresholds, "score": history.score, "bins": bins, "invert": invert}
    record = provenance_record(f"{TOOL} segment", params, [(fragments_spec, fmeta), (map_spec, map_meta)])
    if history_path:
        _write_history(history_path, history, fragments_spec)
    for t, spec, seg in zip(thresholds, outputs,
                            agglomerate.segmentations(None, history, thresholds, nodes=nodes, reuse_buffer=True)):
        path = io.write_volume(spec, seg, _segment_metadata(fmeta, t, history.score, record), compression=compression)
        emit(path)
    if history_path:
        emit(history_path)
    elapsed = time.perf_counter() - started
    log.info("%d thresholds in %.1f s (reading %.1f s), %.2f Mvoxel/s", len(thresholds), elapsed, read_s,
             fbox.size / max(elapsed, 1e-9) / 1e6)


# ----------------------------------------------------------------------------- replay

@main.command()
@click.argument("fragments_spec", metavar="FRAGMENTS")
@click.option("--history", "history_path", required=True, help="Merge history from em-agglomerate segment --history.")
@click.option("-t", "--thresholds", "thresholds_text", required=True, help="Comma-separated increasing thresholds.")
@click.option("-o", "--output", required=True, help="Output spec; with several thresholds it must contain {threshold}.")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None, help="Voxel size z,y,x in nm.")
@_compression_option
@contract(TOOL)
def replay(fragments_spec, history_path, thresholds_text, output, voxel_size_nm, compression):
    """Segment FRAGMENTS at new thresholds from a saved merge history: no affinities, no rerun.

    Thresholds may not exceed the one the history was computed up to.

    \b
    Example:
      em-agglomerate replay frags.h5 --history merges.tsv -t 0.35,0.45 -o 'seg_{threshold}.h5'
    """
    from emtools.segment import agglomerate, region_graph

    thresholds = _thresholds(thresholds_text)
    outputs = _outputs(output, thresholds, compression)
    history = _read_history(history_path)
    for t in thresholds:
        history.prefix(t)  # one-line error for thresholds beyond the history, before any work
    labels, fmeta, _ = read_labels(fragments_spec, voxel_size_nm)
    nodes = region_graph.compact_labels(labels)
    del labels
    record = provenance_record(f"{TOOL} replay", {"thresholds": thresholds, "history": history_path,
                                                  "score": history.score}, [(fragments_spec, fmeta)])
    for t, spec, seg in zip(thresholds, outputs,
                            agglomerate.segmentations(None, history, thresholds, nodes=nodes, reuse_buffer=True)):
        emit(io.write_volume(spec, seg, _segment_metadata(fmeta, t, history.score, record), compression=compression))


# ----------------------------------------------------------------------------- chunked

@main.command()
@click.argument("fragment_chunks", nargs=-1, required=True, metavar="FRAGMENT_CHUNKS...")
@click.option("-o", "--output", required=True, help="Offsets table (TSV) to write.")
@contract(TOOL)
def offsets(fragment_chunks, output):
    """Give each chunk's fragments a global id range (reads only the files' metadata).

    Chunk k's fragment i becomes offset_k + i; offsets follow the chunks' positions (z-major),
    so the same chunks give the same table however they are listed. Pass - to read paths from
    stdin.

    \b
    Example:
      em-agglomerate offsets frags/*.h5 -o offsets.tsv
    """
    from emtools.segment.stitch import fragment_offsets

    specs = expand_stdin_specs(fragment_chunks)
    io.check_output_path(output)
    rows = []
    for spec in specs:
        with io.open_volume(spec) as source:
            check_label_dtype(spec, source.dtype)
            _, responsible = chunk_regions(source.meta, source.box)
            if responsible != source.box:
                raise EmError(f"{spec} holds a halo; use fragments from em-watershed (cropped to their region)")
            count = source.meta.attrs.get("fragment_count")
            if count is None:
                count = int(source.read().max())
            rows.append((responsible.begin, responsible.end, spec, int(count)))
    rows.sort()
    clash = first_overlap([Box(b, e) for b, e, _, _ in rows])
    if clash is not None:
        raise EmError(f"fragment chunks overlap: {clash[0].text()} and {clash[1].text()}")
    starts = fragment_offsets([r[3] for r in rows])
    write_table(
        output, [f"emtools fragment offsets chunks={len(rows)} fragments={sum(r[3] for r in rows)}"], OFFSET_COLUMNS,
        [np.array([r[2] for r in rows], object), np.array([",".join(map(str, r[0])) for r in rows], object),
         np.array([",".join(map(str, r[1])) for r in rows], object), starts, np.array([r[3] for r in rows])],
        ["%s", "%s", "%s", "%d", "%d"],
    )
    emit(output)


def _read_offsets(path: str) -> list[tuple[str, Box, int, int]]:
    _, columns = read_table(path, OFFSET_COLUMNS)
    rows = []
    try:
        for spec, b, e, off, count in zip(*(columns[c] for c in OFFSET_COLUMNS)):
            rows.append((spec, Box(tuple(map(int, b.split(","))), tuple(map(int, e.split(",")))), int(off), int(count)))
    except ValueError:
        raise EmError(f"{path}: malformed offsets table") from None
    return rows


def _assemble_fragments(rows, box: Box) -> np.ndarray:
    """Global fragment ids over ``box`` from the chunks that overlap it; error for holes."""
    out = np.zeros(box.shape, np.uint64)
    covered = 0
    for spec, region, offset, _ in rows:
        part = region.intersect(box)
        if part is None:
            continue
        with io.open_volume(spec) as source:
            data = source.read(part.shift(tuple(-b for b in source.box.begin))).astype(np.uint64)
        data[data != 0] += np.uint64(offset)
        out[box.local(part)] = data
        covered += part.size
    if covered != box.size:
        raise EmError(f"the fragment chunks in the offsets table do not cover {box.text()} (missing chunks?)")
    return out


@main.command()
@click.argument("chunk_spec", metavar="CHUNK")
@click.option("--offsets", "offsets_path", required=True, help="Offsets table from em-agglomerate offsets.")
@click.option("-o", "--output", required=True, help="Edge table (TSV) to write.")
@click.option("--until", type=float, default=1.0, show_default=True, help="Agglomerate up to this threshold (the highest one stitch may ask for).")
@_score_option
@_map_options
@contract(TOOL)
def edges(chunk_spec, offsets_path, output, until, score, bins, invert, voxel_size_nm):
    """Agglomerate one CHUNK (affinities or boundary map with its halo, from em-tile split) and
    write the edge table of the contacts it owns: u, v, score, area.

    Fragments over the chunk and its halo come from the fragment chunks of the offsets table
    (global ids). score = the threshold at which this chunk's agglomeration joined u and v
    (inf: never below --until); area = contacts of u and v whose voxel further along the
    axis lies in the chunk's responsible region, so every contact belongs to one chunk.

    \b
    Example:
      em-agglomerate edges chunks/chunk_0-72_0-288_0-288.h5 --offsets offsets.tsv -o edges/chunk_0-72_0-288_0-288.tsv
    """
    from emtools.segment import agglomerate, region_graph

    name, q = agglomerate.parse_score(score)
    if not 0.0 <= until <= 1.0:
        raise EmError(f"--until must be in [0, 1], got {until:g}")
    io.check_output_path(output)
    rows = _read_offsets(offsets_path)
    source = read_map(chunk_spec, voxel_size_nm, invert=invert)
    data_box, responsible = chunk_regions(source.meta, source.box)
    labels = _assemble_fragments(rows, data_box)
    nodes = region_graph.compact_labels(labels)
    key = "affinities" if source.kind == "affinities" else "boundary"
    owned = region_graph.region_graph(nodes[0], bins=0, nodes=nodes, region=_local(data_box, responsible),
                                      **{key: source.values})
    graph = region_graph.region_graph(nodes[0], bins=bins if name == "quantile" else 0, nodes=nodes, **{key: source.values})
    del source, labels
    history = agglomerate.merge_history(graph, until, name, q)
    join = agglomerate.joining_scores(graph, history)
    # owned edges are a subset of the graph's; both are sorted by (id u, id v)
    gkey = graph.u * (graph.n_nodes + 1) + graph.v
    okey = owned.u * (owned.n_nodes + 1) + owned.v
    where = np.searchsorted(gkey, okey)
    u, v = graph.ids[owned.u], graph.ids[owned.v]
    write_table(
        output,
        [f"emtools edge table score={history.score} until={until!r} chunk={chunk_spec.replace(' ', '%20')}",
         f"responsible={responsible.text()} fragments={graph.n_nodes} edges={len(u)}"],
        EDGE_COLUMNS, [u, v, np.array([fmt_threshold(s) for s in join[where]], object), owned.count],
        ["%d", "%d", "%s", "%d"],
    )
    log.info("%s: %d fragments, %d edges owned, %d merges", chunk_spec, graph.n_nodes, len(u), len(history))
    emit(output)


def _local(outer: Box, inner: Box):
    sl = outer.local(inner)
    return tuple(s.start for s in sl), tuple(s.stop for s in sl)


@main.command()
@click.argument("edge_tables", nargs=-1, required=True, metavar="EDGE_TABLES...")
@click.option("--offsets", "offsets_path", required=True, help="Offsets table from em-agglomerate offsets.")
@click.option("-t", "--thresholds", "thresholds_text", required=True, help="Comma-separated increasing thresholds.")
@click.option("-o", "--output", required=True, help="Look-up table (TSV) to write.")
@contract(TOOL)
def stitch(edge_tables, offsets_path, thresholds_text, output):
    """Join the chunks' edge tables: one look-up table (fragment -> segment) per threshold.

    An edge seen by several chunks is decided by the chunk that owns most of its contact.
    Union-find over the edges with score < t; a segment takes its smallest fragment id.

    \b
    Example:
      em-agglomerate stitch edges/*.tsv --offsets offsets.tsv -t 0.3,0.5 -o lut.tsv
    """
    from emtools.segment import stitch as stitching

    thresholds = _thresholds(thresholds_text)
    io.check_output_path(output)
    rows = _read_offsets(offsets_path)
    n_fragments = sum(r[3] for r in rows)
    parts = {c: [] for c in EDGE_COLUMNS}
    scores = set()
    for path in expand_stdin_specs(edge_tables):
        info, columns = read_table(path, EDGE_COLUMNS)
        if "until" not in info:
            raise EmError(f"{path} is not an em-agglomerate edge table")
        scores.add(info.get("score"))
        if thresholds[-1] > float(info["until"]) + 1e-12:
            raise EmError(f"threshold {thresholds[-1]:g} is above {info['until']}, where {path} stops; rerun edges with a higher --until")
        parts["u"].append(as_uint64(columns["u"], path))
        parts["v"].append(as_uint64(columns["v"], path))
        parts["score"].append(as_float(columns["score"], path))
        parts["area"].append(as_uint64(columns["area"], path).astype(np.int64))
    if len(scores) > 1:
        raise EmError(f"the edge tables were made with different scores: {', '.join(sorted(map(str, scores)))}")
    u, v, score, area = stitching.best_edges(*(np.concatenate(parts[c]) for c in EDGE_COLUMNS))
    tables = stitching.lookup_tables(n_fragments, u, v, score, thresholds)
    columns = [np.concatenate([np.full(len(f), t) for t, (f, _) in zip(thresholds, tables)]),
               np.concatenate([f for f, _ in tables]), np.concatenate([s for _, s in tables])]
    write_table(output, [f"emtools look-up table score={scores.pop()} thresholds={','.join(f'{t:g}' for t in thresholds)}",
                         f"fragments={n_fragments} edges={len(u)}"],
                LUT_COLUMNS, columns, ["%r", "%d", "%d"])
    log.info("%d fragments, %d edges from %d tables", n_fragments, len(u), len(edge_tables))
    emit(output)


@main.command()
@click.argument("fragments_spec", metavar="FRAGMENT_CHUNK")
@click.option("--offsets", "offsets_path", required=True, help="Offsets table from em-agglomerate offsets.")
@click.option("--lut", "lut_path", required=True, help="Look-up table from em-agglomerate stitch.")
@click.option("-t", "--threshold", type=float, required=True, help="One of the look-up table's thresholds.")
@click.option("-o", "--output", required=True, help="Output segmentation chunk.")
@_compression_option
@contract(TOOL)
def relabel(fragments_spec, offsets_path, lut_path, threshold, output, compression):
    """Relabel one fragment chunk through the stitched look-up table at --threshold.

    The output keeps the chunk's region, so em-tile merge assembles the volume.

    \b
    Example:
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 -o seg/C.h5
    """
    from emtools.segment.stitch import apply_table

    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    info, columns = read_table(lut_path, LUT_COLUMNS)
    known = [float(t) for t in info.get("thresholds", "").split(",") if t]
    if not any(abs(t - threshold) <= 1e-12 for t in known):
        raise EmError(f"{lut_path} has no threshold {threshold:g} (it has {info.get('thresholds', 'none')})")
    at = np.isclose(as_float(columns["threshold"], lut_path), threshold, rtol=0, atol=1e-12)
    fragments = as_uint64(columns["fragment"], lut_path)[at]
    segments = as_uint64(columns["segment"], lut_path)[at]
    order = np.argsort(fragments)
    offsets_rows = _read_offsets(offsets_path)
    matches = [r for r in offsets_rows if os.path.abspath(r[0]) == os.path.abspath(fragments_spec)]
    if not matches:
        raise EmError(f"{fragments_spec} is not in {offsets_path}")
    labels, meta, box = read_labels(fragments_spec)
    offset = np.uint64(matches[0][2])
    labels = labels.astype(np.uint64)
    labels[labels != 0] += offset
    seg = apply_table(labels, fragments[order], segments[order])
    _, responsible = chunk_regions(meta, box)
    record = provenance_record(f"{TOOL} relabel", {"threshold": threshold, "lut": lut_path, "offset": int(offset)},
                               [(fragments_spec, meta)])
    out_meta = cropped_metadata(meta, responsible, {"threshold": threshold}).with_record(record)
    emit(io.write_volume(output, seg, out_meta, compression=compression))


if __name__ == "__main__":
    main()
