"""--track: every trial's settings (flat, by name), per-epoch and final metrics, and the study's report reach
TensorBoard, MLflow (its SQLite store in the study folder) and Weights & Biases (offline), through Ray Tune's
own logger callbacks; Tune's own readers show the settings by name too. No network."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest
from tensorboardX.proto import event_pb2, plugin_hparams_pb2

from study import run as run_module
from study.tracking import check_trackers
from study.trainable import trainable

SMALL = ["--set", "seed=[0]", "--set", "train.max_epochs=2"]  # a waveform and a fusion trial


def _events(folder: Path) -> list:
    """Every event of the TensorBoard event files under ``folder`` (TFRecord framing read by hand)."""
    events = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12 : offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


def _fusion_trial(out: Path) -> pd.Series:
    trials = pd.read_parquet(out / "trials.parquet")
    return trials[trials["config/model.architecture"] == "fusion"].iloc[0]


@pytest.fixture(scope="module")
def tracked(synth_root, tmp_path_factory):
    """The smoke space cut to one seed, tracked by all three trackers."""
    out = tmp_path_factory.mktemp("tracked") / "study"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
            env.delenv(name, raising=False)
        argv = ["--space", "smoke", "--out", str(out), "--data-root", str(synth_root), "--verbose", "0", *SMALL]
        assert run_module.main([*argv, "--track", "tensorboard", "--track", "mlflow", "--track", "wandb"]) == 0
    return out


@pytest.mark.slow
def test_tensorboard_holds_the_hparams_by_name_and_the_report(tracked):
    trial_dir = tracked / "tune" / "run-1" / f"trial_{_fusion_trial(tracked)['trial_id']}"
    hparams, scalars = {}, set()
    for event in _events(trial_dir):
        for value in event.summary.value:
            scalars.add(value.tag)
            if value.tag == "_hparams_/session_start_info":
                data = plugin_hparams_pb2.HParamsPluginData()
                data.ParseFromString(value.metadata.plugin_data.content)
                hparams = dict(data.session_start_info.hparams)
    assert set(hparams) == {"model.architecture", "seed"}  # the grid's settings, by their names
    assert hparams["model.architecture"].string_value == "fusion"
    assert {"ray/tune/kept_val_roc_auc", "ray/tune/physionet2016_test/roc_auc"} <= scalars  # TensorBoard's ":" -> "_"
    texts = {v.tag for e in _events(tracked / "tune" / "report") for v in e.summary.value}
    assert {"report/text_summary", "claims/text_summary"} <= texts


@pytest.mark.slow
def test_mlflow_holds_each_trial_and_the_report_in_the_study_folder(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    trial = _fusion_trial(tracked)
    run = runs[f"{trial['trial_id']} architecture=fusion seed=0"]
    assert run.data.params["model.fusion"] == "concat" and run.data.params["train.lr"] == str(trial["config/train.lr"])
    for metric in ("physionet2016:test/roc_auc", "pascal/mcc", "val/balanced_accuracy"):
        assert run.data.metrics[metric] == pytest.approx(trial[metric])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "kept_val_roc_auc")][:2] == [1, 2]
    report = runs["report"]
    artifacts = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"report.md", "summary.json", "tables"} <= artifacts
    assert Path(report.info.artifact_uri.removeprefix("file://")).is_relative_to(tracked / "mlartifacts")


def _wandb_records(path: Path):
    """The records of an offline W&B run file (run-ID.wandb): LevelDB's log format, 32 KiB blocks of
    chunks (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last) after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, offset, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a chunk header is padding
            offset += 32768 - offset % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_run(path: Path) -> dict:
    """An offline run's name, config and summary (values as JSON)."""
    run = {"config": {}, "summary": {}}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"] = record.run.display_name
            run["config"].update({item.key: item.value_json for item in record.run.config.update})
        elif kind == "config":
            run["config"].update({item.key: item.value_json for item in record.config.update})
        elif kind == "summary":  # a name with "/" arrives as its parts
            run["summary"].update(
                {item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update}
            )
    return run


@pytest.mark.slow
def test_wandb_offline_holds_each_trial_and_the_report(tracked):
    runs = {r["name"]: r for r in map(_wandb_run, sorted((tracked / "wandb").glob("offline-run-*/run-*.wandb")))}
    trial = _fusion_trial(tracked)
    run = runs[f"{trial['trial_id']} architecture=fusion seed=0"]
    assert json.loads(run["config"]["model.fusion"]) == "concat"
    for metric in ("physionet2016:test/roc_auc", "pascal/mcc", "kept_val_roc_auc"):
        assert json.loads(run["summary"][metric]) == pytest.approx(trial[metric])
    report = runs["smoke report"]["summary"]
    assert json.loads(report["report"]) == (tracked / "report.md").read_text()
    assert {"claims", "notes"} <= set(report)


@pytest.mark.slow
def test_tunes_readers_show_the_settings_by_name(tracked):
    from ray import tune

    frame = tune.ExperimentAnalysis(str(tracked / "tune" / "run-1")).dataframe()
    assert sorted(frame["config/model.architecture"]) == ["fusion", "waveform"] and "config/train.lr" in frame
    results = tune.Tuner.restore(str(tracked / "tune" / "run-1"), trainable=trainable).get_results()
    assert {r.config["model.architecture"] for r in results} == {"fusion", "waveform"}
    assert set(results.get_dataframe()["config/seed"]) == {0}


def test_an_unknown_tracker_or_a_missing_client_is_refused_in_one_line(monkeypatch):
    assert check_trackers(["mlflow", "tensorboard", "mlflow"]) == ["mlflow", "tensorboard"]
    with pytest.raises(ValueError, match=r"^--track must be one of \['tensorboard', 'mlflow', 'wandb'\], got 'comet'$"):
        check_trackers(["comet"])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"^--track wandb needs the wandb package: pip install .*\[track\]'$"):
        check_trackers(["wandb"])
