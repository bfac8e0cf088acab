import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, recall_score, roc_auc_score

from study.metrics import binary_metrics, choose_threshold, icbhi_binary_scores, icbhi_scores, multiclass_metrics


def _random_binary(seed, n=200, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y - 0.3)))
    return y, np.round(prob, 1) if ties else prob


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_binary_metrics_match_sklearn(seed, threshold):
    y, prob = _random_binary(seed, ties=seed % 2 == 1)
    predicted = (prob >= threshold).astype(int)
    result = binary_metrics(y, prob, threshold)
    sensitivity = recall_score(y, predicted)
    specificity = recall_score(y, predicted, pos_label=0)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert result["mcc"] == pytest.approx(matthews_corrcoef(y, predicted), abs=1e-12)
    assert result["f1"] == pytest.approx(f1_score(y, predicted), abs=1e-12)
    assert result["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert result["sensitivity"] == pytest.approx(sensitivity, abs=1e-12)
    assert result["specificity"] == pytest.approx(specificity, abs=1e-12)
    assert result["balanced_accuracy"] == pytest.approx((sensitivity + specificity) / 2, abs=1e-12)
    assert (result["n"], result["n_pos"], result["threshold"]) == (y.size, int(y.sum()), threshold)


def test_binary_metrics_hand_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    prob = np.array([0.9, 0.6, 0.2, 0.1, 0.7, 0.3, 0.5, 0.5])
    result = binary_metrics(y, prob, 0.5)
    # predicted 1 1 0 0 1 0 1 1 -> tp 3, fn 1, fp 2, tn 2
    assert result["sensitivity"] == 0.75 and result["specificity"] == 0.5
    assert result["accuracy"] == 5 / 8 and result["f1"] == pytest.approx(6 / 9)
    assert result["mcc"] == pytest.approx((3 * 2 - 2 * 1) / np.sqrt(5 * 4 * 4 * 3))


def test_binary_metrics_single_class_is_nan_not_crash():
    result = binary_metrics(np.zeros(5, int), np.array([0.1, 0.2, 0.7, 0.4, 0.9]))
    assert np.isnan(result["roc_auc"]) and np.isnan(result["sensitivity"])
    assert result["specificity"] == 0.6 and result["mcc"] == 0.0


@pytest.mark.parametrize(
    "y, prob, message",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "only 0"),
        ([0, 1, -1], [0.1, 0.2, 0.3], "-1/1"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1], [0.1, 0.2, 0.3], "shape"),
        ([0, 1], [0.1, 1.7], r"\[0, 1\]"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_binary_metrics_validates(y, prob, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, prob)


def _brute_force_threshold(y, prob, criterion):
    distinct = np.unique(prob)
    candidates = np.concatenate(([distinct[0]], (distinct[:-1] + distinct[1:]) / 2, [1.01]))
    values = []
    for threshold in candidates:
        predicted = (prob >= threshold).astype(int)
        if criterion == "balanced_accuracy":
            values.append((recall_score(y, predicted) + recall_score(y, predicted, pos_label=0)) / 2)
        elif criterion == "accuracy":
            values.append(accuracy_score(y, predicted))
        elif criterion == "mcc":
            values.append(matthews_corrcoef(y, predicted))
        else:
            values.append(f1_score(y, predicted, zero_division=0))
    return max(values)


@pytest.mark.parametrize("criterion", ["balanced_accuracy", "accuracy", "mcc", "f1"])
@pytest.mark.parametrize("seed", range(3))
def test_choose_threshold_is_optimal(criterion, seed):
    y, prob = _random_binary(seed, n=120, ties=seed == 2)
    threshold = choose_threshold(y, prob, criterion)
    best = _brute_force_threshold(y, prob, criterion)
    metric = binary_metrics(y, prob, threshold)[criterion]
    assert metric == pytest.approx(best, abs=1e-12)
    # The threshold sits strictly between distinct probabilities (or at the lowest).
    assert threshold == prob.min() or not np.isclose(prob, threshold).any()


def test_choose_threshold_separable_and_youden_alias():
    y = np.array([0, 0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    assert choose_threshold(y, prob) == pytest.approx(0.5)
    assert choose_threshold(y, prob, "youden") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="criterion"):
        choose_threshold(y, prob, "auc")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(5, int), prob)


def test_icbhi_scores_hand_computed():
    # rows true 0..3, columns predicted 0..3
    matrix = np.array([[50, 5, 3, 2], [4, 20, 1, 5], [6, 2, 12, 0], [1, 3, 2, 4]])
    y_true = np.repeat(np.repeat(np.arange(4), 4), matrix.ravel())
    y_pred = np.repeat(np.tile(np.arange(4), 4), matrix.ravel())
    result = icbhi_scores(y_true, y_pred)
    specificity = 50 / 60
    sensitivity = (20 + 12 + 4) / (30 + 20 + 10)
    assert result["specificity"] == pytest.approx(specificity)
    assert result["sensitivity"] == pytest.approx(sensitivity)
    assert result["score"] == pytest.approx((specificity + sensitivity) / 2)
    assert result["confusion_matrix"] == matrix.tolist() and result["n"] == 120
    binary = icbhi_binary_scores(y_true, y_pred)
    # normal vs any abnormal: every abnormal not predicted normal counts
    assert binary["sensitivity"] == pytest.approx((60 - 4 - 6 - 1) / 60)
    assert binary["specificity"] == pytest.approx(specificity)
    assert binary["confusion_matrix"] == [[50, 10], [11, 49]]
    assert np.array(result["confusion_matrix"]).tolist() == confusion_matrix(y_true, y_pred).tolist()


def test_icbhi_scores_validates_and_handles_missing_groups():
    with pytest.raises(ValueError, match="y_pred"):
        icbhi_scores([0, 1, 2], [0, 4, 1])
    with pytest.raises(ValueError, match="n_classes"):
        icbhi_scores([0, 1], [0, 1], n_classes=1)
    only_normal = icbhi_scores([0, 0, 0], [0, 1, 0])
    assert only_normal["specificity"] == pytest.approx(2 / 3) and np.isnan(only_normal["sensitivity"])


def test_multiclass_metrics():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = multiclass_metrics(y, prob)
    predicted = prob.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert result["score"] == pytest.approx(icbhi_scores(y, predicted)["score"])
    assert result["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert result["roc_auc_abnormal"] == pytest.approx(roc_auc_score(y > 0, 1 - prob[:, 0]))
    assert result["n_per_class"] == np.bincount(y, minlength=4).tolist()
    # a class absent from y_true has no one-vs-rest AUC: the macro mean skips it
    without_3 = y != 3
    partial = multiclass_metrics(y[without_3], prob[without_3])
    assert np.isnan(partial["roc_auc_per_class"][3])
    assert partial["roc_auc_ovr_macro"] == pytest.approx(np.mean(partial["roc_auc_per_class"][:3]))
    with pytest.raises(ValueError, match="sum to 1"):
        multiclass_metrics(y, logits)
