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
:func:`report_study` then runs the robustness report on the same engine
(:func:`analysis.robustness.write_robustness`), which adds its tables, plots
and a section to ``report.md``.

Layers: :mod:`analysis.engine` reads the study once and resamples every
condition once (on :mod:`analysis.study_data` and :mod:`analysis.resampling`);
:mod:`analysis.views` holds the report's view of it (and the robustness
report's); :mod:`analysis.comparisons`, :mod:`analysis.claims` and
:mod:`analysis.sources` compute the paired tests, the paper claims and the
per-source breakdown; this module turns them into tables (each from its
numbers, its display derived) and plots, and :mod:`analysis.report_md` into
report.md, through :mod:`analysis.output`, :mod:`analysis.tables` and
:mod:`analysis.plots`.

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
  draws are made once (:mod:`analysis.engine`) and shared, instead of once per configuration.
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
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import paper, stats
from analysis.claims import check_claims, claim_display, claims_caption
from analysis.comparisons import ComparisonRow, comparison_display, comparison_numbers, delong_possible
from analysis.engine import StudyEngine
from analysis.options import ReportOptions, add_analysis_arguments, analysis_options
from analysis.output import (
    METRIC_LABELS,
    ReportWriter,
    correction_name,
    interval_cell,
    interval_numbers,
    resampling_unit,
    row_interval_cell,
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
from analysis.report_md import lead_lines, second_metric, summary_display, write_report_md
from analysis.resampling import CONFIDENCE_LEVEL, paired_bootstrap, roc_auc_kernel, seed_mean_interval
from analysis.robustness import write_robustness
from analysis.sources import per_source, per_source_caption, per_source_display
from analysis.study_data import Configuration, read_histories, setting_text
from analysis.tables import format_interval, format_value
from analysis.views import HEART_MAIN, ReportView
from study.data.synth import planted_cues
from study.lock import study_lock
from study.results import REPORT_HTML

__all__ = ["report_study", "main"]

SAM_AST = "SAM-AST paper"  # the main table's row of the SAM-AST paper's ICBHI numbers
PAPER_COLUMN = "paper (ROC-AUC / MCC / F1 / acc.)"


# ---------------------------------------------------------------------------- the report's tables


def _methods_of(intervals) -> str:
    methods = sorted({i.method for i in intervals if i is not None})
    return ", ".join("BCa" if m == "bca" else m for m in methods)


def _configurations_table(view: ReportView, writer: ReportWriter) -> list[dict]:
    """Write tables/configurations: each configuration's varying settings, seeds and trials; returns its rows."""
    numbers = [
        {
            "configuration": c.name,
            "settings": ", ".join(f"{k}={setting_text(c.settings.get(k))}" for k in view.varying) or "–",
            "seeds": len(c.seeds),
            "seed_values": ", ".join(str(s) for s in c.seeds),
            "trial_ids": " ".join(c.trial_ids),
        }
        for c in view.configurations
    ]
    display = [
        {
            "configuration": n["configuration"],
            "settings": n["settings"],
            "seeds": n["seeds"],
            "seed values": n["seed_values"],
            "trials": n["trial_ids"].replace(" ", ", "),  # a trial id holds no space
        }
        for n in numbers
    ]
    writer.table(
        "configurations",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        "Configurations: every setting except the seed, replicated over seeds; the settings that vary between "
        "configurations, the seeds and the trials of each.",
        "each configuration's varying settings, seeds and trial ids",
    )
    return numbers


def _main_numbers(view: ReportView, eval_set: str, has_paper: bool) -> tuple[list[dict], list]:
    """(the main table's rows: each configuration's main metrics on ``eval_set``, the paper's beside them; the
    intervals, for the caption's interval methods)."""
    numbers, intervals = [], []
    for configuration in view.configurations:
        seeds, _ = view.trials_in(configuration, eval_set)
        row = {"configuration": configuration.name, "eval_set": eval_set, "seeds": len(seeds)}
        for metric in view.main_metrics:
            interval = view.interval(eval_set, configuration, metric)
            intervals.append(interval)
            row.update(interval_numbers(metric, interval))
        if has_paper:
            model = paper.paper_model(configuration.settings)
            values = paper.AUDIOFUSE_RESULTS.get(model, {})
            row.update({"paper_model": model or "", **{f"paper_{m}": values.get(m, math.nan) for m in HEART_MAIN}})
        numbers.append(row)
    if view.respiratory:
        sam_ast = {m: paper.SAM_AST_ICBHI.get(m, math.nan) for m in view.main_metrics}
        numbers.append({"configuration": SAM_AST, "eval_set": "icbhi2017:test", "seeds": 1, **sam_ast})
    return numbers, intervals


def _main_display(row: dict, metrics, has_paper: bool) -> dict:
    if row["configuration"] == SAM_AST:  # single-run numbers, no intervals
        values = {METRIC_LABELS[m]: format_value(row[m]) if math.isfinite(row[m]) else "–" for m in metrics}
        return {"configuration": "SAM-AST paper (ICBHI official split, single run)", "seeds": 1, **values}
    display = {"configuration": row["configuration"], "seeds": row["seeds"]}
    display.update({METRIC_LABELS[m]: row_interval_cell(row, m) for m in metrics})
    if has_paper:
        model = row["paper_model"]
        values = " / ".join(f"{row[f'paper_{m}']:.4f}" for m in HEART_MAIN)
        display[PAPER_COLUMN] = f"{values} ({model})" if model else "–"
    return display


def _main_table(view: ReportView, writer: ReportWriter) -> None:
    eval_set = view.primary
    has_paper = not view.respiratory and any(paper.paper_model(c.settings) for c in view.configurations)
    numbers, intervals = _main_numbers(view, eval_set, has_paper)
    display = [_main_display(row, view.main_metrics, has_paper) for row in numbers]
    unit = (
        "patients (cluster bootstrap)"
        if view.resampled[eval_set].eval_set.groups is not None
        else "recordings stratified by label"
    )
    caption = (
        f"Main results on {eval_set}: seed-mean metric [95 % {_methods_of(intervals)} bootstrap CI over {unit} "
        "with seed variation]; threshold metrics at each trial's validation-chosen threshold."
    )
    notes = (
        [
            "The paper's numbers are single runs without intervals, at the paper's scale; this study ran at scale "
            f"'{view.space.get('scale', '?')}'."
        ]
        if has_paper
        else []
    )
    writer.table(
        "main",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        f"configuration × {', '.join(METRIC_LABELS[m] for m in view.main_metrics)} on {eval_set}, with intervals"
        + (" and the paper's numbers" if has_paper or view.respiratory else ""),
        notes,
    )


def _zero_shot_numbers(view: ReportView, eval_set: str, has_paper: bool) -> tuple[list[dict], list]:
    """(each configuration's ROC-AUC on ``eval_set`` and its change from the primary set over the seeds that
    scored both, the paper's beside them; the intervals, for the caption's interval methods)."""
    numbers, intervals = [], []
    for configuration in view.configurations:
        seeds = set(view.trials_in(configuration, eval_set)[0]) & set(view.trials_in(configuration, view.primary)[0])
        if not seeds:
            continue
        trials = {name: view.trials_in(configuration, name, seeds)[1] for name in (eval_set, view.primary)}
        zero_shot = seed_mean_interval(view.resampled[eval_set], trials[eval_set], "roc_auc", view.options.ci_method)
        intervals.append(zero_shot)
        # seed k on one set paired with seed k on the other; the two sets' recordings resampled independently
        change = paired_bootstrap(
            view.resampled[eval_set],
            trials[eval_set],
            trials[view.primary],
            "roc_auc",
            resampled_b=view.resampled[view.primary],
        )
        row = {
            "configuration": configuration.name,
            "seeds": len(seeds),
            **interval_numbers("roc_auc", zero_shot),
            "change": change.difference,
            "change_low": change.low,
            "change_high": change.high,
        }
        if has_paper:
            values = paper.AUDIOFUSE_RESULTS.get(paper.paper_model(configuration.settings))
            row.update(
                paper_roc_auc=values["pascal_roc_auc"] if values else math.nan,
                paper_change=values["pascal_roc_auc"] - values["roc_auc"] if values else math.nan,
            )
        numbers.append(row)
    return numbers, intervals


def _zero_shot_display(row: dict, eval_set: str, primary: str, has_paper: bool) -> dict:
    display = {
        "configuration": row["configuration"],
        "seeds": row["seeds"],
        f"{eval_set} ROC-AUC": row_interval_cell(row, "roc_auc"),
        f"change vs {primary}": row_interval_cell(row, "change", signed=True),
    }
    if has_paper:
        display["paper ROC-AUC (change)"] = (
            f"{row['paper_roc_auc']:.4f} ({row['paper_change']:+.4f})" if math.isfinite(row["paper_roc_auc"]) else "–"
        )
    return display


def _pascal_table(view: ReportView, writer: ReportWriter) -> None:
    """A table per PASCAL evaluation set other than the primary one: the zero-shot ROC-AUC."""
    has_paper = any(paper.paper_model(c.settings) for c in view.configurations)
    for eval_set in [e for e in view.resampled if e.startswith("pascal") and e != view.primary]:
        numbers, intervals = _zero_shot_numbers(view, eval_set, has_paper)
        display = [_zero_shot_display(row, eval_set, view.primary, has_paper) for row in numbers]
        caption = (
            f"Zero-shot {eval_set}: seed-mean ROC-AUC [95 % {_methods_of(intervals)} CI] and its change from "
            f"{view.primary} [95 % percentile CI; seeds paired, recordings of the two sets resampled independently]."
        )
        writer.table(
            slug(eval_set),
            pd.DataFrame(display),
            pd.DataFrame(numbers),
            caption,
            f"ROC-AUC on {eval_set} and its change vs {view.primary}"
            + (", with the paper's numbers" if has_paper else ""),
        )


def _intervals_table(view: ReportView, writer: ReportWriter) -> None:
    numbers = []
    for eval_set, resampled in view.resampled.items():
        for configuration in view.configurations:
            for metric in view.metrics:
                interval = view.interval(eval_set, configuration, metric)
                if interval is None:
                    continue
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
    display = [
        {
            "evaluation set": n["eval_set"],
            "n": n["n"],
            "n pos": n["n_pos"],
            "configuration": n["configuration"],
            "seeds": n["seeds"],
            "metric": METRIC_LABELS[n["metric"]],
            "estimate [95 % CI]": format_interval(n["estimate"], n["low"], n["high"]),
            "CI method": n["method"],
        }
        for n in numbers
    ]
    writer.table(
        "intervals",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        f"Every metric of every configuration on every evaluation set: seed mean [95 % bootstrap CI, "
        f"{view.options.n_resamples} resamples of recordings (patients where known), with seed variation].",
        "every metric × configuration × evaluation set with its 95 % interval and the interval method",
    )


def _comparisons_table(view: ReportView, writer: ReportWriter, rows: list[ComparisonRow]) -> None:
    numbers = [comparison_numbers(r, view.options.correction) for r in rows]
    display = [comparison_display(n, view.options.alpha) for n in numbers]
    caption = (
        f"Paired comparisons: every configuration vs its baseline ({view.axis} = {view.baseline}) on every "
        f"evaluation set: the raw p, and p adjusted by {correction_name(view.options.correction)} within its "
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
    if view.respiratory:
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


def _claims_table(view: ReportView, writer: ReportWriter, rows: list[ComparisonRow]) -> tuple[list[dict], list[dict]]:
    """Write tables/claims (:func:`analysis.claims.check_claims`); returns (claim and verdict of each claim,
    the table's numeric rows: one per part)."""
    claims, parts = check_claims(view, rows)
    if parts:
        options = view.options
        writer.table(
            "claims",
            pd.DataFrame([claim_display(part) for part in parts]),
            pd.DataFrame(parts),
            claims_caption(options.alpha, options.correction, len(claims)),
            "each paper claim this study can check, the deciding test, and whether it holds",
        )
    return claims, parts


def _per_source_table(view: ReportView, writer: ReportWriter) -> list[dict]:
    """Write tables/per_source (:func:`analysis.sources.per_source`); returns the flags."""
    numbers, reasons, flags = per_source(view)
    writer.table(
        "per_source",
        pd.DataFrame([per_source_display(row, view.metrics, why) for row, why in zip(numbers, reasons, strict=True)]),
        pd.DataFrame(numbers),
        per_source_caption(view.options.carry_drop),
        "every metric per source database with intervals, and a flag where one source carries the pooled ROC-AUC",
    )
    return flags


def _per_cue_numbers(view: ReportView, cues: dict) -> list[dict]:
    """Per evaluation set, planted cue and configuration: the abnormal recordings carrying the cue against every
    normal recording, seed-mean ROC-AUC [95 % CI] on their own draws."""
    numbers = []
    for eval_set, resampled in view.resampled.items():
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
            cue_resampled = view.resample(subset, eval_set, kind)
            n_with, n_normal = int(subset.binary.sum()), int(negatives.sum())
            for configuration in view.configurations:
                interval = view.interval(eval_set, configuration, "roc_auc", cue_resampled)
                if interval is not None:
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
    return numbers


def _per_cue_table(view: ReportView, writer: ReportWriter) -> None:
    """Write tables/per_cue where the study's data root holds synthetic heart sounds with planted cues (none
    on real data, or where the folder is gone)."""
    root = view.state.get("data_root")
    cues = planted_cues(root) if root and not view.respiratory else {}
    numbers = _per_cue_numbers(view, cues) if cues else []
    if not numbers:
        return
    display = [
        {
            "evaluation set": n["eval_set"],
            "planted cue": n["cue"],
            "abnormal with it": n["n_with_cue"],
            "normal": n["n_normal"],
            "configuration": n["configuration"],
            "ROC-AUC": row_interval_cell(n, "roc_auc"),
        }
        for n in numbers
    ]
    caption = (
        "ROC-AUC per planted cue (synthetic data): the abnormal recordings carrying that cue against every normal "
        "recording, seed mean [95 % CI, recordings resampled with seed variation]; a recording with two cues counts "
        "for both. It shows which cues each configuration sees, e.g. whether fusion adds what one branch misses."
    )
    writer.table(
        "per_cue",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "synthetic data only: ROC-AUC per planted cue and configuration",
    )


def _clustering_numbers(view: ReportView) -> list[dict]:
    """Per evaluation set with patients and configuration: the ROC-AUC interval with whole patients resampled
    against the one that treats every recording as independent."""
    numbers = []
    for eval_set, resampled in view.resampled.items():
        data = resampled.eval_set
        if data.groups is None:
            continue
        independent_set = dataclasses.replace(data, groups=None)
        independent = view.resample(independent_set, eval_set, "independent", kernel=roc_auc_kernel)
        sizes = data.cluster_sizes()
        for configuration in view.configurations:
            _, trial_ids = view.trials_in(configuration, eval_set)
            if not trial_ids:
                continue
            clustered = view.interval(eval_set, configuration, "roc_auc")
            naive = seed_mean_interval(independent, trial_ids, "roc_auc", view.options.ci_method)
            naive_width = naive.high - naive.low
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
                    "width_ratio": (clustered.high - clustered.low) / naive_width if naive_width > 0 else math.nan,
                }
            )
    return numbers


