"""Speed of em-predict: voxels per second, and the cost of the pipeline around the network.

For rsunet and rsunet-efficient (random weights, saved as checkpoints), at 50% and 25% overlap
(and 25% with 2 TTA variants), the whole em-predict command runs in this process on an HDF5
volume: checkpoint load, reading, normalising, patch gathering, forward passes, TTA
bookkeeping, activations, blending, encoding and writing. Then the bare forward passes on the
same patches (the same batches, the same number of forwards) are timed alone, and

    overhead = pipeline time / bare forward time - 1          (target: at most 15%)

The overhead compares CPU time of this process (time.process_time), which other processes on
a shared machine do not inflate; that is why the default is one torch thread. Mvox/s is wall
time over this volume, where the patches reaching past the border cost a lot (a patch's kept
output must cover every voxel); Mvox/s_large is what a large volume gets: one stride box of new
voxels per patch. Bare forwards are timed on up to --sample batches and scaled to the pipeline's batch
count (the forward time per batch is steady); the quick run times them all. Each row is the
minimum of --repeat runs, pipeline and bare alternating.

Then em-predict's defaults (the patch and overlap it chooses for the memory budget) against the
old defaults (the training input size as the patch, 50% overlap) on the same volume in the same
run: Mvox/s of each, the speedup, the patch chosen, and the share of the FLOP limit: the model's
FLOPs per voxel times what overlap and crop recompute, against the peak that em-profile measures
(emtools.profile.timing.calibrate_peak, with the same threads).

With CUDA present, the same rows also run on the GPU in fp32 and bf16 (autocast; wall time
with synchronisation, since CPU time says little there); that path is written but was not
measured on the development machine (no GPU).

Usage:  python benchmarks/bench_predict.py [--quick] [--volume 18,160,160] [--models rsunet,rsunet-efficient]
                                          [--threads 1] [--repeat N] [--sample 8] [--batch 1] [--defaults-only]

The full run takes about 15-20 minutes on one CPU core (the full-size rsunet needs ~2-4 s per
18x160x160 patch there); --quick about a minute and a half. The table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

from emtools.cpus import prefer_huge_pages

prefer_huge_pages()  # as the em-* tools do, before torch allocates anything
import torch  # noqa: E402

from emtools import io
from emtools.meta import Metadata
from emtools.models import build_model, execution, resolve_spec
from emtools.models.checkpoint import read_checkpoint, save_checkpoint
from emtools.models.geometry import receptive_field
from emtools.models.heads import default_heads, heads_to_dict
from emtools.normalize import normalize_image
from emtools.predict.windows import make_grid, parse_overlap, read_padded, resolve_crop
from emtools.tiling.geometry import Box

NORM = {"scale": 1 / 255, "mean": 0.5, "std": 0.25}
VOXEL = [30.0, 6.0, 6.0]
# words None: a shipped model (emtools.models.weights), its own checkpoint and training input size
FULL = {"rsunet": ([], (18, 160, 160)), "rsunet-efficient": ([], (18, 160, 160)), "fibsem-affinity": (None, None)}
QUICK = {"rsunet": (["widths=4,8,16", "depth=3"], (8, 32, 32)),
         "rsunet-efficient": (["widths=4,8,16", "depth=3", "pools=2x2x2,1x2x2"], (8, 32, 32))}
ROWS = [("0.5", 1), ("0.25", 1), ("0.25", 2)]


def say(text: str) -> None:
    print(f"bench_predict: {text}", file=sys.stderr, flush=True)


def make_checkpoint(folder: str, name: str, words: list[str] | None, patch) -> tuple[str, torch.nn.Module, object]:
    if words is None:  # a shipped model: its own weights
        from emtools.models.checkpoint import load_model
        from emtools.models.pretrained import resolve

        path = resolve(name)
        model, spec, _ = load_model(path)
        return path, model.eval(), spec
    spec = resolve_spec(name, [*words, "heads=affinity:3"])
    model = build_model(spec, seed=0).eval()
    path = os.path.join(folder, f"{name}.pt")
    extra = {"heads": heads_to_dict(default_heads(spec.heads)), "normalization": NORM,
             "voxel_size_nm": VOXEL, "input_size_zyx": list(patch)}
    save_checkpoint(path, model, spec, extra)
    return path, model, spec


def run_pipeline(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one em-predict run in this process."""
    from emtools.cli.predict import main

    wall, cpu = time.perf_counter(), time.process_time()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # the written path
        main.main(args, standalone_mode=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def bare_forwards(model, spec, image: np.ndarray, patch, overlap: str, batch: int, tta: int, device, precision,
                  sample: int | None) -> tuple[float, float, int, int]:
    """(wall and CPU seconds of the pipeline's forward passes alone, patches, voxels per stride)."""
    _, lo, hi = receptive_field(spec)
    grid = make_grid(patch, resolve_crop("auto", patch, lo, hi), parse_overlap(overlap))
    box = Box.from_shape(image.shape)
    need = grid.input_box(box)
    padded = normalize_image(read_padded(lambda b: image[box.local(b)], need, box), NORM)
    patches = grid.patches(box)
    groups = [patches[i : i + batch] for i in range(0, len(patches), batch)]
    timed = groups if sample is None else groups[:sample]
    # the execution options em-predict picks by default (on a CPU: fused, channels-last, oneDNN)
    run = execution.apply(copy.deepcopy(model).to(device).eval(),
                          execution.names_from_flags(**execution.inference_flags(device.type)), device, mode="infer")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    wall = cpu = 0.0
    with torch.inference_mode():
        for group in timed:
            x = run.input(torch.from_numpy(np.stack([padded[None][(slice(None),) + need.local(p)]
                                                     for p in group])).to(device))
            _sync(device)
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(tta):
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    y = run.runner(x)
                y.float().cpu()
            _sync(device)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
    scale = len(groups) / len(timed)
    return wall * scale, cpu * scale, len(patches), int(np.prod(grid.stride_zyx))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models and volume (about a minute)")
    parser.add_argument("--volume", default=None, help="volume size z,y,x (default 18,160,160; quick 8,64,64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU time is exact for 1)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row, minimum kept (default: quick 3, full 1)")
    parser.add_argument("--sample", type=int, default=8, help="batches timed for the bare forwards (full run)")
    parser.add_argument("--models", default="rsunet,rsunet-efficient,fibsem-affinity",
                        help="comma-separated presets and shipped models (fibsem-affinity: defaults comparison only)")
    parser.add_argument("--out", default=None, help="folder for bench_predict.json (make bench)")
    parser.add_argument("--cases", default="old default,previous options,default",
                        help="which of the defaults comparison's cases to run (the old default's small patches "
                             "take ~15 min on the shipped model and a 100x250x250 volume)")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the comparison of em-predict's defaults with the old ones")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    opts.repeat = opts.repeat or (3 if opts.quick else 1)
    models = {k: v for k, v in (QUICK if opts.quick else FULL).items() if k in opts.models.split(",")}
    shipped = {k: v for k, v in models.items() if v[0] is None}
    shape = tuple(int(v) for v in (opts.volume or ("8,64,64" if opts.quick else "18,160,160")).split(","))
    sample = None if opts.quick else opts.sample
    devices = [("cpu", "fp32")]
    if torch.cuda.is_available():
        devices += [("cuda", "fp32"), ("cuda", "bf16")]
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    rows = []
    if opts.defaults_only:
        models_to_time, models_compared = {}, models
    else:
        models_to_time = {k: v for k, v in models.items() if k not in shipped}
        models_compared = models
    with tempfile.TemporaryDirectory() as folder:
        raw = os.path.join(folder, "raw.h5:/image")
        io.write_volume(raw, image, Metadata(voxel_size_nm=tuple(VOXEL)))
        for name, (words, patch) in models_to_time.items():
            ckpt, model, spec = make_checkpoint(folder, name, words, patch)
            for device_name, precision in devices:
                device = torch.device(device_name)
                for overlap, tta in ROWS:
                    say(f"{name} {device_name} {precision} overlap {overlap} tta {tta}")
                    out = os.path.join(folder, "pred.h5")
                    args = [ckpt, raw, "-o", out, "--patch", ",".join(map(str, patch)), "--overlap", overlap,
                            "--tta", str(tta), "--batch", str(opts.batch),
                            "--device", device_name, "--precision", precision, "--threads", str(opts.threads), "-q"]
                    # Warm up (oneDNN builds its kernels for each new shape at the first call).
                    bare_forwards(model, spec, image, patch, overlap, opts.batch, 1, device, precision, 1)
                    runs, bares = [], []
                    for _ in range(opts.repeat):
                        runs.append(run_pipeline(args))
                        bares.append(bare_forwards(model, spec, image, patch, overlap, opts.batch, tta, device,
                                                   precision, sample))
                    wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
                    bare_wall, bare_cpu = min(b[0] for b in bares), min(b[1] for b in bares)
                    # CPU time is immune to other processes; on a GPU only wall time means anything.
                    overhead = (wall / bare_wall if device.type == "cuda" else cpu / bare_cpu) - 1.0
                    patches, stride_voxels = bares[0][2], bares[0][3]
                    # A large volume gains one stride box of new voxels per patch (borders aside).
                    steady = stride_voxels * patches / wall
                    rows.append((name, f"{device_name}/{precision}", overlap, tta, patches, wall, cpu, bare_wall,
                                 bare_cpu, image.size / wall, steady, overhead))
    defaults = compare_defaults(models_compared, image, opts)
    header = ("model", "device", "overlap", "tta", "patches", "wall_s", "cpu_s", "bare_wall_s", "bare_cpu_s",
              "Mvox/s", "Mvox/s_large", "overhead")
    if rows:
        print("\t".join(header))
    for name, dev, overlap, tta, patches, wall, cpu, bare_wall, bare_cpu, speed, steady, overhead in rows:
        print(f"{name}\t{dev}\t{overlap}\t{tta}\t{patches}\t{wall:.2f}\t{cpu:.2f}\t{bare_wall:.2f}\t{bare_cpu:.2f}\t"
              f"{speed / 1e6:.4f}\t{steady / 1e6:.4f}\t{overhead:+.1%}")
    if rows:
        worst = max(r[-1] for r in rows)
        print(f"# volume {','.join(map(str, shape))}, {opts.threads} thread(s); worst overhead {worst:+.1%} "
              f"(target <= +15%): {'met' if worst <= 0.15 else 'NOT met'}")
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
        with open(os.path.join(opts.out, "bench_predict.json"), "w") as handle:
            json.dump({"volume_zyx": list(shape), "threads": opts.threads, "columns": header, "rows": rows,
                       "defaults": defaults}, handle, indent=1)


def as_run(model, spec, affinity_only: bool):
    """The model as em-predict's default runs it (fused; cut down to the affinity head where only
    that is written), for counting the FLOPs it computes."""
    from emtools.models import fusion

    fused = fusion.fuse_for_inference(model)
    if affinity_only:
        start = 0
        for name, channels in spec.heads:
            if name == "affinity":
                fusion.keep_output_channels(fused, list(range(start, start + channels)))
                break
            start += channels
    return fused


def compare_defaults(models: dict, image: np.ndarray, opts) -> list[dict]:
    """em-predict with no window options against the old defaults (training patch, 50% overlap), and
    against its default window with the previous execution options (--channels-last alone, before
    the fused layers). The peak is measured before and after the runs, the higher kept (a CPU that
    another process or a thermal limit slows at one of the two moments)."""
    from emtools.profile.flops import totals, trace_layers
    from emtools.profile.timing import calibrate_peak

    peak = calibrate_peak(torch.device("cpu")).flops_per_s
    out = []
    with tempfile.TemporaryDirectory() as folder:
        raw = os.path.join(folder, "raw.h5:/image")
        io.write_volume(raw, image, Metadata(voxel_size_nm=tuple(VOXEL)))
        for name, (words, patch) in models.items():
            ckpt, model, spec = make_checkpoint(folder, name, words, patch)
            pred = os.path.join(folder, "pred.h5")
            common = [ckpt, raw, "-o", pred, "--threads", str(opts.threads), "-q"]
            if words is None:  # trained at another voxel size than this synthetic volume's: speed is the same
                common += ["--force", "--heads", "affinity"]  # the recipe's map (long_range is an auxiliary)
                patch = tuple(read_checkpoint(ckpt)["extra"]["input_size_zyx"])
            cases = {"old default": ["--patch", ",".join(map(str, patch)), "--overlap", "0.5"],
                     "previous options": ["--channels-last"], "default": []}
            cases = {k: v for k, v in cases.items() if k in opts.cases.split(",")}
            walls: dict = {label: [] for label in cases}
            for label, extra in cases.items():
                say(f"{name} cpu fp32 {label}: warm-up")
                run_pipeline(common + extra)  # oneDNN builds kernels per shape at the first call
            for attempt in range(opts.repeat):  # the cases alternate, so that a slower spell hits all of them
                for label, extra in cases.items():
                    say(f"{name} cpu fp32 {label}: run {attempt + 1}/{opts.repeat}")
                    walls[label].append(run_pipeline(common + extra)[0])
                    if attempt == 0:
                        walls[label + " params"] = io.read_volume(pred)[1].provenance[-1]["params"]
            for label in cases:
                wall, params = min(walls[label]), walls[label + " params"]
                window = make_grid(params["patch_zyx"], (params["crop_lo_zyx"], params["crop_hi_zyx"]),
                                   ("voxels", (0, 0, 0)))
                window = dataclasses.replace(window, stride_zyx=tuple(params["stride_zyx"]))
                patches = window.count(Box.from_shape(image.shape))
                counted = model if label == "previous options" else as_run(model, spec, words is None)
                flops = totals(trace_layers(counted, (1, 1, *params["patch_zyx"]), backward=False)).flops_fwd * patches
                out.append({"model": name, "case": label, "execution": params.get("execution"),
                            "patch_zyx": params["patch_zyx"],
                            "stride_zyx": params["stride_zyx"], "patches": patches, "wall_s": wall,
                            "mvox_s": image.size / wall / 1e6, "gflop_s": flops / wall / 1e9,
                            "flops": flops})
    peak = max(peak, calibrate_peak(torch.device("cpu")).flops_per_s)
    for row in out:
        row["flop_limit_share"] = row.pop("flops") / row["wall_s"] / peak
    print("model\tcase\tpatch\tstride\tpatches\twall_s\tMvox/s\tGFLOP/s\t%FLOP_limit\tspeedup")
    for row in out:
        old = next(r for r in out if r["model"] == row["model"])  # the first case run: the reference
        print(f"{row['model']}\t{row['case']}\t{','.join(map(str, row['patch_zyx']))}\t"
              f"{','.join(map(str, row['stride_zyx']))}\t{row['patches']}\t{row['wall_s']:.2f}\t{row['mvox_s']:.4f}\t"
              f"{row['gflop_s']:.2f}\t{100 * row['flop_limit_share']:.1f}%\t{old['wall_s'] / row['wall_s']:.2f}x")
    print(f"# defaults: measured peak {peak / 1e9:.1f} GFLOP/s ({opts.threads} thread(s)); the FLOP limit counts the "
          "FLOPs of every patch computed; 'previous options': the default window with --channels-last alone (the "
          "execution options before the fused layers); speedup against the first case")
    return out


if __name__ == "__main__":
    main()
