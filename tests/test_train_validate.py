"""Validation: sliding-window tiling and blending, boundary maps, segmentation and voxel scores."""

import numpy as np
import pytest
import torch

from emtools.affinities import affinities_from_labels
from emtools.train.sampling import HeadTarget
from emtools.train.validate import (
    boundary_map,
    default_best_metric,
    is_better,
    predict,
    segmentation_scores,
    voxel_scores,
)
from test_train_sampling import AFFINITY, FOREGROUND, cells


class Doubling(torch.nn.Module):
    """Two output channels: the input and twice the input (tiling must not change either)."""

    def forward(self, x):
        return torch.cat([x, 2 * x], dim=1)


@pytest.mark.parametrize("shape", [(5, 20, 23), (2, 9, 9)])
def test_blended_prediction_of_a_voxelwise_model_is_exact(shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = predict(Doubling(), image, 2, (4, 8, 8), (1, 2, 2), torch.device("cpu"))
    assert out.shape == (2,) + shape
    np.testing.assert_allclose(out[0], image, rtol=1e-6)
    np.testing.assert_allclose(out[1], 2 * image, rtol=1e-6)


def test_boundary_maps_of_the_heads():
    labels = cells((3, 16, 16))
    logits = np.where(affinities_from_labels(labels) > 0, 20.0, -20.0).astype(np.float32)
    boundary = boundary_map(AFFINITY, logits)
    assert boundary.shape == labels.shape and boundary.min() >= 0 and boundary.max() <= 1
    assert boundary_map(HeadTarget("b", "boundary", 1), np.zeros((1, 2, 2, 2), np.float32)).max() == 0.5
    assert boundary_map(FOREGROUND, np.zeros((1, 2, 2, 2), np.float32)) is None
    long_range = HeadTarget("a", "affinity", 1, ((0, -3, 0),))
    assert boundary_map(long_range, np.zeros((1, 2, 2, 2), np.float32)) is None


def test_a_perfect_boundary_map_segments_perfectly():
    labels = cells((1, 40, 40))  # one section: 2d mode segments sections apart
    edges = np.zeros(labels.shape, bool)
    edges[:, 1:, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    edges[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    gt = np.where(edges, 0, labels).astype(np.uint64)
    perfect = segmentation_scores(edges.astype(np.float32), gt, (40, 4, 4), [0.5], 0)
    noisy = np.clip(edges + np.random.default_rng(0).random(labels.shape) * 0.9, 0, 1).astype(np.float32)
    worse = segmentation_scores(noisy, gt, (40, 4, 4), [0.5], 0)
    assert perfect["adapted_rand_error"] < 0.02 and worse["adapted_rand_error"] > perfect["adapted_rand_error"]
    assert perfect["threshold"] == 0.5 and set(perfect) == {"adapted_rand_error", "voi_split", "voi_merge", "voi",
                                                             "threshold"}


def test_voxel_scores_count_only_weighted_voxels():
    prob = np.array([0.9, 0.9, 0.1, 0.9], np.float32)
    target = np.array([1, 0, 1, 0], np.float32)
    weight = np.array([1, 1, 1, 0], np.float32)
    scores = voxel_scores(prob, target, weight)
    assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_best_metric_choice_and_direction():
    assert default_best_metric([FOREGROUND, AFFINITY]) == "affinity.adapted_rand_error"
    assert default_best_metric([FOREGROUND]) == "foreground.f1"
    assert default_best_metric([HeadTarget("d", "distance", 1)]) == "loss"
    assert is_better("loss", 0.1, 0.2) and not is_better("loss", 0.3, 0.2)
    assert is_better("fg.f1", 0.9, 0.8) and is_better("x.adapted_rand_error", 0.1, None)