def _clustering_table(view: ReportView, writer: ReportWriter) -> None:
    """Per evaluation set with patients: clusters, the largest one, and each configuration's ROC-AUC interval
    with patients resampled against the interval that treats every recording as independent."""
    numbers = _clustering_numbers(view)
    if not numbers:
        return
    display = [
        {
            "evaluation set": n["eval_set"],
            "recordings": n["recordings"],
            "patients": n["patients"],
            "largest": n["largest_cluster"],
            "configuration": n["configuration"],
            "seeds": n["seeds"],
            "ROC-AUC, patients resampled": row_interval_cell(n, "roc_auc"),
            # the point estimate is the same however the recordings are resampled
            "as if independent": format_interval(n["roc_auc"], n["independent_low"], n["independent_high"]),
            "width ratio": f"{n['width_ratio']:.2f}",
        }
        for n in numbers
    ]
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


def _pair_correlations(view: ReportView, eval_set: str) -> tuple[list, list, list, list]:
    """DeLong on the seed-averaged probabilities of every configuration and its baseline: (the correlations ρ
    of their ROC-AUCs, the baselines' ROC-AUCs, the observed |Δ|, the design effects of patients: Obuchowski's
    clustered over DeLong's variance of the difference)."""
    resampled = view.resampled[eval_set]
    data = resampled.eval_set
    rhos, base_aucs, observed, design_effects = [], [], [], []
    for a, b in view.pairs if delong_possible(data.binary) else []:
        common = set(view.trials_in(a, eval_set)[0]) & set(view.trials_in(b, eval_set)[0])
        if not common:
            continue
        rows_a = [resampled.rows[t] for t in view.trials_in(a, eval_set, common)[1]]
        rows_b = [resampled.rows[t] for t in view.trials_in(b, eval_set, common)[1]]
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
    return rhos, base_aucs, observed, design_effects


