"""em-tile split + merge against a plain h5py whole-array copy: throughput and peak memory.

Both sides run as separate processes in the same run, on the same input, with the same HDF5
compression (gzip level 1); each process's peak RSS comes from wait4(). The volume is larger than
one chunk by 64x and 128x (the second volume is twice the first), so the table shows whether
memory follows the chunk (ours) or the volume (the whole-array copy).

    python benchmarks/bench_tile.py [--out DIR] [--quick]
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
sys.path.insert(0, os.path.dirname(HERE))

from emtools import io  # noqa: E402
from emtools.meta import Metadata  # noqa: E402
from emtools.tiling.geometry import Box  # noqa: E402

CHUNK = (32, 256, 256)
HALO = (4, 16, 16)

PEER_COPY = """
import sys, h5py
src, dst = sys.argv[1], sys.argv[2]
with h5py.File(src, "r") as f:
    data = f["main"][...]                      # the whole array in memory
with h5py.File(dst, "w") as g:
    g.create_dataset("main", data=data, chunks=(32, 128, 128), compression="gzip", compression_opts=1)
"""

BASELINE = "import h5py, numpy, emtools.io, emtools.cli.tile"


def make_volume(path: str, shape: tuple[int, int, int]) -> None:
    """EM-like uint8 (smooth structure + noise), written slab by slab to bound our own memory."""
    rng = np.random.default_rng(0)
    y = np.arange(shape[1], dtype=np.float32)[:, None]
    x = np.arange(shape[2], dtype=np.float32)[None, :]
    with io.VolumeWriter(path, shape, np.uint8, Metadata(voxel_size_nm=(40, 4, 4)), compression="gzip") as writer:
        for z0 in range(0, shape[0], 16):
            z1 = min(z0 + 16, shape[0])
            slab = np.empty((z1 - z0,) + shape[1:], dtype=np.uint8)
            for i, z in enumerate(range(z0, z1)):
                field = 128 + 60 * np.sin(x / 23.0 + z / 7.0) * np.cos(y / 31.0 - z / 11.0)
                slab[i] = np.clip(field + rng.normal(0, 12, shape[1:]), 0, 255).astype(np.uint8)
            writer.write(Box((z0, 0, 0), (z1,) + shape[1:]), slab)


# A small launcher forks the measured command: a child's peak RSS (ru_maxrss) starts from its
# parent's RSS at fork time, so forking straight from this (big) process would inflate it.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nmaxrss_kib=%d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd: list[str], stdin: str | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one command, run in a fresh small process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCHER] + cmd, input=stdin, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    maxrss_kib = int(proc.stderr.rsplit("maxrss_kib=", 1)[1].strip())
    return wall, maxrss_kib / 1024.0, proc.stdout


def em_tile() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "em-tile")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "emtools.cli.tile"]


def bench_one(workdir: str, shape: tuple[int, int, int]) -> dict:
    src = os.path.join(workdir, "vol.h5")
    make_volume(src, shape)
    voxels = int(np.prod(shape))
    chunk_ratio = voxels / float(np.prod(CHUNK))

    _, base_rss, _ = run_child([sys.executable, "-c", BASELINE])
    peer_s, peer_rss, _ = run_child([sys.executable, "-c", PEER_COPY, src, os.path.join(workdir, "copy.h5")])

    chunks = os.path.join(workdir, "chunks")
    split_s, split_rss, listing = run_child(em_tile() + ["split", src, "--chunk", ",".join(map(str, CHUNK)),
                                                         "--halo", ",".join(map(str, HALO)), "-o", chunks, "-q"])
    merged = os.path.join(workdir, "merged.h5")
    merge_s, merge_rss, _ = run_child(em_tile() + ["merge", "-", "-o", merged, "-q"], stdin=listing)

    original, _ = io.read_volume(src) if voxels <= 2**28 else (None, None)
    if original is not None:
        assert np.array_equal(io.read_volume(merged)[0], original), "round trip is not exact"
    shutil.rmtree(chunks)
    for name in ("copy.h5", "merged.h5", "vol.h5"):
        os.remove(os.path.join(workdir, name))
    ours_s = split_s + merge_s
    ours_rss = max(split_rss, merge_rss)
    return {
        "shape_zyx": list(shape),
        "voxels": voxels,
        "volume_mib": voxels / 2**20,
        "chunk_mib_with_halo": float(np.prod([c + 2 * h for c, h in zip(CHUNK, HALO)])) / 2**20,
        "volume_over_chunk": chunk_ratio,
        "baseline_rss_mib": base_rss,
        "peer_copy": {"seconds": peer_s, "mvox_per_s": voxels / peer_s / 1e6, "peak_rss_mib": peer_rss},
        "split": {"seconds": split_s, "mvox_per_s": voxels / split_s / 1e6, "peak_rss_mib": split_rss},
        "merge": {"seconds": merge_s, "mvox_per_s": voxels / merge_s / 1e6, "peak_rss_mib": merge_rss},
        "split_plus_merge": {"seconds": ours_s, "mvox_per_s": voxels / ours_s / 1e6, "peak_rss_mib": ours_rss},
        "ratios": {
            "time_ours_over_peer": ours_s / peer_s,
            "peak_rss_ours_over_peer": ours_rss / peer_rss,
            "rss_above_baseline_ours_over_peer": (
                (ours_rss - base_rss) / (peer_rss - base_rss) if peer_rss - base_rss > 8 else None
            ),
        },
    }


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for the JSON result (default: print only)")
    parser.add_argument("--quick", action="store_true", help="smaller volumes (a smoke run)")
    args = parser.parse_args()
    shapes = [(128, 1024, 1024), (256, 1024, 1024)] if not args.quick else [(32, 256, 256), (64, 512, 512)]
    results = []
    with tempfile.TemporaryDirectory(dir=args.out) as workdir:
        for shape in shapes:
            results.append(bench_one(workdir, shape))
    print(f"{'volume':>16} {'vol/chunk':>9} | {'peer s':>7} {'Mvox/s':>7} {'RSS MiB':>8} | "
          f"{'split s':>7} {'merge s':>7} {'Mvox/s':>7} {'RSS MiB':>8} | {'time x':>6} {'RSS x':>6} {'RSS-base x':>10}")
    for r in results:
        p, o, q = r["peer_copy"], r["split_plus_merge"], r["ratios"]
        print(f"{'x'.join(map(str, r['shape_zyx'])):>16} {r['volume_over_chunk']:>9.0f} | {p['seconds']:>7.2f} {p['mvox_per_s']:>7.1f} "
              f"{p['peak_rss_mib']:>8.0f} | {r['split']['seconds']:>7.2f} {r['merge']['seconds']:>7.2f} {o['mvox_per_s']:>7.1f} "
              f"{o['peak_rss_mib']:>8.0f} | {q['time_ours_over_peer']:>6.2f} {q['peak_rss_ours_over_peer']:>6.2f} "
              f"{_ratio(q['rss_above_baseline_ours_over_peer']):>10}")
    print(f"(interpreter baseline RSS {results[0]['baseline_rss_mib']:.0f} MiB; chunk with halo "
          f"{results[0]['chunk_mib_with_halo']:.1f} MiB; ratios are ours / peer; gzip level 1 on both sides)")
    if args.out:
        with open(os.path.join(args.out, "bench_tile.json"), "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
