import pytest

from emtools.errors import EmError
from emtools.meta import MAX_LISTED_INPUTS, Metadata, provenance_digest, provenance_record, require_same_grid


def test_defaults_and_validation():
    meta = Metadata()
    assert meta.axes == "zyx" and meta.voxel_size_nm == (1.0, 1.0, 1.0) and meta.offset_nm == (0.0, 0.0, 0.0)
    with pytest.raises(EmError, match="axes"):
        Metadata(axes="xyz")
    with pytest.raises(EmError, match="positive"):
        Metadata(voxel_size_nm=(0, 4, 4))
    with pytest.raises(EmError, match="3 values"):
        Metadata(offset_nm=(1, 2))


def test_origin_in_voxels():
    assert Metadata(offset_nm=(100, 8, -4), voxel_size_nm=(50, 4, 4)).origin_vx == (2, 2, -1)
    with pytest.raises(EmError, match="not a multiple"):
        Metadata(offset_nm=(0, 3, 0), voxel_size_nm=(50, 4, 4)).origin_vx


def test_provenance_record_is_deterministic_and_json_clean():
    import numpy as np

    src = Metadata(provenance=({"tool": "a"},))
    rec1 = provenance_record("em-x", {"n": np.int64(3), "t": (1, 2)}, [("in.h5", src)])
    rec2 = provenance_record("em-x", {"n": 3, "t": [1, 2]}, [("in.h5", src)])
    assert rec1 == rec2
    assert rec1["inputs"][0]["provenance_sha256"] == provenance_digest(src)
    assert "time" not in str(rec1)
    assert provenance_digest(src) != provenance_digest(Metadata())


def test_many_inputs_are_summarised():
    many = [(f"c{i}.h5", Metadata()) for i in range(MAX_LISTED_INPUTS + 1)]
    record = provenance_record("em-x", {}, many)
    assert "inputs" not in record
    assert record["inputs_summary"]["count"] == MAX_LISTED_INPUTS + 1
    assert record["inputs_summary"]["first"] == "c0.h5"


def test_with_record_appends():
    meta = Metadata().with_record({"tool": "a"}).with_record({"tool": "b"})
    assert [r["tool"] for r in meta.provenance] == ["a", "b"]


def test_require_same_grid():
    require_same_grid([("a", Metadata(voxel_size_nm=(40, 4, 4))), ("b", Metadata(voxel_size_nm=(40, 4, 4)))])
    with pytest.raises(EmError, match="voxel sizes differ: 40,4,4 nm in a but 40,8,8 nm in b"):
        require_same_grid([("a", Metadata(voxel_size_nm=(40, 4, 4))), ("b", Metadata(voxel_size_nm=(40, 8, 8)))])
