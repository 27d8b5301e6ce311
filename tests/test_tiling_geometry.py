
import numpy as np
import pytest

from emtools.errors import EmError
from emtools.tiling.geometry import Box, blend_weights, check_chunking, first_overlap, plan_chunks, uncovered_boxes


def test_box_basics():
    box = Box((1, 2, 3), (4, 6, 9))
    assert box.shape == (3, 4, 6) and box.size == 72
    assert box.name() == "1-4_2-6_3-9" and box.text() == "1:4,2:6,3:9"
    assert box.intersect(Box((3, 5, 8), (10, 10, 10))) == Box((3, 5, 8), (4, 6, 9))
    assert box.intersect(Box((4, 0, 0), (5, 9, 9))) is None  # touching is not overlapping
    assert box.shift((-1, -2, -3)) == Box((0, 0, 0), (3, 4, 6))
    assert Box((0, 0, 0), (10, 10, 10)).contains(box)
    arr = np.arange(1000).reshape(10, 10, 10)
    assert arr[Box((0, 0, 0), (10, 10, 10)).local(box)].shape == box.shape


@pytest.mark.parametrize(
    "shape,chunk,halo,origin",
    [((10, 20, 30), (4, 7, 30), (1, 2, 0), (0, 0, 0)), ((5, 5, 5), (5, 5, 5), (0, 0, 0), (3, -2, 7)), ((9, 8, 7), (2, 3, 4), (3, 3, 3), (0, 0, 0))],
)
def test_plan_tiles_the_volume_exactly(shape, chunk, halo, origin):
    volume = Box.from_shape(shape, origin)
    chunks = plan_chunks(volume, chunk, halo)
    counts = np.zeros(shape, dtype=int)
    for c in chunks:
        assert c.read.contains(c.responsible) and volume.contains(c.read)
        counts[volume.local(c.responsible)] += 1
        # the halo is exactly `halo` wherever the volume allows it
        for a in range(3):
            assert c.responsible.begin[a] - c.read.begin[a] == min(halo[a], c.responsible.begin[a] - volume.begin[a])
            assert c.read.end[a] - c.responsible.end[a] == min(halo[a], volume.end[a] - c.responsible.end[a])
    assert (counts == 1).all()
    expected = int(np.prod([-(-s // c) for s, c in zip(shape, chunk)]))
    assert len(chunks) == expected
    # z-major order
    assert [c.index_zyx for c in chunks] == sorted(c.index_zyx for c in chunks)


def test_edge_chunk_is_shorter():
    chunks = plan_chunks(Box.from_shape((10, 10, 10)), (4, 10, 10), (0, 0, 0))
    assert [c.responsible.shape[0] for c in chunks] == [4, 4, 2]


@pytest.mark.parametrize(
    "chunk,halo,message",
    [((0, 4, 4), (0, 0, 0), "chunk size must be positive, got 0 along z"),
     ((4, -1, 4), (0, 0, 0), "chunk size must be positive, got -1 along y"),
     ((4, 4, 4), (0, 0, -2), "halo must be zero or positive, got -2 along x"),
     ((11, 4, 4), (0, 0, 0), "chunk size 11 along z is larger than the volume (10 voxels)"),
     ((4, 4, 4), (0, 10, 0), "halo 10 along y is not smaller than the volume")],
)
def test_bad_chunking(chunk, halo, message):
    with pytest.raises(EmError) as info:
        check_chunking(Box.from_shape((10, 10, 10)), chunk, halo)
    assert message in str(info.value)


def _brute_uncovered(volume, regions):
    mask = np.ones(volume.shape, dtype=bool)
    for r in regions:
        inter = r.intersect(volume)
        if inter is not None:
            mask[volume.local(inter)] = False
    return mask


def test_uncovered_boxes_matches_brute_force():
    rng = np.random.default_rng(0)
    volume = Box((2, 0, 1), (14, 11, 13))
    for _ in range(30):
        regions = []
        for _ in range(rng.integers(0, 6)):
            b = rng.integers(0, 12, 3)
            regions.append(Box(tuple(b), tuple(b + rng.integers(1, 8, 3))))
        gaps = uncovered_boxes(volume, regions)
        mask = np.zeros(volume.shape, dtype=int)
        for g in gaps:
            mask[volume.local(g)] += 1
        assert (mask == _brute_uncovered(volume, regions)).all()  # disjoint and exact


def test_first_overlap():
    a, b, c = Box((0, 0, 0), (2, 2, 2)), Box((2, 0, 0), (4, 2, 2)), Box((1, 1, 1), (3, 3, 3))
    assert first_overlap([a, b]) is None
    assert set(first_overlap([a, b, c])) in ({a, c}, {b, c})


def test_linear_weights_are_a_partition_of_unity():
    volume = Box.from_shape((12, 20, 17))
    chunks = plan_chunks(volume, (5, 8, 6), (2, 3, 2))
    total = np.zeros(volume.shape)
    for c in chunks:
        w = blend_weights(c.read, c.responsible, "linear")
        assert w.shape == c.read.shape and w.dtype == np.float32 and (w > 0).all()
        total[volume.local(c.read)] += w
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)


def test_gaussian_weights_peak_in_the_centre():
    read, resp = Box((0, 0, 0), (9, 9, 9)), Box((2, 2, 2), (7, 7, 7))
    w = blend_weights(read, resp, "gaussian")
    assert np.unravel_index(np.argmax(w), w.shape) == (4, 4, 4)
    assert w.min() >= 1e-3 - 1e-9
    with pytest.raises(EmError, match="unknown blend mode"):
        blend_weights(read, resp, "cubic")


def test_linear_weights_without_halo_are_one():
    box = Box((0, 0, 0), (3, 4, 5))
    assert (blend_weights(box, box, "linear") == 1).all()
