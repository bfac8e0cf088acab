"""Confidence intervals and paired significance tests over per-recording predictions.

Every function works on the probabilities a trial saved for one evaluation
set: ``y`` holds the labels of the n recordings (0 normal, 1 abnormal) and a
model's predictions are an array of shape (n,) for one run, or (n_seeds, n)
for the same recordings scored by several training seeds. Resampling is
vectorised: a bootstrap resample is a row of multiplicities ("counts") of the
recordings, and every metric is computed for a whole block of rows at once.

Metrics by name: "roc_auc" (threshold-free) and the threshold metrics of
:func:`study.metrics.confusion_metrics`: "accuracy", "balanced_accuracy",
"sensitivity", "specificity", "mcc", "f1" (a recording is predicted abnormal
when its score >= threshold; pass 0/1 predictions to use thresholds of your own).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from study.metrics import check_binary_labels, confusion_metrics

METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "mcc", "f1")
CI_METHODS = ("percentile", "bca")
# The range each metric can take; differences of two metrics span twice it.
METRIC_BOUNDS = {"mcc": (-1.0, 1.0)}  # every other metric (rates, ROC-AUC, F1, the ICBHI score) lies in [0, 1]
# Resamples are processed in blocks of about this many (resample, recording)
# cells, so memory stays near 16 MB per array whatever n_resamples and n are.
_BLOCK_CELLS = 2_000_000

__all__ = [
    "METRICS",
    "CI_METHODS",
    "BootstrapCI",
    "DelongVariance",
    "DelongResult",
    "PairedBootstrapResult",
    "PermutationResult",
    "McNemarResult",
    "WilcoxonResult",
    "SeedVariance",
    "METRIC_BOUNDS",
    "metric_bounds",
    "auc_kernel",
    "metric_kernel",
    "weighted_auc",
    "auc_resampled",
    "resampling_units",
    "stratified_bootstrap_indices",
    "bootstrap_weight_blocks",
    "leave_one_out_weights",
    "seed_variance",
    "seed_mean_distribution",
    "seed_mean_bootstrap",
    "leave_one_out_values",
    "bootstrap_interval",
    "bootstrap_p_value",
    "bootstrap_ci",
    "seed_mean_ci",
    "delong_covariance",
    "delong_variance",
    "delong_test",
    "paired_bootstrap_result",
    "paired_bootstrap_test",
    "auc_swap_effects",
    "paired_permutation_test",
    "mcnemar_test",
    "walsh_interval",
    "wilcoxon_seeds",
    "adjust_pvalues",
    "smallest_adjusted_p",
    "resampling_floor_warning",
    "hanley_mcneil_variance",
    "auc_difference_mde",
]


class BootstrapCI(NamedTuple):
    """An estimate with its bootstrap confidence interval, and the bootstrap distribution it came from."""

    estimate: float
    low: float
    high: float
    method: str  # the interval built: "bca", "percentile", or why BCa fell back / no interval exists
    confidence_level: float
    distribution: np.ndarray  # (B,) the statistic in each bootstrap resample
    n_seeds: int = 0  # training seeds the estimate averages over (0: not a seed mean)
    seed_variance: float = math.nan  # V_seed of :class:`SeedVariance` (NaN: not a seed mean of several seeds)
    recording_variance: float = math.nan  # V_rec of :class:`SeedVariance`

    @property
    def seed_dominated(self) -> bool:
        """Whether seed-to-seed variation outweighs the test set's (V_seed > V_rec): more seeds narrow it most."""
        return bool(self.seed_variance > self.recording_variance)

    @property
    def n_resamples(self) -> int:
        return int(self.distribution.size)

    @property
    def standard_error(self) -> float:
        """The standard deviation of the bootstrap distribution."""
        return float(self.distribution.std(ddof=1))


class DelongVariance(NamedTuple):
    auc: float
    variance: float


class DelongResult(NamedTuple):
    auc_a: float
    auc_b: float
    difference: float
    var_a: float
    var_b: float
    cov: float
    z: float
    p_value: float


class PairedBootstrapResult(NamedTuple):
    metric: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p_value: float
    n_resamples: int
    confidence_level: float


class PermutationResult(NamedTuple):
    metric: str
    value_a: float
    value_b: float
    difference: float
    p_value: float
    n_permutations: int


class McNemarResult(NamedTuple):
    accuracy_a: float
    accuracy_b: float
    n_only_a_correct: int
    n_only_b_correct: int
    statistic: float
    p_value: float
    method: str
    standard_error: float  # of the accuracy difference a - b


class WilcoxonResult(NamedTuple):
    statistic: float
    p_value: float
    n_seeds: int
    n_nonzero: int
    mean_difference: float
    method: str
    note: str
    estimate: float = math.nan  # Hodges-Lehmann: the median of the Walsh averages of the seed differences
    low: float = math.nan  # the signed-rank confidence interval (NaN where this many seeds cannot reach it)
    high: float = math.nan
    confidence_level: float = math.nan  # the interval's exact level (at least the requested one)
    smallest_p: float = math.nan  # the smallest two-sided p this many non-zero differences can give

    @property
    def can_reject(self) -> bool:
        """Whether some outcome of this many seeds is significant at 0.05 (at least 6 non-zero differences)."""
        return bool(self.smallest_p < 0.05)


class SeedVariance(NamedTuple):
    """Variance components of a seed mean (:func:`seed_variance`), each a variance of the seed mean itself."""

    recording: float  # V_rec: over new test recordings, the seeds held fixed (bootstrap; many degrees of freedom)
    seed: float  # V_seed: between the seeds' own values, divided by S (S - 1 degrees of freedom)
    total: float  # V_rec plus the seed main effect, V_seed less its recording-interaction part, at least 0
    df: float  # Satterthwaite degrees of freedom of ``total``, at least S - 1 (inf: no seed component at all)


# ----------------------------------------------------------------------------
# input checks


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _check_labels(y) -> np.ndarray:
    labels = check_binary_labels(y, "y")
    n_pos = int(labels.sum())
    if n_pos in (0, labels.size):
        raise ValueError(f"y must contain both classes, got {n_pos} positives out of {labels.size}")
    return labels


