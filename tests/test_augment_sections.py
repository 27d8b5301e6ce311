"""Section artefacts: which sections change, how, and that the labels stay put."""

import numpy as np
import pytest

from emtools import augment


def stack(shape=(8, 30, 34), seed=0):
    rng = np.random.default_rng(seed)
    image = (0.2 + 0.6 * rng.random(shape)).astype(np.float32)
    return image, {"labels": rng.integers(1, 9, shape).astype(np.uint32), "mask": np.ones(shape, np.uint8)}


def changed_sections(a, b):
    return [z for z in range(a.shape[0]) if not np.array_equal(a[z], b[z])]


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_missing_section_blanks_whole_sections_and_keeps_the_labels(fill):
    image, labels = stack()
    out, out_labels = augment.apply("missing_section", image, labels, np.random.default_rng(1), sections=(2, 3),
                                    fill=fill)
    changed = changed_sections(out, image)
    assert 2 <= len(changed) <= 3
    value = 0.0 if fill == "zero" else image.mean()
    for z in changed:
        np.testing.assert_allclose(out[z], value, atol=1e-6)
    for key in labels:
        np.testing.assert_array_equal(out_labels[key], labels[key])


def test_missing_section_count_is_drawn_in_range_and_capped_by_the_depth():
    image, labels = stack((3, 8, 8))
    counts = {len(changed_sections(augment.apply("missing_section", image, labels, np.random.default_rng(s),
                                                 sections=(0, 5))[0], image)) for s in range(40)}
    assert counts == {0, 1, 2, 3}


@pytest.mark.parametrize("shape", ["ellipse", "band", "random"])
def test_missing_parts_fills_holes_in_chosen_sections_only(shape):
    image, labels = stack()
    out, out_labels = augment.apply("missing_parts", image, labels, np.random.default_rng(2), sections=(2, 2),
                                    holes=(1, 2), size=(0.15, 0.25), shape=shape)
    changed = changed_sections(out, image)
    assert len(changed) == 2
    for z in changed:
        hole = out[z] != image[z]
        assert (out[z][hole] == 0).all()
        assert 0.02 < hole.mean() < 0.95  # a part, not the whole section
    np.testing.assert_array_equal(out_labels["labels"], labels["labels"])


def test_missing_parts_band_is_a_straight_band():
    image = np.full((1, 41, 41), 0.5, np.float32)
    out, _ = augment.apply("missing_parts", image, {}, np.random.default_rng(5), sections=1, holes=1,
                           size=(0.2, 0.2), shape="band")
    hole = out[0] == 0
    ys, xs = np.nonzero(hole)
    # points of the band lie within half its width of a fitted line: check with a principal axis
    pts = np.stack([ys, xs], 1).astype(float)
    pts -= pts.mean(0)
    _, sv, vt = np.linalg.svd(pts, full_matrices=False)
    across = np.abs(pts @ vt[1])
    assert across.max() <= 0.2 * 41 / 2 + 1.0


def test_misalign_translation_shifts_image_and_labels_by_the_same_vector():
    image, labels = stack((6, 40, 40))
    out, out_labels = augment.apply("misalign", image, labels, np.random.default_rng(7), mode="translation",
                                    shift_vx=(5, 5))
    first = changed_sections(out_labels["labels"], labels["labels"])[0]
    moved, original = out_labels["labels"][first], labels["labels"][first]
    # find the integer shift that best explains the labels (the true shift has length 5)
    best = max(((dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)),
               key=lambda d: np.mean(np.roll(original, d, (0, 1))[8:-8, 8:-8] == moved[8:-8, 8:-8]))
    assert 4 <= np.hypot(*best) <= 6
    assert (out_labels["mask"][first:] == 0).any() and (out_labels["mask"][:first] == 1).all()
    # the mask is 0 exactly where the labels were brought in from outside
    np.testing.assert_array_equal(out_labels["mask"][first:] == 0, out_labels["labels"][first:] == 0)
