"""The patch grid and reflected reads: hand-made cases, and np.pad as the reference."""

import itertools

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.predict.windows import (
    PatchGrid,
    exact_halo,
    fit_block,
    make_grid,
    parse_overlap,
    plan_blocks,
    read_padded,
    reflect_indices,
    resolve_crop,
    stride_for,
)
from emtools.tiling.geometry import Box


@pytest.mark.parametrize("text,expected", [
    ("0.5", ("fraction", (0.5, 0.5, 0.5))),
    ("0", ("fraction", (0.0, 0.0, 0.0))),
    ("0,0.5,0.25", ("fraction", (0.0, 0.5, 0.25))),
    ("2,32,32", ("voxels", (2, 32, 32))),
    ("0,0,0", ("voxels", (0, 0, 0))),
])
def test_parse_overlap(text, expected):
    assert parse_overlap(text) == expected


@pytest.mark.parametrize("text,fragment", [
    ("1", "a fraction must be in [0, 1)"),
    ("-0.1", "a fraction must be in [0, 1)"),
    ("1.5,0,0", "a fraction must be in [0, 1)"),
    ("32", "a fraction must be in [0, 1)"),
    ("2,-1,3", "must not be negative"),
    ("half", "is not a number"),
    ("1,2", "give one fraction"),
])
def test_bad_overlap(text, fragment):
    with pytest.raises(EmError, match=None) as info:
        parse_overlap(text)
    assert fragment in str(info.value)


def test_stride_from_fraction_and_voxels():
    assert stride_for((6, 24, 24), ("fraction", (0.5, 0.5, 0.5))) == (3, 12, 12)
    assert stride_for((6, 24, 24), ("fraction", (0.0, 0.25, 0.25))) == (6, 18, 18)
    assert stride_for((6, 24, 24), ("voxels", (0, 4, 23))) == (6, 20, 1)
    with pytest.raises(EmError, match="not below the kept patch output"):
        stride_for((6, 24, 24), ("voxels", (6, 0, 0)))


def test_resolve_crop():
    patch, lo, hi = (8, 32, 32), (6, 17, 17), (6, 17, 18)
    assert resolve_crop("auto", patch, lo, hi) == ((1, 4, 4), (1, 4, 4))
    assert resolve_crop("auto", (16, 256, 256), (1, 17, 17), (1, 17, 18)) == ((1, 17, 17), (1, 17, 18))
    # with the training input size known, the auto crop is set by it, not by a larger patch
    assert resolve_crop("auto", (16, 256, 256), (1, 17, 17), (1, 17, 18), (8, 64, 64)) == ((1, 8, 8), (1, 8, 8))
    assert resolve_crop("auto", (16, 48, 48), (1, 17, 17), (1, 17, 18), (8, 64, 64)) == ((1, 6, 6), (1, 6, 6))
    assert resolve_crop("valid", (16, 64, 64), lo, hi) == (lo, hi)
    assert resolve_crop("0", patch, lo, hi) == ((0, 0, 0), (0, 0, 0))
    assert resolve_crop("1,2,3", patch, lo, hi) == ((1, 2, 3), (1, 2, 3))
    with pytest.raises(EmError, match="leaving nothing; use a patch of more than 12 voxels along z"):
        resolve_crop("valid", patch, lo, hi)
    with pytest.raises(EmError, match="give auto, valid"):
        resolve_crop("lots", patch, lo, hi)


def _kept_boxes(grid, target):
    return [grid.kept(p) for p in grid.patches(target)]


@pytest.mark.parametrize("overlap", [("fraction", (0.5,) * 3), ("voxels", (0, 3, 5)), ("fraction", (0.0,) * 3)])
def test_grid_covers_the_target_and_is_global(overlap):
    grid = make_grid((4, 12, 10), ((1, 2, 0), (0, 1, 3)), overlap, anchor_zyx=(3, -2, 5))
    target = Box((3, -2, 5), (14, 27, 30))
    coverage = np.zeros(target.shape, int)
    for kept in _kept_boxes(grid, target):
        part = kept.intersect(target)
        assert part is not None  # only patches that matter
        coverage[target.local(part)] += 1
    assert coverage.min() >= 1
    # A sub-region is predicted by exactly the patches of the whole that touch it.
    sub = Box((5, 4, 9), (9, 17, 21))
    expected = [p for p in grid.patches(target) if grid.kept(p).intersect(sub) is not None]
    assert grid.patches(sub) == expected
    assert grid.count(sub) == len(expected)
    # The input box is the union of the patch inputs.
    boxes = grid.patches(sub)
    union = Box(tuple(min(b.begin[a] for b in boxes) for a in range(3)), tuple(max(b.end[a] for b in boxes) for a in range(3)))
    assert grid.input_box(sub) == union


