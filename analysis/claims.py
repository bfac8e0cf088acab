"""The paper's claims (:data:`analysis.paper.CLAIMS`) checked against a study, by the paired bootstrap.

A claim ("the winner beats each loser") is an intersection-union test: it holds when every part is
significant in the paper's direction at α, so its p is its parts' largest raw p and the parts need no
adjustment among themselves (Berger 1982, Technometrics 24:295). Across the claims those p-values are
adjusted as one family (:data:`CLAIMS_FAMILY`). A part is contradicted when its 95 % interval excludes
the paper's Δ (for a ranking without numbers, when it lies below 0).

:func:`check_claims` gives the rows of tables/claims.csv (one per part); :func:`claim_display` and
:func:`claims_summary` show them in tables/claims.md and report.md.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import paper, stats
from analysis.comparisons import ComparisonRow
from analysis.output import METRIC_LABELS, correction_name, interval_cell
from analysis.study_data import Configuration, setting_text
from analysis.tables import format_interval, format_p, format_value, to_markdown
from analysis.views import ReportView

__all__ = [
    "CLAIMS_FAMILY",
    "claim_components",
    "part_outcome",
    "claim_part",
    "claim_verdict",
    "check_claims",
    "claim_display",
    "claims_caption",
    "claims_summary",
]

CLAIMS_FAMILY = "paper claims: paired bootstrap, intersection-union per claim"


def _matching(configurations: list[Configuration], claim: paper.Claim, value: str) -> list[Configuration]:
    """The configurations with ``value`` on the claim's axis and the claim's fixed settings."""
    wanted = {claim.axis: value, **claim.fixed}
    return [
        c for c in configurations if all(setting_text(c.settings.get(k)) == setting_text(v) for k, v in wanted.items())
    ]


def _same_but_axis(a: Configuration, b: Configuration, axis: str) -> bool:
    return all(setting_text(a.settings[k]) == setting_text(b.settings.get(k)) for k in a.settings if k != axis)


def claim_components(
    configurations: list[Configuration], claim: paper.Claim
) -> list[tuple[Configuration, Configuration, str]]:
    """(winner, loser, loser's value) for every pair of configurations that checks a part of ``claim``: the
    loser has the same settings as the winner apart from the claim's axis."""
    components = []
    for winner in _matching(configurations, claim, claim.winner):
        for loser_value in claim.losers:
            losers = _matching(configurations, claim, loser_value)
            loser = next((c for c in losers if _same_but_axis(c, winner, claim.axis)), None)
            if loser is not None:
                components.append((winner, loser, loser_value))
    return components


def _at_chance_and_seeds(view: ReportView, eval_set: str, configurations, metric: str) -> list[str]:
    """Notes on a claim part's configurations: a seed-mean ROC-AUC CI that covers 0.5 ("at chance"), and
    intervals that seeds dominate (V_seed > V_rec), with the per-seed values."""
    notes = []
    for configuration in configurations:
        interval = view.interval(eval_set, configuration, metric)
        if interval is None:
            continue
        if metric == "roc_auc" and interval.low <= 0.5 <= interval.high:
            notes.append(f"{configuration.name} at chance ({interval_cell(interval)})")
        if interval.seed_dominated:
            values = ", ".join(format_value(v) for v in view.per_seed(eval_set, configuration, metric))
            notes.append(
                f"{configuration.name}'s seeds vary more than the test set does (per seed: {values}): more seeds needed"
            )
    return notes


def _paper_values_outside(view: ReportView, claim: paper.Claim, configurations) -> list[str]:
    """The paper's values of a part's configurations that lie outside the study's 95 % CI."""
    outside = []
    for configuration in configurations:
        value = paper.paper_value(configuration.settings, claim.eval_set, claim.metric)
        interval = view.interval(claim.eval_set, configuration, claim.metric)
        if value is not None and interval is not None and not interval.low <= value <= interval.high:
            outside.append(f"paper's {configuration.name} {format_value(value)} outside {interval_cell(interval)}")
    return outside


def _winner_minus_loser(view: ReportView, claim: paper.Claim, winner, loser, by_pair: dict) -> tuple:
    """(Δ, low, high, raw p) of winner − loser by the paired bootstrap: the comparisons' row (turned round where
    it compares the loser against the winner, its baseline), else a test of its own."""
    row = by_pair.get((claim.eval_set, loser.name, winner.name, claim.metric))
    if row is not None:
        return -row.difference, -row.high, -row.low, row.p_value
    row = (
        by_pair.get((claim.eval_set, winner.name, loser.name, claim.metric))
        or view.compare(winner, loser, claim.eval_set, (claim.metric,), full=False)[0]
    )
    return row.difference, row.low, row.high, row.p_value


def part_outcome(
    difference: float, low: float, high: float, p_raw: float, paper_gap: float | None, alpha: float
) -> str:
    """A claim part's outcome: "holds" (significant in the paper's direction), "contradicted" (the interval
    excludes the paper's Δ; for a ranking without numbers, lies below 0) or "not resolved"."""
    excluded = not low <= paper_gap <= high if paper_gap is not None else high < 0
    if p_raw < alpha and difference > 0:
        return "holds" + ("; the paper's Δ lies outside the CI" if excluded else "")
    return "contradicted" if excluded else "not resolved"


def claim_part(view: ReportView, claim: paper.Claim, winner, loser, loser_value, by_pair: dict) -> dict:
    """One part of a claim (winner beats loser): Δ, its unadjusted 95 % CI, raw p, and its outcome."""
    difference, low, high, p_raw = _winner_minus_loser(view, claim, winner, loser, by_pair)
    paper_gap = claim.paper_differences.get(loser_value)
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
        "part": part_outcome(difference, low, high, p_raw, paper_gap, view.options.alpha),
        "notes": "; ".join(
            _paper_values_outside(view, claim, (winner, loser))
            + _at_chance_and_seeds(view, claim.eval_set, (winner, loser), claim.metric)
        ),
    }


