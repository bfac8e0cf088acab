"""The robustness section of report.md: the paper's claim and what the study's numbers say about it.

Every figure is in a compact table whose rows are rows of the robustness tables
(``tables/robustness_*``), each naming its configuration(s), evaluation set and condition
(``tests/test_report_trace.py`` checks it); the verdict sentences rest on the drop-difference tests,
never on the levels, and hold no figure of their own.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import paper
from analysis.engine import Condition
from analysis.output import resampling_unit, row_interval_cell
from analysis.tables import format_interval, format_p, format_value, to_markdown
from analysis.views import ARCHITECTURE, SINGLE_BRANCHES, RobustnessView

__all__ = ["test_display", "claim_display", "claim_lines", "no_test_lines", "units"]


def test_display(r: dict, correction: str) -> dict:
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


def claim_display(numbers: list[dict]) -> pd.DataFrame:
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
    """The paper's robustness claim, its numbers (zero-shot PASCAL ROC-AUC, single runs) from view.paper."""
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


def _shift_summary(view: RobustnessView, shift: list[dict]) -> list[str]:
    """The robustness_shift rows of the shifted database as a compact table."""
    primary, shifted = view.primary, view.shifted
    rows = [r for r in shift if r["eval_set"] == shifted]
    if not rows:
        return []
    table = pd.DataFrame(
        [
            {
                "configuration": r["configuration"],
                f"{primary} ROC-AUC [95 % CI]": row_interval_cell(r, "roc_auc_reference", missing="–"),
                f"{shifted} ROC-AUC [95 % CI]": row_interval_cell(r, "roc_auc", missing="–"),
                "change [95 % CI]": row_interval_cell(r, "change", signed=True, missing="–"),
            }
            for r in rows
        ]
    )
    return [
        f"- Domain shift on clean audio, from {primary} to {shifted} ([tables/robustness_shift.md]"
        "(tables/robustness_shift.md)):",
        "",
        _markdown(table),
        "",
    ]


def _tests_summary(view: RobustnessView, tests: list[dict]) -> list[str]:
    """The drop-difference tests on the real shift and at each perturbation's highest severity."""
    highest = {}
    for r in tests:
        key = (r["eval_set"], r["perturbation"])
        highest[key] = max(highest.get(key, r["severity"]), r["severity"])
    order = {e: k for k, e in enumerate(view.eval_set_names)}
    branches = {c.name: k for k, c in enumerate(view.configurations)}
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
    if not chosen:
        return []
    return [
        "- Does fusion lose less ROC-AUC than each single branch? On the real shift and at each perturbation's "
        "highest severity (every severity: [tables/robustness_tests.md](tables/robustness_tests.md)):",
        "",
        _markdown(pd.DataFrame([test_display(r, view.options.correction) for r in chosen])),
        "",
    ]


def _ablation_summary(view: RobustnessView, ablation: list[dict]) -> list[str]:
    """The robustness_ablation rows of clean audio with a branch replaced by its training mean, on the in-domain
    test set and the shifted database."""
    rows = [
        r
        for r in ablation
        if r["eval_set"] in (view.primary, view.shifted)
        and r["perturbation"] == "none"
        and r["ablation"].endswith("=mean")
    ]
    if not rows:
        return []
    order = {e: k for k, e in enumerate(view.eval_set_names)}
    configurations = {c.name: k for k, c in enumerate(view.configurations)}
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
            for r in sorted(rows, key=lambda r: (configurations[r["configuration"]], order[r["eval_set"]]))
        ]
    )
    return [
        "- Branch ablation of the fusion models on clean audio: one branch's features replaced by their training "
        "mean (drop = intact − ablated ROC-AUC; zeros as well: [tables/robustness_ablation.md]"
        "(tables/robustness_ablation.md)):",
        "",
        _markdown(table),
        "",
    ]


def _carried_summary(carried: list[dict]) -> list[str]:
    """The robustness_per_source rows of sources that carry a pooled drop."""
    if not carried:
        return []
    table = pd.DataFrame(
        [
            {
                "configuration": r["configuration"],
                "evaluation set": r["eval_set"],
                "level": r["level"],
                "source": r["source"],
                "drop within the source [95 % CI]": row_interval_cell(r, "drop", signed=True, missing="–"),
                "pooled drop": format_value(r["pooled_drop"]),
                "pooled drop without the source": format_value(r["pooled_drop_without_source"]),
            }
            for r in carried
        ]
    )
    return [
        "- Sources that carry a pooled ROC-AUC drop (without the source the drop at least halves; "
        "[tables/robustness_per_source.md](tables/robustness_per_source.md)): the perturbation removes a cue "
        "the model used within that source.",
        "",
        _markdown(table),
        "",
    ]


