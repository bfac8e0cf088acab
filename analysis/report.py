"""The analysis report of a finished study: intervals, paired tests, per-source breakdown, resolution.

    python -m analysis report results/NAME [--baseline VALUE] [--correction holm|bh]
        [--resamples N] [--alpha 0.05] [--ci-method bca|percentile] [--allow-incomplete] [--no-plots]

``study.run`` calls :func:`report_study` at the end of a study. Inputs are the
files ``study.run`` writes (``study.json``, ``trials.parquet``,
``predictions.parquet``); outputs are ``results/NAME/tables/*.md|csv|tex``,
``results/NAME/plots/*.png`` and the index ``results/NAME/report.md``.

Method, in short (``report.md`` states it too):

* A configuration is every ``config/*`` setting except the seed; its trials
  are replicates over training seeds. Only clean predictions (perturbation
  "none", severity 0, no branch ablation) are analysed here.
* Intervals: the seed-mean metric with a 95 % bootstrap interval (BCa by
  default) that resamples recordings, stratified by label (patients, for the
  respiratory study), and seeds. Within an evaluation set every
  configuration and seed sees the same recording draws, and every
  configuration with the same number of seeds the same seed draws (seed k
  paired with seed k, in every evaluation set), so differences are paired.
  For one configuration this is :func:`analysis.stats.bootstrap_ci`; the
  draws are made once here and shared, instead of once per configuration.
* Threshold metrics use each trial's validation-chosen threshold.
* Comparisons: each configuration against the configuration that differs
  only in having the baseline value on the space's compare axis, in every
  evaluation set. The paired two-level bootstrap (as
  :func:`analysis.stats.paired_bootstrap_test`, on the shared draws) decides
  the paper claims; DeLong runs on seed-averaged probabilities, the paired
  permutation test on all common seeds, McNemar on the seed-majority
  decision (ties count as abnormal), Wilcoxon over per-seed metrics (which
  takes the test set as fixed). p-values are adjusted (Holm or BH) over the
  family of comparisons x evaluation sets, separately for each test and
  metric: the tests are alternative analyses of the same hypotheses.
* A source "carries" a configuration's pooled ROC-AUC (whose CI lies above
  0.5) when removing its recordings lowers the pooled seed-mean ROC-AUC by
  at least ``carry_drop`` (0.05, the size of the paper's gaps), or when the
  pooled ROC-AUC lies in that source's 95 % CI while every other source's
  CI contains 0.5.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import special

from analysis import paper, stats
from analysis.plots import ForestRow, RocCurve, plot_forest, plot_roc_curves, roc_tpr_on_grid
from analysis.tables import atomic_write_text, format_interval, format_p, format_value, to_markdown, write_table
from study.metrics import confusion_metrics

REQUIRED_FILES = ("study.json", "trials.parquet", "predictions.parquet")
PREDICTION_COLUMNS = ("trial_id", "eval_set", "recording_id", "source", "group", "label", "prob")
HEART_METRICS = ("roc_auc", "mcc", "f1", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
HEART_MAIN = ("roc_auc", "mcc", "f1", "accuracy")
RESPIRATORY_METRICS = ("score", "sensitivity", "specificity", "accuracy", "roc_auc")
METRIC_LABELS = {"roc_auc": "ROC-AUC", "mcc": "MCC", "f1": "F1", "accuracy": "accuracy", "sensitivity": "sensitivity",
                 "specificity": "specificity", "balanced_accuracy": "balanced accuracy", "score": "ICBHI Score"}
CORRECTIONS = ("holm", "bh")
CONFIDENCE_LEVEL = 0.95  # every interval; alpha only sets the verdicts
CARRY_DROP = 0.05
ROC_BAND_RESAMPLES = 1000
_SEED_STREAM = 7919  # keeps the seed draws' random stream apart from the recording draws'
_AUC_TOLERANCE = 1e-6  # trials.parquet vs the ROC-AUC recomputed from predictions.parquet


class StudyError(ValueError):
    """The study folder is incomplete or inconsistent; the message names what is missing or differs."""


def check_common_options(options) -> None:
    """Validate the settings every analysis shares (correction, resamples, alpha, CI method, seed)."""
    if options.correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {options.correction!r}")
    if not isinstance(options.n_resamples, (int, np.integer)) or options.n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100, got {options.n_resamples!r}")
    if not 0 < options.alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {options.alpha!r}")
    if options.ci_method not in stats.CI_METHODS:
        raise ValueError(f"ci_method must be one of {stats.CI_METHODS}, got {options.ci_method!r}")
    if not isinstance(options.seed, (int, np.integer)) or options.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {options.seed!r}")

@dataclass(frozen=True)
class ReportOptions:
    baseline: str | None = None
    correction: str = "holm"
    n_resamples: int = 10_000
    alpha: float = 0.05
    allow_incomplete: bool = False
    ci_method: str = "bca"
    seed: int = 0
    carry_drop: float = CARRY_DROP
    plots: bool = True

    def __post_init__(self):
        check_common_options(self)
        if not 0 < self.carry_drop < 1:
            raise ValueError(f"carry_drop must be in (0, 1), got {self.carry_drop!r}")


# ---------------------------------------------------------------------------- the study's files


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
    if not out.is_dir():
        raise FileNotFoundError(f"study folder {out} does not exist")
    missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{out} is not a finished study: {', '.join(missing)} missing "
                                "(python -m study.run writes them when a study ends; --resume finishes one)")
    state = json.loads((out / "study.json").read_text())
    trials = pd.read_parquet(out / "trials.parquet")
    predictions = pd.read_parquet(out / "predictions.parquet")
    if trials.empty or "trial_id" not in trials:
        raise StudyError(f"{out}/trials.parquet holds no trials")
    if "config/seed" not in trials:
        raise StudyError(f"{out}/trials.parquet has no config/seed column, so seeds cannot be told apart")
    absent = [c for c in PREDICTION_COLUMNS if c not in predictions]
    if absent:
        raise StudyError(f"{out}/predictions.parquet lacks the column(s) {absent}")
    if trials["trial_id"].duplicated().any():
        raise StudyError(f"trials.parquet lists trial(s) {sorted(trials.loc[trials['trial_id'].duplicated(), 'trial_id'])} twice")
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
    setting that varies, else by every varying setting ("key=value, ...").
    Raises StudyError when a configuration holds two trials of one seed.
    """
    columns = [c for c in trials.columns if c.startswith("config/") and c != "config/seed"]
    text = pd.DataFrame({c: trials[c].map(setting_text) for c in columns}, index=trials.index)
    axis_column = f"config/{axis}" if axis else None
    varying = [c for c in columns if text[c].nunique() > 1]
    if axis_column in varying:
        varying.remove(axis_column)
        varying.insert(0, axis_column)
    named_by_axis = axis_column in text and varying in ([], [axis_column])
    keys = text[varying].agg("\x1f".join, axis=1) if varying else pd.Series("", index=trials.index)
    grid_order = {setting_text(v): k for k, v in enumerate(grid.get(axis, []))} if axis else {}
    configurations = []
    for _, members in trials.groupby(keys, sort=False):
        members = members.assign(_seed=members["config/seed"]).sort_values("_seed")
        duplicated = members["_seed"].duplicated(keep=False)
        first = members.iloc[0]
        values = [text.at[first.name, c] for c in varying]
        settings = {c[len("config/"):]: first[c] for c in columns}
        axis_value = setting_text(first[axis_column]) if axis_column in trials else None
        if named_by_axis:
            name = axis_value
        elif varying:
            name = ", ".join(f"{c[len('config/'):]}={v}" for c, v in zip(varying, values))
        else:
            name = "all trials"
        if duplicated.any():
            raise StudyError(f"configuration '{name}' has more than one trial for seed(s) "
                             f"{sorted(set(members.loc[duplicated, '_seed'].tolist()))}: trials "
                             f"{members.loc[duplicated, 'trial_id'].tolist()}")
        others = tuple(v for c, v in zip(varying, values) if c != axis_column)
        configurations.append(Configuration(name, settings, members["_seed"].tolist(), members["trial_id"].tolist(),
                                            axis_value, others))
    configurations.sort(key=lambda c: (grid_order.get(c.axis_value, len(grid_order)), c.others, c.name))
    return configurations, [c[len("config/"):] for c in varying]


