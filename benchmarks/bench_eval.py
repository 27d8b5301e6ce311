"""em-eval's neuron metrics (VOI + adapted Rand together) against elf, scikit-image and waterz.

Every tool scores the same arrays in the same run, each in its own process with one thread
(OMP/numba/BLAS threads = 1): a warm-up call first (numba loads its compiled code, Python
imports settle), then the best of ``--repeats`` timed calls. Peak memory is the rise of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs just before the timed
calls) over its resident set before them, i.e. what the call itself allocates on top of its
inputs. Values are checked against ours in the same table.

Data: a synthetic 64x512x512 volume (emtools.synth neurons as ground truth; a segmentation
made from it with shifted boundaries, splits and merges, as a watershed would give), and the
real gala (train-ws fragments vs train-gt) and SNEMI3D-mini (fragments vs labels) volumes when
../shared/data is present. Ground-truth label 0 is ignored by every tool.

Peers: elf ``cremi_score`` (VOI and ARAND from one table; bioimage-cpp core), scikit-image
``adapted_rand_error`` + ``variation_of_information`` (two tables), waterz ``evaluate``
(VOI, Rand split/merge; it has no ARAND but its rand split/merge give it). A last row runs the
installed ``em-eval`` command end to end on HDF5 files (start-up, numba cache load, reading).

    python benchmarks/bench_eval.py [--out DIR] [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
TOOLS = ("em-eval", "elf", "scikit-image", "waterz")
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss)
sys.exit(proc.returncode)
"""
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# ----------------------------------------------------------------------------- data

