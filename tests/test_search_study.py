"""Searches on Ray: each searcher with a scheduler, the Optuna study stored in the study folder where
optuna.load_study opens it, and a killed search resumed into the same Optuna study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import stop_ray_started_under

from study.config import load_space
from study.run import run_study

pytestmark = pytest.mark.slow
SIZES = {
    "data.max_train": 32,
    "data.max_eval": 12,
    "features.image_size": 32,
    "model.vit_dim": 16,
    "model.vit_heads": 2,
    "model.spec_dense": 16,
    "model.wave_filters": [8, 16, 16],
    "model.wave_dense": 8,
    "model.fusion_dim": 16,
    "model.fusion_heads": 2,
}


def _space(tmp_path: Path, search: dict, max_epochs: int = 2) -> Path:
    raw = {
        "name": "search_study",
        "study": "heart",
        "fixed": {
            "model.architecture": "fusion",
            **SIZES,
            "train.max_epochs": max_epochs,
            "train.patience": max_epochs,
        },
        "grid": {"seed": [0]},
        "search": search,
        "resources": {"cpu": 1, "gpu": 0},
        "compare": {"axis": "recipe", "baseline": "default", "metric": "roc_auc"},
    }
    path = tmp_path / "search_study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _optuna_study(out: Path) -> optuna.Study:
    """The search's Optuna study, opened the way the README shows."""
    state = json.loads((out / "study.json").read_text())["search"]["optuna"]
    assert state == {"storage": f"sqlite:///{out.resolve() / 'optuna.db'}", "study_name": "search_study"}
    return optuna.load_study(study_name="search_study", storage=f"sqlite:///{out / 'optuna.db'}")


NUMERIC = {
    "train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
    "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
}


@pytest.mark.parametrize(
    ("searcher", "scheduler", "params", "samples"),
    [
        ("grid", "hyperband", {"model.vit_depth": {"type": "randint", "low": 1, "high": 3}}, 2),
        ("random", "median", NUMERIC, 2),
        ("cmaes", "fifo", NUMERIC, 3),
        ("qmc", "asha", NUMERIC, 2),
    ],
)
def test_each_searcher_with_a_scheduler_runs_into_the_stored_optuna_study(
    searcher, scheduler, params, samples, ray_session, synth_root, tmp_path
):
    search = {"searcher": searcher, "scheduler": scheduler, "params": params}
    if searcher != "grid":
        search["num_samples"] = samples
    if scheduler in ("asha", "median"):
        search["grace_period"] = 1
    out = tmp_path / "study"
    summary = run_study(load_space(_space(tmp_path, search)), out=out, data_root=synth_root, report=False, verbose=0)
    assert summary["failed"] == 0 and summary["search"]["trials"] == samples
    trials = _optuna_study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * samples
    assert all(set(t.params) == set(params) for t in trials)
    if searcher == "grid":
        assert sorted(t.params["model.vit_depth"] for t in trials) == [1, 2]
    search_trials = pd.read_parquet(out / "search" / "trials.parquet")
    for key in params:  # the sampled settings are each search trial's config
        assert sorted(search_trials[f"config/{key}"]) == pytest.approx(sorted(t.params[key] for t in trials))


def test_a_killed_search_resumes_into_the_same_optuna_study(synth_root, tmp_path):
    """The driver is killed once the first sample finished; --resume restores Tune's experiment, whose
    searcher holds the Optuna study in OUT/optuna.db: the first sample is kept, not drawn again."""
    params = {
        "train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
        "model.fusion": {"type": "choice", "values": ["concat", "cross_attention"]},
        "model.fusion_heads": {"type": "choice", "values": [1, 2], "when": {"model.fusion": "cross_attention"}},
    }
    search = {"num_samples": 3, "grace_period": 1, "reduction_factor": 2, "params": params}
    space = _space(tmp_path, search, max_epochs=6)
    out = tmp_path / "study"
    driver_ray = tempfile.mkdtemp(prefix="drv-", dir=os.environ["RAY_TMPDIR"])  # the killed driver's Ray, and no other
    command = [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out)]
    command += ["--data-root", str(synth_root), "--no-report", "--verbose", "0", "--max-concurrent", "1"]
    driver = subprocess.Popen(
        command,
        env={**os.environ, "RAY_TMPDIR": driver_ray},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and first is None:
            if (out / "optuna.db").is_file():
                with sqlite3.connect(out / "optuna.db") as db:
                    done = db.execute("SELECT number FROM trials WHERE state = 'COMPLETE'").fetchall()
                if done:
                    first = _optuna_study(out).trials[done[0][0]]
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert first is not None, "no search sample finished before the deadline"
    time.sleep(1)
    stop_ray_started_under(driver_ray)
    shutil.rmtree(driver_ray)

    summary = run_study(load_space(space), out=out, data_root=synth_root, resume=True, report=False, verbose=0)
    assert summary["failed"] == 0
    study = _optuna_study(out)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 == summary["search"]["trials"]
    kept = study.trials[first.number]
    assert (kept.params, kept.value, kept.state.name) == (first.params, first.value, "COMPLETE")
    for trial in complete:  # the condition holds in the stored study too
        assert ("model.fusion_heads" in trial.params) == (trial.params["model.fusion"] == "cross_attention")
    assert len(pd.read_parquet(out / "search" / "trials.parquet")) == 3
