"""Monte-Carlo calibration of the tests and intervals in :mod:`analysis.stats`.

    python -m analysis.calibrate [--json] [--sims N] [--seed S] [--resamples B] [--permutations P]

Simulated test sets with known truth and binormal scores of two models,
correlated because both find the same recordings hard. Two test sets: the
labels of the PhysioNet 2016 test set as kept here (151 abnormal, 146 normal
independent recordings), and a fixed PASCAL-like one (:func:`patient_test_set`:
165 patients with 1 to 7 recordings, 2.8 on average, a tenth of the
recordings labelled against their patient) whose recordings share half of
their score noise within a patient. Scenarios, each over ``--sims`` test sets:

* independent recordings, 1 run: one trained model each, the same ROC-AUC.
  The false-positive rate (FPR) of every recording-level test at
  alpha = 0.05 must lie in [0.035, 0.065]; tests that are conservative by
  construction (McNemar's continuity correction and exact binomial) may
  fall below, and the output says so.
* independent recordings, seeds: 10 training seeds per model, each seed
  shifting the model's separation at random (a global seed effect) and
  re-drawing a share (0.3) of its per-recording noise (the seed x recording
  interaction). Two nulls, because the seed-level tests answer different
  questions. "same architecture": both models share their per-recording
  systematic errors and differ only by seed, the null of the Wilcoxon test
  over seeds, which takes the test set as fixed. "equal AUC": two
  architectures with their own systematic errors and the same expected
  ROC-AUC on the population of recordings, the null of the paired
  bootstrap with seed variation. Each test is checked under its own null,
  and the Wilcoxon test is also shown under "equal AUC", where it does not
  hold: the same finite test set favours one architecture for every seed,
  which sign-rank tests over seeds cannot see.
* strong seed x recording interaction: the same with a share of 0.8, where
  drawing seeds as well as recordings (the former two-level bootstrap,
  shown for contrast) overstates the variance.
* patients, 1 run: every recording-level test with the patients as groups
  (cluster bootstrap, Obuchowski's DeLong, patient swaps, Durkalski's
  McNemar), and for contrast DeLong and the bootstrap ignoring them.
* patients, seeds: the paired bootstrap with 3 seeds, as in this study's
  CPU-scale runs on PASCAL.
* each again with ROC-AUC 0.86 vs 0.82 (the paper's fusion vs waveform
  branch): the power of each test.

Coverage of the 95 % bootstrap intervals (percentile and BCa) of a model's
ROC-AUC and MCC (single run) and of its seed-mean ROC-AUC (seeds) must lie
in [0.93, 0.97]. The rows also check :func:`analysis.stats.auc_difference_mde`:
DeLong's simulated power at the predicted 80 %-power difference.

Each simulation uses ``--resamples`` bootstrap resamples (default 500) and
``--permutations`` permutations (default 1000) instead of the 10,000 of a
report: the Monte-Carlo noise this adds to each p-value or interval end is
symmetric and averages out over the simulations (the +1 in the bootstrap and
permutation p-values makes them conservative by about 2/B and 1/P, i.e. 0.004
and 0.001 of FPR). Scores are drawn for 200 simulations at once; each test is
vectorised over its resamples. The default run (2,000 simulations per
scenario) took 519 s on this project's 2-core machine, with a training job
sharing the cores; the output ends with the time of each scenario.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from analysis import stats
from study.metrics import confusion_metrics

__all__ = [
    "ALPHA",
    "FPR_RANGE",
    "COVERAGE_RANGE",
    "Design",
    "TestSet",
    "labels",
    "independent_test_set",
    "patient_test_set",
    "separation",
    "simulate_scores",
    "population_mcc",
    "IGNORING",
    "CONSERVATIVE_NOTES",
    "CONTRAST_NOTE",
    "IGNORING_NOTE",
    "CROSSED_NOTE",
    "run_calibration",
    "format_report",
    "main",
]

ALPHA = 0.05
FPR_RANGE = (0.035, 0.065)
COVERAGE_RANGE = (0.93, 0.97)


@dataclass(frozen=True)
class Design:
    """Simulated test sets and models (scores are standard normal within a class, before the shift)."""

    n_pos: int = 151  # abnormal recordings (PhysioNet 2016 test set as kept here)
    n_neg: int = 146  # normal recordings
    auc_baseline: float = 0.82  # both models under the null; the weaker one otherwise
    auc_better: float = 0.86  # the stronger model in the power scenarios
    model_correlation: float = 0.5  # correlation of the two models' scores within a class
    seed_noise_share: float = 0.3  # share of a model's own noise re-drawn by each training seed
    strong_interaction_share: float = 0.8  # the same share in the strong seed x recording interaction scenario
    seed_shift_sd: float = 0.1  # SD of the per-seed change of the separation d' (global seed effect)
    n_seeds: int = 10  # seeds per model in the seed scenarios (Wilcoxon needs >= 6 to reach p < 0.05)
    few_seeds: int = 3  # seeds per model in the patient scenario with seeds, as in this study's CPU-scale runs
    # The seed-dominated scenarios: a seed SD of d' of 0.3 spreads per-seed ROC-AUCs by about 0.055, twice the
    # recording SE of the 297-recording test set (0.024): PASCAL's regime, where seeds disagree in direction.
    dominant_seed_shift_sd: float = 0.3
    dominated_seed_counts: tuple[int, ...] = (3, 5, 10)
    # The patient scenarios: about the shape of PASCAL set_b (461 labelled recordings of 166 patients, up to 7 each).
    n_patients: int = 165
    max_recordings_per_patient: int = 7
    mean_recordings_per_patient: float = 2.8
    abnormal_patient_share: float = 0.4
    mixed_recording_share: float = 0.1  # recordings whose label differs from their patient's
    patient_share: float = 0.5  # share of the score noise a patient's recordings have in common


class TestSet(NamedTuple):
    """The labels (n,) of a simulated test set and, for the patient scenarios, each recording's patient (n,)."""

    name: str
    y: np.ndarray
    groups: np.ndarray | None
    patient_share: float


