"""Duplicate audio between a trial's training data and its evaluation sets, and inside one
evaluation set: removed (or an error), recorded, and scored once as one cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from study.config import ADDED_SETTINGS, DataConfig, TrialConfig, data_key_of, load_space, trial_id_of
from study.data import load_dataset
from study.data.synth import write_synthetic
from study.data.table import audio_clusters
from study.trial_data import describe_duplicates, handle_duplicates, prepare_data


def _rows(specs: list[tuple]) -> pd.DataFrame:
    """(id, group, audio_hash, split) → a minimal recording table, one file per id."""
    frame = pd.DataFrame(specs, columns=["id", "group", "audio_hash", "split"])
    frame["group"] = frame["group"].astype("string")
    frame["path"] = "/data/" + frame["id"] + ".wav"
    frame["label"] = 0
    frame["source"] = "s"
    return frame


def test_audio_clusters_join_patients_through_identical_audio():
    table = _rows(
        [
            ("r1", "p1", "h1", "test"),
            ("r2", "p1", "h2", "test"),  # p1's other recording
            ("r3", "p2", "h1", "test"),  # same audio as r1, another patient
            ("r4", "p2", "h4", "test"),
            ("r5", None, "h5", "test"),  # alone, no patient: stays without a group
            ("r6", None, "h4", "test"),  # same audio as r4, no patient
            ("r7", "p3", "h7", "test"),  # alone, keeps its patient
        ]
    )
    clusters = audio_clusters(table)
    assert list(clusters[:4]) == ["p1+p2+r6"] * 4 and clusters[5] == "p1+p2+r6"
    assert pd.isna(clusters[4]) and clusters[6] == "p3"


def test_copies_inside_an_evaluation_set_count_once_as_one_cluster():
    table = _rows([("t1", None, "x", "train"), ("t2", None, "y", "val")])
    evals = {
        "pascal": _rows(
            [("b", "p1", "h1", "test"), ("a", "p2", "h1", "test"), ("c", "p1", "h3", "test"), ("d", None, "h4", "test")]
        )
    }
    out_table, out_evals, info = handle_duplicates(table, evals, "remove")
    assert out_table.equals(table)  # nothing of the evaluation set is in training
    rows = out_evals["pascal"].set_index("id")
    assert sorted(rows.index) == ["a", "c", "d"]  # the copy with the smallest id is kept
    assert rows.at["a", "group"] == rows.at["c", "group"] == "p1+p2"  # one cluster with p1's other recording
    assert pd.isna(rows.at["d", "group"])
    assert info["dropped_from_eval"] == {"pascal": {"b": "a"}} and info["duplicates_dropped_from_eval"] == 1
    assert "dropped 1 copy(ies)" in describe_duplicates(info)[0]
    _, kept_evals, kept_info = handle_duplicates(table, evals, "keep")
    assert len(kept_evals["pascal"]) == 4 and kept_info["dropped_from_eval"] == {}


def test_training_copies_of_evaluation_audio_removed_or_refused():
    table = _rows(
        [
            ("t1", None, "h1", "train"),
            ("t2", None, "h2", "val"),
            ("t3", None, "h3", "train"),
            ("e1", None, "h2", "test"),
        ]
    )
    evals = {"ds:test": table[table["split"] == "test"], "other": _rows([("o1", None, "h1", "test")])}
    out, _, info = handle_duplicates(table, evals, "remove")
    assert sorted(out["id"]) == ["e1", "t3"]
    assert info["removed_from_training"] == [
        {"id": "t1", "split": "train", "same_as": ["other:o1"]},
        {"id": "t2", "split": "val", "same_as": ["ds:test:e1"]},
    ]
    assert info["duplicates_removed_from_training"] == 1 and info["duplicates_removed_from_validation"] == 1
    line = describe_duplicates(info)[0]
    assert line.startswith("data: removed 2 training/validation recording(s) whose audio is also in ds:test, other")
    with pytest.raises(ValueError, match=r"/data/t1.wav \(train\) = /data/o1.wav \(other:o1\)"):
        handle_duplicates(table, evals, "error")
    kept, _, listed = handle_duplicates(table, evals, "keep")
    assert kept.equals(table) and len(listed["listed_in_training"]) == 2
    assert listed["duplicates_removed_from_training"] == 0


# ---------------------------------------------------------------- planted in the real layouts


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A small synthetic PhysioNet + PASCAL in their real layouts with three planted copies:
    a PhysioNet test record's audio over a training record of its database, a PhysioNet
    training record's audio over a PASCAL file, and one PASCAL set_b file over another."""
    root = tmp_path_factory.mktemp("planted")
    write_synthetic(root, seed=2, physionet=60, pascal=16, datasets=("physionet2016", "pascal"))
    physionet = load_dataset("physionet2016", root / "physionet2016").table
    pascal = load_dataset("pascal", root / "pascal").table
    test = physionet[physionet["split"] == "test"].iloc[0]
    train = physionet[(physionet["split"] == "train") & (physionet["source"] == test["source"])]
    over_test = train.iloc[0]
    donor = physionet[(physionet["split"] == "train") & (physionet["id"] != over_test["id"])].iloc[-1]
    set_b = pascal[pascal["source"] == "set_b"].sort_values("id")
    over_pascal = set_b.iloc[0]
    first, second = set_b.iloc[1], set_b.iloc[2]
    assert first["group"] != second["group"]
    shutil.copyfile(test["path"], over_test["path"])
    shutil.copyfile(donor["path"], over_pascal["path"])
    shutil.copyfile(first["path"], second["path"])
    return {
        "root": root,
        "test": test,
        "over_test": over_test,
        "donor": donor,
        "over_pascal": over_pascal,
        "first": first,
        "second": second,
    }


