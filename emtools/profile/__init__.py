"""Where the time goes: per-layer cost of models and run records of emtools commands.

- :mod:`~emtools.profile.flops`: analytic per-layer FLOPs, parameters, activation memory (meta
  device), cross-checked against ``torch.utils.flop_counter.FlopCounterMode``.
- :mod:`~emtools.profile.timing`: the device's measured peak, per-layer forward/backward times.
- :mod:`~emtools.profile.options`: execution options (channels_last_3d, torch.compile, autocast,
  ...; registered in :mod:`emtools.models.execution`) timed side by side, speedups as ratios to
  eager fp32.
- :mod:`~emtools.profile.report`: the ``em-profile model`` report (dict and text table), with a
  throughput table (samples/s, voxels/s per batch size and option).
- :mod:`~emtools.profile.kinds`: what differs per kind of model (U-Net patch or FFN field of view:
  input size, geometry, FLOPs per FOV, sections that do not apply), one dispatch on the spec.
- :mod:`~emtools.profile.records`: ``em-profile run`` records (JSON lines) and their summary.
- :mod:`~emtools.profile.plots`: PNG charts (matplotlib, imported only when plotting).
"""
