"""emtools.segment.tables: the four table formats round-trip; wrong or broken tables give one line."""

import math

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.segment.agglomerate import MergeHistory
from emtools.segment.tables import (
    ChunkOffset,
    EdgeTable,
    chunk_offsets,
    read_edges,
    read_history,
    read_lookup,
    read_offsets,
    write_edges,
    write_history,
    write_lookup,
    write_offsets,
)
from emtools.tiling.geometry import Box


def _history():
    return MergeHistory(np.array([1, 2], np.uint64), np.array([5, 9], np.uint64), np.array([0.125, 1 / 3]), 0.6, "mean")


def test_history_round_trip(tmp_path):
    path = str(tmp_path / "h.tsv")
    write_history(path, _history(), "my frags.h5:/f")
    text = open(path).read()
    assert text.startswith("# emtools merge history score=mean until=0.6\n# fragments=my%20frags.h5:/f merges=2\na\tb\tcost\n")
    back = read_history(path)
    assert back.a.tolist() == [1, 2] and back.b.tolist() == [5, 9]
    assert back.cost.tolist() == [0.125, 1 / 3]  # %r keeps every bit
    assert (back.until, back.score) == (0.6, "mean")


def test_history_errors(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("a\tb\tcost\n1\t2\t0.1\n")
    with pytest.raises(EmError, match="is not an em-agglomerate merge history"):
        read_history(str(plain))
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("# score=mean until=1\nu\tv\tscore\tarea\n")
    with pytest.raises(EmError, match="not a table with columns a b cost"):
        read_history(str(wrong))
    with pytest.raises(EmError, match="no such file"):
        read_history(str(tmp_path / "missing.tsv"))


def test_chunk_offsets_follow_the_regions_not_the_listing():
    a = ("a.h5", Box((0, 0, 0), (4, 8, 8)), 5)
    b = ("b.h5", Box((0, 0, 8), (4, 8, 16)), 3)
    c = ("c.h5", Box((4, 0, 0), (8, 8, 8)), 0)
    rows = chunk_offsets([c, b, a])
    assert rows == chunk_offsets([a, b, c])
    assert [(r.spec, r.offset, r.count) for r in rows] == [("a.h5", 0, 5), ("b.h5", 5, 3), ("c.h5", 8, 0)]


def test_overlapping_chunks_are_refused():
    with pytest.raises(EmError, match="fragment chunks overlap: 0:4,0:8,0:8 and 2:6,0:8,0:8"):
        chunk_offsets([("a", Box((0, 0, 0), (4, 8, 8)), 1), ("b", Box((2, 0, 0), (6, 8, 8)), 1)])


def test_offsets_round_trip(tmp_path):
    path = str(tmp_path / "o.tsv")
    rows = chunk_offsets([("frags/a.h5", Box((0, 0, 0), (4, 8, 8)), 5), ("frags/b.h5", Box((4, 0, 0), (8, 8, 8)), 2)])
    write_offsets(path, rows)
    assert open(path).read() == ("# emtools fragment offsets chunks=2 fragments=7\nspec\tbegin_zyx\tend_zyx\toffset\tcount\n"
                                 "frags/a.h5\t0,0,0\t4,8,8\t0\t5\nfrags/b.h5\t4,0,0\t8,8,8\t5\t2\n")
    assert read_offsets(path) == rows
    assert rows[1] == ChunkOffset("frags/b.h5", Box((4, 0, 0), (8, 8, 8)), 5, 2)


@pytest.mark.parametrize("row", ["a.h5\t0,0\t1,1,1\t0\t3", "a.h5\t0,0,0\t1,1,1\tx\t3", "a.h5\t0,0,0\t1,1,x\t0\t3"])
def test_malformed_offsets(tmp_path, row):
    path = tmp_path / "o.tsv"
    path.write_text(f"spec\tbegin_zyx\tend_zyx\toffset\tcount\n{row}\n")
    with pytest.raises(EmError, match="malformed offsets table"):
        read_offsets(str(path))


def _edges(until=0.6, score_name="mean"):
    return EdgeTable(np.array([1, 2], np.uint64), np.array([4, 3], np.uint64), np.array([0.25, math.inf]),
                     np.array([10, 2], np.int64), score_name, until)


def test_edges_round_trip(tmp_path):
    path = str(tmp_path / "e.tsv")
    write_edges(path, _edges(), "chunks/c 1.h5", Box((0, 0, 0), (4, 8, 8)), 7)
    lines = open(path).read().splitlines()
    assert lines[:2] == ["# emtools edge table score=mean until=0.6 chunk=chunks/c%201.h5",
                         "# responsible=0:4,0:8,0:8 fragments=7 edges=2"]
    assert lines[3:] == ["1\t4\t0.25\t10", "2\t3\tinf\t2"]
    back = read_edges(path, up_to=0.6)
    assert back.u.tolist() == [1, 2] and back.v.tolist() == [4, 3] and back.area.dtype == np.int64
    assert back.score.tolist() == [0.25, math.inf] and (back.score_name, back.until) == ("mean", 0.6)


def test_edges_errors(tmp_path):
    path = str(tmp_path / "e.tsv")
    write_edges(path, _edges(until=0.5), "c.h5", Box((0, 0, 0), (1, 1, 1)), 4)
    with pytest.raises(EmError, match="threshold 0.7 is above 0.5, where .* stops; rerun edges with a higher --until"):
        read_edges(path, up_to=0.7)
    plain = tmp_path / "plain.tsv"
    plain.write_text("u\tv\tscore\tarea\n1\t2\t0.1\t3\n")
    with pytest.raises(EmError, match="is not an em-agglomerate edge table"):
        read_edges(str(plain))
    bad = tmp_path / "bad.tsv"
    bad.write_text("# until=1.0\nu\tv\tscore\tarea\n1\t2\tx\t3\n")
    with pytest.raises(EmError, match="bad number"):
        read_edges(str(bad))


def test_lookup_round_trip_and_threshold_choice(tmp_path):
    path = str(tmp_path / "lut.tsv")
    tables = [(np.array([4], np.uint64), np.array([1], np.uint64)),
              (np.array([3, 4], np.uint64), np.array([2, 1], np.uint64))]
    write_lookup(path, [0.3, 0.5], tables, "mean", 5, 2)
    assert open(path).read().splitlines()[:3] == ["# emtools look-up table score=mean thresholds=0.3,0.5",
                                                  "# fragments=5 edges=2", "threshold\tfragment\tsegment"]
    fragments, segments = read_lookup(path, 0.5)
    assert fragments.tolist() == [3, 4] and segments.tolist() == [2, 1]
    assert read_lookup(path, 0.3)[0].tolist() == [4]
    with pytest.raises(EmError, match=r"has no threshold 0.4 \(it has 0.3,0.5\)"):
        read_lookup(path, 0.4)
