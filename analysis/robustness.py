"""The robustness report of a study: metric vs perturbation severity, fusion vs each branch, branch ablation.

    python -m analysis robustness results/NAME [--perturb SUITE] [--resamples N] [--correction holm|bh]
        [--alpha 0.05] [--ci-method bca|percentile] [--seed 0] [--device cpu] [--jobs N] [--no-plots]

Without ``--perturb`` it analyses the perturbed predictions already in
``OUT/predictions.parquet``. With ``--perturb`` (a suite in the format of a
space's ``perturbations``, YAML or JSON, e.g.
``'[{name: codec, codec: opus, severities: [1, 2]}]'``) it first re-evaluates
every trial's checkpoint on that suite (:func:`study.evaluate.reevaluate_study`)
and merges the new rows into ``OUT/predictions.parquet``.

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
  :mod:`analysis.resampling`'s engine as the main report. Every condition of an evaluation set
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
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis import paper, stats
from analysis.engine import Condition, StudyEngine, scored_trials
from analysis.options import AnalysisOptions, add_analysis_arguments, analysis_options
from analysis.output import (
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
from analysis.plots import SeverityCurve, SeverityPanel, plot_auc_vs_severity
from analysis.resampling import (
    CONFIDENCE_LEVEL,
    Resampled,
    named_generator,
    paired_bootstrap,
    resample,
    roc_auc_kernel,
    seed_mean_interval,
)
from analysis.study_data import Configuration, EvalSet, StudyError
from analysis.tables import format_interval, format_p, format_value, to_markdown
from study.io import write_text
from study.lock import study_lock
from study.perturbations import describe, parse_perturbation_suite

__all__ = [
    "ARCHITECTURE",
    "SINGLE_BRANCHES",
    "SECTION_START",
    "SECTION_END",
    "report_robustness",
    "write_robustness",
    "parse_suite_argument",
    "main",
]

ARCHITECTURE = "model.architecture"
SINGLE_BRANCHES = ("spectrogram", "waveform")
SECTION_START, SECTION_END = "<!-- robustness:start -->", "<!-- robustness:end -->"


class _Robustness:
    """The robustness report's view of the study engine: every condition, the in-domain test set and the real
    domain shift."""

    def __init__(self, engine: StudyEngine):
        if engine.respiratory:
            raise StudyError("the robustness report covers heart (binary) studies; this study is respiratory")
        self.engine, self.options = engine, engine.options
        self.out, self.state, self.space, self.name = engine.out, engine.state, engine.space, engine.name
        self.configurations = engine.configurations
        self.notes = [
            f"{perturbation}@{severity}, ablation {ablation}: not analysed ({error})"
            for (perturbation, severity, ablation), error in engine.unanalysable.items()
        ]
        if not engine.eval_sets:
            raise StudyError(
                f"{self.out}/predictions.parquet holds no condition that can be analysed: " + "; ".join(self.notes)
            )
        self.eval_set_names = list(dict.fromkeys(condition.eval_set for condition in engine.eval_sets))
        self.suites = self._known_perturbations()
        # the in-domain test set and the real domain shift (a second database) the paper's claim is about
        names = self.eval_set_names
        self.primary = next((e for e in names if e.startswith("physionet2016")), names[0])
        self.shifted = next((e for e in names if e.startswith("pascal") and e != self.primary), None)

    def _known_perturbations(self) -> dict[str, dict]:
        """perturbation id -> its keyword options, from the space's suite and every suite merged later.

        An entry this code no longer accepts (a retired perturbation such as ``time_stretch``, whose
        severities meant other rates) is left out with a note: its levels keep their raw ids.
        """
        known = {}
        for suite in [self.space.get("perturbations") or [], *self.state.get("robustness_suites", [])]:
            for entry in suite:
                try:
                    items = parse_perturbation_suite([entry])
                except ValueError as error:
                    self.notes.append(f"perturbation suite entry {entry} is not labelled ({error})")
                    continue
                for item in items:
                    known[item.id] = item.kwargs
        return known

    def level(self, perturbation: str, severity: int) -> str:
        """describe()'s label of a perturbation level ("MP3 32 kbps"); the raw id for one no suite names."""
        if perturbation == "none":
            return "clean"
        if perturbation in self.suites:
            return describe(perturbation.split(":", 1)[0], severity, **self.suites[perturbation])
        return f"{perturbation} @ {severity}"

    def conditions(self, eval_set: str, ablation: str = "none") -> list[tuple[str, int]]:
        """(perturbation, severity) of an evaluation set, clean first, then by perturbation and severity."""
        found = {
            (c.perturbation, c.severity)
            for c in self.engine.eval_sets
            if (c.eval_set, c.ablation) == (eval_set, ablation)
        }
        return sorted(found, key=lambda c: (c[0] != "none", c[0], c[1]))

    def trial_ids(self, configuration: Configuration, key: Condition, seeds=None) -> list[str]:
        return scored_trials(configuration, self.engine.eval_sets[key], seeds)[1]

    def interval(self, configuration: Configuration, key: Condition) -> stats.BootstrapCI | None:
        return self.engine.interval(configuration, key)

    def paired(self, key_a: Condition, key_b: Condition) -> bool:
        """Whether two conditions scored the same recordings (so their draws coincide)."""
        return self.engine.same_recordings(key_a, key_b)

    def drop(
        self, configuration: Configuration, key: Condition, reference: Condition
    ) -> tuple[stats.BootstrapCI | None, stats.BootstrapCI | None]:
        """(absolute drop reference − key, relative drop 1 − key / reference) of a configuration, with percentile CIs.

        The relative drop is undefined (NaN, no interval) where the reference ROC-AUC is 0.
        """
        a, b = self.interval(configuration, reference), self.interval(configuration, key)
        if a is None or b is None or a.n_seeds != b.n_seeds or not self.paired(key, reference):
            return None, None
        # Seed by seed on the same recording draws, so the seed effects cancel in the drop as they should.
        clean, perturbed = self.engine.resampled(reference), self.engine.resampled(key)
        trial_ids = self.trial_ids(configuration, key)
        rows_a, rows_b = [clean.rows[t] for t in trial_ids], [perturbed.rows[t] for t in trial_ids]
        differences = stats.seed_mean_distribution(
            clean.per_resample["roc_auc"][rows_a] - perturbed.per_resample["roc_auc"][rows_b],
            clean.point["roc_auc"][rows_a] - perturbed.point["roc_auc"][rows_b],
            stats.metric_bounds("roc_auc", difference=True),
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = differences / a.distribution
        relative_estimate = 1 - b.estimate / a.estimate if a.estimate != 0 else math.nan
        return (
            stats.bootstrap_interval(
                differences, a.estimate - b.estimate, confidence_level=CONFIDENCE_LEVEL, n_seeds=a.n_seeds
            ),
            stats.bootstrap_interval(relative, relative_estimate, confidence_level=CONFIDENCE_LEVEL, n_seeds=a.n_seeds),
        )

    def fusion_pairs(self) -> list[tuple[Configuration, Configuration]]:
        """(fusion configuration, single-branch configuration) pairs that share every non-model setting."""

        def rest(c):
            return json.dumps({k: str(v) for k, v in c.settings.items() if not k.startswith("model.")}, sort_keys=True)

        fusions = [c for c in self.configurations if c.settings.get(ARCHITECTURE) == "fusion"]
        singles = [c for c in self.configurations if c.settings.get(ARCHITECTURE) in SINGLE_BRANCHES]
        return [(f, s) for f in fusions for s in singles if rest(f) == rest(s)]

    def common_trials(self, a: Configuration, b: Configuration, keys: tuple) -> list[tuple[list, list]] | None:
        """Per key, (a's trial ids, b's trial ids) over the seeds both configurations scored in every key."""
        if not all(key in self.engine.eval_sets for key in keys):
            return None
        scored = [set(self.engine.eval_sets[key].trial_ids) for key in keys]
        seeds = [
            s
            for s, t in zip(a.seeds, a.trial_ids, strict=True)
            if all(t in trial_ids for trial_ids in scored)
            and any(
                s == s_b and all(t_b in trial_ids for trial_ids in scored)
                for s_b, t_b in zip(b.seeds, b.trial_ids, strict=True)
            )
        ]
        if not seeds:
            return None
        return [(self.trial_ids(a, key, seeds), self.trial_ids(b, key, seeds)) for key in keys]

    def drop_difference(
        self, fusion: Configuration, branch: Configuration, key: tuple, reference: tuple
    ) -> dict | None:
        """Paired bootstrap of the branch's ROC-AUC drop from ``reference`` to ``key`` minus the fusion's.

        Positive: fusion loses less. It is the difference in differences (fusion − branch at ``key``) −
        (fusion − branch at ``reference``), seed k paired with seed k. Within one evaluation set both conditions
        share their recording draws; between two databases (the real shift) they are drawn independently.
        """
        trials = self.common_trials(fusion, branch, (key, reference))
        if trials is None or (key[0] == reference[0] and not self.paired(key, reference)):
            return None
        (fusion_key, branch_key), (fusion_ref, branch_ref) = trials
        after, before = self.engine.resampled(key), self.engine.resampled(reference)

        def values(resampled, fusion_ids, branch_ids, field):
            table = getattr(resampled, field)["roc_auc"]
            return table[[resampled.rows[t] for t in fusion_ids]] - table[[resampled.rows[t] for t in branch_ids]]

        per_seed = values(after, fusion_key, branch_key, "per_resample") - values(
            before, fusion_ref, branch_ref, "per_resample"
        )
        point = values(after, fusion_key, branch_key, "point") - values(before, fusion_ref, branch_ref, "point")
        distribution = stats.seed_mean_distribution(per_seed, point, (-2.0, 2.0))
        interval = stats.bootstrap_interval(distribution, float(point.mean()), n_seeds=len(fusion_key))

        def mean(resampled, ids):
            return float(resampled.point["roc_auc"][[resampled.rows[t] for t in ids]].mean())

        fusion_before, branch_before = mean(before, fusion_ref), mean(before, branch_ref)
        fusion_after, branch_after = mean(after, fusion_key), mean(after, branch_key)
        return {
            "value_a": fusion_after,
            "value_b": branch_after,
            "drop_a": fusion_before - fusion_after,
            "drop_b": branch_before - branch_after,
            "drop_difference": interval.estimate,
            "drop_difference_low": interval.low,
            "drop_difference_high": interval.high,
            "p": stats.bootstrap_p_value(distribution),
            "n_seeds": len(fusion_key),
        }

    def compare(self, a: Configuration, b: Configuration, key: tuple) -> dict | None:
        """Paired bootstrap of ROC-AUC a − b on one condition over common seeds; a robustness_tests row."""
        if key not in self.engine.eval_sets:
            return None
        resampled = self.engine.resampled(key)
        seeds_b = {s for s, t in zip(b.seeds, b.trial_ids, strict=True) if t in resampled.rows}
        common = [s for s, t in zip(a.seeds, a.trial_ids, strict=True) if t in resampled.rows and s in seeds_b]
        if not common:
            return None
        paired = paired_bootstrap(resampled, self.trial_ids(a, key, common), self.trial_ids(b, key, common), "roc_auc")
        return {
            "value_a": paired.value_a,
            "value_b": paired.value_b,
            "difference": paired.difference,
            "low": paired.low,
            "high": paired.high,
            "p": paired.p_value,
            "n_seeds": len(common),
        }


def interval_cell_of(row: dict, prefix: str, signed: bool = False) -> str:
    """The cell of the interval PREFIX, PREFIX_low, PREFIX_high of a table row; "–" where there is none."""
    if not math.isfinite(row[prefix]):
        return "–"
    return format_interval(row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"], signed=signed)


def _percent_cell(interval: stats.BootstrapCI | None) -> str:
    if interval is None:
        return "n/a"
    return (
        format_interval(100 * interval.estimate, 100 * interval.low, 100 * interval.high, digits=1, signed=True) + " %"
    )


# ---------------------------------------------------------------------------- tables


def _auc_table(analysis: _Robustness, writer: ReportWriter) -> None:
    display, numbers = [], []
    for eval_set in analysis.eval_set_names:
        clean = Condition(eval_set)
        for configuration in analysis.configurations:
            for perturbation, severity in analysis.conditions(eval_set):
                key = Condition(eval_set, perturbation, severity)
                interval = analysis.interval(configuration, key)
                if interval is None:
                    continue
                absolute, relative = analysis.drop(configuration, key, clean) if key != clean else (None, None)
                display.append(
                    {
                        "configuration": configuration.name,
                        "evaluation set": eval_set,
                        "perturbation": perturbation,
                        "severity": severity,
                        "level": analysis.level(perturbation, severity),
                        "seeds": interval.n_seeds,
                        "ROC-AUC": interval_cell(interval),
                        "drop from clean": interval_cell(absolute) if absolute else "–",
                        "relative drop": _percent_cell(relative) if relative else "–",
                    }
                )
                numbers.append(
                    {
                        "configuration": configuration.name,
                        "eval_set": eval_set,
                        "perturbation": perturbation,
                        "severity": severity,
                        "level": analysis.level(perturbation, severity),
                        "seeds": interval.n_seeds,
                        **interval_numbers("roc_auc", interval),
                        **interval_numbers("drop", absolute),
                        **interval_numbers("relative_drop", relative),
                    }
                )
    caption = (
        "ROC-AUC under each perturbation and severity: seed mean [95 % bootstrap CI over recordings stratified by label "
        "(patients where known), with seed variation]; drop from clean = clean − perturbed ROC-AUC and relative drop = 1 − perturbed / clean, each "
        "[95 % percentile CI of the paired difference on the same draws]."
    )
    writer.table(
        "robustness_auc",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "ROC-AUC per configuration, evaluation set, perturbation and severity with CIs and the drop from clean",
    )


def _shift_table(analysis: _Robustness, writer: ReportWriter) -> list[dict]:
    """ROC-AUC of every configuration on clean audio of each other evaluation set and its change from the
    in-domain test set (seed k on one set paired with seed k on the other, each set's recordings resampled on
    its own draws, as the main report's pascal table); returns the rows."""
    reference = Condition(analysis.primary)
    if reference not in analysis.engine.eval_sets:
        return []
    display, numbers = [], []
    for eval_set in [e for e in analysis.eval_set_names if e != analysis.primary]:
        key = Condition(eval_set)
        if key not in analysis.engine.eval_sets:
            continue
        for configuration in analysis.configurations:
            on_reference = set(analysis.trial_ids(configuration, reference))
            seeds = [
                s
                for s, t in zip(configuration.seeds, configuration.trial_ids, strict=True)
                if t in on_reference and t in analysis.engine.eval_sets[key].trial_ids
            ]
            if not seeds:
                continue
            before = analysis.trial_ids(configuration, reference, seeds)
            after = analysis.trial_ids(configuration, key, seeds)
            intervals = [
                seed_mean_interval(analysis.engine.resampled(k), trials, "roc_auc", analysis.options.ci_method)
                for k, trials in ((reference, before), (key, after))
            ]
            change = paired_bootstrap(
                analysis.engine.resampled(key),
                after,
                before,
                "roc_auc",
                resampled_b=analysis.engine.resampled(reference),
            )
            numbers.append(
                {
                    "configuration": configuration.name,
                    "eval_set": eval_set,
                    "reference_eval_set": analysis.primary,
                    "seeds": len(seeds),
                    **interval_numbers("roc_auc_reference", intervals[0]),
                    **interval_numbers("roc_auc", intervals[1]),
                    **_drop_numbers("change", change),
                }
            )
            display.append(
                {
                    "configuration": configuration.name,
                    "evaluation set": eval_set,
                    "reference set": analysis.primary,
                    "seeds": len(seeds),
                    "ROC-AUC on the reference set": interval_cell(intervals[0]),
                    "ROC-AUC": interval_cell(intervals[1]),
                    "change": interval_cell_of(numbers[-1], "change", signed=True),
                }
            )
    if not numbers:
        return []
    writer.table(
        "robustness_shift",
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        f"Domain shift on clean audio: seed-mean ROC-AUC [95 % {analysis.options.ci_method} CI] on each evaluation "
        f"set and on the reference set {analysis.primary}, and the change (evaluation set − reference) [95 % "
        "percentile CI; seed k paired with seed k, the two sets' recordings resampled independently].",
        f"ROC-AUC per configuration on each other evaluation set and its change from {analysis.primary}, clean audio",
    )
    return numbers


ROBUSTNESS_FAMILY = "robustness: branch's drop − fusion's drop, paired bootstrap"


def _test_conditions(analysis: _Robustness) -> list[tuple[tuple, tuple, str]]:
    """(condition, its reference, scope) of every drop-difference test: the real shift (clean audio of another
    database against the in-domain test set), then each perturbation severity against its clean audio."""
    conditions = []
    primary_clean = Condition(analysis.primary)
    if (
        analysis.shifted
        and Condition(analysis.shifted) in analysis.engine.eval_sets
        and primary_clean in analysis.engine.eval_sets
    ):
        conditions.append((Condition(analysis.shifted), primary_clean, "real shift"))
    for eval_set in analysis.eval_set_names:
        for perturbation, severity in analysis.conditions(eval_set):
            if perturbation != "none":
                conditions.append((Condition(eval_set, perturbation, severity), Condition(eval_set), "perturbation"))
    return conditions


def _tests_table(analysis: _Robustness, writer: ReportWriter) -> list[dict]:
    """Write tables/robustness_tests: does fusion lose less ROC-AUC than each single branch? Returns its rows.

    "Resists better" is a statement about drops, so it rests on the test of the drop difference, never on the
    levels: a fusion model ahead on clean audio and equally far ahead under a perturbation resisted it no better.
    """
    rows = []
    for fusion, single in analysis.fusion_pairs():
        for key, reference, scope in _test_conditions(analysis):
            result = analysis.drop_difference(fusion, single, key, reference)
            level = analysis.compare(fusion, single, key)
            if result is None or level is None:
                continue
            eval_set, perturbation, severity, _ = key
            rows.append(
                {
                    "fusion": fusion.name,
                    "branch": single.name,
                    "scope": scope,
                    "eval_set": eval_set,
                    "reference_eval_set": reference[0],
                    "perturbation": perturbation,
                    "severity": severity,
                    "level": f"real shift from {reference[0]}"
                    if scope == "real shift"
                    else analysis.level(perturbation, severity),
                    "difference": level["difference"],
                    "low": level["low"],
                    "high": level["high"],
                    **result,
                }
            )
    if not rows:  # the section says so in its one line
        return []
    options = analysis.options
    adjusted = stats.adjust_pvalues([r["p"] for r in rows], options.correction)
    floor = stats.resampling_floor_warning(options.n_resamples, len(rows), options.correction, options.alpha)
    if floor:
        analysis.notes.append(f"drop-difference tests: {floor}")
    for row, p in zip(rows, adjusted, strict=True):
        row.update(adjusted_p=float(p), correction=options.correction, family=ROBUSTNESS_FAMILY, family_size=len(rows))
        row["verdict"] = _drop_verdict(row, options.alpha)
    display = pd.DataFrame([_test_display(r, options.correction) for r in rows])
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


def _test_display(r: dict, correction: str) -> dict:
    """A robustness_tests row as tables/robustness_tests.md and report.md's section show it."""
    return {
        "fusion": r["fusion"],
        "vs": r["branch"],
        "evaluation set": r["eval_set"],
        "level": r["level"],
        "seeds": r["n_seeds"],
        "fusion ROC-AUC (drop)": _with_drop(r["value_a"], r["drop_a"]),
        "branch ROC-AUC (drop)": _with_drop(r["value_b"], r["drop_b"]),
        "Δ level fusion − branch [unadjusted 95 % CI]": format_interval(
            r["difference"], r["low"], r["high"], signed=True
        ),
        "branch's drop − fusion's [unadjusted 95 % CI]": format_interval(
            r["drop_difference"], r["drop_difference_low"], r["drop_difference_high"], signed=True
        ),
        "p (raw)": format_p(r["p"]),
        f"p ({correction}, {r['family_size']} tests)": format_p(r["adjusted_p"]),
        "verdict": r["verdict"],
    }


def _ablation_table(analysis: _Robustness, writer: ReportWriter) -> list[dict]:
    display, numbers = [], []
    for configuration in analysis.configurations:
        if configuration.settings.get(ARCHITECTURE) != "fusion":
            continue
        for eval_set in analysis.eval_set_names:
            ablations = sorted({a for (e, _, _, a) in analysis.engine.eval_sets if e == eval_set and a != "none"})
            for perturbation, severity in analysis.conditions(eval_set):
                reference = Condition(eval_set, perturbation, severity)
                for ablation in ablations:
                    key = Condition(eval_set, perturbation, severity, ablation)
                    interval = analysis.interval(configuration, key)
                    if interval is None:
                        continue
                    absolute, _ = analysis.drop(configuration, key, reference)
                    base = analysis.interval(configuration, reference)
                    display.append(
                        {
                            "configuration": configuration.name,
                            "evaluation set": eval_set,
                            "level": analysis.level(perturbation, severity),
                            "ablation": ablation,
                            "seeds": interval.n_seeds,
                            "ROC-AUC intact": interval_cell(base),
                            "ROC-AUC ablated": interval_cell(interval),
                            "drop": interval_cell(absolute),
                        }
                    )
                    numbers.append(
                        {
                            "configuration": configuration.name,
                            "eval_set": eval_set,
                            "perturbation": perturbation,
                            "severity": severity,
                            "level": analysis.level(perturbation, severity),
                            "ablation": ablation,
                            "seeds": interval.n_seeds,
                            **interval_numbers("roc_auc_intact", base),
                            **interval_numbers("roc_auc_ablated", interval),
                            **interval_numbers("drop", absolute),
                        }
                    )
    if not display:
        analysis.notes.append("no branch-ablation rows: the study has no fusion model evaluated with a branch ablated")
        return []
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


def _drop_cell(estimate: float, low: float, high: float) -> str:
    return format_interval(estimate, low, high, signed=True)


def _drop_numbers(prefix: str, result: stats.PairedBootstrapResult | None) -> dict:
    if result is None:
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan}
    return {prefix: result.difference, f"{prefix}_low": result.low, f"{prefix}_high": result.high}


def _per_source_table(analysis: _Robustness, writer: ReportWriter) -> list[dict]:
    """Each source's ROC-AUC and drop under every perturbation, with 95 % intervals; returns the flagged rows.

    A pooled drop can be one database's: a model that separated one source's classes by a cue the
    perturbation removes loses much there and little elsewhere. A source is flagged when the pooled drop
    is at least 0.05 and leaving that source out at least halves it (point estimates).

    Every condition of an evaluation set is stacked into one set (:func:`_stacked_conditions`) and
    resampled once within each source (and once without it), with the draws the main report's
    per-source section uses; ROC-AUCs get seed-mean intervals and drops (clean − perturbed) the paired
    bootstrap's percentile interval on those shared draws.
    """
    options = analysis.options
    display, numbers, flags = [], [], []
    for eval_set in analysis.eval_set_names:
        clean_key = Condition(eval_set)
        if clean_key not in analysis.engine.eval_sets:
            continue
        clean = analysis.engine.resampled(clean_key)
        sources = sorted(set(clean.eval_set.sources))
        if len(sources) < 2:
            continue
        perturbed = [
            c
            for c in analysis.conditions(eval_set)
            if c[0] != "none" and analysis.paired(Condition(eval_set, *c), clean_key)
        ]
        labels = {c: f"{c[0]}@{c[1]}" for c in [("none", 0), *perturbed]}
        stacked = _stacked_conditions(
            {labels[c]: analysis.engine.eval_sets[Condition(eval_set, *c)] for c in labels}, eval_set
        )
        for source in sources:
            within_mask = clean.eval_set.sources == source
            parts: list[Resampled | None] = []
            for mask, name, names in (
                (within_mask, f"{eval_set} / {source}", (eval_set, source)),  # the main report's per-source draws
                (~within_mask, f"{eval_set} / without {source}", (eval_set, source, "left out")),
            ):
                subset = stacked.subset(mask, name)
                parts.append(
                    resample(subset, roc_auc_kernel(subset), options.n_resamples, named_generator(options.seed, *names))
                    if len(np.unique(subset.binary)) == 2
                    else None
                )
            within, without = parts
            n, n_pos = int(within_mask.sum()), int(clean.eval_set.binary[within_mask].sum())
            for perturbation, severity in perturbed:
                key = Condition(eval_set, perturbation, severity)
                level = analysis.level(perturbation, severity)
                for configuration in analysis.configurations:
                    trial_ids = [t for t in analysis.trial_ids(configuration, key) if t in clean.rows]
                    if not trial_ids:
                        continue
                    before = [f"{labels[('none', 0)]}|{t}" for t in trial_ids]
                    after = [f"{labels[(perturbation, severity)]}|{t}" for t in trial_ids]
                    auc_clean = auc_perturbed = drop = None
                    if within is not None:
                        auc_clean = seed_mean_interval(within, before, "roc_auc", options.ci_method)
                        auc_perturbed = seed_mean_interval(within, after, "roc_auc", options.ci_method)
                        drop = paired_bootstrap(within, before, after, "roc_auc")
                    drop_without = paired_bootstrap(without, before, after, "roc_auc") if without is not None else None
                    pooled, _ = analysis.drop(configuration, key, clean_key)
                    on_perturbed = analysis.engine.resampled(key)
                    pooled_drop = float(
                        clean.point["roc_auc"][[clean.rows[t] for t in trial_ids]].mean()
                        - on_perturbed.point["roc_auc"][[on_perturbed.rows[t] for t in trial_ids]].mean()
                    )
                    without_estimate = drop_without.difference if drop_without is not None else math.nan
                    carries = bool(
                        pooled_drop >= 0.05 and np.isfinite(without_estimate) and without_estimate <= pooled_drop / 2
                    )
                    numbers.append(
                        {
                            "configuration": configuration.name,
                            "eval_set": eval_set,
                            "perturbation": perturbation,
                            "severity": severity,
                            "level": level,
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
                            "carries_drop": carries,
                        }
                    )
                    row = numbers[-1]
                    display.append(
                        {
                            "configuration": configuration.name,
                            "evaluation set": eval_set,
                            "level": level,
                            "source": source,
                            "n (pos)": f"{n} ({n_pos})",
                            "ROC-AUC clean": interval_cell(auc_clean) if within else "one class only",
                            "ROC-AUC perturbed": interval_cell(auc_perturbed) if within else "one class only",
                            "drop": _drop_cell(row["drop"], row["drop_low"], row["drop_high"]),
                            "pooled drop": _drop_cell(pooled_drop, row["pooled_drop_low"], row["pooled_drop_high"]),
                            "pooled drop without it": _drop_cell(
                                row["pooled_drop_without_source"],
                                row["pooled_drop_without_source_low"],
                                row["pooled_drop_without_source_high"],
                            ),
                            "carries the drop": "yes" if carries else "",
                            "intervals": row["unreliable"] or "–",
                        }
                    )
                    if carries:
                        flags.append(row)
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
        pd.DataFrame(display),
        pd.DataFrame(numbers),
        caption,
        "each source's ROC-AUC and drop under every perturbation with CIs, and whether one source carries the pooled drop",
    )
    return flags


