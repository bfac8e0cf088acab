"""The robustness report of a study: metric vs perturbation severity, fusion vs each branch, branch ablation.

    python -m analysis robustness results/NAME [--resamples N] [--correction holm|bh]
        [--alpha 0.05] [--ci-method bca|percentile] [--seed 0] [--no-plots]

It analyses the perturbed predictions in ``OUT/predictions.parquet``: those of the space's
``perturbations``, and those ``python -m study.evaluate OUT --perturb SUITE`` merged in afterwards
(it re-scores every trial's checkpoint on the suite, then runs this analysis). The analysis reads
a study and writes its report; it never writes predictions.

Outputs: ``OUT/tables/robustness_{auc,shift,tests,claim,ablation,per_source}.md|csv|tex``,
``OUT/plots/robustness_EVALSET.png`` and a "Robustness" section of
``OUT/report.md`` with the paper's claim and what the numbers say. Every
figure of that section is in a compact table whose rows are rows of those
tables, each naming its configuration(s), evaluation set and condition
(``tests/test_report_trace.py`` checks it).

Method, in short:

* A condition is an evaluation set under one perturbation at one severity
  (clean: "none" at 0) and one test-time branch ablation ("none", or a fusion
  model's branch features replaced by their training mean or by zeros).
* ROC-AUC per configuration and condition: the seed mean with a 95 %
  bootstrap interval over recordings (stratified by label) and seeds, on
  the draws of :mod:`analysis.engine` the main report uses. Every condition of an evaluation set
  uses the same recording and seed draws, so the drop from clean, the
  fusion-minus-branch difference and the ablation drop are paired
  differences with percentile intervals from the same draws.
* Does fusion lose less than each single branch (the configurations that
  differ only in ``model.*`` settings)? The paired bootstrap of the drop
  difference, branch's drop − fusion's, on the real shift (clean audio of
  another database against the in-domain test set) and at every
  perturbation severity (against clean audio), its p adjusted (Holm by
  default, or BH) over that family. "Resists better" rests on this test,
  never on a level: the level difference at a condition is shown with its
  unadjusted interval and no test. A study without perturbations says
  nothing about them.

:func:`analysis.report.report_study` runs this report after its own when a
heart study's predictions hold perturbed or ablated rows.
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

from analysis import stats
from analysis.engine import Condition, StudyEngine, scored_trials
from analysis.options import AnalysisOptions, add_analysis_arguments, analysis_options
from analysis.output import (
    MIN_CLASS_RECORDINGS,
    ReportWriter,
    correction_name,
    few_recordings_warning,
    interval_numbers,
    resampling_unit,
    row_interval_cell,
    slug,
    write_html,
)
from analysis.plots import SeverityCurve, SeverityPanel, plot_auc_vs_severity
from analysis.resampling import paired_bootstrap, roc_auc_kernel, seed_mean_interval
from analysis.robustness_md import claim_display, claim_lines, no_test_lines, test_display, units
from analysis.stats import PairedBootstrapResult
from analysis.study_data import Configuration, EvalSet
from analysis.tables import format_interval
from analysis.views import ARCHITECTURE, DropDifference, RobustnessView
from study.io import write_text
from study.lock import study_lock
from study.results import REPORT_FILE

__all__ = [
    "SECTION_START",
    "SECTION_END",
    "ROBUSTNESS_FAMILY",
    "drop_test_row",
    "write_robustness",
    "report_robustness",
    "main",
]

SECTION_START, SECTION_END = "<!-- robustness:start -->", "<!-- robustness:end -->"
ROBUSTNESS_FAMILY = "robustness: branch's drop − fusion's drop, paired bootstrap"


def _percent_cell(row: dict, prefix: str) -> str:
    """An interval of the numbers PREFIX, PREFIX_low, PREFIX_high as signed percentages: "+1.2 [-0.4, +2.8] %"."""
    return (
        format_interval(
            100 * row[prefix], 100 * row[f"{prefix}_low"], 100 * row[f"{prefix}_high"], digits=1, signed=True
        )
        + " %"
    )


# ---------------------------------------------------------------------------- tables


def _auc_numbers(view: RobustnessView) -> list[dict]:
    """Each configuration's ROC-AUC at every perturbation level of every evaluation set, and its drop from clean."""
    numbers = []
    for eval_set in view.eval_set_names:
        clean = Condition(eval_set)
        for configuration in view.configurations:
            for perturbation, severity in view.conditions(eval_set):
                condition = Condition(eval_set, perturbation, severity)
                interval = view.interval(configuration, condition)
                if interval is None:
                    continue
                absolute, relative = view.drop(configuration, condition, clean) if condition != clean else (None, None)
                numbers.append(
                    {
                        "configuration": configuration.name,
                        "eval_set": eval_set,
                        "perturbation": perturbation,
                        "severity": severity,
                        "level": view.level(perturbation, severity),
                        "seeds": interval.n_seeds,
                        **interval_numbers("roc_auc", interval),
                        **interval_numbers("drop", absolute),
                        **interval_numbers("relative_drop", relative),
                    }
                )
    return numbers


