"""Audio → model input: windows of waveform and their log-Mel images.

Three named profiles (``paper`` reproduces the official AudioFuse preprocessing,
``native`` keeps PhysioNet's 2 kHz, ``ast`` is the Audio Spectrogram Transformer's
Kaldi-fbank-style input for ICBHI cycles) and any field overridable, e.g.
``get_profile("native", image_size=64)``. Everything here is a pure function
of (waveform, sample rate, profile); caching lives in :mod:`study.cache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FEATURE_VERSION",
    "PROFILES",
    "SPECTROGRAM_VERSION",
    "FeatureProfile",
    "compute_features",
    "fbank_images",
    "get_profile",
    "log_mel_images",
    "make_windows",
    "normalize_waveforms",
    "resample",
]

# Bump when the computation changes so cached features of older code are not reused.
FEATURE_VERSION = 1
# Bumped per spectrogram kind: 2 = fbank computed by torchaudio's Kaldi fbank instead of librosa.
SPECTROGRAM_VERSION = {"db_minmax": 1, "fbank": 2}


@dataclass(frozen=True)
class FeatureProfile:
    """How a recording becomes model input. Units: Hz, seconds, samples."""

    name: str
    sample_rate: int  # every recording is resampled to this rate (Hz)
    window_s: float = 5.0  # window length (s)
    windows: str = "first"  # "first": the first window only (paper); "all": every window, averaged per recording
    padding: str = "zero"  # how a recording shorter than a window is filled: "zero" or "cyclic" (repeat it)
    min_last_window: float = 0.5  # "all": keep a final partial window at least this fraction of a window long
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 224
    fmin: float = 0.0
    fmax: float | None = None  # None = Nyquist
    top_db: float = 80.0  # dynamic range kept below each image's maximum (librosa.power_to_db)
    image_size: tuple[int, int] = (224, 224)  # (mels, frames) after bilinear resize
    waveform_norm: str = "none"  # "none" (paper), "zscore" per window, "peak" per window
    # "db_minmax": dB re each image's max, resized to image_size, min-max to [0, 1] (AudioFuse);
    # "fbank": natural-log Mel power, Kaldi framing, not resized (image_size is derived: (n_mels, frames))
    # and not scaled: study.train standardises it with the training split's mean and std (AST)
    spectrogram: str = "db_minmax"
    win_length: int | None = None  # "fbank": analysis window (samples) inside each n_fft frame; None = n_fft
    preemphasis: float = 0.0  # "fbank": y[t] - coef * y[t-1] before the STFT (Kaldi: 0.97)
    bandpass_hz: tuple[float, float] | None = (
        None  # e.g. (25, 400): 4th-order Butterworth, zero phase, before windowing
    )

    def __post_init__(self):
        _check(self.sample_rate > 0, "sample_rate", self.sample_rate, "must be positive")
        _check(self.window_s > 0, "window_s", self.window_s, "must be positive")
        _check(self.windows in ("first", "all"), "windows", self.windows, "must be 'first' or 'all'")
        _check(self.padding in ("zero", "cyclic"), "padding", self.padding, "must be 'zero' or 'cyclic'")
        _check(0 < self.min_last_window <= 1, "min_last_window", self.min_last_window, "must be in (0, 1]")
        _check(
            0 < self.hop_length and 0 < self.n_fft,
            "n_fft/hop_length",
            (self.n_fft, self.hop_length),
            "must be positive",
        )
        _check(0 < self.n_mels, "n_mels", self.n_mels, "must be positive")
        nyquist = self.sample_rate / 2
        _check(
            self.fmax is None or self.fmin < self.fmax <= nyquist, "fmax", self.fmax, f"must be in (fmin, {nyquist}]"
        )
        _check(
            self.waveform_norm in ("none", "zscore", "peak"),
            "waveform_norm",
            self.waveform_norm,
            "must be 'none', 'zscore' or 'peak'",
        )
        _check(
            self.spectrogram in ("db_minmax", "fbank"),
            "spectrogram",
            self.spectrogram,
            "must be 'db_minmax' or 'fbank'",
        )
        _check(
            self.win_length is None or 0 < self.win_length <= self.n_fft,
            "win_length",
            self.win_length,
            f"must be None or in (0, n_fft={self.n_fft}]",
        )
        _check(0.0 <= self.preemphasis < 1.0, "preemphasis", self.preemphasis, "must be in [0, 1)")
        if self.spectrogram == "fbank":
            _check(
                self.window_samples >= self.frame_length,
                "window_s",
                self.window_s,
                f"is shorter than one analysis window ({self.frame_length} samples)",
            )
            object.__setattr__(self, "image_size", (self.n_mels, self.n_fbank_frames))
        size = self.image_size
        _check(len(size) == 2 and min(size) > 0, "image_size", size, "must be two positive ints (mels, frames)")
        band = self.bandpass_hz
        _check(
            band is None or (len(band) == 2 and 0 < band[0] < band[1] < nyquist),
            "bandpass_hz",
            band,
            f"must be None or (low, high) with 0 < low < high < {nyquist}",
        )

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def frame_length(self) -> int:
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def n_fbank_frames(self) -> int:
        """Frames of a window with Kaldi's framing (snip_edges): 1 + (samples - frame) // hop."""
        return 1 + (self.window_samples - self.frame_length) // self.hop_length

    def key(self) -> str:
        """Hex digest of every setting that changes the features (the name excluded)."""
        settings = dataclasses.asdict(self)
        settings.pop("name")
        settings["version"] = FEATURE_VERSION
        if SPECTROGRAM_VERSION[self.spectrogram] > 1:  # other kinds keep the keys of their cached features
            settings["spectrogram_version"] = SPECTROGRAM_VERSION[self.spectrogram]
        return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