def _detectable_difference(view: ReportView, eval_set: str) -> dict:
    """The smallest ROC-AUC difference a paired DeLong test on ``eval_set`` detects with 80 % power, at the
    median correlation of the configurations and the baseline's ROC-AUC; {} without a pair to correlate."""
    rhos, base_aucs, observed, design_effects = _pair_correlations(view, eval_set)
    if not rhos:
        return {}
    data = view.resampled[eval_set].eval_set
    n, n_pos = data.labels.size, data.n_pos
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
        view.options.alpha,
    )
    return {
        "baseline_roc_auc": base_auc,
        "rho_median": rho,
        "rho_min": min(rhos),
        "rho_max": max(rhos),
        "design_effect": design_effect,
        "mde": mde,
        "n_comparisons": len(observed),
        "n_below_mde": sum(d < mde for d in observed) if math.isfinite(mde) else len(observed),
    }


def _resolution_numbers(view: ReportView, eval_set: str) -> dict:
    data = view.resampled[eval_set].eval_set
    n, n_pos = data.labels.size, data.n_pos
    sizes = data.cluster_sizes()
    row = {
        "eval_set": eval_set,
        "n": n,
        "n_pos": n_pos,
        "n_neg": n - n_pos,
        "clusters": sizes.size,
        "largest_cluster": int(sizes.max()),
        "resampled_by_patient": data.groups is not None,
        "dropped_recordings": data.dropped_recordings,
    }
    return row if view.respiratory else {**row, **_detectable_difference(view, eval_set)}