def claim_lines(
    view: RobustnessView,
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
    return (
        [_paper_claim(), ""]
        + _shift_summary(view, shift)
        + _tests_summary(view, tests)
        + _ablation_summary(view, ablation)
        + _carried_summary(carried)
        + _claim_verdict(view, tests, verdicts)
    )


def _markdown(table: pd.DataFrame) -> str:
    """A compact table of report.md's section (without to_markdown's closing newline)."""
    return to_markdown(table).rstrip("\n")


def _with_drop(value: float, drop: float) -> str:
    """A ROC-AUC cell with its drop from clean: "0.759 (0.009)"; the ROC-AUC alone on clean audio."""
    return format_value(value) + (f" ({format_value(drop)})" if math.isfinite(drop) else "")


def _real_shift_sentence(tests: list[dict], shifted: str) -> str:
    """Fusion's drop against the spectrogram-only model's on the real shift, by the drop-difference tests."""
    real = [r for r in tests if r["scope"] == "real shift" and r["branch"] == "spectrogram"]
    if not real:
        return " The study has no real domain shift to judge the claim on."
    outcomes = {r["verdict"] for r in real}
    if outcomes == {"fusion loses less"}:
        return (
            f" On the real shift to {shifted}, fusion loses significantly less ROC-AUC than the spectrogram-only model."
        )
    if "fusion loses more" in outcomes:
        return (
            f" On the real shift to {shifted}, fusion loses significantly more ROC-AUC than the spectrogram-only model."
        )
    return f" On the real shift to {shifted}, fusion's ROC-AUC drop is not distinguishable from the spectrogram-only model's."


def _perturbations_sentence(tests: list[dict]) -> str:
    """How often fusion loses less (and more) than the spectrogram-only model under the perturbations; "" for
    a study without them."""
    perturbed = [r for r in tests if r["scope"] == "perturbation" and r["branch"] == "spectrogram"]
    if not perturbed:
        return ""
    less = sum(r["verdict"] == "fusion loses less" for r in perturbed)
    more = sum(r["verdict"] == "fusion loses more" for r in perturbed)
    how_often = {0: "at no perturbation level", len(perturbed): "at every perturbation level"}
    return (
        " Under the simulated perturbations fusion loses significantly less ROC-AUC than the spectrogram-only "
        f"model {how_often.get(less, 'at some perturbation levels')}"
        + (f", and significantly more {how_often.get(more, 'at some')}." if more else ", and never more.")
    )


def _chance_sentence(view: RobustnessView) -> str:
    """The configurations whose ROC-AUC CI on clean audio of the shifted database lies below or around 0.5."""
    shifted = view.shifted
    condition = Condition(shifted)
    intervals = {c.name: view.interval(c, condition) for c in view.configurations if view.has(condition)}
    below = [name for name, i in intervals.items() if i is not None and i.high < 0.5]
    at_chance = [name for name, i in intervals.items() if i is not None and i.low <= 0.5 <= i.high]
    sentence = ""
    if below:
        sentence += (
            f" On {shifted} the whole ROC-AUC CI of {', '.join(below)} lies below chance: "
            f"{'it ranks' if len(below) == 1 else 'they rank'} that database's recordings the wrong way round, "
            f"so comparisons there are between failures."
        )
    if at_chance:
        verb = "is" if len(at_chance) == 1 else "are"
        sentence += f" On {shifted} {', '.join(at_chance)} {verb} at chance (the ROC-AUC CI covers 0.5)."
    return sentence


def _claim_verdict(view: RobustnessView, tests: list[dict], verdicts: list[dict]) -> list[str]:
    """Does fusion lose less ROC-AUC than the spectrogram-only model, on the real shift and under perturbations?

    Each sentence rests on the drop-difference tests (tables/robustness_tests), never on the levels. The real
    shift (a second database, ``shifted``) and the simulated one (perturbations) are judged apart: the paper's
    claim is about the first, and the second cannot stand in for it; a study without perturbations says
    nothing about them. The sentences hold no figure; the counts behind them are ``verdicts``
    (tables/robustness_claim), shown as a table.
    """
    options = view.options
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
    sentence = (
        f"**What our numbers say** ({options.correction}-adjusted, α = {options.alpha}):"
        + _real_shift_sentence(tests, view.shifted)
        + _perturbations_sentence(tests)
        + _chance_sentence(view)
    )
    if any(r["scope"] == "real shift" and r["branch"] == "spectrogram" for r in tests):
        sentence += " Whether fusion's ROC-AUC there beats each branch's is a paper claim, judged under Paper claims."
    return [
        sentence,
        "",
        "- how often fusion loses significantly less / more ROC-AUC than each single branch "
        "([tables/robustness_claim.md](tables/robustness_claim.md)):",
        "",
        _markdown(claim_display(verdicts)),
        "",
    ]


def units(view: RobustnessView) -> str:
    """What the bootstrap draws in each evaluation set: recordings, or whole patients where a set has several
    recordings of one."""
    units = {}
    for condition, eval_set in view.engine.eval_sets.items():
        units[condition.eval_set] = resampling_unit(eval_set)
    if len(set(units.values())) == 1:
        return next(iter(units.values()))
    return ", ".join(f"{unit} in {eval_set}" for eval_set, unit in units.items())


def no_test_lines(view: RobustnessView) -> list[str]:
    """The section's one line where nothing can be tested, instead of tables that end in "not testable"."""
    perturbed = any(condition.perturbation != "none" for condition in view.engine.eval_sets)
    return [
        "No fusion-vs-branch test here: the study has no single-branch configuration to set beside fusion"
        + (
            "; each configuration's ROC-AUC under the perturbations, the domain shift and the branch ablations "
            "are in the tables below."
            if perturbed
            else " and no perturbations; the domain-shift and branch-ablation figures are in the tables below."
        ),
        "",
    ]