def labels(design: Design) -> np.ndarray:
    """Labels (n,) of the independent test set: the normals, then the abnormals."""
    return np.r_[np.zeros(design.n_neg, dtype=np.int8), np.ones(design.n_pos, dtype=np.int8)]


def independent_test_set(design: Design) -> TestSet:
    return TestSet(f"{design.n_pos}+{design.n_neg} recordings", labels(design), None, 0.0)


def patient_test_set(design: Design, seed: int = 20161) -> TestSet:
    """A fixed PASCAL-like test set: patients with 1 to ``max_recordings_per_patient`` recordings each.

    A patient is abnormal with probability ``abnormal_patient_share`` and so
    are its recordings, except a ``mixed_recording_share`` of recordings
    whose label is flipped (a patient with normal and abnormal recordings).
    """
    rng = np.random.default_rng(seed)
    extra = design.max_recordings_per_patient - 1
    sizes = 1 + rng.binomial(extra, (design.mean_recordings_per_patient - 1) / extra, design.n_patients)
    patients = np.repeat(np.arange(design.n_patients), sizes)
    y = (rng.random(design.n_patients) < design.abnormal_patient_share)[patients].astype(np.int8)
    flipped = rng.random(y.size) < design.mixed_recording_share
    y[flipped] = 1 - y[flipped]
    name = f"{y.size} recordings of {design.n_patients} patients"
    return TestSet(name, y, patients, design.patient_share)


def separation(auc: float, seed_shift_sd: float = 0.0) -> float:
    """Mean shift d' of the abnormal scores giving expected per-seed ROC-AUC ``auc``.

    A seed's ROC-AUC is Phi((d' + eta) / sqrt(2)) with eta ~ N(0, sd^2), whose
    mean over seeds is Phi(d' / sqrt(2 + sd^2)).
    """
    return float(np.sqrt(2 + seed_shift_sd**2) * sps.norm.ppf(auc))


