"""Flood-filling networks against the U-Net pipeline: training scaling, inference cost, quality.

    python benchmarks/bench_ffn.py [--quick] [--only scaling,speed,quality] [--budget-min 30]
                                   [--model ffn-small] [--ffn-checkpoint PT] [--unet-checkpoint PT]
                                   [--threads 2] [--out DIR] [--json results.json]

Every stage is a command-line tool run as a user runs it (bench_accuracy's runner), on FIB-25
(../shared/data/fib25: train z 0-99, score z 100-149; the held-out block is every em-train's
val_region, so no training example touches it).

(1) scaling: em-train model=MODEL for a few steps, one process (1 thread, batch 2) against
    torchrun --nproc-per-node=2 (gloo, 1 thread and batch 2 per rank: the global batch is twice
    as large), FOVs per second from metrics.jsonl (the first window, with start-up, left out);
    efficiency = FOV/s on 2 ranks / (2 x FOV/s on 1). One process with 2 threads (the other use
    of the same cores) is printed beside it. On a machine with CUDA the 1-rank run is repeated
    on the GPU.
(2) speed: the cost of segmenting the same block, em-predict FFN (flood fill, peaks seeds) against
    em-predict U-Net + em-watershed + em-agglomerate: seconds, s per Mvoxel, FOV/s, and the ratio.
(3) quality: FFN (em-train MODEL for --budget-min minutes, or --ffn-checkpoint) against the U-Net
    recipe (em-train --init fibsem-affinity --config examples/fibsem_finetune.yaml for the same
    budget, or --unet-checkpoint), both scored by em-eval on the same held-out block: the FFN
    segmentation itself, the U-Net recipe at its fixed agglomeration threshold 0.7, and the FFN's
    consensus (em-predict --consensus) used as fragments for em-agglomerate on the U-Net's
    affinities at 0.7.

--quick: a few steps of training and a small block: it proves the pipeline, not the accuracy.
Tables go to stdout (and --json), every command line to stderr, runs and volumes to
OUT/ffn/. A part whose data is missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_accuracy as runner  # noqa: E402  (the tool runner, the data paths)

ROOT, FIB25 = runner.ROOT, runner.FIB25
TRAIN_ARGS = [f"data.volumes.0.image={FIB25}/image", f"data.volumes.0.labels={FIB25}/bodies.h5:bodies",
              "data.volumes.0.voxel_size_nm=10,10,10", "data.volumes.0.val_region=100:150,:,:"]
UNET_FINETUNE = "examples/fibsem_finetune.yaml"
THRESHOLD = runner.RECIPE_THRESHOLD
SPEED_BLOCK = "100:150,0:96,0:96"  # (2): 0.46 Mvoxel of the held-out block
QUICK_BLOCK = "100:140,0:80,0:80"
QUALITY_BLOCK = "100:150,:,:"


def say(text: str) -> None:
    print(f"bench_ffn: {text}", file=sys.stderr, flush=True)


def crop(source: str, region: str, out: Path) -> str:
    """A block of a FIB-25 volume with its world offset (examples/scripts/crop.py)."""
    if not out.exists():
        subprocess.run([sys.executable, str(ROOT / "examples/scripts/crop.py"), source, "--voxel-size", "10,10,10",
                        "--region", region, "-o", f"{out}:/data"], check=True, cwd=ROOT, env=runner.ENV,
                       stdout=subprocess.DEVNULL)
    return f"{out}:/data"


def fovs_per_s(run_dir: Path) -> float:
    """Mean FOV/s of the train records after the first window (start-up left out)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["fovs_per_s"] for r in records if r.get("split") == "train"]
    rates = rates[1:] or rates
    return sum(rates) / len(rates)


def train_ffn(folder: Path, model: str, extra: list, torchrun: int = 0) -> float:
    args = ["model=" + model, *TRAIN_ARGS, "validation.every=0", "train.checkpoint_every=100000", *extra,
            "-o", folder, "-q"]
    runner.fresh(folder)
    folder.rmdir()
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}",
                   "-m", "emtools.cli.train", *map(str, args)]
        say("  $ " + " ".join(command)[:300])
        env = dict(runner.ENV, OMP_NUM_THREADS="1")
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise runner.StageFailed("torchrun em-train", (done.stderr.strip().splitlines() or ["failed"])[-1])
        return time.perf_counter() - started
    wall, _, _ = runner.tool("train", args)
    return wall


# ----------------------------------------------------------------------------- (1) scaling

