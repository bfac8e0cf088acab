"""Shared fixtures: an isolated cache, the real datasets (materialized once), a synthetic set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/audiofuse."""
    os.environ["AUDIOFUSE_CACHE"] = str(tmp_path_factory.mktemp("audiofuse-cache"))
    # the `ray` command of this interpreter's environment, also when the venv is not activated
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real datasets laid out by ../shared/data/materialize.py (skipped when absent)."""
    if not (SHARED_DATA / "materialize.py").is_file():
        pytest.skip(
            f"real data not available: {SHARED_DATA} is absent (it ships only with the project's shared folder)"
        )
    dest = Path(os.environ.get("AUDIOFUSE_REAL_DATA", Path.home() / ".cache" / "audiofuse-test-data"))
    subprocess.run([sys.executable, str(SHARED_DATA / "materialize.py"), str(dest)], check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session")
def synth_root(isolated_cache) -> Path:
    """The built-in synthetic PhysioNet, PASCAL and ICBHI datasets (what `study.run` uses by default)."""
    from study.synthetic import default_data_root

    return default_data_root()
