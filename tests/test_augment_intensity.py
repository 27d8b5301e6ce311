"""Intensity augmentations: hand-checked values, what is left untouched, references (scipy)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from emtools import augment
from emtools.augment.intensity import line_kernel


def textured(shape=(6, 32, 36), seed=0):
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5)).astype(np.float32)
    image = 0.2 + 0.6 * (image - image.min()) / (image.max() - image.min())
    ids = rng.integers(0, 5, shape).astype(np.uint64)
    return image.astype(np.float32), {"labels": ids}


def changed_sections(a, b):
    return [z for z in range(a.shape[0]) if not np.array_equal(a[z], b[z])]


def test_grayscale_with_fixed_values_is_the_formula():
    image, labels = textured()
    out, out_labels = augment.apply("grayscale", image, labels, np.random.default_rng(0), mode="3d",
                                    contrast=1.5, brightness=0.05, gamma=2.0)
    mean = image.mean(dtype=np.float64)
    expected = np.clip((image - mean) * 1.5 + mean + 0.05, 0, 1) ** 2.0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(out_labels["labels"], labels["labels"])
    inverted, _ = augment.apply("grayscale", image, labels, np.random.default_rng(0), contrast=1, brightness=0,
                                gamma=1, invert_p=1.0)
    np.testing.assert_allclose(inverted, 1 - image, atol=1e-6)


def test_grayscale_2d_draws_per_section_and_3d_once():
    image, labels = textured()
    out2, _ = augment.apply("grayscale", image, labels, np.random.default_rng(1), contrast=1, gamma=1,
                            brightness=(-0.1, 0.1), mode="2d")
    offsets = (out2 - image).mean(axis=(1, 2))
    assert np.ptp(offsets) > 0.01  # each section its own brightness
    out3, _ = augment.apply("grayscale", image, labels, np.random.default_rng(1), contrast=1, gamma=1,
                            brightness=(-0.1, 0.1), mode="3d")
    np.testing.assert_allclose(out3 - image, (out3 - image).flat[0], atol=1e-6)


def test_gamma_is_drawn_log_uniformly_between_the_bounds():
    image = np.full((400, 1, 1), 0.5, np.float32)
    out, _ = augment.apply("grayscale", image, {}, np.random.default_rng(0), contrast=1, brightness=0,
                           gamma=(0.5, 2.0))
    gammas = np.log(out.ravel()) / np.log(0.5)
    assert gammas.min() >= 0.5 - 1e-6 and gammas.max() <= 2.0 + 1e-6
    assert abs(np.mean(gammas < 1.0) - 0.5) < 0.1  # log-uniform: half below 1


@pytest.mark.parametrize("name,params", [
    ("motion_blur", {"sections": (2, 2), "length_vx": (7, 7)}),
    ("defocus", {"sections": (2, 2), "sigma_vx": (2, 2)}),
])
def test_section_blurs_touch_only_the_chosen_sections(name, params):
    image, labels = textured()
    out, out_labels = augment.apply(name, image, labels, np.random.default_rng(3), **params)
    changed = changed_sections(out, image)
    assert len(changed) == 2
    for z in changed:
        assert out[z].std() < image[z].std()  # blurred
    np.testing.assert_array_equal(out_labels["labels"], labels["labels"])


def test_defocus_is_scipy_gaussian_filter_of_the_section():
    image, labels = textured()
    out, _ = augment.apply("defocus", image, labels, np.random.default_rng(3), sections=1, sigma_vx=1.7)
    (z,) = changed_sections(out, image)
    np.testing.assert_allclose(out[z], ndimage.gaussian_filter(image[z], 1.7, mode="reflect"), atol=1e-6)


@pytest.mark.parametrize("length,angle", [(5.0, 0.0), (7.0, math.pi / 2), (9.0, math.pi / 4), (4.0, 1.0)])
def test_line_kernel_is_a_normalised_streak_along_the_angle(length, angle):
    kernel = line_kernel(length, angle)
    assert kernel.shape[0] % 2 == 1 and kernel.shape[0] == kernel.shape[1]
    assert abs(kernel.sum() - 1) < 1e-6 and kernel.min() >= 0
    c = kernel.shape[0] // 2
    ys, xs = np.nonzero(kernel > 1e-6)
    # the mass lies along the line through the centre at that angle, and spans its length
    across = np.abs(-(ys - c) * math.cos(angle) + (xs - c) * math.sin(angle))
    along = (ys - c) * math.sin(angle) + (xs - c) * math.cos(angle)
    assert across.max() < 1.5 and np.ptp(along) >= length - 2.5
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-6)  # symmetric streak


def test_a_horizontal_streak_blurs_along_x_but_not_y():
    stripes_x = np.zeros((1, 20, 20), np.float32)
    stripes_x[:, :, ::4] = 1.0  # vertical lines: blurred by a horizontal streak
    kernel = line_kernel(5.0, 0.0)
    horizontal = ndimage.convolve(stripes_x[0], kernel, mode="reflect")
    np.testing.assert_allclose(horizontal.std(axis=1), horizontal.std(axis=1)[0], atol=1e-6)
    assert horizontal.std() < 0.3 * stripes_x.std()
    stripes_y = np.ascontiguousarray(stripes_x[0].T)  # horizontal lines: untouched by it
    np.testing.assert_allclose(ndimage.convolve(stripes_y, kernel, mode="reflect"), stripes_y, atol=1e-6)


def _box_of_change(out, image):
    where = np.nonzero(out != image)
    return tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)


def test_cut_blur_changes_only_a_box_and_keeps_its_mean():
    image, labels = textured((8, 40, 40))
    out, out_labels = augment.apply("cut_blur", image, labels, np.random.default_rng(2), size=(0.5, 0.5), ratio=4)
    box = _box_of_change(out, image)
    assert all((s.stop - s.start) <= n // 2 for s, n in zip(box, image.shape))
    outside = np.ones(image.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(out[outside], image[outside])
    assert abs(out[box].mean() - image[box].mean()) < 0.02 and out[box].std() < image[box].std()
    np.testing.assert_array_equal(out_labels["labels"], labels["labels"])
    # 2d mode: every section of the box is blurred from its own section only
    constant = np.broadcast_to(np.linspace(0.2, 0.8, 8, dtype=np.float32)[:, None, None], (8, 40, 40)).copy()
    flat, _ = augment.apply("cut_blur", constant, {}, np.random.default_rng(2), size=(0.5, 0.5), ratio=4)
    np.testing.assert_allclose(flat, constant, atol=1e-6)


def test_cut_noise_adds_noise_of_the_given_size_in_a_box():
    image = np.full((8, 40, 40), 0.5, np.float32)
    out, _ = augment.apply("cut_noise", image, {}, np.random.default_rng(4), size=(0.5, 0.5), scale=0.1)
    box = _box_of_change(out, image)
    assert abs(float((out[box] - 0.5).std()) - 0.1) < 0.01
    assert out.min() >= 0 and out.max() <= 1
    outside = np.ones(image.shape, bool)
    outside[box] = False
    assert (out[outside] == 0.5).all()
