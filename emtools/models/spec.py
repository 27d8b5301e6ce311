"""The model spec: a small, validated description from which a model is built.

A spec is what a checkpoint stores beside the weights, so a checkpoint alone rebuilds its model.
Users give one as

- a preset name: ``rsunet`` (Lee et al. 2017), ``rsunet-efficient`` (strided in/out, balanced
  widths), ``unet3d``, ``unet2d``;
- a YAML or JSON file holding a mapping (``name:`` picks the preset it starts from);
- either of those followed by ``key=value`` overrides, e.g.
  ``rsunet widths=24,64,192,192,192 stride_in=1,2,2 transposed_out=true``.

Shapes are z,y,x triples, written ``1,3,3`` (one number: all three axes). Per-level lists
(``kernels``, ``entry_kernels``) have one triple per level and ``pools`` one per transition
(depth - 1), written as in a YAML file: ``pools=[[1,2,2],[1,2,2],[1,2,2],[2,2,2]]``; a single
triple is repeated for every level (``kernels=3``). The older spelling ``1x2x2`` (lists
``1x2x2,2x2x2``) is still read. Values are converted by :mod:`emtools.values`. ``out_kernel``
(transposed output conv only) defaults to ``embed_kernel`` rounded up to a multiple of
``stride_in``: see :attr:`ModelSpec.transposed_kernel`.

    level 0  enc0 ─────────────────────────────── add ─ dec0   (full resolution / stride_in)
                 └ pool0 ─ level 1  enc1 ── add ─ dec1 ┘
                                  └ pool1 ─ ... ┘ (bottom level: one module, no decoder)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from emtools.errors import EmError
from emtools.values import (did_you_mean, format_triple, is_none, to_bool, to_choice, to_int, to_numbers,
                             to_triple, to_triples)

Triple = tuple[int, int, int]

ARCHS = ("rsunet", "unet3d", "unet2d")
NORMS = ("batch", "group", "instance", "none")
ACTIVATIONS = ("relu", "elu", "leaky")
UPSAMPLES = ("transposed", "bilinear", "nearest")

LEE_WIDTHS = (24, 32, 48, 72, 104)
BALANCED_WIDTHS = (24, 64, 192, 192, 192)
ANISO_POOLS = ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
# The balanced widths grow x2.7 then x3 per level, which keeps the cost per level about constant
# only when a level also loses ~8x voxels.  After the strided (1,2,2) entry conv, SNEMI3D-like data
# (6x6x30 nm) is close to isotropic, so the efficient preset spends its one z-halving (18 slices
# allow one) at the top, where the 24 -> 64 growth is, instead of at the bottom.
# ssTEM with ~50 nm sections is still 6x anisotropic there: pool z one level lower for it
# (pools=[[1,2,2],[2,2,2],[1,2,2],[1,2,2]]; benchmarks/bench_train.py (d), SSTEM_MODELS).
BALANCED_POOLS = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model; see the module docstring for the layout."""

    name: str = "rsunet"
    arch: str = "rsunet"
    in_channels: int = 1
    widths: tuple[int, ...] = LEE_WIDTHS
    depth: int = 5
    kernels: tuple[Triple, ...] = ((3, 3, 3),) * 5
    entry_kernels: tuple[Triple, ...] = ((1, 3, 3),) * 5
    pools: tuple[Triple, ...] = ANISO_POOLS
    embed_kernel: Triple = (1, 5, 5)
    stride_in: Triple = (1, 1, 1)
    transposed_out: bool = False
    out_kernel: Triple | None = None
    upsample: str = "transposed"
    norm: str = "batch"
    norm_groups: int = 8
    activation: str = "elu"
    residual: bool = True
    heads: tuple[tuple[str, int], ...] = (("affinity", 3),)

    @property
    def out_channels(self) -> int:
        return sum(channels for _, channels in self.heads)

    @property
    def transposed_kernel(self) -> Triple:
        """Kernel of the transposed output conv: ``out_kernel``, by default ``embed_kernel`` rounded up
        to a multiple of ``stride_in``. With a multiple every output voxel reads the same number of
        coarse voxels (1x6x6 at stride 1x2x2: 3x3 each); 1x5x5 gives alternate voxels 3x3 and 2x2
        taps, the checkerboard of Odena et al. (2016), which thin membranes and affinities feel."""
        if self.out_kernel is not None:
            return self.out_kernel
        return _rounded_up(self.embed_kernel, self.stride_in)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for tuples) that :func:`spec_from_dict` reads back."""
        out = dataclasses.asdict(self)
        out["heads"] = {name: channels for name, channels in self.heads}
        return json.loads(json.dumps(out))

    def describe(self) -> str:
        """One line: name, widths and the switches that matter."""
        parts = [f"{self.name} ({self.arch})", "widths " + ",".join(map(str, self.widths))]
        parts.append("pools " + ",".join("x".join(map(str, p)) for p in self.pools))
        if self.stride_in != (1, 1, 1):
            parts.append("stride_in " + "x".join(map(str, self.stride_in)))
        if self.transposed_out:
            parts.append("transposed_out " + "x".join(map(str, self.transposed_kernel)))
        parts.append(f"norm {self.norm}, {self.activation}, heads "
                     + ",".join(f"{n}:{c}" for n, c in self.heads))
        return "; ".join(parts)


PRESETS: dict[str, dict[str, Any]] = {
    "rsunet": {},
    "rsunet-efficient": {
        "widths": BALANCED_WIDTHS, "pools": BALANCED_POOLS, "stride_in": (1, 2, 2),
        "transposed_out": True,
    },
    "unet3d": {
        "arch": "unet3d", "widths": (32, 64, 128, 256), "kernels": ((3, 3, 3),) * 4,
        "pools": ((1, 2, 2), (2, 2, 2), (2, 2, 2)), "activation": "relu", "residual": False,
    },
    "unet2d": {
        "arch": "unet2d", "widths": (32, 64, 128, 256, 512), "kernels": ((1, 3, 3),) * 5,
        "pools": ((1, 2, 2),) * 4, "activation": "relu", "residual": False,
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(ModelSpec)}
PER_LEVEL = ("kernels", "entry_kernels")


EXAMPLE = "1,3,3"  # how messages show a triple
CHOICES = {  # key: (choices, aliases)
    "upsample": (UPSAMPLES, {"trilinear": "bilinear", "transpose": "transposed"}),
    "norm": (NORMS, {"bn": "batch", "gn": "group", "in": "instance"}),
    "activation": (ACTIVATIONS, {"leaky_relu": "leaky", "leakyrelu": "leaky"}),
}


def _widths(key: str, value: Any) -> tuple[int, ...]:
    widths = tuple(to_numbers(value, key, integer=True))
    if min(widths) < 1:
        raise EmError(f"{key}={value!r} must be positive integers, e.g. widths=24,32,48,72,104")
    return widths


def _heads(value: Any) -> tuple[tuple[str, int], ...]:
    """``affinity:3,foreground:1`` or a mapping ``{affinity: 3}`` or a list of ``[name, channels]``."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for item in filter(None, (v.strip() for v in value.split(","))):
            name, sep, channels = item.partition(":")
            if not sep:
                raise EmError(f"heads={value!r}: write each head as name:channels (e.g. affinity:3)")
            pairs.append((name.strip(), channels))
    elif isinstance(value, (list, tuple)):
        pairs = [tuple(v) for v in value]
    else:
        raise EmError(f"heads={value!r}: write heads as name:channels,... (e.g. affinity:3,foreground:1)")
    heads = []
    for pair in pairs:
        if len(pair) != 2 or not str(pair[0]).strip():
            raise EmError(f"heads={value!r}: write each head as name:channels (e.g. affinity:3)")
        channels = to_int(pair[1], f"heads {pair[0]}")
        if channels < 1:
            raise EmError(f"heads: {pair[0]} has {channels} channels; needs at least 1")
        heads.append((str(pair[0]).strip(), channels))
    names = [n for n, _ in heads]
    if not heads or len(set(names)) != len(names):
        raise EmError(f"heads={value!r}: needs at least one head and distinct names")
    return tuple(heads)


