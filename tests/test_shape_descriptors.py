"""Local shape descriptors: the separable computation against direct sums, shapes, modes, limits."""

import math

import numpy as np
import pytest

from emtools import targets
from emtools.errors import EmError
from emtools.shape_descriptors import TRUNCATE, channel_names, local_shape_descriptors, lsd_channels


def _reflect(i: int, n: int) -> int:
    """scipy's "reflect" border (d c b a | a b c d | d c b a) for one index."""
    period = 2 * n
    i %= period
    return i if i < n else period - 1 - i


def direct(labels, sigma_nm, voxel_nm, axes):
    """The module docstring's sums, voxel by voxel over the whole window (no separability)."""
    reach = [int(math.ceil(TRUNCATE * sigma_nm / voxel_nm[a])) if a in axes else 0 for a in range(3)]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    d_nm = offsets * np.asarray(voxel_nm, float)
    weight = np.exp(-0.5 * (d_nm[:, list(axes)] ** 2).sum(axis=1) / sigma_nm ** 2)
    n = len(axes)
    out = np.zeros((lsd_channels("3d" if n == 3 else "2d"),) + labels.shape)
    for v in np.ndindex(labels.shape):
        if labels[v] == 0:
            continue
        same = np.array([labels[tuple(_reflect(v[a] + o[a], labels.shape[a]) for a in range(3))] == labels[v]
                         for o in offsets])
        w = weight * same
        m0 = w.sum()
        d = d_nm[:, list(axes)]
        mean = (w[:, None] * d).sum(axis=0) / m0
        second = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(axis=0) / m0 - np.outer(mean, mean)
        values = [0.5 + m / (2 * sigma_nm) for m in mean] + [second[i, i] / sigma_nm ** 2 for i in range(n)]
        values += [0.5 + second[i, j] / (2 * sigma_nm ** 2) for i in range(n) for j in range(i + 1, n)]
        values.append(m0 / weight.sum())
        out[(slice(None),) + v] = np.clip(values, 0, 1)
    return out


def blobs(shape=(6, 9, 11), seed=3):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    z, y, x = np.indices(shape)
    for ident in (5, 9, 200):
        c = rng.uniform(0, 1, 3) * shape
        radius = rng.uniform(2.5, 5.0)
        labels[((z - c[0]) * 2) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < radius ** 2] = ident
    return labels


@pytest.mark.parametrize("mode,axes", [("3d", (0, 1, 2)), ("2d", (1, 2))])
def test_separable_sums_equal_the_direct_sums(mode, axes):
    labels, voxel = blobs(), (20.0, 10.0, 10.0)
    fast = local_shape_descriptors(labels, 25.0, voxel, mode=mode, downsample=1)
    if mode == "2d":  # per section: z never looks past its own section
        slow = np.concatenate([direct(labels[z:z + 1], 25.0, voxel, axes) for z in range(labels.shape[0])], axis=1)
    else:
        slow = direct(labels, 25.0, voxel, axes)
    assert fast.shape == (len(channel_names(mode)),) + labels.shape
    np.testing.assert_allclose(fast, slow, atol=2e-5)


def test_a_half_space_reads_as_the_theory_says():
    labels = np.zeros((30, 40, 30), np.uint16)
    labels[:, :20] = 1
    labels[:, 20:] = 2
    out = local_shape_descriptors(labels, 30.0, (5.0, 5.0, 5.0), downsample=1)
    named = dict(zip(channel_names(), out[:, 15, :, 15]))
    assert named["offset_z"][5] == pytest.approx(0.5) and named["cov_zy"][5] == pytest.approx(0.5)
    # deep inside: the window is full (size 1, variance of a 3-sigma-truncated Gaussian ~0.97)
    assert named["size"][2] == pytest.approx(1.0, abs=2e-3) and 0.95 < named["var_xx"][2] < 1.0
    # the last voxel before the border: half the window, its mass lies back along y
    assert named["size"][19] == pytest.approx(0.5 + 0.5 * 5 / (30 * math.sqrt(2 * math.pi)), abs=0.01)
    assert named["offset_y"][19] < 0.2 and named["offset_y"][20] > 0.8  # each side points into itself
    assert named["var_yy"][19] < named["var_yy"][2]


def test_background_is_zero_and_objects_are_not():
    labels = blobs()
    out = local_shape_descriptors(labels, 25.0, (20, 10, 10))
    assert np.all(out[:, labels == 0] == 0)
    assert np.all(out[-1][labels != 0] > 0) and out.min() >= 0 and out.max() <= 1
    assert out.dtype == np.float32


def test_the_coarse_grid_stays_close_to_the_exact_descriptors():
    labels = np.zeros((24, 64, 64), np.uint32)
    z, y, x = np.indices(labels.shape)
    labels[(y - 30) ** 2 + (x - 34) ** 2 < 18 ** 2] = 1
    labels[(y - 5) ** 2 + (x - 60) ** 2 < 20 ** 2] = 2
    labels[z > 16] = 3
    exact = local_shape_descriptors(labels, 60.0, (10, 10, 10), downsample=1)
    coarse = local_shape_descriptors(labels, 60.0, (10, 10, 10), downsample=2)
    assert np.abs(coarse - exact).mean() < 0.01 and np.abs(coarse - exact).max() < 0.15
    # an anisotropic z (40 nm against a 60 nm window) is never coarsened: still exact along z
    flat = local_shape_descriptors(labels[:, :, :1].repeat(4, axis=2), 60.0, (40, 10, 10), downsample=4)
    assert np.allclose(flat[0, :, 30, 0], local_shape_descriptors(labels[:, :, :1].repeat(4, axis=2), 60.0,
                                                                   (40, 10, 10), downsample=1)[0, :, 30, 0])


def test_the_lsd_target_kind():
    labels = blobs()
    labels[0, 0, :3] = 7
    target, valid = targets.build_target("lsd", labels, voxel_size_nm=(20, 10, 10), sigma_nm=25.0,
                                         ignore_label=7)
    assert target.shape == (10,) + labels.shape and valid.shape == (1,) + labels.shape
    assert valid[0, 0, 0, :3].sum() == 0 and valid.sum() == labels.size - 3
    per_section, _ = targets.build_target("lsd", labels, voxel_size_nm=(20, 10, 10), mode="2d")
    assert per_section.shape == (6,) + labels.shape and lsd_channels("2d") == 6
    assert channel_names("2d") == ["offset_y", "offset_x", "var_yy", "var_xx", "cov_yx", "size"]


@pytest.mark.parametrize("params,fragment", [
    ({"sigma_nm": 0}, "sigma_nm must be positive"),
    ({"downsample": 0}, "downsample must be a whole number >= 1"),
    ({"mode": "4d"}, "mode must be 2d or 3d"),
    ({"radius": 3}, "target lsd has no parameter 'radius'"),
])
def test_bad_lsd_parameters_are_one_line_errors(params, fragment):
    with pytest.raises(EmError, match=fragment):
        targets.build_target("lsd", blobs(), **params)


def test_the_library_function_refuses_what_it_cannot_describe():
    for kwargs in ({"mode": "4d"}, {"sigma_nm": -1.0}, {"downsample": 0}):
        with pytest.raises(EmError, match="local shape descriptors need"):
            local_shape_descriptors(blobs(), **{"sigma_nm": 25.0, **kwargs})
    with pytest.raises(EmError, match="got 2D"):
        local_shape_descriptors(blobs()[0], 25.0)
