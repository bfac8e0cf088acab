"""The analysis report on small fake study folders in study.run's exact file format."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as sps
from sklearn.metrics import roc_auc_score, roc_curve

from analysis import comparisons, paper, report, resampling, stats
from analysis.__main__ import main as analysis_main
from analysis.plots import FPR_GRID, roc_tpr_on_grid
from analysis.study_data import REQUIRED_FILES, EvalSet, StudyError
from study.metrics import icbhi_scores
from study.results import fake_study

N_RESAMPLES = 400
FAST = {"n_resamples": N_RESAMPLES, "plots": False}  # for tests that do not look at the figures
SEEDS = (0, 1, 2)
PHYSIONET = "physionet2016:test"
CLEAN = ("none", 0, "none")
CELL = re.compile(r"^-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]$")


def _recordings(rng, n: int, sources: tuple[str, ...], prefix: str, abnormal: dict | None = None) -> pd.DataFrame:
    """n recordings, the same number in each source, half abnormal within each source (or the share ``abnormal``
    gives a source)."""
    per_source = n // len(sources)
    source = np.repeat(sources, per_source)
    shares = [(abnormal or {}).get(s, 0.5) for s in sources]
    label = np.concatenate(
        [
            np.r_[np.zeros(per_source - round(share * per_source)), np.ones(round(share * per_source))]
            for share in shares
        ]
    )
    return pd.DataFrame(
        {
            "recording_id": [f"{prefix}{i:03d}" for i in range(len(source))],
            "source": source,
            "label": label.astype(np.int8),
            "difficulty": rng.standard_normal(len(source)),
        }
    )


def write_study(
    folder,
    models: dict,
    *,
    axis: str,
    baseline: str,
    seeds=SEEDS,
    fixed: dict | None = None,
    n_test: int = 120,
    n_pascal: int = 40,
    seed: int = 0,
    pascal_patient_size: int = 1,
    pascal_abnormal: dict | None = None,
):
    """A finished heart study: ``models`` maps an axis value to f(recordings, seed, rng) -> P(abnormal).

    Every trial also gets perturbed rows (which the report must ignore) and
    trials.parquet carries each trial's metrics as study.run writes them (:func:`study.results.fake_study`). With
    ``pascal_patient_size`` k > 1, PASCAL's recordings come k per patient
    (``group``), each patient's recordings sharing their difficulty.
    """
    rng = np.random.default_rng(seed)
    fixed = fixed or {}
    sets = {
        PHYSIONET: _recordings(
            rng, n_test, ("training-a", "training-b", "training-c", "training-d", "training-e", "training-f"), "p"
        ),
        "pascal": _recordings(rng, n_pascal, ("set_a", "set_b"), "q", pascal_abnormal),
    }
    patient = np.arange(n_pascal) // pascal_patient_size
    sets["pascal"]["group"] = [f"patient{k}" for k in patient]
    sets["pascal"]["difficulty"] = sets["pascal"]["difficulty"].to_numpy()[patient * pascal_patient_size]
    sets[PHYSIONET]["group"] = sets[PHYSIONET]["recording_id"]

    def predict(settings, seed_value, name, table, condition):
        if condition == CLEAN:
            return models[settings[axis]](table, seed_value, name)
        return rng.random(len(table))  # perturbed rows, which the report must ignore

    space = {
        "name": folder.name,
        "scale": "cpu",
        "study": "heart",
        "fixed": fixed,
        "grid": {axis: list(models), "seed": list(seeds)},
        "compare": {"axis": axis, "baseline": baseline, "metric": "roc_auc"},
    }
    return fake_study(
        folder,
        space=space,
        configurations={value: {axis: value, **fixed} for value in models},
        seeds=seeds,
        recordings=sets,
        predict=predict,
        conditions=(CLEAN, ("codec:mp3", 2, "none")),
    )


def binormal(separation: float):
    """A model whose scores separate the classes by ``separation``, with per-seed noise; deterministic per seed."""

    def model(table, seed, name):
        noise = np.random.default_rng([seed, len(name)]).standard_normal(len(table))
        return special.expit(
            separation * (table["label"].to_numpy() - 0.5) + 0.6 * table["difficulty"].to_numpy() + 0.5 * noise
        )

    return model


def only_training_e(table, seed, name):
    """Separates the classes within training-e only; chance everywhere else."""
    noise = np.random.default_rng([seed, 99, len(name)]).standard_normal(len(table))
    inside = (table["source"] == "training-e").to_numpy()
    return special.expit(np.where(inside, 6 * (table["label"].to_numpy() - 0.5), 0.0) + 0.3 * noise)


FUSION_MODELS = {
    "concat": binormal(0.8),
    "film": binormal(3.5),
    "sum": binormal(0.8),
    "cross_attention": only_training_e,
}


@pytest.fixture(scope="module")
def fusion_study(tmp_path_factory):
    """concat (baseline), film (clearly better), sum (an identical copy of concat), cross_attention (carried by training-e)."""
    folder = write_study(
        tmp_path_factory.mktemp("studies") / "fusion",
        FUSION_MODELS,
        axis="model.fusion",
        baseline="concat",
        fixed={"model.architecture": "fusion"},
    )
    summary = report.report_study(folder, n_resamples=N_RESAMPLES)
    return folder, summary


def _comparisons(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "tables" / "comparisons.csv")


def test_tables_plots_and_index_are_written(fusion_study):
    folder, summary = fusion_study
    for name in ("main", "pascal", "intervals", "comparisons", "per_source", "resolution"):
        for extension in ("md", "csv", "tex"):
            assert (folder / "tables" / f"{name}.{extension}").stat().st_size > 100, (name, extension)
    for plot in ("roc_physionet2016-test.png", "roc_pascal.png", "forest.png"):
        assert (folder / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (folder / "report.md").read_text()
    for path in summary["tables"] + summary["plots"]:
        if path.endswith((".md", ".png")):
            assert path.split("/")[-1] in index
    assert "Incomplete" not in index
    assert not list((folder / "tables").glob(".*tmp")), "temporary files must be renamed away"
    # report.html: the same report in one self-contained file, every plot embedded
    html = (folder / "report.html").read_text()
    assert summary["html"] == str(folder / "report.html") and html.startswith("<!DOCTYPE html>")
    assert html.count("<table>") == index.count("\n| --- ") and "<h2>Summary</h2>" in html
    plots = re.findall(r"\]\((plots/[^)]+\.png)\)", index)
    assert plots and html.count('src="data:image/png;base64,') == len(plots)
    assert not re.search(r'src="(?!data:)', html)  # nothing fetched from elsewhere


def test_report_opens_with_the_answer(fusion_study):
    folder, summary = fusion_study
    markdown = (folder / "report.md").read_text()
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Summary", "## Paper claims", "## Study"] and headings[-2:] == [
        "## Method",
        "## Robustness",
    ]
    lead = markdown.split("## Summary", 1)[1].split("## Paper claims", 1)[0]
    # film is clearly best on the test set and the comparisons with the baseline say so; the others are not compared
    assert (
        f"On {PHYSIONET}, `film` has the highest seed-mean ROC-AUC: significantly ahead of `concat`; not compared with"
        in lead
    )
    rows = pd.read_csv(folder / "tables" / "summary.csv")
    assert len(rows) == 2 * len(FUSION_MODELS) and set(rows.columns) >= {"roc_auc", "roc_auc_low", "mcc", "seeds", "n"}
    assert "| `film` | physionet2016:test |" in lead
    # the significant comparisons after adjustment, every one of them and nothing else
    significant = _comparisons(folder).query("adjusted_p < 0.05")
    assert len(significant) > 0 and lead.count("| comparisons: ") == len(significant)
    assert summary["lead"][0] == "## Summary" and summary["lead"][2] in lead  # the console prints the same lead
    # a study with nothing for the robustness report to test says so in one line
    section = markdown.split("## Robustness", 1)[1]
    assert "No fusion-vs-branch test here" in section and "What our numbers say" not in section


def test_a_study_without_significant_comparisons_says_so_in_one_line(tmp_path):
    folder = write_study(
        tmp_path / "copies",
        {"concat": binormal(0.8), "sum": binormal(0.8)},  # the same scores: nothing can differ
        axis="model.fusion",
        baseline="concat",
        fixed={"model.architecture": "fusion"},
    )
    report.report_study(folder, **FAST)
    lead = (folder / "report.md").read_text().split("## Summary", 1)[1].split("## ", 1)[0]
    assert "No comparison is significant after Holm adjustment within its family" in lead
    assert "| comparisons: " not in lead


def test_a_study_without_trial_histories_says_why_it_has_no_learning_curves(fusion_study):
    folder, summary = fusion_study  # a study folder without trials/, as the committed reference studies are
    assert not (folder / "plots" / "learning_curves.png").exists()
    index = (folder / "report.md").read_text()
    assert "learning_curves.png" not in index
    [note] = [line for line in index.splitlines() if "learning curves" in line]
    assert note.startswith("- note: no learning curves: none of the 12 trials keeps its per-epoch history")


def test_learning_curves_from_the_histories_a_trial_writes(trained_study):
    out, _ = trained_study  # its trials/t0 holds metrics.json and config.json as study.run installs them
    summary = report.report_study(out, n_resamples=200)
    path = out / "plots" / "learning_curves.png"
    assert str(path) in summary["plots"] and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (out / "report.md").read_text()
    assert "- [plots/learning_curves.png](plots/learning_curves.png): learning curves" in index
    assert "no learning curves" not in index


def test_cells_are_intervals_and_values_are_right(fusion_study):
    folder, _ = fusion_study
    markdown = (folder / "tables" / "main.md").read_text().splitlines()
    header = [c.strip() for c in markdown[2].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown[4:8]]
    for row in rows:
        for column in ("ROC-AUC", "MCC", "F1", "accuracy"):
            assert CELL.match(row[header.index(column)]), row[header.index(column)]
    main = pd.read_csv(folder / "tables" / "main.csv").set_index("configuration")
    predictions = pd.read_parquet(folder / "predictions.parquet").query(
        "perturbation == 'none' and eval_set == @PHYSIONET"
    )
    expected = np.mean(
        [
            roc_auc_score(g["label"], g["prob"])
            for _, g in predictions[predictions["trial_id"].str.startswith("film-")].groupby("trial_id")
        ]
    )
    assert main.loc["film", "roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert (main["roc_auc_low"] < main["roc_auc"]).all() and (main["roc_auc"] < main["roc_auc_high"]).all()
    assert (
        main.loc["film", "roc_auc_low"] > main.loc["concat", "roc_auc_high"]
    )  # 3.5 vs 0.8 separation: disjoint intervals
    assert "BCa" in markdown[0]


def test_better_configuration_is_significant_and_identical_copy_is_not(fusion_study):
    folder, _ = fusion_study
    table = _comparisons(folder)
    on_test = table[table["eval_set"] == PHYSIONET]
    better = on_test[on_test["a"] == "film"].set_index(["test", "metric"])
    for test in ("paired bootstrap", "DeLong", "paired permutation"):
        assert better.loc[(test, "roc_auc"), "adjusted_p"] < 0.05
        assert better.loc[(test, "roc_auc"), "verdict"] == "film > concat"
        assert better.loc[(test, "roc_auc"), "low"] > 0
    # 3 seeds cannot reach p < 0.05 with Wilcoxon (smallest p = 0.25): no row, and report.md says why
    assert "Wilcoxon signed-rank" not in set(table["test"])
    assert "Wilcoxon over seeds not shown: 3 seeds (fewer where two agree) cannot" in (folder / "report.md").read_text()
    copy = table[table["a"] == "sum"]
    assert len(copy) == 2 * 7  # two evaluation sets x (4 bootstrap metrics, DeLong, permutation, McNemar)
    assert (copy["difference"] == 0).all() and (copy["p"] == 1).all()
    assert (copy["verdict"] == "no significant difference").all()
    # every row names the one family its p is adjusted in, and that family's size
    for (test, metric), family in table.groupby(["test", "metric"]):
        assert set(family["family"]) == {comparisons.family_name(test, metric)}
        assert (family["family_size"] == len(family)).all()
        assert (family["adjusted_p"] >= family["p"]).all()
    header = (folder / "tables" / "comparisons.md").read_text()
    assert "[unadjusted 95 % CI]" in header and "p (raw)" in header and "family (tests)" in header


def test_wilcoxon_over_six_seeds_shows_its_own_interval(tmp_path):
    """From 6 seeds the signed-rank test can reject: its Δ is the Hodges-Lehmann estimate, its interval the
    signed-rank one, and its p scipy's exact p."""
    seeds = list(range(6))
    folder = write_study(
        tmp_path / "six",
        {"concat": binormal(0.8), "film": binormal(3.5)},
        axis="model.fusion",
        baseline="concat",
        seeds=seeds,
        fixed={"model.architecture": "fusion"},
    )
    report.report_study(folder, n_resamples=500, plots=False)
    table = _comparisons(folder).set_index(["eval_set", "test", "metric"])
    row = table.loc[(PHYSIONET, "Wilcoxon signed-rank", "roc_auc")]
    predictions = pd.read_parquet(folder / "predictions.parquet").query(
        "perturbation == 'none' and eval_set == @PHYSIONET"
    )
    auc = {t: roc_auc_score(g["label"], g["prob"]) for t, g in predictions.groupby("trial_id")}
    differences = np.array([auc[f"film-s{s}"] - auc[f"concat-s{s}"] for s in seeds])
    walsh = [(differences[i] + differences[j]) / 2 for i in range(6) for j in range(i, 6)]
    assert row["difference"] == pytest.approx(np.median(walsh))
    # 6 seeds: the signed-rank interval at >= 95 % is the smallest to the largest Walsh average (level 0.969)
    assert (row["low"], row["high"]) == pytest.approx((min(walsh), max(walsh)))
    assert row["p"] == pytest.approx(sps.wilcoxon(differences).pvalue)
    assert "exact level 0.969" in row["note"]


