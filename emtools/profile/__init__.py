"""Where the time goes: per-layer cost of models and run records of emtools commands.

- :mod:`~emtools.profile.flops`: analytic per-layer FLOPs, parameters, activation memory (meta
  device), cross-checked against ``torch.utils.flop_counter.FlopCounterMode``.
- :mod:`~emtools.profile.timing`: the device's measured peak, per-layer forward/backward times.
- :mod:`~emtools.profile.options`: execution options (channels_last_3d, torch.compile, autocast,
  ...; registered in :mod:`emtools.models.execution`) timed side by side, speedups as ratios to
  eager fp32.
- :mod:`~emtools.profile.report`: the ``em-profile model`` report (dict and text table).
- :mod:`~emtools.profile.records`: ``em-profile run`` records (JSON lines) and their summary.
- :mod:`~emtools.profile.plots`: PNG charts (matplotlib, imported only when plotting).
"""
