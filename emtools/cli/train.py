"""em-train: train a segmentation model on EM volumes (one CPU to many GPUs under torchrun)."""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from emtools.cli.common import contract, emit, log, version_option
from emtools.errors import EmError
from emtools.models.weights import PRETRAINED

TOOL = "em-train"

HELP = """Train a segmentation model (rsunet, rsunet-efficient, unet3d, unet2d, or a flood-filling
network: ffn, ffn-small, ffn-aniso) on image volumes with labels, as the YAML --config
and the KEY=VALUE overrides say; write
checkpoints, metrics.jsonl and optional curves into RUN_DIR (-o). Prints the paths of the
final checkpoints (last.pt, best.pt) on stdout.

Overrides set any config key by its dotted path; list entries by index:
train.steps=2000, model=rsunet-efficient (sets model.name), model.widths=24,64,192,
model.heads=affinity:3,foreground:1, data.patch_zyx=18,160,160,
data.volumes.0.image=raw.h5:/raw, data.volumes.0.val_region='last 5 z',
targets.foreground.loss=bce+dice, data.augment=flip,rotate,elastic, optim.lr=3e-4.
Values take the type of their key; none clears an optional key; structured values may be
YAML flow text ('data.augment=[[elastic, {p: 0.3}]]'). An unknown key is an error naming
the closest valid one. --print-config shows every key with its value.

Each head of the model learns a target (targets.HEAD.kind: affinity, boundary, foreground,
contour, cleft, distance, semantic, lsd), computed from the labels after augmentation, with
its loss (bce, dice, bce+dice; mse or l1 on tanh for distances and on the sigmoid for lsd,
the local shape descriptors; ce for semantic) and weight. Crops are drawn outside each
volume's val_region ('last 5 z', 'z0:z1,y0:y1,x0:x1', 'all'); the model is validated
there every validation.every steps by a sliding window: losses, adapted Rand / VOI of a
quick watershed for affinity and boundary heads, voxel precision / recall / F1 for
foreground-like heads. best.pt keeps the best. A volume may
carry a predicted probability map (probabilities:) instead of labels: its confident voxels
train one head (self-training; examples/self_training.md).

Checkpoints (step_N.pt every train.checkpoint_every steps, the newest train.keep kept;
last.pt) load with emtools.models.checkpoint.load_model and carry the heads, the image
normalisation, the voxel size and the input size that em-predict uses, plus the training
state: --resume continues exactly where last.pt stopped (same weights as a run never
stopped, on CPU in deterministic mode). A NaN/Inf loss stops the run with exit 1, keeping
the checkpoints written before it.

A flood-filling network (model=ffn) learns to grow the object at the centre of a training
patch (FOV + 2 x deltas): centres drawn equally from the partitions of each voxel's
same-object fraction, soft targets 0.95 / 0.05, the FOV moving within the patch
(ffn.fov_policy=fixed or max_pred_moves) with each prediction written back into the object
map; data.batch_size examples in flight per rank; ffn.* holds its settings (other models
ignore them). It logs loss, voxel accuracy, precision, recall and F1 of the object map at
0.9 and FOVs/s; validation grows ffn.val_examples examples in the val_region.

Under torchrun (one node or several) the ranks split one global batch of data.batch_size x
WORLD_SIZE crops (the crops one process with that batch would draw), gradients are averaged
(DDP: gloo on CPU, NCCL on cuda:LOCAL_RANK) and only global rank 0 writes (RUN_DIR on a
shared file system for several nodes); optim.lr_scaling=linear or sqrt scales the rate with
the number of workers (use warm-up).

\b
Examples:
  em-train --config examples/train_isbi.yaml -o runs/isbi
  em-train --config c.yaml train.steps=2000 model=rsunet-efficient data.patch_zyx=18,160,160 -o run
  em-train --config c.yaml --print-config > resolved.yaml
  em-train -o runs/isbi --resume train.steps=20000
  em-train --init fibsem-affinity --config examples/fibsem_finetune.yaml -o runs/mine
  em-train --config c.yaml model=ffn-small data.batch_size=4 ffn.fov_policy=max_pred_moves -o runs/ffn
  torchrun --nproc-per-node=4 -m emtools.cli.train --config c.yaml optim.lr_scaling=linear -o run
  torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=$HOST:29400 \\
      --rdzv-id=run1 -m emtools.cli.train --config c.yaml -o run     # on each of the 2 nodes
"""


