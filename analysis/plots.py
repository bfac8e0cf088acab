"""Report figures: ROC curves with the baseline's pointwise bootstrap band, a forest plot of paired effects,
ROC-AUC vs severity, learning curves.

Each figure has a builder (``*_figure``, returning the matplotlib figure, which the tests inspect) and a
``plot_*`` that saves it. Figures are drawn with matplotlib's Agg backend (no display needed), saved at
SAVE_DPI at their own size, and written atomically (:func:`study.io.atomic_path`) like the tables. Every
text is given its size in points explicitly, none below MIN_FONT_PT, so a PNG reads at 100 % zoom.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from study.io import atomic_path  # noqa: E402

__all__ = [
    "FPR_GRID",
    "SAVE_DPI",
    "MIN_FONT_PT",
    "RocCurve",
    "ForestRow",
    "SeverityCurve",
    "SeverityPanel",
    "LearningCurve",
    "LearningPanel",
    "roc_tpr_on_grid",
    "learning_curve",
    "save_figure",
    "roc_figure",
    "plot_roc_curves",
    "forest_figure",
    "plot_forest",
    "severity_figure",
    "plot_auc_vs_severity",
    "learning_curves_figure",
    "plot_learning_curves",
]

FPR_GRID = np.linspace(0.0, 1.0, 101)
SAVE_DPI = 120
# Text sizes in points at the saved size. 8 pt at 120 dpi is 13 px, the smallest a screen at 100 % shows
# legibly; the rest step up from it so titles stand out.
MIN_FONT_PT = 8
NOTE_PT = 8  # the method notes under a figure
TICK_PT = 9  # tick labels, legends, row labels
LABEL_PT = 10  # axis labels, panel titles
TITLE_PT = 11  # a figure's title
MAX_PANELS_PER_ROW = 3  # small multiples wrap onto further rows beyond this


class RocCurve(NamedTuple):
    label: str
    tpr: np.ndarray  # (G,) seed-mean TPR on the FPR grid, all recordings
    low: np.ndarray | None = None  # (G,) pointwise lower band; None: drawn without a band
    high: np.ndarray | None = None  # (G,) pointwise upper band


class ForestRow(NamedTuple):
    label: str
    estimate: float
    low: float
    high: float
    significant: bool


class SeverityCurve(NamedTuple):
    """One configuration's ROC-AUC at the levels of a perturbation it was scored on."""

    label: str
    colour: int  # index into the tab10 palette, the same in every panel for one configuration
    x: np.ndarray  # (k,) positions among the panel's levels
    estimate: Sequence[float]  # (k,)
    low: Sequence[float]  # (k,) interval ends
    high: Sequence[float]


class SeverityPanel(NamedTuple):
    title: str  # the perturbation
    levels: list[str]  # tick labels, clean first
    curves: list[SeverityCurve]


class LearningCurve(NamedTuple):
    """One configuration's per-epoch values over its seeds, and where each seed's early stopping kept its weights."""

    label: str
    colour: int  # index into the palette, the same in every panel for one configuration
    epochs: np.ndarray  # (E,) epochs at least one seed trained
    mean: np.ndarray  # (E,) mean over the seeds that trained that epoch
    low: np.ndarray  # (E,) seed spread: lowest value
    high: np.ndarray  # (E,) highest value
    best: list[tuple[int, float]]  # (best epoch, value there) of each seed


class LearningPanel(NamedTuple):
    y_label: str  # what is plotted: "training loss", "validation ROC-AUC"
    curves: list[LearningCurve]