def part_scaling(out: Path, model: str, steps: int) -> dict:
    common = [f"train.steps={steps}", "train.log_every=5", "train.onednn=true"]
    result = {}
    train_ffn(out / "rank1", model, [*common, "data.batch_size=2", "train.threads=1"])
    result["1 rank, 1 thread"] = fovs_per_s(out / "rank1")
    train_ffn(out / "rank2", model, [*common, "data.batch_size=2", "train.threads=1"], torchrun=2)
    result["2 ranks, 1 thread each"] = fovs_per_s(out / "rank2")
    train_ffn(out / "threads2", model, [*common, "data.batch_size=4", "train.threads=2"])
    result["1 rank, 2 threads, batch 4"] = fovs_per_s(out / "threads2")
    import torch

    if torch.cuda.is_available():
        train_ffn(out / "cuda", model, [*common, "data.batch_size=4", "train.device=cuda"])
        result["1 rank, CUDA, batch 4"] = fovs_per_s(out / "cuda")
    efficiency = result["2 ranks, 1 thread each"] / (2 * result["1 rank, 1 thread"])
    print(f"\n(1) em-train {model}: training FOVs per second (FIB-25, {steps} steps)")
    for name, rate in result.items():
        print(f"  {name:<28} {rate:8.2f} FOV/s")
    print(f"  scaling efficiency 2 ranks / (2 x 1 rank): {efficiency:.0%}")
    return {"fovs_per_s": result, "efficiency": efficiency}


# ----------------------------------------------------------------------------- (2) + (3)

def _summary(stderr: str) -> dict:
    """FOVs and seconds from em-predict's FFN closing line."""
    found = re.search(r"(\d+) FOVs in ([\d.]+) s, ([\d.]+) FOV/s", stderr)
    return {"fovs": int(found.group(1)), "flood_s": float(found.group(2)), "fov_per_s": float(found.group(3))} if found else {}


def ffn_segment(checkpoint: str, image: str, output: Path, *extra) -> dict:
    wall, _, err = runner.tool("predict", [checkpoint, image, "-o", f"{output}:/seg", *extra])
    return {"seconds": wall, **_summary(err)}


def unet_segment(checkpoint: str, image: str, folder: Path) -> dict:
    times = {}
    times["predict_s"], _, _ = runner.tool("predict", [checkpoint, image, "--heads", "affinity",
                                                       "-o", f"{folder}/affs.h5:/affs", "-q"])
    times["watershed_s"], _, _ = runner.tool("watershed", [f"{folder}/affs.h5:/affs", "-o", f"{folder}/frags.h5:/frags",
                                                           "-q"])
    times["agglomerate_s"], _, _ = runner.tool("agglomerate", ["segment", f"{folder}/frags.h5:/frags",
                                                               f"{folder}/affs.h5:/affs", "-t", str(THRESHOLD),
                                                               "-o", f"{folder}/unet.h5:/seg", "-q"])
    times["seconds"] = sum(times.values())
    return times


def part_speed(out: Path, ffn_ckpt: str, unet_ckpt: str, block: str) -> dict:
    image = crop(f"{FIB25}/image", block, out / "block.h5")
    mvox = _voxels(block) / 1e6
    ffn = ffn_segment(ffn_ckpt, image, out / "ffn.h5")
    unet = unet_segment(unet_ckpt, image, out)
    print(f"\n(2) segmenting FIB-25 [{block}] ({mvox:.2f} Mvoxel), threads {runner.THREADS}")
    print(f"  FFN flood fill        {ffn['seconds']:8.1f} s  {ffn['seconds'] / mvox:8.1f} s/Mvoxel  "
          f"{ffn.get('fovs', 0)} FOVs, {ffn.get('fov_per_s', 0):.2f} FOV/s")
    print(f"  U-Net + ws + agglom.  {unet['seconds']:8.1f} s  {unet['seconds'] / mvox:8.1f} s/Mvoxel  "
          f"(predict {unet['predict_s']:.1f} s)")
    print(f"  FFN / U-Net cost: {ffn['seconds'] / unet['seconds']:.1f}x")
    return {"block": block, "mvoxel": mvox, "ffn": ffn, "unet": unet, "ratio": ffn["seconds"] / unet["seconds"]}


def _voxels(block: str) -> int:
    sizes = {"z": 150, "y": 250, "x": 250}
    total = 1
    for axis, part in zip("zyx", block.split(",")):
        lo, _, hi = part.partition(":")
        total *= (int(hi) if hi else sizes[axis]) - (int(lo) if lo else 0)
    return total