class StatusLine:
    """One self-rewriting line on stderr (a terminal): step, loss, samples/s (FOVs/s for an FFN)."""

    def __init__(self, batch: int, world: int, unit: str = "samples"):
        self.batch, self.world, self.unit = batch, world, unit
        self.mark_step: int | None = None  # the rate counts from here (start, or after a validation)
        self.mark_time = time.perf_counter()
        self.width = 0

    def __call__(self, info: dict) -> None:
        now = time.perf_counter()
        if info["split"] != "step":
            self.clear()
            log.info(_val_line(info))
            self.mark_step, self.mark_time = info["step"], time.perf_counter()
            return
        if self.mark_step is None:
            self.mark_step, self.mark_time = info["step"], now
        done = info["step"] - self.mark_step
        rate = f"{done * self.batch * self.world / max(now - self.mark_time, 1e-9):.2f} {self.unit}/s" if done else ""
        text = f"step {info['step']}/{info['steps']}  loss {info['loss']:.4g}  {rate}".rstrip()
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = len(text)

    def clear(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


class LogLines:
    """A log line every ``every`` steps (stderr is not a terminal)."""

    def __init__(self, every: int, batch: int, world: int, unit: str = "samples"):
        self.every, self.batch, self.world, self.unit = every, batch, world, unit
        self.mark = time.perf_counter()
        self.losses: list[float] = []

    def __call__(self, info: dict) -> None:
        if info["split"] != "step":
            log.info(_val_line(info))
            self.mark = time.perf_counter()  # validation time is not training throughput
            return
        self.losses.append(info["loss"])
        if info["step"] % self.every and info["step"] != info["steps"]:
            return
        now = time.perf_counter()
        rate = len(self.losses) * self.batch * self.world / max(now - self.mark, 1e-9)
        log.info("step %d/%d loss %.4g lr %.3g %.2f %s/s", info["step"], info["steps"],
                 sum(self.losses) / len(self.losses), info["lr"], rate, self.unit)
        self.mark, self.losses = now, []


def _val_line(info: dict) -> str:
    shown = [f"{k} {v:.4g}" for k, v in info.items()
             if k not in ("step", "steps", "split") and isinstance(v, float) and not k.endswith(".threshold")]
    return f"validation at step {info['step']}: " + ", ".join(shown[:8])


@click.command(help=HELP)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML configuration (defaults for every key not given; see --print-config).")
@click.option("-o", "--output", "run_dir", default=None, help="Run folder (or the config key run_dir).")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last.pt (config from the checkpoint, plus --config and overrides).")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration as YAML on stdout and exit.")
@click.option("--plot", default=None, help="Write loss/metric curves to this PNG at the end (config key train.plot).")
@click.option("--seed", type=int, default=None, help="Seed of weights, sampling and augmentation (config key seed).")
@click.option("--init", "init", default=None, metavar="NAME|CHECKPOINT",
              help="Fine-tune: start from a shipped model (" + ", ".join(PRETRAINED) + ") or a "
                   "checkpoint; its model, targets and crop are the defaults (config key train.init_from).")
@click.option("--force", is_flag=True, help="With --init: train at the data's own voxel size even when it differs "
              "from the checkpoint's (no averaging to it; config key train.init_force).")
