"""A finished study's files read into what the reports analyse: configurations and evaluation sets.

Inputs are the files ``study.run`` writes in a study folder: ``study.json``,
``trials.parquet`` (one row per trial: ``config/*`` settings, threshold,
metrics) and ``predictions.parquet`` (one row per trial, evaluation set,
recording and condition: label, source, group, P(abnormal), class
probabilities). A configuration is every ``config/*`` setting except the
seed, replicated over seeds; an evaluation set is the clean predictions
(perturbation "none", severity 0, no branch ablation) of one set as arrays,
restricted to the recordings every trial scored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.stats import auc_kernel, weighted_auc
from study import results
from study.results import CONDITION_COLUMNS, PREDICTIONS_FILE, STUDY_FILE, TRIALS_FILE

__all__ = [
    "REQUIRED_FILES",
    "PREDICTION_COLUMNS",
    "StudyError",
    "setting_text",
    "read_study",
    "Configuration",
    "find_configurations",
    "completeness_problems",
    "EvalSet",
    "build_eval_sets",
    "check_recorded_aucs",
    "TrialHistory",
    "read_histories",
]

REQUIRED_FILES = (STUDY_FILE, TRIALS_FILE, PREDICTIONS_FILE)
# the columns the analysis needs; a study older than perturbations and ablations lacks the others
PREDICTION_COLUMNS = tuple(c for c in results.PREDICTION_COLUMNS if c not in CONDITION_COLUMNS)
_AUC_TOLERANCE = 1e-6  # trials.parquet vs the ROC-AUC recomputed from predictions.parquet


class StudyError(ValueError):
    """The study folder is incomplete or inconsistent; the message names what is missing or differs."""


def setting_text(value) -> str:
    """A setting as text, the same for a value read from parquet, JSON or the command line ("false", "0.3")."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, dict, tuple)) and pd.isna(value):
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    return value if isinstance(value, str) else json.dumps(value)