# ---------------------------------------------------------------------------- plots


def _unit(analysis: _Robustness, eval_set: str) -> str:
    """What the bootstrap draws in an evaluation set: recordings, or whole patients where it has several
    recordings of one (as :func:`_units` says for the section)."""
    return resampling_unit(next(e for c, e in analysis.engine.eval_sets.items() if c.eval_set == eval_set))


def _plots(analysis: _Robustness, writer: ReportWriter) -> None:
    for eval_set in analysis.eval_set_names:
        conditions = analysis.conditions(eval_set)
        perturbations = [p for p in dict.fromkeys(p for p, _ in conditions) if p != "none"]
        if not perturbations:
            continue
        panels = []
        for perturbation in perturbations:
            severities = [0] * (Condition(eval_set) in analysis.engine.eval_sets) + [
                s for p, s in conditions if p == perturbation
            ]
            curves = []
            for k, configuration in enumerate(analysis.configurations):
                keys = [Condition(eval_set) if s == 0 else Condition(eval_set, perturbation, s) for s in severities]
                intervals = [analysis.interval(configuration, key) for key in keys]
                points = [(x, i) for x, i in enumerate(intervals) if i is not None]
                if points:
                    curves.append(
                        SeverityCurve(
                            configuration.name,
                            k,
                            np.array([p[0] for p in points]),
                            [p[1].estimate for p in points],
                            [p[1].low for p in points],
                            [p[1].high for p in points],
                        )
                    )
            levels = [analysis.level(perturbation, s) if s else "clean" for s in severities]
            panels.append(SeverityPanel(perturbation, levels, curves))
        path = plot_auc_vs_severity(
            writer.plots_dir / f"robustness_{slug(eval_set)}.png",
            panels,
            f"{analysis.name}: ROC-AUC vs severity on {eval_set}",
            note=f"Bands: 95 % bootstrap CI over {_unit(analysis, eval_set)} (stratified) and seeds.",
        )
        writer.plot(
            path, f"ROC-AUC vs severity per configuration with 95 % CI bands on {eval_set}, one panel per perturbation"
        )


