"""Where the field of view moves next: google/ffn's face-maximum rule, shared by training and inference.

After a prediction at ``pos``, each face of the box ``pos +- deltas`` (one per axis and direction,
axes with delta 0 excepted) is searched for its largest object-map value; a face whose maximum
reaches the movement threshold proposes a move to that voxel. Moves are queued best first,
breadth-first over positions, and positions are de-duplicated on the lattice of the deltas (a
position whose lattice cell was already visited is not visited again). All positions are
absolute z,y,x voxel coordinates.
"""

from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

import numpy as np

Triple = tuple[int, int, int]


def logit(p: float) -> float:
    """log(p / (1 - p)): the object map is kept as logits."""
    return math.log(p / (1.0 - p))


def face_moves(fov_logits: np.ndarray, deltas_zyx: Sequence[int], threshold_logit: float) -> list[tuple[float, Triple]]:
    """Moves proposed by one prediction: ``(score, offset_zyx)`` best first.

    ``fov_logits``: the predicted object map (Z, Y, X) of one FOV, centred on the current
    position; the offset is relative to that centre."""
    centre = [s // 2 for s in fov_logits.shape]
    box = tuple(slice(c - d, c + d + 1) for c, d in zip(centre, deltas_zyx))
    moves = []
    for axis, delta in enumerate(deltas_zyx):
        if delta <= 0:
            continue
        for sign in (-1, 1):
            sel = list(box)
            sel[axis] = centre[axis] + sign * delta
            face = fov_logits[tuple(sel)]
            flat = int(np.argmax(face))
            score = float(face.reshape(-1)[flat])
            if not score >= threshold_logit:  # NaN never moves
                continue
            where = list(np.unravel_index(flat, face.shape))
            offset = []
            for a in range(3):
                offset.append(sign * delta if a == axis else int(where.pop(0)) - deltas_zyx[a])
            moves.append((score, tuple(offset)))
    moves.sort(key=lambda m: (-m[0], m[1]))
    return moves  # type: ignore[return-value]


def lattice_key(pos_zyx: Sequence[int], deltas_zyx: Sequence[int]) -> Triple:
    """The delta-lattice cell of a position (an axis that does not move keeps its coordinate)."""
    return tuple(int(p) // int(d) if d > 0 else int(p) for p, d in zip(pos_zyx, deltas_zyx))  # type: ignore[return-value]


def fixed_offsets(deltas_zyx: Sequence[int]) -> list[Triple]:
    """google/ffn's fixed training policy: the centre, then one delta along each axis both ways."""
    out: list[Triple] = [(0, 0, 0)]
    for axis, delta in enumerate(deltas_zyx):
        if delta <= 0:
            continue
        for sign in (-1, 1):
            shift = [0, 0, 0]
            shift[axis] = sign * int(delta)
            out.append(tuple(shift))  # type: ignore[arg-type]
    return out


class MovementQueue:
    """Breadth-first positions of one object, best move first, each lattice cell once.

    ``inside(pos)`` says whether a FOV centred at ``pos`` fits (moves outside are dropped)."""

    def __init__(self, seed_zyx: Sequence[int], deltas_zyx: Sequence[int], threshold_logit: float, inside=None):
        self.deltas = tuple(int(d) for d in deltas_zyx)
        self.threshold = float(threshold_logit)
        self.inside = inside
        self.queue: collections.deque[Triple] = collections.deque([tuple(int(p) for p in seed_zyx)])  # type: ignore[misc]
        self.done: set[Triple] = set()

    def __len__(self) -> int:
        return len(self.queue)

    def pop(self) -> Triple | None:
        """The next position to predict at (marked visited), or None when the object is finished."""
        while self.queue:
            pos = self.queue.popleft()
            key = lattice_key(pos, self.deltas)
            if key in self.done:
                continue
            self.done.add(key)
            return pos
        return None

    def peek_all(self) -> list[Triple]:
        """The queued positions in order, without visited ones (for batching FOVs)."""
        return [p for p in self.queue if lattice_key(p, self.deltas) not in self.done]

    def add_moves(self, pos_zyx: Sequence[int], fov_logits: np.ndarray) -> list[Triple]:
        """Queue the moves a prediction at ``pos_zyx`` proposes; returns the positions added."""
        added = []
        for _, offset in face_moves(fov_logits, self.deltas, self.threshold):
            new = tuple(int(p) + int(o) for p, o in zip(pos_zyx, offset))
            if lattice_key(new, self.deltas) in self.done:
                continue
            if self.inside is not None and not self.inside(new):
                continue
            self.queue.append(new)  # type: ignore[arg-type]
            added.append(new)
        return added  # type: ignore[return-value]

    def state(self) -> dict:
        """JSON-ready state, for a canvas checkpoint."""
        return {"queue": [list(p) for p in self.queue], "done": sorted(list(k) for k in self.done),
                "deltas": list(self.deltas), "threshold": self.threshold}

    @classmethod
    def from_state(cls, state: dict, inside=None) -> "MovementQueue":
        out = cls((0, 0, 0), state["deltas"], state["threshold"], inside)
        out.queue = collections.deque(tuple(int(v) for v in p) for p in state["queue"])  # type: ignore[misc]
        out.done = {tuple(int(v) for v in k) for k in state["done"]}  # type: ignore[misc]
        return out


def fov_slices(centre_zyx: Iterable[int], fov_zyx: Sequence[int]) -> tuple[slice, slice, slice]:
    """The slices of a FOV of size ``fov_zyx`` (odd) centred at ``centre_zyx``."""
    return tuple(slice(int(c) - f // 2, int(c) + f // 2 + 1) for c, f in zip(centre_zyx, fov_zyx))  # type: ignore[return-value]


def fov_fits(centre_zyx: Sequence[int], fov_zyx: Sequence[int], shape_zyx: Sequence[int]) -> bool:
    """Whether the FOV centred at ``centre_zyx`` lies inside a volume of ``shape_zyx``."""
    return all(c - f // 2 >= 0 and c + f // 2 < s for c, f, s in zip(centre_zyx, fov_zyx, shape_zyx))