def read_study(out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """study.json, trials.parquet and predictions.parquet of a study folder; FileNotFoundError names what is missing."""
    out = Path(out)
    state, trials, predictions = results.read_study_files(out)
    if trials.empty or "trial_id" not in trials:
        raise StudyError(f"{out}/trials.parquet holds no trials")
    if "config/seed" not in trials:
        raise StudyError(f"{out}/trials.parquet has no config/seed column, so seeds cannot be told apart")
    absent = [c for c in PREDICTION_COLUMNS if c not in predictions]
    if absent:
        raise StudyError(f"{out}/predictions.parquet lacks the column(s) {absent}")
    if trials["trial_id"].duplicated().any():
        raise StudyError(
            f"trials.parquet lists trial(s) {sorted(trials.loc[trials['trial_id'].duplicated(), 'trial_id'])} twice"
        )
    return state, trials, predictions


@dataclass
class Configuration:
    name: str
    settings: dict  # setting key (no "config/") -> value, as in the trials
    seeds: list  # sorted
    trial_ids: list[str]  # in seed order
    axis_value: str | None  # setting_text of the compare axis value
    others: tuple  # setting_text of every other varying setting: the key that pairs it with its baseline


def find_configurations(trials: pd.DataFrame, axis: str | None, grid: dict) -> tuple[list[Configuration], list[str]]:
    """The configurations of a study and the names of the settings that vary between them.

    A configuration is named by its compare-axis value when that is the only
    setting that varies (settings whose value follows from the axis value count as
    part of it), else by every varying setting ("key=value, ...").
    Raises StudyError when a configuration holds two trials of one seed.
    """
    columns = [c for c in trials.columns if c.startswith("config/") and c != "config/seed"]
    text = pd.DataFrame({c: trials[c].map(setting_text) for c in columns}, index=trials.index)
    axis_column = f"config/{axis}" if axis else None
    varying = [c for c in columns if text[c].nunique() > 1]
    if axis_column in varying:
        # settings that follow from the compare-axis value (a recipe's settings, a searched configuration's
        # hyperparameters) belong to that configuration: they are not axes of their own
        follows = text.groupby(axis_column)[[c for c in varying if c != axis_column]].nunique().le(1).all()
        varying = [axis_column] + [c for c in varying if c != axis_column and not follows[c]]
    named_by_axis = axis_column in text and varying in ([], [axis_column])
    keys = text[varying].agg("\x1f".join, axis=1) if varying else pd.Series("", index=trials.index)
    grid_order = {setting_text(v): k for k, v in enumerate(grid.get(axis, []))} if axis else {}
    configurations = []
    for _, members in trials.groupby(keys, sort=False):
        members = members.assign(_seed=members["config/seed"]).sort_values("_seed")
        duplicated = members["_seed"].duplicated(keep=False)
        first = members.iloc[0]
        values = [text.at[first.name, c] for c in varying]
        settings = {c[len("config/") :]: first[c] for c in columns}
        axis_value = setting_text(first[axis_column]) if axis_column in trials else None
        if named_by_axis:
            name = axis_value
        elif varying:
            name = ", ".join(f"{c[len('config/') :]}={v}" for c, v in zip(varying, values, strict=True))
        else:
            name = "all trials"
        if duplicated.any():
            raise StudyError(
                f"configuration '{name}' has more than one trial for seed(s) "
                f"{sorted(set(members.loc[duplicated, '_seed'].tolist()))}: trials "
                f"{members.loc[duplicated, 'trial_id'].tolist()}"
            )
        others = tuple(v for c, v in zip(varying, values, strict=True) if c != axis_column)
        configurations.append(
            Configuration(name, settings, members["_seed"].tolist(), members["trial_id"].tolist(), axis_value, others)
        )
    configurations.sort(key=lambda c: (grid_order.get(c.axis_value, len(grid_order)), c.others, c.name))
    return configurations, [c[len("config/") :] for c in varying]


def completeness_problems(configurations: list[Configuration], grid: dict, trials: pd.DataFrame) -> list[str]:
    """What a complete study would have and this one lacks: grid points without trials, seeds missing."""
    problems = []
    expected_seeds = (
        sorted(grid["seed"])
        if isinstance(grid.get("seed"), list)
        else sorted({s for c in configurations for s in c.seeds})
    )
    axes = {k: v for k, v in grid.items() if k != "seed" and isinstance(v, list) and f"config/{k}" in trials}
    if axes:
        present = {tuple(setting_text(c.settings[k]) for k in axes) for c in configurations}
        for point in product(*[[setting_text(v) for v in values] for values in axes.values()]):
            if point not in present:
                label = ", ".join(f"{k}={v}" for k, v in zip(axes, point, strict=True))
                problems.append(f"configuration {label}: no trials (expected seeds {expected_seeds})")
    for configuration in configurations:
        lacking = [s for s in expected_seeds if s not in configuration.seeds]
        if lacking:
            problems.append(
                f"configuration '{configuration.name}' lacks seed(s) {lacking} "
                f"(has {configuration.seeds}; the study expects {expected_seeds})"
            )
    return problems


@dataclass
class EvalSet:
    """The clean predictions of one evaluation set (or one source of it), as arrays."""

    name: str
    recordings: np.ndarray  # (n,) recording ids
    labels: np.ndarray  # (n,) 0/1 (heart) or classes 0..K-1 (respiratory)
    sources: np.ndarray  # (n,)
    groups: np.ndarray | None  # (n,) cluster (patient) ids where some patient has several recordings, else None
    trial_ids: list[str]  # one per row of probs
    probs: np.ndarray  # (T, n) P(abnormal)
    class_probs: np.ndarray | None  # (T, n, K) for multi-class studies
    thresholds: np.ndarray  # (T,) validation-chosen thresholds (heart)
    dropped_recordings: int = 0

    @property
    def binary(self) -> np.ndarray:
        return (self.labels > 0).astype(np.int8)

    @property
    def n_pos(self) -> int:
        return int(self.binary.sum())

    def cluster_sizes(self) -> np.ndarray:
        """Recordings per cluster (patient); all ones when every recording is its own cluster."""
        if self.groups is None:
            return np.ones(self.labels.size, dtype=np.int64)
        return np.unique(self.groups, return_counts=True)[1]

    def row_of(self) -> dict[str, int]:
        return {trial_id: k for k, trial_id in enumerate(self.trial_ids)}

    def auc_by_source(self, sources: list[str], *, leave_out: bool = False) -> np.ndarray:
        """ROC-AUC (T, S) of every trial within each source, or on everything but it (``leave_out``); NaN: one class."""
        within = np.stack([self.sources == s for s in sources], axis=1).astype(np.float64)
        return auc_kernel(self.binary, self.probs, 1.0 - within if leave_out else within)

    def subset(self, mask: np.ndarray, name: str) -> EvalSet:
        return EvalSet(
            name,
            self.recordings[mask],
            self.labels[mask],
            self.sources[mask],
            None if self.groups is None else self.groups[mask],
            self.trial_ids,
            self.probs[:, mask],
            None if self.class_probs is None else self.class_probs[:, mask],
            self.thresholds,
        )


def _clean_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    keep = np.ones(len(predictions), dtype=bool)
    if "perturbation" in predictions:
        keep &= predictions["perturbation"].astype(str).to_numpy() == "none"
    if "severity" in predictions:
        keep &= predictions["severity"].to_numpy() == 0
    if "ablation" in predictions:
        keep &= predictions["ablation"].astype(str).to_numpy() == "none"
    return predictions[keep]


def _eval_set_order(trials: pd.DataFrame, names) -> list[str]:
    declared = []
    if "config/data.eval_sets" in trials:
        for value in trials["config/data.eval_sets"].dropna().unique():
            declared += [v for v in (json.loads(value) if isinstance(value, str) else list(value)) if v not in declared]
    return [n for n in declared if n in names] + sorted(n for n in names if n not in declared)


def _trial_info(configurations: list[Configuration]) -> dict[str, tuple]:
    """trial id -> (its configuration's name, its seed)."""
    return {t: (c.name, s) for c in configurations for s, t in zip(c.seeds, c.trial_ids, strict=True)}


def _describe_trial(trial_id: str, trial_info: dict) -> str:
    name, seed = trial_info[trial_id]
    return f"'{name}' seed {seed} ({trial_id})"


def build_eval_sets(
    trials: pd.DataFrame,
    predictions: pd.DataFrame,
    configurations: list[Configuration],
    respiratory: bool,
    problems: list[str],
    notes: list[str],
) -> list[EvalSet]:
    """Arrays per evaluation set; appends what is missing to ``problems`` (and what was done to ``notes``).

    A recording's cluster is its ``group`` in predictions.parquet (patient;
    a recording without one is its own cluster). An evaluation set gets
    groups when some cluster holds several recordings.

    Raises StudyError for what cannot be analysed at all: predictions of
    trials that trials.parquet does not list, duplicate rows, a recording
    with different labels in different trials, or missing thresholds.
    Whether trials.parquet's metrics agree is :func:`check_recorded_aucs`'s
    question: a perturbed condition's predictions are not the ones they were
    computed from.
    """
    clean = _clean_predictions(predictions)
    trial_info = _trial_info(configurations)
    strangers = sorted(set(clean["trial_id"]) - set(trial_info))
    if strangers:
        raise StudyError(
            f"predictions.parquet holds trials that trials.parquet does not list: {strangers[:5]}"
            f"{' …' if len(strangers) > 5 else ''} (are the two files from different runs?)"
        )
    duplicated = clean.duplicated(["trial_id", "eval_set", "recording_id"])
    if duplicated.any():
        row = clean[duplicated].iloc[0]
        raise StudyError(
            f"predictions.parquet has {int(duplicated.sum())} duplicate clean rows, e.g. trial "
            f"{row['trial_id']}, evaluation set '{row['eval_set']}', recording {row['recording_id']}"
        )
    without = sorted(set(trial_info) - set(clean["trial_id"]))
    if without:
        problems.append(
            "no clean predictions at all from trial(s) " + ", ".join(_describe_trial(t, trial_info) for t in without)
        )
    thresholds = trials.set_index("trial_id")["threshold"] if "threshold" in trials else pd.Series(dtype=float)
    class_columns = sorted((c for c in clean.columns if re.fullmatch(r"prob_\d+", c)), key=lambda c: int(c[5:]))
    eval_sets = []
    for name in _eval_set_order(trials, clean["eval_set"].unique()):
        rows = clean[clean["eval_set"] == name]
        scored = set(rows["trial_id"])
        present = [t for t in trial_info if t in scored]
        absent = [t for t in trial_info if t not in scored and t not in without]
        if absent:
            problems.append(
                f"evaluation set '{name}': no predictions from "
                + ", ".join(_describe_trial(t, trial_info) for t in absent)
            )
        labels_per_recording = rows.groupby("recording_id")["label"].nunique()
        if (labels_per_recording > 1).any():
            conflicting = labels_per_recording[labels_per_recording > 1].index[:5].tolist()
            raise StudyError(
                f"evaluation set '{name}': recording(s) {conflicting} carry different labels in different trials"
            )
        counts = rows.groupby("recording_id")["trial_id"].nunique()
        complete = counts.index[counts == len(present)]
        if len(complete) < len(counts):
            per_trial = rows.groupby("trial_id")["recording_id"].agg(set)
            everything = set(counts.index)
            examples = []
            for trial_id in present:
                lacking = sorted(everything - per_trial[trial_id])
                if lacking:
                    examples.append(
                        f"{_describe_trial(trial_id, trial_info)} lacks {len(lacking)} (e.g. {', '.join(map(str, lacking[:3]))})"
                    )
            problems.append(
                f"evaluation set '{name}': recordings differ between trials: {len(counts) - len(complete)} of "
                f"{len(counts)} recordings are missing from some trials; "
                + "; ".join(examples[:4])
                + (" …" if len(examples) > 4 else "")
            )
        if len(complete) == 0:
            notes.append(f"evaluation set '{name}' skipped: no recording is scored by every trial")
            continue
        rows = rows[rows["recording_id"].isin(complete)]
        first = rows.drop_duplicates("recording_id").set_index("recording_id").loc[sorted(complete)]
        labels = first["label"].to_numpy().astype(np.int64)
        if len(np.unique(labels > 0)) < 2:
            notes.append(f"evaluation set '{name}' skipped: its recordings hold only one class")
            continue
        probs = rows.pivot(index="trial_id", columns="recording_id", values="prob").loc[present, first.index]
        class_probs = None
        if respiratory:
            if not class_columns:
                raise StudyError(
                    f"evaluation set '{name}': a respiratory study needs prob_0 … prob_K columns in predictions.parquet"
                )
            class_probs = np.stack(
                [
                    rows.pivot(index="trial_id", columns="recording_id", values=c).loc[present, first.index].to_numpy()
                    for c in class_columns
                ],
                axis=-1,
            )
        trial_thresholds = thresholds.reindex(present).to_numpy(dtype=np.float64)
        if not respiratory and not np.isfinite(trial_thresholds).all():
            lacking = [t for t, v in zip(present, trial_thresholds, strict=True) if not np.isfinite(v)]
            raise StudyError(
                "trials.parquet has no validation-chosen threshold for trial(s) "
                + ", ".join(_describe_trial(t, trial_info) for t in lacking[:5])
            )
        eval_set = EvalSet(
            name,
            first.index.to_numpy(),
            labels,
            first["source"].astype(str).to_numpy(),
            _clusters(first),
            present,
            probs.to_numpy(dtype=np.float64),
            class_probs,
            trial_thresholds,
            dropped_recordings=len(counts) - len(complete),
        )
        eval_sets.append(eval_set)
    if not eval_sets:
        raise StudyError(
            "no evaluation set can be analysed: " + "; ".join(notes or ["predictions.parquet has no clean rows"])
        )
    return eval_sets


def _clusters(first: pd.DataFrame) -> np.ndarray | None:
    """Cluster id (n,) of each recording (its group, else the recording itself), or None when all clusters are single."""
    recordings = first.index.to_series().astype(str)
    if "group" not in first:
        return None
    groups = first["group"].astype("string")
    clusters = ("group:" + groups).fillna("recording:" + recordings).to_numpy(dtype=str)
    return None if np.unique(clusters).size == clusters.size else clusters


def check_recorded_aucs(eval_sets: list[EvalSet], trials: pd.DataFrame, configurations: list[Configuration]) -> None:
    """Raise StudyError where trials.parquet's ROC-AUC of a trial on clean audio differs from the one its
    predictions give (the two files come from different runs). A set that dropped recordings is not
    checked: trials.parquet's figure is over all of them."""
    trial_info = _trial_info(configurations)
    for eval_set in eval_sets:
        if eval_set.dropped_recordings == 0:
            _check_recorded_auc(eval_set, trials, trial_info)


def _check_recorded_auc(eval_set: EvalSet, trials: pd.DataFrame, trial_info: dict) -> None:
    column = f"{eval_set.name}/roc_auc"
    if column not in trials:
        return
    recorded = trials.set_index("trial_id")[column].reindex(eval_set.trial_ids).to_numpy(dtype=np.float64)
    recomputed = weighted_auc(eval_set.binary, eval_set.probs, np.ones((1, eval_set.labels.size)))[:, 0]
    wrong = np.isfinite(recorded) & (np.abs(recorded - recomputed) > _AUC_TOLERANCE)
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        raise StudyError(
            f"trials.parquet and predictions.parquet disagree: trial {_describe_trial(eval_set.trial_ids[k], trial_info)} "
            f"has {column} = {recorded[k]:.4f} but its predictions give {recomputed[k]:.4f} "
            f"({int(wrong.sum())} trial(s) differ; are the files from different runs?)"
        )


class TrialHistory(NamedTuple):
    """A trial's training record from its folder: one row per epoch (``epoch``, ``train_loss``,
    ``val_MONITOR``, ...; see :meth:`study.train.TrainState.record`)."""

    monitor: str  # the validation metric early stopping watched (train.monitor)
    best_epoch: int  # the epoch whose weights the trial kept
    rows: list[dict]


def read_histories(out: Path, trial_ids: list[str]) -> dict[str, TrialHistory]:
    """The per-epoch histories of those trials whose folder ``OUT/trials/ID`` holds metrics.json and
    config.json (as study.run installs them); a study copied without trials/ has none."""
    histories = {}
    for trial_id in trial_ids:
        history = results.read_trial_history(out, trial_id)
        if history is not None:
            histories[trial_id] = TrialHistory(*history)
    return histories
