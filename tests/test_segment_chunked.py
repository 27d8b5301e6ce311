"""emtools.segment.chunked: the documented chunked pipeline runs as written and matches the
whole-volume run; each step on hand-made tiny cases and bad input."""

import ast
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import emtools.segment
from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.segment.chunked import (
    assemble_fragments,
    chunk_edges,
    fragment_offsets_table,
    merge_labels,
    owned_edges,
    relabel_chunk,
    relabel_fragments,
    split_map,
    stitch_tables,
)
from emtools.segment.tables import EdgeTable, read_edges, read_lookup, read_offsets, write_edges, write_lookup
from emtools.tiling.geometry import Box

SEGMENT = Path(emtools.segment.__file__).parent
PATH_MODULES = {"files", "tables", "jobs", "chunked"}  # the ones that may open files


def pipeline_snippet() -> str:
    """The Python block of emtools.segment's docstring that shows the chunked pipeline."""
    found = re.search(r"runs exactly these lines\)::\n\n((?:    .*\n|\n)+?)\n(?=\S)", emtools.segment.__doc__)
    assert found, "emtools.segment's docstring lost its chunked-pipeline example"
    return textwrap.dedent(found.group(1))


def voi(a, b):
    """Variation of information (bits) between two label volumes, all voxels counted."""
    _, joint = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)

    def h(counts):
        p = counts / counts.sum()
        return -(p * np.log2(p)).sum()

    return 2 * h(joint) - h(np.unique(a, return_counts=True)[1]) - h(np.unique(b, return_counts=True)[1])