def simulate_scores(
    design: Design,
    rng: np.random.Generator,
    n_sims: int,
    separations: tuple[float, float],
    n_seeds: int,
    seed_effects: bool,
    same_architecture: bool = False,
    test_set: TestSet | None = None,
    seed_noise_share: float | None = None,
) -> np.ndarray:
    """Scores of shape (n_sims, 2 models, n_seeds, n) for the labels of ``test_set`` (default: independent).

    score = (d'_model + eta_seed) * y + sqrt(rho) * shared_recording
            + sqrt(1 - rho) * (sqrt(1 - tau) * model_recording + sqrt(tau) * seed_recording)
    with rho = model_correlation, tau = seed_noise_share (the seed x
    recording interaction), eta ~ N(0, seed_shift_sd^2) when
    ``seed_effects`` (else eta = 0 and tau = 0: one fixed trained model).
    With ``same_architecture`` both models share model_recording (their
    systematic errors) and differ only through the seed terms. With patients,
    the noise is sqrt(1 - p) times that plus sqrt(p) times a patient term
    (shared by the models with correlation rho), p = ``patient_share``: a
    patient's recordings are hard or easy together. The noise stays
    standard normal, so the ROC-AUC is the same as without patients.
    """
    test_set = test_set or independent_test_set(design)
    y = test_set.y
    rho = design.model_correlation
    tau = (design.seed_noise_share if seed_noise_share is None else seed_noise_share) if seed_effects else 0.0
    models = 1 if same_architecture else 2
    shared = rng.standard_normal((n_sims, 1, 1, y.size))
    own = rng.standard_normal((n_sims, models, 1, y.size))
    per_seed = rng.standard_normal((n_sims, 2, n_seeds, y.size))
    shift = np.asarray(separations).reshape(1, 2, 1, 1)
    if seed_effects:
        shift = shift + design.seed_shift_sd * rng.standard_normal((n_sims, 2, n_seeds, 1))
    noise = np.sqrt(rho) * shared + np.sqrt(1 - rho) * (np.sqrt(1 - tau) * own + np.sqrt(tau) * per_seed)
    if test_set.groups is not None:
        n_patients = int(test_set.groups.max()) + 1
        patient = np.sqrt(rho) * rng.standard_normal((n_sims, 1, 1, n_patients)) + np.sqrt(
            1 - rho
        ) * rng.standard_normal((n_sims, models, 1, n_patients))
        share = test_set.patient_share
        noise = np.sqrt(1 - share) * noise + np.sqrt(share) * patient[..., test_set.groups]
    return shift * y + noise


def population_mcc(n_pos: int, n_neg: int, shift: float) -> float:
    """MCC of the rule score >= shift / 2 at these class counts (sensitivity = specificity = Phi(shift / 2))."""
    rate = sps.norm.cdf(shift / 2)
    tp, fn = n_pos * rate, n_pos * (1 - rate)
    tn, fp = n_neg * rate, n_neg * (1 - rate)
    return float(confusion_metrics(tp, fp, tn, fn)["mcc"])


def _single_run_pvalues(y, a, b, thresholds, rng, n_resamples, n_permutations, groups) -> dict[str, float]:
    """p-values of the recording-level tests for one simulated pair of runs (a, b: (n,)), patients as ``groups``."""
    # Each model has its own threshold: the threshold tests get 0/1 predictions.
    pred_a, pred_b = (a >= thresholds[0]).astype(int), (b >= thresholds[1]).astype(int)
    pvalues = {
        "DeLong (ROC-AUC)": stats.delong_test(y, a, b, groups=groups).p_value,
        "paired bootstrap (ROC-AUC)": stats.paired_bootstrap_test(
            y, a, b, "roc_auc", n_resamples, rng, groups=groups
        ).p_value,
        "paired permutation (ROC-AUC)": stats.paired_permutation_test(
            y, a, b, "roc_auc", n_permutations, rng, groups=groups
        ).p_value,
        "paired bootstrap (MCC)": stats.paired_bootstrap_test(
            y, pred_a, pred_b, "mcc", n_resamples, rng, groups=groups
        ).p_value,
        "paired permutation (MCC)": stats.paired_permutation_test(
            y, pred_a, pred_b, "mcc", n_permutations, rng, groups=groups
        ).p_value,
        "McNemar (accuracy)": stats.mcnemar_test(y, pred_a, pred_b, groups=groups).p_value,
    }
    if groups is not None:  # contrast: the same data taken as independent recordings
        pvalues[IGNORING + "DeLong (ROC-AUC)"] = stats.delong_test(y, a, b).p_value
        pvalues[IGNORING + "paired bootstrap (ROC-AUC)"] = stats.paired_bootstrap_test(
            y, a, b, "roc_auc", n_resamples, rng
        ).p_value
    return pvalues


