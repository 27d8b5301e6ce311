"""N workers writing one zarr store at once (--into) against one HDF5 file per chunk plus em-tile merge.

The same volume, cut into the same chunks, is written two ways by the same pool of N worker
processes (spawned and warmed up, emtools.io and zarr imported, before any clock starts):

- ``zarr --into``: ``emtools.io.create_array`` (what ``em-tile create`` does), then each worker
  writes its chunk's responsible region straight into the one array through ``io.into_spec`` and
  ``io.write_volume`` (what ``--into`` does: claim, store chunks written atomically, done marker).
  The volume is complete when the last worker finishes; no merge.
- ``hdf5 + merge``: each worker writes its chunk's region to its own HDF5 file (``io.write_volume``,
  what ``-o`` does), then ``em-tile merge`` (one process, as a user runs it) assembles them.

Both use gzip level 1; the store chunks are the chunks. Workers make their chunk's data from its
coordinates (no input is read), so the clock sees the writing only: uint64 labels (blocky, like
a segmentation) and uint8 maps (smooth, like em-predict --dtype uint8). Printed: wall seconds,
chunk writes per second, Mvoxel/s, and zarr's speed over HDF5 + merge; the two results are
checked equal voxel for voxel.

    python benchmarks/bench_zarr.py [--out DIR] [--workers N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from emtools import io  # noqa: E402
from emtools.meta import Metadata  # noqa: E402
from emtools.tiling.geometry import Box, chunk_attrs, plan_chunks  # noqa: E402

VOXEL = (40.0, 8.0, 8.0)


def chunk_data(box: Box, kind: str) -> np.ndarray:
    """Deterministic data of a box (global voxels): blocky labels or a smooth uint8 map."""
    z, y, x = np.meshgrid(*(np.arange(b, e) for b, e in zip(box.begin, box.end)), indexing="ij", sparse=True)
    if kind == "labels":
        return (1 + (z // 6) * 10_000 + (y // 40) * 100 + (x // 40) + ((y + 3 * x) // 97) * 7).astype(np.uint64)
    field = 128 + 60 * np.sin(x / 23.0 + z / 7.0) * np.cos(y / 31.0 - z / 11.0) + ((x * 7 + y * 13 + z) % 17)
    return np.clip(field, 0, 255).astype(np.uint8)


def _warm() -> None:
    """Import zarr and h5py and run each write path once on a tiny array, off the clock."""
    with tempfile.TemporaryDirectory() as folder:
        box = Box((0, 0, 0), (2, 4, 4))
        meta = Metadata(voxel_size_nm=VOXEL)
        io.create_array(os.path.join(folder, "w.zarr/a"), box.shape, np.uint8, meta, box.shape, ("gzip", 1))
        io.write_volume(io.into_spec(os.path.join(folder, "w.zarr/a"), box), np.ones(box.shape, np.uint8), meta)
        io.write_volume(os.path.join(folder, "w.h5"), np.ones(box.shape, np.uint8), meta)


def write_h5(task) -> str:
    folder, box, volume, kind = task
    meta = Metadata(offset_nm=tuple(b * v for b, v in zip(box.begin, VOXEL)), voxel_size_nm=VOXEL,
                    attrs=chunk_attrs(box, box, volume))
    return io.write_volume(os.path.join(folder, f"chunk_{box.name()}.h5"), chunk_data(box, kind), meta)


def write_into(task) -> str:
    array, box, kind = task
    meta = Metadata(offset_nm=tuple(b * v for b, v in zip(box.begin, VOXEL)), voxel_size_nm=VOXEL)
    return io.write_volume(io.into_spec(array, box), chunk_data(box, kind), meta)


def em_tile() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "em-tile")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "emtools.cli.tile"]


def bench_one(workdir: str, pool, shape, chunk, kind: str) -> dict:
    volume = Box.from_shape(shape)
    boxes = [c.responsible for c in plan_chunks(volume, chunk, (0, 0, 0))]
    dtype = np.uint64 if kind == "labels" else np.uint8
    voxels = volume.size

    array = os.path.join(workdir, "out.zarr", kind)
    start = time.perf_counter()
    io.create_array(array, shape, dtype, Metadata(voxel_size_nm=VOXEL), chunk, ("gzip", 1))
    pool.map(write_into, [(array, box, kind) for box in boxes], chunksize=1)
    zarr_s = time.perf_counter() - start

    folder = os.path.join(workdir, f"chunks_{kind}")
    os.makedirs(folder)
    merged = os.path.join(workdir, f"merged_{kind}.h5")
    start = time.perf_counter()
    paths = pool.map(write_h5, [(folder, box, volume, kind) for box in boxes], chunksize=1)
    written_s = time.perf_counter() - start
    proc = subprocess.run(em_tile() + ["merge", "-", "-o", merged, "-q"], input="\n".join(paths) + "\n",
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    h5_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"em-tile merge failed: {proc.stderr}")

    ours, theirs = io.read_volume(array)[0], io.read_volume(merged)[0]
    assert np.array_equal(ours, theirs), "zarr --into and HDF5 + merge differ"
    sizes = {"zarr": _du(array), "hdf5_merged": os.path.getsize(merged)}
    shutil.rmtree(os.path.join(workdir, "out.zarr"))
    shutil.rmtree(folder)
    os.remove(merged)
    return {
        "kind": kind, "dtype": str(np.dtype(dtype)), "shape_zyx": list(shape), "chunk_zyx": list(chunk),
        "chunks": len(boxes), "voxels": voxels,
        "zarr_into": {"seconds": zarr_s, "writes_per_s": len(boxes) / zarr_s, "mvox_per_s": voxels / zarr_s / 1e6,
                      "bytes": sizes["zarr"]},
        "hdf5_files_plus_merge": {"seconds": h5_s, "chunk_files_seconds": written_s, "merge_seconds": h5_s - written_s,
                                  "writes_per_s": len(boxes) / h5_s, "mvox_per_s": voxels / h5_s / 1e6,
                                  "bytes_merged": sizes["hdf5_merged"]},
        "speed_zarr_over_hdf5": h5_s / zarr_s,
    }


def _du(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for the JSON result (default: print only)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes writing at once (default: the CPUs, at most 4)")
    parser.add_argument("--quick", action="store_true", help="a smaller volume (a smoke run)")
    args = parser.parse_args()
    shape, chunk = ((32, 512, 512), (16, 128, 128)) if args.quick else ((128, 1024, 1024), (32, 256, 256))
    results = []
    context = multiprocessing.get_context("spawn")  # zarr's event-loop thread does not survive fork
    with tempfile.TemporaryDirectory(dir=args.out) as workdir, \
            context.Pool(args.workers, initializer=_warm) as pool:
        pool.map(time.sleep, [0.01] * args.workers)  # every worker started and warm
        for kind in ("labels", "maps"):
            results.append(bench_one(workdir, pool, shape, chunk, kind))
    print(f"{args.workers} workers, volume {'x'.join(map(str, shape))}, {results[0]['chunks']} chunks of "
          f"{'x'.join(map(str, chunk))}, gzip level 1")
    print(f"{'data':>14} | {'zarr s':>7} {'writes/s':>8} {'Mvox/s':>7} | {'h5 s':>6} {'(files':>7} {'merge)':>7} "
          f"{'writes/s':>8} {'Mvox/s':>7} | {'zarr x':>6}")
    for r in results:
        z, h = r["zarr_into"], r["hdf5_files_plus_merge"]
        print(f"{r['kind'] + ' ' + r['dtype']:>14} | {z['seconds']:>7.2f} {z['writes_per_s']:>8.1f} {z['mvox_per_s']:>7.1f} | "
              f"{h['seconds']:>6.2f} {h['chunk_files_seconds']:>7.2f} {h['merge_seconds']:>7.2f} "
              f"{h['writes_per_s']:>8.1f} {h['mvox_per_s']:>7.1f} | {r['speed_zarr_over_hdf5']:>6.2f}")
    print("(writes/s: chunks written per second until the whole volume is on disk; zarr x: HDF5 + merge time "
          "over zarr --into time, above 1 = zarr faster)")
    if args.out:
        with open(os.path.join(args.out, "bench_zarr.json"), "w") as handle:
            json.dump({"workers": args.workers, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