def roc_tpr_on_grid(y, scores, weights, fpr_grid=FPR_GRID) -> np.ndarray:
    """True-positive rate at fixed false-positive rates, for many weightings of the recordings at once.

    The ROC curve of a weighting is the step curve through its distinct
    thresholds; its TPR at a grid FPR g is the highest TPR reached with
    FPR <= g. Resamples are handled together by offsetting column b's FPRs by
    2b, so one ``np.searchsorted`` finds every (resample, grid point) pair
    (numpy has no batched searchsorted).

    Parameters
    ----------
    y : array (n,), labels 0/1.
    scores : array (S, n), one row per seed, higher = more abnormal.
    weights : array (n, B), recording multiplicities per resample (ones (n, 1) for the data as is);
        every column must weigh at least one positive and one negative.
    fpr_grid : array (G,) of false-positive rates in [0, 1], increasing.

    Returns
    -------
    array (S, G, B) of TPR in [0, 1].
    """
    labels = np.asarray(y, dtype=np.float64)
    values = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64)
    grid = np.asarray(fpr_grid, dtype=np.float64)
    if labels.ndim != 1 or values.shape[1] != labels.size or w.ndim != 2 or w.shape[0] != labels.size:
        raise ValueError(
            f"y (n,), scores (S, n) and weights (n, B) must agree in n, got {labels.shape}, {values.shape}, {w.shape}"
        )
    if grid.ndim != 1 or grid.size == 0 or grid.min() < 0 or grid.max() > 1 or np.any(np.diff(grid) < 0):
        raise ValueError("fpr_grid must be a non-empty increasing 1-D array of rates in [0, 1]")
    n_resamples = w.shape[1]
    offsets = 2.0 * np.arange(n_resamples)
    queries = (grid[None, :] + offsets[:, None]).ravel()
    tpr_on_grid = np.empty((values.shape[0], grid.size, n_resamples))
    for seed, seed_scores in enumerate(values):  # a handful of seeds; resamples are vectorised
        order = np.argsort(-seed_scores, kind="stable")
        ordered = seed_scores[order]
        ordered_weights = w[order]
        # A threshold sits only between distinct scores: keep the last of each run of ties.
        distinct = np.r_[ordered[1:] != ordered[:-1], True]
        true_pos = np.cumsum(ordered_weights * labels[order, None], axis=0)[distinct]
        false_pos = np.cumsum(ordered_weights * (1 - labels[order, None]), axis=0)[distinct]
        zero = np.zeros((1, n_resamples))
        tpr = np.vstack([zero, true_pos / true_pos[-1]])
        fpr = np.vstack([zero, false_pos / false_pos[-1]])
        positions = np.searchsorted((fpr + offsets).T.ravel(), queries, side="right") - 1
        tpr_on_grid[seed] = tpr.T.ravel()[positions].reshape(n_resamples, grid.size).T
    return tpr_on_grid


def save_figure(figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a SAVE_DPI PNG, atomically, and close it; returns the path."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=SAVE_DPI)
    finally:
        plt.close(figure)
    return path


def _palette(n_colours: int):
    return plt.get_cmap("tab10" if n_colours <= 10 else "tab20")


def _label_axes(axes, x_label: str, y_label: str, title: str = "") -> None:
    """Axis labels and title at their sizes; tick labels at TICK_PT, kept on the axes so the ticks matplotlib
    only creates when it draws get that size too."""
    axes.set_xlabel(x_label, fontsize=LABEL_PT)
    axes.set_ylabel(y_label, fontsize=LABEL_PT)
    if title:
        axes.set_title(title, fontsize=LABEL_PT)
    axes.tick_params(labelsize=TICK_PT)


def _title_and_note(figure, title: str, note: str) -> None:
    """A single-panel figure's title, and its note (how to read it) underneath."""
    figure.suptitle(title, fontsize=TITLE_PT, wrap=True)
    if note:
        figure.supxlabel(note, fontsize=NOTE_PT, wrap=True)


def _panel_grid(n_panels: int, panel_size: tuple[float, float], **kwargs):
    """A figure of ``n_panels`` panels, at most MAX_PANELS_PER_ROW a row (a long strip shrinks when shown at a
    page's width); returns (figure, the panels' axes in reading order). The cells left over are hidden."""
    columns = min(n_panels, MAX_PANELS_PER_ROW)
    rows = math.ceil(n_panels / columns)
    width, height = panel_size
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows + 1.2), squeeze=False, layout="constrained", **kwargs
    )
    for unused in axes.flat[n_panels:]:
        unused.set_visible(False)
    return figure, list(axes.flat[:n_panels])