def _config(**overrides) -> TrialConfig:
    config = load_space("smoke").trial_configs({"model.architecture": "waveform", "seed": 0})[0]
    settings = {"data.max_train": None, "data.max_eval": None, "data.validation_minority_cap": 1.0}
    return config.with_settings({**settings, **overrides})


def test_planted_duplicates_removed_recorded_and_clustered(planted, capsys):
    data = prepare_data(_config(), planted["root"], progress=False, n_jobs=1)
    training = set(data.train.table["id"]) | set(data.val.table["id"])
    assert planted["over_test"]["id"] not in training  # the training copy of a test record is gone
    assert planted["donor"]["id"] not in training  # the training copy of a PASCAL recording is gone
    assert planted["test"]["id"] in set(data.evals["physionet2016:test"].table["id"])  # evaluation copies stay
    pascal = data.evals["pascal"].table.set_index("id")
    assert planted["over_pascal"]["id"] in pascal.index
    first, second = sorted([planted["first"]["id"], planted["second"]["id"]])
    assert first in pascal.index and second not in pascal.index  # counted once
    assert pascal.at[first, "group"] == "+".join(sorted([planted["first"]["group"], planted["second"]["group"]]))

    info = data.info["duplicates"]
    assert {r["id"]: r["same_as"] for r in info["removed_from_training"]} == {
        planted["over_test"]["id"]: [f"physionet2016:test:{planted['test']['id']}"],
        planted["donor"]["id"]: [f"pascal:{planted['over_pascal']['id']}"],
    }
    removed = data.info["duplicates_removed_from_training"] + data.info["duplicates_removed_from_validation"]
    assert removed == 2
    assert info["dropped_from_eval"] == {"pascal": {second: first}}
    assert data.info["duplicates_dropped_from_eval"] == 1 and data.info["duplicates_train_val"] == 0
    check = data.info["split_check"]["physionet2016"]
    assert check["same_audio_in_train_and_test"] == []  # by content, not only by path
    out = capsys.readouterr().out
    assert "data: removed 2 training/validation recording(s) whose audio is also in pascal, physionet2016:test" in out
    # the cluster reaches predictions.parquet through the evaluation set's table
    from study.train import prediction_frame

    frame = prediction_frame("t", "pascal", data.evals["pascal"], data.evals["pascal"].labels.numpy() * 0.5)
    assert frame.set_index("recording_id").at[first, "group"] == pascal.at[first, "group"]


def test_planted_duplicates_stop_the_run_with_error(planted):
    with pytest.raises(ValueError, match="data.duplicates=error") as caught:
        prepare_data(_config(**{"data.duplicates": "error"}), planted["root"], progress=False, n_jobs=1)
    message = str(caught.value)
    for key in ("over_test", "test", "donor", "over_pascal"):
        assert str(Path(planted[key]["path"])) in message, key