def completeness_problems(configurations: list[Configuration], grid: dict, trials: pd.DataFrame) -> list[str]:
    """What a complete study would have and this one lacks: grid points without trials, seeds missing."""
    problems = []
    expected_seeds = sorted(grid["seed"]) if isinstance(grid.get("seed"), list) else sorted(
        {s for c in configurations for s in c.seeds})
    axes = {k: v for k, v in grid.items() if k != "seed" and isinstance(v, list) and f"config/{k}" in trials}
    if axes:
        present = {tuple(setting_text(c.settings[k]) for k in axes) for c in configurations}
        for point in product(*[[setting_text(v) for v in values] for values in axes.values()]):
            if point not in present:
                label = ", ".join(f"{k}={v}" for k, v in zip(axes, point))
                problems.append(f"configuration {label}: no trials (expected seeds {expected_seeds})")
    for configuration in configurations:
        lacking = [s for s in expected_seeds if s not in configuration.seeds]
        if lacking:
            problems.append(f"configuration '{configuration.name}' lacks seed(s) {lacking} "
                            f"(has {configuration.seeds}; the study expects {expected_seeds})")
    return problems


@dataclass
class EvalSet:
    """The clean predictions of one evaluation set (or one source of it), as arrays."""

    name: str
    recordings: np.ndarray  # (n,) recording ids
    labels: np.ndarray  # (n,) 0/1 (heart) or classes 0..K-1 (respiratory)
    sources: np.ndarray  # (n,)
    groups: np.ndarray | None  # (n,) patient ids for a cluster bootstrap (respiratory), else None
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

    def row_of(self) -> dict[str, int]:
        return {trial_id: k for k, trial_id in enumerate(self.trial_ids)}

    def auc_by_source(self, sources: list[str], *, leave_out: bool = False) -> np.ndarray:
        """ROC-AUC (T, S) of every trial within each source, or on everything but it (``leave_out``); NaN: one class."""
        within = np.stack([self.sources == s for s in sources], axis=1).astype(np.float64)
        return stats._auc_kernel(self.binary, self.probs, 1.0 - within if leave_out else within)

    def subset(self, mask: np.ndarray, name: str) -> "EvalSet":
        return EvalSet(name, self.recordings[mask], self.labels[mask], self.sources[mask],
                       None if self.groups is None else self.groups[mask], self.trial_ids, self.probs[:, mask],
                       None if self.class_probs is None else self.class_probs[:, mask], self.thresholds)


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


def _describe_trial(trial_id: str, trial_info: dict) -> str:
    name, seed = trial_info[trial_id]
    return f"'{name}' seed {seed} ({trial_id})"


def build_eval_sets(trials: pd.DataFrame, predictions: pd.DataFrame, configurations: list[Configuration],
                    respiratory: bool, problems: list[str], notes: list[str]) -> list[EvalSet]:
    """Arrays per evaluation set; appends what is missing to ``problems`` (and what was done to ``notes``).

    Raises StudyError for what cannot be analysed at all: predictions of
    trials that trials.parquet does not list, duplicate rows, a recording
    with different labels in different trials, missing thresholds, or
    trials.parquet metrics that the predictions do not reproduce.
    """
    clean = _clean_predictions(predictions)
    trial_info = {t: (c.name, s) for c in configurations for s, t in zip(c.seeds, c.trial_ids)}
    strangers = sorted(set(clean["trial_id"]) - set(trial_info))
    if strangers:
        raise StudyError(f"predictions.parquet holds trials that trials.parquet does not list: {strangers[:5]}"
                         f"{' …' if len(strangers) > 5 else ''} (are the two files from different runs?)")
    duplicated = clean.duplicated(["trial_id", "eval_set", "recording_id"])
    if duplicated.any():
        row = clean[duplicated].iloc[0]
        raise StudyError(f"predictions.parquet has {int(duplicated.sum())} duplicate clean rows, e.g. trial "
                         f"{row['trial_id']}, evaluation set '{row['eval_set']}', recording {row['recording_id']}")
    without = sorted(set(trial_info) - set(clean["trial_id"]))
    if without:
        problems.append("no clean predictions at all from trial(s) " + ", ".join(_describe_trial(t, trial_info) for t in without))
    thresholds = trials.set_index("trial_id")["threshold"] if "threshold" in trials else pd.Series(dtype=float)
    class_columns = sorted((c for c in clean.columns if re.fullmatch(r"prob_\d+", c)), key=lambda c: int(c[5:]))
    eval_sets = []
    for name in _eval_set_order(trials, clean["eval_set"].unique()):
        rows = clean[clean["eval_set"] == name]
        scored = set(rows["trial_id"])
        present = [t for t in trial_info if t in scored]
        absent = [t for t in trial_info if t not in scored and t not in without]
        if absent:
            problems.append(f"evaluation set '{name}': no predictions from " + ", ".join(_describe_trial(t, trial_info) for t in absent))
        labels_per_recording = rows.groupby("recording_id")["label"].nunique()
        if (labels_per_recording > 1).any():
            conflicting = labels_per_recording[labels_per_recording > 1].index[:5].tolist()
            raise StudyError(f"evaluation set '{name}': recording(s) {conflicting} carry different labels in different trials")
        counts = rows.groupby("recording_id")["trial_id"].nunique()
        complete = counts.index[counts == len(present)]
        if len(complete) < len(counts):
            per_trial = rows.groupby("trial_id")["recording_id"].agg(set)
            everything = set(counts.index)
            examples = []
            for trial_id in present:
                lacking = sorted(everything - per_trial[trial_id])
                if lacking:
                    examples.append(f"{_describe_trial(trial_id, trial_info)} lacks {len(lacking)} (e.g. {', '.join(map(str, lacking[:3]))})")
            problems.append(f"evaluation set '{name}': recordings differ between trials: {len(counts) - len(complete)} of "
                            f"{len(counts)} recordings are missing from some trials; " + "; ".join(examples[:4])
                            + (" …" if len(examples) > 4 else ""))
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
                raise StudyError(f"evaluation set '{name}': a respiratory study needs prob_0 … prob_K columns in predictions.parquet")
            class_probs = np.stack([rows.pivot(index="trial_id", columns="recording_id", values=c).loc[present, first.index].to_numpy()
                                    for c in class_columns], axis=-1)
        trial_thresholds = thresholds.reindex(present).to_numpy(dtype=np.float64)
        if not respiratory and not np.isfinite(trial_thresholds).all():
            lacking = [t for t, v in zip(present, trial_thresholds) if not np.isfinite(v)]
            raise StudyError("trials.parquet has no validation-chosen threshold for trial(s) "
                             + ", ".join(_describe_trial(t, trial_info) for t in lacking[:5]))
        eval_set = EvalSet(name, first.index.to_numpy(), labels, first["source"].astype(str).to_numpy(),
                           first["group"].astype(str).to_numpy() if respiratory else None, present,
                           probs.to_numpy(dtype=np.float64), class_probs, trial_thresholds,
                           dropped_recordings=len(counts) - len(complete))
        if not respiratory and eval_set.dropped_recordings == 0:
            _check_recorded_auc(eval_set, trials, trial_info)
        eval_sets.append(eval_set)
    if not eval_sets:
        raise StudyError("no evaluation set can be analysed: " + "; ".join(notes or ["predictions.parquet has no clean rows"]))
    return eval_sets


def _check_recorded_auc(eval_set: EvalSet, trials: pd.DataFrame, trial_info: dict) -> None:
    column = f"{eval_set.name}/roc_auc"
    if column not in trials:
        return
    recorded = trials.set_index("trial_id")[column].reindex(eval_set.trial_ids).to_numpy(dtype=np.float64)
    recomputed = stats.weighted_auc(eval_set.binary, eval_set.probs, np.ones((1, eval_set.labels.size)))[:, 0]
    wrong = np.isfinite(recorded) & (np.abs(recorded - recomputed) > _AUC_TOLERANCE)
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        raise StudyError(f"trials.parquet and predictions.parquet disagree: trial {_describe_trial(eval_set.trial_ids[k], trial_info)} "
                         f"has {column} = {recorded[k]:.4f} but its predictions give {recomputed[k]:.4f} "
                         f"({int(wrong.sum())} trial(s) differ; are the files from different runs?)")


# ---------------------------------------------------------------------------- bootstrap on shared draws


