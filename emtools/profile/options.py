"""Compare execution options for one model and input on one device, in one run.

Each option gets its own copy of the model (same weights) and the same input, then is timed per
training iteration (forward + backward + Adam step; ``mode="train"``) or per forward pass
(``mode="infer"``, under ``torch.inference_mode``). Speedups are ratios to eager fp32.

The options (eager, channels_last, compile, onednn, winograd, bf16, fp16, cudnn_benchmark,
jit_freeze and their listed pairs such as ``channels_last+bf16``), what each needs and how it is
applied live in one registry, :mod:`emtools.models.execution`; em-train and em-predict apply them
through the same function. An option that cannot run here is reported as ``unavailable: <reason>``,
never a crash. bf16 is only measured by default on CPUs with bf16 units (AVX512-BF16/AMX):
emulated bf16 is ~80x slower.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from emtools.models import execution
from emtools.models.execution import cpu_has_bf16_units  # noqa: F401  (its old home; bench and tests import it here)
from emtools.profile.timing import loss_of, synchronize

ALL_OPTIONS = tuple(execution.OPTIONS)
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


def option_dtype(name: str) -> torch.dtype | None:
    """The dtype option ``name`` autocasts to (bf16 and fp16 options, alone or with channels_last;
    also a label that ends in one), None for the fp32 options."""
    if name.endswith("bf16"):
        return torch.bfloat16
    return torch.float16 if name.endswith("fp16") else None


def default_options(device: torch.device, mode: str) -> list[str]:
    """The options worth measuring on ``device``: all that can run and are not known to be slow."""
    return execution.default_names(device, mode)


def parse_options(text: str, device: torch.device, mode: str) -> list[str]:
    """``--options`` text: ``default``, ``none`` or a comma list of names (eager always first); each
    name is a registered one or singles joined by ``+``, written with ``_`` or ``-``."""
    text = text.strip().lower()
    if text in ("", "none"):
        return []
    if text == "default":
        return default_options(device, mode)
    names = [execution.parse_plan(n).label for n in text.split(",") if n.strip()]
    return ["eager"] + [n for n in dict.fromkeys(names) if n != "eager"]


def unavailable_reason(name: str, device: torch.device, mode: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    return execution.unavailable_reason(name, device, mode)


def _prepare(name: str, model: nn.Module, x: torch.Tensor, mode: str):
    """(callable model, input, autocast context factory) for option ``name``."""
    run = execution.apply(model, execution.parse_plan(name), x.device, mode=mode, example=x)
    return run.runner, run.input(x), run.autocast


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
    plan = execution.parse_plan(name)
    previous_benchmark = torch.backends.cudnn.benchmark  # cudnn_benchmark sets it process-wide
    try:
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
            too_slow = reference_s and "compile" not in plan and seconds > SLOW_FACTOR * reference_s
            if too_slow:
                return OptionResult(name, "ok", f"cut short: one iteration took {seconds / reference_s:.0f}x eager",
                                    seconds, [seconds], first_s)
        return OptionResult(name, "ok", "", statistics.median(times), times, first_s)
    except Exception as exc:  # an option that fails here (compile errors have their own types) is reported
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return OptionResult(name, "unavailable", f"{type(exc).__name__}: {first[:160]}")
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
        if "compile" in plan:
            torch._dynamo.reset()


def compare_options(model: nn.Module, x: torch.Tensor, names: list[str], mode: str = "train", repeats: int = 3,
                    warmup: int = 1, log: Callable[[str], None] = lambda text: None) -> list[OptionResult]:
    """Time every option in ``names`` (eager first, the reference) and fill in the speedups."""
    results: list[OptionResult] = []
    reference = None
    for name in names:
        log(f"timing option {name} ({mode})")
        for reason in execution.slow_reasons(name, x.device, mode):
            log(f"{reason}; cut short after one iteration")
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
