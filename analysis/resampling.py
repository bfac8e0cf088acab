"""The resampling engine the reports share: every trial's metrics under one set of bootstrap draws.

An evaluation set is resampled once (:func:`resample`): stratified bootstrap
weights of its recordings (patients, for a respiratory study), the same for
every trial, and a kernel that computes every trial's metrics under a block
of weights. Seed-to-seed variation enters through variance components
(:func:`analysis.stats.seed_mean_distribution`), with seed k paired with
seed k in comparisons. On those draws :func:`seed_mean_interval` is what
:func:`analysis.stats.bootstrap_ci` computes for one configuration, and
:func:`paired_bootstrap` what :func:`analysis.stats.paired_bootstrap_test`
computes for two, without drawing again for each.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from analysis.stats import (
    BootstrapCI,
    PairedBootstrapResult,
    auc_kernel,
    bootstrap_interval,
    bootstrap_weight_blocks,
    leave_one_out_weights,
    metric_bounds,
    paired_bootstrap_result,
    resampling_units,
    seed_mean_distribution,
    seed_variance,
)
from analysis.study_data import EvalSet
from study.metrics import confusion_metrics

__all__ = [
    "CONFIDENCE_LEVEL",
    "HEART_METRICS",
    "RESPIRATORY_METRICS",
    "ROC_BAND_RESAMPLES",
    "Kernel",
    "named_generator",
    "heart_kernel",
    "respiratory_kernel",
    "roc_auc_kernel",
    "Resampled",
    "resample",
    "seed_mean_interval",
    "paired_bootstrap",
]

CONFIDENCE_LEVEL = 0.95  # every interval; alpha only sets the verdicts
HEART_METRICS = ("roc_auc", "mcc", "f1", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
RESPIRATORY_METRICS = ("score", "sensitivity", "specificity", "accuracy", "roc_auc")
ROC_BAND_RESAMPLES = 1000

# recording weights (n, B) -> metric name -> values (T, B), one row per trial of the evaluation set
Kernel = Callable[[np.ndarray], dict[str, np.ndarray]]


def named_generator(seed: int, *names: str) -> np.random.Generator:
    """A random generator for one use, named by strings (an evaluation set, a pair of configurations).

    The same seed and names always give the same stream, whatever else was
    drawn before, so adding a table or a configuration leaves the others' draws alone.
    """
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in names)])


def heart_kernel(eval_set: EvalSet) -> Kernel:
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
        metrics["roc_auc"] = auc_kernel(eval_set.binary, eval_set.probs, weights)
        return {m: metrics[m] for m in HEART_METRICS}

    return kernel


def respiratory_kernel(eval_set: EvalSet) -> Kernel:
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
        return {
            "score": (sensitivity + specificity) / 2,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "accuracy": accuracy,
            "roc_auc": auc_kernel(eval_set.binary, eval_set.probs, weights),
        }

    return kernel


def roc_auc_kernel(eval_set: EvalSet) -> Kernel:
    """ROC-AUC (T, B) alone, for analyses that need no threshold metric."""
    return lambda weights: {"roc_auc": auc_kernel(eval_set.binary, eval_set.probs, weights)}


@dataclass
class Resampled:
    """Every trial's metrics on one evaluation set: on all recordings, per bootstrap resample and left-one-out."""

    eval_set: EvalSet
    point: dict[str, np.ndarray]  # metric -> (T,)
    per_resample: dict[str, np.ndarray]  # metric -> (T, B)
    jackknife: dict[str, list[np.ndarray]]  # metric -> one (T, m) array per resampled stratum of m units
    band_weights: np.ndarray  # (n, ≤ ROC_BAND_RESAMPLES) the first resamples' recording weights
    rows: dict[str, int] = field(default_factory=dict)  # trial id -> row of the (T, ...) arrays

    def __post_init__(self):
        self.rows = self.eval_set.row_of()


