"""Tests for emtools.synth: the synthetic EM volume generator.

Volumes here use small cells (150-300 nm) so that a ~100-pixel field holds dozens of them and
the whole file runs in a few seconds.
"""

import math

import cc3d
import edt
import numpy as np
import pytest
from scipy import ndimage

from emtools.errors import EmError
from emtools.synth import SyntheticVolume, make_synthetic_volume

SMALL = {"shape_zyx": (12, 96, 96), "voxel_size_nm": (40.0, 4.0, 4.0),
         "mean_cell_diameter_nm": 150.0}


@pytest.fixture(scope="module")
def volume():
    return make_synthetic_volume(seed=3, **SMALL)


def offsets_26_half():
    return [(dz, dy, dx) for dz in (0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if (dz, dy, dx) > (0, 0, 0)]


def shifted_pairs(array, offset):
    """(a, b) with b[i] == array[i + offset], written out independently of the module."""
    n = array.shape
    a = array[tuple(slice(max(0, -d), n[k] - max(0, d)) for k, d in enumerate(offset))]
    b = array[tuple(slice(max(0, d), n[k] - max(0, -d)) for k, d in enumerate(offset))]
    return a, b


def assert_invariants(vol, shape):
    """Every relation the SyntheticVolume docstring promises, checked directly."""
    assert isinstance(vol, SyntheticVolume)
    for name, dtype in [("image", np.uint8), ("neurons", np.uint64), ("membranes", np.bool_),
                        ("mitochondria", np.uint64)]:
        array = getattr(vol, name)
        assert array.shape == shape, name
        assert array.dtype == dtype, name
    np.testing.assert_array_equal(vol.membranes, vol.neurons == 0)
    # Dense ids 1..N.
    ids = np.unique(vol.neurons)
    n_cells = int(vol.neurons.max())
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n_cells + 1))
    mito_ids = np.unique(vol.mitochondria)
    np.testing.assert_array_equal(mito_ids[mito_ids > 0],
                                  np.arange(1, int(vol.mitochondria.max()) + 1))
    # Each neuron is one 6-connected component: cc3d splits labels by value and connectivity,
    # so it finds exactly N components only if no id is in pieces.
    _, n_components = cc3d.connected_components(vol.neurons, connectivity=6, return_N=True)
    assert n_components == n_cells
    # Different neurons never touch, even across a corner (naive check over the 26 offsets)...
    for offset in offsets_26_half():
        a, b = shifted_pairs(vol.neurons, offset)
        assert not np.any((a != b) & (a != 0) & (b != 0)), offset
    # ...hence the foreground's 26-connected components are exactly the neurons.
    _, n_foreground = cc3d.connected_components(vol.neurons != 0, connectivity=26,
                                                return_N=True)
    assert n_foreground == n_cells
    # Mitochondria: inside neurons, each inside a single neuron, each 6-connected.
    mito = vol.mitochondria
    assert not np.any(vol.membranes & (mito != 0))
    pairs = np.unique(np.stack([mito[mito != 0], vol.neurons[mito != 0]]), axis=1)
    assert pairs.shape[1] == int(mito.max())  # one neuron per mitochondrion
    _, n_mito_components = cc3d.connected_components(mito, connectivity=6, return_N=True)
    assert n_mito_components == int(mito.max())


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_arrays(volume):
    again = make_synthetic_volume(seed=3, **SMALL)
    for name in ("image", "neurons", "membranes", "mitochondria"):
        np.testing.assert_array_equal(getattr(volume, name), getattr(again, name), name)
    assert again.voxel_size_nm == volume.voxel_size_nm == (40.0, 4.0, 4.0)


def test_different_seed_gives_different_arrays(volume):
    other = make_synthetic_volume(seed=4, **SMALL)
    assert not np.array_equal(volume.neurons, other.neurons)
    assert not np.array_equal(volume.image, other.image)


def test_cells_do_not_move_when_mitochondria_or_noise_change(volume):
    plain = make_synthetic_volume(seed=3, mitochondria=False, noise_sigma=0.0, **SMALL)
    np.testing.assert_array_equal(plain.neurons, volume.neurons)
    assert not plain.mitochondria.any()
    assert plain.mitochondria.dtype == np.uint64


def test_noise_is_the_only_difference_between_noise_levels():
    clean = make_synthetic_volume(seed=5, noise_sigma=0.0, **SMALL)
    noisy = make_synthetic_volume(seed=5, noise_sigma=0.05, **SMALL)
    cytoplasm = (clean.neurons != 0) & (clean.mitochondria == 0)
    residual = noisy.image.astype(float)[cytoplasm] - clean.image[cytoplasm]
    # Shot-like noise: std 0.05 at grey 0.5, times sqrt(grey / 0.5) at the local grey level.
    grey = clean.image[cytoplasm] / 255.0
    expected = 0.05 * 255.0 * np.sqrt(np.mean(grey / 0.5))
    assert abs(residual.mean()) < 1.0
    assert 0.85 * expected < residual.std() < 1.15 * expected


