"""The two views of one study engine: the report's and the robustness report's.

:class:`ReportView` is clean audio: every evaluation set of the study, the space's compare axis and its
baseline, each configuration paired with its baseline (:mod:`analysis.comparisons`).
:class:`RobustnessView` is every condition of a heart study: ROC-AUC drops from clean audio and from the
in-domain test set to another database (the real domain shift), and fusion set beside each single
branch. Both read the one :class:`analysis.engine.StudyEngine`, so a figure that both reports show is
computed once, on the same draws.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from analysis import stats
from analysis.comparisons import ComparisonRow, adjust_within_families, comparison_row, paired_tests
from analysis.engine import Condition, StudyEngine, scored_trials
from analysis.options import ReportOptions
from analysis.resampling import CONFIDENCE_LEVEL, Resampled, named_generator, paired_bootstrap
from analysis.study_data import Configuration, StudyError, check_recorded_aucs, setting_text
from study.perturbations import describe, parse_perturbation_suite

__all__ = [
    "HEART_MAIN",
    "RESPIRATORY_MAIN",
    "ARCHITECTURE",
    "SINGLE_BRANCHES",
    "ReportView",
    "DropDifference",
    "RobustnessView",
]

HEART_MAIN = ("roc_auc", "mcc", "f1", "accuracy")  # the report's main metrics, the paper's four
RESPIRATORY_MAIN = ("score", "sensitivity", "specificity", "roc_auc")
ARCHITECTURE = "model.architecture"
SINGLE_BRANCHES = ("spectrogram", "waveform")


class ReportView:
    """The report's view of a study engine: clean audio, the compare axis and its baseline.

    Raises StudyError for a study the report cannot analyse (an incomplete one unless
    ``options.allow_incomplete``) and ValueError for a baseline that is not a value of the axis.
    """

    def __init__(self, engine: StudyEngine, options: ReportOptions, dest: Path | None = None):
        self.engine, self.options = engine, options
        self.out = engine.out
        self.dest = Path(dest) if dest is not None else self.out  # where the report is written
        self.state, self.space, self.name = engine.state, engine.space, engine.name
        self.respiratory, self.metrics = engine.respiratory, engine.metrics
        self.main_metrics = RESPIRATORY_MAIN if self.respiratory else HEART_MAIN
        self.axis = engine.axis
        self.compare_metric = (self.space.get("compare") or {}).get("metric") or "roc_auc"
        if self.compare_metric not in self.metrics:
            raise StudyError(
                f"the space's compare metric {self.compare_metric!r} is not one of the report's metrics {self.metrics}"
            )
        self.configurations, self.varying = engine.configurations, engine.varying
        self.problems = engine.problems
        eval_sets = engine.clean_eval_sets()
        if not self.respiratory:
            check_recorded_aucs(eval_sets, engine.trials, self.configurations)
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
        self.resampled = {e.name: engine.resampled(Condition(e.name)) for e in eval_sets}
        self.primary = next((e.name for e in eval_sets if e.name == "physionet2016:test"), eval_sets[0].name)
        self.pairs = self._pairs()

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

    def _pairs(self) -> list[tuple[Configuration, Configuration]]:
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

    def resample(self, eval_set, *stream: str, kernel=None) -> Resampled:
        """A part of an evaluation set resampled from the random stream named ``stream``
        (:meth:`analysis.engine.StudyEngine.resample`)."""
        return self.engine.resample(eval_set, *stream, kernel=kernel)

    def trials_in(self, configuration: Configuration, eval_set: str, seeds=None) -> tuple[list, list[str]]:
        """(seeds, trial ids) of a configuration that scored ``eval_set`` (optionally only the given seeds)."""
        return scored_trials(configuration, self.resampled[eval_set].eval_set, seeds)

    def interval(
        self, eval_set: str, configuration: Configuration, metric: str, within: Resampled | None = None
    ) -> stats.BootstrapCI | None:
        """Seed-mean ``metric`` of a configuration over all its seeds on ``eval_set`` (or on the part ``within``)."""
        return self.engine.interval(configuration, Condition(eval_set), metric, within)

    def per_seed(self, eval_set: str, configuration: Configuration, metric: str) -> np.ndarray:
        """A configuration's ``metric`` on ``eval_set``, one value per seed it scored, in seed order."""
        resampled = self.resampled[eval_set]
        _, trial_ids = self.trials_in(configuration, eval_set)
        return resampled.point[metric][[resampled.rows[t] for t in trial_ids]]

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
        """Every configuration vs its baseline on every evaluation set, each p adjusted within its family; the
        rows in evaluation-set order."""
        metrics = tuple(dict.fromkeys((self.compare_metric,) + self.main_metrics))
        rows = [row for a, b in self.pairs for e in self.resampled for row in self.compare(a, b, e, metrics, True)]
        order = {name: k for k, name in enumerate(self.resampled)}
        rows.sort(key=lambda r: order[r.eval_set])  # stable: within a set, comparisons keep their order
        options = self.options
        self.notes += adjust_within_families(rows, options.correction, options.alpha, options.n_resamples)
        return rows