def resample(eval_set: EvalSet, kernel: Kernel, n_resamples: int, rng: np.random.Generator) -> Resampled:
    """Run ``kernel`` on ``n_resamples`` stratified bootstrap resamples of ``eval_set``, block by block.

    The draws are :func:`analysis.stats.bootstrap_ci`'s (label strata, or
    patient groups stratified by their label mix); the leave-one-unit-out
    values are the multi-sample jackknife its BCa interval needs.
    """
    units, strata = resampling_units(eval_set.binary, eval_set.groups)
    blocks, band = [], []
    for weights in bootstrap_weight_blocks(units, strata, n_resamples, rng):
        blocks.append(kernel(weights))
        if sum(b.shape[1] for b in band) < ROC_BAND_RESAMPLES:
            band.append(weights[:, : ROC_BAND_RESAMPLES - sum(b.shape[1] for b in band)])
    per_resample = {m: np.concatenate([block[m] for block in blocks], axis=1) for m in blocks[0]}
    point = {m: values[:, 0] for m, values in kernel(np.ones((units.size, 1))).items()}
    left_out = [kernel(weights) for weights in leave_one_out_weights(units, np.arange(int(units.max()) + 1))]
    jackknife = {
        m: [np.concatenate([block[m] for block in left_out], axis=1)[:, stratum] for stratum in strata] for m in point
    }
    return Resampled(eval_set, point, per_resample, jackknife, np.concatenate(band, axis=1))


def seed_mean_interval(
    resampled: Resampled,
    trial_ids: list[str],
    metric: str,
    method: str,
    confidence_level: float = CONFIDENCE_LEVEL,
) -> BootstrapCI:
    """The seed-mean metric of some trials (one per seed) with its bootstrap interval, on the shared draws.

    What :func:`analysis.stats.bootstrap_ci` computes for these trials; the
    BCa jackknife leaves out each recording (or patient) and each seed.
    """
    rows = [resampled.rows[t] for t in trial_ids]
    n_seeds = len(rows)
    full = resampled.point[metric][rows]
    per_resample = resampled.per_resample[metric][rows]
    distribution = seed_mean_distribution(per_resample, full, metric_bounds(metric))
    variance = seed_variance(per_resample, full) if n_seeds > 1 else None

    def jackknife() -> list[np.ndarray]:
        values = [per_unit[rows].mean(axis=0) for per_unit in resampled.jackknife[metric]]
        if n_seeds > 1:
            values.append((full.sum() - full) / (n_seeds - 1))
        return values

    return bootstrap_interval(
        distribution,
        float(full.mean()),
        confidence_level=confidence_level,
        method=method,
        jackknife=jackknife,
        n_seeds=n_seeds,
        variance=variance,
    )


def paired_bootstrap(
    resampled: Resampled,
    trials_a: list[str],
    trials_b: list[str],
    metric: str,
    confidence_level: float = CONFIDENCE_LEVEL,
    resampled_b: Resampled | None = None,
) -> PairedBootstrapResult:
    """Paired bootstrap of the seed-mean ``metric`` of a minus b, on the shared draws, seeds paired.

    ``trials_a`` and ``trials_b`` hold one trial per common seed, in the same
    seed order. What :func:`analysis.stats.paired_bootstrap_test` computes:
    the percentile interval of the difference and its two-sided p-value.
    With ``resampled_b`` the b trials are scored on another evaluation set
    (e.g. a model's change from one test set to another): its recordings
    are resampled independently, and seed k is still paired with seed k.
    """
    other = resampled if resampled_b is None else resampled_b
    rows_a = [resampled.rows[t] for t in trials_a]
    rows_b = [other.rows[t] for t in trials_b]
    per_seed = resampled.per_resample[metric][rows_a] - other.per_resample[metric][rows_b]
    points = resampled.point[metric][rows_a], other.point[metric][rows_b]
    differences = seed_mean_distribution(per_seed, points[0] - points[1], metric_bounds(metric, difference=True))
    value_a, value_b = (float(point.mean()) for point in points)
    return paired_bootstrap_result(metric, value_a, value_b, differences, confidence_level)