def claim_verdict(parts: list[dict], adjusted_p: float, n_claims: int, alpha: float, correction: str) -> str:
    """A claim's verdict from its parts (intersection-union) and its p adjusted across the claims."""
    if any(part["part"] == "contradicted" for part in parts):
        return "contradicted"
    if all(part["part"].startswith("holds") for part in parts):
        if adjusted_p < alpha:
            return "holds"
        return f"not resolved after {correction_name(correction)} over {n_claims} claims"
    return "not resolved at this resolution"


def check_claims(view: ReportView, rows: list[ComparisonRow]) -> tuple[list[dict], list[dict]]:
    """Every paper claim the study can check, on the comparisons' paired bootstrap ``rows`` where they hold
    the pair. Returns (claim and verdict of each claim, the rows of tables/claims: one per part)."""
    by_pair = {(r.eval_set, r.a, r.b, r.metric): r for r in rows if r.test == "paired bootstrap"}
    checked = []
    for claim in paper.CLAIMS:
        if claim.eval_set not in view.resampled:
            continue
        components = claim_components(view.configurations, claim)
        if components and len(components) >= len(claim.losers):
            checked.append([claim_part(view, claim, *component, by_pair) for component in components])
    if not checked:
        return [], []
    options = view.options
    claim_p = [max(part["p"] for part in parts) for parts in checked]
    adjusted = stats.adjust_pvalues(claim_p, options.correction)
    numbers, summaries = [], []
    for parts, p_claim, p_adjusted in zip(checked, claim_p, adjusted, strict=True):
        verdict = claim_verdict(parts, p_adjusted, len(checked), options.alpha, options.correction)
        for part in parts:
            part.update(
                claim_p=p_claim,
                claim_adjusted_p=float(p_adjusted),
                correction=options.correction,
                family=CLAIMS_FAMILY,
                family_size=len(checked),
                claim_verdict=verdict,
            )
        numbers += parts
        summaries.append({"claim": parts[0]["claim_text"], "verdict": verdict})
    return summaries, numbers


def _paper_gap_cell(part: dict, without_numbers: str) -> str:
    gap = part["paper_difference"]
    return format_value(gap, 4, signed=True) if math.isfinite(gap) else without_numbers


def _study_gap_cell(part: dict) -> str:
    return format_interval(part["difference"], part["low"], part["high"], signed=True)


def claim_display(part: dict) -> dict:
    """A row of tables/claims.md, from its numbers (a part of :func:`check_claims`)."""
    return {
        "claim": part["claim_text"],
        "claim verdict": part["claim_verdict"],
        "comparison": f"{part['winner']} vs {part['loser']}",
        "evaluation set": part["eval_set"],
        "paper Δ": _paper_gap_cell(part, "> 0 (no numbers)"),
        "study Δ [unadjusted 95 % CI]": _study_gap_cell(part),
        "p (raw)": format_p(part["p"]),
        "part": part["part"],
        "claim p (largest part's)": format_p(part["claim_p"]),
        f"claim p ({part['correction']}, {part['family_size']} claims)": format_p(part["claim_adjusted_p"]),
        "notes": part["notes"],
    }


def claims_caption(alpha: float, correction: str, n_claims: int) -> str:
    return (
        f"The paper's claims against this study (α = {alpha}), by the paired bootstrap. Each claim is an "
        "intersection-union test: every part must be significant in the paper's direction at α (raw p), and the "
        f"claim's p is its parts' largest; the claims' p-values are {correction_name(correction)}-adjusted "
        f"as one family ({n_claims} claims). A claim is contradicted when a part's 95 % CI excludes the paper's "
        "Δ (for a ranking without numbers, when the CI lies below 0); it is not resolved when the CI holds both 0 "
        "and the paper's Δ. Notes: the paper's own values outside the study's CI, configurations at chance (the "
        "ROC-AUC CI covers 0.5), and intervals that seed-to-seed variation dominates."
    )


def claims_summary(parts: list[dict], correction: str) -> list[str]:
    """report.md's table of the paper claims: a row per part (a row of tables/claims), the claim's text, verdict
    and adjusted p on its first part."""
    rows, seen = [], set()
    n_claims = len({part["claim"] for part in parts})
    for part in parts:
        first = part["claim"] not in seen
        seen.add(part["claim"])
        rows.append(
            {
                "claim": part["claim_text"] if first else "",
                "verdict": part["claim_verdict"] if first else "",
                f"claim p ({correction}, {n_claims} claims)": format_p(part["claim_adjusted_p"]) if first else "",
                "comparison": f"{part['winner']} vs {part['loser']}",
                "evaluation set": part["eval_set"],
                "paper Δ": _paper_gap_cell(part, "ranking only"),
                "study Δ [unadjusted 95 % CI]": _study_gap_cell(part),
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
