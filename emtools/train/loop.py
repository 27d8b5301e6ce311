"""The training loop: set-up, steps, metrics log, checkpoints, validation, NaN handling.

One step on each rank::

    batch (rank's own samples) -> autocast forward -> split heads -> sum of weighted head losses
      -> all-reduce [loss, head losses, non-finite flag]   (every rank sees the mean; a NaN anywhere
         stops every rank before the bad gradients reach the weights)
      -> backward (DDP averages gradients; fp16: scaled) -> clip -> optimizer step

Rank 0 appends JSON lines to ``metrics.jsonl`` (``split: train`` every ``train.log_every`` steps,
``split: val`` after each validation), writes checkpoints (:mod:`emtools.train.state`) and the
curves. A non-finite loss stops the run with one line naming the step; the checkpoints written
before it stay as they were.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch

from emtools import interrupt
from emtools.errors import EmError
from emtools.models import build_model, execution, split_heads
from emtools.models.geometry import check_input_size
from emtools.models.heads import head_spec, heads_to_dict
from emtools.models.spec import spec_from_dict
from emtools.train import distributed as dist
from emtools.train import state as st
from emtools.train.config import digest
from emtools.train.data import Volume, check_training_data, fit_image_normalization, read_volumes
from emtools.train.losses import total_loss
from emtools.train.optim import Schedule, build_optimizer, scaled_lr
from emtools.train.precision import check_precision, grad_scaler
from emtools.train.sampling import PatchSampler, check_targets, head_targets, make_loader
from emtools.train.validate import default_best_metric, evaluate, is_better, validation_regions

log = logging.getLogger("emtools")
METRICS = "metrics.jsonl"


@dataclasses.dataclass
class RunResult:
    step: int
    last: str | None
    best: str | None
    records: list[dict]


@dataclasses.dataclass
class Prepared:
    """Everything checked and read before a run writes anything."""

    config: dict
    spec: Any
    heads: list
    volumes: list[Volume]
    min_foreground: float
    device: torch.device
    init: dict | None = None  # the checkpoint of train.init_from


def prepare(config: Mapping[str, Any], env: dist.Ranks | None = None) -> Prepared:
    """Check the config against the model, the device and the data; one-line errors, nothing written."""
    device = dist.select_device(config["train"]["device"], env or dist.Ranks())
    check_precision(config["train"]["precision"], device)
    names, spelled = execution_options(config["train"])
    execution.check(names, device, skip_other_devices=True, spelled=spelled)  # e.g. an untested torch
    spec = spec_from_dict(config["model"], where="config model")
    patch = tuple(config["data"]["patch_zyx"])
    check_input_size(spec, patch)
    heads = head_targets(config)
    check_targets(heads, (1.0, 1.0, 1.0))
    volumes = read_volumes(config["data"]["volumes"], config["data"]["model_voxel_size_nm"])
    min_fg = check_training_data(volumes, patch, [h.kind for h in heads], config["data"]["min_foreground"])
    init = None
    if config["train"]["init_from"]:
        from emtools.models import pretrained
        from emtools.models.checkpoint import read_checkpoint

        path = pretrained.resolve(config["train"]["init_from"])
        init = read_checkpoint(path)
        pretrained.check_compatible(init, spec, path)
        pretrained.check_voxel_size(init, volumes[0].voxel_size_nm, path, force=config["train"]["init_force"])
    return Prepared(dict(config), spec, heads, volumes, min_fg, device, init)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, each appended with a single write."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []

    def start(self, keep_until_step: int | None) -> None:
        """A fresh log, or (resuming) the existing one cut back to the checkpoint's step."""
        from emtools import io

        kept = []
        if keep_until_step is not None and os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if isinstance(record, dict) and record.get("step", 0) <= keep_until_step:
                        kept.append(record)
        with io.atomic_text(self.path) as handle:
            handle.writelines(json.dumps(r) + "\n" for r in kept)
        self.records = kept

    def append(self, record: dict) -> None:
        self.records.append(record)
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def execution_options(tcfg: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The ``train`` section's execution settings as option names (:mod:`emtools.models.execution`),
    and how the config spells each (for errors)."""
    names = execution.names_from_flags(precision=tcfg["precision"], channels_last=bool(tcfg["channels_last"]),
                                       onednn=bool(tcfg["onednn"]), winograd=bool(tcfg["winograd"]))
    spelled = {name: f"train.{name}=true" for name in ("channels_last", "onednn", "winograd")}
    spelled.update({p: f"train.precision={p}" for p in ("bf16", "fp16")})
    return names, spelled


def set_determinism(mode: str, device: torch.device) -> bool:
    """torch.use_deterministic_algorithms as train.deterministic says (auto: on for CPU); cudnn alike."""
    on = mode == "true" or (mode == "auto" and device.type == "cpu")
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not on
        torch.backends.cudnn.deterministic = on
    return on


def seed_everything(seed: int, rank: int, stream: int = 3) -> None:
    """Seed Python, numpy and torch for one rank (``stream`` keeps the trainers' seeds apart)."""
    value = int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def checkpoint_extra(config: Mapping, prepared: Prepared, norm: dict, step: int, loss: float | None,
                     validation: dict | None, world_size: int) -> dict:
    """The ``extra`` that em-predict reads (heads, normalisation, voxel size, input size, step, ...)."""
    specs = [head_spec(h.name, {"kind": h.kind, "channels": h.channels, "offsets": [list(o) for o in h.offsets] or None})
             for h in prepared.heads]
    return {
        "heads": heads_to_dict(specs),
        "normalization": dict(norm),
        "voxel_size_nm": list(prepared.volumes[0].voxel_size_nm),
        "input_size_zyx": list(config["data"]["patch_zyx"]),
        "step": int(step),
        "config_sha256": digest(config),
        "targets": {name: dict(t) for name, t in config["targets"].items()},
        "loss": loss,
        "validation": validation,
        "world_size": int(world_size),
    }


def train(config: Mapping[str, Any], run_dir: str, env: dist.Ranks | None = None, resume: dict | None = None,
          on_step: Callable[[dict], None] | None = None, prepared: Prepared | None = None) -> RunResult:
    """Train as ``config`` says, writing into ``run_dir`` (rank 0); ``resume``: a checkpoint payload."""
    env = env or dist.Ranks()
    tcfg, ocfg, dcfg, vcfg = config["train"], config["optim"], config["data"], config["validation"]
    prepared = prepared or prepare(config, env)
    device = prepared.device
    # Global torch settings are restored afterwards, so that a library caller keeps its own.
    before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    set_determinism(tcfg["deterministic"], device)
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    dist.init_process_group(env, device)
    try:
        return _train(config, run_dir, env, device, resume, on_step, prepared, tcfg, ocfg, dcfg, vcfg)
    except RuntimeError:
        # A signal to the process group also reaches the DataLoader workers; their death must
        # not hide the interrupt itself.
        interrupt.check()
        raise
    finally:
        dist.destroy(env)
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


def _train(config, run_dir, env, device, resume, on_step, prepared, tcfg, ocfg, dcfg, vcfg) -> RunResult:
    seed, steps, batch_size = int(config["seed"]), int(tcfg["steps"]), int(dcfg["batch_size"])
    spec, heads = prepared.spec, prepared.heads
    seed_everything(seed, env.rank)
    model = build_model(spec, seed=seed)
    norm = None
    if resume is not None:
        st.check_same_spec(resume, spec, os.path.join(run_dir, st.LAST))
        model.load_state_dict(resume["state_dict"])
        norm = resume.get("extra", {}).get("normalization")
    elif prepared.init is not None:
        # Fine-tuning keeps the normalisation the weights were trained with (and predicted pseudo-labels with).
        from emtools.models.pretrained import load_for_finetuning

        fresh = load_for_finetuning(model, prepared.init)
        if fresh and env.is_main:
            log.info("heads %s start from fresh weights (the checkpoint lacks them)", ", ".join(fresh))
        norm = (prepared.init.get("extra") or {}).get("normalization")
    if norm is None:
        norm = fit_image_normalization(prepared.volumes, seed)
    model.to(device)
    names, spelled = execution_options(tcfg)
    # CPU-only options in a config are left out on a GPU, so that one config runs on both
    run = execution.apply(model, names, device, skip_other_devices=True, spelled=spelled)
    peak = scaled_lr(ocfg["lr"], env.world_size, ocfg["lr_scaling"])
    optimizer = build_optimizer(ocfg["name"], model.parameters(), peak, ocfg["weight_decay"], ocfg["momentum"],
                                tuple(ocfg["betas"]))
    schedule = Schedule(ocfg["schedule"], peak, steps, ocfg["warmup_steps"], ocfg["min_lr_ratio"],
                        ocfg["step_every"], ocfg["gamma"])
    scaler = grad_scaler(device, tcfg["precision"])
    start, best, resumed_val = 0, None, None
    if resume is not None:
        training = resume["training"]
        optimizer.load_state_dict(training["optimizer"])
        schedule.load_state_dict(training["schedule"])
        if scaler is not None and training.get("scaler"):
            scaler.load_state_dict(training["scaler"])
        rngs = training.get("rng") or []
        if env.rank < len(rngs):
            st.set_rng_state(rngs[env.rank], device)
        saved_world = int(training.get("sampler", {}).get("world_size", env.world_size))
        if saved_world != env.world_size:
            log.warning("warning: resuming on %d ranks a run saved on %d: it continues, but not exactly as "
                        "the original would have", env.world_size, saved_world)
        start, best, resumed_val = int(training["step"]), training.get("best"), training.get("validation")
    net = dist.wrap_model(model, env, device, bool(tcfg["sync_batchnorm"]))
    sampler = PatchSampler(prepared.volumes, dcfg["patch_zyx"], heads, norm, dcfg["augment"], seed,
                           prepared.min_foreground, dcfg["foreground_tries"])
    validating = int(vcfg["every"]) > 0
    regions = validation_regions(prepared.volumes, heads, norm) if validating and env.is_main else []
    best_metric = vcfg["best_metric"] if vcfg["best_metric"] != "auto" else default_best_metric(heads)
    overlap = vcfg["overlap_zyx"] or [p // 4 for p in dcfg["patch_zyx"]]
    metrics = MetricsLog(os.path.join(run_dir, METRICS))
    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        st.remove_stale_temporaries(run_dir)  # a killed run's half-placed checkpoint
        metrics.start(start if resume is not None else None)
    dist.barrier(env)

    last_path = os.path.join(run_dir, st.LAST) if resume is not None else None
    last_saved, last_loss, last_val = start, None, resumed_val
    best_path = os.path.join(run_dir, st.BEST) if best is not None else None
    voxels = int(np.prod(dcfg["patch_zyx"]))

    paused = 0.0  # seconds of checkpointing and validation, left out of the throughput

    def save(step: int) -> None:
        nonlocal last_path, last_saved, paused
        began = time.perf_counter()
        training = {
            "step": step, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": dist.gather_objects(st.rng_state(device), env),
            "sampler": {"next_index": step * batch_size * env.world_size, "world_size": env.world_size,
                        "batch_size": batch_size},  # next_index: global (emtools.train.sampling)
            "config": json.loads(json.dumps(config)), "best": best, "validation": last_val,
        }
        if env.is_main:
            extra = checkpoint_extra(config, prepared, norm, step, last_loss, last_val, env.world_size)
            last_path = st.write_checkpoint(run_dir, step, model, spec, extra, training, int(tcfg["keep"]))
        last_saved = step
        paused += time.perf_counter() - began

    def validate(step: int) -> None:
        nonlocal best, best_path, last_val, paused
        began = time.perf_counter()
        if env.is_main and regions:
            scores = evaluate(model, regions, heads, dcfg["patch_zyx"], overlap, device, tcfg["precision"],
                              vcfg["thresholds"], int(vcfg["min_size"]), vcfg["seeds"])
            last_val = scores
            metrics.append({"step": step, "split": "val", **scores})
            value = scores.get(best_metric)
            if value is not None and is_better(best_metric, value, best["value"] if best else None):
                best = {"metric": best_metric, "value": value, "step": step}
                extra = checkpoint_extra(config, prepared, norm, step, last_loss, scores, env.world_size)
                best_path = st.write_best(run_dir, model, spec, extra)
            if on_step is not None:
                on_step({"step": step, "steps": steps, "split": "val", **scores})
        dist.barrier(env)
        paused += time.perf_counter() - began

    net.train()
    loader = make_loader(sampler, batch_size, start + 1, steps, int(dcfg["num_workers"]), env.rank, env.world_size)
    window_start, window_steps = time.perf_counter(), 0
    sums = np.zeros(len(heads) + 1)
    budget_s = float(tcfg["minutes"]) * 60.0 if tcfg["minutes"] is not None else None
    began_training, last_step = time.perf_counter(), start
    spent_before = schedule.time_fraction  # a resumed run spends what its budget has left
    for step, batch in zip(range(start + 1, steps + 1), loader):
        interrupt.check()
        lr = schedule.apply(optimizer, step)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch["image"] = run.input(batch["image"])
        with run.autocast():
            output = net(batch["image"])
        loss, parts = total_loss(heads, split_heads(spec, output), batch)
        # rank 0's share of the time budget rides along, so that every rank stops at the same step
        spent = spent_before + (time.perf_counter() - began_training) / budget_s if budget_s and env.is_main else 0.0
        values = torch.tensor([float(loss.detach()), *(float(parts[h.name].detach()) for h in heads),
                               0.0 if torch.isfinite(loss).item() else 1.0, spent], dtype=torch.float64)
        values = dist.all_reduce_sum(values.to(device), env).cpu()
        spent = float(values[-1])
        values = values[:-1]
        if values[-1] > 0:
            stop_non_finite(step, float(loss.detach()), last_path, last_saved, metrics, env)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if ocfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(ocfg["grad_clip"]))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        mean = (values[:-1] / env.world_size).numpy()
        sums += mean
        window_steps += 1
        last_loss = float(mean[0])
        last_step, schedule.time_fraction = step, min(1.0, spent)
        final = step == steps or spent >= 1.0
        if step % int(tcfg["log_every"]) == 0 or final:
            elapsed = max(time.perf_counter() - window_start - paused, 1e-9)
            rate = window_steps * batch_size * env.world_size / elapsed
            record = {"step": step, "split": "train", "loss": float(sums[0] / window_steps), "lr": lr,
                      **{f"{h.name}.loss": float(sums[i + 1] / window_steps) for i, h in enumerate(heads)},
                      "samples_per_s": rate, "voxels_per_s": rate * voxels}
            if env.is_main:
                metrics.append(record)
            window_start, window_steps, sums, paused = time.perf_counter(), 0, np.zeros(len(heads) + 1), 0.0
        if on_step is not None and env.is_main:
            on_step({"step": step, "steps": steps, "split": "step", "loss": last_loss, "lr": lr})
        # Validation first: the checkpoint of this step then holds its scores and the best so far.
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


def stop_non_finite(step: int, value: float, last_path: str | None, last_saved: int, metrics: MetricsLog,
                     env: dist.Ranks) -> None:
    what = "NaN" if value != value else ("Inf" if value in (float("inf"), float("-inf")) else "not finite on a rank")
    if last_path is not None and last_saved > 0:
        kept = f"the last good checkpoint is {last_path} (step {last_saved})"
    else:
        kept = "no checkpoint was written before it"
    if env.is_main:
        metrics.append({"step": step, "split": "error", "error": f"loss {what}"})
    raise EmError(f"loss is {what} at step {step}; stopped (lower optim.lr or set optim.grad_clip); {kept}")
