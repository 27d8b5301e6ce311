"""em-predict with a flood-filling network checkpoint: ``em-predict ffn.pt image.h5 -o seg.h5``.

:mod:`emtools.cli.predict` owns the one click command; it calls :func:`dispatch` first, which runs
this path when CHECKPOINT is an FFN (spec arch ``ffn`` or extra kind ``ffn``) and refuses, in one
line, options that belong to the other kind of model. The work: read the image (``emtools.io``),
normalise it as in training, pick the seeds (:mod:`emtools.ffn.seeds`), flood-fill
(:func:`emtools.ffn.inference.flood_fill`), write uint64 labels (and optional uint8
probabilities) atomically, all or nothing, with metadata and provenance.
"""

from __future__ import annotations

import logging
import os
import time

import click

from emtools.errors import EmError

log = logging.getLogger("emtools")
TOOL = "em-predict"
PROGRESS_INTERVAL_S = 30.0

# The em-predict options that only the U-Net path reads (an FFN checkpoint refuses them).
UNET_ONLY = ("into", "patch_zyx", "memory", "overlap", "crop", "blend", "tta", "tta_reduce", "head_names",
             "channel_ranges", "dtype", "block_zyx", "channels_last", "compile_model", "onednn", "winograd", "plain",
             "preview")
FFN_ONLY = ("seeds", "segment_threshold", "move_threshold", "min_size", "min_seed_distance", "restrictor",
            "probabilities", "state", "state_every", "consensus", "consensus_offset", "chunk_zyx", "halo_zyx", "work",
            "stitch_threshold")

HELP = """\b
Flood-filling networks (a CHECKPOINT from em-train model=ffn): one INPUT volume is segmented
object by object; -o gets uint64 labels (0: unsegmented) with the seed of each object in the
metadata (ffn_origins). Seeds (--seeds) are grown in order: the FOV moves to the face maxima
above --move-threshold until no move is left, voxels at or above --segment-threshold not yet
claimed form the segment, segments under --min-size voxels are dropped. --state FILE keeps the
canvas every --state-every seconds so that a killed run resumes where it stopped (same labels);
the file goes when the output is written. --consensus runs a second fill (the first run's
seeds in reverse order, optionally on a shifted FOV lattice: --consensus-offset) and keeps
only what both agree on: an oversegmentation to use as em-agglomerate fragments. --chunk
Z,Y,X segments a large volume in chunks with a --halo (default: the FOV) in a --work folder
(a rerun redoes only missing chunks; under torchrun the ranks share the chunks) and joins
segments that overlap in the halos (--stitch-threshold). FFN-only options say so; the
U-Net-only ones (--patch, --tta, --heads, --into, ...) are refused with an FFN checkpoint.
"""

SEEDS_HELP = ("FFN only: where objects start: peaks (google/ffn's PolicyPeaks: points far from the image's edges), "
              "grid (every FOV step, the model's deltas), boundary:MAP (peaks of the distance transform of "
              "MAP < 0.5, a boundary map of the input's shape), inverse:SEG (the objects' seeds of an earlier "
              "FFN output SEG, last first: a second run for consensus), or a text FILE of 'z y x' lines (# comments).")


