"""Data: from a raw dataset folder to a prepared folder (manifest + uint8 image cache).

``cxrkit prepare``: :mod:`~cxrkit.data.datasets` parses each dataset's own metadata (a
registry: NIH, CheXpert, MIMIC-CXR, VinDr-CXR, PadChest, a plain CSV/folder) into one table
with the canonical findings of :mod:`~cxrkit.data.labels`; :mod:`~cxrkit.data.splits` splits it
by patient (never one patient in two splits); :mod:`~cxrkit.data.cache` decodes each image once
(:mod:`~cxrkit.data.preprocess`) into a memory-mapped cache; :mod:`~cxrkit.data.manifest` is
the file every later stage reads. :mod:`~cxrkit.data.batches` reads batches back from the
cache (the only module here that needs torch); :mod:`~cxrkit.data.synth` draws phantom
datasets in NIH layout.

May import :mod:`cxrkit.io`; never training, evaluation or deployment code.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "batches": ["CacheBatches", "CacheSpec", "cache_spec", "sequential_batches"],
        "cache": ["build_cache", "open_cache"],
        "datasets.base": ["get_dataset", "list_datasets"],
        "labels": ["CANONICAL", "NO_FINDING", "canonical_name", "select_findings"],
        "manifest": ["Manifest", "load_manifest", "write_manifest"],
        "prepare": ["SplitPolicy"],
        "preprocess": ["Clahe", "prepare_image"],
        "splits": ["LeakageError", "check_no_leakage", "stratified_patient_split"],
        "synth.dataset": ["generate_dataset"],
    },
)