def _auc_display(row: dict) -> dict:
    # the two drops come together: none on clean audio or where the seeds or recordings differ
    no_drop = not math.isfinite(row["drop"])
    return {
        "configuration": row["configuration"],
        "evaluation set": row["eval_set"],
        "perturbation": row["perturbation"],
        "severity": row["severity"],
        "level": row["level"],
        "seeds": row["seeds"],
        "ROC-AUC": row_interval_cell(row, "roc_auc"),
        "drop from clean": "–" if no_drop else row_interval_cell(row, "drop"),
        "relative drop": "–" if no_drop else _percent_cell(row, "relative_drop"),
    }


def _auc_table(view: RobustnessView, writer: ReportWriter) -> None:
    numbers = _auc_numbers(view)
    caption = (
        "ROC-AUC under each perturbation and severity: seed mean [95 % bootstrap CI over recordings stratified by label "
        "(patients where known), with seed variation]; drop from clean = clean − perturbed ROC-AUC and relative drop = 1 − perturbed / clean, each "
        "[95 % percentile CI of the paired difference on the same draws]."
    )
    writer.table(
        "robustness_auc",
        pd.DataFrame([_auc_display(row) for row in numbers]),
        pd.DataFrame(numbers),
        caption,
        "ROC-AUC per configuration, evaluation set, perturbation and severity with CIs and the drop from clean",
    )


def _shift_numbers(view: RobustnessView, eval_set: str) -> list[dict]:
    """Each configuration's ROC-AUC on clean audio of ``eval_set`` and on the in-domain test set, and the change,
    over the seeds that scored both."""
    reference, condition = Condition(view.primary), Condition(eval_set)
    numbers = []
    for configuration in view.configurations:
        seeds = scored_trials(configuration, view.engine.eval_sets[reference])[0]
        seeds = scored_trials(configuration, view.engine.eval_sets[condition], seeds)[0]
        if not seeds:
            continue
        before = view.trial_ids(configuration, reference, seeds)
        after = view.trial_ids(configuration, condition, seeds)
        on_reference, on_condition = (
            seed_mean_interval(view.engine.resampled(c), trials, "roc_auc", view.options.ci_method)
            for c, trials in ((reference, before), (condition, after))
        )
        change = paired_bootstrap(
            view.engine.resampled(condition), after, before, "roc_auc", resampled_b=view.engine.resampled(reference)
        )
        numbers.append(
            {
                "configuration": configuration.name,
                "eval_set": eval_set,
                "reference_eval_set": view.primary,
                "seeds": len(seeds),
                **interval_numbers("roc_auc_reference", on_reference),
                **interval_numbers("roc_auc", on_condition),
                **_drop_numbers("change", change),
            }
        )
    return numbers


