"""The robustness report on a small fake study in study.run's exact file format, and checkpoint re-evaluation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import special
from sklearn.metrics import roc_auc_score

from analysis import report, robustness
from analysis.__main__ import main as analysis_main
from study.evaluate import main as evaluate_main
from study.evaluate import parse_suite_argument, reevaluate_study
from study.results import fake_study, merge_predictions

N_RESAMPLES = 2000  # the smallest p is 2 / 2001: still significant after Holm over 10 tests
SEEDS = (0, 1, 2)
PHYSIONET = "physionet2016:test"
MP3 = "codec:mp3"
# separation of the classes in logit units, per (perturbation, severity, ablation)
SEPARATION = {
    "fusion": {
        ("none", 0, "none"): 3.0,
        (MP3, 1, "none"): 3.0,
        (MP3, 2, "none"): 2.9,
        ("none", 0, "waveform=mean"): 0.4,
        ("none", 0, "spectrogram=mean"): 2.8,
    },
    "waveform": {("none", 0, "none"): 3.0, (MP3, 1, "none"): 3.0, (MP3, 2, "none"): 2.9},
    "spectrogram": {("none", 0, "none"): 3.0, (MP3, 1, "none"): 1.2, (MP3, 2, "none"): 0.2},  # degraded by the codec
}


def _recordings(n: int, sources: tuple[str, ...], prefix: str) -> pd.DataFrame:
    per_source = n // len(sources)
    label = np.tile(np.r_[np.zeros(per_source // 2), np.ones(per_source - per_source // 2)], len(sources))
    return pd.DataFrame(
        {
            "recording_id": [f"{prefix}{i:03d}" for i in range(n)],
            "source": np.repeat(sources, per_source),
            "label": label.astype(np.int8),
        }
    )


def _probs(table: pd.DataFrame, architecture: str, seed: int, eval_set: str, condition: tuple) -> np.ndarray:
    # each architecture and seed draws its own noise, shared across conditions (so the pairing is real)
    noise = np.random.default_rng([seed, len(eval_set), len(architecture)]).standard_normal(len(table))
    return special.expit(SEPARATION[architecture][condition] * (table["label"].to_numpy() - 0.5) + noise)


def write_robustness_study(folder):
    sets = {
        PHYSIONET: _recordings(90, ("training-a", "training-b", "training-e"), "p"),
        "pascal": _recordings(40, ("set_a", "set_b"), "q"),
    }
    for table in sets.values():
        table["group"] = table["recording_id"]

    def predict(settings, seed, name, table, condition):
        if condition not in SEPARATION[settings["model.architecture"]]:
            return None  # a single-branch model has no branch to ablate
        return _probs(table, settings["model.architecture"], seed, name, condition)

    space = {
        "name": folder.name,
        "scale": "cpu",
        "study": "heart",
        "fixed": {"model.fusion": "concat"},
        "grid": {"model.architecture": list(SEPARATION), "seed": list(SEEDS)},
        "perturbations": [{"name": "codec", "codec": "mp3", "severities": [1, 2]}],
        "compare": {"axis": "model.architecture", "baseline": "fusion", "metric": "roc_auc"},
    }
    fake_study(
        folder,
        space=space,
        configurations={a: {"model.architecture": a, "model.fusion": "concat"} for a in SEPARATION},
        seeds=SEEDS,
        recordings=sets,
        predict=predict,
        conditions=list(dict.fromkeys(c for conditions in SEPARATION.values() for c in conditions)),
    )
    return folder, sets


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder, sets = write_robustness_study(tmp_path_factory.mktemp("studies") / "robustness")
    summary = report.report_study(folder, n_resamples=N_RESAMPLES)  # calls the robustness report: perturbed rows exist
    return folder, sets, summary


def test_tables_plots_and_index_section_are_written(study):
    folder, _, summary = study
    for name in ("robustness_auc", "robustness_tests", "robustness_ablation"):
        for extension in ("md", "csv", "tex"):
            path = folder / "tables" / f"{name}.{extension}"
            assert path.stat().st_size > 200, path
            assert str(path) in summary["tables"]
    for plot in ("robustness_physionet2016-test.png", "robustness_pascal.png"):
        assert (folder / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (folder / "report.md").read_text()
    assert index.count(robustness.SECTION_START) == 1 and "## Robustness" in index
    for name in ("robustness_auc.md", "robustness_tests.md", "robustness_ablation.md", "robustness_pascal.png"):
        assert name in index
    assert "MP3 32 kbps" in (folder / "tables" / "robustness_auc.md").read_text()  # levels labelled by describe()
    # running it again replaces the section instead of appending a second one
    robustness.report_robustness(folder, n_resamples=N_RESAMPLES, plots=False)
    assert (folder / "report.md").read_text().count(robustness.SECTION_START) == 1


def test_auc_values_and_the_degraded_configuration_drops_more(study):
    folder, sets, _ = study
    table = pd.read_csv(folder / "tables" / "robustness_auc.csv")
    row = table[
        (table["configuration"] == "spectrogram")
        & (table["eval_set"] == PHYSIONET)
        & (table["perturbation"] == MP3)
        & (table["severity"] == 2)
    ].iloc[0]
    expected = np.mean(
        [
            roc_auc_score(
                sets[PHYSIONET]["label"], _probs(sets[PHYSIONET], "spectrogram", s, PHYSIONET, (MP3, 2, "none"))
            )
            for s in SEEDS
        ]
    )
    assert row["roc_auc"] == pytest.approx(expected, abs=1e-9)
    assert row["roc_auc_low"] < row["roc_auc"] < row["roc_auc_high"]
    clean = table[
        (table["configuration"] == "spectrogram") & (table["eval_set"] == PHYSIONET) & (table["perturbation"] == "none")
    ]
    assert row["drop"] == pytest.approx(clean["roc_auc"].iloc[0] - row["roc_auc"], abs=1e-9)
    worst = table[
        (table["eval_set"] == PHYSIONET) & (table["perturbation"] == MP3) & (table["severity"] == 2)
    ].set_index("configuration")
    assert worst.at["spectrogram", "relative_drop"] > 0.2 and worst.at["spectrogram", "relative_drop_low"] > 0
    assert worst.at["fusion", "relative_drop"] < 0.05
    assert worst.at["spectrogram", "relative_drop"] > worst.at["fusion", "relative_drop"] + 0.15
    severity_1 = table[
        (table["configuration"] == "spectrogram") & (table["eval_set"] == PHYSIONET) & (table["severity"] == 1)
    ]
    assert severity_1["drop"].iloc[0] < row["drop"]  # the drop grows with severity


def test_paired_test_flags_the_planted_difference_and_not_the_null(study):
    folder, _, summary = study
    tests = pd.read_csv(folder / "tables" / "robustness_tests.csv")
    # 2 branches x (the real shift to pascal, 2 severities on physionet, 2 on pascal): no clean level rows
    assert len(tests) == 10 and (tests["family_size"] == 10).all()
    assert set(tests["family"]) == {robustness.ROBUSTNESS_FAMILY}
    planted = tests[
        (tests["branch"] == "spectrogram")
        & (tests["perturbation"] == MP3)
        & (tests["severity"] == 2)
        & (tests["eval_set"] == PHYSIONET)
    ]
    assert (planted["adjusted_p"] < 0.05).all() and (planted["verdict"] == "fusion loses less").all()
    assert (planted["drop_difference_low"] > 0).all()
    # the drop difference is the difference of the two drops
    assert planted["drop_difference"].to_numpy() == pytest.approx((planted["drop_b"] - planted["drop_a"]).to_numpy())
    null = tests[tests["branch"] == "waveform"]
    assert (null["adjusted_p"] > 0.05).all() and (null["verdict"] == "no significant difference in drop").all()
    # Holm: the adjusted p-values are at least the raw ones, and the family is every row
    assert (tests["adjusted_p"] >= tests["p"] - 1e-12).all()
    claim = "\n".join(summary and (folder / "report.md").read_text().split(robustness.SECTION_START)[1:])
    assert "| branch's drop − fusion's [unadjusted 95 % CI] | p (raw) | p (holm, 10 tests) |" in claim
    assert f"| fusion | spectrogram | {PHYSIONET} | MP3 32 kbps |" in claim  # the highest severity's row
    assert f"| fusion | spectrogram | pascal | real shift from {PHYSIONET} |" in claim
    # the planted codec damage to the spectrogram branch is found, and judged apart from the (null) real shift
    verdicts = pd.read_csv(folder / "tables" / "robustness_claim.csv").set_index(["scope", "eval_set", "branch"])
    perturbations = "perturbations, every severity"
    assert verdicts.loc[(perturbations, PHYSIONET, "spectrogram"), ["better", "worse", "tests"]].tolist() == [2, 0, 2]
    assert verdicts.loc[("real domain shift, clean audio", "pascal", "spectrogram"), ["better", "worse"]].tolist() == [
        0,
        0,
    ]
    assert f"| {perturbations} | {PHYSIONET} | fusion | spectrogram | 2 | 0 | 2 |" in claim
    assert "fusion's ROC-AUC drop is not distinguishable from the spectrogram-only model's" in claim
    spectrogram = tests[(tests["branch"] == "spectrogram") & (tests["scope"] == "perturbation")]
    assert (spectrogram["verdict"] != "fusion loses more").all()
    assert 2 <= (spectrogram["verdict"] == "fusion loses less").sum() < 4  # the 40 PASCAL recordings resolve less
    assert (
        "Under the simulated perturbations fusion loses significantly less ROC-AUC than the spectrogram-only model "
        "at some perturbation levels, and never more." in claim
    )


def test_a_verdict_on_resisting_rests_on_the_drop_not_the_level(tmp_path, monkeypatch):
    """Fusion far ahead of the spectrogram model on clean audio and just as far ahead under the codec: it is
    significantly better at every level, yet it resisted the codec no better, and the report says so."""
    unchanged = {("none", 0, "none"): 1.0, (MP3, 1, "none"): 1.0, (MP3, 2, "none"): 1.0}
    monkeypatch.setitem(SEPARATION, "spectrogram", unchanged)
    monkeypatch.setitem(
        SEPARATION,
        "fusion",
        {**{k: 3.0 for k in unchanged}, **{k: v for k, v in SEPARATION["fusion"].items() if k[2] != "none"}},
    )
    folder, _ = write_robustness_study(tmp_path / "levels")
    summary = robustness.report_robustness(folder, n_resamples=N_RESAMPLES, plots=False)
    tests = pd.DataFrame(summary["tests"])
    perturbed = tests[(tests["branch"] == "spectrogram") & (tests["scope"] == "perturbation")]
    assert (perturbed["low"] > 0).all()  # fusion's level is far above the branch's under the codec ...
    assert (perturbed["drop_difference"] == 0).all()  # ... but neither loses anything: the same predictions
    assert (perturbed["verdict"] == "no significant difference in drop").all()
    sentence = next(line for line in summary["claim"] if line.startswith("**What our numbers say**"))
    assert (
        "fusion loses significantly less ROC-AUC than the spectrogram-only model at no perturbation level" in sentence
    )


def test_a_study_without_perturbations_says_nothing_about_them(study, tmp_path):
    """Branch-ablated rows but no perturbation: the robustness section judges the real shift only."""
    folder = tmp_path / "ablation_only"
    shutil.copytree(study[0], folder)
    predictions = pd.read_parquet(folder / "predictions.parquet")
    predictions[predictions["perturbation"] == "none"].to_parquet(folder / "predictions.parquet", index=False)
    summary = robustness.report_robustness(folder, n_resamples=N_RESAMPLES, plots=False)
    assert set(pd.DataFrame(summary["tests"])["scope"]) == {"real shift"}
    sentence = next(line for line in summary["claim"] if line.startswith("**What our numbers say**"))
    assert "perturb" not in sentence and "resist" not in sentence
    assert "perturbations, every severity" not in (folder / "tables" / "robustness_claim.md").read_text()


def test_too_few_resamples_for_the_corrected_family_is_said_not_hidden(study, tmp_path, capsys):
    folder = tmp_path / "study"
    shutil.copytree(study[0], folder)
    # 10 tests, Holm: the smallest adjusted p is 10 x 2 / 201 = 0.0995, so nothing can be significant
    assert analysis_main(["robustness", str(folder), "--resamples", "200", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "no holm-adjusted p over these 10 tests can fall below 0.0995" in printed
    assert "--resamples 4,000 or more" in printed
    section = (folder / "report.md").read_text().split(robustness.SECTION_START)[1]
    assert "nothing yet" in section and "significantly better" not in section
    assert "**Warning:**" in (folder / "tables" / "robustness_tests.md").read_text()
    # Benjamini-Hochberg's floor is the raw floor (2 / 201 < 0.05): no warning
    summary = robustness.report_robustness(folder, n_resamples=200, correction="bh", plots=False)
    assert not [n for n in summary["notes"] if "resamples" in n]


def break_waveform_within_training_e(folder) -> pd.DataFrame:
    """The waveform model loses its cue within training-e only, under MP3 at severity 2: pure noise there.

    Rewrites the study's predictions.parquet; returns the rows made noise."""
    predictions = pd.read_parquet(folder / "predictions.parquet")
    broken = (
        (predictions["trial_id"].str.startswith("waveform-"))
        & (predictions["eval_set"] == PHYSIONET)
        & (predictions["perturbation"] == MP3)
        & (predictions["severity"] == 2)
        & (predictions["source"] == "training-e")
    )
    predictions.loc[broken, "prob"] = np.random.default_rng(7).random(int(broken.sum()))
    predictions.to_parquet(folder / "predictions.parquet", index=False)
    return predictions[broken]