def test_holm_and_bh_adjust_over_the_family(fusion_study, tmp_path):
    folder, _ = fusion_study
    holm = _comparisons(folder)
    bh_folder = write_study(
        tmp_path / "fusion",
        FUSION_MODELS,
        axis="model.fusion",
        baseline="concat",
        fixed={"model.architecture": "fusion"},
    )
    report.report_study(bh_folder, correction="bh", **FAST)
    bh = _comparisons(bh_folder)
    np.testing.assert_array_equal(holm["p"], bh["p"])
    for _, family in holm.groupby(["test", "metric"]):
        assert len(family) == 6  # 3 configurations x 2 evaluation sets
        np.testing.assert_allclose(family["adjusted_p"], stats.adjust_pvalues(family["p"].to_numpy(), "holm"))
        np.testing.assert_allclose(
            bh.loc[family.index, "adjusted_p"], stats.adjust_pvalues(family["p"].to_numpy(), "bh")
        )
    assert (bh["adjusted_p"] <= holm["adjusted_p"] + 1e-12).all()
    assert (bh["adjusted_p"] < holm["adjusted_p"] - 1e-9).any()
    assert "Benjamini-Hochberg" in (bh_folder / "tables" / "comparisons.md").read_text()


def test_source_carrying_the_pooled_auc_is_flagged(fusion_study):
    folder, summary = fusion_study
    per_source = pd.read_csv(folder / "tables" / "per_source.csv")
    on_test = per_source[per_source["eval_set"] == PHYSIONET]
    carried = on_test[on_test["configuration"] == "cross_attention"].set_index("source")
    assert carried.loc["training-e", "carries_pooled_roc_auc"]
    assert carried.loc["training-e", "roc_auc"] == pytest.approx(1.0)
    assert not carried.drop(index="training-e")["carries_pooled_roc_auc"].any()
    assert carried.drop(index="training-e")["roc_auc"].between(0.2, 0.8).all()
    assert not on_test[on_test["configuration"] == "film"]["carries_pooled_roc_auc"].any()
    assert {(f["configuration"], f["source"]) for f in summary["source_flags"] if f["eval_set"] == PHYSIONET} == {
        ("cross_attention", "training-e")
    }
    assert "training-e" in (folder / "report.md").read_text()