class DropDifference(NamedTuple):
    """The paired bootstrap of branch's drop − fusion's between two conditions, over their common seeds."""

    value_a: float  # fusion's seed-mean ROC-AUC at the condition
    value_b: float  # the branch's
    drop_a: float  # fusion's drop from the reference condition
    drop_b: float
    difference: float  # branch's drop − fusion's = (fusion − branch at the condition) − (... at the reference)
    low: float
    high: float
    p_value: float
    n_seeds: int


def _seed_values(resampled: Resampled, trial_ids: list[str], field: str) -> np.ndarray:
    """The trials' ROC-AUC on all recordings ("point", (S,)) or per resample ("per_resample", (S, B))."""
    return getattr(resampled, field)["roc_auc"][[resampled.rows[t] for t in trial_ids]]


class RobustnessView:
    """The robustness report's view of a study engine: every condition of a heart study, the in-domain test
    set (``primary``) and the real domain shift to a second database (``shifted``)."""

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

    def has(self, condition: Condition) -> bool:
        return condition in self.engine.eval_sets

    def conditions(self, eval_set: str, ablation: str = "none") -> list[tuple[str, int]]:
        """(perturbation, severity) of an evaluation set, clean first, then by perturbation and severity."""
        found = {
            (c.perturbation, c.severity)
            for c in self.engine.eval_sets
            if (c.eval_set, c.ablation) == (eval_set, ablation)
        }
        return sorted(found, key=lambda c: (c[0] != "none", c[0], c[1]))

    def ablations(self, eval_set: str) -> list[str]:
        """The branch ablations an evaluation set was scored under, sorted."""
        return sorted({c.ablation for c in self.engine.eval_sets if c.eval_set == eval_set and c.ablation != "none"})

    def trial_ids(self, configuration: Configuration, condition: Condition, seeds=None) -> list[str]:
        return scored_trials(configuration, self.engine.eval_sets[condition], seeds)[1]

    def interval(self, configuration: Configuration, condition: Condition) -> stats.BootstrapCI | None:
        return self.engine.interval(configuration, condition)

    def paired(self, a: Condition, b: Condition) -> bool:
        """Whether two conditions scored the same recordings (so their draws coincide)."""
        return self.engine.same_recordings(a, b)

    def drop(
        self, configuration: Configuration, condition: Condition, reference: Condition
    ) -> tuple[stats.BootstrapCI | None, stats.BootstrapCI | None]:
        """(absolute drop reference − condition, relative drop 1 − condition / reference) of a configuration's
        ROC-AUC, with percentile CIs; (None, None) where the two did not score the same recordings and seeds.

        The relative drop is undefined (NaN, no interval) where the reference ROC-AUC is 0.
        """
        a, b = self.interval(configuration, reference), self.interval(configuration, condition)
        if a is None or b is None or a.n_seeds != b.n_seeds or not self.paired(condition, reference):
            return None, None
        # Seed by seed on the same recording draws, so the seed effects cancel in the drop as they should.
        clean, perturbed = self.engine.resampled(reference), self.engine.resampled(condition)
        trial_ids = self.trial_ids(configuration, condition)
        differences = stats.seed_mean_distribution(
            _seed_values(clean, trial_ids, "per_resample") - _seed_values(perturbed, trial_ids, "per_resample"),
            _seed_values(clean, trial_ids, "point") - _seed_values(perturbed, trial_ids, "point"),
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

    def test_conditions(self) -> list[tuple[Condition, Condition, str]]:
        """(condition, its reference, scope) of every drop-difference test: the real shift (clean audio of another
        database against the in-domain test set), then each perturbation severity against its clean audio."""
        conditions = []
        primary, shifted = Condition(self.primary), Condition(self.shifted)
        if self.shifted and self.has(shifted) and self.has(primary):
            conditions.append((shifted, primary, "real shift"))
        for eval_set in self.eval_set_names:
            for perturbation, severity in self.conditions(eval_set):
                if perturbation != "none":
                    conditions.append(
                        (Condition(eval_set, perturbation, severity), Condition(eval_set), "perturbation")
                    )
        return conditions

    def common_trials(self, a: Configuration, b: Configuration, conditions: tuple) -> list[tuple[list, list]] | None:
        """Per condition, (a's trial ids, b's trial ids) over the seeds both scored in every condition."""
        if not all(self.has(condition) for condition in conditions):
            return None
        scored = [set(self.engine.eval_sets[condition].trial_ids) for condition in conditions]
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
        return [(self.trial_ids(a, condition, seeds), self.trial_ids(b, condition, seeds)) for condition in conditions]

    def drop_difference(
        self, fusion: Configuration, branch: Configuration, condition: Condition, reference: Condition
    ) -> DropDifference | None:
        """Paired bootstrap of the branch's ROC-AUC drop from ``reference`` to ``condition`` minus the fusion's.

        Positive: fusion loses less. It is the difference in differences (fusion − branch at ``condition``) −
        (fusion − branch at ``reference``), seed k paired with seed k. Within one evaluation set both conditions
        share their recording draws; between two databases (the real shift) they are drawn independently.
        """
        trials = self.common_trials(fusion, branch, (condition, reference))
        same_set = condition.eval_set == reference.eval_set
        if trials is None or (same_set and not self.paired(condition, reference)):
            return None
        (fusion_after, branch_after), (fusion_before, branch_before) = trials
        after, before = self.engine.resampled(condition), self.engine.resampled(reference)

        def gap(field):  # fusion − branch after, minus fusion − branch before
            return (_seed_values(after, fusion_after, field) - _seed_values(after, branch_after, field)) - (
                _seed_values(before, fusion_before, field) - _seed_values(before, branch_before, field)
            )

        point = gap("point")
        distribution = stats.seed_mean_distribution(gap("per_resample"), point, (-2.0, 2.0))
        interval = stats.bootstrap_interval(distribution, float(point.mean()), n_seeds=len(fusion_after))

        def mean(resampled, trial_ids):
            return float(_seed_values(resampled, trial_ids, "point").mean())

        fusion_value, branch_value = mean(after, fusion_after), mean(after, branch_after)
        return DropDifference(
            fusion_value,
            branch_value,
            mean(before, fusion_before) - fusion_value,
            mean(before, branch_before) - branch_value,
            interval.estimate,
            interval.low,
            interval.high,
            stats.bootstrap_p_value(distribution),
            len(fusion_after),
        )

    def compare(self, a: Configuration, b: Configuration, condition: Condition) -> stats.PairedBootstrapResult | None:
        """Paired bootstrap of ROC-AUC a − b on one condition over their common seeds."""
        if not self.has(condition):
            return None
        scored = set(self.engine.eval_sets[condition].trial_ids)
        seeds_b = {s for s, t in zip(b.seeds, b.trial_ids, strict=True) if t in scored}
        common = [s for s, t in zip(a.seeds, a.trial_ids, strict=True) if t in scored and s in seeds_b]
        if not common:
            return None
        resampled = self.engine.resampled(condition)
        return paired_bootstrap(
            resampled, self.trial_ids(a, condition, common), self.trial_ids(b, condition, common), "roc_auc"
        )