def test_per_source_table_finds_the_one_source_a_perturbation_breaks(tmp_path):
    folder, sets = write_robustness_study(tmp_path / "robustness")
    perturbed = break_waveform_within_training_e(folder)
    summary = robustness.report_robustness(folder, n_resamples=N_RESAMPLES, plots=False)
    table = pd.read_csv(folder / "tables" / "robustness_per_source.csv")
    flagged = table[table["carries_drop"]]
    assert set(zip(flagged["configuration"], flagged["source"], flagged["severity"], strict=True)) == {
        ("waveform", "training-e", 2)
    }
    row = flagged.iloc[0]
    assert row["pooled_drop"] > 0.05 and row["pooled_drop_without_source"] < row["pooled_drop"] / 2
    # the within-source numbers are the seed means of sklearn's ROC-AUC on that source's recordings
    expected = np.mean([roc_auc_score(g["label"], g["prob"]) for _, g in perturbed.groupby("trial_id")])
    assert row["roc_auc_perturbed"] == pytest.approx(expected, abs=1e-9)
    assert f"\n| waveform | {PHYSIONET} | MP3 32 kbps | training-e | " in "\n".join(summary["claim"])
    assert "robustness_per_source.md" in (folder / "report.md").read_text()
    # every entry has a 95 % interval that holds its point estimate
    for prefix in ("roc_auc_clean", "roc_auc_perturbed", "drop", "pooled_drop", "pooled_drop_without_source"):
        low, estimate, high = (table[f"{prefix}{suffix}"] for suffix in ("_low", "", "_high"))
        assert low.notna().all() and (low <= estimate + 1e-9).all() and (estimate <= high + 1e-9).all(), prefix
    # the drop is paired (clean and perturbed on the same draws): where the planted damage is, it excludes 0 ...
    assert row["drop"] == pytest.approx(row["roc_auc_clean"] - row["roc_auc_perturbed"])
    assert row["drop_low"] > 0.2 and row["roc_auc_clean_low"] > row["roc_auc_perturbed_high"]
    damaged = table[(table["configuration"] == "spectrogram") & (table["severity"] == 2)]
    # every source loses; with 3 seeds on 15 + 15 recordings some intervals still reach 0 (t on 2 df)
    assert (damaged["drop"] > 0.1).all() and (damaged["drop_high"] > damaged["drop"]).all()
    # ... and where the predictions did not change (fusion at MP3 64 kbps) it is exactly 0 [0, 0]
    unchanged = table[(table["configuration"] == "fusion") & (table["severity"] == 1)]
    assert (unchanged[["drop", "drop_low", "drop_high"]] == 0).all().all()
    # the pooled drop and its interval are robustness_auc's drop from clean
    auc = pd.read_csv(folder / "tables" / "robustness_auc.csv")
    pooled = auc.set_index(["configuration", "eval_set", "perturbation", "severity"]).loc[
        ("waveform", PHYSIONET, MP3, 2)
    ]
    assert (row["pooled_drop"], row["pooled_drop_low"], row["pooled_drop_high"]) == pytest.approx(
        (pooled["drop"], pooled["drop_low"], pooled["drop_high"])
    )
    markdown = (folder / "tables" / "robustness_per_source.md").read_text()
    assert "ROC-AUC perturbed" in markdown and "pooled drop without it" in markdown
    assert markdown.count("[") >= 5 * len(table)  # five interval cells per row


