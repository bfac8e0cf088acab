import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from analysis import stats
from study.metrics import binary_metrics


def _two_models(seed, n_pos=60, n_neg=70, shift_a=1.2, shift_b=0.9, ties=False):
    """Labels and two correlated binormal score vectors."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    shared = rng.normal(size=y.size)
    a = shift_a * y + 0.7 * shared + 0.7 * rng.normal(size=y.size)
    b = shift_b * y + 0.7 * shared + 0.7 * rng.normal(size=y.size)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


# --- vectorised AUC -----------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_auc_resampled_equals_sklearn_on_every_resample(ties):
    y, a, b = _two_models(0, ties=ties)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, y.size, size=(40, y.size))
    idx[0] = np.flatnonzero(y == 0)[rng.integers(0, 70, y.size)]  # one class only
    aucs = stats.auc_resampled(y, np.stack([a, b]), idx)
    assert aucs.shape == (2, 40) and np.isnan(aucs[:, 0]).all()
    for row in range(1, 40):
        for seed, scores in enumerate((a, b)):
            assert aucs[seed, row] == pytest.approx(roc_auc_score(y[idx[row]], scores[idx[row]]), abs=1e-12)


def test_weighted_auc_jackknife_weights_equal_leave_one_out():
    y, a, _ = _two_models(2, n_pos=15, n_neg=12, ties=True)
    weights = 1 - np.eye(y.size)
    loo = stats.weighted_auc(y, a, weights)
    expected = [roc_auc_score(np.delete(y, i), np.delete(a, i)) for i in range(y.size)]
    np.testing.assert_allclose(loo, expected, atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        stats.weighted_auc(y, a, -weights)


@pytest.mark.parametrize("metric", ["roc_auc", "mcc", "balanced_accuracy"])
def test_closed_form_leave_one_out_equals_reweighting(metric):
    y, a, b = _two_models(3, n_pos=20, n_neg=17, ties=True)
    scores, thresholds = np.stack([a, b]), np.array([0.3, 0.5])
    closed_form = stats.leave_one_out_values(metric, y, scores, thresholds)
    reweighted = stats.metric_kernel(metric, y, scores, thresholds, 1 - np.eye(y.size))
    np.testing.assert_allclose(closed_form, reweighted, atol=1e-12)


def test_stratified_indices_keep_class_counts_and_groups_stay_whole():
    y = np.r_[np.zeros(30, int), np.ones(20, int)]
    idx = stats.stratified_bootstrap_indices(y, 500, rng=0)
    assert idx.shape == (500, 50)
    assert (y[idx].sum(axis=1) == 20).all()
    # every recording is drawn about equally often
    assert np.bincount(idx.ravel(), minlength=50).std() / (500 * 50 / 50) < 0.1
    groups = np.repeat(np.arange(25), 2)  # pairs of recordings share a patient
    counts = stats.stratified_bootstrap_indices(y, 500, rng=0, groups=groups)
    assert counts.shape == (500, 50)
    np.testing.assert_array_equal(counts[:, 0::2], counts[:, 1::2])
    pure_normal, pure_abnormal = np.arange(0, 30, 2), np.arange(30, 50, 2)
    assert (counts[:, pure_normal].sum(axis=1) == 15).all() and (counts[:, pure_abnormal].sum(axis=1) == 10).all()


# --- bootstrap confidence intervals -------------------------------------------


def test_bca_matches_scipy_on_the_same_bootstrap_distribution():
    y, a, _ = _two_models(3, n_pos=40, n_neg=35)
    ours = stats.bootstrap_ci(y, a, n_resamples=3000, method="bca", rng=7)
    # Recompute the same draws, then let scipy build its BCa interval on them:
    # a stratified bootstrap is scipy's independent two-sample bootstrap of (positives, negatives).
    units, strata = stats.resampling_units(y, None)
    distribution = stats.seed_mean_bootstrap(
        "roc_auc", y, [(a[None], np.array([0.5]))], units, strata, 3000, np.random.default_rng(7), True
    )[0]

    def auc(positives, negatives, axis=-1):
        difference = positives[..., :, None] - negatives[..., None, :]
        return ((difference > 0) + 0.5 * (difference == 0)).mean(axis=(-2, -1))

    reference = sps.bootstrap(
        (a[y == 1], a[y == 0]),
        auc,
        n_resamples=0,
        method="BCa",
        vectorized=True,
        bootstrap_result=SimpleNamespace(bootstrap_distribution=distribution),
    )
    assert ours.estimate == pytest.approx(roc_auc_score(y, a))
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=1e-10)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=1e-10)
    percentile = stats.bootstrap_ci(y, a, n_resamples=3000, method="percentile", rng=7)
    assert (percentile.low, percentile.high) == pytest.approx(tuple(np.quantile(distribution, [0.025, 0.975])))
    assert percentile.standard_error == pytest.approx(distribution.std(ddof=1))


def test_identical_seeds_give_the_single_seed_interval():
    y, a, _ = _two_models(4)
    single = stats.bootstrap_ci(y, a, n_resamples=1000, rng=3)
    repeated = stats.bootstrap_ci(y, np.tile(a, (4, 1)), n_resamples=1000, rng=3)
    assert (repeated.estimate, repeated.low, repeated.high) == pytest.approx((single.estimate, single.low, single.high))
    assert repeated.method == single.method == "bca" and (repeated.n_seeds, single.n_seeds) == (4, 1)


def test_seed_resampling_widens_the_interval_by_the_seed_spread():
    y, a, _ = _two_models(5, n_pos=150, n_neg=150)
    rng = np.random.default_rng(0)
    # five seeds whose AUCs differ a lot: a seed-level shift of the abnormal scores
    seeds = a + np.outer(rng.normal(0, 0.6, 5), y)
    per_seed = [roc_auc_score(y, s) for s in seeds]
    with_seeds = stats.bootstrap_ci(y, seeds, n_resamples=4000, method="percentile", rng=1)
    recordings_only = stats.bootstrap_ci(y, seeds, n_resamples=4000, method="percentile", rng=1, resample_seeds=False)
    assert with_seeds.estimate == pytest.approx(np.mean(per_seed))
    # the seed shift barely interacts with the recordings, so the total is V_rec + V_seed, on S - 1 = 4 df or more
    v_seed = np.var(per_seed, ddof=1) / 5
    total = recordings_only.standard_error**2 + v_seed
    half_width = special.stdtrit(total**2 * 4 / v_seed**2, 0.975) * np.sqrt(total)
    assert (with_seeds.high - with_seeds.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert with_seeds.standard_error > 1.2 * recordings_only.standard_error


def test_threshold_metrics_under_resampling_match_binary_metrics():
    y, a, b = _two_models(6)
    prob = 1 / (1 + np.exp(-np.stack([a, b])))
    idx = stats.stratified_bootstrap_indices(y, 15, rng=2)
    weights = np.stack([np.bincount(row, minlength=y.size) for row in idx]).astype(float)
    thresholds = np.array([0.55, 0.6])
    for metric in ("accuracy", "mcc", "f1", "balanced_accuracy", "sensitivity", "specificity"):
        values = stats.metric_kernel(metric, y, prob, thresholds, weights.T)
        for row in range(15):
            for seed in range(2):
                expected = binary_metrics(y[idx[row]], prob[seed, idx[row]], thresholds[seed])[metric]
                assert values[seed, row] == pytest.approx(expected, abs=1e-12)


def test_cluster_bootstrap_sees_through_duplicated_recordings():
    y, a, _ = _two_models(7, n_pos=80, n_neg=80)
    original = stats.bootstrap_ci(y, a, n_resamples=3000, method="percentile", rng=0)
    tripled_y, tripled_a, patients = np.repeat(y, 3), np.repeat(a, 3), np.repeat(np.arange(y.size), 3)
    naive = stats.bootstrap_ci(tripled_y, tripled_a, n_resamples=3000, method="percentile", rng=0)
    clustered = stats.bootstrap_ci(tripled_y, tripled_a, n_resamples=3000, method="bca", rng=0, groups=patients)
    assert clustered.standard_error == pytest.approx(original.standard_error, rel=0.08)
    assert naive.standard_error == pytest.approx(original.standard_error / np.sqrt(3), rel=0.08)


def test_bootstrap_interval_says_when_it_falls_back():
    rng = np.random.default_rng(9)
    distribution = rng.normal(0.8, 0.05, 2000)
    percentile = stats.bootstrap_interval(distribution, 0.8)
    assert (percentile.low, percentile.high) == pytest.approx(tuple(np.quantile(distribution, [0.025, 0.975])))
    assert percentile.method == "percentile" and percentile.n_resamples == 2000
    jackknife = [rng.normal(0.8, 0.01, 50)]
    bca = stats.bootstrap_interval(distribution, 0.8, method="bca", jackknife=lambda: jackknife)
    assert bca.method == "bca" and bca.low != percentile.low
    undefined_jackknife = stats.bootstrap_interval(
        distribution, 0.8, method="bca", jackknife=lambda: [np.array([0.8, np.nan])]
    )
    assert undefined_jackknife.method.startswith("percentile (BCa undefined")
    assert (undefined_jackknife.low, undefined_jackknife.high) == (percentile.low, percentile.high)
    with_nan = stats.bootstrap_interval(np.r_[distribution, np.nan], 0.8)
    assert np.isnan(with_nan.low) and np.isnan(with_nan.high) and with_nan.method == "undefined in some resamples"
    constant = stats.bootstrap_interval(
        np.full(100, 0.7), 0.7, method="bca", jackknife=lambda: pytest.fail("not needed")
    )
    assert (constant.low, constant.high, constant.method) == (0.7, 0.7, "bca")
    with pytest.raises(ValueError, match="bca needs jackknife"):
        stats.bootstrap_interval(distribution, 0.8, method="bca")


def test_bootstrap_p_value_has_a_floor_and_a_cap():
    assert stats.bootstrap_p_value(np.full(999, 0.1)) == pytest.approx(2 / 1000)  # no resample at or below 0
    assert stats.bootstrap_p_value(np.zeros(999)) == 1.0
    differences = np.r_[-np.ones(10), np.ones(89)]
    assert stats.bootstrap_p_value(differences) == pytest.approx(2 * 11 / 100)
    assert stats.bootstrap_p_value(-differences) == stats.bootstrap_p_value(differences)


def test_seed_mean_ci_uses_scipy():
    values = np.array([0.84, 0.86, 0.85, 0.88, 0.83, 0.86])
    result = stats.seed_mean_ci(values, rng=0, n_resamples=2000)
    reference = sps.bootstrap((values,), np.mean, n_resamples=2000, rng=np.random.default_rng(0))
    assert result.estimate == pytest.approx(values.mean())
    assert (result.low, result.high) == pytest.approx(
        (reference.confidence_interval.low, reference.confidence_interval.high)
    )
    constant = stats.seed_mean_ci([0.8, 0.8, 0.8])
    assert (constant.estimate, constant.low, constant.high, constant.standard_error) == pytest.approx(
        (0.8, 0.8, 0.8, 0.0)
    )
    assert result.standard_error == pytest.approx(reference.standard_error) and result.n_resamples == 2000


# --- DeLong ---------------------------------------------------------------------


def _slow_delong(y, a, b):
    """DeLong et al. (1988) with explicit loops over every positive/negative pair."""
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(positives), len(negatives)
    components = []
    for scores in (a, b):
        psi = [
            [1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0 for j in negatives]
            for i in positives
        ]
        psi = np.array(psi)
        components.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    auc_a, auc_b = components[0][0], components[1][0]

    def covariance(u, v, mean_u, mean_v):
        return sum((ui - mean_u) * (vi - mean_v) for ui, vi in zip(u, v, strict=True)) / (len(u) - 1)

    s = {}
    for key, (ax, x10, x01), (ay, y10, y01) in (
        ("aa", components[0], components[0]),
        ("bb", components[1], components[1]),
        ("ab", components[0], components[1]),
    ):
        s[key] = covariance(x10, y10, ax, ay) / m + covariance(x01, y01, ax, ay) / n
    z = (auc_a - auc_b) / np.sqrt(s["aa"] + s["bb"] - 2 * s["ab"])
    return auc_a, auc_b, s["aa"], s["bb"], s["ab"], z, 2 * (1 - sps.norm.cdf(abs(z)))


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_delong_matches_slow_structural_components(seed, ties):
    y, a, b = _two_models(seed, n_pos=23, n_neg=31, ties=ties)
    auc_a, auc_b, var_a, var_b, cov, z, p = _slow_delong(y, a, b)
    result = stats.delong_test(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-12) and result.difference == pytest.approx(
        auc_a - auc_b, abs=1e-12
    )
    assert (result.var_a, result.var_b, result.cov) == pytest.approx((var_a, var_b, cov), rel=1e-10)
    assert result.z == pytest.approx(z, rel=1e-10) and result.p_value == pytest.approx(p, rel=1e-8)
    single = stats.delong_variance(y, a)
    assert single == pytest.approx((auc_a, var_a), rel=1e-10)


def test_delong_hand_example():
    # positives 0.9, 0.5, 0.2 against negatives 0.1, 0.5, 0.3: psi = [[1, 1, 1], [1, .5, 1], [1, 0, 0]]
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.5, 0.2, 0.1, 0.5, 0.3])
    result = stats.delong_variance(y, a)
    v10 = np.array([1, 2.5 / 3, 1 / 3])  # row means of psi
    v01 = np.array([1, 0.5, 2 / 3])  # column means of psi
    assert result.auc == pytest.approx(6.5 / 9)
    assert result.variance == pytest.approx(np.var(v10, ddof=1) / 3 + np.var(v01, ddof=1) / 3)
    identical = stats.delong_test(y, a, a)
    assert identical.difference == 0 and identical.z == 0 and identical.p_value == 1


def test_delong_agrees_with_paired_bootstrap():
    for seed in range(3):
        y, a, b = _two_models(10 + seed, n_pos=150, n_neg=150)
        delong = stats.delong_test(y, a, b)
        boot = stats.paired_bootstrap_test(y, a, b, n_resamples=4000, rng=seed)
        bootstrap_se = (boot.high - boot.low) / (2 * sps.norm.ppf(0.975))
        assert boot.difference == pytest.approx(delong.difference)
        assert bootstrap_se == pytest.approx(np.sqrt(delong.var_a + delong.var_b - 2 * delong.cov), rel=0.08)
        assert abs(boot.p_value - delong.p_value) < 0.03 + 0.25 * delong.p_value


def test_delong_validates():
    with pytest.raises(ValueError, match="both classes"):
        stats.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="at least 2"):
        stats.delong_test([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="scores_b"):
        stats.delong_test([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1])


# --- paired tests -----------------------------------------------------------------


def test_paired_bootstrap_identical_models():
    y, a, _ = _two_models(8)
    result = stats.paired_bootstrap_test(y, a, a, "roc_auc", 500, rng=0)
    assert result.difference == 0 and result.p_value == 1.0 and result.low == result.high == 0


def test_paired_bootstrap_validates():
    y, a, b = _two_models(8)
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_bootstrap_test(y, np.stack([a, a]), b)
    with pytest.raises(ValueError, match="metric"):
        stats.paired_bootstrap_test(y, a, b, "auc")
    with pytest.raises(ValueError, match="threshold"):
        stats.paired_bootstrap_test(y, a, b, "accuracy", threshold=[0.1, 0.2, 0.3])


def test_permutation_test_matches_full_enumeration():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred_a = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1])
    pred_b = np.array([0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 1])

    def accuracy_difference(swap):
        new_a, new_b = np.where(swap, pred_b, pred_a), np.where(swap, pred_a, pred_b)
        return np.mean(new_a == y) - np.mean(new_b == y)

    observed = accuracy_difference(np.zeros(11, bool))
    exact = np.mean(
        [
            abs(accuracy_difference(np.array(s, bool))) >= abs(observed) - 1e-12
            for s in itertools.product([0, 1], repeat=11)
        ]
    )
    result = stats.paired_permutation_test(y, pred_a, pred_b, "accuracy", 20_000, rng=0)
    assert result.difference == pytest.approx(observed)
    assert result.p_value == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize("ties", [False, True])
def test_auc_swap_effects_reproduce_swapped_aucs(ties):
    y, a, b = _two_models(11, n_pos=25, n_neg=20, ties=ties)
    rank_a, rank_b = sps.rankdata(a), sps.rankdata(b)
    effects = stats.auc_swap_effects(y, a, b)
    rng = np.random.default_rng(0)
    for _ in range(20):
        swap = rng.random(y.size) < 0.5
        expected = roc_auc_score(y, np.where(swap, rank_b, rank_a)) - roc_auc_score(y, np.where(swap, rank_a, rank_b))
        assert np.where(swap, -1, 1) @ effects == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", ["mcc", "f1", "roc_auc"])
def test_permutation_test_equals_brute_force_with_seeds(metric):
    y, a, b = _two_models(12, n_pos=30, n_neg=25, shift_a=1.0, shift_b=0.8, ties=True)
    seeds_a, seeds_b = np.stack([a, a + 0.3 * y]), np.stack([b, b - 0.2])
    thresholds = np.array([0.4, 0.5])
    result = stats.paired_permutation_test(y, seeds_a, seeds_b, metric, 100, rng=4, threshold=thresholds)
    swaps = np.random.default_rng(4).random((100, y.size)) < 0.5  # the draws the function makes

    def seed_mean(first, second):
        values = []
        for seed in range(2):
            if metric == "roc_auc":
                values.append(roc_auc_score(y, first[seed]) - roc_auc_score(y, second[seed]))
            else:
                one = binary_metrics(y, (first[seed] >= thresholds[seed]).astype(float), 0.5)[metric]
                two = binary_metrics(y, (second[seed] >= thresholds[seed]).astype(float), 0.5)[metric]
                values.append(one - two)
        return np.mean(values)

    outputs_a = sps.rankdata(seeds_a, axis=1) if metric == "roc_auc" else seeds_a
    outputs_b = sps.rankdata(seeds_b, axis=1) if metric == "roc_auc" else seeds_b
    observed = seed_mean(outputs_a, outputs_b)
    permuted = [seed_mean(np.where(swap, outputs_b, outputs_a), np.where(swap, outputs_a, outputs_b)) for swap in swaps]
    assert result.difference == pytest.approx(observed, abs=1e-12)
    assert result.p_value == pytest.approx((1 + np.sum(np.abs(permuted) >= abs(observed) - 1e-12)) / 101)


def test_permutation_auc_uses_ranks_and_detects_a_difference():
    y, a, b = _two_models(9, n_pos=100, n_neg=100, shift_a=1.6, shift_b=0.6)
    result = stats.paired_permutation_test(y, a, b, "roc_auc", 2000, rng=0)
    assert result.value_a == pytest.approx(roc_auc_score(y, a)) and result.value_b == pytest.approx(roc_auc_score(y, b))
    assert result.p_value == pytest.approx(1 / 2001)
    # a monotone rescaling of one model changes nothing
    rescaled = stats.paired_permutation_test(y, a, np.exp(3 * b), "roc_auc", 2000, rng=0)
    assert rescaled == result
    same = stats.paired_permutation_test(y, a, a.copy(), "roc_auc", 200, rng=0)
    assert same.p_value == 1.0


def test_mcnemar_exact_and_chi_square():
    y = np.ones(40, int)
    pred_a = np.r_[np.ones(30), np.zeros(10)].astype(int)
    pred_b = np.r_[np.ones(22), np.zeros(8), np.ones(3), np.zeros(7)].astype(int)
    # only a correct: 8, only b correct: 3 -> 11 discordant, exact
    result = stats.mcnemar_test(y, pred_a, pred_b)
    assert (result.n_only_a_correct, result.n_only_b_correct) == (8, 3)
    assert result.method == "exact binomial"
    assert result.p_value == pytest.approx(sps.binomtest(8, 11, 0.5).pvalue)
    assert result.accuracy_a == 0.75
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    pred_a = np.where(rng.random(400) < 0.8, y, 1 - y)
    pred_b = np.where(rng.random(400) < 0.7, y, 1 - y)
    result = stats.mcnemar_test(y, pred_a, pred_b)
    b = np.count_nonzero((pred_a == y) & (pred_b != y))
    c = np.count_nonzero((pred_a != y) & (pred_b == y))
    assert b + c >= 25 and result.statistic == pytest.approx((abs(b - c) - 1) ** 2 / (b + c))
    assert result.p_value == pytest.approx(sps.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1))
    assert stats.mcnemar_test(y, pred_a, pred_a).p_value == 1.0


def test_wilcoxon_seeds():
    a = np.array([0.86, 0.85, 0.87, 0.88, 0.84, 0.86, 0.87, 0.85])
    b = a - np.array([0.031, 0.005, 0.027, 0.022, 0.004, 0.05, 0.012, 0.038])
    result = stats.wilcoxon_seeds(a, b)
    assert result.p_value == pytest.approx(sps.wilcoxon(a, b, method="exact").pvalue)
    assert result.p_value == pytest.approx(2 / 2**8) and result.method == "exact" and result.note == ""
    few = stats.wilcoxon_seeds(a[:5], b[:5])
    assert few.p_value == pytest.approx(0.0625) and "cannot reject" in few.note
    assert stats.wilcoxon_seeds([0.8, 0.8], [0.8, 0.8]).p_value == 1.0


def test_wilcoxon_seeds_ties_and_zeros_enumerate_sign_flips():
    a = np.array([0.8, 0.82, 0.83, 0.9, 0.7, 0.75, 0.71, 0.66])
    b = np.array([0.8, 0.81, 0.82, 0.88, 0.68, 0.74, 0.72, 0.69])  # one zero, tied magnitudes
    result = stats.wilcoxon_seeds(a, b)
    assert result.n_nonzero == 7 and "enumeration" in result.method and "1 zero" in result.note
    differences = np.round(a - b, 12)[1:]
    ranks = sps.rankdata(np.abs(differences))
    observed = ranks[differences > 0].sum()
    totals = np.array([(np.array(signs) * ranks).sum() for signs in itertools.product([0, 1], repeat=7)])
    exact = np.mean(np.abs(totals - ranks.sum() / 2) >= abs(observed - ranks.sum() / 2) - 1e-12)
    assert result.p_value == pytest.approx(exact)
    reference = sps.wilcoxon(differences, method=sps.PermutationMethod())
    assert (result.statistic, result.p_value) == pytest.approx((reference.statistic, reference.pvalue))


def test_resampling_floor_of_corrected_families():
    # two-sided bootstrap p >= 2 / (B + 1); Holm multiplies the smallest by the family size
    assert stats.smallest_adjusted_p(2 / 2001, 60, "holm") == pytest.approx(120 / 2001)
    assert stats.smallest_adjusted_p(2 / 2001, 60, "bh") == pytest.approx(2 / 2001)
    assert stats.smallest_adjusted_p(0.5, 60, "holm") == 1.0
    warning = stats.resampling_floor_warning(2000, 60, "holm", 0.05)
    assert "0.06" in warning and "2,000 bootstrap resamples" in warning and "--resamples 24,000" in warning
    assert stats.resampling_floor_warning(10_000, 60, "holm", 0.05) is None  # 120 / 10001 = 0.012
    assert stats.resampling_floor_warning(2000, 60, "bh", 0.05) is None
    # a permutation p's floor is 1 / (B + 1): 40 tests x 1 / 1001 = 0.04 < 0.05, two-sided bootstrap 0.08 is not
    assert stats.resampling_floor_warning(1000, 40, "holm", 0.05, what="permutation", two_sided=False) is None
    assert stats.resampling_floor_warning(1000, 40, "holm", 0.05) is not None
    for bad in (
        {"p_floor": 0.0, "n_tests": 3},
        {"p_floor": 0.01, "n_tests": 0},
        {"p_floor": 0.01, "n_tests": 3, "method": "x"},
    ):
        with pytest.raises(ValueError):
            stats.smallest_adjusted_p(**bad)


def test_adjust_pvalues_hand_computed():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(stats.adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.adjust_pvalues(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(stats.adjust_pvalues([0.5, 0.4], "holm"), [0.8, 0.8])
    with pytest.raises(ValueError, match="method"):
        stats.adjust_pvalues(p, "bonferroni")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.adjust_pvalues([0.2, 1.5])


def test_auc_difference_mde():
    # Hanley & McNeil for AUC 0.8 with 50 + 50: Q1 = 2/3, Q2 = 0.64 / 0.9
    expected = (0.16 + 49 * (2 / 3 - 0.64) + 49 * (1.28 / 1.8 - 0.64)) / 2500
    assert stats.hanley_mcneil_variance(0.8, 50, 50) == pytest.approx(expected)
    delta = stats.auc_difference_mde(150, 150, 0.82, rho=0.5)
    var_a, var_b = stats.hanley_mcneil_variance(0.82, 150, 150), stats.hanley_mcneil_variance(0.82 + delta, 150, 150)
    sd = np.sqrt(var_a + var_b - 2 * 0.5 * np.sqrt(var_a * var_b))
    assert delta == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * sd, rel=1e-8)
    assert 0.03 < delta < 0.07
    assert stats.auc_difference_mde(150, 150, 0.82, rho=0.8) < delta < stats.auc_difference_mde(150, 150, 0.82, rho=0.0)
    assert np.isnan(stats.auc_difference_mde(5, 5, 0.9, rho=0.0))
    with pytest.raises(ValueError, match="rho"):
        stats.auc_difference_mde(150, 150, 0.82, rho=1.5)


# --- clustered recordings (several per patient) -------------------------------------


def _clustered_models(seed, n_patients=60, max_size=5, icc=0.6):
    """Labels, two models' scores and patient ids: 1..max_size recordings per patient, correlated within a patient."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    patient_label = rng.random(n_patients) < 0.45
    y = patient_label[patients].astype(int)
    mixed = rng.random(patients.size) < 0.1  # a few recordings against their patient's label
    y[mixed] = 1 - y[mixed]
    patient_effect = rng.normal(size=n_patients)[patients]
    shared = rng.normal(size=y.size)
    noise = np.sqrt(icc) * patient_effect + np.sqrt(1 - icc) * shared
    a = 1.2 * y + noise + 0.5 * rng.normal(size=y.size)
    b = 0.9 * y + noise + 0.5 * rng.normal(size=y.size)
    return y, a, b, np.array([f"p{k}" for k in patients])


