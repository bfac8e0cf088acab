"""Paired comparisons of two configurations on one evaluation set, each test's result one table row.

Over the common seeds of configurations a and b (seed k paired with seed k) on the shared draws of
:mod:`analysis.resampling`:

* paired bootstrap of every metric (:func:`bootstrap_result`): it decides the paper claims;
* DeLong on the seed-averaged probabilities (:func:`delong_result`, ROC-AUC only);
* the paired permutation test of all seeds at once (:func:`permutation_result`);
* McNemar on the seed-majority decision, ties counting as abnormal (:func:`mcnemar_result`);
* Wilcoxon over the per-seed metrics (:func:`wilcoxon_result`), which takes the test set as fixed and
  is shown only where its seeds can reach α (6 or more).

:func:`paired_tests` runs them, :func:`comparison_row` turns each :class:`TestResult` into a
:class:`ComparisonRow`, :func:`adjust_within_families` adjusts every p within its family (one test on
one metric), and :func:`comparison_numbers` / :func:`comparison_display` are the table's columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import special

from analysis import stats
from analysis.output import METRIC_LABELS, verdict
from analysis.resampling import CONFIDENCE_LEVEL, Resampled, paired_bootstrap
from analysis.tables import format_interval, format_p, format_value

__all__ = [
    "RESAMPLING_TESTS",
    "TestResult",
    "ComparisonRow",
    "delong_possible",
    "bootstrap_result",
    "delong_result",
    "permutation_result",
    "mcnemar_result",
    "wilcoxon_result",
    "paired_tests",
    "comparison_row",
    "family_name",
    "adjust_within_families",
    "comparison_numbers",
    "comparison_display",
]

# Tests whose p-values come from resampling (floor 2 / (B + 1) two-sided bootstrap, 1 / (B + 1) permutation).
RESAMPLING_TESTS = {"paired bootstrap": "bootstrap", "paired permutation": "permutation"}
Z_95 = special.ndtri((1 + CONFIDENCE_LEVEL) / 2)  # the normal quantile of a two-sided 95 % Wald interval


class TestResult(NamedTuple):
    """One paired test of a − b: both values, the difference with its 95 % interval, p, and how it was made."""

    test: str
    metric: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p_value: float
    note: str


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
    p_value: float
    n_seeds: int
    note: str = ""
    adjusted_p: float = math.nan
    verdict: str = ""
    family: str = ""  # the family its p is adjusted over (see :func:`family_name`)
    family_size: int = 0


def delong_possible(y: np.ndarray) -> bool:
    """Whether DeLong's variance exists: at least two recordings of each class."""
    n_pos = int(y.sum())
    return min(n_pos, y.size - n_pos) >= 2


def bootstrap_result(resampled: Resampled, trials_a: list[str], trials_b: list[str], metric: str) -> TestResult:
    """The paired bootstrap of the seed-mean ``metric`` (:func:`analysis.resampling.paired_bootstrap`)."""
    paired = paired_bootstrap(resampled, trials_a, trials_b, metric)
    unit = "patients" if resampled.eval_set.groups is not None else "recordings"
    return TestResult(
        "paired bootstrap",
        metric,
        paired.value_a,
        paired.value_b,
        paired.difference,
        paired.low,
        paired.high,
        paired.p_value,
        f"{unit} resampled, seed variation added",
    )


def delong_result(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups=None) -> TestResult:
    """DeLong's test of ROC-AUC on the seed-averaged probabilities (S, n) with its Wald interval; with
    ``groups``, Obuchowski's clustered variance."""
    delong = stats.delong_test(y, probs_a.mean(axis=0), probs_b.mean(axis=0), groups=groups)
    half_width = Z_95 * math.sqrt(max(delong.var_a + delong.var_b - 2 * delong.cov, 0.0))
    return TestResult(
        "DeLong",
        "roc_auc",
        delong.auc_a,
        delong.auc_b,
        delong.difference,
        delong.difference - half_width,
        delong.difference + half_width,
        delong.p_value,
        "seed-averaged probabilities; Wald CI" + ("; Obuchowski's clustered variance" if groups is not None else ""),
    )


def permutation_result(
    y: np.ndarray,
    shifted_a: np.ndarray,
    shifted_b: np.ndarray,
    metric: str,
    interval: tuple[float, float],
    n_resamples: int,
    rng: np.random.Generator,
    groups=None,
) -> TestResult:
    """The paired permutation test of all seeds at once on scores (S, n) shifted to decide at 0; its
    ``interval`` is the paired bootstrap's (a permutation test gives none)."""
    permutation = stats.paired_permutation_test(
        y, shifted_a, shifted_b, metric, n_resamples, rng, threshold=0.0, groups=groups
    )
    low, high = interval
    return TestResult(
        "paired permutation",
        metric,
        permutation.value_a,
        permutation.value_b,
        permutation.difference,
        low,
        high,
        permutation.p_value,
        f"outputs swapped per {'patient' if groups is not None else 'recording'}; CI from the paired bootstrap",
    )