def _resolution_display(row: dict, respiratory: bool) -> dict:
    display = {
        "evaluation set": row["eval_set"],
        "n": row["n"],
        "n pos": row["n_pos"],
        "n neg": row["n_neg"],
        "clusters": row["clusters"],
        "largest cluster": row["largest_cluster"],
    }
    if respiratory:
        display["smallest detectable Δ ROC-AUC"] = "n/a: four-class score"
    elif "mde" in row:
        display.update(
            {
                "baseline ROC-AUC (seed-avg.)": format_value(row["baseline_roc_auc"]),
                "ρ between configurations": f"{row['rho_median']:.2f} [{row['rho_min']:.2f}, {row['rho_max']:.2f}]",
                "design effect (patients)": f"{row['design_effect']:.2f}",
                "smallest detectable Δ ROC-AUC (80 % power)": format_value(row["mde"]),
                "observed |Δ| below it": f"{row['n_below_mde']} of {row['n_comparisons']}",
            }
        )
    else:
        display["smallest detectable Δ ROC-AUC (80 % power)"] = "n/a: no pair of configurations to correlate"
    return display


def _resolution_table(view: ReportView, writer: ReportWriter) -> list[dict]:
    numbers = [_resolution_numbers(view, eval_set) for eval_set in view.resampled]
    caption = (
        "What each test set can resolve: recordings, positives, and the smallest ROC-AUC difference a two-sided paired "
        f"DeLong test at α = {view.options.alpha} detects with 80 % power (stats.auc_difference_mde, Hanley-McNeil "
        "variances), at the median correlation ρ of the configurations' seed-averaged ROC-AUCs (DeLong covariance) "
        "and the baseline's ROC-AUC (taken as 0.5 if below). Where recordings cluster within patients, the counts "
        "are divided by the design effect: the median ratio of Obuchowski's clustered to DeLong's variance of a "
        "difference."
    )
    writer.table(
        "resolution",
        pd.DataFrame([_resolution_display(row, view.respiratory) for row in numbers]),
        pd.DataFrame(numbers),
        caption,
        "n recordings, n positives and the smallest ROC-AUC difference each evaluation set can resolve",
    )
    return numbers


