"""The analysis report of a finished study: intervals, paired tests, per-source breakdown, resolution.

    python -m analysis report results/NAME [--out DIR] [--baseline VALUE] [--correction holm|bh]
        [--resamples N] [--alpha 0.05] [--ci-method bca|percentile] [--allow-incomplete] [--no-plots]

``study.run`` calls :func:`report_study` at the end of a study. Inputs are the
files ``study.run`` writes (``study.json``, ``trials.parquet``,
``predictions.parquet``); outputs are ``results/NAME/tables/*.md|csv|tex``,
``results/NAME/plots/*.png`` and the index ``results/NAME/report.md``, whose
summary puts every figure in a compact table with one row per row of a
table under ``tables/`` (naming its configuration and evaluation set; the
test ``tests/test_report_trace.py`` checks it). Where
the predictions hold perturbed or branch-ablated rows (a heart study),
:func:`report_study` then runs :func:`analysis.robustness.report_robustness`,
which adds its tables, plots and a section to ``report.md``.

Layers: :mod:`analysis.study_data` reads the study, :mod:`analysis.resampling`
draws and computes intervals, :mod:`analysis.output` and
:mod:`analysis.tables` / :mod:`analysis.plots` write; this module and
:mod:`analysis.robustness` build the reports on them.

Method, in short (``report.md`` states it too):

* A configuration is every ``config/*`` setting except the seed; its trials
  are replicates over training seeds. Only clean predictions (perturbation
  "none", severity 0, no branch ablation) are analysed here.
* Intervals: the seed-mean metric with a 95 % bootstrap interval (BCa by
  default) that resamples recordings, stratified by label, or whole
  patients where an evaluation set holds several recordings of a patient
  (PASCAL set_b, ICBHI, a manifest's ``group``), with the seed-to-seed
  variation added by variance components
  (:func:`analysis.stats.seed_mean_distribution`). Within an evaluation set
  every configuration and seed sees the same recording draws and seed k is
  paired with seed k, so differences are paired.
  For one configuration this is :func:`analysis.stats.bootstrap_ci`; the
  draws are made once here and shared, instead of once per configuration.
* Threshold metrics use each trial's validation-chosen threshold.
* Comparisons: each configuration against the configuration that differs
  only in having the baseline value on the space's compare axis, in every
  evaluation set. The paired bootstrap (as
  :func:`analysis.stats.paired_bootstrap_test`, on the shared draws) decides
  the paper claims; DeLong runs on seed-averaged probabilities, the paired
  permutation test on all common seeds, McNemar on the seed-majority
  decision (ties count as abnormal), Wilcoxon over per-seed metrics (which
  takes the test set as fixed; shown only from 6 seeds, with its
  Hodges-Lehmann interval). Every p is shown raw and adjusted (Holm or BH)
  within exactly one named family: (1) one test on one metric over the
  comparisons x evaluation sets; (2) the paper claims, each an
  intersection-union test of its parts at α, adjusted across the claims;
  (3) the robustness report's drop differences. Intervals beside adjusted
  p-values are unadjusted 95 % intervals and say so.
* Verdicts: a paper claim holds, is contradicted (a part's interval
  excludes the paper's Δ), or is not resolved; a configuration whose
  seed-mean ROC-AUC interval covers 0.5 is at chance; where seeds dominate
  an interval (V_seed > V_rec) the claims show the per-seed values.
* A source "carries" a configuration's pooled ROC-AUC (whose CI lies above
  0.5) when removing its recordings lowers the pooled seed-mean ROC-AUC by
  at least ``carry_drop`` (0.05, the size of the paper's gaps), or when the
  pooled ROC-AUC lies in that source's 95 % CI while every other source's
  CI contains 0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import paper, stats
from analysis.comparisons import (
    ComparisonRow,
    adjust_within_families,
    comparison_display,
    comparison_numbers,
    comparison_row,
    delong_possible,
    paired_tests,
)
from analysis.engine import Condition, StudyEngine, scored_trials
from analysis.options import AnalysisOptions, add_analysis_arguments, analysis_options
from analysis.output import (
    METRIC_LABELS,
    MIN_CLASS_RECORDINGS,
    ReportWriter,
    correction_name,
    few_recordings_warning,
    interval_cell,
    interval_numbers,
    resampling_unit,
    slug,
    write_html,
)
from analysis.plots import (
    ForestRow,
    LearningPanel,
    RocCurve,
    learning_curve,
    plot_forest,
    plot_learning_curves,
    plot_roc_curves,
    roc_tpr_on_grid,
)
from analysis.resampling import (
    CONFIDENCE_LEVEL,
    Resampled,
    named_generator,
    paired_bootstrap,
    roc_auc_kernel,
    seed_mean_interval,
)
from analysis.robustness import write_robustness
from analysis.study_data import (
    Configuration,
    EvalSet,
    StudyError,
    check_recorded_aucs,
    read_histories,
    setting_text,
)
from analysis.tables import format_interval, format_p, format_value, to_markdown
from study.data.synth import planted_cues
from study.io import write_text
from study.lock import study_lock

__all__ = ["HEART_MAIN", "CARRY_DROP", "ReportOptions", "report_study", "main"]

HEART_MAIN = ("roc_auc", "mcc", "f1", "accuracy")
CARRY_DROP = 0.05


@dataclass(frozen=True)
class ReportOptions(AnalysisOptions):
    """The shared settings (:class:`analysis.options.AnalysisOptions`) and the report's own."""

    baseline: str | None = None  # a value of the compare axis; None: the space's
    allow_incomplete: bool = False  # analyse an incomplete or mismatched study instead of raising StudyError
    carry_drop: float = CARRY_DROP  # the leave-one-source-out ROC-AUC drop that flags a source

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.carry_drop < 1:
            raise ValueError(f"carry_drop must be in (0, 1), got {self.carry_drop!r}")


# ---------------------------------------------------------------------------- the analysis


class _Analysis:
    """The report's view of the study engine: the clean evaluation sets, the compare axis and its baseline."""

    def __init__(self, engine: StudyEngine, options: ReportOptions, dest: Path | None = None):
        self.engine, self.options = engine, options
        self.out = engine.out
        self.dest = Path(dest) if dest is not None else self.out  # where the report is written
        self.state, self.space, self.name = engine.state, engine.space, engine.name
        self.respiratory, self.metrics = engine.respiratory, engine.metrics
        self.main_metrics = ("score", "sensitivity", "specificity", "roc_auc") if self.respiratory else HEART_MAIN
        self.axis = engine.axis
        self.compare_metric = (self.space.get("compare") or {}).get("metric") or "roc_auc"
        if self.compare_metric not in self.metrics:
            raise StudyError(
                f"the space's compare metric {self.compare_metric!r} is not one of the report's metrics {self.metrics}"
            )
        self.configurations, self.varying = engine.configurations, engine.varying
        self.problems = engine.problems
        self.eval_sets = engine.clean_eval_sets()
        if not self.respiratory:
            check_recorded_aucs(self.eval_sets, engine.trials, self.configurations)
        self.notes: list[str] = list(engine.notes)
        if self.problems and not options.allow_incomplete:
            raise StudyError(
                f"study '{self.name}' in {self.out} is incomplete or mismatched:\n  - "
                + "\n  - ".join(self.problems)
                + "\nfinish it (python -m study.run --space NAME --resume) or pass --allow-incomplete "
                "to analyse what is there"
            )
        self.n_trials = len(engine.trials)
        self.baseline = self._baseline_value(options.baseline)
        self.resampled = {e.name: engine.resampled(Condition(e.name)) for e in self.eval_sets}
        self.primary = next((e.name for e in self.eval_sets if e.name == "physionet2016:test"), self.eval_sets[0].name)

    def resample_set(self, eval_set: EvalSet, *stream: str) -> Resampled:
        """The report's resampling of a part of an evaluation set, from the random stream named ``stream``."""
        return self.engine.resample(eval_set, *stream)

    def _baseline_value(self, requested: str | None) -> str | None:
        if not self.axis or all(c.axis_value is None for c in self.configurations):
            if requested is not None:
                raise ValueError(
                    f"--baseline {requested!r} given but the space declares no compare axis present in the trials"
                )
            return None
        values = sorted({c.axis_value for c in self.configurations})
        baseline = setting_text(requested if requested is not None else self.space.get("compare", {}).get("baseline"))
        if baseline not in values:
            raise ValueError(f"baseline {baseline!r} is not a value of {self.axis} in this study; values: {values}")
        return baseline

    # -- configurations in an evaluation set

    def trials_in(self, configuration: Configuration, eval_set: str, seeds=None) -> tuple[list, list[str]]:
        """(seeds, trial ids) of a configuration that scored ``eval_set`` (optionally only the given seeds)."""
        return scored_trials(configuration, self.resampled[eval_set].eval_set, seeds)

    def interval(
        self, eval_set: str, configuration: Configuration, metric: str, resampled: Resampled | None = None
    ) -> stats.BootstrapCI | None:
        """Seed-mean ``metric`` of a configuration over all its seeds on ``eval_set`` (or one source's ``resampled``)."""
        return self.engine.interval(configuration, Condition(eval_set), metric, resampled)

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
                self.notes.append(
                    f"'{configuration.name}' has no baseline configuration ({self.axis}={self.baseline} "
                    "with its other settings) and is not compared"
                )
            else:
                family.append((configuration, partner))
        return family

    # -- paired comparisons

    def compare(self, a: Configuration, b: Configuration, eval_set: str, metrics, full: bool) -> list[ComparisonRow]:
        """Paired tests of a − b on ``eval_set`` over their common seeds (:func:`analysis.comparisons.paired_tests`):
        the paired bootstrap of every metric in ``metrics``, with ``full`` every other test of the compare metric."""
        seeds_b = set(self.trials_in(b, eval_set)[0])
        common = [s for s in self.trials_in(a, eval_set)[0] if s in seeds_b]
        if not common:
            self.notes.append(f"'{a.name}' vs '{b.name}' on {eval_set}: no seed in common, not compared")
            return []
        results, left_out = paired_tests(
            self.resampled[eval_set],
            self.trials_in(a, eval_set, common)[1],
            self.trials_in(b, eval_set, common)[1],
            metrics,
            self.compare_metric if full else None,
            binary=not self.respiratory,
            n_resamples=self.options.n_resamples,
            rng=named_generator(self.options.seed, eval_set, a.name, b.name),
            alpha=self.options.alpha,
        )
        if left_out:
            self.notes.append(left_out)
        return [comparison_row(eval_set, a.name, b.name, len(common), result) for result in results]

    def comparisons(self) -> list[ComparisonRow]:
        """Every configuration vs its baseline on every evaluation set, each p adjusted within its family."""
        metrics = tuple(dict.fromkeys((self.compare_metric,) + self.main_metrics))
        rows = [
            row
            for a, b in self.pairs()
            for eval_set in self.resampled
            for row in self.compare(a, b, eval_set, metrics, True)
        ]
        order = {name: k for k, name in enumerate(self.resampled)}
        rows.sort(key=lambda r: order[r.eval_set])  # stable: within a set, comparisons keep their order
        options = self.options
        self.notes += adjust_within_families(rows, options.correction, options.alpha, options.n_resamples)
        return rows


