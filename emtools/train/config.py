"""em-train's configuration: defaults, YAML files, ``key=value`` overrides and validation.

A configuration is a nested mapping (YAML on disk). Every value can be overridden on the command
line with a dotted path; list entries are addressed by index (the next free index appends)::

    em-train --config c.yaml train.steps=2000 model=rsunet-efficient data.patch_zyx=18,160,160 \\
        model.heads=affinity:3,foreground:1 targets.foreground.loss=bce+dice \\
        data.volumes.0.image=raw.h5:/raw optim.lr=3e-4 data.augment=flip,rotate

Values are converted by the type of the key they set (``1e-3`` is a float, ``18,160,160`` a z,y,x
triple, ``none``/``null`` clears an optional key); structured values (augmentation steps, target
parameters) may be written in YAML flow syntax (``'targets.distance.params={alpha: 8}'``).
``model=NAME`` sets ``model.name`` and keeps the other model keys. A key that does not exist is
an error naming the closest valid key.

Sections (see :data:`emtools.train.schema.SCHEMA` for every key, its default and
its meaning):

- ``model``: a model spec (:mod:`emtools.models.spec`): ``name`` (preset) plus any spec key;
  ``heads`` names the output heads (``affinity:3,foreground:1``).
- ``data``: ``volumes`` (image, labels[, mask] or a pseudo-labelled probability map, a validation
  region), the patch size, sampling and augmentation.
- ``targets``: per head, what it learns (kind, affinity offsets, target parameters), its loss and
  weight. A head named after a kind (``affinity``, ``boundary``, ...) needs no entry.
- ``optim``, ``train``, ``validation``: optimiser and schedule; steps, checkpoints, device,
  precision; held-out evaluation.

The resolved configuration (every default filled in, the model as its full spec, one target entry
per head) is what ``--print-config`` prints, what the checkpoint stores, and what ``--resume``
continues with.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any, Mapping, Sequence

from emtools import values
from emtools.errors import EmError
from emtools.models.heads import head_spec
from emtools.models.spec import spec_from_dict
from emtools.train.schema import DEFAULT_LOSS, KIND_DEFAULT_LOSS, KIND_LOSSES, KINDS, LOSSES, SCHEMA, TARGET, VOLUME, Field, convert


# ----------------------------------------------------------------------------- files and overrides

def load_yaml(path: str) -> dict:
    """A YAML config file as a dict; one-line errors."""
    from emtools.models.spec import read_mapping_file

    return read_mapping_file(path, "config file")


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """A copy of ``raw`` with each ``dotted.key=value`` set (values stay text until :func:`resolve`)."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise EmError(f"'{item}' is not key=value (e.g. train.steps=2000)")
        parts = key.split(".")
        if parts[0] == "model" and len(parts) == 1:
            parts = ["model", "name"]
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            if isinstance(node, list):
                node = _list_slot(node, part, ".".join(parts[: depth + 1]))
                continue
            if isinstance(node.get(part), str) and part == "model":
                node[part] = {"name": node[part]}
            if not isinstance(node.get(part), (dict, list)):
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            slot_index = _index(last, key, len(node))
            if slot_index == len(node):
                node.append(value)
            else:
                node[slot_index] = value
        else:
            node[last] = value
    return out


def _index(part: str, where: str, length: int) -> int:
    if not part.isdigit() or int(part) > length:
        raise EmError(f"{where}: '{part}' is not an index of the list (0..{length})")
    return int(part)


def _list_slot(node: list, part: str, where: str) -> dict:
    index = _index(part, where, len(node))
    if index == len(node):
        node.append({})
    if not isinstance(node[index], dict):
        raise EmError(f"{where} is not a mapping")
    return node[index]


# ----------------------------------------------------------------------------- resolution