def _slow_obuchowski(y, a, b, groups):
    """Obuchowski (1997) clustered covariance with explicit loops over clusters and pairs."""
    clusters = sorted(set(groups))
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    big_m, big_n, n_clusters = len(positives), len(negatives), len(clusters)
    i10 = len({groups[i] for i in positives})
    i01 = len({groups[j] for j in negatives})

    def psi(x, z):
        return 1.0 if x > z else 0.5 if x == z else 0.0

    parts = []
    for scores in (a, b):
        auc = sum(psi(scores[i], scores[j]) for i in positives for j in negatives) / (big_m * big_n)
        x_sum, y_sum, m, n = [], [], [], []
        for cluster in clusters:
            mine_pos = [i for i in positives if groups[i] == cluster]
            mine_neg = [j for j in negatives if groups[j] == cluster]
            x_sum.append(sum(sum(psi(scores[i], scores[j]) for j in negatives) / big_n for i in mine_pos))
            y_sum.append(sum(sum(psi(scores[i], scores[j]) for i in positives) / big_m for j in mine_neg))
            m.append(len(mine_pos))
            n.append(len(mine_neg))
        parts.append((auc, np.array(x_sum) - auc * np.array(m), np.array(y_sum) - auc * np.array(n)))

    def covariance(first, second):
        (_, x1, y1), (_, x2, y2) = first, second
        s10 = i10 / ((i10 - 1) * big_m) * sum(u * v for u, v in zip(x1, x2, strict=True))
        s01 = i01 / ((i01 - 1) * big_n) * sum(u * v for u, v in zip(y1, y2, strict=True))
        s11_12 = n_clusters / (n_clusters - 1) * sum(u * v for u, v in zip(x1, y2, strict=True))
        s11_21 = n_clusters / (n_clusters - 1) * sum(u * v for u, v in zip(x2, y1, strict=True))
        return s10 / big_m + s01 / big_n + (s11_12 + s11_21) / (big_m * big_n)

    return (
        parts[0][0],
        parts[1][0],
        covariance(parts[0], parts[0]),
        covariance(parts[1], parts[1]),
        covariance(parts[0], parts[1]),
    )


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True)])
def test_clustered_delong_matches_slow_obuchowski(seed, ties):
    y, a, b, groups = _clustered_models(seed, n_patients=25)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    auc_a, auc_b, var_a, var_b, cov = _slow_obuchowski(y, a, b, groups)
    result = stats.delong_test(y, a, b, groups=groups)
    assert (result.auc_a, result.auc_b) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert (result.var_a, result.var_b, result.cov) == pytest.approx((var_a, var_b, cov), rel=1e-10)
    assert result.z == pytest.approx((auc_a - auc_b) / np.sqrt(var_a + var_b - 2 * cov), rel=1e-10)
    assert stats.delong_variance(y, a, groups=groups) == pytest.approx((auc_a, var_a), rel=1e-10)