def test_the_documented_pipeline_matches_the_whole_volume_run(tmp_path, monkeypatch):
    from emtools.affinities import noisy_affinities
    from emtools.segment.jobs import agglomerate_volume, watershed_volume
    from emtools.synth import make_synthetic_volume

    gt = make_synthetic_volume((12, 96, 96), seed=0, voxel_size_nm=(40, 8, 8), mean_cell_diameter_nm=300,
                               mitochondria=False).neurons
    monkeypatch.chdir(tmp_path)
    io.write_volume("affs.h5:/affs", noisy_affinities(gt, seed=0), Metadata(axes="czyx", voxel_size_nm=(40, 8, 8)))
    code = pipeline_snippet()
    assert 8 <= len([line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from"))]) <= 12
    exec(compile(code, "emtools.segment docstring", "exec"), {})
    chunked, _ = io.read_volume("seg.h5:/seg")
    assert len(list(Path("seg").glob("chunk_*.h5"))) == len(list(Path("chunks").glob("chunk_*.h5"))) == 8
    agglomerate_volume(watershed_volume("affs.h5:/affs", "whole_frags.h5"), "affs.h5:/affs", 0.5, "whole.h5")
    whole, _ = io.read_volume("whole.h5")
    assert chunked.shape == whole.shape == gt.shape
    inside = gt != 0
    assert voi(chunked, whole) < 0.25
    assert voi(chunked[inside], gt[inside]) < voi(whole[inside], gt[inside]) + 0.15


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_array_modules_never_open_files():
    """The package docstring's rule: only the path-taking modules import emtools.io."""
    offenders = []
    for path in sorted(SEGMENT.glob("*.py")):
        if path.stem in PATH_MODULES or path.stem == "__init__":
            continue
        for name in _imports(path):
            if name == "emtools.io" or name.startswith("emtools.io.") or \
                    any(name == f"emtools.segment.{m}" or name.startswith(f"emtools.segment.{m}.") for m in PATH_MODULES):
                offenders.append(f"{path.stem} imports {name}")
    assert not offenders


# ----------------------------------------------------------------------------- tiny chunks

def _write_labels(spec, labels, begin, responsible=None, count=None):
    attrs = {}
    if responsible is not None:
        attrs.update(responsible_begin_vx=list(responsible.begin), responsible_end_vx=list(responsible.end))
    if count is not None:
        attrs["fragment_count"] = count
    io.write_volume(spec, np.asarray(labels), Metadata(offset_nm=tuple(float(b) for b in begin), attrs=attrs))
    return spec


@pytest.fixture
def two_chunks(tmp_path):
    """Fragment chunks z 0..1 (ids 1, 2) and z 1..2 (ids 1..3, counted from the data)."""
    a = _write_labels(str(tmp_path / "a.h5"), [[[1, 1, 2, 2]]], (0, 0, 0), Box((0, 0, 0), (1, 1, 4)), count=2)
    b = _write_labels(str(tmp_path / "b.h5"), [[[1, 2, 3, 0]]], (1, 0, 0))
    return a, b


def test_offsets_table_in_region_order(tmp_path, two_chunks):
    a, b = two_chunks
    out = str(tmp_path / "offsets.tsv")
    assert fragment_offsets_table([b, a], out) == out
    rows = read_offsets(out)
    assert [(r.spec, r.region, r.offset, r.count) for r in rows] == [
        (a, Box((0, 0, 0), (1, 1, 4)), 0, 2), (b, Box((1, 0, 0), (2, 1, 4)), 2, 3)]


def test_offsets_table_errors(tmp_path, two_chunks):
    a, _ = two_chunks
    out = str(tmp_path / "o.tsv")
    halo = _write_labels(str(tmp_path / "halo.h5"), np.ones((1, 1, 4), np.uint64), (5, 0, 0), Box((5, 0, 0), (6, 1, 2)))
    with pytest.raises(EmError, match="holds a halo"):
        fragment_offsets_table([halo], out)
    with pytest.raises(EmError, match="fragment chunks overlap"):
        fragment_offsets_table([a, a], out)
    floats = str(tmp_path / "f.h5")
    io.write_volume(floats, np.zeros((1, 1, 4), np.float32), Metadata())
    with pytest.raises(EmError, match="labels must be integers"):
        fragment_offsets_table([floats], out)
    with pytest.raises(EmError, match="no such file"):
        fragment_offsets_table([str(tmp_path / "nope.h5")], out)
    with pytest.raises(EmError, match="output folder does not exist"):
        fragment_offsets_table([a], str(tmp_path / "no" / "o.tsv"))
    assert not (tmp_path / "o.tsv").exists()


def test_assemble_fragments_gives_global_ids(tmp_path, two_chunks):
    fragment_offsets_table(two_chunks, str(tmp_path / "o.tsv"))
    rows = read_offsets(str(tmp_path / "o.tsv"))
    whole = assemble_fragments(rows, Box((0, 0, 0), (2, 1, 4)))
    assert whole.dtype == np.uint64 and whole.tolist() == [[[1, 1, 2, 2]], [[3, 4, 5, 0]]]
    assert assemble_fragments(rows, Box((1, 0, 1), (2, 1, 3))).tolist() == [[[4, 5]]]
    with pytest.raises(EmError, match="do not cover 0:3,0:1,0:4"):
        assemble_fragments(rows, Box((0, 0, 0), (3, 1, 4)))


def _line():
    """Fragments 11 | 12 | 30 along x; boundary 0.2 between the first two, 0.6 between the others."""
    fragments = np.array([[[11, 11, 12, 12, 30, 30]]], np.uint64)
    boundary = np.array([[[0, 0, 0.2, 0, 0.6, 0]]], np.float32)
    return fragments, boundary


def test_owned_edges_by_hand():
    fragments, boundary = _line()
    table, n_fragments, n_merges = owned_edges(fragments, boundary=boundary)
    assert (n_fragments, n_merges) == (3, 2)
    assert table.u.tolist() == [11, 12] and table.v.tolist() == [12, 30] and table.area.tolist() == [1, 1]
    np.testing.assert_allclose(table.score, [0.2, 0.6], rtol=1e-6)
    assert (table.score_name, table.until) == ("mean", 1.0)
    # each half owns the contact whose far voxel it holds, so two halves own each contact once
    left, _, _ = owned_edges(fragments, Box((0, 0, 0), (1, 1, 3)), boundary=boundary)
    right, _, _ = owned_edges(fragments, Box((0, 0, 3), (1, 1, 6)), boundary=boundary)
    assert (left.u.tolist(), left.v.tolist(), right.u.tolist(), right.v.tolist()) == ([11], [12], [12], [30])
    low, _, merges = owned_edges(fragments, boundary=boundary, until=0.5, score="max")
    assert merges == 1 and low.score[1] == math.inf and low.score_name == "max"


@pytest.mark.parametrize("kwargs, message", [({"until": 1.5}, "--until must be in [0, 1], got 1.5"),
                                             ({"score": "median"}, "unknown score 'median'")])
def test_owned_edges_bad_arguments(kwargs, message):
    fragments, boundary = _line()
    with pytest.raises(EmError, match=re.escape(message)):
        owned_edges(fragments, boundary=boundary, **kwargs)


def test_chunk_edges_on_a_file(tmp_path):
    fragments, boundary = _line()
    _write_labels(str(tmp_path / "f.h5"), fragments, (0, 0, 0), count=30)
    fragment_offsets_table([str(tmp_path / "f.h5")], str(tmp_path / "o.tsv"))
    io.write_volume(str(tmp_path / "b.h5"), boundary, Metadata())
    out = chunk_edges(str(tmp_path / "b.h5"), str(tmp_path / "o.tsv"), str(tmp_path / "e.tsv"), until=0.5)
    table = read_edges(out)
    assert table.u.tolist() == [11, 12] and table.score[1] == math.inf and table.until == 0.5


def test_chunk_edges_errors(tmp_path, two_chunks):
    fragment_offsets_table(two_chunks[:1], str(tmp_path / "o.tsv"))  # covers z 0..1 only
    io.write_volume(str(tmp_path / "b.h5"), np.zeros((2, 1, 4), np.float32), Metadata())
    out = str(tmp_path / "e.tsv")
    with pytest.raises(EmError, match="do not cover 0:2,0:1,0:4"):
        chunk_edges(str(tmp_path / "b.h5"), str(tmp_path / "o.tsv"), out)
    with pytest.raises(EmError, match="no such file"):
        chunk_edges(str(tmp_path / "b.h5"), str(tmp_path / "missing.tsv"), out)
    with pytest.raises(EmError, match="--until"):
        chunk_edges(str(tmp_path / "b.h5"), str(tmp_path / "missing.tsv"), out, until=-1)
    assert not (tmp_path / "e.tsv").exists()


def _edge_table(path, rows, until=1.0, score_name="mean"):
    u, v, score, area = (np.array(c) for c in zip(*rows))
    write_edges(path, EdgeTable(u.astype(np.uint64), v.astype(np.uint64), score.astype(float), area.astype(np.int64),
                                score_name, until), "c.h5", Box((0, 0, 0), (1, 1, 1)), 5)
    return path


@pytest.fixture
def stitch_inputs(tmp_path, two_chunks):
    fragment_offsets_table(two_chunks, str(tmp_path / "o.tsv"))  # 5 fragments
    t1 = _edge_table(str(tmp_path / "e1.tsv"), [(1, 2, 0.2, 5), (2, 3, 0.7, 1)])
    t2 = _edge_table(str(tmp_path / "e2.tsv"), [(3, 2, 0.4, 3), (3, 4, math.inf, 2)])
    return str(tmp_path / "o.tsv"), [t1, t2]


def test_stitch_by_hand(tmp_path, stitch_inputs):
    offsets, tables = stitch_inputs
    out = stitch_tables(tables, offsets, "0.3,0.5", str(tmp_path / "lut.tsv"))
    # edge 2-3 is decided by the table that owns most of its contact (area 3: score 0.4)
    assert [a.tolist() for a in read_lookup(out, 0.3)] == [[2], [1]]
    assert [a.tolist() for a in read_lookup(out, 0.5)] == [[2, 3], [1, 1]]


def test_stitch_errors(tmp_path, stitch_inputs):
    offsets, tables = stitch_inputs
    out = str(tmp_path / "lut.tsv")
    with pytest.raises(EmError, match="threshold 1 is above 0.6"):
        stitch_tables([_edge_table(str(tmp_path / "low.tsv"), [(1, 2, 0.1, 1)], until=0.6)], offsets, [1.0], out)
    with pytest.raises(EmError, match="made with different scores: max, mean"):
        stitch_tables([tables[0], _edge_table(str(tmp_path / "max.tsv"), [(1, 2, 0.1, 1)], score_name="max")],
                      offsets, [0.5], out)
    with pytest.raises(EmError, match="names a fragment outside 1..5"):
        stitch_tables([_edge_table(str(tmp_path / "big.tsv"), [(1, 9, 0.1, 1)])], offsets, [0.5], out)
    with pytest.raises(EmError, match="no edge tables given"):
        stitch_tables([], offsets, [0.5], out)
    with pytest.raises(EmError, match="increasing"):
        stitch_tables(tables, offsets, [0.5, 0.3], out)
    with pytest.raises(EmError, match="not a table with columns u v score area"):
        stitch_tables([offsets], offsets, [0.5], out)
    assert not (tmp_path / "lut.tsv").exists()


def test_relabel_fragments_by_hand():
    labels = np.array([[[0, 1, 2, 3]]], np.uint32)
    out = relabel_fragments(labels, 10, np.array([12, 13], np.uint64), np.array([11, 11], np.uint64))
    assert out.dtype == np.uint64 and out.tolist() == [[[0, 11, 11, 11]]]
    assert labels.tolist() == [[[0, 1, 2, 3]]]  # input untouched


def test_relabel_chunk(tmp_path, two_chunks):
    _, b = two_chunks
    fragment_offsets_table(two_chunks, str(tmp_path / "o.tsv"))
    lut = str(tmp_path / "lut.tsv")
    write_lookup(lut, [0.5], [(np.array([2, 3, 5], np.uint64), np.array([1, 1, 4], np.uint64))], "mean", 5, 3)
    out = relabel_chunk(b, str(tmp_path / "o.tsv"), lut, 0.5, str(tmp_path / "s.h5"))
    seg, meta = io.read_volume(out)
    assert seg.tolist() == [[[1, 4, 4, 0]]] and meta.attrs["threshold"] == 0.5 and meta.offset_nm == (1, 0, 0)
    assert meta.provenance[-1]["params"] == {"threshold": 0.5, "lut": lut, "offset": 2}
    with pytest.raises(EmError, match="has no threshold 0.3"):
        relabel_chunk(b, str(tmp_path / "o.tsv"), lut, 0.3, str(tmp_path / "x.h5"))
    other = _write_labels(str(tmp_path / "c.h5"), [[[1]]], (9, 0, 0))
    with pytest.raises(EmError, match="c.h5 is not in"):
        relabel_chunk(other, str(tmp_path / "o.tsv"), lut, 0.5, str(tmp_path / "x.h5"))
    assert not (tmp_path / "x.h5").exists()


def test_split_and_merge_labels_round_trip(tmp_path):
    labels = np.arange(4 * 10 * 12, dtype=np.uint64).reshape(4, 10, 12)
    io.write_volume(str(tmp_path / "l.h5"), labels, Metadata(voxel_size_nm=(4, 2, 2)))
    chunks = split_map(str(tmp_path / "l.h5"), str(tmp_path / "chunks"), (2, 5, 6), (1, 1, 1))
    assert len(chunks) == 8 and all(p.startswith(str(tmp_path / "chunks")) for p in chunks)
    assert io.read_volume(chunks[0])[1].provenance[-1]["tool"] == "em-tile split"
    merged = merge_labels(chunks, str(tmp_path / "m.h5:/m"))
    np.testing.assert_array_equal(io.read_volume(f"{merged}:/m")[0], labels)
    with pytest.raises(EmError, match="chunks leave holes"):
        merge_labels(chunks[1:], str(tmp_path / "x.h5"))
