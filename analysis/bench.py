"""Timings of the statistics core on test sets of the project's size.

    python -m analysis.bench [--json] [--repeats R]

Each line is the best of R runs (default 3) on simulated binormal scores:
300 recordings (150 abnormal) like the PhysioNet 2016 test set, and 2,800
items in 120 patient groups like the ICBHI 2017 test set. The 10,000-resample
bootstrap CI of ROC-AUC on 300 recordings must take under 0.5 s.

The last line times the whole report (``analysis.report.report_study``,
default options) on a synthetic study of 150 trials written in a temporary
folder in ``study.run``'s file format: 15 configurations (5 fusion types x 3
dropouts) x 10 seeds, 300 PhysioNet test and 45 PASCAL recordings. It must
finish in under 60 s; ``--no-report`` skips it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special
from sklearn.metrics import roc_auc_score

from analysis import stats
from study.results import fake_study

__all__ = [
    "CI_LIMIT_S",
    "REPORT_LIMIT_S",
    "PHYSIONET_SOURCES",
    "PASCAL_SOURCES",
    "write_synthetic_study",
    "bench_report",
    "run_bench",
    "format_rows",
    "main",
]

CI_LIMIT_S = 0.5
REPORT_LIMIT_S = 60.0
PHYSIONET_SOURCES = ("training-a", "training-b", "training-c", "training-d", "training-e", "training-f")
PASCAL_SOURCES = ("set_a", "set_b")


def _best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _scores(rng: np.random.Generator, y: np.ndarray, n_seeds: int = 1) -> np.ndarray:
    return 1.3 * y + rng.standard_normal((n_seeds, y.size))


def write_synthetic_study(
    out: Path,
    *,
    fusions=("concat", "sum", "cross_attention", "film", "logit_ensemble"),
    dropouts=(0.3, 0.5, 0.7),
    n_seeds: int = 10,
    n_test: int = 300,
    n_pascal: int = 45,
    seed: int = 0,
) -> Path:
    """A finished heart study in ``out`` (study.json, trials.parquet, predictions.parquet) with simulated predictions.

    Each recording has a difficulty shared by every model, so configurations
    are correlated as real ones are; configuration k separates the classes by
    d' = 1.0 + 0.04 k on PhysioNet and 0.7 times that on PASCAL (domain shift);
    each seed adds its own noise and its own validation threshold near 0.5.
    Returns ``out``.
    """
    rng = np.random.default_rng(seed)
    eval_sets = {
        "physionet2016:test": (n_test, PHYSIONET_SOURCES, 0.5, 1.0),
        "pascal": (n_pascal, PASCAL_SOURCES, 0.7, 0.7),
    }
    recordings, shifts = {}, {}
    for name, (n, sources, abnormal_share, shift) in eval_sets.items():
        labels = (np.arange(n) < round(abnormal_share * n)).astype(np.int8)
        rng.shuffle(labels)
        ids = [f"{name.split(':')[0]}-{i:04d}" for i in range(n)]
        recordings[name] = pd.DataFrame(
            {
                "recording_id": ids,
                "source": np.array(sources)[rng.integers(0, len(sources), n)],
                "group": ids,
                "label": labels,
                "difficulty": rng.standard_normal(n),
            }
        )
        shifts[name] = shift
    configurations = {
        f"c{k:02d}": {
            "model.architecture": "fusion",
            "model.fusion": fusion,
            "model.dropout": dropout,
            "train.lr": 3e-4,
        }
        for k, (fusion, dropout) in enumerate((fusion, dropout) for fusion in fusions for dropout in dropouts)
    }
    # configuration k separates the classes by d' = 1.0 + 0.04 k
    separation = {
        (s["model.fusion"], s["model.dropout"]): 1.0 + 0.04 * k for k, s in enumerate(configurations.values())
    }

    def predict(settings, seed_value, name, table, condition):
        d_prime = separation[settings["model.fusion"], settings["model.dropout"]] * shifts[name]
        score = d_prime * (table["label"] - 0.5) + 0.5 * table["difficulty"]
        return special.expit((score + 0.6 * rng.standard_normal(len(table))).to_numpy())

    space = {
        "name": "synthetic-bench",
        "scale": "cpu",
        "study": "heart",
        "fixed": {"model.architecture": "fusion"},
        "grid": {"model.fusion": list(fusions), "model.dropout": list(dropouts), "seed": list(range(n_seeds))},
        "compare": {"axis": "model.fusion", "baseline": fusions[0], "metric": "roc_auc"},
    }
    return fake_study(
        out,
        space=space,
        configurations=configurations,
        seeds=range(n_seeds),
        recordings=recordings,
        predict=predict,
        threshold=lambda settings, seed_value: float(np.clip(0.5 + 0.05 * rng.standard_normal(), 0.05, 0.95)),
    )


def bench_report(seed: int = 0) -> dict:
    """Time report_study (default options) on a synthetic study of 150 trials; one run."""
    from analysis.report import report_study

    with tempfile.TemporaryDirectory(prefix="audiofuse-report-bench-") as folder:
        out = write_synthetic_study(Path(folder) / "study", seed=seed)
        start = time.perf_counter()
        report_study(out)
        seconds = time.perf_counter() - start
    return {
        "name": "report_study, 15 configs x 10 seeds (150 trials), 300 + 45 rec., 10,000 resamples",
        "seconds": seconds,
        "limit_s": REPORT_LIMIT_S,
        "ok": seconds < REPORT_LIMIT_S,
    }


def run_bench(repeats: int = 3, seed: int = 0, report: bool = True) -> list[dict]:
    """Time each operation; returns rows of name, seconds and (where one applies) limit_s and ok."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(150, dtype=int), np.ones(150, dtype=int)]
    a, b = _scores(rng, y)[0], _scores(rng, y)[0]
    seeds_a, seeds_b = _scores(rng, y, 5), _scores(rng, y, 5)
    idx = stats.stratified_bootstrap_indices(y, 10_000, rng)
    patients = np.arange(y.size) // 3  # three recordings per patient
    icbhi_y = (rng.random(2800) < 0.45).astype(int)
    icbhi_groups = rng.integers(0, 120, 2800)
    icbhi_scores = _scores(rng, icbhi_y)[0]
    n_sklearn = 200

    def sklearn_loop():
        for row in idx[:n_sklearn]:
            roc_auc_score(y[row], a[row])

    cases = [
        (
            "bootstrap_ci ROC-AUC, 300 rec., 10,000 resamples, percentile",
            lambda: stats.bootstrap_ci(y, a, method="percentile", rng=1),
            CI_LIMIT_S,
        ),
        (
            "bootstrap_ci ROC-AUC, 300 rec., 10,000 resamples, BCa",
            lambda: stats.bootstrap_ci(y, a, method="bca", rng=1),
            CI_LIMIT_S,
        ),
        ("auc_resampled, 300 rec., 10,000 given index rows", lambda: stats.auc_resampled(y, a, idx), None),
        ("delong_test, 300 rec.", lambda: stats.delong_test(y, a, b), None),
        (
            "delong_test clustered (Obuchowski), 300 rec. of 100 patients",
            lambda: stats.delong_test(y, a, b, groups=patients),
            None,
        ),
        ("bootstrap_ci ROC-AUC, 5 seeds x 300 rec., 10,000, BCa", lambda: stats.bootstrap_ci(y, seeds_a, rng=1), None),
        (
            "bootstrap_ci MCC, 5 seeds x 300 rec., 10,000, BCa",
            lambda: stats.bootstrap_ci(y, seeds_a, "mcc", rng=1),
            None,
        ),
        (
            "paired_bootstrap_test ROC-AUC, 5 seeds x 300, 10,000",
            lambda: stats.paired_bootstrap_test(y, seeds_a, seeds_b, rng=1),
            None,
        ),
        (
            "paired_permutation_test ROC-AUC, 5 seeds x 300, 10,000",
            lambda: stats.paired_permutation_test(y, seeds_a, seeds_b, rng=1),
            None,
        ),
        (
            "paired_permutation_test ROC-AUC by patient, 5 seeds x 300 rec. of 100 patients, 10,000",
            lambda: stats.paired_permutation_test(y, seeds_a, seeds_b, rng=1, groups=patients),
            None,
        ),
        (
            "paired_permutation_test MCC, 5 seeds x 300, 10,000",
            lambda: stats.paired_permutation_test(y, seeds_a, seeds_b, "mcc", rng=1, threshold=0.6),
            None,
        ),
        (
            "bootstrap_ci ROC-AUC, 2,800 items in 120 groups, 10,000, BCa",
            lambda: stats.bootstrap_ci(icbhi_y, icbhi_scores, groups=icbhi_groups, rng=1),
            None,
        ),
        (
            "bootstrap_ci ROC-AUC, 2,800 items, no groups, 10,000, BCa",
            lambda: stats.bootstrap_ci(icbhi_y, icbhi_scores, rng=1),
            None,
        ),
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
    rows.append(
        {"name": "for comparison: sklearn roc_auc_score in a loop, 10,000 resamples (extrapolated)", "seconds": seconds}
    )
    if report:
        rows.append(bench_report(seed))
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
    parser.add_argument("--no-report", action="store_true", help="skip the 150-trial report benchmark")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = run_bench(args.repeats, report=not args.no_report)
    print(json.dumps({"rows": rows}) if args.json else format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