def mcnemar_result(y: np.ndarray, shifted_a: np.ndarray, shifted_b: np.ndarray, groups=None) -> TestResult:
    """McNemar's test of accuracy on the seed-majority decision of scores (S, n) shifted to decide at 0 (ties
    count as abnormal); the difference is the net share of recordings only a gets right, with its Wald
    interval (cluster-robust with ``groups``, where Durkalski's statistic tests it)."""
    majority_a = ((shifted_a >= 0).mean(axis=0) >= 0.5).astype(np.int8)
    majority_b = ((shifted_b >= 0).mean(axis=0) >= 0.5).astype(np.int8)
    mcnemar = stats.mcnemar_test(y, majority_a, majority_b, groups=groups)
    net = (mcnemar.n_only_a_correct - mcnemar.n_only_b_correct) / y.size
    half_width = Z_95 * mcnemar.standard_error
    return TestResult(
        "McNemar",
        "accuracy",
        mcnemar.accuracy_a,
        mcnemar.accuracy_b,
        net,
        net - half_width,
        net + half_width,
        mcnemar.p_value,
        f"seed-majority decision at the validation thresholds; {mcnemar.method}; "
        + ("cluster-robust Wald CI" if groups is not None else "Wald CI"),
    )


def wilcoxon_result(per_seed_a: np.ndarray, per_seed_b: np.ndarray, metric: str) -> tuple[TestResult, float]:
    """(the Wilcoxon signed-rank test over per-seed metrics with its Hodges-Lehmann Δ and signed-rank interval,
    the smallest two-sided p these many seeds can give)."""
    wilcoxon = stats.wilcoxon_seeds(per_seed_a, per_seed_b, CONFIDENCE_LEVEL)
    note = (
        "over per-seed metrics: asks about these recordings, not new ones; Hodges-Lehmann Δ with the signed-rank "
        f"interval (exact level {wilcoxon.confidence_level:.3f})"
    )
    result = TestResult(
        "Wilcoxon signed-rank",
        metric,
        float(per_seed_a.mean()),
        float(per_seed_b.mean()),
        wilcoxon.estimate,
        wilcoxon.low,
        wilcoxon.high,
        wilcoxon.p_value,
        note + (f"; {wilcoxon.note}" if wilcoxon.note else ""),
    )
    return result, wilcoxon.smallest_p


def paired_tests(
    resampled: Resampled,
    trials_a: list[str],
    trials_b: list[str],
    metrics,
    compare_metric: str | None = None,
    *,
    binary: bool = True,
    n_resamples: int = 10_000,
    rng: np.random.Generator | None = None,
    alpha: float = 0.05,
) -> tuple[list[TestResult], str | None]:
    """Paired tests of a − b on one evaluation set, ``trials_a[k]`` paired with ``trials_b[k]`` (one per seed).

    Always the paired bootstrap of every metric in ``metrics``. With ``compare_metric`` also, for a
    ``binary`` outcome (a heart study), DeLong (ROC-AUC, both classes twice or more), the permutation test
    (``n_resamples`` permutations from ``rng``) and McNemar, then Wilcoxon over seeds, all on
    ``compare_metric``. Returns (the results, in that order; why Wilcoxon is left out, or None).
    """
    if len(trials_a) != len(trials_b) or not trials_a:
        raise ValueError(
            f"need one trial of each configuration per common seed, got {len(trials_a)} and {len(trials_b)}"
        )
    results = [bootstrap_result(resampled, trials_a, trials_b, metric) for metric in metrics]
    if compare_metric is None:
        return results, None
    if compare_metric not in metrics:
        raise ValueError(f"compare_metric {compare_metric!r} is not one of the bootstrapped metrics {tuple(metrics)}")
    if binary and rng is None:
        raise ValueError("the permutation test needs its random generator rng")
    data = resampled.eval_set
    rows_a, rows_b = [resampled.rows[t] for t in trials_a], [resampled.rows[t] for t in trials_b]
    if binary:
        y = data.binary
        probs_a, probs_b = data.probs[rows_a], data.probs[rows_b]
        if compare_metric == "roc_auc" and delong_possible(y):
            results.append(delong_result(y, probs_a, probs_b, data.groups))
        # Scores minus their trial's threshold put every trial's decision at 0 (ROC-AUC is unchanged).
        shifted_a = probs_a - data.thresholds[rows_a, None]
        shifted_b = probs_b - data.thresholds[rows_b, None]
        bootstrap = results[list(metrics).index(compare_metric)]
        interval = (bootstrap.low, bootstrap.high)
        results.append(
            permutation_result(y, shifted_a, shifted_b, compare_metric, interval, n_resamples, rng, data.groups)
        )
        results.append(mcnemar_result(y, shifted_a, shifted_b, data.groups))
    per_seed = resampled.point[compare_metric]
    wilcoxon, smallest_p = wilcoxon_result(per_seed[rows_a], per_seed[rows_b], compare_metric)
    if smallest_p >= alpha:  # no outcome of these seeds could be significant: not a result
        n_seeds = len(trials_a)
        return results, (
            f"Wilcoxon over seeds not shown: {n_seeds} seeds (fewer where two agree) cannot give a two-sided "
            f"p below {2 / 2**n_seeds:.3g} ≥ α = {alpha}; it needs 6 seeds or more"
        )
    return results + [wilcoxon], None