def test_per_source_clean_intervals_are_the_main_reports(study):
    """The robustness per-source table resamples each source with the main report's draws: its clean ROC-AUC
    intervals are tables/per_source's, for every perturbation row."""
    folder, _, _ = study
    robust = pd.read_csv(folder / "tables" / "robustness_per_source.csv")
    main = pd.read_csv(folder / "tables" / "per_source.csv").set_index(["configuration", "eval_set", "source"])
    assert len(robust) == 3 * (3 + 2) * 2  # configurations x sources (3 + 2) x severities
    for _, row in robust.iterrows():
        expected = main.loc[(row["configuration"], row["eval_set"], row["source"])]
        assert (row["roc_auc_clean_low"], row["roc_auc_clean"], row["roc_auc_clean_high"]) == pytest.approx(
            (expected["roc_auc_low"], expected["roc_auc"], expected["roc_auc_high"]), abs=1e-12
        )


def test_a_clean_roc_auc_of_zero_leaves_the_relative_drop_undefined(tmp_path):
    folder, _ = write_robustness_study(tmp_path / "robustness")
    predictions = pd.read_parquet(folder / "predictions.parquet")
    # the spectrogram model ranks every clean pascal recording the wrong way round: ROC-AUC 0
    inverted = (
        (predictions["trial_id"].str.startswith("spectrogram-"))
        & (predictions["eval_set"] == "pascal")
        & (predictions["perturbation"] == "none")
        & (predictions["ablation"] == "none")
    )
    predictions.loc[inverted, "prob"] = 1.0 - predictions.loc[inverted, "label"]
    predictions.to_parquet(folder / "predictions.parquet", index=False)
    robustness.report_robustness(folder, n_resamples=200, plots=False)
    table = pd.read_csv(folder / "tables" / "robustness_auc.csv")
    rows = table[
        (table["configuration"] == "spectrogram") & (table["eval_set"] == "pascal") & (table["perturbation"] == MP3)
    ]
    assert len(rows) == 2 and rows["relative_drop"].isna().all() and rows["relative_drop_low"].isna().all()
    assert (rows["drop"] == -rows["roc_auc"]).all()  # clean 0 − perturbed
    clean = table[
        (table["configuration"] == "spectrogram") & (table["eval_set"] == "pascal") & (table["severity"] == 0)
    ]
    assert clean["roc_auc"].tolist() == [0.0]


