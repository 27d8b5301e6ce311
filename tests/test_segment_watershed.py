"""emtools.segment.watershed: flooding against scikit-image, seeds, size filter, fragments, BC/BCD."""

import numpy as np
import pytest
from scipy import ndimage

from emtools.segment import watershed as W
from emtools.affinities import affinities_from_labels
from emtools.errors import EmError


def _random_problem(rng, shape, n_seeds, masked):
    n = int(np.prod(shape))
    heights = rng.permutation(n).astype(np.uint16).reshape(shape)  # distinct: no ties
    seeds = np.zeros(shape, np.uint64)
    where = rng.choice(n, size=min(n_seeds, n), replace=False)
    seeds.reshape(-1)[where] = np.arange(1, len(where) + 1)
    mask = rng.random(shape) > 0.25 if masked else None
    return heights, seeds, mask


# ----------------------------------------------------------------------------- flooding

def test_two_basins_split_at_the_ridge():
    heights = np.array([[[0, 1, 2, 9, 2, 1, 0]]], np.float32) / 9
    seeds = np.array([[[1, 0, 0, 0, 0, 0, 2]]], np.uint64)
    out = W.seeded_watershed(heights, seeds)
    # the ridge voxel goes to the basin that reaches it first: both at the same time, the
    # left one was pushed first (raster order)
    assert out.tolist() == [[[1, 1, 1, 1, 2, 2, 2]]]


def test_flooding_fills_dips_behind_a_ridge():
    heights = np.array([[[0, 5, 1, 5, 3]]], np.uint8)
    seeds = np.array([[[7, 0, 0, 0, 9]]], np.uint32)
    for exact in (True, False):
        assert W.seeded_watershed(heights, seeds, exact=exact).tolist() == [[[7, 7, 7, 9, 9]]]


@pytest.mark.parametrize("masked", [False, True])
def test_exact_order_equals_scikit_image(masked):
    skimage = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(int(s) for s in rng.integers(1, 10, 3))
        heights, seeds, mask = _random_problem(rng, shape, int(rng.integers(1, 6)), masked)
        ours = W.seeded_watershed(heights, seeds, mask=mask, exact=True)
        ref = skimage.watershed(heights.astype(np.float64), seeds.astype(np.int64), mask=mask, connectivity=1)
        np.testing.assert_array_equal(ours, ref)


def test_2d_mode_equals_scikit_image_per_section():
    skimage = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(1)
    heights, seeds, _ = _random_problem(rng, (4, 9, 11), 12, False)
    ours = W.seeded_watershed(heights, seeds, use_z=False, exact=True)
    for z in range(4):
        ref = skimage.watershed(heights[z].astype(np.float64), seeds[z].astype(np.int64), connectivity=1)
        np.testing.assert_array_equal(ours[z], ref)


def test_fast_order_agrees_with_exact_on_smooth_heights():
    rng = np.random.default_rng(2)
    heights = ndimage.gaussian_filter(rng.random((12, 40, 40)), 2.0)
    heights = ((heights - heights.min()) / np.ptp(heights)).astype(np.float32)
    seeds = np.zeros(heights.shape, np.uint64)
    seeds.reshape(-1)[rng.choice(heights.size, 30, replace=False)] = np.arange(1, 31)
    fast = W.seeded_watershed(heights, seeds)
    exact = W.seeded_watershed(heights, seeds, exact=True)
    assert (fast == exact).mean() > 0.97
    # every fragment is one connected piece holding its seed
    for label in range(1, 31):
        pieces = ndimage.label(fast == label)[1]
        assert pieces == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.uint8])
def test_height_dtypes_give_the_same_labels(dtype):
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, (5, 12, 13)).astype(np.uint8)
    heights = levels if dtype == np.uint8 else (levels / 255.0).astype(dtype)
    seeds = np.zeros(levels.shape, np.int64)
    seeds[0, 0, 0], seeds[4, 11, 12], seeds[2, 6, 6] = 1, 2, 3
    expected = W.seeded_watershed(levels, seeds, exact=True)
    out = W.seeded_watershed(heights, seeds, levels=256, exact=True)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint64


