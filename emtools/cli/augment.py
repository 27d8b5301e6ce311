"""em-augment: apply em-train's augmentations to a volume (and its labels) and draw a preview."""

from __future__ import annotations

import contextlib
import os
import time

import click
import numpy as np

from emtools import io
from emtools.cli.common import FLOAT_TRIPLE, contract, emit, log, require_positive, version_option
from emtools.errors import EmError
from emtools.meta import provenance_record, require_same_grid

TOOL = "em-augment"
LABELS_KEY = "labels"
PLACEHOLDER = "{i}"


def _augmentation_list() -> str:
    from emtools import augment

    return "\n".join(f"  {name:16s}{augment.summary(name)}" for name in augment.AUGMENTATIONS)


HELP = f"""Augment IMAGE (and LABELS) with the same functions em-train applies online
(emtools.augment), and write the result: the image with the input's dtype (uint8 stays
uint8) to OUTPUT, the moved labels to --labels-out, a before/after montage to --preview.

--aug lists the steps, applied in that order; --param NAME.KEY=VALUE sets an option of
a step (VALUE: a number, lo,hi for a range, true/false, or a word; KEY p is the
probability of applying the step). `em-augment --list` prints every option with its
default. Labels are moved with nearest-neighbour sampling only; voxels brought in from
outside the volume get label 0. Same --seed, same output bytes; --repeat K writes K
draws from that one seed (OUTPUT then needs {{i}}, replaced by 0..K-1).

The preview's top row shows a few sections before, each further row the same sections
after augmenting (labels as a colour overlay).

\b
Augmentations:
{_augmentation_list()}

\b
Examples:
  em-augment raw.h5:/image -o aug.h5:/image --aug flip,rotate,elastic --seed 1
  em-augment isbi/image isbi-labels.h5 --voxel-size 50,4,4 --aug elastic,misalign \\
      --param elastic.alpha=10 --param misalign.mode=translation --seed 3 \\
      -o aug.h5:/image --labels-out aug-labels.h5 --preview aug.png
  em-augment raw.h5 -o 'aug_{{i}}.tif' --aug grayscale,missing_section --repeat 4 --seed 0
  em-augment --list
"""


def _list_options(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from emtools import augment

    for name in augment.AUGMENTATIONS:
        click.echo(f"{name}: {augment.summary(name)}")
        click.echo("  p = 1.0  probability of applying the step")
        for key, opt in augment.options_of(name).items():
            default = ",".join(f"{v:g}" for v in opt.default) if isinstance(opt.default, tuple) else opt.default
            if isinstance(default, bool):
                default = str(default).lower()
            choices = f" ({'|'.join(opt.choices)})" if opt.choices else ""
            click.echo(f"  {key} = {default}{choices}  {opt.help}")
    ctx.exit(0)


@click.command(help=HELP)
@click.argument("image_spec", metavar="IMAGE")
@click.argument("labels_spec", metavar="[LABELS]", required=False)
@click.option("-o", "--output", required=True, help="Augmented image: file.h5[:/dataset] or file.tif.")
@click.option("--aug", "aug_names", required=True, multiple=True, metavar="NAME[,NAME...]",
              help="Augmentations to apply, in order (repeatable).")
@click.option("--seed", type=int, required=True, help="Seed of the random generator (the only source of randomness).")
@click.option("--param", "param_texts", multiple=True, metavar="NAME.KEY=VALUE",
              help="An option of a step, e.g. rotate.angle_deg=-30,30 or elastic.p=0.5 (repeatable).")
@click.option("--labels-out", default=None, help="Where the moved LABELS go (needed with LABELS).")
@click.option("--preview", default=None, help="Write a PNG montage: sections before (top row) and after.")
@click.option("--repeat", type=int, default=1, show_default=True, help="Write this many augmented versions ({i} in the outputs).")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None, help="Voxel size z,y,x in nm (overrides the files').")
@click.option("--compression", default="gzip", show_default=True, help="gzip[:LEVEL], lzf (HDF5 only) or none.")
@click.option("--list", "list_options", is_flag=True, is_eager=True, expose_value=False, callback=_list_options,
              help="Print every augmentation with its options and defaults, then exit.")