def _shift_table(view: RobustnessView, writer: ReportWriter) -> list[dict]:
    """ROC-AUC of every configuration on clean audio of each other evaluation set and its change from the
    in-domain test set (seed k on one set paired with seed k on the other, each set's recordings resampled on
    its own draws, as the main report's pascal table); returns the rows."""
    if not view.has(Condition(view.primary)):
        return []
    others = [e for e in view.eval_set_names if e != view.primary and view.has(Condition(e))]
    numbers = [row for eval_set in others for row in _shift_numbers(view, eval_set)]
    if not numbers:
        return []
    display = [
        {
            "configuration": row["configuration"],
            "evaluation set": row["eval_set"],
            "reference set": row["reference_eval_set"],
            "seeds": row["seeds"],
            "ROC-AUC on the reference set": row_interval_cell(row, "roc_auc_reference"),
            "ROC-AUC": row_interval_cell(row, "roc_auc"),
            "change": row_interval_cell(row, "change", signed=True, missing="–"),
        }
        for row in numbers
    ]
    writer.table(
        "robustness_shift",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        f"Domain shift on clean audio: seed-mean ROC-AUC [95 % {view.options.ci_method} CI] on each evaluation "
        f"set and on the reference set {view.primary}, and the change (evaluation set − reference) [95 % "
        "percentile CI; seed k paired with seed k, the two sets' recordings resampled independently].",
        f"ROC-AUC per configuration on each other evaluation set and its change from {view.primary}, clean audio",
    )
    return numbers


def drop_test_row(
    fusion: Configuration,
    branch: Configuration,
    scope: str,
    condition: Condition,
    reference: Condition,
    label: str,
    level: PairedBootstrapResult,
    drop: DropDifference,
) -> dict:
    """A row of tables/robustness_tests: the level difference fusion − branch at ``condition`` (no test) and the
    drop-difference test from ``reference`` (its family's adjusted p and verdict come later)."""
    return {
        "fusion": fusion.name,
        "branch": branch.name,
        "scope": scope,
        "eval_set": condition.eval_set,
        "reference_eval_set": reference.eval_set,
        "perturbation": condition.perturbation,
        "severity": condition.severity,
        "level": label,
        "difference": level.difference,
        "low": level.low,
        "high": level.high,
        "value_a": drop.value_a,
        "value_b": drop.value_b,
        "drop_a": drop.drop_a,
        "drop_b": drop.drop_b,
        "drop_difference": drop.difference,
        "drop_difference_low": drop.low,
        "drop_difference_high": drop.high,
        "p": drop.p_value,
        "n_seeds": drop.n_seeds,
    }


def _drop_tests(view: RobustnessView) -> list[dict]:
    """Every fusion-branch pair's drop-difference test at every condition of :meth:`RobustnessView.test_conditions`."""
    rows = []
    for fusion, branch in view.fusion_pairs():
        for condition, reference, scope in view.test_conditions():
            drop = view.drop_difference(fusion, branch, condition, reference)
            level = view.compare(fusion, branch, condition)
            if drop is None or level is None:
                continue
            label = (
                f"real shift from {reference.eval_set}"
                if scope == "real shift"
                else view.level(condition.perturbation, condition.severity)
            )
            rows.append(drop_test_row(fusion, branch, scope, condition, reference, label, level, drop))
    return rows


def _tests_table(view: RobustnessView, writer: ReportWriter) -> list[dict]:
    """Write tables/robustness_tests: does fusion lose less ROC-AUC than each single branch? Returns its rows.

    "Resists better" is a statement about drops, so it rests on the test of the drop difference, never on the
    levels: a fusion model ahead on clean audio and equally far ahead under a perturbation resisted it no better.
    """
    rows = _drop_tests(view)
    if not rows:  # the section says so in its one line
        return []
    options = view.options
    adjusted = stats.adjust_pvalues([r["p"] for r in rows], options.correction)
    floor = stats.resampling_floor_warning(options.n_resamples, len(rows), options.correction, options.alpha)
    if floor:
        view.notes.append(f"drop-difference tests: {floor}")
    for row, p in zip(rows, adjusted, strict=True):
        row.update(adjusted_p=float(p), correction=options.correction, family=ROBUSTNESS_FAMILY, family_size=len(rows))
        row["verdict"] = _drop_verdict(row, options.alpha)
    display = pd.DataFrame([test_display(r, options.correction) for r in rows])
    caption = (
        "Does fusion lose less ROC-AUC than each single branch? For every fusion-branch pair on the real shift "
        "(clean audio of another database against the in-domain test set) and at every perturbation severity "
        "(against clean audio): each configuration's ROC-AUC and its drop (seed means over common seeds), the "
        "level difference fusion − branch there with its unadjusted 95 % CI (no test: a level is not a drop), "
        "and the paired bootstrap test of the drop difference, branch's drop − fusion's (positive: fusion loses "
        f"less), with its unadjusted 95 % CI, raw p and p {correction_name(options.correction)}-adjusted over the "
        f"family '{ROBUSTNESS_FAMILY}' ({len(rows)} tests); α = {options.alpha}."
        + (f" **Warning:** {floor}." if floor else "")
    )
    writer.table(
        "robustness_tests",
        display,
        pd.DataFrame(rows),
        caption,
        "fusion's ROC-AUC drop against each single branch's, on the real shift and at each perturbation severity, "
        "with correction",
    )
    return rows


