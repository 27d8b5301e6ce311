"""How fast a prediction goes: a heartbeat line for logs without a terminal, and the summary.

On a terminal em-predict shows a progress bar; in a cron log or under nohup, :class:`Heartbeat`
writes one info line every ``INTERVAL_S`` seconds (done/total, rate, time left), so a long run
shows life. :func:`summary` is the closing line: voxels, seconds, Mvoxel/s and, with the model's
FLOPs per patch, the FLOP rate reached and its share of the device's measured peak::

    share = FLOPs per patch x patches x TTA variants / seconds / peak FLOP/s

``FLOPs per patch x patches x variants / voxels`` is the cost per output voxel: the model's
FLOPs per voxel times what the overlap, the crop and TTA recompute.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time

log = logging.getLogger("emtools")

INTERVAL_S = 30.0  # between heartbeat lines
clock = time.monotonic  # tests replace it
PEAK_MIN_RUN_S = 30.0  # measuring the peak costs ~3 s: only worth it on runs at least this long


def duration_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Heartbeat:
    """One info line every ``INTERVAL_S`` seconds while work advances (only without a terminal)."""

    def __init__(self, label: str, total_voxels: int, total_blocks: int, enabled: bool | None = None):
        self.label, self.total_voxels, self.total_blocks = label, int(total_voxels), int(total_blocks)
        self.enabled = (not sys.stderr.isatty() and log.isEnabledFor(logging.INFO)) if enabled is None else enabled
        self.started = self.last = clock()
        self.voxels = self.blocks = 0

    def advance(self, voxels: int, blocks: int = 1) -> None:
        self.voxels += int(voxels)
        self.blocks += blocks
        if not self.enabled:
            return
        now = clock()
        if now - self.last < INTERVAL_S or self.blocks >= self.total_blocks:
            return
        self.last = now
        rate = self.voxels / max(now - self.started, 1e-9)
        left = (self.total_voxels - self.voxels) / max(rate, 1e-9)
        log.info("%s: %d/%d blocks, %.2f/%.2f Mvoxel (%d%%), %.3f Mvoxel/s, about %s left", self.label, self.blocks,
                 self.total_blocks, self.voxels / 1e6, self.total_voxels / 1e6,
                 int(100 * self.voxels / max(self.total_voxels, 1)), rate / 1e6, duration_text(left))


def flops_per_patch_of(model, spec, patch_zyx) -> int:
    """Forward FLOPs of ``model`` on one patch: counted at the smallest size the pooling accepts
    twice over and scaled by the voxels (exact: every layer pads to 'same', so each level holds
    patch / its downsampling; :func:`emtools.predict.autopatch.small_trace`)."""
    from emtools.models.geometry import total_downsampling
    from emtools.predict.autopatch import small_trace

    total, _, voxels = small_trace(model, spec.in_channels, total_downsampling(spec))
    return round(total.flops_fwd * math.prod(patch_zyx) / voxels)


def summary(voxels: int, seconds: float, flops: float | None = None, model_flops_per_voxel: float | None = None,
            peak_flops_per_s: float | None = None, model_voxels: int | None = None) -> str:
    """The closing line: ``N voxels in S s: R Mvoxel/s`` and, when known, the FLOP rate and its share.

    ``model_voxels``: how many voxels the model saw when it works at a coarser voxel size than the
    input (averaged; :mod:`emtools.resample`); the recompute factor is per model voxel."""
    seconds = max(seconds, 1e-9)
    text = f"done: {voxels} voxels in {seconds:.1f} s, {voxels / seconds / 1e6:.3f} Mvoxel/s"
    if not flops or not voxels:
        return text
    rate = flops / seconds
    text += f"; {rate / 1e9:.2f} GFLOP/s"
    seen = model_voxels or voxels
    if model_flops_per_voxel:
        text += (f" (the model's {model_flops_per_voxel / 1e3:.0f} kFLOP/voxel x {flops / seen / model_flops_per_voxel:.2f}"
                 " for overlap, crop and TTA" + (f", on 1/{voxels / seen:.3g} of the input's voxels (averaged)"
                                                 if seen != voxels else "") + ")")
    if peak_flops_per_s:
        return text + f", {100 * rate / peak_flops_per_s:.0f}% of the measured peak {peak_flops_per_s / 1e9:.1f} GFLOP/s"
    return text + f"; the share of the peak is measured on runs of {PEAK_MIN_RUN_S:.0f} s or more"


@dataclasses.dataclass
class Tally:
    """Voxels, seconds and patches of a run's inputs, for :meth:`log_summary`."""

    voxels: int = 0
    seconds: float = 0.0
    patches: int = 0
    model_voxels: int = 0  # at the model's voxel size (fewer when inputs are averaged down)

    def add(self, voxels: int, seconds: float, patches: int, model_voxels: int | None = None) -> None:
        self.voxels += int(voxels)
        self.seconds += seconds
        self.patches += int(patches)
        self.model_voxels += int(voxels if model_voxels is None else model_voxels)

    def log_summary(self, flops_per_patch: int, patch_zyx, variants: int, device, prefix: str = "") -> None:
        """The closing info line (patches of ``patch_zyx``, ``variants`` TTA variants); the peak is
        measured (~3 s) on runs of ``PEAK_MIN_RUN_S`` or more."""
        if not self.voxels or not log.isEnabledFor(logging.INFO):
            return
        peak = None
        if self.seconds >= PEAK_MIN_RUN_S:
            from emtools.profile.timing import calibrate_peak

            peak = calibrate_peak(device).flops_per_s
        log.info("%s%s", prefix, summary(self.voxels, self.seconds, flops_per_patch * self.patches * variants,
                                         flops_per_patch / math.prod(patch_zyx), peak, self.model_voxels))
