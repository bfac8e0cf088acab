"""Tests of study.perturbations: identities, durations, codec round trips,
warps, quantisation, band limits, registry and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from study import perturbations as P

SEVERITIES = range(1, P.MAX_SEVERITY + 1)


def heart_like(sr: int, duration_s: float = 5.0, seed: int = 0) -> np.ndarray:
    """Synthetic PCG: S1/S2 tone bursts every 0.8 s, a 100-600 Hz systolic
    murmur, white background noise, high-passed at 20 Hz; peak 0.8."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * duration_s)) / sr
    x = np.zeros_like(t)
    for beat in np.arange(0.05, duration_s - 0.1, 0.8):
        for offset, freq, decay in ((0.0, 55.0, 0.02), (0.32, 100.0, 0.012)):
            tt = t - beat - offset
            burst = (tt >= 0) & (tt < 0.12)
            x[burst] += np.exp(-tt[burst] / decay) * np.sin(2 * np.pi * freq * tt[burst])
    band = scipy.signal.butter(4, (100, 600), "bandpass", fs=sr, output="sos")
    murmur = scipy.signal.sosfilt(band, rng.standard_normal(t.size))
    phase = (t - 0.05) % 0.8
    x += 0.15 * murmur / murmur.std() * ((phase > 0.1) & (phase < 0.3))
    x += 0.01 * rng.standard_normal(t.size)
    highpass = scipy.signal.butter(2, 20, "highpass", fs=sr, output="sos")
    x = scipy.signal.sosfiltfilt(highpass, x)
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2))


