"""Mixed precision: which precisions a device can train in, and the grad scaler (the autocast itself
is the ``bf16`` / ``fp16`` execution option, :mod:`emtools.models.execution`).

- ``fp32``: plain float32 (the default everywhere).
- ``bf16``: ``torch.autocast`` to bfloat16. On GPU; on CPU only where it has bf16 units
  (AVX512-BF16 / AMX, :func:`emtools.models.execution.cpu_has_bf16_units`): emulated bf16 is ~80x
  slower than fp32, so it is refused elsewhere.
- ``fp16``: autocast to float16 with ``torch.amp.GradScaler`` (loss scaling); GPU only.

Losses are always computed in float32 (:mod:`emtools.train.losses` casts the outputs).
"""

from __future__ import annotations

import torch

from emtools.errors import EmError


def check_precision(precision: str, device: torch.device) -> None:
    """One-line errors for a precision that this device cannot train in (usefully)."""
    if precision == "fp32":
        return
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise EmError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                          "use fp16 or fp32")
        return
    if precision == "fp16":
        raise EmError("train.precision=fp16 needs a GPU; on CPU use fp32 (or bf16 on CPUs with bf16 units)")
    from emtools.models.execution import cpu_has_bf16_units

    if not cpu_has_bf16_units():
        raise EmError("train.precision=bf16 on a CPU without bf16 units is emulated and ~80x slower than fp32; "
                      "use train.precision=fp32")


def grad_scaler(device: torch.device, precision: str):
    """A GradScaler for fp16 on GPU, else None."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