def test_a_study_with_the_retired_time_stretch_is_still_reported(tmp_path):
    """Studies run before time_stretch was split into slow and fast keep their rows, labelled by raw id."""
    folder, _ = write_robustness_study(tmp_path / "robustness")
    predictions = pd.read_parquet(folder / "predictions.parquet")
    predictions.loc[predictions["perturbation"] == MP3, "perturbation"] = "time_stretch"
    predictions.to_parquet(folder / "predictions.parquet", index=False)
    state = json.loads((folder / "study.json").read_text())
    state["space"]["perturbations"] = [{"name": "time_stretch", "severities": [1, 2]}]
    (folder / "study.json").write_text(json.dumps(state))
    summary = robustness.report_robustness(folder, n_resamples=200, plots=False)
    table = pd.read_csv(folder / "tables" / "robustness_auc.csv")
    assert set(table.loc[table["perturbation"] == "time_stretch", "level"]) == {"time_stretch @ 1", "time_stretch @ 2"}
    assert any("retired" in note and "time_stretch_slow" in note for note in summary["notes"])


def test_ablation_table_shows_the_waveform_branch_carries_the_fusion(study):
    folder, _, _ = study
    table = pd.read_csv(folder / "tables" / "robustness_ablation.csv")
    assert set(table["configuration"]) == {"fusion"}
    clean = table[(table["eval_set"] == PHYSIONET) & (table["perturbation"] == "none")].set_index("ablation")
    assert clean.at["waveform=mean", "drop"] > 0.2 and clean.at["waveform=mean", "drop_low"] > 0
    assert clean.at["spectrogram=mean", "drop"] < 0.05
    assert clean.at["waveform=mean", "roc_auc_intact"] - clean.at["waveform=mean", "roc_auc_ablated"] == pytest.approx(
        clean.at["waveform=mean", "drop"]
    )