def _wilcoxon_pvalue(y, a, b) -> float:
    """Wilcoxon over the per-seed ROC-AUCs of two seed sets (a, b: (n_seeds, n))."""
    aucs = stats.weighted_auc(y, np.concatenate([a, b]), np.ones((1, y.size)))[:, 0]
    return stats.wilcoxon_seeds(aucs[: len(a)], aucs[len(a) :]).p_value


IGNORING = "ignoring patients: "
CONSERVATIVE_NOTES = {
    "McNemar (accuracy)": "conservative by construction: continuity-corrected chi-square (exact binomial below 25 discordant recordings); with patients Durkalski's uncorrected clustered statistic",
    "Wilcoxon over seeds (ROC-AUC)": "exact signed-rank test: its attainable sizes are discrete (0.049 with the default 10 seeds), never above alpha; with 3 seeds it cannot reject at all (smallest p 0.25)",
}
CONTRAST_NOTE = (
    "not this test's null, shown for contrast: Wilcoxon over seeds treats the test set as fixed, so it tests "
    "'same architecture', not 'equal ROC-AUC on new recordings'; use the paired bootstrap for that"
)
IGNORING_NOTE = "shown for contrast: the same test treating a patient's recordings as independent"
CROSSED_NOTE = (
    "shown for contrast: seeds drawn with replacement as well as recordings (the former two-level bootstrap), "
    "which counts the seed x recording interaction up to three times"
)


def _rejection_rate(pvalues: list[float]) -> float:
    return float(np.mean(np.asarray(pvalues) <= ALPHA))


def _fpr_verdict(name: str, fpr: float) -> str:
    if name.startswith(IGNORING):
        return "contrast"
    if FPR_RANGE[0] <= fpr <= FPR_RANGE[1]:
        return "ok"
    if fpr < FPR_RANGE[0] and name in CONSERVATIVE_NOTES:
        return "conservative (expected)"
    return "FAIL"


def _interval_hits(result: stats.BootstrapCI, truth: float) -> tuple[bool, float]:
    return result.low <= truth <= result.high, result.high - result.low


def _simulated_pairs(design, rng, n_sims, separations, n_seeds, seed_effects, same_architecture=False, **kwargs):
    """Yield the score pair (a, b) of one simulation at a time, drawn in batches to bound memory."""
    batch = 200
    for start in range(0, n_sims, batch):
        scores = simulate_scores(
            design, rng, min(batch, n_sims - start), separations, n_seeds, seed_effects, same_architecture, **kwargs
        )
        yield from (scores[:, :, 0] if n_seeds == 1 else scores)


def _coverage_row(interval: str, data: str, hits: list[tuple[bool, float]], contrast: bool = False) -> dict:
    rate = float(np.mean([hit for hit, _ in hits]))
    verdict = "contrast" if contrast else "ok" if COVERAGE_RANGE[0] <= rate <= COVERAGE_RANGE[1] else "FAIL"
    return {
        "interval": interval,
        "data": data,
        "coverage": rate,
        "mean_width": float(np.mean([width for _, width in hits])),
        "verdict": verdict,
    }


