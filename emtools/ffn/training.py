"""``em-train model=ffn``: flood-filling network training with field-of-view movement.

Each rank keeps ``data.batch_size`` examples in flight (slots). One step::

    every slot: its next FOV position (policy below); a slot whose example has no FOV left
      is scored (object map vs targets over the whole patch) and takes its next example
    -> batch [image, object-map logits] of the FOVs -> forward -> sigmoid cross-entropy against
       the soft targets (mean) -> all-reduce [loss, non-finite flag, counts] over the ranks
    -> backward (DDP averages gradients) -> gradient clip -> optimizer step
    -> each FOV's prediction is written back into its example's object map, so the next FOV of
       that example sees it (the network learns its own recurrent use)

FOV policies (``ffn.fov_policy``) within the patch of ``fov + 2 x deltas x ffn.fov_moves``:

- ``fixed`` (google/ffn's training default): the centre, then each shift of one delta along each
  axis both ways (in a random order per example), a shift taken only if the object map at its
  centre has reached ``ffn.move_threshold`` by then;
- ``max_pred_moves``: inference's rule (:class:`emtools.ffn.movement.MovementQueue`) inside the
  patch, at most ``ffn.max_moves`` FOVs.

Examples are a pure function of ``(seed, slot, k)`` (:mod:`emtools.ffn.examples`): slot ``g`` of
the ``B x W`` global slots (rank ``r`` holds ``g = r*B .. r*B + B - 1``) draws its ``k``-th
example from its own stream, so ``W`` ranks see the examples of one process with ``W x B`` slots.
Checkpoints store every slot's ``k``, object map and policy state, so ``--resume`` continues
exactly (on CPU in deterministic mode).

Logged every ``train.log_every`` steps (``metrics.jsonl``, ``split: train``): ``loss``, ``lr``,
``accuracy``, ``precision``, ``recall``, ``f1`` of the FOV predictions at 0.9 (probability >= 0.9
vs the seed's object), the same over the whole patch of the examples finished in the window
(``patch.*``, google/ffn's eval tracker; the scaling study's "95% accuracy"), ``examples``
(finished) and ``fovs_per_s``. Validation (``split: val``) grows a fixed set of
``ffn.val_examples`` examples from the held-out regions to completion and scores their patches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from emtools import interrupt
from emtools.errors import EmError
from emtools.ffn.examples import (
    Example,
    ExampleSettings,
    ExampleSource,
    default_normalization,
    partition_map,
)
from emtools.ffn.flights import (VAL_STREAM, Flight, FovPolicy, Slots, confusion, evaluate_examples, fov_batch,
                                 grow_examples, scores, write_back)
from emtools.models import build_model, execution
from emtools.models.spec import spec_from_dict
from emtools.train import distributed as dist
from emtools.train import state as st
from emtools.train.config import digest
from emtools.train.data import Volume, read_volumes
from emtools.train.loop import (METRICS, MetricsLog, RunResult, execution_options, seed_everything,
                                 set_determinism, stop_non_finite)
from emtools.train.optim import Schedule, build_optimizer, scaled_lr
from emtools.train.precision import check_precision
from emtools.train.validate import is_better

log = logging.getLogger("emtools")

VAL_METRICS = ("loss", "accuracy", "precision", "recall", "f1")


# ----------------------------------------------------------------------------- preparation

@dataclasses.dataclass
class Prepared:
    """Everything checked and read before a run writes anything."""

    config: dict
    spec: Any
    settings: ExampleSettings
    volumes: list[Volume]
    device: torch.device
    normalization: dict
    train_source: ExampleSource
    val_source: ExampleSource | None
    init: dict | None = None


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def prepare_ffn(config: Mapping[str, Any], env: dist.Ranks | None = None) -> Prepared:
    """Check the config, the device and the data, and compute the partitions; one-line errors."""
    env = env or dist.Ranks()
    tcfg = config["train"]
    device = dist.select_device(tcfg["device"], env)
    check_precision(tcfg["precision"], device)
    names, spelled = execution_options(tcfg)
    execution.check(names, device, skip_other_devices=True, spelled=spelled)
    spec = spec_from_dict(config["model"], where="config model")
    if spec.arch != "ffn":
        raise EmError(f"model {spec.name} is not a flood-filling network (use model=ffn, ffn-small or ffn-aniso)")
    settings = ExampleSettings.from_config(config, spec)
    best_metric_of(config)
    if config["ffn"]["fov_policy"] == "fixed" and settings.fov_moves != 1:
        log.info("ffn.fov_policy=fixed moves one delta at most; ffn.fov_moves=%d only enlarges the patch",
                 settings.fov_moves)
    volumes = read_volumes(config["data"]["volumes"], config["data"]["model_voxel_size_nm"])
    patch = settings.patch_zyx
    training = [v for v in volumes if not v.validation_only]
    if not training:
        raise EmError("every volume is held out for validation (val_region: all); nothing to train on")
    for v in volumes:
        if v.labels is None:
            raise EmError(f"FFN training needs instance labels (data.volumes.N.labels); {v.name} has a "
                          "probability map")
    for v in training:
        if any(p > n for p, n in zip(patch, v.shape_zyx)):
            raise EmError(f"the FFN training patch {_shape(patch)} (FOV {_shape(spec.fov_zyx)} + 2 x deltas "
                          f"{_shape(spec.deltas_zyx)} x ffn.fov_moves {settings.fov_moves}) is larger than {v.name} "
                          f"(shape {_shape(v.shape_zyx)}); use a smaller model.fov_zyx / model.deltas_zyx or more data")
    init = None
    if tcfg["init_from"]:
        init = _read_init(tcfg["init_from"], spec)
    f = config["ffn"]
    norm = (init.get("extra") or {}).get("normalization") if init is not None else None
    if norm is None:
        norm = default_normalization([v.image for v in training], int(config["seed"]), f["image_mean"], f["image_std"])
    partitions = [partition_map(v.labels, settings.radius_zyx, settings.thresholds, settings.min_object_size)
                  for v in volumes]
    train_source = ExampleSource(volumes, settings, norm, int(config["seed"]), "train", partitions)
    if train_source.empty:
        raise EmError(f"no FFN training example: no labelled object of at least ffn.min_object_size="
                      f"{settings.min_object_size} voxels has a whole patch {_shape(patch)} inside the labelled "
                      "training region (lower ffn.min_object_size or use a smaller FOV)")
    val_source = None
    if int(config["validation"]["every"]) > 0 and any(v.val_box is not None for v in volumes):
        # every rank checks that validation can work; only rank 0 runs it
        val_source = ExampleSource(volumes, settings, norm, int(config["seed"]), "val", partitions)
        if val_source.empty:
            raise EmError(f"no FFN validation example: no held-out region holds a whole patch {_shape(patch)} "
                          f"of a labelled object of at least {settings.min_object_size} voxels; hold out more "
                          "(val_region) or set validation.every=0")
    return Prepared(dict(config), spec, settings, volumes, device, dict(norm), train_source, val_source, init)


def best_metric_of(config: Mapping[str, Any]) -> str:
    """The validation score that picks best.pt (auto: F1 of the object maps)."""
    chosen = config["validation"]["best_metric"]
    metric = "f1" if chosen == "auto" else chosen
    if metric not in VAL_METRICS:
        raise EmError(f"validation.best_metric={metric}: an FFN run scores {', '.join(VAL_METRICS)}")
    return metric


def _read_init(source: str, spec) -> dict:
    from emtools.models.checkpoint import read_checkpoint

    payload = read_checkpoint(source)
    extra = payload.get("extra") or {}
    if extra.get("kind") != "ffn":
        raise EmError(f"train.init_from: {source} is not an FFN checkpoint (found {extra.get('kind') or 'a U-Net'})")
    st.check_same_spec(payload, spec, source, advice="use the same model settings to start from its weights")
    return payload


# ----------------------------------------------------------------------------- FOV policy from the config

def policy_from_config(config: Mapping[str, Any], settings: ExampleSettings) -> FovPolicy:
    f = config["ffn"]
    return FovPolicy(f["fov_policy"], settings.fov_zyx, settings.deltas_zyx, settings.patch_zyx,
                     float(f["move_threshold"]), f["max_moves"], bool(f["shuffle_moves"]))


# ----------------------------------------------------------------------------- the run

def checkpoint_extra(config: Mapping, prepared: Prepared, norm: Mapping, step: int, loss: float | None,
                     validation: dict | None, world_size: int) -> dict:
    """The ``extra`` of an FFN checkpoint (what em-predict's FFN inference reads)."""
    f = config["ffn"]
    return {
        "kind": "ffn",
        "normalization": dict(norm),
        "voxel_size_nm": [float(v) for v in prepared.volumes[0].voxel_size_nm],
        "fov_zyx": list(prepared.spec.fov_zyx),
        "deltas_zyx": list(prepared.spec.deltas_zyx),
        "seed_pad": {"pad": float(f["seed_pad"]), "seed": float(f["seed_value"])},
        "move_threshold": float(f["move_threshold"]),
        "step": int(step),
        "config_sha256": digest(config),
        "loss": loss,
        "validation": validation,
        "world_size": int(world_size),
    }


def train_ffn(config: Mapping[str, Any], run_dir: str, env: dist.Ranks | None = None, resume: dict | None = None,
              on_step: Callable[[dict], None] | None = None, prepared: Prepared | None = None) -> RunResult:
    """Train an FFN as ``config`` says, writing into ``run_dir`` (rank 0); ``resume``: a checkpoint payload."""
    env = env or dist.Ranks()
    prepared = prepared or prepare_ffn(config, env)
    device = prepared.device
    tcfg = config["train"]
    before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    set_determinism(tcfg["deterministic"], device)
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    dist.init_process_group(env, device)
    try:
        return _train(config, run_dir, env, device, resume, on_step, prepared)
    except RuntimeError:
        interrupt.check()
        raise
    finally:
        dist.destroy(env)
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


def _train(config, run_dir, env, device, resume, on_step, prepared: Prepared) -> RunResult:
    tcfg, ocfg, vcfg, fcfg = config["train"], config["optim"], config["validation"], config["ffn"]
    seed, steps, batch_size = int(config["seed"]), int(tcfg["steps"]), int(config["data"]["batch_size"])
    spec = prepared.spec
    seed_everything(seed, env.rank, stream=5)
    model = build_model(spec, seed=seed)
    norm = prepared.normalization
    if resume is not None:
        st.check_same_spec(resume, spec, os.path.join(run_dir, st.LAST))
        if (resume.get("extra") or {}).get("kind") != "ffn":
            raise EmError(f"{os.path.join(run_dir, st.LAST)} is not an FFN run")
        model.load_state_dict(resume["state_dict"])
        norm = resume["extra"].get("normalization") or norm
    elif prepared.init is not None:
        model.load_state_dict(prepared.init["state_dict"])
    for source in (prepared.train_source, prepared.val_source):
        if source is not None:
            source.norm = dict(norm)
    model.to(device)
    names, spelled = execution_options(tcfg)
    run = execution.apply(model, names, device, skip_other_devices=True, spelled=spelled)
    peak = scaled_lr(ocfg["lr"], env.world_size, ocfg["lr_scaling"])
    optimizer = build_optimizer(ocfg["name"], model.parameters(), peak, ocfg["weight_decay"], ocfg["momentum"],
                                tuple(ocfg["betas"]))
    schedule = Schedule(ocfg["schedule"], peak, steps, ocfg["warmup_steps"], ocfg["min_lr_ratio"],
                        ocfg["step_every"], ocfg["gamma"])
    clip = float(ocfg["grad_clip"]) if float(ocfg["grad_clip"]) > 0 else float(fcfg["grad_clip"])
    policy = policy_from_config(config, prepared.settings)
    slots = Slots(prepared.train_source, policy, seed, fcfg["seed_pad"], fcfg["seed_value"])
    first_slot = env.rank * batch_size
    start, best, resumed_val = 0, None, None
    if resume is not None:
        training = resume["training"]
        optimizer.load_state_dict(training["optimizer"])
        schedule.load_state_dict(training["schedule"])
        rngs = training.get("rng") or []
        if env.rank < len(rngs):
            st.set_rng_state(rngs[env.rank], device)
        start, best, resumed_val = int(training["step"]), training.get("best"), training.get("validation")
        saved = training.get("ffn") or {}
        flights = saved.get("slots") or []
        if int(saved.get("world_size", -1)) == env.world_size and int(saved.get("batch_size", -1)) == batch_size \
                and env.rank < len(flights):
            slots.restore(flights[env.rank])
        else:
            log.warning("warning: resuming on %d rank(s) x %d slot(s) a run saved on %s x %s: the examples in "
                        "flight start anew, so it continues, but not exactly as the original would have",
                        env.world_size, batch_size, saved.get("world_size"), saved.get("batch_size"))
            slots.fill(first_slot, batch_size, k=start + 1)  # k above any k used so far in these slots
    else:
        slots.fill(first_slot, batch_size)
    net = dist.wrap_model(model, env, device, bool(tcfg["sync_batchnorm"]))
    validating = int(vcfg["every"]) > 0 and prepared.val_source is not None
    val_examples: list[Example] = []
    if validating and env.is_main:
        val_examples = [prepared.val_source.draw_plain((VAL_STREAM, i)) for i in range(int(fcfg["val_examples"]))]
    best_metric = best_metric_of(config)
    metrics = MetricsLog(os.path.join(run_dir, METRICS))
    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        st.remove_stale_temporaries(run_dir)  # a killed run's half-placed checkpoint
        metrics.start(start if resume is not None else None)
    dist.barrier(env)

    last_path = os.path.join(run_dir, st.LAST) if resume is not None else None
    last_saved, last_loss, last_val = start, None, resumed_val
    best_path = os.path.join(run_dir, st.BEST) if best is not None else None
    paused = 0.0

    def save(step: int) -> None:
        nonlocal last_path, last_saved, paused
        began = time.perf_counter()
        training = {
            "step": step, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "scaler": None,
            "rng": dist.gather_objects(st.rng_state(device), env),
            "sampler": {"world_size": env.world_size, "batch_size": batch_size},
            "ffn": {"world_size": env.world_size, "batch_size": batch_size,
                    "slots": dist.gather_objects(slots.state(), env)},
            "config": json.loads(json.dumps(config)), "best": best, "validation": last_val,
        }
        if env.is_main:
            extra = checkpoint_extra(config, prepared, norm, step, last_loss, last_val, env.world_size)
            last_path = st.write_checkpoint(run_dir, step, model, spec, extra, training, int(tcfg["keep"]))
        last_saved = step
        paused += time.perf_counter() - began

    def predict(inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad(), run.autocast():
            out = model(run.input(torch.from_numpy(inputs).to(device)))
        return out.float().contiguous().cpu().numpy()

    def validate(step: int) -> None:
        nonlocal best, best_path, last_val, paused
        began = time.perf_counter()
        if env.is_main and val_examples:
            flights, fovs = grow_examples(predict, val_examples, policy, batch_size, seed, fcfg["seed_pad"],
                                          fcfg["seed_value"])
            result = {**evaluate_examples(flights), "examples": len(flights), "fovs": fovs}
            last_val = result
            metrics.append({"step": step, "split": "val", **result})
            value = result.get(best_metric)
            if value is not None and is_better(best_metric, value, best["value"] if best else None):
                best = {"metric": best_metric, "value": value, "step": step}
                extra = checkpoint_extra(config, prepared, norm, step, last_loss, result, env.world_size)
                best_path = st.write_best(run_dir, model, spec, extra)
            if on_step is not None:
                on_step({"step": step, "steps": steps, "split": "val", **result})
        dist.barrier(env)
        paused += time.perf_counter() - began

    net.train()
    budget_s = float(tcfg["minutes"]) * 60.0 if tcfg["minutes"] is not None else None
    began_training, last_step = time.perf_counter(), start
    spent_before = schedule.time_fraction
    window_start, window_steps = time.perf_counter(), 0
    sums = np.zeros(10)  # loss, fov tp fp fn tn, patch tp fp fn tn, finished examples
    patch_counts = np.zeros(5)

    def finished(flight: Flight) -> None:
        patch_counts[:4] += confusion(flight.canvas, flight.example.target)
        patch_counts[4] += 1

    for step in range(start + 1, steps + 1):
        interrupt.check()
        lr = schedule.apply(optimizer, step)
        patch_counts[:] = 0
        positions = slots.next_positions(finished)
        inputs, targets = fov_batch(slots.flights, positions, policy.fov)
        x = run.input(torch.from_numpy(inputs).to(device))
        t = torch.from_numpy(targets).to(device)
        with run.autocast():
            out = net(x)
        logits = out.float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
        predicted = logits.detach().contiguous().cpu().numpy()
        spent = spent_before + (time.perf_counter() - began_training) / budget_s if budget_s and env.is_main else 0.0
        local = np.concatenate([[float(loss.detach()), 0.0 if torch.isfinite(loss).item() else 1.0, spent],
                                confusion(predicted, targets), patch_counts])
        values = dist.all_reduce_sum(torch.tensor(local, dtype=torch.float64).to(device), env).cpu().numpy()
        if values[1] > 0:
            stop_non_finite(step, float(loss.detach()), last_path, last_saved, metrics, env)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        write_back(slots.flights, positions, predicted, policy)
        spent = float(values[2])
        sums += np.concatenate([[values[0] / env.world_size], values[3:]])
        window_steps += 1
        last_loss = float(values[0] / env.world_size)
        last_step, schedule.time_fraction = step, min(1.0, spent)
        final = step == steps or spent >= 1.0
        if step % int(tcfg["log_every"]) == 0 or final:
            elapsed = max(time.perf_counter() - window_start - paused, 1e-9)
            record = {"step": step, "split": "train", "loss": float(sums[0] / window_steps), "lr": lr,
                      **scores(sums[1:5]), "examples": int(sums[9])}
            if sums[9] > 0:
                record.update(scores(sums[5:9], "patch."))
            record["fovs_per_s"] = window_steps * batch_size * env.world_size / elapsed
            if env.is_main:
                metrics.append(record)
            window_start, window_steps, sums, paused = time.perf_counter(), 0, np.zeros(10), 0.0
        if on_step is not None and env.is_main:
            on_step({"step": step, "steps": steps, "split": "step", "loss": last_loss, "lr": lr})
        if validating and (step % int(vcfg["every"]) == 0 or final):
            validate(step)
        if step % int(tcfg["checkpoint_every"]) == 0:
            save(step)
        if final and step < steps:
            log.info("time budget of %g minutes spent at step %d of %d", float(tcfg["minutes"]), step, steps)
            break
    if last_saved < last_step:
        save(last_step)
    return RunResult(last_step, last_path if env.is_main else None, best_path if env.is_main else None,
                     metrics.records)
