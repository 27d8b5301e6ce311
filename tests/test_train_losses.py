"""Losses against hand computations: weighted BCE, soft Dice, MSE/L1 on tanh, cross-entropy."""

import math

import pytest
import torch

from emtools.errors import EmError
from emtools.train import losses
from emtools.train.sampling import HeadTarget


def t(*values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, 1, -1)


def test_weighted_bce_by_hand():
    value = losses.bce(t(0.0, 2.0), t(1.0, 0.0), t(1.0, 3.0))
    expected = (math.log(2) + 3 * math.log(1 + math.exp(2))) / 4
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_zero_weight_voxels_do_not_count_and_get_no_gradient():
    logits = t(0.0, 50.0).requires_grad_()
    value = losses.bce(logits, t(1.0, 0.0), t(1.0, 0.0))
    value.backward()
    assert float(value.detach()) == pytest.approx(math.log(2), rel=1e-6)
    assert logits.grad.reshape(-1)[1] == 0
    nothing = losses.bce(t(1.0), t(1.0), t(0.0))
    assert float(nothing) == 0.0


def test_soft_dice_by_hand():
    prob = torch.sigmoid(t(0.0, 2.0))
    value = losses.soft_dice(prob, t(1.0, 0.0), t(1.0, 1.0))
    p1 = 1 / (1 + math.exp(-2))
    assert float(value) == pytest.approx(1 - (2 * 0.5 + 1) / (0.5 + p1 + 1 + 1), rel=1e-6)


def test_distance_losses_use_tanh_of_the_output():
    x, target = t(0.5, -1.0), t(0.0, -0.5)
    a, b = math.tanh(0.5), math.tanh(-1.0)
    mse = losses.head_loss(HeadTarget("d", "distance", 1, loss="mse"), x, target, t(1.0, 1.0))
    assert float(mse) == pytest.approx((a**2 + (b + 0.5) ** 2) / 2, rel=1e-6)
    l1 = losses.head_loss(HeadTarget("d", "distance", 1, loss="l1"), x, target, t(1.0, 0.0))
    assert float(l1) == pytest.approx(abs(a), rel=1e-6)


def test_shape_descriptor_losses_use_the_sigmoid_of_the_output():
    x, target = t(0.5, -1.0), t(0.25, 0.5)
    a, b = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0))
    mse = losses.head_loss(HeadTarget("l", "lsd", 1, loss="mse"), x, target, t(1.0, 1.0))
    assert float(mse) == pytest.approx(((a - 0.25) ** 2 + (b - 0.5) ** 2) / 2, rel=1e-6)
    l1 = losses.head_loss(HeadTarget("l", "lsd", 1, loss="l1"), x, target, t(0.0, 1.0))
    assert float(l1) == pytest.approx(abs(b - 0.5), rel=1e-6)


def test_cross_entropy_by_hand():
    logits = torch.tensor([0.0, math.log(3.0), 0.0, 0.0]).reshape(1, 2, 1, 1, 2)  # voxel 0: [0, ln 3]
    target = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 1, 2)
    value = losses.cross_entropy(logits, target, torch.ones(1, 1, 1, 1, 2))
    assert float(value) == pytest.approx((-math.log(0.75) + math.log(2)) / 2, rel=1e-6)
    with pytest.raises(EmError, match="holds class 2 but the head has 2 classes"):
        losses.cross_entropy(logits, target + 1, torch.ones(1, 1, 1, 1, 2))


def test_head_loss_combines_parts_and_total_weights_heads():
    head = HeadTarget("fg", "foreground", 1, loss="bce+dice", weight=0.5)
    logits, target, weight = t(0.0, 2.0), t(1.0, 0.0), t(1.0, 1.0)
    both = losses.head_loss(head, logits, target, weight)
    parts = losses.bce(logits, target, weight) + losses.soft_dice(torch.sigmoid(logits), target, weight)
    assert float(both) == pytest.approx(float(parts), rel=1e-6)
    other = HeadTarget("d", "distance", 1, loss="mse", weight=2.0)
    batch = {"target.fg": target, "weight.fg": weight, "target.d": t(0.0, 0.0), "weight.d": t(1.0, 1.0)}
    total, per_head = losses.total_loss([head, other], {"fg": logits, "d": logits}, batch)
    assert float(total) == pytest.approx(0.5 * float(per_head["fg"]) + 2.0 * float(per_head["d"]), rel=1e-6)


def test_semantic_dice_is_perfect_for_a_confident_right_answer():
    head = HeadTarget("sem", "semantic", 3, loss="dice")
    target = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 1, 1, 1, 3)
    logits = torch.nn.functional.one_hot(target.long()[:, 0], 3).movedim(-1, 1).float() * 40
    assert float(losses.head_loss(head, logits, target, torch.ones_like(target))) == pytest.approx(0.0, abs=1e-6)