def _drop_verdict(row: dict, alpha: float) -> str:
    if not row["adjusted_p"] < alpha:
        return "no significant difference in drop"
    return "fusion loses less" if row["drop_difference"] > 0 else "fusion loses more"


def _ablation_numbers(view: RobustnessView, configuration) -> list[dict]:
    """A fusion configuration's ROC-AUC with each branch ablated, at every perturbation level of every set."""
    numbers = []
    for eval_set in view.eval_set_names:
        ablations = view.ablations(eval_set)
        for perturbation, severity in view.conditions(eval_set):
            intact = Condition(eval_set, perturbation, severity)
            for ablation in ablations:
                ablated = Condition(eval_set, perturbation, severity, ablation)
                interval = view.interval(configuration, ablated)
                if interval is None:
                    continue
                absolute, _ = view.drop(configuration, ablated, intact)
                numbers.append(
                    {
                        "configuration": configuration.name,
                        "eval_set": eval_set,
                        "perturbation": perturbation,
                        "severity": severity,
                        "level": view.level(perturbation, severity),
                        "ablation": ablation,
                        "seeds": interval.n_seeds,
                        **interval_numbers("roc_auc_intact", view.interval(configuration, intact)),
                        **interval_numbers("roc_auc_ablated", interval),
                        **interval_numbers("drop", absolute),
                    }
                )
    return numbers


def _ablation_table(view: RobustnessView, writer: ReportWriter) -> list[dict]:
    fusions = [c for c in view.configurations if c.settings.get(ARCHITECTURE) == "fusion"]
    numbers = [row for configuration in fusions for row in _ablation_numbers(view, configuration)]
    if not numbers:
        view.notes.append("no branch-ablation rows: the study has no fusion model evaluated with a branch ablated")
        return []
    display = [
        {
            "configuration": row["configuration"],
            "evaluation set": row["eval_set"],
            "level": row["level"],
            "ablation": row["ablation"],
            "seeds": row["seeds"],
            "ROC-AUC intact": row_interval_cell(row, "roc_auc_intact"),
            "ROC-AUC ablated": row_interval_cell(row, "roc_auc_ablated"),
            "drop": row_interval_cell(row, "drop"),
        }
        for row in numbers
    ]
    caption = (
        "Test-time branch ablation of the fusion models: ROC-AUC with one branch's features replaced by their training "
        "mean (or zeros) before the fusion head, and the drop (intact − ablated) [95 % percentile CI of the paired "
        "difference over recordings, with seed variation]. A large drop for waveform=… means the head relies on the waveform branch."
    )
    writer.table(
        "robustness_ablation",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "fusion ROC-AUC with each branch replaced by its training mean / zeros, per evaluation set and perturbation",
    )
    return numbers