def test_bad_arguments_are_rejected(study, capsys):
    folder, _, _ = study
    with pytest.raises(ValueError, match="correction"):
        robustness.report_robustness(folder, correction="bonferroni")
    with pytest.raises(ValueError, match="n_resamples"):
        robustness.report_robustness(folder, n_resamples=5)
    with pytest.raises(ValueError, match="'name' must be one of"):
        parse_suite_argument("[{name: wobble}]")
    assert evaluate_main([str(folder), "--perturb", "[{name: codec, codec: flac}]"]) == 2
    assert "codec" in capsys.readouterr().err


def test_merge_replaces_rows_of_the_same_condition():
    def rows(trial, perturbation, severity, prob):
        return pd.DataFrame(
            {
                "trial_id": trial,
                "eval_set": "e",
                "recording_id": ["a", "b"],
                "source": "s",
                "group": "g",
                "label": [0, 1],
                "prob": prob,
                "perturbation": perturbation,
                "severity": severity,
                "ablation": "none",
            }
        )

    existing = pd.concat([rows("t", "none", 0, 0.1), rows("t", "band_limit", 2, 0.2)], ignore_index=True)
    merged = merge_predictions(existing, pd.concat([rows("t", "band_limit", 2, 0.9), rows("t", "band_limit", 4, 0.8)]))
    assert len(merged) == 6
    assert merged.loc[merged["severity"] == 2, "prob"].tolist() == [0.9, 0.9]
    assert merged.loc[merged["perturbation"] == "none", "prob"].tolist() == [0.1, 0.1]
    with pytest.raises(ValueError, match="ablation"):
        merge_predictions(existing, rows("t", "x", 1, 0.5).drop(columns="ablation"))


