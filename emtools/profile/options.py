"""Compare execution options for one model and input on one device, in one run.

Each option gets its own copy of the model (same weights) and the same input, then is timed per
training iteration (forward + backward + Adam step; ``mode="train"``) or per forward pass
(``mode="infer"``, under ``torch.inference_mode``). Speedups are ratios to eager fp32.

======================  =====================================================================
option                  what it does
======================  =====================================================================
eager                   plain fp32, contiguous tensors: the reference
channels_last           weights and input in channels_last_3d (NDHWC) memory format
compile                 ``torch.compile`` (inductor; needs a C++ compiler on CPU)
compile+channels_last   both of the above
onednn                  every stride-1 3D convolution forced onto oneDNN, forward and backward
                        (CPU fp32; PyTorch's heuristic sends small batch-1 3D convs to a slower
                        native path: see :mod:`emtools.models.onednn`)
channels_last+onednn    both of the above
winograd                the wide 3x3x3 convolutions (>= 64 channels) by Winograd's algorithm,
                        F(2,3) in z, F(4,3) (large planes) or F(2,3) in y, x: up to 6x fewer
                        multiplies in the products
                        (:mod:`emtools.models.winograd`); the other stride-1 3D
                        convolutions on oneDNN as above (CPU fp32)
channels_last+winograd  both of the above
bf16                    ``torch.autocast`` to bfloat16 (CPU and GPU)
channels_last+bf16      both of the above (on CPUs with AMX the fastest here by far)
fp16                    ``torch.autocast`` to float16 (GPU only)
cudnn_benchmark         ``torch.backends.cudnn.benchmark = True`` (GPU only)
jit_freeze              traced and frozen TorchScript (inference only)
======================  =====================================================================

An option that cannot run here is reported as ``unavailable: <reason>``, never a crash. bf16 is
only measured by default on CPUs with bf16 units (AVX512-BF16/AMX): emulated bf16 is ~80x slower.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from emtools.errors import EmError
from emtools.models import channels_last_input, onednn, to_channels_last, winograd
from emtools.profile.timing import loss_of, synchronize

ALL_OPTIONS = ("eager", "channels_last", "compile", "compile+channels_last", "onednn", "channels_last+onednn",
               "winograd", "channels_last+winograd",
               "bf16", "channels_last+bf16", "fp16", "cudnn_benchmark", "jit_freeze")
SLOW_FACTOR = 10.0  # an option whose first iteration is this much slower than eager is cut short


@dataclass
class OptionResult:
    name: str
    status: str  # "ok" or "unavailable"
    reason: str = ""
    seconds: float | None = None  # median per iteration
    times: list[float] = field(default_factory=list)
    first_s: float | None = None  # the first (warm-up) iteration: includes compilation
    speedup: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def cpu_has_bf16_units() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False


def option_dtype(name: str) -> torch.dtype | None:
    """The dtype option ``name`` autocasts to (bf16 and fp16 options, alone or with channels_last;
    also a label that ends in one), None for the fp32 options."""
    if name.endswith("bf16"):
        return torch.bfloat16
    return torch.float16 if name.endswith("fp16") else None


def default_options(device: torch.device, mode: str) -> list[str]:
    """The options worth measuring on ``device``: all that can run and are not known to be slow."""
    names = ["eager", "channels_last", "compile", "compile+channels_last"]
    if device.type == "cpu" and onednn.available():
        names += ["onednn", "channels_last+onednn", "winograd", "channels_last+winograd"]
    if device.type == "cuda":
        names += ["bf16", "channels_last+bf16", "fp16", "cudnn_benchmark"]
    elif cpu_has_bf16_units():
        names += ["bf16", "channels_last+bf16"]
    if mode == "infer":
        names.append("jit_freeze")
    return names


def parse_options(text: str, device: torch.device, mode: str) -> list[str]:
    """``--options`` text: ``default``, ``none`` or a comma list of names (eager always first)."""
    text = text.strip().lower()
    if text in ("", "none"):
        return []
    if text == "default":
        return default_options(device, mode)
    names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
    names = [n.replace("compile_channels_last", "compile+channels_last")
             .replace("channels_last_onednn", "channels_last+onednn")
             .replace("channels_last_winograd", "channels_last+winograd")
             .replace("channels_last_bf16", "channels_last+bf16") for n in names]
    for name in names:
        if name not in ALL_OPTIONS:
            import difflib

            match = difflib.get_close_matches(name, ALL_OPTIONS, n=1)
            hint = f"; did you mean '{match[0]}'?" if match else f"; choose from {', '.join(ALL_OPTIONS)}"
            raise EmError(f"unknown execution option '{name}'{hint}")
    return ["eager"] + [n for n in dict.fromkeys(names) if n != "eager"]


def unavailable_reason(name: str, device: torch.device, mode: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    gpu = device.type == "cuda"
    if name in ("fp16", "cudnn_benchmark") and not gpu:
        return "needs a CUDA GPU"
    if option_dtype(name) == torch.bfloat16 and gpu and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    if "winograd" in name and gpu:
        return "CPU only (on a GPU, cuDNN picks its own Winograd kernels: try cudnn_benchmark)"
    if "onednn" in name and gpu:
        return "CPU only (oneDNN is the CPU convolution library)"
    if ("onednn" in name or "winograd" in name) and not onednn.available():
        return "this torch is built without oneDNN (mkldnn)"
    if name == "jit_freeze" and mode != "infer":
        return "inference only (use --mode infer)"
    if name.startswith("compile"):
        if not hasattr(torch, "compile"):
            return "this torch has no torch.compile"
        if not gpu and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            return "torch.compile on CPU needs a C++ compiler (g++)"
    return None


def _prepare(name: str, model: nn.Module, x: torch.Tensor, mode: str):
    """(callable model, input, autocast context factory) for option ``name``."""
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    if "channels_last" in name:
        x = channels_last_input(x, to_channels_last(model))
    if "winograd" in name:
        winograd.use_winograd_and_onednn(model)
    elif "onednn" in name:
        onednn.use_onednn(model)
    dtype = option_dtype(name)
    if dtype is not None:
        autocast = lambda: torch.autocast(device_type=x.device.type, dtype=dtype)  # noqa: E731
    if name.startswith("compile"):
        model = torch.compile(model)
    if name == "jit_freeze":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still fast
            model = torch.jit.freeze(torch.jit.trace(model.eval(), x))
    return model, x, autocast


def make_step(name: str, model: nn.Module, x: torch.Tensor, mode: str = "train", lr: float = 1e-4) -> Callable[[], None]:
    """One iteration of option ``name`` on a private copy of ``model``: forward + backward + Adam step
    (``mode="train"``) or a forward pass under inference mode. Raises where the option fails."""
    own = copy.deepcopy(model)
    own.train(mode == "train")
    runner, xin, autocast = _prepare(name, own, x, mode)
    optimizer = torch.optim.Adam(own.parameters(), lr=lr) if mode == "train" else None

    def step() -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_of(runner(xin))
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), autocast():
                runner(xin)

    return step


def time_option(name: str, model: nn.Module, x: torch.Tensor, mode: str = "train", repeats: int = 3,
                warmup: int = 1, reference_s: float | None = None, lr: float = 1e-4) -> OptionResult:
    """Time one execution option on a private copy of ``model``; failures become results."""
    device = x.device
    reason = unavailable_reason(name, device, mode)
    if reason:
        return OptionResult(name, "unavailable", reason)
    previous_benchmark = torch.backends.cudnn.benchmark
    try:
        if name == "cudnn_benchmark":
            torch.backends.cudnn.benchmark = True
        step = make_step(name, model, x, mode, lr)
        times: list[float] = []
        first_s = None
        for index in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds = time.perf_counter() - start
            if index == 0:
                first_s = seconds
            if index >= warmup:
                times.append(seconds)
            too_slow = reference_s and not name.startswith("compile") and seconds > SLOW_FACTOR * reference_s
            if too_slow:
                return OptionResult(name, "ok", f"cut short: one iteration took {seconds / reference_s:.0f}x eager",
                                    seconds, [seconds], first_s)
        return OptionResult(name, "ok", "", statistics.median(times), times, first_s)
    except Exception as exc:  # an option that fails here (compile errors have their own types) is reported
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return OptionResult(name, "unavailable", f"{type(exc).__name__}: {first[:160]}")
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
        if name.startswith("compile"):
            torch._dynamo.reset()


def compare_options(model: nn.Module, x: torch.Tensor, names: list[str], mode: str = "train", repeats: int = 3,
                    warmup: int = 1, log: Callable[[str], None] = lambda text: None) -> list[OptionResult]:
    """Time every option in ``names`` (eager first, the reference) and fill in the speedups."""
    results: list[OptionResult] = []
    reference = None
    for name in names:
        log(f"timing option {name} ({mode})")
        if option_dtype(name) == torch.bfloat16 and x.device.type == "cpu" and not cpu_has_bf16_units():
            log("bf16 on a CPU without bf16 units is emulated (about 80x slower); cut short after one iteration")
        result = time_option(name, model, x, mode, repeats, warmup, reference)
        if name == "eager" and result.seconds:
            reference = result.seconds
        results.append(result)
        log(f"  {name}: {result.status} {result.reason} "
            + (f"{result.seconds:.3f} s/iteration" if result.seconds else ""))
    for result in results:
        if reference and result.seconds:
            result.speedup = reference / result.seconds
    return results


def fastest(results: list[OptionResult]) -> OptionResult | None:
    timed = [r for r in results if r.status == "ok" and r.seconds]
    return min(timed, key=lambda r: r.seconds) if timed else None
