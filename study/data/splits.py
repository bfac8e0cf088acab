"""Validation splits drawn off the training recordings with a fixed seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .table import audio_clusters

__all__ = ["METHODS", "SOURCES", "assign_validation"]

METHODS = ("per_source_balanced", "stratified")
SOURCES = ("with_test", "all")


def assign_validation(
    table: pd.DataFrame,
    fraction: float = 0.1,
    seed: int = 0,
    method: str = "per_source_balanced",
    minority_cap: float = 0.25,
    sources: str = "with_test",
    join_duplicates: bool = True,
) -> pd.DataFrame:
    """Move a validation split off the train rows; returns a copy with split "val" set.

    Methods
    -------
    per_source_balanced : drawn the way the PhysioNet test set was: within each
        source database, as many normal as abnormal records, ``fraction`` of the
        source's train rows in all, but never more than ``minority_cap`` of the
        source's minority class (so training keeps most of the rare class).
        Early stopping and thresholds then see the test set's balance rather
        than training-e's 15:1 majority. With ``sources="with_test"`` only the
        sources that have test rows give validation rows, as only they gave
        test records (PhysioNet's training-f gives none); when the table has
        no test rows at all (a dataset without a test split) every source is
        eligible, as with ``sources="all"``.
    stratified : a plain split stratified by label (and grouped by patient
        where groups are known), ``fraction`` of all train rows, from every source.

    Rows of one group (patient) always land on the same side; with ``join_duplicates``
    so do rows with identical audio (``audio_hash``) and, transitively, their patients'
    other rows, so no recording has a copy on the other side. ``minority_cap=0.5``,
    ``sources="all"`` and ``join_duplicates=False`` give the split drawn before these
    options existed. ``out.attrs["validation"]`` records the settings and eligible sources.
    """
    if method not in METHODS:
        raise ValueError(f"validation method must be one of {METHODS}, got {method!r}")
    if sources not in SOURCES:
        raise ValueError(f"validation sources must be one of {SOURCES}, got {sources!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if not 0 < minority_cap <= 1:
        raise ValueError(f"validation minority cap must be in (0, 1], got {minority_cap}")
    out = table.copy()
    train = out[out["split"] == "train"]
    unit_of = _unit_of(train, join_duplicates)
    units = _units(train, unit_of)  # one row per group of train rows
    rng = np.random.default_rng(seed)
    eligible = sorted(units["source"].unique())
    if method == "stratified":
        from sklearn.model_selection import train_test_split  # slow import, only needed here

        _, val_units = train_test_split(
            units.index.to_numpy(), test_size=fraction, random_state=seed, stratify=units["label"].to_numpy()
        )
    else:
        with_test = set(out.loc[out["split"] == "test", "source"].dropna())
        if sources == "with_test" and with_test:
            eligible = [s for s in eligible if s in with_test]
        val_units = []
        for _, part in units[units["source"].isin(eligible)].groupby("source", sort=True):
            by_label = {lab: grp.index.to_numpy() for lab, grp in part.groupby("label")}
            per_class = int(round(fraction * len(part) / max(len(by_label), 1)))
            per_class = min([per_class] + [int(minority_cap * len(ix)) for ix in by_label.values()])
            for ix in by_label.values():
                val_units.extend(rng.choice(np.sort(ix), size=per_class, replace=False))
    val_groups = set(units.loc[list(val_units), "unit"])
    out.loc[train.index[unit_of.isin(val_groups)], "split"] = "val"
    out.attrs["validation"] = {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "minority_cap": minority_cap,
        "sources": sources,
        "eligible_sources": [str(s) for s in eligible],
        "join_duplicates": join_duplicates,
    }
    return out


def _unit_of(rows: pd.DataFrame, join_duplicates: bool = False) -> pd.Series:
    if join_duplicates and "audio_hash" in rows:
        return audio_clusters(rows).fillna(rows["id"].astype("string")).astype(str)
    return rows["group"].fillna(rows["id"]).astype(str)


def _units(train: pd.DataFrame, unit_of: pd.Series) -> pd.DataFrame:
    """Groups (patients, else recordings) with their majority label and source."""
    frame = pd.DataFrame({"unit": unit_of, "label": train["binary_label"], "source": train["source"]})
    return frame.groupby("unit", sort=True).agg(label=("label", "max"), source=("source", "first")).reset_index()
