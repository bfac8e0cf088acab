"""The report's figures read at 100 % zoom: every text at least MIN_FONT_PT at the saved size, a sane PNG size,
small multiples wrapped at three a row, one x scale in the forest plot, a band for the baseline's ROC only."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text
from PIL import Image

from analysis import plots
from analysis.plots import (
    FPR_GRID,
    ForestRow,
    LearningPanel,
    RocCurve,
    SeverityCurve,
    SeverityPanel,
    learning_curve,
)

LONG_NOTE = "Lines: the mean over seeds; shaded: the spread over seeds; a note long enough to wrap over two lines. " * 2


def _roc():
    curves = [
        RocCurve(f"configuration_{k}: 0.768 [0.713, 0.818]", np.sqrt(FPR_GRID) ** (1 + k / 4)) for k in range(1, 5)
    ]
    baseline = np.sqrt(FPR_GRID)
    curves.insert(0, RocCurve("concat (baseline): 0.768 [0.713, 0.818]", baseline, baseline * 0.9, baseline))
    return plots.roc_figure(curves, "fusion: ROC on physionet2016:test (n = 297, 151 abnormal)", band_note=LONG_NOTE)


def _forest():
    rows = [ForestRow(f"configuration_{k} vs concat", 0.01 * k, -0.05, 0.05 + 0.01 * k, k == 2) for k in range(4)]
    wide = [ForestRow(f"configuration_{k} vs concat", -0.1, -0.35, 0.12, False) for k in range(4)]
    return plots.forest_figure(
        [("physionet2016:test", rows, 0.035), ("pascal", wide, 0.065)],
        "Δ ROC-AUC (configuration − baseline)",
        "fusion: Δ ROC-AUC of each configuration vs the baseline model.fusion = concat",
        note="Paired bootstrap, 95 % percentile CI (unadjusted); filled: adjusted p < 0.05 (holm).",
    )


def _severity(n_panels: int = 6):
    levels = ["clean", "MP3 64 kbps", "MP3 32 kbps", "MP3 16 kbps", "MP3 8 kbps"]
    x = np.arange(len(levels))
    curves = [SeverityCurve(name, k, x, [0.7] * 5, [0.6] * 5, [0.8] * 5) for k, name in enumerate(("a", "b", "c"))]
    panels = [SeverityPanel(f"perturbation_{k}", levels, curves) for k in range(n_panels)]
    return plots.severity_figure(panels, "robustness: ROC-AUC vs severity on physionet2016:test", LONG_NOTE)


def _learning():
    best_epochs = [5, 1, 3]
    seeds = [{e: 1 / e + s / 10 for e in range(1, best + 5)} for s, best in enumerate(best_epochs)]
    curves = [learning_curve(f"configuration_{k} (3 seeds)", k, seeds, best_epochs) for k in range(5)]
    return plots.learning_curves_figure(
        [LearningPanel("training loss", curves), LearningPanel("validation ROC-AUC", curves)],
        "fusion: training loss and validation ROC-AUC per epoch",
        LONG_NOTE,
    )


FIGURES = {"roc": _roc, "forest": _forest, "severity": _severity, "learning_curves": _learning}


@pytest.mark.parametrize("name", FIGURES)
def test_every_text_is_readable_at_the_saved_size(name, tmp_path):
    figure = FIGURES[name]()
    figure.canvas.draw()  # ticks and wrapped notes exist only once the figure is drawn
    texts = [
        t
        for t in figure.findobj(Text)
        if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible())
    ]
    small = {t.get_text()[:40]: t.get_fontsize() for t in texts if t.get_fontsize() < plots.MIN_FONT_PT}
    assert not small, f"{name}: text below {plots.MIN_FONT_PT} pt: {small}"
    assert len(texts) > 10  # tick labels, titles and legend entries were all found
    width_in, height_in = figure.get_size_inches()
    path = plots.save_figure(figure, tmp_path / f"{name}.png")
    width, height = Image.open(path).size
    assert (width, height) == (round(width_in * plots.SAVE_DPI), round(height_in * plots.SAVE_DPI))
    assert 600 <= width <= 1600 and 500 <= height <= 1400, (name, width, height)  # fits a screen at 100 %


def test_small_multiples_wrap_at_three_a_row():
    for n_panels, shape in ((2, (1, 2)), (3, (1, 3)), (5, (2, 3)), (6, (2, 3))):
        figure = _severity(n_panels)
        shown = [a for a in figure.axes if a.get_visible()]
        geometry = shown[0].get_subplotspec().get_geometry()[:2]
        assert (len(shown), geometry) == (n_panels, shape)
        assert {round(a.get_ylim()[1], 6) for a in shown} == {round(shown[0].get_ylim()[1], 6)}  # one y scale
        plots.plt.close(figure)


def test_forest_panels_share_one_x_scale_and_name_the_baseline():
    figure = _forest()
    figure.canvas.draw()
    limits = {tuple(np.round(a.get_xlim(), 9)) for a in figure.axes}
    assert len(limits) == 1
    low, high = limits.pop()
    assert low <= -0.35 and high >= 0.12  # the wider panel's interval fits the shared scale
    assert "baseline model.fusion = concat" in figure.get_suptitle()
    plots.plt.close(figure)


def test_only_the_baseline_roc_curve_has_a_band():
    figure = _roc()
    bands = [c for c in figure.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    assert len(figure.axes[0].get_legend().get_texts()) == 5  # every configuration stays in the legend
    plots.plt.close(figure)


def test_learning_curve_spread_is_over_the_seeds_that_trained_each_epoch():
    seeds = [{1: 1.0, 2: 0.5, 3: 0.4}, {1: 0.8, 2: 0.7}, {1: 0.6}]
    curve = learning_curve("concat (3 seeds)", 0, seeds, [3, 1, 1])
    assert curve.epochs.tolist() == [1, 2, 3]
    np.testing.assert_allclose(curve.mean, [0.8, 0.6, 0.4])
    np.testing.assert_allclose(curve.low, [0.6, 0.5, 0.4])
    np.testing.assert_allclose(curve.high, [1.0, 0.7, 0.4])
    assert curve.best == [(3, 0.4), (1, 0.8), (1, 0.6)]