def dominant_frequency(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.fft.rfftfreq(y.size, 1 / sr)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def pcg_2k() -> np.ndarray:
    return heart_like(2000)


@pytest.fixture(scope="module")
def pcg_44k() -> np.ndarray:
    return heart_like(44100)


# Every perturbation with the options that select each variant.
TIME_STRETCHES = {"time_stretch_slow": P.SLOW_TEMPO_RATES, "time_stretch_fast": P.FAST_TEMPO_RATES}
VARIANTS = [
    ("time_stretch_slow", {"method": "phase_vocoder"}),
    ("time_stretch_slow", {"method": "resample"}),
    ("time_stretch_fast", {"method": "phase_vocoder"}),
    ("time_stretch_fast", {"method": "resample"}),
    ("local_time_warp", {}),
    ("codec", {"codec": "mp3"}),
    ("codec", {"codec": "vorbis"}),
    ("codec", {"codec": "opus"}),
    ("mu_law", {"companding": True}),
    ("mu_law", {"companding": False}),
    ("band_limit", {}),
]


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_severity_zero_returns_input_bit_for_bit(name, options, pcg_2k):
    y = P.PERTURBATIONS[name](pcg_2k, 2000, 0, **options)
    assert y.dtype == np.float32
    assert y is not pcg_2k
    np.testing.assert_array_equal(y.view(np.uint32), pcg_2k.view(np.uint32))


@pytest.mark.parametrize("name", TIME_STRETCHES)
@pytest.mark.parametrize("method", P.TIME_STRETCH_METHODS)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_time_stretch_changes_duration_by_inverse_rate(name, method, severity, pcg_2k):
    rate = TIME_STRETCHES[name][severity]
    assert P.tempo_rate(name, severity) == rate
    y = P.PERTURBATIONS[name](pcg_2k, 2000, severity, method=method)
    hop = P._stft_size(2000) // 4
    assert abs(y.size - pcg_2k.size / rate) <= hop
    assert y.size == round(pcg_2k.size / rate)
    assert y.dtype == np.float32


def test_time_stretch_severities_are_ordered_by_log_rate_in_each_direction():
    slow = [P.SLOW_TEMPO_RATES[s] for s in SEVERITIES]
    fast = [P.FAST_TEMPO_RATES[s] for s in SEVERITIES]
    assert all(rate < 1 for rate in slow) and all(rate > 1 for rate in fast)  # one direction each
    for rates in (slow, fast):
        distance = np.abs(np.log(rates))
        assert np.all(np.diff(distance) > 0), rates  # strictly more tempo change at every severity
        np.testing.assert_allclose(np.diff(distance), distance[0])  # in equal log steps
    np.testing.assert_allclose(np.log(slow), -np.log(fast))  # mirror images
    assert (slow[-1], fast[-1]) == (0.8, 1.25)  # the range of the retired time_stretch
    # what the labels and the feature-size estimate see follows the same order
    assert [P.describe("time_stretch_slow", s) for s in SEVERITIES] == [
        "rate 0.946",
        "rate 0.894",
        "rate 0.846",
        "rate 0.800",
    ]
    assert [P.tempo_rate("time_stretch_fast", s) for s in range(0, P.MAX_SEVERITY + 1)] == [1.0, *fast]
    assert P.tempo_rate("codec", 4) == 1.0


def test_time_stretch_vocoder_keeps_pitch_and_resample_shifts_it():
    sr, f0 = 8000, 250.0
    tone = np.sin(2 * np.pi * f0 * np.arange(3 * sr) / sr).astype(np.float32)
    for name, rates in TIME_STRETCHES.items():
        vocoded = P.PERTURBATIONS[name](tone, sr, 4, method="phase_vocoder")
        resampled = P.PERTURBATIONS[name](tone, sr, 4, method="resample")
        assert dominant_frequency(vocoded, sr) == pytest.approx(f0, abs=2.0)
        assert dominant_frequency(resampled, sr) == pytest.approx(f0 * rates[4], abs=2.0)


@pytest.mark.parametrize("sr", [2000, 44100])
@pytest.mark.parametrize("codec_name", P.CODECS)
def test_codec_round_trip_keeps_length_and_snr_falls_with_bitrate(codec_name, sr, pcg_2k, pcg_44k):
    x = pcg_2k if sr == 2000 else pcg_44k
    snrs, bitrates = [], []
    for severity in SEVERITIES:
        y = P.codec(x, sr, severity, codec=codec_name)
        assert y.shape == x.shape and y.dtype == np.float32
        # Aligned (codec delay removed; low-bitrate Opus keeps a phase shift of
        # a few samples at 44.1 kHz) and at the input level (LAME's 0.95 undone).
        lags = scipy.signal.correlation_lags(y.size, x.size)
        correlation = scipy.signal.correlate(y, x, method="fft")
        assert abs(lags[np.argmax(correlation)]) <= sr // 1000
        if severity == 1:
            level_tolerance = 0.01 if codec_name == "mp3" else 0.05
            assert np.dot(x, y) / np.dot(x, x) == pytest.approx(1.0, abs=level_tolerance)
        snrs.append(snr_db(x, y))
        bitrates.append(P.codec_bitrate_kbps(x, sr, severity, codec=codec_name))
    assert snrs[0] > 9.0
    # Non-increasing up to 0.01 dB: MP3 at 64 and 32 kbit/s is transparent for
    # 2 kHz PCG (34.211 vs 34.210 dB); the overall fall must be large.
    assert all(later <= earlier + 0.01 for earlier, later in zip(snrs, snrs[1:])), snrs
    assert snrs[0] - snrs[-1] > 3.0, snrs
    assert all(later < earlier for earlier, later in zip(bitrates, bitrates[1:])), bitrates
    if codec_name == "mp3":
        nominal = [P.MP3_BITRATES_KBPS[s] for s in SEVERITIES]
        np.testing.assert_allclose(bitrates, nominal, rtol=0.1)


def test_opus_snr_falls_with_bitrate_on_band_passed_pcg():
    # 25-400 Hz PCG (PhysioNet's usual band): at 48 kHz libopus moves from CELT
    # to SILK as the bitrate drops and 8 kbit/s beat 12 kbit/s; at 16 kHz it does not.
    band = scipy.signal.butter(4, (25, 400), "bandpass", fs=44100, output="sos")
    x = scipy.signal.sosfiltfilt(band, heart_like(44100, duration_s=2.0)).astype(np.float32)
    snrs = [snr_db(x, P.codec(x, 44100, s, codec="opus")) for s in SEVERITIES]
    assert all(later < earlier for earlier, later in zip(snrs, snrs[1:])), snrs


def test_codec_at_pascal_set_b_rate_keeps_length():
    x = heart_like(4000, duration_s=2.0)
    for codec_name in P.CODECS:
        y = P.codec(x, 4000, 3, codec=codec_name)
        assert y.shape == x.shape
        assert snr_db(x, y) > 5.0


def test_local_time_warp_is_deterministic_for_a_seed_and_differs_across_seeds(pcg_2k):
    first = P.local_time_warp(pcg_2k, 2000, 3, seed=7)
    again = P.local_time_warp(pcg_2k, 2000, 3, seed=7)
    other = P.local_time_warp(pcg_2k, 2000, 3, seed=8)
    np.testing.assert_array_equal(first, again)
    assert first.shape == pcg_2k.shape and first.dtype == np.float32
    assert np.max(np.abs(first - other)) > 0.1


def test_local_time_warp_rate_deviation_matches_severity():
    sr, f0 = 8000, 200.0
    tone = np.sin(2 * np.pi * f0 * np.arange(6 * sr) / sr).astype(np.float32)
    edge = sr // 10
    for severity in SEVERITIES:
        warped = P.local_time_warp(tone, sr, severity, seed=3)
        phase = np.unwrap(np.angle(scipy.signal.hilbert(warped)))
        instantaneous = np.diff(phase)[edge:-edge] * sr / (2 * np.pi)
        peak_deviation = np.max(np.abs(instantaneous / f0 - 1))
        target = P.WARP_MAX_RATE_DEVIATION[severity]
        assert target * 0.85 < peak_deviation < target * 1.1, (severity, peak_deviation)


def test_local_time_warp_keeps_the_content(pcg_2k):
    def envelope(y):
        smooth = scipy.signal.butter(2, 10, fs=2000, output="sos")
        return scipy.signal.sosfiltfilt(smooth, np.abs(y))

    correlations = [
        np.corrcoef(envelope(pcg_2k), envelope(P.local_time_warp(pcg_2k, 2000, s, seed=1)))[0, 1] for s in SEVERITIES
    ]
    assert correlations[0] > 0.8, correlations
    assert correlations[-1] < correlations[0]
    # Same samples, moved in time: the amplitude distribution barely changes.
    warped = P.local_time_warp(pcg_2k, 2000, 4, seed=1)
    assert np.std(warped) == pytest.approx(np.std(pcg_2k), rel=0.05)


@pytest.mark.parametrize("companding", [True, False])
def test_mu_law_snr_falls_with_severity(companding, pcg_2k):
    snrs = [snr_db(pcg_2k, P.mu_law(pcg_2k, 2000, s, companding=companding)) for s in SEVERITIES]
    assert all(later < earlier - 2.0 for earlier, later in zip(snrs, snrs[1:])), snrs
    assert snrs[0] > 30.0


def test_mu_law_beats_linear_pcm_on_quiet_signals(pcg_2k):
    quiet = (0.05 * pcg_2k).astype(np.float32)
    companded = snr_db(quiet, P.mu_law(quiet, 2000, 1))
    linear = snr_db(quiet, P.mu_law(quiet, 2000, 1, companding=False))
    assert companded > linear + 10.0
    # Samples beyond full scale clip instead of failing.
    assert np.max(P.mu_law(np.array([1.5, -2.0], np.float32), 2000, 1)) <= 1.0


@pytest.mark.parametrize("sr", [2000, 44100])
def test_band_limit_removes_energy_above_cutoff(sr):
    noise = np.random.default_rng(0).standard_normal(2 * sr).astype(np.float32) * 0.1
    freqs, power_in = scipy.signal.welch(noise, sr, nperseg=sr // 10)
    checked = 0
    for severity in SEVERITIES:
        cutoff = P.LOWPASS_CUTOFFS_HZ[severity]
        if 2 * cutoff >= sr / 2:
            continue  # no stop band below Nyquist to look at
        _, power_out = scipy.signal.welch(P.band_limit(noise, sr, severity), sr, nperseg=sr // 10)
        stop = freqs >= 2 * cutoff
        passband = (freqs > 0) & (freqs <= cutoff / 2)
        assert np.sum(power_out[stop]) < 1e-4 * np.sum(power_in[stop])
        assert np.sum(power_out[passband]) == pytest.approx(np.sum(power_in[passband]), rel=0.05)
        checked += 1
    assert checked >= 3


def test_band_limit_clips_cutoff_below_nyquist_and_handles_short_clips():
    sr = 1000  # 800 Hz is above this Nyquist: clipped to 450 Hz.
    noise = np.random.default_rng(1).standard_normal(4 * sr).astype(np.float32)
    y = P.band_limit(noise, sr, 1)
    freqs, power = scipy.signal.welch(y, sr, nperseg=256)
    assert np.all(np.isfinite(y))
    assert power[freqs > 490].sum() < 0.01 * power[freqs < 400].sum()
    assert P.band_limit(noise[:5], sr, 2).shape == (5,)


def test_registry_apply_matches_direct_calls(pcg_2k):
    expected = {"time_stretch_slow", "time_stretch_fast", "local_time_warp", "codec", "mu_law", "band_limit"}
    assert set(P.PERTURBATIONS) == expected
    np.testing.assert_array_equal(
        P.apply_perturbation("local_time_warp", pcg_2k, 2000, 2, seed=5),
        P.local_time_warp(pcg_2k, 2000, 2, seed=5),
    )
    np.testing.assert_array_equal(
        P.apply_perturbation("band_limit", pcg_2k, 2000, 2, seed=5),
        P.band_limit(pcg_2k, 2000, 2),
    )
    np.testing.assert_array_equal(
        P.apply_perturbation("codec", pcg_2k, 2000, 1, codec="vorbis"),
        P.codec(pcg_2k, 2000, 1, codec="vorbis"),
    )


def test_describe_labels():
    assert P.describe("codec", 2, codec="mp3") == "MP3 32 kbps"
    assert P.describe("codec", 3, codec="opus") == "Opus 8 kbps"
    assert P.describe("codec", 4, codec="vorbis") == "Vorbis q0"
    assert P.describe("time_stretch_fast", 2) == "rate 1.118"
    assert P.describe("time_stretch_fast", 4, method="resample") == "rate 1.250, resampled"
    assert P.describe("time_stretch_slow", 4) == "rate 0.800"
    assert P.describe("local_time_warp", 4) == "local rate ±10 %"
    assert P.describe("mu_law", 1) == "mu-law 8 bit"
    assert P.describe("mu_law", 3, companding=False) == "PCM 4 bit"
    assert P.describe("band_limit", 3) == "low-pass 200 Hz"
    assert P.describe("codec", 0, codec="opus") == "original"


def test_parse_perturbation_suite_expands_entries():
    items = P.parse_perturbation_suite(
        [
            {"name": "time_stretch_slow", "severities": [1, 2, 3]},
            {"name": "codec", "codec": "mp3", "severities": [1, 2, 3, 4]},
            {"name": "time_stretch_fast", "method": "resample", "severities": [4]},
            {"name": "band_limit"},
        ]
    )
    assert [(item.id, item.severity) for item in items] == [
        ("time_stretch_slow", 1),
        ("time_stretch_slow", 2),
        ("time_stretch_slow", 3),
        ("codec:mp3", 1),
        ("codec:mp3", 2),
        ("codec:mp3", 3),
        ("codec:mp3", 4),
        ("time_stretch_fast:resample", 4),
        ("band_limit", 1),
        ("band_limit", 2),
        ("band_limit", 3),
        ("band_limit", 4),
    ]
    pid, severity, kwargs = items[3]
    assert (pid, severity, kwargs) == ("codec:mp3", 1, {"codec": "mp3"})
    assert items[3].name == "codec"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "codec"}, "must be a list"),
        (["codec"], "must be a mapping"),
        ([{"severities": [1]}], "'name'"),
        ([{"name": "reverb"}], "'reverb'"),
        ([{"name": "codec", "codec": "flac"}], "'flac'"),
        ([{"name": "codec", "bitrate": 32}], "'bitrate'"),
        ([{"name": "mu_law", "severities": [0, 5]}], "severity"),
        ([{"name": "mu_law", "severities": []}], "'severities'"),
        ([{"name": "mu_law", "severities": [1, 1]}], "twice"),
        ([{"name": "time_stretch_slow", "method": "rubberband"}], "method"),
    ],
)
def test_parse_perturbation_suite_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        P.parse_perturbation_suite(spec)