# ---------------------------------------------------------------------------- the claim and the index


def _verdict_table(analysis: _Robustness, writer: ReportWriter, tests: list[dict]) -> list[dict]:
    """How often each fusion configuration loses significantly less / more ROC-AUC than each single branch, on
    the real shift and under each evaluation set's perturbations (every severity): the counts behind the
    verdict. None when no test can be significant."""
    options = analysis.options
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
        _claim_display(numbers),
        pd.DataFrame(numbers),
        f"The robustness claim against this study: of the drop-difference tests (robustness_tests), how many find "
        f"fusion losing significantly less or more ROC-AUC than a single branch ({options.correction}-adjusted "
        f"p < {options.alpha} over the family '{ROBUSTNESS_FAMILY}').",
        "how often fusion loses significantly less / more ROC-AUC than each single branch, on the real shift and "
        "under perturbations",
    )
    return numbers


def _claim_display(numbers: list[dict]) -> pd.DataFrame:
    """The robustness_claim rows as tables/robustness_claim.md and the report.md summary both show them."""
    return pd.DataFrame(
        [
            {
                "scope": r["scope"],
                "evaluation set": r["eval_set"],
                "fusion": r["fusion"],
                "vs": r["branch"],
                "fusion loses significantly less": r["better"],
                "fusion loses significantly more": r["worse"],
                "tests": r["tests"],
            }
            for r in numbers
        ]
    )