# ---------------------------------------------------------------------------- the report's tables


def _methods_of(intervals) -> str:
    methods = sorted({i.method for i in intervals if i is not None})
    return ", ".join("BCa" if m == "bca" else m for m in methods)


def _configurations_table(analysis: _Analysis, writer: ReportWriter) -> list[dict]:
    """Write tables/configurations: each configuration's varying settings, seeds and trials; returns its rows."""
    display, numbers = [], []
    for configuration in analysis.configurations:
        settings = ", ".join(f"{k}={setting_text(configuration.settings.get(k))}" for k in analysis.varying) or "–"
        seeds = ", ".join(str(s) for s in configuration.seeds)
        display.append(
            {
                "configuration": configuration.name,
                "settings": settings,
                "seeds": len(configuration.seeds),
                "seed values": seeds,
                "trials": ", ".join(configuration.trial_ids),
            }
        )
        numbers.append(
            {
                "configuration": configuration.name,
                "settings": settings,
                "seeds": len(configuration.seeds),
                "seed_values": seeds,
                "trial_ids": " ".join(configuration.trial_ids),
            }
        )
    writer.table(
        "configurations",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        "Configurations: every setting except the seed, replicated over seeds; the settings that vary between "
        "configurations, the seeds and the trials of each.",
        "each configuration's varying settings, seeds and trial ids",
    )
    return numbers


def _main_table(analysis: _Analysis, writer: ReportWriter) -> None:
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
            row[METRIC_LABELS[metric]] = interval_cell(interval)
            numeric.update(interval_numbers(metric, interval))
        if has_paper:
            model = paper.paper_model(configuration.settings)
            values = paper.AUDIOFUSE_RESULTS.get(model, {})
            row["paper (ROC-AUC / MCC / F1 / acc.)"] = (
                (" / ".join(f"{values[m]:.4f}" for m in HEART_MAIN) + f" ({model})") if model else "–"
            )
            numeric.update({"paper_model": model or "", **{f"paper_{m}": values.get(m, math.nan) for m in HEART_MAIN}})
        display.append(row)
        numbers.append(numeric)
    if analysis.respiratory:
        display.append(
            {
                "configuration": "SAM-AST paper (ICBHI official split, single run)",
                "seeds": 1,
                **{
                    METRIC_LABELS[m]: format_value(paper.SAM_AST_ICBHI[m]) if m in paper.SAM_AST_ICBHI else "–"
                    for m in analysis.main_metrics
                },
            }
        )
        numbers.append(
            {
                "configuration": "SAM-AST paper",
                "eval_set": "icbhi2017:test",
                "seeds": 1,
                **{m: paper.SAM_AST_ICBHI.get(m, math.nan) for m in analysis.main_metrics},
            }
        )
    unit = (
        "patients (cluster bootstrap)"
        if analysis.resampled[eval_set].eval_set.groups is not None
        else "recordings stratified by label"
    )
    caption = (
        f"Main results on {eval_set}: seed-mean metric [95 % {_methods_of(intervals)} bootstrap CI over {unit} "
        "with seed variation]; threshold metrics at each trial's validation-chosen threshold."
    )
    notes = (
        [
            "The paper's numbers are single runs without intervals, at the paper's scale; this study ran at scale "
            f"'{analysis.space.get('scale', '?')}'."
        ]
        if has_paper
        else []
    )
    writer.table(
        "main",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        f"configuration × {', '.join(METRIC_LABELS[m] for m in analysis.main_metrics)} on {eval_set}, with intervals"
        + (" and the paper's numbers" if has_paper or analysis.respiratory else ""),
        notes,
    )


def _pascal_table(analysis: _Analysis, writer: ReportWriter) -> None:
    options = analysis.options
    for eval_set in [e for e in analysis.resampled if e.startswith("pascal") and e != analysis.primary]:
        display, numbers, intervals = [], [], []
        has_paper = any(paper.paper_model(c.settings) for c in analysis.configurations)
        for configuration in analysis.configurations:
            seeds = set(analysis.trials_in(configuration, eval_set)[0]) & set(
                analysis.trials_in(configuration, analysis.primary)[0]
            )
            if not seeds:
                continue
            pascal, primary = (
                seed_mean_interval(
                    analysis.resampled[name],
                    analysis.trials_in(configuration, name, seeds)[1],
                    "roc_auc",
                    options.ci_method,
                )
                for name in (eval_set, analysis.primary)
            )
            intervals.append(pascal)
            # seed k on one set paired with seed k on the other; the two sets' recordings resampled independently
            change = paired_bootstrap(
                analysis.resampled[eval_set],
                analysis.trials_in(configuration, eval_set, seeds)[1],
                analysis.trials_in(configuration, analysis.primary, seeds)[1],
                "roc_auc",
                resampled_b=analysis.resampled[analysis.primary],
            )
            row = {
                "configuration": configuration.name,
                "seeds": len(seeds),
                f"{eval_set} ROC-AUC": interval_cell(pascal),
                f"change vs {analysis.primary}": format_interval(
                    change.difference, change.low, change.high, signed=True
                ),
            }
            numeric = {
                "configuration": configuration.name,
                "seeds": len(seeds),
                **interval_numbers("roc_auc", pascal),
                "change": change.difference,
                "change_low": change.low,
                "change_high": change.high,
            }
            if has_paper:
                model = paper.paper_model(configuration.settings)
                values = paper.AUDIOFUSE_RESULTS.get(model)
                row["paper ROC-AUC (change)"] = (
                    f"{values['pascal_roc_auc']:.4f} ({values['pascal_roc_auc'] - values['roc_auc']:+.4f})"
                    if values
                    else "–"
                )
                numeric.update(
                    paper_roc_auc=values["pascal_roc_auc"] if values else math.nan,
                    paper_change=values["pascal_roc_auc"] - values["roc_auc"] if values else math.nan,
                )
            display.append(row)
            numbers.append(numeric)
        caption = (
            f"Zero-shot {eval_set}: seed-mean ROC-AUC [95 % {_methods_of(intervals)} CI] and its change from "
            f"{analysis.primary} [95 % percentile CI; seeds paired, recordings of the two sets resampled independently]."
        )
        writer.table(
            slug(eval_set),
            pd.DataFrame(display),
            pd.DataFrame(numbers),
            caption,
            f"ROC-AUC on {eval_set} and its change vs {analysis.primary}"
            + (", with the paper's numbers" if has_paper else ""),
        )


