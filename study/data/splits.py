"""Validation splits drawn off the training recordings with a fixed seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

METHODS = ("per_source_balanced", "stratified")


def assign_validation(
    table: pd.DataFrame,
    fraction: float = 0.1,
    seed: int = 0,
    method: str = "per_source_balanced",
    max_minority_share: float = 0.5,
) -> pd.DataFrame:
    """Move a validation split off the train rows; returns a copy with split "val" set.

    Methods
    -------
    per_source_balanced : drawn the way the PhysioNet test set was: within each
        source database, as many normal as abnormal records, ``fraction`` of the
        source's train rows in all, but never more than ``max_minority_share`` of
        the source's minority class (so training keeps most of the rare class).
        Early stopping and thresholds then see the test set's balance rather
        than training-e's 15:1 majority.
    stratified : a plain split stratified by label (and grouped by patient
        where groups are known), ``fraction`` of all train rows.
    Rows of one group (patient) always land on the same side.
    """
    if method not in METHODS:
        raise ValueError(f"validation method must be one of {METHODS}, got {method!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    out = table.copy()
    train = out[out["split"] == "train"]
    units = _units(train)  # one row per group of train rows
    rng = np.random.default_rng(seed)
    if method == "stratified":
        from sklearn.model_selection import train_test_split  # slow import, only needed here

        _, val_units = train_test_split(
            units.index.to_numpy(), test_size=fraction, random_state=seed, stratify=units["label"].to_numpy()
        )
    else:
        val_units = []
        for _, part in units.groupby("source", sort=True):
            by_label = {lab: grp.index.to_numpy() for lab, grp in part.groupby("label")}
            per_class = int(round(fraction * len(part) / max(len(by_label), 1)))
            per_class = min([per_class] + [int(max_minority_share * len(ix)) for ix in by_label.values()])
            for ix in by_label.values():
                val_units.extend(rng.choice(np.sort(ix), size=per_class, replace=False))
    val_groups = set(units.loc[list(val_units), "unit"])
    out.loc[train.index[_unit_of(train).isin(val_groups)], "split"] = "val"
    out.attrs["validation"] = {"method": method, "fraction": fraction, "seed": seed}
    return out


def _unit_of(rows: pd.DataFrame) -> pd.Series:
    return rows["group"].fillna(rows["id"]).astype(str)


def _units(train: pd.DataFrame) -> pd.DataFrame:
    """Groups (patients, else recordings) with their majority label and source."""
    frame = pd.DataFrame({"unit": _unit_of(train), "label": train["binary_label"], "source": train["source"]})
    return frame.groupby("unit", sort=True).agg(label=("label", "max"), source=("source", "first")).reset_index()
