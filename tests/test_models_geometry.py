"""Geometry: valid input sizes (with the nearest valid ones named), receptive field, valid crop.

The analytic receptive field is checked against the gradient of single output voxels: the input
voxels with a nonzero gradient must lie inside the computed interval, and for a pool-free model
the interval must be exact.
"""

from __future__ import annotations

import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model, resolve_spec
from emtools.models.geometry import (check_input_size, geometry, nearest_valid_sizes, receptive_field,
                                     total_downsampling)

torch.set_num_threads(1)


def test_total_downsampling_of_the_presets():
    assert total_downsampling(resolve_spec("rsunet")) == (2, 16, 16)
    assert total_downsampling(resolve_spec("rsunet-efficient")) == (2, 32, 32)
    assert total_downsampling(resolve_spec("unet3d")) == (4, 8, 8)
    assert total_downsampling(resolve_spec("unet2d")) == (1, 16, 16)


def test_valid_and_invalid_sizes():
    spec = resolve_spec("rsunet")
    check_input_size(spec, (18, 160, 160))
    assert nearest_valid_sizes(spec, (17, 150, 160)) == ((16, 144, 160), (18, 160, 160))
    assert nearest_valid_sizes(spec, (1, 8, 8)) == ((2, 16, 16), (2, 16, 16))
    with pytest.raises(EmError) as error:
        check_input_size(spec, (17, 160, 160))
    message = str(error.value)
    assert "multiples of 2,16,16" in message and "16,160,160 or 18,160,160" in message
    with pytest.raises(EmError, match="positive"):
        check_input_size(spec, (0, 16, 16))


def empirical_extent(model, zyx, position):
    """Input index range (per axis) with nonzero gradient for output voxel ``position``."""
    x = torch.randn(1, 1, *zyx, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = model(x)
    out[(0, 0, *position)].backward()
    nonzero = x.grad[0, 0].abs() > 0
    extent = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = nonzero.any(dim=other[1]).any(dim=other[0])
        index = torch.nonzero(hit).flatten()
        extent.append((int(index.min()), int(index.max())))
    return extent


def test_pool_free_receptive_field_is_exact():
    spec = resolve_spec("rsunet", ["depth=1", "norm=none"])
    size, lo, hi = receptive_field(spec)
    # embed 1x5x5, entry 1x3x3, two 3x3x3, out 1x5x5
    assert size == (5, 15, 15) and lo == (2, 7, 7) and hi == (2, 7, 7)
    model = build_model(spec, seed=0).double().eval()
    extent = empirical_extent(model, (9, 21, 21), (4, 10, 10))
    assert extent == [(2, 6), (3, 17), (3, 17)]


@pytest.mark.parametrize("overrides", [
    ["upsample=transposed"],
    ["upsample=bilinear"],
    ["upsample=nearest"],
    ["stride_in=1x2x2", "transposed_out=true"],
    ["stride_in=1x2x2", "transposed_out=true", "out_kernel=1x5x5"],
    ["stride_in=1x2x2", "transposed_out=true", "out_kernel=1x4x4"],
    ["stride_in=1x2x2", "upsample=bilinear"],
])
def test_receptive_field_bounds_the_real_dependence(overrides):
    spec = resolve_spec("rsunet", ["widths=2,3", "pools=2x2x2", "kernels=1x3x3", "norm=none", *overrides])
    model = build_model(spec, seed=0).double().eval()
    zyx = (8, 48, 48)
    geo = geometry(spec, zyx)
    widest = [0, 0, 0]
    for position in [(3, 21, 22), (4, 24, 24), (5, 30, 17)]:
        extent = empirical_extent(model, zyx, position)
        for axis, (first, last) in enumerate(extent):
            assert position[axis] - geo.margin_lo_zyx[axis] <= first, (axis, position, extent, geo)
            assert last <= position[axis] + geo.margin_hi_zyx[axis], (axis, position, extent, geo)
            widest[axis] = max(widest[axis], last - first + 1)
    # conservative, but not by much where the field is wide (max pooling passes gradient to one
    # voxel of each window, so a few output voxels cannot show the whole field)
    assert all(w >= 0.6 * r for w, r in zip(widest, geo.receptive_field_zyx) if r > 10), (widest, geo)


def test_valid_output_crop():
    spec = resolve_spec("unet3d", ["widths=4,8", "pools=1x2x2"])
    geo = geometry(spec, (16, 64, 64))
    assert geo.downsampling_zyx == (1, 2, 2)
    assert geo.receptive_field_zyx[0] == 13  # six 3x3x3 convs along z, no z pooling: 1 + 6*2
    assert geo.margin_lo_zyx[0] == geo.margin_hi_zyx[0] == 6
    assert geo.valid_output_zyx == tuple(n - a - b for n, a, b in zip((16, 64, 64), geo.margin_lo_zyx, geo.margin_hi_zyx))
    assert geo.valid_output_zyx[0] == 4
    assert geo.to_dict()["input_zyx"] == [16, 64, 64]
    with pytest.raises(EmError, match="nearest valid sizes 8,64,64 or 8,66,66"):
        geometry(spec, (8, 65, 65))