def test_resolution_states_n_positives_and_detectable_difference(fusion_study):
    folder, _ = fusion_study
    resolution = pd.read_csv(folder / "tables" / "resolution.csv").set_index("eval_set")
    assert resolution.loc[PHYSIONET, ["n", "n_pos", "n_neg"]].tolist() == [120, 60, 60]
    assert resolution.loc["pascal", "n"] == 40
    row = resolution.loc[PHYSIONET]
    expected = stats.auc_difference_mde(60, 60, min(max(row["baseline_roc_auc"], 0.5), 0.999), row["rho_median"])
    assert row["mde"] == pytest.approx(expected)
    assert 0.01 < row["mde"] < 0.3 and resolution.loc["pascal", "mde"] > row["mde"]  # fewer recordings resolve less


def _drop_trial(folder, trial_id):
    trials = pd.read_parquet(folder / "trials.parquet")
    trials[trials["trial_id"] != trial_id].to_parquet(folder / "trials.parquet", index=False)
    predictions = pd.read_parquet(folder / "predictions.parquet")
    predictions[predictions["trial_id"] != trial_id].to_parquet(folder / "predictions.parquet", index=False)


def test_incomplete_study_raises_naming_what_is_missing_unless_allowed(tmp_path):
    models = {"concat": binormal(0.8), "film": binormal(3.0)}
    folder = write_study(tmp_path / "fusion", models, axis="model.fusion", baseline="concat")
    _drop_trial(folder, "film-s2")
    with pytest.raises(StudyError, match=r"'film' lacks seed\(s\) \[2\]"):
        report.report_study(folder, **FAST)
    summary = report.report_study(folder, allow_incomplete=True, **FAST)
    assert any("'film' lacks seed(s) [2]" in p for p in summary["problems"])
    assert "--allow-incomplete" in (folder / "report.md").read_text()
    main = pd.read_csv(folder / "tables" / "main.csv").set_index("configuration")
    assert main.loc["film", "seeds"] == 2 and main.loc["concat", "seeds"] == 3
    assert (_comparisons(folder)["seeds"] == 2).all()  # paired over the seeds both have
    for seed in SEEDS:
        _drop_trial(folder, f"film-s{seed}")
    with pytest.raises(StudyError, match=r"model.fusion=film: no trials"):
        report.report_study(folder, **FAST)


