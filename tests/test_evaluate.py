"""Scoring a finished study's checkpoints on new data without training (python -m study.evaluate)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import psutil
import pytest
import ray
import torch

from study.evaluate import evaluate_study, main, parse_eval_set
from study.results import CHECKPOINT_FILE, CONFIG_FILE


def test_eval_set_specs():
    assert parse_eval_set("pascal:/tmp")[:2] == ("pascal@tmp", "pascal")
    assert parse_eval_set("mine=pascal:/tmp")[0] == "mine"
    with pytest.raises(ValueError, match="expected \\[NAME=\\]DATASET:ROOT"):
        parse_eval_set("cats:/tmp")
    with pytest.raises(ValueError, match="does not exist"):
        parse_eval_set("pascal:/nowhere/at/all")


def test_scores_a_new_dataset_without_training_and_is_idempotent(trained_study, synth_root):
    out, data = trained_study
    before = pd.read_parquet(out / "predictions.parquet")
    new = evaluate_study(out, [f"extra=pascal:{synth_root / 'pascal'}"], report=False)
    pascal_all = len(set(new["recording_id"]))
    assert pascal_all > data.evals["pascal"].n_items  # the whole set, not the trial's capped 16
    assert set(new["eval_set"]) == {"extra"} and len(new) == pascal_all * 5  # intact + 4 branch ablations
    # the recordings the trial scored itself get the same probabilities from the re-loaded checkpoint
    own = before[(before["eval_set"] == "pascal") & (before["ablation"] == "none")].set_index("recording_id")["prob"]
    again = new[new["ablation"] == "none"].set_index("recording_id")["prob"].loc[own.index]
    np.testing.assert_allclose(again, own, atol=1e-5)
    after = pd.read_parquet(out / "predictions.parquet")
    assert len(after) == len(before) + len(new)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "trials" / "t0" / "predictions.parquet"), after)
    assert json.loads((out / "study.json").read_text())["external_eval_sets"][0]["name"] == "extra"
    evaluate_study(out, [f"extra=pascal:{synth_root / 'pascal'}"], report=False)  # again: replaced, not added
    assert len(pd.read_parquet(out / "predictions.parquet")) == len(after)


def test_the_wrong_task_is_refused_and_nothing_written(trained_study, synth_root, capsys):
    out, _ = trained_study
    before = (out / "predictions.parquet").read_bytes()
    code = main([str(out), "--eval-set", f"icbhi2017:{synth_root / 'icbhi2017'}", "--no-report"])
    assert code == 2
    error = capsys.readouterr().err
    assert "classes, but trial t0 is a binary (heart) model" in error and error.count("\n") == 1
    assert (out / "predictions.parquet").read_bytes() == before


@pytest.fixture
def two_trials(trained_study):
    """The trained study with a second trial, t1, holding t0's checkpoint and settings."""
    out = trained_study[0]
    (out / "trials" / "t1").mkdir()
    for name in (CHECKPOINT_FILE, CONFIG_FILE):
        shutil.copy(out / "trials" / "t0" / name, out / "trials" / "t1" / name)
    trials = pd.read_parquet(out / "trials.parquet")
    pd.concat([trials, trials.assign(trial_id="t1")]).to_parquet(out / "trials.parquet", index=False)
    return out


def _no_ray_left() -> bool:
    """No Ray of this process is connected or running (the Ray study.evaluate started is shut down)."""
    names = {p.name() for p in psutil.Process().children(recursive=True)}
    return not ray.is_initialized() and not names & {"raylet", "gcs_server"}


@pytest.mark.slow  # starts a local Ray
def test_ray_tasks_score_as_the_local_loop_does(two_trials, synth_root, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a Ray of its own, never a cluster `ray start` left running
    spec = [f"extra=pascal:{synth_root / 'pascal'}"]
    local = evaluate_study(two_trials, spec, report=False)  # 2 trials, fewer than RAY_MIN_TRIALS
    assert "scoring 2 trial(s) locally" in capsys.readouterr().out
    on_disk = pd.read_parquet(two_trials / "predictions.parquet")
    remote = evaluate_study(two_trials, spec, report=False, ray_min_trials=2)
    assert re.search(r"scoring 2 trial\(s\) as Ray tasks on a cluster of \d+ CPUs", capsys.readouterr().out)
    assert _no_ray_left()
    assert set(local["trial_id"]) == {"t0", "t1"}
    pd.testing.assert_frame_equal(remote, local, check_exact=False, rtol=0, atol=1e-6)
    # the Ray rows replaced the local ones, in each trial's file and the study's
    pd.testing.assert_frame_equal(
        pd.read_parquet(two_trials / "predictions.parquet"), on_disk, check_exact=False, rtol=0, atol=1e-6
    )
    own_file = pd.read_parquet(two_trials / "trials" / "t1" / "predictions.parquet")
    assert len(own_file) == (local["trial_id"] == "t1").sum()


@pytest.mark.slow  # starts a local Ray
def test_a_failing_ray_task_names_its_trial_and_nothing_is_written(two_trials, synth_root, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "local")
    path = two_trials / "trials" / "t1" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"].popitem()  # a weight missing: the model cannot be rebuilt, on the worker
    torch.save(checkpoint, path)
    before = (two_trials / "predictions.parquet").read_bytes()
    spec = f"extra=pascal:{synth_root / 'pascal'}"
    code = main([str(two_trials), "--eval-set", spec, "--ray-min-trials", "1", "--no-report"])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: trial t1: the model of {path} cannot be rebuilt")
    assert _no_ray_left()
    assert (two_trials / "predictions.parquet").read_bytes() == before
    assert not (two_trials / "trials" / "t1" / "predictions.parquet").exists()
