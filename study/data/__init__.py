"""Datasets as one recording table: loaders, validation splits, synthetic data.

``load_dataset(name, root)`` reads a dataset with the loader registered as ``name``
(:data:`LOADERS`): built in are PhysioNet 2016, PASCAL, ICBHI 2017 and a CSV manifest,
each from its original on-disk layout; :func:`register_dataset` adds a loader. See
:mod:`study.data.table` for the columns. ``python -m study.data --help`` lists the
command-line tools.
"""

from __future__ import annotations

from pathlib import Path

from . import icbhi, manifest, pascal, physionet  # noqa: F401 - importing them registers their loaders
from .audio import DataError, read_audio
from .splits import assign_validation
from .table import (
    LOADERS,
    RECORDING_COLUMNS,
    LoadedDataset,
    ProblemLog,
    as_loaded,
    recording_row,
    register_dataset,
    summarize,
)


def load_dataset(name: str, root: str | Path, **options) -> LoadedDataset:
    """Load dataset ``name`` (a name of LOADERS) from ``root``; options go to its loader."""
    return as_loaded(name, root, LOADERS.lookup(name)(root, **options))


__all__ = [
    "DataError",
    "LOADERS",
    "LoadedDataset",
    "ProblemLog",
    "RECORDING_COLUMNS",
    "assign_validation",
    "load_dataset",
    "read_audio",
    "recording_row",
    "register_dataset",
    "summarize",
]