def test_mismatched_recordings_and_missing_files_raise(tmp_path):
    folder = write_study(
        tmp_path / "fusion", {"concat": binormal(0.8), "film": binormal(3.0)}, axis="model.fusion", baseline="concat"
    )
    predictions = pd.read_parquet(folder / "predictions.parquet")
    dropped = (predictions["trial_id"] == "film-s1") & (predictions["recording_id"] == "q007")
    predictions[~dropped].to_parquet(folder / "predictions.parquet", index=False)
    with pytest.raises(StudyError, match=r"'pascal': recordings differ between trials.*'film' seed 1.*q007"):
        report.report_study(folder, **FAST)
    report.report_study(folder, allow_incomplete=True, **FAST)
    assert pd.read_csv(folder / "tables" / "resolution.csv").set_index("eval_set").loc["pascal", "n"] == 39
    relabelled = predictions.copy()
    relabelled.loc[(relabelled["trial_id"] == "film-s0") & (relabelled["recording_id"] == "p000"), "label"] = 1
    relabelled.to_parquet(folder / "predictions.parquet", index=False)
    with pytest.raises(StudyError, match=r"\['p000'\] carry different labels"):
        report.report_study(folder, allow_incomplete=True, **FAST)
    (folder / "predictions.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="predictions.parquet missing"):
        report.report_study(folder)


def test_intervals_and_paired_bootstrap_match_the_statistics_core():
    """The shared-draw engine is stats.bootstrap_ci / paired_bootstrap_test exactly, with one seed and with three."""
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(70, dtype=int), np.ones(50, dtype=int)]
    shifts = np.array([[1.2], [1.1], [1.3], [0.6], [0.7], [0.5]])
    probs = special.expit(shifts * y + rng.standard_normal((6, 120)))
    thresholds = np.array([0.55, 0.5, 0.6, 0.45, 0.4, 0.5])
    trial_ids = ["a0", "a1", "a2", "b0", "b1", "b2"]
    eval_set = EvalSet(
        "test", np.arange(120).astype(str), y, np.full(120, "s"), None, trial_ids, probs, None, thresholds
    )
    resampled = resampling.resample(
        eval_set, resampling.heart_kernel(eval_set), 1000, resampling.named_generator(0, "test")
    )
    shifted = probs - thresholds[:, None]
    for seeds in (1, 3):
        a, b = trial_ids[:seeds], trial_ids[3 : 3 + seeds]
        for metric in ("roc_auc", "mcc", "sensitivity"):
            mine = resampling.seed_mean_interval(resampled, a, metric, "bca")
            core = stats.bootstrap_ci(
                y, shifted[:seeds], metric, threshold=0.0, n_resamples=1000, rng=resampling.named_generator(0, "test")
            )
            assert (mine.estimate, mine.low, mine.high) == pytest.approx(
                (core.estimate, core.low, core.high), abs=1e-12
            )
            np.testing.assert_allclose(mine.distribution, core.distribution, atol=1e-12)
        core = stats.paired_bootstrap_test(
            y,
            shifted[:seeds],
            shifted[3 : 3 + seeds],
            "mcc",
            1000,
            resampling.named_generator(0, "test"),
            threshold=0.0,
        )
        mine = resampling.paired_bootstrap(resampled, a, b, "mcc")
        assert (mine.difference, mine.low, mine.high, mine.p_value) == pytest.approx(
            (core.difference, core.low, core.high, core.p_value), abs=1e-12
        )


