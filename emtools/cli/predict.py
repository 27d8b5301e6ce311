"""em-predict: apply a trained model to volumes or chunks, blockwise, with blending and TTA."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import click
import numpy as np

from emtools import io, resample
from emtools.cli import predict_ffn
from emtools.cli.common import (
    FLOAT_TRIPLE,
    INT_TRIPLE,
    contract,
    emit,
    expand_stdin_specs,
    log,
    progress,
    require_positive,
    version_option,
)
from emtools.errors import EmError
from emtools.meta import provenance_record
from emtools.models.weights import PRETRAINED
from emtools.predict import BLENDS, OUTPUT_DTYPES, PRECISIONS, pace, scaled, windows
from emtools.predict.loading import Job, LoadedModel, inspect_input, load_for_prediction
from emtools.predict.outputs import encode, output_axes, output_metadata, output_shape, output_specs
from emtools.tiling.chunk_files import volume_box
from emtools.tiling.geometry import Box

TOOL = "em-predict"

HELP = """Apply the model in CHECKPOINT (from em-train, or a shipped model's name such as
fibsem-affinity) to each INPUT volume, or to chunk files from `em-tile split` (`-` reads specs
from stdin, one per line); write one map per output head.

\b
How:
  - The input is normalised as in training (the checkpoint's normalization) and cut into
    patches on one grid anchored at the volume's first voxel (--overlap between neighbours);
    patches run in batches (--batch). Without --patch, the patch is the size, at least the
    training input size and accepted by the model's pooling, that computes a block with the
    fewest FLOPs (on large volumes: the largest) among those whose estimated memory fits
    --memory; the overlap is then 0 along axes where one patch covers the volume, else 0.125
    (with --patch: 0.5). The choice is logged; pass it as --patch and --overlap to reproduce a
    run elsewhere.
  - Each patch output loses --crop voxels at its border (auto: the model's receptive-field
    margin, at most 1/8 of the training input size; valid: the whole margin) and is blended with its
    neighbours (--blend gaussian, bump or constant weights). Beyond the volume border the
    input is mirrored, so every voxel is predicted.
  - --tta N runs N of the 16 flips/transposes of each patch, transforms the outputs back
    (affinity channels shifted and swapped to match) and combines them (--tta-reduce).
  - Heads get their activation (sigmoid, tanh, softmax) and are written as float32,
    float16 or uint8 (the head's value range mapped to 0..255, stored as value_range).
  - Work goes block by block (--block) with the context each block needs, so memory stays
    bounded; outputs are written region by region, atomically.

A chunk is predicted over its whole file (the halo is context) and its maps keep the chunk's
regions, for `em-tile merge` or em-watershed (which crops to the responsible region). The grid
is global: with a halo of at least the context the model sees (logged with -v), chunk
predictions equal a whole-volume prediction (the default patch is chosen for the whole volume
and the default --memory is the same everywhere, so every chunk gets the same patch).
Under torchrun, chunks are shared out across ranks (cuda:LOCAL_RANK each, or the CPU); a single volume's blocks are shared out and rank 0
writes. The input's voxel size must match the training voxel size, or be finer by whole numbers
(a model trained at 10 nm on a 5 nm input): then each 2x2x2 block of the input is averaged, the
model runs at its own voxel size and the maps are interpolated (linearly) back onto the input's
voxels, so the maps have the input's shape (em-train data.model_voxel_size_nm trains such a
model). --force predicts at the input's own voxel size whatever the model's.

-o is a template: {name} (the input file name without suffix) is needed for several inputs,
{head} for several heads; a folder means FOLDER/{name}_{head}.h5. Paths written go to stdout.

--into ARRAY (instead of -o; {head} for several heads) predicts only the region each chunk is
responsible for and writes it straight into one zarr array per head that `em-tile create` made
(--dtype and --channels as the head's map, store chunks = the split's --chunk): many chunks and
workers at once, no merge: the volume is `em-tile merge --blend none` of the chunk maps (bit for
bit with --batch 1; batches group a region's patches differently than its chunk's, so floats
may differ in the last bits).

\b
Examples:
  em-predict model.pt raw.h5:/image -o affs.h5:/affs --heads affinity
  em-predict fibsem-affinity raw.h5:/image -o affs.h5:/affs --heads affinity     # the shipped FIB-SEM model
  em-predict model.pt raw.h5:/image -o 'pred_{head}.h5' --tta 8 --blend bump
  em-predict model.pt raw.h5:/image -o 'pred_{head}.h5' --preview pred.png
  em-predict model.pt raw.h5 --heads affinity --dtype uint8 -o affs.h5 && em-watershed affs.h5 -o frags.h5
  em-predict model.pt raw.h5 --heads affinity+long_range -o lr.h5 && em-watershed lr.h5 --method mutex -o seg.h5
  em-tile split raw.h5 --chunk 64,512,512 --halo 8,64,64 -o chunks/ \\
    | em-predict model.pt - -o pred/ --skip-existing
  torchrun --standalone --nproc-per-node=4 -m emtools.cli.predict model.pt chunks/*.h5 -o pred/
  em-predict model.pt 'raw.zarr/raw[0:64,0:512,0:512]+8,64,64' --heads affinity --dtype uint8 \\
    --into affs.zarr/affs --skip-existing
  em-predict ffn.pt raw.h5:/image -o seg.h5 --seeds peaks --state seg.state.npz   # an FFN checkpoint
"""


@click.command(help=HELP + "\n" + predict_ffn.HELP)
@click.argument("checkpoint")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", default=None,
              help="Output template: file.h5[:/dataset], store.zarr/array or file.tif with {name}/{head}, or a folder.")
@click.option("--into", "into", default=None, metavar="ARRAY",
              help="Instead of -o: write each input's responsible region into this existing zarr array "
                   "(from em-tile create); {head} for several heads.")
@click.option("--patch", "patch_zyx", type=INT_TRIPLE, default=None,
              help="Patch size z,y,x (default: chosen for speed within --memory, see above).")
@click.option("--memory", default=None, metavar="SIZE",
              help="Memory budget for choosing the patch, e.g. 8G or 512M (default: 4G, the same on every "
                   "machine so that the output is too).")
@click.option("--overlap", default="auto", show_default=True,
              help="Overlap of neighbouring patch outputs: a fraction in [0, 1) (or z,y,x fractions), or z,y,x voxels; "
                   "auto: 0.5 with --patch, else chosen with the patch (see above).")
@click.option("--crop", default="auto", show_default=True,
              help="Voxels cut from each patch output's border: auto, valid (receptive field) or z,y,x.")
@click.option("--blend", type=click.Choice(BLENDS), default="gaussian", show_default=True,
              help="Weights of overlapping patch outputs.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Patches per forward pass (FFN: FOVs that do not overlap, from the front of the queue).")
@click.option("--tta", type=int, default=1, show_default=True,
              help="Test-time augmentation variants: 1 (none) .. 16 (4: yx flips, 8: + transpose, 16: + z flip).")
@click.option("--tta-reduce", default="mean", show_default=True,
              help="Combine TTA variants by mean, min or max; per head as HEAD=MODE,... .")
@click.option("--heads", "head_names", default=None, help="Heads to output, comma-separated (default: all); a+b joins affinity heads that follow each "
              "other into one map (nearest + long-range affinities for em-watershed --method mutex).")
@click.option("--channels", "channel_ranges", multiple=True, metavar="HEAD=A:B",
              help="Only channels A..B-1 of a head (repeatable), e.g. affinity=0:3.")
@click.option("--dtype", type=click.Choice(OUTPUT_DTYPES), default="float32", show_default=True,
              help="Output type; uint8 maps the head's value range to 0..255.")
@click.option("--block", "block_zyx", type=INT_TRIPLE, default="64,1024,1024", show_default=True,
              help="Predict and write this many voxels z,y,x at a time (bounds memory); a volume narrower in y or x "
                   "gets the voxels left over in z (100x250x250 is one block).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Autocast precision (bf16/fp16 on GPUs; bf16 on CPUs with bf16 units such as AMX, "
                   "emulated and very slow on others).")
@click.option("--fuse", is_flag=True,
              help="Fold the batch norms into the convolutions and run the element-wise layers in place "
                   "(inference only; the same maps to float rounding, fewer passes over memory).")
@click.option("--channels-last", is_flag=True,
              help="Channels-last memory format (faster convolutions with oneDNN and bf16 on CPUs, and on GPUs).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (falls back with a warning).")
@click.option("--onednn", is_flag=True,
              help="Force oneDNN for the 3D convolutions on the CPU (PyTorch sends small batch-1 layers to a "
                   "slower path; em-profile model --options onednn measures it).")
@click.option("--winograd", is_flag=True,
              help="Compute the wide 3x3x3 convolutions (>= 64 channels) by Winograd's algorithm on the CPU and the "
                   "rest on oneDNN (em-profile model --options winograd --mode infer measures it).")
@click.option("--plain", is_flag=True,
              help="Run the model as it is, in the default memory layout: no execution option chosen for you "
                   "(on a CPU em-predict otherwise uses --fuse --channels-last --onednn, faster for every model "
                   "measured; benchmarks/bench_predict.py).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda:LOCAL_RANK when CUDA is there, else the CPU.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--normalization", default=None, metavar="SCALE,MEAN,STD",
              help="Input normalisation (x*SCALE-MEAN)/STD, for checkpoints without one (or to override it).")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
              help="Voxel size z,y,x in nm of the inputs (overrides the files').")
@click.option("--force", is_flag=True,
              help="Predict at the input's own voxel size even when it differs from (or lacks) the training one "
                   "(no averaging to a coarser model voxel size).")
@click.option("--compression", default="gzip", show_default=True, help="gzip[:LEVEL], lzf (HDF5 only) or none.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose outputs all exist (resume a batch).")
@click.option("--preview", default=None, metavar="FILE.png",
              help="Also draw a few z sections of the first INPUT (top row, grey) above its maps, one row per head: "
                   "one channel grey, several the first three as red, green, blue (affinities z, y, x).")
@predict_ffn.options
@version_option(TOOL)
@contract(TOOL)
def main(checkpoint, inputs, output, into, patch_zyx, memory, overlap, crop, blend, batch, tta, tta_reduce, head_names,
         channel_ranges, dtype, block_zyx, precision, fuse, channels_last, compile_model, onednn, winograd, plain, device,
         threads, normalization, voxel_size_nm, force, compression, skip_existing, preview, **ffn_options):
    shared = {"batch": batch, "device": device, "threads": threads, "normalization": normalization, "precision": precision,
              "voxel_size_nm": voxel_size_nm, "force": force, "compression": compression, "skip_existing": skip_existing}
    if (output is None) == (into is None):
        raise click.UsageError("give -o OUTPUT or --into ARRAY (one of them)")
    if predict_ffn.dispatch(click.get_current_context(), checkpoint, inputs, output, ffn_options, shared):
        return  # an FFN checkpoint: segmented by flood filling (emtools.cli.predict_ffn)
    io.parse_compression(compression)
    from emtools.predict import autopatch

    auto_overlap = overlap.strip().lower() == "auto"
    if auto_overlap and patch_zyx is not None:
        overlap = "0.5"  # with --patch, the overlap it always had
    overlap_spec = None if auto_overlap and patch_zyx is None else windows.parse_overlap(overlap)
    budget = autopatch.parse_memory(memory) if memory is not None else None
    for name, value in (("--batch", batch), ("--threads", threads if threads is not None else 1)):
        if value < 1:
            raise EmError(f"{name} must be at least 1, got {value}")
    require_positive("--block", block_zyx)
    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)
    from emtools.predict import sharding

    ranks = sharding.ranks_from_env()
    if ranks.distributed and "-" in inputs:
        raise EmError("under torchrun the ranks cannot share stdin: pass the inputs as arguments (e.g. chunks/*.h5)")
    specs = expand_stdin_specs(inputs)
    if not specs:
        raise EmError("no inputs given (pass volume specs, or - to read them from stdin)")

    import torch

    from emtools.predict import engine
    from emtools.predict.tta import variants

    variants(tta)  # checks the count before the model loads
    if threads is not None:
        torch.set_num_threads(threads)
    if checkpoint in PRETRAINED and not os.path.exists(checkpoint):  # a shipped model by its name
        from emtools.models.pretrained import resolve

        checkpoint = resolve(checkpoint)
    model = load_for_prediction(checkpoint, patch_zyx, head_names, channel_ranges, tta_reduce, normalization)
    auto = patch_zyx is None
    if auto:
        windows.crop_margins(crop, model.patch_zyx, model.rf_lo, model.rf_hi)  # checks the text before the inputs
    else:  # an explicit patch is checked before the inputs, as it always was
        grid = _grid(model, crop, overlap_spec)
    if into is not None:  # each input's responsible region, in the existing arrays (checked now)
        outputs = _into_outputs(into, specs, [s.name for s in model.selection], voxel_size_nm)
        output = ""
    else:
        outputs = output_specs(output, specs, [s.name for s in model.selection])
    new_folder = _new_folder(output)
    _check_outputs(outputs, specs, checkpoint, new_folder)
    _check_preview(preview, outputs, specs, checkpoint, new_folder)
    jobs = [inspect_input(spec, model, voxel_size_nm, force) for spec in specs]
    if auto:
        label = f"--memory {memory}" if memory is not None else None
        choice = _choose_patch(model, jobs, crop, overlap_spec, block_zyx, batch, tta, budget, label)
        warning = autopatch.memory_warning(choice)
        if warning:
            log.warning(warning)
        model = dataclasses.replace(model, patch_zyx=choice.patch_zyx)
        overlap_spec, overlap = choice.overlap, choice.overlap_text()
        grid = _grid(model, crop, overlap_spec)
    _warn_context(jobs, grid, model, auto)

    dev = sharding.select_device(device, ranks.local_rank)
    from emtools.models.execution import inference_flags

    flags = inference_flags(dev.type, plain=plain, fuse=fuse, channels_last=channels_last, onednn=onednn,
                            winograd=winograd, compile=compile_model)
    if precision == "bf16" and dev.type == "cpu":
        from emtools.models.execution import cpu_has_bf16_units

        if not cpu_has_bf16_units():
            log.warning("--precision bf16 on a CPU without bf16 units is emulated, much slower than fp32 "
                        "(about 80x here)")
    predictor = engine.Predictor(
        model.module, model.heads, grid, selection=model.selection, blend=blend, tta=tta,
        tta_reduce=model.reduce, batch=batch, device=dev, precision=precision,
        **flags,
    )
    # What the model computes as it runs (fused, cut down to the heads asked for), traced on the CPU.
    flops_per_patch = pace.flops_per_patch_of(predictor.forward.model, model.spec, grid.patch_zyx) \
        if log.isEnabledFor(logging.INFO) else 0
    settings = Settings(model, dtype, compression, block_zyx, voxel_size_nm, {
        "checkpoint": checkpoint, "checkpoint_sha256": model.sha256, "model": model.spec.describe(),
        "heads": {s.name: list(s.channels) for s in model.selection}, "patch_zyx": list(grid.patch_zyx),
        "crop_lo_zyx": list(grid.crop_lo_zyx), "crop_hi_zyx": list(grid.crop_hi_zyx),
        "stride_zyx": list(grid.stride_zyx), "blend": blend, "tta": tta, "tta_reduce": model.reduce,
        "dtype": dtype, "precision": precision, "normalization": model.normalization,
        "execution": [name for name, on in flags.items() if on],
        "training_voxel_size_nm": model.voxel_size_nm, "forced": force,
        **({"patch_chosen_for_memory_bytes": choice.budget_bytes} if auto else {}),
    })
    where = f"[rank {ranks.rank}/{ranks.world_size}] " if ranks.distributed else ""
    if new_folder:
        os.makedirs(new_folder, exist_ok=True)  # every check passed: now the output folder may appear
    window = f"{grid.describe()}, overlap {overlap}, batch {batch}"
    if auto:  # logged once every check has passed (an error stays one line)
        log.info("%s%s: chosen within %s (about %s); %d patch%s per block, each voxel computed %.1f times", where,
                 window, f"--memory {memory}" if memory is not None else
                 f"the default memory budget {autopatch.format_bytes(choice.budget_bytes)}",
                 autopatch.format_bytes(choice.estimate_bytes), choice.patches, "es" * (choice.patches != 1),
                 choice.recompute)
    else:
        log.debug("%s%s", where, window)
    if len(jobs) == 1 and ranks.distributed:
        _run_sharded_volume(jobs[0], outputs[0], predictor, settings, ranks, skip_existing, where)
        settings.tally.log_summary(flops_per_patch, grid.patch_zyx, len(predictor.variants), dev, where)
        _draw_preview(preview, specs[0], outputs[0], voxel_size_nm, ranks, skip_existing)
        return
    for index in ranks.mine(range(len(jobs))):
        job, outs = jobs[index], outputs[index]
        if skip_existing and all(_readable(spec) for spec in outs.values()):
            log.info("%sexists, skipped: %s", where, ", ".join(outs.values()))
            for spec in outs.values():
                emit(io.output_file(spec))
            continue
        for path in _predict_input(job, outs, predictor, settings, where):
            emit(path)
    settings.tally.log_summary(flops_per_patch, grid.patch_zyx, len(predictor.variants), dev, where)
    _draw_preview(preview, specs[0], outputs[0], voxel_size_nm, ranks, skip_existing)


# ----------------------------------------------------------------------------- the model

def _grid(model: LoadedModel, crop: str, overlap_spec):
    return windows.make_grid(model.patch_zyx, windows.resolve_crop(crop, model.patch_zyx, model.rf_lo, model.rf_hi,
                                                                   model.train_zyx), overlap_spec)


def _choose_patch(model: LoadedModel, jobs: list, crop: str, overlap_spec, block_zyx, batch: int, tta: int,
                  budget: int | None, label: str | None):
    """The default patch (:func:`emtools.predict.autopatch.choose_for_inputs`); a chunk counts as
    its whole volume, so all chunks of a volume get the patch of a whole-volume run."""
    from emtools.predict import autopatch

    def volume_shape(job: Job) -> tuple:  # at the model's voxel size, like the patch
        volume = volume_box(job.meta.attrs)
        return resample.coarse_box(job.box if volume is None else volume, job.scale_zyx).shape

    return autopatch.choose_for_inputs(
        model.module, model.spec, model.patch_zyx, (model.rf_lo, model.rf_hi), sum(len(s.channels) for s in model.selection),
        crop, overlap_spec, block_zyx, batch, [j.model_box.shape for j in jobs], [volume_shape(j) for j in jobs],
        budget, label, square_yx=tta > 4)


# ----------------------------------------------------------------------------- inputs and outputs

@dataclasses.dataclass
class Settings:
    model: LoadedModel
    dtype: str
    compression: str
    block_zyx: tuple
    voxel_size_nm: tuple | None
    params: dict
    tally: pace.Tally = dataclasses.field(default_factory=pace.Tally)  # every input of this run


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _new_folder(output: str) -> str | None:
    """``-o pred/`` names a folder that is created when missing (its parent must exist)."""
    if not output.endswith("/") or os.path.isdir(output):
        return None
    io.check_output_path(output.rstrip("/"))
    return os.path.abspath(output)


def _check_outputs(outputs: list[dict[str, str]], inputs: list[str], checkpoint: str, new_folder: str | None) -> None:
    protected = {os.path.realpath(io.output_file(spec)): spec for spec in inputs}
    protected[os.path.realpath(checkpoint)] = checkpoint
    for outs in outputs:
        for spec in outs.values():
            io.output_format(spec)
            path = io.output_file(spec)
            if os.path.dirname(os.path.abspath(path)) != new_folder:
                io.check_output_path(path)
            if os.path.realpath(path) in protected:
                raise EmError(f"output {spec} is the same file as the input {protected[os.path.realpath(path)]}; "
                              "write somewhere else (inputs are never modified)")


def _check_preview(preview, outputs: list[dict[str, str]], inputs: list[str], checkpoint: str,
                   new_folder: str | None) -> None:
    """--preview: a .png in a writable folder (or the output folder -o creates), no input or map."""
    if preview is None:
        return
    from emtools.pictures import check_picture_path

    others = [spec for outs in outputs for spec in outs.values()] + list(inputs) + [checkpoint]
    if new_folder is not None and os.path.dirname(os.path.abspath(preview)) == new_folder:
        if not preview.lower().endswith(".png"):
            raise EmError(f"--preview must be a .png file, got {preview}")
        return  # its folder appears with the maps' (-o FOLDER/ was checked)
    check_picture_path(preview, "--preview", others)


def _draw_preview(preview, image_spec: str, outs: dict[str, str], voxel_size_nm, ranks, skip_existing: bool) -> None:
    """The first input's sections above its maps (rank 0, once every map of it is written).

    The maps are complete and stay if the picture fails (--skip-existing then only draws it)."""
    if preview is None or ranks.rank != 0 or (skip_existing and os.path.exists(preview)):
        return
    from emtools.pictures import maps_picture

    emit(io.write_png(preview, maps_picture(image_spec, list(outs.values()), voxel_size_nm=voxel_size_nm)))


def _warn_context(jobs: list[Job], grid, model: LoadedModel, auto: bool = False) -> None:
    """Warnings for data smaller than a patch (an explicit one: the chosen patch covers the data
    and its context by design), and for chunk halos below the context that makes a chunk's
    prediction equal the whole volume's (:func:`emtools.predict.windows.exact_halo`)."""
    from emtools.predict.windows import exact_halo

    need_lo, need_hi = exact_halo(grid, model.rf_lo, model.rf_hi, local=model.spec.norm in ("batch", "none"))
    log.debug("chunks need a halo of %s below and %s above to match a whole-volume prediction",
              _fmt(need_lo), _fmt(need_hi))
    small = [] if auto else [j.spec for j in jobs if any(s < p for s, p in zip(j.box.shape, grid.patch_zyx))]
    if small:
        log.warning("%s is smaller than the patch %s: it is padded by mirroring%s", small[0],
                    _fmt(grid.patch_zyx), f" (and {len(small) - 1} more inputs)" if len(small) > 1 else "")
    for job in jobs:
        attrs = job.meta.attrs
        volume = volume_box(attrs)
        if "responsible_begin_vx" not in attrs or volume is None:
            continue
        resp = Box(attrs["responsible_begin_vx"], attrs["responsible_end_vx"])
        data = job.box
        lo, hi = need_lo, need_hi
        if job.scale_zyx != resample.ONE:  # in input voxels, with one more model voxel for the interpolation
            lo, hi = (tuple((n + 1) * s for n, s in zip(need, job.scale_zyx)) for need in (need_lo, need_hi))
        # a side whose data reaches the volume's border is mirrored there as the whole volume is
        short = any((data.begin[a] > volume.begin[a] and resp.begin[a] - data.begin[a] < lo[a]) or
                    (data.end[a] < volume.end[a] and data.end[a] - resp.end[a] < hi[a]) for a in range(3))
        if short:
            log.warning("the halo of %s is below the context of the model (%s below, %s above): its responsible "
                        "region may differ slightly from a whole-volume prediction", job.spec, _fmt(lo), _fmt(hi))
            return


def _into_outputs(into: str, specs: list[str], heads: list[str], voxel_size_nm) -> list[dict[str, str]]:
    """--into: per input, per head, the output spec of the input's region in the head's array."""
    if len(heads) > 1 and "{head}" not in into:
        raise EmError(f"--into {into} takes {len(heads)} heads: put {{head}} in it (e.g. pred.zarr/{{head}})")
    if "{name}" in into:
        raise EmError("--into writes every input into one array: {name} has no place in it")
    return [{head: io.into_chunk(into.replace("{head}", head), spec, voxel_size_nm) for head in heads}
            for spec in specs]


def _target(job: Job, outs: dict[str, str]) -> Box:
    """What an input's maps cover: its whole box, or (--into) the region it is responsible for."""
    if any(io.output_format(spec) == "into" for spec in outs.values()):
        from emtools.tiling.geometry import responsible_box

        return responsible_box(job.meta.attrs, job.box)
    return job.box


def _readable(spec: str) -> bool:
    if io.output_format(spec) == "into":
        return io.output_exists(spec)  # the region's done marker
    if not os.path.exists(io.output_file(spec)):
        return False
    try:
        with io.open_volume(spec):
            return True
    except EmError:
        return False


# ----------------------------------------------------------------------------- running

def _writers(job: Job, outs: dict[str, str], settings: Settings, target: Box | None = None) -> list[io.VolumeWriter]:
    params = settings.params if job.scale_zyx == resample.ONE else {**settings.params, "averaged_zyx": list(job.scale_zyx)}
    record = provenance_record(TOOL, params, [(job.spec, job.meta)])
    out_type = np.uint8 if settings.dtype == "uint8" else np.dtype(settings.dtype)
    target = target or job.box
    offset = tuple(b * v for b, v in zip(target.begin, job.meta.voxel_size_nm))
    return [io.VolumeWriter(outs[s.name], output_shape(s, target.shape), out_type,
                            output_metadata(job.meta, s, settings.dtype, record).replace(offset_nm=offset),
                            settings.compression)
            for s in settings.model.selection]


def _plan(job: Job, target: Box, settings: Settings, grid, fit: bool = True) -> list[tuple[Box, Box]]:
    return scaled.plan_pairs(target, settings.block_zyx, grid, job.scale_zyx, fit=fit)


def _predict_block(source, job: Job, pair: tuple[Box, Box], predictor, settings: Settings) -> list[np.ndarray]:
    """Encoded maps of one block (:func:`emtools.predict.scaled.plan_pairs`), in the order of the selected heads."""
    origin = tuple(-b for b in job.box.begin)
    maps = scaled.predict_pair(lambda part: source.read(part.shift(origin)), job.box, job.scale_zyx, pair, predictor,
                               settings.model.normalization)
    out = []
    for s in settings.model.selection:
        values = maps.pop(s.name)
        out.append(encode(values if output_axes(s) == "czyx" else values[0], settings.dtype, s.head.value_range))
    return out


def _predict_input(job: Job, outs: dict[str, str], predictor, settings: Settings, where: str) -> list[str]:
    predictor.grid = predictor.grid.anchored(job.model_anchor_zyx)
    target = _target(job, outs)
    blocks = _plan(job, target, settings, predictor.grid)
    started, patches = time.perf_counter(), predictor.patches_done
    shift = tuple(-b for b in target.begin)
    label = f"{where}{os.path.basename(io.output_file(job.spec))}"
    beat = pace.Heartbeat(label, target.size, len(blocks))
    with io.open_volume(job.spec, voxel_size_nm=settings.voxel_size_nm) as source, \
            io.AllOrNothing(_writers(job, outs, settings, target)) as writers:
        for pair in progress(blocks, label):
            for writer, values in zip(writers, _predict_block(source, job, pair, predictor, settings)):
                writer.write(pair[1].shift(shift), values)
            beat.advance(pair[1].size)
    _log_done(job, len(blocks), predictor, predictor.patches_done - patches, started, where)
    settings.tally.add(job.box.size, time.perf_counter() - started, predictor.patches_done - patches, job.model_box.size)
    return [w.path for w in writers]


def _log_done(job: Job, blocks: int, predictor, patches: int, started: float, where: str) -> None:
    elapsed = time.perf_counter() - started
    log.info("%s%s: %d block%s, %d patches x %d TTA variant%s, %.1f s, %.3f Mvoxel/s", where, job.spec, blocks,
             "s" * (blocks != 1), patches, len(predictor.variants), "s" * (len(predictor.variants) != 1), elapsed,
             job.box.size / max(elapsed, 1e-9) / 1e6)


def _run_sharded_volume(job: Job, outs: dict[str, str], predictor, settings: Settings, ranks, skip_existing, where):
    """One volume under torchrun: rank i % world predicts block i; rank 0 receives and writes all."""
    from emtools.predict.sharding import Group

    if skip_existing and all(_readable(spec) for spec in outs.values()):
        if ranks.rank == 0:
            log.info("exists, skipped: %s", ", ".join(outs.values()))
            for spec in outs.values():
                emit(io.output_file(spec))
        return
    predictor.grid = predictor.grid.anchored(job.model_anchor_zyx)
    target = _target(job, outs)
    # the blocks are what the ranks share: keep --block as given (fitting could leave one block)
    blocks = _plan(job, target, settings, predictor.grid, fit=False)
    started, patches = time.perf_counter(), predictor.patches_done
    shift = tuple(-b for b in target.begin)
    out_type = np.uint8 if settings.dtype == "uint8" else np.dtype(settings.dtype)
    with Group(ranks) as group, io.open_volume(job.spec, voxel_size_nm=settings.voxel_size_nm) as source:
        if ranks.rank != 0:
            for index, pair in enumerate(blocks):
                if ranks.owner(index) == ranks.rank:
                    for values in _predict_block(source, job, pair, predictor, settings):
                        group.send(values, 0)
            _log_done(job, len(ranks.mine(blocks)), predictor, predictor.patches_done - patches, started, where)
            settings.tally.add(sum(pair[1].size for pair in ranks.mine(blocks)), time.perf_counter() - started,
                               predictor.patches_done - patches, sum(pair[0].size for pair in ranks.mine(blocks)))
            return
        with io.AllOrNothing(_writers(job, outs, settings, target)) as writers:
            label = f"{where}{os.path.basename(io.output_file(job.spec))}"
            beat = pace.Heartbeat(label, target.size, len(blocks))
            for index, pair in enumerate(progress(blocks, label)):
                owner = ranks.owner(index)
                if owner == 0:
                    maps = _predict_block(source, job, pair, predictor, settings)
                else:
                    maps = [group.recv(output_shape(s, pair[1].shape), out_type, owner) for s in settings.model.selection]
                for writer, values in zip(writers, maps):
                    writer.write(pair[1].shift(shift), values)
                beat.advance(pair[1].size)
        _log_done(job, len(ranks.mine(blocks)), predictor, predictor.patches_done - patches, started, where)
        settings.tally.add(sum(pair[1].size for pair in ranks.mine(blocks)), time.perf_counter() - started,
                           predictor.patches_done - patches, sum(pair[0].size for pair in ranks.mine(blocks)))
    for writer in writers:
        emit(writer.path)


if __name__ == "__main__":
    main()