def test_inputs_are_not_modified_and_output_is_deterministic():
    rng = np.random.default_rng(4)
    heights, seeds, mask = _random_problem(rng, (6, 20, 20), 10, True)
    copies = heights.copy(), seeds.copy(), mask.copy()
    first = W.seeded_watershed(heights, seeds, mask=mask)
    second = W.seeded_watershed(heights, seeds, mask=mask)
    np.testing.assert_array_equal(first, second)
    for original, copy in zip((heights, seeds, mask), copies):
        np.testing.assert_array_equal(original, copy)
    assert first is not seeds and not np.shares_memory(first, seeds)


def test_edge_cases():
    # no seeds: nothing is labelled
    assert not W.seeded_watershed(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.uint64)).any()
    # one voxel
    assert W.seeded_watershed(np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.uint8)).tolist() == [[[1]]]
    # a seed under the mask is dropped; voxels the mask cuts off stay 0
    heights = np.zeros((1, 1, 5), np.float32)
    seeds = np.array([[[1, 0, 0, 0, 2]]], np.uint64)
    mask = np.array([[[True, True, False, True, False]]])
    assert W.seeded_watershed(heights, seeds, mask=mask).tolist() == [[[1, 1, 0, 0, 0]]]
    # empty volume
    assert W.seeded_watershed(np.zeros((0, 3, 3), np.float32), np.zeros((0, 3, 3), np.uint64)).shape == (0, 3, 3)


@pytest.mark.parametrize(
    "heights, fragment",
    [
        (np.full((1, 2, 2), np.nan, np.float32), "NaN"),
        (np.full((1, 2, 2), np.inf, np.float32), "Inf"),
        (np.full((1, 2, 2), 1.5, np.float32), "[0, 1]"),
        (np.zeros((2, 2), np.float32), "3D"),
        (np.zeros((1, 2, 2), np.int32), "float32"),
    ],
)
def test_bad_heights_raise_one_line_errors(heights, fragment):
    with pytest.raises(EmError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        W.seeded_watershed(heights, np.zeros(heights.shape, np.uint64))


def test_bad_seeds_raise():
    with pytest.raises(EmError, match="does not match"):
        W.seeded_watershed(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 3), np.uint64))
    with pytest.raises(EmError, match="integer"):
        W.seeded_watershed(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.float32))
    with pytest.raises(EmError, match="negative"):
        W.seeded_watershed(np.zeros((1, 2, 2), np.float32), -np.ones((1, 2, 2), np.int64))


# ----------------------------------------------------------------------------- boundary, seeds

def test_boundary_from_affinities_matches_a_loop():
    rng = np.random.default_rng(5)
    affs = rng.random((3, 3, 4, 5), dtype=np.float32)
    for reduce in ("mean", "min"):
        out = W.boundary_from_affinities(affs, reduce)
        for z, y, x in np.ndindex(affs.shape[1:]):
            edges = []
            for c, (dz, dy, dx) in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1)]):
                if (z, y, x)[c] > 0:
                    edges.append(affs[c, z, y, x])
                if (z + dz, y + dy, x + dx)[c] < affs.shape[1 + c]:
                    edges.append(affs[c, z + dz, y + dy, x + dx])
            want = 1 - (np.mean(edges) if reduce == "mean" else np.min(edges))
            assert out[z, y, x] == pytest.approx(want, abs=1e-6)
    as_u8 = np.round(affs * 255).astype(np.uint8)
    np.testing.assert_allclose(W.boundary_from_affinities(as_u8), W.boundary_from_affinities(as_u8 / 255.0), atol=1e-6)


def _two_cells():
    """Two 2D discs in every section, separated by a membrane line (boundary 1 there)."""
    boundary = np.zeros((3, 21, 41), np.float32)
    boundary[:, :, 20] = 1.0
    boundary[:, 0, :] = boundary[:, -1, :] = 1.0
    boundary[:, :, 0] = boundary[:, :, -1] = 1.0
    return boundary


