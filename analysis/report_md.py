"""report.md of the analysis report: the answer first, then the study, the files and the method.

The summary puts every figure in a compact table with one row per row of a table under ``tables/``
(naming its configuration and evaluation set; ``tests/test_report_trace.py`` checks it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis.claims import claims_summary
from analysis.comparisons import ComparisonRow
from analysis.options import ReportOptions
from analysis.output import METRIC_LABELS, MIN_CLASS_RECORDINGS, ReportWriter, correction_name
from analysis.sources import flags_summary
from analysis.study_data import setting_text
from analysis.tables import format_interval, format_p, to_markdown
from analysis.views import ReportView
from study.io import write_text
from study.results import REPORT_FILE

__all__ = ["second_metric", "summary_display", "best_sentence", "lead_lines", "study_tables", "write_report_md"]


def second_metric(view: ReportView) -> str:
    """The summary's metric beside the compare metric: MCC, or sensitivity where MCC is the compare metric or
    the study has none (the ICBHI score)."""
    return "mcc" if "mcc" in view.metrics and view.compare_metric != "mcc" else "sensitivity"


def summary_display(numbers: list[dict], primary: str, second: str) -> pd.DataFrame:
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


def best_sentence(view: ReportView, eval_set: str, rows: list[ComparisonRow]) -> str:
    """Which configuration scores highest on ``eval_set`` and whether the comparisons tell it from the rest."""
    metric = view.compare_metric
    scored = {c.name: i for c in view.configurations if (i := view.interval(eval_set, c, metric)) is not None}
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
    ahead = [o for o in others if (r := deciding.get(frozenset((best, o)))) and r.adjusted_p < view.options.alpha]
    level = [o for o in others if (r := deciding.get(frozenset((best, o)))) and not r.adjusted_p < view.options.alpha]
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


def lead_lines(view: ReportView, summary: list[dict], rows: list[ComparisonRow], claims: list[dict]) -> list[str]:
    """report.md's opening: the answer in a paragraph, the main table, the significant comparisons."""
    sentences = [s for s in (best_sentence(view, e, rows) for e in view.resampled) if s]
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
    second = second_metric(view)
    significant = [r for r in rows if r.adjusted_p < view.options.alpha]
    lines = [
        "## Summary",
        "",
        " ".join(sentences),
        "",
        "- every configuration on every evaluation set ([tables/summary.md](tables/summary.md)):",
        "",
        to_markdown(summary_display(summary, view.compare_metric, second)).rstrip("\n"),
        "",
    ]
    correction = correction_name(view.options.correction)
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
                f"p ({view.options.correction})": format_p(r.adjusted_p),
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


def study_tables(view: ReportView, configurations: list[dict], resolution: list[dict]) -> list[str]:
    """report.md's compact tables of the configurations and evaluation sets, a row per row of
    tables/configurations and tables/resolution."""
    positive = "not normal" if view.respiratory else "abnormal"
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


def _heading(view: ReportView) -> list[str]:
    """report.md's title, where it comes from, and what an incomplete study lacks."""
    lines = [
        f"# Report: study `{view.name}`"
        if view.out.resolve().name == view.name
        else f"# Report: `{view.out.resolve().name}` (a study of the space `{view.name}`)",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `python -m analysis report` from "
        f"`trials.parquet` ({view.n_trials} trials) and `predictions.parquet` in `{view.out}`.",
        "",
    ]
    if view.problems:
        lines += ["**Incomplete or mismatched study, analysed as it is (`--allow-incomplete`):**", ""]
        lines += [f"- {p}" for p in view.problems] + [""]
    return lines


def _settings(view: ReportView, seconds: float) -> list[str]:
    """The "Study" section's first lines: what kind of study, what varies, what is compared, the options."""
    options = view.options
    return [
        "## Study",
        "",
        f"- study type: {'respiratory (ICBHI, 4 classes)' if view.respiratory else 'heart (binary)'}; "
        f"scale: {view.space.get('scale', '?')}",
        f"- settings that vary: {', '.join(view.varying) or 'none'}; seeds are replicates",
        f"- comparisons: {view.axis} vs baseline `{view.baseline}` on {METRIC_LABELS[view.compare_metric]}"
        if view.baseline is not None
        else "- comparisons: none (the space declares no compare axis in these trials)",
        f"- options: {options.n_resamples} bootstrap resamples and permutations, {options.ci_method} intervals, "
        f"{options.correction} correction, α = {options.alpha}, random seed {options.seed}; took {seconds:.1f} s",
    ]


def _split_checks(state: dict) -> list[str]:
    """A line per dataset whose split study.run checked: recordings, and patients in both train and test."""
    lines = []
    for dataset, check in state.get("data_info", {}).get("split_check", {}).items():
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
    return lines


def _duplicates(state: dict) -> list[str]:
    """A line per data key where duplicate audio was removed from training or scored once."""
    lines = []
    for key, found in state.get("data_info", {}).get("duplicates", {}).items():
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
    return lines


def _search(state: dict) -> list[str]:
    """The hyperparameter search that chose configuration `best`, where the study ran one."""
    search = state.get("search") or {}
    if not search.get("complete"):
        return []
    best = search["best"]
    return [
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


def _method(options: ReportOptions) -> list[str]:
    """report.md's Method section."""
    return [
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


def write_report_md(
    view: ReportView,
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
    lines = _heading(view) + lead
    if claims:
        lines += claims_summary(tables["claims"], view.options.correction)
    lines += _settings(view, seconds)
    lines += [f"- note: {n}" for n in dict.fromkeys(view.notes)]
    lines += _split_checks(view.state) + _duplicates(view.state)
    lines += ["", *study_tables(view, tables["configurations"], tables["resolution"])]
    lines += _search(view.state)
    if flags:
        lines += flags_summary(flags)
    lines += ["## Tables", "", *writer.table_links(), "", "## Plots", "", *writer.plot_links()]
    lines += _method(view.options)
    return write_text(view.dest / REPORT_FILE, "\n".join(lines) + "\n")