def _check(ok: bool, field: str, value, reason: str) -> None:
    if not ok:
        raise ValueError(f"feature setting '{field}' = {value!r} {reason}")


PROFILES = {
    # Official AudioFuse preprocessing: 22,050 Hz, first 5 s, Mel n_fft 2048 / hop 512 / 224 bands,
    # dB re max, resized to 224x224, min-max per image; the waveform branch sees the same 5 s.
    "paper": FeatureProfile("paper", sample_rate=22050),
    # PhysioNet's native 2 kHz: heart sounds live below 1 kHz, and the CNN costs 11x less.
    # 256-point FFT (128 ms) with a 16 ms hop resolves S1/S2 (~100 ms) and murmurs.
    "native": FeatureProfile(
        "native", sample_rate=2000, n_fft=256, hop_length=32, n_mels=64, fmin=20.0, fmax=1000.0, waveform_norm="zscore"
    ),
    # AST / SAM-AST on ICBHI cycles: 16 kHz, 8 s with cyclic padding, 128 Mel bands of 25 ms windows
    # every 10 ms (torchaudio.compliance.kaldi.fbank with AST's settings: 512-point FFT of a 400-sample
    # Hann window, per-frame DC removal and pre-emphasis 0.97, HTK Mel from 20 Hz, natural log),
    # 128 x 798 frames, standardised with training-set statistics in study.trial_data.
    "ast": FeatureProfile(
        "ast",
        sample_rate=16000,
        window_s=8.0,
        padding="cyclic",
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=128,
        fmin=20.0,
        spectrogram="fbank",
        preemphasis=0.97,
        waveform_norm="zscore",
    ),
}