def test_distance_seeds_find_one_seed_per_cell_per_section():
    seeds = W.distance_seeds(_two_cells(), threshold=0.5, mode="2d", radius=6)
    assert seeds.dtype == np.uint64
    for z in range(3):
        assert len(np.unique(seeds[z][seeds[z] != 0])) == 2
    assert len(np.unique(seeds[seeds != 0])) == 6  # unique over the volume


def test_distance_seeds_3d_join_sections():
    seeds = W.distance_seeds(_two_cells(), threshold=0.5, mode="3d", radius=6, voxel_size_nm=(1, 1, 1))
    assert len(np.unique(seeds[seeds != 0])) == 2


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_distance_seeds_do_not_depend_on_the_thread_count(monkeypatch, mode):
    """The distance transform runs on every usable CPU; the seeds must not change with their number."""
    boundary = ndimage.gaussian_filter(np.random.default_rng(3).random((6, 60, 70)), 2).astype(np.float32)
    boundary = (boundary - boundary.min()) / (boundary.max() - boundary.min())
    runs = []
    for count in (1, 4):
        monkeypatch.setattr(W, "usable_cpus", lambda count=count: count)
        runs.append(W.distance_seeds(boundary, threshold=0.5, mode=mode, voxel_size_nm=(3, 1, 1), radius=3))
    assert runs[0].max() > 5
    assert np.array_equal(runs[0], runs[1])


def test_component_seeds_match_scipy():
    rng = np.random.default_rng(6)
    boundary = rng.random((4, 15, 15)).astype(np.float32)
    seeds = W.component_seeds(boundary, threshold=0.4, mode="3d")
    ref, count = ndimage.label(boundary < 0.4)
    assert seeds.max() == count
    pairs = set(zip(seeds.ravel().tolist(), ref.ravel().tolist()))
    assert len(pairs) == count + 1
    per_section = W.component_seeds(boundary, threshold=0.4, mode="2d", min_seed_size=3)
    for z in range(4):
        for label in np.unique(per_section[z][per_section[z] != 0]):
            assert (per_section == label).sum() >= 3 and (per_section[z] == label).sum() == (per_section == label).sum()


# ----------------------------------------------------------------------------- size filter

def test_size_filter_merges_small_fragments_into_neighbours():
    labels = np.array([[[1, 1, 1, 2, 3, 3, 3, 3]]], np.uint64)
    height = np.array([[[0, 0, 0.2, 0.1, 0.5, 0, 0, 0]]], np.float32)
    out = W.size_filter(labels, height, min_size=2)
    assert out.tolist() == [[[1, 1, 1, 1, 3, 3, 3, 3]]]
    assert W.size_filter(labels, height, min_size=2, merge=False).tolist() == [[[1, 1, 1, 0, 3, 3, 3, 3]]]
    np.testing.assert_array_equal(labels, [[[1, 1, 1, 2, 3, 3, 3, 3]]])


def test_size_filter_keeps_a_small_fragment_with_no_large_neighbour():
    labels = np.zeros((2, 1, 4), np.uint64)
    labels[0] = 5  # a large one in section 0
    labels[1, 0, 1] = 6  # alone in section 1 (2D mode cannot reach it)
    out = W.size_filter(labels, np.zeros(labels.shape, np.float32), min_size=3, use_z=False)
    assert out[1, 0, 1] == 6 and (out[0] == 5).all()


# ----------------------------------------------------------------------------- pipelines