def _summary_table(view: ReportView, writer: ReportWriter) -> list[dict]:
    """Write tables/summary: configuration × evaluation set with the compare metric and MCC (the ICBHI study:
    sensitivity) with their intervals, seeds and n: the table report.md opens with. Returns its rows."""
    second = second_metric(view)
    numbers = []
    for eval_set, resampled in view.resampled.items():
        data = resampled.eval_set
        for configuration in view.configurations:
            seeds, _ = view.trials_in(configuration, eval_set)
            primary = view.interval(eval_set, configuration, view.compare_metric)
            if primary is None:
                continue
            numbers.append(
                {
                    "configuration": configuration.name,
                    "eval_set": eval_set,
                    "seeds": len(seeds),
                    "n": int(data.labels.size),
                    "n_pos": int(data.n_pos),
                    **interval_numbers(view.compare_metric, primary),
                    **interval_numbers(second, view.interval(eval_set, configuration, second)),
                }
            )
    writer.table(
        "summary",
        summary_display(numbers, view.compare_metric, second),
        pd.DataFrame(numbers),
        f"Every configuration on every evaluation set: seed-mean {METRIC_LABELS[view.compare_metric]} and "
        f"{METRIC_LABELS[second]} [95 % CI], seeds and recordings (positives).",
        "the table report.md opens with: each configuration's main metrics on every evaluation set",
    )
    return numbers


