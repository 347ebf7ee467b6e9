"""Dataset parsers, one module each, found through a registry (``cxrkit datasets`` lists them)."""

from cxrkit.datasets import (  # noqa: F401  (register themselves)
    chexpert,
    folder,
    mimic,
    nih,
    padchest,
    vindr,
)
from cxrkit.datasets.base import (
    BASE_COLUMNS,
    DatasetSpec,
    Option,
    Parsed,
    get_dataset,
    list_datasets,
)

__all__ = ["BASE_COLUMNS", "DatasetSpec", "Option", "Parsed", "get_dataset", "list_datasets"]
