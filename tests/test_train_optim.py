"""Schedules (values at given steps), learning-rate scaling with workers, optimizers."""

import math

import pytest
import torch

from emtools.errors import EmError
from emtools.train.optim import Schedule, build_optimizer, scaled_lr


def test_warmup_cosine_values():
    s = Schedule("warmup_cosine", 1e-3, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s.lr(1) == pytest.approx(1e-4) and s.lr(5) == pytest.approx(5e-4) and s.lr(10) == pytest.approx(1e-3)
    assert s.lr(60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way through the cosine
    assert s.lr(110) == pytest.approx(1e-4) and s.lr(500) == pytest.approx(1e-4)
    assert s.lr(35) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))))


def test_warmup_step_and_constant_values():
    s = Schedule("warmup_step", 1.0, steps=100, warmup_steps=0, step_every=20, gamma=0.5)
    assert [s.lr(k) for k in (1, 19, 20, 39, 40, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.0625]
    c = Schedule("constant", 2.0, steps=10, warmup_steps=4)
    assert [c.lr(k) for k in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]


def test_apply_sets_every_group_and_the_state_round_trips():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer("sgd", model.parameters(), lr=1.0)
    s = Schedule("constant", 0.3, steps=10, warmup_steps=0)
    assert s.apply(opt, 3) == pytest.approx(0.3) and opt.param_groups[0]["lr"] == pytest.approx(0.3)
    again = Schedule("constant", 0.3, steps=10)
    again.load_state_dict(s.state_dict())
    assert again.last_step == 3


@pytest.mark.parametrize("scaling,expected", [("none", 1e-3), ("linear", 8e-3), ("sqrt", 1e-3 * math.sqrt(8))])
def test_lr_scaling_with_workers(scaling, expected):
    assert scaled_lr(1e-3, 8, scaling) == pytest.approx(expected)
    assert scaled_lr(1e-3, 1, scaling) == pytest.approx(1e-3)


def test_linear_then_sqrt_scaling():
    # linear up to 16 workers, then the square root of the growth beyond: 64 workers = 16 x sqrt(4)
    assert scaled_lr(1e-3, 8, "linear-sqrt") == pytest.approx(8e-3)
    assert scaled_lr(1e-3, 16, "linear-sqrt") == pytest.approx(16e-3)
    assert scaled_lr(1e-3, 64, "linear-sqrt") == pytest.approx(32e-3)
    assert scaled_lr(1e-3, 1024, "linear-sqrt") == pytest.approx(1e-3 * 16 * 8)


def test_optimizers():
    params = list(torch.nn.Linear(2, 2).parameters())
    assert isinstance(build_optimizer("adam", params, 1e-3), torch.optim.Adam)
    adamw = build_optimizer("adamw", params, 1e-3, weight_decay=0.01, betas=(0.8, 0.9))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.9)
    sgd = build_optimizer("sgd", params, 0.1, momentum=0.5)
    assert sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(EmError):
        build_optimizer("lbfgs", params, 1.0)
    with pytest.raises(EmError):
        Schedule("linear", 1.0, 10)
