"""em-train's configuration keys: their types, defaults and meaning, and value conversion.

:data:`SCHEMA` is the table of every key (nested sections; ``data.volumes`` entries follow
:data:`VOLUME`, ``targets.HEAD`` entries :data:`TARGET`). :func:`convert` turns a value from YAML
or from the command line (text) into the key's type, with one-line errors. How files, overrides
and checks combine is :mod:`emtools.train.config`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

from emtools import values
from emtools.errors import EmError
from emtools.models.heads import ACTIVATIONS

KINDS = tuple(ACTIVATIONS)
LOSSES = {  # which losses each kind of head may use ("+" combines them, summed)
    "sigmoid": ("bce", "dice"),
    "tanh": ("mse", "l1"),
    "softmax": ("ce", "dice"),
}
DEFAULT_LOSS = {"sigmoid": "bce", "tanh": "mse", "softmax": "ce"}
# kinds whose targets are not binary regress their sigmoid output instead
KIND_LOSSES = {"lsd": ("mse", "l1")}
KIND_DEFAULT_LOSS = {"lsd": "mse"}


@dataclasses.dataclass(frozen=True)
class Field:
    """One configuration key: its type, default, allowed values and meaning."""

    kind: str  # a key of CONVERTERS: int float bool str int3 float3 floats choice augment params offsets
    default: Any = None
    help: str = ""
    choices: tuple = ()
    optional: bool = False
    minimum: float | None = None


def _f(kind, default=None, help="", choices=(), optional=False, minimum=None) -> Field:
    return Field(kind, default, help, tuple(choices), optional, minimum)


VOLUME = {
    "image": _f("str", None, "image volume spec (file.h5:/raw, stack.tif, a folder of slices)"),
    "labels": _f("str", None, "labels: instance ids (uint), 0 = background / boundary", optional=True),
    "mask": _f("str", None, "where the labels are valid (non-zero = labelled); default: everywhere",
               optional=True),
    "probabilities": _f("str", None, "pseudo-labels: a predicted probability map instead of labels",
                        optional=True),
    "pseudo_head": _f("str", None, "the head the probability map trains (default: the first sigmoid head)",
                      optional=True),
    "confidence": _f("float", 0.9, "pseudo-labels count where max(p, 1-p) >= this", minimum=0.5),
    "voxel_size_nm": _f("float3", None, "override the files' voxel size z,y,x (nm)", optional=True),
    "val_region": _f("str", None, "held-out region: 'last 5 z', 'first 64 y', 'z0:z1,y0:y1,x0:x1' "
                     "(local voxels, empty bound = whole axis) or 'all' (validation only)", optional=True),
    "label_components": _f("choice", "none", "labels are a binary mask: use its connected components "
                           "per section (2d) or in 3D as instances", choices=("none", "2d", "3d")),
    "weight": _f("float", 1.0, "sampling weight (times the training voxels)", minimum=0.0),
}

TARGET = {
    "kind": _f("choice", None, "what the head predicts (default: the head's name)", choices=KINDS,
               optional=True),
    "offsets": _f("offsets", None, "affinity offsets [[dz,dy,dx],...] (default nearest neighbours)",
                  optional=True),
    "params": _f("params", {}, "extra parameters of emtools.targets.build_target for this kind"),
    "loss": _f("str", "auto", "bce, dice, bce+dice (sigmoid heads); mse, l1 (distance, lsd); ce, ce+dice "
               "(semantic); auto picks bce / mse / ce (mse for lsd)"),
    "weight": _f("float", 1.0, "weight of this head's loss in the sum", minimum=0.0),
    "balance": _f("choice", "none", "class: weight voxels by inverse class frequency",
                  choices=("none", "class")),
    "border_weight": _f("float", 0.0, "w0 of U-Net border weights (0 = off)", minimum=0.0),
    "border_sigma_vx": _f("float", 5.0, "sigma of the border weights (voxels)", minimum=0.0),
    "border_mode": _f("choice", "2d", "border weights per section or in 3D", choices=("2d", "3d")),
}

SCHEMA: dict[str, Any] = {
    "seed": _f("int", 0, "seed of the weights, the sampling and the augmentations", minimum=0),
    "run_dir": _f("str", None, "output folder (or -o): checkpoints, metrics.jsonl, curves", optional=True),
    "model": "model",  # a model spec, validated by emtools.models.spec
    "data": {
        "volumes": "volumes",
        "patch_zyx": _f("int3", [18, 160, 160], "training crop z,y,x (must fit the model's pooling)"),
        "batch_size": _f("int", 1, "crops per step and rank", minimum=1),
        "num_workers": _f("int", 0, "DataLoader worker processes per rank (0: in the main process)", minimum=0),
        "min_foreground": _f("float", None, "reject crops with a smaller foreground fraction (default: "
                             "automatic for sparse foreground targets)", optional=True, minimum=0.0),
        "foreground_tries": _f("int", 20, "at most this many crops tried per sample", minimum=1),
        "augment": _f("augment", [], "augmentation steps: names or [name, {p: 0.5, ...}] (emtools.augment)"),
        "model_voxel_size_nm": _f("float3", None, "train at this voxel size z,y,x (nm), a whole multiple of the "
                                  "volumes' (e.g. 10,10,10 from 5 nm data): images are averaged down, labels take "
                                  "each block's most frequent id; em-predict then averages finer inputs the same "
                                  "way and interpolates the maps back", optional=True),
    },
    "targets": "targets",
    "optim": {
        "name": _f("choice", "adam", "optimizer", choices=("adam", "adamw", "sgd")),
        "lr": _f("float", 1e-3, "base learning rate (one worker)", minimum=0.0),
        "weight_decay": _f("float", 0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", minimum=0.0),
        "momentum": _f("float", 0.9, "SGD momentum", minimum=0.0),
        "betas": _f("floats", [0.9, 0.999], "Adam betas"),
        "schedule": _f("choice", "warmup_cosine", "learning-rate schedule",
                       choices=("warmup_cosine", "warmup_step", "constant")),
        "warmup_steps": _f("int", 100, "linear warm-up from 0 over this many steps", minimum=0),
        "min_lr_ratio": _f("float", 0.0, "cosine floor as a fraction of the peak rate", minimum=0.0),
        "step_every": _f("int", 1000, "warmup_step: multiply by gamma every this many steps", minimum=1),
        "gamma": _f("float", 0.1, "warmup_step: decay factor", minimum=0.0),
        "lr_scaling": _f("choice", "none", "scale lr with the number of workers: none, linear, sqrt, "
                         "linear-sqrt (linear up to 16 workers, square root beyond)",
                         choices=("none", "linear", "sqrt", "linear-sqrt")),
        "grad_clip": _f("float", 0.0, "clip the gradient norm to this (0 = off)", minimum=0.0),
    },
    "train": {
        "steps": _f("int", 1000, "optimizer steps in all", minimum=1),
        "minutes": _f("float", None, "time budget: stop after this many minutes of training (wall time from the "
                      "first step, validation and checkpoints included) or train.steps, whichever comes first; "
                      "the cosine schedule follows the share of the time spent when it is ahead of the steps; "
                      "--resume spends what is left (a timed run is not step-exact)", optional=True, minimum=0.0),
        "log_every": _f("int", 10, "metrics line every this many steps", minimum=1),
        "checkpoint_every": _f("int", 500, "step_N.pt and last.pt every this many steps", minimum=1),
        "keep": _f("int", 3, "step_N.pt files kept (0: only last.pt)", minimum=0),
        "device": _f("choice", "auto", "auto (cuda when available), cpu or cuda (cuda:LOCAL_RANK under "
                     "torchrun)", choices=("auto", "cpu", "cuda")),
        "precision": _f("choice", "fp32", "fp32; bf16 or fp16 (autocast; fp16 with a grad scaler) on GPU; "
                        "bf16 on CPUs with bf16 units", choices=("fp32", "bf16", "fp16")),
        "deterministic": _f("choice", "auto", "torch.use_deterministic_algorithms (auto: on for CPU)",
                            choices=("auto", "true", "false")),
        "threads": _f("int", None, "torch CPU threads per rank", optional=True, minimum=1),
        "channels_last": _f("bool", False, "weights and input batches in the channels-last memory format "
                            "(NDHWC): faster convolutions on CPUs (oneDNN, bf16) and GPUs; same results to "
                            "float tolerance (em-profile's channels_last options measure it)"),
        "onednn": _f("bool", False, "keep the 3D convolutions on oneDNN on CPU, forward and backward (PyTorch "
                     "sends small batch-1 layers to a slower path; em-profile's onednn option measures "
                     "the gain; results equal to float tolerance)"),
        "winograd": _f("bool", False, "compute the wide 3x3x3 convolutions (>= 64 channels) by Winograd's algorithm "
                       "on CPU, forward and backward, the rest on oneDNN: 6x fewer multiplies on the "
                       "coarse levels of rsunet-efficient (em-profile's winograd option measures it)"),
        "init_from": _f("str", None, "start from these weights (or --init): a checkpoint of the same network "
                        "or a shipped name (emtools.models.pretrained); its model, targets, crop and voxel size "
                        "(data.model_voxel_size_nm) are the defaults; heads it lacks start fresh", optional=True),
        "init_force": _f("bool", False, "start from train.init_from although its voxel size differs from the "
                         "data's, training at the data's own (or --force)"),
        "sync_batchnorm": _f("bool", False, "SyncBatchNorm across ranks (GPU only)"),
        "plot": _f("str", None, "write loss/metric curves to this PNG (or --plot)", optional=True),
    },
    "validation": {
        "every": _f("int", 500, "validate every this many steps and at the end (0: never)", minimum=0),
        "thresholds": _f("floats", [0.3, 0.5, 0.7], "watershed seed thresholds tried (the best is kept)"),
        "seeds": _f("choice", "components", "watershed seeds: connected regions below the threshold, or "
                    "distance-transform maxima", choices=("components", "distance")),
        "min_size": _f("int", 20, "watershed: smaller seeds are dropped, smaller fragments merged", minimum=0),
        "overlap_zyx": _f("int3", None, "sliding-window overlap (default: a quarter of the patch)",
                          optional=True),
        "best_metric": _f("str", "auto", "metric that picks best.pt (auto: adapted Rand for affinity/"
                          "boundary heads, else F1, else loss)"),
    },
    "ffn": {  # flood-filling networks (model=ffn, ffn-small, ffn-aniso) only; other models ignore it
        "fov_policy": _f("choice", "fixed", "where the FOV moves within a training patch: fixed (the centre, "
                         "then one delta along each axis both ways where the object map reaches "
                         "ffn.move_threshold) or max_pred_moves (inference's face-maximum rule)",
                         choices=("fixed", "max_pred_moves")),
        "fov_moves": _f("int", 1, "the training patch is the FOV plus this many deltas each way", minimum=1),
        "max_moves": _f("int", None, "max_pred_moves: at most this many FOVs per example (default: until no "
                        "move is left inside the patch)", optional=True, minimum=1),
        "move_threshold": _f("float", 0.9, "object-map probability a move's target must reach (also stored "
                             "for inference)"),
        "shuffle_moves": _f("bool", True, "fixed policy: the shifts in a random order per example"),
        "seed_pad": _f("float", 0.05, "initial object-map probability away from the seed"),
        "seed_value": _f("float", 0.95, "initial object-map probability at the seed (patch centre)"),
        "label_softening": _f("float", 0.05, "soft targets: 1 - this on the seed's object, this elsewhere"),
        "partition_thresholds": _f("floats", [0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                   "bins of each voxel's same-object fraction around it; centres are "
                                   "drawn equally from every bin"),
        "lom_radius_zyx": _f("int3", None, "radius of the box that fraction counts in (default: half the "
                             "FOV plus the deltas)", optional=True),
        "min_object_size": _f("int", 1000, "objects with fewer voxels give no centres", minimum=0),
        "permute": _f("bool", True, "swap axes with equal FOV, deltas and voxel size at random"),
        "reflect": _f("bool", True, "reflect every axis at random"),
        "image_mean": _f("float", None, "image normalisation mean in raw units (default: 128 for uint8 as "
                         "google/ffn, else fitted)", optional=True),
        "image_std": _f("float", None, "image normalisation std in raw units (default: 33 for uint8)",
                        optional=True),
        "grad_clip": _f("float", 1.0, "gradient-norm clip for FFN training when optim.grad_clip is 0 "
                        "(0 = off)", minimum=0.0),
        "val_examples": _f("int", 16, "validation examples drawn from the held-out regions (fixed set)",
                           minimum=1),
    },
}


# ----------------------------------------------------------------------------- conversion
# Each kind is one converter of emtools.values (the spelling and the message live there); the
# kinds below are the config's own structures (offsets, target parameters, augmentation steps).

def _parse_text(value: str) -> Any:
    """A command-line value: YAML for structured text ([..], {..}), else the plain string."""
    text = value.strip()
    if text[:1] in "[{":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise EmError(f"'{value}' is not valid YAML flow syntax") from None
    return text


def _offsets(key: str, field: Field, value: Any) -> list:
    raw = _parse_text(value) if isinstance(value, str) else value
    if not isinstance(raw, (list, tuple)) or not all(isinstance(o, (list, tuple)) and len(o) == 3 for o in raw):
        raise EmError(f"{key} must be a list of z,y,x offsets, e.g. [[-1,0,0],[0,-1,0],[0,0,-1]]")
    return [[values.to_int(v, key) for v in o] for o in raw]


def _params(key: str, field: Field, value: Any) -> dict:
    raw = {} if values.is_none(value) else (_parse_text(value) if isinstance(value, str) else value)
    if not isinstance(raw, Mapping):
        raise EmError(f"{key} must be a mapping, e.g. '{{sigma_vx: 2}}'")
    return json.loads(json.dumps(dict(raw)))


CONVERTERS: dict[str, Callable[[str, Field, Any], Any]] = {
    "int": lambda key, field, value: values.to_int(value, key, lo=field.minimum),
    "float": lambda key, field, value: values.to_float(value, key, lo=field.minimum),
    "bool": lambda key, field, value: values.to_bool(value, key),
    "str": lambda key, field, value: str(value),
    "choice": lambda key, field, value: values.to_choice(value, key, field.choices),
    "int3": lambda key, field, value: list(values.to_triple(value, key, allow_x=True)),
    "float3": lambda key, field, value: list(values.to_triple(value, key, integer=False, allow_x=True)),
    "floats": lambda key, field, value: values.to_numbers(value, key),
    "offsets": _offsets,
    "params": _params,
    "augment": lambda key, field, value: _augment_steps(key, [] if values.is_none(value) else value),
}
"""``Field.kind`` -> ``convert(key, field, value)``."""


def convert(key: str, field: Field, value: Any) -> Any:
    """``value`` (from YAML or the command line) as the type of ``field``; one-line errors."""
    if field.kind not in ("augment", "params") and (value is None or (field.optional and values.is_none(value))):
        if field.optional:
            return None
        raise values.SETTINGS.error("missing", key, value)
    return CONVERTERS[field.kind](key, field, value)


def _augment_steps(key: str, value: Any) -> list:
    """Steps as ``[[name, {every option}], ...]`` from names, ``{name: .., p: ..}`` or ``[name, {..}]``.

    Options are checked and completed by :func:`emtools.augment.check_steps` (``p`` defaults to
    1: a step applies to every sample unless it says otherwise).
    """
    from emtools import augment

    if isinstance(value, str):
        parsed = _parse_text(value)
        value = [v.strip() for v in parsed.split(",") if v.strip()] if isinstance(parsed, str) else parsed
    if not isinstance(value, (list, tuple)):
        raise EmError(f"{key} must be a list of augmentation steps")
    steps = []
    for item in value:
        if isinstance(item, str):
            steps.append((item.strip(), {}))
        elif isinstance(item, Mapping) and "name" in item:
            steps.append((str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], Mapping):
            steps.append((str(item[0]), dict(item[1])))
        else:
            raise EmError(f"{key}: cannot read augmentation step {item!r}; write a name, "
                          "{name: elastic, p: 0.3} or [elastic, {p: 0.3}]")
    try:
        resolved = augment.check_steps(steps)
    except EmError as exc:
        raise EmError(f"{key}: {exc}") from None
    return [[name, params] for name, params in json.loads(json.dumps(resolved))]