def _single_run(design: Design, test_set: TestSet, rng, n_sims, n_resamples, n_permutations):
    """Recording-level tests under equal and unequal single runs, interval coverage, mean AUC correlation."""
    y, groups = test_set.y, test_set.groups
    base, better = separation(design.auc_baseline), separation(design.auc_better)
    truth_mcc = population_mcc(int(y.sum()), int(y.size - y.sum()), base)
    null_p, power_p, correlations = [], [], []
    coverage = {key: [] for key in ("auc_percentile", "auc_bca", "mcc_percentile", "mcc_bca", "auc_ignoring")}
    null_pairs = _simulated_pairs(design, rng, n_sims, (base, base), 1, False, test_set=test_set)
    power_pairs = _simulated_pairs(design, rng, n_sims, (better, base), 1, False, test_set=test_set)
    for (a, b), (a_power, b_power) in zip(null_pairs, power_pairs, strict=True):
        null_p.append(_single_run_pvalues(y, a, b, (base / 2, base / 2), rng, n_resamples, n_permutations, groups))
        power_p.append(
            _single_run_pvalues(y, a_power, b_power, (better / 2, base / 2), rng, n_resamples, n_permutations, groups)
        )
        delong = stats.delong_test(y, a, b, groups=groups)
        correlations.append(delong.cov / np.sqrt(delong.var_a * delong.var_b))
        for method in ("percentile", "bca"):
            auc = stats.bootstrap_ci(y, a, "roc_auc", n_resamples=n_resamples, method=method, rng=rng, groups=groups)
            mcc = stats.bootstrap_ci(
                y, a, "mcc", threshold=base / 2, n_resamples=n_resamples, method=method, rng=rng, groups=groups
            )
            coverage[f"auc_{method}"].append(_interval_hits(auc, design.auc_baseline))
            coverage[f"mcc_{method}"].append(_interval_hits(mcc, truth_mcc))
        if groups is not None:
            naive = stats.bootstrap_ci(y, a, "roc_auc", n_resamples=n_resamples, method="percentile", rng=rng)
            coverage["auc_ignoring"].append(_interval_hits(naive, design.auc_baseline))
    null = f"equal AUC, 1 run, {test_set.name}"
    tests = []
    for name in null_p[0]:
        fpr = _rejection_rate([p[name] for p in null_p])
        tests.append(
            {
                "test": name,
                "null": null,
                "fpr": fpr,
                "power": _rejection_rate([p[name] for p in power_p]),
                "verdict": _fpr_verdict(name, fpr),
                "note": IGNORING_NOTE if name.startswith(IGNORING) else CONSERVATIVE_NOTES.get(name, ""),
            }
        )
    data = f"1 run, {test_set.name}"
    intervals = [
        _coverage_row("ROC-AUC, percentile", data, coverage["auc_percentile"]),
        _coverage_row("ROC-AUC, BCa", data, coverage["auc_bca"]),
        _coverage_row("MCC, percentile", data, coverage["mcc_percentile"]),
        _coverage_row("MCC, BCa", data, coverage["mcc_bca"]),
    ]
    if groups is not None:
        intervals.append(_coverage_row(IGNORING + "ROC-AUC, percentile", data, coverage["auc_ignoring"], True))
    return tests, intervals, float(np.mean(correlations))


def _crossed_bootstrap_interval(y, scores, n_resamples, rng) -> stats.BootstrapCI:
    """The former two-level bootstrap, for contrast: recordings and seeds (S, n) both drawn with replacement."""
    units, strata = stats.resampling_units(y, None)
    per_seed = np.concatenate(
        [stats.auc_kernel(y, scores, w) for w in stats.bootstrap_weight_blocks(units, strata, n_resamples, rng)],
        axis=1,
    )
    n_seeds = scores.shape[0]
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_resamples).T / n_seeds
    distribution = (per_seed * seed_counts).sum(axis=0)
    estimate = float(stats.auc_kernel(y, scores, np.ones((y.size, 1))).mean())
    return stats.bootstrap_interval(distribution, estimate, method="percentile")


