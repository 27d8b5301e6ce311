"""Test-time augmentation: exact inverses, equivariant models unchanged by every variant, and
affinities (nearest and long-range) reproduced exactly under all 16 variants."""

import logging

import numpy as np
import pytest
import torch

from emtools.errors import EmError
from emtools.models.heads import head_spec
from emtools.predict import tta
from emtools.predict.engine import Predictor, predict_volume
from emtools.predict.windows import make_grid

torch.set_num_threads(1)
ALL = tta.variants(16)
NEAREST = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
LONG = NEAREST + [[-2, 0, 0], [0, -3, 0], [0, 0, -3], [0, -2, -2], [0, -2, 2]]


def test_variant_order_and_names():
    assert len(ALL) == 16 and len(set(ALL)) == 16 and ALL[0].is_identity
    assert [v.name() for v in ALL[:4]] == ["identity", "flip x", "flip y", "flip yx"]
    assert ALL[4] == tta.Variant((False, False, False), True) and ALL[8] == tta.Variant((True, False, False), False)
    assert all(not v.transpose and not v.flip_zyx[0] for v in tta.variants(4))
    assert not any(v.flip_zyx[0] for v in tta.variants(8))
    for bad in (0, 17):
        with pytest.raises(EmError, match="choose 1"):
            tta.variants(bad)


def test_inverse_is_exact_and_variants_differ():
    x = torch.randn(2, 3, 4, 6, 6)
    seen = []
    for v in ALL:
        y = tta.apply(x, v)
        assert torch.equal(tta.invert(y, v), x)
        seen.append(y)
    for i in range(16):
        for j in range(i):
            assert not torch.equal(seen[i], seen[j])


def test_offsets_map_like_the_voxels():
    """A step d in the transformed patch is the step map_offset(d) in the original."""
    x = torch.arange(4 * 5 * 5, dtype=torch.float64).reshape(1, 1, 4, 5, 5)
    q = (1, 2, 1)
    for v in ALL:
        t = tta.apply(x, v)[0, 0]
        for d in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 2, -1]):
            a = int(t[q].item())
            b = int(t[tuple(c + e for c, e in zip(q, d))].item())
            pa, pb = np.unravel_index(a, (4, 5, 5)), np.unravel_index(b, (4, 5, 5))
            assert tuple(int(j) - int(i) for i, j in zip(pa, pb)) == v.map_offset(d)
    assert ALL[1].map_offset((0, 0, -1)) == (0, 0, 1)
    assert ALL[4].map_offset((0, -1, 0)) == (0, 0, -1)
    assert ALL[5].map_offset((0, -1, -3)) == (0, -3, 1)  # swap, then flip x


def test_affinity_plan_shifts_flipped_and_swaps_transposed_channels():
    found, missing = tta.affinity_plan(NEAREST, ALL[8])  # flip z
    assert missing == [] and found == [tta.Source(0, 0, (-1, 0, 0)), tta.Source(1, 1, None), tta.Source(2, 2, None)]
    found, missing = tta.affinity_plan(NEAREST, ALL[4])  # transpose
    assert found == [tta.Source(0, 0, None), tta.Source(1, 2, None), tta.Source(2, 1, None)]
    found, missing = tta.affinity_plan(NEAREST + [[0, -3, 0]], ALL[4])
    assert missing == [3] and len(found) == 3
    assert tta.shifted_region((-1, 0, 2), (4, 5, 6)) == ((slice(1, 4), slice(0, 5), slice(0, 4)),
                                                         (slice(0, 3), slice(0, 5), slice(2, 6)))
    assert tta.shifted_region((0, -5, 0), (4, 5, 6)) is None


class LabelAffinities(torch.nn.Module):
    """A 'network' that returns exact affinities of its input labels, as logits of +-1000."""

    def __init__(self, offsets):
        super().__init__()
        self.offsets = offsets

    def forward(self, x):
        labels = x[:, 0]
        out = []
        for d in self.offsets:
            same = torch.zeros_like(labels, dtype=torch.bool)
            here, there = [slice(None)], [slice(None)]
            for axis, step in enumerate(d):
                n = labels.shape[1 + axis]
                here.append(slice(max(0, -step), min(n, n - step)))
                there.append(slice(max(0, step), min(n, n + step)))
            a, b = labels[tuple(here)], labels[tuple(there)]
            same[tuple(here)] = (a == b) & (a != 0)
            out.append(torch.where(same, 1000.0, -1000.0))
        return torch.stack(out, 1)


def _label_affinities(labels, offsets):
    out = np.zeros((len(offsets),) + labels.shape, np.float32)
    for c, d in enumerate(offsets):
        for p in np.ndindex(*labels.shape):
            q = tuple(i + s for i, s in zip(p, d))
            if all(0 <= j < n for j, n in zip(q, labels.shape)):
                out[(c,) + p] = labels[p] == labels[q] and labels[p] != 0
    return out


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(4)
    small = rng.integers(0, 4, (3, 5, 5))
    return np.kron(small, np.ones((2, 3, 3), int))[:, :14, :14].astype(np.float32)  # blocks of one label