def test_reevaluation_of_a_real_checkpoint_adds_rows_for_a_new_suite(trained_study, capsys):
    out, data = trained_study
    before = pd.read_parquet(out / "predictions.parquet")

    # severity 0 is the identity: the re-loaded checkpoint must reproduce the trial's own clean predictions
    suite = [{"name": "band_limit", "severities": [0, 4]}]
    new = reevaluate_study(out, suite, n_jobs=1)
    n_recordings = sum(split.n_items for split in data.evals.values())
    assert len(new) == n_recordings * 2 * 5  # 2 severities x (intact + 4 branch ablations)
    after = pd.read_parquet(out / "predictions.parquet")
    assert len(after) == len(before) + len(new)
    clean = before[(before["perturbation"] == "none") & (before["ablation"] == "none")].set_index(
        ["eval_set", "recording_id"]
    )
    identity = new[(new["severity"] == 0) & (new["ablation"] == "none")].set_index(["eval_set", "recording_id"])
    np.testing.assert_allclose(identity["prob"], clean.loc[identity.index, "prob"], atol=1e-5)
    low_passed = new[(new["severity"] == 4) & (new["ablation"] == "none")].set_index(["eval_set", "recording_id"])
    assert not np.allclose(low_passed["prob"], clean.loc[low_passed.index, "prob"], atol=1e-4)
    assert json.loads((out / "study.json").read_text())["robustness_suites"] == [suite]
    # the trial's own file holds the rows too, so rebuilding the study's file from trials/ (--resume, --extend) keeps them
    pd.testing.assert_frame_equal(pd.read_parquet(out / "trials" / "t0" / "predictions.parquet"), after)

    # the same suite again, from the command line, replaces its rows instead of adding them
    assert evaluate_main([str(out), "--perturb", "[{name: band_limit, severities: [4]}]", "--jobs", "1"]) == 0
    assert "re-evaluated 1 trials on 1 perturbation levels" in capsys.readouterr().out
    assert (out / "tables" / "robustness_auc.csv").is_file() and (out / "report.md").is_file()
    assert len(pd.read_parquet(out / "predictions.parquet")) == len(after)
    assert len(pd.read_parquet(out / "trials" / "t0" / "predictions.parquet")) == len(after)


