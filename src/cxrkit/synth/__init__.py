"""Phantom chest X-ray generator (``cxrkit synth``): a labelled dataset in NIH ChestX-ray14 layout.

Research software, not a medical device: the images are drawings, not patients.
"""

from cxrkit.synth.dataset import SynthSummary, generate_dataset
from cxrkit.synth.phantom import FINDINGS

__all__ = ["FINDINGS", "SynthSummary", "generate_dataset"]