def comparison_row(eval_set: str, a: str, b: str, n_seeds: int, result: TestResult) -> ComparisonRow:
    """A test's result as a row of tables/comparisons (its family and adjusted p come later)."""
    return ComparisonRow(
        eval_set,
        a,
        b,
        result.metric,
        result.test,
        result.value_a,
        result.value_b,
        result.difference,
        result.low,
        result.high,
        result.p_value,
        n_seeds,
        result.note,
    )


def family_name(test: str, metric: str) -> str:
    """The name of the comparisons family of one test on one metric, as the tables show it."""
    return f"comparisons: {test}, {METRIC_LABELS[metric]}"


def adjust_within_families(rows: list[ComparisonRow], correction: str, alpha: float, n_resamples: int) -> list[str]:
    """Adjust every row's p within its family (one test on one metric over every comparison and evaluation set)
    and set its verdict at ``alpha``, in place; returns a note per test whose resampled p-values cannot reach
    ``alpha`` after the correction, naming its metrics."""
    families: dict[tuple, list[ComparisonRow]] = {}
    for row in rows:
        families.setdefault((row.test, row.metric), []).append(row)
    floors: dict[tuple[str, str], list[str]] = {}  # (test, warning) -> metrics
    for (test, metric), family in families.items():
        if test in RESAMPLING_TESTS:
            floor = stats.resampling_floor_warning(
                n_resamples,
                len(family),
                correction,
                alpha,
                what=RESAMPLING_TESTS[test],
                two_sided=test == "paired bootstrap",
            )
            if floor:
                floors.setdefault((test, floor), []).append(metric)
        adjusted = stats.adjust_pvalues([r.p_value for r in family], correction)
        for row, p in zip(family, adjusted, strict=True):
            row.adjusted_p = float(p)
            row.family, row.family_size = family_name(test, metric), len(family)
            row.verdict = verdict(row.a, row.b, row.difference, row.adjusted_p, alpha)
    return [f"{test} of {', '.join(metrics)}: {floor}" for (test, floor), metrics in floors.items()]


def comparison_numbers(row: ComparisonRow, correction: str) -> dict:
    """A row of tables/comparisons.csv."""
    return {
        "eval_set": row.eval_set,
        "a": row.a,
        "b": row.b,
        "metric": row.metric,
        "test": row.test,
        "value_a": row.value_a,
        "value_b": row.value_b,
        "difference": row.difference,
        "low": row.low,
        "high": row.high,
        "p": row.p_value,
        "adjusted_p": row.adjusted_p,
        "correction": correction,
        "family": row.family,
        "family_size": row.family_size,
        "verdict": row.verdict,
        "seeds": row.n_seeds,
        "note": row.note,
    }


def comparison_display(numbers: dict, alpha: float) -> dict:
    """A row of tables/comparisons.md, from its numbers (:func:`comparison_numbers`)."""
    return {
        "evaluation set": numbers["eval_set"],
        "A vs B": f"{numbers['a']} vs {numbers['b']}",
        "metric": METRIC_LABELS[numbers["metric"]],
        "test": numbers["test"],
        "A": format_value(numbers["value_a"]),
        "B": format_value(numbers["value_b"]),
        "Δ = A − B [unadjusted 95 % CI]": format_interval(
            numbers["difference"], numbers["low"], numbers["high"], signed=True
        ),
        "p (raw)": format_p(numbers["p"]),
        f"p ({numbers['correction']})": format_p(numbers["adjusted_p"]),
        "family (tests)": f"{numbers['family']} ({numbers['family_size']})",
        f"verdict (α = {alpha})": numbers["verdict"],
        "seeds": numbers["seeds"],
        "note": numbers["note"],
    }
