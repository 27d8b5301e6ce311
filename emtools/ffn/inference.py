"""Flood-fill inference: grow one object at a time from seeds with a flood-filling network.

google/ffn's canvas semantics (Januszewski et al. 2018), for one volume held in memory::

    for each seed, in order:
        skip it (counted in ``skipped``) when it lies outside the volume, where a FOV cannot be
        centred, on a restricted voxel, on a segmented or tried voxel, or within
        ``min_seed_distance_zyx`` of a segment
        object map := NaN everywhere (unvisited; fed to the network as logit(seed_pad)),
                      logit(seed_value) at the seed
        queue := [seed]                                   (emtools.ffn.movement.MovementQueue)
        while the queue has positions:
            predict the FOVs at the next positions, write their logits into the object map,
            queue the face moves of each prediction above the movement threshold
            the seed voxel below the segment threshold -> drop the object (its seed is tried)
            NaN/Inf in a prediction -> stop, drop and report the object, go on with the next seed
        segment := object map >= logit(segment_threshold), not yet claimed, not restricted
        fewer than min_size voxels -> dropped (its voxels are marked tried, 0 in the output)
        else it gets the next id (1, 2, ...) and its seed is its origin

Batching: up to ``options.batch`` positions are taken from the front of the queue, in queue
order, as long as no two of their FOVs overlap; then no prediction of the batch can see another's
output and the labels equal those of one FOV at a time (the FOV count may differ: a batch may
predict FOVs that the one-at-a-time run would not reach once the object stops).

Resuming: with ``state_path``, the canvas state (labels, the tried mask, the next seed, the
current object's object map over the region it touched and its queue, the origins) is written
atomically at most every ``checkpoint_every_s`` seconds (0: before every batch); a run killed at
any point resumes from it and gives the labels of an unbroken run. The state names a fingerprint
of the image, the restrictor, the seeds and the options; a state from another run is refused.
When the run ends the state is written once more, marked finished (a rerun returns the result
without predicting); the caller deletes it once the result is stored.

Positions are absolute z,y,x voxel coordinates; the FOV is odd and centred on its position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.ffn.movement import MovementQueue, fov_fits, fov_slices, lattice_key, logit

log = logging.getLogger("emtools")

Triple = tuple[int, int, int]
STATE_FORMAT = "emtools-ffn-canvas"
STATE_VERSION = 1


@dataclasses.dataclass
class FloodOptions:
    """Inference settings; probabilities are in (0, 1), sizes in voxels."""

    segment_threshold: float = 0.6
    move_threshold: float = 0.9
    min_size: int = 1000
    seed_pad: float = 0.05
    seed_value: float = 0.95
    min_seed_distance_zyx: tuple = (1, 1, 1)
    batch: int = 4
    max_fovs_per_object: int | None = None
    checkpoint_every_s: float = 60.0

    def check(self) -> None:
        for name in ("segment_threshold", "move_threshold", "seed_pad", "seed_value"):
            value = getattr(self, name)
            if not 0.0 < float(value) < 1.0:
                raise EmError(f"{name.replace('_', '-')} must lie strictly between 0 and 1, got {value}")
        if self.min_size < 0:
            raise EmError(f"min-size must be 0 or more, got {self.min_size}")
        if self.batch < 1:
            raise EmError(f"batch must be at least 1, got {self.batch}")
        if len(self.min_seed_distance_zyx) != 3 or any(int(d) < 0 for d in self.min_seed_distance_zyx):
            raise EmError(f"min seed distance must be 3 values >= 0 (z,y,x), got {self.min_seed_distance_zyx}")
        if self.max_fovs_per_object is not None and self.max_fovs_per_object < 1:
            raise EmError(f"max FOVs per object must be at least 1, got {self.max_fovs_per_object}")
        if self.checkpoint_every_s < 0:
            raise EmError(f"the state interval must be 0 or more seconds, got {self.checkpoint_every_s}")

    def result_affecting(self) -> dict:
        """The settings that change the labels (batch and the state interval do not)."""
        out = dataclasses.asdict(self)
        out.pop("batch")
        out.pop("checkpoint_every_s")
        out["min_seed_distance_zyx"] = [int(v) for v in self.min_seed_distance_zyx]
        return out


@dataclasses.dataclass
class FloodResult:
    labels: np.ndarray  # uint64 ZYX, 0 = unsegmented
    probabilities: np.ndarray | None  # uint8 ZYX: round(255 x p) of the winning object, or None
    origins: dict  # id -> seed (z, y, x)
    fovs: int  # FOVs predicted (all runs of a resumed canvas together)
    seconds: float  # time spent (all runs together)
    diverged: list  # seeds whose object map became NaN/Inf
    skipped: int  # seeds not grown (outside, border, restricted, segmented, tried, too close)
    dropped: int = 0  # objects grown but dropped (weak seed, under min_size, diverged)
    seeds: int = 0  # seeds given

    @property
    def objects(self) -> int:
        return len(self.origins)


@dataclasses.dataclass
class FloodProgress:
    """What ``progress`` receives after every batch of FOVs."""

    objects: int
    fovs: int
    seeds_done: int
    seeds_total: int
    segmented_voxels: int
    seconds: float


# ----------------------------------------------------------------------------- the model runner

def model_runner(model, device="cpu", precision: str = "fp32", execution=None) -> Callable[[np.ndarray], np.ndarray]:
    """``predict_fovs`` for a torch FFN: (B, 2, Z, Y, X) float32 -> (B, 1, Z, Y, X) float32 logits.

    ``execution``: options of :mod:`emtools.models.execution` (they change the speed, not the
    result); None: ``onednn`` on a CPU (PyTorch's default path for batch-1 3D convolutions of
    FOV size is about 11x slower here: ffn-small 1.0 vs 0.09 s per FOV), none on a GPU. The model
    is switched in place."""
    import torch

    from emtools.models.execution import apply

    device = torch.device(device)
    model = model.to(device).eval()
    options = list(execution) if execution is not None else (["onednn"] if device.type == "cpu" else [])
    options += {"bf16": ["bf16"], "fp16": ["fp16"]}.get(precision, [])
    try:
        run = apply(model, options, device, mode="infer")
    except EmError:
        if execution is not None:
            raise
        log.debug("execution options %s not available here; running the model as it is", options)
        run = apply(model, [o for o in options if o != "onednn"], device, mode="infer")

    def predict_fovs(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
            return run(run.input(x)).float().cpu().numpy()

    return predict_fovs


# ----------------------------------------------------------------------------- the canvas

class _Canvas:
    """The state of one flood-fill run (everything a resume needs)."""

    def __init__(self, shape, want_probabilities: bool):
        self.labels = np.zeros(shape, np.uint64)
        self.tried = np.zeros(shape, bool)
        self.probabilities = np.zeros(shape, np.uint8) if want_probabilities else None
        self.object_map = np.full(shape, np.nan, np.float32)
        self.origins: dict[int, Triple] = {}
        self.next_id = 1
        self.seed_index = 0
        self.fovs = 0
        self.diverged: list[Triple] = []
        self.skipped = 0
        self.dropped = 0
        self.seconds = 0.0
        self.finished = False
        self.segmented = 0
        # the object being grown: its seed, queue, FOVs so far, and the box its FOVs touched
        self.current: Triple | None = None
        self.queue: MovementQueue | None = None
        self.object_fovs = 0
        self.lo: list[int] | None = None
        self.hi: list[int] | None = None  # exclusive


def _fingerprint(image: np.ndarray, restrictor, seeds: list, fov, deltas, options: FloodOptions,
                 want_probabilities: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"shape": list(image.shape), "fov": list(fov), "deltas": list(deltas),
                              "options": options.result_affecting(), "probabilities": bool(want_probabilities),
                              "seeds": [list(s) for s in seeds]}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(image, np.float32).tobytes())
    if restrictor is not None:
        digest.update(np.packbits(restrictor).tobytes())
    return digest.hexdigest()


def check_state(state_path: str, image_norm: np.ndarray, seeds, fov_zyx, deltas_zyx, options: FloodOptions, *,
                restrictor: np.ndarray | None = None, want_probabilities: bool = False) -> bool:
    """Whether ``state_path`` holds a state that :func:`flood_fill` with these arguments would resume
    (False: no file); a state of another run or a damaged file is a one-line EmError. Lets a caller
    refuse it before any work or logging."""
    if not os.path.exists(state_path):
        return False
    allowed = None if restrictor is None else np.asarray(restrictor) != 0
    fingerprint = _fingerprint(np.asarray(image_norm, np.float32), allowed, [tuple(int(v) for v in s) for s in seeds],
                               tuple(int(f) for f in fov_zyx), tuple(int(d) for d in deltas_zyx), options,
                               want_probabilities)
    try:
        with np.load(state_path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise EmError(f"cannot read the flood-fill state {state_path}: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise EmError(f"cannot read the flood-fill state {state_path}: not a flood-fill state")
    if meta.get("fingerprint") != fingerprint:
        raise EmError(f"the flood-fill state {state_path} is from another run (different image, seeds, restrictor "
                      "or options): remove it, or give another state file")
    return True


def _save_state(path: str, canvas: _Canvas, fingerprint: str) -> None:
    """Write the canvas state atomically (temp file in the same folder, then rename)."""
    meta = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "fingerprint": fingerprint,
        "origins": [[int(k), *map(int, v)] for k, v in canvas.origins.items()], "next_id": canvas.next_id,
        "seed_index": canvas.seed_index, "fovs": canvas.fovs, "diverged": [list(map(int, s)) for s in canvas.diverged],
        "skipped": canvas.skipped, "dropped": canvas.dropped, "seconds": canvas.seconds, "finished": canvas.finished,
        "segmented": canvas.segmented,
        "current": None if canvas.current is None else list(canvas.current),
        "queue": None if canvas.queue is None else canvas.queue.state(),
        "object_fovs": canvas.object_fovs, "lo": canvas.lo, "hi": canvas.hi,
    }
    arrays = {"labels": canvas.labels, "tried": canvas.tried}
    if canvas.probabilities is not None:
        arrays["probabilities"] = canvas.probabilities
    if canvas.current is not None and canvas.lo is not None:
        arrays["object_map"] = canvas.object_map[tuple(slice(a, b) for a, b in zip(canvas.lo, canvas.hi))]
    from emtools import io

    with io.atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        stream.flush()
        os.fsync(stream.fileno())


def _load_state(path: str, canvas: _Canvas, fingerprint: str, inside) -> None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != STATE_FORMAT:
                raise ValueError("not a flood-fill state")
            if meta.get("fingerprint") != fingerprint:
                raise EmError(f"the flood-fill state {path} is from another run (different image, seeds, restrictor "
                              "or options): remove it, or give another state file")
            canvas.labels[...] = data["labels"]
            canvas.tried[...] = data["tried"]
            if canvas.probabilities is not None:
                canvas.probabilities[...] = data["probabilities"]
            object_map = data["object_map"] if "object_map" in data.files else None
    except EmError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise EmError(f"cannot read the flood-fill state {path}: {' '.join(str(exc).split())[:120]}") from None
    canvas.origins = {int(k): (int(z), int(y), int(x)) for k, z, y, x in meta["origins"]}
    for key in ("next_id", "seed_index", "fovs", "skipped", "dropped", "seconds", "finished", "segmented",
                "object_fovs", "lo", "hi"):
        setattr(canvas, key, meta[key])
    canvas.diverged = [tuple(s) for s in meta["diverged"]]
    if meta["current"] is not None:
        canvas.current = tuple(meta["current"])
        canvas.queue = MovementQueue.from_state(meta["queue"], inside)
        if object_map is not None:
            canvas.object_map[tuple(slice(a, b) for a, b in zip(canvas.lo, canvas.hi))] = object_map
    log.info("resuming the flood fill from %s: %d objects, seed %d, %d FOVs so far%s", path, len(canvas.origins),
             canvas.seed_index, canvas.fovs, " (finished)" if canvas.finished else
             (f", inside the object of seed {_fmt(canvas.current)}" if canvas.current is not None else ""))


def _fmt(values) -> str:
    return ",".join(str(int(v)) for v in values)


# ----------------------------------------------------------------------------- flood fill

def flood_fill(predict_fovs: Callable[[np.ndarray], np.ndarray], image_norm: np.ndarray, seeds: Iterable[Sequence[int]],
               fov_zyx: Sequence[int], deltas_zyx: Sequence[int], options: FloodOptions | None = None, *,
               restrictor: np.ndarray | None = None, state_path: str | None = None, want_probabilities: bool = False,
               progress: Callable[[FloodProgress], None] | None = None) -> FloodResult:
    """Segment ``image_norm`` (float32 ZYX, normalised as in training) object by object from ``seeds``.

    ``predict_fovs``: (B, 2, Z, Y, X) float32 [image, object-map logits] -> (B, 1, Z, Y, X) logits
    (:func:`model_runner`). ``restrictor``: voxels where it is 0 are never segmented, and no seed
    or FOV centre lies there. See the module docstring for the rules."""
    options = options or FloodOptions()
    options.check()
    image = np.asarray(image_norm, dtype=np.float32)
    if image.ndim != 3:
        raise EmError(f"the flood fill takes a z,y,x image, got {image.ndim} dimensions")
    fov = tuple(int(f) for f in fov_zyx)
    deltas = tuple(int(d) for d in deltas_zyx)
    shape = image.shape
    if any(f > s for f, s in zip(fov, shape)):
        raise EmError(f"the FOV {'x'.join(map(str, fov))} is larger than the volume {'x'.join(map(str, shape))} (z,y,x): "
                      "give a larger volume or a model with a smaller FOV")
    allowed = None
    if restrictor is not None:
        if tuple(restrictor.shape) != shape:
            raise EmError(f"the restrictor mask is {'x'.join(map(str, restrictor.shape))} but the image "
                          f"{'x'.join(map(str, shape))}")
        allowed = np.asarray(restrictor) != 0
    seed_list = [tuple(int(v) for v in s) for s in seeds]
    for s in seed_list:
        if len(s) != 3:
            raise EmError(f"a seed needs 3 coordinates z,y,x, got {s}")

    def inside(pos) -> bool:
        return fov_fits(pos, fov, shape) and (allowed is None or bool(allowed[pos]))

    canvas = _Canvas(shape, want_probabilities)
    fingerprint = _fingerprint(image, allowed, seed_list, fov, deltas, options, want_probabilities) if state_path else ""
    if state_path and os.path.exists(state_path):
        _load_state(state_path, canvas, fingerprint, inside)
    started = time.monotonic()
    seconds_before = canvas.seconds
    last_save = started
    move_logit = logit(options.move_threshold)
    segment_logit = np.float32(logit(options.segment_threshold))
    pad_logit = np.float32(logit(options.seed_pad))
    mbd = tuple(int(d) for d in options.min_seed_distance_zyx)
    half = tuple(f // 2 for f in fov)

    def save(force: bool = False) -> None:
        nonlocal last_save
        if not state_path:
            return
        now = time.monotonic()
        if not force and now - last_save < options.checkpoint_every_s:
            return
        canvas.seconds = seconds_before + (now - started)
        _save_state(state_path, canvas, fingerprint)
        last_save = time.monotonic()

    def report() -> None:
        if progress is not None:
            progress(FloodProgress(len(canvas.origins), canvas.fovs, canvas.seed_index, len(seed_list),
                                   canvas.segmented, seconds_before + time.monotonic() - started))

    def skip_reason(pos: Triple) -> str | None:
        if any(p < 0 or p >= s for p, s in zip(pos, shape)):
            return "outside the volume"
        if not fov_fits(pos, fov, shape):
            return "too close to the border to centre a FOV"
        if allowed is not None and not allowed[pos]:
            return "restricted"
        if canvas.labels[pos] or canvas.tried[pos]:
            return "segmented or tried"
        near = tuple(slice(max(p - d, 0), p + d + 1) for p, d in zip(pos, mbd))
        if canvas.labels[near].any():
            return "too close to a segment"
        return None

    def take_batch(queue: MovementQueue, limit: int) -> list[Triple]:
        """The longest queue prefix (visited cells skipped, as pop() would) of pairwise disjoint FOVs."""
        taken: list[Triple] = []
        keys = set()
        for pos in queue.peek_all():
            if len(taken) >= limit:
                break
            key = lattice_key(pos, queue.deltas)
            if key in keys:
                continue  # pop() would skip it: its cell is visited by an earlier position of the batch
            if any(all(abs(a - b) < f for a, b, f in zip(pos, other, fov)) for other in taken):
                break
            keys.add(key)
            taken.append(pos)
        popped = [queue.pop() for _ in taken]
        assert popped == taken, (popped, taken)
        return taken

    def finish_object(ok: bool) -> None:
        seed = canvas.current
        assert seed is not None
        if canvas.lo is not None:
            box = tuple(slice(a, b) for a, b in zip(canvas.lo, canvas.hi))
            if ok:
                values = canvas.object_map[box]
                mask = values >= segment_logit  # NaN (unvisited) is never in it
                labels = canvas.labels[box]
                mask &= labels == 0
                if allowed is not None:
                    mask &= allowed[box]
                size = int(mask.sum())
                if size < options.min_size:
                    canvas.tried[box][mask] = True
                    canvas.tried[seed] = True
                    canvas.dropped += 1
                    log.debug("object of seed %s dropped: %d voxels < min size %d", _fmt(seed), size, options.min_size)
                else:
                    labels[mask] = canvas.next_id
                    canvas.origins[canvas.next_id] = seed
                    if canvas.probabilities is not None:
                        p = 1.0 / (1.0 + np.exp(-values[mask].astype(np.float64)))
                        canvas.probabilities[box][mask] = np.round(255.0 * p).astype(np.uint8)
                    log.debug("object %d from seed %s: %d voxels, %d FOVs", canvas.next_id, _fmt(seed), size,
                              canvas.object_fovs)
                    canvas.next_id += 1
                    canvas.segmented += size
            canvas.object_map[box] = np.nan
        if not ok:
            canvas.tried[seed] = True
            canvas.dropped += 1
        canvas.current = None
        canvas.queue = None
        canvas.object_fovs = 0
        canvas.lo = canvas.hi = None
        canvas.seed_index += 1

    def grow() -> None:
        """Grow the current object until its queue is empty (or it is dropped)."""
        seed = canvas.current
        queue = canvas.queue
        assert seed is not None and queue is not None
        while True:
            save()
            limit = options.batch
            if options.max_fovs_per_object is not None:
                limit = min(limit, options.max_fovs_per_object - canvas.object_fovs)
                if limit <= 0:
                    break
            positions = take_batch(queue, limit)
            if not positions:
                break
            inputs = np.empty((len(positions), 2, *fov), np.float32)
            for i, pos in enumerate(positions):
                box = fov_slices(pos, fov)
                inputs[i, 0] = image[box]
                values = canvas.object_map[box]
                inputs[i, 1] = np.where(np.isnan(values), pad_logit, values)
            outputs = np.asarray(predict_fovs(inputs))
            if outputs.shape != (len(positions), 1, *fov):
                raise EmError(f"the model returned {outputs.shape} for FOVs {inputs.shape}; an FFN returns (B,1,Z,Y,X)")
            for pos, out in zip(positions, outputs):
                canvas.fovs += 1
                canvas.object_fovs += 1
                logits = out[0].astype(np.float32, copy=False)
                if not np.isfinite(logits).all():
                    canvas.diverged.append(seed)
                    log.warning("the object of seed %s diverged (NaN/Inf in the prediction of the FOV at %s, FOV %d "
                                "of the object): dropped, going on with the next seed", _fmt(seed), _fmt(pos),
                                canvas.object_fovs)
                    finish_object(ok=False)
                    return
                box = fov_slices(pos, fov)
                canvas.object_map[box] = logits
                lo = [p - h for p, h in zip(pos, half)]
                hi = [p + h + 1 for p, h in zip(pos, half)]
                canvas.lo = lo if canvas.lo is None else [min(a, b) for a, b in zip(canvas.lo, lo)]
                canvas.hi = hi if canvas.hi is None else [max(a, b) for a, b in zip(canvas.hi, hi)]
                if not canvas.object_map[seed] >= segment_logit:
                    log.debug("object of seed %s dropped: the seed fell below the segment threshold", _fmt(seed))
                    finish_object(ok=False)
                    return
                queue.add_moves(pos, logits)
            report()
        finish_object(ok=True)

    if not canvas.finished:
        while canvas.seed_index < len(seed_list):
            if canvas.current is None:
                pos = seed_list[canvas.seed_index]
                reason = skip_reason(pos)
                if reason is not None:
                    log.debug("seed %s skipped: %s", _fmt(pos), reason)
                    canvas.skipped += 1
                    canvas.seed_index += 1
                    continue
                canvas.current = pos
                canvas.object_map[pos] = np.float32(logit(options.seed_value))
                canvas.lo = list(pos)
                canvas.hi = [p + 1 for p in pos]
                canvas.queue = MovementQueue(pos, deltas, move_logit, inside)
                canvas.object_fovs = 0
            grow()
            report()
        canvas.finished = True
        save(force=True)
    canvas.seconds = seconds_before + (time.monotonic() - started)
    return FloodResult(canvas.labels, canvas.probabilities, dict(canvas.origins), canvas.fovs, canvas.seconds,
                       list(canvas.diverged), canvas.skipped, canvas.dropped, len(seed_list))


def voxels_per_second(result: FloodResult) -> float:
    return float(result.labels.size) / max(result.seconds, 1e-9)


def summary_line(result: FloodResult) -> str:
    """The closing line: objects, FOVs, seconds, FOV/s and voxels/s of the volume."""
    seconds = max(result.seconds, 1e-9)
    return (f"done: {result.objects} objects from {result.seeds} seeds ({result.skipped} skipped, {result.dropped} "
            f"dropped, {len(result.diverged)} diverged), {result.fovs} FOVs in {result.seconds:.1f} s, "
            f"{result.fovs / seconds:.2f} FOV/s, {result.labels.size / seconds / 1e6:.4f} Mvoxel/s "
            f"({seconds / max(result.labels.size / 1e6, 1e-9):.1f} s per Mvoxel)")


__all__ = ["FloodOptions", "FloodProgress", "FloodResult", "check_state", "flood_fill", "model_runner", "summary_line",
           "voxels_per_second"]
