"""Training: prepared data + a recipe -> a run folder with checkpoints (``cxrkit train``).

:mod:`~cxrkit.train.config` (typed recipe, ``--set`` overrides), :mod:`~cxrkit.train.losses`
(masked multilabel losses, a registry), :mod:`~cxrkit.train.augment` (augmentation on uint8,
CPU or device), :mod:`~cxrkit.train.loaders` (samplers, DDP shards, datasets combined),
:mod:`~cxrkit.train.module` (the LightningModule and the model card it writes),
:mod:`~cxrkit.train.callbacks` (atomic, resumable checkpoints), :mod:`~cxrkit.train.run_folder`
(what a run records) and :mod:`~cxrkit.train.fit` (``fit`` and ``resume``).

The only package that imports Lightning. May import data, models, evaluation metrics;
nothing outside training imports it (the CLI and the benchmarks aside).
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "config": ["TrainConfig", "load_config"],
        "fit": ["FitResult", "resume"],
        "losses": ["create_loss"],
    },
)
