"""The execution-option registry: parsing, one-line errors, requirements and version pins, the same
outputs as eager, and em-profile, em-train and em-predict all applying options through it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.models import build_model, execution, onednn, resolve_spec, winograd
from emtools.models.execution import OPTIONS, Plan, apply, check, parse_plan
from emtools.models.heads import default_heads

torch.set_num_threads(1)
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch is built without oneDNN")


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def everywhere(monkeypatch):
    """Winograd on every 3x3x3 convolution of the tiny models here (the defaults skip thin ones)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_VOXELS", 1)


@pytest.fixture
def calls(monkeypatch):
    """Every call of :func:`execution.apply`, as (option labels, keyword arguments)."""
    seen, real = [], execution.apply

    def spy(model, options, *args, **kwargs):
        run = real(model, options, *args, **kwargs)
        seen.append((run.plan.label, kwargs))
        return run

    monkeypatch.setattr(execution, "apply", spy)
    return seen


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_registered_option_parses_in_each_spelling(name):
    assert parse_plan(name).label == name
    assert parse_plan(name.replace("_", "-").upper()).label == name
    if "+" in name:  # a listed pair typed without +, and its parts in the other order
        assert parse_plan(name.replace("+", "_")).label == name
        assert parse_plan("+".join(reversed(name.split("+")))).label == name
    for part in OPTIONS[name].parts:
        assert part in execution.singles() and OPTIONS[part].body is not None


def test_plans_apply_in_stage_order_and_drop_what_another_option_covers():
    assert parse_plan(["bf16", "compile", "channels_last"]).singles == ("channels_last", "bf16", "compile")
    assert parse_plan("onednn+winograd") == Plan(("winograd",))  # winograd puts the rest on oneDNN itself
    assert parse_plan([]).label == parse_plan("eager").label == "eager"
    assert parse_plan("channels_last+winograd+bf16").label == "channels_last+winograd+bf16"
    assert execution.names_from_flags(precision="bf16", channels_last=True, winograd=True) == [
        "channels_last", "winograd", "bf16"]
    assert execution.names_from_flags() == []


@pytest.mark.parametrize("names, fragments", [
    ("chanels_last", ["unknown execution option 'chanels_last'; did you mean 'channels_last'?"]),
    ("winograd+onedn", ["unknown execution option 'onedn'; did you mean 'onednn'?"]),
    ("warp_speed", ["unknown execution option 'warp_speed'; choose from eager, channels_last"]),
    (["bf16", "fp16"], ["execution options 'bf16' and 'fp16' exclude each other"]),
    ("compile+jit_freeze", ["'compile' and 'jit_freeze' exclude each other"]),
])
def test_bad_names_are_one_line_errors(names, fragments):
    with pytest.raises(EmError) as exc:
        parse_plan(names)
    for fragment in fragments:
        assert fragment in one_line(exc)


def test_help_lists_every_option_with_what_it_needs():
    table = "\n".join(execution.help_table())
    for name in OPTIONS:
        assert f"\n{name} " in "\n" + table
    assert "needs: CPU; torch with oneDNN; torch 2.13.x (tested); numba 0.68.x (tested)" in table
    from emtools.cli.profile import model_command

    assert execution.help_table()[0] in model_command.help  # em-profile's --help and man page show it


# ----------------------------------------------------------------------------- requirements

@pytest.mark.parametrize("names, device, mode, fragment", [
    (["fp16"], CPU, "train", "execution option 'fp16': needs a CUDA GPU"),
    (["cudnn_benchmark"], CPU, "infer", "execution option 'cudnn_benchmark': needs a CUDA GPU"),
    (["jit_freeze"], CPU, "train", "execution option 'jit_freeze': inference only"),
    (["channels_last", "winograd"], CUDA, "train", "execution option 'winograd': CPU only"),
    (["onednn"], CUDA, "infer", "execution option 'onednn': CPU only (oneDNN is the CPU convolution library)"),
])
def test_requirements_not_met_are_refused_with_one_line(names, device, mode, fragment):
    with pytest.raises(EmError) as exc:
        check(names, device, mode=mode)
    assert fragment in one_line(exc)


def test_options_for_another_device_are_left_out_where_a_tool_asks():
    # em-train and em-predict: a config written for the CPU runs on a GPU without its CPU options
    assert check(["channels_last", "onednn", "winograd"], CUDA, skip_other_devices=True) == Plan(("channels_last",))
    with pytest.raises(EmError, match="--onednn: CPU only"):
        check(["onednn"], CUDA, spelled={"onednn": "--onednn"})


def test_bf16_without_bf16_units_is_slow_not_unavailable(monkeypatch):
    monkeypatch.setattr(execution, "cpu_has_bf16_units", lambda: False)
    assert execution.unavailable_reason("channels_last+bf16", CPU) is None
    assert execution.slow_reasons("bf16", CPU) == ["bf16 on a CPU without bf16 units is emulated (about 80x slower)"]
    assert "bf16" not in execution.default_names(CPU, "train")
    assert check(["bf16"], CPU) == Plan(("bf16",))
    monkeypatch.setattr(execution, "cpu_has_bf16_units", lambda: True)
    assert {"bf16", "channels_last+bf16"} <= set(execution.default_names(CPU, "train"))