def _intervals_table(analysis: _Analysis, writer: ReportWriter) -> None:
    display, numbers = [], []
    for eval_set, resampled in analysis.resampled.items():
        for configuration in analysis.configurations:
            for metric in analysis.metrics:
                interval = analysis.interval(eval_set, configuration, metric)
                if interval is None:
                    continue
                display.append(
                    {
                        "evaluation set": eval_set,
                        "n": resampled.eval_set.labels.size,
                        "n pos": resampled.eval_set.n_pos,
                        "configuration": configuration.name,
                        "seeds": interval.n_seeds,
                        "metric": METRIC_LABELS[metric],
                        "estimate [95 % CI]": interval_cell(interval),
                        "CI method": interval.method,
                    }
                )
                numbers.append(
                    {
                        "eval_set": eval_set,
                        "n": resampled.eval_set.labels.size,
                        "n_pos": resampled.eval_set.n_pos,
                        "configuration": configuration.name,
                        "seeds": interval.n_seeds,
                        "metric": metric,
                        "estimate": interval.estimate,
                        "low": interval.low,
                        "high": interval.high,
                        "method": interval.method,
                    }
                )
    writer.table(
        "intervals",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        f"Every metric of every configuration on every evaluation set: seed mean [95 % bootstrap CI, "
        f"{analysis.options.n_resamples} resamples of recordings (patients where known), with seed variation].",
        "every metric × configuration × evaluation set with its 95 % interval and the interval method",
    )


def _comparisons_table(analysis: _Analysis, writer: ReportWriter, rows: list[ComparisonRow]) -> None:
    numbers = [comparison_numbers(r, analysis.options.correction) for r in rows]
    display = [comparison_display(n, analysis.options.alpha) for n in numbers]
    caption = (
        f"Paired comparisons: every configuration vs its baseline ({analysis.axis} = {analysis.baseline}) on every "
        f"evaluation set: the raw p, and p adjusted by {correction_name(analysis.options.correction)} within its "
        "family (named, with its number of tests); the intervals are each comparison's own 95 % interval, not "
        "adjusted for the family, so one may exclude 0 while the adjusted p is above α."
    )
    notes = [
        "paired bootstrap: recordings resampled (stratified by label; whole patients where an evaluation set has "
        "several recordings per patient), the same draws for both configurations, seed variation added by variance "
        "components (seed k of A paired with seed k of B); it decides the paper claims.",
        "DeLong: on the seed-averaged probabilities of the common seeds (an ensemble's ROC-AUC, not the seed-mean "
        "ROC-AUC); with patients, Obuchowski's clustered variance.",
        "paired permutation: each recording's outputs (each patient's, with patients) swapped between the "
        "configurations (ranks for ROC-AUC), all seeds at once.",
        "McNemar: on the seed-majority decision (each seed at its validation threshold; ties count as abnormal); with "
        "patients, Durkalski's clustered statistic.",
        "Wilcoxon: over per-seed metrics, seed k of A paired with seed k of B; it treats the test recordings as fixed, "
        "so it asks whether the seeds differ on these recordings, not on new ones (patients do not enter it). Its Δ "
        "is the Hodges-Lehmann estimate and its interval the signed-rank one, at the exact level in the note; with "
        "fewer than 6 seeds it cannot reject at 0.05 and is not shown.",
    ]
    if analysis.respiratory:
        notes = notes[:1] + [
            "Respiratory study: only the cluster (patient) bootstrap and Wilcoxon over seeds are run; DeLong, "
            "permutation and McNemar are binary-outcome tests and an ICBHI score has four classes."
        ]
    writer.table(
        "comparisons",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "every configuration vs the baseline: Δ [CI], test, p, adjusted p, verdict",
        notes,
    )


def _matching(configurations: list[Configuration], claim: paper.Claim, value: str) -> list[Configuration]:
    """The configurations with ``value`` on the claim's axis and the claim's fixed settings."""
    wanted = {claim.axis: value, **claim.fixed}
    return [
        c for c in configurations if all(setting_text(c.settings.get(k)) == setting_text(v) for k, v in wanted.items())
    ]


def _claim_components(analysis: _Analysis, claim: paper.Claim) -> list[tuple[Configuration, Configuration, str]]:
    """(winner, loser, loser's value) for every pair of configurations that checks a part of ``claim``."""
    components = []
    for winner in _matching(analysis.configurations, claim, claim.winner):
        for loser_value in claim.losers:
            loser = next(  # the same settings apart from the claim's axis
                (
                    c
                    for c in _matching(analysis.configurations, claim, loser_value)
                    if all(
                        setting_text(c.settings[k]) == setting_text(winner.settings.get(k))
                        for k in c.settings
                        if k != claim.axis
                    )
                ),
                None,
            )
            if loser is not None:
                components.append((winner, loser, loser_value))
    return components


def _at_chance_and_seeds(analysis: _Analysis, eval_set: str, configurations, metric: str) -> list[str]:
    """Notes on a claim part's configurations: a seed-mean ROC-AUC CI that covers 0.5 ("at chance"), and
    intervals that seeds dominate (V_seed > V_rec), with the per-seed values."""
    notes = []
    for configuration in configurations:
        interval = analysis.interval(eval_set, configuration, metric)
        if interval is None:
            continue
        if metric == "roc_auc" and interval.low <= 0.5 <= interval.high:
            notes.append(f"{configuration.name} at chance ({interval_cell(interval)})")
        if interval.seed_dominated:
            _, trial_ids = analysis.trials_in(configuration, eval_set)
            resampled = analysis.resampled[eval_set]
            values = ", ".join(format_value(resampled.point[metric][resampled.rows[t]]) for t in trial_ids)
            notes.append(
                f"{configuration.name}'s seeds vary more than the test set does (per seed: {values}): more seeds needed"
            )
    return notes


def _paper_values_outside(analysis: _Analysis, claim: paper.Claim, configurations) -> list[str]:
    """The paper's values of a part's configurations that lie outside the study's 95 % CI."""
    outside = []
    for configuration in configurations:
        value = paper.paper_value(configuration.settings, claim.eval_set, claim.metric)
        interval = analysis.interval(claim.eval_set, configuration, claim.metric)
        if value is not None and interval is not None and not interval.low <= value <= interval.high:
            outside.append(f"paper's {configuration.name} {format_value(value)} outside {interval_cell(interval)}")
    return outside


def _claim_part(analysis: _Analysis, claim: paper.Claim, winner, loser, loser_value, by_pair) -> dict:
    """One part of a claim (winner beats loser): Δ, its unadjusted 95 % CI, raw p, and its outcome."""
    row = by_pair.get((claim.eval_set, loser.name, winner.name, claim.metric))
    if row is not None:  # the comparisons compare loser vs winner (the baseline): turn it round
        difference, low, high, p_raw = -row.difference, -row.high, -row.low, row.p_value
    else:
        row = (
            by_pair.get((claim.eval_set, winner.name, loser.name, claim.metric))
            or analysis.compare(winner, loser, claim.eval_set, (claim.metric,), full=False)[0]
        )
        difference, low, high, p_raw = row.difference, row.low, row.high, row.p_value
    paper_gap = claim.paper_differences.get(loser_value)
    # the paper's Δ outside the study's interval; a ranking without numbers (Δ > 0) is contradicted by a CI below 0
    excluded = not low <= paper_gap <= high if paper_gap is not None else high < 0
    if p_raw < analysis.options.alpha and difference > 0:
        outcome = "holds" + ("; the paper's Δ lies outside the CI" if excluded else "")
    else:
        outcome = "contradicted" if excluded else "not resolved"
    return {
        "claim": claim.key,
        "claim_text": claim.text,
        "winner": winner.name,
        "loser": loser.name,
        "eval_set": claim.eval_set,
        "metric": claim.metric,
        "paper_difference": paper_gap if paper_gap is not None else math.nan,
        "difference": difference,
        "low": low,
        "high": high,
        "p": p_raw,
        "part": outcome,
        "notes": "; ".join(
            _paper_values_outside(analysis, claim, (winner, loser))
            + _at_chance_and_seeds(analysis, claim.eval_set, (winner, loser), claim.metric)
        ),
    }


def _claim_verdict(parts: list[dict], adjusted_p: float, n_claims: int, alpha: float, correction: str) -> str:
    """A claim's verdict from its parts (intersection-union) and its p adjusted across the claims."""
    if any(part["part"] == "contradicted" for part in parts):
        return "contradicted"
    if all(part["part"].startswith("holds") for part in parts):
        if adjusted_p < alpha:
            return "holds"
        return f"not resolved after {correction_name(correction)} over {n_claims} claims"
    return "not resolved at this resolution"