def test_roc_on_grid_matches_sklearn_roc_curve():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    scores = np.round(y + rng.standard_normal(80), 1)  # rounding makes ties
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)  # keep every threshold, collinear ones too
    expected = [tpr[fpr <= g].max() for g in FPR_GRID]
    np.testing.assert_allclose(roc_tpr_on_grid(y, scores[None], np.ones((80, 1)))[0, :, 0], expected)
    counts = np.bincount(rng.integers(0, 80, 80), minlength=80)
    keep = np.repeat(np.arange(80), counts)
    fpr, tpr, _ = roc_curve(y[keep], scores[keep], drop_intermediate=False)
    weighted = roc_tpr_on_grid(y, scores[None], np.stack([np.ones(80), counts], axis=1))[0, :, 1]
    np.testing.assert_allclose(weighted, [tpr[fpr <= g].max() for g in FPR_GRID])


def test_branches_study_sets_paper_numbers_beside_and_checks_the_claims(tmp_path):
    models = {"spectrogram": binormal(0.6), "waveform": binormal(0.7), "fusion": binormal(4.0)}
    folder = write_study(
        tmp_path / "branches", models, axis="model.architecture", baseline="fusion", fixed={"model.fusion": "concat"}
    )
    summary = report.report_study(folder, **FAST)
    main = pd.read_csv(folder / "tables" / "main.csv").set_index("configuration")
    assert main.loc["fusion", "paper_roc_auc"] == 0.8608 and main.loc["spectrogram", "paper_mcc"] == 0.4444
    assert (
        pd.read_csv(folder / "tables" / "pascal.csv").set_index("configuration").loc["waveform", "paper_roc_auc"]
        == 0.6782
    )
    claims = pd.read_csv(folder / "tables" / "claims.csv")
    physionet = claims[claims["claim"] == "fusion_beats_branches_physionet"]
    assert set(physionet["loser"]) == {"spectrogram", "waveform"}
    assert (physionet["difference"] > 0).all() and (physionet["claim_verdict"] == "holds").all()
    assert physionet.set_index("loser").loc["spectrogram", "paper_difference"] == pytest.approx(0.0542)
    assert {c["verdict"] for c in summary["claims"]} <= {"holds", "not supported at this resolution", "contradicted"}
    assert "0.8608" in (folder / "tables" / "main.md").read_text()


