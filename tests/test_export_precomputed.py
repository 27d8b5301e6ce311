"""Precomputed volumes: info, chunk names, raw and compressed_segmentation chunks read back by an
independent reader written from neuroglancer's format description (not from our writer)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from conftest import shared_data
from emtools import io
from emtools.errors import EmError
from emtools.export.compressed_segmentation import encode
from emtools.export.downsample import downsample, plan_scales
from emtools.export.precomputed import (
    chunk_boxes,
    chunk_name,
    encode_chunk,
    image_dtype,
    scale_entry,
    scale_key,
    segment_dtype,
    volume_info,
    write_scale,
)

# ----------------------------------------------------------------------------- the reader


def decode_compressed_segmentation(data: bytes, shape_xyz, block_xyz, dtype) -> np.ndarray:
    """Decode one single-channel compressed_segmentation chunk to a (z, y, x) array."""
    words = np.frombuffer(data, dtype="<u4")
    assert words[0] == 1, "single channel: the channel offset header is 1"
    channel = words[1:]
    sx, sy, sz = shape_xyz
    bx, by, bz = block_xyz
    gx, gy, gz = -(-sx // bx), -(-sy // by), -(-sz // bz)
    table_words = np.dtype(dtype).itemsize // 4
    out = np.zeros((gz * bz, gy * by, gx * bx), dtype=dtype)
    for z in range(gz):
        for y in range(gy):
            for x in range(gx):
                header = 2 * (x + gx * (y + gy * z))
                table_offset = int(channel[header]) & 0xFFFFFF
                bits = int(channel[header]) >> 24
                values_offset = int(channel[header + 1])
                assert bits in (0, 1, 2, 4, 8, 16, 32), bits
                n = bx * by * bz
                if bits == 0:
                    index = np.zeros(n, dtype=np.int64)
                else:
                    bit = np.arange(n, dtype=np.int64) * bits
                    word = channel[values_offset + bit // 32].astype(np.int64)
                    index = (word >> (bit % 32)) & ((1 << bits) - 1)
                count = int(index.max()) + 1
                table = channel[table_offset: table_offset + count * table_words].copy().view(f"<u{4 * table_words}")
                block = table[index].reshape(bz, by, bx)
                out[z * bz:(z + 1) * bz, y * by:(y + 1) * by, x * bx:(x + 1) * bx] = block
    return out[:sz, :sy, :sx]


def read_scale(layer: str, index: int = 0) -> tuple[np.ndarray, tuple[int, int, int], dict]:
    """(array (z,y,x) or (c,z,y,x), begin z,y,x, scale entry) of one scale of a precomputed volume."""
    with open(os.path.join(layer, "info")) as handle:
        info = json.load(handle)
    scale = info["scales"][index]
    dtype = np.dtype(info["data_type"]).newbyteorder("<")
    channels = info["num_channels"]
    sx, sy, sz = scale["size"]
    ox, oy, oz = scale["voxel_offset"]
    (cx, cy, cz), = scale["chunk_sizes"]
    out = np.full((channels, sz, sy, sx), 123, dtype=dtype)
    seen = set()
    for gz in range(-(-sz // cz)):
        for gy in range(-(-sy // cy)):
            for gx in range(-(-sx // cx)):
                x0, y0, z0 = gx * cx, gy * cy, gz * cz
                x1, y1, z1 = min(x0 + cx, sx), min(y0 + cy, sy), min(z0 + cz, sz)
                name = f"{ox + x0}-{ox + x1}_{oy + y0}-{oy + y1}_{oz + z0}-{oz + z1}"
                seen.add(name)
                with open(os.path.join(layer, scale["key"], name), "rb") as handle:
                    data = handle.read()
                shape = (x1 - x0, y1 - y0, z1 - z0)
                if scale["encoding"] == "raw":
                    assert len(data) == np.prod(shape) * channels * dtype.itemsize
                    # [x, y, z, channel] in Fortran order
                    chunk = np.frombuffer(data, dtype=dtype).reshape(shape + (channels,), order="F")
                    chunk = chunk.transpose(3, 2, 1, 0)
                else:
                    assert channels == 1
                    chunk = decode_compressed_segmentation(data, shape, scale["compressed_segmentation_block_size"], dtype)[None]
                out[:, z0:z1, y0:y1, x0:x1] = chunk
    assert sorted(os.listdir(os.path.join(layer, scale["key"]))) == sorted(seen), "no chunk files besides the grid"
    return (out[0] if channels == 1 else out), (oz, oy, ox), scale


# ----------------------------------------------------------------------------- format pieces


def test_chunk_names_and_scale_entry_are_xyz():
    assert chunk_name((1, 2, 3), (4, 5, 6)) == "3-6_2-5_1-4"
    assert scale_key((40, 4, 4)) == "4_4_40" and scale_key((4.5, 9, 9)) == "9_9_4.5"
    entry = scale_entry((40, 4, 4), (1, 2, 3), (10, 100, 200), (64, 64, 64))
    assert entry == {"key": "4_4_40", "size": [200, 100, 10], "resolution": [4, 4, 40], "voxel_offset": [3, 2, 1],
                     "chunk_sizes": [[64, 64, 10]], "encoding": "raw"}
    seg = scale_entry((8, 8, 8), (0, 0, 0), (64, 64, 64), (64, 64, 64), "compressed_segmentation")
    assert seg["compressed_segmentation_block_size"] == [8, 8, 8]
    with pytest.raises(EmError, match="unknown precomputed encoding"):
        scale_entry((8, 8, 8), (0, 0, 0), (8, 8, 8), (8, 8, 8), "jpeg")


def test_chunk_grid_starts_at_the_offset_and_cuts_the_last_chunk():
    boxes = list(chunk_boxes((5, 0, 0), (10, 4, 7), (4, 4, 4)))
    assert len(boxes) == 3 * 1 * 2
    assert boxes[0][1:] == ((5, 0, 0), (9, 4, 4))
    assert boxes[-1][1:] == ((13, 0, 4), (15, 4, 7))


def test_raw_chunk_bytes_are_fortran_xyzc():
    chunk = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)  # z, y, x
    data = encode_chunk(chunk, np.uint16)
    back = np.frombuffer(data, "<u2")
    assert back[1] == chunk[0, 0, 1] and back[4] == chunk[0, 1, 0] and back[12] == chunk[1, 0, 0]
    two = np.stack([chunk, chunk + 100])
    back2 = np.frombuffer(encode_chunk(two, np.uint16), "<u2")
    assert back2[24] == 100  # channel 1 follows all of channel 0


def test_image_and_segment_dtypes():
    assert image_dtype(np.uint8) == np.uint8 and image_dtype(np.float32) == np.float32
    assert image_dtype(np.bool_) == np.uint8
    assert image_dtype(np.int16) == np.float32 and image_dtype(np.float64) == np.float32
    with pytest.raises(EmError, match="cannot show"):
        image_dtype(np.complex64)
    assert segment_dtype(np.int32, 0, 7, "uint64", "s") == np.uint64
    with pytest.raises(EmError, match="negative id -3"):
        segment_dtype(np.int32, -3, 7, "uint64", "s.h5")
    with pytest.raises(EmError, match="float32 values"):
        segment_dtype(np.float32, 0, 1, "uint64", "s.h5")
    with pytest.raises(EmError, match=r"segment id 4294967296 in s.h5 is too large for uint32 .*--seg-dtype uint64"):
        segment_dtype(np.uint64, 0, 2**32, "uint32", "s.h5")
    assert segment_dtype(np.uint64, 0, 2**32 - 1, "uint32", "s") == np.uint32


def test_volume_info_fields():
    info = volume_info("segmentation", np.uint64, 1, [], mesh="mesh", skeletons="skeletons")
    assert info["@type"] == "neuroglancer_multiscale_volume" and info["data_type"] == "uint64"
    assert info["mesh"] == "mesh" and info["skeletons"] == "skeletons"
    with pytest.raises(EmError, match="one channel"):
        volume_info("segmentation", np.uint64, 2, [])


# ----------------------------------------------------------------------------- compressed_segmentation


def _roundtrip(chunk, block=(8, 8, 8)):
    data = encode(chunk, block)
    back = decode_compressed_segmentation(data, chunk.shape[::-1], block[::-1], chunk.dtype)
    np.testing.assert_array_equal(back, chunk)
    return data


def test_compressed_segmentation_by_hand():
    # one 2x2x2 block with two values: header (2 words), 1 word of 1-bit indices, table of 2 uint32
    chunk = np.array([[[5, 9], [5, 5]], [[9, 9], [5, 9]]], dtype=np.uint32)
    data = _roundtrip(chunk, (2, 2, 2))
    words = struct.unpack("<" + "I" * (len(data) // 4), data)
    # voxel order x + 2*(y + 2*z): 5 9 5 5 9 9 5 9 -> indices 0 1 0 0 1 1 0 1
    assert words == (1, 3 | (1 << 24), 2, 0b10110010, 5, 9)
    # a block of one value needs no index bits
    data = _roundtrip(np.full((2, 2, 2), 7, np.uint64), (2, 2, 2))
    assert struct.unpack("<IIIII", data) == (1, 2, 2, 7, 0)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("distinct", [1, 2, 3, 5, 17, 300, 70000])
def test_compressed_segmentation_random(dtype, distinct):
    rng = np.random.default_rng(distinct)
    values = rng.integers(0, np.iinfo(dtype).max, size=distinct, dtype=np.uint64).astype(dtype)
    shape = (19, 21, 23) if distinct < 70000 else (40, 48, 40)  # partial blocks on every axis
    chunk = values[rng.integers(0, distinct, size=shape)]
    _roundtrip(chunk)


def test_compressed_segmentation_is_small_on_real_labels():
    bodies = shared_data("fib25", "train", "bodies.h5")
    with io.open_volume(f"{bodies}:bodies") as source:
        from emtools.tiling.geometry import Box

        chunk = source.read(Box((0, 0, 0), (64, 64, 64)))
    data = _roundtrip(chunk)
    assert len(data) < chunk.nbytes / 20  # neuroglancer reports ~1/50 on FIB-25


def test_compressed_segmentation_refuses_other_types():
    with pytest.raises(EmError, match="uint32 or uint64"):
        encode(np.zeros((8, 8, 8), np.int32))


# ----------------------------------------------------------------------------- whole scales on real data


@pytest.fixture(scope="module")
def fib25_crop():
    bodies = shared_data("fib25", "train", "bodies.h5")
    images = shared_data("fib25", "train", "image")
    from emtools.tiling.geometry import Box

    box = Box((10, 20, 30), (50, 120, 150))
    with io.open_volume(f"{bodies}:bodies") as source:
        labels = source.read(box)
    with io.open_volume(str(images)) as source:
        image = source.read(box)
    return image, labels


@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation"])
def test_written_scales_read_back_equal(tmp_path, fib25_crop, encoding):
    image, labels = fib25_crop
    begin = (3, 5, 7)  # an offset that is no multiple of the downsampling factors
    voxel = (10.0, 10.0, 10.0)
    layers = {"img": (image, "raw", "mean"), "seg": (labels, encoding, "mode")}
    for name, (array, enc, method) in layers.items():
        folder = tmp_path / name
        steps = plan_scales(array.shape, voxel, (16, 32, 32))
        assert len(steps) >= 2
        scales, current, b, v = [], array, begin, voxel
        for k in range(len(steps) + 1):
            write_scale(str(folder / scale_key(v)), current, b, (16, 32, 32), array.dtype, enc)
            scales.append(scale_entry(v, b, current.shape, (16, 32, 32), enc))
            if k < len(steps):
                current, b = downsample(current, b, steps[k], method)
                v = tuple(x * f for x, f in zip(v, steps[k]))
        (folder / "info").write_text(json.dumps(volume_info("image" if name == "img" else "segmentation",
                                                            array.dtype, 1, scales)))
        back, back_begin, _ = read_scale(str(folder), 0)
        np.testing.assert_array_equal(back, array)
        assert back_begin == begin
        # every coarser scale is the downsampling of the one before it
        for k in range(1, len(scales)):
            finer, finer_begin, _ = read_scale(str(folder), k - 1)
            coarser, coarser_begin, _ = read_scale(str(folder), k)
            expect, expect_begin = downsample(finer, finer_begin, steps[k - 1], method)
            np.testing.assert_array_equal(coarser, expect)
            assert coarser_begin == expect_begin


def test_multichannel_raw_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 9, 20, 33)).astype(np.float32)
    write_scale(str(tmp_path / "p" / "1_1_1"), maps, (0, 0, 0), (4, 16, 16), np.float32)
    (tmp_path / "p" / "info").write_text(json.dumps(volume_info(
        "image", np.float32, 3, [scale_entry((1, 1, 1), (0, 0, 0), maps.shape[1:], (4, 16, 16))])))
    back, _, _ = read_scale(str(tmp_path / "p"), 0)
    np.testing.assert_array_equal(back, maps)