# ----------------------------------------------------------------------------- structure

def test_invariants_hold(volume):
    assert_invariants(volume, SMALL["shape_zyx"])
    assert volume.neurons.max() >= 15
    assert volume.mitochondria.max() >= 5
    assert 0.1 < volume.membranes.mean() < 0.5


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2), (1, 32, 32), (32, 1, 32),
                                   (32, 32, 1), (3, 5, 7), (32, 32, 32)])
def test_tiny_and_flat_shapes_work(shape):
    vol = make_synthetic_volume(shape, seed=1, mean_cell_diameter_nm=150.0)
    assert_invariants(vol, shape)


def test_single_voxel_is_one_cell():
    vol = make_synthetic_volume((1, 1, 1))
    np.testing.assert_array_equal(vol.neurons, [[[1]]])


def test_shape_accepts_numpy_integers():
    vol = make_synthetic_volume(np.array([2, 16, 16]), mean_cell_diameter_nm=150.0)
    assert vol.image.shape == (2, 16, 16)


def test_default_parameters_give_a_valid_volume():
    vol = make_synthetic_volume((16, 256, 256), seed=2)
    assert_invariants(vol, (16, 256, 256))
    assert vol.neurons.max() >= 2


def test_membranes_are_darker_than_cytoplasm(volume):
    cytoplasm = (volume.neurons != 0) & (volume.mitochondria == 0)
    membrane_mean = volume.image[volume.membranes].mean()
    cytoplasm_mean = volume.image[cytoplasm].mean()
    assert membrane_mean < cytoplasm_mean - 50
    assert 90 < cytoplasm_mean < 210


def test_mitochondria_are_darker_than_cytoplasm(volume):
    cytoplasm = (volume.neurons != 0) & (volume.mitochondria == 0)
    assert volume.image[volume.mitochondria != 0].mean() < volume.image[cytoplasm].mean() - 25


def test_sections_differ_in_brightness():
    vol = make_synthetic_volume((24, 64, 64), seed=0, noise_sigma=0.0,
                                mean_cell_diameter_nm=150.0)
    cytoplasm = (vol.neurons != 0) & (vol.mitochondria == 0)
    means = [vol.image[z][cytoplasm[z]].mean() for z in range(24)]
    assert np.std(means) > 2.0  # per-section gain/offset jitter, as in ssTEM


def ridge_thickness_nm(membranes, voxel):
    """Median membrane thickness in the xy sections, from a 2D EDT inside the membranes.

    On the ridge (local maxima) of the distance to the nearest cell pixel, the distance is
    half the local thickness; the median over ridge pixels ignores junctions and smears.
    """
    values = []
    for section in membranes:
        dist = edt.edt(section, anisotropy=voxel[1:], black_border=False)
        ridge = (dist > 0) & (dist >= ndimage.maximum_filter(dist, size=3))
        values.append(dist[ridge])
    return 2.0 * float(np.median(np.concatenate(values)))


@pytest.mark.parametrize("thickness,voxel", [(24.0, (40.0, 4.0, 4.0)),
                                             (16.0, (40.0, 4.0, 4.0)),
                                             (40.0, (40.0, 4.0, 4.0)),
                                             (32.0, (30.0, 8.0, 8.0))])
def test_membrane_thickness_in_xy_matches_request(thickness, voxel):
    vol = make_synthetic_volume((6, 128, 128), seed=1, voxel_size_nm=voxel,
                                mean_cell_diameter_nm=max(200.0, 4 * thickness),
                                membrane_thickness_nm=thickness, mitochondria=False)
    measured = ridge_thickness_nm(vol.membranes, voxel)
    assert abs(measured - thickness) <= max(0.2 * thickness, voxel[2]), measured


def test_membranes_at_least_one_voxel_when_thinner_than_a_voxel():
    vol = make_synthetic_volume((4, 64, 64), seed=1, voxel_size_nm=(40.0, 8.0, 8.0),
                                mean_cell_diameter_nm=200.0, membrane_thickness_nm=2.0)
    assert_invariants(vol, (4, 64, 64))
    assert vol.membranes.any()


def profile_diameters_nm(neurons, membranes, voxel):
    """Equivalent-circle diameters (nm) of 2D cell profiles away from the section border.

    Each profile gets its surrounding half-membrane back (membrane pixels nearest to it), so
    the diameter is measured between membrane centres, like the parameter.
    """
    result = []
    for labels, membrane in zip(neurons, membranes):
        _, (iy, ix) = ndimage.distance_transform_edt(membrane, sampling=voxel[1:],
                                                     return_indices=True)
        filled = labels[iy, ix]
        border = np.unique(np.concatenate([filled[0], filled[-1], filled[:, 0], filled[:, -1]]))
        areas = np.bincount(filled.ravel().astype(np.int64))
        inner = np.setdiff1d(np.nonzero(areas)[0], border)
        result.append(2.0 * np.sqrt(areas[inner] * voxel[1] * voxel[2] / math.pi))
    return np.concatenate(result)