def _flips_on_pascal(separation: float):
    """binormal on PhysioNet; on PASCAL a per-seed direction (seeds 0, 1, 2: +1, -1, +0.2): at chance on
    average, each seed far from it, and the same seed effect for every model (the seeds pair)."""
    physionet = binormal(separation)

    def model(table, seed, name):
        if name != "pascal":
            return physionet(table, seed, name)
        noise = np.random.default_rng([seed, 7, int(separation * 10)]).standard_normal(len(table))
        direction = {0: 1.0, 1: -1.0, 2: 0.2}[seed]
        return special.expit(direction * (table["label"].to_numpy() - 0.5) + noise)

    return model


def test_claims_say_contradicted_at_chance_and_when_seeds_dominate(tmp_path):
    models = {"spectrogram": _flips_on_pascal(0.6), "waveform": _flips_on_pascal(0.7), "fusion": _flips_on_pascal(4.0)}
    folder = write_study(
        tmp_path / "branches",
        models,
        axis="model.architecture",
        baseline="fusion",
        fixed={"model.fusion": "concat"},
        n_pascal=200,
    )
    summary = report.report_study(folder, **FAST)
    claims = pd.read_csv(folder / "tables" / "claims.csv").set_index(["claim", "loser"])
    pascal = claims.loc["fusion_beats_branches_pascal"]
    spectrogram = pascal.loc["spectrogram"]
    # the paper's +0.231 lies above the study's interval: the data contradict it, not merely fail to show it
    assert spectrogram["high"] < spectrogram["paper_difference"] == pytest.approx(0.2308)
    assert spectrogram["part"] == "contradicted" and (pascal["claim_verdict"] == "contradicted").all()
    assert {"claim": paper.CLAIMS[1].text, "verdict": "contradicted"} in summary["claims"]
    # every configuration is at chance on PASCAL, its seeds far apart: per-seed values and "more seeds"
    predictions = pd.read_parquet(folder / "predictions.parquet").query(
        "perturbation == 'none' and eval_set == 'pascal'"
    )
    per_seed = [
        roc_auc_score(g["label"], g["prob"])
        for _, g in predictions[predictions["trial_id"].str.startswith("fusion-")].groupby("trial_id")
    ]
    notes = spectrogram["notes"]
    assert "fusion at chance (" in notes and "spectrogram at chance (" in notes
    assert (
        "fusion's seeds vary more than the test set does (per seed: " + ", ".join(f"{v:.3f}" for v in per_seed) in notes
    )
    assert "more seeds needed" in notes
    # the claims are one family: intersection-union within a claim, Holm across the claims
    assert (pascal["claim_p"] == pascal["p"].max()).all()
    claim_p = claims.groupby("claim")["claim_p"].first()
    adjusted = stats.adjust_pvalues(claim_p.to_numpy(), "holm")
    assert claims.groupby("claim")["claim_adjusted_p"].first().to_numpy() == pytest.approx(adjusted)
    assert (claims["family_size"] == len(claim_p)).all()
    physionet = claims.loc["fusion_beats_branches_physionet"]
    assert (physionet["claim_verdict"] == "holds").all()
    # the paper's own PhysioNet ROC-AUC of the spectrogram ViT (0.807) lies outside this study's interval
    assert "paper's spectrogram 0.807 outside" in physionet.loc["spectrogram", "notes"]


def source_level(table, seed, name):
    """No skill within a source; on PASCAL set_a (mostly abnormal) scores high, set_b (mostly normal) low."""
    noise = np.random.default_rng([seed, 5, len(name)]).standard_normal(len(table))
    return special.expit(np.where(table["source"] == "set_a", 1.0, -1.0) + noise)


def test_a_pooled_figure_above_every_source_is_flagged_as_a_confound_not_carried(tmp_path):
    folder = write_study(
        tmp_path / "confound",
        {"concat": binormal(0.8), "film": source_level},
        axis="model.fusion",
        baseline="concat",
        fixed={"model.architecture": "fusion"},
        n_pascal=200,
        pascal_abnormal={"set_a": 0.8, "set_b": 0.2},
    )
    report.report_study(folder, **FAST)
    table = pd.read_csv(folder / "tables" / "per_source.csv")
    film = table[(table["eval_set"] == "pascal") & (table["configuration"] == "film")].set_index("source")
    assert (film["pooled_roc_auc"] > film["roc_auc"] + 0.05).all()  # the pooled figure no source shows
    assert film["between_source_confound"].all() and not film["carries_pooled_roc_auc"].any()
    highest = film["roc_auc"].idxmax()
    summary = (folder / "report.md").read_text()
    assert f"| `film` | pascal | **{highest}** |" in summary
    assert "between-source confound: the pooled ROC-AUC exceeds every source's own" in summary
    # a model with skill within each source is not confounded
    concat = table[(table["eval_set"] == "pascal") & (table["configuration"] == "concat")]
    assert not concat["between_source_confound"].any()