def _seeds(design: Design, test_set: TestSet, rng, n_sims, n_resamples, interaction: float | None = None, n_seeds=None):
    """Seed-level tests under the "same architecture" and "equal AUC" nulls, seed-mean interval coverage."""
    y, groups = test_set.y, test_set.groups
    n_seeds = n_seeds or design.n_seeds
    base = separation(design.auc_baseline, design.seed_shift_sd)
    better = separation(design.auc_better, design.seed_shift_sd)
    pvalues = {key: [] for key in ("wilcoxon_same", "wilcoxon_equal", "bootstrap_equal")}
    power = {key: [] for key in pvalues}
    coverage = {"percentile": [], "bca": [], "crossed": [], "wilcoxon": []}
    tau = design.seed_noise_share if interaction is None else interaction
    options = {"test_set": test_set, "seed_noise_share": tau}
    for architecture in ("same", "equal"):
        same = architecture == "same"
        null_pairs = _simulated_pairs(design, rng, n_sims, (base, base), n_seeds, True, same, **options)
        power_pairs = _simulated_pairs(design, rng, n_sims, (better, base), n_seeds, True, same, **options)
        for (a, b), (a_power, b_power) in zip(null_pairs, power_pairs, strict=True):
            pvalues[f"wilcoxon_{architecture}"].append(_wilcoxon_pvalue(y, a, b))
            power[f"wilcoxon_{architecture}"].append(_wilcoxon_pvalue(y, a_power, b_power))
            if same:
                coverage["wilcoxon"].append(_wilcoxon_interval_hit(y, a, b))
                continue
            pvalues["bootstrap_equal"].append(
                stats.paired_bootstrap_test(y, a, b, "roc_auc", n_resamples, rng, groups=groups).p_value
            )
            power["bootstrap_equal"].append(
                stats.paired_bootstrap_test(y, a_power, b_power, "roc_auc", n_resamples, rng, groups=groups).p_value
            )
            for method in ("percentile", "bca"):
                interval = stats.bootstrap_ci(
                    y, a, "roc_auc", n_resamples=n_resamples, method=method, rng=rng, groups=groups
                )
                coverage[method].append(_interval_hits(interval, design.auc_baseline))
            if groups is None:
                crossed = _crossed_bootstrap_interval(y, a, n_resamples, rng)
                coverage["crossed"].append(_interval_hits(crossed, design.auc_baseline))
    data = f"{n_seeds} seeds, interaction {tau:g}, {test_set.name}"
    tests = []
    for name, key, null, own_null in (
        ("Wilcoxon over seeds (ROC-AUC)", "wilcoxon_same", f"same arch., {data}", True),
        ("paired bootstrap, seeds (ROC-AUC)", "bootstrap_equal", f"equal AUC, {data}", True),
        ("Wilcoxon over seeds (ROC-AUC)", "wilcoxon_equal", f"equal AUC, {data}", False),
    ):
        fpr = _rejection_rate(pvalues[key])
        tests.append(
            {
                "test": name,
                "null": null,
                "fpr": fpr,
                "power": _rejection_rate(power[key]),
                "verdict": _fpr_verdict(name, fpr) if own_null else "contrast",
                "note": CONSERVATIVE_NOTES.get(name, "") if own_null else CONTRAST_NOTE,
            }
        )
    intervals = [
        _coverage_row("seed-mean ROC-AUC, percentile", data, coverage["percentile"]),
        _coverage_row("seed-mean ROC-AUC, BCa", data, coverage["bca"]),
    ]
    if coverage["crossed"]:
        intervals.append(_coverage_row("two-level (seeds drawn), percentile", data, coverage["crossed"], True))
    intervals.append(_wilcoxon_coverage_row(f"same arch., {data}", coverage["wilcoxon"], n_seeds))
    return tests, intervals


def _wilcoxon_interval_hit(y, a, b) -> tuple[bool, float] | None:
    """Whether the signed-rank interval of the per-seed ROC-AUC differences covers 0, the centre of their
    distribution when the two models differ only by seed (a shift c moves the interval by c, so this is its
    coverage of any true shift); None where this many seeds cannot form it."""
    result = stats.wilcoxon_seeds(*(stats.auc_kernel(y, scores, np.ones((y.size, 1)))[:, 0] for scores in (a, b)))
    if not np.isfinite(result.low):
        return None
    return result.low <= 0 <= result.high, result.high - result.low


def _wilcoxon_coverage_row(data: str, hits: list, n_seeds: int) -> dict:
    """The coverage row of the Wilcoxon interval over seeds, or a row saying this many seeds cannot form it."""
    name = "Wilcoxon over seeds: Hodges-Lehmann, signed-rank interval"
    if any(hit is None for hit in hits):
        return {
            "interval": name,
            "data": data,
            "coverage": float("nan"),
            "mean_width": float("nan"),
            "verdict": f"none: {n_seeds} seeds cannot reach 95 % (smallest two-sided p {2 / 2**n_seeds:.3f})",
        }
    return _coverage_row(name, data, hits)