def _claims_table(
    analysis: _Analysis, writer: ReportWriter, rows: list[ComparisonRow]
) -> tuple[list[dict], list[dict]]:
    """Write tables/claims; returns (claim and verdict of each claim, the table's numeric rows: one per part).

    A claim ("the winner beats each loser") is an intersection-union test: it holds when every part is
    significant in the paper's direction at α, so its p is its parts' largest raw p and the parts need no
    adjustment among themselves (Berger 1982, Technometrics 24:295). Across the claims those p-values are
    adjusted as one family.
    """
    by_pair = {(r.eval_set, r.a, r.b, r.metric): r for r in rows if r.test == "paired bootstrap"}
    checked = []
    for claim in paper.CLAIMS:
        if claim.eval_set not in analysis.resampled:
            continue
        components = _claim_components(analysis, claim)
        if components and len(components) >= len(claim.losers):
            checked.append([_claim_part(analysis, claim, *component, by_pair) for component in components])
    if not checked:
        return [], []
    options = analysis.options
    claim_p = [max(part["p"] for part in parts) for parts in checked]
    adjusted = stats.adjust_pvalues(claim_p, options.correction)
    numbers, summaries = [], []
    for parts, p_claim, p_adjusted in zip(checked, claim_p, adjusted, strict=True):
        claim_verdict = _claim_verdict(parts, p_adjusted, len(checked), options.alpha, options.correction)
        for part in parts:
            part.update(
                claim_p=p_claim,
                claim_adjusted_p=float(p_adjusted),
                correction=options.correction,
                family=CLAIMS_FAMILY,
                family_size=len(checked),
                claim_verdict=claim_verdict,
            )
        numbers += parts
        summaries.append({"claim": parts[0]["claim_text"], "verdict": claim_verdict})
    display = [
        {
            "claim": part["claim_text"],
            "claim verdict": part["claim_verdict"],
            "comparison": f"{part['winner']} vs {part['loser']}",
            "evaluation set": part["eval_set"],
            "paper Δ": format_value(part["paper_difference"], 4, signed=True)
            if math.isfinite(part["paper_difference"])
            else "> 0 (no numbers)",
            "study Δ [unadjusted 95 % CI]": format_interval(part["difference"], part["low"], part["high"], signed=True),
            "p (raw)": format_p(part["p"]),
            "part": part["part"],
            "claim p (largest part's)": format_p(part["claim_p"]),
            f"claim p ({options.correction}, {len(checked)} claims)": format_p(part["claim_adjusted_p"]),
            "notes": part["notes"],
        }
        for part in numbers
    ]
    writer.table(
        "claims",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        f"The paper's claims against this study (α = {options.alpha}), by the paired bootstrap. Each claim is an "
        "intersection-union test: every part must be significant in the paper's direction at α (raw p), and the "
        f"claim's p is its parts' largest; the claims' p-values are {correction_name(options.correction)}-adjusted "
        f"as one family ({len(checked)} claims). A claim is contradicted when a part's 95 % CI excludes the paper's "
        "Δ (for a ranking without numbers, when the CI lies below 0); it is not resolved when the CI holds both 0 "
        "and the paper's Δ. Notes: the paper's own values outside the study's CI, configurations at chance (the "
        "ROC-AUC CI covers 0.5), and intervals that seed-to-seed variation dominates.",
        "each paper claim this study can check, the deciding test, and whether it holds",
    )
    return summaries, numbers


CLAIMS_FAMILY = "paper claims: paired bootstrap, intersection-union per claim"


def _per_source(analysis: _Analysis, writer: ReportWriter) -> list[dict]:
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
                per_source[source] = analysis.resample_set(subset, eval_set, source)
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
            confounded = _between_source_confound(pooled, source_auc, drop)
            for source in sources:
                mask = data.sources == source
                n, n_pos = int(mask.sum()), int(data.binary[mask].sum())
                warning = few_recordings_warning(n_pos, n - n_pos, analysis.respiratory)
                row = {
                    "evaluation set": eval_set,
                    "source": source,
                    "n": n,
                    "n pos": n_pos,
                    "configuration": configuration.name,
                }
                numeric = {
                    "eval_set": eval_set,
                    "source": source,
                    "n": n,
                    "n_pos": n_pos,
                    "configuration": configuration.name,
                    "unreliable": warning,
                    **interval_numbers("pooled_roc_auc", pooled),
                }
                for metric in analysis.metrics:
                    interval = (
                        analysis.interval(eval_set, configuration, metric, per_source[source])
                        if source in per_source
                        else None
                    )
                    row[METRIC_LABELS[metric]] = interval_cell(interval) if source in per_source else "one class only"
                    numeric.update(interval_numbers(metric, interval))
                reasons, why = [], []  # why: the reasons, short, for report.md's table
                numeric["roc_auc_without_source"] = math.nan
                numeric["between_source_confound"] = confounded is not None
                if confounded == source:  # one row, the highest source's, stands for the confound
                    reasons.append(
                        f"the pooled ROC-AUC {pooled.estimate:.3f} exceeds every source's own, even this highest one "
                        f"by ≥ {drop}: the sources differ in label mix and score level (a between-source confound), "
                        "so no one source carries it"
                    )
                    why.append("between-source confound: the pooled ROC-AUC exceeds every source's own")
                if confounded is None and source in without:
                    auc_without = float(without[source][rows].mean())
                    numeric["roc_auc_without_source"] = auc_without
                    if pooled.low > 0.5 and pooled.estimate - auc_without >= drop:
                        reasons.append(
                            f"without it the pooled ROC-AUC falls from {pooled.estimate:.3f} to {auc_without:.3f}"
                        )
                        why.append("the pooled ROC-AUC falls without it")
                others = [s for s in per_source if s != source]
                if (
                    confounded is None
                    and source in per_source
                    and others
                    and pooled.low > 0.5
                    and source_auc[source].low <= pooled.estimate <= source_auc[source].high
                    and source_auc[source].low > 0.5
                    and all(source_auc[s].low <= 0.5 <= source_auc[s].high for s in others)
                ):
                    reasons.append("the pooled ROC-AUC lies in its CI while every other source's CI contains 0.5")
                    why.append("the only source above chance, and the pooled ROC-AUC lies in its CI")
                row["carries pooled ROC-AUC"] = (
                    ("CONFOUND: " if confounded == source else "YES: ") + "; ".join(reasons) if reasons else ""
                )
                row["intervals"] = warning or "–"
                if reasons and warning:
                    why.append(warning)
                numeric["carries_pooled_roc_auc"] = bool(reasons) and confounded is None
                if reasons:
                    flags.append(
                        {
                            "eval_set": eval_set,
                            "configuration": configuration.name,
                            "source": source,
                            "reason": "; ".join(reasons),
                            "why": "; ".join(why),
                            **{k: numeric[k] for k in _FLAG_NUMBERS},
                        }
                    )
                display.append(row)
                numbers.append(numeric)
    caption = (
        "Per-source breakdown: every metric within each source database, seed mean [95 % CI; recordings (patients "
        "where known) resampled within the source, stratified by label, with seed variation]. 'carries pooled ROC-AUC' flags a source, where the pooled "
        f"ROC-AUC's CI lies above 0.5, when removing the source lowers the pooled seed-mean ROC-AUC by ≥ {drop}, or "
        "when the pooled ROC-AUC lies inside that source's CI while every other source's CI contains 0.5 (chance). "
        f"'CONFOUND' marks, on the highest source's row, a pooled ROC-AUC that exceeds every source's own by ≥ {drop}: "
        "a between-source confound (the sources differ in label mix and score level), where no source is flagged as "
        "carrying it. "
        f"'intervals' marks a source with fewer than {MIN_CLASS_RECORDINGS} recordings of a class: its intervals "
        "rest on too few recordings to be trusted."
    )
    writer.table(
        "per_source",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "every metric per source database with intervals, and a flag where one source carries the pooled ROC-AUC",
    )
    return flags


def _between_source_confound(pooled, source_auc: dict, margin: float) -> str | None:
    """The highest-scoring source where the pooled ROC-AUC exceeds every source's own by ``margin`` or more: a
    pooled figure no source shows is the sources' differences (label mix, score level), not one source carrying
    it. None otherwise, or with fewer than two sources that hold both classes."""
    within = {s: i.estimate for s, i in source_auc.items() if i is not None}
    if pooled is None or len(within) < 2:
        return None
    highest = max(within, key=within.get)
    return highest if pooled.estimate - within[highest] >= margin else None


def _per_cue(analysis: _Analysis) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """ROC-AUC per planted cue on synthetic data: the abnormal recordings carrying one cue kind
    against every normal recording, seed mean [95 % CI], for each configuration. None when the
    study's data root holds no synthetic heart-sound folders (real data, or gone)."""
    root = analysis.state.get("data_root")
    cues = planted_cues(root) if root and not analysis.respiratory else {}
    if not cues:
        return None
    display, numbers = [], []
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        planted = [cues.get(recording) for recording in data.recordings]
        if any(c is None for c in planted):  # a set from elsewhere (a manifest of other audio)
            continue
        negatives, positives = data.binary == 0, data.binary == 1
        for kind in sorted({k for c in planted for k in c}):
            mask = negatives | (positives & np.array([kind in c for c in planted]))
            subset = data.subset(mask, f"{eval_set} / {kind}")
            if len(np.unique(subset.binary)) < 2:
                continue
            cue_resampled = analysis.resample_set(subset, eval_set, kind)
            n_with, n_normal = int(subset.binary.sum()), int(negatives.sum())
            for configuration in analysis.configurations:
                interval = analysis.interval(eval_set, configuration, "roc_auc", cue_resampled)
                if interval is None:
                    continue
                display.append(
                    {
                        "evaluation set": eval_set,
                        "planted cue": kind,
                        "abnormal with it": n_with,
                        "normal": n_normal,
                        "configuration": configuration.name,
                        "ROC-AUC": interval_cell(interval),
                    }
                )
                numbers.append(
                    {
                        "eval_set": eval_set,
                        "cue": kind,
                        "n_with_cue": n_with,
                        "n_normal": n_normal,
                        "configuration": configuration.name,
                        **interval_numbers("roc_auc", interval),
                    }
                )
    return (pd.DataFrame(display), pd.DataFrame(numbers)) if display else None


