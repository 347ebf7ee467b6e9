"""Dataset parsers, one module each, found through a registry (``cxrkit datasets`` lists them)."""

from cxrkit.datasets import nih  # noqa: F401  (registers itself)
from cxrkit.datasets.base import (
    BASE_COLUMNS,
    DatasetSpec,
    Option,
    Parsed,
    get_dataset,
    list_datasets,
)

__all__ = ["BASE_COLUMNS", "DatasetSpec", "Option", "Parsed", "get_dataset", "list_datasets"]