def test_per_source_intervals_on_few_recordings_are_marked_unreliable(tmp_path):
    folder = write_study(
        tmp_path / "small",
        {"concat": binormal(0.8), "film": binormal(3.5)},
        axis="model.fusion",
        baseline="concat",
        fixed={"model.architecture": "fusion"},
        n_test=60,  # 6 sources of 5 abnormal and 5 normal recordings; PASCAL's 2 sources hold 10 and 10
    )
    report.report_study(folder, **FAST)
    table = pd.read_csv(folder / "tables" / "per_source.csv", keep_default_na=False)
    physionet, pascal = (table[table["eval_set"] == name] for name in (PHYSIONET, "pascal"))
    assert (physionet["unreliable"] == "unreliable: only 5 abnormal and 5 normal recording(s)").all()
    assert (pascal["unreliable"] == "").all()
    assert "unreliable: only 5 abnormal and 5 normal recording(s)" in (folder / "tables" / "per_source.md").read_text()


def test_respiratory_study_uses_patient_clusters_and_icbhi_score(tmp_path):
    rng = np.random.default_rng(5)
    n_patients, per_patient = 24, 6
    groups = np.repeat([f"patient{k:02d}" for k in range(n_patients)], per_patient)
    classes = np.where(rng.random(groups.size) < 0.5, 0, rng.integers(1, 4, groups.size))
    recordings = pd.DataFrame(
        {"recording_id": [f"c{i}" for i in range(groups.size)], "source": "icbhi", "group": groups, "label": classes}
    )
    skill = {"concat": 1.0, "film": 3.0}

    def predict(settings, seed, eval_set, table, condition):
        logits = rng.standard_normal((groups.size, 4)) + skill[settings["model.fusion"]] * np.eye(4)[classes]
        return special.softmax(logits, axis=1)

    space = {
        "name": "respiratory",
        "study": "respiratory",
        "grid": {"model.fusion": ["concat", "film"], "seed": list(SEEDS)},
        "compare": {"axis": "model.fusion", "baseline": "concat", "metric": "score"},
    }
    folder = fake_study(
        tmp_path / "respiratory",
        space=space,
        configurations={value: {"model.fusion": value} for value in skill},
        seeds=SEEDS,
        recordings={"icbhi2017:test": recordings},
        predict=predict,
        threshold=np.nan,
    )
    predictions = pd.read_parquet(folder / "predictions.parquet")
    report.report_study(folder, n_resamples=N_RESAMPLES)
    main = pd.read_csv(folder / "tables" / "main.csv").set_index("configuration")
    film = predictions[predictions["trial_id"].str.startswith("film-")]
    expected = np.mean(
        [
            icbhi_scores(g["label"], g[[f"prob_{k}" for k in range(4)]].to_numpy().argmax(1))["score"]
            for _, g in film.groupby("trial_id")
        ]
    )
    assert main.loc["film", "score"] == pytest.approx(expected)
    assert main.loc["SAM-AST paper", "score"] == 0.6810
    assert "patients (cluster bootstrap)" in (folder / "tables" / "main.md").read_text()
    comparisons = _comparisons(folder)
    assert set(comparisons["test"]) == {"paired bootstrap"}  # Wilcoxon over 3 seeds cannot reject: not shown
    row = comparisons[(comparisons["metric"] == "score") & (comparisons["test"] == "paired bootstrap")].iloc[0]
    assert row["verdict"] == "film > concat"
    assert pd.read_csv(folder / "tables" / "resolution.csv").loc[0, "clusters"] == n_patients