def _check_scores(scores, n: int, name: str) -> np.ndarray:
    """Scores as float64 of shape (n_seeds, n); a 1-D input becomes one seed."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2 or values.shape[1] != n or values.shape[0] == 0:
        raise ValueError(f"{name} must have shape ({n},) or (n_seeds, {n}) to match y, got {np.shape(scores)}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains {np.count_nonzero(~np.isfinite(values))} NaN/inf values")
    return values


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _check_threshold(threshold, n_seeds: int) -> np.ndarray:
    """A scalar threshold or one per seed, as a float64 array of shape (n_seeds,)."""
    values = np.asarray(threshold, dtype=np.float64)
    if values.ndim > 1 or values.size not in (1, n_seeds) or not np.isfinite(values).all():
        raise ValueError(f"threshold must be a finite number or one per seed ({n_seeds}), got {threshold!r}")
    return np.broadcast_to(values.reshape(-1), (n_seeds,))


def _check_count(value, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_confidence(confidence_level) -> float:
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    return float(confidence_level)


# ----------------------------------------------------------------------------
# metrics under many weightings of the recordings


def _half_below(values: np.ndarray, sorted_reference: np.ndarray) -> np.ndarray:
    """For each value: reference entries below it plus half of those equal to it."""
    left = np.searchsorted(sorted_reference, values, side="left")
    right = np.searchsorted(sorted_reference, values, side="right")
    return (left + right) / 2


def auc_kernel(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC (S, B) of scores (S, n) under recording weights (n, B); NaN where a weighting leaves one class.

    Unchecked: ``y`` is a 0/1 array (n,), scores and weights are finite
    float64 (weights non-negative); :func:`weighted_auc` is the checked form.
    A positive scored s counts each negative below s fully and each tie by
    half (Mann-Whitney U with midranks). With the negatives sorted once,
    C[k] = total weight of the k lowest negatives, so the weight below a
    positive is C at its left insertion point and below-or-tied is C at its
    right one: U = sum_i w_i (C[left_i] + C[right_i]) / 2, with no sort per
    resample. Weights are recording-major (n, B) so that gathers copy whole
    rows and the cumulative sum runs across contiguous rows (3x faster).
    """
    positive = y == 1
    w_pos, w_neg = weights[positive], weights[~positive]
    pairs = w_pos.sum(axis=0) * w_neg.sum(axis=0)
    cumulative = np.zeros((w_neg.shape[0] + 1, weights.shape[1]))
    aucs = np.empty((scores.shape[0], weights.shape[1]))
    for seed, seed_scores in enumerate(scores):  # a handful of seeds, never a loop over resamples
        negatives, positives = seed_scores[~positive], seed_scores[positive]
        order = np.argsort(negatives, kind="stable")
        sorted_negatives = negatives[order]
        left = np.searchsorted(sorted_negatives, positives, side="left")
        right = np.searchsorted(sorted_negatives, positives, side="right")
        np.cumsum(w_neg[order], axis=0, out=cumulative[1:])
        u_statistic = np.einsum("ib,ib->b", w_pos, cumulative[left] + cumulative[right]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            aucs[seed] = np.where(pairs > 0, u_statistic / pairs, np.nan)
    return aucs


def metric_kernel(
    metric: str, y: np.ndarray, scores: np.ndarray, threshold: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Metric (S, B) of scores (S, n) under recording weights (n, B)."""
    if metric == "roc_auc":
        return auc_kernel(y, scores, weights)
    predicted = (scores >= threshold[:, None]).astype(np.float64)
    positive = y.astype(np.float64)
    tp = (predicted * positive) @ weights
    fp = (predicted * (1 - positive)) @ weights
    n_pos = positive @ weights
    n_neg = weights.sum(axis=0) - n_pos
    return confusion_metrics(tp, fp, n_neg - fp, n_pos - tp)[metric]


def weighted_auc(y, scores, weights) -> np.ndarray:
    """ROC-AUC under many non-negative weightings of the recordings at once.

    Parameters
    ----------
    y : array of shape (n,), labels 0/1 with both classes present.
    scores : array of shape (n,) or (n_seeds, n), higher = more abnormal.
    weights : array of shape (B, n), e.g. bootstrap multiplicities, 0/1
        jackknife masks or Bayesian-bootstrap Dirichlet weights.

    Returns
    -------
    array of shape (B,) (or (n_seeds, B)); NaN where a weighting leaves no
    positive or no negative.
    """
    labels = _check_labels(y)
    values = _check_scores(scores, labels.size, "scores")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != labels.size:
        raise ValueError(f"weights must have shape (B, {labels.size}), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    aucs = auc_kernel(labels, values, np.ascontiguousarray(w.T))
    return aucs[0] if np.ndim(scores) == 1 else aucs


def auc_resampled(y, scores, idx) -> np.ndarray:
    """ROC-AUC of each resample of the recordings, without a loop over resamples.

    Parameters
    ----------
    y : array of shape (n,), labels 0/1 with both classes present.
    scores : array of shape (n,) or (n_seeds, n).
    idx : integer array of shape (B, m), row b lists the recordings (indices
        into y, with repeats) of resample b; m is usually n.

    Returns
    -------
    array of shape (B,) (or (n_seeds, B)); NaN for a resample with one class.
    Equal to ``sklearn.metrics.roc_auc_score(y[idx[b]], scores[idx[b]])``.
    """
    labels = _check_labels(y)
    rows = np.asarray(idx)
    if rows.ndim != 2 or rows.dtype.kind not in "iu":
        raise ValueError(f"idx must be a 2-D integer array (n_resamples, m), got {rows.dtype} {rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= labels.size):
        raise ValueError(f"idx values must lie in [0, {labels.size}), got [{rows.min()}, {rows.max()}]")
    values = _check_scores(scores, labels.size, "scores")
    n_resamples = rows.shape[0]
    # Multiplicities laid out recording-major (n, B), as the kernel wants them.
    flat = (rows * n_resamples + np.arange(n_resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=labels.size * n_resamples).reshape(labels.size, n_resamples)
    aucs = auc_kernel(labels, values, counts.astype(np.float64))
    return aucs[0] if np.ndim(scores) == 1 else aucs


# ----------------------------------------------------------------------------
# resampling plans


def resampling_units(y: np.ndarray, groups) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unit of each recording (n,), and the strata of units resampled separately (arrays of unit ids).

    Without groups a unit is a recording and the strata are the two labels.
    With groups a unit is a group (patient), stratified by whether it holds
    only normals, only abnormals or both: every resample then keeps both
    classes, and with one recording per group this is the label stratification.
    """
    if groups is None:
        return np.arange(y.size), [np.flatnonzero(y == 0), np.flatnonzero(y == 1)]
    group_values = np.asarray(groups)
    if group_values.shape != y.shape:
        raise ValueError(f"groups must have shape {y.shape} like y, got {group_values.shape}")
    if group_values.dtype.kind == "f" and np.isnan(group_values).any():
        raise ValueError("groups contains NaN; give every recording a group (its own id if unknown)")
    _, units = np.unique(group_values, return_inverse=True)
    has_pos = np.bincount(units, weights=y) > 0
    has_neg = np.bincount(units, weights=1 - y) > 0
    pattern = has_pos * 2 + has_neg
    strata = [np.flatnonzero(pattern == kind) for kind in (1, 2, 3)]
    return units.reshape(-1), [stratum for stratum in strata if stratum.size]


def _unit_counts(strata: list[np.ndarray], n_units: int, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (n_units, n_rows) of units drawn with replacement within each stratum."""
    draws = np.concatenate(
        [stratum[rng.integers(0, stratum.size, size=(n_rows, stratum.size))] for stratum in strata], axis=1
    )
    flat = (draws * n_rows + np.arange(n_rows)[:, None]).ravel()
    return np.bincount(flat, minlength=n_units * n_rows).reshape(n_units, n_rows)


def stratified_bootstrap_indices(y, n_resamples: int, rng=None, groups=None) -> np.ndarray:
    """Bootstrap resamples of the recordings, stratified by label.

    Without ``groups`` each row draws the normals from the normals and the
    abnormals from the abnormals, with replacement, so every resample keeps
    the class counts. With ``groups`` (patient ids, shape (n,)) whole groups
    are drawn with replacement (cluster bootstrap), stratified by the label
    mix of a group; a resample then holds a varying number of recordings.

    Returns
    -------
    Without groups: int array (n_resamples, n) of recording indices. With
    groups: int array (n_resamples, n) of multiplicities (how many times each
    recording is in the resample), since rows differ in length; every
    function here takes multiplicities through ``weighted_auc``.
    """
    labels = _check_labels(y)
    n_resamples = _check_count(n_resamples, "n_resamples")
    generator = _as_rng(rng)
    units, strata = resampling_units(labels, groups)
    if groups is None:
        return np.concatenate(
            [stratum[generator.integers(0, stratum.size, size=(n_resamples, stratum.size))] for stratum in strata],
            axis=1,
        )
    return _unit_counts(strata, units.max() + 1, n_resamples, generator)[units].T


def bootstrap_weight_blocks(units: np.ndarray, strata: list[np.ndarray], n_resamples: int, rng: np.random.Generator):
    """Yield recording weights (n, rows) for n_resamples stratified resamples, block by block.

    ``units`` and ``strata`` are :func:`resampling_units`'; the weights are
    multiplicities (float64), the rows of all blocks add up to n_resamples.
    """
    n_units = units.max() + 1
    rows_per_block = max(1, _BLOCK_CELLS // units.size)
    identity = np.array_equal(units, np.arange(units.size))
    for start in range(0, n_resamples, rows_per_block):
        counts = _unit_counts(strata, n_units, min(rows_per_block, n_resamples - start), rng)
        yield (counts if identity else counts[units]).astype(np.float64)


def leave_one_out_weights(units: np.ndarray, left_out: np.ndarray):
    """Yield recording weights (n, k) that each leave out one unit of ``left_out`` (unit ids), block by block.

    Column j of the blocks in turn is 0 for the recordings of unit left_out[j] and 1 elsewhere.
    """
    per_block = max(1, _BLOCK_CELLS // units.size)
    for start in range(0, left_out.size, per_block):
        yield (units[:, None] != left_out[None, start : start + per_block]).astype(np.float64)


def metric_bounds(metric: str, difference: bool = False) -> tuple[float, float]:
    """The range of ``metric`` (of a difference of two values of it with ``difference``)."""
    low, high = METRIC_BOUNDS.get(metric, (0.0, 1.0))
    return (low - high, high - low) if difference else (low, high)


def seed_variance(per_seed: np.ndarray, point: np.ndarray) -> SeedVariance:
    """Variance components of a seed mean from the seeds' bootstrap values (S, ..., B) and point values (S, ...).

    The seed mean of R recordings varies through seeds (variance component
    a), recordings (b) and their interaction (ab): var = a/S + b/R + ab/(SR).
    Resampling seeds and recordings independently (a two-level bootstrap)
    counts ab up to three times (McCullagh 2000, Bernoulli 6:285; Owen
    2007, Ann. Appl. Stat. 1:386). Here: the recordings-only bootstrap
    variance of the seed mean, V_rec = b/R + ab/(SR); the between-seed
    variance of ``point`` over S, V_seed = a/S + ab/(SR) (ddof 1); and ab/R
    as Q, the mean within-resample variance of the seeds' deviations from
    their own point values. total = V_rec + max(V_seed - Q/S, 0): the seed
    main effect is truncated at zero, as negative variance-component
    estimates are.

    V_rec and Q rest on every resample; V_seed on S values only, so the
    total is uncertain in proportion to it. Its degrees of freedom are
    Satterthwaite's (1946), df = total^2 / (V'^2 / (S - 1)): S - 1 when
    seeds dominate (never fewer), growing without bound as they stop mattering. V' is not
    V_seed itself but its median given V_seed, V_seed (S - 1) / chi2_{S-1}(0.5):
    seeds that agree by chance make V_seed small, and with V_seed in the
    formula they would also make df large, narrowing the interval twice
    exactly when it is too narrow (``python -m analysis.calibrate`` measures
    the coverage that results at 3, 5 and 10 seeds).
    """
    n_seeds = per_seed.shape[0]
    v_rec = per_seed.mean(axis=0).var(axis=-1)
    deviations = per_seed - point[..., None]
    interaction = ((deviations - deviations.mean(axis=0)) ** 2).sum(axis=0).mean(axis=-1) / (n_seeds - 1)
    v_seed = point.var(axis=0, ddof=1) / n_seeds
    total = v_rec + np.maximum(v_seed - interaction / n_seeds, 0.0)
    v_seed_median = v_seed * (n_seeds - 1) / sps.chi2.median(n_seeds - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # never below S - 1: seeds alone (V_rec = 0) are exactly Student's t on S - 1
        df = np.where(v_seed > 0, np.maximum(total**2 * (n_seeds - 1) / v_seed_median**2, n_seeds - 1), np.inf)
    return SeedVariance(v_rec, v_seed, total, df)


def _t_stretch(distribution: np.ndarray, estimate: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Stretch a distribution (..., B) about ``estimate`` from normal to Student's t tails with ``df``.

    Each value keeps its rank; its deviation from the estimate is multiplied by t_df(q) / z(q), the ratio of
    the t and normal quantiles at its rank's level q. A normal distribution becomes exactly the t, so every
    quantile and every p-value read from it is the t interval's and the t test's; a skewed one keeps its
    skew. Ranks rather than standard scores, so a long tail (a ROC-AUC near 1) is stretched in proportion,
    not by the t quantile of an extreme score.
    """
    levels = (sps.rankdata(distribution, axis=-1) - 0.5) / distribution.shape[-1]
    z, t = special.ndtri(levels), special.stdtrit(df[..., None], levels)
    at_median = (sps.norm.pdf(0) / sps.t.pdf(0, df))[..., None]  # the limit of t / z at q = 1/2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(z) > 1e-9, t / z, at_median)
    return estimate + (distribution - estimate) * ratio


def seed_mean_distribution(
    per_seed: np.ndarray, point: np.ndarray, bounds: tuple[float, float] = (-np.inf, np.inf)
) -> np.ndarray:
    """Bootstrap distribution (B,) of a seed mean over new recordings and new seeds.

    ``per_seed`` (S, B) holds each seed's statistic under B resamples of the
    recordings (the same resamples for every seed), ``point`` (S,) each
    seed's statistic on all recordings. The recordings-only distribution of
    the seed mean is rescaled about the estimate to the variance of
    :func:`seed_variance` (keeping its shape: skew near ROC-AUC 1, bias),
    then stretched from normal to Student's t tails with that variance's
    Satterthwaite degrees of freedom (:func:`_t_stretch`). The variance of
    a mean of 3 seeds rests on 2 degrees of freedom, too few to treat it
    as known (a normal interval) where seeds dominate. Values are clipped to ``bounds``
    (e.g. [0, 1] for a seed mean of ROC-AUCs; :func:`metric_bounds`).

    With one seed it is the recordings-only distribution; where a resample
    has no finite value it is returned as is (the interval reports that).
    Extra axes between the first and the last (e.g. points of an ROC curve:
    (S, G, B) with point (S, G)) are handled elementwise.
    """
    recordings = per_seed.mean(axis=0)
    if per_seed.shape[0] == 1 or not np.isfinite(per_seed).all():
        return recordings
    estimate = point.mean(axis=0)[..., None]
    components = seed_variance(per_seed, point)
    with np.errstate(divide="ignore", invalid="ignore"):  # no recording variance: nothing to rescale
        scale = np.where(components.recording > 0, np.sqrt(components.total / components.recording), 1.0)
    rescaled = estimate + (recordings - estimate) * scale[..., None]
    return np.clip(_t_stretch(rescaled, estimate, components.df), *bounds)


def seed_mean_bootstrap(metric, y, models, units, strata, n_resamples, rng, resample_seeds) -> np.ndarray:
    """Bootstrap distribution (n_models, B) of each model's seed-mean metric, and of a - b for two models.

    ``models`` is a list of (scores (S, n), threshold (S,)) with a common S.
    Resample b draws recordings (stratified; one draw shared by every seed
    and model, so comparisons are paired). With ``resample_seeds`` the
    seed-to-seed variation enters through :func:`seed_mean_distribution`
    (seed k of one model paired with seed k of the other); without it the
    seeds are taken as fixed. Row -1 is the paired difference when there are two models.
    """
    blocks = [
        [metric_kernel(metric, y, scores, threshold, w) for scores, threshold in models]
        for w in bootstrap_weight_blocks(units, strata, n_resamples, rng)
    ]
    per_seed = [np.concatenate([block[k] for block in blocks], axis=1) for k in range(len(models))]
    ones = np.ones((y.size, 1))
    points = [metric_kernel(metric, y, scores, threshold, ones)[:, 0] for scores, threshold in models]
    if len(models) == 2:
        per_seed.append(per_seed[0] - per_seed[1])
        points.append(points[0] - points[1])
    if not resample_seeds:
        return np.stack([values.mean(axis=0) for values in per_seed])
    bounds = [metric_bounds(metric)] * len(models) + [metric_bounds(metric, difference=True)] * (
        len(per_seed) - len(models)
    )
    return np.stack([seed_mean_distribution(v, point, b) for v, point, b in zip(per_seed, points, bounds, strict=True)])


def leave_one_out_values(metric: str, y: np.ndarray, scores: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Metric (S, n) of scores (S, n) with recording i left out, in closed form.

    Leaving a positive out removes the negatives it beats from U (and one
    positive from the pair count); leaving a negative out removes the
    positives that beat it. For threshold metrics one confusion count drops by one.
    """
    positive = y == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if metric == "roc_auc":
        values = np.empty(scores.shape)
        for seed, seed_scores in enumerate(scores):
            negatives, positives = np.sort(seed_scores[~positive]), np.sort(seed_scores[positive])
            beaten = _half_below(seed_scores[positive], negatives)  # negatives each positive beats
            beating = n_pos - _half_below(seed_scores[~positive], positives)  # positives beating each negative
            u_statistic = beaten.sum()
            values[seed, positive] = (u_statistic - beaten) / ((n_pos - 1) * n_neg)
            values[seed, ~positive] = (u_statistic - beating) / (n_pos * (n_neg - 1))
        return values
    predicted = scores >= threshold[:, None]
    tp = (predicted & positive).sum(axis=1, keepdims=True) - (predicted & positive)
    fp = (predicted & ~positive).sum(axis=1, keepdims=True) - (predicted & ~positive)
    pos_left, neg_left = n_pos - positive, n_neg - ~positive
    return confusion_metrics(tp, fp, neg_left - fp, pos_left - tp)[metric]


def _jackknife_values(metric, y, scores, threshold, units, strata, resample_seeds) -> list[np.ndarray]:
    """Leave-one-out values of the seed-mean metric, one array per resampled population.

    The populations are the strata of units (recordings or groups) and, when
    seeds are resampled, the seeds: the multi-sample jackknife that the BCa
    acceleration needs (Efron & Tibshirani 1993, eq. 14.15; as in scipy).
    """
    n_seeds = scores.shape[0]
    if np.array_equal(units, np.arange(units.size)):
        per_recording = leave_one_out_values(metric, y, scores, threshold).mean(axis=0)
        samples = [per_recording[stratum] for stratum in strata]
    else:
        samples = [
            np.concatenate(
                [
                    metric_kernel(metric, y, scores, threshold, weights).mean(axis=0)
                    for weights in leave_one_out_weights(units, stratum)
                ]
            )
            for stratum in strata
        ]
    if resample_seeds and n_seeds > 1:
        full = metric_kernel(metric, y, scores, threshold, np.ones((y.size, 1)))[:, 0]
        samples.append((full.sum() - full) / (n_seeds - 1))
    return samples


def _bca_levels(distribution: np.ndarray, estimate: float, jackknife: list[np.ndarray], alpha: float) -> np.ndarray:
    """Quantile levels (2,) of the BCa interval (Efron & Tibshirani 1993, 14.3)."""
    n_resamples = distribution.size
    below = (np.count_nonzero(distribution < estimate) + np.count_nonzero(distribution <= estimate)) / (2 * n_resamples)
    # Keep z0 finite when the estimate lies outside the bootstrap distribution.
    z0 = special.ndtri(np.clip(below, 1 / (2 * n_resamples), 1 - 1 / (2 * n_resamples)))
    numerator = denominator = 0.0
    for values in jackknife:
        m = values.size
        u = (m - 1) * (values.mean() - values)
        numerator += np.sum(u**3) / m**3
        denominator += np.sum(u**2) / m**2
    acceleration = numerator / (6 * denominator**1.5) if denominator > 0 else 0.0
    z = special.ndtri(np.array([alpha / 2, 1 - alpha / 2])) + z0
    return special.ndtr(z0 + z / (1 - acceleration * z))


def bootstrap_interval(
    distribution: np.ndarray,
    estimate: float,
    *,
    confidence_level: float = 0.95,
    method: str = "percentile",
    jackknife: Callable[[], list[np.ndarray]] | None = None,
    n_seeds: int = 0,
    variance: SeedVariance | None = None,
) -> BootstrapCI:
    """The confidence interval of a statistic from its bootstrap distribution (B,).

    "percentile" takes the distribution's alpha/2 and 1 - alpha/2 quantiles;
    "bca" corrects those levels for bias and skew (Efron & Tibshirani 1993,
    14.3) with the acceleration from ``jackknife()``: the statistic's
    leave-one-out values, one array per resampled population (the
    multi-sample jackknife; called only when BCa needs it). Where a
    leave-one-out value is not finite the interval falls back to percentile
    and ``method`` says so; where some resample has no finite statistic
    there is no interval (low = high = NaN). A constant distribution gives
    low = high = that constant. ``variance`` (a seed mean's components, scalar) is kept in the result.
    """
    components = (float(variance.seed), float(variance.recording)) if variance is not None else (math.nan, math.nan)
    if method not in CI_METHODS or (method == "bca" and jackknife is None):
        raise ValueError(f"method must be one of {CI_METHODS} (bca needs jackknife), got {method!r}")
    alpha = 1 - confidence_level
    if not np.isfinite(distribution).all():
        return BootstrapCI(
            estimate,
            math.nan,
            math.nan,
            "undefined in some resamples",
            confidence_level,
            distribution,
            n_seeds,
            *components,
        )
    if np.ptp(distribution) == 0:
        value = float(distribution[0])
        return BootstrapCI(estimate, value, value, method, confidence_level, distribution, n_seeds, *components)
    levels, used = np.array([alpha / 2, 1 - alpha / 2]), "percentile"
    if method == "bca":
        leave_one_out = jackknife()
        if all(np.isfinite(values).all() for values in leave_one_out):
            levels, used = _bca_levels(distribution, estimate, leave_one_out, alpha), "bca"
        else:
            used = "percentile (BCa undefined: a left-out unit leaves one class)"
    low, high = (float(q) for q in np.quantile(distribution, levels))
    return BootstrapCI(estimate, low, high, used, confidence_level, distribution, n_seeds, *components)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p of "no difference" from a paired difference's bootstrap distribution (B,).

    The smallest alpha at which the percentile interval excludes 0:
    p = 2 min(#{d <= 0}, #{d >= 0}) with the +1 correction of Davison &
    Hinkley, (2 (tail + 1)) / (B + 1) capped at 1, so p > 0 and its floor is 2 / (B + 1).
    """
    tail = int(min(np.count_nonzero(differences <= 0), np.count_nonzero(differences >= 0)))
    return min(1.0, 2 * (tail + 1) / (differences.size + 1))


def bootstrap_ci(
    y,
    probs,
    metric: str = "roc_auc",
    *,
    threshold=0.5,
    n_resamples: int = 10_000,
    confidence_level: float = 0.95,
    method: str = "bca",
    groups=None,
    resample_seeds: bool = True,
    rng=None,
) -> BootstrapCI:
    """Bootstrap confidence interval of a metric averaged over training seeds.

    Each resample draws the recordings with replacement within each label
    (or whole groups, see :func:`stratified_bootstrap_indices`), the same
    draw for every seed; its statistic is the mean of the per-seed metrics.
    When ``resample_seeds``, seed-to-seed variation is added by
    :func:`seed_mean_distribution` (variance components, which unlike
    drawing seeds with replacement as well does not count the seed x
    recording interaction twice). The interval thus reflects both the finite
    test set and seed-to-seed variation (a model's quality is a distribution
    over seeds).

    scipy.stats.bootstrap resamples each of its samples independently, so it
    cannot share one recording draw across seeds, nor draw clusters; the
    resampling and the BCa correction are therefore written here (the BCa
    part follows scipy's multi-sample formula and agrees with
    scipy.stats.bootstrap for a single seed).

    Parameters
    ----------
    y : array (n,), labels 0/1 with both classes present.
    probs : array (n,) or (n_seeds, n), scores of the same n recordings.
    metric : one of METRICS.
    threshold : for threshold metrics, a number or one per seed (n_seeds,).
    n_resamples : bootstrap resamples.
    confidence_level : e.g. 0.95.
    method : "bca" (bias-corrected and accelerated) or "percentile".
    groups : optional array (n,) of patient ids for a cluster bootstrap.
    resample_seeds : include seed-to-seed variation (ignored with one seed); False takes the seeds as fixed.
    rng : numpy Generator, int seed or None.

    Returns
    -------
    BootstrapCI(estimate, low, high, method, confidence_level, distribution,
    n_seeds) (see :func:`bootstrap_interval`); estimate is the seed-mean
    metric on all recordings, distribution its (n_resamples,) bootstrap values.
    """
    labels = _check_labels(y)
    scores = _check_scores(probs, labels.size, "probs")
    metric = _check_metric(metric)
    thresholds = _check_threshold(threshold, scores.shape[0])
    n_resamples = _check_count(n_resamples, "n_resamples", 2)
    confidence_level = _check_confidence(confidence_level)
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
    units, strata = resampling_units(labels, groups)
    distribution = seed_mean_bootstrap(
        metric, labels, [(scores, thresholds)], units, strata, n_resamples, _as_rng(rng), resample_seeds
    )[0]
    estimate = float(metric_kernel(metric, labels, scores, thresholds, np.ones((labels.size, 1))).mean())
    return bootstrap_interval(
        distribution,
        estimate,
        confidence_level=confidence_level,
        method=method,
        n_seeds=scores.shape[0],
        jackknife=lambda: _jackknife_values(metric, labels, scores, thresholds, units, strata, resample_seeds),
    )


def seed_mean_ci(
    values, *, confidence_level: float = 0.95, method: str = "bca", n_resamples: int = 9_999, rng=None
) -> BootstrapCI:
    """Bootstrap CI of the mean of per-seed values (one number per training seed).

    For summaries with no per-recording predictions behind them (training
    time, best epoch, a metric logged per trial). This one-sample case is what
    scipy.stats.bootstrap does, so it is used directly. With very few seeds
    the bootstrap is coarse (5 seeds have only 126 distinct resamples).
    """
    sample = np.asarray(values, dtype=np.float64)
    if sample.ndim != 1 or sample.size < 2 or not np.isfinite(sample).all():
        raise ValueError(f"values must be a 1-D array of at least 2 finite numbers, got {np.shape(values)}")
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
    confidence_level = _check_confidence(confidence_level)
    n_resamples = _check_count(n_resamples, "n_resamples", 2)
    estimate = float(sample.mean())
    if np.ptp(sample) == 0:
        constant = np.full(n_resamples, estimate)
        return BootstrapCI(estimate, estimate, estimate, method, confidence_level, constant, sample.size)
    result = sps.bootstrap(
        (sample,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method="BCa" if method == "bca" else "percentile",
        rng=_as_rng(rng),
    )
    interval = result.confidence_interval
    return BootstrapCI(
        estimate,
        float(interval.low),
        float(interval.high),
        method,
        confidence_level,
        result.bootstrap_distribution,
        sample.size,
    )


# ----------------------------------------------------------------------------
# DeLong


def _clusters(groups, n: int) -> np.ndarray | None:
    """Cluster index (n,) in 0..I-1 of each recording, or None when there are no groups or every cluster is one recording."""
    if groups is None:
        return None
    values = np.asarray(groups)
    if values.shape != (n,):
        raise ValueError(f"groups must have shape ({n},) like y, got {values.shape}")
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise ValueError("groups contains NaN; give every recording a group (its own id if unknown)")
    _, clusters = np.unique(values, return_inverse=True)
    clusters = clusters.reshape(-1)
    return None if clusters.max() + 1 == n else clusters


def delong_covariance(y: np.ndarray, scores: np.ndarray, clusters: np.ndarray | None = None):
    """AUCs (k,) and their covariance (k, k) for scores (k, n): DeLong's, or Obuchowski's for clustered recordings.

    Structural components by the fast algorithm of Sun & Xu (2014, IEEE SPL
    21:1389): midranks within the positives, within the negatives and over
    all recordings, so the cost is O(k n log n). With ``clusters`` (cluster
    index per recording, see :func:`_clusters`) the components are summed
    per cluster and the covariance is Obuchowski's (1997, Biometrics 53:567,
    the clustered extension of DeLong): with M positives and N negatives in
    I clusters, I10 of them holding positives and I01 negatives, X_i / Y_i a
    cluster's sums of positive / negative components minus m_i / n_i times
    the AUC, S10 = I10 / ((I10 - 1) M) X X', S01 = I01 / ((I01 - 1) N) Y Y',
    S11 = I / (I - 1) X Y', cov = S10 / M + S01 / N + (S11 + S11') / (M N).
    With one recording per cluster it is DeLong's covariance exactly.
    """
    positive = y == 1
    x, z = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], z.shape[1]
    rank_x = sps.rankdata(x, axis=1)
    rank_z = sps.rankdata(z, axis=1)
    rank_all = sps.rankdata(np.concatenate([x, z], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (rank_all[:, :m] - rank_x) / n  # per positive: share of negatives it beats
    v01 = 1 - (rank_all[:, m:] - rank_z) / m  # per negative: share of positives that beat it
    if clusters is None:
        return aucs, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    n_clusters = int(clusters.max()) + 1
    of_pos, of_neg = clusters[positive], clusters[~positive]

    def per_cluster(values: np.ndarray, of: np.ndarray) -> np.ndarray:  # (k, n_c) sums; k is a few models
        return np.stack([np.bincount(of, weights=row, minlength=n_clusters) for row in values])

    x_dev = per_cluster(v10, of_pos) - aucs[:, None] * np.bincount(of_pos, minlength=n_clusters)
    y_dev = per_cluster(v01, of_neg) - aucs[:, None] * np.bincount(of_neg, minlength=n_clusters)
    i10, i01 = np.unique(of_pos).size, np.unique(of_neg).size
    s10 = i10 / ((i10 - 1) * m) * x_dev @ x_dev.T
    s01 = i01 / ((i01 - 1) * n) * y_dev @ y_dev.T
    s11 = n_clusters / (n_clusters - 1) * x_dev @ y_dev.T
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def _check_delong_labels(y, clusters: np.ndarray | None = None) -> np.ndarray:
    labels = _check_labels(y)
    n_pos = int(labels.sum())
    if min(n_pos, labels.size - n_pos) < 2:
        raise ValueError(
            f"DeLong needs at least 2 recordings of each class, got {n_pos} positives out of {labels.size}"
        )
    if clusters is not None:
        with_pos, with_neg = np.unique(clusters[labels == 1]).size, np.unique(clusters[labels == 0]).size
        if min(with_pos, with_neg) < 2:
            raise ValueError(
                f"clustered DeLong needs at least 2 clusters holding each class, got {with_pos} with positives "
                f"and {with_neg} with negatives"
            )
    return labels


def delong_variance(y, scores, groups=None) -> DelongVariance:
    """ROC-AUC of one score vector (n,) and its DeLong variance (Obuchowski's with ``groups``, see :func:`delong_test`)."""
    labels = _check_labels(y)
    clusters = _clusters(groups, labels.size)
    labels = _check_delong_labels(labels, clusters)
    values = _check_scores(scores, labels.size, "scores")
    if values.shape[0] != 1:
        raise ValueError(f"scores must be one vector of shape ({labels.size},), got {np.shape(scores)}")
    aucs, covariance = delong_covariance(labels, values, clusters)
    return DelongVariance(float(aucs[0]), float(covariance[0, 0]))


def delong_test(y, scores_a, scores_b, groups=None) -> DelongResult:
    """DeLong's test of two correlated ROC-AUCs on the same recordings (two-sided).

    Parameters
    ----------
    y : array (n,), labels 0/1, at least 2 of each class.
    scores_a, scores_b : arrays (n,), the two models' scores (any monotone
        scale: probabilities or logits give the same result).
    groups : optional array (n,) of patient ids. Recordings of one patient
        are correlated; the variance is then Obuchowski's clustered
        extension of DeLong's (see :func:`delong_covariance`), which needs
        at least 2 patients holding each class. With one recording per
        patient it equals DeLong's.

    Returns
    -------
    DelongResult(auc_a, auc_b, difference = auc_a - auc_b, var_a, var_b, cov, z, p_value).
    """
    labels = _check_labels(y)
    clusters = _clusters(groups, labels.size)
    labels = _check_delong_labels(labels, clusters)
    values = np.concatenate(
        [_check_scores(scores_a, labels.size, "scores_a"), _check_scores(scores_b, labels.size, "scores_b")]
    )
    if values.shape[0] != 2:
        raise ValueError("scores_a and scores_b must each be one vector of shape (n,); average seeds first")
    aucs, covariance = delong_covariance(labels, values, clusters)
    difference = aucs[0] - aucs[1]
    var_difference = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if var_difference > 0:
        z = difference / np.sqrt(var_difference)
    else:  # identical or perfectly separating models: no sampling variance
        z = 0.0 if difference == 0 else np.copysign(np.inf, difference)
    p_value = float(2 * sps.norm.sf(abs(z)))
    return DelongResult(
        float(aucs[0]),
        float(aucs[1]),
        float(difference),
        float(covariance[0, 0]),
        float(covariance[1, 1]),
        float(covariance[0, 1]),
        float(z),
        p_value,
    )


# ----------------------------------------------------------------------------
# paired tests for any metric


def _paired_inputs(y, a, b, metric, threshold):
    labels = _check_labels(y)
    scores_a = _check_scores(a, labels.size, "a")
    scores_b = _check_scores(b, labels.size, "b")
    if scores_a.shape != scores_b.shape:
        raise ValueError(
            f"a and b must have the same shape (same seeds, same recordings), got {scores_a.shape} and {scores_b.shape}"
        )
    metric = _check_metric(metric)
    thresholds = _check_threshold(threshold, scores_a.shape[0])
    return labels, scores_a, scores_b, metric, thresholds


def paired_bootstrap_test(
    y,
    a,
    b,
    metric: str = "roc_auc",
    n_resamples: int = 10_000,
    rng=None,
    *,
    threshold=0.5,
    confidence_level: float = 0.95,
    groups=None,
    resample_seeds: bool = True,
) -> PairedBootstrapResult:
    """Paired bootstrap of the difference metric(a) - metric(b) on the same recordings.

    Both models are scored on the same resamples (recordings, and seeds when
    a and b are (n_seeds, n): seed k of a is paired with seed k of b); see
    :func:`bootstrap_ci` for the resampling. The interval is the percentile
    interval of the difference, and the two-sided p is
    :func:`bootstrap_p_value`'s, the smallest alpha at which that interval excludes 0.

    Returns PairedBootstrapResult(metric, value_a, value_b, difference, low,
    high, p_value, n_resamples, confidence_level).
    """
    labels, scores_a, scores_b, metric, thresholds = _paired_inputs(y, a, b, metric, threshold)
    n_resamples = _check_count(n_resamples, "n_resamples", 2)
    confidence_level = _check_confidence(confidence_level)
    units, strata = resampling_units(labels, groups)
    models = [(scores_a, thresholds), (scores_b, thresholds)]
    differences = seed_mean_bootstrap(metric, labels, models, units, strata, n_resamples, _as_rng(rng), resample_seeds)[
        -1
    ]
    ones = np.ones((labels.size, 1))
    value_a, value_b = (float(metric_kernel(metric, labels, scores, thresholds, ones).mean()) for scores, _ in models)
    return paired_bootstrap_result(metric, value_a, value_b, differences, confidence_level)


def paired_bootstrap_result(
    metric: str, value_a: float, value_b: float, differences: np.ndarray, confidence_level: float
) -> PairedBootstrapResult:
    """The result of a paired bootstrap from its point values and its (B,) resampled differences
    A - B: the percentile interval of the difference and its two-sided p-value."""
    interval = bootstrap_interval(differences, value_a - value_b, confidence_level=confidence_level)
    return PairedBootstrapResult(
        metric,
        value_a,
        value_b,
        value_a - value_b,
        interval.low,
        interval.high,
        bootstrap_p_value(differences),
        differences.size,
        confidence_level,
    )


def auc_swap_effects(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """Weights w (n,) with AUC(a') - AUC(b') = sum_i s_i w_i for any swap pattern.

    a' takes b's output for the recordings with s_i = -1 (and b' takes a's),
    after both models' scores are replaced by their within-model midranks.
    Writing the AUC difference as a sum over (positive i, negative j) pairs,
    the terms where i and j are both swapped or both kept cancel in pairs
    with the mirrored terms, which leaves a function linear in s: a
    permutation distribution is then one matrix-vector product. With
    H(x) = 1, 1/2, 0 for x >, =, < 0 and r = midranks:
    w_i (positive) = sum_j [H(ra_i - ra_j) - H(rb_i - rb_j) + H(ra_i - rb_j) - H(rb_i - ra_j)] / (2 n_pos n_neg),
    w_j (negative) = sum_i [H(ra_i - ra_j) - H(rb_i - rb_j) - H(ra_i - rb_j) + H(rb_i - ra_j)] / (2 n_pos n_neg).
    """
    positive = y == 1
    rank_a, rank_b = sps.rankdata(scores_a), sps.rankdata(scores_b)
    a_pos, a_neg = np.sort(rank_a[positive]), np.sort(rank_a[~positive])
    b_pos, b_neg = np.sort(rank_b[positive]), np.sort(rank_b[~positive])
    n_pos, n_neg = a_pos.size, a_neg.size
    weights = np.empty(y.size)
    ra, rb = rank_a[positive], rank_b[positive]
    weights[positive] = (
        _half_below(ra, a_neg) - _half_below(rb, b_neg) + _half_below(ra, b_neg) - _half_below(rb, a_neg)
    )
    # Positives above a negative (half for ties) = n_pos - positives below it (half for ties).
    ra, rb = rank_a[~positive], rank_b[~positive]
    weights[~positive] = (
        -_half_below(ra, a_pos) + _half_below(rb, b_pos) + _half_below(rb, a_pos) - _half_below(ra, b_pos)
    )
    return weights / (2 * n_pos * n_neg)


def paired_permutation_test(
    y,
    a,
    b,
    metric: str = "roc_auc",
    n_permutations: int = 10_000,
    rng=None,
    *,
    threshold=0.5,
    groups=None,
) -> PermutationResult:
    """Paired permutation test of metric(a) - metric(b): swap the models' outputs per recording (or patient).

    Under the null the two models' outputs for a recording are exchangeable,
    so each permutation swaps them for a random half of the recordings (the
    same swaps for every seed) and recomputes the seed-mean difference. With
    ``groups`` (patient ids, (n,)) whole patients are swapped: the outputs
    of one patient's recordings are exchangeable only together, since they
    are correlated.
    Swapped are the decisions (score >= threshold) for threshold metrics and,
    for ROC-AUC, each model's within-model midranks rather than raw scores:
    AUC only depends on ranks, and ranks put two differently calibrated
    models on one scale (Bandos, Rockette & Gur 2005). Every confusion count
    and the AUC difference are linear in the swap pattern, so B permutations
    cost a few (B, n) matrix-vector products. Two-sided
    p = (1 + #{|d*| >= |d|}) / (n_permutations + 1).

    Returns PermutationResult(metric, value_a, value_b, difference, p_value,
    n_permutations).
    """
    labels, scores_a, scores_b, metric, thresholds = _paired_inputs(y, a, b, metric, threshold)
    n_permutations = _check_count(n_permutations, "n_permutations")
    generator = _as_rng(rng)
    n_seeds, n = scores_a.shape
    clusters = _clusters(groups, n)
    n_units = n if clusters is None else int(clusters.max()) + 1
    ones = np.ones((n, 1))
    value_a = float(metric_kernel(metric, labels, scores_a, thresholds, ones).mean())
    value_b = float(metric_kernel(metric, labels, scores_b, thresholds, ones).mean())
    positive = labels == 1
    if metric == "roc_auc":
        effects = np.mean([auc_swap_effects(labels, sa, sb) for sa, sb in zip(scores_a, scores_b, strict=True)], axis=0)

        def differences(swap):
            return effects.sum() - 2 * swap @ effects
    else:
        # Swapping recording i moves (decision_a - decision_b)_i from a's confusion counts to b's.
        decisions_a = (scores_a >= thresholds[:, None]).astype(np.float64)
        decisions_b = (scores_b >= thresholds[:, None]).astype(np.float64)
        discordance = decisions_a - decisions_b
        n_pos, n_neg = float(positive.sum()), float((~positive).sum())

        def differences(swap):
            moved_pos = swap[:, positive] @ discordance[:, positive].T  # (rows, seeds)
            moved_neg = swap[:, ~positive] @ discordance[:, ~positive].T
            tp_a, fp_a = decisions_a[:, positive].sum(axis=1), decisions_a[:, ~positive].sum(axis=1)
            tp_b, fp_b = decisions_b[:, positive].sum(axis=1), decisions_b[:, ~positive].sum(axis=1)
            tp_a, fp_a, tp_b, fp_b = tp_a - moved_pos, fp_a - moved_neg, tp_b + moved_pos, fp_b + moved_neg
            metric_a = confusion_metrics(tp_a, fp_a, n_neg - fp_a, n_pos - tp_a)[metric]
            metric_b = confusion_metrics(tp_b, fp_b, n_neg - fp_b, n_pos - tp_b)[metric]
            return (metric_a - metric_b).mean(axis=1)

    observed = value_a - value_b
    rows_per_block = max(1, _BLOCK_CELLS // n)
    extreme = 0
    for start in range(0, n_permutations, rows_per_block):
        swap = (generator.random((min(rows_per_block, n_permutations - start), n_units)) < 0.5).astype(np.float64)
        if clusters is not None:
            swap = swap[:, clusters]
        # The tolerance keeps permutations that reproduce |observed| from being lost to rounding.
        extreme += np.count_nonzero(np.abs(differences(swap)) >= abs(observed) - 1e-12)
    p_value = (1 + extreme) / (n_permutations + 1)
    return PermutationResult(metric, value_a, value_b, observed, float(p_value), n_permutations)


def mcnemar_test(y, pred_a, pred_b, groups=None) -> McNemarResult:
    """McNemar's test of equal accuracy of two classifiers' 0/1 predictions on the same recordings.

    Only the discordant recordings matter: b = only model a correct,
    c = only model b correct. With b + c < 25 the exact two-sided binomial
    test of b ~ Bin(b + c, 1/2) is used (scipy.stats.binomtest), else the
    chi-square statistic (|b - c| - 1)^2 / (b + c) with continuity correction
    on 1 degree of freedom. For seeds, pass a seed-ensemble's predictions.

    With ``groups`` (patient ids, (n,)) holding a patient with several
    recordings, the discordant counts of one patient are correlated and the
    test is Durkalski et al.'s (2003, Stat. Med. 22:2417) clustered McNemar:
    X^2 = (sum_k d_k)^2 / sum_k d_k^2 on 1 degree of freedom, d_k = b_k - c_k
    of patient k (without clusters it is McNemar's uncorrected statistic).
    ``standard_error`` is that of the accuracy difference a - b: Wald's for
    paired proportions, or with groups the cluster-robust (ratio-estimator)
    one, I / (I - 1) sum_k (d_k - n_k d / n)^2 / n^2 under the square root.

    Returns McNemarResult(accuracy_a, accuracy_b, n_only_a_correct,
    n_only_b_correct, statistic, p_value, method, standard_error).
    """
    labels = check_binary_labels(y, "y")
    predicted_a = check_binary_labels(pred_a, "pred_a")
    predicted_b = check_binary_labels(pred_b, "pred_b")
    if not predicted_a.shape == predicted_b.shape == labels.shape:
        raise ValueError(
            f"y, pred_a and pred_b must have one shape, got {labels.shape}, {predicted_a.shape}, {predicted_b.shape}"
        )
    n = labels.size
    clusters = _clusters(groups, n)
    correct_a, correct_b = predicted_a == labels, predicted_b == labels
    only_a = int(np.count_nonzero(correct_a & ~correct_b))
    only_b = int(np.count_nonzero(~correct_a & correct_b))
    discordant, net = only_a + only_b, only_a - only_b
    if clusters is not None:
        per_cluster = np.bincount(clusters, weights=correct_a.astype(float) - correct_b)
        sizes = np.bincount(clusters)
        n_clusters = sizes.size
        spread = n_clusters / (n_clusters - 1) * np.sum((per_cluster - sizes * net / n) ** 2)
        standard_error = math.sqrt(spread) / n
        squares = float(np.sum(per_cluster**2))
        if squares == 0:
            statistic, p_value = 0.0, 1.0
        else:
            statistic = net**2 / squares
            p_value = sps.chi2.sf(statistic, df=1)
        method = f"clustered (Durkalski) chi-square over {n_clusters} patients"
    else:
        # Wald standard error of a difference of paired proportions (no library has it for raw counts).
        standard_error = math.sqrt(max(discordant - net**2 / n, 0.0)) / n
        if discordant == 0:
            statistic, p_value, method = 0.0, 1.0, "no discordant recordings"
        elif discordant < 25:
            statistic, p_value, method = float(only_a), sps.binomtest(only_a, discordant, 0.5).pvalue, "exact binomial"
        else:
            statistic = (abs(net) - 1) ** 2 / discordant
            p_value, method = sps.chi2.sf(statistic, df=1), "chi-square with continuity correction"
    return McNemarResult(
        float(correct_a.mean()),
        float(correct_b.mean()),
        only_a,
        only_b,
        float(statistic),
        float(p_value),
        method,
        float(standard_error),
    )


def _signed_rank_enumeration_pvalue(differences: np.ndarray) -> tuple[float, float]:
    """Exact two-sided signed-rank p-value with midranks, by enumerating all 2^n sign flips.

    scipy.stats.wilcoxon gives the same p with method=PermutationMethod(),
    but takes ~0.2 s per call; 2^13 x 13 sign patterns are one small matrix here.
    """
    ranks = sps.rankdata(np.abs(differences))
    n = ranks.size
    signs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    center = ranks.sum() / 2
    observed = ranks[differences > 0].sum()
    # Midranks are multiples of 1/2, so the slack only absorbs rounding.
    p_value = np.mean(np.abs(signs @ ranks - center) >= abs(observed - center) - 1e-9)
    return float(min(observed, ranks.sum() - observed)), float(p_value)


def _signed_rank_counts(n: int) -> np.ndarray:
    """How many of the 2^n sign patterns give each signed-rank sum T+ = 0 .. n(n+1)/2 (no ties)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for rank in range(1, n + 1):  # rank r either joins T+ or not
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    return counts


def walsh_interval(differences, confidence_level: float = 0.95) -> tuple[float, float, float, float]:
    """Hodges-Lehmann estimate and the signed-rank confidence interval of paired differences (n,).

    The interval inverts the exact signed-rank test (Hollander & Wolfe,
    Nonparametric Statistical Methods, 3.2): its ends are the k-th smallest
    and largest of the n(n+1)/2 Walsh averages (d_i + d_j) / 2, i <= j, with
    k the largest count whose lower tail P(T+ < k) stays within
    (1 - confidence_level) / 2. scipy has the test but not this interval.
    Returns (estimate, low, high, achieved level); low = high = NaN when n
    differences cannot reach the level (2^(1-n) > 1 - confidence_level).
    """
    values = np.asarray(differences, dtype=np.float64)
    n = values.size
    upper = np.triu_indices(n)
    walsh = np.sort((values[:, None] + values[None, :])[upper] / 2)
    estimate = float(np.median(walsh))
    tail = np.cumsum(_signed_rank_counts(n)) / 2.0**n  # tail[c] = P(T+ <= c)
    k = int(np.count_nonzero(tail <= (1 - confidence_level) / 2))  # P(T+ <= k - 1) within the tail
    if k == 0:
        return estimate, math.nan, math.nan, math.nan
    return estimate, float(walsh[k - 1]), float(walsh[-k]), float(1 - 2 * tail[k - 1])


def wilcoxon_seeds(metric_a, metric_b, confidence_level: float = 0.95) -> WilcoxonResult:
    """Wilcoxon signed-rank test over per-seed metrics of two models (seed k paired with seed k).

    Zero differences are dropped (Wilcoxon's convention) and the test is
    exact given them: scipy's exact null distribution when the non-zero
    differences have distinct magnitudes (up to 50 seeds); with tied
    magnitudes that distribution no longer applies, so the p-value comes
    from enumerating every sign flip of the midranks (up to 13 seeds), or
    scipy's tie-corrected normal approximation above that. With fewer than
    6 non-zero differences the smallest attainable two-sided p is
    2 / 2^n > 0.05, which ``note`` says.

    The test takes the test set as fixed: it asks whether the two models
    differ over training seeds on these recordings, not on new recordings
    (for that, use :func:`paired_bootstrap_test` with seeds).

    Its interval is the one the test itself gives (:func:`walsh_interval`,
    over every seed difference, zeros included): the Hodges-Lehmann estimate
    with the exact signed-rank interval at ``confidence_level`` or just above
    it, or none where this many seeds cannot reach that level; a percentile
    bootstrap of 3 to 5 seed differences covers only 75-83 %.

    Returns WilcoxonResult(statistic, p_value, n_seeds, n_nonzero,
    mean_difference (zeros included), method, note, estimate, low, high,
    confidence_level (the interval's achieved level), smallest_p).
    """
    a = np.asarray(metric_a, dtype=np.float64)
    b = np.asarray(metric_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"metric_a and metric_b must be 1-D arrays of equal length (one value per seed), got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("metric_a and metric_b must be finite")
    differences = a - b
    # Per-seed metrics that agree up to rounding are a zero difference, not a tiny one.
    differences[np.abs(differences) <= 1e-12 * np.maximum(np.abs(a), 1)] = 0
    nonzero = differences[differences != 0]
    n_nonzero = nonzero.size
    mean_difference = float(differences.mean())
    interval = walsh_interval(differences, _check_confidence(confidence_level))
    smallest_p = 2 / 2**n_nonzero if n_nonzero else 1.0
    if n_nonzero == 0:
        return WilcoxonResult(
            0.0, 1.0, a.size, 0, mean_difference, "none", "all per-seed differences are zero", *interval, smallest_p
        )
    notes = []
    if n_nonzero < a.size:
        notes.append(f"{a.size - n_nonzero} zero differences dropped")
    if n_nonzero < 6:
        notes.append(
            f"only {n_nonzero} non-zero seed differences: the smallest attainable two-sided p is "
            f"{2 / 2**n_nonzero:.4f} > 0.05, so this test cannot reject at 0.05; use more seeds"
        )
    # Magnitudes equal up to rounding are ties (e.g. AUC differences are multiples of 1 / (n_pos n_neg)).
    has_ties = np.unique(np.round(np.abs(nonzero), 12)).size < n_nonzero
    if has_ties and n_nonzero <= 13:
        statistic, p_value = _signed_rank_enumeration_pvalue(np.round(nonzero, 12))
        method = "exact sign-flip enumeration (tied magnitudes)"
    else:
        scipy_method = "exact" if n_nonzero <= 50 and not has_ties else "asymptotic"
        result = sps.wilcoxon(nonzero, method=scipy_method)
        statistic, p_value = float(result.statistic), float(result.pvalue)
        method = (
            scipy_method
            if scipy_method == "exact"
            else "normal approximation" + (" with tie correction" if has_ties else "")
        )
    return WilcoxonResult(
        statistic, p_value, a.size, n_nonzero, mean_difference, method, "; ".join(notes), *interval, smallest_p
    )


# ----------------------------------------------------------------------------
# multiple comparisons and power


def adjust_pvalues(p, method: str = "holm") -> np.ndarray:
    """Adjust a family of p-values: "holm" (family-wise error) or "bh" (Benjamini-Hochberg FDR).

    Returns adjusted p-values of the same shape (n,), in the input order.
    """
    values = np.asarray(p, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"p must be a non-empty 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError("p must hold finite p-values in [0, 1]")
    if method == "bh":
        return sps.false_discovery_control(values, method="bh")
    if method != "holm":
        raise ValueError(f"method must be 'holm' or 'bh', got {method!r}")
    # Holm step-down by hand (statsmodels is not a dependency).
    order = np.argsort(values, kind="stable")
    m = values.size
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * values[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def smallest_adjusted_p(p_floor: float, n_tests: int, method: str = "holm") -> float:
    """The smallest adjusted p a family of ``n_tests`` can reach when no raw p falls below ``p_floor``.

    Resampling p-values have a floor set by the number of resamples (2 / (B + 1)
    for the two-sided bootstrap p here, 1 / (B + 1) for a permutation p). Holm
    multiplies the smallest raw p by n_tests; Benjamini-Hochberg reaches the
    floor itself only when every test sits there.
    """
    n_tests = _check_count(n_tests, "n_tests")
    if not 0 < p_floor <= 1:
        raise ValueError(f"p_floor must be in (0, 1], got {p_floor!r}")
    if method == "holm":
        return min(1.0, n_tests * p_floor)
    if method == "bh":
        return p_floor
    raise ValueError(f"method must be 'holm' or 'bh', got {method!r}")


def resampling_floor_warning(
    n_resamples: int, n_tests: int, method: str, alpha: float, *, what: str = "bootstrap", two_sided: bool = True
) -> str | None:
    """A sentence saying the family cannot reach significance at ``alpha`` with this many resamples, else None.

    The floor of a resampling p is (1 + 1) / (B + 1) for the two-sided bootstrap
    p (:func:`paired_bootstrap_test`) and 1 / (B + 1) for a permutation p; with
    Holm over m tests no adjusted p can fall below m times that. The sentence
    names the number of resamples that would lift the floor below alpha / 10.
    """
    n_resamples = _check_count(n_resamples, "n_resamples")
    tails = 2 if two_sided else 1
    floor = tails / (n_resamples + 1)
    reachable = smallest_adjusted_p(floor, n_tests, method)
    if reachable < alpha:
        return None
    factor = n_tests if method == "holm" else 1
    needed = math.ceil(10 * tails * factor / alpha)
    return (
        f"with {n_resamples:,} {what} resamples no {method}-adjusted p over these {n_tests} tests can fall below "
        f"{reachable:.3g} (raw p ≥ {floor:.2g}), so none can be significant at α = {alpha:g} whatever the data; "
        f"rerun with --resamples {needed:,} or more"
    )


def hanley_mcneil_variance(auc: float, n_pos: int, n_neg: int) -> float:
    """Variance of an ROC-AUC estimate by Hanley & McNeil (1982, Radiology 143:29)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    return (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)


def auc_difference_mde(
    n_pos: int, n_neg: int, auc: float, rho: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest ROC-AUC difference a paired two-sided DeLong test detects with the given power.

    The baseline model has ROC-AUC ``auc``, the other ``auc + delta``; each
    AUC estimate has its Hanley-McNeil variance and their correlation is
    ``rho`` (estimate it as cov / sqrt(var_a var_b) from :func:`delong_test`),
    so var(diff) = va + vb - 2 rho sqrt(va vb). DeLong's test divides by the
    variance estimated from the data, i.e. under the alternative, so delta
    solves delta = (z_{1-alpha/2} + z_power) sd(diff | auc, auc + delta).

    Returns delta, or NaN if even auc + delta = 1 is not detectable.
    """
    _check_count(n_pos, "n_pos")
    _check_count(n_neg, "n_neg")
    if not 0.5 <= auc < 1:
        raise ValueError(f"auc (the baseline model's ROC-AUC) must be in [0.5, 1), got {auc!r}")
    if not -1 <= rho <= 1:
        raise ValueError(f"rho must be a correlation in [-1, 1], got {rho!r}")
    for name, value in (("alpha", alpha), ("power", power)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    multiplier = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    var_a = hanley_mcneil_variance(auc, n_pos, n_neg)

    def shortfall(delta: float) -> float:
        var_b = hanley_mcneil_variance(auc + delta, n_pos, n_neg)
        var_diff = max(var_a + var_b - 2 * rho * np.sqrt(var_a * var_b), 0.0)
        return delta - multiplier * np.sqrt(var_diff)

    largest = 1 - auc
    if shortfall(largest) < 0:
        return float("nan")
    return float(optimize.brentq(shortfall, 0.0, largest, xtol=1e-10))
