"""FFN training examples in flight: where each example's FOV goes next (the FOV policies), the slots
that keep a batch busy, the batch of FOVs and the write-back of its predictions, and the object-map
scores (numpy; torch only for the tensors a checkpoint stores). :mod:`emtools.ffn.training` runs
them; its docstring says how a step uses them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from emtools.errors import EmError
from emtools.ffn.examples import Example, ExampleSource, initial_object_map
from emtools.ffn.movement import MovementQueue, fixed_offsets, fov_fits, fov_slices, logit

TRAIN_STREAM, VAL_STREAM, ORDER_STREAM = 71, 72, 73  # sub-streams of the run seed
EVAL_THRESHOLD = 0.9  # the object map counts as "object" at this probability (google/ffn's eval)


# ----------------------------------------------------------------------------- FOV policies

class FovPolicy:
    """Where each example's FOV goes next, within its patch (see the module docstring)."""

    def __init__(self, name: str, fov_zyx: Sequence[int], deltas_zyx: Sequence[int], patch_zyx: Sequence[int],
                 move_threshold: float, max_moves: int | None = None, shuffle: bool = True):
        if name not in ("fixed", "max_pred_moves"):
            raise EmError(f"ffn.fov_policy must be fixed or max_pred_moves, got {name!r}")
        self.name = name
        self.fov = tuple(int(f) for f in fov_zyx)
        self.deltas = tuple(int(d) for d in deltas_zyx)
        self.patch = tuple(int(p) for p in patch_zyx)
        self.centre = tuple(p // 2 for p in self.patch)
        self.threshold = logit(float(move_threshold))
        self.max_moves = max_moves
        self.shuffle = shuffle

    def inside(self, pos: Sequence[int]) -> bool:
        return fov_fits(pos, self.fov, self.patch)

    def start(self, rng: np.random.Generator) -> dict:
        """The policy state of a new example (JSON-ready)."""
        if self.name == "fixed":
            shifts = fixed_offsets(self.deltas)[1:]
            if self.shuffle:
                shifts = [shifts[i] for i in rng.permutation(len(shifts))]
            return {"todo": [[0, 0, 0]] + [list(s) for s in shifts]}
        return {"queue": MovementQueue(self.centre, self.deltas, self.threshold, self.inside).state()}

    def next(self, state: dict, canvas: np.ndarray, fovs: int) -> tuple[int, int, int] | None:
        """The next FOV centre (patch voxels), or None when the example is done; updates ``state``."""
        if self.name == "fixed":
            todo = state["todo"]
            while todo:
                offset = todo.pop(0)
                pos = tuple(c + int(o) for c, o in zip(self.centre, offset))
                if fovs == 0:  # the seed's own FOV, whatever the thresholds
                    return pos  # type: ignore[return-value]
                if self.inside(pos) and canvas[pos] >= self.threshold:  # NaN never moves
                    return pos  # type: ignore[return-value]
            return None
        if self.max_moves is not None and fovs >= self.max_moves:
            return None
        queue = MovementQueue.from_state(state["queue"], self.inside)
        pos = queue.pop()
        state["queue"] = queue.state()
        return pos

    def after(self, state: dict, pos: Sequence[int], canvas: np.ndarray) -> None:
        """Record a prediction at ``pos`` (max_pred_moves queues the moves it proposes)."""
        if self.name == "fixed":
            return
        queue = MovementQueue.from_state(state["queue"], self.inside)
        queue.add_moves(pos, canvas[fov_slices(pos, self.fov)])
        state["queue"] = queue.state()


# ----------------------------------------------------------------------------- examples in flight

@dataclasses.dataclass
class Flight:
    """One example in flight: its slot, its number within the slot, its object map, its policy state."""

    slot: int
    k: int
    example: Example
    canvas: np.ndarray  # float32 logits, the patch's shape
    state: dict
    fovs: int = 0
    positions: list = dataclasses.field(default_factory=list)  # FOV centres visited (patch voxels)

    def to_dict(self) -> dict:
        return {"slot": self.slot, "k": self.k, "fovs": self.fovs, "canvas": torch.from_numpy(self.canvas.copy()),
                "state": json.loads(json.dumps(self.state)), "positions": [list(p) for p in self.positions]}


class Slots:
    """The examples in flight on one rank: global slots ``first .. first + count - 1``."""

    def __init__(self, source: ExampleSource, policy: FovPolicy, seed: int, pad: float, seed_value: float):
        self.source, self.policy, self.seed = source, policy, int(seed)
        self.pad, self.seed_value = float(pad), float(seed_value)
        self.flights: list[Flight] = []

    def new(self, slot: int, k: int) -> Flight:
        example = self.source.draw((TRAIN_STREAM, slot, k))
        state = self.policy.start(np.random.default_rng([self.seed, ORDER_STREAM, slot, k]))
        canvas = initial_object_map(self.policy.patch, self.pad, self.seed_value)
        return Flight(slot, k, example, canvas, state)

    def fill(self, first: int, count: int, k: int = 0) -> None:
        self.flights = [self.new(first + j, k) for j in range(count)]

    def restore(self, saved: Sequence[Mapping[str, Any]]) -> None:
        self.flights = []
        for item in saved:
            flight = self.new(int(item["slot"]), int(item["k"]))
            canvas = item["canvas"].numpy() if isinstance(item["canvas"], torch.Tensor) else np.asarray(item["canvas"])
            flight.canvas = np.array(canvas, dtype=np.float32)
            flight.state = json.loads(json.dumps(item["state"]))
            flight.fovs = int(item["fovs"])
            flight.positions = [tuple(p) for p in item.get("positions", [])]
            self.flights.append(flight)

    def state(self) -> list[dict]:
        return [f.to_dict() for f in self.flights]

    def next_positions(self, finished: Callable[[Flight], None]) -> list[tuple[int, int, int]]:
        """Every slot's next FOV; finished examples go to ``finished`` and their slot refills."""
        out = []
        for i, flight in enumerate(self.flights):
            pos = self.policy.next(flight.state, flight.canvas, flight.fovs)
            while pos is None:
                finished(flight)
                flight = self.flights[i] = self.new(flight.slot, flight.k + 1)
                pos = self.policy.next(flight.state, flight.canvas, flight.fovs)
            out.append(pos)
        return out


def fov_batch(flights: Sequence[Flight], positions: Sequence[Sequence[int]], fov_zyx: Sequence[int]):
    """(inputs (B, 2, Z, Y, X): image and object-map logits, targets (B, 1, Z, Y, X)) float32."""
    inputs, targets = [], []
    for flight, pos in zip(flights, positions):
        sl = fov_slices(pos, fov_zyx)
        inputs.append(np.stack([flight.example.image[sl], flight.canvas[sl]]))
        targets.append(flight.example.target[sl][None])
    return np.stack(inputs).astype(np.float32, copy=False), np.stack(targets).astype(np.float32, copy=False)


def write_back(flights: Sequence[Flight], positions: Sequence[Sequence[int]], logits: np.ndarray,
               policy: FovPolicy) -> None:
    """Each prediction into its example's object map; the policy sees it."""
    for flight, pos, pred in zip(flights, positions, logits):
        flight.canvas[fov_slices(pos, policy.fov)] = pred[0]
        policy.after(flight.state, pos, flight.canvas)
        flight.fovs += 1
        flight.positions.append(tuple(int(p) for p in pos))


def confusion(logits: np.ndarray, targets: np.ndarray, threshold: float = EVAL_THRESHOLD) -> np.ndarray:
    """[tp, fp, fn, tn] of ``sigmoid(logits) >= threshold`` against ``targets > 0.5``."""
    predicted = np.asarray(logits) >= logit(threshold)
    truth = np.asarray(targets) > 0.5
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted & ~truth))
    fn = int(np.count_nonzero(~predicted & truth))
    return np.array([tp, fp, fn, predicted.size - tp - fp - fn], dtype=np.float64)


