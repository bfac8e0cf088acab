"""Timings of the statistics core on test sets of the project's size.

    python -m analysis.bench [--json] [--repeats R]

Each line is the best of R runs (default 3) on simulated binormal scores:
300 recordings (150 abnormal) like the PhysioNet 2016 test set, and 2,800
items in 120 patient groups like the ICBHI 2017 test set. The 10,000-resample
bootstrap CI of ROC-AUC on 300 recordings must take under 0.5 s.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from analysis import stats

CI_LIMIT_S = 0.5


def _best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _scores(rng: np.random.Generator, y: np.ndarray, n_seeds: int = 1) -> np.ndarray:
    return 1.3 * y + rng.standard_normal((n_seeds, y.size))


def run_bench(repeats: int = 3, seed: int = 0) -> list[dict]:
    """Time each operation; returns rows of name, seconds and (where one applies) limit_s and ok."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(150, dtype=int), np.ones(150, dtype=int)]
    a, b = _scores(rng, y)[0], _scores(rng, y)[0]
    seeds_a, seeds_b = _scores(rng, y, 5), _scores(rng, y, 5)
    idx = stats.stratified_bootstrap_indices(y, 10_000, rng)
    icbhi_y = (rng.random(2800) < 0.45).astype(int)
    icbhi_groups = rng.integers(0, 120, 2800)
    icbhi_scores = _scores(rng, icbhi_y)[0]
    n_sklearn = 200

    def sklearn_loop():
        for row in idx[:n_sklearn]:
            roc_auc_score(y[row], a[row])

    cases = [
        ("bootstrap_ci ROC-AUC, 300 rec., 10,000 resamples, percentile", lambda: stats.bootstrap_ci(y, a, method="percentile", rng=1), CI_LIMIT_S),
        ("bootstrap_ci ROC-AUC, 300 rec., 10,000 resamples, BCa", lambda: stats.bootstrap_ci(y, a, method="bca", rng=1), CI_LIMIT_S),
        ("auc_resampled, 300 rec., 10,000 given index rows", lambda: stats.auc_resampled(y, a, idx), None),
        ("delong_test, 300 rec.", lambda: stats.delong_test(y, a, b), None),
        ("bootstrap_ci ROC-AUC, 5 seeds x 300 rec., 10,000, BCa", lambda: stats.bootstrap_ci(y, seeds_a, rng=1), None),
        ("bootstrap_ci MCC, 5 seeds x 300 rec., 10,000, BCa", lambda: stats.bootstrap_ci(y, seeds_a, "mcc", rng=1), None),
        ("paired_bootstrap_test ROC-AUC, 5 seeds x 300, 10,000", lambda: stats.paired_bootstrap_test(y, seeds_a, seeds_b, rng=1), None),
        ("paired_permutation_test ROC-AUC, 5 seeds x 300, 10,000", lambda: stats.paired_permutation_test(y, seeds_a, seeds_b, rng=1), None),
        ("paired_permutation_test MCC, 5 seeds x 300, 10,000", lambda: stats.paired_permutation_test(y, seeds_a, seeds_b, "mcc", rng=1, threshold=0.6), None),
        ("bootstrap_ci ROC-AUC, 2,800 items in 120 groups, 10,000, BCa", lambda: stats.bootstrap_ci(icbhi_y, icbhi_scores, groups=icbhi_groups, rng=1), None),
        ("bootstrap_ci ROC-AUC, 2,800 items, no groups, 10,000, BCa", lambda: stats.bootstrap_ci(icbhi_y, icbhi_scores, rng=1), None),
    ]
    rows = []
    for name, function, limit in cases:
        seconds = _best_time(function, repeats)
        row = {"name": name, "seconds": seconds}
        if limit is not None:
            row.update(limit_s=limit, ok=seconds < limit)
        rows.append(row)
    # For scale: the obvious loop over resamples with scikit-learn, extrapolated from n_sklearn resamples.
    seconds = _best_time(sklearn_loop, 1) * 10_000 / n_sklearn
    rows.append({"name": "for comparison: sklearn roc_auc_score in a loop, 10,000 resamples (extrapolated)", "seconds": seconds})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'operation':<82} {'seconds':>8}"]
    for row in rows:
        verdict = f"  (limit {row['limit_s']} s: {'ok' if row['ok'] else 'TOO SLOW'})" if "limit_s" in row else ""
        lines.append(f"{row['name']:<82} {row['seconds']:>8.4f}{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per operation; the best is reported (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = run_bench(args.repeats)
    print(json.dumps({"rows": rows}) if args.json else format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
