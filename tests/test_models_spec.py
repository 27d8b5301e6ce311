"""The model spec: presets, overrides, files, and one-line errors naming the closest valid choice."""

from __future__ import annotations

import json

import pytest

from emtools.errors import EmError
from emtools.models.spec import (BALANCED_WIDTHS, LEE_WIDTHS, PRESETS, ModelSpec, parse_overrides,
                                 resolve_spec, spec_from_dict)


def test_rsunet_preset_is_lee_et_al():
    spec = resolve_spec("rsunet")
    assert spec.arch == "rsunet" and spec.widths == LEE_WIDTHS == (24, 32, 48, 72, 104)
    assert spec.depth == 5 and len(spec.kernels) == 5 and len(spec.pools) == 4
    assert spec.pools == ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert spec.entry_kernels == ((1, 3, 3),) * 5 and spec.embed_kernel == (1, 5, 5)
    assert spec.stride_in == (1, 1, 1) and not spec.transposed_out
    assert spec.heads == (("affinity", 3),) and spec.out_channels == 3


def test_efficient_preset_switches_each_step():
    spec = resolve_spec("rsunet-efficient")
    assert spec.widths == BALANCED_WIDTHS == (24, 64, 192, 192, 192)
    assert spec.stride_in == (1, 2, 2) and spec.transposed_out
    # the output kernel is spelled out (a checkpoint records it): 1x5x5 rounded up to the stride
    assert spec.out_kernel == (1, 6, 6) and spec.to_dict()["out_kernel"] == [1, 6, 6]
    assert resolve_spec("rsunet-efficient", ["embed_kernel=1x7x7"]).out_kernel == (1, 8, 8)
    assert resolve_spec("rsunet").out_kernel is None
    # each step of the paper's table is one override away
    strided_only = resolve_spec("rsunet", ["stride_in=1x2x2", "transposed_out=true"])
    assert strided_only.widths == LEE_WIDTHS and strided_only.transposed_out
    no_transposed = resolve_spec("rsunet-efficient", ["transposed_out=false"])
    assert no_transposed.stride_in == (1, 2, 2) and not no_transposed.transposed_out
    assert no_transposed.out_kernel is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_a_dict(name):
    spec = resolve_spec(name)
    again = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_overrides_parse_lists_triples_and_choices():
    spec = resolve_spec("rsunet", ["widths=8,16,32", "pools=1x2x2,2x2x2", "kernels=3", "norm=gn",
                                   "activation=LeakyReLU", "upsample=trilinear", "heads=affinity:12,foreground:1",
                                   "in_channels=2", "residual=no"])
    assert spec.widths == (8, 16, 32) and spec.depth == 3
    assert spec.pools == ((1, 2, 2), (2, 2, 2)) and spec.kernels == ((3, 3, 3),) * 3
    assert spec.entry_kernels == ((1, 3, 3),) * 3  # preset default adapted to the new depth
    assert (spec.norm, spec.activation, spec.upsample) == ("group", "leaky", "bilinear")
    assert spec.heads == (("affinity", 12), ("foreground", 1)) and spec.out_channels == 13
    assert spec.in_channels == 2 and spec.residual is False


def test_depth_alone_keeps_the_first_levels_of_the_preset():
    spec = resolve_spec("rsunet", ["depth=3"])
    assert spec.widths == (24, 32, 48) and spec.pools == ((1, 2, 2), (1, 2, 2))
    assert resolve_spec("rsunet", ["depth=1"]).pools == ()


def test_a_file_spec_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "m.yaml"
    yaml_file.write_text("name: unet3d\nwidths: [8, 16]\nkernels: [[1, 3, 3], [3, 3, 3]]\npools: [[1, 2, 2]]\n"
                         "norm: instance\nheads: {affinity: 3, contour: 1}\n")
    spec = resolve_spec(str(yaml_file), ["activation=elu"])
    assert spec.arch == "unet3d" and spec.kernels == ((1, 3, 3), (3, 3, 3)) and spec.activation == "elu"
    assert spec.heads == (("affinity", 3), ("contour", 1))
    json_file = tmp_path / "m.json"
    json_file.write_text(json.dumps({"model": resolve_spec("rsunet-efficient").to_dict()}))
    assert resolve_spec(str(json_file)) == resolve_spec("rsunet-efficient")


def test_a_custom_name_needs_an_arch():
    spec = spec_from_dict({"name": "mine", "arch": "unet2d", "widths": [4, 8], "pools": "1x2x2"})
    assert spec.name == "mine" and spec.kernels == ((1, 3, 3),) * 2


@pytest.mark.parametrize("source, overrides, fragments", [
    ("rsunett", [], ["unknown model 'rsunett'", "did you mean 'rsunet'"]),
    ("rsunet", ["widht=8,16"], ["unknown spec key 'widht'", "did you mean 'widths'"]),
    ("rsunet", ["depth=4", "widths=8,16,32"], ["depth=4 does not match the 3 widths"]),
    ("rsunet", ["depth=7"], ["depth=7 but rsunet has 5 widths"]),
    ("rsunet", ["widths=8,16", "pools=1x2x2,1x2x2"], ["pools has 2 entries but the model needs 1"]),
    ("rsunet", ["kernels=2x3x3"], ["must be odd"]),
    ("rsunet", ["norm=batchnorm"], ["norm='batchnorm' is unknown", "did you mean 'batch'"]),
    ("rsunet", ["activation=gelu"], ["activation='gelu' is unknown"]),
    ("rsunet", ["transposed_out=true"], ["needs a strided entry conv"]),
    ("rsunet", ["transposed_out=maybe"], ["is not true/false"]),
    ("rsunet", ["out_kernel=1x6x6"], ["needs transposed_out=true"]),
    ("rsunet-efficient", ["out_kernel=1x1x1"], ["does not fit stride_in 1x2x2", "at least the stride"]),
    ("rsunet-efficient", ["out_kernel=2x6x6"], ["odd where the stride is 1"]),
    ("rsunet-efficient", ["out_kernel=1x6"], ["is not a z,y,x triple"]),
    ("rsunet", ["widths=8,x"], ["is not an integer"]),
    ("rsunet", ["pools=1x2"], ["is not a z,y,x triple"]),
    ("rsunet", ["heads=affinity"], ["name:channels"]),
    ("rsunet", ["heads=affinity:0"], ["needs at least 1"]),
    ("unet2d", ["kernels=3x3x3"], ["unet2d works per section"]),
    ("unet3d", ["stride_in=1x2x2"], ["rsunet options"]),
    ("rsunet", ["widths"], ["is not key=value"]),
])
def test_bad_specs_are_one_line_errors(source, overrides, fragments):
    with pytest.raises(EmError) as error:
        resolve_spec(source, overrides)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: rsunet\nwidths: [8, 16\n")
    with pytest.raises(EmError, match="not valid YAML at line"):
        resolve_spec(str(bad_yaml))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\"name\": ")
    with pytest.raises(EmError, match="not valid JSON"):
        resolve_spec(str(bad_json))
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    with pytest.raises(EmError, match="must hold a mapping"):
        resolve_spec(str(a_list))
    with pytest.raises(EmError, match="spec file not found"):
        resolve_spec(str(tmp_path / "missing.yaml"))


def test_parse_overrides_and_describe():
    assert parse_overrides(["norm-groups=4", "a = b"]) == {"norm_groups": "4", "a": "b"}
    line = resolve_spec("rsunet-efficient").describe()
    assert "24,64,192,192,192" in line and "stride_in 1x2x2" in line and "transposed_out" in line
    assert isinstance(ModelSpec(), ModelSpec)
