"""em-watershed + em-agglomerate against waterz, and our seeded watershed against bioimage-cpp.

Data sets (each: 9 thresholds 0.1..0.9 in one pass):

- ``synthetic``: 64x512x512 affinities (16.8 Mvoxel) from ``emtools.synth`` neurites
  (40x8x8 nm voxels, 400 nm calibre) through ``emtools.affinities.noisy_affinities`` (blurred
  targets + smooth noise + pixel noise), stored as float32 HDF5 (lzf).
- ``gala``: ../shared/data/gala boundary probabilities (train-p1), 50x100x200.
- ``snemi``: ../shared/data/gala/snemi-mini cell-interior probabilities (uint8, inverted), 32x160x160.

Ours: ``em-watershed`` then ``em-agglomerate segment`` as separate processes, with their file
I/O (reading the input, writing fragments and 9 gzip segmentations), wall time summed, peak RSS
the larger of the two (wait4), with the kernels ``make install`` compiled ahead of time and
again with ``EMTOOLS_KERNELS=jit`` (numba JIT, as without that build). waterz: ``waterz.agglomerate`` in a fresh process on the same
affinities (for boundary maps, the contact affinity ``1 - max(b[p], b[q])`` that our tools use),
its own fragments (default thresholds 0.0001/0.9999) and, separately, our fragments; the
input is loaded before the clock starts; peak RSS of the process; VOI computed after each
threshold and its time subtracted. VOI (split + merge, bits) and adapted Rand error against the
ground truth, ground-truth label 0 ignored. Seeded watershed: the same boundary map and seeds
through ``emtools.segment.watershed.seeded_watershed``, ``bioimage_cpp.segmentation.watershed`` and
scikit-image's ``watershed`` in this process (best of 3; scikit-image once).

Mutex watershed (``--mutex``, on its own): FIB-25 bodies z 100..149 (3.1 Mvoxel) -> affinities for
``MUTEX_OFFSETS`` with synthetic noise (per channel: Gaussian blur 0.5 vx, smooth noise of std
``--mutex-noise`` blurred 2 vx, pixel noise 0.05; not a network's predictions) -> em-watershed
--method mutex (bias 0, 0.1, 0.2; stride 2,3,3) against em-watershed + em-agglomerate (9
thresholds) on the nearest-neighbour channels of the same array; in-process, JIT warmed up.

    python benchmarks/bench_segment.py [--out DIR] [--quick] [--skip-peers] [--mutex [--mutex-noise 0.1]]

Writes bench_segment.txt/.json to --out; DIR/segment-data keeps the generated volumes (~1 GB for
the full synthetic set) so reruns skip the ~40 s it takes to make them. ~6 minutes in all.

Peers are optional (pip: waterz, bioimage-cpp, scikit-image); missing ones are reported as such.
"""

from __future__ import annotations

import argparse
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

from emtools import io  # noqa: E402
from emtools.meta import Metadata  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
THRESHOLDS = [round(0.1 * i, 1) for i in range(1, 10)]
WATERZ_SCORES = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    "quantile:50": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>",
}

LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nmaxrss_kib=%d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""

WATERZ_CHILD = """
import json, os, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import waterz
from emtools.evaluate.neuron import neuron_metrics
affs = np.ascontiguousarray(np.load(sys.argv[2]), dtype=np.float32)
gt = np.load(sys.argv[3])
score, thresholds, fragments_path, result_path = sys.argv[4], json.loads(sys.argv[5]), sys.argv[6], sys.argv[7]
fragments = np.load(fragments_path).astype(np.uint64) if fragments_path != "-" else None
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
evaluation = 0.0
metrics = []
start = time.perf_counter()
for seg in waterz.agglomerate(affs, thresholds, fragments=fragments, scoring_function=score):
    t0 = time.perf_counter()
    m = neuron_metrics(seg, gt)
    metrics.append({"voi": m["voi"], "voi_split": m["voi_split"], "voi_merge": m["voi_merge"],
                    "arand": m["adapted_rand_error"], "segments": m["seg_objects"]})
    evaluation += time.perf_counter() - t0
wall = time.perf_counter() - start - evaluation
json.dump({"seconds": wall, "metrics": metrics}, open(result_path, "w"))
"""


