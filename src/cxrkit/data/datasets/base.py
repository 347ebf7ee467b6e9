"""The dataset contract and registry.

A dataset module turns a raw folder, as its owners distribute it, into a :class:`Parsed`
table: one row per image found on disk, the manifest's base columns, any text metadata columns
of the dataset's own (e.g. ``scanner``), one float32 column per finding (1 / 0 / NaN = not
labelled), and optionally an ``official_split`` column.
:func:`cxrkit.data.prepare.prepare` does the rest (splits, leakage check, cache, manifest).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxrkit.errors import did_you_mean

BASE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "patient_id",
    "study_id",
    "view",
    "sex",
    "age",
)

#: metadata columns naming where or on what an image was taken, in the order the shortcut
#: audit picks the first present (``cxrkit.evaluate.audit``); kept by the parsers that have one
SITE_COLUMNS: tuple[str, ...] = ("site", "scanner", "manufacturer", "institution")


@dataclass
class Parsed:
    """A parsed dataset: ``table`` has BASE_COLUMNS + ``metadata`` + ``findings``
    (+ ``official_split``).

    ``metadata`` names optional text columns the dataset's own files provide for every image
    (``""`` = unknown), such as ``scanner``: the manifest keeps them after the base columns, so
    that ``eval --audit`` can stratify by them."""

    table: pd.DataFrame
    findings: list[str]
    label_policy: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)  # e.g. missing_on_disk, conflicts
    metadata: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Option:
    """A dataset-specific ``prepare`` option: becomes ``--<name>`` on the command line and the
    keyword argument ``name`` (dashes -> underscores) of the dataset's ``parse``."""

    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    multiple: bool = False  # accepts several values (``nargs="+"``)
    flag: bool = False  # takes no value: present means True (``action="store_true"``)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its name, the layout it expects, its parser and its options.

    ``parse(root, **options)`` returns a :class:`Parsed`. An optional ``official_split``
    column holds ``train``, ``val``, ``test``, ``trainval`` (to be divided by patient into
    train and val) or ``""`` (no official assignment: drawn by patient with the others).
    """

    name: str
    title: str
    layout: str
    parse: Callable[..., Parsed]
    options: tuple[Option, ...] = ()
    #: Labels from the dataset's own metadata file without the images (``eval --labels``):
    #: a table with ``image_id, patient_id`` (+ metadata) and one column per finding.
    read_labels: Callable[[Path], pd.DataFrame] | None = None


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (module import time)."""
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """Look a dataset up by name; an unknown name answers with the closest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise did_you_mean(name, _REGISTRY, what="dataset") from None


def list_datasets() -> list[DatasetSpec]:
    """All registered datasets, by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def index_files(folders: list[Path], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map file name -> path for the files directly inside ``folders`` (fast, no recursion)."""
    found: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(suffixes) and entry.is_file():
                    found.setdefault(entry.name, Path(entry.path))
    return found