def _paper_claim() -> str:
    """The paper's robustness claim, its numbers (zero-shot PASCAL ROC-AUC, single runs) from analysis.paper."""
    pascal = {
        architecture: paper.AUDIOFUSE_RESULTS[
            paper.paper_model({ARCHITECTURE: architecture, "model.fusion": "concat"})
        ]["pascal_roc_auc"]
        for architecture in ("fusion", *SINGLE_BRANCHES)
    }
    return (
        "AudioFuse's claim (the paper's single runs, not this study's): the waveform "
        "(temporal) branch makes fusion robust to domain shift: on PASCAL, fusion keeps ROC-AUC "
        f"{format_value(pascal['fusion'])} where the spectrogram ViT falls to chance "
        f"({format_value(pascal['spectrogram'])}) and the waveform CNN alone holds {format_value(pascal['waveform'])}."
    )


def _claim(
    analysis: _Robustness,
    shift: list[dict],
    tests: list[dict],
    ablation: list[dict],
    carried: list[dict],
    verdicts: list[dict],
) -> list[str]:
    """The paper's claim and what this study's numbers say about it, as Markdown lines.

    Every figure is in a compact table whose rows are rows of the robustness tables, each naming its
    configuration(s), evaluation set and condition.
    """
    lines = [_paper_claim(), ""]
    primary, shifted = analysis.primary, analysis.shifted
    rows = [r for r in shift if r["eval_set"] == shifted]
    if rows:
        table = pd.DataFrame(
            [
                {
                    "configuration": r["configuration"],
                    f"{primary} ROC-AUC [95 % CI]": interval_cell_of(r, "roc_auc_reference"),
                    f"{shifted} ROC-AUC [95 % CI]": interval_cell_of(r, "roc_auc"),
                    "change [95 % CI]": interval_cell_of(r, "change", signed=True),
                }
                for r in rows
            ]
        )
        lines += [
            f"- Domain shift on clean audio, from {primary} to {shifted} ([tables/robustness_shift.md]"
            "(tables/robustness_shift.md)):",
            "",
            _markdown(table),
            "",
        ]
    # the drop-difference tests on the real shift and at each perturbation's highest severity
    highest = {}
    for r in tests:
        key = (r["eval_set"], r["perturbation"])
        highest[key] = max(highest.get(key, r["severity"]), r["severity"])
    order = {e: k for k, e in enumerate(analysis.eval_set_names)}
    branches = {c.name: k for k, c in enumerate(analysis.configurations)}
    chosen = sorted(
        (r for r in tests if r["severity"] == highest[(r["eval_set"], r["perturbation"])]),
        key=lambda r: (
            r["scope"] != "real shift",
            order[r["eval_set"]],
            r["perturbation"],
            branches[r["fusion"]],
            branches[r["branch"]],
        ),
    )
    if chosen:
        lines += [
            "- Does fusion lose less ROC-AUC than each single branch? On the real shift and at each perturbation's "
            "highest severity (every severity: [tables/robustness_tests.md](tables/robustness_tests.md)):",
            "",
            _markdown(pd.DataFrame([_test_display(r, analysis.options.correction) for r in chosen])),
            "",
        ]
    rows = [
        r
        for r in ablation
        if r["eval_set"] in (primary, shifted) and r["perturbation"] == "none" and r["ablation"].endswith("=mean")
    ]
    if rows:
        table = pd.DataFrame(
            [
                {
                    "configuration": r["configuration"],
                    "evaluation set": r["eval_set"],
                    "ablation": r["ablation"],
                    "ROC-AUC intact": format_value(r["roc_auc_intact"]),
                    "ROC-AUC ablated": format_value(r["roc_auc_ablated"]),
                    "drop [95 % CI]": format_interval(r["drop"], r["drop_low"], r["drop_high"], signed=True),
                }
                for r in sorted(rows, key=lambda r: (branches[r["configuration"]], order[r["eval_set"]]))
            ]
        )
        lines += [
            "- Branch ablation of the fusion models on clean audio: one branch's features replaced by their training "
            "mean (drop = intact − ablated ROC-AUC; zeros as well: [tables/robustness_ablation.md]"
            "(tables/robustness_ablation.md)):",
            "",
            _markdown(table),
            "",
        ]
    if carried:
        table = pd.DataFrame(
            [
                {
                    "configuration": r["configuration"],
                    "evaluation set": r["eval_set"],
                    "level": r["level"],
                    "source": r["source"],
                    "drop within the source [95 % CI]": interval_cell_of(r, "drop", signed=True),
                    "pooled drop": format_value(r["pooled_drop"]),
                    "pooled drop without the source": format_value(r["pooled_drop_without_source"]),
                }
                for r in carried
            ]
        )
        lines += [
            "- Sources that carry a pooled ROC-AUC drop (without the source the drop at least halves; "
            "[tables/robustness_per_source.md](tables/robustness_per_source.md)): the perturbation removes a cue "
            "the model used within that source.",
            "",
            _markdown(table),
            "",
        ]
    return lines + _claim_verdict(analysis, tests, verdicts)


