"""Every loader on real files (the real_root fixture: skipped when no real data is available) and on synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from study.data import RECORDING_COLUMNS, assign_validation, load_dataset, summarize
from study.data.pascal import match_key


def _inspect_json(dataset: str, root) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "study.data", "inspect", dataset, str(root), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@pytest.mark.real_data
def test_physionet_real_counts(real_root):
    summary = _inspect_json("physionet2016", real_root / "physionet2016")
    for key in ("recordings", "labels", "splits", "sample_rates", "duration_s", "duplicates", "problems"):
        assert key in summary
    assert summary["recordings"] == 3240
    assert summary["labels"] == {"abnormal": 665, "normal": 2575}
    assert summary["splits"] == {"test": 297, "train": 2943}
    assert summary["train_records_after_removing_test"] == 2943
    assert summary["sample_rates"] == {"2000": 3240}
    assert summary["duplicates"] == [] and summary["problems"] == []
    assert 5.3 < summary["duration_s"]["min"] < 5.31 and 121 < summary["duration_s"]["max"] < 123


@pytest.mark.real_data
def test_pascal_real_matches_every_labelled_row(real_root):
    summary = _inspect_json("pascal", real_root / "pascal")
    # the whole release: 832 files, 585 of them labelled (set_a 124 at 44.1 kHz, set_b 461 at 4 kHz)
    assert summary["csv_rows"]["labelled_rows"] == summary["csv_rows"]["matched"] == 585
    assert summary["csv_rows"]["unlabelled_rows"] == 832 - 585
    assert summary["recordings"] == 585 and summary["problems"] == []
    assert summary["label_mapping"] == "paper"
    # set_b's file names carry the patient: 461 labelled recordings of 166 patients, up to 7 each (the clusters
    # the analysis resamples); set_a's recordings have no patient and are each their own cluster
    table = load_dataset("pascal", real_root / "pascal").table
    set_b = table[table["source"] == "set_b"]
    assert set_b["group"].nunique() == 166 and set_b["group"].value_counts().max() == 7
    assert table.loc[table["source"] == "set_a", "group"].isna().all()
    assert summary["sample_rates"] == {"4000": 461, "44100": 124}
    clinical = load_dataset("pascal", real_root / "pascal", mapping="clinical")
    assert summary["labels"]["artifact"] == 40
    assert len(clinical.table) == 585 - summary["labels"]["artifact"]
    assert clinical.info["label_mapping"] == "clinical"


@pytest.mark.real_data
def test_icbhi_real_cycles(real_root):
    ds = load_dataset("icbhi2017", real_root / "icbhi2017")
    assert ds.table["path"].nunique() == 10 and len(ds.table) == 97
    assert set(ds.table["label"]) <= {0, 1, 2, 3}
    assert (ds.table["end_s"] > ds.table["start_s"]).all()
    # train and test share no recording; patients shared are reported
    by_split = {split: set(paths) for split, paths in ds.table.groupby("split")["path"]}
    assert not (by_split["train"] & by_split["test"])
    assert "patients_in_train_and_test" in ds.info


def test_pascal_name_matching():
    assert match_key("set_a/__201012172010.wav") == match_key("Aunlabelledtest__201012172010.wav")
    assert match_key("set_b/Btraining_normal_103_1305031931979_B.wav") == match_key("normal__103_1305031931979_B.wav")
    assert match_key("set_b/Btraining_murmur_Btraining_noisymurmur_135_1306428972976_A.wav") == match_key(
        "murmur_noisymurmur_135_1306428972976_A.wav"
    )
    assert match_key("set_b/Bunlabelledtest_103_1305031931979_A.wav") != match_key("normal__103_1305031931979_A.wav")


def test_synthetic_datasets_load_with_real_loaders(synth_root):
    physionet = load_dataset("physionet2016", synth_root / "physionet2016")
    table = physionet.table
    assert list(table.columns[: len(RECORDING_COLUMNS)]) == list(RECORDING_COLUMNS)
    assert {"train", "test"} == set(table["split"])
    assert table["sample_rate"].eq(2000).all()
    assert len(physionet.duplicates) >= 1  # the generator plants an exact duplicate pair
    pascal = load_dataset("pascal", synth_root / "pascal")
    assert pascal.info["csv_rows"]["labelled_rows"] == pascal.info["csv_rows"]["matched"] > 0
    assert set(pascal.table["source"]) == {"set_a", "set_b"}
    icbhi = load_dataset("icbhi2017", synth_root / "icbhi2017")
    assert set(icbhi.table["split"]) == {"train", "test"}
    assert icbhi.table.groupby("path").size().min() >= 1
    assert summarize(icbhi)["recordings"] == icbhi.table["path"].nunique()


def test_validation_split_per_source_balanced(synth_root):
    table = load_dataset("physionet2016", synth_root / "physionet2016").table
    split = assign_validation(table, fraction=0.2, seed=3)
    val = split[split["split"] == "val"]
    assert len(val) > 0
    counts = val.groupby(["source", "label"]).size().unstack(fill_value=0)
    assert (counts[0] == counts[1]).all()  # label-balanced within every source
    assert (split["split"] == "test").equals(table["split"] == "test")  # the test set is untouched
    again = assign_validation(table, fraction=0.2, seed=3)
    assert again["split"].equals(split["split"])  # fixed seed, same split
    other = assign_validation(table, fraction=0.2, seed=4)
    assert not other["split"].equals(split["split"])
    stratified = assign_validation(table, fraction=0.2, seed=3, method="stratified")
    share = stratified.loc[stratified["split"] == "val", "label"].mean()
    assert abs(share - table.loc[table["split"] == "train", "label"].mean()) < 0.1
    with pytest.raises(ValueError, match="validation method"):
        assign_validation(table, method="random")


def test_validation_split_keeps_groups_together():
    import pandas as pd

    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(40)], 3)
    table = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(120)],
            "group": groups,
            "source": "s",
            "binary_label": np.repeat(rng.integers(0, 2, 40), 3),
            "split": "train",
        }
    )
    table["label"] = table["binary_label"]
    for method in ("stratified", "per_source_balanced"):
        split = assign_validation(table, fraction=0.3, seed=0, method=method)
        assert (split["split"] == "val").any()
        assert (split.groupby("group")["split"].nunique() == 1).all(), method