def get_profile(name: str, **overrides) -> FeatureProfile:
    """A named profile with some fields replaced; unknown names and fields are refused."""
    if name not in PROFILES:
        raise ValueError(f"unknown feature profile {name!r}; expected one of {sorted(PROFILES)}")
    fields = {f.name for f in dataclasses.fields(FeatureProfile)} - {"name"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown feature setting(s) {sorted(unknown)}; expected some of {sorted(fields)}")
    if overrides.get("bandpass_hz") is not None:
        overrides["bandpass_hz"] = tuple(float(f) for f in overrides["bandpass_hz"])
    if "image_size" in overrides:
        size = overrides["image_size"]
        overrides["image_size"] = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    return dataclasses.replace(PROFILES[name], **overrides)


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1-D waveform (soxr high quality, as librosa.load does)."""
    if sr == target_sr:
        return wave.astype(np.float32, copy=False)
    import librosa  # imported on first use: a fully cached run never needs it

    return librosa.resample(wave, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def make_windows(wave: np.ndarray, profile: FeatureProfile) -> np.ndarray:
    """Cut a waveform at the profile's rate into windows, shape (n_windows, window_samples).

    "first" keeps one window; "all" keeps every non-overlapping window, plus a final
    partial one when it is at least ``min_last_window`` of a window. Short windows are
    filled with zeros or, with cyclic padding, by repeating the recording.
    """
    size = profile.window_samples
    if profile.windows == "first":
        n_windows = 1
    else:
        full, rest = divmod(len(wave), size)
        n_windows = max(1, full + (rest >= profile.min_last_window * size))
    total = n_windows * size
    if len(wave) >= total:
        padded = wave[:total]
    elif profile.padding == "cyclic":
        padded = (
            np.resize(wave, total)
            if profile.windows == "first"
            else np.concatenate([wave[: (n_windows - 1) * size], np.resize(wave[(n_windows - 1) * size :], size)])
        )
    else:
        padded = np.pad(wave, (0, total - len(wave)))
    return padded.reshape(n_windows, size)


def fbank_images(windows: np.ndarray, profile: FeatureProfile) -> np.ndarray:
    """Kaldi fbank of windows (n, samples) → float32 (n, n_mels, frames), natural log, as AST computes it.

    Each window's mean is removed, then ``torchaudio.compliance.kaldi.fbank`` with AST's settings
    (``htk_compat=True, use_energy=False, window_type="hanning", dither=0.0``) and the profile's
    framing: frame k covers samples [k * hop, k * hop + win_length) (snip_edges), per-frame DC
    removal and pre-emphasis, a Hann window, an ``n_fft``-point power spectrum (Kaldi's next power
    of two above the window), HTK Mel triangles from ``fmin``, log floored at float32 epsilon.
    """
    import torch
    from torchaudio.compliance import kaldi

    if profile.n_fft != 1 << (profile.frame_length - 1).bit_length():
        raise ValueError(
            f"Kaldi's fbank uses an FFT of the next power of two above the window "
            f"({profile.frame_length} samples), not n_fft={profile.n_fft}"
        )
    options = dict(
        sample_frequency=profile.sample_rate,
        num_mel_bins=profile.n_mels,
        frame_length=1000 * profile.frame_length / profile.sample_rate,
        frame_shift=1000 * profile.hop_length / profile.sample_rate,
        low_freq=profile.fmin,
        high_freq=profile.fmax or 0.0,
        preemphasis_coefficient=profile.preemphasis,
        htk_compat=True,
        use_energy=False,
        window_type="hanning",
        dither=0.0,
    )
    images = np.empty((len(windows), profile.n_mels, profile.n_fbank_frames), np.float32)
    with torch.no_grad():
        # kaldi.fbank takes one signal at a time; a recording has one window or a few
        for i, window in enumerate(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))):
            images[i] = kaldi.fbank((window - window.mean())[None], **options).T.numpy()
    return images


def log_mel_images(windows: np.ndarray, profile: FeatureProfile) -> np.ndarray:
    """Log-Mel images of windows (n, samples) → float32 (n, H, W) in [0, 1].

    Power Mel spectrogram, dB relative to each image's own maximum with ``top_db``
    floor (librosa.power_to_db(ref=np.max) per image, vectorised over images),
    bilinear resize to ``image_size``, min-max per image.
    """
    import librosa
    import torch
    import torch.nn.functional as F

    power = librosa.feature.melspectrogram(
        y=windows,
        sr=profile.sample_rate,
        n_fft=profile.n_fft,
        hop_length=profile.hop_length,
        n_mels=profile.n_mels,
        fmin=profile.fmin,
        fmax=profile.fmax,
    )
    amin = 1e-10
    db = 10.0 * np.log10(np.maximum(power, amin))
    db -= 10.0 * np.log10(np.maximum(power.max(axis=(1, 2), keepdims=True), amin))
    db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - profile.top_db)
    images = F.interpolate(
        torch.from_numpy(db.astype(np.float32))[:, None], size=profile.image_size, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    low = images.min(axis=(1, 2), keepdims=True)
    span = images.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (images - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def normalize_waveforms(windows: np.ndarray, how: str) -> np.ndarray:
    """Per-window waveform normalisation ("none", "zscore", "peak"), float32 (n, samples)."""
    windows = windows.astype(np.float32, copy=True)
    if how == "zscore":
        windows -= windows.mean(axis=1, keepdims=True)
        windows /= windows.std(axis=1, keepdims=True) + 1e-8
    elif how == "peak":
        windows -= windows.mean(axis=1, keepdims=True)
        windows /= np.abs(windows).max(axis=1, keepdims=True) + 1e-8
    return windows


def compute_features(wave: np.ndarray, sr: int, profile: FeatureProfile) -> tuple[np.ndarray, np.ndarray]:
    """One recording → (images (n_windows, H, W), waveforms (n_windows, window_samples)), float32."""
    if wave.ndim != 1 or len(wave) == 0:
        raise ValueError(f"wave must be a non-empty 1-D array, got shape {wave.shape}")
    wave = resample(wave, sr, profile.sample_rate)
    if profile.bandpass_hz is not None:
        from scipy.signal import butter, sosfiltfilt

        sos = butter(4, profile.bandpass_hz, btype="bandpass", fs=profile.sample_rate, output="sos")
        wave = sosfiltfilt(sos, wave).astype(np.float32) if len(wave) > 27 else wave  # filtfilt needs > 3 * order
    windows = make_windows(wave, profile)
    images = fbank_images(windows, profile) if profile.spectrogram == "fbank" else log_mel_images(windows, profile)
    return images, normalize_waveforms(windows, profile.waveform_norm)
