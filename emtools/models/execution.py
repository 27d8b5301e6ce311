"""Execution options: how a model runs (memory format, kernels, autocast, compilation), never what
it computes (to float tolerance). One registry; em-profile, em-train and em-predict all go through
:func:`apply`.

    from emtools.models.execution import apply
    run = apply(model, ["channels_last", "bf16"], device)   # switches ``model`` in place
    with run.autocast():
        y = run.runner(run.input(x))                         # or simply run(run.input(x))

Users spell options three ways, all mapped to the names registered here: em-profile's
``--options channels_last+bf16``, em-train's ``train.channels_last`` / ``train.onednn`` /
``train.winograd`` / ``train.precision`` and em-predict's ``--channels-last`` / ``--onednn`` /
``--winograd`` / ``--compile`` / ``--precision`` (:func:`names_from_flags`).

To add an option: write ``def _name(run: Execution) -> None`` that changes ``run`` (the model in
place, ``run.memory_format``, ``run.dtype`` or ``run.compiled``) and decorate it with
``@execution_option(name, summary, stage=..., needs=(...))``; parsing, validation ("did you mean"),
em-profile's ``--options`` help and its man page follow. ``combination("a+b")`` lists a pair in
em-profile's comparison. Torch is imported only when an option is checked or applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from emtools.errors import EmError
from emtools.models import channels_last_input, to_channels_last
from emtools.values import unknown_choice

if TYPE_CHECKING:
    import torch

log = logging.getLogger("emtools")

UNTESTED_ENV = "EMTOOLS_ALLOW_UNTESTED"  # =1 runs the pinned options outside their tested versions

# Stages: the order options are applied in, whatever order they are named in (a graph rewrite makes
# new convolutions, which the layout and kernel options must then see; a wrapper such as
# torch.compile must see the model after its layout and kernels changed).
GRAPH, LAYOUT, KERNELS, PRECISION, BACKEND, WRAPPER = range(6)


# ----------------------------------------------------------------------------- requirements

@dataclasses.dataclass(frozen=True)
class Requirement:
    """What an option needs. ``unmet(device, mode)`` returns why it is not met here, or None.

    ``kind`` says what an unmet requirement means:

    - ``device``: the option acts only on another kind of device (em-train and em-predict leave it
      out there, so that a config written for the CPU runs on a GPU; em-profile reports it);
    - ``mode``, ``build``: cannot run here; not in em-profile's ``default`` list;
    - ``slow``: runs, but emulated and far slower (not in ``default``; tools warn or refuse);
    - ``runtime``: cannot run here (a missing compiler, an untested version); still listed in
      ``default``, so that em-profile says why.
    """

    text: str  # what it needs, in a few words, for --help
    unmet: Callable[["torch.device", str], str | None]
    kind: str = "runtime"


def on_cuda(reason: str = "needs a CUDA GPU") -> Requirement:
    return Requirement("CUDA", lambda device, mode: None if device.type == "cuda" else reason, "device")


def on_cpu(reason: str) -> Requirement:
    return Requirement("CPU", lambda device, mode: None if device.type == "cpu" else reason, "device")


def inference_only() -> Requirement:
    return Requirement("--mode infer", lambda device, mode: None if mode == "infer" else
                       "inference only (use --mode infer)", "mode")


def _no_onednn(device, mode) -> str | None:
    from emtools.models import onednn

    return None if onednn.available() else "this torch is built without oneDNN (mkldnn)"


ONEDNN_BUILD = Requirement("torch with oneDNN", _no_onednn, "build")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated, ~80x slower."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False


def _bf16_slow(device, mode) -> str | None:
    if device.type == "cpu" and not cpu_has_bf16_units():
        return "bf16 on a CPU without bf16 units is emulated (about 80x slower)"
    return None


def _bf16_gpu(device, mode) -> str | None:
    import torch

    return "this GPU has no bf16 support" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else None


def _no_compile(device, mode) -> str | None:
    import torch

    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type != "cuda" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on CPU needs a C++ compiler (g++)"
    return None


def package_version(package: str) -> str:
    """The installed version of ``package`` (torch's own ``__version__`` for torch)."""
    if package == "torch":
        import torch

        return str(torch.__version__)
    from importlib.metadata import version

    return version(package)


def _release(text: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> (2, 13, 0); local and pre-release tags are ignored."""
    found = re.match(r"\d+(\.\d+)*", text.strip())
    return tuple(int(p) for p in found.group(0).split(".")) if found else ()


def tested_with(package: str, lowest: str, below: str, why: str) -> Requirement:
    """Refuse outside the versions ``lowest`` <= v < ``below`` of ``package`` that the option was tested
    with (``why``: what makes it fragile), unless $EMTOOLS_ALLOW_UNTESTED=1."""
    lo, hi = _release(lowest), _release(below)
    next_minor = len(lo) == len(hi) == 2 and hi == (lo[0], lo[1] + 1)
    text = f"{package} {lowest}.x" if next_minor else f"{package} >={lowest},<{below}"

    def unmet(device, mode) -> str | None:
        installed = package_version(package)
        if lo <= _release(installed) < hi or os.environ.get(UNTESTED_ENV) == "1":
            return None
        return (f"tested with {text} only ({why}), this is {package} {installed}; "
                f"set {UNTESTED_ENV}=1 to run it anyway")

    return Requirement(text + " (tested)", unmet, "runtime")


# Tested here: torch 2.13.0 (CPU build), numba 0.68.1.
TORCH_ATEN = tested_with("torch", "2.13", "2.14", "it calls ATen convolution ops outside torch's public API")
NUMBA_KERNELS = tested_with("numba", "0.68", "0.69", "its transforms are numba kernels")


# ----------------------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class ExecutionOption:
    """A registered name: a single option (``parts == (name,)``), a combination of singles, or
    ``eager`` (no parts: the reference)."""

    name: str
    summary: str
    parts: tuple[str, ...]
    stage: int = LAYOUT
    needs: tuple[Requirement, ...] = ()
    group: str | None = None  # at most one option per group in a plan (one autocast type, one wrapper)
    covers: tuple[str, ...] = ()  # singles it already does (winograd puts the other convolutions on oneDNN)
    body: Callable[["Execution"], None] | None = None


OPTIONS: dict[str, ExecutionOption] = {}


def execution_option(name: str, summary: str, *, stage: int, needs: Iterable[Requirement] = (),
                     group: str | None = None, covers: Iterable[str] = ()):
    """Register ``body(run: Execution)`` as the single option ``name`` (``summary``: one line for --help)."""

    def register(body: Callable[["Execution"], None]):
        OPTIONS[name] = ExecutionOption(name, summary, (name,), stage, tuple(needs), group, tuple(covers), body)
        return body

    return register


def combination(name: str, summary: str | None = None) -> None:
    """List the singles joined by ``+`` in ``name`` as one entry of em-profile's comparison."""
    parts = tuple(name.split("+"))
    missing = [p for p in parts if p not in OPTIONS or OPTIONS[p].parts != (p,)]
    assert not missing, f"combination {name}: {missing} are not registered single options"
    OPTIONS[name] = ExecutionOption(name, summary or " and ".join(parts) + " together", parts)


def singles() -> list[str]:
    return [name for name, option in OPTIONS.items() if option.parts == (name,)]


def needs_of(name: str) -> list[tuple[str, Requirement]]:
    """(single, requirement) pairs of a registered name, parts in the order they were named."""
    return [(part, need) for part in OPTIONS[name].parts for need in OPTIONS[part].needs]


# ----------------------------------------------------------------------------- plans

@dataclasses.dataclass(frozen=True)
class Plan:
    """Single options to apply, in stage order (empty: eager)."""

    singles: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The registered name with these parts (``channels_last+bf16``), else the parts joined by ``+``."""
        if not self.singles:
            return "eager"
        for name, option in OPTIONS.items():
            if set(option.parts) == set(self.singles):
                return name
        return "+".join(self.singles)

    def __contains__(self, name: str) -> bool:
        return name in self.singles


def _aliases() -> dict[str, str]:
    """``channels_last_bf16`` -> ``channels_last+bf16``: combinations typed without ``+``."""
    return {name.replace("+", "_"): name for name in OPTIONS if "+" in name}


def _parts_of(word: str) -> tuple[str, ...]:
    name = word.strip().lower().replace("-", "_")
    name = _aliases().get(name, name)
    if name in OPTIONS:
        return OPTIONS[name].parts
    if "+" in name:  # singles (or listed pairs) joined by +: name the part that is wrong
        return tuple(p for part in name.split("+") for p in _parts_of(part))
    raise unknown_choice("execution option", name, list(OPTIONS))


def parse_plan(names: str | Iterable[str]) -> Plan:
    """One plan from option names (a ``+``-joined text or a list; ``-`` for ``_`` is fine). Unknown
    names and options that exclude each other are one-line errors."""
    words = [names] if isinstance(names, str) else list(names)
    chosen = {p for word in words for p in _parts_of(word)}
    chosen -= {covered for name in chosen for covered in OPTIONS[name].covers}
    groups: dict[str, str] = {}
    order = list(OPTIONS)
    for name in sorted(chosen, key=order.index):
        group = OPTIONS[name].group
        if group and group in groups:
            raise EmError(f"execution options '{groups[group]}' and '{name}' exclude each other (each sets the {group})")
        if group:
            groups[group] = name
    return Plan(tuple(sorted(chosen, key=lambda n: (OPTIONS[n].stage, order.index(n)))))


def names_from_flags(*, precision: str = "fp32", channels_last: bool = False, onednn: bool = False,
                     winograd: bool = False, compile: bool = False, fuse: bool = False) -> list[str]:
    """em-train's config booleans and em-predict's flags as option names (``fp32`` is no option)."""
    names = [name for name, on in (("fuse", fuse), ("channels_last", channels_last), ("onednn", onednn),
                                   ("winograd", winograd), ("compile", compile)) if on]
    return names + ([precision] if precision != "fp32" else [])


def inference_flags(device_type: str, *, plain: bool = False, **asked: bool) -> dict[str, bool]:
    """em-predict's execution flags (``fuse``, ``channels_last``, ``onednn``, ``winograd``, ``compile``):
    those asked for; with none asked (and not ``plain``) on a CPU, ``fuse`` + ``channels_last`` +
    ``onednn`` (the last where this torch is one it was tested with): the batch norms folded and the
    element-wise layers in place, in the layout oneDNN convolves fastest, every convolution on oneDNN
    (whole em-predict runs x1.24-1.50 faster than with channels_last alone on the shipped FIB-SEM
    model, which was x1.27 over the plain model; benchmarks/bench_predict.py), with the same maps to
    float tolerance. A rule of the device
    and the torch version, not a timing, so that the same command on the same machine writes the same
    maps."""
    flags = {name: bool(asked.get(name, False)) for name in PREDICT_FLAGS}
    unknown = set(asked) - set(flags)
    if unknown:
        raise ValueError(f"unknown execution flags {sorted(unknown)}")
    if plain and any(flags.values()):
        chosen = " ".join(PREDICT_FLAGS[name] for name, on in flags.items() if on)
        raise EmError(f"--plain runs without execution options; drop it or {chosen}")
    if not plain and not any(flags.values()) and device_type == "cpu":
        import torch

        flags["fuse"] = flags["channels_last"] = True
        flags["onednn"] = unavailable_reason("onednn", torch.device("cpu"), "infer") is None
    return flags


PREDICT_FLAGS = {"fuse": "--fuse", "channels_last": "--channels-last", "onednn": "--onednn",
                 "winograd": "--winograd", "compile": "--compile"}  # em-predict's flag of each option


def unmet(name: str | Plan, device: "torch.device", mode: str = "train") -> list[tuple[str, Requirement, str]]:
    """(single, requirement, reason) of every requirement of ``name`` not met on ``device`` in ``mode``."""
    parts = name.singles if isinstance(name, Plan) else parse_plan(name).singles
    found = []
    for part in parts:
        for need in OPTIONS[part].needs:
            reason = need.unmet(device, mode)
            if reason:
                found.append((part, need, reason))
    return found


def unavailable_reason(name: str | Plan, device: "torch.device", mode: str = "train") -> str | None:
    """Why ``name`` cannot run here (the first unmet requirement that is not only ``slow``), or None."""
    return next((reason for _, need, reason in unmet(name, device, mode) if need.kind != "slow"), None)


def slow_reasons(name: str | Plan, device: "torch.device", mode: str = "train") -> list[str]:
    """Why ``name`` would run emulated, far slower, here (bf16 on CPUs without bf16 units)."""
    return [reason for _, need, reason in unmet(name, device, mode) if need.kind == "slow"]


def default_names(device: "torch.device", mode: str) -> list[str]:
    """The registered names worth measuring on ``device``: all whose device, mode, build and speed
    requirements are met (a missing compiler or an untested version is reported, not hidden)."""
    return [name for name in OPTIONS
            if not any(need.kind in ("device", "mode", "build", "slow") and need.unmet(device, mode)
                       for _, need in needs_of(name))]


# ----------------------------------------------------------------------------- applying

@dataclasses.dataclass
class Execution:
    """A model under a plan: the model (switched in place), its input format, autocast type and
    compiled form. ``fallback``: a compilation that fails warns and runs the model uncompiled."""

    model: "torch.nn.Module"
    device: "torch.device"
    plan: Plan
    memory_format: "torch.memory_format | None" = None
    dtype: "torch.dtype | None" = None
    compiled: Callable | None = None
    fallback: bool = False
    example: "torch.Tensor | None" = None  # an input, for the options that trace the model

    @property
    def runner(self) -> Callable:
        """What to call: the compiled or frozen model where there is one, else the model."""
        return self.compiled if self.compiled is not None else self.model

    def input(self, x: "torch.Tensor") -> "torch.Tensor":
        """``x`` in the model's memory format."""
        return channels_last_input(x, self.memory_format) if self.memory_format is not None else x

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        """The forward pass under autocast (``x`` already in :meth:`input`'s format)."""
        with self.autocast():
            if self.compiled is not None:
                if not self.fallback:
                    return self.compiled(x)
                try:
                    return self.compiled(x)
                except Exception as exc:  # torch.compile compiles at the first call
                    log.warning("torch.compile failed (%s); running the model uncompiled", _short(exc))
                    self.compiled = None
            return self.model(x)


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:160]


def check(options: Plan | str | Iterable[str], device: "str | torch.device" = "cpu", *, mode: str = "train",
          skip_other_devices: bool = False, fallback: bool = False, spelled: Mapping[str, str] | None = None) -> Plan:
    """The plan of ``options`` that runs on ``device``; a requirement not met is a one-line error naming
    the option (as ``spelled[name]`` where the user spelled it otherwise, e.g. ``train.onednn=true``).
    ``skip_other_devices`` leaves out options that act only on another kind of device instead;
    ``fallback`` leaves out a wrapper (torch.compile) that cannot run here, with a warning. Options
    that are only slow here stay (each tool warns or refuses in its own words)."""
    import torch

    plan = options if isinstance(options, Plan) else parse_plan(options)
    device = torch.device(device)
    kept = []
    for name in plan.singles:
        problems = [(need, reason) for _, need, reason in unmet(Plan((name,)), device, mode) if need.kind != "slow"]
        if problems and skip_other_devices and all(need.kind == "device" for need, _ in problems):
            continue
        where = (spelled or {}).get(name, f"execution option '{name}'")
        if problems and fallback and OPTIONS[name].stage == WRAPPER and all(n.kind == "runtime" for n, _ in problems):
            log.warning("%s: %s; running the model without it", where, problems[0][1])
            continue
        if problems:
            raise EmError(f"{where}: {problems[0][1]}")
        kept.append(name)
    return Plan(tuple(kept))


def apply(model: "torch.nn.Module", options: Plan | str | Iterable[str], device: "str | torch.device" = "cpu", *,
          mode: str = "train", example: "torch.Tensor | None" = None, fallback: bool = False,
          skip_other_devices: bool = False, spelled: Mapping[str, str] | None = None) -> Execution:
    """Apply execution options to ``model`` (in place: memory format, convolution classes) and return
    the :class:`Execution` that runs it: the one way em-profile, em-train and em-predict do it.

    ``options``: a :class:`Plan` or option names, checked as :func:`check` says. ``example``: an
    input, for ``jit_freeze``. ``fallback``: a failing ``torch.compile`` warns and runs uncompiled
    instead of raising.
    """
    import torch

    plan = check(options, device, mode=mode, skip_other_devices=skip_other_devices, fallback=fallback, spelled=spelled)
    run = Execution(model, torch.device(device), plan, fallback=fallback, example=example)
    for name in plan.singles:
        OPTIONS[name].body(run)
    return run


# ----------------------------------------------------------------------------- the options

OPTIONS["eager"] = ExecutionOption("eager", "plain fp32, contiguous tensors: the reference", ())


@execution_option("channels_last", "weights and input in channels_last_3d (NDHWC; NHWC for 2D models)", stage=LAYOUT)
def _channels_last(run: Execution) -> None:
    run.memory_format = to_channels_last(run.model)


@execution_option("compile", "torch.compile (inductor)", stage=WRAPPER,
                  needs=[Requirement("torch.compile (g++ on CPU)", _no_compile)], group="wrapper")
def _compile(run: Execution) -> None:
    import torch

    try:
        run.compiled = torch.compile(run.model)
    except Exception as exc:  # torch.compile refuses early on some platforms
        if not run.fallback:
            raise
        log.warning("torch.compile failed (%s); running the model uncompiled", _short(exc))


combination("compile+channels_last")


@execution_option("fuse", "batch norms folded into the convolutions, element-wise layers in place (inference)",
                  stage=GRAPH, needs=[inference_only()])
def _fuse(run: Execution) -> None:
    from emtools.models import fusion

    try:
        run.model = fusion.fuse_for_inference(run.model)
    except fusion.NotFusable as exc:
        if not run.fallback:
            raise EmError(f"execution option 'fuse': {exc}") from None
        log.warning("execution option 'fuse': %s; running the model unfused", exc)


@execution_option("onednn", "every stride-1 3D convolution on oneDNN, forward and backward",
                  stage=KERNELS, needs=[on_cpu("CPU only (oneDNN is the CPU convolution library)"), ONEDNN_BUILD,
                                        TORCH_ATEN])
def _onednn(run: Execution) -> None:
    from emtools.models import onednn

    onednn.use_onednn(run.model)


combination("channels_last+onednn")
combination("fuse+channels_last")
combination("fuse+channels_last+onednn", "fuse, channels_last and onednn: em-predict's default on a CPU")


@execution_option("winograd", "wide 3x3x3 convolutions (>= 64 channels) by Winograd, the rest on oneDNN",
                  stage=KERNELS, covers=["onednn"],
                  needs=[on_cpu("CPU only (on a GPU, cuDNN picks its own Winograd kernels: try cudnn_benchmark)"),
                         ONEDNN_BUILD, TORCH_ATEN, NUMBA_KERNELS])
def _winograd(run: Execution) -> None:
    from emtools.models import winograd

    winograd.use_winograd_and_onednn(run.model)


combination("channels_last+winograd")


@execution_option("bf16", "torch.autocast to bfloat16", stage=PRECISION,
                  needs=[Requirement("bf16 support on GPUs", _bf16_gpu),
                         Requirement("bf16 units (AVX512-BF16, AMX) on CPUs, else ~80x slower", _bf16_slow, "slow")],
                  group="autocast type")
def _bf16(run: Execution) -> None:
    import torch

    run.dtype = torch.bfloat16


combination("channels_last+bf16", "channels_last and bf16 (on CPUs with AMX the fastest by far)")


@execution_option("fp16", "torch.autocast to float16", stage=PRECISION, needs=[on_cuda()], group="autocast type")
def _fp16(run: Execution) -> None:
    import torch

    run.dtype = torch.float16


@execution_option("cudnn_benchmark", "torch.backends.cudnn.benchmark = True (process-wide)", stage=BACKEND,
                  needs=[on_cuda()])
def _cudnn_benchmark(run: Execution) -> None:
    import torch

    torch.backends.cudnn.benchmark = True


@execution_option("jit_freeze", "traced and frozen TorchScript", stage=WRAPPER, needs=[inference_only()],
                  group="wrapper")
def _jit_freeze(run: Execution) -> None:
    import warnings

    import torch

    if run.example is None:
        raise EmError("execution option 'jit_freeze' traces the model: pass an example input")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still fast
        run.compiled = torch.jit.freeze(torch.jit.trace(run.model.eval(), run.input(run.example)))


# ----------------------------------------------------------------------------- help text

def help_table(width: int = 24) -> list[str]:
    """Lines for em-profile's --help and man page: each registered name, its summary and, for the
    single options, what it needs."""
    lines = []
    width = max(width, 2 + max(len(name) for name in OPTIONS))
    for name, option in OPTIONS.items():
        lines.append(f"{name:<{width}}{option.summary}")
        needs = list(dict.fromkeys(need.text for _, need in needs_of(name)))
        if needs and option.parts == (name,):
            lines.append(" " * width + "needs: " + "; ".join(needs))
    return lines
