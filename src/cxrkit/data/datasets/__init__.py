"""Dataset parsers, one module each, found through a registry (``cxrkit datasets`` lists them).

Importing this package imports every parser, so that each registers itself in
:mod:`cxrkit.data.datasets.base`; a new dataset is one module here plus one line below.
"""

from cxrkit.data.datasets import (  # noqa: F401  (register themselves)
    chexpert,
    folder,
    mimic,
    nih,
    padchest,
    vindr,
)
from cxrkit.data.datasets.base import (
    BASE_COLUMNS,
    DatasetSpec,
    Option,
    Parsed,
    get_dataset,
    list_datasets,
)

__all__ = ["BASE_COLUMNS", "DatasetSpec", "Option", "Parsed", "get_dataset", "list_datasets"]