def _markdown(table: pd.DataFrame) -> str:
    """A compact table of report.md's section (without to_markdown's closing newline)."""
    return to_markdown(table).rstrip("\n")


def _with_drop(value: float, drop: float) -> str:
    """A ROC-AUC cell with its drop from clean: "0.759 (0.009)"; the ROC-AUC alone on clean audio."""
    return format_value(value) + (f" ({format_value(drop)})" if math.isfinite(drop) else "")


def _claim_verdict(analysis: _Robustness, tests: list[dict], verdicts: list[dict]) -> list[str]:
    """Does fusion lose less ROC-AUC than the spectrogram-only model, on the real shift and under perturbations?

    Each sentence rests on the drop-difference tests (tables/robustness_tests), never on the levels. The real
    shift (a second database, ``shifted``) and the simulated one (perturbations) are judged apart: the paper's
    claim is about the first, and the second cannot stand in for it; a study without perturbations says
    nothing about them. The sentences hold no figure; the counts behind them are ``verdicts``
    (tables/robustness_claim), shown as a table.
    """
    options = analysis.options
    if tests and not verdicts:
        return [
            "**What our numbers say:** nothing yet: with this few resamples no drop-difference test can be "
            f"significant after {options.correction} correction (see the note below); rerun "
            "`python -m analysis robustness` with more resamples.",
            "",
        ]
    if not tests:
        return [
            "**What our numbers say:** not testable here: the study lacks a fusion and a single-branch configuration "
            "evaluated under a shift or a perturbation.",
            "",
        ]
    sentence = f"**What our numbers say** ({options.correction}-adjusted, α = {options.alpha}):"
    shifted = analysis.shifted
    real = [r for r in tests if r["scope"] == "real shift" and r["branch"] == "spectrogram"]
    if real:
        outcomes = {r["verdict"] for r in real}
        sentence += (
            f" On the real shift to {shifted}, fusion loses significantly less ROC-AUC than the spectrogram-only model."
            if outcomes == {"fusion loses less"}
            else f" On the real shift to {shifted}, fusion loses significantly more ROC-AUC than the spectrogram-only "
            "model."
            if "fusion loses more" in outcomes
            else f" On the real shift to {shifted}, fusion's ROC-AUC drop is not distinguishable from the "
            "spectrogram-only model's."
        )
    else:
        sentence += " The study has no real domain shift to judge the claim on."
    perturbed = [r for r in tests if r["scope"] == "perturbation" and r["branch"] == "spectrogram"]
    if perturbed:
        less = sum(r["verdict"] == "fusion loses less" for r in perturbed)
        more = sum(r["verdict"] == "fusion loses more" for r in perturbed)
        how_often = {0: "at no perturbation level", len(perturbed): "at every perturbation level"}
        sentence += (
            " Under the simulated perturbations fusion loses significantly less ROC-AUC than the spectrogram-only "
            f"model {how_often.get(less, 'at some perturbation levels')}"
            + (f", and significantly more {how_often.get(more, 'at some')}." if more else ", and never more.")
        )
    clean_shifted = Condition(shifted)
    intervals = {
        c.name: analysis.interval(c, clean_shifted)
        for c in analysis.configurations
        if clean_shifted in analysis.engine.eval_sets
    }
    below = [name for name, i in intervals.items() if i is not None and i.high < 0.5]
    at_chance = [name for name, i in intervals.items() if i is not None and i.low <= 0.5 <= i.high]
    if below:
        sentence += (
            f" On {shifted} the whole ROC-AUC CI of {', '.join(below)} lies below chance: "
            f"{'it ranks' if len(below) == 1 else 'they rank'} that database's recordings the wrong way round, "
            f"so comparisons there are between failures."
        )
    if at_chance:
        sentence += f" On {shifted} {', '.join(at_chance)} {'is' if len(at_chance) == 1 else 'are'} at chance (the ROC-AUC CI covers 0.5)."
    if real:
        sentence += " Whether fusion's ROC-AUC there beats each branch's is a paper claim, judged under Paper claims."
    return [
        sentence,
        "",
        "- how often fusion loses significantly less / more ROC-AUC than each single branch "
        "([tables/robustness_claim.md](tables/robustness_claim.md)):",
        "",
        _markdown(_claim_display(verdicts)),
        "",
    ]


