"""Graded robustness perturbations of heart-sound waveforms.

Every perturbation is a plain function ``f(x, sr, severity, ...) -> y`` on a mono
waveform ``x`` (1-D float array, shape ``(n_samples,)``, values roughly in
[-1, 1]) sampled at ``sr`` Hz. It returns a new float32 array at the same sample
rate. ``severity`` is 0 or one of the levels of the perturbation's severity scale;
severity 0 returns the input unchanged (bit for bit for float32 input), higher
severities degrade more. Each is registered by name in :data:`PERTURBATIONS` with
its scale, through :func:`register_perturbation`, which a plugin uses to add its own.

Severity tables of the built-in perturbations (severity 1, 2, 3, 4):

=================  =============================================================
time_stretch_slow  tempo rate r = 0.946, 0.894, 0.846, 0.800 (1.25 ** (-k / 4))
time_stretch_fast  tempo rate r = 1.057, 1.118, 1.182, 1.250 (1.25 ** (k / 4))
                   (output is len(x)/r long; heart rate itself varies that much)
local_time_warp    peak local rate deviation ±2.5, ±5, ±7.5, ±10 % (a cycle is
                   locally stretched or squeezed by up to that much)
codec mp3          64, 32, 16, 8 kbit/s CBR (LAME through libsndfile)
codec opus         16, 12, 8, 6 kbit/s VBR target (libopus, coded at 16 kHz)
codec vorbis       quality q4, q2, q1, q0 on the oggenc scale (VBR, native rate)
mu_law             8, 6, 4, 3 bits (mu = 255 companding, or linear PCM)
band_limit         low-pass at 800, 400, 200, 100 Hz (clipped below Nyquist)
=================  =============================================================

Slowing and speeding up are two perturbations, each ordered by |log rate|:
severity k is k equal steps of ln(1.25) / 4 in log rate, so severity 4 reaches
the ends (0.8 and 1.25) of the range the retired ``time_stretch`` covered with
rates 0.90, 1.10, 0.80, 1.25 (unordered, the direction alternating), and
severity 2 (0.894, 1.118) is close to its two milder rates. The names are part
of the feature-cache key of perturbed sets (``ID@SEVERITY``): a perturbation
whose meaning changes gets a new name and its old one goes to
:data:`RETIRED_PERTURBATIONS`, so cached features of the old meaning are never
reused.

Codec bitrates measured with :func:`codec_bitrate_kbps` (whole encoded stream,
headers included) and waveform SNR against the input, on 5 s of the synthetic
heart-sound-like signal of ``tests/test_perturbations.py`` (S1/S2 tone bursts,
100-600 Hz murmur, noise):

=======  =================  ============================  ============================
codec    severity 1..4      2 kHz input: kbit/s | SNR dB  44.1 kHz input: kbit/s | dB
=======  =================  ============================  ============================
mp3      64 / 32 / 16 / 8   67.3 33.6 16.6 8.3 |          65.1 32.5 16.6 8.3 |
                            34.2 34.2 33.6 21.0           24.3 22.0 17.8 14.9
opus     16 / 12 / 8 / 6    18.6 14.5 10.1 9.2 |          16.1 12.5 8.4 6.8 |
                            22.5 17.2 15.1 13.2           18.4 16.7 13.5 9.7
vorbis   q4 / q2 / q1 / q0  12.7 10.8 9.9 9.2 |           81.5 71.1 67.3 57.2 |
                            20.6 16.7 14.6 12.7           23.3 21.7 20.9 19.7
=======  =================  ============================  ============================

On 5 s the fixed headers weigh about 2.8-3.9 kB for Vorbis (its codebooks,
~5 kbit/s of the figures above) and 0.9 kB for Opus. MP3 at 64 and 32 kbit/s gives
the same result on 2 kHz recordings (SNR 34.211 vs 34.210 dB): the error left
there does not depend on bitrate (most likely LAME's psychoacoustic model
dropping what it deems inaudible).

Codec sample rates. libsndfile's MP3 encoder keeps the input rate, which must
be an MPEG rate (8 kHz and up), and MPEG-1 rates (32 kHz and up) allow no
bitrate under 32 kbit/s. MP3 therefore codes at the rate the ``lame -b N``
command line picks for that bitrate (LAME's ``optimum_samplefreq`` applied
to the low-pass of its CBR bitrate table: 64 kbit/s -> 24 kHz, 32 -> 16 kHz,
16 and 8 -> 8 kHz), never above the smallest MPEG rate at or above ``sr``; so
2 and 4 kHz recordings are coded at 8 kHz. Opus accepts only 8/12/16/24/48 kHz;
it always codes at 16 kHz (wideband), the one rate where the waveform SNR of
our test PCG fell with every bitrate step: libopus switches between its CELT
and SILK modes with bitrate, and at 48 kHz 8 kbit/s beat 12 kbit/s on 25-400 Hz
band-passed PCG (22.8 vs 21.4 dB), at 8 kHz 16 kbit/s beat 24-32 kbit/s.
Heart sounds carry nothing above the 8 kHz this keeps. Vorbis codes at the
input rate. Rate changes use soxr (HQ) there and back. LAME's CBR presets
scale the signal by 0.95 (clipping headroom); that fixed gain is undone after
decoding, so what is left is coding error, not a level change. Opus applies
a 3 Hz DC-reject high-pass whose phase shift below ~60 Hz limits its waveform
SNR on heart sounds with strong low-frequency content (about 26 dB for
25-400 Hz band-passed PCG) at any bitrate.

Codec delay. libsndfile decodes Vorbis and Opus to the exact input length
(granule positions, pre-skip), and MP3 too when LAME's gapless tag fits in the
first frame. At low MP3 bitrates the tag does not fit and the decoder returns
encoder plus decoder delay; that delay is then found by cross-correlation with
the coded reference over the lags the extra length allows, and trimmed.
"""