def _per_cue_table(analysis: _Analysis, writer: ReportWriter) -> None:
    tables = _per_cue(analysis)
    if tables is None:
        return
    caption = (
        "ROC-AUC per planted cue (synthetic data): the abnormal recordings carrying that cue against every normal "
        "recording, seed mean [95 % CI, recordings resampled with seed variation]; a recording with two cues counts "
        "for both. It shows which cues each configuration sees, e.g. whether fusion adds what one branch misses."
    )
    writer.table("per_cue", *tables, caption, "synthetic data only: ROC-AUC per planted cue and configuration")


# The numbers of a flagged source that report.md's table shows (tables/per_source columns).
_FLAG_NUMBERS = ("pooled_roc_auc", "roc_auc_without_source", "roc_auc", "roc_auc_low", "roc_auc_high")


def _clustering_table(analysis: _Analysis, writer: ReportWriter) -> None:
    """Per evaluation set with patients: clusters, the largest one, and each configuration's ROC-AUC interval
    with patients resampled against the interval that treats every recording as independent."""
    display, numbers = [], []
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        if data.groups is None:
            continue
        independent_set = dataclasses.replace(data, groups=None)
        independent = analysis.engine.resample(independent_set, eval_set, "independent", kernel=roc_auc_kernel)
        sizes = data.cluster_sizes()
        for configuration in analysis.configurations:
            _, trial_ids = analysis.trials_in(configuration, eval_set)
            if not trial_ids:
                continue
            clustered = analysis.interval(eval_set, configuration, "roc_auc")
            naive = seed_mean_interval(independent, trial_ids, "roc_auc", analysis.options.ci_method)
            naive_width = naive.high - naive.low
            ratio = (clustered.high - clustered.low) / naive_width if naive_width > 0 else math.nan
            display.append(
                {
                    "evaluation set": eval_set,
                    "recordings": data.labels.size,
                    "patients": sizes.size,
                    "largest": int(sizes.max()),
                    "configuration": configuration.name,
                    "seeds": len(trial_ids),
                    "ROC-AUC, patients resampled": interval_cell(clustered),
                    "as if independent": interval_cell(naive),
                    "width ratio": f"{ratio:.2f}",
                }
            )
            numbers.append(
                {
                    "eval_set": eval_set,
                    "recordings": data.labels.size,
                    "patients": sizes.size,
                    "largest_cluster": int(sizes.max()),
                    "configuration": configuration.name,
                    "seeds": len(trial_ids),
                    **interval_numbers("roc_auc", clustered),
                    "independent_low": naive.low,
                    "independent_high": naive.high,
                    "width_ratio": ratio,
                }
            )
    if not display:
        return
    writer.table(
        "clustering",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        "Evaluation sets with several recordings per patient (a recording without a patient is its own cluster; "
        "duplicate audio inside a set is one): patients, the largest patient's recordings, and each configuration's "
        "seed-mean ROC-AUC [95 % CI] with whole patients resampled, as every interval and test of this report does, "
        "against the interval that treats the recordings as independent. A width ratio above 1 is how much the "
        "independent interval overstates the evidence.",
        "patients per evaluation set and how much patient clustering widens each ROC-AUC interval",
    )


def _resolution_table(analysis: _Analysis, writer: ReportWriter) -> list[dict]:
    display, numbers = [], []
    pairs = analysis.pairs() if analysis.baseline is not None else []
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        n, n_pos = data.labels.size, data.n_pos
        sizes = data.cluster_sizes()
        row = {
            "evaluation set": eval_set,
            "n": n,
            "n pos": n_pos,
            "n neg": n - n_pos,
            "clusters": sizes.size,
            "largest cluster": int(sizes.max()),
        }
        numeric = {
            "eval_set": eval_set,
            "n": n,
            "n_pos": n_pos,
            "n_neg": n - n_pos,
            "clusters": sizes.size,
            "largest_cluster": int(sizes.max()),
            "resampled_by_patient": data.groups is not None,
            "dropped_recordings": data.dropped_recordings,
        }
        if analysis.respiratory:
            row["smallest detectable Δ ROC-AUC"] = "n/a: four-class score"
        else:
            rhos, base_aucs, observed, design_effects = [], [], [], []
            for a, b in pairs if delong_possible(data.binary) else []:
                common = set(analysis.trials_in(a, eval_set)[0]) & set(analysis.trials_in(b, eval_set)[0])
                if not common:
                    continue
                rows_a = [resampled.rows[t] for t in analysis.trials_in(a, eval_set, common)[1]]
                rows_b = [resampled.rows[t] for t in analysis.trials_in(b, eval_set, common)[1]]
                mean_a, mean_b = data.probs[rows_a].mean(axis=0), data.probs[rows_b].mean(axis=0)
                delong = stats.delong_test(data.binary, mean_a, mean_b)
                if delong.var_a > 0 and delong.var_b > 0:
                    rhos.append(delong.cov / math.sqrt(delong.var_a * delong.var_b))
                if data.groups is not None:
                    clustered = stats.delong_test(data.binary, mean_a, mean_b, groups=data.groups)
                    variances = [r.var_a + r.var_b - 2 * r.cov for r in (clustered, delong)]
                    if variances[1] > 0:
                        design_effects.append(variances[0] / variances[1])
                base_aucs.append(delong.auc_b)
                observed.append(abs(delong.difference))
            if rhos:
                rho = float(np.median(rhos))
                base_auc = float(np.median(base_aucs))
                clipped = min(max(base_auc, 0.5), 0.999)
                # Patients: the variance of a difference grows by the design effect, as if n shrank by it.
                design_effect = max(float(np.median(design_effects)), 1.0) if design_effects else 1.0
                mde = stats.auc_difference_mde(
                    max(round(n_pos / design_effect), 1),
                    max(round((n - n_pos) / design_effect), 1),
                    clipped,
                    float(np.clip(rho, -1, 1)),
                    analysis.options.alpha,
                )
                below = sum(d < mde for d in observed) if math.isfinite(mde) else len(observed)
                row.update(
                    {
                        "baseline ROC-AUC (seed-avg.)": format_value(base_auc),
                        "ρ between configurations": f"{rho:.2f} [{min(rhos):.2f}, {max(rhos):.2f}]",
                        "design effect (patients)": f"{design_effect:.2f}",
                        "smallest detectable Δ ROC-AUC (80 % power)": format_value(mde),
                        "observed |Δ| below it": f"{below} of {len(observed)}",
                    }
                )
                numeric.update(
                    baseline_roc_auc=base_auc,
                    rho_median=rho,
                    rho_min=min(rhos),
                    rho_max=max(rhos),
                    design_effect=design_effect,
                    mde=mde,
                    n_comparisons=len(observed),
                    n_below_mde=below,
                )
            else:
                row.update(
                    {"smallest detectable Δ ROC-AUC (80 % power)": "n/a: no pair of configurations to correlate"}
                )
        display.append(row)
        numbers.append(numeric)
    caption = (
        "What each test set can resolve: recordings, positives, and the smallest ROC-AUC difference a two-sided paired "
        f"DeLong test at α = {analysis.options.alpha} detects with 80 % power (stats.auc_difference_mde, Hanley-McNeil "
        "variances), at the median correlation ρ of the configurations' seed-averaged ROC-AUCs (DeLong covariance) "
        "and the baseline's ROC-AUC (taken as 0.5 if below). Where recordings cluster within patients, the counts "
        "are divided by the design effect: the median ratio of Obuchowski's clustered to DeLong's variance of a "
        "difference."
    )
    writer.table(
        "resolution",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "n recordings, n positives and the smallest ROC-AUC difference each evaluation set can resolve",
    )
    return numbers


def _banded(analysis: _Analysis, configuration: Configuration) -> bool:
    """Whether a configuration's ROC curve gets its band: the baseline's only (one band reads; five blur into
    one), or the single configuration of a study without a baseline."""
    if analysis.baseline is None:
        return len(analysis.configurations) == 1
    return configuration.axis_value == analysis.baseline


