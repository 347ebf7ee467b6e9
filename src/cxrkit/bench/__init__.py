"""Throughput on the user's own machine, behind ``cxrkit bench``: :mod:`~cxrkit.bench.training`
(cache loader and training step) and :mod:`~cxrkit.bench.inference` (model-only and end-to-end
inference, alternating rounds, medians).

May import every stage package; only the CLI imports it.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {"inference": ["bench_infer"], "training": ["bench_loader", "bench_train"]},
)