def synthetic_pair(shape, seed=0):
    """Ground truth from emtools.synth; a segmentation with boundary shifts, splits and merges."""
    from emtools.synth import make_synthetic_volume

    gt = make_synthetic_volume(shape, seed=seed, mitochondria=False, noise_sigma=0.0,
                               mean_cell_diameter_nm=300.0).neurons
    rng = np.random.default_rng(seed)
    seg = np.roll(gt, (1, 2, -1), axis=(0, 1, 2))  # boundaries off by a voxel or two
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    block = (z // 16) * 64 + (y // 96) * 8 + (x // 96)  # splits: every object cut into blocks
    seg = np.where(seg > 0, seg * np.uint64(512) + block.astype(np.uint64), 0).astype(np.uint64)
    ids = np.unique(seg)
    ids = ids[ids > 0]
    merged = rng.choice(ids, size=len(ids) // 10, replace=False)  # merges: 10% join another id
    lut = {int(i): int(rng.choice(ids)) for i in merged}
    import fastremap

    seg = fastremap.remap(seg, lut, preserve_missing_labels=True, in_place=True)
    return np.ascontiguousarray(seg, np.uint64), np.ascontiguousarray(gt, np.uint64)


def real_pairs():
    from emtools import io

    pairs = {}
    for name, folder, seg_name, gt_name in (
        ("gala", "gala", "train-ws.lzf.h5:stack", "train-gt.lzf.h5:stack"),
        ("snemi-mini", "gala/snemi-mini", "train-fragments.tif", "train-labels.tif"),
    ):
        base = os.path.join(SHARED, folder)
        if os.path.isdir(base):
            seg, _ = io.read_volume(os.path.join(base, seg_name))
            gt, _ = io.read_volume(os.path.join(base, gt_name))
            pairs[name] = (seg.astype(np.uint64), gt.astype(np.uint64))
    return pairs


# ----------------------------------------------------------------------------- worker (one tool)

@contextlib.contextmanager
def _silent_fd1():
    """waterz prints its results from C++ to file descriptor 1."""
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _scorer(tool):
    """A function (seg, gt) -> {voi_split, voi_merge, adapted_rand_error} for one tool."""
    if tool == "em-eval":
        from emtools.evaluate import neuron_metrics

        def score(seg, gt):
            m = neuron_metrics(seg, gt)
            return {k: m[k] for k in ("voi_split", "voi_merge", "adapted_rand_error")}
    elif tool == "elf":
        from elf.evaluation import cremi_score

        def score(seg, gt):
            vis, vim, are, _ = cremi_score(seg, gt, ignore_gt=[0])
            return {"voi_split": vis, "voi_merge": vim, "adapted_rand_error": are}
    elif tool == "scikit-image":
        from skimage.metrics import adapted_rand_error, variation_of_information

        def score(seg, gt):
            are = adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
            split, merge = variation_of_information(gt, seg, ignore_labels=(0,))
            return {"voi_split": split, "voi_merge": merge, "adapted_rand_error": are}
    elif tool == "waterz":
        import waterz

        def score(seg, gt):
            with _silent_fd1():
                w = waterz.evaluate(seg, gt)
            p, r = w["rand_merge"], w["rand_split"]
            return {"voi_split": w["voi_split"], "voi_merge": w["voi_merge"],
                    "adapted_rand_error": 1.0 - 2.0 * p * r / (p + r)}
    else:
        raise SystemExit(f"unknown tool {tool}")
    return score


def _kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(tool, seg_path, gt_path, repeats):
    seg, gt = np.load(seg_path), np.load(gt_path)
    score = _scorer(tool)
    score(seg[:2, :16, :16].copy(), gt[:2, :16, :16].copy())  # warm-up: imports, numba cache
    times = []
    values = None
    peak_extra = 0
    for _ in range(repeats):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident set to the current one
        before = _kib("VmRSS")
        t0 = time.perf_counter()
        values = score(seg, gt)
        times.append(time.perf_counter() - t0)
        peak_extra = max(peak_extra, _kib("VmHWM") - before)
    values = {k: float(v) for k, v in values.items()}
    print(json.dumps({"tool": tool, "seconds": min(times), "all_seconds": times,
                      "peak_extra_mib": peak_extra / 1024, "values": values}))


# ----------------------------------------------------------------------------- driver

def run_worker(tool, seg_path, gt_path, repeats):
    env = dict(os.environ, **ONE_THREAD)
    result = subprocess.run([sys.executable, __file__, "--worker", tool, seg_path, gt_path, "--repeats", str(repeats)],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        return {"tool": tool, "error": reason[:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(seg, gt, folder):
    """em-eval end to end on uncompressed HDF5 files: wall time and the child's peak RSS."""
    from emtools import io
    from emtools.meta import Metadata

    seg_spec, gt_spec = os.path.join(folder, "seg.h5:/main"), os.path.join(folder, "gt.h5:/main")
    io.write_volume(seg_spec, seg, Metadata(), compression="none")
    io.write_volume(gt_spec, gt, Metadata(), compression="none")
    script = os.path.join(os.path.dirname(sys.executable), "em-eval")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "emtools.cli.eval"]
    env = dict(os.environ, **ONE_THREAD)
    best = peak = None
    for _ in range(2):
        # a small launcher forks the command, so the child's peak RSS is not inflated by this
        # process's pages (a fork's RSS counts the parent's until exec)
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", LAUNCHER, *command, seg_spec, gt_spec, "-q"],
                                capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - t0
        if result.returncode != 0:
            return {"tool": "em-eval CLI", "error": result.stderr.strip()[:200]}
        out, maxrss_kib = result.stdout.rsplit("\n", 2)[:2]
        best = seconds if best is None else min(best, seconds)
        peak = int(maxrss_kib) / 1024
        values = json.loads(out)
    return {"tool": "em-eval CLI", "seconds": best, "peak_rss_mib": peak,
            "values": {k: values[k] for k in ("voi_split", "voi_merge", "adapted_rand_error")}}


def bench_dataset(name, seg, gt, repeats, folder, with_cli):
    seg_path, gt_path = os.path.join(folder, f"{name}-seg.npy"), os.path.join(folder, f"{name}-gt.npy")
    np.save(seg_path, seg)
    np.save(gt_path, gt)
    rows = [run_worker(tool, seg_path, gt_path, repeats) for tool in TOOLS]
    if with_cli:
        rows.append(run_cli(seg, gt, folder))
    ours = rows[0]
    voxels = seg.size
    print(f"\n== {name}: {'x'.join(map(str, seg.shape))} = {voxels / 1e6:.1f} Mvox, "
          f"{np.count_nonzero(np.unique(gt))} gt objects, {len(np.unique(seg))} segments (incl. 0)")
    header = f"{'tool':<14} {'seconds':>8} {'Mvox/s':>8} {'peak MiB':>9} {'x ours':>7}  " \
             f"{'voi_split':>18} {'voi_merge':>18} {'arand':>18} {'max |diff|':>10}"
    print(header)
    for row in rows:
        if "error" in row:
            print(f"{row['tool']:<14} not measured: {row['error']}")
            continue
        diff = max(abs(row["values"][k] - ours["values"][k]) for k in row["values"]) if "values" in ours else float("nan")
        ratio = row["seconds"] / ours["seconds"] if "seconds" in ours else float("nan")
        peak = row.get("peak_extra_mib", row.get("peak_rss_mib", float("nan")))
        v = row["values"]
        print(f"{row['tool']:<14} {row['seconds']:8.3f} {voxels / row['seconds'] / 1e6:8.1f} {peak:9.1f} "
              f"{ratio:7.2f}  {v['voi_split']:18.15f} {v['voi_merge']:18.15f} {v['adapted_rand_error']:18.15f} "
              f"{diff:10.1e}")
        row.update(voxels=voxels, voxels_per_second=voxels / row["seconds"], slower_than_ours=ratio, max_abs_diff=diff)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for bench_eval.json")
    parser.add_argument("--quick", action="store_true", help="16x256x256 synthetic volume, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "SEG", "GT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeats)
        return
    shape = (16, 256, 256) if args.quick else (64, 512, 512)
    repeats = 2 if args.quick else args.repeats
    print(f"em-eval benchmark: VOI + adapted Rand, one thread per tool, best of {repeats} after a warm-up; "
          "peak MiB = memory the call adds on top of its inputs (the CLI row: the whole process)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as folder:
        t0 = time.perf_counter()
        seg, gt = synthetic_pair(shape)
        print(f"(synthetic volume made in {time.perf_counter() - t0:.1f} s)")
        results["synthetic"] = bench_dataset("synthetic", seg, gt, repeats, folder, with_cli=True)
        del seg, gt
        for name, (seg, gt) in real_pairs().items():
            results[name] = bench_dataset(name, seg, gt, max(repeats, 5), folder, with_cli=False)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "bench_eval.json")
        with open(path, "w") as handle:
            json.dump(results, handle, indent=1)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
