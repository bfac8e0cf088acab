import json

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from analysis import calibrate


def test_simulated_scores_have_the_designed_auc_and_correlation():
    design = calibrate.Design(n_pos=2000, n_neg=2000)
    y = calibrate.labels(design)
    rng = np.random.default_rng(0)
    shift = calibrate.separation(0.82)
    a, b = calibrate.simulate_scores(design, rng, 1, (shift, calibrate.separation(0.86)), 1, seed_effects=False)[
        0, :, 0
    ]
    assert roc_auc_score(y, a) == pytest.approx(0.82, abs=0.012)
    assert roc_auc_score(y, b) == pytest.approx(0.86, abs=0.012)
    within_class = y == 0
    assert np.corrcoef(a[within_class], b[within_class])[0, 1] == pytest.approx(design.model_correlation, abs=0.05)
    predicted = (a >= shift / 2).astype(int)
    assert matthews_corrcoef(y, predicted) == pytest.approx(
        calibrate.population_mcc(design.n_pos, design.n_neg, shift), abs=0.03
    )


def test_seed_effects_keep_the_expected_auc_and_spread_the_seeds():
    design = calibrate.Design(n_pos=1500, n_neg=1500, n_seeds=40)
    y = calibrate.labels(design)
    shift = calibrate.separation(0.82, design.seed_shift_sd)
    scores = calibrate.simulate_scores(
        design, np.random.default_rng(1), 1, (shift, shift), design.n_seeds, seed_effects=True
    )[0]
    aucs = np.array([[roc_auc_score(y, seed) for seed in model] for model in scores])
    assert aucs.mean() == pytest.approx(0.82, abs=0.01)
    # per-seed AUC spread: the global seed effect (sd 0.1 of d') is about 0.018 AUC
    slope = sps.norm.pdf(shift / np.sqrt(2)) / np.sqrt(2)
    assert aucs.std(ddof=1) == pytest.approx(slope * design.seed_shift_sd, rel=0.4)
    same = calibrate.simulate_scores(
        design, np.random.default_rng(2), 1, (shift, shift), 2, seed_effects=True, same_architecture=True
    )[0]
    different = calibrate.simulate_scores(design, np.random.default_rng(2), 1, (shift, shift), 2, seed_effects=True)[0]
    # sharing the systematic errors makes the two models' seeds far more alike
    assert np.corrcoef(same[0, 0], same[1, 0])[0, 1] > np.corrcoef(different[0, 0], different[1, 0])[0, 1] + 0.2


def test_patient_test_set_is_pascal_like_and_its_recordings_correlate_within_a_patient():
    design = calibrate.Design()
    test_set = calibrate.patient_test_set(design)
    sizes = np.bincount(test_set.groups)
    assert sizes.size == 165 and sizes.max() <= 7 and 2.4 < sizes.mean() < 3.2
    rng = np.random.default_rng(4)
    shift = calibrate.separation(0.82)
    scores = calibrate.simulate_scores(design, rng, 300, (shift, shift), 1, False, test_set=test_set)[:, 0, 0]
    residual = scores - shift * test_set.y
    assert residual.std() == pytest.approx(1, abs=0.02)  # the AUC is the designed one
    assert np.mean([roc_auc_score(test_set.y, row) for row in scores[:50]]) == pytest.approx(0.82, abs=0.01)
    first, second = (np.flatnonzero(np.r_[True, np.diff(test_set.groups) != 0]) + k for k in (0, 1))
    pairs = second < test_set.y.size
    same_patient = test_set.groups[first[pairs]] == test_set.groups[second[pairs]]
    within = np.corrcoef(
        residual[:, first[pairs][same_patient]].ravel(), residual[:, second[pairs][same_patient]].ravel()
    )
    assert within[0, 1] == pytest.approx(design.patient_share, abs=0.05)


def test_power_is_high_for_a_large_difference():
    result = calibrate.run_calibration(
        n_sims=12, seed=3, n_resamples=200, n_permutations=200, design=calibrate.Design(auc_better=0.95)
    )
    power = {(row["test"], row["null"]): row["power"] for row in result["tests"]}
    assert len(power) == len(result["tests"]) == 23  # 6 + 3 + 3 + 8 + 3 rows over the five scenarios
    for (test, null), value in power.items():
        if "McNemar" not in test and "MCC" not in test and "patients" not in null:
            assert value >= 0.9, (test, null, value)
    verdicts = {row["verdict"] for row in result["coverage"]}
    assert {v for v in verdicts if not v.startswith("none: ")} <= {"ok", "FAIL", "contrast"}
    # the seed-dominated scenario at 3, 5 and 10 seeds; the Wilcoxon interval exists from 6 seeds on
    dominated = [row for row in result["coverage"] if "seed SD > recording SE" in row["data"]]
    assert [row["data"].removeprefix("same arch., ").split(",")[0] for row in dominated] == (
        ["3 seeds"] * 3 + ["5 seeds"] * 3 + ["10 seeds"] * 3
    )
    wilcoxon = [row for row in result["coverage"] if row["interval"].startswith("Wilcoxon")]
    assert len(wilcoxon) == 6 and all(np.isfinite(row["coverage"]) == ("10 seeds" in row["data"]) for row in wilcoxon)
    assert 0.02 < result["mde"]["predicted_mde"] < 0.1


def test_main_prints_json_and_table(capsys):
    assert calibrate.main(["--sims", "6", "--resamples", "50", "--permutations", "50", "--json", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["n_sims"] == 6 and result["settings"]["seed"] == 1
    assert all(0 <= row["fpr"] <= 1 and 0 <= row["power"] <= 1 for row in result["tests"])
    assert [row["interval"] for row in result["coverage"]][:2] == ["ROC-AUC, percentile", "ROC-AUC, BCa"]
    assert calibrate.main(["--sims", "4", "--resamples", "50", "--permutations", "50"]) == 0
    table = capsys.readouterr().out
    assert "DeLong (ROC-AUC)" in table and "Coverage of 95 %" in table and "auc_difference_mde" in table
    with pytest.raises(SystemExit):
        calibrate.main(["--sims", "1"])