@version_option(TOOL)
@contract(TOOL)
def main(overrides, config_path, run_dir, resume, print_config, plot, seed, init, force):
    from emtools.ranks import ranks_from_env
    from emtools.train import config as cfg

    env = ranks_from_env()
    if not env.is_main:
        log.setLevel(logging.WARNING)
    overrides = list(overrides)
    if seed is not None:
        overrides.append(f"seed={seed}")
    if plot is not None:
        overrides.append(f"train.plot={plot}")
    if force:
        overrides.append("train.init_force=true")
    payload = None
    if init is not None and resume:
        raise EmError("--init starts a new run from a checkpoint's weights; --resume continues RUN_DIR: use one")
    if resume:
        from emtools.train import state

        base_dir = run_dir or _run_dir_from(config_path, overrides)
        if base_dir is None:
            raise EmError("--resume needs the run folder: -o RUN_DIR")
        last = os.path.join(base_dir, state.LAST)
        if not os.path.exists(last):
            raise EmError(f"--resume: no checkpoint to resume from ({last})")
        payload = state.read_resume(last)
        config = cfg.load_config(config_path, overrides, base=payload["training"]["config"])
    elif init is not None:
        from emtools.models import pretrained
        from emtools.models.checkpoint import read_checkpoint

        path = pretrained.resolve(init)
        base = pretrained.config_base(read_checkpoint(path), force=force)
        config = cfg.load_config(config_path, overrides + [f"train.init_from={path}"], base=base)
    else:
        config = cfg.load_config(config_path, overrides)
    run_dir = run_dir or config["run_dir"]
    config["run_dir"] = run_dir
    if print_config:
        if env.is_main:
            sys.stdout.write(cfg.to_yaml(config))
            sys.stdout.flush()
        return
    if run_dir is None:
        raise EmError("no run folder: give -o RUN_DIR (or run_dir in the config)")
    _check_run_dir(run_dir, resume)
    _train(config, run_dir, env, payload)


def _run_dir_from(config_path, overrides):
    from emtools.train import config as cfg

    raw = cfg.apply_overrides(cfg.load_yaml(config_path) if config_path else {}, overrides)
    return raw.get("run_dir")


def _check_run_dir(run_dir: str, resume: bool) -> None:
    from emtools.train import state

    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise EmError(f"the run folder is a file ({run_dir})")
    if not resume and os.path.exists(os.path.join(run_dir, state.LAST)):
        raise EmError(f"{run_dir} already holds a run (last.pt); use --resume to continue it or another -o")


def _progress(config: dict, world: int, unit: str = "samples"):
    batch = config["data"]["batch_size"]
    if log.level > logging.INFO:
        return None
    if sys.stderr.isatty():
        return StatusLine(batch, world, unit)
    return LogLines(config["train"]["log_every"], batch, world, unit)


def _train(config: dict, run_dir: str, env, payload) -> None:
    from emtools.train.state import check_same_spec

    ffn = config["model"].get("arch") == "ffn"
    if ffn:  # a flood-filling network: emtools.ffn.training
        from emtools.ffn.training import prepare_ffn, train_ffn

        prepared = prepare_ffn(config, env)
        run_training = train_ffn
        shape = f"patch {','.join(map(str, prepared.settings.patch_zyx))}, {config['ffn']['fov_policy']} FOV policy"
    else:
        from emtools.train import loop
        from emtools.train.schema import SCHEMA, convert

        prepared = loop.prepare(config, env)  # every input checked before RUN_DIR is touched
        run_training = loop.train
        shape = f"crop {','.join(map(str, config['data']['patch_zyx']))}"
        if any(config.get("ffn", {}).get(k) != convert(f"ffn.{k}", field, field.default)
               for k, field in SCHEMA["ffn"].items()):
            log.warning("warning: the ffn.* settings are for flood-filling networks (model=ffn); "
                        "this %s run ignores them", prepared.spec.name)
    if payload is not None:
        check_same_spec(payload, prepared.spec, os.path.join(run_dir, "last.pt"))
    world = env.world_size
    on_step = _progress(config, world, "FOVs" if ffn else "samples")
    log.info("%s; %d volume(s); %s; %d step(s) on %d rank(s)", prepared.spec.describe(),
             len(prepared.volumes), shape, config["train"]["steps"], world)
    try:
        result = run_training(config, run_dir, env, resume=payload, on_step=on_step, prepared=prepared)
    finally:
        if isinstance(on_step, StatusLine):
            on_step.clear()
        if env.is_main and config["train"]["plot"]:
            _plot(run_dir, config["train"]["plot"])
    if env.is_main:
        for path in (result.last, result.best):
            if path:
                emit(path)


def _plot(run_dir: str, path: str) -> None:
    import json

    from emtools.train.plots import write_curves

    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        return
    with open(metrics) as handle:
        records = [json.loads(line) for line in handle if line.strip().startswith("{")]
    write_curves(records, path, title=run_dir)


if __name__ == "__main__":
    main()
