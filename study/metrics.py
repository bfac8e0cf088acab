"""Per-trial classification metrics over per-recording probabilities.

Binary tasks (PhysioNet 2016, PASCAL) use label 1 = abnormal, 0 = normal and a
probability of "abnormal" per recording. The ICBHI 2017 task has four classes
(0 normal, 1 crackle, 2 wheeze, 3 both) and is scored with the challenge's
sensitivity / specificity / Score. All rates are fractions in [0, 1], not
percentages.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

__all__ = [
    "THRESHOLD_CRITERIA",
    "binary_metrics",
    "check_binary_labels",
    "check_probabilities",
    "choose_threshold",
    "confusion_metrics",
    "icbhi_binary_scores",
    "icbhi_scores",
    "multiclass_metrics",
]

THRESHOLD_CRITERIA = ("balanced_accuracy", "youden", "accuracy", "mcc", "f1")


def check_binary_labels(y_true, name: str = "y_true") -> np.ndarray:
    """Return ``y_true`` as a 1-D int8 array of 0/1 labels, or raise ValueError."""
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers 0/1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(
            f"{name} must hold only 0 (normal) and 1 (abnormal); found {np.unique(y[bad])[:5]} "
            "(map PhysioNet's -1/1 labels to 0/1 first)"
        )
    return y.astype(np.int8)


def check_probabilities(prob, n: int, name: str = "prob") -> np.ndarray:
    """Return ``prob`` as a 1-D float64 array of length ``n`` with values in [0, 1]."""
    p = np.asarray(prob, dtype=np.float64)
    if p.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the labels, got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains {np.count_nonzero(~np.isfinite(p))} NaN/inf values")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(
            f"{name} must be probabilities in [0, 1], got range [{p.min():.4g}, {p.max():.4g}] "
            "(pass sigmoid(logits), not logits)"
        )
    return p


def confusion_metrics(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts; every input broadcasts (numpy arrays).

    Counts may be weighted (bootstrap multiplicities), so they are floats.
    Conventions follow scikit-learn: MCC and F1 are 0 when undefined;
    sensitivity (specificity) is NaN when there are no positives (negatives).
    """
    tp, fp, tn, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, tn, fn))
    positives, negatives = tp + fn, tn + fp
    total = positives + negatives
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = np.where(positives > 0, tp / positives, np.nan)
        specificity = np.where(negatives > 0, tn / negatives, np.nan)
        mcc_denominator = np.sqrt((tp + fp) * positives * negatives * (tn + fn))
        mcc = np.where(mcc_denominator > 0, (tp * tn - fp * fn) / mcc_denominator, 0.0)
        f1_denominator = 2 * tp + fp + fn
        f1 = np.where(f1_denominator > 0, 2 * tp / f1_denominator, 0.0)
        accuracy = (tp + tn) / total
    return {
        "accuracy": accuracy,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "mcc": mcc,
        "f1": f1,
    }


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict:
    """Recording-level metrics of a binary classifier.

    Parameters
    ----------
    y_true : array of shape (n,), labels 0 (normal) / 1 (abnormal).
    prob : array of shape (n,), predicted probability of "abnormal" in [0, 1].
    threshold : a recording is predicted abnormal when ``prob >= threshold``;
        choose it on validation data with :func:`choose_threshold`.

    Returns
    -------
    dict with roc_auc (NaN when ``y_true`` holds one class), mcc, f1 (abnormal
    class), accuracy, sensitivity, specificity, balanced_accuracy (the
    PhysioNet 2016 MAcc: mean of sensitivity and specificity), n, n_pos and
    threshold. Rates are floats in [0, 1].
    """
    y = check_binary_labels(y_true)
    p = check_probabilities(prob, y.size)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    predicted = p >= threshold
    positive = y == 1
    tp = np.count_nonzero(predicted & positive)
    fp = np.count_nonzero(predicted & ~positive)
    fn = np.count_nonzero(~predicted & positive)
    tn = y.size - tp - fp - fn
    n_pos = int(positive.sum())
    roc_auc = roc_auc_score(y, p) if 0 < n_pos < y.size else float("nan")
    scores = {name: float(value) for name, value in confusion_metrics(tp, fp, tn, fn).items()}
    return {
        "roc_auc": float(roc_auc),
        **scores,
        "n": int(y.size),
        "n_pos": n_pos,
        "threshold": float(threshold),
    }


