"""Online augmentation and target speed: emtools.augment / emtools.targets on one training patch.

What is timed (single-threaded, OMP_NUM_THREADS=1 set below; median and 90th percentile of
--repeat runs after one warm-up call, so numba compilation is not counted; also the median CPU
time of the process, the honest figure on a busy machine):

- the loader's usual pipeline flip + rotate + elastic + grayscale + missing_section + misalign
  on a (18, 160, 160) float32 patch with uint64 labels and a uint8 mask (the brief: well under
  50 ms);
- each augmentation alone (default options, p = 1);
- the same rotation and elastic warp done the classic way with scipy.ndimage (map_coordinates
  order 1 for the image and order 0 for each label volume; the elastic field from
  full-resolution gaussian_filter'd noise), the reference our compiled resampler replaces;
- every target kind and the weights on the patch's labels (synthetic neurites, 40x4x4 nm).

    python benchmarks/bench_augment.py [--repeat 30] [--json out.json] [--quick]

``--quick`` (3 repeats) checks that the script runs. Takes ~1 minute in full.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from emtools import augment, targets  # noqa: E402
from emtools.synth import make_synthetic_volume  # noqa: E402

PATCH_ZYX = (18, 160, 160)
PIPELINE = [("flip", {}), ("rotate", {}), ("elastic", {}), ("grayscale", {}), ("missing_section", {}),
            ("misalign", {})]


def timed(func, repeat: int) -> dict:
    """Wall and CPU time (ms) of ``func``: on a busy machine the CPU time is the honest figure."""
    func()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        func()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    wall.sort()
    return {"median_ms": 1e3 * statistics.median(wall), "p90_ms": 1e3 * wall[int(0.9 * (len(wall) - 1))],
            "cpu_median_ms": 1e3 * statistics.median(cpu)}


def scipy_rotate(image, labels, angle_deg):
    from scipy import ndimage

    t = np.deg2rad(angle_deg)
    cy, cx = (image.shape[1] - 1) / 2, (image.shape[2] - 1) / 2
    y, x = np.meshgrid(np.arange(image.shape[1]), np.arange(image.shape[2]), indexing="ij")
    src = [np.cos(t) * (y - cy) + np.sin(t) * (x - cx) + cy, -np.sin(t) * (y - cy) + np.cos(t) * (x - cx) + cx]
    out = np.stack([ndimage.map_coordinates(s, src, order=1, mode="reflect") for s in image])
    moved = {k: np.stack([ndimage.map_coordinates(s, src, order=0, mode="grid-constant") for s in v])
             for k, v in labels.items()}
    return out, moved


def scipy_elastic(image, labels, rng, alpha=6.0, sigma=8.0):
    from scipy import ndimage

    depth = image.shape[0]
    y, x = np.meshgrid(np.arange(image.shape[1]), np.arange(image.shape[2]), indexing="ij")
    out, moved = np.empty_like(image), {k: np.empty_like(v) for k, v in labels.items()}
    for z in range(depth):
        fields = [ndimage.gaussian_filter(rng.uniform(-1, 1, image.shape[1:]), sigma) for _ in range(2)]
        fields = [f * (alpha / np.abs(f).max()) for f in fields]
        src = [y + fields[0], x + fields[1]]
        out[z] = ndimage.map_coordinates(image[z], src, order=1, mode="reflect")
        for k, v in labels.items():
            moved[k][z] = ndimage.map_coordinates(v[z], src, order=0, mode="grid-constant")
    return out, moved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the numbers as JSON here")
    parser.add_argument("--quick", action="store_true", help="3 repeats, to check the script")
    parser.add_argument("--out", default=None, help="folder for bench_augment.json (make bench)")
    args = parser.parse_args()
    if args.out and not args.json:
        os.makedirs(args.out, exist_ok=True)
        args.json = os.path.join(args.out, "bench_augment.json")
    repeat = 3 if args.quick else args.repeat

    volume = make_synthetic_volume(PATCH_ZYX, seed=0, voxel_size_nm=(40, 4, 4), mitochondria=True)
    image = volume.image.astype(np.float32) / 255
    labels = {"labels": volume.neurons.astype(np.uint64), "mask": np.ones(PATCH_ZYX, np.uint8)}
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    results["pipeline"] = timed(lambda: augment.augment(image, labels, PIPELINE, rng), repeat)
    for name in augment.AUGMENTATIONS:
        results[f"augment {name}"] = timed(lambda name=name: augment.apply(name, image, labels, rng), repeat)
    results["scipy rotate (reference)"] = timed(lambda: scipy_rotate(image, labels, 33.0), max(3, repeat // 5))
    results["scipy elastic (reference)"] = timed(lambda: scipy_elastic(image, labels, rng), max(3, repeat // 5))
    ids = labels["labels"]
    for kind in targets.TARGET_KINDS:
        results[f"target {kind}"] = timed(lambda kind=kind: targets.build_target(kind, ids, voxel_size_nm=(40, 4, 4)),
                                          repeat)
    target, valid = targets.build_target("affinity", ids)
    results["class_balanced_weights (3 ch)"] = timed(lambda: targets.class_balanced_weights(target, valid), repeat)
    results["border_weights 2d"] = timed(lambda: targets.border_weights(ids), repeat)

    print(f"patch {PATCH_ZYX} float32 + uint64 labels + uint8 mask, {repeat} repeats, single thread")
    print(f"{'what':34s} {'median ms':>10s} {'p90 ms':>8s} {'cpu ms':>8s}")
    for name, row in results.items():
        print(f"{name:34s} {row['median_ms']:10.2f} {row['p90_ms']:8.2f} {row['cpu_median_ms']:8.2f}")
    rot = results["scipy rotate (reference)"]["median_ms"] / results["augment rotate"]["median_ms"]
    ela = results["scipy elastic (reference)"]["median_ms"] / results["augment elastic"]["median_ms"]
    print(f"speed-up over scipy: rotate {rot:.1f}x, elastic {ela:.1f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"patch_zyx": PATCH_ZYX, "repeat": repeat, "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