def _stacked_conditions(conditions: dict[str, EvalSet], name: str) -> EvalSet:
    """One evaluation set holding several conditions' predictions of the same recordings.

    ``conditions`` maps a condition label to its evaluation set (same recordings, same order); a trial
    of condition ``c`` becomes row ``c|trial_id``. Resampled once, every condition shares the recording
    draws, so differences between conditions are paired.
    """
    sets = list(conditions.values())
    return dataclasses.replace(
        sets[0],
        name=name,
        trial_ids=[f"{label}|{t}" for label, e in conditions.items() for t in e.trial_ids],
        probs=np.concatenate([e.probs for e in sets]),
        class_probs=None,
        thresholds=np.concatenate([e.thresholds for e in sets]),
    )


def _drop_numbers(prefix: str, result: stats.PairedBootstrapResult | None) -> dict:
    if result is None:
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan}
    return {prefix: result.difference, f"{prefix}_low": result.low, f"{prefix}_high": result.high}


def _source_draws(view: RobustnessView, stacked: EvalSet, within: np.ndarray, source: str) -> tuple:
    """(the stacked conditions within ``source``, without it) resampled, each None where it holds one class. Within
    the source the draws are the main report's per-source ones (the same stream, the same recordings)."""
    eval_set = stacked.name
    draws = []
    for mask, name, stream in (
        (within, f"{eval_set} / {source}", (eval_set, source)),
        (~within, f"{eval_set} / without {source}", (eval_set, source, "left out")),
    ):
        subset = stacked.subset(mask, name)
        both_classes = len(np.unique(subset.binary)) == 2
        draws.append(view.engine.resample(subset, *stream, kernel=roc_auc_kernel) if both_classes else None)
    return tuple(draws)


def _pooled_drop(view: RobustnessView, trial_ids: list[str], condition: Condition) -> float:
    """The seed-mean ROC-AUC drop of some trials from clean audio to ``condition``, on all recordings."""
    clean, perturbed = view.engine.resampled(Condition(condition.eval_set)), view.engine.resampled(condition)
    return float(
        clean.point["roc_auc"][[clean.rows[t] for t in trial_ids]].mean()
        - perturbed.point["roc_auc"][[perturbed.rows[t] for t in trial_ids]].mean()
    )


def _source_drop_numbers(
    view: RobustnessView, configuration, condition: Condition, labels: dict, draws: tuple, counts: tuple
) -> dict | None:
    """A row of tables/robustness_per_source: a configuration's ROC-AUC within one source on clean audio and under
    ``condition``, its drop there, and the pooled drop with and without the source; None where it scored none."""
    clean = Condition(condition.eval_set)
    scored_clean = set(view.engine.eval_sets[clean].trial_ids)
    trial_ids = [t for t in view.trial_ids(configuration, condition) if t in scored_clean]
    if not trial_ids:
        return None
    (within, without), (source, n, n_pos) = draws, counts
    before = [f"{labels[('none', 0)]}|{t}" for t in trial_ids]
    after = [f"{labels[(condition.perturbation, condition.severity)]}|{t}" for t in trial_ids]
    auc_clean = auc_perturbed = drop = None
    if within is not None:
        auc_clean = seed_mean_interval(within, before, "roc_auc", view.options.ci_method)
        auc_perturbed = seed_mean_interval(within, after, "roc_auc", view.options.ci_method)
        drop = paired_bootstrap(within, before, after, "roc_auc")
    drop_without = paired_bootstrap(without, before, after, "roc_auc") if without is not None else None
    pooled, _ = view.drop(configuration, condition, clean)
    pooled_drop = _pooled_drop(view, trial_ids, condition)
    without_estimate = drop_without.difference if drop_without is not None else math.nan
    return {
        "configuration": configuration.name,
        "eval_set": condition.eval_set,
        "perturbation": condition.perturbation,
        "severity": condition.severity,
        "level": view.level(condition.perturbation, condition.severity),
        "source": source,
        "n": n,
        "n_pos": n_pos,
        "seeds": len(trial_ids),
        "unreliable": few_recordings_warning(n_pos, n - n_pos),
        **interval_numbers("roc_auc_clean", auc_clean),
        **interval_numbers("roc_auc_perturbed", auc_perturbed),
        **_drop_numbers("drop", drop),
        "pooled_drop": pooled_drop,
        "pooled_drop_low": pooled.low if pooled else math.nan,
        "pooled_drop_high": pooled.high if pooled else math.nan,
        **_drop_numbers("pooled_drop_without_source", drop_without),
        # the source carries the drop: a drop that matters, at least halved without the source
        "carries_drop": bool(
            pooled_drop >= 0.05 and np.isfinite(without_estimate) and without_estimate <= pooled_drop / 2
        ),
    }


