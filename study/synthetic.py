"""The built-in synthetic datasets used when no --data-root is given."""

from __future__ import annotations

from pathlib import Path

from .data.audio import cache_dir

__all__ = ["DEFAULT_SIZES", "default_data_root"]

# Sizes of the default synthetic study data: 400 PhysioNet-like training records, and test and
# PASCAL-like sets of about 300 labelled recordings each, like the real PhysioNet test set, so a
# CPU-scale study resolves ROC-AUC differences of about 0.06 (evaluation is cheap; training is not).
DEFAULT_SIZES = {"physionet": 700, "physionet_test": 300, "pascal": 430, "icbhi": 16}


def default_data_root(seed: int = 0) -> Path:
    """Synthetic PhysioNet, PASCAL and ICBHI folders, written once into the cache."""
    from .data.synth import write_synthetic

    sizes = "-".join(str(v) for v in DEFAULT_SIZES.values())
    root = cache_dir() / "synthetic" / f"seed{seed}-{sizes}"
    write_synthetic(root, seed=seed, **DEFAULT_SIZES)
    return root