def _shared_legend(figure, axes_list, note: str, extra: dict | None = None) -> None:
    """One legend for all panels, under them: each label once (a configuration has one colour in every panel),
    then ``extra`` (label -> handle) for markers that mean the same everywhere, with ``note`` (how to read the
    figure) as its title: a note of its own under the figure would sit on the legend, both anchored there."""
    entries: dict = {}
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    entries.update(extra or {})
    characters_per_line = int(figure.get_figwidth() * 72 / (0.55 * NOTE_PT))  # a character is about 0.55 em wide
    figure.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncols=min(len(entries), 3),
        fontsize=TICK_PT,
        title=textwrap.fill(note, characters_per_line, break_on_hyphens=False) or None,
        title_fontsize=NOTE_PT,
        frameon=False,
    )


def roc_figure(curves: list[RocCurve], title: str, fpr_grid=FPR_GRID, band_note: str = ""):
    """One panel: each configuration's seed-mean ROC curve; a curve that has a band (the baseline's) is drawn
    thicker with its band shaded, so the bands of similar configurations do not blur into one."""
    if not curves:
        raise ValueError("curves must hold at least one RocCurve")
    figure, axes = plt.subplots(figsize=(6.4, 6.2), layout="constrained")
    colours = _palette(len(curves))
    for k, curve in enumerate(curves):
        colour = colours(k % colours.N)
        banded = curve.low is not None and curve.high is not None
        axes.step(
            fpr_grid, curve.tpr, where="post", color=colour, lw=2.2 if banded else 1.3, label=curve.label, zorder=3
        )
        if banded:
            axes.fill_between(fpr_grid, curve.low, curve.high, step="post", color=colour, alpha=0.2, lw=0)
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.01))
    _label_axes(axes, "false-positive rate (1 - specificity)", "true-positive rate (sensitivity)")
    axes.legend(loc="lower right", fontsize=TICK_PT)
    _title_and_note(figure, title, band_note)
    return figure


def plot_roc_curves(path: Path, curves: list[RocCurve], title: str, fpr_grid=FPR_GRID, band_note: str = "") -> Path:
    return save_figure(roc_figure(curves, title, fpr_grid, band_note), path)


