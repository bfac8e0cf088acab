"""Every figure in report.md's summary is one row of one table under tables/ (a report.md that reads on its own).

The tracer parses report.md: every line outside the exempt parts below, and every body row of its compact
tables, that holds a number must name the configuration(s) and evaluation set (and condition) of one row of
one tables/*.csv, and each of its numbers must be a number of that row after the report's rounding. A table
row is read with its lead-in line and header (which name, e.g., the evaluation sets of its columns); only the
row's own cells are checked for numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import paper, report
from tests.test_report import FUSION_MODELS, add_data_checks, binormal, write_study
from tests.test_robustness import break_waveform_within_training_e, write_robustness_study

# Columns that say what a row is about: a summary line must name each of them that the row has.
KEYS = (
    "configuration",
    "a",
    "b",
    "fusion",
    "branch",
    "winner",
    "loser",
    "eval_set",
    "reference_eval_set",
    "source",
    "level",
    "ablation",
)

# The allowed exceptions, each with its reason.
EXEMPT_SECTIONS = {
    "Tables": "the list of table files and what each holds",
    "Plots": "the list of figures and what each shows",
    "Method": "how the numbers are made; its numbers are the method's settings (the carry threshold, α)",
    "Hyperparameter search": "the search's record in study.json, ranked on validation only: no evaluation set",
    "Incomplete": "what an incomplete study lacks (grid points, seeds), from the completeness check",
}
EXEMPT_LINES = (  # a line that starts with the pattern
    (r"# Report: (study )?`", "the title names the study"),
    (r"Generated ", "provenance: the time, the study folder and how many trials were read"),
    (r"- options: ", "the analysis options and the run time, not results"),
    (r"- split of `", "the data split's counts, from study.json's data_info: inputs, not results"),
    (r"- duplicate audio \(", "de-duplication counts, from study.json's data_info: inputs, not results"),
    (r"- note: ", "the analysis' own warnings (resampling floors, conditions left out)"),
    (r"- \[(tables|plots)/", "links to the files with their descriptions"),
    (r"Robustness method: ", "the robustness options and the run time"),
)
OPTION_TOKENS = ((r"α = 0\.\d+", "the significance level: an option, stated in the options line"),)
# A line labelled as the paper's: its numbers are analysis/paper.py's, not a table's.
PAPER_LINE = "AudioFuse's claim (the paper's single runs, not this study's)"

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
N_RESAMPLES = 400


@dataclass
class Item:
    line_number: int
    text: str  # where the numbers are
    context: str  # where the names are: the line itself, or a table row with its lead-in and header


def summary_items(markdown: str) -> list[Item]:
    """The lines and table rows of report.md that must trace (exempt parts left out)."""
    items, section, lead_in, header = [], None, "", None
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("## "):
            section, lead_in, header = line[3:].strip(), "", None
            continue
        if line.startswith("**Incomplete or mismatched study"):
            section = "Incomplete"
        if section in EXEMPT_SECTIONS or not line.strip():
            header = None
            continue
        if line.startswith("|"):
            if header is None:
                header = line  # column labels ("95 % CI", evaluation sets), not figures
            elif not set(line) <= set("|- "):
                items.append(Item(number, line, f"{lead_in}\n{header}\n{line}"))
            continue
        header = None
        if any(re.match(pattern, line) for pattern, _ in EXEMPT_LINES):
            continue
        lead_in = line
        items.append(Item(number, line, line))
    return items


def _names(value: str) -> re.Pattern:
    return re.compile(rf"(?<![\w.=-]){re.escape(value)}(?![\w=-])")


def _numbers(text: str) -> list[str]:
    for pattern, _ in OPTION_TOKENS:
        text = re.sub(pattern, " ", text)
    return NUMBER.findall(text)


def _matches(token: str, value) -> bool:
    """Whether a number as report.md prints it is ``value`` after rounding (a count: an integer cell, exactly)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return False
    if not math.isfinite(value):
        return False
    mantissa, _, exponent = token.lower().partition("e")
    if "." not in mantissa and not exponent:
        return isinstance(value, (int, np.integer)) and value == int(token)
    half_unit = 0.5 * 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))
    return abs(float(value) - float(token)) <= half_unit * (1 + 1e-9) + 1e-12


def load_tables(folder: Path) -> list[tuple[str, dict]]:
    """(table name, row) of every row of every tables/*.csv."""
    return [
        (path.stem, row)
        for path in sorted((folder / "tables").glob("*.csv"))
        for row in pd.read_csv(path).to_dict("records")
    ]


def trace(item: Item, rows: list[tuple[str, dict]], names: set[str]) -> str | None:
    """The table of the row the item names and holds every number of (the row naming most, where several do);
    None where there is none.

    The row's configuration(s), evaluation set(s) and condition must be named in the item's context, and
    every configuration and evaluation set (of ``names``) the item itself names must be one of the row's.
    """
    named = {n for n in names if _names(n).search(item.text)}
    best, best_keys = None, 0
    for name, row in rows:
        keys = [row[k] for k in KEYS if isinstance(row.get(k), str)]
        if len(keys) <= best_keys or not named <= set(keys):
            continue
        if not all(_names(k).search(item.context) for k in keys):
            continue
        text = item.text
        for cell in sorted((v for v in row.values() if isinstance(v, str)), key=len, reverse=True):
            text = _names(cell).sub(" ", text)  # names may hold digits ("MP3 8 kbps", "PhysioNet 2016")
        values = list(row.values())
        if all(any(_matches(token, v) for v in values) for token in _numbers(text)):
            best, best_keys = name, len(keys)
    return best