def _convert(key: str, value: Any) -> Any:
    if key in ("name", "arch"):
        return str(value)
    if key in ("in_channels", "depth", "norm_groups"):
        return to_int(value, key)
    if key == "widths":
        return _widths(key, value)
    if key in ("kernels", "entry_kernels", "pools"):
        return to_triples(value, key, example=EXAMPLE)
    if key in ("embed_kernel", "stride_in"):
        return to_triple(value, key, allow_x=True, example=EXAMPLE)
    if key == "out_kernel":
        auto = is_none(value) or str(value).strip().lower() == "auto"
        return None if auto else to_triple(value, key, allow_x=True, example=EXAMPLE)
    if key in ("transposed_out", "residual"):
        return to_bool(value, key)
    if key in CHOICES:
        choices, aliases = CHOICES[key]
        return to_choice(value, key, choices, aliases=aliases)
    if key == "heads":
        return _heads(value)
    raise AssertionError(key)


def _rounded_up(kernel: Triple, stride: Triple) -> Triple:
    return tuple(-(-k // s) * s for k, s in zip(kernel, stride))  # type: ignore[return-value]


def transposed_padding(kernel: Triple, stride: Triple) -> tuple[Triple, Triple]:
    """(padding, output_padding) that make a transposed conv exactly ``stride`` times larger:
    (n - 1) * s - 2 * p + k + op == n * s, i.e. 2 * p - op == k - s, with op in {0, 1} (< s)."""
    pads = tuple(-(-(k - s) // 2) for k, s in zip(kernel, stride))
    extra = tuple(2 * p - (k - s) for p, k, s in zip(pads, kernel, stride))
    return pads, extra  # type: ignore[return-value]


def _fit_levels(key: str, values: tuple[Triple, ...], count: int, explicit: bool) -> tuple[Triple, ...]:
    if len(values) == count:
        return values
    if len(values) == 1:
        return values * count
    if explicit:
        raise EmError(f"{key} has {len(values)} entries but the model needs {count} "
                      f"(one per {'transition between levels' if key == 'pools' else 'level'})")
    # A preset default adapted to another depth: keep its first levels, repeat the last one.
    return tuple(values[:count]) + (values[-1],) * max(0, count - len(values))


def spec_from_dict(values: Mapping[str, Any], where: str = "spec") -> ModelSpec:
    """Build and validate a spec from a mapping; ``name`` picks the preset it starts from."""
    if not isinstance(values, Mapping):
        raise EmError(f"{where}: a model spec must be a mapping of key: value, not {type(values).__name__}")
    values = dict(values)
    from emtools.models.ffn_spec import ffn_spec_from_dict, is_ffn

    if is_ffn(values):  # a flood-filling network has its own, smaller spec
        return ffn_spec_from_dict(values, where)  # type: ignore[return-value]
    name = str(values.get("name", "rsunet"))
    if name in PRESETS:
        base = {"name": name, **PRESETS[name]}
    else:
        if "arch" not in values:
            from emtools.models.ffn_spec import FFN_PRESETS

            raise EmError(f"unknown model '{name}'{did_you_mean(name, [*PRESETS, *FFN_PRESETS])} ({where})")
        # A custom name starts from the preset of its architecture.
        arch = to_choice(values["arch"], "arch", ARCHS)
        base = {**PRESETS[arch], "arch": arch}
    explicit = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise EmError(f"unknown spec key '{key}'{did_you_mean(key, FIELDS)} ({where})")
        explicit[key] = _convert(key, value)
    merged = {**{k: v for k, v in base.items()}, **explicit}
    merged = {k: (_convert(k, v) if k not in explicit else v) for k, v in merged.items()}
    defaults = {f.name: f.default for f in FIELDS.values()}
    full = {**defaults, **merged}
    full["arch"] = to_choice(full["arch"], "arch", ARCHS)

    if "depth" in explicit and "widths" not in explicit:
        if explicit["depth"] > len(full["widths"]) or explicit["depth"] < 1:
            raise EmError(f"depth={explicit['depth']} but {name} has {len(full['widths'])} widths; "
                          f"give widths=... with {explicit['depth']} values")
        full["widths"] = full["widths"][: explicit["depth"]]
    elif "depth" in explicit and explicit["depth"] != len(full["widths"]):
        raise EmError(f"depth={explicit['depth']} does not match the {len(full['widths'])} widths "
                      f"{','.join(map(str, full['widths']))}; give as many widths as levels ({where})")
    full["depth"] = depth = len(full["widths"])
    for key in PER_LEVEL:
        full[key] = _fit_levels(key, full[key], depth, key in explicit)
    full["pools"] = _fit_levels("pools", full["pools"], depth - 1, "pools" in explicit) if depth > 1 else ()
    if full["transposed_out"] and full["out_kernel"] is None:
        # Spelled out, so that a checkpoint records the kernel it was trained with.
        full["out_kernel"] = _rounded_up(full["embed_kernel"], full["stride_in"])
    spec = ModelSpec(**full)
    _validate(spec, where)
    return spec


def _validate(spec: ModelSpec, where: str) -> None:
    if spec.in_channels < 1:
        raise EmError(f"in_channels={spec.in_channels} must be at least 1 ({where})")
    for key in ("kernels", "entry_kernels"):
        for level, kernel in enumerate(getattr(spec, key)):
            if any(k % 2 == 0 for k in kernel):
                raise EmError(f"{key} level {level} is {format_triple(kernel)}; kernels must be odd "
                              f"so that padding keeps the size ({where})")
    if any(k % 2 == 0 for k in spec.embed_kernel):
        raise EmError(f"embed_kernel {format_triple(spec.embed_kernel)} must be odd ({where})")
    if spec.arch == "unet2d":
        flat = [*spec.kernels, *spec.pools, spec.embed_kernel, spec.stride_in]
        if any(t[0] != 1 for t in flat):
            raise EmError(f"unet2d works per section: kernels and pools need z=1 (e.g. 1,3,3) ({where})")
    if spec.arch != "rsunet" and (spec.stride_in != (1, 1, 1) or spec.transposed_out):
        raise EmError(f"stride_in/transposed_out are rsunet options; {spec.arch} has no entry conv ({where})")
    if spec.transposed_out and spec.stride_in == (1, 1, 1):
        raise EmError(f"transposed_out=true needs a strided entry conv (e.g. stride_in=1,2,2) ({where})")
    if spec.out_kernel is not None:
        if not spec.transposed_out:
            raise EmError(f"out_kernel is the kernel of the transposed output conv; it needs transposed_out=true ({where})")
        # kernel-size notation (1x2x2) as describe() prints it; tests assert this message's wording
        text = "x".join(map(str, spec.out_kernel))
        for k, s in zip(spec.out_kernel, spec.stride_in):
            if k < s or (s == 1 and k % 2 == 0):
                raise EmError(f"out_kernel {text} does not fit stride_in {'x'.join(map(str, spec.stride_in))}: "
                              f"each entry must be at least the stride, and odd where the stride is 1 ({where})")
    if spec.norm == "group" and spec.norm_groups < 1:
        raise EmError(f"norm_groups={spec.norm_groups} must be at least 1 ({where})")


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` words into a dict (one-line error for a word without '=')."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EmError(f"'{item}' is not key=value (e.g. widths=24,64,192,192,192)")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def read_mapping_file(path: str, what: str = "spec file") -> dict[str, Any]:
    """A YAML (or, for ``.json``, JSON) file holding a mapping, as a dict; one-line errors.

    An empty file is an empty mapping. Shared by model specs and em-train's config files.
    """
    if not os.path.isfile(path):
        raise EmError(f"{what} not found ({path})")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise EmError(f"not valid JSON: {exc.msg} at line {exc.lineno} ({path})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise EmError(f"not valid YAML{line} ({path})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise EmError(f"a {what} must hold a mapping of key: value ({path})")
    return dict(data)


def load_spec_file(path: str) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON spec file into a dict, with one-line errors."""
    data = read_mapping_file(path, "spec file")
    # A checkpoint-style wrapper {"model": {...}} is accepted too.
    if set(data) == {"model"} and isinstance(data["model"], Mapping):
        data = data["model"]
    return dict(data)


def resolve_spec(source: str, overrides: Sequence[str] | Mapping[str, Any] = ()) -> ModelSpec:
    """A preset name or a spec file, plus ``key=value`` overrides, as a validated spec."""
    from emtools.models.ffn_spec import FFN_PRESETS

    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    if source in PRESETS or source in FFN_PRESETS:
        return spec_from_dict({"name": source, **extra}, where=source)
    if source.endswith((".yaml", ".yml", ".json")) or os.path.sep in source or os.path.exists(source):
        if not os.path.exists(source):
            raise EmError(f"spec file not found ({source})")
        return spec_from_dict({**load_spec_file(source), **extra}, where=source)
    raise EmError(f"unknown model '{source}'{did_you_mean(source, [*PRESETS, *FFN_PRESETS])}")


def spec_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first model-spec key whose value differs, as ``key: saved vs current``, or None."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return f"{key}: {_short(saved.get(key))} vs {_short(current.get(key))}"
    return None


def _short(value: Any) -> str:
    text = str(value).replace(" ", "")
    return text if len(text) <= 40 else text[:37] + "..."
