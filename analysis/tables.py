"""Table cells and files: "0.861 [0.832, 0.889]" cells, Markdown / CSV / LaTeX written atomically.

A report table is two pandas DataFrames with the same rows: ``display`` holds
the formatted cells (Markdown and LaTeX), ``numbers`` the raw estimates and
interval ends as separate columns (CSV, for anyone re-plotting). Files are
written through :func:`study.io.write_text`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from study.io import write_text

__all__ = ["format_value", "format_interval", "format_p", "to_markdown", "latex_escape", "to_latex", "write_table"]

# Characters that LaTeX reads as commands, and the few non-ASCII symbols the tables use.
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
    "ρ": r"$\rho$",
    "α": r"$\alpha$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "−": "-",
    "±": r"$\pm$",
    "…": r"\ldots{}",
}


def format_value(value: float, digits: int = 3, signed: bool = False) -> str:
    """A number with ``digits`` decimals ("+0.041" when ``signed``); "n/a" for NaN or None."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_interval(estimate: float, low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    """An estimate with its interval: "0.861 [0.832, 0.889]" (or "+0.041 [+0.012, +0.070]")."""
    if estimate is None or not math.isfinite(estimate):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return format_value(estimate, digits, signed)
    return f"{format_value(estimate, digits, signed)} [{format_value(low, digits, signed)}, {format_value(high, digits, signed)}]"


def format_p(p: float) -> str:
    """A p-value: three decimals down to 0.001, then scientific ("2.0e-04")."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of every cell as text (tabulate is not a dependency)."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex_escape(text) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in str(text))


def to_latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs ``table`` environment (needs \\usepackage{booktabs}); every cell escaped."""
    columns = "l" * len(frame.columns)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{label}}}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in frame.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    folder: Path, name: str, display: pd.DataFrame, numbers: pd.DataFrame, caption: str, notes: list[str] | None = None
) -> list[Path]:
    """Write ``folder/name.md`` (caption, table, notes), ``name.csv`` (numbers) and ``name.tex``.

    Returns the three paths.
    """
    if not isinstance(display, pd.DataFrame) or not isinstance(numbers, pd.DataFrame):
        raise TypeError(
            f"display and numbers must be pandas DataFrames, got {type(display).__name__} and {type(numbers).__name__}"
        )
    if len(display) != len(numbers):
        raise ValueError(
            f"display and numbers of table {name!r} must have the same rows, got {len(display)} and {len(numbers)}"
        )
    folder = Path(folder)
    notes = notes or []
    markdown = f"**{caption}**\n\n" + (to_markdown(display) if len(display.columns) else "(empty)\n")
    if notes:
        markdown += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    latex = to_latex(display, caption + (" " + " ".join(notes) if notes else ""), name)
    return [
        write_text(folder / f"{name}.md", markdown),
        write_text(folder / f"{name}.csv", numbers.to_csv(index=False)),
        write_text(folder / f"{name}.tex", latex),
    ]
