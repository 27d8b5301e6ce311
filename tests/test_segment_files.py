"""emtools.segment.files: reading maps and labels, chunk regions, per-threshold output names."""

import numpy as np
import pytest

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.segment.files import (
    as_thresholds,
    check_voxel_size,
    chunk_regions,
    crop_and_renumber,
    cropped_metadata,
    output_for_threshold,
    read_labels,
    read_map,
    threshold_outputs,
)
from emtools.tiling.geometry import Box


def test_thresholds_from_text_numbers_and_lists():
    assert as_thresholds("0.3, 0.5") == [0.3, 0.5]
    assert as_thresholds(0.5) == [0.5]
    assert as_thresholds((0.1, 0.2)) == [0.1, 0.2]
    with pytest.raises(EmError, match="comma-separated numbers, got '0.2,x'"):
        as_thresholds("0.2,x")
    with pytest.raises(EmError, match="increasing"):
        as_thresholds([0.5, 0.3])
    with pytest.raises(EmError, match=r"\[0, 1\]"):
        as_thresholds("1.5")


def test_output_names(tmp_path):
    assert output_for_threshold("seg_{threshold}.h5:/s", 0.30, True) == "seg_0.3.h5:/s"
    assert output_for_threshold("seg.h5", 0.3, False) == "seg.h5"
    with pytest.raises(EmError, match="several thresholds need {threshold}"):
        output_for_threshold("seg.h5", 0.3, True)
    assert threshold_outputs(f"{tmp_path}/s_{{threshold}}.h5", [0.1, 0.2], "gzip") == [f"{tmp_path}/s_0.1.h5", f"{tmp_path}/s_0.2.h5"]
    with pytest.raises(EmError, match="name the same file"):
        threshold_outputs(f"{tmp_path}/s.h5:/{{threshold}}", [0.1, 0.2], "gzip")
    with pytest.raises(EmError, match="unknown compression"):
        threshold_outputs(f"{tmp_path}/s.h5", [0.1], "zip")
    with pytest.raises(EmError, match="output folder does not exist"):
        threshold_outputs(f"{tmp_path}/no/s.h5", [0.1], "gzip")


def test_voxel_size_override():
    check_voxel_size(None)
    check_voxel_size((40.0, 4.0, 4.0))
    with pytest.raises(EmError, match="--voxel-size 40.0,0.0,4.0 has zero or negative values"):
        check_voxel_size((40.0, 0.0, 4.0))


def test_chunk_regions_and_cropped_metadata():
    box = Box((10, 0, 0), (20, 8, 8))
    plain = Metadata(voxel_size_nm=(4, 2, 2))
    assert chunk_regions(plain, box) == (box, box)
    chunk = Metadata(voxel_size_nm=(4, 2, 2), attrs={"responsible_begin_vx": [12, 0, 0], "responsible_end_vx": [18, 8, 8],
                                                    "volume_begin_vx": [0, 0, 0], "other": 1})
    data, responsible = chunk_regions(chunk, box)
    assert data == box and responsible == Box((12, 0, 0), (18, 8, 8))
    meta = cropped_metadata(chunk, responsible, {"fragment_count": 3})
    assert meta.offset_nm == (48.0, 0.0, 0.0)
    assert meta.attrs == {"volume_begin_vx": [0, 0, 0], "read_begin_vx": [12, 0, 0], "read_end_vx": [18, 8, 8],
                          "responsible_begin_vx": [12, 0, 0], "responsible_end_vx": [18, 8, 8], "fragment_count": 3}
    outside = Metadata(attrs={"responsible_begin_vx": [0, 0, 0], "responsible_end_vx": [30, 8, 8]})
    with pytest.raises(EmError, match="lies outside the data"):
        chunk_regions(outside, box)


def test_crop_and_renumber():
    labels = np.array([[[5, 5, 9, 2]]], np.uint64)
    out = crop_and_renumber(labels, (slice(None), slice(None), slice(1, 4)))
    assert out.dtype == np.uint64 and out.tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize("array, fragment", [
    (np.zeros((2, 3, 4, 5), np.uint32), "labels must be 3D"),
    (np.zeros((3, 4, 5), np.float32), "is float32 (floating point); labels must be integers"),
    (np.full((3, 4, 5), -1, np.int32), "has negative labels (min -1)"),
])
def test_bad_labels(tmp_path, array, fragment):
    spec = str(tmp_path / "l.h5")
    io.write_volume(spec, array, Metadata(axes="czyx" if array.ndim == 4 else "zyx"))
    with pytest.raises(EmError) as info:
        read_labels(spec)
    assert fragment in str(info.value)


def test_labels_of_any_integer_type(tmp_path):
    spec = str(tmp_path / "l.h5")
    io.write_volume(spec, np.arange(24, dtype=np.int16).reshape(2, 3, 4), Metadata(offset_nm=(2, 0, 0), voxel_size_nm=(2, 1, 1)))
    labels, meta, box = read_labels(spec)
    assert labels.dtype == np.int16 and box == Box((1, 0, 0), (3, 3, 4))


def test_maps(tmp_path):
    affs = np.full((3, 2, 3, 4), 0.75, np.float32)
    io.write_volume(str(tmp_path / "a.h5"), affs, Metadata(axes="czyx"))
    source = read_map(str(tmp_path / "a.h5"))
    assert source.kind == "affinities" and list(source.region_graph_input) == ["affinities"]
    with pytest.raises(EmError, match="--invert is for maps that are high inside cells"):
        read_map(str(tmp_path / "a.h5"), invert=True)
    with pytest.raises(EmError, match="a boundary map must be 3D"):
        read_map(str(tmp_path / "a.h5"), kind="boundary")
    io.write_volume(str(tmp_path / "b.h5"), np.full((2, 3, 4), 64, np.uint8), Metadata())
    boundary = read_map(str(tmp_path / "b.h5"))
    assert boundary.kind == "boundary" and boundary.values.dtype == np.uint8  # /255 later, no copy now
    inverted = read_map(str(tmp_path / "b.h5"), invert=True)
    np.testing.assert_allclose(inverted.values, 1 - 64 / 255, rtol=1e-6)
    with pytest.raises(EmError, match="affinities must be 4D"):
        read_map(str(tmp_path / "b.h5"), kind="affinities")