def test_clustered_delong_with_one_recording_per_patient_is_delong():
    y, a, b = _two_models(3, n_pos=30, n_neg=40)
    plain = stats.delong_test(y, a, b)
    # own groups make _clusters return None; the Obuchowski formula itself must agree too
    aucs, covariance = stats.delong_covariance(y, np.stack([a, b]), np.arange(y.size))
    assert covariance == pytest.approx(np.array([[plain.var_a, plain.cov], [plain.cov, plain.var_b]]), rel=1e-10)
    assert stats.delong_test(y, a, b, groups=np.arange(y.size)) == pytest.approx(plain)


def test_clustered_delong_sees_through_duplicated_recordings():
    y, a, b = _two_models(8, n_pos=50, n_neg=60)
    plain = stats.delong_test(y, a, b)
    tripled = [np.repeat(v, 3) for v in (y, a, b)]
    patients = np.repeat(np.arange(y.size), 3)
    naive = stats.delong_test(*tripled)
    clustered = stats.delong_test(*tripled, groups=patients)
    assert clustered.difference == pytest.approx(plain.difference)
    # the copies add no information: the clustered variance is the original one (up to the I / (I - 1) factors)
    assert clustered.var_a == pytest.approx(plain.var_a, rel=0.03) and clustered.p_value == pytest.approx(
        plain.p_value, rel=0.1
    )
    assert naive.var_a < 0.5 * plain.var_a and naive.p_value < plain.p_value