def test_grid_kept_regions_start_at_the_anchor():
    grid = PatchGrid((4, 8, 8), (1, 2, 2), (1, 2, 2), (2, 4, 4), (10, 0, 0))
    first = grid.patches(Box((10, 0, 0), (11, 1, 1)))
    assert [grid.kept(p) for p in first] == [Box((10, 0, 0), (12, 4, 4))]
    assert grid.kept(Box((9, -2, -2), (13, 6, 6))) == Box((10, 0, 0), (12, 4, 4))


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_reflect_indices_match_numpy_pad(n):
    data = np.arange(n) + 100
    for pad in (0, 1, n, 3 * n + 2):
        padded = np.pad(data, pad, mode="reflect") if n > 1 else np.full(n + 2 * pad, data[0])
        index = reflect_indices(-pad, n + pad, 0, n)
        assert np.array_equal(data[index], padded)


def test_read_padded_reads_only_what_it_needs_and_mirrors():
    rng = np.random.default_rng(0)
    volume = rng.random((2, 5, 9, 7)).astype(np.float32)
    data = Box((10, 20, 30), (15, 29, 37))
    reads = []

    def read(part):
        assert data.contains(part)
        reads.append(part)
        return volume[(slice(None),) + data.local(part)]

    inside = Box((11, 21, 31), (14, 25, 36))
    assert np.array_equal(read_padded(read, inside, data), volume[(slice(None),) + data.local(inside)])
    box = Box((7, 18, 33), (17, 35, 40))
    out = read_padded(read, box, data)
    pads = [(data.begin[a] - box.begin[a], box.end[a] - data.end[a]) for a in range(3)]
    full = np.pad(volume, [(0, 0)] + [(max(p, 0), max(q, 0)) for p, q in pads], mode="reflect")
    crop = tuple(slice(max(-p, 0), full.shape[a + 1] - max(-q, 0)) for a, (p, q) in enumerate(pads))
    assert np.array_equal(out, full[(slice(None),) + crop])
    assert reads[-1] == Box((10, 20, 33), (15, 29, 37))  # x 37, 38, 39 mirror to 35, 34, 33


def test_exact_halo():
    grid = make_grid((8, 32, 32), ((1, 4, 4), (1, 4, 4)), ("fraction", (0.5,) * 3))
    assert exact_halo(grid, (6, 17, 17), (6, 17, 17)) == ((6, 17, 17), (6, 17, 17))
    assert exact_halo(grid, (6, 40, 40), (6, 40, 40)) == ((6, 27, 27), (6, 27, 27))
    assert exact_halo(grid, (1, 1, 1), (1, 1, 1), local=False) == ((6, 27, 27), (6, 27, 27))


def test_patches_are_z_major():
    grid = make_grid((2, 2, 2), ((0, 0, 0), (0, 0, 0)), ("fraction", (0.0,) * 3))
    begins = [p.begin for p in grid.patches(Box((0, 0, 0), (4, 4, 4)))]
    assert begins == sorted(begins) == list(itertools.product((0, 2), (0, 2), (0, 2)))


def test_blocks_partition_the_target_on_the_grid():
    grid = make_grid((4, 12, 12), ((1, 2, 2), (1, 2, 2)), ("fraction", (0.5,) * 3), anchor_zyx=(0, 5, 5))
    assert grid.stride_zyx == (1, 4, 4)
    target = Box((3, 8, 5), (17, 60, 40))
    blocks = plan_blocks(target, (6, 15, 35), grid)  # rounded up to 6, 16, 36 voxels
    covered = np.zeros(target.shape, int)
    for block in blocks:
        covered[target.local(block)] += 1
    assert (covered == 1).all()
    assert sorted({b.begin[1] for b in blocks}) == [8, 21, 37, 53]  # 5 + 16k inside the target
    assert {b.begin[0] for b in blocks} == {3, 6, 12} and {b.begin[2] for b in blocks} == {5}
    assert [b.begin for b in blocks] == sorted(b.begin for b in blocks)  # z-major
    assert plan_blocks(target, (64, 1024, 1024), grid) == [target]
    # a block wider in x than the target gives its spare voxels to z: (6, 15, 100) is (17, 15, 100) here
    assert fit_block((6, 15, 100), target.shape) == (17, 15, 100)
    assert {b.begin[0] for b in plan_blocks(target, (6, 15, 100), grid)} == {3}
    assert {b.begin[0] for b in plan_blocks(target, (6, 15, 100), grid, fit=False)} == {3, 6, 12}
    assert fit_block((64, 1024, 1024), (100, 250, 250)) == (1073, 1024, 1024)
    assert fit_block((64, 1024, 1024), (500, 4000, 4000)) == (64, 1024, 1024)
    # A block of n whole strides needs n + K/S - 1 patches per axis (here K/S = 2).
    inner = Box((0, 21, 5), (1, 37, 40))
    assert len(grid._indices(1, inner.begin[1], inner.end[1])) == 16 // 4 + 2 - 1
