"""The valid values of every training config key, defined once: choices and ranges.

Each enumerated key has its tuple of choices here (:data:`SCHEDULERS`, :data:`LOSS_NAMES`,
...), and :data:`RULES` holds, by dotted key, what a value must satisfy beyond its type.
:mod:`cxrkit.train.config` checks every loaded config against them; the modules that act on
a key (losses, loaders, the run folder, the LightningModule) import its choices from here, so
a value the config accepts is always one the code handles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cxrkit.errors import UserError, did_you_mean

#: ``optim.scheduler``: what ``LitClassifier.configure_optimizers`` (train/module.py) builds.
SCHEDULERS = ("cosine", "plateau", "none")
#: ``loss.name``: the keys of ``LOSSES`` in train/losses.py.
LOSS_NAMES = ("bce", "focal", "class_balanced", "asymmetric")
#: ``loss.pos_weight``: none, or negatives/positives per class (train/losses.py).
POS_WEIGHTS = (None, "auto")
#: ``trainer.precision``: ``auto`` (``lightning_precision`` in train/fit.py) or one of Lightning's
#: own names (its ``_PRECISION_INPUT_STR``; a test keeps the two equal). Lightning's legacy
#: aliases (``32``, ``16``, ``bf16``) are refused: they are ambiguous and Lightning warns.
PRECISIONS = (
    "auto",
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)
#: ``logger``: the loggers of ``make_loggers`` (train/run_folder.py).
LOGGERS = ("tensorboard", "mlflow", "none")
#: ``data.sampler``: the training orders of ``make_loader`` (train/loaders.py).
SAMPLERS = ("random", "weighted")
#: ``data.combine``: how ``combine`` (train/loaders.py) joins the findings of several datasets.
COMBINE_MODES = ("union", "intersection")
#: ``augment.on``: where ``augment_on_device`` (train/module.py) runs augmentation.
AUGMENT_ON = ("auto", "loader", "device")
#: ``model.output_stride``: what ``create_model`` (models/backbones.py) builds.
OUTPUT_STRIDES = (32, 16, 8)
#: ``data.image_size``: one stride of a stride-32 backbone, a single cell of its last feature
#: map (densenet121, the default, raises a RuntimeError mid-training below 29 px).
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Rule:
    """What a config value must satisfy beyond its type: ``ok(value)``, described by
    ``expected`` in the error; ``choices`` for an enumerated key (the error then suggests
    the closest valid names)."""

    ok: Callable[[Any], bool]
    expected: str
    choices: tuple[Any, ...] | None = None

    def error(self, key: str, value: Any) -> UserError:
        if self.choices is not None and all(isinstance(c, str | None) for c in self.choices):
            return did_you_mean(show(value), [show(c) for c in self.choices], what=key)
        return UserError(f"config key {key} must be {self.expected}, got {show(value)}")


def one_of(choices: tuple[Any, ...]) -> Rule:
    """The rule of an enumerated key."""
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(show, choices)), choices)


def show(value: Any) -> str:
    """``value`` as it is written in YAML / ``--set`` (``null``, ``true``, ``[0.5, 1.0]``)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(show, value)) + "]"
    return str(value)


#: The checks beyond types, by dotted key; each bound is one the code relies on.
RULES: dict[str, Rule] = {
    "seed": Rule(
        lambda v: 0 <= v <= 2**32 - 1,
        "an integer in [0, 4294967295] (the seeds numpy and Lightning accept)",
    ),
    "model.drop_rate": Rule(lambda v: 0 <= v < 1, "a dropout probability in [0, 1)"),
    "model.output_stride": one_of(OUTPUT_STRIDES),
    "model.init": Rule(
        lambda v: v is None or len(v.strip()) > 0,
        "null or the path of a checkpoint file or bundle folder",
    ),
    "data.image_size": Rule(
        lambda v: v >= MIN_IMAGE_SIZE,
        f"an integer >= {MIN_IMAGE_SIZE} (the smallest input the backbones accept)",
    ),
    "data.batch_size": Rule(lambda v: v >= 1, "an integer >= 1"),
    "data.num_workers": Rule(lambda v: v >= 0, "an integer >= 0 (0: load in the main process)"),
    "data.findings": Rule(
        lambda v: v is None or (len(v) > 0 and len(set(v)) == len(v)),
        "null (every finding with positives) or a non-empty list of distinct finding names",
    ),
    "data.combine": one_of(COMBINE_MODES),
    "data.sampler": one_of(SAMPLERS),
    "augment.scale": Rule(
        lambda v: 0 < v[0] <= v[1] <= 1,
        "[low, high] area fractions with 0 < low <= high <= 1",
    ),
    "augment.ratio": Rule(lambda v: 0 < v[0] <= v[1], "[low, high] aspect ratios, 0 < low <= high"),
    "augment.rotate_deg": Rule(lambda v: v >= 0, "a number of degrees >= 0"),
    "augment.translate": Rule(lambda v: 0 <= v <= 1, "a fraction of the image side in [0, 1]"),
    "augment.brightness": Rule(lambda v: 0 <= v <= 1, "a brightness shift in [0, 1]"),
    "augment.contrast": Rule(
        lambda v: 0 <= v <= 1, "a contrast amplitude in [0, 1] (above 1 inverts images)"
    ),
    "augment.on": one_of(AUGMENT_ON),
    "loss.name": one_of(LOSS_NAMES),
    "loss.pos_weight": one_of(POS_WEIGHTS),
    "loss.focal_gamma": Rule(lambda v: v >= 0, "a number >= 0"),
    "loss.cb_beta": Rule(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "loss.asl_gamma_neg": Rule(lambda v: v >= 0, "a number >= 0"),
    "loss.asl_gamma_pos": Rule(lambda v: v >= 0, "a number >= 0"),
    "loss.asl_clip": Rule(lambda v: 0 <= v < 1, "a probability margin in [0, 1)"),
    # AdamW's own bound; 0 leaves the weights as initialised (tests/train/test_ddp.py uses it)
    "optim.lr": Rule(lambda v: v >= 0, "a learning rate >= 0"),
    "optim.weight_decay": Rule(lambda v: v >= 0, "a number >= 0"),
    "optim.scheduler": one_of(SCHEDULERS),
    "optim.warmup_epochs": Rule(lambda v: v >= 0, "a number of epochs >= 0"),
    "optim.layer_decay": Rule(
        lambda v: 0 < v <= 1, "a factor in (0, 1] (1: every layer trains at optim.lr)"
    ),
    "trainer.max_epochs": Rule(lambda v: v >= 1, "an integer >= 1"),
    "trainer.num_nodes": Rule(lambda v: v >= 1, "an integer >= 1"),
    "trainer.precision": one_of(PRECISIONS),
    "trainer.patience": Rule(lambda v: v >= 0, "an integer >= 0 (0: no early stopping)"),
    "trainer.log_every_n_steps": Rule(lambda v: v >= 0, "an integer >= 0"),
    "trainer.limit_train_batches": Rule(
        lambda v: 0 < v <= 1, "a fraction of the training batches in (0, 1]"
    ),
    "trainer.checkpoint_every_n_steps": Rule(
        lambda v: v >= 0, "an integer >= 0 (0: at epoch ends only)"
    ),
    "logger": one_of(LOGGERS),
}