def test_clustered_delong_needs_two_clusters_of_each_class():
    y = np.array([1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="2 clusters holding each class"):
        stats.delong_test(y, np.arange(5.0), np.arange(5.0)[::-1], groups=["p", "p", "q", "r", "s"])


@pytest.mark.parametrize("metric", ["roc_auc", "mcc"])
def test_permutation_swaps_whole_patients(metric):
    """Tripled recordings permuted by patient give the original test: the same swaps, the same differences."""
    y, a, b = _two_models(9, n_pos=40, n_neg=45)
    if metric == "mcc":
        a, b = (a > 0.6).astype(float), (b > 0.45).astype(float)
    plain = stats.paired_permutation_test(y, a, b, metric, 2000, rng=4)
    tripled = [np.repeat(v, 3) for v in (y, a, b)]
    clustered = stats.paired_permutation_test(*tripled, metric, 2000, rng=4, groups=np.repeat(np.arange(y.size), 3))
    naive = stats.paired_permutation_test(*tripled, metric, 2000, rng=4)
    assert clustered.difference == pytest.approx(plain.difference)
    assert clustered.p_value == pytest.approx(plain.p_value)
    assert naive.p_value < plain.p_value


def test_clustered_mcnemar_durkalski_by_hand():
    y = np.zeros(7, dtype=int)
    # patient p: a right twice where b is wrong (d = 2); q: b right once where a is wrong (d = -1); r: both right
    pred_a = np.array([0, 0, 1, 0, 0, 1, 0])
    pred_b = np.array([1, 1, 0, 0, 0, 0, 1])
    groups = ["p", "p", "q", "r", "r", "s", "s"]  # s: a wrong on one, b wrong on the other (d = 0)
    result = stats.mcnemar_test(y, pred_a, pred_b, groups=groups)
    d = np.array([2, -1, 0, 0])
    assert (result.n_only_a_correct, result.n_only_b_correct) == (3, 2)
    assert result.statistic == pytest.approx(d.sum() ** 2 / np.sum(d**2))
    assert result.p_value == pytest.approx(sps.chi2.sf(d.sum() ** 2 / np.sum(d**2), 1))
    sizes = np.array([2, 1, 2, 2])
    spread = 4 / 3 * np.sum((d - sizes * d.sum() / 7) ** 2)
    assert result.standard_error == pytest.approx(np.sqrt(spread) / 7)
    assert "clustered" in result.method
    # one recording per patient: the classic test
    classic = stats.mcnemar_test(y, pred_a, pred_b, groups=np.arange(7))
    assert classic == stats.mcnemar_test(y, pred_a, pred_b) and classic.method == "exact binomial"


def test_clustered_intervals_are_wider_than_naive_ones_on_clustered_data():
    """A synthetic clustered test case: the patient-level bootstrap and DeLong widen by a similar factor."""
    y, a, _, groups = _clustered_models(11, n_patients=150, max_size=6, icc=0.8)
    naive = stats.bootstrap_ci(y, a, n_resamples=3000, method="percentile", rng=0)
    clustered = stats.bootstrap_ci(y, a, n_resamples=3000, method="percentile", rng=0, groups=groups)
    ratio = clustered.standard_error / naive.standard_error
    delong_ratio = np.sqrt(stats.delong_variance(y, a, groups=groups).variance / stats.delong_variance(y, a).variance)
    assert ratio > 1.2 and delong_ratio > 1.2
    assert ratio == pytest.approx(delong_ratio, rel=0.15)


# --- seeds x recordings -------------------------------------------------------------


def test_seed_mean_distribution_does_not_count_the_interaction_twice():
    """Pure seed x recording interaction: the variance is ab / (S R), which the two-level bootstrap triples."""
    rng = np.random.default_rng(2)
    n_seeds, n_recordings, n_resamples, n_sims = 8, 300, 1000, 200
    counts = rng.multinomial(n_recordings, np.full(n_recordings, 1 / n_recordings), size=n_resamples).T
    seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_resamples).T / n_seeds
    corrected, two_level = [], []
    for _ in range(n_sims):
        values = rng.normal(size=(n_seeds, n_recordings))  # no seed effect, no recording effect: only interaction
        per_seed = values @ counts / n_recordings  # (S, B) each seed's mean under each resample
        corrected.append(stats.seed_variance(per_seed, values.mean(axis=1)).total)
        two_level.append((per_seed * seeds).sum(axis=0).var())
    truth = 1 / (n_seeds * n_recordings)  # the variance of the mean of S R independent unit-variance values
    # The seed main effect (here 0) is truncated at zero, which adds about a fifth at S = 8 in this extreme case.
    assert truth < np.mean(corrected) < 1.3 * truth
    assert np.mean(two_level) > 2.5 * truth
    one_seed = stats.seed_mean_distribution(per_seed[:1], values[:1].mean(axis=1))
    np.testing.assert_array_equal(one_seed, per_seed[0])