def _roc_plots(analysis: _Analysis, writer: ReportWriter) -> None:
    banded = "baseline" if analysis.baseline is not None else "configuration"  # whose band is shaded
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        n_band = resampled.band_weights.shape[1]
        curves = []
        for configuration in analysis.configurations:
            _, trial_ids = analysis.trials_in(configuration, eval_set)
            if not trial_ids:
                continue
            rows_k = [resampled.rows[t] for t in trial_ids]
            per_seed = roc_tpr_on_grid(data.binary, data.probs[rows_k], np.ones((data.labels.size, 1)))[:, :, 0]
            auc = analysis.interval(eval_set, configuration, "roc_auc")
            name = configuration.name
            if not _banded(analysis, configuration):
                curves.append(RocCurve(f"{name}: {interval_cell(auc)}", per_seed.mean(axis=0)))
                continue
            tpr = roc_tpr_on_grid(data.binary, data.probs[rows_k], resampled.band_weights)
            band = stats.seed_mean_distribution(tpr, per_seed, (0.0, 1.0))
            low, high = np.quantile(band, [(1 - CONFIDENCE_LEVEL) / 2, (1 + CONFIDENCE_LEVEL) / 2], axis=1)
            label = f"{name} (baseline)" if analysis.baseline is not None else name
            curves.append(RocCurve(f"{label}: {interval_cell(auc)}", per_seed.mean(axis=0), low, high))
        path = writer.plots_dir / f"roc_{slug(eval_set)}.png"
        plot_roc_curves(
            path,
            curves,
            f"{analysis.name}: ROC on {eval_set} (n = {data.labels.size}, {data.n_pos} abnormal)",
            band_note=f"Seed-mean ROC (TPR averaged over seeds at each FPR). Shaded: the {banded}'s pointwise "
            f"95 % band over "
            f"{n_band} bootstrap resamples of {resampling_unit(data)} with seed variation. Legend: seed-mean "
            "ROC-AUC [95 % CI].",
        )
        writer.plot(
            path,
            f"ROC curve of every configuration on {eval_set}, the {banded}'s with its pointwise 95 % bootstrap "
            f"band ({resampling_unit(data)} resampled)",
        )


def _forest_plot(analysis: _Analysis, writer: ReportWriter, rows: list[ComparisonRow], resolution: list[dict]):
    deciding = [r for r in rows if r.test == "paired bootstrap" and r.metric == analysis.compare_metric]
    if not deciding:
        return
    mde = {r["eval_set"]: r.get("mde") for r in resolution} if analysis.compare_metric == "roc_auc" else {}
    panels = [
        (
            eval_set,
            [
                ForestRow(f"{r.a} vs {r.b}", r.difference, r.low, r.high, r.adjusted_p < analysis.options.alpha)
                for r in deciding
                if r.eval_set == eval_set
            ],
            mde.get(eval_set),
        )
        for eval_set in analysis.resampled
    ]
    metric = METRIC_LABELS[analysis.compare_metric]
    path = writer.plots_dir / "forest.png"
    plot_forest(
        path,
        [p for p in panels if p[1]],
        f"Δ {metric} (configuration − baseline)",
        f"{analysis.name}: Δ {metric} of each configuration vs the baseline {analysis.axis} = {analysis.baseline}",
        note=f"Paired bootstrap, 95 % percentile CI (unadjusted); filled: adjusted p < {analysis.options.alpha} "
        f"({analysis.options.correction}).",
    )
    writer.plot(path, f"forest plot of Δ {metric} vs the baseline with 95 % CIs, per evaluation set")


def _learning_curves(analysis: _Analysis, writer: ReportWriter) -> None:
    trial_ids = [t for c in analysis.configurations for t in c.trial_ids]
    histories = read_histories(analysis.out, trial_ids)
    if not histories:
        analysis.notes.append(
            f"no learning curves: none of the {len(trial_ids)} trials keeps its per-epoch history in the study folder "
            "(trials/TRIAL_ID/metrics.json; a committed reference study leaves trials/ out)"
        )
        return
    if len(histories) < len(trial_ids):
        analysis.notes.append(
            f"learning curves from {len(histories)} of {len(trial_ids)} trials: the others have no "
            "trials/TRIAL_ID/metrics.json with a history"
        )
    loss, validation = [], []
    for k, configuration in enumerate(analysis.configurations):
        seeds = [histories[t] for t in configuration.trial_ids if t in histories]
        if seeds:
            label = f"{configuration.name} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
            best_epochs = [h.best_epoch for h in seeds]
            losses = [{row["epoch"]: row["train_loss"] for row in h.rows} for h in seeds]
            monitored = [{row["epoch"]: row[f"val_{h.monitor}"] for row in h.rows} for h in seeds]
            loss.append(learning_curve(label, k, losses, best_epochs))
            validation.append(learning_curve(label, k, monitored, best_epochs))
    monitors = " / ".join(METRIC_LABELS.get(m, m) for m in sorted({h.monitor for h in histories.values()}))
    path = writer.plots_dir / "learning_curves.png"
    plot_learning_curves(
        path,
        [LearningPanel("training loss", loss), LearningPanel(f"validation {monitors}", validation)],
        f"{analysis.name}: training loss and validation {monitors} per epoch",
        note="Lines: mean over the seeds that trained that epoch (early stopping ends seeds at different epochs); "
        "shaded: lowest to highest seed. Validation is the early-stopping monitor on the validation split.",
    )
    writer.plot(
        path,
        "learning curves: training loss and the validation monitor per epoch, per configuration with the seeds' "
        "spread and each seed's early-stopping epoch",
    )


def _plots(analysis: _Analysis, writer: ReportWriter, rows: list[ComparisonRow], resolution: list[dict]) -> None:
    _roc_plots(analysis, writer)
    _forest_plot(analysis, writer, rows, resolution)
    _learning_curves(analysis, writer)


def _summary_table(analysis: _Analysis, writer: ReportWriter) -> list[dict]:
    """Write tables/summary: configuration × evaluation set with the primary metric and MCC (the ICBHI study:
    sensitivity) with their intervals, seeds and n: the table report.md opens with. Returns its rows."""
    second = "mcc" if "mcc" in analysis.metrics and analysis.compare_metric != "mcc" else "sensitivity"
    numbers = []
    for eval_set, resampled in analysis.resampled.items():
        data = resampled.eval_set
        for configuration in analysis.configurations:
            seeds, _ = analysis.trials_in(configuration, eval_set)
            primary = analysis.interval(eval_set, configuration, analysis.compare_metric)
            if primary is None:
                continue
            numbers.append(
                {
                    "configuration": configuration.name,
                    "eval_set": eval_set,
                    "seeds": len(seeds),
                    "n": int(data.labels.size),
                    "n_pos": int(data.n_pos),
                    **interval_numbers(analysis.compare_metric, primary),
                    **interval_numbers(second, analysis.interval(eval_set, configuration, second)),
                }
            )
    writer.table(
        "summary",
        _summary_display(numbers, analysis.compare_metric, second),
        pd.DataFrame(numbers),
        f"Every configuration on every evaluation set: seed-mean {METRIC_LABELS[analysis.compare_metric]} and "
        f"{METRIC_LABELS[second]} [95 % CI], seeds and recordings (positives).",
        "the table report.md opens with: each configuration's main metrics on every evaluation set",
    )
    return numbers


def _summary_display(numbers: list[dict], primary: str, second: str) -> pd.DataFrame:
    def cell(row, metric):
        return format_interval(row[metric], row[f"{metric}_low"], row[f"{metric}_high"])

    return pd.DataFrame(
        [
            {
                "configuration": f"`{r['configuration']}`",
                "evaluation set": r["eval_set"],
                f"{METRIC_LABELS[primary]} [95 % CI]": cell(r, primary),
                f"{METRIC_LABELS[second]} [95 % CI]": cell(r, second),
                "seeds": r["seeds"],
                "n (positive)": f"{r['n']} ({r['n_pos']})",
            }
            for r in numbers
        ]
    )


def _best_sentence(analysis: _Analysis, eval_set: str, rows: list[ComparisonRow]) -> str:
    """Which configuration scores highest on ``eval_set`` and whether the comparisons tell it from the rest."""
    metric = analysis.compare_metric
    scored = {c.name: i for c in analysis.configurations if (i := analysis.interval(eval_set, c, metric)) is not None}
    if not scored:
        return ""
    best = max(scored, key=lambda name: scored[name].estimate)
    sentence = f"On {eval_set}, `{best}` has the highest seed-mean {METRIC_LABELS[metric]}"
    others = [name for name in scored if name != best]
    if not others:
        return sentence + "."
    deciding = {
        frozenset((r.a, r.b)): r
        for r in rows
        if r.eval_set == eval_set and r.metric == metric and r.test == "paired bootstrap"
    }
    ahead = [o for o in others if (r := deciding.get(frozenset((best, o)))) and r.adjusted_p < analysis.options.alpha]
    level = [
        o for o in others if (r := deciding.get(frozenset((best, o)))) and not r.adjusted_p < analysis.options.alpha
    ]
    untested = [o for o in others if frozenset((best, o)) not in deciding]
    parts = []
    if ahead and not level and not untested:
        parts.append("significantly ahead of every other configuration after adjustment")
    else:
        if ahead:
            parts.append("significantly ahead of " + ", ".join(f"`{o}`" for o in ahead))
        if level:
            parts.append("not distinguishable from " + ", ".join(f"`{o}`" for o in level))
        if untested:
            parts.append(
                "not compared with "
                + ", ".join(f"`{o}`" for o in untested)
                + " (only comparisons with the baseline are tested)"
            )
    sentence += ": " + "; ".join(parts)
    if metric == "roc_auc" and all(i.low <= 0.5 <= i.high for i in scored.values()):
        sentence += ". Every configuration is at chance there (each interval covers 0.5)"
    return sentence + "."