def _cells(shape=(8, 48, 48), seed=0):
    """Label volume of Voronoi cells with 1-voxel membranes (0) between them."""
    rng = np.random.default_rng(seed)
    points = rng.random((12, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    d = ((grid[..., None, :] - points.astype(np.float32)) ** 2).sum(-1)
    labels = (np.argmin(d, -1) + 1).astype(np.uint64)
    edges = np.zeros(shape, bool)
    for axis in range(3):
        diff = np.diff(labels, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        edges[tuple(sl)] |= diff
    labels[edges] = 0
    return labels


@pytest.mark.parametrize("mode", ["2d", "3d"])
@pytest.mark.parametrize("seed_method", ["distance", "components"])
def test_fragments_never_cross_a_clean_membrane(mode, seed_method):
    labels = _cells()
    boundary = W.boundary_from_affinities(affinities_from_labels(labels), "min")
    frags = W.fragments(boundary, seed_method=seed_method, mode=mode, threshold=0.5)
    assert frags.dtype == np.uint64 and frags.min() >= 0
    inside = labels != 0
    # Fragments stay inside one cell, except that a cell profile too thin to hold a seed
    # (a sliver where a section grazes a cell) is flooded from a neighbour: < 2% of voxels.
    stray = 0
    for fragment in np.unique(frags[inside]):
        counts = np.bincount(labels[inside][frags[inside] == fragment].astype(np.int64))
        stray += counts.sum() - counts.max()
    assert stray < 0.02 * inside.sum()
    assert frags.max() >= 12
    assert set(np.unique(frags)) == set(range(0 if (frags == 0).any() else 1, int(frags.max()) + 1))
    again = W.fragments(boundary, seed_method=seed_method, mode=mode, threshold=0.5)
    np.testing.assert_array_equal(frags, again)


def test_fragments_reject_bad_arguments():
    with pytest.raises(EmError, match="mode"):
        W.fragments(np.zeros((1, 4, 4), np.float32), mode="4d")
    with pytest.raises(EmError, match="seed method"):
        W.fragments(np.zeros((1, 4, 4), np.float32), seed_method="magic")
    with pytest.raises(EmError, match="threshold"):
        W.fragments(np.zeros((1, 4, 4), np.float32), threshold=2.0)


def _touching_balls():
    z, y, x = np.ogrid[:16, :24, :40]
    a = (z - 8) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= 64
    b = (z - 8) ** 2 + (y - 12) ** 2 + (x - 27) ** 2 <= 64
    foreground = (a | b).astype(np.float32)
    contour = np.zeros_like(foreground)
    contour[:, :, 19:21] = foreground[:, :, 19:21]  # where the two balls meet
    for ball in (a, b):
        contour[ball & ~ndimage.binary_erosion(ball)] = 1.0
    return foreground, contour


def test_bc_instances_split_touching_objects():
    foreground, contour = _touching_balls()
    out = W.instance_segmentation(foreground, contour, min_size=50, min_seed_size=10)
    assert out.max() == 2
    assert out[8, 12, 12] != out[8, 12, 27] and out[8, 12, 12] != 0
    assert not out[foreground == 0].any()  # restricted to the foreground


def test_bcd_instances_use_the_distance_for_seeds_and_mask():
    foreground, contour = _touching_balls()
    distance = np.where(foreground > 0, 0.8, -0.5).astype(np.float32)
    distance[:, :, :20] = np.where(foreground[:, :, :20] > 0, 0.2, -0.5)  # left ball: no seed
    out = W.instance_segmentation(foreground, contour, distance, min_size=50, min_seed_size=10)
    assert out.max() == 1 and out[8, 12, 27] == 1 and out[8, 12, 12] == 1  # flooded from the right
    masked = W.instance_segmentation(foreground, contour, distance, mask_distance=0.3, min_size=50, min_seed_size=10)
    assert masked.max() == 1 and masked[8, 12, 27] == 1 and masked[8, 12, 12] == 0
    with pytest.raises(EmError, match=r"\[-1, 1\]"):
        W.instance_segmentation(foreground, contour, distance * 3)
    u8 = W.instance_segmentation((foreground * 255).astype(np.uint8), (contour * 255).astype(np.uint8),
                                 np.round((distance + 1) / 2 * 255).astype(np.uint8), min_size=50, min_seed_size=10)
    np.testing.assert_array_equal(u8, out)


def test_instances_below_min_size_are_removed():
    foreground, contour = _touching_balls()
    foreground[2:5, 2:5, 35:38] = 1.0  # a 27-voxel speck with its own seed
    out = W.instance_segmentation(foreground, contour, min_size=50, min_seed_size=1)
    assert out.max() == 2 and not out[2:5, 2:5, 35:38].any()
    kept = W.instance_segmentation(foreground, contour, min_size=10, min_seed_size=1)
    assert kept.max() == 3
