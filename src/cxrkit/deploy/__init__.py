"""Deployment: a trained model on new images (``cxrkit infer``, ``export``, ``serve``).

:mod:`~cxrkit.deploy.predictor` (the :class:`Predictor`: preprocess, probabilities, calls),
:mod:`~cxrkit.deploy.backends` (PyTorch, ONNX Runtime, OpenVINO), :mod:`~cxrkit.deploy.sources`
(what ``--source`` lists), :mod:`~cxrkit.deploy.batch` (many images to one resumable CSV),
:mod:`~cxrkit.deploy.export` and :mod:`~cxrkit.deploy.quantize` (pickle-free bundles, ONNX,
int8), :mod:`~cxrkit.deploy.serve` (REST API and web page).

Never imports training code: predicting an image loads neither Lightning nor the training
loaders nor the augmentation (a test checks it).
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "batch": ["predict_paths", "write_predictions"],
        "export": ["export_bundle"],
        "predictor": ["Predictor"],
        "sources": ["resolve_sources"],
    },
)