@version_option(TOOL)
@contract(TOOL)
def main(image_spec, labels_spec, output, aug_names, seed, param_texts, labels_out, preview, repeat,
         voxel_size_nm, compression):
    from emtools import augment

    started = time.perf_counter()
    names = [n.strip() for text in aug_names for n in text.split(",") if n.strip()]
    if not names:
        raise EmError("--aug names no augmentation")
    params = parse_params(param_texts, names)
    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)
    if repeat < 1:
        raise EmError(f"--repeat must be at least 1, got {repeat}")
    io.parse_compression(compression)
    other_spec = params.get("mixup", {}).pop("other", None)
    steps = [(name, dict(params.get(name, {}))) for name in names]
    resolved = augment.check_steps(steps)
    outputs = _plan_outputs(output, labels_spec, labels_out, preview, repeat, [image_spec, labels_spec, other_spec])

    image, image_meta, box = _read_image(image_spec, voxel_size_nm)
    inputs = [(image_spec, image_meta)]
    labels = {}
    labels_meta = None
    if labels_spec is not None:
        values, labels_meta, labels_box = _read_labels(labels_spec, voxel_size_nm)
        require_same_grid([(image_spec, image_meta), (labels_spec, labels_meta)])
        _require_same_box(image_spec, box, labels_spec, labels_box)
        labels[LABELS_KEY] = values
        inputs.append((labels_spec, labels_meta))
    if other_spec is not None:
        other, other_meta, other_box = _read_image(other_spec, voxel_size_nm)
        _require_same_box(image_spec, box, other_spec, other_box)
        inputs.append((other_spec, other_meta))
        for name, step in steps:
            if name == "mixup":
                step["other"] = _as_unit(other, other_spec)
        resolved = [(n, {**r, "other": other_spec}) if n == "mixup" else (n, r) for n, r in resolved]

    unit = _as_unit(image, image_spec)
    if voxel_size_nm is None and image_meta.voxel_size_nm == (1.0, 1.0, 1.0):  # after every check: errors stay one line
        log.warning("%s records no voxel size; using 1,1,1 nm (set --voxel-size)", image_spec)
    rng = np.random.default_rng(seed)
    shown = []
    record_params = {"aug": [{"name": n, **_recordable(r)} for n, r in resolved], "seed": seed, "repeat": repeat}
    written: list[str] = []
    try:  # a run writes all its outputs or none of them
        for i in range(repeat):
            out_image, out_labels = augment.augment(unit, labels, steps, rng)
            record = provenance_record(TOOL, {**record_params, "index": i}, inputs)
            written.append(io.write_volume(outputs["image"][i], _like_input(out_image, image.dtype),
                                           image_meta.with_record(record), compression=compression))
            if labels:
                written.append(io.write_volume(outputs["labels"][i], out_labels[LABELS_KEY],
                                               labels_meta.with_record(record), compression=compression))
            if preview is not None and len(shown) < 3:
                shown.append((out_image, out_labels.get(LABELS_KEY)))
        if preview is not None:
            from emtools.augment.preview import montage, preview_sections

            rows = [(unit, labels.get(LABELS_KEY))] + shown
            written.append(io.write_png(preview, montage(rows, preview_sections(unit.shape[0]))))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.remove(path)
        raise
    for path in written:
        emit(path)
    log.info("%s: %s, %d version(s), seed %d, %.2f s", "x".join(map(str, unit.shape)), ",".join(names),
             repeat, seed, time.perf_counter() - started)


def parse_params(texts, names) -> dict[str, dict]:
    """``["rotate.angle_deg=-30,30", ...]`` -> ``{"rotate": {"angle_deg": (-30.0, 30.0)}}``."""
    from emtools import augment

    out: dict[str, dict] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        name, dot, option = key.strip().partition(".")
        if not sep or not dot or not name or not option:
            raise EmError(f"--param {text!r} is not NAME.KEY=VALUE (e.g. rotate.angle_deg=-30,30)")
        if name not in augment.AUGMENTATIONS:
            augment.check_steps([(name, {})])  # the unknown-augmentation error, with a suggestion
        if name not in names:
            raise EmError(f"--param {text!r}: {name} is not in --aug ({', '.join(names)})")
        opt = augment.options_of(name).get(option)
        if opt is not None and opt.kind == "object" and (name, option) != ("mixup", "other"):
            raise EmError(f"--param {name}.{option} takes arrays, which em-augment cannot pass "
                          f"(the library call can; em-augment copies within the volume)")
        if option in out.setdefault(name, {}):
            raise EmError(f"--param {name}.{option} is given twice")
        out[name][option] = parse_value(value.strip())
    return out


