"""Output names from the -o template, output types, and the metadata of a head's map."""

import os

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.models.heads import default_heads, head_spec
from emtools.predict.engine import Selection
from emtools.predict.outputs import encode, input_name, output_axes, output_metadata, output_shape, output_specs


@pytest.mark.parametrize("spec,name", [
    ("chunks/chunk_0-8_0-36_0-36.h5", "chunk_0-8_0-36_0-36"),
    ("raw.h5:/volumes/image", "raw"),
    ("stack.tif", "stack"),
    ("isbi2012/image/", "image"),
    ("isbi2012/image/*.png", "image"),
    ("data/volume.n5", "volume.n5"),
])
def test_input_name(spec, name):
    assert input_name(spec) == name


def test_output_specs(tmp_path):
    assert output_specs("p_{head}.h5:/pred", ["a.h5"], ["affinity", "foreground"]) == [
        {"affinity": "p_affinity.h5:/pred", "foreground": "p_foreground.h5:/pred"}]
    assert output_specs("out.h5", ["raw.h5:/image"], ["affinity"]) == [{"affinity": "out.h5"}]
    folder = f"{tmp_path}/pred/"
    assert output_specs(folder, ["c/x.h5", "c/y.h5"], ["fg"]) == [
        {"fg": os.path.join(folder, "x_fg.h5")}, {"fg": os.path.join(folder, "y_fg.h5")}]
    assert output_specs(str(tmp_path), ["x.h5"], ["fg"]) == [{"fg": os.path.join(str(tmp_path), "x_fg.h5")}]
    with pytest.raises(EmError, match=r"2 heads \(a, b\) need \{head\} in the output"):
        output_specs("p.h5", ["x.h5"], ["a", "b"])
    with pytest.raises(EmError, match=r"2 inputs need \{name\} in the output"):
        output_specs("p_{head}.h5", ["x.h5", "y.h5"], ["a"])
    with pytest.raises(EmError, match="would both write p.h5"):
        output_specs("p.h5:/{head}", ["x.h5"], ["a", "b"])  # one file, replaced per head: refused
    with pytest.raises(EmError, match="would both write"):
        output_specs("{name}.h5", ["a/x.h5", "b/x.h5"], ["a"])


def test_encode():
    values = np.array([0.0, 0.5, 1.0, 1.2, -0.1], np.float32)
    assert encode(values, "uint8", (0, 1)).tolist() == [0, 128, 255, 255, 0]
    assert encode(np.array([-1.0, 0.0, 1.0], np.float32), "uint8", (-1, 1)).tolist() == [0, 128, 255]
    assert encode(values, "float16", (0, 1)).dtype == np.float16
    assert encode(values, "float32", (0, 1)) is values
    with pytest.raises(EmError, match="unknown output type"):
        encode(values, "int8", (0, 1))


def test_output_metadata_keeps_the_chunk_and_describes_the_head():
    chunk = {"read_begin_vx": [0, 0, 0], "read_end_vx": [8, 53, 53], "responsible_begin_vx": [0, 0, 0],
             "responsible_end_vx": [8, 36, 36], "volume_begin_vx": [0, 0, 0], "volume_end_vx": [8, 72, 72],
             "chunk_index_zyx": [0, 0, 0]}
    meta = Metadata(offset_nm=(80, 40, 0), voxel_size_nm=(40, 4, 4), provenance=({"tool": "em-tile"},),
                    attrs={**chunk, "unrelated": 1})
    affinity = default_heads([("affinity", 3)])[0]
    out = output_metadata(meta, Selection(affinity, 0, (1, 2)), "uint8", {"tool": "em-predict"})
    assert out.axes == "czyx" and out.offset_nm == meta.offset_nm and out.voxel_size_nm == meta.voxel_size_nm
    assert out.provenance == ({"tool": "em-tile"}, {"tool": "em-predict"})
    assert {k: out.attrs[k] for k in chunk} == chunk and "unrelated" not in out.attrs
    assert out.attrs["affinity_offsets"] == [[0, -1, 0], [0, 0, -1]] and out.attrs["value_range"] == [0.0, 1.0]
    distance = Selection(head_spec("distance", {"channels": 1}), 3, (0,))
    assert output_axes(distance) == "zyx" and output_shape(distance, (2, 3, 4)) == (2, 3, 4)
    assert output_metadata(meta, distance, "float32", {}).attrs["value_range"] == [-1.0, 1.0]
    assert output_shape(Selection(affinity, 0, (0,)), (2, 3, 4)) == (1, 2, 3, 4)
