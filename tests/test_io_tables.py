"""emtools.io.tables: the tab-separated tables round-trip, and malformed ones give one line."""

import math
import os

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.io.tables import float_column, format_float, id_column, read_table, write_table


def test_round_trip_with_comments_and_info(tmp_path):
    path = str(tmp_path / "t.tsv")
    write_table(path, ["emtools test kind=demo n=2", "spec=a%20b.h5"], ["u", "score"],
                [np.array([3, 17], np.uint64), np.array(["0.25", "inf"], object)], ["%d", "%s"])
    assert open(path).read() == "# emtools test kind=demo n=2\n# spec=a%20b.h5\nu\tscore\n3\t0.25\n17\tinf\n"
    info, columns = read_table(path, ["u", "score"])
    assert info == {"kind": "demo", "n": "2", "spec": "a%20b.h5"}
    assert columns == {"u": ["3", "17"], "score": ["0.25", "inf"]}
    assert os.listdir(tmp_path) == ["t.tsv"]  # no temporary file left beside it


def test_an_empty_table_has_a_header_and_no_rows(tmp_path):
    path = str(tmp_path / "e.tsv")
    write_table(path, [], ["a", "b"], [np.zeros(0, np.int64), np.zeros(0)], ["%d", "%r"])
    assert read_table(path, ["a", "b"]) == ({}, {"a": [], "b": []})


def test_extra_columns_and_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a\tb\tnote\n\n1\t2\thello\n")
    assert read_table(str(path), ["a", "b"])[1] == {"a": ["1"], "b": ["2"]}


def test_write_needs_one_format_per_column(tmp_path):
    with pytest.raises(ValueError):
        write_table(str(tmp_path / "x.tsv"), [], ["a", "b"], [np.zeros(1)], ["%d", "%d"])


@pytest.mark.parametrize("text, fragment", [
    ("b\ta\n1\t2\n", "is not a table with columns a b (line 1)"),
    ("# only a comment\n", "is empty or not a table with columns a b"),
    ("", "is empty or not a table"),
    ("a\tb\n1\n", "line 2 has 1 fields, expected 2"),
])
def test_malformed_tables_give_one_line(tmp_path, text, fragment):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(EmError, match=None) as info:
        read_table(str(path), ["a", "b"])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(EmError, match="no such file"):
        read_table(str(tmp_path / "nope.tsv"), ["a"])


def test_a_missing_output_folder_is_an_error_before_writing(tmp_path):
    with pytest.raises(EmError, match="output folder does not exist"):
        write_table(str(tmp_path / "no" / "t.tsv"), [], ["a"], [np.zeros(1)], ["%r"])


def test_columns_convert_with_one_line_errors():
    np.testing.assert_array_equal(id_column(["0", "18446744073709551615"], "t"), np.array([0, 2**64 - 1], np.uint64))
    assert float_column(["0.5", "inf"], "t").tolist() == [0.5, math.inf]
    with pytest.raises(EmError, match="t: bad fragment id"):
        id_column(["1.5"], "t")
    with pytest.raises(EmError, match="t: bad fragment id"):
        id_column(["-1"], "t")
    with pytest.raises(EmError, match="t: bad number"):
        float_column(["x"], "t")


@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.0, 1.0, 1e-300, math.inf])
def test_format_float_reads_back_exactly(value):
    assert float(format_float(value)) == value