def test_seed_mean_distribution_never_narrower_than_recordings_and_stays_in_range():
    """Seeds that agree by chance cannot shrink the interval below the recordings-only one; AUCs stay <= 1."""
    rng = np.random.default_rng(5)
    per_seed = np.clip(0.97 + 0.02 * rng.standard_normal((3, 2000)), 0, 1)
    point = np.array([0.97, 0.97, 0.97])  # identical point values: V_seed = 0
    distribution = stats.seed_mean_distribution(per_seed, point, (0.0, 1.0))
    assert distribution.var() >= 0.99 * np.clip(per_seed.mean(axis=0), 0, 1).var()
    spread = np.array([0.90, 0.95, 0.99])  # seeds that differ: the seed effect widens the distribution
    shifted = np.clip(per_seed + (spread - 0.97)[:, None], 0, 1)
    wide = stats.seed_mean_distribution(shifted, spread, stats.metric_bounds("roc_auc"))
    assert wide.var() > 1.5 * distribution.var()
    assert wide.max() <= 1.0 and distribution.max() <= 1.0  # a seed mean of ROC-AUCs stays within [0, 1]


@pytest.mark.parametrize("n_seeds", [3, 5, 10])
def test_seed_dominated_distribution_is_the_satterthwaite_t(n_seeds):
    """Normal recording noise and a large seed spread: the quantiles are the t interval's on Satterthwaite's df."""
    rng = np.random.default_rng(n_seeds)
    point = 0.6 + 0.1 * rng.standard_normal(n_seeds)  # seed SD 0.1, recording SE 0.01
    per_seed = point[:, None] + 0.01 * rng.standard_normal(200_000) + 0.001 * rng.standard_normal((n_seeds, 200_000))
    components = stats.seed_variance(per_seed, point)
    assert components.seed > components.recording and n_seeds - 1 <= components.df < 2 * (n_seeds - 1)
    distribution = stats.seed_mean_distribution(per_seed, point)
    for level in (0.975, 0.995):
        expected = point.mean() + special.stdtrit(components.df, level) * np.sqrt(components.total)
        assert np.quantile(distribution, level) == pytest.approx(expected, rel=0.01)
    # a p-value read from the distribution is the t test's
    shifted = distribution - point.mean()  # under "no difference" at the estimate: p = 1
    assert stats.bootstrap_p_value(shifted + 2 * np.sqrt(components.total)) == pytest.approx(
        2 * special.stdtr(components.df, -2.0), abs=0.003
    )