@pytest.mark.parametrize("name", ["onednn", "winograd", "channels_last+winograd"])
def test_pinned_options_refuse_an_untested_torch(monkeypatch, name):
    monkeypatch.delenv(execution.UNTESTED_ENV, raising=False)
    monkeypatch.setattr(torch, "__version__", "2.14.0+cpu")
    with pytest.raises(EmError) as exc:
        check(name, CPU)
    single = name.split("+")[-1]
    assert one_line(exc) == (f"execution option '{single}': tested with torch 2.13.x only (it calls ATen convolution "
                             "ops outside torch's public API), this is torch 2.14.0+cpu; set "
                             "EMTOOLS_ALLOW_UNTESTED=1 to run it anyway")
    assert "tested with torch 2.13.x only" in execution.unavailable_reason(name, CPU)
    assert check(["channels_last", "bf16"], CPU).label == "channels_last+bf16"  # the others are not pinned
    monkeypatch.setattr(torch, "__version__", "2.12.1")
    with pytest.raises(EmError, match="this is torch 2.12.1"):
        check(name, CPU)
    monkeypatch.setenv(execution.UNTESTED_ENV, "1")
    assert check(name, CPU).singles[-1] == single


def test_winograd_refuses_an_untested_numba(monkeypatch):
    monkeypatch.delenv(execution.UNTESTED_ENV, raising=False)
    real = execution.package_version
    monkeypatch.setattr(execution, "package_version", lambda p: "0.70.0" if p == "numba" else real(p))
    with pytest.raises(EmError, match=r"'winograd': tested with numba 0\.68\.x only .*this is numba 0\.70\.0; set "
                                      "EMTOOLS_ALLOW_UNTESTED=1"):
        check("winograd", CPU)
    assert check("onednn", CPU) == Plan(("onednn",))


def test_the_installed_versions_are_the_tested_ones():
    """Fails loudly when torch or numba moves past the pinned ranges: test, then widen the pins."""
    assert execution.unavailable_reason("winograd", CPU) in (None, "this torch is built without oneDNN (mkldnn)")


# ----------------------------------------------------------------------------- applying

def tiny_efficient():
    return build_model(resolve_spec("rsunet-efficient", ["widths=4,8,8", "norm=group", "norm_groups=2"]), seed=0)


@needs_onednn
@pytest.mark.parametrize("names, atol", [
    (["channels_last"], 1e-5), (["onednn"], 1e-5), (["channels_last", "onednn"], 1e-5),
    (["winograd"], 1e-4), (["channels_last", "winograd"], 1e-4),  # F(4,3) tiles round differently
])
def test_options_give_the_eager_output_and_gradients(everywhere, names, atol):
    model = tiny_efficient()
    fast = copy.deepcopy(model)
    x = torch.randn(1, 1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    run = apply(fast, names, CPU)
    kinds = {type(m).__name__ for m in fast.modules()}
    assert ("WinogradConv3d" in kinds) == ("winograd" in names)
    assert bool(kinds & {"OneDNNConv3d", "WinogradConv3d"}) == bool({"onednn", "winograd"} & set(names))
    assert (run.memory_format == torch.channels_last_3d) == ("channels_last" in names)
    conv = fast.enc[1].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) != conv.is_contiguous() or "channels_last" not in names
    xin = run.input(x)
    ref, out = model(x), run(xin)
    scale = float(ref.detach().abs().max())
    assert torch.allclose(ref, out, atol=atol * scale)
    ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=atol * max(float(p.grad.abs().max()), 1e-6)), name
    with torch.inference_mode():  # inference takes other paths (Winograd keeps the weights' transforms)
        assert torch.allclose(model.eval()(x), run(xin), atol=atol * scale)


def test_autocast_and_jit_freeze_and_the_compile_fallback(monkeypatch, caplog):
    model = tiny_efficient().eval()
    x = torch.randn(1, 1, 4, 32, 32)
    run = apply(copy.deepcopy(model), ["bf16"], CPU)
    assert run.dtype == torch.bfloat16 and run(x).dtype == torch.bfloat16
    frozen = apply(copy.deepcopy(model), ["jit_freeze"], CPU, mode="infer", example=x)
    with torch.no_grad():
        assert torch.allclose(frozen(x), model(x), atol=1e-5)
    with pytest.raises(EmError, match="pass an example input"):
        apply(copy.deepcopy(model), ["jit_freeze"], CPU, mode="infer")

    def broken_compile(module, *args, **kwargs):
        raise RuntimeError("no compiler\nhere")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(RuntimeError):
        apply(model, ["compile"], CPU)  # em-profile: the failure becomes its "unavailable" line
    with caplog.at_level("WARNING", logger="emtools"):
        run = apply(model, ["compile"], CPU, fallback=True)  # em-predict: warns and runs uncompiled
    assert run.compiled is None and run.runner is model
    assert [r.getMessage() for r in caplog.records] == ["torch.compile failed (no compiler here); running the model uncompiled"]