PAPER_NUMBERS = [v for values in paper.AUDIOFUSE_RESULTS.values() for v in values.values()]


def untraced(folder: Path, markdown: str | None = None) -> tuple[list[str], set[str]]:
    """(the summary lines and rows no table row accounts for, the tables the others were traced to)."""
    markdown = (folder / "report.md").read_text() if markdown is None else markdown
    rows = load_tables(folder)
    names = {
        row[k]
        for table, row in rows
        if table in ("configurations", "resolution")
        for k in ("configuration", "eval_set")
        if k in row
    }
    problems, traced = [], set()
    for item in summary_items(markdown):
        numbers = _numbers(item.text)
        if not numbers:
            continue
        if item.text.startswith(PAPER_LINE):
            if not all(any(_matches(n, v) for v in PAPER_NUMBERS) for n in numbers):
                problems.append(f"line {item.line_number} (the paper's numbers): {item.text}")
            continue
        table = trace(item, rows, names)
        if table is None:
            problems.append(f"line {item.line_number}: {item.text}")
        else:
            traced.add(table)
    return problems, traced


# ---------------------------------------------------------------------------- the studies


def _with_branch_ablations(folder: Path) -> Path:
    """Add each fusion trial's predictions with a branch replaced by its mean: the waveform's costs more."""
    predictions = pd.read_parquet(folder / "predictions.parquet").assign(ablation="none")
    clean = predictions[predictions["perturbation"] == "none"]
    rng = np.random.default_rng(11)
    ablated = [
        clean.assign(ablation=f"{branch}=mean", prob=weight * clean["prob"] + (1 - weight) * rng.random(len(clean)))
        for branch, weight in (("spectrogram", 0.8), ("waveform", 0.3))
    ]
    pd.concat([predictions, *ablated], ignore_index=True).to_parquet(folder / "predictions.parquet", index=False)
    return folder


def _fusion_types(tmp: Path) -> Path:
    """Four fusion types (one carried by training-e), an MP3 level and both branch ablations of each."""
    folder = write_study(
        tmp / "fusion", FUSION_MODELS, axis="model.fusion", baseline="concat", fixed={"model.architecture": "fusion"}
    )
    return _with_branch_ablations(folder)


def _robustness(tmp: Path) -> Path:
    """Spectrogram, waveform and fusion under two MP3 levels with branch ablations; one source breaks."""
    folder, _ = write_robustness_study(tmp / "robustness")
    break_waveform_within_training_e(folder)
    return folder


def _patients(tmp: Path) -> Path:
    """The paper's three models, PASCAL with 4 recordings per patient, and the data checks of study.json."""
    folder = write_study(
        tmp / "clustered",
        {"spectrogram": binormal(0.6), "waveform": binormal(1.0), "fusion": binormal(2.0)},
        axis="model.architecture",
        baseline="fusion",
        fixed={"model.fusion": "concat"},
        n_pascal=160,
        pascal_patient_size=4,
    )
    add_data_checks(folder)
    return folder


STUDIES = {
    "fusion types": (
        _fusion_types,
        {"configurations", "resolution", "summary", "claims", "per_source"},
    ),
    "robustness": (
        _robustness,
        {
            "configurations",
            "resolution",
            "robustness_shift",
            "robustness_tests",
            "robustness_claim",
            "robustness_ablation",
            "robustness_per_source",
        },
    ),
    "patients": (_patients, {"configurations", "resolution", "claims", "robustness_shift", "robustness_tests"}),
}


@pytest.fixture(scope="module", params=list(STUDIES))
def reported(request, tmp_path_factory):
    make, expected = STUDIES[request.param]
    folder = make(tmp_path_factory.mktemp("trace"))
    n_resamples = 1000 if request.param == "robustness" else N_RESAMPLES  # 12 tests: enough for Holm's floor
    report.report_study(folder, n_resamples=n_resamples, plots=False)
    return request.param, folder, expected


def test_every_summary_figure_is_a_row_of_a_table(reported):
    name, folder, expected = reported
    problems, traced = untraced(folder)
    assert not problems, f"{name}: summary figures no table row holds:\n" + "\n".join(problems)
    assert expected <= traced, f"{name}: nothing traced to {sorted(expected - traced)}"
    markdown = (folder / "report.md").read_text()
    if name == "patients":
        assert "| `pascal` | 160 | 80 | 40 | 4 | patient |" in markdown
    if name == "fusion types":  # no single-branch configuration: the robustness section is one line
        section = markdown.split("## Robustness", 1)[1]
        assert "No fusion-vs-branch test here" in section and "waveform=mean |" not in section


def test_an_untraceable_figure_fails_the_trace(reported):
    name, folder, _ = reported
    markdown = (folder / "report.md").read_text()
    interval = re.compile(r"\[([-+]?\d\.\d{3}),")
    row = next(line for line in markdown.splitlines() if line.startswith("| ") and interval.search(line))
    low = interval.search(row).group(1)
    moved = row.replace(f"[{low},", f"[{float(low) + 0.002:+.3f},", 1)
    for mutated, line in (
        (markdown.replace(row, moved, 1), moved),  # a figure off by more than its rounding
        (markdown.replace(row, row + " 0.123 |", 1), row + " 0.123 |"),  # a figure no row holds
        (markdown + "\n- fusion beats the rest by 0.042\n", "- fusion beats the rest by 0.042"),  # names no row
    ):
        problems, _ = untraced(folder, mutated)
        assert len(problems) == 1 and problems[0].endswith(line), (name, problems)