def _seed_dominated(design: Design, test_set: TestSet, rng, n_sims, n_resamples, n_seeds: int):
    """Coverage of the seed-mean ROC-AUC intervals, and of the Wilcoxon interval, when seeds vary more than the
    test set does (a seed SD of the ROC-AUC about twice its recording SE)."""
    dominated = dataclasses.replace(design, seed_shift_sd=design.dominant_seed_shift_sd)
    base = separation(design.auc_baseline, dominated.seed_shift_sd)
    y, groups = test_set.y, test_set.groups
    coverage = {"percentile": [], "bca": [], "wilcoxon": []}
    options = {"test_set": test_set}
    for a, _ in _simulated_pairs(dominated, rng, n_sims, (base, base), n_seeds, True, **options):
        for method in ("percentile", "bca"):
            interval = stats.bootstrap_ci(
                y, a, "roc_auc", n_resamples=n_resamples, method=method, rng=rng, groups=groups
            )
            coverage[method].append(_interval_hits(interval, design.auc_baseline))
    for a, b in _simulated_pairs(dominated, rng, n_sims, (base, base), n_seeds, True, True, **options):
        coverage["wilcoxon"].append(_wilcoxon_interval_hit(y, a, b))
    data = f"{n_seeds} seeds, seed SD > recording SE, {test_set.name}"
    intervals = [
        _coverage_row("seed-mean ROC-AUC, percentile", data, coverage["percentile"]),
        _coverage_row("seed-mean ROC-AUC, BCa", data, coverage["bca"]),
        _wilcoxon_coverage_row(f"same arch., {data}", coverage["wilcoxon"], n_seeds),
    ]
    return [], intervals