def _leaf_paths(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in schema.items():
        if isinstance(value, Mapping):
            out += _leaf_paths(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


ALL_KEYS = _leaf_paths(SCHEMA) + [f"data.volumes.N.{k}" for k in VOLUME] + [f"targets.HEAD.{k}" for k in TARGET]


def _unknown(path: str, section_keys: Sequence[str], prefix: str) -> EmError:
    # The closest key of this section, spelled in full, then by its last word alone, then any key.
    match = values.closest_name(path, [prefix + k for k in section_keys])
    if not match:
        word = values.closest_name(path.split(".")[-1], section_keys)
        match = prefix + word if word else values.closest_name(path, ALL_KEYS)
    return EmError(f"unknown config key '{path}'{values.hint(match, section_keys, otherwise='; valid keys here: {choices}')}")


def _closest(word: str, choices: Sequence[str]) -> str:
    """The hint after an unknown name: the closest one, else the list when it is short."""
    return values.did_you_mean(word, choices, otherwise="; valid keys: {choices}" if len(choices) <= 12 else "")


def _resolve_section(schema: Mapping[str, Any], raw: Any, prefix: str) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise EmError(f"config section '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    for key in raw:
        if str(key) not in schema:
            raise _unknown(prefix + str(key), list(schema), prefix)
    out = {}
    for key, field in schema.items():
        value = raw.get(key)
        if isinstance(field, Mapping):
            out[key] = _resolve_section(field, value, f"{prefix}{key}.")
        elif isinstance(field, Field):
            out[key] = convert(prefix + key, field, copy.deepcopy(field.default) if key not in raw else value)
        else:
            out[key] = value  # special sections, resolved by their own functions
    return out


def _model_section(value: Any):
    if value is None:
        value = {}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise EmError("config section 'model' must be a preset name or a mapping of spec keys")
    return spec_from_dict(dict(value), where="config model")


def _volumes(raw: Any) -> list[dict]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise EmError("data.volumes must be a list of {image, labels[, mask], val_region} entries")
    out = []
    for index, entry in enumerate(raw):
        prefix = f"data.volumes.{index}."
        if isinstance(entry, str):
            raise EmError(f"data.volumes.{index} must be a mapping with image and labels, not '{entry}'")
        volume = _resolve_section(VOLUME, entry, prefix)
        has_labels, has_probs = volume["labels"] is not None, volume["probabilities"] is not None
        if has_labels == has_probs:
            raise EmError(f"data.volumes.{index} needs exactly one of labels or probabilities (pseudo-labels)")
        if has_probs and volume["val_region"] is not None:
            raise EmError(f"data.volumes.{index}: a pseudo-labelled volume cannot hold the validation region")
        if volume["val_region"] is not None:
            parse_region_text(volume["val_region"], f"data.volumes.{index}.val_region")
        out.append(volume)
    return out


def _targets(raw: Any, model_heads: Sequence[tuple[str, int]]) -> dict[str, dict]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise EmError("targets must be a mapping of head name: {kind, loss, weight, ...}")
    names = [n for n, _ in model_heads]
    for name in raw:
        if name not in names:
            hint = _closest(str(name), names)
            raise EmError(f"targets.{name}: the model has no head '{name}' (heads: {', '.join(names)}){hint}")
    out = {}
    for name, channels in model_heads:
        entry = _resolve_section(TARGET, raw.get(name), f"targets.{name}.")
        if entry["kind"] is None:
            if name not in KINDS:
                raise EmError(f"head '{name}' is not a kind; set targets.{name}.kind to one of {', '.join(KINDS)}")
            entry["kind"] = name
        described = head_spec(name, {"kind": entry["kind"], "channels": channels, "offsets": entry["offsets"]})
        if entry["kind"] == "affinity":
            entry["offsets"] = [list(o) for o in described.offsets]
        elif entry["offsets"] is not None:
            raise EmError(f"targets.{name}.offsets is only for affinity heads")
        activation = described.activation
        allowed = KIND_LOSSES.get(entry["kind"], LOSSES[activation])
        if entry["loss"] == "auto":
            entry["loss"] = KIND_DEFAULT_LOSS.get(entry["kind"], DEFAULT_LOSS[activation])
        parts = entry["loss"].split("+")
        for part in parts:
            if part not in allowed:
                raise EmError(f"targets.{name}.loss: '{part}' does not fit a {entry['kind']} head; "
                              f"use {', '.join(allowed)}")
        if entry["kind"] in ("semantic", "lsd") and entry["balance"] == "class":
            raise EmError(f"targets.{name}.balance=class is for binary heads")
        out[name] = entry
    return out


def resolve(raw: Mapping[str, Any]) -> dict:
    """Every default filled in, every value converted and checked; raises one-line EmErrors."""
    config = _resolve_section(SCHEMA, raw, "")
    spec = _model_section(config["model"])
    config["model"] = spec.to_dict()
    config["data"]["volumes"] = _volumes(config["data"]["volumes"])
    if spec.arch == "ffn" and config["targets"]:  # a flood-filling network learns its object map
        raise EmError(f"targets: model {spec.name} is a flood-filling network without heads; it learns the "
                      "seed's object from the labels (remove the targets section; see ffn.*)")
    config["targets"] = _targets(config["targets"], spec.heads)
    for volume in config["data"]["volumes"]:
        if volume["pseudo_head"] is not None and volume["pseudo_head"] not in config["targets"]:
            raise EmError(f"pseudo_head '{volume['pseudo_head']}' is not a head of the model"
                          f"{_closest(volume['pseudo_head'], list(config['targets']))}")
    optim = config["optim"]
    if len(optim["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in optim["betas"]):
        raise EmError(f"optim.betas must be two numbers in [0, 1), got {optim['betas']}")
    if optim["min_lr_ratio"] > 1.0:
        raise EmError("optim.min_lr_ratio must lie in [0, 1]")
    if any(not 0.0 <= t <= 1.0 for t in config["validation"]["thresholds"]):
        raise EmError("validation.thresholds must lie in [0, 1]")
    fraction = config["data"]["min_foreground"]
    if fraction is not None and fraction >= 1.0:
        raise EmError("data.min_foreground must be below 1")
    return config


def load_config(path: str | None, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None) -> dict:
    """Defaults <- ``base`` (e.g. a checkpoint's config) <- the YAML file <- overrides, resolved."""
    top = apply_overrides(load_yaml(path) if path is not None else {}, overrides)
    raw = apply_overrides(_merge(copy.deepcopy(dict(base or {})), load_yaml(path) if path is not None else {}),
                          overrides)
    given = top.get("targets") if isinstance(top.get("targets"), Mapping) else {}
    if base and isinstance(base.get("targets"), Mapping) and isinstance(raw.get("targets"), Mapping):
        # The base's targets are defaults for its heads: those the model no longer has are dropped.
        heads = {name for name, _ in _model_section(raw.get("model", "rsunet")).heads}
        raw["targets"] = {name: t for name, t in raw["targets"].items() if name in heads or name in given}
    return resolve(raw)


def _merge(base: dict, top: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def to_yaml(config: Mapping[str, Any]) -> str:
    """The config as YAML: sections and entries in block style, short lists (triples, steps) inline."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper, data):
        flat = all(not isinstance(v, (list, dict)) for v in data)
        step = len(data) == 2 and isinstance(data[0], str) and isinstance(data[1], dict)
        triples = bool(data) and all(isinstance(v, list) and len(v) == 3 for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat or step or triples)

    def represent_dict(dumper, data):
        return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)

    Dumper.add_representer(list, represent_list)
    Dumper.add_representer(dict, represent_dict)
    return yaml.dump(json.loads(json.dumps(config)), Dumper=Dumper, sort_keys=False, width=100)


def digest(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved config (``run_dir`` and ``train.plot`` left out)."""
    data = json.loads(json.dumps(config))
    data.pop("run_dir", None)
    data.get("train", {}).pop("plot", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- regions

_SLAB = re.compile(r"^(first|last)\s+(\d+)\s*([zyx])(\s+(sections?|slices?|rows?|columns?))?$")


def parse_region_text(text: str, where: str = "val_region") -> tuple:
    """``('all',)``, ``('slab', 'last', 5, axis)`` or ``('box', [(b, e) or None, ...])``."""
    value = " ".join(str(text).strip().lower().split())
    if value == "all":
        return ("all",)
    match = _SLAB.match(value)
    if match:
        count = int(match.group(2))
        if count < 1:
            raise EmError(f"{where}: '{text}' must hold at least one voxel")
        return ("slab", match.group(1), count, "zyx".index(match.group(3)))
    parts = value.replace(" ", "").split(",")
    if len(parts) == 3 and all(":" in p for p in parts):
        bounds = []
        for part in parts:
            lo, _, hi = part.partition(":")
            try:
                bounds.append((int(lo) if lo else None, int(hi) if hi else None))
            except ValueError:
                break
        else:
            return ("box", bounds)
    raise EmError(f"{where}: cannot read '{text}'; write 'last 5 z', 'first 64 y', 'z0:z1,y0:y1,x0:x1' or 'all'")