def _units(analysis: _Robustness) -> str:
    """What the bootstrap draws in each evaluation set: recordings, or whole patients where a set has several
    recordings of one."""
    units = {}
    for condition, eval_set in analysis.engine.eval_sets.items():
        units[condition.eval_set] = resampling_unit(eval_set)
    if len(set(units.values())) == 1:
        return next(iter(units.values()))
    return ", ".join(f"{unit} in {eval_set}" for eval_set, unit in units.items())


def _update_index(out: Path, section: list[str]) -> Path:
    """Put the robustness section into OUT/report.md, replacing an earlier one (creating the file if absent)."""
    path = out / "report.md"
    text = path.read_text() if path.is_file() else f"# Report: study `{out.name}`\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head.rstrip("\n") + "\n" + rest.split(SECTION_END, 1)[1].lstrip("\n")
    return write_text(path, text.rstrip("\n") + "\n\n" + "\n".join([SECTION_START, *section, SECTION_END]) + "\n")


def report_robustness(out: Path, dest: Path | None = None, **options) -> dict:
    """Write the robustness tables, plots and report.md section of the study in ``out``; returns a summary.

    Options (see :class:`analysis.options.AnalysisOptions`): correction ("holm" or "bh"),
    n_resamples (10,000), alpha (0.05), ci_method ("bca" or "percentile"),
    seed, plots. Returns dict with tables and plots (paths), tests (the rows
    of robustness_tests), claim (the section's lines), notes, seconds.
    """
    settings = AnalysisOptions(**options)
    return write_robustness(StudyEngine(Path(out), settings), dest)