BAD_ARGUMENTS = [
    ({"severity": -1}, ValueError, "severity"),
    ({"severity": 5}, ValueError, "severity"),
    ({"severity": 1.5}, ValueError, "severity"),
    ({"x": np.array([0.1, np.nan], np.float32)}, ValueError, "non-finite"),
    ({"x": np.array([0.1, np.inf], np.float32)}, ValueError, "non-finite"),
    ({"x": np.zeros(0, np.float32)}, ValueError, "empty"),
    ({"x": np.zeros((2, 100), np.float32)}, ValueError, "1-D"),
    ({"x": [0.1, 0.2]}, TypeError, "numpy"),
    ({"x": np.zeros(100, np.int16)}, TypeError, "floating"),
    ({"sr": 0}, ValueError, "sr"),
    ({"sr": -2000}, ValueError, "sr"),
    ({"sr": 2000.5}, TypeError, "sr"),
]


@pytest.mark.parametrize(("name", "options"), VARIANTS)
@pytest.mark.parametrize(("override", "error", "message"), BAD_ARGUMENTS)
def test_every_function_rejects_bad_arguments(name, options, override, error, message):
    arguments = {"x": np.zeros(100, np.float32), "sr": 2000, "severity": 1, **override}
    with pytest.raises(error, match=message):
        P.PERTURBATIONS[name](arguments["x"], arguments["sr"], arguments["severity"], **options)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("codec", {"codec": "aac"}, "codec"),
        ("time_stretch_fast", {"method": "wsola"}, "method"),
        ("local_time_warp", {"knot_spacing_s": 0.0}, "knot_spacing_s"),
        ("mu_law", {"companding": "yes"}, "companding"),
        ("band_limit", {"order": 0}, "order"),
    ],
)
def test_unknown_options_are_rejected(name, options, message):
    x = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match=message):
        P.PERTURBATIONS[name](x, 2000, 1, **options)
    with pytest.raises(ValueError, match=message):
        P.describe(name, 1, **options)


def test_registry_rejects_bad_names_seeds_and_options():
    x = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="name"):
        P.apply_perturbation("reverb", x, 2000, 1)
    with pytest.raises(ValueError, match="seed"):
        P.apply_perturbation("local_time_warp", x, 2000, 1, seed=-1)
    with pytest.raises(ValueError, match="'rate'"):
        P.apply_perturbation("time_stretch_slow", x, 2000, 1, rate=1.2)
    with pytest.raises(ValueError, match="severity"):
        P.codec_bitrate_kbps(x, 2000, 0)


def test_the_retired_time_stretch_is_rejected_with_its_replacements():
    """Its cached features (key time_stretch@SEVERITY) and predictions meant other rates: no suite can
    name it again, so nothing of the old meaning is reused under the new one."""
    for call in (
        lambda: P.parse_perturbation_suite([{"name": "time_stretch", "severities": [1]}]),
        lambda: P.apply_perturbation("time_stretch", np.zeros(100, np.float32), 2000, 1),
        lambda: P.describe("time_stretch", 1),
    ):
        with pytest.raises(
            ValueError, match="retired: .*0.90, 1.10, 0.80, 1.25.*time_stretch_slow or time_stretch_fast"
        ):
            call()
