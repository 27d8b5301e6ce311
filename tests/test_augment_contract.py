"""What every augmentation promises: shapes and dtypes kept, inputs untouched, outputs owned,
determinism from the rng, p=0 is a no-op, options checked; and apply/augment/check_steps."""

import numpy as np
import pytest

from emtools import augment
from emtools.errors import EmError

# Options that make each augmentation certainly do something visible on the test volume.
STRONG = {
    "flip": {"axes": "zyx"},
    "rotate": {"angle_deg": (20, 70)},
    "rescale": {"scale": (1.3, 1.6)},
    "elastic": {"alpha": 4.0, "sigma": 4.0},
    "missing_section": {"sections": (1, 2)},
    "missing_parts": {"sections": (1, 2), "holes": (2, 3), "size": (0.1, 0.2)},
    "misalign": {"shift_vx": (3, 5)},
    "grayscale": {"contrast": (0.5, 0.7)},
    "motion_blur": {"length_vx": (5, 7)},
    "defocus": {"sigma_vx": (1.5, 2.5)},
    "cut_blur": {"size": (0.4, 0.6), "ratio": (3, 4)},
    "cut_noise": {"size": (0.4, 0.6)},
    "copy_paste": {"count": (2, 2), "min_size_vx": 5},
    "mixup": {"weight": (0.2, 0.3)},
}
NAMES = list(augment.AUGMENTATIONS)


