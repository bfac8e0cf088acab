"""Report figures: ROC curves with pointwise bootstrap bands, a forest plot of paired effects, ROC-AUC vs severity.

Figures are drawn with matplotlib's Agg backend (no display needed) and
written atomically (:func:`study.io.atomic_path`) like the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from study.io import atomic_path  # noqa: E402

__all__ = [
    "FPR_GRID",
    "RocCurve",
    "ForestRow",
    "SeverityCurve",
    "SeverityPanel",
    "roc_tpr_on_grid",
    "save_figure",
    "plot_roc_curves",
    "plot_forest",
    "plot_auc_vs_severity",
]

FPR_GRID = np.linspace(0.0, 1.0, 101)


class RocCurve(NamedTuple):
    label: str
    tpr: np.ndarray  # (G,) seed-mean TPR on the FPR grid, all recordings
    low: np.ndarray  # (G,) pointwise lower band
    high: np.ndarray  # (G,) pointwise upper band


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
    """Write ``figure`` to ``path`` as a 120 dpi PNG, atomically, and close it; returns the path."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
    finally:
        plt.close(figure)
    return path


def plot_roc_curves(path: Path, curves: list[RocCurve], title: str, fpr_grid=FPR_GRID, band_note: str = "") -> Path:
    """One panel: each configuration's seed-mean ROC curve with its shaded pointwise band."""
    if not curves:
        raise ValueError("curves must hold at least one RocCurve")
    figure, axes = plt.subplots(figsize=(6.2, 5.8), layout="constrained")
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for k, curve in enumerate(curves):
        colour = colours(k % colours.N)
        axes.step(fpr_grid, curve.tpr, where="post", color=colour, lw=1.4, label=curve.label)
        axes.fill_between(fpr_grid, curve.low, curve.high, step="post", color=colour, alpha=0.15, lw=0)
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false-positive rate (1 - specificity)",
        ylabel="true-positive rate (sensitivity)",
        title=title,
    )
    axes.legend(loc="lower right", fontsize=7 if len(curves) > 6 else 8)
    if band_note:
        figure.supxlabel(band_note, fontsize=7, wrap=True)
    return save_figure(figure, path)


def plot_forest(
    path: Path, panels: list[tuple[str, list[ForestRow], float | None]], x_label: str, note: str = ""
) -> Path:
    """A forest plot: one panel per evaluation set, one row per comparison.

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
        figsize=(7.0, 1.2 + 0.38 * sum(heights) + 0.6 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
        layout="constrained",
    )
    for axes, (title, rows, resolution) in zip(axes_list[:, 0], panels, strict=True):
        positions = np.arange(len(rows))[::-1]
        if resolution is not None and np.isfinite(resolution):
            axes.axvspan(-resolution, resolution, color="0.9", lw=0, label=f"±{resolution:.3f}: below 80 % power")
        axes.axvline(0, color="grey", lw=1)
        for y_position, row in zip(positions, rows, strict=True):
            axes.plot([row.low, row.high], [y_position, y_position], color="C0", lw=1.6)
            axes.plot(row.estimate, y_position, "o", color="C0", markerfacecolor="C0" if row.significant else "white")
        axes.set_yticks(positions, [row.label for row in rows], fontsize=8)
        axes.set_ylim(-0.7, len(rows) - 0.3)
        axes.set_title(title, fontsize=9)
        if resolution is not None and np.isfinite(resolution):
            axes.legend(loc="best", fontsize=7)
    axes_list[-1, 0].set_xlabel(x_label)
    if note:
        figure.supxlabel(note, fontsize=7, wrap=True)
    return save_figure(figure, path)


def plot_auc_vs_severity(path: Path, panels: list[SeverityPanel], title: str, note: str = "") -> Path:
    """One panel per perturbation: each configuration's seed-mean ROC-AUC over the levels, with its interval band."""
    if not panels:
        raise ValueError("panels must hold at least one SeverityPanel")
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False, sharey=True, layout="constrained"
    )
    for axis, panel in zip(axes[0], panels, strict=True):
        for curve in panel.curves:
            colour = colours(curve.colour % colours.N)
            axis.plot(curve.x, curve.estimate, marker="o", color=colour, lw=1.4, label=curve.label)
            axis.fill_between(curve.x, curve.low, curve.high, color=colour, alpha=0.15, lw=0)
        axis.axhline(0.5, ls=":", color="grey", lw=1)
        axis.set_xticks(range(len(panel.levels)), panel.levels, rotation=30, ha="right", fontsize=7)
        axis.set_title(panel.title, fontsize=9)
    axes[0][0].set_ylabel("ROC-AUC (seed mean)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    figure.suptitle(title, fontsize=10)
    if note:
        figure.supxlabel(note, fontsize=7)
    return save_figure(figure, path)
