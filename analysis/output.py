"""What a report writes and how it shows results: the tables and plots of a study folder, listed for report.md,
and the cells of intervals and verdicts."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import markdown
import pandas as pd

from analysis.stats import BootstrapCI
from analysis.tables import format_interval, write_table
from study.io import write_text
from study.results import PLOTS_DIR, REPORT_FILE, REPORT_HTML, TABLES_DIR

__all__ = [
    "MIN_CLASS_RECORDINGS",
    "METRIC_LABELS",
    "ReportWriter",
    "slug",
    "interval_cell",
    "interval_numbers",
    "row_interval_cell",
    "verdict",
    "few_recordings_warning",
    "correction_name",
    "resampling_unit",
    "write_html",
]

MIN_CLASS_RECORDINGS = 10  # a bootstrap interval over fewer recordings of a class is too coarse to trust
METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "mcc": "MCC",
    "f1": "F1",
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "balanced_accuracy": "balanced accuracy",
    "score": "ICBHI Score",
}


class ReportWriter:
    """Writes tables to OUT/tables, names plots in OUT/plots, and keeps each file's description for the index."""

    def __init__(self, out: Path):
        self.tables_dir, self.plots_dir = out / TABLES_DIR, out / PLOTS_DIR
        self.tables: list[tuple[str, str]] = []  # (table name, description)
        self.plots: list[tuple[str, str]] = []  # (file name, description)

    def table(
        self,
        name: str,
        display: pd.DataFrame,
        numbers: pd.DataFrame,
        caption: str,
        description: str,
        notes: list[str] | None = None,
    ) -> None:
        """Write tables/NAME.md, .csv and .tex (see :func:`analysis.tables.write_table`) and list them."""
        write_table(self.tables_dir, name, display, numbers, caption, notes)
        self.tables.append((name, description))

    def plot(self, path: Path, description: str) -> None:
        """List a figure already written to ``path`` (in plots_dir)."""
        self.plots.append((path.name, description))

    def table_paths(self) -> list[str]:
        return [
            str(self.tables_dir / f"{name}.{extension}")
            for name, _ in self.tables
            for extension in ("md", "csv", "tex")
        ]

    def plot_paths(self) -> list[str]:
        return [str(self.plots_dir / name) for name, _ in self.plots]

    def table_links(self) -> list[str]:
        """One Markdown list item per table, linking it from report.md."""
        return [
            f"- [tables/{name}.md](tables/{name}.md) (also `.csv`, `.tex`): {description}"
            for name, description in self.tables
        ]

    def plot_links(self) -> list[str]:
        return [f"- [plots/{name}](plots/{name}): {description}" for name, description in self.plots]


def slug(name: str) -> str:
    """A file-name-safe form of an evaluation set's name ("physionet2016:test" -> "physionet2016-test")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def interval_cell(interval: BootstrapCI | None) -> str:
    """An interval as a table cell, "0.861 [0.832, 0.889]"; "n/a" where there is none."""
    return "n/a" if interval is None else format_interval(interval.estimate, interval.low, interval.high)


def interval_numbers(prefix: str, interval: BootstrapCI | None) -> dict:
    """CSV columns PREFIX, PREFIX_low, PREFIX_high of an interval (NaN where there is none)."""
    if interval is None:
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan}
    return {prefix: interval.estimate, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}


def row_interval_cell(row: dict, prefix: str, signed: bool = False, missing: str = "n/a") -> str:
    """The cell of the interval PREFIX, PREFIX_low, PREFIX_high of a table's numbers (:func:`interval_numbers`);
    ``missing`` where there is none. With the default, the cell :func:`interval_cell` shows of that interval."""
    if not math.isfinite(row[prefix]):
        return missing
    return format_interval(row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"], signed=signed)


def verdict(a: str, b: str, difference: float, p_value: float, alpha: float) -> str:
    """The verdict of a test of a - b at ``alpha``: "a > b", "a < b" or "no significant difference"."""
    if not p_value < alpha:
        return "no significant difference"
    return f"{a} > {b}" if difference > 0 else f"{a} < {b}"


def correction_name(correction: str) -> str:
    """How the tables name a multiple-comparison correction."""
    return "Holm" if correction == "holm" else "Benjamini-Hochberg"


def resampling_unit(eval_set) -> str:
    """What the bootstrap of an evaluation set draws: whole patients where it has several recordings of one."""
    return "patients" if eval_set.groups is not None else "recordings"


def few_recordings_warning(n_pos: int, n_neg: int, respiratory: bool = False) -> str:
    """ "unreliable: ..." where a class has fewer than MIN_CLASS_RECORDINGS recordings (a source's intervals
    then rest on too few to trust), else ""."""
    names = ("not normal", "normal") if respiratory else ("abnormal", "normal")
    few = [f"{count} {name}" for count, name in zip((n_pos, n_neg), names) if count < MIN_CLASS_RECORDINGS]
    return f"unreliable: only {' and '.join(few)} recording(s)" if few else ""


# report.html's look: readable tables at any width; everything else is the markdown's own structure
_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0 1em; }
code { background: #f3f3f3; padding: 0 3px; }
"""
_PLOT_LINK = re.compile(r'(<a href="(plots/[^"]+\.png)">[^<]*</a>)')


def write_html(folder: Path) -> Path:
    """Write FOLDER/report.html from FOLDER/report.md: one self-contained file, the plots embedded beside their
    links, for a reader who does not browse markdown. Python-Markdown renders it; the plots go in as data URIs."""
    text = (folder / REPORT_FILE).read_text()
    body = markdown.markdown(text, extensions=["tables", "sane_lists"])

    def embed(match: re.Match) -> str:
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(1)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}<br><img alt="{match.group(2)}" src="data:image/png;base64,{data}">'

    body = _PLOT_LINK.sub(embed, body)
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "Report")
    title = re.sub(r"[`<>&]", "", title)
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
    return write_text(folder / REPORT_HTML, page)
