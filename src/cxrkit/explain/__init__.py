"""Explanation: class-activation maps per finding, and how well they point (``cxrkit cam``).

:mod:`~cxrkit.explain.cam` (Grad-CAM family heatmaps and overlays, pytorch-grad-cam),
:mod:`~cxrkit.explain.layers` (which layer to hook, sized to the input),
:mod:`~cxrkit.explain.grid` (where feature-map cells sit on the image),
:mod:`~cxrkit.explain.localization` (pointing game and IoU against bounding boxes).

May import io, data labels, models and :mod:`cxrkit.deploy` (the Predictor, source listing);
never training code.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "cam": ["cam_folder", "cam_image", "heatmaps"],
        "layers": ["cam_layers", "describe_layers"],
        "localization": ["evaluate_localization"],
    },
)