def run_child(cmd: list[str], kernels: str = "auto") -> tuple[float, float, str, str]:
    """Wall seconds, peak RSS (MiB), stdout and stderr of one command in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", EMTOOLS_KERNELS=kernels)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCHER] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rss = [line for line in proc.stderr.splitlines() if line.startswith("maxrss_kib=")]
    return wall, int(rss[-1].split("=")[1]) / 1024.0, proc.stdout, proc.stderr


def metrics(seg: np.ndarray, gt: np.ndarray) -> dict:
    from emtools.evaluate.neuron import neuron_metrics

    m = neuron_metrics(seg, gt)
    return {"voi": m["voi"], "voi_split": m["voi_split"], "voi_merge": m["voi_merge"],
            "arand": m["adapted_rand_error"], "segments": m["seg_objects"]}


def affinities_from_boundary(boundary: np.ndarray) -> np.ndarray:
    """The contact affinities our tools use for a boundary map: 1 - max(b[p], b[q])."""
    affs = np.zeros((3,) + boundary.shape, np.float32)
    affs[0, 1:] = 1 - np.maximum(boundary[1:], boundary[:-1])
    affs[1, :, 1:] = 1 - np.maximum(boundary[:, 1:], boundary[:, :-1])
    affs[2, :, :, 1:] = 1 - np.maximum(boundary[:, :, 1:], boundary[:, :, :-1])
    return affs


# ----------------------------------------------------------------------------- data

def prepare(work: str, quick: bool) -> list[dict]:
    from emtools.affinities import noisy_affinities
    from emtools.synth import make_synthetic_volume

    sets = []
    shape = (16, 256, 256) if quick else (64, 512, 512)
    name = "synthetic" + ("-quick" if quick else "")
    affs_spec = os.path.join(work, f"{name}_affs.h5:/affs")
    if not os.path.exists(os.path.join(work, f"{name}_affs.h5")):
        print(f"making {name} {shape} ...", file=sys.stderr, flush=True)
        volume = make_synthetic_volume(shape, seed=1, voxel_size_nm=(40, 8, 8), mean_cell_diameter_nm=400)
        affs = noisy_affinities(volume.neurons, seed=1)
        np.save(os.path.join(work, f"{name}_gt.npy"), volume.neurons)
        np.save(os.path.join(work, f"{name}_affs.npy"), affs)
        io.write_volume(affs_spec, affs, Metadata(axes="czyx", voxel_size_nm=(40, 8, 8)), compression="lzf")
        del volume, affs
    sets.append({"name": name, "input": affs_spec, "ws_args": [], "agg_args": [],
                 "affs_npy": os.path.join(work, f"{name}_affs.npy"), "gt_npy": os.path.join(work, f"{name}_gt.npy"),
                 "inprocess_npy": os.path.join(work, f"{name}_affs.npy"), "mode": "2d", "voxel_nm": [40, 8, 8]})
    gala = os.path.join(SHARED, "gala")
    if os.path.isdir(gala):
        boundary, _ = io.read_volume(os.path.join(gala, "train-p1.lzf.h5:stack"))
        gt, _ = io.read_volume(os.path.join(gala, "train-gt.lzf.h5:stack"))
        np.save(os.path.join(work, "gala_affs.npy"), affinities_from_boundary(boundary))
        np.save(os.path.join(work, "gala_boundary.npy"), boundary)
        np.save(os.path.join(work, "gala_gt.npy"), gt)
        sets.append({"name": "gala", "input": os.path.join(gala, "train-p1.lzf.h5:stack"), "ws_args": ["--mode", "3d"],
                     "agg_args": [], "affs_npy": os.path.join(work, "gala_affs.npy"),
                     "gt_npy": os.path.join(work, "gala_gt.npy"),
                     "inprocess_npy": os.path.join(work, "gala_boundary.npy"), "mode": "3d", "voxel_nm": [1, 1, 1]})
        snemi = os.path.join(gala, "snemi-mini")
        interior, _ = io.read_volume(os.path.join(snemi, "train-probabilities.tif"))
        gt, _ = io.read_volume(os.path.join(snemi, "train-labels.tif"))
        boundary = (1 - interior / np.float32(255)).astype(np.float32)
        np.save(os.path.join(work, "snemi_affs.npy"), affinities_from_boundary(boundary))
        np.save(os.path.join(work, "snemi_boundary.npy"), boundary)
        np.save(os.path.join(work, "snemi_gt.npy"), gt)
        sets.append({"name": "snemi", "input": os.path.join(snemi, "train-probabilities.tif"),
                     "ws_args": ["--invert", "--voxel-size", "30,6,6"], "agg_args": ["--invert", "--voxel-size", "30,6,6"],
                     "affs_npy": os.path.join(work, "snemi_affs.npy"), "gt_npy": os.path.join(work, "snemi_gt.npy"),
                     "inprocess_npy": os.path.join(work, "snemi_boundary.npy"), "mode": "2d", "voxel_nm": [30, 6, 6]})
    else:
        print(f"skipping gala and snemi: {gala} not found", file=sys.stderr)
    return sets


# ----------------------------------------------------------------------------- runs

def run_ours(data: dict, work: str, score: str, kernels: str = "auto") -> dict:
    """em-watershed then em-agglomerate; ``kernels``: EMTOOLS_KERNELS (auto: the built ones)."""
    tag = f"{data['name']}_{score.replace(':', '')}_{kernels}"
    frags = os.path.join(work, f"{tag}_frags.h5")
    ws = run_child([sys.executable, "-m", "emtools.cli.watershed", data["input"], "-o", frags, "-q", *data["ws_args"]],
                   kernels)
    template = os.path.join(work, f"{tag}_seg_{{threshold}}.h5")
    agg = run_child([sys.executable, "-m", "emtools.cli.agglomerate", "segment", frags, data["input"],
                     "-t", ",".join(map(str, THRESHOLDS)), "--score", score, "-o", template, "-q", *data["agg_args"]],
                    kernels)
    gt = np.load(data["gt_npy"])
    results = [metrics(io.read_volume(path)[0], gt) for path in agg[2].split()]
    fragments, _ = io.read_volume(frags)
    np.save(os.path.join(work, f"{data['name']}_ours_frags.npy"), fragments)
    return {"seconds": ws[0] + agg[0], "watershed_seconds": ws[0], "agglomerate_seconds": agg[0],
            "peak_mib": max(ws[1], agg[1]), "fragments": int(fragments.max()), "metrics": results}


OURS_INPROCESS_CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from emtools.segment import agglomerate as A, region_graph as R, watershed as W
from emtools.evaluate.neuron import neuron_metrics
values = np.load(sys.argv[2])
gt = np.load(sys.argv[3])
name, q = A.parse_score(sys.argv[4])
thresholds, result_path, mode = json.loads(sys.argv[5]), sys.argv[6], sys.argv[7]
voxel = json.loads(sys.argv[8])
key = "affinities" if values.ndim == 4 else "boundary"

def run(values):
    boundary = W.boundary_from_affinities(values) if key == "affinities" else values
    fragments = W.fragments(boundary, mode=mode, threshold=0.3, voxel_size_nm=voxel, min_size=20)
    nodes = R.compact_labels(fragments)
    graph = R.region_graph(nodes[0], bins=256 if name == "quantile" else 0, nodes=nodes, **{key: values})
    return nodes, A.merge_history(graph, thresholds[-1], name, q, consume=True)

# warm up the compiled code on a tiny crop, so the clock sees only the work
tiny = np.ascontiguousarray(values[..., :2, :16, :16])
for _ in A.segmentations(None, run(tiny)[1], thresholds, nodes=run(tiny)[0]):
    pass
start = time.perf_counter()
nodes, history = run(values)
evaluation = 0.0
metrics = []
for seg in A.segmentations(None, history, thresholds, nodes=nodes, reuse_buffer=True):
    t0 = time.perf_counter()
    m = neuron_metrics(seg, gt)
    metrics.append({"voi": m["voi"], "voi_split": m["voi_split"], "voi_merge": m["voi_merge"],
                    "arand": m["adapted_rand_error"], "segments": m["seg_objects"]})
    evaluation += time.perf_counter() - t0
wall = time.perf_counter() - start - evaluation
json.dump({"seconds": wall, "metrics": metrics}, open(result_path, "w"))
"""


