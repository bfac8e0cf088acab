"""The built-in synthetic datasets used when no --data-root is given."""

from __future__ import annotations

from pathlib import Path

from .data.audio import cache_dir

# Sizes of the default synthetic study data: big enough for a CPU-scale study
# to resolve differences, small enough to generate and featurize in a minute.
DEFAULT_SIZES = {"physionet": 400, "pascal": 60, "icbhi": 16}


def default_data_root(seed: int = 0) -> Path:
    """Synthetic PhysioNet, PASCAL and ICBHI folders, written once into the cache."""
    from .data.synth import write_synthetic

    sizes = "-".join(str(v) for v in DEFAULT_SIZES.values())
    root = cache_dir() / "synthetic" / f"seed{seed}-{sizes}"
    write_synthetic(root, seed=seed, **DEFAULT_SIZES)
    return root