def heart_kernel(eval_set: EvalSet) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Metrics (T, B) of every trial under recording weights (n, B): ROC-AUC and the threshold metrics.

    The confusion counts of all trials are one matrix product per count, the
    same arithmetic as :func:`analysis.stats.bootstrap_ci` does per model.
    """
    y = eval_set.binary.astype(np.float64)
    decisions = (eval_set.probs >= eval_set.thresholds[:, None]).astype(np.float64)
    positive_decisions, negative_decisions = decisions * y, decisions * (1 - y)

    def kernel(weights: np.ndarray) -> dict[str, np.ndarray]:
        tp, fp = positive_decisions @ weights, negative_decisions @ weights
        n_pos = y @ weights
        n_neg = weights.sum(axis=0) - n_pos
        metrics = confusion_metrics(tp, fp, n_neg - fp, n_pos - tp)
        metrics["roc_auc"] = stats._auc_kernel(eval_set.binary, eval_set.probs, weights)
        return {m: metrics[m] for m in HEART_METRICS}

    return kernel


def respiratory_kernel(eval_set: EvalSet) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """ICBHI Score, sensitivity, specificity (argmax class), accuracy and ROC-AUC of abnormal, (T, B) each."""
    classes = eval_set.labels
    predicted = eval_set.class_probs.argmax(axis=-1)  # (T, n)
    normal = (classes == 0).astype(np.float64)
    exact_abnormal = ((predicted == classes) & (classes > 0)).astype(np.float64)
    normal_kept = ((predicted == 0) & (classes == 0)).astype(np.float64)
    correct = (predicted == classes).astype(np.float64)

    def kernel(weights: np.ndarray) -> dict[str, np.ndarray]:
        n_normal = normal @ weights
        n_abnormal = weights.sum(axis=0) - n_normal
        with np.errstate(divide="ignore", invalid="ignore"):
            sensitivity = exact_abnormal @ weights / n_abnormal
            specificity = normal_kept @ weights / n_normal
            accuracy = correct @ weights / weights.sum(axis=0)
        return {"score": (sensitivity + specificity) / 2, "sensitivity": sensitivity, "specificity": specificity,
                "accuracy": accuracy, "roc_auc": stats._auc_kernel(eval_set.binary, eval_set.probs, weights)}

    return kernel


@dataclass
class Resampled:
    """Every trial's metrics on one evaluation set: on all recordings, per bootstrap resample and left-one-out."""

    eval_set: EvalSet
    kernel: Callable
    point: dict[str, np.ndarray]  # metric -> (T,)
    per_resample: dict[str, np.ndarray]  # metric -> (T, B)
    jackknife: dict[str, list[np.ndarray]]  # metric -> one (T, m) array per resampled stratum
    band_weights: np.ndarray  # (n, ≤ ROC_BAND_RESAMPLES) the first resamples' recording weights
    rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.rows = self.eval_set.row_of()


def resample(eval_set: EvalSet, kernel: Callable, n_resamples: int, rng: np.random.Generator) -> Resampled:
    """Run ``kernel`` on ``n_resamples`` stratified bootstrap resamples of ``eval_set``, block by block.

    The draws are :func:`analysis.stats.bootstrap_ci`'s (label strata, or
    patient groups stratified by their label mix); the leave-one-unit-out
    values are the multi-sample jackknife its BCa interval needs.
    """
    units, strata = stats._resampling_units(eval_set.binary, eval_set.groups)
    blocks, band = [], []
    for weights in stats._bootstrap_blocks(units, strata, n_resamples, rng):
        blocks.append(kernel(weights))
        if sum(b.shape[1] for b in band) < ROC_BAND_RESAMPLES:
            band.append(weights[:, :ROC_BAND_RESAMPLES - sum(b.shape[1] for b in band)])
    per_resample = {m: np.concatenate([block[m] for block in blocks], axis=1) for m in blocks[0]}
    point = {m: values[:, 0] for m, values in kernel(np.ones((units.size, 1))).items()}
    n_units = int(units.max()) + 1
    columns_per_block = max(1, stats._BLOCK_CELLS // units.size)
    left_out = [kernel((units[:, None] != np.arange(start, min(start + columns_per_block, n_units))[None, :]).astype(np.float64))
                for start in range(0, n_units, columns_per_block)]
    jackknife = {m: [np.concatenate([block[m] for block in left_out], axis=1)[:, stratum] for stratum in strata] for m in point}
    return Resampled(eval_set, kernel, point, per_resample, jackknife, np.concatenate(band, axis=1))


class SeedDraws:
    """Seed multiplicities (S, B) / S, drawn once per number of seeds and shared by every configuration and set."""

    def __init__(self, n_resamples: int, seed: int):
        self.n_resamples, self.seed, self._cache = n_resamples, seed, {}

    def __call__(self, n_seeds: int) -> np.ndarray:
        if n_seeds not in self._cache:
            if n_seeds == 1:
                self._cache[n_seeds] = np.ones((1, self.n_resamples))
            else:
                rng = np.random.default_rng([self.seed, _SEED_STREAM, n_seeds])
                self._cache[n_seeds] = stats._unit_counts([np.arange(n_seeds)], n_seeds, self.n_resamples, rng) / n_seeds
        return self._cache[n_seeds]


def _generator(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in names)])


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    method: str
    n_seeds: int
    distribution: np.ndarray  # (B,) bootstrap distribution of the seed-mean metric


def seed_mean_interval(resampled: Resampled, trial_ids: list[str], metric: str, seed_draws: SeedDraws,
                       method: str, confidence_level: float = CONFIDENCE_LEVEL) -> Interval:
    """The seed-mean metric of some trials with its bootstrap interval (what stats.bootstrap_ci computes)."""
    alpha = 1 - confidence_level
    rows = [resampled.rows[t] for t in trial_ids]
    n_seeds = len(rows)
    distribution = (resampled.per_resample[metric][rows] * seed_draws(n_seeds)).sum(axis=0)
    full = resampled.point[metric][rows]
    estimate = float(full.mean())
    if not np.isfinite(distribution).all():
        return Interval(estimate, math.nan, math.nan, "undefined in some resamples", n_seeds, distribution)
    if np.ptp(distribution) == 0:
        return Interval(estimate, float(distribution[0]), float(distribution[0]), method, n_seeds, distribution)
    levels, used = np.array([alpha / 2, 1 - alpha / 2]), "percentile"
    if method == "bca":
        jackknife = [values[rows].mean(axis=0) for values in resampled.jackknife[metric]]
        if n_seeds > 1:
            jackknife.append((full.sum() - full) / (n_seeds - 1))
        if all(np.isfinite(values).all() for values in jackknife):
            levels, used = stats._bca_levels(distribution, estimate, jackknife, alpha), "bca"
        else:
            used = "percentile (BCa undefined: a left-out unit leaves one class)"
    low, high = (float(q) for q in np.quantile(distribution, levels))
    return Interval(estimate, low, high, used, n_seeds, distribution)


# ---------------------------------------------------------------------------- the analysis


@dataclass
class ComparisonRow:
    eval_set: str
    a: str
    b: str
    metric: str
    test: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p: float
    n_seeds: int
    note: str = ""
    adjusted_p: float = math.nan
    verdict: str = ""