def options(func):
    """The FFN-only options of em-predict (applied in :mod:`emtools.cli.predict`)."""
    from emtools.cli.common import INT_TRIPLE

    decorators = [
        click.option("--seeds", default=None, metavar="POLICY|FILE", help=SEEDS_HELP + " [default: peaks]"),
        click.option("--segment-threshold", type=float, default=None,
                     help="FFN only: object probability at which a voxel joins the segment [default: 0.6]."),
        click.option("--move-threshold", type=float, default=None,
                     help="FFN only: object probability on a FOV face that moves the FOV there [default: the "
                          "checkpoint's move_threshold, else 0.9]."),
        click.option("--min-size", type=int, default=None,
                     help="FFN only: segments with fewer voxels are dropped (0 in the output) [default: 1000]."),
        click.option("--min-seed-distance", type=INT_TRIPLE, default=None,
                     help="FFN only: seeds within this many voxels z,y,x of a segment are skipped [default: 1,1,1]."),
        click.option("--restrictor", default=None, metavar="MASK",
                     help="FFN only: a volume of the input's shape; where it is 0 nothing is segmented and no seed "
                          "or FOV centre lies."),
        click.option("--probabilities", default=None, metavar="OUT",
                     help="FFN only: also write the final object probability of each labelled voxel as uint8 "
                          "(round(255 p)), 0 where unlabelled."),
        click.option("--state", default=None, metavar="FILE",
                     help="FFN only: keep the canvas state in FILE (.npz); a rerun with the same arguments resumes "
                          "from it, even in the middle of an object."),
        click.option("--state-every", type=float, default=None, metavar="SECONDS",
                     help="FFN only: seconds between --state saves (0: before every forward pass) [default: 60]."),
        click.option("--consensus", is_flag=True, default=False,
                     help="FFN only: two fills (the second grows the first's seeds last first) and their consensus: "
                          "split wherever they disagree (an oversegmentation, e.g. em-agglomerate fragments)."),
        click.option("--consensus-offset", type=INT_TRIPLE, default=None, metavar="Z,Y,X",
                     help="FFN only, with --consensus: the second fill sees the volume shifted by this many voxels "
                          "(its FOVs on another lattice) [default: 0,0,0]."),
        click.option("--chunk", "chunk_zyx", type=INT_TRIPLE, default=None, metavar="Z,Y,X",
                     help="FFN only: segment in chunks of this size (each with --halo) and stitch them."),
        click.option("--halo", "halo_zyx", type=INT_TRIPLE, default=None, metavar="Z,Y,X",
                     help="FFN only, with --chunk: voxels each chunk reads beyond its own [default: the FOV]."),
        click.option("--work", default=None, metavar="DIR",
                     help="FFN only, with --chunk: the folder of chunk files and stitch tables (a rerun reuses "
                          "finished chunks) [default: OUTPUT.work]."),
        click.option("--stitch-threshold", type=float, default=None,
                     help="FFN only, with --chunk: two chunks' segments are joined when 1 - overlap / smaller size "
                          "in the halo is below this [default: 0.5]."),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def _given(ctx: click.Context, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _flag(name: str) -> str:
    return {"patch_zyx": "--patch", "head_names": "--heads", "channel_ranges": "--channels", "block_zyx": "--block",
            "compile_model": "--compile", "chunk_zyx": "--chunk", "halo_zyx": "--halo"}.get(name, "--" + name.replace("_", "-"))


def checkpoint_kind(path: str) -> tuple[bool, str]:
    """(is an FFN, what was found) of a checkpoint file; shipped model names are U-Nets."""
    from emtools.models.weights import PRETRAINED

    if path in PRETRAINED and not os.path.exists(path):
        return False, f"the shipped U-Net {path}"
    from emtools.models.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    spec = payload.get("spec") or {}
    extra = payload.get("extra") or {}
    ffn = str(spec.get("arch", "")).lower() == "ffn" or extra.get("kind") == "ffn"
    found = f"an FFN ({spec.get('name', 'ffn')})" if ffn else \
        f"a U-Net (arch {spec.get('arch', '?')}, {spec.get('name', '?')})"
    return ffn, found


def dispatch(ctx: click.Context, checkpoint: str, inputs, output, ffn_values: dict, shared: dict) -> bool:
    """Run the FFN path when CHECKPOINT is an FFN (True), else check that no FFN-only option was given."""
    given_ffn = [name for name in FFN_ONLY if _given(ctx, name)]
    try:
        ffn, found = checkpoint_kind(checkpoint)
    except EmError:
        if given_ffn:
            raise
        return False  # the U-Net path reports a missing or damaged checkpoint in its turn
    if not ffn:
        if given_ffn:
            raise EmError(f"{_flag(given_ffn[0])} is for flood-filling networks, but {checkpoint} is {found}")
        return False
    given_unet = [name for name in UNET_ONLY if _given(ctx, name)]
    if given_unet:
        raise EmError(f"{_flag(given_unet[0])} is for U-Net checkpoints, but {checkpoint} is {found} "
                      "(FFN options: --seeds, --segment-threshold, --min-size, ...)")
    if output is None:
        raise click.UsageError("give -o OUTPUT (the labels)")
    run(checkpoint, list(inputs), output, ffn_values, shared)
    return True


# ----------------------------------------------------------------------------- the run

def _check_output(spec: str, protected: dict, what: str) -> None:
    from emtools import io

    fmt = io.output_format(spec)
    if fmt == "into":
        raise EmError(f"{what} {spec}: an FFN writes a whole volume (-o file.h5, store.zarr/array or file.tif)")
    path = io.output_file(spec)
    io.check_output_path(path)
    real = os.path.realpath(path)
    if real in protected:
        raise EmError(f"{what} {spec} is the same file as {protected[real]}; write somewhere else "
                      "(inputs are never modified)")
    protected[real] = spec


def _read_mask(spec: str, shape, what: str, voxel_size_nm):
    import numpy as np

    from emtools import io

    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"{what} {spec} must be one channel z,y,x, got shape {'x'.join(map(str, source.shape))}")
        if tuple(source.shape) != tuple(shape):
            raise EmError(f"{what} {spec} is {'x'.join(map(str, source.shape))} but the input is "
                          f"{'x'.join(map(str, shape))} (z,y,x)")
        return np.asarray(source.read())


def _seeds(text: str, image, restrictor, fov, deltas, shape, voxel_size_nm):
    """The seed list of --seeds (checked against the volume and the restrictor)."""
    from emtools import io
    from emtools.ffn import seeds as policies

    word = text.strip()
    if word == "peaks":
        return policies.peaks(image, restrictor), "peaks"
    if word == "grid":
        return policies.grid(shape, fov, deltas, restrictor), f"grid {','.join(map(str, deltas))}"
    if word.startswith("boundary:"):
        spec = word[len("boundary:"):]
        return policies.boundary(_read_mask(spec, shape, "--seeds boundary map", voxel_size_nm), 0.5, restrictor), \
            f"boundary {spec}"
    if word.startswith("inverse:"):
        spec = word[len("inverse:"):]
        with io.open_volume(spec) as source:
            origins = source.meta.attrs.get("ffn_origins")
            if tuple(source.shape) != tuple(shape):
                raise EmError(f"--seeds inverse: {spec} is {'x'.join(map(str, source.shape))} but the input is "
                              f"{'x'.join(map(str, shape))}")
        if not isinstance(origins, list):
            raise EmError(f"--seeds inverse: {spec} records no FFN origins (ffn_origins); give an em-predict FFN output")
        return policies.inverse({int(k): (z, y, x) for k, z, y, x in origins}), f"inverse {spec}"
    if not os.path.exists(word) and word in ("peak", "grids", "inverse", "boundary"):
        raise EmError(f"--seeds {word}: choose peaks, grid, boundary:MAP, inverse:SEG or a seed file")
    if not os.path.isfile(word):
        raise EmError(f"--seeds {word}: not a policy (peaks, grid, boundary:MAP, inverse:SEG) nor a seed file")
    found = policies.read_seed_file(word, shape)
    if restrictor is not None:
        for number, pos in _numbered(word, found):
            if not restrictor[pos]:
                raise EmError(f"line {number} of {word}: seed {','.join(map(str, pos))} lies on background "
                              "(the --restrictor mask is 0 there)")
    return found, f"file {word}"


def _numbered(path: str, found: list):
    """(line number, seed) of a seed file already parsed."""
    numbers = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.split("#", 1)[0].strip():
                numbers.append(number)
    return zip(numbers, found)


def run(checkpoint: str, inputs: list[str], output: str, values: dict, shared: dict) -> None:
    import numpy as np

    from emtools import io
    from emtools.cli.common import emit, expand_stdin_specs, require_positive
    from emtools.ffn import inference
    from emtools.meta import provenance_record

    io.parse_compression(shared["compression"])
    specs = expand_stdin_specs(inputs)
    if len(specs) != 1:
        raise EmError(f"an FFN checkpoint segments one INPUT volume at a time, got {len(specs)}")
    spec = specs[0]
    if "{" in output:
        raise EmError(f"-o {output}: an FFN writes one labels volume; give its name (no {{name}}/{{head}})")
    batch, threads = shared["batch"], shared["threads"]
    for name, value in (("--batch", batch), ("--threads", threads if threads is not None else 1)):
        if value < 1:
            raise EmError(f"{name} must be at least 1, got {value}")
    if shared["voxel_size_nm"] is not None:
        require_positive("--voxel-size", shared["voxel_size_nm"])
    state_every = 60.0 if values["state_every"] is None else values["state_every"]
    if state_every < 0:
        raise EmError(f"--state-every must be 0 or more seconds, got {state_every}")
    if values["min_seed_distance"] is not None:
        require_positive("--min-seed-distance", values["min_seed_distance"], allow_zero=True)
    options = inference.FloodOptions(
        segment_threshold=0.6 if values["segment_threshold"] is None else values["segment_threshold"],
        min_size=1000 if values["min_size"] is None else values["min_size"],
        min_seed_distance_zyx=tuple(values["min_seed_distance"] or (1, 1, 1)), batch=batch,
        checkpoint_every_s=state_every)
    if values["move_threshold"] is not None:
        options.move_threshold = values["move_threshold"]
    options.check()
    combined = values["consensus"] or values["chunk_zyx"] is not None
    if values["consensus_offset"] is not None and not values["consensus"]:
        raise EmError("--consensus-offset needs --consensus")
    for name in ("halo_zyx", "work", "stitch_threshold"):
        if values[name] is not None and values["chunk_zyx"] is None:
            raise EmError(f"{_flag(name)} needs --chunk Z,Y,X")
    if combined and values["probabilities"]:
        raise EmError("--probabilities is for a single fill; with --consensus or --chunk the labels come from "
                      "several fills")
    if values["chunk_zyx"] is not None:
        require_positive("--chunk", values["chunk_zyx"])
        if values["halo_zyx"] is not None:
            require_positive("--halo", values["halo_zyx"], allow_zero=True)
        if values["state"]:
            raise EmError("--state is for a single volume; with --chunk the --work folder keeps each chunk's state")
        if values["stitch_threshold"] is not None and not 0.0 <= values["stitch_threshold"] <= 1.0:
            raise EmError(f"--stitch-threshold must lie in [0, 1], got {values['stitch_threshold']}")
    if values["consensus_offset"] is not None:
        require_positive("--consensus-offset", values["consensus_offset"], allow_zero=True)
    protected = {os.path.realpath(io.output_file(spec)): spec, os.path.realpath(checkpoint): checkpoint}
    for extra_input in (values["restrictor"], values["state"]):
        if extra_input:
            protected.setdefault(os.path.realpath(io.output_file(extra_input)), extra_input)
    _check_output(output, protected, "-o")
    if values["probabilities"]:
        _check_output(values["probabilities"], protected, "--probabilities")
    if values["state"]:
        io.check_output_path(values["state"])
    outs = [output] + ([values["probabilities"]] if values["probabilities"] else [])
    if shared["skip_existing"] and all(io.output_exists(o) for o in outs):
        log.info("exists, skipped: %s", ", ".join(outs))
        for o in outs:
            emit(io.output_file(o))
        return

    import torch

    from emtools.models.checkpoint import load_model
    from emtools.normalize import check_normalization, normalize_image
    from emtools.predict.loading import file_sha256, parse_normalization
    from emtools.ranks import select_device

    if threads is not None:
        torch.set_num_threads(threads)
    model, spec_obj, extra = load_model(checkpoint)
    fov, deltas = tuple(spec_obj.fov_zyx), tuple(spec_obj.deltas_zyx)
    if values["move_threshold"] is None and extra.get("move_threshold") is not None:
        options.move_threshold = float(extra["move_threshold"])
    pads = extra.get("seed_pad") or {}
    options.seed_pad = float(pads.get("pad", options.seed_pad))
    options.seed_value = float(pads.get("seed", options.seed_value))
    options.check()
    if shared["normalization"] is not None:
        norm = parse_normalization(shared["normalization"])
    elif extra.get("normalization") is not None:
        norm = extra["normalization"]
    else:
        raise EmError(f"{checkpoint} records no input normalisation; pass --normalization SCALE,MEAN,STD "
                      "(google/ffn's uint8 images: 1,128,33)")
    norm = check_normalization(norm)

    with io.open_volume(spec, voxel_size_nm=shared["voxel_size_nm"]) as source:
        shape, meta, dtype = tuple(source.shape), source.meta, np.dtype(source.dtype)
        if len(shape) != 3:
            raise EmError(f"{spec} has {shape[0]} channels; an FFN takes one image channel (z,y,x)")
        if dtype.kind not in "uif":
            raise EmError(f"{spec} is {dtype}; images must be integers or floats")
        _check_voxel(spec, meta.voxel_size_nm, extra.get("voxel_size_nm"), checkpoint, shared["force"])
        if any(f > s for f, s in zip(fov, shape)):
            raise EmError(f"the FOV {'x'.join(map(str, fov))} of {checkpoint} is larger than {spec} "
                          f"({'x'.join(map(str, shape))}, z,y,x)")
        raw = source.read()
    restrictor = None
    if values["restrictor"]:
        restrictor = _read_mask(values["restrictor"], shape, "--restrictor", shared["voxel_size_nm"]) != 0
    image = normalize_image(raw, norm)
    del raw
    started = time.perf_counter()
    seeds, policy = _seeds(values["seeds"] or "peaks", image, restrictor, fov, deltas, shape, shared["voxel_size_nm"])
    if values["state"]:  # a state of another run is refused before anything is logged
        inference.check_state(values["state"], image, seeds, fov, deltas, options, restrictor=restrictor,
                              want_probabilities=bool(values["probabilities"]))
    log.info("%d seeds (%s) in %.1f s; FOV %s, deltas %s, %s", len(seeds), policy, time.perf_counter() - started,
             "x".join(map(str, fov)), ",".join(map(str, deltas)), spec_obj.describe())
    border = sum(1 for s in seeds if not all(f // 2 <= p < n - f // 2 for p, f, n in zip(s, fov, shape)))
    if border and policy.startswith("file"):
        log.warning("%d of %d seeds lie too close to the border to centre a FOV (%s): they are skipped", border,
                    len(seeds), ",".join(str(f // 2) for f in fov))
    device = select_device(shared["device"])
    predict_fovs = inference.model_runner(model, device, shared["precision"])

    params = {
        "checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint), "model": spec_obj.describe(),
        "seeds": policy, "seed_count": len(seeds), "normalization": norm, "options": options.result_affecting(),
        "batch": batch, "precision": shared["precision"], "restrictor": values["restrictor"],
        "training_voxel_size_nm": extra.get("voxel_size_nm"), "forced": bool(shared["force"]),
    }
    beat = _Beat()
    if values["consensus"] or values["chunk_zyx"]:
        params.update(consensus=bool(values["consensus"]), consensus_offset=list(values["consensus_offset"] or (0, 0, 0)),
                      chunk_zyx=values["chunk_zyx"] and list(values["chunk_zyx"]),
                      halo_zyx=values["chunk_zyx"] and list(values["halo_zyx"] or fov),
                      stitch_threshold=values["stitch_threshold"] if values["stitch_threshold"] is not None else 0.5)
        _run_combined(predict_fovs, image, seeds, fov, deltas, options, restrictor, values, params, spec, meta,
                      output, shared, beat)
        return
    record = provenance_record(TOOL, params, [(spec, meta)])
    result = inference.flood_fill(predict_fovs, image, seeds, fov, deltas, options, restrictor=restrictor,
                                  state_path=values["state"], want_probabilities=bool(values["probabilities"]),
                                  progress=beat)
    origins = [[int(k), *map(int, v)] for k, v in sorted(result.origins.items())]
    label_meta = meta.replace(axes="zyx", provenance=meta.provenance + (record,),
                              attrs={"ffn_origins": origins, "ffn_fov_zyx": list(fov), "ffn_deltas_zyx": list(deltas)})
    writers = [io.VolumeWriter(output, shape, np.uint64, label_meta, shared["compression"])]
    if values["probabilities"]:
        prob_meta = label_meta.replace(attrs={"value_range": [0.0, 1.0], "ffn_origins": origins})
        writers.append(io.VolumeWriter(values["probabilities"], shape, np.uint8, prob_meta, shared["compression"]))
    from emtools.tiling.geometry import Box

    with io.AllOrNothing(writers) as opened:
        opened[0].write(Box.from_shape(shape), result.labels)
        if values["probabilities"]:
            opened[1].write(Box.from_shape(shape), result.probabilities)
    if values["state"] and os.path.exists(values["state"]):
        os.remove(values["state"])
    log.info("%s", inference.summary_line(result))
    for writer in writers:
        emit(writer.path)


def _run_combined(predict_fovs, image, seeds, fov, deltas, options, restrictor, values, params, spec, meta, output,
                  shared, beat) -> None:
    """--consensus and/or --chunk: the labels of several fills, written as fragments (fragment_count)."""
    import numpy as np

    from emtools import io
    from emtools.cli.common import emit
    from emtools.ffn import chunked
    from emtools.ffn.consensus import flood_consensus, fragments_metadata, remove_states
    from emtools.tiling.geometry import Box

    started = time.perf_counter()
    offset = tuple(values["consensus_offset"] or (0, 0, 0))
    shape = image.shape
    if values["chunk_zyx"] is not None:
        work = values["work"] or io.output_file(output) + ".work"
        segment = chunked.flood_segmenter(
            predict_fovs, fov, deltas, options, lambda block, mask, box: chunked.seeds_in_box(seeds, box),
            restrictor=restrictor, consensus=bool(values["consensus"]),
            consensus_options={"fov_offset_zyx": offset}, progress=beat)
        fingerprint = {key: params[key] for key in ("checkpoint_sha256", "seeds", "seed_count", "normalization",
                                                    "options", "consensus", "consensus_offset", "restrictor")}
        result = chunked.segment_chunked(segment, image, values["chunk_zyx"], params["halo_zyx"], work,
                                         threshold=params["stitch_threshold"], voxel_size_nm=meta.voxel_size_nm,
                                         fingerprint=fingerprint)
        if result.labels is None:  # another rank stitches and writes
            log.info("rank done: %d chunks segmented, %d found done", len(result.computed), len(result.reused))
            return
        labels = result.labels
        what = (f"{len(result.computed)} chunks segmented, {len(result.reused)} reused, {result.fragments} chunk "
                f"segments -> {result.segments} after stitching")
    else:
        result = flood_consensus(predict_fovs, image, seeds, fov, deltas, options, fov_offset_zyx=offset,
                                 restrictor=restrictor, state_path=values["state"], progress=beat)
        labels = result.labels
        what = (f"consensus of {result.first.objects} and {result.second.objects} objects: "
                f"{int(labels.max()) if labels.size else 0} fragments, {result.fovs} FOVs")
    label_meta = fragments_metadata(meta.replace(axes="zyx"), labels, params, [(spec, meta)])
    label_meta = label_meta.replace(attrs={**label_meta.attrs, "ffn_fov_zyx": list(fov), "ffn_deltas_zyx": list(deltas)})
    writer = io.VolumeWriter(output, shape, np.uint64, label_meta, shared["compression"])
    with io.AllOrNothing([writer]) as opened:
        opened[0].write(Box.from_shape(shape), labels)
    remove_states(values["state"])
    seconds = max(time.perf_counter() - started, 1e-9)
    log.info("done: %s in %.1f s, %.4f Mvoxel/s", what, seconds, labels.size / seconds / 1e6)
    emit(writer.path)


def _check_voxel(spec: str, voxel, train, checkpoint: str, force: bool) -> None:
    if train is None:
        if not force:
            raise EmError(f"{checkpoint} does not record its training voxel size; pass --force to predict anyway")
        return
    if any(abs(a - b) > 1e-3 * max(abs(b), 1e-9) for a, b in zip(voxel, train)):
        text = (f"voxel size {','.join(f'{v:g}' for v in voxel)} nm of {spec} differs from the training voxel size "
                f"{','.join(f'{float(v):g}' for v in train)} nm of {checkpoint}")
        if not force:
            raise EmError(f"{text}; resample the input, set --voxel-size if the file is wrong, or --force")
        log.warning("%s (--force)", text)


class _Beat:
    """One progress line on stderr every PROGRESS_INTERVAL_S seconds (objects, FOVs, FOV/s, voxels/s)."""

    def __init__(self):
        self.last = time.monotonic()

    def __call__(self, state) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        seconds = max(state.seconds, 1e-9)
        log.info("flood fill: seed %d/%d, %d objects, %d FOVs, %.2f FOV/s, %.4f Mvoxel/s segmented", state.seeds_done,
                 state.seeds_total, state.objects, state.fovs, state.fovs / seconds, state.segmented_voxels / seconds / 1e6)
