"""Scoring a finished study's checkpoints on new data without training (python -m study.evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from study.config import load_space
from study.evaluate import evaluate_study, main, parse_eval_set
from study.train import train_and_evaluate
from study.trial import save_trial
from study.trial_data import prepare_data


@pytest.fixture(scope="module")
def tiny_study(synth_root, tmp_path_factory):
    """One trained smoke trial (fusion, 1 epoch) in study.run's file layout."""
    torch.set_num_threads(1)
    config = load_space("smoke").trial_configs(
        {"model.architecture": "fusion", "seed": 0, "train.max_epochs": 1, "data.max_eval": 16}
    )[0]
    data = prepare_data(config, synth_root, progress=False, n_jobs=1)
    result = train_and_evaluate(config, data, trial_id="t0")
    out = tmp_path_factory.mktemp("evaluate") / "study"
    save_trial(out / "trials" / "t0", config, result, data.info, "t0")
    pd.DataFrame(
        [{"trial_id": "t0", "config/seed": 0, "config/model.architecture": "fusion", "threshold": result.threshold}]
    ).to_parquet(out / "trials.parquet", index=False)
    result.predictions.to_parquet(out / "predictions.parquet", index=False)
    (out / "study.json").write_text(json.dumps({"space": {"name": "tiny", "study": "heart"}}))
    return out, data


def test_eval_set_specs():
    assert parse_eval_set("pascal:/tmp")[:2] == ("pascal@tmp", "pascal")
    assert parse_eval_set("mine=pascal:/tmp")[0] == "mine"
    with pytest.raises(ValueError, match="expected \\[NAME=\\]DATASET:ROOT"):
        parse_eval_set("cats:/tmp")
    with pytest.raises(ValueError, match="does not exist"):
        parse_eval_set("pascal:/nowhere/at/all")


def test_scores_a_new_dataset_without_training_and_is_idempotent(tiny_study, synth_root, tmp_path):
    out, data = tiny_study
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


def test_the_wrong_task_is_refused_and_nothing_written(tiny_study, synth_root, capsys):
    out, _ = tiny_study
    before = (out / "predictions.parquet").read_bytes()
    code = main([str(out), "--eval-set", f"icbhi2017:{synth_root / 'icbhi2017'}", "--no-report"])
    assert code == 2
    error = capsys.readouterr().err
    assert "classes, but trial t0 is a binary (heart) model" in error and error.count("\n") == 1
    assert (out / "predictions.parquet").read_bytes() == before
