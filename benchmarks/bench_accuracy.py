"""End-to-end accuracy: the documented recipes trained, applied and scored by the command-line
tools exactly as a user runs them, on held-out blocks of real volumes, with the time of every stage.

    python benchmarks/bench_accuracy.py [--quick] [--only fib25,gala,isbi,vnc,lucchi]
                                        [--variants recipe,scratch,previous,lsd] [--budget-min 30]
                                        [--steps N] [--threads 2] [--out DIR] [--json results.json]
                                        [--pretrained NAME|CHECKPOINT] [--mito-config FILE]

Every variant is a sequence of subprocesses: em-train (train.minutes=--budget-min: em-train stops
when the time is spent and runs its cosine schedule over it; or --steps), em-predict with its
defaults (the patch is its own choice; its closing line gives the Mvoxel/s), em-watershed,
em-agglomerate and em-eval. The last checkpoint (last.pt) is always scored: validation is off
(validation.every=0), so nothing is chosen on the held-out block, which no training crop touches
(the volume's val_region).

(1) fib25: FIB-25 fly medulla (FIB-SEM, 10 nm), train z 0-99, score z 100-149. Variants, each
    with the same budget: "recipe (pretrained + fine-tune)" (em-train --init PRETRAINED with the
    fine-tuning config), "recipe from scratch" (the pretraining config) and "previous example"
    (examples/train_gala.yaml, the config a user had before the recipe, on the same data); on
    request (--variants ...,lsd) "recipe + LSD head": the recipe with a local-shape-descriptor head
    (LSD_HEAD) beside the pretrained model's heads (README: no gain in 30 minutes here). Then
    em-predict --heads affinity RECIPE_TTA, em-watershed (defaults), em-agglomerate segment over THRESHOLDS,
    em-eval on all of them: VOI split/merge/total and adapted Rand error at RECIPE_THRESHOLD (the
    recipe's fixed setting) and the best of the sweep ("oracle": chosen on the held-out block, an
    upper bound, not a result). A model with a long_range head also gets a mutex-watershed row
    (em-predict --heads affinity+long_range, em-watershed --method mutex) on the same block.
(2) gala: the same three variants on the gala FIB-SEM crop (10 nm assumed), train z 0-33, score
    z 34-49 in 3D; the recipe variant fine-tunes the FIB-25 model on another volume (transfer).
(3) isbi / (4) vnc: ssTEM (anisotropic), SSTEM_CONFIG (a 2D boundary model) on ISBI 2012 (slices
    0-24 train, 25-29 held out) and on drosophila_vnc stack 1 (0-15 train, 16-19 held out). The
    boundary map is segmented per section (em-watershed --mode 2d) at the default seed threshold
    and over SSTEM_THRESHOLDS (oracle), scored per section: the mean adapted Rand error of the
    sections (em-eval --mode sections) and
    em-eval's VOI of the stack. Then the recipe's last step: the default fragments merged on the
    boundary map (em-agglomerate segment) at SSTEM_MERGE (fixed) and over SSTEM_MERGE_SWEEP. The
    ground truth is the connected components of each section's cell interior.
(5) lucchi: mitochondria on Lucchi++ (FIB-SEM, 5 nm), MITO_CONFIG (its model works at 10 nm): the
    recipe fine-tunes the shipped MITO_PRETRAINED; beside it the config from scratch at 10 nm and at
    the data's 5 nm (the previous recipe); train z 0-109, score z 110-164 at 5 nm:
    em-predict the foreground head; em-eval --mode semantic --threshold MITO_THRESHOLD (IoU,
    Dice); instances by em-watershed --instance bc when the model has a contour head, else 3D
    connected components of the thresholded foreground, scored by em-eval --mode instance
    (AP@0.5, AP@0.75) against the components of the ground-truth mask.

A part whose data (../shared/data) or config is missing is skipped with the reason; a variant
that fails (say --init before the pretrained checkpoint ships) is reported in its row and the
others go on. ``--quick`` trains QUICK_STEPS steps per variant and scores
smaller held-out crops: it proves the pipeline, not the accuracy. All tools run with
--threads threads (OMP/MKL/numba likewise). Tables go to stdout (and --json), logs to stderr
(every command line), runs and intermediate volumes to OUT/accuracy/PART.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
FIB25 = DATA / "fib25" / "train"
GALA = DATA / "gala"
ISBI = DATA / "isbi2012"
VNC = DATA / "drosophila_vnc" / "stack1"
LUCCHI = DATA / "lucchi_pp" / "train"

# The recipe under test: configs are tried in order, the first that exists is used (relative
# paths from the project root). The fine-tuning config starts from the shipped PRETRAINED model.
FINETUNE_CONFIGS = ("examples/fibsem_finetune.yaml",)
PRETRAIN_CONFIGS = ("examples/fibsem_pretrain.yaml",)
PRETRAINED = "fibsem-affinity"
PREVIOUS_CONFIG = "examples/train_gala.yaml"
SSTEM_CONFIG = "examples/train_isbi.yaml"
MITO_CONFIG = "examples/mito_lucchi.yaml"
MITO_PRETRAINED = "mito-fibsem"  # the recipe fine-tunes it (em-train --init)
# The recipe's fixed agglomeration threshold (the score reported as the result) and the sweep
# it is taken from; the sweep's best is reported too, as an oracle.
RECIPE_THRESHOLD = 0.7  # chosen on gala with the shipped model (never trained on gala)
RECIPE_TTA = ("--tta", "4")  # the recipe's prediction: four flips averaged (README: better on FIB-25 and gala)
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# ssTEM: em-watershed seed thresholds (the fixed setting is em-watershed's default, no option).
SSTEM_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# The ssTEM recipe merges the per-section fragments on the boundary map at the examples' fixed
# threshold (examples/isbi2012/params.mk, set before it was measured); the others are the oracle.
SSTEM_MERGE = "0.5"
SSTEM_MERGE_SWEEP = ("0.3", "0.4", "0.5", "0.6", "0.7")
MITO_THRESHOLD = 0.5
# gala's training block is 34x100x200: the recipe's crop (24,128,128, from its config or the
# pretrained checkpoint) does not fit, so its variants train there on this crop instead.
GALA_RECIPE_PATCH = "24,96,96"
QUICK_STEPS = 4
MAX_STEPS = 100000  # with a time budget the steps are only a cap
VARIANTS = {"recipe": "recipe (pretrained + fine-tune)", "scratch": "recipe from scratch",
            "previous": "previous example", "lsd": "recipe + LSD head"}
DEFAULT_VARIANTS = ("recipe", "scratch", "previous")
LSD_HEAD = ("lsd:10", "targets.lsd.params={sigma_nm: 80}")  # the "lsd" variant's extra head and its window
PARTS = ("fib25", "gala", "isbi", "vnc", "lucchi")
ENV: dict[str, str] = {}
THREADS = 2


def say(text: str) -> None:
    print(f"bench_accuracy: {text}", file=sys.stderr, flush=True)


class StageFailed(Exception):
    """A tool exited non-zero: which one and its last stderr line."""

    def __init__(self, stage: str, message: str):
        # the tools' one-line errors already start with their name
        super().__init__(message if message.startswith(f"{stage}:") else f"{stage}: {message}")
        self.stage, self.message = stage, message


# ----------------------------------------------------------------------------- running the tools

def setup_env(threads: int) -> None:
    global THREADS
    THREADS = threads
    ENV.update({k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")})
    ENV["PYTHONPATH"] = str(ROOT) + (os.pathsep + ENV["PYTHONPATH"] if ENV.get("PYTHONPATH") else "")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        ENV[key] = str(threads)


def tool(name: str, args: list) -> tuple[float, str, str]:
    """Run ``em-NAME ARGS`` from the project root; (wall seconds, stdout, stderr). StageFailed on error."""
    script = Path(sys.executable).parent / f"em-{name}"
    command = [str(script)] if script.exists() else [sys.executable, "-m", f"emtools.cli.{name}"]
    args = [str(a) for a in args]
    say("  $ em-" + name + " " + " ".join(a if " " not in a else repr(a) for a in args)[:300])
    started = time.perf_counter()
    done = subprocess.run([*command, *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise StageFailed(f"em-{name}", lines[-1] if lines else f"exit status {done.returncode}")
    return wall, done.stdout, done.stderr


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def first_existing(paths) -> str | None:
    return next((p for p in paths if (ROOT / p).exists()), None)


def checkpoint_info(checkpoint: Path) -> tuple[dict, int]:
    """(heads {name: {kind, channels, offsets}}, batch size) recorded in an em-train checkpoint."""
    from emtools.models.checkpoint import read_checkpoint

    payload = read_checkpoint(str(checkpoint))
    batch = int(((payload.get("training") or {}).get("config") or {}).get("data", {}).get("batch_size", 1))
    return dict(payload["extra"]["heads"]), batch


def head_of(heads: dict, kind: str, default: str | None = None) -> str | None:
    return next((name for name, h in heads.items() if h.get("kind") == kind), default)


# ----------------------------------------------------------------------------- training

def train(base: list, run: Path, budget_s: float, steps: int | None, quick: bool) -> dict:
    """em-train ``base`` for ``budget_s`` (em-train's own time budget, train.minutes: it stops when
    the time is spent and runs its cosine schedule over that time), or for ``steps`` steps
    (``quick``: QUICK_STEPS); the result's ``checkpoint`` is the run's last.pt."""
    from emtools.models.checkpoint import read_checkpoint

    base = [*base, "validation.every=0", f"train.threads={THREADS}", "-q"]
    if steps is None and quick:
        steps = QUICK_STEPS
        say(f"  --quick: {steps} steps")
    if steps is None:
        budget = [f"train.minutes={budget_s / 60:g}", f"train.steps={MAX_STEPS}", "train.log_every=25",
                  f"train.checkpoint_every={MAX_STEPS}"]
    else:
        budget = [f"train.steps={steps}", f"train.log_every={max(1, steps // 20)}", f"train.checkpoint_every={steps}"]
    fresh(run)
    wall, _, _ = tool("train", [*base, *budget, "-o", run])
    done = int(read_checkpoint(str(run / "last.pt"))["extra"]["step"])
    return {"steps": done, "train_s": wall, "checkpoint": str(run / "last.pt")}


# ----------------------------------------------------------------------------- predicting and scoring

def predict(checkpoint: str, image: str, heads: str, output: str, *extra: str) -> dict:
    """em-predict with default options (and ``extra``); seconds, Mvoxel/s (its closing line) and that line."""
    wall, _, err = tool("predict", [checkpoint, image, "--heads", heads, "-o", output, "--threads", THREADS, *extra])
    done = [line for line in err.splitlines() if "Mvoxel/s" in line and "done" in line]
    rate = re.findall(r"([\d.]+) Mvoxel/s", done[-1]) if done else []
    patch = [line.split("em-predict: ", 1)[-1] for line in err.splitlines() if "patch" in line]
    result = {"predict_s": wall, "summary": done[-1].split("em-predict: ", 1)[-1] if done else None,
              "patch_choice": patch[0] if patch else None}
    if rate:
        result["mvoxel_s"] = float(rate[-1])
    else:  # no closing line: voxels over the whole command's time
        from emtools import io

        with io.open_volume(image) as source:
            result["mvoxel_s"] = float(np.prod(source.shape_zyx)) / wall / 1e6
    return result


def evaluate(specs: list, gt: str, *extra) -> tuple[float, list[dict]]:
    """em-eval of one or several segmentations (globs allowed): (seconds, one JSON object each)."""
    wall, out, _ = tool("eval", [*specs, gt, *extra])
    return wall, [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]


def neuron_scores(m: dict) -> dict:
    return {k: m[k] for k in ("voi_split", "voi_merge", "voi", "adapted_rand_error")}


def sweep_scores(folder: Path, gt: str) -> tuple[float, dict, dict]:
    """em-eval of every seg_T.h5 in ``folder``: (seconds, scores at RECIPE_THRESHOLD, oracle best by VOI)."""
    wall, scored = evaluate([f"{folder}/seg_*.h5:/seg"], gt)
    by_threshold = {}
    for m in scored:  # em-agglomerate records each segmentation's threshold; em-eval reports it
        by_threshold[m["segmentation_threshold"]] = {**neuron_scores(m), "threshold": m["segmentation_threshold"]}
    if RECIPE_THRESHOLD not in by_threshold:
        raise StageFailed("em-eval", f"no segmentation at the recipe threshold {RECIPE_THRESHOLD} in {folder}")
    oracle = min(by_threshold.values(), key=lambda s: s["voi"])
    return wall, by_threshold[RECIPE_THRESHOLD], oracle


def neuron_pipeline(checkpoint: str, image: str, gt: str, folder: Path) -> list[dict]:
    """Predict, watershed, agglomerate, score; a second row for the mutex watershed when the
    model has a long_range head."""
    heads, _ = checkpoint_info(Path(checkpoint))
    affinity = head_of(heads, "affinity", "affinity")
    p = predict(checkpoint, image, affinity, f"{folder}/affs.h5:/affs", *RECIPE_TTA)
    ws_s, _, _ = tool("watershed", [f"{folder}/affs.h5:/affs", "-o", f"{folder}/frags.h5:/frags"])
    agg_s, _, _ = tool("agglomerate", ["segment", f"{folder}/frags.h5:/frags", f"{folder}/affs.h5:/affs",
                                       "-t", ",".join(map(str, THRESHOLDS)), "-o", f"{folder}/seg_{{threshold}}.h5:/seg"])
    eval_s, fixed, oracle = sweep_scores(folder, gt)
    rows = [{**p, "watershed_s": ws_s, "agglomerate_s": agg_s, "eval_s": eval_s, "fixed": fixed, "oracle": oracle}]
    if "long_range" not in heads:
        return rows
    row = {"method": "mutex watershed"}
    try:
        joined = f"{affinity}+long_range"
        row.update(predict(checkpoint, image, joined, f"{folder}/long_range.h5:/affs", *RECIPE_TTA))
        row["watershed_s"], _, _ = tool("watershed", [f"{folder}/long_range.h5:/affs", "--method", "mutex",
                                                      "-o", f"{folder}/mutex.h5:/seg"])
        row["eval_s"], (m,) = evaluate([f"{folder}/mutex.h5:/seg"], gt)
        row["fixed"] = neuron_scores(m)
    except StageFailed as failed:
        row["skipped"] = f"{failed}"
        say(f"  mutex watershed row skipped: {failed}")
    rows.append(row)
    return rows


# ----------------------------------------------------------------------------- held-out blocks

def write_block(spec: str, region: tuple, path: Path, voxel_size_nm, dtype=None, transform=None) -> str:
    """Write ``region`` (z, y, x slices) of a volume to ``path`` (HDF5, the region's world offset
    kept); returns the spec of the written dataset."""
    from emtools import io
    from emtools.meta import Metadata
    from emtools.tiling.geometry import Box

    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, source.shape_zyx))
        data = source.read(Box.from_shape([s.stop - s.start for s in region], [s.start for s in region]))
    if transform is not None:
        data = transform(data)
    if dtype is not None:
        data = data.astype(dtype)
    offset = tuple(float(s.start) * v for s, v in zip(region, voxel_size_nm))
    dataset = path.stem
    io.write_volume(f"{path}:/{dataset}", data, Metadata(voxel_size_nm=tuple(voxel_size_nm), offset_nm=offset))
    return f"{path}:/{dataset}"


def describe(region: tuple) -> str:
    return ", ".join(f"{a} {s.start or 0}-{s.stop - 1}" if s.stop else f"{a} all" if not s.start else f"{a} {s.start}-"
                     for a, s in zip("zyx", region))


# ----------------------------------------------------------------------------- (1) fib25, (2) gala

def neuron_variants(chosen: list[str], pretrained: str) -> dict:
    """Key -> (label, em-train arguments before the data overrides, or a reason it cannot run)."""
    finetune, pretrain = first_existing(FINETUNE_CONFIGS), first_existing(PRETRAIN_CONFIGS)
    table = {
        "recipe": ["--init", pretrained, "--config", finetune] if finetune else
        f"no fine-tuning config ({', '.join(FINETUNE_CONFIGS)})",
        "scratch": ["--config", pretrain] if pretrain else f"no pretraining config ({', '.join(PRETRAIN_CONFIGS)})",
        "previous": ["--config", PREVIOUS_CONFIG] if (ROOT / PREVIOUS_CONFIG).exists() else f"no {PREVIOUS_CONFIG}",
        "lsd": lsd_variant(pretrained, finetune) if "lsd" in chosen else "",
    }
    return {key: (VARIANTS[key], table[key]) for key in chosen}


def lsd_variant(pretrained: str, finetune: str | None) -> list[str] | str:
    """The recipe with a local-shape-descriptor head beside the pretrained model's heads."""
    from emtools.errors import EmError
    from emtools.models import pretrained as shipped
    from emtools.models.checkpoint import read_checkpoint, saved_spec

    if not finetune:
        return f"no fine-tuning config ({', '.join(FINETUNE_CONFIGS)})"
    try:
        heads = saved_spec(read_checkpoint(shipped.resolve(pretrained))).get("heads") or {}
    except EmError as exc:
        return str(exc)
    named = ",".join(f"{name}:{channels}" for name, channels in dict(heads).items())
    return ["--init", pretrained, "--config", finetune, f"model.heads={named},{LSD_HEAD[0]}", LSD_HEAD[1]]