def part_quality(out: Path, model: str, ffn_ckpt: str | None, unet_ckpt: str | None, budget_min: float,
                 steps: int | None, block: str) -> dict:
    limit = [f"train.steps={steps}"] if steps else [f"train.minutes={budget_min}", f"train.steps={runner.MAX_STEPS}"]
    timing = {}
    if ffn_ckpt is None:
        timing["ffn_train_s"] = train_ffn(out / "ffn_run", model, [*limit, "data.batch_size=4", "train.onednn=true",
                                                                    "data.augment=flip", "train.log_every=20"])
        ffn_ckpt = str(out / "ffn_run" / "last.pt")
    if unet_ckpt is None:
        timing["unet_train_s"], _, _ = runner.tool("train", ["--init", runner.PRETRAINED, "--config", UNET_FINETUNE,
                                                             *TRAIN_ARGS, *limit, "validation.every=0",
                                                             "-o", out / "unet_run", "-q"])
        unet_ckpt = str(out / "unet_run" / "last.pt")
    image = crop(f"{FIB25}/image", block, out / "test.h5")
    gt = crop(f"{FIB25}/bodies.h5:bodies", block, out / "test_gt.h5")
    ffn_alone = ffn_segment(ffn_ckpt, image, out / "ffn.h5")
    unet = unet_segment(unet_ckpt, image, out)
    consensus = ffn_segment(ffn_ckpt, image, out / "consensus.h5", "--consensus")
    agglo_s, _, _ = runner.tool("agglomerate", ["segment", f"{out}/consensus.h5:/seg", f"{out}/affs.h5:/affs",
                                                "-t", str(THRESHOLD), "-o", f"{out}/ffn_agglo.h5:/seg", "-q"])
    names = ["FFN flood fill", f"U-Net recipe (agglomeration {THRESHOLD})", "FFN consensus (fragments)",
             f"FFN consensus + em-agglomerate {THRESHOLD}"]
    files = ["ffn.h5", "unet.h5", "consensus.h5", "ffn_agglo.h5"]
    seconds = [ffn_alone["seconds"], unet["seconds"], consensus["seconds"], consensus["seconds"] + agglo_s]
    rows = []
    for name, file, spent in zip(names, files, seconds):
        try:  # an FFN that segments nothing (a few training steps) is a row, not a failed benchmark
            scores = runner.neuron_scores(runner.evaluate([f"{out}/{file}:/seg"], gt)[1][0])
        except runner.StageFailed as exc:
            scores = {"error": exc.message}
        rows.append({"method": name, **scores, "segment_s": spent})
    print(f"\n(3) FIB-25 [{block}] held out; training: FFN {model} {ffn_ckpt}, U-Net {unet_ckpt}"
          + (f" ({budget_min:g} min each)" if not steps and timing else ""))
    print(f"  {'method':<40} {'split':>6} {'merge':>6} {'VOI':>6} {'ARAND':>6} {'seconds':>8}")
    for r in rows:
        if "error" in r:
            print(f"  {r['method']:<40} {'no score: ' + r['error']}")
            continue
        print(f"  {r['method']:<40} {r['voi_split']:6.3f} {r['voi_merge']:6.3f} {r['voi']:6.3f} "
              f"{r['adapted_rand_error']:6.3f} {r['segment_s']:8.1f}")
    scored = [r for r in rows if "voi" in r]
    if scored:
        print(f"  lowest VOI: {min(scored, key=lambda r: r['voi'])['method']}")
    return {"rows": rows, "timing": timing, "ffn_checkpoint": ffn_ckpt, "unet_checkpoint": unet_ckpt,
            "ffn_fovs": ffn_alone.get("fovs")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps and a small block (proves the pipeline)")
    parser.add_argument("--only", default="scaling,speed,quality", help="comma list of parts")
    parser.add_argument("--budget-min", type=float, default=30.0, help="(3): em-train minutes per method")
    parser.add_argument("--model", default="ffn-small", help="FFN preset (em-train model=...)")
    parser.add_argument("--ffn-checkpoint", default=None, help="(2), (3): use this FFN instead of training one")
    parser.add_argument("--unet-checkpoint", default=None, help="(2), (3): use this U-Net instead of fine-tuning")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every tool")
    parser.add_argument("--out", default=str(ROOT / "bench-out"), help="runs and volumes go to OUT/ffn")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    runner.setup_env(args.threads)
    out = Path(args.out) / "ffn"
    out.mkdir(parents=True, exist_ok=True)
    if not (FIB25 / "bodies.h5").exists():
        print(f"bench_ffn: skipped: FIB-25 is not in {FIB25} (../shared/data beside the project)")
        return 0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    results: dict = {}
    ffn_ckpt, unet_ckpt = args.ffn_checkpoint, args.unet_checkpoint
    try:
        if "scaling" in parts:
            results["scaling"] = part_scaling(runner.fresh(out / "scaling"), args.model, 6 if args.quick else 40)
        if "quality" in parts:
            results["quality"] = part_quality(runner.fresh(out / "quality"), args.model, ffn_ckpt, unet_ckpt,
                                              args.budget_min, 6 if args.quick else None,
                                              QUICK_BLOCK if args.quick else QUALITY_BLOCK)
            ffn_ckpt = ffn_ckpt or results["quality"]["ffn_checkpoint"]
            unet_ckpt = unet_ckpt or results["quality"]["unet_checkpoint"]
        if "speed" in parts:
            if ffn_ckpt is None or unet_ckpt is None:
                print("\n(2) speed: skipped: needs --ffn-checkpoint and --unet-checkpoint, or the quality part first")
            else:
                results["speed"] = part_speed(runner.fresh(out / "speed"), ffn_ckpt, unet_ckpt,
                                              QUICK_BLOCK if args.quick else SPEED_BLOCK)
    except runner.StageFailed as exc:
        print(f"bench_ffn: failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
