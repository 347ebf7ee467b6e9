"""Phantom chest X-ray generator (``cxrkit synth``): a labelled dataset in NIH ChestX-ray14 layout.

``render_lateral`` draws a lateral-view film (:mod:`cxrkit.data.synth.lateral`), material the
input gate of a model trained on the frontal phantoms should flag.

Research software, not a medical device: the images are drawings, not patients.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "dataset": ["SynthSummary", "generate_dataset"],
        "lateral": ["render_lateral"],
        "phantom": ["FINDINGS"],
    },
)