def choose_threshold(y_val, prob_val, criterion: str = "balanced_accuracy") -> float:
    """The decision threshold that maximises ``criterion`` on validation data.

    Candidates are the midpoints between consecutive distinct probabilities,
    plus the smallest probability (all abnormal) and a value just above the
    largest (all normal), so every distinct split of the sorted validation
    probabilities is tried once: O(n log n), one sort and cumulative counts.
    Ties in the criterion go to the lowest threshold (favouring sensitivity).

    Parameters
    ----------
    y_val : array of shape (n,), validation labels 0/1 with both classes present.
    prob_val : array of shape (n,), validation probabilities of "abnormal".
    criterion : "balanced_accuracy" (equivalently "youden": J = 2 * BA - 1),
        "accuracy", "mcc" or "f1".

    Returns
    -------
    float threshold to use as ``prob >= threshold`` on the test data.
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"criterion must be one of {THRESHOLD_CRITERIA}, got {criterion!r}")
    y = check_binary_labels(y_val, "y_val")
    p = check_probabilities(prob_val, y.size, "prob_val")
    n_pos = int(y.sum())
    if n_pos in (0, y.size):
        raise ValueError("y_val must contain both classes to choose a threshold")
    distinct, inverse = np.unique(p, return_inverse=True)
    pos_per_value = np.bincount(inverse, weights=y, minlength=distinct.size)
    neg_per_value = np.bincount(inverse, minlength=distinct.size) - pos_per_value
    # Candidate k predicts abnormal for the values distinct[k:], so k = 0 is
    # "all abnormal" and k = len(distinct) is "all normal".
    tp = np.append(np.cumsum(pos_per_value[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(neg_per_value[::-1])[::-1], 0.0)
    candidates = np.concatenate(
        ([distinct[0]], (distinct[:-1] + distinct[1:]) / 2, [np.nextafter(distinct[-1], np.inf)])
    )
    key = "balanced_accuracy" if criterion == "youden" else criterion
    values = confusion_metrics(tp, fp, (y.size - n_pos) - fp, n_pos - tp)[key]
    return float(candidates[np.argmax(values)])


def _check_class_labels(labels, n_classes: int, name: str, n: int | None = None) -> np.ndarray:
    values = np.asarray(labels)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if n is not None and values.size != n:
        raise ValueError(f"{name} has {values.size} entries but y_true has {n}")
    if values.dtype.kind not in "biuf" or not np.isin(values, np.arange(n_classes)).all():
        raise ValueError(f"{name} must hold integer class labels 0..{n_classes - 1}")
    return values.astype(np.int64)


def _icbhi_from_confusion(matrix: np.ndarray) -> dict:
    normal_total = matrix[0].sum()
    abnormal_total = matrix[1:].sum()
    specificity = matrix[0, 0] / normal_total if normal_total else float("nan")
    # Exact class match: the diagonal of the abnormal block.
    sensitivity = np.trace(matrix[1:, 1:]) / abnormal_total if abnormal_total else float("nan")
    return {
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "score": float((sensitivity + specificity) / 2),
        "confusion_matrix": matrix.tolist(),
        "n": int(matrix.sum()),
    }


def icbhi_scores(y_true, y_pred, n_classes: int = 4) -> dict:
    """ICBHI 2017 challenge scores of class predictions.

    Class 0 is normal, classes 1..n_classes-1 are abnormal (ICBHI: 1 crackle,
    2 wheeze, 3 both). Specificity = normal items predicted normal / all
    normal; sensitivity = abnormal items predicted as their exact class / all
    abnormal; score = (sensitivity + specificity) / 2. A rate is NaN when its
    class group is absent.

    Parameters
    ----------
    y_true, y_pred : arrays of shape (n,), integer class labels 0..n_classes-1.

    Returns
    -------
    dict with sensitivity, specificity, score (fractions, not %), the
    confusion_matrix as a list of lists (rows true, columns predicted) and n.
    """
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    truth = _check_class_labels(y_true, n_classes, "y_true")
    predicted = _check_class_labels(y_pred, n_classes, "y_pred", truth.size)
    matrix = confusion_matrix(truth, predicted, labels=np.arange(n_classes))
    return _icbhi_from_confusion(matrix)


def icbhi_binary_scores(y_true, y_pred, n_classes: int = 4) -> dict:
    """ICBHI scores for normal vs any abnormal: a crackle predicted as wheeze counts as correct.

    Inputs are class labels 0..n_classes-1 (as in :func:`icbhi_scores`) or
    already-binary 0/1 labels; the result has a 2 x 2 confusion matrix.
    """
    truth = _check_class_labels(y_true, n_classes, "y_true")
    predicted = _check_class_labels(y_pred, n_classes, "y_pred", truth.size)
    matrix = confusion_matrix(truth > 0, predicted > 0, labels=[False, True])
    return _icbhi_from_confusion(matrix)


def multiclass_metrics(y_true, prob) -> dict:
    """Metrics of a multi-class classifier (ICBHI: 4 classes, class 0 normal).

    Parameters
    ----------
    y_true : array of shape (n,), class labels 0..K-1.
    prob : array of shape (n, K), class probabilities; rows sum to 1.

    Returns
    -------
    dict with accuracy (of the argmax prediction), the ICBHI sensitivity,
    specificity and score, the same for normal vs any abnormal
    (``binary_*``), roc_auc_ovr_macro (mean one-vs-rest ROC-AUC over the
    classes present together with others in ``y_true``; NaN if none),
    roc_auc_per_class (NaN where undefined), roc_auc_abnormal (ROC-AUC of
    1 - p(normal) for normal vs any abnormal), confusion_matrix, n and
    n_per_class.
    """
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"prob must have shape (n, n_classes >= 2), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"prob contains {np.count_nonzero(~np.isfinite(p))} NaN/inf values")
    if p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("prob rows must be non-negative and sum to 1 (pass softmax outputs)")
    n_classes = p.shape[1]
    truth = _check_class_labels(y_true, n_classes, "y_true", p.shape[0])
    predicted = p.argmax(axis=1)
    scores = icbhi_scores(truth, predicted, n_classes)
    binary = icbhi_binary_scores(truth, predicted, n_classes)
    per_class_auc = [
        roc_auc_score(truth == k, p[:, k]) if 0 < np.count_nonzero(truth == k) < truth.size else np.nan
        for k in range(n_classes)
    ]
    defined = [auc for auc in per_class_auc if np.isfinite(auc)]
    abnormal = truth > 0
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "sensitivity": scores["sensitivity"],
        "specificity": scores["specificity"],
        "score": scores["score"],
        "binary_sensitivity": binary["sensitivity"],
        "binary_specificity": binary["specificity"],
        "binary_score": binary["score"],
        "roc_auc_ovr_macro": float(np.mean(defined)) if defined else float("nan"),
        "roc_auc_per_class": [float(auc) for auc in per_class_auc],
        "roc_auc_abnormal": float(roc_auc_score(abnormal, 1 - p[:, 0]))
        if 0 < abnormal.sum() < truth.size
        else float("nan"),
        "confusion_matrix": scores["confusion_matrix"],
        "n": int(truth.size),
        "n_per_class": np.bincount(truth, minlength=n_classes).tolist(),
    }