class _Analysis:
    """State shared by the report's parts: the study, its configurations, the resampled evaluation sets."""

    def __init__(self, out: Path, options: ReportOptions):
        self.out, self.options = Path(out), options
        self.state, trials, predictions = read_study(self.out)
        self.space = self.state.get("space", {})
        self.name = self.space.get("name") or self.out.name
        self.respiratory = self.space.get("study") == "respiratory"
        self.metrics = RESPIRATORY_METRICS if self.respiratory else HEART_METRICS
        self.main_metrics = ("score", "sensitivity", "specificity", "roc_auc") if self.respiratory else HEART_MAIN
        compare = self.space.get("compare") or {}
        self.axis = compare.get("axis")
        self.compare_metric = compare.get("metric") or "roc_auc"
        if self.compare_metric not in self.metrics:
            raise StudyError(f"the space's compare metric {self.compare_metric!r} is not one of the report's metrics {self.metrics}")
        grid = self.space.get("grid") or {}
        self.configurations, self.varying = find_configurations(trials, self.axis, grid)
        self.problems = completeness_problems(self.configurations, grid, trials)
        self.notes: list[str] = []
        self.eval_sets = build_eval_sets(trials, predictions, self.configurations, self.respiratory, self.problems, self.notes)
        if self.problems and not options.allow_incomplete:
            raise StudyError(f"study '{self.name}' in {self.out} is incomplete or mismatched:\n  - " + "\n  - ".join(self.problems)
                             + "\nfinish it (python -m study.run --space NAME --resume) or pass --allow-incomplete "
                             "to analyse what is there")
        self.n_trials = len(trials)
        self.baseline = self._baseline_value(options.baseline)
        self.seed_draws = SeedDraws(options.n_resamples, options.seed)
        self._intervals: dict[tuple, Interval | None] = {}
        self.resampled = {e.name: resample(e, self._kernel(e), options.n_resamples, _generator(options.seed, e.name))
                          for e in self.eval_sets}
        self.primary = next((e.name for e in self.eval_sets if e.name == "physionet2016:test"), self.eval_sets[0].name)

    def _kernel(self, eval_set: EvalSet) -> Callable:
        return respiratory_kernel(eval_set) if self.respiratory else heart_kernel(eval_set)

    def _baseline_value(self, requested: str | None) -> str | None:
        if not self.axis or all(c.axis_value is None for c in self.configurations):
            if requested is not None:
                raise ValueError(f"--baseline {requested!r} given but the space declares no compare axis present in the trials")
            return None
        values = sorted({c.axis_value for c in self.configurations})
        baseline = setting_text(requested if requested is not None else self.space.get("compare", {}).get("baseline"))
        if baseline not in values:
            raise ValueError(f"baseline {baseline!r} is not a value of {self.axis} in this study; values: {values}")
        return baseline

    # -- configurations in an evaluation set

    def trials_in(self, configuration: Configuration, eval_set: str, seeds=None) -> tuple[list, list[str]]:
        """(seeds, trial ids) of a configuration that scored ``eval_set`` (optionally only the given seeds)."""
        rows = self.resampled[eval_set].rows
        pairs = [(s, t) for s, t in zip(configuration.seeds, configuration.trial_ids)
                 if t in rows and (seeds is None or s in seeds)]
        return [s for s, _ in pairs], [t for _, t in pairs]

    def interval(self, eval_set: str, configuration: Configuration, metric: str, resampled: Resampled | None = None) -> Interval | None:
        """Seed-mean ``metric`` of a configuration over all its seeds on ``eval_set`` (or one source's ``resampled``)."""
        resampled = resampled or self.resampled[eval_set]
        key = (resampled.eval_set.name, configuration.name, metric)
        if key not in self._intervals:
            _, trial_ids = self.trials_in(configuration, eval_set)
            self._intervals[key] = (seed_mean_interval(resampled, trial_ids, metric, self.seed_draws, self.options.ci_method)
                                    if trial_ids else None)
        return self._intervals[key]

    def pairs(self) -> list[tuple[Configuration, Configuration]]:
        """(configuration, its baseline) for every configuration off the baseline: the declared family."""
        if self.baseline is None:
            return []
        baselines = {c.others: c for c in self.configurations if c.axis_value == self.baseline}
        family = []
        for configuration in self.configurations:
            if configuration.axis_value == self.baseline:
                continue
            partner = baselines.get(configuration.others)
            if partner is None:
                self.notes.append(f"'{configuration.name}' has no baseline configuration ({self.axis}={self.baseline} "
                                  "with its other settings) and is not compared")
            else:
                family.append((configuration, partner))
        return family

    # -- paired comparisons

    def compare(self, a: Configuration, b: Configuration, eval_set: str, metrics, full: bool) -> list[ComparisonRow]:
        """Paired tests of a - b on ``eval_set`` over their common seeds.

        Always the two-level paired bootstrap for every metric in ``metrics``;
        with ``full`` also DeLong, the permutation and Wilcoxon tests for the
        compare metric and McNemar for accuracy (heart studies).
        """
        seeds_a, _ = self.trials_in(a, eval_set)
        seeds_b, _ = self.trials_in(b, eval_set)
        common = [s for s in seeds_a if s in set(seeds_b)]
        if not common:
            self.notes.append(f"'{a.name}' vs '{b.name}' on {eval_set}: no seed in common, not compared")
            return []
        _, trials_a = self.trials_in(a, eval_set, common)
        _, trials_b = self.trials_in(b, eval_set, common)
        resampled = self.resampled[eval_set]
        eval_data = resampled.eval_set
        rows_a = [resampled.rows[t] for t in trials_a]
        rows_b = [resampled.rows[t] for t in trials_b]
        n_seeds = len(common)
        draws = self.seed_draws(n_seeds)
        levels = [(1 - CONFIDENCE_LEVEL) / 2, (1 + CONFIDENCE_LEVEL) / 2]
        z = special.ndtri(levels[1])
        out, bootstrap_ci = [], {}
        for metric in metrics:
            differences = ((resampled.per_resample[metric][rows_a] - resampled.per_resample[metric][rows_b]) * draws).sum(axis=0)
            value_a, value_b = (float(resampled.point[metric][rows].mean()) for rows in (rows_a, rows_b))
            low, high = (float(q) for q in np.quantile(differences, levels))
            # Two-sided p of stats.paired_bootstrap_test, on the shared draws.
            tail = int(min(np.count_nonzero(differences <= 0), np.count_nonzero(differences >= 0)))
            p = min(1.0, 2 * (tail + 1) / (differences.size + 1))
            bootstrap_ci[metric] = (low, high)
            out.append(ComparisonRow(eval_set, a.name, b.name, metric, "paired bootstrap", value_a, value_b,
                                     value_a - value_b, low, high, p, n_seeds, "recordings and seeds resampled"))
        if not full:
            return out
        metric = self.compare_metric
        y = eval_data.binary
        per_seed_a, per_seed_b = resampled.point[metric][rows_a], resampled.point[metric][rows_b]
        if not self.respiratory:
            probs_a, probs_b = eval_data.probs[rows_a], eval_data.probs[rows_b]
            if metric == "roc_auc" and _delong_possible(y):
                delong = stats.delong_test(y, probs_a.mean(axis=0), probs_b.mean(axis=0))
                half_width = z * math.sqrt(max(delong.var_a + delong.var_b - 2 * delong.cov, 0.0))
                out.append(ComparisonRow(eval_set, a.name, b.name, metric, "DeLong", delong.auc_a, delong.auc_b, delong.diff,
                                         delong.diff - half_width, delong.diff + half_width, delong.p, n_seeds,
                                         "seed-averaged probabilities; Wald CI"))
            # Scores minus their trial's threshold put every trial's decision at 0 (ROC-AUC is unchanged).
            shifted_a = probs_a - eval_data.thresholds[rows_a, None]
            shifted_b = probs_b - eval_data.thresholds[rows_b, None]
            permutation = stats.paired_permutation_test(y, shifted_a, shifted_b, metric, self.options.n_resamples,
                                                        _generator(self.options.seed, eval_set, a.name, b.name), threshold=0.0)
            low, high = bootstrap_ci[metric]
            out.append(ComparisonRow(eval_set, a.name, b.name, metric, "paired permutation", permutation.value_a,
                                     permutation.value_b, permutation.difference, low, high, permutation.p_value,
                                     n_seeds, "outputs swapped per recording; CI from the paired bootstrap"))
            majority_a = ((shifted_a >= 0).mean(axis=0) >= 0.5).astype(np.int8)
            majority_b = ((shifted_b >= 0).mean(axis=0) >= 0.5).astype(np.int8)
            mcnemar = stats.mcnemar_test(y, majority_a, majority_b)
            n = y.size
            discordant, net = mcnemar.n_only_a_correct + mcnemar.n_only_b_correct, mcnemar.n_only_a_correct - mcnemar.n_only_b_correct
            # Wald interval of a difference of paired proportions (no library has it for raw counts).
            half_width = z * math.sqrt(max(discordant - net**2 / n, 0.0)) / n
            out.append(ComparisonRow(eval_set, a.name, b.name, "accuracy", "McNemar", mcnemar.accuracy_a, mcnemar.accuracy_b,
                                     net / n, net / n - half_width, net / n + half_width, mcnemar.p_value, n_seeds,
                                     f"seed-majority decision at the validation thresholds; {mcnemar.method}; Wald CI"))
        wilcoxon = stats.wilcoxon_seeds(per_seed_a, per_seed_b)
        differences = per_seed_a - per_seed_b
        low = high = math.nan
        if n_seeds >= 2:
            interval = stats.seed_mean_ci(differences, confidence_level=CONFIDENCE_LEVEL, method="percentile",
                                          rng=_generator(self.options.seed, "wilcoxon", eval_set, a.name))
            low, high = interval.low, interval.high
        note = "over per-seed metrics: asks about these recordings, not new ones; CI of the mean seed difference"
        out.append(ComparisonRow(eval_set, a.name, b.name, metric, "Wilcoxon signed-rank", float(per_seed_a.mean()),
                                 float(per_seed_b.mean()), float(differences.mean()), low, high, wilcoxon.p_value, n_seeds,
                                 note + (f"; {wilcoxon.note}" if wilcoxon.note else "")))
        return out

    def comparisons(self) -> list[ComparisonRow]:
        rows = []
        metrics = tuple(dict.fromkeys((self.compare_metric,) + self.main_metrics))
        for a, b in self.pairs():
            for eval_set in self.resampled:
                rows += self.compare(a, b, eval_set, metrics, full=True)
        order = {name: k for k, name in enumerate(self.resampled)}
        rows.sort(key=lambda r: order[r.eval_set])  # stable: within a set, comparisons keep their order
        families: dict[tuple, list[ComparisonRow]] = {}
        for row in rows:
            families.setdefault((row.test, row.metric), []).append(row)
        floors: dict[tuple[str, str], list[str]] = {}  # (test, warning) -> metrics
        for (test, metric), family in families.items():
            if test in _RESAMPLING_TESTS:
                floor = stats.resampling_floor_warning(self.options.n_resamples, len(family), self.options.correction,
                                                       self.options.alpha, what=_RESAMPLING_TESTS[test],
                                                       two_sided=test == "paired bootstrap")
                if floor:
                    floors.setdefault((test, floor), []).append(metric)
            adjusted = stats.adjust_pvalues([r.p for r in family], self.options.correction)
            for row, p in zip(family, adjusted):
                row.adjusted_p = float(p)
                row.verdict = verdict(row.a, row.b, row.difference, row.adjusted_p, self.options.alpha)
        self.notes += [f"{test} of {', '.join(metrics)}: {floor}" for (test, floor), metrics in floors.items()]
        return rows