def forest_figure(panels: list[tuple[str, list[ForestRow], float | None]], x_label: str, title: str, note: str = ""):
    """A forest plot: one panel per evaluation set, one row per comparison, one x scale for all panels (they
    show one metric), so effects compare across evaluation sets at a glance.

    ``panels`` holds (title, rows, resolution) where resolution, if given,
    shades ±resolution around 0 (differences the test set cannot resolve).
    Filled markers are significant after correction, hollow ones are not.
    """
    if not panels or not any(rows for _, rows, _ in panels):
        raise ValueError("panels must hold at least one ForestRow")
    heights = [max(len(rows), 1) for _, rows, _ in panels]
    figure, axes_list = plt.subplots(
        len(panels),
        1,
        figsize=(7.5, 1.4 + 0.4 * sum(heights) + 0.6 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    for axes, (panel_title, rows, resolution) in zip(axes_list[:, 0], panels, strict=True):
        positions = np.arange(len(rows))[::-1]
        if resolution is not None and np.isfinite(resolution):
            axes.axvspan(-resolution, resolution, color="0.88", lw=0)
            panel_title += f" (grey: |Δ| < {resolution:.3f}, below 80 % power)"
        axes.grid(axis="x", color="0.93", lw=0.8)  # lines to read each panel against the one scale at the bottom
        axes.set_axisbelow(True)
        axes.axvline(0, color="grey", lw=1)
        for y_position, row in zip(positions, rows, strict=True):
            axes.plot([row.low, row.high], [y_position, y_position], color="C0", lw=1.6)
            axes.plot(row.estimate, y_position, "o", color="C0", markerfacecolor="C0" if row.significant else "white")
        axes.set_yticks(positions, [row.label for row in rows])
        axes.set_ylim(-0.7, len(rows) - 0.3)
        _label_axes(axes, "", "", panel_title)
    axes_list[-1, 0].set_xlabel(x_label, fontsize=LABEL_PT)
    _title_and_note(figure, title, note)
    return figure


def plot_forest(
    path: Path, panels: list[tuple[str, list[ForestRow], float | None]], x_label: str, title: str, note: str = ""
) -> Path:
    return save_figure(forest_figure(panels, x_label, title, note), path)


def severity_figure(panels: list[SeverityPanel], title: str, note: str = ""):
    """One panel per perturbation, on one ROC-AUC scale: each configuration's seed-mean ROC-AUC over the levels,
    with its interval band."""
    if not panels:
        raise ValueError("panels must hold at least one SeverityPanel")
    colours = plt.get_cmap("tab10")
    figure, grid = _panel_grid(len(panels), (3.8, 3.1), sharey=True)
    for axes, panel in zip(grid, panels, strict=True):
        for curve in panel.curves:
            colour = colours(curve.colour % colours.N)
            axes.plot(curve.x, curve.estimate, marker="o", color=colour, lw=1.4, label=curve.label)
            axes.fill_between(curve.x, curve.low, curve.high, color=colour, alpha=0.15, lw=0)
        axes.axhline(0.5, ls=":", color="grey", lw=1)
        axes.set_xticks(range(len(panel.levels)), panel.levels, rotation=30, ha="right", rotation_mode="anchor")
        first_column = axes.get_subplotspec().is_first_col()
        _label_axes(axes, "", "ROC-AUC (seed mean)" if first_column else "", panel.title)
    _shared_legend(figure, grid, note)
    figure.suptitle(title, fontsize=TITLE_PT, wrap=True)
    return figure


def plot_auc_vs_severity(path: Path, panels: list[SeverityPanel], title: str, note: str = "") -> Path:
    return save_figure(severity_figure(panels, title, note), path)


def learning_curve(label: str, colour: int, seeds: list[dict[int, float]], best_epochs: list[int]) -> LearningCurve:
    """A configuration's curve from each seed's {epoch: value}: at each epoch the mean, lowest and highest over
    the seeds that trained it (early stopping ends seeds at different epochs), and each seed's value at its
    best epoch."""
    epochs = sorted(set().union(*seeds))
    values = [[seed[epoch] for seed in seeds if epoch in seed] for epoch in epochs]
    return LearningCurve(
        label,
        colour,
        np.array(epochs),
        np.array([np.mean(v) for v in values]),
        np.array([min(v) for v in values]),
        np.array([max(v) for v in values]),
        [(epoch, seed[epoch]) for seed, epoch in zip(seeds, best_epochs, strict=True)],
    )


def learning_curves_figure(panels: list[LearningPanel], title: str, note: str = ""):
    """One panel per quantity (training loss, the validation monitor) over epochs: each configuration's mean
    over seeds with the seeds' spread shaded, and a star where each seed's early stopping kept its weights."""
    if not panels or not any(panel.curves for panel in panels):
        raise ValueError("panels must hold at least one LearningCurve")
    colours = _palette(1 + max(curve.colour for panel in panels for curve in panel.curves))
    figure, grid = _panel_grid(len(panels), (5.0, 3.6))
    best = {"marker": "*", "ms": 11, "ls": "none", "mec": "black", "mew": 0.6}
    for axes, panel in zip(grid, panels, strict=True):
        for curve in panel.curves:
            colour = colours(curve.colour % colours.N)
            axes.plot(curve.epochs, curve.mean, color=colour, lw=1.6, marker="o", ms=3, label=curve.label)
            # fainter the more configurations overlap, so the spreads do not sum to one opaque block
            alpha = min(0.2, 0.6 / len(panel.curves))
            axes.fill_between(curve.epochs, curve.low, curve.high, color=colour, alpha=alpha, lw=0)
            axes.plot(*zip(*curve.best, strict=True), color=colour, zorder=3, **best)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        _label_axes(axes, "epoch", panel.y_label)
    marker = Line2D([], [], color="0.6", **best)
    _shared_legend(figure, grid, note, {"a seed's best validation epoch (its weights are kept)": marker})
    figure.suptitle(title, fontsize=TITLE_PT, wrap=True)
    return figure


def plot_learning_curves(path: Path, panels: list[LearningPanel], title: str, note: str = "") -> Path:
    return save_figure(learning_curves_figure(panels, title, note), path)