def bench_neuron(part: str, title: str, volume: list[str], image_spec: str, gt_spec: str, voxel_size_nm,
                 held: tuple, out: Path, args, recipe_overrides: tuple = ()) -> dict:
    """Train each variant on ``volume`` (its val_region = ``held``; ``recipe_overrides`` too for the
    recipe's two variants), score ``held``."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    image = write_block(image_spec, held, data / "image.h5", voxel_size_nm)
    gt = write_block(gt_spec, held, data / "gt.h5", voxel_size_nm, dtype=np.uint64)
    results = {}
    for key, (label, base) in neuron_variants(args.variants, args.pretrained).items():
        if isinstance(base, str):
            results[key] = {"label": label, "failed": base}
            say(f"{part}/{key}: skipped: {base}")
            continue
        say(f"{part}/{key}: {' '.join(base)}")
        record = {"label": label, "command": base}
        try:
            extra = list(recipe_overrides) if key in ("recipe", "scratch", "lsd") else []
            record.update(train([*base, *volume, *extra], out / key / "run", args.budget_min * 60, args.steps, args.quick))
            folder = fresh(out / key / "predict")
            record["rows"] = neuron_pipeline(record["checkpoint"], image, gt, folder)
        except StageFailed as failed:
            record["failed"] = str(failed)
            say(f"{part}/{key}: FAILED: {failed}")
        results[key] = record
    print(f"\n{title}; held out and scored: {describe(held)}; the last checkpoint of each run")
    print(f"fixed: agglomeration threshold {RECIPE_THRESHOLD} (the recipe's setting); oracle: the best of "
          f"{THRESHOLDS[0]}..{THRESHOLDS[-1]} by VOI, chosen on the held-out block itself (an upper bound)")
    neuron_table(results)
    return {"held_out": describe(held), "variants": results}


def neuron_table(results: dict) -> None:
    print(f"{'variant':<34} {'steps':>5} {'train min':>9} {'pred s':>7} {'Mvox/s':>7} {'seg s':>6} "
          f"{'VOIs':>6} {'VOIm':>6} {'VOI':>6} {'ARAND':>7} | {'oracle thr':>10} {'VOI':>6} {'ARAND':>7}")
    for r in results.values():
        if "failed" in r and "rows" not in r:
            print(f"{r['label']:<34} FAILED: {r['failed']}"[:220])
            continue
        head = f"{r['label']:<34} {r['steps']:>5} {r['train_s'] / 60:>9.1f}"
        for row in r["rows"]:
            name = head if "method" not in row else f"{'  + ' + row['method']:<34} {'':>5} {'':>9}"
            if "skipped" in row:
                print(f"{name} skipped: {row['skipped']}"[:220])
                continue
            f = row["fixed"]
            seg = row["watershed_s"] + row.get("agglomerate_s", 0.0)
            text = (f"{name} {row['predict_s']:>7.1f} {row['mvoxel_s']:>7.3f} {seg:>6.1f} {f['voi_split']:>6.3f} "
                    f"{f['voi_merge']:>6.3f} {f['voi']:>6.3f} {f['adapted_rand_error']:>7.4f} |")
            o = row.get("oracle")
            print(text + (f" {o['threshold']:>10} {o['voi']:>6.3f} {o['adapted_rand_error']:>7.4f}" if o else
                          f" {'(no sweep)':>10}"))


def bench_fib25(out: Path, args) -> dict:
    held = (slice(100, 132), slice(0, 128), slice(0, 128)) if args.quick else (slice(100, 150), slice(None), slice(None))
    volume = [f"data.volumes.0.image={FIB25 / 'image'}", f"data.volumes.0.labels={FIB25 / 'bodies.h5'}:bodies",
              "data.volumes.0.voxel_size_nm=10,10,10", "data.volumes.0.val_region=100:150,:,:"]
    return bench_neuron("fib25", "(1) FIB-25 (FIB-SEM, 10 nm), trained on z 0-99", volume, str(FIB25 / "image"),
                        f"{FIB25 / 'bodies.h5'}:bodies", (10, 10, 10), held, out, args)


def bench_gala(out: Path, args) -> dict:
    held = (slice(34, 50), slice(None), slice(None))
    volume = [f"data.volumes.0.image={GALA / 'train-image.h5'}:stack",
              f"data.volumes.0.labels={GALA / 'train-gt.lzf.h5'}:stack", "data.volumes.0.voxel_size_nm=10,10,10",
              "data.volumes.0.val_region=last 16 z"]
    return bench_neuron("gala", "(2) gala (FIB-SEM, 10 nm assumed), trained on z 0-33 (the recipe variant: "
                        "the FIB-25 model fine-tuned, a transfer test; the recipe's variants with crop "
                        f"{GALA_RECIPE_PATCH}, as its own does not fit)", volume, f"{GALA / 'train-image.h5'}:stack",
                        f"{GALA / 'train-gt.lzf.h5'}:stack", (10, 10, 10), held, out, args,
                        (f"data.patch_zyx={GALA_RECIPE_PATCH}",))


# ----------------------------------------------------------------------------- (3) isbi, (4) vnc

def bench_sstem(part: str, title: str, volume: list[str], image_spec: str, interior_spec: str, voxel_size_nm,
                held: tuple, out: Path, args) -> dict:
    from emtools.train.data import label_components

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    image = write_block(image_spec, held, data / "image.h5", voxel_size_nm)
    gt_spec = write_block(interior_spec, held, data / "gt.h5", voxel_size_nm,
                          transform=lambda interior: label_components(interior, "2d"))
    record = {"label": f"{SSTEM_CONFIG}", "command": ["--config", SSTEM_CONFIG]}
    say(f"{part}: --config {SSTEM_CONFIG}")
    try:
        record.update(train(["--config", SSTEM_CONFIG, *volume], out / "run", args.budget_min * 60, args.steps,
                            args.quick))
        heads, _ = checkpoint_info(Path(record["checkpoint"]))
        boundary = head_of(heads, "boundary")
        if boundary is None:
            raise StageFailed("bench", f"the model has no boundary head ({', '.join(heads)})")
        folder = fresh(out / "predict")
        record.update(predict(record["checkpoint"], image, boundary, f"{folder}/boundary.h5:/boundary"))
        settings = {}
        for threshold in (None, *SSTEM_THRESHOLDS):
            name = "default" if threshold is None else f"{threshold}"
            option = [] if threshold is None else ["--threshold", threshold]
            seg = f"{folder}/seg_{name}.h5:/seg"
            ws_s, _, _ = tool("watershed", [f"{folder}/boundary.h5:/boundary", "--mode", "2d", *option, "-o", seg])
            eval_s, (m,) = evaluate([seg], gt_spec)
            sections_s, (per,) = evaluate([seg], gt_spec, "--mode", "sections")
            settings[name] = {"watershed_s": ws_s, "eval_s": eval_s + sections_s,
                              "section_arand": per["adapted_rand_error"],
                              "sections": [r["adapted_rand_error"] for r in per["sections"]], "stack": neuron_scores(m)}
        record["settings"] = settings
        record["oracle"] = min((k for k in settings if k != "default"), key=lambda k: settings[k]["section_arand"])
        merged = {}
        for threshold in SSTEM_MERGE_SWEEP:  # the recipe: the default fragments merged on the same map
            seg = f"{folder}/merged_{threshold}.h5:/seg"
            agg_s, _, _ = tool("agglomerate", ["segment", f"{folder}/seg_default.h5:/seg",
                                               f"{folder}/boundary.h5:/boundary", "-t", threshold, "-o", seg])
            _, (per,) = evaluate([seg], gt_spec, "--mode", "sections")
            merged[threshold] = {"agglomerate_s": agg_s, "section_arand": per["adapted_rand_error"],
                                 "voi_split": per.get("voi_split"), "voi_merge": per.get("voi_merge")}
        record["merged"] = merged
    except StageFailed as failed:
        record["failed"] = str(failed)
        say(f"{part}: FAILED: {failed}")
    print(f"\n{title}; held out and scored: {describe(held)}; per-section watershed (em-watershed --mode 2d) "
          "of the boundary map")
    print("section ARAND: mean adapted Rand error of the sections scored one by one; stack VOI: em-eval of the "
          f"sections as one volume; oracle: the best seed threshold of {SSTEM_THRESHOLDS[0]}..{SSTEM_THRESHOLDS[-1]} "
          "on the held-out sections")
    print(f"{'config':<28} {'steps':>5} {'train min':>9} {'pred s':>7} {'Mvox/s':>7} {'ws s':>5} "
          f"{'section ARAND':>13} {'VOI':>6} | {'oracle thr':>10} {'section ARAND':>13} {'VOI':>6}")
    if "settings" not in record:
        print(f"{record['label']:<28} FAILED: {record.get('failed')}"[:220])
    else:
        d, o = record["settings"]["default"], record["settings"][record["oracle"]]
        print(f"{record['label']:<28} {record['steps']:>5} {record['train_s'] / 60:>9.1f} {record['predict_s']:>7.1f} "
              f"{record['mvoxel_s']:>7.3f} {d['watershed_s']:>5.1f} {d['section_arand']:>13.4f} {d['stack']['voi']:>6.3f}"
              f" | {record['oracle']:>10} {o['section_arand']:>13.4f} {o['stack']['voi']:>6.3f}")
        merged = record["merged"]
        print(f"the recipe: those fragments merged by em-agglomerate segment on the boundary map at {SSTEM_MERGE} "
              f"(fixed): section ARAND {merged[SSTEM_MERGE]['section_arand']:.4f}; at "
              + ", ".join(f"{t}: {m['section_arand']:.4f}" for t, m in merged.items()) + " (the best is an oracle)")
    return {"held_out": describe(held), "run": record}


def bench_isbi(out: Path, args) -> dict:
    held = (slice(25, 30), slice(0, 256), slice(0, 256)) if args.quick else (slice(25, 30), slice(None), slice(None))
    volume = [f"data.volumes.0.image={ISBI / 'image'}", f"data.volumes.0.labels={ISBI / 'label'}",
              "data.volumes.0.voxel_size_nm=50,4,4", "data.volumes.0.val_region=last 5 z"]
    return bench_sstem("isbi", "(3) ISBI 2012 (ssTEM, 50x4x4 nm), trained on sections 0-24", volume, str(ISBI / "image"),
                       str(ISBI / "label"), (50, 4, 4), held, out, args)


def bench_vnc(out: Path, args) -> dict:
    from emtools import io
    from emtools.meta import Metadata

    held = (slice(16, 20), slice(0, 256), slice(0, 256)) if args.quick else (slice(16, 20), slice(None), slice(None))
    labels = out / "data" / "interior.h5"
    if not labels.exists():  # the masks mark membrane; training wants the interior
        labels.parent.mkdir(parents=True, exist_ok=True)
        membranes, _ = io.read_volume(str(VNC / "membranes"))
        io.write_volume(f"{labels}:/interior", (membranes == 0).astype(np.uint8),
                        Metadata(voxel_size_nm=(50.0, 4.6, 4.6)))
    volume = [f"data.volumes.0.image={VNC / 'raw'}", f"data.volumes.0.labels={labels}:/interior",
              "data.volumes.0.voxel_size_nm=50,4.6,4.6", "data.volumes.0.val_region=last 4 z"]
    return bench_sstem("vnc", "(4) drosophila_vnc stack 1 (ssTEM, 50x4.6x4.6 nm), trained on sections 0-15", volume,
                       str(VNC / "raw"), f"{labels}:/interior", (50, 4.6, 4.6), held, out, args)


# ----------------------------------------------------------------------------- (5) lucchi

def bench_lucchi(out: Path, args) -> dict:
    from emtools.train.data import label_components

    # --quick: a corner with mitochondria in it (14% foreground)
    held = (slice(110, 126), slice(256, 512), slice(0, 256)) if args.quick else (slice(110, 165), slice(None), slice(None))
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    voxel = (5, 5, 5)
    image = write_block(str(LUCCHI / "image"), held, data / "image.h5", voxel)
    mask = write_block(str(LUCCHI / "label"), held, data / "mask.h5", voxel, transform=lambda m: (m != 0).astype(np.uint8))
    instances = write_block(str(LUCCHI / "label"), held, data / "instances.h5", voxel,
                            transform=lambda m: label_components(m, "3d"))
    volume = [f"data.volumes.0.image={LUCCHI / 'image'}", f"data.volumes.0.labels={LUCCHI / 'label'}",
              "data.volumes.0.voxel_size_nm=5,5,5", "data.volumes.0.val_region=110:165,:,:"]
    # the recipe (fine-tune the shipped model), beside it the config from scratch at 10 nm and at the
    # data's own 5 nm (the previous recipe)
    variants = [("recipe: --init " + MITO_PRETRAINED, ["--init", MITO_PRETRAINED]),
                ("from scratch, 10 nm", ["optim.lr=0.002"]),
                ("from scratch, 5 nm (previous)", ["optim.lr=0.002", "data.model_voxel_size_nm=5,5,5"])]
    records = []
    for index, (label, extra) in enumerate(variants):
        records.append(lucchi_run(label, ["--config", args.mito_config, *volume, *extra], out / f"run{index}",
                                  out / f"predict{index}", image, mask, instances, args))
    print(f"\n(5) Lucchi++ mitochondria (FIB-SEM, 5 nm), trained on z 0-109; held out and scored: {describe(held)}")
    print(f"foreground > {MITO_THRESHOLD}: voxel IoU and Dice (em-eval --mode semantic); instances: "
          f"{records[0].get('instances_by', '-')}, AP at IoU 0.5 / 0.75 (em-eval --mode instance)")
    print(f"{'variant':<30} {'steps':>5} {'train min':>9} {'pred s':>7} {'Mvox/s':>7} {'seg s':>6} {'IoU':>6} "
          f"{'Dice':>6} {'AP50':>6} {'AP75':>6} {'objects gt/pred':>15}")
    for record in records:
        if "instance" not in record:
            print(f"{record['label']:<30} FAILED: {record.get('failed')}"[:220])
            continue
        s, i = record["semantic"], record["instance"]
        print(f"{record['label']:<30} {record['steps']:>5} {record['train_s'] / 60:>9.1f} {record['predict_s']:>7.1f} "
              f"{record['mvoxel_s']:>7.3f} {record['segment_s']:>6.1f} {s['iou']:>6.3f} {s['dice']:>6.3f} "
              f"{i['ap_50']:>6.3f} {i['ap_75']:>6.3f} {str(i['gt_objects']) + '/' + str(i['pred_objects']):>15}")
    return {"held_out": describe(held), "runs": records}


def lucchi_run(label: str, command: list, run: Path, predictions: Path, image: str, mask: str, instances: str,
               args) -> dict:
    """Train one mitochondria variant, predict the held-out block, score the foreground and the instances."""
    from emtools import io
    from emtools.meta import Metadata
    from emtools.train.data import label_components

    record = {"label": label, "command": command}
    say(f"lucchi: {label}")
    try:
        record.update(train(command, run, args.budget_min * 60, args.steps, args.quick))
        heads, _ = checkpoint_info(Path(record["checkpoint"]))
        foreground, contour = head_of(heads, "foreground"), head_of(heads, "contour")
        if foreground is None:
            raise StageFailed("bench", f"the model has no foreground head ({', '.join(heads)})")
        folder = fresh(predictions)
        wanted = ",".join(h for h in (foreground, contour) if h)
        record.update(predict(record["checkpoint"], image, wanted, f"{folder}/{{head}}.h5:/prob"))
        fg = f"{folder}/{foreground}.h5:/prob"
        record["semantic_eval_s"], (semantic,) = evaluate([fg], mask, "--mode", "semantic", "--threshold",
                                                           MITO_THRESHOLD)
        seg = f"{folder}/instances.h5:/instances"
        if contour:
            record["instances_by"] = "em-watershed --instance bc"
            record["segment_s"], _, _ = tool("watershed", [fg, "--instance", "bc", "--contour",
                                                           f"{folder}/{contour}.h5:/prob", "-o", seg])
        else:
            record["instances_by"] = f"3D connected components of foreground > {MITO_THRESHOLD} (no contour head)"
            started = time.perf_counter()
            probability, meta = io.read_volume(fg)
            io.write_volume(seg, label_components(probability > MITO_THRESHOLD, "3d"),
                            Metadata(voxel_size_nm=meta.voxel_size_nm, offset_nm=meta.offset_nm))
            record["segment_s"] = time.perf_counter() - started
        record["instance_eval_s"], (instance,) = evaluate([seg], instances, "--mode", "instance")
        record["semantic"] = {k: semantic[k] for k in ("iou", "dice", "precision", "recall")}
        record["instance"] = {k: instance[k] for k in ("ap_50", "ap_75", "ap_50_95", "f1", "gt_objects", "pred_objects")}
    except StageFailed as failed:
        record["failed"] = str(failed)
        say(f"lucchi: FAILED: {failed}")
    return record


# ----------------------------------------------------------------------------- summary and main

def summary(results: dict) -> None:
    print("\nsummary (fixed settings; the oracle and the per-stage times are in the tables above)")
    print(f"{'part':<7} {'variant':<34} {'steps':>5} {'train min':>9} {'Mvox/s':>7}  scores")
    for part, r in results.items():
        if not isinstance(r, dict):
            continue
        if "skipped" in r:
            print(f"{part:<7} skipped: {r['skipped']}")
            continue
        runs = r["variants"].values() if "variants" in r else r.get("runs", [r.get("run")])
        for run in runs:
            if "failed" in run and not run.get("rows") and not run.get("settings") and "instance" not in run:
                print(f"{part:<7} {run['label']:<34} FAILED: {run['failed']}"[:200])
                continue
            start = f"{part:<7} {run['label']:<34} {run['steps']:>5} {run['train_s'] / 60:>9.1f}"
            if "rows" in run:
                for row in run["rows"]:
                    if "skipped" in row:
                        continue
                    f = row["fixed"]
                    label = start if "method" not in row else f"{part:<7} {'  + ' + row['method']:<34} {'':>5} {'':>9}"
                    print(f"{label} {row['mvoxel_s']:>7.3f}  VOI {f['voi']:.3f} (split {f['voi_split']:.3f}, merge "
                          f"{f['voi_merge']:.3f}), ARAND {f['adapted_rand_error']:.4f}")
            elif "settings" in run:
                d = run["settings"]["default"]
                merged = run.get("merged", {}).get(SSTEM_MERGE)
                recipe = f"; merged at {SSTEM_MERGE}: {merged['section_arand']:.4f}" if merged else ""
                print(f"{start} {run['mvoxel_s']:>7.3f}  section ARAND {d['section_arand']:.4f} (watershed alone"
                      f"{recipe}), stack VOI {d['stack']['voi']:.3f}")
            else:
                print(f"{start} {run['mvoxel_s']:>7.3f}  IoU {run['semantic']['iou']:.3f}, AP50 "
                      f"{run['instance']['ap_50']:.3f}, AP75 {run['instance']['ap_75']:.3f}")


def missing_data(part: str, mito_config: str) -> str | None:
    """Why ``part`` cannot run here, or None."""
    needs = {"fib25": [FIB25 / "image", FIB25 / "bodies.h5"], "gala": [GALA / "train-image.h5", GALA / "train-gt.lzf.h5"],
             "isbi": [ISBI / "image", ISBI / "label"], "vnc": [VNC / "raw", VNC / "membranes"],
             "lucchi": [LUCCHI / "image", LUCCHI / "label"]}[part]
    absent = [str(p) for p in needs if not p.exists()]
    if absent:
        return f"data not found: {', '.join(absent)}"
    config = {"isbi": SSTEM_CONFIG, "vnc": SSTEM_CONFIG, "lucchi": mito_config}.get(part)
    if config and not (ROOT / config).exists():
        return f"config {config} not found"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps per variant and small held-out "
                        "crops: proves the pipeline")
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of parts")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"fib25, gala: comma list of variants ({', '.join(VARIANTS)})")
    parser.add_argument("--out", default=str(ROOT / "bench-out"), help="runs and volumes go to OUT/accuracy")
    parser.add_argument("--budget-min", type=float, default=30.0, help="em-train minutes per variant")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps (no time budget)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every tool")
    parser.add_argument("--pretrained", default=PRETRAINED,
                        help="fib25, gala: the recipe variant's em-train --init (a shipped name or a checkpoint)")
    parser.add_argument("--mito-config", default=MITO_CONFIG, help="(5) lucchi: the mitochondria config")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(set(parts) - set(PARTS)))}; choose from {', '.join(PARTS)}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or set(args.variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if RECIPE_THRESHOLD not in THRESHOLDS:
        parser.error(f"RECIPE_THRESHOLD {RECIPE_THRESHOLD} is not one of THRESHOLDS")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be positive")
    setup_env(args.threads)
    out = Path(args.out) / "accuracy"
    results = {"quick": args.quick, "budget_min": args.budget_min, "steps": args.steps, "threads": args.threads,
               "recipe_threshold": RECIPE_THRESHOLD}
    benches = {"fib25": bench_fib25, "gala": bench_gala, "isbi": bench_isbi, "vnc": bench_vnc, "lucchi": bench_lucchi}
    for part in parts:
        reason = missing_data(part, args.mito_config)
        if reason:
            say(f"{part}: skipped: {reason}")
            print(f"\n({part}) skipped: {reason}")
            results[part] = {"skipped": reason}
            continue
        started = time.perf_counter()
        results[part] = benches[part](out / part, args)
        results[part]["bench_wall_s"] = time.perf_counter() - started
        say(f"{part} took {(time.perf_counter() - started) / 60:.1f} min")
        sys.stdout.flush()
    summary(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