from __future__ import annotations

import inspect
import io
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import librosa
import numpy as np
import scipy.signal
import soundfile as sf
import soxr
from scipy.interpolate import PchipInterpolator

from .registry import PluginError, Registry

__all__ = [
    "MAX_SEVERITY",
    "MAX_TEMPO_RATE",
    "SLOW_TEMPO_RATES",
    "FAST_TEMPO_RATES",
    "WARP_MAX_RATE_DEVIATION",
    "MP3_BITRATES_KBPS",
    "OPUS_BITRATES_KBPS",
    "VORBIS_QUALITIES",
    "MU_LAW_BITS",
    "LOWPASS_CUTOFFS_HZ",
    "TIME_STRETCH_METHODS",
    "CODECS",
    "MU_LAW_MU",
    "PERTURBATIONS",
    "register_perturbation",
    "time_stretch_slow",
    "time_stretch_fast",
    "local_time_warp",
    "codec",
    "codec_bitrate_kbps",
    "mu_law",
    "band_limit",
    "RETIRED_PERTURBATIONS",
    "severity_levels",
    "tempo_rate",
    "apply_perturbation",
    "describe",
    "PerturbationItem",
    "perturbation_id",
    "parse_perturbation_suite",
]

MAX_SEVERITY = 4

# Tempo rates in equal steps of |log rate| (ln(1.25) / 4 each) up to 1.25 and 1 / 1.25 = 0.8, the ends of the
# range of the retired time_stretch: a resting heart rate varies that much, and equal log steps make
# slowing by severity k the mirror image of speeding up by it.
MAX_TEMPO_RATE = 1.25
SLOW_TEMPO_RATES: dict[int, float] = {k: MAX_TEMPO_RATE ** (-k / MAX_SEVERITY) for k in range(1, MAX_SEVERITY + 1)}
FAST_TEMPO_RATES: dict[int, float] = {k: MAX_TEMPO_RATE ** (k / MAX_SEVERITY) for k in range(1, MAX_SEVERITY + 1)}
WARP_MAX_RATE_DEVIATION: dict[int, float] = {1: 0.025, 2: 0.05, 3: 0.075, 4: 0.10}
MP3_BITRATES_KBPS: dict[int, int] = {1: 64, 2: 32, 3: 16, 4: 8}
OPUS_BITRATES_KBPS: dict[int, int] = {1: 16, 2: 12, 3: 8, 4: 6}
# libvorbis quality in [-0.1, 1]; oggenc's -q scale is ten times this.
VORBIS_QUALITIES: dict[int, float] = {1: 0.4, 2: 0.2, 3: 0.1, 4: 0.0}
MU_LAW_BITS: dict[int, int] = {1: 8, 2: 6, 3: 4, 4: 3}
LOWPASS_CUTOFFS_HZ: dict[int, float] = {1: 800.0, 2: 400.0, 3: 200.0, 4: 100.0}

