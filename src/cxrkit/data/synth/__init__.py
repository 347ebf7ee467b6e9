"""Phantom chest X-ray generator (``cxrkit synth``): a labelled dataset in NIH ChestX-ray14 layout.

Research software, not a medical device: the images are drawings, not patients.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {"dataset": ["SynthSummary", "generate_dataset"], "phantom": ["FINDINGS"]},
)
