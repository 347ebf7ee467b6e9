"""cxrkit: multilabel disease detection on chest X-rays.

Research software, not a medical device: outputs must not be used for diagnosis.
"""

__version__ = "0.1.0"