# ---------------------------------------------------------------------------- plots


def _banded(view: ReportView, configuration: Configuration) -> bool:
    """Whether a configuration's ROC curve gets its band: the baseline's only (one band reads; five blur into
    one), or the single configuration of a study without a baseline."""
    if view.baseline is None:
        return len(view.configurations) == 1
    return configuration.axis_value == view.baseline


def _roc_curve(view: ReportView, eval_set: str, configuration: Configuration) -> RocCurve | None:
    """A configuration's seed-mean ROC on ``eval_set``, with its pointwise 95 % band where it gets one
    (:func:`_banded`); None where it scored none of the set."""
    _, trial_ids = view.trials_in(configuration, eval_set)
    if not trial_ids:
        return None
    resampled = view.resampled[eval_set]
    data = resampled.eval_set
    probs = data.probs[[resampled.rows[t] for t in trial_ids]]
    per_seed = roc_tpr_on_grid(data.binary, probs, np.ones((data.labels.size, 1)))[:, :, 0]
    auc = interval_cell(view.interval(eval_set, configuration, "roc_auc"))
    name = configuration.name
    if not _banded(view, configuration):
        return RocCurve(f"{name}: {auc}", per_seed.mean(axis=0))
    tpr = roc_tpr_on_grid(data.binary, probs, resampled.band_weights)
    band = stats.seed_mean_distribution(tpr, per_seed, (0.0, 1.0))
    low, high = np.quantile(band, [(1 - CONFIDENCE_LEVEL) / 2, (1 + CONFIDENCE_LEVEL) / 2], axis=1)
    label = f"{name} (baseline)" if view.baseline is not None else name
    return RocCurve(f"{label}: {auc}", per_seed.mean(axis=0), low, high)


def _roc_plots(view: ReportView, writer: ReportWriter) -> None:
    banded = "baseline" if view.baseline is not None else "configuration"  # whose band is shaded
    for eval_set, resampled in view.resampled.items():
        data = resampled.eval_set
        n_band = resampled.band_weights.shape[1]
        curves = [c for c in (_roc_curve(view, eval_set, conf) for conf in view.configurations) if c is not None]
        path = writer.plots_dir / f"roc_{slug(eval_set)}.png"
        plot_roc_curves(
            path,
            curves,
            f"{view.name}: ROC on {eval_set} (n = {data.labels.size}, {data.n_pos} abnormal)",
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


def _forest_plot(view: ReportView, writer: ReportWriter, rows: list[ComparisonRow], resolution: list[dict]):
    deciding = [r for r in rows if r.test == "paired bootstrap" and r.metric == view.compare_metric]
    if not deciding:
        return
    mde = {r["eval_set"]: r.get("mde") for r in resolution} if view.compare_metric == "roc_auc" else {}
    panels = [
        (
            eval_set,
            [
                ForestRow(f"{r.a} vs {r.b}", r.difference, r.low, r.high, r.adjusted_p < view.options.alpha)
                for r in deciding
                if r.eval_set == eval_set
            ],
            mde.get(eval_set),
        )
        for eval_set in view.resampled
    ]
    metric = METRIC_LABELS[view.compare_metric]
    path = writer.plots_dir / "forest.png"
    plot_forest(
        path,
        [p for p in panels if p[1]],
        f"Δ {metric} (configuration − baseline)",
        f"{view.name}: Δ {metric} of each configuration vs the baseline {view.axis} = {view.baseline}",
        note=f"Paired bootstrap, 95 % percentile CI (unadjusted); filled: adjusted p < {view.options.alpha} "
        f"({view.options.correction}).",
    )
    writer.plot(path, f"forest plot of Δ {metric} vs the baseline with 95 % CIs, per evaluation set")


def _learning_curves(view: ReportView, writer: ReportWriter) -> None:
    trial_ids = [t for c in view.configurations for t in c.trial_ids]
    histories = read_histories(view.out, trial_ids)
    if not histories:
        view.notes.append(
            f"no learning curves: none of the {len(trial_ids)} trials keeps its per-epoch history in the study folder "
            "(trials/TRIAL_ID/metrics.json; a committed reference study leaves trials/ out)"
        )
        return
    if len(histories) < len(trial_ids):
        view.notes.append(
            f"learning curves from {len(histories)} of {len(trial_ids)} trials: the others have no "
            "trials/TRIAL_ID/metrics.json with a history"
        )
    loss, validation = [], []
    for k, configuration in enumerate(view.configurations):
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
        f"{view.name}: training loss and validation {monitors} per epoch",
        note="Lines: mean over the seeds that trained that epoch (early stopping ends seeds at different epochs); "
        "shaded: lowest to highest seed. Validation is the early-stopping monitor on the validation split.",
    )
    writer.plot(
        path,
        "learning curves: training loss and the validation monitor per epoch, per configuration with the seeds' "
        "spread and each seed's early-stopping epoch",
    )