def test_cudnn_benchmark_is_set_where_cuda_is():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    before = torch.backends.cudnn.benchmark
    try:
        apply(torch.nn.Conv3d(1, 1, 3).cuda(), ["cudnn_benchmark"], CUDA)
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


# ----------------------------------------------------------------------------- one function for every tool

def test_em_profile_applies_options_through_it(calls):
    from emtools.profile import options as opt

    model, x = tiny_efficient(), torch.randn(1, 1, 4, 32, 32)
    assert opt.parse_options("channels-last-bf16,eager", CPU, "train") == ["eager", "channels_last+bf16"]
    result = opt.time_option("channels_last", model, x, "train", repeats=1, warmup=0)
    assert result.status == "ok" and [label for label, _ in calls] == ["channels_last"]
    assert calls[0][1]["mode"] == "train" and calls[0][1]["example"] is x


def test_em_predict_applies_its_flags_through_it(calls, monkeypatch):
    from emtools.predict.engine import predict_volume

    spec = resolve_spec("rsunet-efficient", ["widths=4,8,8", "norm=group", "norm_groups=2"])
    image = np.random.default_rng(0).standard_normal((4, 16, 16)).astype(np.float32)
    kwargs = dict(patch_zyx=(4, 16, 16), overlap=("fraction", (0.0, 0.0, 0.0)))
    predict_volume(build_model(spec, seed=0), image, default_heads(spec.heads), channels_last=True, **kwargs)
    assert [label for label, _ in calls] == ["channels_last"]
    assert calls[0][1]["skip_other_devices"] and calls[0][1]["fallback"] and calls[0][1]["mode"] == "infer"
    monkeypatch.setattr(torch, "__version__", "2.14.0")
    monkeypatch.delenv(execution.UNTESTED_ENV, raising=False)
    with pytest.raises(EmError, match="^--onednn: tested with torch 2.13.x only"):
        predict_volume(build_model(spec, seed=0), image, default_heads(spec.heads), onednn=True, **kwargs)


def test_em_train_applies_its_config_through_it(calls, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from emtools.cli.train import main
    from emtools.synth import make_synthetic_volume

    volume = make_synthetic_volume((8, 32, 32), seed=1, voxel_size_nm=(40, 4, 4), mean_cell_diameter_nm=100,
                                   membrane_thickness_nm=8)
    io.write_volume(f"{tmp_path}/image.h5:/image", volume.image, Metadata(voxel_size_nm=(40, 4, 4)))
    io.write_volume(f"{tmp_path}/gt.h5:/neurons", volume.neurons, Metadata(voxel_size_nm=(40, 4, 4)))
    args = [f"data.volumes.0.image={tmp_path}/image.h5:/image", f"data.volumes.0.labels={tmp_path}/gt.h5:/neurons",
            "model.widths=4,8", "model.norm=group", "data.patch_zyx=4,32,32", "train.threads=1", "train.steps=1",
            "validation.every=0", "data.num_workers=0", "-q"]

    def train(*extra):
        result = CliRunner().invoke(main, args + list(extra))
        result.returncode = result.exit_code
        return result

    result = train("train.channels_last=true", "train.onednn=true", "-o", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    labels = [label for label, _ in calls]
    assert labels == ["channels_last+onednn"] or labels == ["channels_last"] and not onednn.available()
    assert calls[0][1]["skip_other_devices"] and calls[0][1]["spelled"]["onednn"] == "train.onednn=true"
    monkeypatch.setattr(torch, "__version__", "2.14.0")
    monkeypatch.delenv(execution.UNTESTED_ENV, raising=False)
    if onednn.available():  # refused before anything is written
        result = train("train.winograd=true", "-o", str(tmp_path / "run2"))
        assert_one_line_error(result, "train", "train.winograd=true: tested with torch 2.13.x only")
        assert not (tmp_path / "run2").exists()


def test_em_predict_fuses_in_channels_last_on_a_cpu_unless_told_otherwise():
    from emtools.errors import EmError
    from emtools.models.execution import inference_flags, unavailable_reason

    onednn_here = unavailable_reason("onednn", CPU, "infer") is None  # pinned to the torch it was tested with
    assert inference_flags("cpu") == {"fuse": True, "channels_last": True, "onednn": onednn_here, "winograd": False,
                                      "compile": False}
    assert inference_flags("cuda") == {"fuse": False, "channels_last": False, "onednn": False, "winograd": False,
                                       "compile": False}
    assert inference_flags("cpu", fuse=True) == {**inference_flags("cuda"), "fuse": True}
    assert inference_flags("cpu", plain=True)["channels_last"] is False
    asked = inference_flags("cpu", winograd=True)
    assert asked["winograd"] and not asked["channels_last"]  # what was asked, nothing added
    with pytest.raises(EmError, match="--plain runs without execution options; drop it or --onednn"):
        inference_flags("cpu", plain=True, onednn=True)
