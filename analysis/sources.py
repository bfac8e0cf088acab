"""The report's per-source breakdown: every metric within each source database, and the source that carries
a configuration's pooled ROC-AUC.

Each source of an evaluation set is resampled on its own (stratified by label, whole patients where
known) from the stream named after the set and the source, the draws the robustness report's per-source
table uses too. A source "carries" a configuration's pooled ROC-AUC (whose CI lies above 0.5) when
removing its recordings lowers the pooled seed-mean ROC-AUC by at least ``carry_drop``, or when the
pooled ROC-AUC lies in that source's 95 % CI while every other source's CI contains 0.5. Where the pooled
ROC-AUC exceeds every source's own by ``carry_drop`` or more no source carries it: the sources differ in
label mix and score level (a between-source confound), flagged on the highest source's row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.output import METRIC_LABELS, MIN_CLASS_RECORDINGS, few_recordings_warning, interval_numbers
from analysis.resampling import Resampled
from analysis.stats import BootstrapCI
from analysis.study_data import EvalSet
from analysis.tables import format_interval, format_value, to_markdown
from analysis.views import ReportView

__all__ = [
    "FLAG_NUMBERS",
    "source_resamplings",
    "auc_without_each_source",
    "between_source_confound",
    "carry_reasons",
    "per_source",
    "per_source_display",
    "per_source_caption",
    "flags_summary",
]

# The numbers of a flagged source that report.md's table shows (tables/per_source columns).
FLAG_NUMBERS = ("pooled_roc_auc", "roc_auc_without_source", "roc_auc", "roc_auc_low", "roc_auc_high")


def source_resamplings(view: ReportView, eval_set: str) -> dict[str, Resampled]:
    """Each source of an evaluation set that holds both classes, resampled on its own."""
    data = view.resampled[eval_set].eval_set
    resamplings = {}
    for source in sorted(set(data.sources)):
        subset = data.subset(data.sources == source, f"{eval_set} / {source}")
        if len(np.unique(subset.binary)) == 2:
            resamplings[source] = view.resample(subset, eval_set, source)
    return resamplings


def auc_without_each_source(data: EvalSet) -> dict[str, np.ndarray]:
    """Every trial's ROC-AUC (T,) on all recordings but one source's, for each source whose removal leaves
    both classes; none with a single source."""
    sources = sorted(set(data.sources))
    if len(sources) < 2:
        return {}
    auc_without = data.auc_by_source(sources, leave_out=True)
    # a column is NaN exactly when the recordings left hold one class
    return {s: auc_without[:, k] for k, s in enumerate(sources) if np.isfinite(auc_without[:, k]).all()}


def between_source_confound(pooled, source_auc: dict, margin: float) -> str | None:
    """The highest-scoring source where the pooled ROC-AUC exceeds every source's own by ``margin`` or more: a
    pooled figure no source shows is the sources' differences (label mix, score level), not one source carrying
    it. None otherwise, or with fewer than two sources that hold both classes."""
    within = {s: i.estimate for s, i in source_auc.items() if i is not None}
    if pooled is None or len(within) < 2:
        return None
    highest = max(within, key=within.get)
    return highest if pooled.estimate - within[highest] >= margin else None


def carry_reasons(
    source: str,
    pooled: BootstrapCI,
    source_auc: dict[str, BootstrapCI],
    auc_without: float | None,
    confounded: str | None,
    drop: float,
) -> tuple[list[str], list[str]]:
    """(why ``source`` is flagged, the same short for report.md's table): the between-source confound on the
    highest source's row, or the rules by which it carries the pooled ROC-AUC; empty lists where it is not.

    ``source_auc`` holds the ROC-AUC within each source with both classes, ``auc_without`` the pooled
    seed-mean ROC-AUC without this source (None where its removal leaves one class).
    """
    reasons, why = [], []
    if confounded == source:  # one row, the highest source's, stands for the confound
        reasons.append(
            f"the pooled ROC-AUC {pooled.estimate:.3f} exceeds every source's own, even this highest one "
            f"by ≥ {drop}: the sources differ in label mix and score level (a between-source confound), "
            "so no one source carries it"
        )
        why.append("between-source confound: the pooled ROC-AUC exceeds every source's own")
    if confounded is not None:
        return reasons, why
    if auc_without is not None and pooled.low > 0.5 and pooled.estimate - auc_without >= drop:
        reasons.append(f"without it the pooled ROC-AUC falls from {pooled.estimate:.3f} to {auc_without:.3f}")
        why.append("the pooled ROC-AUC falls without it")
    others = [s for s in source_auc if s != source]
    own = source_auc.get(source)
    if (
        own is not None
        and others
        and pooled.low > 0.5
        and own.low <= pooled.estimate <= own.high
        and own.low > 0.5
        and all(source_auc[s].low <= 0.5 <= source_auc[s].high for s in others)
    ):
        reasons.append("the pooled ROC-AUC lies in its CI while every other source's CI contains 0.5")
        why.append("the only source above chance, and the pooled ROC-AUC lies in its CI")
    return reasons, why


def per_source(view: ReportView) -> tuple[list[dict], list[str], list[dict]]:
    """The per-source breakdown of every configuration on every evaluation set: (the rows of
    tables/per_source.csv, each row's reasons for its flag ("" for none), the flags: one per flagged row)."""
    numbers, reasons, flags = [], [], []
    for eval_set, resampled in view.resampled.items():
        data = resampled.eval_set
        resamplings = source_resamplings(view, eval_set)
        without = auc_without_each_source(data)
        for configuration in view.configurations:
            _, trial_ids = view.trials_in(configuration, eval_set)
            if not trial_ids:
                continue
            rows = [resampled.rows[t] for t in trial_ids]
            pooled = view.interval(eval_set, configuration, "roc_auc")
            source_auc = {s: view.interval(eval_set, configuration, "roc_auc", r) for s, r in resamplings.items()}
            confounded = between_source_confound(pooled, source_auc, view.options.carry_drop)
            for source in sorted(set(data.sources)):
                mask = data.sources == source
                n, n_pos = int(mask.sum()), int(data.binary[mask].sum())
                warning = few_recordings_warning(n_pos, n - n_pos, view.respiratory)
                # the pooled ROC-AUC without the source matters only where no confound explains the pooled one
                auc_without = float(without[source][rows].mean()) if confounded is None and source in without else None
                row_reasons, why = carry_reasons(
                    source, pooled, source_auc, auc_without, confounded, view.options.carry_drop
                )
                row = {
                    "eval_set": eval_set,
                    "source": source,
                    "n": n,
                    "n_pos": n_pos,
                    "configuration": configuration.name,
                    "unreliable": warning,
                    **interval_numbers("pooled_roc_auc", pooled),
                }
                for metric in view.metrics:
                    within = resamplings.get(source)
                    interval = view.interval(eval_set, configuration, metric, within) if within else None
                    row.update(interval_numbers(metric, interval))
                row["roc_auc_without_source"] = math.nan if auc_without is None else auc_without
                row["between_source_confound"] = confounded is not None
                row["carries_pooled_roc_auc"] = bool(row_reasons) and confounded is None
                numbers.append(row)
                reasons.append("; ".join(row_reasons))
                if row_reasons:
                    flags.append(
                        {
                            "eval_set": eval_set,
                            "configuration": configuration.name,
                            "source": source,
                            "reason": "; ".join(row_reasons),
                            "why": "; ".join(why + [warning] if warning else why),
                            **{k: row[k] for k in FLAG_NUMBERS},
                        }
                    )
    return numbers, reasons, flags


def per_source_display(row: dict, metrics, reasons: str) -> dict:
    """A row of tables/per_source.md, from its numbers and the reasons for its flag ("" for none)."""
    both_classes = 0 < row["n_pos"] < row["n"]  # only then is the source resampled on its own
    display = {
        "evaluation set": row["eval_set"],
        "source": row["source"],
        "n": row["n"],
        "n pos": row["n_pos"],
        "configuration": row["configuration"],
    }
    for metric in metrics:
        cell = format_interval(row[metric], row[f"{metric}_low"], row[f"{metric}_high"])
        display[METRIC_LABELS[metric]] = cell if both_classes else "one class only"
    # a confounded configuration's reasons are on its highest source's row alone
    prefix = "CONFOUND: " if row["between_source_confound"] else "YES: "
    display["carries pooled ROC-AUC"] = prefix + reasons if reasons else ""
    display["intervals"] = row["unreliable"] or "–"
    return display


def per_source_caption(carry_drop: float) -> str:
    return (
        "Per-source breakdown: every metric within each source database, seed mean [95 % CI; recordings (patients "
        "where known) resampled within the source, stratified by label, with seed variation]. 'carries pooled "
        "ROC-AUC' flags a source, where the pooled "
        f"ROC-AUC's CI lies above 0.5, when removing the source lowers the pooled seed-mean ROC-AUC by ≥ {carry_drop}, "
        "or when the pooled ROC-AUC lies inside that source's CI while every other source's CI contains 0.5 "
        f"(chance). 'CONFOUND' marks, on the highest source's row, a pooled ROC-AUC that exceeds every source's own "
        f"by ≥ {carry_drop}: a between-source confound (the sources differ in label mix and score level), where no "
        "source is flagged as carrying it. "
        f"'intervals' marks a source with fewer than {MIN_CLASS_RECORDINGS} recordings of a class: its intervals "
        "rest on too few recordings to be trusted."
    )


def flags_summary(flags: list[dict]) -> list[str]:
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