def _plots(view: ReportView, writer: ReportWriter, rows: list[ComparisonRow], resolution: list[dict]) -> None:
    _roc_plots(view, writer)
    _forest_plot(view, writer, rows, resolution)
    _learning_curves(view, writer)


def report_study(out: Path, dest: Path | None = None, **options) -> dict:
    """Write the analysis report of the finished study in ``out`` (into ``dest``, default ``out``), and its
    robustness report where it has one.

    Options (see :class:`analysis.options.ReportOptions`): baseline (a value of the compare
    axis; default the space's), correction ("holm" or "bh"), n_resamples
    (bootstrap resamples and permutations, default 10,000), alpha (0.05),
    allow_incomplete (analyse an incomplete or mismatched study instead of
    raising StudyError), ci_method ("bca" or "percentile"), seed, carry_drop,
    plots (False writes the tables only). A heart study whose predictions
    hold perturbed or branch-ablated rows also gets the robustness report
    (:func:`analysis.robustness.write_robustness`) on the same engine.

    Returns dict with out, report (path of report.md), tables and plots
    (paths, the robustness report's included), claims (claim and verdict),
    source_flags, problems (what an incomplete study lacks), notes, seconds.
    """
    started = time.perf_counter()
    settings = ReportOptions(**options)
    engine = StudyEngine(Path(out), settings)
    view = ReportView(engine, settings, dest)
    writer = ReportWriter(view.dest)
    rows = view.comparisons()
    summary_rows = _summary_table(view, writer)
    configurations = _configurations_table(view, writer)
    _main_table(view, writer)
    _pascal_table(view, writer)
    _intervals_table(view, writer)
    if rows:
        _comparisons_table(view, writer, rows)
    claims, claim_parts = _claims_table(view, writer, rows)
    flags = _per_source_table(view, writer)
    _per_cue_table(view, writer)
    _clustering_table(view, writer)
    resolution = _resolution_table(view, writer)
    if settings.plots:
        _plots(view, writer, rows, resolution)
    seconds = time.perf_counter() - started
    tables = {"configurations": configurations, "resolution": resolution, "claims": claim_parts}
    lead = lead_lines(view, summary_rows, rows, claims)
    report = write_report_md(view, writer, tables, claims, flags, seconds, lead)
    summary = {
        "out": str(view.out),
        "report": str(report),
        "tables": writer.table_paths(),
        "plots": writer.plot_paths(),
        "claims": claims,
        "lead": lead,
        "source_flags": flags,
        "problems": view.problems,
        "notes": list(dict.fromkeys(view.notes)),
        "seconds": seconds,
    }
    if not view.respiratory and engine.has_robustness_rows:
        robustness = write_robustness(engine, view.dest)
        summary.update(
            tables=summary["tables"] + robustness["tables"],
            plots=summary["plots"] + robustness["plots"],
            notes=list(dict.fromkeys(summary["notes"] + robustness["notes"])),
            seconds=time.perf_counter() - started,
        )
    else:
        write_html(view.dest)
    summary["html"] = str(view.dest / REPORT_HTML)
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