# Tests whose p-values come from resampling (floor 2 / (B + 1) two-sided bootstrap, 1 / (B + 1) permutation).
_RESAMPLING_TESTS = {"paired bootstrap": "bootstrap", "paired permutation": "permutation"}


def _delong_possible(y: np.ndarray) -> bool:
    n_pos = int(y.sum())
    return min(n_pos, y.size - n_pos) >= 2


def verdict(a: str, b: str, difference: float, p: float, alpha: float) -> str:
    if not p < alpha:
        return "no significant difference"
    return f"{a} > {b}" if difference > 0 else f"{a} < {b}"


# ---------------------------------------------------------------------------- the report's tables


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _interval_cell(interval: Interval | None) -> str:
    return "n/a" if interval is None else format_interval(interval.estimate, interval.low, interval.high)


def _interval_numbers(prefix: str, interval: Interval | None) -> dict:
    if interval is None:
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan}
    return {prefix: interval.estimate, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}


def _methods_of(intervals) -> str:
    methods = sorted({i.method for i in intervals if i is not None})
    return ", ".join("BCa" if m == "bca" else m for m in methods)


class _Writer:
    """Collects the written files and their one-line descriptions for the index."""

    def __init__(self, out: Path):
        self.tables_dir, self.plots_dir = out / "tables", out / "plots"
        self.tables: list[tuple[str, str]] = []
        self.plots: list[tuple[str, str]] = []

    def table(self, name, display, numbers, caption, description, notes=None):
        write_table(self.tables_dir, name, display, numbers, caption, notes)
        self.tables.append((name, description))

    def plot(self, path: Path, description: str):
        self.plots.append((path.name, description))


def _main_table(analysis: _Analysis, writer: _Writer) -> None:
    eval_set = analysis.primary
    display, numbers, intervals = [], [], []
    has_paper = not analysis.respiratory and any(paper.paper_model(c.settings) for c in analysis.configurations)
    for configuration in analysis.configurations:
        seeds, _ = analysis.trials_in(configuration, eval_set)
        row = {"configuration": configuration.name, "seeds": len(seeds)}
        numeric = {"configuration": configuration.name, "eval_set": eval_set, "seeds": len(seeds)}
        for metric in analysis.main_metrics:
            interval = analysis.interval(eval_set, configuration, metric)
            intervals.append(interval)
            row[METRIC_LABELS[metric]] = _interval_cell(interval)
            numeric.update(_interval_numbers(metric, interval))
        if has_paper:
            model = paper.paper_model(configuration.settings)
            values = paper.AUDIOFUSE_RESULTS.get(model, {})
            row["paper (ROC-AUC / MCC / F1 / acc.)"] = (" / ".join(f"{values[m]:.4f}" for m in HEART_MAIN) + f" ({model})") if model else "–"
            numeric.update({"paper_model": model or "", **{f"paper_{m}": values.get(m, math.nan) for m in HEART_MAIN}})
        display.append(row)
        numbers.append(numeric)
    if analysis.respiratory:
        display.append({"configuration": "SAM-AST paper (ICBHI official split, single run)", "seeds": 1,
                        **{METRIC_LABELS[m]: format_value(paper.SAM_AST_ICBHI[m]) if m in paper.SAM_AST_ICBHI else "–"
                           for m in analysis.main_metrics}})
        numbers.append({"configuration": "SAM-AST paper", "eval_set": "icbhi2017:test", "seeds": 1,
                        **{m: paper.SAM_AST_ICBHI.get(m, math.nan) for m in analysis.main_metrics}})
    unit = "patients (cluster bootstrap)" if analysis.respiratory else "recordings stratified by label"
    caption = (f"Main results on {eval_set}: seed-mean metric [95 % {_methods_of(intervals)} bootstrap CI over {unit} "
               "and seeds]; threshold metrics at each trial's validation-chosen threshold.")
    notes = ["The paper's numbers are single runs without intervals, at the paper's scale; this study ran at scale "
             f"'{analysis.space.get('scale', '?')}'."] if has_paper else []
    writer.table("main", pd.DataFrame(display), pd.DataFrame(numbers), caption,
                 f"configuration × {', '.join(METRIC_LABELS[m] for m in analysis.main_metrics)} on {eval_set}, with intervals"
                 + (" and the paper's numbers" if has_paper or analysis.respiratory else ""), notes)


def _pascal_table(analysis: _Analysis, writer: _Writer) -> None:
    options = analysis.options
    for eval_set in [e for e in analysis.resampled if e.startswith("pascal") and e != analysis.primary]:
        display, numbers, intervals = [], [], []
        has_paper = any(paper.paper_model(c.settings) for c in analysis.configurations)
        for configuration in analysis.configurations:
            seeds = set(analysis.trials_in(configuration, eval_set)[0]) & set(analysis.trials_in(configuration, analysis.primary)[0])
            if not seeds:
                continue
            pascal, primary = (seed_mean_interval(analysis.resampled[name], analysis.trials_in(configuration, name, seeds)[1],
                                                  "roc_auc", analysis.seed_draws, options.ci_method)
                               for name in (eval_set, analysis.primary))
            intervals.append(pascal)
            change = pascal.distribution - primary.distribution
            low, high = (float(q) for q in np.quantile(change, [(1 - CONFIDENCE_LEVEL) / 2, (1 + CONFIDENCE_LEVEL) / 2]))
            row = {"configuration": configuration.name, "seeds": len(seeds), f"{eval_set} ROC-AUC": _interval_cell(pascal),
                   f"change vs {analysis.primary}": format_interval(pascal.estimate - primary.estimate, low, high, signed=True)}
            numeric = {"configuration": configuration.name, "seeds": len(seeds), **_interval_numbers("roc_auc", pascal),
                       "change": pascal.estimate - primary.estimate, "change_low": low, "change_high": high}
            if has_paper:
                model = paper.paper_model(configuration.settings)
                values = paper.AUDIOFUSE_RESULTS.get(model)
                row["paper ROC-AUC (change)"] = (f"{values['pascal_roc_auc']:.4f} ({values['pascal_roc_auc'] - values['roc_auc']:+.4f})"
                                                 if values else "–")
                numeric.update(paper_roc_auc=values["pascal_roc_auc"] if values else math.nan,
                               paper_change=values["pascal_roc_auc"] - values["roc_auc"] if values else math.nan)
            display.append(row)
            numbers.append(numeric)
        caption = (f"Zero-shot {eval_set}: seed-mean ROC-AUC [95 % {_methods_of(intervals)} CI] and its change from "
                   f"{analysis.primary} [95 % percentile CI; seeds paired, recordings of the two sets resampled independently].")
        writer.table(_slug(eval_set), pd.DataFrame(display), pd.DataFrame(numbers), caption,
                     f"ROC-AUC on {eval_set} and its change vs {analysis.primary}" + (", with the paper's numbers" if has_paper else ""))


def _intervals_table(analysis: _Analysis, writer: _Writer) -> None:
    display, numbers = [], []
    for eval_set, resampled in analysis.resampled.items():
        for configuration in analysis.configurations:
            for metric in analysis.metrics:
                interval = analysis.interval(eval_set, configuration, metric)
                if interval is None:
                    continue
                display.append({"evaluation set": eval_set, "n": resampled.eval_set.labels.size, "n pos": resampled.eval_set.n_pos,
                                "configuration": configuration.name, "seeds": interval.n_seeds, "metric": METRIC_LABELS[metric],
                                "estimate [95 % CI]": _interval_cell(interval), "CI method": interval.method})
                numbers.append({"eval_set": eval_set, "n": resampled.eval_set.labels.size, "n_pos": resampled.eval_set.n_pos,
                                "configuration": configuration.name, "seeds": interval.n_seeds, "metric": metric,
                                "estimate": interval.estimate, "low": interval.low, "high": interval.high, "method": interval.method})
    writer.table("intervals", pd.DataFrame(display), pd.DataFrame(numbers),
                 f"Every metric of every configuration on every evaluation set: seed mean [95 % bootstrap CI, "
                 f"{analysis.options.n_resamples} resamples of recordings and seeds].",
                 "every metric × configuration × evaluation set with its 95 % interval and the interval method")


