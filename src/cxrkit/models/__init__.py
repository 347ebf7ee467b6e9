"""Models: what a network is and how it is stored, shared by training, inference and CAMs.

:mod:`~cxrkit.models.backbones` builds timm networks with a one-channel stem and a multilabel
head (``(N, 1, S, S)`` -> logits ``(N, C)``); :mod:`~cxrkit.models.inputs` is the input
convention (uint8 -> resized, normalised float), the one evaluation transform;
:mod:`~cxrkit.models.checkpoint` is the model card and the checkpoint/bundle files that carry
it (written by ``train`` and ``export``, read by every later command).

May import :mod:`cxrkit.files`; never data preparation, training, evaluation or deployment.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "backbones": ["create_model"],
        "checkpoint": ["LoadedModel", "load_model", "read_bundle_card", "update_card"],
        "inputs": ["eval_transform", "input_normalization", "normalize", "to_unit"],
    },
)