def _per_source_numbers(view: RobustnessView, eval_set: str) -> list[dict]:
    """The rows of tables/robustness_per_source of one evaluation set: none with fewer than two sources."""
    clean = Condition(eval_set)
    if not view.has(clean):
        return []
    clean_set = view.engine.eval_sets[clean]
    sources = sorted(set(clean_set.sources))
    if len(sources) < 2:
        return []
    perturbed = [c for c in view.conditions(eval_set) if c[0] != "none" and view.paired(Condition(eval_set, *c), clean)]
    labels = {c: f"{c[0]}@{c[1]}" for c in [("none", 0), *perturbed]}
    stacked = _stacked_conditions({labels[c]: view.engine.eval_sets[Condition(eval_set, *c)] for c in labels}, eval_set)
    numbers = []
    for source in sources:
        within = clean_set.sources == source
        draws = _source_draws(view, stacked, within, source)
        counts = (source, int(within.sum()), int(clean_set.binary[within].sum()))
        for perturbation, severity in perturbed:
            condition = Condition(eval_set, perturbation, severity)
            for configuration in view.configurations:
                row = _source_drop_numbers(view, configuration, condition, labels, draws, counts)
                if row is not None:
                    numbers.append(row)
    return numbers


def _per_source_display(row: dict) -> dict:
    both_classes = 0 < row["n_pos"] < row["n"]  # only then is the source resampled on its own
    return {
        "configuration": row["configuration"],
        "evaluation set": row["eval_set"],
        "level": row["level"],
        "source": row["source"],
        "n (pos)": f"{row['n']} ({row['n_pos']})",
        "ROC-AUC clean": row_interval_cell(row, "roc_auc_clean") if both_classes else "one class only",
        "ROC-AUC perturbed": row_interval_cell(row, "roc_auc_perturbed") if both_classes else "one class only",
        "drop": format_interval(row["drop"], row["drop_low"], row["drop_high"], signed=True),
        "pooled drop": format_interval(
            row["pooled_drop"], row["pooled_drop_low"], row["pooled_drop_high"], signed=True
        ),
        "pooled drop without it": format_interval(
            row["pooled_drop_without_source"],
            row["pooled_drop_without_source_low"],
            row["pooled_drop_without_source_high"],
            signed=True,
        ),
        "carries the drop": "yes" if row["carries_drop"] else "",
        "intervals": row["unreliable"] or "–",
    }


def _per_source_table(view: RobustnessView, writer: ReportWriter) -> list[dict]:
    """Each source's ROC-AUC and drop under every perturbation, with 95 % intervals; returns the flagged rows.

    A pooled drop can be one database's: a model that separated one source's classes by a cue the
    perturbation removes loses much there and little elsewhere. A source is flagged when the pooled drop
    is at least 0.05 and leaving that source out at least halves it (point estimates).

    Every condition of an evaluation set is stacked into one set (:func:`_stacked_conditions`) and
    resampled once within each source (and once without it), with the draws the main report's
    per-source section uses; ROC-AUCs get seed-mean intervals and drops (clean − perturbed) the paired
    bootstrap's percentile interval on those shared draws.
    """
    numbers = [row for eval_set in view.eval_set_names for row in _per_source_numbers(view, eval_set)]
    if not numbers:
        return []
    caption = (
        "Per source: ROC-AUC within each source on clean and perturbed audio, seed mean [95 % CI; recordings "
        "(whole patients where a source has several recordings of one) resampled within the source, stratified by label, with seed variation]; the drop (clean − perturbed) within the "
        "source, the pooled drop and the pooled drop without that source, each [95 % percentile CI of the paired "
        "difference on the same draws]. 'carries the drop': the pooled drop is ≥ 0.05 and leaving the source out "
        "at least halves it (point estimates), i.e. the perturbation mostly removes what the model used within "
        f"that source. 'intervals' marks a source with fewer than {MIN_CLASS_RECORDINGS} recordings of a class: its "
        "intervals rest on too few recordings to be trusted."
    )
    writer.table(
        "robustness_per_source",
        pd.DataFrame([_per_source_display(row) for row in numbers]),
        pd.DataFrame(numbers),
        caption,
        "each source's ROC-AUC and drop under every perturbation with CIs, and whether one source carries the pooled drop",
    )
    return [row for row in numbers if row["carries_drop"]]


