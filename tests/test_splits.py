"""The per-source balanced validation split: the cap on a source's minority class, which
sources give validation records, and identical audio kept on one side."""

from __future__ import annotations

import pandas as pd
import pytest

from study.config import DataConfig
from study.data import assign_validation

# PhysioNet 2016 as the real data has it: records outside the paper's test set per database
# (normal, abnormal), and its test records (normal, abnormal); training-f gives no test record.
PHYSIONET_TRAIN = {
    "training-a": (77, 252),
    "training-b": (337, 55),
    "training-c": (4, 20),
    "training-d": (22, 23),
    "training-e": (1909, 130),
    "training-f": (80, 34),
}
PHYSIONET_TEST = {
    "training-a": (40, 40),
    "training-b": (49, 49),
    "training-c": (3, 4),
    "training-d": (5, 5),
    "training-e": (49, 53),
}


def _physionet_like() -> pd.DataFrame:
    rows = []
    for counts, split in ((PHYSIONET_TRAIN, "train"), (PHYSIONET_TEST, "test")):
        for source, (normal, abnormal) in counts.items():
            for label, n in ((0, normal), (1, abnormal)):
                rows += [(f"{source[-1]}-{split}-{label}-{i:04d}", source, label, split) for i in range(n)]
    table = pd.DataFrame(rows, columns=["id", "source", "binary_label", "split"])
    table["label"] = table["binary_label"]
    table["group"] = pd.Series(pd.NA, index=table.index, dtype="string")
    table["path"] = "/data/" + table["id"] + ".wav"
    table["audio_hash"] = table["id"]
    return table


def _val_counts(split: pd.DataFrame) -> dict:
    val = split[split["split"] == "val"]
    counts = val.groupby(["source", "binary_label"]).size().unstack(fill_value=0)
    return {s: (int(r.get(0, 0)), int(r.get(1, 0))) for s, r in counts.iterrows() if r.sum()}


def test_old_rule_gives_the_old_physionet_split():
    split = assign_validation(_physionet_like(), minority_cap=0.5, sources="all", join_duplicates=False)
    assert _val_counts(split) == {
        "training-a": (16, 16),
        "training-b": (20, 20),
        "training-c": (1, 1),
        "training-d": (2, 2),
        "training-e": (65, 65),  # half of training-e's 130 non-test abnormal records
        "training-f": (6, 6),  # though training-f gave no test record
    }


def test_default_caps_the_minority_class_and_skips_sources_without_test_records():
    split = assign_validation(_physionet_like())
    assert _val_counts(split) == {
        "training-a": (16, 16),
        "training-b": (13, 13),  # int(0.25 * 55)
        "training-c": (1, 1),
        "training-d": (2, 2),
        "training-e": (32, 32),  # int(0.25 * 130)
    }
    assert (split["split"] == "test").equals(_physionet_like()["split"] == "test")  # the test set is untouched
    assert split.attrs["validation"]["eligible_sources"] == [f"training-{c}" for c in "abcde"]
    abnormal = split[(split["split"] != "test") & (split["binary_label"] == 1)]
    assert (abnormal["split"] == "val").sum() == 64  # 12 % of the 514, no longer 21 %


def test_every_source_gives_validation_records_when_asked_or_when_there_is_no_test_split():
    table = _physionet_like()
    assert "training-f" in _val_counts(assign_validation(table, sources="all"))
    no_test = table[table["split"] == "train"]
    split = assign_validation(no_test)
    assert set(_val_counts(split)) == set(PHYSIONET_TRAIN)
    assert split.attrs["validation"]["eligible_sources"] == sorted(PHYSIONET_TRAIN)


def test_stratified_ignores_the_source_rule():
    split = assign_validation(_physionet_like(), method="stratified")
    assert "training-f" in _val_counts(split)


def test_identical_audio_lands_on_one_side():
    table = _physionet_like()
    train = table.index[(table["split"] == "train") & (table["source"] == "training-c")]
    table.loc[train, "audio_hash"] = "same"  # every training-c record a copy of one audio
    split = assign_validation(table, minority_cap=1.0)
    assert split.loc[train, "split"].nunique() == 1
    apart = assign_validation(table, minority_cap=1.0, join_duplicates=False)
    assert apart.loc[train, "split"].nunique() == 2


@pytest.mark.parametrize("cap", [0, -0.1, 1.5])
def test_minority_cap_must_lie_in_zero_one(cap):
    with pytest.raises(ValueError, match="minority cap"):
        assign_validation(_physionet_like(), minority_cap=cap)
    with pytest.raises(ValueError, match="data.validation_minority_cap"):
        DataConfig(validation_minority_cap=cap)


def test_validation_settings_are_checked():
    assert DataConfig().validation_minority_cap == 0.25 and DataConfig(validation_minority_cap=1).validation_sources
    with pytest.raises(ValueError, match="data.validation_sources"):
        DataConfig(validation_sources="some")
    with pytest.raises(ValueError, match="validation sources"):
        assign_validation(_physionet_like(), sources="some")
    with pytest.raises(ValueError, match="data.validation_minority_cap"):
        DataConfig(validation_minority_cap="0.3")