def run_ours_inprocess(data: dict, work: str, score: str) -> dict:
    """Our pipeline through the library in one warm process: no start-up, no file I/O."""
    result_path = os.path.join(work, "ours_result.json")
    wall, rss, _, _ = run_child([sys.executable, "-c", OURS_INPROCESS_CHILD, ROOT, data["inprocess_npy"], data["gt_npy"],
                                 score, json.dumps(THRESHOLDS), result_path, data["mode"], json.dumps(data["voxel_nm"])])
    out = json.load(open(result_path))
    out["peak_mib"] = rss
    return out


def run_waterz(data: dict, work: str, score: str, fragments: str | None) -> dict:
    result_path = os.path.join(work, "waterz_result.json")
    wall, rss, _, _ = run_child([sys.executable, "-c", WATERZ_CHILD, ROOT, data["affs_npy"], data["gt_npy"],
                                 WATERZ_SCORES[score], json.dumps(THRESHOLDS), fragments or "-", result_path])
    out = json.load(open(result_path))
    out["peak_mib"] = rss
    return out


def bench_seeded(data: dict, skip_peers: bool) -> dict:
    """Seeded watershed alone: same boundary map and seeds, ours vs bioimage-cpp vs scikit-image."""
    from emtools.segment import watershed as W

    affs = np.load(data["affs_npy"])
    boundary = W.boundary_from_affinities(affs)
    del affs
    seeds = W.distance_seeds(boundary, 0.3, "3d", None, 4.0)
    out = {"voxels": int(boundary.size), "seeds": int(seeds.max())}

    def best(fn, repeats=3):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return min(times), result

    out["ours_seconds"], ours = best(lambda: W.seeded_watershed(boundary, seeds))
    out["ours_exact_seconds"], exact = best(lambda: W.seeded_watershed(boundary, seeds, exact=True))
    out["ours_fast_vs_exact_agreement"] = float((ours == exact).mean())
    if skip_peers:
        return out
    try:
        import bioimage_cpp

        out["bioimage_cpp_seconds"], theirs = best(lambda: bioimage_cpp.segmentation.watershed(boundary, seeds))
        out["agreement_with_bioimage_cpp"] = float((theirs == ours).mean())
    except ImportError:
        out["bioimage_cpp"] = "not installed (pip install bioimage-cpp)"
    try:
        from skimage.segmentation import watershed as sk_watershed

        out["skimage_seconds"], theirs = best(lambda: sk_watershed(boundary, seeds.astype(np.int64)), repeats=1)
        out["exact_agreement_with_skimage"] = float((theirs == exact).mean())
    except ImportError:
        out["skimage"] = "not installed (pip install scikit-image)"
    return out