# ---------------------------------------------------------------------------- plots


def _unit(view: RobustnessView, eval_set: str) -> str:
    """What the bootstrap draws in an evaluation set: recordings, or whole patients where it has several
    recordings of one (as :func:`units` says for the section)."""
    return resampling_unit(next(e for c, e in view.engine.eval_sets.items() if c.eval_set == eval_set))


def _severity_panel(view: RobustnessView, eval_set: str, perturbation: str) -> SeverityPanel:
    """Every configuration's ROC-AUC [95 % CI] at each severity of one perturbation, clean audio first."""
    severities = [0] * view.has(Condition(eval_set)) + [s for p, s in view.conditions(eval_set) if p == perturbation]
    conditions = [Condition(eval_set) if s == 0 else Condition(eval_set, perturbation, s) for s in severities]
    curves = []
    for k, configuration in enumerate(view.configurations):
        intervals = [view.interval(configuration, condition) for condition in conditions]
        points = [(x, i) for x, i in enumerate(intervals) if i is not None]
        if points:
            curves.append(
                SeverityCurve(
                    configuration.name,
                    k,
                    np.array([x for x, _ in points]),
                    [i.estimate for _, i in points],
                    [i.low for _, i in points],
                    [i.high for _, i in points],
                )
            )
    levels = [view.level(perturbation, s) if s else "clean" for s in severities]
    return SeverityPanel(perturbation, levels, curves)


def _plots(view: RobustnessView, writer: ReportWriter) -> None:
    for eval_set in view.eval_set_names:
        perturbations = [p for p in dict.fromkeys(p for p, _ in view.conditions(eval_set)) if p != "none"]
        if not perturbations:
            continue
        path = plot_auc_vs_severity(
            writer.plots_dir / f"robustness_{slug(eval_set)}.png",
            [_severity_panel(view, eval_set, perturbation) for perturbation in perturbations],
            f"{view.name}: ROC-AUC vs severity on {eval_set}",
            note=f"Bands: 95 % bootstrap CI over {_unit(view, eval_set)} (stratified) and seeds.",
        )
        writer.plot(
            path, f"ROC-AUC vs severity per configuration with 95 % CI bands on {eval_set}, one panel per perturbation"
        )


# ---------------------------------------------------------------------------- the claim's counts and the index


def _verdict_table(view: RobustnessView, writer: ReportWriter, tests: list[dict]) -> list[dict]:
    """How often each fusion configuration loses significantly less / more ROC-AUC than each single branch, on
    the real shift and under each evaluation set's perturbations (every severity): the counts behind the
    verdict; none when no test can be significant."""
    options = view.options
    if not tests or stats.resampling_floor_warning(options.n_resamples, len(tests), options.correction, options.alpha):
        return []
    numbers = []
    groups = dict.fromkeys((r["scope"], r["eval_set"], r["fusion"], r["branch"]) for r in tests)
    for scope, eval_set, fusion, branch in groups:
        rows = [
            r
            for r in tests
            if (r["scope"], r["eval_set"], r["fusion"], r["branch"]) == (scope, eval_set, fusion, branch)
        ]
        numbers.append(
            {
                "scope": "real domain shift, clean audio" if scope == "real shift" else "perturbations, every severity",
                "eval_set": eval_set,
                "fusion": fusion,
                "branch": branch,
                "tests": len(rows),
                "better": sum(r["verdict"] == "fusion loses less" for r in rows),
                "worse": sum(r["verdict"] == "fusion loses more" for r in rows),
                "correction": options.correction,
                "alpha": options.alpha,
            }
        )
    writer.table(
        "robustness_claim",
        claim_display(numbers),
        pd.DataFrame(numbers),
        f"The robustness claim against this study: of the drop-difference tests (robustness_tests), how many find "
        f"fusion losing significantly less or more ROC-AUC than a single branch ({options.correction}-adjusted "
        f"p < {options.alpha} over the family '{ROBUSTNESS_FAMILY}').",
        "how often fusion loses significantly less / more ROC-AUC than each single branch, on the real shift and "
        "under perturbations",
    )
    return numbers