TIME_STRETCH_METHODS = ("phase_vocoder", "resample")
CODECS = ("mp3", "vorbis", "opus")

# G.711 mu-law constant; the bit depth sets the number of companded levels.
MU_LAW_MU = 255
# Fraction of Nyquist a low-pass cutoff is clipped to, so the filter stays valid.
_MAX_CUTOFF_FRACTION_OF_NYQUIST = 0.9

_MPEG_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# The sample rate `lame -b N` picks for the bitrates of MP3_BITRATES_KBPS.
_LAME_RATE_FOR_BITRATE_HZ = {64: 24000, 32: 16000, 16: 8000, 8: 8000}
# LAME's CBR presets scale the input by 0.95 (clipping headroom) at these bitrates.
_LAME_PRESET_GAIN = 0.95
_OPUS_CODING_RATE_HZ = 16000
_CODEC_FORMATS = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "vorbis": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}


# --------------------------------------------------------------------------- checks
def _check_waveform(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"x must be a 1-D mono waveform, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("x is empty; a waveform needs at least one sample")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains non-finite samples (NaN or inf)")
    return x


def _check_sample_rate(sr: Any) -> int:
    if not isinstance(sr, numbers.Integral) or isinstance(sr, bool):
        raise TypeError(f"sr must be an integer number of Hz, got {sr!r}")
    if sr <= 0:
        raise ValueError(f"sr must be positive, got {sr}")
    return int(sr)