def run_calibration(
    n_sims: int = 2000, seed: int = 0, n_resamples: int = 500, n_permutations: int = 1000, design: Design = Design()
) -> dict:
    """Run all scenarios; returns a JSON-ready dict of settings, test rows, coverage rows and the MDE check."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    independent, patients = independent_test_set(design), patient_test_set(design)
    tests, coverage, seconds = [], [], {}

    def scenario(name: str, run) -> None:
        began = time.perf_counter()
        scenario_tests, scenario_coverage = run()
        tests.extend(scenario_tests)
        coverage.extend(scenario_coverage)
        seconds[name] = time.perf_counter() - began

    correlation = {}

    def single(test_set):
        def run():
            rows, intervals, correlation[test_set.name] = _single_run(
                design, test_set, rng, n_sims, n_resamples, n_permutations
            )
            return rows, intervals

        return run

    scenario("independent recordings, 1 run", single(independent))
    scenario("independent recordings, seeds", lambda: _seeds(design, independent, rng, n_sims, n_resamples))
    scenario(
        "strong seed x recording interaction",
        lambda: _seeds(design, independent, rng, n_sims, n_resamples, design.strong_interaction_share),
    )
    scenario("patients, 1 run", single(patients))
    scenario("patients, seeds", lambda: _seeds(design, patients, rng, n_sims, n_resamples, n_seeds=design.few_seeds))
    for n_seeds in design.dominated_seed_counts:
        scenario(
            f"seed-dominated, {n_seeds} seeds",
            lambda n_seeds=n_seeds: _seed_dominated(design, independent, rng, n_sims, n_resamples, n_seeds),
        )

    # auc_difference_mde: DeLong's simulated power at the difference it predicts for 80 % power
    y = labels(design)
    auc_correlation = correlation[independent.name]
    mde = stats.auc_difference_mde(design.n_pos, design.n_neg, design.auc_baseline, auc_correlation)
    shifts = (separation(design.auc_baseline + mde), separation(design.auc_baseline))
    mde_power = _rejection_rate(
        [stats.delong_test(y, a, b).p_value for a, b in _simulated_pairs(design, rng, n_sims, shifts, 1, False)]
    )
    sizes = np.bincount(patients.groups)
    return {
        "settings": {
            "n_sims": n_sims,
            "seed": seed,
            "n_resamples": n_resamples,
            "n_permutations": n_permutations,
            "alpha": ALPHA,
            **asdict(design),
        },
        "patient_test_set": {
            "recordings": int(patients.y.size),
            "abnormal": int(patients.y.sum()),
            "patients": int(sizes.size),
            "largest_patient": int(sizes.max()),
            "patients_with_both_labels": int(
                np.count_nonzero(np.bincount(patients.groups, weights=patients.y) % sizes != 0)
            ),
        },
        "fpr_monte_carlo_se": float(np.sqrt(ALPHA * (1 - ALPHA) / n_sims)),
        "coverage_monte_carlo_se": float(np.sqrt(0.95 * 0.05 / n_sims)),
        "tests": tests,
        "coverage": coverage,
        "mde": {
            "auc_correlation": auc_correlation,
            "predicted_mde": mde,
            "delong_power_at_mde": mde_power,
            "target_power": 0.8,
        },
        "scenario_seconds": seconds,
        "seconds": time.perf_counter() - start,
    }


def format_report(result: dict) -> str:
    """The calibration result as plain-text tables."""
    settings, patients = result["settings"], result["patient_test_set"]
    width = max(len(row["null"]) for row in result["tests"] + [{"null": "null"}])
    data_width = max(len(row["data"]) for row in result["coverage"] + [{"data": "data"}])
    name_width = max(len(row["test"]) for row in result["tests"] + [{"test": "interval"}])
    name_width = max([name_width] + [len(row["interval"]) for row in result["coverage"]])
    lines = [
        f"Calibration of analysis.stats: {settings['n_sims']} simulated test sets per scenario (binormal scores, "
        f"model correlation {settings['model_correlation']}), {settings['n_resamples']} bootstrap resamples / "
        f"{settings['n_permutations']} permutations per simulation, seed {settings['seed']}.",
        f"Test sets: {settings['n_pos']} abnormal + {settings['n_neg']} normal independent recordings (the PhysioNet "
        f"test set as kept here), and a PASCAL-like one of {patients['recordings']} recordings ({patients['abnormal']} "
        f"abnormal) from {patients['patients']} patients, up to {patients['largest_patient']} each "
        f"({patients['patients_with_both_labels']} with both labels), patient share of the score noise "
        f"{settings['patient_share']}. Interaction: share of a model's own noise re-drawn by each seed.",
        "",
        f"False-positive rate at alpha {settings['alpha']} under equal models (target {FPR_RANGE[0]}-{FPR_RANGE[1]}, "
        f"Monte-Carlo s.e. {result['fpr_monte_carlo_se']:.4f}); power at ROC-AUC {settings['auc_better']} vs "
        f"{settings['auc_baseline']}",
        f"{'test':<{name_width}} {'null':<{width}} {'FPR':>6} {'power':>6}  verdict",
    ]
    for row in result["tests"]:
        lines.append(
            f"{row['test']:<{name_width}} {row['null']:<{width}} {row['fpr']:>6.3f} {row['power']:>6.3f}  {row['verdict']}"
        )
    notes = list(
        dict.fromkeys(f"  {row['test']} ({row['verdict']}): {row['note']}" for row in result["tests"] if row["note"])
    )
    lines += ["notes:", *notes] if notes else []
    lines += [
        "",
        f"Coverage of 95 % bootstrap intervals (target {COVERAGE_RANGE[0]}-{COVERAGE_RANGE[1]}, Monte-Carlo s.e. "
        f"{result['coverage_monte_carlo_se']:.4f})",
        f"{'interval':<{name_width}} {'data':<{data_width}} {'cover':>6} {'width':>6}  verdict",
    ]
    for row in result["coverage"]:
        lines.append(
            f"{row['interval']:<{name_width}} {row['data']:<{data_width}} {row['coverage']:>6.3f} "
            f"{row['mean_width']:>6.3f}  {row['verdict']}".replace("   nan ", "     – ")
        )
    if any(row["verdict"] == "contrast" for row in result["coverage"]):
        lines += [f"contrast rows: {IGNORING_NOTE}; two-level: {CROSSED_NOTE}"]
    mde = result["mde"]
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result["scenario_seconds"].items())
    lines += [
        "",
        f"auc_difference_mde (Hanley-McNeil, rho = {mde['auc_correlation']:.3f} from the DeLong covariances): "
        f"{mde['predicted_mde']:.4f} for 80 % power; DeLong's simulated power there: {mde['delong_power_at_mde']:.3f}",
        f"({result['seconds']:.0f} s: {timing})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=2000, help="simulated test sets per scenario (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples per simulation (default 500)")
    parser.add_argument("--permutations", type=int, default=1000, help="permutations per simulation (default 1000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    for name in ("sims", "resamples", "permutations"):
        if getattr(args, name) < 2:
            parser.error(f"--{name} must be at least 2, got {getattr(args, name)}")
    result = run_calibration(args.sims, args.seed, args.resamples, args.permutations)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
