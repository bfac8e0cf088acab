"""Datasets as one recording table: loaders, validation splits, synthetic data.

``load_dataset(name, root)`` reads PhysioNet 2016, PASCAL, ICBHI 2017 or a CSV
manifest from its original on-disk layout; see :mod:`study.data.table` for the
columns. ``python -m study.data --help`` lists the command-line tools.
"""

from __future__ import annotations

from pathlib import Path

from .audio import DataError, read_audio
from .icbhi import load_icbhi2017
from .manifest import load_manifest
from .pascal import load_pascal
from .physionet import load_physionet2016
from .splits import assign_validation
from .table import RECORDING_COLUMNS, LoadedDataset, summarize

LOADERS = {
    "physionet2016": load_physionet2016,
    "pascal": load_pascal,
    "icbhi2017": load_icbhi2017,
    "manifest": load_manifest,
}


def load_dataset(name: str, root: str | Path, **options) -> LoadedDataset:
    """Load dataset ``name`` (one of LOADERS) from ``root``; options go to its loader."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[name](root, **options)


__all__ = [
    "DataError",
    "LOADERS",
    "LoadedDataset",
    "RECORDING_COLUMNS",
    "assign_validation",
    "load_dataset",
    "read_audio",
    "summarize",
]