def _check_severity(severity: Any) -> int:
    if not isinstance(severity, numbers.Integral) or isinstance(severity, bool):
        raise ValueError(f"severity must be an integer in 0..{MAX_SEVERITY}, got {severity!r}")
    if not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be in 0..{MAX_SEVERITY}, got {severity}")
    return int(severity)


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_choice(argument: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {choices}, got {value!r}")
    return value


def _check_positive(argument: str, value: Any) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{argument} must be a positive finite number, got {value!r}")
    return float(value)


def _check_bool(argument: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{argument} must be True or False, got {value!r}")
    return bool(value)


def _check_positive_int(argument: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")
    return int(value)


def _validated(x: Any, sr: Any, severity: Any) -> tuple[np.ndarray, int, int]:
    return _check_waveform(x), _check_sample_rate(sr), _check_severity(severity)


def _as_output(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.float32)


# ----------------------------------------------------------------------- registry
#: perturbation name (a suite entry's ``name``) -> its function; :func:`register_perturbation` fills it
PERTURBATIONS = Registry("perturbation", "perturbations")


def register_perturbation(
    name: str,
    *,
    severities: dict[int, Any] | tuple[int, ...],
    label: Callable[..., str] | None = None,
    tempo_rates: dict[int, float] | None = None,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register a waveform -> waveform function ``f(x, sr, severity, [seed,] *, **options)`` as ``name``.

    Parameters
    ----------
    severities : dict or tuple of int
        The scale: its levels (positive integers), each mapped to what it means at that
        level (a bitrate, a cutoff; a tuple when a label says it). Severity 0 is always the
        input unchanged. A suite entry without ``severities`` gets every level.
    label : callable, optional
        ``label(severity, **options) -> str`` names a level in tables ("MP3 32 kbps") and
        rejects bad options (ValueError); default ``"NAME VALUE"`` from ``severities``.
    tempo_rates : dict, optional
        For a perturbation that changes the tempo: level -> rate, the output being
        ``round(n / rate)`` samples long (the plan sizes the features by it).

    The function's keyword-only arguments are the options a suite entry may set; one that
    takes a ``seed`` argument gets a repeatable draw per recording.
    """
    scale = dict(severities) if isinstance(severities, dict) else {level: level for level in severities}
    if not scale or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in scale):
        raise PluginError(f"perturbation {name!r}: severities must be positive integer levels, got {severities!r}")

    def register(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        positional = [p.name for p in inspect.signature(function).parameters.values()][:3]
        if positional != ["x", "sr", "severity"]:
            raise PluginError(
                f"perturbation {name!r}: the function must take (x, sr, severity, ...), got ({', '.join(positional)})"
            )
        return PERTURBATIONS.register(
            name,
            function,
            severities=scale,
            label=label or (lambda severity, **options: f"{name} {scale[severity]}"),
            tempo_rates=dict(tempo_rates or {}),
        )

    return register


def _tempo_label(rates: dict[int, float]) -> Callable[..., str]:
    def label(severity: int, *, method: str = "phase_vocoder") -> str:
        _check_choice("method", method, TIME_STRETCH_METHODS)
        return f"rate {rates[severity]:.3f}" + ("" if method == "phase_vocoder" else ", resampled")

    return label


def _warp_label(severity: int, *, knot_spacing_s: float = 0.8) -> str:
    _check_positive("knot_spacing_s", knot_spacing_s)
    return f"local rate ±{100 * WARP_MAX_RATE_DEVIATION[severity]:g} %"


def _codec_label(severity: int, *, codec: str = "mp3") -> str:
    codec = _check_choice("codec", codec, CODECS)
    if codec == "mp3":
        return f"MP3 {MP3_BITRATES_KBPS[severity]} kbps"
    if codec == "opus":
        return f"Opus {OPUS_BITRATES_KBPS[severity]} kbps"
    return f"Vorbis q{10 * VORBIS_QUALITIES[severity]:g}"


def _mu_law_label(severity: int, *, companding: bool = True) -> str:
    return f"{'mu-law' if _check_bool('companding', companding) else 'PCM'} {MU_LAW_BITS[severity]} bit"


def _band_limit_label(severity: int, *, order: int = 4) -> str:
    _check_positive_int("order", order)
    return f"low-pass {LOWPASS_CUTOFFS_HZ[severity]:g} Hz"


# --------------------------------------------------------------------- time warps
def _stft_size(sr: int) -> int:
    """Power-of-two FFT size closest to a 50 ms window (128 at 2 kHz, 2048 at 44.1 kHz)."""
    return int(2 ** max(4, round(np.log2(0.05 * sr))))


def _time_stretch(x: Any, sr: Any, severity: Any, method: str, rates: dict[int, float]) -> np.ndarray:
    x, sr, severity = _validated(x, sr, severity)
    _check_choice("method", method, TIME_STRETCH_METHODS)
    if severity == 0:
        return x.astype(np.float32)
    rate = rates[severity]
    target_length = int(round(x.size / rate))
    if method == "phase_vocoder":
        n_fft = _stft_size(sr)
        stretched = librosa.effects.time_stretch(x.astype(np.float32), rate=rate, n_fft=n_fft, hop_length=n_fft // 4)
    else:
        stretched = soxr.resample(x.astype(np.float32), sr, sr / rate)
    return _as_output(librosa.util.fix_length(stretched, size=target_length))


@register_perturbation(
    "time_stretch_slow", severities=SLOW_TEMPO_RATES, label=_tempo_label(SLOW_TEMPO_RATES), tempo_rates=SLOW_TEMPO_RATES
)
def time_stretch_slow(x: np.ndarray, sr: int, severity: int, *, method: str = "phase_vocoder") -> np.ndarray:
    """Slow the global tempo down by the rate ``SLOW_TEMPO_RATES[severity]``.

    Parameters
    ----------
    x : ndarray, shape (n_samples,)
        Mono waveform.
    sr : int
        Sample rate in Hz; the output keeps it.
    severity : int
        0 (identity) to 4; rates 0.946, 0.894, 0.846, 0.800 (1.25 ** (-k / 4):
        equal steps in |log rate|, the mirror image of :func:`time_stretch_fast`).
    method : {"phase_vocoder", "resample"}
        ``"phase_vocoder"`` keeps the pitch (librosa.effects.time_stretch with a
        ~50 ms STFT window, hop a quarter of it); ``"resample"`` changes tempo
        and pitch together, like playing the tape slower (soxr).

    Returns
    -------
    ndarray, shape (round(n_samples / rate),), float32
    """
    return _time_stretch(x, sr, severity, method, SLOW_TEMPO_RATES)


@register_perturbation(
    "time_stretch_fast", severities=FAST_TEMPO_RATES, label=_tempo_label(FAST_TEMPO_RATES), tempo_rates=FAST_TEMPO_RATES
)
def time_stretch_fast(x: np.ndarray, sr: int, severity: int, *, method: str = "phase_vocoder") -> np.ndarray:
    """Speed the global tempo up by the rate ``FAST_TEMPO_RATES[severity]``.

    Parameters
    ----------
    x : ndarray, shape (n_samples,)
        Mono waveform.
    sr : int
        Sample rate in Hz; the output keeps it.
    severity : int
        0 (identity) to 4; rates 1.057, 1.118, 1.182, 1.250 (1.25 ** (k / 4):
        equal steps in |log rate|, the mirror image of :func:`time_stretch_slow`).
    method : {"phase_vocoder", "resample"}
        As for :func:`time_stretch_slow` (``"resample"`` plays the tape faster).

    Returns
    -------
    ndarray, shape (round(n_samples / rate),), float32
    """
    return _time_stretch(x, sr, severity, method, FAST_TEMPO_RATES)


@register_perturbation("local_time_warp", severities=WARP_MAX_RATE_DEVIATION, label=_warp_label)
def local_time_warp(x: np.ndarray, sr: int, severity: int, seed: int = 0, *, knot_spacing_s: float = 0.8) -> np.ndarray:
    """Smooth random local time warp that keeps the total length.

    The local playback rate is ``1 + d(t)``: ``d`` is a shape-preserving cubic
    (PCHIP, no overshoot) through uniform random values at knots every
    ``knot_spacing_s`` seconds (about one heart cycle), made zero-mean, and
    scaled so that ``max |d| = WARP_MAX_RATE_DEVIATION[severity]``. Output
    sample ``k`` reads the input at the warped position ``sum_{j<k} (1 + d_j)``
    by linear interpolation; zero mean makes the path end on the last sample.

    Parameters
    ----------
    x : ndarray, shape (n_samples,)
        Mono waveform.
    sr : int
        Sample rate in Hz.
    severity : int
        0 (identity) to 4; peak local rate deviation ±2.5, ±5, ±7.5, ±10 %.
    seed : int
        Seed of the random knots; the same seed gives the same warp.
    knot_spacing_s : float
        Spacing of the random knots in seconds.

    Returns
    -------
    ndarray, shape (n_samples,), float32
    """
    x, sr, severity = _validated(x, sr, severity)
    seed = _check_seed(seed)
    knot_spacing_s = _check_positive("knot_spacing_s", knot_spacing_s)
    if severity == 0 or x.size < 2:
        return x.astype(np.float32)
    n_intervals = x.size - 1
    duration_s = n_intervals / sr
    n_knots = max(2, int(np.ceil(duration_s / knot_spacing_s)) + 1)
    rng = np.random.default_rng(seed)
    knot_times = np.linspace(0.0, duration_s, n_knots)
    interval_times = (np.arange(n_intervals) + 0.5) / sr
    shape = PchipInterpolator(knot_times, rng.uniform(-1.0, 1.0, n_knots))(interval_times)
    shape -= shape.mean()
    peak = np.max(np.abs(shape))
    if peak == 0.0:
        return x.astype(np.float32)
    local_rate = 1.0 + WARP_MAX_RATE_DEVIATION[severity] * shape / peak
    source_positions = np.concatenate(([0.0], np.cumsum(local_rate)))
    return _as_output(np.interp(source_positions, np.arange(x.size), x))


# ------------------------------------------------------------------------- codecs
def _smallest_rate_at_least(rates: tuple[int, ...], sr: int) -> int:
    return next((rate for rate in rates if rate >= sr), rates[-1])


def _codec_settings(codec: str, severity: int, sr: int) -> tuple[int, float, str | None]:
    """Coding sample rate, libsndfile compression level and bitrate mode."""
    if codec == "mp3":
        kbps = MP3_BITRATES_KBPS[severity]
        rate = min(_LAME_RATE_FOR_BITRATE_HZ[kbps], _smallest_rate_at_least(_MPEG_RATES_HZ, sr))
        # libsndfile maps level c to int(top - c * (top - bottom)) kbit/s per MPEG version.
        top, bottom = (320, 32) if rate >= 32000 else (160, 8) if rate >= 16000 else (64, 8)
        level = (top - kbps - 0.25) / (top - bottom)
        return rate, float(np.clip(level, 0.0, 1.0)), "CONSTANT"
    if codec == "opus":
        # libsndfile maps level c to (1 - c) * 250 + 6 kbit/s per channel.
        level = 1.0 - (OPUS_BITRATES_KBPS[severity] - 6) / 250
        return _OPUS_CODING_RATE_HZ, level, None
    # libsndfile maps level c to libvorbis quality 1 - c.
    return sr, 1.0 - VORBIS_QUALITIES[severity], None


def _encode(x: np.ndarray, sr: int, severity: int, codec: str) -> tuple[bytes, int, np.ndarray]:
    """Encode ``x``; return the stream, its sample rate and the signal coded."""
    rate, level, bitrate_mode = _codec_settings(codec, severity, sr)
    coded = x.astype(np.float32) if rate == sr else soxr.resample(x.astype(np.float32), sr, rate)
    buffer = io.BytesIO()
    file_format, subtype = _CODEC_FORMATS[codec]
    sf.write(
        buffer,
        coded,
        rate,
        format=file_format,
        subtype=subtype,
        compression_level=level,
        bitrate_mode=bitrate_mode,
    )
    return buffer.getvalue(), rate, coded


def _trim_codec_delay(decoded: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cut ``decoded`` to ``len(reference)`` at the lag of best cross-correlation.

    A decoder only ever adds delay, so the lag lies in 0..(extra length).
    """
    extra = decoded.size - reference.size
    if extra <= 0:
        return librosa.util.fix_length(decoded, size=reference.size)
    correlation = scipy.signal.correlate(decoded, reference, mode="valid", method="fft")
    lag = int(np.argmax(correlation))
    return decoded[lag : lag + reference.size]


@register_perturbation("codec", severities=(1, 2, 3, 4), label=_codec_label)
def codec(x: np.ndarray, sr: int, severity: int, *, codec: str = "mp3") -> np.ndarray:
    """Lossy-codec round trip (encode and decode in memory with libsndfile).

    Parameters
    ----------
    x : ndarray, shape (n_samples,)
        Mono waveform; samples beyond [-1, 1] clip in the encoder.
    sr : int
        Sample rate in Hz; the output keeps it (see the module notes for the
        rate each codec codes at).
    severity : int
        0 (identity) to 4: MP3 64/32/16/8 kbit/s, Opus 16/12/8/6 kbit/s,
        Vorbis q4/q2/q1/q0.
    codec : {"mp3", "vorbis", "opus"}

    Returns
    -------
    ndarray, shape (n_samples,), float32
        Decoded signal, aligned with the input (codec delay removed).
    """
    x, sr, severity = _validated(x, sr, severity)
    _check_choice("codec", codec, CODECS)
    if severity == 0:
        return x.astype(np.float32)
    encoded, rate, coded = _encode(x, sr, severity, codec)
    decoded, _ = sf.read(io.BytesIO(encoded), dtype="float32")
    aligned = _trim_codec_delay(decoded, coded)
    if codec == "mp3":
        aligned = aligned / _LAME_PRESET_GAIN
    restored = aligned if rate == sr else soxr.resample(aligned, rate, sr)
    return _as_output(librosa.util.fix_length(restored, size=x.size))


def codec_bitrate_kbps(x: np.ndarray, sr: int, severity: int, *, codec: str = "mp3") -> float:
    """Achieved bitrate of :func:`codec` at ``severity``, in kbit/s.

    Measured as the size of the whole encoded stream (container headers
    included, which weigh on clips of a few seconds) over the duration of ``x``.
    """
    x, sr, severity = _validated(x, sr, severity)
    _check_choice("codec", codec, CODECS)
    if severity == 0:
        raise ValueError("severity must be 1 or more: severity 0 is not encoded")
    encoded, _, _ = _encode(x, sr, severity, codec)
    return len(encoded) * 8 / (x.size / sr) / 1000


# ------------------------------------------------------------ amplitude and band
def _quantize_uniform(v: np.ndarray, bits: int) -> np.ndarray:
    """Mid-tread quantisation of [-1, 1] to ``2**bits`` levels."""
    step = 2.0 / 2**bits
    codes = np.clip(np.round(v / step), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return codes * step


@register_perturbation("mu_law", severities=MU_LAW_BITS, label=_mu_law_label)
def mu_law(x: np.ndarray, sr: int, severity: int, *, companding: bool = True) -> np.ndarray:
    """Bit-depth reduction, with mu-law companding (G.711, mu = 255) or linear.

    Samples are clipped to [-1, 1], companded (if ``companding``), quantised to
    ``MU_LAW_BITS[severity]`` bits with a mid-tread uniform quantiser, and
    expanded back.

    Parameters
    ----------
    x : ndarray, shape (n_samples,)
        Mono waveform.
    sr : int
        Sample rate in Hz (checked; the operation does not depend on it).
    severity : int
        0 (identity) to 4; 8, 6, 4, 3 bits.
    companding : bool
        True for mu-law, False for plain linear PCM at the same bit depth.

    Returns
    -------
    ndarray, shape (n_samples,), float32
    """
    x, sr, severity = _validated(x, sr, severity)
    companding = _check_bool("companding", companding)
    if severity == 0:
        return x.astype(np.float32)
    bits = MU_LAW_BITS[severity]
    clipped = np.clip(x.astype(np.float64), -1.0, 1.0)
    if not companding:
        return _as_output(_quantize_uniform(clipped, bits))
    compressed = librosa.mu_compress(clipped, mu=MU_LAW_MU, quantize=False)
    quantized = _quantize_uniform(compressed, bits)
    return _as_output(librosa.mu_expand(quantized, mu=MU_LAW_MU, quantize=False))


@register_perturbation("band_limit", severities=LOWPASS_CUTOFFS_HZ, label=_band_limit_label)
def band_limit(x: np.ndarray, sr: int, severity: int, *, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth low-pass, like a stethoscope or phone channel.

    The cutoff ``LOWPASS_CUTOFFS_HZ[severity]`` is clipped to 0.9 × Nyquist.
    Filtering runs forward and backward (scipy.signal.sosfiltfilt), so the
    magnitude response is that of order ``2 * order`` and there is no delay.

    Parameters
    ----------
    x : ndarray, shape (n_samples,)
        Mono waveform.
    sr : int
        Sample rate in Hz.
    severity : int
        0 (identity) to 4; cutoffs 800, 400, 200, 100 Hz.
    order : int
        Butterworth order of one pass.

    Returns
    -------
    ndarray, shape (n_samples,), float32
    """
    x, sr, severity = _validated(x, sr, severity)
    order = _check_positive_int("order", order)
    if severity == 0:
        return x.astype(np.float32)
    cutoff_hz = min(LOWPASS_CUTOFFS_HZ[severity], _MAX_CUTOFF_FRACTION_OF_NYQUIST * sr / 2)
    sos = scipy.signal.butter(order, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    # sosfiltfilt's default edge padding needs more samples than very short clips have.
    padlen = min(3 * (2 * sos.shape[0] + 1), x.size - 1)
    return _as_output(scipy.signal.sosfiltfilt(sos, x.astype(np.float64), padlen=padlen))


# ------------------------------------------------------------------ lookups
# Names no longer accepted, with why: their cached features and predictions meant something else.
RETIRED_PERTURBATIONS: dict[str, str] = {
    "time_stretch": (
        "its severities 1-4 were tempo rates 0.90, 1.10, 0.80, 1.25 (not ordered, the direction "
        "alternating); use time_stretch_slow or time_stretch_fast, ordered by |log rate|"
    ),
}


def _unknown_name(name: Any) -> str:
    """Why ``name`` is not a perturbation: the valid names, and why a retired one was retired."""
    message = PERTURBATIONS.unknown(name)
    if isinstance(name, str) and name in RETIRED_PERTURBATIONS:
        message += f" (retired: {RETIRED_PERTURBATIONS[name]})"
    return message


def _lookup(name: Any) -> Callable[..., np.ndarray]:
    if name not in PERTURBATIONS:
        raise ValueError(f"name {_unknown_name(name)}")
    return PERTURBATIONS[name]


def severity_levels(name: str) -> list[int]:
    """The levels of perturbation ``name``'s severity scale (0, the unchanged input, not among them)."""
    _lookup(name)
    return sorted(PERTURBATIONS.info(name)["severities"])


def _check_level(name: str, severity: Any) -> int:
    """``severity`` as an int: 0 or a level of ``name``'s scale (ValueError otherwise)."""
    levels = severity_levels(name)
    if (
        not isinstance(severity, numbers.Integral)
        or isinstance(severity, bool)
        or (severity and severity not in levels)
    ):
        raise ValueError(f"severity of {name} must be 0 or one of its levels {levels}, got {severity!r}")
    return int(severity)


def tempo_rate(name: str, severity: int) -> float:
    """The tempo rate of perturbation ``name`` at ``severity``: its output is round(n / rate) samples
    long for n input samples; 1.0 for every perturbation that keeps the length, and at severity 0."""
    severity = _check_level(name, severity)
    return PERTURBATIONS.info(name)["tempo_rates"].get(severity, 1.0)


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(PERTURBATIONS[name]).parameters)


def _option_names(name: str) -> tuple[str, ...]:
    """Keyword-only options of a perturbation (the keys a suite entry may set)."""
    return tuple(
        p.name for p in _parameters(name).values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
    )


def _check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    allowed = _option_names(name)
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for perturbation {name!r}; allowed: {allowed}")
    return options


def apply_perturbation(name: str, x: np.ndarray, sr: int, severity: int, seed: int = 0, **kwargs: Any) -> np.ndarray:
    """Apply the perturbation ``name`` of :data:`PERTURBATIONS`.

    ``seed`` goes to the random perturbations (those taking a ``seed``: local_time_warp)
    and is checked but unused by the deterministic ones; ``kwargs`` are the perturbation's
    keyword options (``method``, ``codec``, ``companding``, ``order``, ``knot_spacing_s``).
    """
    function = _lookup(name)
    _check_options(name, kwargs)
    seed = _check_seed(seed)
    severity = _check_level(name, severity)
    if "seed" in _parameters(name):
        return function(x, sr, severity, seed=seed, **kwargs)
    return function(x, sr, severity, **kwargs)


def describe(name: str, severity: int, **kwargs: Any) -> str:
    """Human-readable label of a perturbation level, e.g. ``"MP3 32 kbps"``.

    Severity 0 is ``"original"``. ``kwargs`` are the perturbation's keyword
    options and are validated like the perturbation itself validates them.
    """
    _lookup(name)
    _check_options(name, kwargs)
    severity = _check_level(name, severity)
    label = PERTURBATIONS.info(name)["label"]
    # the label function checks the options: at severity 0 too, so a bad suite fails whatever its levels
    text = label(severity or severity_levels(name)[0], **kwargs)
    return "original" if severity == 0 else text


class PerturbationItem(NamedTuple):
    """One perturbation at one severity: ``(id, severity, kwargs)``.

    ``id`` is the perturbation name followed by its options, e.g. ``"codec:mp3"``
    or ``"time_stretch_fast:resample"``; ``name`` is the bare perturbation name.
    """

    id: str
    severity: int
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.id.split(":", 1)[0]


def perturbation_id(name: str, **kwargs: Any) -> str:
    """Identifier of a perturbation with options: string options as ``:value``,
    others as ``:key=value``, in key order (``"codec:mp3"``)."""
    _lookup(name)
    _check_options(name, kwargs)
    parts = [v if isinstance(v, str) else f"{k}={v}" for k, v in sorted(kwargs.items())]
    return ":".join([name, *parts])


def parse_perturbation_suite(spec: Any) -> list[PerturbationItem]:
    """Expand a perturbation suite as written in a search-space YAML.

    Parameters
    ----------
    spec : list of dict
        Each entry has ``name`` (a key of :data:`PERTURBATIONS`), optional
        ``severities`` (list of 0 and levels of its scale; default every level)
        and any keyword options of that perturbation, e.g.
        ``[{"name": "time_stretch_slow", "severities": [1, 2, 3]},
        {"name": "codec", "codec": "mp3", "severities": [1, 2, 3, 4]}]``.

    Returns
    -------
    list of PerturbationItem
        One ``(id, severity, kwargs)`` per entry and severity, in spec order.
    """
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"perturbation suite must be a list of entries, got {type(spec).__name__}")
    items: list[PerturbationItem] = []
    seen: set[tuple[str, int]] = set()
    for index, entry in enumerate(spec):
        where = f"perturbation suite entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping, got {type(entry).__name__}")
        if "name" not in entry:
            raise ValueError(f"{where} lacks the key 'name'")
        name = entry["name"]
        if name not in PERTURBATIONS:
            raise ValueError(f"{where}: 'name' {_unknown_name(name)}")
        severities = entry.get("severities", severity_levels(name))
        if not isinstance(severities, (list, tuple)) or len(severities) == 0:
            raise ValueError(f"{where}: 'severities' must be a non-empty list, got {severities!r}")
        options = {key: value for key, value in entry.items() if key not in ("name", "severities")}
        try:
            for severity in severities:
                describe(name, severity, **options)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        item_id = perturbation_id(name, **options)
        for severity in severities:
            if (item_id, int(severity)) in seen:
                raise ValueError(f"{where}: {item_id!r} at severity {severity} is listed twice")
            seen.add((item_id, int(severity)))
            items.append(PerturbationItem(item_id, int(severity), dict(options)))
    return items