def _comparisons_table(analysis: _Analysis, writer: _Writer, rows: list[ComparisonRow]) -> None:
    display = [{"evaluation set": r.eval_set, "A vs B": f"{r.a} vs {r.b}", "metric": METRIC_LABELS[r.metric], "test": r.test,
                "A": format_value(r.value_a), "B": format_value(r.value_b),
                "Δ = A − B [95 % CI]": format_interval(r.difference, r.low, r.high, signed=True), "p": format_p(r.p),
                f"adjusted p ({analysis.options.correction})": format_p(r.adjusted_p),
                f"verdict (α = {analysis.options.alpha})": r.verdict, "seeds": r.n_seeds, "note": r.note} for r in rows]
    numbers = [{"eval_set": r.eval_set, "a": r.a, "b": r.b, "metric": r.metric, "test": r.test, "value_a": r.value_a,
                "value_b": r.value_b, "difference": r.difference, "low": r.low, "high": r.high, "p": r.p,
                "adjusted_p": r.adjusted_p, "correction": analysis.options.correction, "verdict": r.verdict,
                "seeds": r.n_seeds, "note": r.note} for r in rows]
    n_pairs = len({(r.a, r.b) for r in rows})
    caption = (f"Paired comparisons: every configuration vs its baseline ({analysis.axis} = {analysis.baseline}) on every "
               f"evaluation set. p adjusted by {'Holm' if analysis.options.correction == 'holm' else 'Benjamini-Hochberg'} "
               f"over the family of {n_pairs} comparison(s) × {len(analysis.resampled)} evaluation set(s), separately for each test and metric.")
    notes = [
        "paired bootstrap: two-level (recordings stratified by label, and seeds), the same draws for both configurations; "
        "it decides the paper claims.",
        "DeLong: on the seed-averaged probabilities of the common seeds (an ensemble's ROC-AUC, not the seed-mean ROC-AUC).",
        "paired permutation: each recording's outputs swapped between the configurations (ranks for ROC-AUC), all seeds at once.",
        "McNemar: on the seed-majority decision (each seed at its validation threshold; ties count as abnormal).",
        "Wilcoxon: over per-seed metrics, seed k of A paired with seed k of B; it treats the test recordings as fixed, "
        "so it asks whether the seeds differ on these recordings, not on new ones.",
    ]
    if analysis.respiratory:
        notes = notes[:1] + ["Respiratory study: items within a patient are dependent, so only the cluster (patient) "
                             "bootstrap and Wilcoxon over seeds are run; DeLong, permutation and McNemar assume independent items."]
    writer.table("comparisons", pd.DataFrame(display), pd.DataFrame(numbers), caption,
                 "every configuration vs the baseline: Δ [CI], test, p, adjusted p, verdict", notes)


def _claims_table(analysis: _Analysis, writer: _Writer, rows: list[ComparisonRow]) -> list[dict]:
    by_pair = {(r.eval_set, r.a, r.b, r.metric): r for r in rows if r.test == "paired bootstrap"}
    display, numbers, summaries = [], [], []
    for claim in paper.CLAIMS:
        if claim.eval_set not in analysis.resampled:
            continue

        def matching(value):
            wanted = {claim.axis: value, **claim.fixed}
            return [c for c in analysis.configurations
                    if all(setting_text(c.settings.get(k)) == setting_text(v) for k, v in wanted.items())]

        winners = matching(claim.winner)
        components = []
        for winner in winners:
            for loser_value in claim.losers:
                # Same settings apart from the claim's axis.
                loser = next((c for c in matching(loser_value) if all(setting_text(c.settings[k]) == setting_text(winner.settings.get(k))
                                                                      for k in c.settings if k != claim.axis)), None)
                if loser is not None:
                    components.append((winner, loser, loser_value))
        if not components or len(components) < len(claim.losers):
            continue
        results = []
        for winner, loser, loser_value in components:
            row = by_pair.get((claim.eval_set, loser.name, winner.name, claim.metric))
            if row is not None:  # the family compares loser vs winner (the baseline): turn it round
                difference, low, high, p, adjusted = -row.difference, -row.high, -row.low, row.p, row.adjusted_p
                decided_by = f"paired bootstrap, family-adjusted ({analysis.options.correction})"
            else:
                row = by_pair.get((claim.eval_set, winner.name, loser.name, claim.metric)) or analysis.compare(
                    winner, loser, claim.eval_set, (claim.metric,), full=False)[0]
                difference, low, high, p = row.difference, row.low, row.high, row.p
                adjusted = row.adjusted_p if math.isfinite(row.adjusted_p) else p
                decided_by = ("paired bootstrap, family-adjusted" if math.isfinite(row.adjusted_p)
                              else "paired bootstrap, unadjusted (intersection-union: each part at α)")
            significant = adjusted < analysis.options.alpha
            outcome = "holds" if significant and difference > 0 else ("reversed" if significant else "not resolved")
            results.append(outcome)
            paper_gap = claim.paper_differences.get(loser_value)
            display.append({"claim": claim.text, "comparison": f"{winner.name} vs {loser.name}", "evaluation set": claim.eval_set,
                            "paper Δ": format_value(paper_gap, 4, signed=True) if paper_gap is not None else "> 0 (no numbers)",
                            "study Δ [95 % CI]": format_interval(difference, low, high, signed=True), "p": format_p(adjusted),
                            "test": decided_by, "part": outcome})
            numbers.append({"claim": claim.key, "winner": winner.name, "loser": loser.name, "eval_set": claim.eval_set,
                            "metric": claim.metric, "paper_difference": paper_gap if paper_gap is not None else math.nan,
                            "difference": difference, "low": low, "high": high, "p": adjusted, "test": decided_by, "part": outcome})
        claim_verdict = ("holds" if all(r == "holds" for r in results)
                         else "contradicted" if any(r == "reversed" for r in results) else "not supported at this resolution")
        for row in display[-len(results):]:
            row["claim verdict"] = claim_verdict
        for row in numbers[-len(results):]:
            row["claim_verdict"] = claim_verdict
        summaries.append({"claim": claim.text, "verdict": claim_verdict})
    if display:
        writer.table("claims", pd.DataFrame(display), pd.DataFrame(numbers),
                     f"The paper's claims against this study (α = {analysis.options.alpha}). A claim holds when every part "
                     "is significant in the paper's direction, is contradicted when a part is significant the other way, "
                     "and is otherwise not supported at this test set's resolution (see resolution).",
                     "each paper claim this study can check, the deciding test, and whether it holds")
    return summaries


