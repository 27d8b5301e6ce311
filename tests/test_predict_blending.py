"""Blending weights: the bump vanishes at the border, every mode reconstructs a constant exactly,
and blended predictions match a naive weighted mean over the patches."""

import numpy as np
import pytest
import torch

from emtools.models.heads import head_spec
from emtools.predict.blending import BLENDS, bump, patch_weights, profile
from emtools.predict.engine import Predictor
from emtools.predict.windows import make_grid
from emtools.tiling.geometry import Box

torch.set_num_threads(1)


def test_bump_is_zero_at_the_border_and_positive_inside():
    assert bump(np.array([0.0, 1.0, -0.5, 1.5])).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert bump(np.array([0.5]))[0] == pytest.approx(1.0)
    for n in (1, 2, 5, 64):
        w = profile(n, "bump")
        assert (w > 0).all() and w.max() <= 1.0
        assert np.allclose(w, w[::-1])  # symmetric
        if n > 2:
            assert w[0] < w[1] and w[-1] < w[-2]  # falls towards the border
    # Sampled ever closer to the border, the bump goes to 0 (smoothly: faster than any power).
    edge = bump(np.array([1e-1, 1e-2, 1e-3]))
    assert edge[0] > edge[1] > edge[2] and edge[2] < 1e-300


def test_weights_are_positive_separable_products():
    for mode in BLENDS:
        w = patch_weights((3, 40, 7), mode)
        assert w.dtype == np.float32 and w.shape == (3, 40, 7) and w.min() > 0
        expected = np.einsum("i,j,k->ijk", profile(3, mode), profile(40, mode), profile(7, mode))
        assert np.allclose(w, np.maximum(expected, 1e-6))
    assert (patch_weights((2, 3, 4), "constant") == 1).all()
    g = profile(9, "gaussian")
    assert g.argmax() == 4 and g[4] == 1.0 and g[0] == pytest.approx(np.exp(-0.5 * (4 / (9 / 8)) ** 2))


class Constant(torch.nn.Module):
    def __init__(self, logit):
        super().__init__()
        self.logit = logit

    def forward(self, x):
        return torch.full_like(x[:, :1], self.logit)


class Pointwise(torch.nn.Module):
    """A 1x1x1 'network': each output voxel depends on its own input voxel only."""

    def forward(self, x):
        return 2.0 * x[:, :1] - 0.5


@pytest.mark.parametrize("mode", BLENDS)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_constant_prediction_is_reconstructed(mode, overlap):
    grid = make_grid((4, 16, 12), ((1, 3, 2), (0, 2, 2)), ("fraction", (overlap,) * 3), anchor_zyx=(1, -3, 2))
    head = head_spec("foreground", {"channels": 1})
    target = Box((1, -3, 2), (12, 37, 30))
    image = np.zeros((1,) + grid.input_box(target).shape, np.float32)
    out = Predictor(Constant(0.3), [head], grid, blend=mode, batch=5).predict_block(image, grid.input_box(target), target)
    expected = 1.0 / (1.0 + np.exp(-0.3))
    assert out["foreground"].shape == (1,) + target.shape
    assert np.abs(out["foreground"] - expected).max() < 1e-6


@pytest.mark.parametrize("mode", BLENDS)
def test_blending_matches_a_naive_weighted_mean(mode):
    """Every patch output differs (a position-dependent model): compare with a loop over patches."""
    rng = np.random.default_rng(1)
    grid = make_grid((3, 10, 8), ((1, 2, 1), (0, 1, 2)), ("voxels", (1, 4, 2)))
    target = Box((0, 0, 0), (7, 23, 19))
    need = grid.input_box(target)
    image = rng.standard_normal((1,) + need.shape).astype(np.float32)

    class PatchDependent(torch.nn.Module):
        """Output = input + the patch's mean: a different offset in every patch."""

        def forward(self, x):
            return x[:, :1] + x.mean(dim=(1, 2, 3, 4), keepdim=True)

    head = head_spec("distance", {"channels": 1})
    out = Predictor(PatchDependent(), [head], grid, blend=mode, batch=3).predict_block(image, need, target)["distance"][0]
    acc = np.zeros(target.shape)
    total = np.zeros(target.shape)
    weights = patch_weights(grid.kept_zyx, mode).astype(np.float64)
    for patch in grid.patches(target):
        x = image[0][need.local(patch)].astype(np.float64)
        y = np.tanh(x + x.mean())
        kept = grid.kept(patch)
        y = y[patch.local(kept)]
        for z, yy, xx in np.ndindex(*kept.shape):
            g = (kept.begin[0] + z, kept.begin[1] + yy, kept.begin[2] + xx)
            if all(target.begin[a] <= g[a] < target.end[a] for a in range(3)):
                acc[g] += weights[z, yy, xx] * y[z, yy, xx]
                total[g] += weights[z, yy, xx]
    assert np.abs(out - acc / total).max() < 1e-5


def test_pointwise_model_is_exact_whatever_the_grid():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((9, 30, 26)).astype(np.float32)
    from emtools.predict.engine import predict_volume

    head = head_spec("distance", {"channels": 1})
    expected = np.tanh(2.0 * image - 0.5)
    for overlap, crop in [(("fraction", (0.5,) * 3), ((0, 0, 0), (0, 0, 0))), (("voxels", (1, 3, 0)), ((1, 2, 0), (0, 3, 1)))]:
        out = predict_volume(Pointwise(), image, [head], patch_zyx=(4, 12, 8), crop=crop, overlap=overlap, blend="bump")
        assert np.abs(out["distance"][0] - expected).max() < 1e-6
