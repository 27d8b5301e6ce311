"""Optimizers, learning-rate schedules and the scaling of the rate with the number of workers.

Schedules give the rate of optimizer step ``s`` (1-based) as ``peak * factor(s)``::

    warm-up (all schedules):  factor = s / warmup                       for s <= warmup
    warmup_cosine:            min + (1 - min) * (1 + cos(pi * t)) / 2,  t = (s - warmup) / (steps - warmup)
    warmup_step:              gamma ** ((s - warmup) // step_every)
    constant:                 1

Data-parallel training averages the gradients of W workers, i.e. a W x larger batch. The peak
rate is then ``lr * W`` (``linear``, Goyal et al. 2017; with warm-up) or ``lr * sqrt(W)``
(``sqrt``); the flood-filling network study found linear with warm-up best up to ~16 workers
and square root beyond.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from emtools.errors import EmError

SCHEDULES = ("warmup_cosine", "warmup_step", "constant")
SCALINGS = ("none", "linear", "sqrt", "linear-sqrt")
LINEAR_UP_TO = 16  # linear-sqrt: the FFN scaling study's rule (linear with warm-up to ~16 workers, sqrt beyond)


def scaled_lr(lr: float, world_size: int, scaling: str) -> float:
    """The peak rate for ``world_size`` workers: ``none``, ``linear``, ``sqrt``, or ``linear-sqrt``
    (linear up to 16 workers, then by the square root of the workers beyond: continuous at 16)."""
    if scaling == "none" or world_size <= 1:
        return float(lr)
    if scaling == "linear":
        return float(lr) * world_size
    if scaling == "sqrt":
        return float(lr) * math.sqrt(world_size)
    if scaling == "linear-sqrt":
        if world_size <= LINEAR_UP_TO:
            return float(lr) * world_size
        return float(lr) * LINEAR_UP_TO * math.sqrt(world_size / LINEAR_UP_TO)
    raise EmError(f"lr scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise EmError(f"optimizer must be adam, adamw or sgd, got {name!r}")


class Schedule:
    """The rate of each step (see the module docstring); its state is the peak and the step."""

    def __init__(self, name: str, peak_lr: float, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 step_every: int = 1000, gamma: float = 0.1):
        if name not in SCHEDULES:
            raise EmError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
        self.name, self.peak_lr, self.steps = name, float(peak_lr), int(steps)
        self.warmup_steps, self.min_lr_ratio = int(warmup_steps), float(min_lr_ratio)
        self.step_every, self.gamma = int(step_every), float(gamma)
        self.last_step = 0
        # A time budget (train.minutes) moves the cosine along with the share of the time spent,
        # when that is ahead of the share of the steps done.
        self.time_fraction = 0.0

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return step / self.warmup_steps
        after = step - self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "warmup_step":
            return self.gamma ** (after // self.step_every)
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, max(after / span, self.time_fraction))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the rate of ``step`` in every parameter group; returns it."""
        rate = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        self.last_step = step
        return rate

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "peak_lr": self.peak_lr, "steps": self.steps, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio, "step_every": self.step_every, "gamma": self.gamma,
                "last_step": self.last_step, "time_fraction": self.time_fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state.get("last_step", 0))
        self.time_fraction = float(state.get("time_fraction", 0.0))
