"""The settings every analysis command shares: multiple-comparison correction, resamples, alpha, interval method,
random seed and whether to draw plots, as one validated dataclass and one set of command-line options; and the
report's own settings beside them (:class:`ReportOptions`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from analysis.stats import CI_METHODS

__all__ = [
    "CORRECTIONS",
    "CARRY_DROP",
    "AnalysisOptions",
    "ReportOptions",
    "add_analysis_arguments",
    "analysis_options",
]

CORRECTIONS = ("holm", "bh")
CARRY_DROP = 0.05  # the size of the paper's gaps: a source whose removal costs this much carries the pooled ROC-AUC


@dataclass(frozen=True)
class AnalysisOptions:
    """Validated on construction: ValueError names the setting that is out of range."""

    correction: str = "holm"  # "holm" (family-wise error) or "bh" (Benjamini-Hochberg false discovery rate)
    n_resamples: int = 10_000  # bootstrap resamples, and permutations where a test permutes
    alpha: float = 0.05  # significance level of the verdicts; every interval is 95 %
    ci_method: str = "bca"  # "bca" or "percentile"
    seed: int = 0  # random seed of the resampling
    plots: bool = True  # False writes the tables and report.md only

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if not isinstance(self.n_resamples, (int, np.integer)) or self.n_resamples < 100:
            raise ValueError(f"n_resamples must be an integer >= 100, got {self.n_resamples!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if self.ci_method not in CI_METHODS:
            raise ValueError(f"ci_method must be one of {CI_METHODS}, got {self.ci_method!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class ReportOptions(AnalysisOptions):
    """The shared settings and the report's own."""

    baseline: str | None = None  # a value of the compare axis; None: the space's
    allow_incomplete: bool = False  # analyse an incomplete or mismatched study instead of raising StudyError
    carry_drop: float = CARRY_DROP  # the leave-one-source-out ROC-AUC drop that flags a source

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.carry_drop < 1:
            raise ValueError(f"carry_drop must be in (0, 1), got {self.carry_drop!r}")


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --correction, --resamples, --alpha, --ci-method, --seed and --no-plots; read them with analysis_options."""
    parser.add_argument(
        "--correction", choices=CORRECTIONS, default="holm", help="multiple-comparison correction (default holm)"
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=10_000,
        help="bootstrap resamples, and permutations where a test permutes (default 10,000)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--ci-method", choices=CI_METHODS, default="bca", help="bootstrap interval (default bca)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables and report.md only, no figures")


def analysis_options(args: argparse.Namespace) -> dict:
    """The options add_analysis_arguments parsed, as AnalysisOptions keyword arguments (validated when constructed)."""
    return {
        "correction": args.correction,
        "n_resamples": args.resamples,
        "alpha": args.alpha,
        "ci_method": args.ci_method,
        "seed": args.seed,
        "plots": not args.no_plots,
    }
