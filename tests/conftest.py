"""Shared fixtures: an isolated cache, the real datasets (materialized once), a synthetic set, a trained trial."""

from __future__ import annotations

import json
import os
import shutil
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


@pytest.fixture(scope="session")
def trained_study_template(synth_root, tmp_path_factory):
    """One trained smoke trial (fusion, 1 epoch, 16 recordings per evaluation set) in study.run's file layout.

    Trained once per test session; tests take a private copy through the ``trained_study`` fixture.
    Returns (folder, the trial's TrialData).
    """
    import pandas as pd

    from study.config import load_space
    from study.train import train_and_evaluate
    from study.trial import save_trial
    from study.trial_data import prepare_data

    config = load_space("smoke").trial_configs(
        {"model.architecture": "fusion", "seed": 0, "train.max_epochs": 1, "data.max_eval": 16}
    )[0]
    data = prepare_data(config, synth_root, progress=False, n_jobs=1)
    result = train_and_evaluate(config, data, trial_id="t0")
    out = tmp_path_factory.mktemp("trained") / "study"
    save_trial(out / "trials" / "t0", config, result, data.info, "t0")
    pd.DataFrame(
        [{"trial_id": "t0", "config/seed": 0, "config/model.architecture": "fusion", "threshold": result.threshold}]
    ).to_parquet(out / "trials.parquet", index=False)
    result.predictions.to_parquet(out / "predictions.parquet", index=False)
    state = {"space": {"name": "tiny", "study": "heart"}, "data_root": str(synth_root)}
    (out / "study.json").write_text(json.dumps(state))
    return out, data


@pytest.fixture
def trained_study(trained_study_template, tmp_path):
    """A private copy of the session's trained trial folder (tests change it), with its TrialData."""
    folder, data = trained_study_template
    return Path(shutil.copytree(folder, tmp_path / "study")), data