def parse_value(text: str):
    """A number, a tuple of numbers (``lo,hi``), true/false, or the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    parts = text.split(",")
    numbers = [_number(p.strip()) for p in parts]
    if len(parts) > 1:
        if any(n is None for n in numbers):
            raise EmError(f"--param value {text!r}: a list must hold numbers only")
        return tuple(numbers)
    return text if numbers[0] is None else numbers[0]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _plan_outputs(output, labels_spec, labels_out, preview, repeat, input_specs) -> dict[str, list[str]]:
    """Every file that will be written, checked before any work (one-line errors)."""
    if labels_spec is not None and labels_out is None:
        raise EmError("LABELS given: name where the moved labels go with --labels-out")
    if labels_spec is None and labels_out is not None:
        raise EmError("--labels-out needs a LABELS input")
    outputs = {"image": _expand("-o", output, repeat)}
    if labels_out is not None:
        outputs["labels"] = _expand("--labels-out", labels_out, repeat)
    files = []
    for specs in outputs.values():
        for spec in specs:
            io.output_format(spec)
            files.append(io.output_file(spec))
    if preview is not None:
        if not preview.lower().endswith(".png"):
            raise EmError(f"--preview must be a .png file, got {preview}")
        files.append(preview)
    if len({os.path.abspath(f) for f in files}) != len(files):
        raise EmError("the outputs must be different files")
    sources = {os.path.abspath(io.output_file(s)) for s in input_specs if s}
    for path in files:
        io.check_output_path(path)
        if os.path.abspath(path) in sources:
            raise EmError(f"output {path} is also an input (inputs are never modified)")
    return outputs


def _expand(option: str, template: str, repeat: int) -> list[str]:
    if repeat == 1:
        return [template.replace(PLACEHOLDER, "0")]
    if PLACEHOLDER not in template:
        raise EmError(f"--repeat {repeat} needs {PLACEHOLDER} in {option}, e.g. 'aug_{PLACEHOLDER}.h5'")
    return [template.replace(PLACEHOLDER, str(i)) for i in range(repeat)]


def _read_image(spec, voxel_size_nm):
    return _read_3d(spec, voxel_size_nm, "the image", "uf", "unsigned integers or floats in [0, 1]")


def _read_labels(spec, voxel_size_nm):
    values, meta, box = _read_3d(spec, voxel_size_nm, "labels", "ui", "integers (uint64 or uint32)")
    if values.dtype.kind == "i" and values.size and values.min() < 0:
        raise EmError(f"labels must not be negative ({spec})")
    return values, meta, box


def _read_3d(spec, voxel_size_nm, what, kinds, wanted):
    """(values, metadata, global box) of a 3D volume of one of the dtype ``kinds``."""
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"{what} must be 3D (z, y, x), but {spec} has shape {'x'.join(map(str, source.shape))}")
        if np.dtype(source.dtype).kind not in kinds:
            raise EmError(f"{what} must be {wanted}, but {spec} is {np.dtype(source.dtype)}")
        return source.read(), source.meta, source.box


def _require_same_box(first_spec, first_box, spec, box) -> None:
    if box.shape != first_box.shape:
        raise EmError(f"shape {'x'.join(map(str, box.shape))} of {spec} does not match "
                      f"{'x'.join(map(str, first_box.shape))} of {first_spec}")
    if box != first_box:
        raise EmError(f"{spec} covers {box.text()} but {first_spec} covers {first_box.text()} (voxels)")


def _as_unit(values: np.ndarray, spec: str) -> np.ndarray:
    """float32 in [0, 1]: unsigned integers scaled by their full range, floats checked."""
    from emtools.normalize import dtype_scale

    if values.dtype.kind == "f":
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise EmError(f"{spec}: float images must lie in [0, 1], found [{lo:g}, {hi:g}]")
        return values.astype(np.float32, copy=False)
    return values.astype(np.float32) * np.float32(dtype_scale(values.dtype))


def _like_input(unit: np.ndarray, dtype) -> np.ndarray:
    """Back to the input's dtype (integers: rounded, full range)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return unit.astype(dtype)
    top = float(np.iinfo(dtype).max)
    return np.rint(np.clip(unit, 0.0, 1.0) * top).astype(dtype)


def _recordable(params: dict) -> dict:
    """Options as they go into the provenance record (arrays are not recorded)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, np.ndarray) or (isinstance(value, tuple) and value and isinstance(value[0], np.ndarray)):
            value = "array"
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


if __name__ == "__main__":
    main()