def _per_source(analysis: _Analysis, writer: _Writer) -> list[dict]:
    display, numbers, flags = [], [], []
    drop = analysis.options.carry_drop
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        sources = sorted(set(data.sources))
        per_source: dict[str, Resampled] = {}
        for source in sources:
            mask = data.sources == source
            subset = data.subset(mask, f"{eval_set} / {source}")
            if len(np.unique(subset.binary)) == 2:
                per_source[source] = resample(subset, analysis._kernel(subset), analysis.options.n_resamples,
                                              _generator(analysis.options.seed, eval_set, source))
        # Leave-one-source-out ROC-AUC of every trial: one 0/1 weighting per source.
        without = {}
        if len(sources) > 1:
            auc_without = data.auc_by_source(sources, leave_out=True)
            # a column is NaN exactly when the recordings left hold one class
            without = {s: auc_without[:, k] for k, s in enumerate(sources) if np.isfinite(auc_without[:, k]).all()}
        for configuration in analysis.configurations:
            seeds, trial_ids = analysis.trials_in(configuration, eval_set)
            if not trial_ids:
                continue
            rows = [resampled.rows[t] for t in trial_ids]
            pooled = analysis.interval(eval_set, configuration, "roc_auc")
            source_auc = {s: analysis.interval(eval_set, configuration, "roc_auc", r) for s, r in per_source.items()}
            for source in sources:
                mask = data.sources == source
                n, n_pos = int(mask.sum()), int(data.binary[mask].sum())
                row = {"evaluation set": eval_set, "source": source, "n": n, "n pos": n_pos, "configuration": configuration.name}
                numeric = {"eval_set": eval_set, "source": source, "n": n, "n_pos": n_pos, "configuration": configuration.name}
                for metric in analysis.metrics:
                    interval = analysis.interval(eval_set, configuration, metric, per_source[source]) if source in per_source else None
                    row[METRIC_LABELS[metric]] = _interval_cell(interval) if source in per_source else "one class only"
                    numeric.update(_interval_numbers(metric, interval))
                reasons = []
                if source in without:
                    auc_without = float(without[source][rows].mean())
                    numeric["roc_auc_without_source"] = auc_without
                    if pooled.low > 0.5 and pooled.estimate - auc_without >= drop:
                        reasons.append(f"without it the pooled ROC-AUC falls from {pooled.estimate:.3f} to {auc_without:.3f}")
                others = [s for s in per_source if s != source]
                if (source in per_source and others and pooled.low > 0.5
                        and source_auc[source].low <= pooled.estimate <= source_auc[source].high and source_auc[source].low > 0.5
                        and all(source_auc[s].low <= 0.5 <= source_auc[s].high for s in others)):
                    reasons.append("the pooled ROC-AUC lies in its CI while every other source's CI contains 0.5")
                row["carries pooled ROC-AUC"] = ("YES: " + "; ".join(reasons)) if reasons else ""
                numeric["carries_pooled_roc_auc"] = bool(reasons)
                if reasons:
                    flags.append({"eval_set": eval_set, "configuration": configuration.name, "source": source,
                                  "reason": "; ".join(reasons)})
                display.append(row)
                numbers.append(numeric)
    caption = ("Per-source breakdown: every metric within each source database, seed mean [95 % CI; recordings resampled "
               "within the source, stratified by label, and seeds]. 'carries pooled ROC-AUC' flags a source, where the pooled "
               f"ROC-AUC's CI lies above 0.5, when removing the source lowers the pooled seed-mean ROC-AUC by ≥ {drop}, or "
               "when the pooled ROC-AUC lies inside that source's CI while every other source's CI contains 0.5 (chance).")
    writer.table("per_source", pd.DataFrame(display), pd.DataFrame(numbers), caption,
                 "every metric per source database with intervals, and a flag where one source carries the pooled ROC-AUC")
    return flags


def _resolution_table(analysis: _Analysis, writer: _Writer) -> list[dict]:
    display, numbers = [], []
    pairs = analysis.pairs() if analysis.baseline is not None else []
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        n, n_pos = data.labels.size, data.n_pos
        row = {"evaluation set": eval_set, "n": n, "n pos": n_pos, "n neg": n - n_pos}
        numeric = {"eval_set": eval_set, "n": n, "n_pos": n_pos, "n_neg": n - n_pos}
        if analysis.respiratory:
            row.update({"patients": len(set(data.groups)), "smallest detectable Δ ROC-AUC": "n/a: items cluster within patients"})
            numeric.update(patients=len(set(data.groups)))
        else:
            rhos, base_aucs, observed = [], [], []
            for a, b in pairs if _delong_possible(data.binary) else []:
                common = set(analysis.trials_in(a, eval_set)[0]) & set(analysis.trials_in(b, eval_set)[0])
                if not common:
                    continue
                rows_a = [resampled.rows[t] for t in analysis.trials_in(a, eval_set, common)[1]]
                rows_b = [resampled.rows[t] for t in analysis.trials_in(b, eval_set, common)[1]]
                delong = stats.delong_test(data.binary, data.probs[rows_a].mean(axis=0), data.probs[rows_b].mean(axis=0))
                if delong.var_a > 0 and delong.var_b > 0:
                    rhos.append(delong.cov / math.sqrt(delong.var_a * delong.var_b))
                base_aucs.append(delong.auc_b)
                observed.append(abs(delong.diff))
            if rhos:
                rho = float(np.median(rhos))
                base_auc = float(np.median(base_aucs))
                clipped = min(max(base_auc, 0.5), 0.999)
                mde = stats.auc_difference_mde(n_pos, n - n_pos, clipped, float(np.clip(rho, -1, 1)), analysis.options.alpha)
                below = sum(d < mde for d in observed) if math.isfinite(mde) else len(observed)
                row.update({"baseline ROC-AUC (seed-avg.)": format_value(base_auc),
                            "ρ between configurations": f"{rho:.2f} [{min(rhos):.2f}, {max(rhos):.2f}]",
                            "smallest detectable Δ ROC-AUC (80 % power)": format_value(mde),
                            "observed |Δ| below it": f"{below} of {len(observed)}"})
                numeric.update(baseline_roc_auc=base_auc, rho_median=rho, rho_min=min(rhos), rho_max=max(rhos), mde=mde,
                               n_comparisons=len(observed), n_below_mde=below)
            else:
                row.update({"smallest detectable Δ ROC-AUC (80 % power)": "n/a: no pair of configurations to correlate"})
        display.append(row)
        numbers.append(numeric)
    caption = ("What each test set can resolve: recordings, positives, and the smallest ROC-AUC difference a two-sided paired "
               f"DeLong test at α = {analysis.options.alpha} detects with 80 % power (stats.auc_difference_mde, Hanley-McNeil "
               "variances), at the median correlation ρ of the configurations' seed-averaged ROC-AUCs (DeLong covariance) "
               "and the baseline's ROC-AUC (taken as 0.5 if below).")
    writer.table("resolution", pd.DataFrame(display), pd.DataFrame(numbers), caption,
                 "n recordings, n positives and the smallest ROC-AUC difference each evaluation set can resolve")
    return numbers


def _plots(analysis: _Analysis, writer: _Writer, rows: list[ComparisonRow], resolution: list[dict]) -> None:
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        n_band = resampled.band_weights.shape[1]
        curves = []
        for configuration in analysis.configurations:
            _, trial_ids = analysis.trials_in(configuration, eval_set)
            if not trial_ids:
                continue
            rows_k = [resampled.rows[t] for t in trial_ids]
            draws = analysis.seed_draws(len(rows_k))[:, :n_band]
            tpr = roc_tpr_on_grid(data.binary, data.probs[rows_k], resampled.band_weights)
            band = np.einsum("sgb,sb->gb", tpr, draws)
            point = roc_tpr_on_grid(data.binary, data.probs[rows_k], np.ones((data.labels.size, 1)))[:, :, 0].mean(axis=0)
            low, high = np.quantile(band, [(1 - CONFIDENCE_LEVEL) / 2, (1 + CONFIDENCE_LEVEL) / 2], axis=1)
            auc = analysis.interval(eval_set, configuration, "roc_auc")
            curves.append(RocCurve(f"{configuration.name}: {_interval_cell(auc)}", point, low, high))
        path = writer.plots_dir / f"roc_{_slug(eval_set)}.png"
        plot_roc_curves(path, curves, f"{analysis.name}: ROC on {eval_set} (n = {data.labels.size}, {data.n_pos} abnormal)",
                        band_note=f"Seed-mean ROC (TPR averaged over seeds at each FPR); bands: pointwise 95 % over "
                                  f"{n_band} bootstrap resamples of recordings and seeds. Legend: seed-mean ROC-AUC [95 % CI].")
        writer.plot(path, f"ROC curve of every configuration on {eval_set} with pointwise 95 % bootstrap bands")
    deciding = [r for r in rows if r.test == "paired bootstrap" and r.metric == analysis.compare_metric]
    if deciding:
        mde = {r["eval_set"]: r.get("mde") for r in resolution} if analysis.compare_metric == "roc_auc" else {}
        panels = [(eval_set, [ForestRow(f"{r.a} vs {r.b}", r.difference, r.low, r.high, r.adjusted_p < analysis.options.alpha)
                              for r in deciding if r.eval_set == eval_set], mde.get(eval_set))
                  for eval_set in analysis.resampled]
        path = writer.plots_dir / "forest.png"
        plot_forest(path, [p for p in panels if p[1]], f"Δ {METRIC_LABELS[analysis.compare_metric]} (configuration − baseline)",
                    note=f"Paired two-level bootstrap, 95 % percentile CI; filled: adjusted p < {analysis.options.alpha} "
                         f"({analysis.options.correction}).")
        writer.plot(path, f"forest plot of Δ {METRIC_LABELS[analysis.compare_metric]} vs the baseline with 95 % CIs, per evaluation set")