MUTEX_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3], [-9, 0, 0], [0, -9, 0],
                 [0, 0, -9], [0, -9, -9], [0, 9, -9], [-27, 0, 0], [0, -27, 0], [0, 0, -27]]


def bench_mutex(work: str, noise: float) -> list[str]:
    """Mutex watershed vs watershed + agglomeration on noisy long-range affinities of FIB-25."""
    import h5py
    from scipy import ndimage

    from emtools.segment.jobs import WatershedSettings, agglomerate_volume, watershed_volume
    from emtools.targets import affinity_target

    with h5py.File(os.path.join(SHARED, "fib25", "train", "bodies.h5"), "r") as f:
        gt = f["bodies"][100:150].astype(np.uint64)
    rng = np.random.default_rng(0)
    affs, _ = affinity_target(gt, MUTEX_OFFSETS)
    for c in range(len(MUTEX_OFFSETS)):  # noisy_affinities' recipe, isotropic, on every channel
        ch = ndimage.gaussian_filter(affs[c], 0.5, mode="nearest")
        smooth = ndimage.gaussian_filter(rng.standard_normal(ch.shape, dtype=np.float32), 2.0, mode="nearest")
        ch += smooth * np.float32(noise / (float(smooth.std()) or 1.0))
        ch += rng.standard_normal(ch.shape, dtype=np.float32) * np.float32(0.05)
        affs[c] = np.clip(ch, 0, 1)
    meta = Metadata(axes="czyx", voxel_size_nm=(10, 10, 10), attrs={"affinity_offsets": MUTEX_OFFSETS})
    spec, small = os.path.join(work, "lr_affs.h5:/affs"), os.path.join(work, "lr_small.h5:/affs")
    io.write_volume(spec, affs, meta, compression="lzf")
    io.write_volume(small, np.ascontiguousarray(affs[:, :8, :40, :40]), meta, compression="lzf")
    out = lambda name: os.path.join(work, name)  # noqa: E731
    watershed_volume(small, out("w.h5"), WatershedSettings(mode="3d"))  # JIT warm-up
    agglomerate_volume(out("w.h5"), small, [0.5], out("wa.h5"))
    watershed_volume(small, out("wm.h5"), WatershedSettings(method="mutex", mode="3d"))
    lines = [f"== mutex watershed: FIB-25 z 100..149 ({gt.size / 1e6:.2f} Mvoxel), {len(MUTEX_OFFSETS)} offsets, "
             f"synthetic noise {noise:g} (not a network's)", f"{'run':42s} {'s':>7s} {'VOI':>6s} {'split':>6s} "
             f"{'merge':>6s} {'ARAND':>6s}"]
    start = time.perf_counter()
    frags = watershed_volume(spec, out("frags.h5"), WatershedSettings(mode="3d"))
    segs = agglomerate_volume(frags, spec, THRESHOLDS, out("seg_{threshold}.h5"))
    seconds = time.perf_counter() - start
    scored = [metrics(io.read_volume(p)[0], gt) for p in segs]
    i = int(np.argmin([m["voi"] for m in scored]))
    m = scored[i]
    lines.append(f"{f'watershed + agglomerate (best t {THRESHOLDS[i]})':42s} {seconds:7.2f} {m['voi']:6.3f} "
                 f"{m['voi_split']:6.3f} {m['voi_merge']:6.3f} {m['arand']:6.3f}")
    for options in ({}, {"bias": 0.1}, {"bias": 0.2}, {"stride": (2, 3, 3)}):
        start = time.perf_counter()
        path = watershed_volume(spec, out("mutex.h5"), WatershedSettings(method="mutex", mode="3d", **options))
        seconds = time.perf_counter() - start
        m = metrics(io.read_volume(path)[0], gt)
        name = "mutex " + (" ".join(f"{k}={v}" for k, v in options.items()) or "defaults")
        lines.append(f"{name:42s} {seconds:7.2f} {m['voi']:6.3f} {m['voi_split']:6.3f} {m['voi_merge']:6.3f} "
                     f"{m['arand']:6.3f}")
    return lines