def test_keep_leaves_planted_duplicates_and_lists_them(planted):
    data = prepare_data(_config(**{"data.duplicates": "keep"}), planted["root"], progress=False, n_jobs=1)
    training = set(data.train.table["id"]) | set(data.val.table["id"])
    assert planted["over_test"]["id"] in training
    assert len(data.info["duplicates"]["listed_in_training"]) == 2
    check = data.info["split_check"]["physionet2016"]
    assert check["same_audio_in_train_and_test"] == [[planted["over_test"]["id"], planted["test"]["id"]]]


# ---------------------------------------------------------------- settings


def test_duplicates_setting_is_validated():
    assert DataConfig().duplicates == "remove"
    with pytest.raises(ValueError, match="data.duplicates"):
        DataConfig(duplicates="drop")


def test_settings_added_later_keep_old_ids_at_their_old_values():
    config = _config().flat
    old = {k: v for k, v in config.items() if k not in ADDED_SETTINGS}  # a config written before them
    assert TrialConfig.from_flat(old).data.duplicates == "keep"
    assert TrialConfig.from_flat(old).data.validation_minority_cap == 0.5
    assert TrialConfig.from_flat(old).flat == old and TrialConfig.from_flat(old).trial_id == trial_id_of(old)
    pinned = {**config, **ADDED_SETTINGS}
    assert trial_id_of(pinned) == trial_id_of(old) and data_key_of(pinned) == data_key_of(old)
    assert trial_id_of(config) != trial_id_of(old) and data_key_of(config) != data_key_of(old)


def test_a_study_older_than_the_settings_continues_only_with_their_old_values(tmp_path):
    import json

    from study.config import SpaceError
    from study.results import STUDY_FILE
    from study.state import check_added_settings, load_study_state

    space = load_space("smoke")
    old = {"space": {**space.resolved(), "overrides": {}}, "experiments": [], "started": "then"}
    (tmp_path / STUDY_FILE).write_text(json.dumps(old))
    state = load_study_state(space, tmp_path, {}, resume=True, extend=False)
    with pytest.raises(SpaceError, match="--set data.duplicates=keep"):
        check_added_settings(tmp_path, state, space.trial_configs())
    state = load_study_state(space, tmp_path, dict(ADDED_SETTINGS), resume=True, extend=False)
    check_added_settings(tmp_path, state, space.trial_configs(dict(ADDED_SETTINGS)))  # accepted, same ids as before
    fresh = load_study_state(space, tmp_path / "new", {}, resume=False, extend=False)
    check_added_settings(tmp_path, fresh, space.trial_configs())  # a new study knows the settings
    assert fresh["added_settings"] == sorted(ADDED_SETTINGS)


def test_duplicate_counts_reach_trials_parquet(tmp_path):
    import json

    from study.results import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE, collect_trials, write_run_record

    folder = tmp_path / "trials" / "t1"
    folder.mkdir(parents=True)
    data = {"duplicates": {"removed_from_training": [{"id": "a0001"}]}, "duplicates_removed_from_training": 1}
    metrics = {"metrics": {"pascal": {"roc_auc": 0.5}}, "epochs": 1, "best_epoch": 1, "threshold": 0.5}
    metrics.update({"wall_time_s": 1.0, "history": [], "data": data})
    (folder / METRICS_FILE).write_text(json.dumps(metrics))
    (folder / CONFIG_FILE).write_text(json.dumps({"seed": 0}))
    write_run_record(folder, {"trial_id": "t1", "node_id": "n", "node_ip": "ip", "hostname": "h", "resumed_at": []})
    pd.DataFrame({"trial_id": ["t1"]}).to_parquet(folder / PREDICTIONS_FILE)
    trials, _ = collect_trials(tmp_path / "trials")
    assert trials.loc[0, "data/duplicates_removed_from_training"] == 1
    assert "data/duplicates" not in trials


def test_duplicates_command_counts_within_across_and_removed(planted, capsys):
    from study.data.__main__ import main

    assert main(["duplicates", str(planted["root"]), "--set", "data.validation_minority_cap=1"]) == 0
    out = capsys.readouterr().out
    assert "physionet2016: 2 duplicate group(s) within it" in out  # the planted copy and the generator's pair
    assert f"{planted['over_test']['id']} = {planted['test']['id']}" in out
    assert "pascal: 1 duplicate group(s) within it" in out
    assert "physionet2016 and pascal: 1 duplicate group(s) across them" in out
    assert f"pascal:{planted['over_pascal']['id']} = physionet2016:{planted['donor']['id']}" in out
    assert "2 training and 0 validation recording(s) removed, 1 copy(ies) dropped inside evaluation sets" in out