def _index(analysis: _Analysis, writer: _Writer, claims: list[dict], flags: list[dict], seconds: float) -> Path:
    options = analysis.options
    lines = [f"# Report: study `{analysis.name}`", "",
             f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `python -m analysis report` from "
             f"`trials.parquet` ({analysis.n_trials} trials) and `predictions.parquet` in `{analysis.out}`.", ""]
    if analysis.problems:
        lines += ["**Incomplete or mismatched study, analysed as it is (`--allow-incomplete`):**", ""]
        lines += [f"- {p}" for p in analysis.problems] + [""]
    lines += ["## Study", "",
              f"- study type: {'respiratory (ICBHI, 4 classes)' if analysis.respiratory else 'heart (binary)'}; "
              f"scale: {analysis.space.get('scale', '?')}",
              f"- configurations ({len(analysis.configurations)}): " + "; ".join(
                  f"`{c.name}` ({len(c.seeds)} seeds)" for c in analysis.configurations),
              f"- settings that vary: {', '.join(analysis.varying) or 'none'}; seeds are replicates",
              f"- comparisons: {analysis.axis} vs baseline `{analysis.baseline}` on {METRIC_LABELS[analysis.compare_metric]}"
              if analysis.baseline is not None else "- comparisons: none (the space declares no compare axis in these trials)",
              "- evaluation sets: " + "; ".join(f"`{e.name}` (n = {e.labels.size}, {e.n_pos} abnormal"
                                                + (f", {e.dropped_recordings} recordings dropped: not scored by every trial" if e.dropped_recordings else "")
                                                + ")" for e in analysis.eval_sets),
              f"- options: {options.n_resamples} bootstrap resamples and permutations, {options.ci_method} intervals, "
              f"{options.correction} correction, α = {options.alpha}, random seed {options.seed}; took {seconds:.1f} s", ""]
    lines += [f"- note: {n}" for n in dict.fromkeys(analysis.notes)]
    for dataset, check in analysis.state.get("data_info", {}).get("split_check", {}).items():
        shared = check["patients_in_train_and_test"]
        lines += [f"- split of `{dataset}`: {check['recordings_train']} train / {check['recordings_test']} test "
                  f"recordings (none in both); {check['patients_train']} train / {check['patients_test']} test "
                  f"patients, **{len(shared)} in both**" + (f" ({', '.join(shared)}): the split is by recording, so "
                                                            "these patients' cycles leak between train and test"
                                                            if shared else "")]
    search = analysis.state.get("search") or {}
    if search.get("complete"):
        best = search["best"]
        lines += ["", "## Hyperparameter search", "",
                  f"- {search['trials']} trials in [search/trials.parquet](search/trials.parquet), "
                  f"{search['stopped_early']} of them stopped early by ASHA; every one evaluated with the weights it "
                  f"kept. Ranked by `{search['metric']}` ({search['mode']}) on the validation split only.",
                  f"- best: trial `{best['trial_id']}`, {search['metric']} = {best['value']:.4f}, settings "
                  + ", ".join(f"`{k}={setting_text(v)}`" for k, v in best["params"].items()),
                  "- configuration `best` is those settings and `default` the space's own, each retrained over the "
                  "seeds of the scale; the comparisons below test `best` against `default` on held-out sets.", ""]
    if claims:
        lines += ["## Paper claims", "", to_markdown(pd.DataFrame(claims)), "(details: [tables/claims.md](tables/claims.md))", ""]
    if flags:
        lines += ["## Sources carrying a pooled ROC-AUC", ""]
        lines += [f"- `{f['configuration']}` on {f['eval_set']}: **{f['source']}** ({f['reason']})" for f in flags] + [""]
    lines += ["## Tables", ""]
    lines += [f"- [tables/{name}.md](tables/{name}.md) (also `.csv`, `.tex`): {description}" for name, description in writer.tables]
    lines += ["", "## Plots", ""]
    lines += [f"- [plots/{name}](plots/{name}): {description}" for name, description in writer.plots]
    lines += ["", "## Method", "",
              "- A configuration is every setting except the seed; seeds are replicates. Only clean predictions are "
              "analysed (no perturbation, no test-time branch ablation).",
              "- Intervals: seed-mean metric, bootstrap over recordings stratified by label"
              + (" (whole patients, stratified by their label mix)" if analysis.respiratory else "")
              + " and over seeds; every configuration and seed shares the same recording draws, and configurations "
              "with equal seed counts share the seed draws, so differences are paired.",
              "- Threshold metrics use each trial's threshold chosen on validation, never on test.",
              "- The paired two-level bootstrap decides the paper claims; the other tests are in `comparisons`, each with "
              "the meaning stated there. p-values are adjusted over the declared family (configurations vs baseline × "
              "evaluation sets), separately per test and metric.",
              f"- Per-source flag (only where the pooled ROC-AUC's CI lies above 0.5): removing the source lowers the pooled "
              f"seed-mean ROC-AUC by ≥ {options.carry_drop}, or the pooled ROC-AUC lies in that source's CI while every other "
              "source's CI contains 0.5."]
    return atomic_write_text(analysis.out / "report.md", "\n".join(lines) + "\n")


def report_study(out: Path, **options) -> dict:
    """Write the analysis report of the finished study in ``out``; returns a summary.

    Options (see :class:`ReportOptions`): baseline (a value of the compare
    axis; default the space's), correction ("holm" or "bh"), n_resamples
    (bootstrap resamples and permutations, default 10,000), alpha (0.05),
    allow_incomplete (analyse an incomplete or mismatched study instead of
    raising StudyError), ci_method ("bca" or "percentile"), seed, carry_drop,
    plots (False writes the tables only).

    Returns dict with out, report (path of report.md), tables and plots
    (paths), claims (claim and verdict), source_flags, problems (what an
    incomplete study lacks), seconds.
    """
    from analysis.robustness import has_robustness_rows, report_robustness  # it imports this module

    started = time.perf_counter()
    settings = ReportOptions(**options)
    analysis = _Analysis(Path(out), settings)
    writer = _Writer(analysis.out)
    rows = analysis.comparisons()
    _main_table(analysis, writer)
    _pascal_table(analysis, writer)
    _intervals_table(analysis, writer)
    if rows:
        _comparisons_table(analysis, writer, rows)
    claims = _claims_table(analysis, writer, rows)
    flags = _per_source(analysis, writer)
    resolution = _resolution_table(analysis, writer)
    if settings.plots:
        _plots(analysis, writer, rows, resolution)
    seconds = time.perf_counter() - started
    report = _index(analysis, writer, claims, flags, seconds)
    summary = {"out": str(analysis.out), "report": str(report),
               "tables": [str(writer.tables_dir / f"{name}.{ext}") for name, _ in writer.tables for ext in ("md", "csv", "tex")],
               "plots": [str(writer.plots_dir / name) for name, _ in writer.plots], "claims": claims, "source_flags": flags,
               "problems": analysis.problems, "notes": list(dict.fromkeys(analysis.notes)), "seconds": seconds}
    if not analysis.respiratory and has_robustness_rows(pd.read_parquet(analysis.out / "predictions.parquet")):
        robustness = report_robustness(analysis.out, correction=settings.correction, n_resamples=settings.n_resamples,
                                       alpha=settings.alpha, ci_method=settings.ci_method, seed=settings.seed,
                                       plots=settings.plots)
        summary.update(tables=summary["tables"] + robustness["tables"], plots=summary["plots"] + robustness["plots"],
                       notes=list(dict.fromkeys(summary["notes"] + robustness["notes"])),
                       seconds=time.perf_counter() - started)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis report", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a finished study folder, e.g. results/branches")
    parser.add_argument("--baseline", default=None, help="value of the compare axis to compare against (default: the space's)")
    parser.add_argument("--correction", choices=CORRECTIONS, default="holm", help="multiple-comparison correction (default holm)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples and permutations (default 10,000)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--ci-method", choices=stats.CI_METHODS, default="bca", help="bootstrap interval (default bca)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="analyse an incomplete or mismatched study as it is (the report says so)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables and report.md only")
    args = parser.parse_args(argv)
    try:
        summary = report_study(args.study, baseline=args.baseline, correction=args.correction, n_resamples=args.resamples,
                               alpha=args.alpha, ci_method=args.ci_method, seed=args.seed,
                               allow_incomplete=args.allow_incomplete, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary['report']}: {len(summary['tables']) // 3} tables, {len(summary['plots'])} plots "
          f"in {summary['seconds']:.1f} s")
    for claim in summary["claims"]:
        print(f"  claim: {claim['claim']}: {claim['verdict']}")
    for flag in summary["source_flags"]:
        print(f"  {flag['configuration']} on {flag['eval_set']}: {flag['source']} carries the pooled ROC-AUC ({flag['reason']})")
    for note in summary["notes"]:
        print(f"  note: {note}")
    return 0
