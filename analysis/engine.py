"""One analysis engine for a finished study: read once, every condition resampled once, intervals cached.

A condition is an evaluation set under one perturbation at one severity and one test-time branch
ablation (:class:`Condition`; clean audio is perturbation "none", severity 0, ablation "none").
:class:`StudyEngine` reads the study's files once (:func:`analysis.study_data.read_study`), builds
every condition's evaluation set (:func:`analysis.study_data.build_eval_sets`) and resamples each
the first time it is asked for (:func:`analysis.resampling.resample`). Every condition of an
evaluation set draws from the random stream named after that set, so all of them share their
recording draws and differences between conditions are paired. The seed-mean intervals on those
draws are cached per condition, population, configuration and metric.

The report (:mod:`analysis.report`) reads the clean conditions, the robustness report
(:mod:`analysis.robustness`) all of them: two views of one engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis.options import AnalysisOptions
from analysis.resampling import (
    HEART_METRICS,
    RESPIRATORY_METRICS,
    Kernel,
    Resampled,
    heart_kernel,
    named_generator,
    resample,
    respiratory_kernel,
    roc_auc_kernel,
    seed_mean_interval,
)
from analysis.stats import BootstrapCI
from analysis.study_data import (
    Configuration,
    EvalSet,
    StudyError,
    build_eval_sets,
    completeness_problems,
    find_configurations,
    read_study,
)

__all__ = ["CLEAN", "Condition", "with_conditions", "has_robustness_rows", "scored_trials", "StudyEngine"]

CLEAN = ("none", 0, "none")  # (perturbation, severity, ablation) of clean audio
CONDITION_COLUMNS = ["perturbation", "severity", "ablation"]


class Condition(NamedTuple):
    """An evaluation set under one perturbation level and one branch ablation; clean audio by default."""

    eval_set: str
    perturbation: str = "none"
    severity: int = 0
    ablation: str = "none"

    @property
    def clean(self) -> bool:
        return self[1:] == CLEAN


def with_conditions(predictions: pd.DataFrame) -> pd.DataFrame:
    """predictions with the perturbation, severity and ablation columns (clean defaults where a study lacks them)."""
    defaults = dict(zip(CONDITION_COLUMNS, CLEAN, strict=True))
    frame = predictions.assign(**{c: v for c, v in defaults.items() if c not in predictions})
    return frame.astype({"perturbation": str, "severity": "int64", "ablation": str})


def has_robustness_rows(predictions: pd.DataFrame) -> bool:
    """Whether predictions hold any perturbed or branch-ablated row."""
    frame = with_conditions(predictions)
    return bool(((frame["perturbation"] != "none") | (frame["severity"] != 0) | (frame["ablation"] != "none")).any())


def scored_trials(configuration: Configuration, eval_set: EvalSet, seeds=None) -> tuple[list, list[str]]:
    """(seeds, trial ids) of a configuration's trials that scored ``eval_set`` (only ``seeds``, when given), in
    seed order."""
    scored = set(eval_set.trial_ids)
    pairs = [
        (seed, trial_id)
        for seed, trial_id in zip(configuration.seeds, configuration.trial_ids, strict=True)
        if trial_id in scored and (seeds is None or seed in seeds)
    ]
    return [seed for seed, _ in pairs], [trial_id for _, trial_id in pairs]


class StudyEngine:
    """A finished study read once: its configurations, every condition's evaluation set (resampled on first
    use) and the seed-mean intervals on them.

    ``problems`` (what a complete study would have and this one lacks) and ``notes`` (evaluation sets left
    out) are the clean conditions'; ``unanalysable`` maps the (perturbation, severity, ablation) whose
    predictions cannot be analysed to the StudyError that says why.
    """

    def __init__(self, out: Path, options: AnalysisOptions):
        self.out, self.options = Path(out), options
        self.state, self.trials, predictions = read_study(self.out)
        self.space = self.state.get("space", {})
        self.name = self.space.get("name") or self.out.name
        self.respiratory = self.space.get("study") == "respiratory"
        self.metrics = RESPIRATORY_METRICS if self.respiratory else HEART_METRICS
        self.axis = (self.space.get("compare") or {}).get("axis")
        grid = self.space.get("grid") or {}
        self.configurations, self.varying = find_configurations(self.trials, self.axis, grid)
        self.problems = completeness_problems(self.configurations, grid, self.trials)
        self.notes: list[str] = []
        self.unanalysable: dict[tuple, StudyError] = {}
        predictions = with_conditions(predictions)
        self.has_robustness_rows = has_robustness_rows(predictions)
        self.eval_sets = self._build_conditions(predictions)
        self._resampled: dict[Condition, Resampled] = {}
        self._intervals: dict[tuple, BootstrapCI | None] = {}

    def _build_conditions(self, predictions: pd.DataFrame) -> dict[Condition, EvalSet]:
        """Every condition's evaluation set, in the order the predictions first hold each condition."""
        eval_sets = {}
        for level, rows in predictions.groupby(CONDITION_COLUMNS, sort=False):
            level = (level[0], int(level[1]), level[2])
            # what a perturbed condition lacks or skips is the robustness report's business, said as one note
            problems, notes = (self.problems, self.notes) if level == CLEAN else ([], [])
            # build_eval_sets reads clean rows: each condition is handed over as if it were clean audio
            as_clean = rows.assign(**dict(zip(CONDITION_COLUMNS, CLEAN, strict=True)))
            try:
                built = build_eval_sets(self.trials, as_clean, self.configurations, self.respiratory, problems, notes)
            except StudyError as error:
                self.unanalysable[level] = error
                continue
            eval_sets.update({Condition(eval_set.name, *level): eval_set for eval_set in built})
        return eval_sets

    def clean_eval_sets(self) -> list[EvalSet]:
        """The evaluation sets of clean audio; raises the StudyError that kept them from being built."""
        if CLEAN in self.unanalysable:
            raise self.unanalysable[CLEAN]
        eval_sets = [eval_set for condition, eval_set in self.eval_sets.items() if condition.clean]
        if not eval_sets:
            raise StudyError("no evaluation set can be analysed: predictions.parquet has no clean rows")
        return eval_sets

    def kernel(self, eval_set: EvalSet) -> Kernel:
        """Every metric of the study's kind (heart or respiratory) under recording weights."""
        return respiratory_kernel(eval_set) if self.respiratory else heart_kernel(eval_set)

    def resample(self, eval_set: EvalSet, *stream: str, kernel: Callable[[EvalSet], Kernel] | None = None) -> Resampled:
        """``eval_set`` (or a part of it) resampled from the random stream named ``stream``, by ``kernel``
        (default the study's, every metric)."""
        metrics = (kernel or self.kernel)(eval_set)
        return resample(eval_set, metrics, self.options.n_resamples, named_generator(self.options.seed, *stream))

    def resampled(self, condition: Condition) -> Resampled:
        """A condition's evaluation set resampled, on the draws of its evaluation set's stream."""
        if condition not in self._resampled:
            # off clean audio the analysis reads ROC-AUC alone: the threshold metrics would cost time for nothing
            kernel = None if condition.clean else roc_auc_kernel
            self._resampled[condition] = self.resample(self.eval_sets[condition], condition.eval_set, kernel=kernel)
        return self._resampled[condition]

    def interval(
        self,
        configuration: Configuration,
        condition: Condition,
        metric: str = "roc_auc",
        within: Resampled | None = None,
    ) -> BootstrapCI | None:
        """Seed-mean ``metric`` [95 % CI] of a configuration over all its seeds on ``condition``, or on the part
        of it ``within`` holds; None where the condition is absent or the configuration did not score it."""
        if condition not in self.eval_sets:
            return None
        resampled = within or self.resampled(condition)
        key = (condition, resampled.eval_set.name, configuration.name, metric)
        if key not in self._intervals:
            _, trial_ids = scored_trials(configuration, self.eval_sets[condition])
            self._intervals[key] = (
                seed_mean_interval(resampled, trial_ids, metric, self.options.ci_method) if trial_ids else None
            )
        return self._intervals[key]

    def same_recordings(self, a: Condition, b: Condition) -> bool:
        """Whether two conditions scored the same recordings (so their draws coincide)."""
        a, b = self.eval_sets[a], self.eval_sets[b]
        return a.recordings.size == b.recordings.size and bool((a.recordings == b.recordings).all())