def test_command_line(fusion_study, tmp_path, capsys):
    folder = tmp_path / "fusion"
    folder.mkdir()
    for name in REQUIRED_FILES:  # a copy, so the shared study's tables stay as the other tests expect
        shutil.copy(fusion_study[0] / name, folder / name)
    assert analysis_main(["report", str(folder), "--resamples", "200", "--baseline", "film", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed
    # 3 pairs x 2 evaluation sets = 6 tests; 6 x 2 / 201 > 0.05 for the bootstrap, 6 / 201 < 0.05 for permutations
    assert (
        "note: paired bootstrap of roc_auc, mcc, f1, accuracy: with 200 bootstrap resamples no holm-adjusted p over "
        "these 6 tests can fall below 0.0597"
    ) in printed
    assert "paired permutation of roc_auc: with" not in printed
    assert "with 200 bootstrap resamples" in (folder / "report.md").read_text()
    assert set(_comparisons(folder)["b"]) == {"film"}
    assert not (folder / "plots").exists()
    assert analysis_main(["report", str(folder), "--baseline", "gru"]) == 2
    assert "baseline 'gru' is not a value of model.fusion" in capsys.readouterr().err
    assert analysis_main(["report", str(folder / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert analysis_main(["frobnicate"]) == 2


@pytest.mark.parametrize("command", ["report", "robustness"])
def test_both_commands_take_and_check_the_shared_options(fusion_study, command, capsys):
    folder = fusion_study[0]
    assert analysis_main([command, str(folder), "--resamples", "50"]) == 2
    assert "n_resamples must be an integer >= 100, got 50" in capsys.readouterr().err
    assert analysis_main([command, str(folder), "--alpha", "1.5", "--seed", "2", "--ci-method", "percentile"]) == 2
    assert "alpha must be in (0, 1), got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analysis_main([command, str(folder), "--correction", "bonferroni"])
    assert "invalid choice: 'bonferroni'" in capsys.readouterr().err


def add_data_checks(folder: Path) -> None:
    """study.json's data checks as study.run writes them: PhysioNet's split without patient ids, and one
    training recording (a0007) removed as a copy of the PASCAL recording q0003."""
    state = json.loads((folder / "study.json").read_text())
    removed = [{"id": "a0007", "split": "train", "same_as": ["pascal:q0003"]}]
    state["data_info"] = {
        "duplicates": {"abc123": {"setting": "remove", "removed_from_training": removed, "dropped_from_eval": {}}},
        "split_check": {
            "physionet2016": {
                "recordings_train": 2943,
                "recordings_test": 297,
                "patients_train": 0,
                "patients_test": 0,
                "patients_in_train_and_test": [],
            }
        },
    }
    (folder / "study.json").write_text(json.dumps(state))


def test_patients_in_an_evaluation_set_are_resampled_whole(tmp_path):
    """PASCAL with 4 recordings per patient: patient bootstrap, clustered DeLong, patient swaps, wider intervals."""
    folder = write_study(
        tmp_path / "clustered",
        {"fusion": binormal(2.0), "waveform": binormal(1.2)},
        axis="model.architecture",
        baseline="fusion",
        n_pascal=160,
        pascal_patient_size=4,
    )
    add_data_checks(folder)
    report.report_study(folder, **FAST)
    index = (folder / "report.md").read_text()
    assert "| `pascal` | 160 | 80 | 40 | 4 | patient |" in index  # recordings, abnormal, patients, the largest
    assert "1 training/validation recording(s) removed as copies of evaluation recordings (a0007)" in index
    assert (
        "- split of `physionet2016`: 2943 train / 297 test recordings (none in both); the dataset gives no patient "
        "ids, so patients cannot be checked" in index
    )
    clustering = pd.read_csv(folder / "tables" / "clustering.csv")
    assert set(clustering["eval_set"]) == {"pascal"}  # PhysioNet's recordings are their own clusters
    assert (clustering["patients"] == 40).all() and (clustering["largest_cluster"] == 4).all()
    assert (clustering["width_ratio"] > 1.2).all()
    resolution = pd.read_csv(folder / "tables" / "resolution.csv").set_index("eval_set")
    assert resolution.loc["pascal", "clusters"] == 40 and resolution.loc[PHYSIONET, "largest_cluster"] == 1
    assert resolution.loc["pascal", "design_effect"] > 1.2 and resolution.loc[PHYSIONET, "design_effect"] == 1
    comparisons = _comparisons(folder).set_index(["eval_set", "test"])
    assert "Obuchowski" in comparisons.loc[("pascal", "DeLong"), "note"]
    assert "Obuchowski" not in comparisons.loc[(PHYSIONET, "DeLong"), "note"]
    assert "per patient" in comparisons.loc[("pascal", "paired permutation"), "note"]
    assert "Durkalski" in comparisons.loc[("pascal", "McNemar"), "note"]
    assert "patients resampled" in comparisons.loc[("pascal", "paired bootstrap")].iloc[0]["note"]


def test_per_cue_table_on_synthetic_data_only(trained_study, synth_root):
    from study.data.synth import planted_cues

    out, _ = trained_study
    report.report_study(out, n_resamples=200, plots=False)
    table = pd.read_csv(out / "tables" / "per_cue.csv")
    cues = planted_cues(synth_root)
    predictions = pd.read_parquet(out / "predictions.parquet")
    clean = predictions[(predictions["perturbation"] == "none") & (predictions["ablation"] == "none")]
    assert set(table["eval_set"]) == set(clean["eval_set"]) and len(table) >= 4
    for row in table.itertuples():
        rows = clean[clean["eval_set"] == row.eval_set]
        carries = np.array([row.cue in cues[r] for r in rows["recording_id"]], dtype=bool)
        with_cue = rows[(rows["label"] == 1).to_numpy() & carries]
        normal = rows[rows["label"] == 0]
        assert (len(with_cue), len(normal)) == (row.n_with_cue, row.n_normal)
        expected = roc_auc_score([0] * len(normal) + [1] * len(with_cue), np.r_[normal["prob"], with_cue["prob"]])
        assert row.roc_auc == pytest.approx(expected)  # one trial: the seed mean is its ROC-AUC
        assert row.roc_auc_low <= row.roc_auc <= row.roc_auc_high
    assert "tables/per_cue.md" in (out / "report.md").read_text()
    # data whose cues nobody planted (real data, or a synthetic folder gone): no table
    state = json.loads((out / "study.json").read_text())
    (out / "study.json").write_text(json.dumps({**state, "data_root": str(out / "gone")}))
    shutil.rmtree(out / "tables")
    report.report_study(out, n_resamples=200, plots=False)
    assert not (out / "tables" / "per_cue.csv").exists()