@pytest.mark.parametrize("diameter", [200.0, 400.0])
def test_profile_size_follows_mean_cell_diameter(diameter):
    vol = make_synthetic_volume((2, 256, 256), seed=0, voxel_size_nm=(40.0, 8.0, 8.0),
                                mean_cell_diameter_nm=diameter, mitochondria=False)
    measured = profile_diameters_nm(vol.neurons, vol.membranes, (40.0, 8.0, 8.0))
    assert measured.size >= 20
    assert 0.7 * diameter < measured.mean() < 1.3 * diameter


def test_cells_run_through_many_sections(volume):
    # Neurites: most of the cell volume belongs to cells seen in at least half the sections.
    spans = np.array([s[0].stop - s[0].start for s in ndimage.find_objects(volume.neurons)])
    sizes = np.bincount(volume.neurons.ravel())[1:]
    assert sizes[spans >= 6].sum() > 0.7 * sizes.sum()


def mean_crossing_vx(neurons, axis):
    """Mean length in voxels, along `axis`, of the stretch of volume per cell crossed."""
    lines = np.moveaxis(neurons, axis, -1)
    inside = lines != 0
    entries = np.count_nonzero(inside[..., 0]) + np.count_nonzero(
        inside[..., 1:] & (lines[..., 1:] != lines[..., :-1]))
    return lines.size / entries


def test_anisotropic_voxels_stretch_cells_in_voxel_space():
    # The same physical box (480 x 512 x 512 nm) sampled three ways. Cells are laid out in nm,
    # so halving the voxel size along an axis doubles the cells' extent in voxels along it
    # (a bit less: finer sampling resolves a few more small pieces) and leaves the others.
    common = {"seed": 7, "mean_cell_diameter_nm": 200.0, "mitochondria": False}
    base = make_synthetic_volume((12, 64, 64), voxel_size_nm=(40.0, 8.0, 8.0), **common)
    fine_xy = make_synthetic_volume((12, 128, 128), voxel_size_nm=(40.0, 4.0, 4.0), **common)
    fine_z = make_synthetic_volume((24, 64, 64), voxel_size_nm=(20.0, 8.0, 8.0), **common)
    for other, halved in ((fine_xy, (1, 2)), (fine_z, (0,))):
        for axis in range(3):
            ratio = mean_crossing_vx(other.neurons, axis) / mean_crossing_vx(base.neurons, axis)
            expected = 2.0 if axis in halved else 1.0
            assert 0.88 * expected < ratio < 1.08 * expected, (axis, ratio)


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs", [
    {"shape_zyx": (0, 32, 32)},
    {"shape_zyx": (32, 32)},
    {"shape_zyx": (32, 32, 32, 1)},
    {"shape_zyx": (32, -1, 32)},
    {"shape_zyx": (32.0, 32, 32)},
    {"shape_zyx": (True, 32, 32)},
    {"shape_zyx": "32,32,32"},
    {"shape_zyx": None},
    {"shape_zyx": (4096, 4096, 4096)},
    {"voxel_size_nm": (0.0, 4.0, 4.0)},
    {"voxel_size_nm": (40.0, -4.0, 4.0)},
    {"voxel_size_nm": (40.0, 4.0)},
    {"voxel_size_nm": (40.0, float("nan"), 4.0)},
    {"voxel_size_nm": (40.0, float("inf"), 4.0)},
    {"voxel_size_nm": "40,4,4"},
    {"voxel_size_nm": 4.0},
    {"seed": -1},
    {"seed": 1.5},
    {"seed": "1"},
    {"seed": None},
    {"mean_cell_diameter_nm": 0.0},
    {"mean_cell_diameter_nm": -100.0},
    {"mean_cell_diameter_nm": 50.0},  # < 4 x membrane thickness
    {"mean_cell_diameter_nm": 100.0, "voxel_size_nm": (40.0, 40.0, 40.0),
     "membrane_thickness_nm": 5.0},  # < 4 voxels across
    {"mean_cell_diameter_nm": 1.0, "membrane_thickness_nm": 0.1},  # < 4 voxels across
    {"shape_zyx": (256, 512, 512), "voxel_size_nm": (1.0, 1.0, 1.0),
     "mean_cell_diameter_nm": 4.0, "membrane_thickness_nm": 1.0},  # far too many cells
    {"membrane_thickness_nm": 0.0},
    {"membrane_thickness_nm": float("nan")},
    {"noise_sigma": -0.1},
    {"noise_sigma": "0.1"},
    {"mitochondria": "yes"},
])
def test_bad_arguments_raise_one_line_em_error(kwargs):
    arguments = {"shape_zyx": (32, 32, 32)}
    arguments.update(kwargs)
    with pytest.raises(EmError) as info:
        make_synthetic_volume(**arguments)
    message = str(info.value)
    assert "\n" not in message
    assert any(name in message for name in kwargs), message  # names the culprit
