"""em-export's per-segment work and its writers: rates in Mvoxel/s of the labels they cover.

Steps, each timed alone on the same labels in one process (one thread, no parallel kimimaro):

- ``marching cubes``: zmesh meshes of every segment of >= --min-voxels voxels, no simplification;
- ``meshes``: the same with em-export's default simplification (reduction 10, error one voxel),
  what ``em-export`` writes;
- ``skeletons``: kimimaro TEASAR skeletons of the same segments (em-export's defaults);
- ``seg pyramid``: the segmentation's scales (mode downsampling) written as
  compressed_segmentation chunks, and as raw chunks;
- ``image pyramid``: the image's scales (mean downsampling), raw chunks;
- ``em-export``: the whole tool on the image and the labels (start-up, reading, everything).

Rate = voxels of the full-resolution volume / seconds (best of --repeats). Data: FIB-25 (150 x
250 x 250 voxels of 10 nm, 368 bodies, its image) and gala (50 x 100 x 200, train-gt) from
../shared/data; --quick uses a 64^3 crop of FIB-25 only.

    python benchmarks/bench_export.py [--out DIR] [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(variable, "1")


def volumes(quick: bool):
    from emtools import io
    from emtools.tiling.geometry import Box

    out = {}
    bodies = os.path.join(SHARED, "fib25", "train", "bodies.h5")
    if os.path.exists(bodies):
        with io.open_volume(f"{bodies}:bodies") as source:
            box = Box((0, 0, 0), (64, 64, 64)) if quick else Box.from_shape(source.shape_zyx)
            labels = source.read(box)
        with io.open_volume(os.path.join(SHARED, "fib25", "train", "image")) as source:
            image = source.read(box)
        out["fib25" + ("-64" if quick else "")] = (labels, image, (10.0, 10.0, 10.0))
    gt = os.path.join(SHARED, "gala", "train-gt.lzf.h5")
    if os.path.exists(gt) and not quick:
        labels, _ = io.read_volume(f"{gt}:stack")
        image, _ = io.read_volume(os.path.join(SHARED, "gala", "train-image.h5") + ":stack")
        out["gala"] = (labels.astype(np.uint64), image, (10.0, 10.0, 10.0))
    if not out:
        sys.exit(f"no data: {SHARED} is missing (the benchmark needs ../shared/data)")
    return out


def best_time(step, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - start)
    return best, result


def pyramid(folder, array, voxel, method, encoding):
    from emtools.export.downsample import downsample, plan_scales
    from emtools.export.precomputed import scale_key, write_scale

    steps = plan_scales(array.shape[-3:], voxel, (64, 64, 64))
    begin = (0, 0, 0)
    for k in range(len(steps) + 1):
        write_scale(os.path.join(folder, scale_key(voxel)), array, begin, (64, 64, 64), array.dtype, encoding)
        if k < len(steps):
            array, begin = downsample(array, begin, steps[k], method)
            voxel = tuple(v * f for v, f in zip(voxel, steps[k]))
    return len(steps) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="Folder for bench_export.json.")
    parser.add_argument("--quick", action="store_true", help="A 64^3 crop of FIB-25 only.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--min-voxels", type=int, default=100)
    args = parser.parse_args()

    import fastremap
    import kimimaro  # noqa: F401 (imported before timing: its import alone takes seconds)
    import zmesh  # noqa: F401

    from emtools import io
    from emtools.export.meshes import mesh_segments
    from emtools.export.skeletons import skeletonize_segments
    from emtools.meta import Metadata

    rows = []
    for name, (labels, image, voxel) in volumes(args.quick).items():
        labels = np.ascontiguousarray(labels, np.uint64)
        mvox = labels.size / 1e6
        ids, counts = fastremap.unique(labels, return_counts=True)
        wanted = ids[(ids != 0) & (counts >= args.min_voxels)]
        work = tempfile.mkdtemp(prefix="bench-export-")
        try:
            steps = {
                "marching cubes": lambda: mesh_segments(labels, voxel, (0, 0, 0), wanted, reduction_factor=0),
                "meshes": lambda: mesh_segments(labels, voxel, (0, 0, 0), wanted),
                "skeletons": lambda: skeletonize_segments(labels, voxel, (0, 0, 0), wanted),
                "seg pyramid cseg": lambda: pyramid(tempfile.mkdtemp(dir=work), labels, voxel, "mode",
                                                    "compressed_segmentation"),
                "seg pyramid raw": lambda: pyramid(tempfile.mkdtemp(dir=work), labels, voxel, "mode", "raw"),
                "image pyramid": lambda: pyramid(tempfile.mkdtemp(dir=work), image, voxel, "mean", "raw"),
            }
            for step, run in steps.items():
                seconds, result = best_time(run, args.repeats)
                detail = ""
                if step in ("marching cubes", "meshes"):
                    detail = f"{len(result)} meshes, {sum(len(m.faces) for m in result.values())} triangles"
                elif step == "skeletons":
                    detail = f"{len(result)} skeletons, {sum(s.cable_length_nm() for s in result.values()) / 1e3:.0f} um cable"
                else:
                    detail = f"{result} scales"
                rows.append({"data": name, "step": step, "mvoxels": round(mvox, 3), "seconds": round(seconds, 3),
                             "mvoxel_per_s": round(mvox / seconds, 3), "detail": detail})
                print(f"{name:9s} {step:17s} {mvox:7.2f} Mvox {seconds:8.2f} s {mvox / seconds:8.2f} Mvox/s  {detail}",
                      flush=True)
            # the whole tool, as users run it
            meta = Metadata(voxel_size_nm=voxel)
            io.write_volume(f"{work}/seg.h5:/seg", labels, meta)
            io.write_volume(f"{work}/raw.h5:/raw", image, meta)
            tool = shutil.which("em-export") or os.path.join(os.path.dirname(sys.executable), "em-export")
            start = time.perf_counter()
            subprocess.run([tool, "--image", f"{work}/raw.h5:/raw", "--segmentation", f"{work}/seg.h5:/seg",
                            "--min-voxels", str(args.min_voxels), "-o", f"{work}/view", "-q"],
                           check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{work}/view") for f in fs)
            rows.append({"data": name, "step": "em-export", "mvoxels": round(mvox, 3), "seconds": round(seconds, 3),
                         "mvoxel_per_s": round(mvox / seconds, 3), "detail": f"{size / 1e6:.1f} MB written"})
            print(f"{name:9s} {'em-export':17s} {mvox:7.2f} Mvox {seconds:8.2f} s {mvox / seconds:8.2f} Mvox/s  "
                  f"{size / 1e6:.1f} MB written", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_export.json"), "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
