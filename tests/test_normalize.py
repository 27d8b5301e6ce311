"""Image normalisation that training stores in checkpoints and prediction applies."""

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.normalize import check_normalization, dtype_scale, fit_normalization, normalize_image


def test_dtype_scales():
    assert dtype_scale(np.uint8) == 1 / 255
    assert dtype_scale(np.uint16) == 1 / 65535
    assert dtype_scale(np.float32) == 1.0
    with pytest.raises(EmError, match="unsigned integers or floats"):
        dtype_scale(np.int16)


def test_fit_then_normalize_gives_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (8, 64, 64)).astype(np.uint8)
    norm = fit_normalization([image])
    assert norm["scale"] == 1 / 255
    out = normalize_image(image, norm)
    assert out.dtype == np.float32 and out is not image
    assert abs(float(out.mean())) < 1e-3 and abs(float(out.std()) - 1) < 1e-3
    manual = (image.astype(np.float64) / 255 - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-5)


def test_fit_subsamples_deterministically():
    image = np.random.default_rng(1).random((32, 128, 128)).astype(np.float32)
    a = fit_normalization([image], max_samples=10000, seed=3)
    assert a == fit_normalization([image], max_samples=10000, seed=3)
    assert abs(a["mean"] - 0.5) < 0.02


def test_constant_image_gets_unit_std_and_input_is_untouched():
    image = np.full((2, 4, 4), 7, np.uint8)
    norm = fit_normalization([image])
    assert norm["std"] == 1.0
    normalize_image(image, norm)
    assert (image == 7).all()


@pytest.mark.parametrize("norm,fragment", [
    ({"scale": 1, "mean": 0}, "lacks 'std'"),
    ({"scale": 1, "mean": 0, "std": 0}, "positive"),
    ({"scale": 1, "mean": float("nan"), "std": 1}, "finite"),
    ({"scale": "a", "mean": 0, "std": 1}, "numbers"),
    ([1, 2, 3], "mapping"),
])
def test_bad_normalisations(norm, fragment):
    with pytest.raises(EmError, match=fragment):
        check_normalization(norm)


def test_nan_images_are_refused():
    with pytest.raises(EmError, match="NaN"):
        fit_normalization([np.array([[[np.nan]]], np.float32)])
