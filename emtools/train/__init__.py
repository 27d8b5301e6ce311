"""Training emtools' segmentation models (the library behind em-train).

    from emtools.train.config import load_config
    from emtools.train.loop import prepare, train
    config = load_config("train.yaml", ["train.steps=2000", "model=rsunet-efficient"])
    result = train(config, "run/")            # run/last.pt, run/metrics.jsonl, ...

Modules, one per concern: :mod:`~emtools.train.config` (YAML, overrides, validation; the keys in :mod:`~emtools.train.schema`),
:mod:`~emtools.train.data` (volumes, the train/validation split), :mod:`~emtools.train.sampling`
(crops, augmentation, targets, DataLoader), :mod:`~emtools.train.losses`,
:mod:`~emtools.train.optim` (optimizers, schedules, LR scaling), :mod:`~emtools.train.precision`,
:mod:`~emtools.train.distributed` (torchrun, process group, DDP), :mod:`~emtools.train.loop`,
:mod:`~emtools.train.validate`, :mod:`~emtools.train.state` (checkpoints, exact resume),
:mod:`~emtools.train.plots`.
"""