def _lead(analysis: _Analysis, summary: list[dict], rows: list[ComparisonRow], claims: list[dict]) -> list[str]:
    """report.md's opening: the answer in a paragraph, the main table, the significant comparisons."""
    sentences = [s for s in (_best_sentence(analysis, e, rows) for e in analysis.resampled) if s]
    if claims:
        verdicts = [c["verdict"] for c in claims]
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        sentences.append(
            "Of the paper's claims this study can check: "
            + "; ".join(
                f"{'all' if n == len(verdicts) else ('one' if n == 1 else 'several')} {v}" for v, n in counts.items()
            )
            + " (below)."
        )
    second = next(k for k in summary[0] if k.endswith("_low") and not k.startswith(analysis.compare_metric))[:-4]
    significant = [r for r in rows if r.adjusted_p < analysis.options.alpha]
    lines = [
        "## Summary",
        "",
        " ".join(sentences),
        "",
        "- every configuration on every evaluation set ([tables/summary.md](tables/summary.md)):",
        "",
        to_markdown(_summary_display(summary, analysis.compare_metric, second)).rstrip("\n"),
        "",
    ]
    correction = correction_name(analysis.options.correction)
    if not rows:
        return lines
    if not significant:
        return lines + [
            f"No comparison is significant after {correction} adjustment within its family "
            "([tables/comparisons.md](tables/comparisons.md)).",
            "",
        ]
    table = pd.DataFrame(
        [
            {
                "evaluation set": r.eval_set,
                "a": f"`{r.a}`",
                "b": f"`{r.b}`",
                "metric": METRIC_LABELS[r.metric],
                "test": r.test,
                "Δ = a − b [unadjusted 95 % CI]": format_interval(r.difference, r.low, r.high, signed=True),
                "p (raw)": format_p(r.p_value),
                f"p ({analysis.options.correction})": format_p(r.adjusted_p),
                "family (tests)": f"{r.family} ({r.family_size})",
            }
            for r in significant
        ]
    )
    return lines + [
        f"- significant after {correction} adjustment within its family "
        "(every comparison: [tables/comparisons.md](tables/comparisons.md)):",
        "",
        to_markdown(table).rstrip("\n"),
        "",
    ]


def _study_tables(analysis: _Analysis, configurations: list[dict], resolution: list[dict]) -> list[str]:
    """report.md's compact tables of the configurations and evaluation sets, a row per row of
    tables/configurations and tables/resolution."""
    positive = "not normal" if analysis.respiratory else "abnormal"
    sets = []
    for r in resolution:
        row = {
            "evaluation set": f"`{r['eval_set']}`",
            "recordings": r["n"],
            positive: r["n_pos"],
            "patients": r["clusters"] if r["resampled_by_patient"] else "–",
            "largest patient (recordings)": r["largest_cluster"] if r["resampled_by_patient"] else "–",
            "resampled and tested by": "patient" if r["resampled_by_patient"] else "recording",
        }
        if any(x["dropped_recordings"] for x in resolution):
            row["recordings dropped (not scored by every trial)"] = r["dropped_recordings"]
        sets.append(row)
    return [
        "- configurations ([tables/configurations.md](tables/configurations.md)):",
        "",
        to_markdown(
            pd.DataFrame([{"configuration": f"`{r['configuration']}`", "seeds": r["seeds"]} for r in configurations])
        ),
        "- evaluation sets ([tables/resolution.md](tables/resolution.md)):",
        "",
        to_markdown(pd.DataFrame(sets)),
    ]


def _claims_summary(parts: list[dict], correction: str) -> list[str]:
    """report.md's table of the paper claims: a row per part (a row of tables/claims), the claim's text, verdict
    and adjusted p on its first part."""
    rows, seen = [], set()
    n_claims = len({part["claim"] for part in parts})
    for part in parts:
        first = part["claim"] not in seen
        seen.add(part["claim"])
        paper_gap = part["paper_difference"]
        rows.append(
            {
                "claim": part["claim_text"] if first else "",
                "verdict": part["claim_verdict"] if first else "",
                f"claim p ({correction}, {n_claims} claims)": format_p(part["claim_adjusted_p"]) if first else "",
                "comparison": f"{part['winner']} vs {part['loser']}",
                "evaluation set": part["eval_set"],
                "paper Δ": format_value(paper_gap, 4, signed=True) if math.isfinite(paper_gap) else "ranking only",
                "study Δ [unadjusted 95 % CI]": format_interval(
                    part["difference"], part["low"], part["high"], signed=True
                ),
                "p (raw)": format_p(part["p"]),
                "part": part["part"],
                "notes": part["notes"],
            }
        )
    return [
        "## Paper claims",
        "",
        to_markdown(pd.DataFrame(rows)),
        "(Δ: winner − loser in "
        + ", ".join(dict.fromkeys(METRIC_LABELS[p["metric"]] for p in parts))
        + "; how a claim is decided is under Method; the claims' wording: [tables/claims.md](tables/claims.md))",
        "",
    ]


def _flags_summary(flags: list[dict]) -> list[str]:
    """report.md's table of the sources that carry a pooled ROC-AUC, a row per flagged row of tables/per_source."""
    rows = [
        {
            "configuration": f"`{f['configuration']}`",
            "evaluation set": f["eval_set"],
            "source": f"**{f['source']}**",
            "pooled ROC-AUC": format_value(f["pooled_roc_auc"]),
            "pooled ROC-AUC without the source": format_value(f["roc_auc_without_source"]),
            "ROC-AUC within the source [95 % CI]": format_interval(f["roc_auc"], f["roc_auc_low"], f["roc_auc_high"]),
            "flagged because": f["why"],
        }
        for f in flags
    ]
    return [
        "## Per-source flags",
        "",
        "- seed-mean ROC-AUCs of [tables/per_source.md](tables/per_source.md); the rule is under Method:",
        "",
        to_markdown(pd.DataFrame(rows)),
    ]