def scores(counts: Sequence[float], prefix: str = "") -> dict[str, float]:
    """Voxel accuracy, precision, recall and F1 of [tp, fp, fn, tn] (0 where undefined)."""
    tp, fp, fn, tn = (float(c) for c in counts)
    total = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"{prefix}accuracy": (tp + tn) / total if total else 0.0, f"{prefix}precision": precision,
            f"{prefix}recall": recall, f"{prefix}f1": f1}


def bce_with_logits(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean sigmoid cross-entropy (numerically stable), float64."""
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))))


def grow_examples(predict: Callable[[np.ndarray], np.ndarray], examples: Sequence[Example], policy: FovPolicy,
                  batch: int, seed: int, pad: float = 0.05, seed_value: float = 0.95) -> tuple[list[Flight], int]:
    """Grow every example to completion (no training): its FOVs batched ``batch`` at a time across
    the examples. Returns the finished flights and the number of FOVs."""
    flights = []
    for i, example in enumerate(examples):
        state = policy.start(np.random.default_rng([seed, VAL_STREAM, ORDER_STREAM, i]))
        flights.append(Flight(-1, i, example, initial_object_map(policy.patch, pad, seed_value), state))
    active, total = list(flights), 0
    while active:
        todo = []
        for flight in active:
            pos = policy.next(flight.state, flight.canvas, flight.fovs)
            if pos is not None:
                todo.append((flight, pos))
        active = [f for f, _ in todo]
        for begin in range(0, len(todo), max(1, batch)):
            chunk = todo[begin:begin + max(1, batch)]
            inputs, _ = fov_batch([f for f, _ in chunk], [p for _, p in chunk], policy.fov)
            write_back([f for f, _ in chunk], [p for _, p in chunk], predict(inputs), policy)
            total += len(chunk)
    return flights, total


def evaluate_examples(flights: Sequence[Flight]) -> dict[str, float]:
    """Loss and voxel scores of finished examples' object maps over their whole patches."""
    counts = np.zeros(4)
    losses = []
    for flight in flights:
        counts += confusion(flight.canvas, flight.example.target)
        losses.append(bce_with_logits(flight.canvas, flight.example.target))
    return {"loss": float(np.mean(losses)) if losses else 0.0, **scores(counts)}