def _update_index(out: Path, section: list[str]) -> Path:
    """Put the robustness section into OUT/report.md, replacing an earlier one (creating the file if absent)."""
    path = out / REPORT_FILE
    text = path.read_text() if path.is_file() else f"# Report: study `{out.name}`\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head.rstrip("\n") + "\n" + rest.split(SECTION_END, 1)[1].lstrip("\n")
    return write_text(path, text.rstrip("\n") + "\n\n" + "\n".join([SECTION_START, *section, SECTION_END]) + "\n")


def report_robustness(out: Path, dest: Path | None = None, **options) -> dict:
    """Write the robustness tables, plots and report.md section of the study in ``out``; returns a summary.

    Options (see :class:`view.options.AnalysisOptions`): correction ("holm" or "bh"),
    n_resamples (10,000), alpha (0.05), ci_method ("bca" or "percentile"),
    seed, plots. Returns dict with tables and plots (paths), tests (the rows
    of robustness_tests), claim (the section's lines), notes, seconds.
    """
    settings = AnalysisOptions(**options)
    return write_robustness(StudyEngine(Path(out), settings), dest)


def write_robustness(engine: StudyEngine, dest: Path | None = None) -> dict:
    """:func:`report_robustness` on a study the engine holds (the main report's, when it runs this one)."""
    started = time.perf_counter()
    view = RobustnessView(engine)
    dest = Path(dest) if dest is not None else view.out  # where the tables, plots and section go
    writer = ReportWriter(dest)
    _auc_table(view, writer)
    shift = _shift_table(view, writer)
    tests = _tests_table(view, writer)
    verdicts = _verdict_table(view, writer, tests)
    ablation = _ablation_table(view, writer)
    carried = _per_source_table(view, writer)
    if view.options.plots:
        _plots(view, writer)
    claim = claim_lines(view, shift, tests, ablation, carried, verdicts) if tests else no_test_lines(view)
    seconds = time.perf_counter() - started
    section = (
        ["## Robustness", "", *claim]
        + writer.table_links()
        + writer.plot_links()
        + [f"- note: {n}" for n in dict.fromkeys(view.notes)]
        + [
            "",
            f"Robustness method: {view.options.n_resamples} bootstrap resamples of "
            f"{units(view)} (stratified), the same draws for every condition of an evaluation set, with seed "
            f"variation; {view.options.ci_method} intervals for ROC-AUC, percentile intervals for paired "
            f"differences; p-values {view.options.correction}-adjusted within the family '{ROBUSTNESS_FAMILY}' "
            f"(the families are under Method); took {seconds:.1f} s.",
        ]
    )
    _update_index(dest, section)
    write_html(dest)
    return {
        "tables": writer.table_paths(),
        "plots": writer.plot_paths(),
        "tests": tests,
        "claim": claim,
        "notes": view.notes,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a finished study folder, e.g. results/robustness")
    add_analysis_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with study_lock(args.study, "python -m analysis robustness", create=False):
            return _run(args)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    try:
        summary = report_robustness(args.study, **analysis_options(args))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(summary['tables']) // 3} robustness tables, {len(summary['plots'])} plots in {summary['seconds']:.1f} s"
    )
    for line in "\n".join(summary["claim"]).splitlines():  # a compact table is one entry of several lines
        if line:
            print(f"  {line}")
    for note in dict.fromkeys(summary["notes"]):
        print(f"  note: {note}")
    return 0
