"""Training samples: determinism, ranks sharing one global batch, rejection sampling, targets, masks,
pseudo-labels."""

import itertools

import numpy as np
import pytest
import torch

from emtools.affinities import affinities_from_labels
from emtools.errors import EmError
from emtools.tiling.geometry import Box
from emtools.train.data import Volume
from emtools.train.sampling import (
    HeadTarget,
    PatchSampler,
    build_head_targets,
    make_loader,
    pair_mask,
    pseudo_targets,
    worker_seed,
)

AFFINITY = HeadTarget("affinity", "affinity", 3, ((-1, 0, 0), (0, -1, 0), (0, 0, -1)))
FOREGROUND = HeadTarget("foreground", "foreground", 1)
NORM = {"scale": 1 / 255, "mean": 0.5, "std": 0.25}


def cells(shape=(6, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    points = rng.random((12, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (np.argmin(((grid[..., None, :] - points) ** 2).sum(-1), -1) + 1).astype(np.uint64)


def volume(labels=None, val_box=None, mask=None, probabilities=None, shape=(6, 32, 32)):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    if labels is None and probabilities is None:
        labels = cells(shape)
    return Volume("v", image, labels, mask, probabilities, None, 0.8, (40.0, 4.0, 4.0), val_box)


def sampler(volumes, heads=(AFFINITY,), seed=0, steps=(), min_foreground=0.0, tries=20, patch=(2, 8, 8)):
    return PatchSampler(volumes, patch, list(heads), NORM, steps, seed, min_foreground, tries)


def test_a_sample_is_a_pure_function_of_seed_and_index():
    s = sampler([volume()], steps=[["flip", {"p": 0.5}], ["grayscale", {"p": 0.5}]])
    forward = [s.sample(i) for i in range(4)]
    backward = [s.sample(i) for i in reversed(range(4))][::-1]
    for a, b in zip(forward, backward):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other_seed = sampler([volume()], seed=1)
    assert any(s.choose(i) != other_seed.choose(i) for i in range(4))


def test_ranks_split_the_global_batch_of_one_process():
    """Steps 2..3 on 2 ranks of batch 2 hold the samples of one process of batch 4 (rank 0 first)."""
    s = sampler([volume()], steps=[["flip", {}]])
    one = list(make_loader(s, 4, 2, 3, num_workers=0))
    ranks = [list(make_loader(s, 2, 2, 3, num_workers=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2
    for step, batch in enumerate(one):
        for key in batch:
            assert torch.equal(batch[key], torch.cat([ranks[0][step][key], ranks[1][step][key]]))
    # Step 2 of rank 1 holds global samples 6 and 7; the ranks draw different crops.
    assert torch.equal(ranks[1][0]["image"][1], torch.from_numpy(s.sample(7)["image"]))
    assert not torch.equal(ranks[0][0]["image"], ranks[1][0]["image"])


def test_crops_never_overlap_the_held_out_region():
    val = Box((0, 10, 10), (6, 20, 20))
    s = sampler([volume(val_box=val)])
    for i in range(200):
        _, crop = s.choose(i)
        assert crop.intersect(val) is None and Box.from_shape((6, 32, 32)).contains(crop)


def test_rejection_sampling_finds_sparse_foreground():
    labels = np.zeros((6, 64, 64), np.uint64)
    labels[2:4, 40:46, 10:16] = 7  # one small object
    v = volume(labels=labels, shape=(6, 64, 64))
    fraction = lambda s, i: s._foreground(v, s.choose(i)[1])  # noqa: E731
    plain = sampler([v], heads=[FOREGROUND])
    rejecting = sampler([v], heads=[FOREGROUND], min_foreground=0.01, tries=300)
    hits_plain = sum(fraction(plain, i) > 0 for i in range(100))
    hits_rejecting = sum(fraction(rejecting, i) >= 0.01 for i in range(100))
    assert hits_plain < 25 and hits_rejecting > 95


def test_sample_shapes_and_normalised_image():
    s = sampler([volume()], heads=[AFFINITY, FOREGROUND])
    out = s.sample(0)
    assert out["image"].shape == (1, 2, 8, 8) and out["image"].dtype == np.float32
    assert out["target.affinity"].shape == out["weight.affinity"].shape == (3, 2, 8, 8)
    assert out["target.foreground"].shape == (1, 2, 8, 8)
    which, crop = s.choose(0)
    raw = s.volumes[which].image[Box.from_shape((6, 32, 32)).local(crop)]
    expected = (raw.astype(np.float32) * np.float32(1 / 255) - np.float32(0.5)) * np.float32(4.0)
    np.testing.assert_allclose(out["image"][0], expected, rtol=1e-6, atol=1e-6)


def test_pair_mask_against_a_loop():
    rng = np.random.default_rng(3)
    mask = (rng.random((4, 6, 7)) > 0.3).astype(np.uint8)
    for offset in [(-1, 0, 0), (0, -3, 0), (0, 0, -1), (0, 2, -2), (5, 0, 0)]:
        ref = np.zeros_like(mask)
        for p in itertools.product(*map(range, mask.shape)):
            q = tuple(a + o for a, o in zip(p, offset))
            if all(0 <= c < n for c, n in zip(q, mask.shape)):
                ref[p] = mask[p] & mask[q]
        assert np.array_equal(pair_mask(mask, offset), ref), offset


def test_targets_are_weighted_zero_outside_the_mask():
    labels = cells((4, 16, 16))
    mask = np.ones(labels.shape, np.uint8)
    mask[:, :, 8:] = 0
    out = build_head_targets([AFFINITY, FOREGROUND], labels, mask, (40, 4, 4))
    target, weight = out["affinity"]
    np.testing.assert_array_equal(target, affinities_from_labels(labels))
    assert (weight[:, :, :, 8:] == 0).all()
    assert (weight[2, :, :, 8] == 0).all()  # the x edge from x=8 back to x=7 has one end outside
    assert (weight[2, :, :, 1:8] == 1).all() and (weight[2, :, :, 0] == 0).all()  # x=0 has no back neighbour
    assert (out["foreground"][1][0] == mask).all()


def test_class_balance_and_border_weights_multiply_the_valid_mask():
    labels = cells((2, 16, 16))
    labels[:, 7:9, :] = 0  # a gap between objects
    head = HeadTarget("fg", "foreground", 1, balance="class", border_weight=10.0, border_sigma_vx=2.0)
    mask = np.ones(labels.shape, np.uint8)
    mask[0] = 0
    target, weight = build_head_targets([head], labels, mask, (40, 4, 4))["fg"]
    assert (weight[0, 0] == 0).all()
    positive, negative = target[0, 1] > 0.5, target[0, 1] < 0.5
    assert weight[0, 1][negative].max() > weight[0, 1][positive].max()  # rare background + border weights


def test_pseudo_labels_count_only_confident_voxels():
    probs = np.array([0.05, 0.5, 0.85, 0.95], np.float32)[np.arange(32) % 4]
    v = volume(probabilities=np.broadcast_to(probs, (1, 6, 32, 32)).copy())
    heads = [AFFINITY, HeadTarget("boundary", "boundary", 1)]
    s = sampler([v], heads=heads)
    out = s.sample(0)
    assert (out["weight.affinity"] == 0).all()  # the other heads learn nothing from pseudo-labels
    x = Box.from_shape((6, 32, 32)).local(s.choose(0)[1])[2]
    confident = np.maximum(probs, 1 - probs)[x] >= 0.8
    hard = probs[x] >= 0.5
    assert (out["weight.boundary"][0] == confident).all() and (out["target.boundary"][0] == hard).all()


def test_pseudo_targets_for_an_affinity_head_are_refused():
    v = volume(probabilities=np.zeros((3, 6, 32, 32), np.float32))
    v.pseudo_head = "affinity"
    with pytest.raises(EmError, match="voxel-wise sigmoid heads"):
        sampler([v], heads=[AFFINITY])


def test_pseudo_targets_helper():
    hard = np.array([[[[1, 0]]]], np.uint8)
    confident = np.array([[[[1, 0]]]], np.uint8)
    out = pseudo_targets([FOREGROUND, AFFINITY], "foreground", hard, confident, np.ones((1, 1, 2), np.uint8))
    assert out["foreground"][0].tolist() == [[[[1.0, 0.0]]]] and out["foreground"][1].tolist() == [[[[1.0, 0.0]]]]
    assert out["affinity"][1].shape == (3, 1, 1, 2) and not out["affinity"][1].any()


def test_loader_batches_do_not_depend_on_the_worker_count():
    s = sampler([volume()], steps=[["flip", {}]])
    one = list(make_loader(s, 2, 3, 4, num_workers=0))
    two = list(make_loader(s, 2, 3, 4, num_workers=1))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # Step 3 of batch size 2 holds samples 4 and 5.
    assert torch.equal(one[0]["image"][1], torch.from_numpy(s.sample(5)["image"]))
    assert worker_seed(0, 0, 0) != worker_seed(0, 1, 0) != worker_seed(0, 0, 1)