def _affinity_head(offsets):
    return head_spec("affinity", {"kind": "affinity", "channels": len(offsets), "offsets": offsets})


@pytest.mark.parametrize("offsets", [NEAREST, LONG], ids=["nearest", "long-range"])
def test_label_affinities_are_reproduced_under_every_variant(labels, offsets):
    expected = _label_affinities(labels, offsets)
    head = _affinity_head(offsets)
    model = LabelAffinities(offsets)
    kwargs = dict(patch_zyx=labels.shape, overlap=("fraction", (0.0,) * 3))  # one patch: the whole volume
    plain = predict_volume(model, labels, [head], **kwargs)["affinity"]
    assert np.array_equal(plain, expected)
    for index in range(1, 16):
        out = predict_volume(model, labels, [head], tta=[ALL[0], ALL[index]], **kwargs)["affinity"]
        assert np.array_equal(out, expected), ALL[index].name()
    for reduce in tta.REDUCTIONS:
        out = predict_volume(model, labels, [head], tta=16, tta_reduce=reduce, **kwargs)["affinity"]
        assert np.array_equal(out, expected), reduce


def test_open_offset_sets_leave_the_variant_out_with_a_warning(labels, caplog):
    offsets = NEAREST + [[0, -3, 0]]
    head = _affinity_head(offsets)
    with caplog.at_level(logging.WARNING, logger="emtools"):
        out = predict_volume(LabelAffinities(offsets), labels, [head], tta=16, patch_zyx=labels.shape,
                             overlap=("fraction", (0.0,) * 3))["affinity"]
    assert np.array_equal(out, _label_affinities(labels, offsets))
    warned = [r.getMessage() for r in caplog.records if "no partner" in r.getMessage()]
    assert len(warned) == 8 and all("channel 3 (offset [0, -3, 0])" in w for w in warned)


def test_mean_counts_each_estimate_once():
    """A constant model: the mean over variants, with shifted channels, is the constant everywhere."""

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], len(LONG)) + x.shape[2:], 0.7)

    out = predict_volume(Constant(), np.zeros((5, 10, 10), np.float32), [_affinity_head(LONG)], tta=16, batch=8,
                         patch_zyx=(4, 8, 8), overlap=("fraction", (0.5,) * 3), crop=((0, 1, 1), (1, 1, 0)))
    assert np.abs(out["affinity"] - 1 / (1 + np.exp(-0.7))).max() < 1e-6


@pytest.mark.parametrize("module", ["identity", "pointwise"])
def test_equivariant_models_give_the_same_output_under_every_variant(module):
    rng = np.random.default_rng(5)
    image = rng.standard_normal((2, 6, 12, 12)).astype(np.float32)
    if module == "identity":
        model = torch.nn.Identity()
        heads = [head_spec("foreground", {"channels": 1}), head_spec("distance", {"channels": 1})]
    else:
        torch.manual_seed(0)
        model = torch.nn.Conv3d(2, 4, 1)
        heads = [head_spec("semantic", {"channels": 3}), head_spec("boundary", {"channels": 1})]
    kwargs = dict(patch_zyx=(4, 8, 8), overlap=("fraction", (0.5,) * 3), crop=((1, 1, 2), (0, 2, 1)), blend="bump", batch=3)
    plain = predict_volume(model, image, heads, **kwargs)
    for index in range(1, 16):
        out = predict_volume(model, image, heads, tta=[ALL[0], ALL[index]], **kwargs)
        for name in plain:
            assert np.abs(out[name] - plain[name]).max() < 1e-6, (ALL[index].name(), name)
    for reduce in ("min", "max"):
        out = predict_volume(model, image, heads, tta=16, tta_reduce=reduce, **kwargs)
        for name in plain:
            assert np.abs(out[name] - plain[name]).max() < 1e-6


def test_transpose_needs_a_square_patch():
    grid = make_grid((4, 8, 6), ((0, 0, 0), (0, 0, 0)), ("fraction", (0.0,) * 3))
    Predictor(torch.nn.Identity(), [head_spec("foreground", {"channels": 1})], grid, tta=4)
    with pytest.raises(EmError, match="needs a square patch in y,x"):
        Predictor(torch.nn.Identity(), [head_spec("foreground", {"channels": 1})], grid, tta=5)
    with pytest.raises(EmError, match="must start with the identity"):
        Predictor(torch.nn.Identity(), [head_spec("foreground", {"channels": 1})], grid, tta=[ALL[1]])


def test_reducer_rejects_unknown_modes():
    with pytest.raises(EmError, match="choose one of mean, min, max"):
        tta.Reducer("median")
