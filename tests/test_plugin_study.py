"""A study on Ray that uses a plugin's fusion head, perturbation and dataset loader (tests/plugins), loaded
with --plugin on the driver and on the workers: all three reach predictions.parquet and the report."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
import yaml

from study import run as run_module
from study.data import load_dataset

pytestmark = pytest.mark.slow
SIZES = {
    "data.max_train": 32,
    "data.max_eval": 12,
    "features.image_size": 32,
    "model.vit_dim": 16,
    "model.vit_depth": 1,
    "model.spec_dense": 16,
    "model.wave_filters": [8, 16, 16],
    "model.wave_dense": 8,
    "model.fusion_dim": 16,
    "train.max_epochs": 2,
    "train.patience": 2,
}


def _data_root(synth_root: Path, root: Path) -> Path:
    """The synthetic PhysioNet set, and a `folders` dataset (normal/, abnormal/) cut from synthetic PASCAL."""
    root.mkdir()
    (root / "physionet2016").symlink_to(synth_root / "physionet2016")
    pascal = load_dataset("pascal", synth_root / "pascal").table
    for label, folder in enumerate(["normal", "abnormal"]):
        (root / "folders" / folder).mkdir(parents=True)
        for path in pascal[pascal["label"] == label]["path"].head(6):
            audio, rate = sf.read(path)
            sf.write(root / "folders" / folder / Path(path).name, audio, rate)
    return root


def test_a_plugins_head_perturbation_and_dataset_run_on_ray_into_predictions_and_report(
    example_plugin, synth_root, tmp_path, monkeypatch
):
    log = tmp_path / "plugin_imports.txt"
    monkeypatch.setenv("AUDIOFUSE_EXAMPLE_PLUGIN_LOG", str(log))  # before Ray starts: its workers inherit it
    space = {
        "name": "plugin_study",
        "study": "heart",
        "fixed": {"model.architecture": "fusion", "data.eval_sets": ["physionet2016:test", "folders"], **SIZES},
        "grid": {"model.fusion": ["concat", "gated_sum"], "seed": [0]},
        "perturbations": [{"name": "clipping", "severities": [1, 5]}],
        "resources": {"cpu": 1, "gpu": 0},
        "compare": {"axis": "model.fusion", "baseline": "concat", "metric": "roc_auc"},
    }
    path = tmp_path / "plugin_study.yaml"
    path.write_text(yaml.safe_dump(space))
    data = _data_root(synth_root, tmp_path / "data")
    out = tmp_path / "study"
    argv = ["--space", str(path), "--data-root", str(data), "--out", str(out), "--verbose", "0"]
    assert run_module.main([*argv, "--plugin", example_plugin]) == 0

    predictions = pd.read_parquet(out / "predictions.parquet")
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    fused = trials.index[trials["config/model.fusion"] == "gated_sum"]
    assert len(fused) == 1 and set(predictions["trial_id"]) == set(trials.index)
    assert {"physionet2016:test", "folders"} == set(predictions["eval_set"])
    assert set(predictions.loc[predictions["eval_set"] == "folders", "recording_id"]) == {
        p.stem for p in (data / "folders").glob("*/*.wav")
    }
    clipped = predictions[predictions["perturbation"] == "clipping"]
    assert set(clipped["severity"]) == {1, 5} and set(clipped["trial_id"]) >= set(fused)
    assert set(predictions.loc[predictions["trial_id"].isin(fused), "ablation"]) >= {
        "waveform=mean",
        "spectrogram=zeros",
    }

    report = (out / "report.md").read_text() + "".join(p.read_text() for p in (out / "tables").glob("*.md"))
    assert "gated_sum" in report and "folders" in report
    assert "clipped at 10%" in report  # the plugin's own label of its severity 5
    # the trials trained in Ray's worker processes (its default_worker.py), which imported the plugin themselves
    imports = [line.split() for line in log.read_text().splitlines()]
    assert [str(os.getpid()), Path(sys.argv[0]).name] in imports  # this driver
    assert {pid for pid, program in imports if program == "default_worker.py"} - {str(os.getpid())}
