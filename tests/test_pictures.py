"""emtools.pictures: the drawing pieces against naive loops, split/merge errors on hand-made and
random cases, whole pictures of files (sizes, colours where they belong, bounds, determinism)."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from emtools import io, pictures
from emtools.errors import EmError
from emtools.evaluate import contingency_table
from emtools.meta import Metadata
from emtools.pictures import (
    BOTH_RGB,
    ERROR_ALPHA,
    GAP_PX,
    GT_OUTLINE_GREY,
    MERGE,
    MERGE_RGB,
    NEUTRAL_GREY,
    OUTLINE_RGB,
    SPLIT,
    SPLIT_RGB,
    LargestOverlaps,
)

VOXEL = (40.0, 4.0, 4.0)


def write(tmp_path, name, array, axes="zyx", offset=(0.0, 0.0, 0.0), voxel=VOXEL, attrs=None):
    spec = f"{tmp_path / name}.h5:/main"
    io.write_volume(spec, array, Metadata(axes=axes, offset_nm=offset, voxel_size_nm=voxel, attrs=attrs or {}),
                    compression="none")
    return spec


def naive_outlines(labels):
    out = np.zeros(labels.shape, bool)
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            right = x + 1 < labels.shape[1] and labels[y, x + 1] != labels[y, x]
            below = y + 1 < labels.shape[0] and labels[y + 1, x] != labels[y, x]
            out[y, x] = right or below
    return out


def blend(background, colour):
    mixed = (1 - ERROR_ALPHA) * np.asarray(background, float) + ERROR_ALPHA * np.asarray(colour, float)
    return np.floor(mixed + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- drawing pieces

def test_spread_sections():
    assert pictures.spread_sections(10) == [0, 3, 6, 9]
    assert pictures.spread_sections(1) == [0]
    assert pictures.spread_sections(3, 8) == [0, 1, 2]
    assert pictures.spread_sections(100, 2) == [0, 99]
    with pytest.raises(EmError):
        pictures.spread_sections(0)


def test_shrink_step_bounds_every_tile_and_the_picture():
    assert pictures.shrink_step((100, 80)) == 1
    assert pictures.shrink_step((257, 10)) == 2
    assert pictures.shrink_step((10000, 3000)) == 40  # ceil(10000 / 256)
    for rows, columns in ((1, 4), (30, 4), (3, 60)):
        step = pictures.shrink_step((1000, 1200), rows, columns)
        tile_y, tile_x = -(-1000 // step), -(-1200 // step)
        assert max(tile_y, tile_x) <= pictures.MAX_TILE_PX
        assert rows * tile_y + (rows - 1) * GAP_PX <= pictures.MAX_PICTURE_PX
        assert columns * tile_x + (columns - 1) * GAP_PX <= pictures.MAX_PICTURE_PX
        assert step == 1 or max(-(-1000 // (step - 1)), -(-1200 // (step - 1))) > pictures.MAX_TILE_PX or \
            rows * -(-1000 // (step - 1)) + (rows - 1) * GAP_PX > pictures.MAX_PICTURE_PX or \
            columns * -(-1200 // (step - 1)) + (columns - 1) * GAP_PX > pictures.MAX_PICTURE_PX  # the smallest step


@pytest.mark.parametrize("step", [1, 3, 4])
def test_shrink_mean_is_the_block_mean_and_labels_take_every_step_th_id(step):
    rng = np.random.default_rng(step)
    values = rng.integers(0, 256, (2, 10, 13)).astype(np.uint8)
    shrunk = pictures.shrink_mean(values, step)
    assert shrunk.shape == (2, -(-10 // step), -(-13 // step)) and shrunk.dtype == np.float32
    for c in range(2):
        for i in range(shrunk.shape[1]):
            for j in range(shrunk.shape[2]):
                block = values[c, i * step:(i + 1) * step, j * step:(j + 1) * step]
                assert shrunk[c, i, j] == pytest.approx(block.mean(), rel=1e-6)
    labels = rng.integers(0, 5, (10, 13))
    np.testing.assert_array_equal(pictures.shrink_labels(labels, step), labels[::step, ::step])
    assert pictures.shrink_labels(labels, step).shape == shrunk.shape[1:]


def test_outlines_lie_on_label_boundaries():
    labels = np.random.default_rng(1).integers(0, 3, (17, 23))
    mask = pictures.outline_mask(labels)
    np.testing.assert_array_equal(mask, naive_outlines(labels))
    # every boundary between two pixels has one of its pixels on an outline, and no other pixel is
    differs_x = labels[:, :-1] != labels[:, 1:]
    differs_y = labels[:-1] != labels[1:]
    assert (mask[:, :-1] | mask[:, 1:])[differs_x].all() and (mask[:-1] | mask[1:])[differs_y].all()
    assert not pictures.outline_mask(np.full((5, 5), 7)).any()
    drawn = pictures.draw_outlines(np.zeros((17, 23, 3), np.uint8), labels, OUTLINE_RGB)
    assert (drawn[mask] == OUTLINE_RGB).all() and (drawn[~mask] == 0).all()


def test_id_colours_are_fixed_bright_and_tell_neighbouring_ids_apart():
    ids = np.arange(1, 200, dtype=np.uint64)
    colours = pictures.id_colours(ids)
    assert colours.shape == (199, 3) and colours.dtype == np.uint8 and colours.min() >= 64
    np.testing.assert_array_equal(colours, pictures.id_colours(ids.astype(np.uint32)))
    np.testing.assert_array_equal(colours[5], pictures.id_colours(np.array([6]))[0])
    assert len({tuple(c) for c in colours}) == 199
    assert np.abs(np.diff(colours.astype(int), axis=0)).sum(axis=1).min() > 0


def test_unit_grey_rules():
    np.testing.assert_allclose(pictures.unit_grey(np.array([0, 51, 255], np.uint8)), [0, 0.2, 1], rtol=1e-6)
    np.testing.assert_allclose(pictures.unit_grey(np.array([0.25, 0.5], np.float32)), [0.25, 0.5])
    np.testing.assert_allclose(pictures.unit_grey(np.array([-1.0, 0.0, 1.0]), value_range=(-1, 1)), [0, 0.5, 1])
    stretched = pictures.unit_grey(np.linspace(0, 4000, 1001).astype(np.uint16))
    assert stretched[0] == 0 and stretched[-1] == 1 and stretched[500] == pytest.approx(0.5, abs=1e-6)
    # shrunk uint8 values (floats) keep the uint8 scale when their stored type is given
    np.testing.assert_allclose(pictures.unit_grey(np.array([127.5], np.float32), dtype=np.uint8), [0.5])
    assert (pictures.unit_grey(np.full(4, 7, np.uint16)) == 0).all()


def test_grid_lays_tiles_out_with_white_gaps():
    a, b = np.zeros((3, 5, 3), np.uint8), np.full((3, 5, 3), 9, np.uint8)
    out = pictures.grid([[a, b], [b, a]])
    assert out.shape == (2 * 3 + GAP_PX, 2 * 5 + GAP_PX, 3)
    assert (out[:3, :5] == 0).all() and (out[:3, 5 + GAP_PX:] == 9).all() and (out[3:3 + GAP_PX] == 255).all()
    with pytest.raises(EmError, match="grid tiles must all be"):
        pictures.grid([[a, np.zeros((4, 5, 3), np.uint8)]])


# ----------------------------------------------------------------------------- split and merge errors

def hand_made():
    """Two sections of ground truth 1 | 2 (row 0 unlabelled) with a small object 3 inside 2.

    The segmentation splits 1 (rows 6-7 a piece of its own, 5), takes 4 voxels of 1 into the
    segment of 2 (both errors) and merges 3 into 2 (merge only)."""
    gt = np.zeros((8, 12), np.uint64)
    gt[1:, :6], gt[1:, 6:] = 1, 2
    gt[4:6, 9:] = 3
    seg = gt.copy()
    seg[6:, :6] = 5
    seg[1:3, 4:6] = 2
    seg[4:6, 9:] = 2
    classes = np.zeros((8, 12), np.uint8)
    classes[6:, :6] = SPLIT
    classes[1:3, 4:6] = SPLIT | MERGE
    classes[4:6, 9:] = MERGE
    return np.stack([seg, seg]), np.stack([gt, gt]), classes


def test_split_merge_classes_on_a_hand_made_case():
    seg, gt, expected = hand_made()
    overlaps = LargestOverlaps.from_table(contingency_table(gt, seg))
    np.testing.assert_array_equal(overlaps.gt_ids, [1, 2, 3])
    np.testing.assert_array_equal(overlaps.main_seg, [1, 2, 2])
    np.testing.assert_array_equal(overlaps.main_gt[list(overlaps.seg_ids).index(2)], 2)
    np.testing.assert_array_equal(pictures.split_merge_classes(seg[0], gt[0], overlaps), expected)
    # ground truth 0 counted as an object: it is one segment (0) alone, still no error there
    counted = LargestOverlaps.from_table(contingency_table(gt, seg, skip="none"))
    np.testing.assert_array_equal(pictures.split_merge_classes(seg[0], gt[0], counted), expected)
    with pytest.raises(EmError, match="shapes differ"):
        pictures.split_merge_classes(seg[0], gt[0, :4], overlaps)


def naive_classes(seg, gt, count_zero):
    pairs = {}
    for g, s in zip(gt.ravel(), seg.ravel()):
        if g != 0 or count_zero:
            pairs[(g, s)] = pairs.get((g, s), 0) + 1
    main_seg = {g: min((-n, s) for (gg, s), n in pairs.items() if gg == g)[1] for g, _ in pairs}
    main_gt = {s: min((-n, g) for (g, ss), n in pairs.items() if ss == s)[1] for _, s in pairs}
    out = np.zeros(seg.shape, np.uint8)
    for index in np.ndindex(seg.shape):
        g, s = gt[index], seg[index]
        if g != 0 or count_zero:
            out[index] = SPLIT * (main_seg[g] != s) | MERGE * (main_gt[s] != g)
    return out


@pytest.mark.parametrize("count_zero", [False, True])
def test_split_merge_classes_match_a_naive_count_ties_to_the_smaller_id(count_zero):
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 4, (3, 9, 9)).astype(np.uint32)
    seg = rng.integers(0, 5, (3, 9, 9)).astype(np.uint64)
    overlaps = LargestOverlaps.from_table(contingency_table(gt, seg, skip="none" if count_zero else "gt-zero"))
    expected = naive_classes(seg, gt, count_zero)
    got = np.stack([pictures.split_merge_classes(seg[z], gt[z], overlaps) for z in range(3)])
    np.testing.assert_array_equal(got, expected)
    assert (got == SPLIT).any() and (got == MERGE).any() and (got == SPLIT | MERGE).any()


# ----------------------------------------------------------------------------- pictures of files

def expected_error_tile(seg, gt, classes):
    """What the error row must show, built without the library's drawing: neutral grey, the
    ground truth's outlines light, errors tinted, the segmentation's outlines yellow."""
    tile = np.full(seg.shape + (3,), NEUTRAL_GREY, np.uint8)
    tile[naive_outlines(gt)] = GT_OUTLINE_GREY
    for code, colour in ((SPLIT, SPLIT_RGB), (MERGE, MERGE_RGB), (SPLIT | MERGE, BOTH_RGB)):
        tile[classes == code] = blend(tile[classes == code], colour)
    tile[naive_outlines(seg)] = OUTLINE_RGB
    return tile


def test_eval_picture_tints_exactly_the_error_voxels(tmp_path):
    seg, gt, classes = hand_made()
    seg_spec, gt_spec = write(tmp_path, "seg", seg), write(tmp_path, "gt", gt)
    picture = pictures.eval_errors_picture([seg_spec], gt_spec)
    assert picture.shape == (2 * 8 + GAP_PX, 2 * 12 + GAP_PX, 3) and picture.dtype == np.uint8
    error_row = picture[8 + GAP_PX:, :12]
    np.testing.assert_array_equal(error_row, expected_error_tile(seg[0], gt[0], classes))
    # the colours appear nowhere else: every split-coloured pixel is a split voxel (or an outline)
    split_colour = blend([NEUTRAL_GREY] * 3, SPLIT_RGB)
    assert ((error_row == split_colour).all(-1) <= (classes == SPLIT)).all()
    # top row: the ground truth's objects in their colours, unlabelled 0 uncoloured
    top = picture[:8, :12]
    assert (top[0] != pictures.id_colours(np.array([1]))[0]).any()
    np.testing.assert_array_equal(top[gt[0] == 0][:, 0], np.where(naive_outlines(gt[0])[gt[0] == 0], GT_OUTLINE_GREY,
                                                                   NEUTRAL_GREY))
    assert len({tuple(p) for p in top[2:4, 1:3].reshape(-1, 3)}) == 1
    assert tuple(top[2, 1]) != tuple(top[2, 8])  # objects 1 and 2 differ


def test_eval_picture_over_an_image_with_several_segmentations_and_offsets(tmp_path):
    seg, gt, classes = hand_made()
    gt = np.concatenate([gt, gt])  # 4 sections
    seg = np.concatenate([seg, seg])
    image = np.random.default_rng(0).integers(0, 256, (4, 8, 12), dtype=np.uint8)
    gt_spec, image_spec = write(tmp_path, "gt", gt), write(tmp_path, "image", image)
    perfect = write(tmp_path, "perfect", gt)
    shifted = write(tmp_path, "shifted", seg[1:], offset=(40.0, 0.0, 0.0))  # covers sections 1..3 only
    picture = pictures.eval_errors_picture([perfect, shifted], gt_spec, image_spec)
    # 3 rows (ground truth, two segmentations) x 3 sections (the region every input covers)
    assert picture.shape == (3 * 8 + 2 * GAP_PX, 3 * 12 + 2 * GAP_PX, 3)
    perfect_row = picture[8 + GAP_PX: 16 + GAP_PX, :12]
    outlines = naive_outlines(gt[1])
    grey = np.repeat(image[1][..., None], 3, axis=-1)  # section 1: the first shown
    np.testing.assert_array_equal(perfect_row[~outlines], grey[~outlines])  # no error: the image itself
    assert (perfect_row[outlines] == OUTLINE_RGB).all()
    errors_row = picture[16 + 2 * GAP_PX:, :12]
    for code, colour in ((SPLIT, SPLIT_RGB), (MERGE, MERGE_RGB)):
        where = (classes == code) & ~naive_outlines(seg[1])
        np.testing.assert_array_equal(errors_row[where], blend(grey[where], colour))


def test_eval_picture_refuses_what_it_cannot_draw(tmp_path):
    seg, gt, _ = hand_made()
    seg_spec, gt_spec = write(tmp_path, "seg", seg), write(tmp_path, "gt", gt)
    coarse = write(tmp_path, "coarse", gt[:, :4, :4].astype(np.uint8), voxel=(40, 8, 8))
    with pytest.raises(EmError, match="voxel sizes differ"):
        pictures.eval_errors_picture([seg_spec], gt_spec, coarse)
    far = write(tmp_path, "far", seg, offset=(400.0, 0, 0))
    with pytest.raises(EmError, match="no overlap"):
        pictures.eval_errors_picture([far], gt_spec)
    floats = write(tmp_path, "floats", seg.astype(np.float32))
    with pytest.raises(EmError, match="labels must be integers"):
        pictures.eval_errors_picture([floats], gt_spec)
    with pytest.raises(EmError, match="gt_zero"):
        pictures.eval_errors_picture([seg_spec], gt_spec, gt_zero="maybe")


def test_labels_picture_colours_each_id_the_same_in_every_row_over_the_map(tmp_path):
    labels = np.zeros((3, 10, 16), np.uint64)
    labels[:, :, 8:] = 9
    labels[:, 5:, :8] = 4
    boundary = np.random.default_rng(2).random((3, 14, 16)).astype(np.float32)
    # the labels cover rows 2..11 of the map (a chunk's responsible region inside its halo)
    a = write(tmp_path, "a", labels, offset=(0.0, 8.0, 0.0))
    b = write(tmp_path, "b", labels, offset=(0.0, 8.0, 0.0))
    map_spec = write(tmp_path, "map", boundary)
    picture = pictures.labels_picture([a, b], map_spec)
    assert picture.shape == (2 * 10 + GAP_PX, 3 * 16 + 2 * GAP_PX, 3)
    np.testing.assert_array_equal(picture[:10], picture[10 + GAP_PX:])  # the same ids, the same colours
    grey = np.repeat((boundary[0, 2:12] * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    expected = pictures.tint(grey, labels[0] != 0, pictures.id_colours(labels[0][labels[0] != 0]), 0.4)
    np.testing.assert_array_equal(picture[:10, :16], expected)
    assert (picture[:10, :16][labels[0] == 0] == grey[labels[0] == 0]).all()
    # affinities: the mean of the first three channels; no background: neutral grey
    affs = np.stack([boundary[:, 2:12], 1 - boundary[:, 2:12], np.full((3, 10, 16), 0.5, np.float32)])
    affs_spec = write(tmp_path, "affs", affs, axes="czyx", offset=(0.0, 8.0, 0.0))
    mean = pictures.labels_picture([a], affs_spec)[:10, :16][labels[0] == 0]
    assert (mean == 128).all()  # (x + 1 - x + 0.5) / 3 = 0.5
    plain = pictures.labels_picture([a])[:10, :16]
    assert (plain[labels[0] == 0] == NEUTRAL_GREY).all()
    with pytest.raises(EmError, match="labels must be integers"):
        pictures.labels_picture([map_spec])


def test_maps_picture_shows_affinities_as_rgb_and_one_channel_grey(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (5, 12, 10), dtype=np.uint8)
    affs = rng.random((3, 5, 12, 10)).astype(np.float32)
    tanh = (rng.random((5, 12, 10)) * 2 - 1).astype(np.float32)
    image_spec = write(tmp_path, "image", image)
    affs_spec = write(tmp_path, "affs", affs, axes="czyx", attrs={"value_range": [0.0, 1.0]})
    tanh_spec = write(tmp_path, "tanh", tanh, attrs={"value_range": [-1.0, 1.0]})
    uint8_spec = write(tmp_path, "u8", (affs[:2] * 255).astype(np.uint8), axes="czyx")
    picture = pictures.maps_picture(image_spec, [affs_spec, tanh_spec, uint8_spec])
    sections = [0, 1, 3, 4]
    assert picture.shape == (4 * 12 + 3 * GAP_PX, 4 * 10 + 3 * GAP_PX, 3)
    column = 10 + GAP_PX
    for c, z in enumerate(sections):
        x = c * column
        np.testing.assert_array_equal(picture[:12, x:x + 10, 1], image[z])
        rgb = picture[12 + GAP_PX:24 + GAP_PX, x:x + 10]
        np.testing.assert_array_equal(rgb, (np.moveaxis(affs[:, z], 0, -1) * 255 + 0.5).astype(np.uint8))
        grey = picture[24 + 2 * GAP_PX:36 + 2 * GAP_PX, x:x + 10]
        np.testing.assert_array_equal(grey[..., 0], ((tanh[z] + 1) / 2 * 255 + 0.5).astype(np.uint8))
        two = picture[36 + 3 * GAP_PX:, x:x + 10]
        np.testing.assert_array_equal(two[..., :2], np.moveaxis((affs[:2, z] * 255).astype(np.uint8), 0, -1))
        assert (two[..., 2] == 0).all()  # no third channel: blue stays dark


def test_a_large_volume_gives_a_bounded_picture_read_in_bands(tmp_path, monkeypatch):
    image = np.random.default_rng(5).integers(0, 256, (2, 1030, 700), dtype=np.uint8)
    labels = (np.arange(1030)[:, None] // 100 * 10 + np.arange(700)[None, :] // 100).astype(np.uint32)
    image_spec = write(tmp_path, "image", image)
    labels_spec = write(tmp_path, "labels", np.stack([labels, labels]))
    monkeypatch.setattr(pictures.volumes, "BAND_VOXELS", 50_000)  # many bands per section
    picture = pictures.labels_picture([labels_spec], image_spec)
    step = 5  # ceil(1030 / 256)
    assert picture.shape == (206, 2 * 140 + GAP_PX, 3)
    with io.open_volume(image_spec) as src:
        shrunk = pictures.read_shrunk(src, src.box, 1, step)
    np.testing.assert_allclose(shrunk, pictures.shrink_mean(image[1], step), rtol=1e-6)
    big = pictures.eval_errors_picture([labels_spec] * 12, labels_spec, max_picture_px=600)
    assert max(big.shape[:2]) <= 600 and big.shape[0] > 500


def test_same_inputs_same_bytes_and_bad_picture_paths(tmp_path):
    seg, gt, _ = hand_made()
    seg_spec, gt_spec = write(tmp_path, "seg", seg), write(tmp_path, "gt", gt)
    digests = []
    for name in ("a.png", "b.png"):
        path = pictures.write_picture(str(tmp_path / name), lambda: pictures.eval_errors_picture([seg_spec], gt_spec))
        digests.append(hashlib.sha256(open(path, "rb").read()).hexdigest())
    assert digests[0] == digests[1]
    with pytest.raises(EmError, match="output folder does not exist"):
        pictures.check_picture_path(str(tmp_path / "missing" / "p.png"), "--plot")
    with pytest.raises(EmError, match="--plot must be a .png file"):
        pictures.check_picture_path(str(tmp_path / "p.jpg"), "--plot")
    with pytest.raises(EmError, match="same file as"):
        pictures.check_picture_path(str(tmp_path / "a.png"), "--plot", [f"{tmp_path / 'a.png'}"])
    # a picture that fails takes the run's other outputs with it, and leaves no temporary
    (tmp_path / "labels.h5").write_bytes(b"written by this run")

    def fail():
        raise EmError("cannot draw")

    with pytest.raises(EmError, match="cannot draw"):
        pictures.write_picture(str(tmp_path / "c.png"), fail, [f"{tmp_path / 'labels.h5'}:/seg"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "gt.h5", "seg.h5"]


def test_pictures_never_import_torch_or_matplotlib():
    code = ("import sys, emtools.pictures, emtools.augment.preview; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["False", "False"], done.stderr