def _index(
    analysis: _Analysis,
    writer: ReportWriter,
    tables: dict[str, list[dict]],
    claims: list[dict],
    flags: list[dict],
    seconds: float,
    lead: list[str],
) -> Path:
    """Write report.md: the answer first (``lead``, then the paper claims), then the study's details, the
    per-source flags, the files and the method; ``tables`` holds the numeric rows of configurations,
    resolution and claims."""
    options = analysis.options
    lines = [
        f"# Report: study `{analysis.name}`"
        if analysis.out.resolve().name == analysis.name
        else f"# Report: `{analysis.out.resolve().name}` (a study of the space `{analysis.name}`)",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `python -m analysis report` from "
        f"`trials.parquet` ({analysis.n_trials} trials) and `predictions.parquet` in `{analysis.out}`.",
        "",
    ]
    if analysis.problems:
        lines += ["**Incomplete or mismatched study, analysed as it is (`--allow-incomplete`):**", ""]
        lines += [f"- {p}" for p in analysis.problems] + [""]
    lines += lead
    if claims:
        lines += _claims_summary(tables["claims"], options.correction)
    lines += [
        "## Study",
        "",
        f"- study type: {'respiratory (ICBHI, 4 classes)' if analysis.respiratory else 'heart (binary)'}; "
        f"scale: {analysis.space.get('scale', '?')}",
        f"- settings that vary: {', '.join(analysis.varying) or 'none'}; seeds are replicates",
        f"- comparisons: {analysis.axis} vs baseline `{analysis.baseline}` on {METRIC_LABELS[analysis.compare_metric]}"
        if analysis.baseline is not None
        else "- comparisons: none (the space declares no compare axis in these trials)",
        f"- options: {options.n_resamples} bootstrap resamples and permutations, {options.ci_method} intervals, "
        f"{options.correction} correction, α = {options.alpha}, random seed {options.seed}; took {seconds:.1f} s",
    ]
    lines += [f"- note: {n}" for n in dict.fromkeys(analysis.notes)]
    for dataset, check in analysis.state.get("data_info", {}).get("split_check", {}).items():
        shared = check["patients_in_train_and_test"]
        recordings = (
            f"- split of `{dataset}`: {check['recordings_train']} train / {check['recordings_test']} test "
            "recordings (none in both); "
        )
        if not check["patients_train"] and not check["patients_test"]:
            lines.append(recordings + "the dataset gives no patient ids, so patients cannot be checked")
            continue
        lines += [
            recordings
            + f"{check['patients_train']} train / {check['patients_test']} test patients, **{len(shared)} in both**"
            + (
                f" ({', '.join(shared)}): the split is by recording, so "
                "these patients' cycles leak between train and test"
                if shared
                else ""
            )
        ]
    for key, found in analysis.state.get("data_info", {}).get("duplicates", {}).items():
        removed, dropped = found.get("removed_from_training", []), found.get("dropped_from_eval", {})
        if removed or dropped or found.get("listed_in_training"):
            lines.append(
                f"- duplicate audio (data key {key}, data.duplicates={found.get('setting')}): "
                f"{len(removed)} training/validation recording(s) removed as copies of evaluation recordings"
                + (f" ({', '.join(r['id'] for r in removed[:5])}{' …' if len(removed) > 5 else ''})" if removed else "")
                + f"; {sum(len(d) for d in dropped.values())} copies inside evaluation sets scored once"
                + (
                    f"; {len(found['listed_in_training'])} training copies of evaluation audio kept (listed only)"
                    if found.get("listed_in_training")
                    else ""
                )
            )
    lines += ["", *_study_tables(analysis, tables["configurations"], tables["resolution"])]
    search = analysis.state.get("search") or {}
    if search.get("complete"):
        best = search["best"]
        lines += [
            "## Hyperparameter search",
            "",
            f"- {search['trials']} trials in [search/trials.parquet](search/trials.parquet), "
            f"{search['stopped_early']} of them stopped early by ASHA; every one evaluated with the weights it "
            f"kept. Ranked by `{search['metric']}` ({search['mode']}) on the validation split only.",
            f"- best: trial `{best['trial_id']}`, {search['metric']} = {best['value']:.4f}, settings "
            + ", ".join(f"`{k}={setting_text(v)}`" for k, v in best["params"].items()),
            "- configuration `best` is those settings and `default` the space's own, each retrained over the "
            "seeds of the scale; the comparisons below test `best` against `default` on held-out sets.",
            "",
        ]
    if flags:
        lines += _flags_summary(flags)
    lines += ["## Tables", "", *writer.table_links(), "", "## Plots", "", *writer.plot_links()]
    lines += [
        "",
        "## Method",
        "",
        "- A configuration is every setting except the seed; seeds are replicates. Only clean predictions are "
        "analysed (no perturbation, no test-time branch ablation).",
        "- Intervals: seed-mean metric, bootstrap over recordings stratified by label, or over whole patients "
        "(stratified by their label mix) in evaluation sets with several recordings per patient (see `clustering`), "
        "with the seed-to-seed variation added by variance components (seed, recording and seed × recording "
        "interaction, each counted once) on Student's t tails, whose Satterthwaite degrees of freedom come from the "
        "seed component (S − 1 where seeds dominate: a mean of 3 seeds has 2); every configuration and seed shares "
        "the same recording draws and seed k is paired with seed k, so differences are paired. Where seeds vary "
        "more than the test set does (V_seed > V_rec) the claims show each seed's value: more seeds narrow the "
        "interval, more recordings barely do.",
        "- Threshold metrics use each trial's threshold chosen on validation, never on test.",
        f"- Families ({correction_name(options.correction)}-adjusted p-values, α = {options.alpha}): each adjusted p "
        "is adjusted within exactly one family, so no comparison carries two. (1) comparisons: one test on one "
        "metric over every configuration vs its baseline × evaluation set, on clean audio (the tests are "
        "alternative analyses of the same hypotheses, so each has its own family). (2) paper claims: within a "
        "claim an intersection-union test (every part significant at α, unadjusted; the claim's p is its parts' "
        "largest), and the claims adjusted as one family. (3) robustness: fusion's drop minus each single "
        "branch's, over every fusion-branch pair × condition (each perturbation severity, and the real shift to "
        "another database). Every interval shown beside an adjusted p is that comparison's unadjusted 95 % "
        "interval and says so in its header.",
        "- Verdicts: a paper claim holds when every part is significant in the paper's direction and the claim "
        "survives its family's adjustment; it is contradicted when a part's interval excludes the paper's Δ (or, "
        "for a ranking without numbers, lies below 0); otherwise it is not resolved at this resolution. A "
        "configuration is at chance where its seed-mean ROC-AUC interval covers 0.5.",
        "- Wilcoxon over seeds takes the test set as fixed; its Δ is the Hodges-Lehmann estimate with the "
        "signed-rank interval, and it is left out where this many seeds cannot reach α (fewer than 6).",
        f"- Per-source flag (only where the pooled ROC-AUC's CI lies above 0.5): removing the source lowers the pooled "
        f"seed-mean ROC-AUC by ≥ {options.carry_drop}, or the pooled ROC-AUC lies in that source's CI while every other "
        f"source's CI contains 0.5. Where the pooled ROC-AUC exceeds every source's own by ≥ {options.carry_drop}, no "
        "source carries it: that is a between-source confound, flagged as such. A source with fewer than "
        f"{MIN_CLASS_RECORDINGS} recordings of a class is marked unreliable.",
    ]
    return write_text(analysis.dest / "report.md", "\n".join(lines) + "\n")


def report_study(out: Path, dest: Path | None = None, **options) -> dict:
    """Write the analysis report of the finished study in ``out`` (into ``dest``, default ``out``), and its
    robustness report where it has one.

    Options (see :class:`ReportOptions`): baseline (a value of the compare
    axis; default the space's), correction ("holm" or "bh"), n_resamples
    (bootstrap resamples and permutations, default 10,000), alpha (0.05),
    allow_incomplete (analyse an incomplete or mismatched study instead of
    raising StudyError), ci_method ("bca" or "percentile"), seed, carry_drop,
    plots (False writes the tables only). A heart study whose predictions
    hold perturbed or branch-ablated rows also gets
    :func:`analysis.robustness.report_robustness` with the shared options.

    Returns dict with out, report (path of report.md), tables and plots
    (paths, the robustness report's included), claims (claim and verdict),
    source_flags, problems (what an incomplete study lacks), notes, seconds.
    """
    started = time.perf_counter()
    settings = ReportOptions(**options)
    engine = StudyEngine(Path(out), settings)
    analysis = _Analysis(engine, settings, dest)
    writer = ReportWriter(analysis.dest)
    rows = analysis.comparisons()
    summary_rows = _summary_table(analysis, writer)
    configurations = _configurations_table(analysis, writer)
    _main_table(analysis, writer)
    _pascal_table(analysis, writer)
    _intervals_table(analysis, writer)
    if rows:
        _comparisons_table(analysis, writer, rows)
    claims, claim_parts = _claims_table(analysis, writer, rows)
    flags = _per_source(analysis, writer)
    _per_cue_table(analysis, writer)
    _clustering_table(analysis, writer)
    resolution = _resolution_table(analysis, writer)
    if settings.plots:
        _plots(analysis, writer, rows, resolution)
    seconds = time.perf_counter() - started
    tables = {"configurations": configurations, "resolution": resolution, "claims": claim_parts}
    lead = _lead(analysis, summary_rows, rows, claims)
    report = _index(analysis, writer, tables, claims, flags, seconds, lead)
    summary = {
        "out": str(analysis.out),
        "report": str(report),
        "tables": writer.table_paths(),
        "plots": writer.plot_paths(),
        "claims": claims,
        "lead": lead,
        "source_flags": flags,
        "problems": analysis.problems,
        "notes": list(dict.fromkeys(analysis.notes)),
        "seconds": seconds,
    }
    if not analysis.respiratory and engine.has_robustness_rows:
        robustness = write_robustness(engine, analysis.dest)
        summary.update(
            tables=summary["tables"] + robustness["tables"],
            plots=summary["plots"] + robustness["plots"],
            notes=list(dict.fromkeys(summary["notes"] + robustness["notes"])),
            seconds=time.perf_counter() - started,
        )
    else:
        write_html(analysis.dest)
    summary["html"] = str(analysis.dest / "report.html")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis report", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a finished study folder, e.g. results/branches")
    parser.add_argument(
        "--baseline", default=None, help="value of the compare axis to compare against (default: the space's)"
    )
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="analyse an incomplete or mismatched study as it is (the report says so)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the report into this folder instead of the study's (reads the study only, so it may run "
        "while a driver writes the study)",
    )
    add_analysis_arguments(parser)
    args = parser.parse_args(argv)
    options = dict(baseline=args.baseline, allow_incomplete=args.allow_incomplete, **analysis_options(args))
    try:
        if args.out is not None and args.out.resolve() != args.study.resolve():
            summary = report_study(args.study, dest=args.out, **options)
        else:
            with study_lock(args.study, "python -m analysis report", create=False):
                summary = report_study(args.study, **options)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['report']}: {len(summary['tables']) // 3} tables, {len(summary['plots'])} plots "
        f"in {summary['seconds']:.1f} s"
    )
    for claim in summary["claims"]:
        print(f"  claim: {claim['claim']}: {claim['verdict']}")
    for flag in summary["source_flags"]:
        print(
            f"  {flag['configuration']} on {flag['eval_set']}: {flag['source']} carries the pooled ROC-AUC ({flag['reason']})"
        )
    for note in summary["notes"]:
        print(f"  note: {note}")
    return 0