def best_of(results: dict) -> tuple[float, dict]:
    i = int(np.argmin([m["voi"] for m in results["metrics"]]))
    return THRESHOLDS[i], results["metrics"][i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-out"))
    parser.add_argument("--quick", action="store_true", help="a 16x256x256 synthetic volume instead of 64x512x512")
    parser.add_argument("--skip-peers", action="store_true", help="only our tools")
    parser.add_argument("--mutex", action="store_true", help="only the mutex watershed comparison (FIB-25, ~2 min)")
    parser.add_argument("--mutex-noise", type=float, default=0.1, help="smooth noise std of its affinities")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "segment-data")
    os.makedirs(work, exist_ok=True)
    if args.mutex:
        text = "\n".join(bench_mutex(work, args.mutex_noise))
        print(text)
        with open(os.path.join(args.out, "bench_segment_mutex.txt"), "w") as handle:
            handle.write(text + "\n")
        return
    try:
        import waterz  # noqa: F401

        have_waterz = not args.skip_peers
    except ImportError:
        have_waterz = False
    from emtools import native

    kernels = native.status()
    report: dict = {"thresholds": THRESHOLDS, "sets": {}, "kernels": kernels}
    lines = [f"kernels: {kernels['kernels']} ({kernels['reason']})", ""]
    for data in prepare(work, args.quick):
        voxels = int(np.prod(np.load(data["gt_npy"], mmap_mode="r").shape))
        entry = {"voxels": voxels}
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            for score in WATERZ_SCORES:
                print(f"{data['name']}: ours {score} ...", file=sys.stderr, flush=True)
                entry[f"ours {score}"] = run_ours(data, tmp, score)
                if kernels["kernels"] == "aot":  # what the compiled kernels save, in the same run
                    entry[f"ours {score} JIT kernels"] = run_ours(data, tmp, score, "jit")
                entry[f"ours {score} in-process (library)"] = run_ours_inprocess(data, tmp, score)
                if have_waterz:
                    print(f"{data['name']}: waterz {score} ...", file=sys.stderr, flush=True)
                    entry[f"waterz {score}"] = run_waterz(data, tmp, score, None)
                    ours_frags = os.path.join(tmp, f"{data['name']}_ours_frags.npy")
                    entry[f"waterz {score} on our fragments"] = run_waterz(data, tmp, score, ours_frags)
        if data["name"].startswith("synthetic"):
            print(f"{data['name']}: seeded watershed ...", file=sys.stderr, flush=True)
            entry["seeded watershed"] = bench_seeded(data, args.skip_peers)
        report["sets"][data["name"]] = entry
        lines.append(f"== {data['name']} ({voxels / 1e6:.2f} Mvoxel; 9 thresholds)")
        lines.append(f"{'run':42s} {'s':>7s} {'Mvox/s':>7s} {'peak MiB':>9s} {'best t':>6s} {'VOI':>6s} {'split':>6s} {'merge':>6s} {'ARAND':>6s}")
        for key, res in entry.items():
            if not isinstance(res, dict) or "metrics" not in res:
                continue
            t, m = best_of(res)
            lines.append(f"{key:42s} {res['seconds']:7.2f} {voxels / res['seconds'] / 1e6:7.2f} {res['peak_mib']:9.0f} "
                         f"{t:6.1f} {m['voi']:6.3f} {m['voi_split']:6.3f} {m['voi_merge']:6.3f} {m['arand']:6.3f}")
        for score in WATERZ_SCORES:
            ours, theirs = entry.get(f"ours {score}"), entry.get(f"waterz {score}")
            if ours and theirs:
                lines.append(f"ratio waterz/ours {score}: time {theirs['seconds'] / ours['seconds']:.2f}x, "
                             f"peak memory {theirs['peak_mib'] / ours['peak_mib']:.2f}x, "
                             f"best VOI ours {best_of(ours)[1]['voi']:.3f} vs waterz {best_of(theirs)[1]['voi']:.3f}")
            jit = entry.get(f"ours {score} JIT kernels")
            if ours and jit:
                lines.append(f"ratio JIT/compiled kernels {score}, command line: time {jit['seconds'] / ours['seconds']:.2f}x "
                             f"(watershed {jit['watershed_seconds']:.2f} -> {ours['watershed_seconds']:.2f} s, "
                             f"agglomerate {jit['agglomerate_seconds']:.2f} -> {ours['agglomerate_seconds']:.2f} s)")
            warm = entry.get(f"ours {score} in-process (library)")
            if warm and theirs:
                lines.append(f"ratio waterz/ours {score}, both in-process: time {theirs['seconds'] / warm['seconds']:.2f}x "
                             f"(our command-line start-up and file I/O: {ours['seconds'] - warm['seconds']:.2f} s)")
        seeded = entry.get("seeded watershed")
        if seeded:
            v = seeded["voxels"] / 1e6
            text = [f"seeded watershed ({seeded['seeds']} seeds): ours {seeded['ours_seconds']:.2f} s ({v / seeded['ours_seconds']:.1f} Mvox/s)",
                    f"ours exact order {seeded['ours_exact_seconds']:.2f} s"]
            if "bioimage_cpp_seconds" in seeded:
                text.append(f"bioimage-cpp {seeded['bioimage_cpp_seconds']:.2f} s ({v / seeded['bioimage_cpp_seconds']:.1f} Mvox/s, "
                            f"{seeded['bioimage_cpp_seconds'] / seeded['ours_seconds']:.2f}x ours; same labels "
                            f"{100 * seeded['agreement_with_bioimage_cpp']:.3f}%)")
            if "skimage_seconds" in seeded:
                text.append(f"scikit-image {seeded['skimage_seconds']:.2f} s (same labels as our exact order "
                            f"{100 * seeded['exact_agreement_with_skimage']:.3f}%)")
            lines.append("; ".join(text))
        lines.append("")
        print("\n".join(lines[-12:]), file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "bench_segment.txt"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out, "bench_segment.json"), "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