def volume(shape=(6, 40, 44), seed=0):
    """A textured image in [0, 1] and sparse blob instances (uint64) with a valid mask."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.random(shape), (0, 2, 2)).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    ids = np.zeros(shape, np.uint64)
    for k in range(1, 7):
        z, y, x = (int(rng.integers(0, s)) for s in shape)
        ids[max(0, z - 1) : z + 2, max(0, y - 4) : y + 4, max(0, x - 4) : x + 4] = k
    return image, {"labels": ids, "mask": np.ones(shape, np.uint8)}


def test_all_augmentations_are_registered():
    assert set(NAMES) == set(STRONG) == {
        "flip", "rotate", "rescale", "elastic", "grayscale", "missing_section", "missing_parts",
        "misalign", "motion_blur", "defocus", "cut_blur", "cut_noise", "copy_paste", "mixup",
    }
    for name in NAMES:
        assert augment.summary(name) and augment.options_of(name) is not None


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_kept_and_inputs_untouched(name):
    image, labels = volume()
    before = image.copy(), {k: v.copy() for k, v in labels.items()}
    out_image, out_labels = augment.apply(name, image, labels, np.random.default_rng(1), **STRONG[name])
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert set(out_labels) == set(labels)
    for key in labels:
        assert out_labels[key].shape == labels[key].shape and out_labels[key].dtype == labels[key].dtype
    np.testing.assert_array_equal(image, before[0])
    for key in labels:
        np.testing.assert_array_equal(labels[key], before[1][key])
    # outputs never share memory with the inputs: a caller may modify them in place
    for out in [out_image, *out_labels.values()]:
        assert not any(np.may_share_memory(out, x) for x in [image, *labels.values()])
    assert np.isfinite(out_image).all() and out_image.min() >= 0 and out_image.max() <= 1
    changed = not np.array_equal(out_image, image) or any(
        not np.array_equal(out_labels[k], labels[k]) for k in labels)
    assert changed, f"{name} with {STRONG[name]} changed nothing"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result_other_seed_other_result(name):
    image, labels = volume()
    runs = [augment.apply(name, image, labels, np.random.default_rng(seed), **STRONG[name]) for seed in (5, 5, 6, 7)]
    for key in labels:
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert any(not np.array_equal(runs[0][0], other[0]) for other in runs[2:])


@pytest.mark.parametrize("name", NAMES)
def test_probability_zero_leaves_everything_as_it_was(name):
    image, labels = volume()
    out_image, out_labels = augment.apply(name, image, labels, np.random.default_rng(0), p=0.0, **STRONG[name])
    np.testing.assert_array_equal(out_image, image)
    assert out_image is not image
    for key in labels:
        np.testing.assert_array_equal(out_labels[key], labels[key])
        assert out_labels[key] is not labels[key]


@pytest.mark.parametrize("name", NAMES)
def test_works_without_labels(name):
    image, _ = volume()
    if name == "copy_paste":
        with pytest.raises(EmError, match="copy_paste.key 'labels' is not among the labels"):
            augment.apply(name, image, {}, np.random.default_rng(0))
        return
    out_image, out_labels = augment.apply(name, image, {}, np.random.default_rng(0), **STRONG[name])
    assert out_image.shape == image.shape and out_labels == {}


def test_probability_is_honoured_over_many_draws():
    image, labels = volume((2, 16, 16))
    rng = np.random.default_rng(0)
    applied = sum(not np.array_equal(augment.apply("grayscale", image, labels, rng, p=0.3, contrast=(2, 2))[0], image)
                  for _ in range(400))
    assert 90 < applied < 150  # binomial(400, 0.3): mean 120, sd 9


def test_augment_runs_the_steps_in_order_from_one_generator():
    image, labels = volume()
    steps = [("flip", {}), ("rotate", {"angle_deg": (-30, 30)}), ("elastic", {"p": 0.5}), ("grayscale", {}),
             ("missing_section", {}), ("misalign", {})]
    first = augment.augment(image, labels, steps, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    by_hand = image, labels
    for name, params in steps:
        by_hand = augment.apply(name, *by_hand, rng, **params)
    np.testing.assert_array_equal(first[0], by_hand[0])
    np.testing.assert_array_equal(first[1]["labels"], by_hand[1]["labels"])
    empty = augment.augment(image, labels, [], np.random.default_rng(0))
    np.testing.assert_array_equal(empty[0], image)
    assert empty[0] is not image and empty[1]["labels"] is not labels["labels"]


def test_check_steps_resolves_every_option():
    resolved = augment.check_steps([("rotate", {"angle_deg": 90}), "flip", ("elastic", {"p": 0.5, "mode": "3d"})])
    assert resolved[0] == ("rotate", {"p": 1.0, "angle_deg": (90.0, 90.0), "step_deg": 0.0})
    assert resolved[1] == ("flip", {"p": 1.0, "axes": "zyx", "transpose": True})
    assert resolved[2][1]["p"] == 0.5 and resolved[2][1]["mode"] == "3d" and resolved[2][1]["alpha"] == 6.0


@pytest.mark.parametrize("step,message", [
    (("rotat", {}), "unknown augmentation 'rotat' (did you mean rotate?)"),
    (("rotate", {"angle": 3}), "rotate has no option 'angle' (did you mean angle_deg?); its options: angle_deg, step_deg (and p)"),
    (("rotate", {"angle_deg": (30, 10)}), "rotate.angle_deg: lo 30 is above hi 10"),
    (("rotate", {"angle_deg": "x"}), "rotate.angle_deg must be a pair of numbers"),
    (("rotate", {"p": 1.5}), "rotate.p must be a probability in [0, 1]"),
    (("elastic", {"mode": "4d"}), "elastic.mode must be one of 2d, 3d, got '4d'"),
    (("elastic", {"sigma": 0.1}), "elastic.sigma must be >= 0.5, got 0.1"),
    (("missing_section", {"sections": (1.5, 2)}), "missing_section.sections must be a whole number"),
    (("flip", {"axes": "zq"}), "flip.axes must be letters of z, y, x"),
    (("flip", {"transpose": "yes"}), "flip.transpose must be true or false"),
    (("grayscale", {"invert_p": float("nan")}), "grayscale.invert_p must be finite"),
])
def test_bad_steps_fail_with_one_line_naming_what_is_valid(step, message):
    image, labels = volume((2, 8, 8))
    with pytest.raises(EmError) as info:
        augment.augment(image, labels, [step], np.random.default_rng(0))
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EmError):
        augment.check_steps([step])


def test_a_skipped_step_still_checks_its_options():
    image, labels = volume((2, 8, 8))
    with pytest.raises(EmError, match="no option 'bogus'"):
        augment.apply("rotate", image, labels, np.random.default_rng(0), p=0.0, bogus=1)


@pytest.mark.parametrize("image,labels,message", [
    (np.zeros((8, 8), np.float32), {}, "the image must be 3D"),
    (np.zeros((2, 8, 8), np.uint8), {}, "the image must be float in [0, 1]"),
    (np.zeros((2, 8, 8), np.float32), {"labels": np.zeros((2, 8, 9), np.uint32)}, "has shape (2, 8, 9)"),
    (np.zeros((2, 8, 8), np.float32), {"labels": np.zeros((2, 8, 8), np.float32)}, "must be integer (label-like)"),
])
def test_bad_arrays_are_refused(image, labels, message):
    with pytest.raises(EmError) as info:
        augment.apply("flip", image, labels, np.random.default_rng(0))
    assert message in str(info.value)


def test_rng_must_be_a_generator():
    image, labels = volume((2, 8, 8))
    with pytest.raises(EmError, match="numpy.random.Generator"):
        augment.apply("flip", image, labels, 0)
    with pytest.raises(EmError, match="numpy.random.Generator"):
        augment.augment(image, labels, [("flip", {"p": 0.5})], np.random.RandomState(0))


def test_float64_image_comes_back_float32():
    image, labels = volume((2, 8, 8))
    out, _ = augment.apply("rotate", image.astype(np.float64), labels, np.random.default_rng(0))
    assert out.dtype == np.float32
