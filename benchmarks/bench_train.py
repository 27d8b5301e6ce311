"""em-train benchmarks: throughput on 1 and 2 ranks, real-data runs on ISBI 2012 and gala, and
rsunet vs rsunet-efficient on one schedule.

    python benchmarks/bench_train.py [--quick] [--only throughput,isbi,gala,models,models3d,models-vnc]
                                     [--out DIR]
                                     [--budget-min 16] [--json results.json]
                                     [--models-steps N] [--models-seeds 0,1] [--models rsunet,rsunet-efficient,...]
                                     [--models-reuse] [--models-augment light|config]

(a) throughput: training samples/s and voxels/s of one model and crop, one process (1 and 2
    threads) vs 2 ranks under torchrun (gloo, 1 thread each) on a synthetic volume.
(b) isbi: examples/train_isbi.yaml on slices 0-24 of ISBI 2012 within the time budget; the
    boundaries predicted for slices 25-29 (never seen in training) are segmented per section by
    emtools.segment.watershed and scored (adapted Rand error, VOI) against the ground truth (connected
    components of each section's interior), beside the same watershed of the raw intensity
    (inverted, normalised; and Gaussian-smoothed, a stronger baseline).
(c) gala: examples/train_gala.yaml (3D affinities) on z 0-33 of the gala FIB-SEM crop; z 34-49
    segmented in 3D by the watershed, and by the watershed + agglomeration (mean affinity, the
    affinity pipeline's usual last step; the baselines are agglomerated on their own maps), beside
    the raw intensity and gala's own boundary probability map (train-p1, a classifier its
    authors trained on this very volume: a reference, not a peer).
(d) models: rsunet vs rsunet-efficient (the presets: the paper's widths) on ISBI with the same
    crop, schedule and number of steps: time per iteration and held-out accuracy; the efficient
    model also at its own best peak learning rate (4e-3 against the configs' 1e-3; see MODELS), and
    with its z pooling one level lower, the geometry for 50 nm sections, at 4e-3, 2e-3 and 1e-3,
    and with 32 channels at level 0 at 1e-3: the model that beats the baseline on (f) over three
    seeds, also when trained in bf16 (CPUs with bf16 units; SSTEM_MODELS).
(e) models3d: the same two models on gala (isotropic FIB-SEM, affinities, crop 16x64x64), scored
    by 3D watershed alone and with agglomeration.
(f) models-vnc: the (d) comparison on drosophila_vnc stack 1 (ssTEM, 50x4.6x4.6 nm, 1024x1024
    sections; 16 sections train, 2.6x ISBI's training voxels; sections 16-19 held out) with the
    same crop, config and models: how the gap between the two moves with more training data.
(d), (e) and (f) train each model once per ``--models-seeds`` seed (weights, sampling,
    augmentation) and report each run and the mean, with the held-out voxel accuracy and BCE of
    the trained head (the paper's table reports an accuracy). ``--models-reuse`` scores finished
    runs of the same configuration again. ``--models-augment config`` trains them with the example
    config's full augmentation list instead of flips (+ grayscale on ssTEM), into
    ``models-aug-*`` / ``models3d-aug-*`` / ``models-vnc-aug-*`` runs.

Every segmentation score is the best over the same sweep of watershed settings (seed
thresholds x seed methods), for ours and for the baselines alike, plus the score at the fixed
default (components seeds, threshold 0.5). The number of steps of a real-data run is fitted to
``--budget-min`` minutes of training from a short calibration run (the model's time per step
on this machine). ``--quick`` runs every part in about 1-3 minutes with few steps: it proves
the pipeline, not the accuracy. Results go to stdout (a table per part) and ``--json``; logs to
stderr. Runs and checkpoints are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ISBI = DATA / "isbi2012"
GALA = DATA / "gala"
VNC = DATA / "drosophila_vnc" / "stack1"
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SEEDS = ("components", "distance")


def say(text: str) -> None:
    print(f"bench_train: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- running em-train

def em_train(args: list[str], nproc: int = 1, threads: int | None = None) -> float:
    """Run em-train (under torchrun for ``nproc`` > 1); returns its wall seconds. Exits on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        args = [*args, f"train.threads={threads}"]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "emtools.cli.train", *args]
    else:
        command = [sys.executable, "-m", "emtools.cli.train", *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_train: em-train failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def records(run: Path, split: str) -> list[dict]:
    with open(run / "metrics.jsonl") as handle:
        return [r for r in map(json.loads, handle) if r.get("split") == split]


def steady_rate(run: Path) -> float:
    """Median samples/s over the logged windows after the first (warm-up)."""
    rates = [r["samples_per_s"] for r in records(run, "train")]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def fitted_steps(config: str, overrides: list[str], out: Path, budget_s: float, cap: int, floor: int = 20) -> tuple[int, float]:
    """Steps that fit ``budget_s`` of training, from a calibration run; (steps, seconds per step)."""
    run = fresh(out / "calibration")
    em_train(["--config", config, *overrides, "train.steps=12", "train.log_every=4", "validation.every=0",
              "train.checkpoint_every=1000", "-q", "-o", str(run)])
    seconds = 1.0 / steady_rate(run)
    return max(floor, min(cap, int(budget_s / seconds))), seconds


# ----------------------------------------------------------------------------- scoring

def sweep(boundary: np.ndarray, gt: np.ndarray, voxel_size_nm, mode: str, agglomerate_with=None) -> dict:
    """Best adapted Rand over THRESHOLDS x SEEDS, and the score at the default (components, 0.5).

    ``agglomerate_with``: ``{"affinities": a}`` or ``{"boundary": b}`` also agglomerates every
    watershed's fragments (mean score, THRESHOLDS in one pass: em-agglomerate segment) and
    reports the best of those as "agglomerated".
    """
    from emtools.segment.agglomerate import agglomerate
    from emtools.evaluate.neuron import neuron_metrics
    from emtools.segment.watershed import fragments

    boundary = np.ascontiguousarray(boundary, dtype=np.float32)
    results, merged = [], []
    for seeds in SEEDS:
        for threshold in THRESHOLDS:
            seg = fragments(boundary, seed_method=seeds, mode=mode, threshold=threshold, voxel_size_nm=voxel_size_nm,
                            min_seed_size=20, min_size=20)
            m = neuron_metrics(seg, gt)
            results.append({"seeds": seeds, "threshold": threshold, "adapted_rand_error": m["adapted_rand_error"],
                            "voi_split": m["voi_split"], "voi_merge": m["voi_merge"]})
            if agglomerate_with is None:
                continue
            segs, _ = agglomerate(seg, thresholds=THRESHOLDS, score="mean", **agglomerate_with)
            for merge_threshold, seg_t in zip(THRESHOLDS, segs):
                m = neuron_metrics(seg_t, gt)
                merged.append({"seeds": seeds, "threshold": threshold, "merge_threshold": merge_threshold,
                               "adapted_rand_error": m["adapted_rand_error"], "voi_split": m["voi_split"],
                               "voi_merge": m["voi_merge"]})
    best = min(results, key=lambda r: r["adapted_rand_error"])
    default = next(r for r in results if r["seeds"] == "components" and r["threshold"] == 0.5)
    out = {"best": best, "default": default}
    if merged:
        out["agglomerated"] = min(merged, key=lambda r: r["adapted_rand_error"])
    return out


def predicted_maps(checkpoint: Path, image: np.ndarray, patch_zyx) -> tuple[np.ndarray, np.ndarray | None]:
    """(boundary map, nearest-neighbour affinities or None) of a checkpoint's first affinity/boundary head."""
    import torch

    from emtools.models.checkpoint import load_model
    from emtools.normalize import normalize_image
    from emtools.train.sampling import HeadTarget
    from emtools.train.validate import _sigmoid, boundary_map, predict

    model, spec, extra = load_model(str(checkpoint))
    logits = predict(model.eval(), normalize_image(image, extra["normalization"]), spec.out_channels, patch_zyx,
                     [p // 4 for p in patch_zyx], torch.device("cpu"))
    start = 0
    for name, channels in spec.heads:
        info = extra["heads"][name]
        head = HeadTarget(name, info["kind"], channels, tuple(map(tuple, info.get("offsets", ()))))
        boundary = boundary_map(head, logits[start:start + channels])
        if boundary is not None:
            affinities = _sigmoid(logits[start:start + 3]) if head.kind == "affinity" else None
            return boundary, affinities
        start += channels
    raise SystemExit(f"bench_train: {checkpoint} has no affinity or boundary head")


def predicted_boundary(checkpoint: Path, image: np.ndarray, patch_zyx) -> np.ndarray:
    return predicted_maps(checkpoint, image, patch_zyx)[0]


def voxel_scores(checkpoint: Path, boundary: np.ndarray, affinities: np.ndarray | None, gt: np.ndarray) -> dict:
    """Held-out voxel accuracy and BCE of the first head against the target it was trained on.

    The paper's table reports such an accuracy; it is also far less noisy than segmentation
    scores, which hinge on a few merges. The target is built from ``gt`` with the kind, offsets
    and parameters the checkpoint recorded; voxels (or edges) the target marks invalid are left out.
    """
    import torch

    from emtools.targets import build_target

    extra = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["extra"]
    name = next(iter(extra["heads"]))
    target_info = extra["targets"][name]
    kind = target_info["kind"]
    if kind == "affinity":
        probability = affinities
        offsets = target_info.get("offsets")
    elif kind == "boundary":
        probability = boundary[None]
        offsets = None
    else:
        raise SystemExit(f"bench_train: no voxel score for a {kind} head")
    target, valid = build_target(kind, gt, offsets=offsets, voxel_size_nm=extra["voxel_size_nm"],
                                 **dict(target_info.get("params") or {}))
    target = target[: probability.shape[0]] > 0.5
    valid = valid[: probability.shape[0]] > 0
    p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -np.where(target, np.log(p), np.log1p(-p))
    correct = (probability > 0.5) == target
    return {"voxel_accuracy": float(correct[valid].mean()), "bce": float(bce[valid].mean()),
            "positive_fraction": float(target[valid].mean())}


def raw_boundary(image: np.ndarray, sigma_vx) -> np.ndarray:
    from scipy import ndimage

    values = image.astype(np.float32)
    values = 1.0 - (values - values.min()) / max(float(values.max() - values.min()), 1e-9)
    if any(sigma_vx):
        values = ndimage.gaussian_filter(values, sigma_vx)
    return values.astype(np.float32)


def row(name: str, scores: dict) -> str:
    b, d = scores["best"], scores["default"]
    return (f"{name:<34} {b['adapted_rand_error']:>8.4f} {b['voi_split']:>7.3f} {b['voi_merge']:>7.3f}"
            f"  {b['seeds']:<10} {b['threshold']:<4}  {d['adapted_rand_error']:>8.4f}")


HEADER = (f"{'boundary map':<34} {'ARAND':>8} {'VOIs':>7} {'VOIm':>7}  {'seeds':<10} {'thr':<4}  "
          f"{'ARAND@default':>8}")


# ----------------------------------------------------------------------------- (a) throughput

def bench_throughput(out: Path, quick: bool) -> dict:
    from emtools import io
    from emtools.meta import Metadata
    from emtools.synth import make_synthetic_volume

    data = out / "synthetic"
    data.mkdir(parents=True, exist_ok=True)
    v = make_synthetic_volume((24, 128, 128), seed=0, voxel_size_nm=(40, 4, 4), mean_cell_diameter_nm=200,
                              membrane_thickness_nm=12)
    io.write_volume(f"{data}/image.h5:/image", v.image, Metadata(voxel_size_nm=(40, 4, 4)))
    io.write_volume(f"{data}/gt.h5:/gt", v.neurons, Metadata(voxel_size_nm=(40, 4, 4)))
    steps = 16 if quick else 60
    patch = [8, 96, 96]
    common = [f"data.volumes.0.image={data}/image.h5:/image", f"data.volumes.0.labels={data}/gt.h5:/gt",
              "model=rsunet-efficient", "model.widths=8,24,64,64,64", "model.norm=group",
              f"data.patch_zyx={','.join(map(str, patch))}", f"train.steps={steps}", f"train.log_every={steps // 4}",
              "validation.every=0", "train.checkpoint_every=100000", "data.augment=flip", "-q"]
    voxels = int(np.prod(patch))
    results = {}
    for name, nproc, threads in (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
                                 ("2 ranks (gloo), 1 thread each", 2, 1)):
        run = fresh(out / f"throughput-{nproc}x{threads}")
        say(f"throughput: {name}, {steps} steps")
        wall = em_train([*common, "-o", str(run)], nproc=nproc, threads=threads)
        rate = steady_rate(run)
        results[name] = {"samples_per_s": rate, "voxels_per_s": rate * voxels, "wall_s": wall}
    base = results["1 process, 2 threads"]["samples_per_s"]
    print(f"\n(a) throughput: rsunet-efficient widths 8,24,64,64,64, crop {patch}, batch 1 per rank")
    print(f"{'setting':<32} {'samples/s':>10} {'Mvoxel/s':>9} {'vs 1x2':>7}")
    for name, r in results.items():
        print(f"{name:<32} {r['samples_per_s']:>10.3f} {r['voxels_per_s'] / 1e6:>9.3f} {r['samples_per_s'] / base:>6.2f}x")
    return {"patch_zyx": patch, "steps": steps, "results": results}


# ----------------------------------------------------------------------------- (b) ISBI, (c) gala

def train_real(name: str, config: str, overrides: list[str], quick_overrides: list[str], out: Path, quick: bool,
               budget_s: float) -> tuple[int, float, Path, Path]:
    """Train ``config`` for the budget (or a few steps); (steps, wall s, run folder, last checkpoint)."""
    if quick:
        overrides = [*overrides, *quick_overrides]
        steps, per_step = 30, None
    else:
        # 0.88: validation and checkpoints also take time, and the whole run must fit the budget
        steps, per_step = fitted_steps(config, overrides, out, budget_s * 0.88, cap=6000)
    every = max(10, steps // 4)
    run = fresh(out / name)
    say(f"{name}: {steps} steps" + (f" (~{per_step:.2f} s/step)" if per_step else ""))
    wall = em_train(["--config", config, *overrides, f"train.steps={steps}", f"validation.every={every}",
                     f"train.checkpoint_every={every}", "-q", "-o", str(run)])
    # The last checkpoint, not best.pt: best.pt is chosen by validation on the very region scored
    # here, which would flatter us against the baselines.
    return steps, wall, run, run / "last.pt"


def bench_isbi(out: Path, quick: bool, budget_s: float) -> dict:
    from emtools import io
    from emtools.train.data import label_components

    steps, wall, run, checkpoint = train_real(
        "isbi", "examples/train_isbi.yaml", [f"data.volumes.0.image={ISBI / 'image'}",
                                             f"data.volumes.0.labels={ISBI / 'label'}"],
        ["model.widths=8,16,32,64,128", "data.augment=flip"], out, quick, budget_s)
    image, _ = io.read_volume(str(ISBI / "image"))
    labels, _ = io.read_volume(str(ISBI / "label"))
    test_image, gt = image[25:30], label_components(labels[25:30], "2d")
    ours = sweep(predicted_boundary(checkpoint, test_image, [2, 256, 256]), gt, (50, 4, 4), "2d")
    raw = sweep(raw_boundary(test_image, (0, 0, 0)), gt, (50, 4, 4), "2d")
    smooth = sweep(raw_boundary(test_image, (0, 2, 2)), gt, (50, 4, 4), "2d")
    print(f"\n(b) ISBI 2012, slices 25-29 held out; {steps} steps in {wall / 60:.1f} min ({checkpoint.name}); "
          "per-section watershed")
    print(HEADER)
    print(row("em-train (unet2d boundary)", ours))
    print(row("raw intensity, inverted", raw))
    print(row("raw intensity, inverted, gauss 2", smooth))
    return {"steps": steps, "wall_s": wall, "checkpoint": str(checkpoint), "ours": ours, "raw": raw,
            "raw_gauss2": smooth, "validation": records(run, "val")}


# ----------------------------------------------------------------------------- (c) gala

def bench_gala(out: Path, quick: bool, budget_s: float) -> dict:
    from emtools import io

    steps, wall, run, checkpoint = train_real(
        "gala", "examples/train_gala.yaml", [f"data.volumes.0.image={GALA / 'train-image.h5'}:stack",
                                             f"data.volumes.0.labels={GALA / 'train-gt.lzf.h5'}:stack"],
        ["model.widths=8,16,32,64", "data.augment=flip"], out, quick, budget_s)
    image, _ = io.read_volume(f"{GALA / 'train-image.h5'}:stack")
    gt, _ = io.read_volume(f"{GALA / 'train-gt.lzf.h5'}:stack")
    p1, _ = io.read_volume(f"{GALA / 'train-p1.lzf.h5'}:stack")
    held = slice(34, 50)
    gt = gt[held].astype(np.uint64)
    boundary, affinities = predicted_maps(checkpoint, image[held], [16, 64, 64])
    ours = sweep(boundary, gt, (10, 10, 10), "3d", {"affinities": affinities})
    raw_map = raw_boundary(image[held], (0, 0, 0))
    raw = sweep(raw_map, gt, (10, 10, 10), "3d", {"boundary": raw_map})
    smooth_map = raw_boundary(image[held], (1, 1, 1))
    smooth = sweep(smooth_map, gt, (10, 10, 10), "3d", {"boundary": smooth_map})
    reference = sweep(p1[held], gt, (10, 10, 10), "3d", {"boundary": p1[held]})
    print(f"\n(c) gala FIB-SEM, z 34-49 held out; {steps} steps in {wall / 60:.1f} min ({checkpoint.name}); 3D watershed")
    print(HEADER)
    print(row("em-train (unet3d affinities)", ours))
    print(row("raw intensity, inverted", raw))
    print(row("raw intensity, inverted, gauss 1", smooth))
    print(row("gala train-p1 (trained on it)", reference))
    print("3D watershed + agglomeration (mean affinity; best seed threshold x merge threshold):")
    print(f"{'boundary map':<34} {'ARAND':>8} {'VOIs':>7} {'VOIm':>7}  {'seeds':<10} {'thr':<4} {'merge':>5}")
    for name, scores in (("em-train (unet3d affinities)", ours), ("raw intensity, inverted", raw),
                         ("raw intensity, inverted, gauss 1", smooth), ("gala train-p1 (trained on it)", reference)):
        a = scores["agglomerated"]
        print(f"{name:<34} {a['adapted_rand_error']:>8.4f} {a['voi_split']:>7.3f} {a['voi_merge']:>7.3f}  "
              f"{a['seeds']:<10} {a['threshold']:<4} {a['merge_threshold']:>5}")
    return {"steps": steps, "wall_s": wall, "checkpoint": str(checkpoint), "ours": ours, "raw": raw,
            "raw_gauss1": smooth, "gala_p1_reference": reference, "validation": records(run, "val")}


# ----------------------------------------------------------------------------- (d) models

# The presets at the paper's widths, given explicitly (the example configs set widths of their own
# models, which would otherwise carry over). Half these widths (an earlier version, to save time)
# is no faster for rsunet here: its thin layers are bound by memory traffic, not FLOPs. Both
# train on oneDNN (train.onednn: the same arithmetic to float tolerance, ~1.6x faster here).
# Each model also at its own best peak learning rate of a sweep on (e), 800 steps, seed 0
# (held-out voxel accuracy %): rsunet 1e-3 91.45, 2e-3 91.32; rsunet-efficient 5e-4 (loss higher
# at every log, not scored), 1e-3 90.56, 2e-3 90.86, 4e-3 90.94. The configs' 1e-3 suits rsunet;
# the efficient model (12.3M parameters against 1.9M, most of them in the 192-channel levels)
# wants 4x that, so "-lr4e-3" is the efficient model on the same schedule at its own rate.
MODELS = {
    "rsunet": ["model=rsunet", "model.widths=24,32,48,72,104", "train.onednn=true"],
    "rsunet-efficient": ["model=rsunet-efficient", "model.widths=24,64,192,192,192", "train.onednn=true"],
    "rsunet-efficient-lr4e-3": ["model=rsunet-efficient", "model.widths=24,64,192,192,192", "train.onednn=true",
                                "optim.lr=0.004"],
}
# (d), (f) only: ISBI's 50 nm sections are 6x its 8 nm pixels after the strided entry conv, so the
# preset's z-halving at the top blurs neighbouring sections into the level-1 features (the preset
# assumes SNEMI3D's 30x12x12 nm there). One level lower (1x2x2 first, 2x2x2 second) the efficient
# model gained 1.1 points of held-out accuracy on ISBI (seed 0, 800 steps; rsunet's pools, z
# halved at the bottom, gained 0.4 at 1.75x the FLOPs). At 18x160x160 this geometry
# costs 265 GFLOP per iteration against the preset's 222 and rsunet's 378.
# On ssTEM 2e-3 suits it better than 4e-3: seed 0, 800 steps, zpool2, held-out accuracy +1.46
# points on VNC (f) and +0.32 on ISBI, training loss at step 798 on VNC 0.496 against 0.544
# (rsunet 0.487). Seed 1 on VNC at 2e-3 still ended 1.68 points under rsunet (loss 0.572 against
# 0.526): one seed of each, so a lead, not a settled rate. On gala 2e-3 and 4e-3 were within 0.1.
# At 1e-3 (VNC, seed 0) it ends level with 2e-3 (accuracy 91.42 against 91.49, ARAND 0.052 against
# 0.061, loss 0.501) and seed 1 ends higher (91.13 against 90.19, ARAND 0.062 against 0.071): mean
# of seeds 0,1 91.28 against rsunet's 91.83, a gap of 0.55 where 2e-3 left 0.99. Widening level 0
# from 24 to 32 channels (the one level the balanced growth leaves thinner than rsunet's) at 1e-3,
# seed 0: 91.56, ARAND 0.033 (rsunet 91.79, 0.041), at 0.383 s/step against 0.367 (separate runs).
# Seeds 1 and 2 of that model: 92.46 / ARAND 0.041 and 92.04 / 0.045; rsunet seed 2: 90.73 / 0.064.
# Over seeds 0-2 the w32 model averages 92.02 and ARAND 0.040 against rsunet's 91.46 and 0.050:
# it beats the baseline's ARAND on every seed and its accuracy on two of three. On ISBI (d), seeds
# 0, 1: 90.26 / 0.164 and 89.64 / 0.124 against rsunet's 90.31 / 0.191 and 89.22 / 0.128 (means
# 89.95 / 0.144 against 89.77 / 0.159), at 0.386 s/step against 0.871 (seed 1, one run). It
# costs 306 GFLOP per 18x160x160 iteration (rsunet 378) and was 4.1x faster than eager rsunet
# there on an AMX-less CPU in fp32 (bench_models.py, head to head; the preset geometry 5.0x). A full-resolution stage after
# the transposed conv instead of the wider level 0 (transposed conv to 16 channels + a 1x3x3 conv
# of the raw input, norm, act, 1x3x3 conv to the heads; w24, 1e-3; not kept) scored lower:
# 90.80 / 0.068 and 90.51 / 0.070 on seeds 0, 1.
SSTEM_POOLS = "model.pools=1x2x2,2x2x2,1x2x2,1x2x2"
SSTEM_MODELS = {
    "rsunet-efficient-lr4e-3-zpool2": [*MODELS["rsunet-efficient-lr4e-3"], SSTEM_POOLS],
    "rsunet-efficient-lr2e-3-zpool2": [*MODELS["rsunet-efficient"], "optim.lr=0.002", SSTEM_POOLS],
    "rsunet-efficient-lr1e-3-zpool2": [*MODELS["rsunet-efficient"], SSTEM_POOLS],
    # the later widths override the preset's (em-train applies overrides in order)
    "rsunet-efficient-w32-lr1e-3-zpool2": [*MODELS["rsunet-efficient"], "model.widths=32,64,192,192,192", SSTEM_POOLS],
}
# The same model trained in bf16 autocast (CPUs with bf16 units, e.g. AMX; the fastest option
# em-profile finds on such a CPU): does the precision cost accuracy? Not on VNC (f), 800 steps,
# seeds 0-2: 91.64 / ARAND 0.033, 92.45 / 0.041, 92.05 / 0.048, mean 92.04 / 0.041, against the same
# model in fp32 92.02 / 0.040 and rsunet 91.46 / 0.050; nor on ISBI (d), seeds 0, 1: 90.25 / 0.165,
# 89.64 / 0.126, mean 89.94 / 0.145, against 89.95 / 0.144 in fp32 and rsunet's 89.77 / 0.159
# (scored in fp32 like every run here).
SSTEM_MODELS["rsunet-efficient-w32-lr1e-3-zpool2-bf16"] = [*SSTEM_MODELS["rsunet-efficient-w32-lr1e-3-zpool2"],
                                                           "train.precision=bf16"]
# --quick: three levels; these replace the model's own widths (and pools).
QUICK_ZPOOL2 = ["model.widths=24,64,192", "model.pools=1x2x2,2x2x2"]
QUICK_SHAPES = {"rsunet": ["model.widths=24,32,48"], "rsunet-efficient": ["model.widths=24,64,192"],
                "rsunet-efficient-lr4e-3": ["model.widths=24,64,192"],
                "rsunet-efficient-lr4e-3-zpool2": QUICK_ZPOOL2, "rsunet-efficient-lr2e-3-zpool2": QUICK_ZPOOL2,
                "rsunet-efficient-lr1e-3-zpool2": QUICK_ZPOOL2,
                "rsunet-efficient-w32-lr1e-3-zpool2": ["model.widths=32,64,192", "model.pools=1x2x2,2x2x2"]}
QUICK_SHAPES["rsunet-efficient-w32-lr1e-3-zpool2-bf16"] = QUICK_SHAPES["rsunet-efficient-w32-lr1e-3-zpool2"]


def model_schedule(config: str, base: list[str], models: dict, out: Path, quick: bool, budget_s: float,
                   fixed_steps: int | None) -> tuple[dict, int]:
    """(models, steps): one schedule for all ``models``, as many steps as the slowest fits in the
    budget (or ``fixed_steps``); ``quick``: three levels and 12 steps."""
    if quick:
        def shallow(name: str) -> list[str]:
            replaced = tuple(a.split("=")[0] + "=" for a in QUICK_SHAPES[name])
            return [*(a for a in models[name] if not a.startswith(replaced)), *QUICK_SHAPES[name]]
        return {name: shallow(name) for name in models}, 12
    if fixed_steps:
        return models, fixed_steps
    slowest = max(fitted_steps(config, [*base, *args], out / name, budget_s, cap=100000, floor=1)[1]
                  for name, args in models.items())
    return models, max(20, min(3000, int(budget_s * 0.92 / slowest)))


def schedule_overrides(args: list[str], steps: int) -> list[str]:
    """The overrides of a ``steps``-step run without validation, one checkpoint at the end."""
    return [*args, f"train.steps={steps}", f"train.log_every={max(2, steps // 6)}", "validation.every=0",
            f"train.checkpoint_every={steps}"]


def finished_run(config: str, overrides: list[str], run: Path) -> bool:
    """Whether ``run`` holds the final checkpoint of exactly this configuration (its recorded digest)."""
    import torch

    from emtools.train import config as cfg

    checkpoint = run / "last.pt"
    if not checkpoint.exists():
        return False
    extra = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["extra"]
    resolved = cfg.load_config(config, overrides)
    return extra.get("config_sha256") == cfg.digest(resolved) and extra.get("step") == resolved["train"]["steps"]


def train_schedule(config: str, args: list[str], steps: int, run: Path, reuse: bool = False) -> tuple[Path, float | None]:
    """Train ``steps`` steps without validation into a fresh ``run``; (run, wall seconds).

    ``reuse``: keep a finished run of this very configuration (wall seconds None) and only score
    it again, e.g. after a change to the scoring.
    """
    overrides = schedule_overrides(args, steps)
    if reuse and finished_run(config, overrides, run):
        say(f"{run.name}: reusing its {steps}-step checkpoint")
        return run, None
    say(f"{run.name}: {steps} steps")
    wall = em_train(["--config", config, *overrides, "-q", "-o", str(fresh(run))])
    return run, wall


def seed_runs(config: str, base: list[str], models: dict, steps: int, seeds: tuple[int, ...], run_prefix: Path,
              score, reuse: bool = False) -> dict:
    """Train every model with every seed on one schedule; ``score(run)`` -> scores dict.  Seed 0 runs
    keep the plain run name (``models-rsunet``), others get ``-s<seed>``."""
    results = {}
    for name, args in models.items():
        per_seed = []
        for seed in seeds:
            run_name = f"{run_prefix.name}-{name}" + (f"-s{seed}" if seed else "")
            run, wall = train_schedule(config, [*base, *args, f"seed={seed}"], steps, run_prefix.parent / run_name,
                                       reuse)
            per_seed.append({"seed": seed, "seconds_per_step": 1.0 / steady_rate(run), "wall_s": wall,
                             "scores": score(run)})
        results[name] = {"args": args, "seeds": per_seed}
    return results


def seed_table(results: dict, columns: tuple[tuple[str, str], ...]) -> None:
    """One row per model and seed (columns: (scores key, heading) of ARAND/VOI triples), then the mean
    over seeds when there are several."""
    name_width = max(18, *(len(name) for name in results))
    head = f"{'model':<{name_width}} {'seed':>4} {'s/step':>7}"
    for _, heading in columns:
        head += f" {heading:>18} {'VOIs':>7} {'VOIm':>7}"
    print(head + f" {'voxel acc %':>11} {'BCE':>7}")

    def line(label: str, seed: str, runs: list[dict]) -> str:
        text = f"{label:<{name_width}} {seed:>4} {statistics.mean(r['seconds_per_step'] for r in runs):>7.3f}"
        for key, _ in columns:
            for metric, width, digits in (("adapted_rand_error", 18, 4), ("voi_split", 7, 3), ("voi_merge", 7, 3)):
                text += f" {statistics.mean(r['scores'][key][metric] for r in runs):>{width}.{digits}f}"
        voxel = [r["scores"]["voxel"] for r in runs]
        return (text + f" {100 * statistics.mean(v['voxel_accuracy'] for v in voxel):>11.2f}"
                f" {statistics.mean(v['bce'] for v in voxel):>7.4f}")

    for name, r in results.items():
        for run in r["seeds"]:
            print(line(name, str(run["seed"]), [run]))
        if len(r["seeds"]) > 1:
            print(line(name, "mean", r["seeds"]))


def light_augment(augment: str, steps: str) -> list[str]:
    """The override that replaces the example config's augmentation by the light ``steps`` ("light"),
    or none, so that the config's full list applies ("config")."""
    return [f"data.augment={steps}"] if augment == "light" else []


def run_prefix(part: str, augment: str) -> str:
    """Run folder prefix: the config-augmented runs get their own folders (``models-aug-rsunet``)."""
    return part if augment == "light" else f"{part}-aug"


def sstem_models(part: str, heading: str, volume: list[str], image: np.ndarray, interior: np.ndarray, held: slice,
                 voxel_size_nm, out: Path, quick: bool, budget_s: float, fixed_steps: int | None,
                 seeds: tuple[int, ...], reuse: bool, augment: str) -> dict:
    """(d), (f): the models on one ssTEM stack of binary membrane labels (``interior``: non-zero inside
    cells), examples/train_isbi.yaml with the ``volume`` overrides; the last z sections ``held``
    are the volume's val_region (never trained on), segmented per section and scored against the
    connected components of its interior. ``heading`` starts the printed table's title."""
    from emtools.train.data import label_components

    config = "examples/train_isbi.yaml"
    patch = [4, 128, 128]
    assert held.stop == image.shape[0], "the held-out sections are the last ones (val_region 'last N z')"
    base = [*volume, f"data.volumes.0.val_region=last {held.stop - held.start} z",
            f"data.patch_zyx={','.join(map(str, patch))}", *light_augment(augment, "flip,grayscale")]
    if quick:
        base += ["model.depth=3"]
    models, steps = model_schedule(config, base, {**MODELS, **SSTEM_MODELS}, out / part, quick, budget_s,
                                   fixed_steps)
    test_image, gt = image[held], label_components(interior[held], "2d")

    def score(run: Path) -> dict:
        boundary, affinities = predicted_maps(run / "last.pt", test_image, patch)
        return {**sweep(boundary, gt, voxel_size_nm, "2d"),
                "voxel": voxel_scores(run / "last.pt", boundary, affinities, gt)}

    results = seed_runs(config, base, models, steps, seeds, out / run_prefix(part, augment), score, reuse)
    print(f"\n{heading} (z {held.start}-{held.stop - 1} held out), crop {patch}, {steps} steps each, "
          f"seeds {','.join(map(str, seeds))}, {augment} augmentation; best ARAND over the watershed sweep and at "
          "the default setting")
    seed_table(results, (("best", "ARAND"), ("default", "ARAND@default")))
    return {"patch_zyx": patch, "steps": steps, "results": results}


def bench_models(out: Path, quick: bool, budget_s: float, fixed_steps: int | None = None,
                 seeds: tuple[int, ...] = (0,), reuse: bool = False, augment: str = "light") -> dict:
    """(d): ISBI 2012, slices 25-29 held out."""
    from emtools import io

    image, _ = io.read_volume(str(ISBI / "image"))
    labels, _ = io.read_volume(str(ISBI / "label"))
    volume = [f"data.volumes.0.image={ISBI / 'image'}", f"data.volumes.0.labels={ISBI / 'label'}"]
    return sstem_models("models", "(d) rsunet vs rsunet-efficient on ISBI", volume, image, labels, slice(25, 30),
                        (50, 4, 4), out, quick, budget_s, fixed_steps, seeds, reuse, augment)


def bench_models_vnc(out: Path, quick: bool, budget_s: float, fixed_steps: int | None = None,
                     seeds: tuple[int, ...] = (0,), reuse: bool = False, augment: str = "light") -> dict:
    """(f): the (d) comparison on drosophila_vnc stack 1 (1024x1024 sections, 2.6x ISBI's training
    voxels), sections 16-19 held out. Its membrane masks mark membrane: the interior, their
    complement, is written once under ``out`` as the training labels."""
    from emtools import io
    from emtools.meta import Metadata

    image, _ = io.read_volume(str(VNC / "raw"))
    membranes, _ = io.read_volume(str(VNC / "membranes"))
    interior = (membranes == 0).astype(np.uint8)
    labels = out / "vnc-interior.h5"
    if not labels.exists():
        io.write_volume(f"{labels}:interior", interior, Metadata(voxel_size_nm=(50.0, 4.6, 4.6)))
    volume = [f"data.volumes.0.image={VNC / 'raw'}", f"data.volumes.0.labels={labels}:interior",
              "data.volumes.0.voxel_size_nm=50,4.6,4.6"]
    return sstem_models("models-vnc", "(f) rsunet vs rsunet-efficient on drosophila_vnc", volume, image, interior,
                        slice(16, 20), (50, 4.6, 4.6), out, quick, budget_s, fixed_steps, seeds, reuse, augment)


def bench_models3d(out: Path, quick: bool, budget_s: float, fixed_steps: int | None = None,
                   seeds: tuple[int, ...] = (0,), reuse: bool = False, augment: str = "light") -> dict:
    """(e): the (d) comparison on isotropic 3D data: gala, affinities, 3D watershed + agglomeration."""
    from emtools import io

    config = "examples/train_gala.yaml"
    patch = [16, 64, 64]
    base = [f"data.volumes.0.image={GALA / 'train-image.h5'}:stack",
            f"data.volumes.0.labels={GALA / 'train-gt.lzf.h5'}:stack", *light_augment(augment, "flip"),
            "model.heads=affinity:3"]
    models, steps = model_schedule(config, base, MODELS, out / "3d", quick, budget_s, fixed_steps)
    image, _ = io.read_volume(f"{GALA / 'train-image.h5'}:stack")
    gt, _ = io.read_volume(f"{GALA / 'train-gt.lzf.h5'}:stack")
    held = slice(34, 50)
    gt = gt[held].astype(np.uint64)

    def score(run: Path) -> dict:
        boundary, affinities = predicted_maps(run / "last.pt", image[held], patch)
        return {**sweep(boundary, gt, (10, 10, 10), "3d", {"affinities": affinities}),
                "voxel": voxel_scores(run / "last.pt", boundary, affinities, gt)}

    results = seed_runs(config, base, models, steps, seeds, out / run_prefix("models3d", augment), score, reuse)
    print(f"\n(e) rsunet vs rsunet-efficient on gala (z 34-49 held out), crop {patch}, {steps} steps each, "
          f"seeds {','.join(map(str, seeds))}, {augment} augmentation, affinities; 3D watershed alone and with "
          "agglomeration")
    seed_table(results, (("best", "ARAND"), ("agglomerated", "ARAND agglomerated")))
    return {"patch_zyx": patch, "steps": steps, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps per part: proves the pipeline")
    parser.add_argument("--only", default="throughput,isbi,gala,models,models3d,models-vnc", help="comma list of parts")
    parser.add_argument("--out", default=str(ROOT / "bench-out"), help="folder for runs and checkpoints")
    # 16, not 20: the steps are fitted to a short calibration, and on a shared host the rest of
    # the run can be 20% slower; 16 keeps a real-data run (validation included) under 20 minutes.
    parser.add_argument("--budget-min", type=float, default=16.0, help="training minutes per real-data run")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--models-steps", type=int, default=None,
                        help="(d)-(f): this many steps for both models instead of what the budget fits")
    parser.add_argument("--models", default=",".join([*MODELS, *SSTEM_MODELS]),
                        help="(d)-(f): which models to train (rerunning one: give --models-steps to keep the schedule; "
                             f"{', '.join(SSTEM_MODELS)}: (d), (f) only)")
    parser.add_argument("--models-seeds", default="0",
                        help="(d)-(f): comma list of training seeds; each model trains once per seed, mean reported")
    parser.add_argument("--models-augment", choices=("light", "config"), default="light",
                        help="(d)-(f): light: flips (+ grayscale on ssTEM) only; config: the example config's full "
                             "augmentation list (rotation, elastic, grayscale, defocus on ssTEM)")
    parser.add_argument("--models-reuse", action="store_true",
                        help="(d)-(f): score a finished run of the same configuration again instead of retraining it")
    args = parser.parse_args()
    out = Path(args.out) / "train"
    out.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - {"throughput", "isbi", "gala", "models", "models3d", "models-vnc"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if any(p in parts for p in ("isbi", "models")) and not ISBI.exists():
        sys.exit(f"bench_train: ISBI 2012 not found at {ISBI}")
    if ("gala" in parts or "models3d" in parts) and not GALA.exists():
        sys.exit(f"bench_train: gala not found at {GALA}")
    if "models-vnc" in parts and not VNC.exists():
        sys.exit(f"bench_train: drosophila_vnc not found at {VNC}")
    try:
        seeds = tuple(int(v) for v in args.models_seeds.split(",") if v.strip())
    except ValueError:
        parser.error(f"--models-seeds needs integers, got {args.models_seeds!r}")
    if not seeds:
        parser.error("--models-seeds is empty")
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    if not chosen or set(chosen) - set(MODELS) - set(SSTEM_MODELS):
        parser.error(f"--models: choose from {', '.join([*MODELS, *SSTEM_MODELS])}")
    for table in (MODELS, SSTEM_MODELS):
        for name in list(table):
            if name not in chosen:
                del table[name]
    if "models3d" in parts and not MODELS:
        parser.error(f"--models: {', '.join(SSTEM_MODELS)} run in (d) and (f) only; (e) needs one of the others")
    budget = args.budget_min * 60
    results = {"quick": args.quick, "budget_min": args.budget_min}
    for part in parts:
        started = time.perf_counter()
        if part == "throughput":
            results[part] = bench_throughput(out, args.quick)
        elif part == "isbi":
            results[part] = bench_isbi(out, args.quick, budget)
        elif part == "gala":
            results[part] = bench_gala(out, args.quick, budget)
        elif part == "models":
            results[part] = bench_models(out, args.quick, budget, args.models_steps, seeds, args.models_reuse,
                                         args.models_augment)
        elif part == "models-vnc":
            results[part] = bench_models_vnc(out, args.quick, budget, args.models_steps, seeds, args.models_reuse,
                                             args.models_augment)
        else:
            results[part] = bench_models3d(out, args.quick, budget, args.models_steps, seeds, args.models_reuse,
                                         args.models_augment)
        results[part]["bench_wall_s"] = time.perf_counter() - started
        say(f"{part} took {(time.perf_counter() - started) / 60:.1f} min")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