def write_robustness(engine: StudyEngine, dest: Path | None = None) -> dict:
    """:func:`report_robustness` on a study the engine holds (the main report's, when it runs this one)."""
    started = time.perf_counter()
    analysis = _Robustness(engine)
    dest = Path(dest) if dest is not None else analysis.out  # where the tables, plots and section go
    writer = ReportWriter(dest)
    _auc_table(analysis, writer)
    shift = _shift_table(analysis, writer)
    tests = _tests_table(analysis, writer)
    verdicts = _verdict_table(analysis, writer, tests)
    ablation = _ablation_table(analysis, writer)
    carried = _per_source_table(analysis, writer)
    if analysis.options.plots:
        _plots(analysis, writer)
    if tests:
        claim = _claim(analysis, shift, tests, ablation, carried, verdicts)
    else:  # nothing to test: one line, not a section of tables that ends in "not testable"
        perturbed = any(p != "none" for (_, p, _, _) in analysis.engine.eval_sets)
        claim = [
            "No fusion-vs-branch test here: the study has no single-branch configuration to set beside fusion"
            + (
                "; each configuration's ROC-AUC under the perturbations, the domain shift and the branch ablations "
                "are in the tables below."
                if perturbed
                else " and no perturbations; the domain-shift and branch-ablation figures are in the tables below."
            ),
            "",
        ]
    seconds = time.perf_counter() - started
    section = (
        ["## Robustness", "", *claim]
        + writer.table_links()
        + writer.plot_links()
        + [f"- note: {n}" for n in dict.fromkeys(analysis.notes)]
        + [
            "",
            f"Robustness method: {analysis.options.n_resamples} bootstrap resamples of "
            f"{_units(analysis)} (stratified), the same draws for every condition of an evaluation set, with seed "
            f"variation; {analysis.options.ci_method} intervals for ROC-AUC, percentile intervals for paired "
            f"differences; p-values {analysis.options.correction}-adjusted within the family '{ROBUSTNESS_FAMILY}' "
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
        "notes": analysis.notes,
        "seconds": seconds,
    }


def parse_suite_argument(text: str) -> list:
    """A --perturb value (YAML or JSON list of suite entries), validated by parse_perturbation_suite."""
    try:
        suite = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"--perturb is not valid YAML or JSON: {error}") from None
    parse_perturbation_suite(suite)
    return suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a finished study folder, e.g. results/robustness")
    parser.add_argument(
        "--perturb",
        default=None,
        help="re-evaluate every checkpoint on this suite first, e.g. '[{name: codec, codec: opus, severities: [1, 2]}]'",
    )
    parser.add_argument("--device", default="cpu", help="device for re-evaluation (cpu, cuda, auto; default cpu)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="feature worker processes for re-evaluation (default: all cores)"
    )
    add_analysis_arguments(parser)
    args = parser.parse_args(argv)
    try:
        lock = study_lock(
            args.study, "python -m analysis robustness" + (" --perturb" if args.perturb else ""), create=False
        )
        with lock:
            return _run(args)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    try:
        if args.perturb is not None:
            from study.evaluate import reevaluate_study

            suite = parse_suite_argument(args.perturb)
            new = reevaluate_study(args.study, suite, device=args.device, n_jobs=args.jobs)
            print(
                f"re-evaluated {new['trial_id'].nunique()} trials on {len(parse_perturbation_suite(suite))} perturbation "
                f"levels: {len(new)} rows merged into {args.study}/predictions.parquet"
            )
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