def test_branch_ablation_summary_names_every_configuration(study, tmp_path):
    folder, _, _ = study
    text = (folder / "report.md").read_text()
    start = text.index("- Branch ablation of the fusion models on clean audio")
    table = text[start:].split("\n\n")[1].splitlines()
    assert (
        table[0] == "| configuration | evaluation set | ablation | ROC-AUC intact | ROC-AUC ablated | drop [95 % CI] |"
    )
    assert [row.split(" | ")[1:3] for row in table[2:]] == [
        [PHYSIONET, "spectrogram=mean"],
        [PHYSIONET, "waveform=mean"],
        ["pascal", "spectrogram=mean"],
        ["pascal", "waveform=mean"],
    ]
    # two fusion configurations: one compact table, a row per configuration, evaluation set and ablated branch
    copy = tmp_path / "two_fusions"
    shutil.copytree(folder, copy)
    trials = pd.read_parquet(copy / "trials.parquet")
    predictions = pd.read_parquet(copy / "predictions.parquet")
    fusion = trials[trials["config/model.architecture"] == "fusion"].assign(
        trial_id=lambda t: t["trial_id"] + "-film", **{"config/model.fusion": "film"}
    )
    film_rows = predictions[predictions["trial_id"].str.startswith("fusion")].assign(
        trial_id=lambda p: p["trial_id"] + "-film"
    )
    pd.concat([trials, fusion]).to_parquet(copy / "trials.parquet", index=False)
    pd.concat([predictions, film_rows]).to_parquet(copy / "predictions.parquet", index=False)
    state = json.loads((copy / "study.json").read_text())
    state["space"]["grid"]["model.fusion"] = ["concat", "film"]
    (copy / "study.json").write_text(json.dumps(state))
    robustness.report_robustness(copy, n_resamples=N_RESAMPLES, plots=False)
    text = (copy / "report.md").read_text()
    start = text.index("- Branch ablation of the fusion models on clean audio")
    table = text[start:].split("\n\n")[1].splitlines()
    assert len(table) == 2 + 8 and sum("model.fusion=film |" in row for row in table[2:]) == 4
