"""Synthetic heart- and lung-sound datasets in the exact on-disk layouts of the real ones.

:func:`write_synthetic` writes ``OUT/physionet2016``, ``OUT/pascal`` and
``OUT/icbhi2017`` so that the real loaders (and the tests that exercise them)
read them unchanged: same folder and file names, WAV sample rates and PCM
subtypes, CSV headers, separators and line endings, the same naming quirks.
It is the embedded default that lets the study run on a fresh machine.

Heart-sound model (PhysioNet 2016 and PASCAL)
---------------------------------------------
A recording is a train of beats. The RR interval is drawn per recording from
``heart.heart_rate_bpm`` and varies from beat to beat (random jitter plus
sinus arrhythmia at the breathing rate). Each beat has S1 (mitral M1 then
tricuspid T1) and S2 (aortic A2 then pulmonary P2): short gamma-enveloped
sinusoids of 35-120 Hz. S2 follows S1 by a systole that shortens with the
preceding RR; the A2-P2 split widens on inspiration, as it does in healthy
hearts. Abnormal recordings carry one cue (sometimes two) of these kinds:

* spectral: ``systolic_murmur`` (band-limited noise between S1 and S2,
  crescendo-decrescendo or holosystolic) and ``diastolic_murmur``
  (decrescendo noise after S2). Their band (150-450 Hz) lies above S1/S2,
  so a spectrogram shows them as extra energy; their place in the cycle
  is secondary.
* temporal: ``wide_split_s2`` (a fixed A2-P2 split of 45-100 ms, same
  spectrum as a normal S2), ``extra_sound_s3`` / ``extra_sound_s4`` (a low,
  25-50 Hz gallop sound after S2 or before S1), ``premature_beats`` (early
  beats with a compensatory pause) and ``irregular_rhythm`` (RR intervals
  with a large random spread). These change timing, not the spectrum: they
  are what a waveform branch sees better than a log-Mel spectrogram with a
  coarse hop.

Envelope shapes, the murmur windows within the cycle (systolic from 40 ms
after T1 to 15 ms before A2, diastolic from 30 ms after P2) and the T1/P2
offsets from M1/A2 are fixed shape details, stated where they are built.

Each cue has a strength drawn per recording from ``cues.strength``; every
cue range in :class:`CueParams` is written ``(weakest, strongest)`` and
interpolated linearly by strength, so weak cues are nearly invisible and no
model can reach ROC-AUC 1. Confounders are drawn independently of the label:
innocent (benign, soft, low-band) systolic murmurs, physiological S3s,
breathing noise, motion thumps, ambient noise.

Devices
-------
Every database, PASCAL set and ICBHI stethoscope is a :class:`Device`: a
zero-phase magnitude response (Butterworth-shaped high- and low-pass, a
spectral tilt and one resonance, the last two varying from file to file with
the placement), ambient and sensor noise of a colour (``1/f**exponent``
power) at a signal-to-noise ratio measured in ``noise.snr_band_hz``, a random
gain (peak level), a DC offset and the file's sample rate and bit depth. The
six PhysioNet databases differ a little (training-b is peak-normalised with a
large DC offset, training-e is noisier); the PASCAL sets are shifted: set_a
(phone microphone, 44.1 kHz) loses the low frequencies and gains white hiss
and a resonance, set_b (4 kHz digital stethoscope in bell mode) is low-passed
at 200 Hz, through the murmur band; both vary much more from file to file
and are noisier. A device changes the spectrum and never the timing, as the
AudioFuse paper argues real devices do, so timing cues survive the shift
while spectral ones move.

Respiratory model (ICBHI 2017)
------------------------------
Contiguous breathing cycles (inspiration then a softer expiration) of
band-limited vesicular noise, with soft heart sounds underneath. Crackles are
short damped transient clicks, mostly in inspiration; wheezes are sustained
tonal components of 100-1000 Hz (with a harmonic and a frequency glide),
mostly in expiration. Whether a cycle has crackles, wheezes or both is drawn
from the patient's diagnosis; the annotation file lists every cycle exactly.

What the demo can and cannot show
---------------------------------
It can show the papers' mechanism: fusion helping when some cues are
spectral and others temporal, a spectrogram branch losing more than a
waveform branch under a device shift, the effect of duration, padding,
time-warp (which moves timing cues) and codecs (which remove high bands), and
it lets every loader, split and metric run end to end. It cannot show the
size of any real effect: cue prevalence, strength, noise and device
responses are invented, heart sounds are idealised, PASCAL "artifact" files
are simple noise, and database identity predicts the label (their class
balance differs as in the real release), a shortcut that is real too.
Numbers measured on it are about this generator, not about patients.

``preset="positive_control"`` (:data:`POSITIVE_CONTROL_PARAMS`) changes only the
cues: one per abnormal recording, murmurs that a common innocent murmur of the
same loudness can be told from only by its band, and S3/S4 gallops; on it the
``branches`` study must find AudioFuse ahead of each branch
(``tests/test_positive_control.py``).

Every parameter, with its current value, is listed below (from
:data:`SYNTH_PARAMS`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import scipy.fft
import soundfile as sf

__all__ = [
    "CueParams",
    "DatabaseSpec",
    "Device",
    "HeartParams",
    "IcbhiParams",
    "NoiseParams",
    "PascalParams",
    "PhysioNetParams",
    "POSITIVE_CONTROL_PARAMS",
    "PRESETS",
    "SYNTH_PARAMS",
    "SynthParams",
    "describe_parameters",
    "planted_cues",
    "write_synthetic",
]

DATASETS = ("physionet2016", "pascal", "icbhi2017")
MARKER = "SYNTHETIC.json"
GENERATOR = "study.data.synth"
# Smallest sizes that fill every class and split (see _physionet_plan, _pascal_plan, _icbhi_plan).
MIN_SIZES = {"physionet2016": 30, "pascal": 11, "icbhi2017": 4}


def _p(value, doc: str):
    """A documented parameter field (its doc is shown by :func:`describe_parameters`)."""
    if isinstance(value, (dict, list)) or dataclasses.is_dataclass(value):
        return field(default_factory=lambda: copy.deepcopy(value), metadata={"doc": doc})
    return field(default=value, metadata={"doc": doc})


@dataclass(frozen=True)
class Device:
    """Recording chain of one database, PASCAL set or ICBHI stethoscope."""

    sample_rate_hz: int = _p(2000, "sample rate of the written files, Hz")
    subtypes: tuple = _p(("PCM_16",), "PCM subtypes the files are written with (one drawn per file)")
    highpass_hz: float = _p(25.0, "high-pass corner, Hz (Butterworth magnitude)")
    highpass_order: int = _p(2, "high-pass order (6 dB/octave each)")
    lowpass_hz: float = _p(600.0, "low-pass corner, Hz (Butterworth magnitude)")
    lowpass_order: int = _p(2, "low-pass order (6 dB/octave each)")
    tilt_db_per_octave: float = _p(0.0, "spectral tilt around 100 Hz, dB/octave")
    resonance_hz: float = _p(150.0, "centre of the device resonance, Hz")
    resonance_gain_db: float = _p(0.0, "gain of the resonance at its centre, dB (0: none)")
    resonance_q: float = _p(1.0, "quality factor of the resonance")
    tilt_spread_db_per_octave: float = _p(0.5, "per-file tilt change, uniform in +-this (placement, unit), dB/octave")
    resonance_spread: float = _p(0.1, "per-file resonance frequency factor, exp(uniform in +-this)")
    noise_exponent: float = _p(
        1.0,
        "colour of the ambient and sensor noise in the file (not shaped by the "
        "filter): power ~ 1/f**exponent (0 white, 1 pink, 2 brown)",
    )
    snr_db: tuple = _p((10.0, 25.0), "body sounds to ambient noise power ratio in noise.snr_band_hz, dB")
    peak_level: tuple = _p((0.2, 0.9), "peak |sample| after the random gain, fraction of full scale")
    dc_offset: tuple = _p((-0.002, 0.002), "DC offset added after the gain, fraction of full scale")
    peak_normalized: bool = _p(False, "scale every file so that its peak (DC included) hits full scale")


@dataclass(frozen=True)
class HeartParams:
    """Normal heart sounds and rhythm; ranges are (low, high) of a uniform draw."""

    heart_rate_bpm: tuple = _p((55.0, 110.0), "mean heart rate of a recording, beats/min")
    rr_jitter: float = _p(0.02, "s.d. of random beat-to-beat RR change, fraction of the mean RR")
    sinus_arrhythmia: tuple = _p((0.0, 0.06), "depth of RR modulation at the breathing rate, fraction")
    breathing_rate_hz: tuple = _p((0.2, 0.35), "breathing rate, Hz (modulates RR, loudness, S2 split)")
    systole_intercept_s: float = _p(0.2, "S1-to-S2 interval = intercept + slope * preceding RR, s")
    systole_per_rr: float = _p(0.17, "slope of the S1-to-S2 interval on the preceding RR")
    s1_freq_hz: tuple = _p((35.0, 70.0), "S1 (M1) frequency, Hz; T1 is 10 % higher")
    s2_freq_hz: tuple = _p((55.0, 120.0), "S2 (A2) frequency, Hz; P2 is 10 % lower")
    s1_decay_s: tuple = _p((0.012, 0.02), "S1 envelope time to peak, s (it lasts about 6 times this)")
    s2_decay_s: tuple = _p((0.008, 0.014), "S2 envelope time to peak, s")
    t1_delay_s: tuple = _p((0.01, 0.03), "M1-to-T1 delay, s")
    s2_to_s1: tuple = _p((0.5, 1.0), "S2 amplitude relative to S1 (S1 peak = 1)")
    p2_to_a2: tuple = _p((0.4, 0.8), "P2 amplitude relative to A2")
    physiological_split_s: tuple = _p((0.015, 0.04), "normal A2-P2 split at mid-breath, s")
    split_breathing_depth: float = _p(0.5, "relative widening of the normal split on inspiration")
    loudness_breathing_depth: float = _p(0.1, "relative S1/S2 loudness modulation by breathing")
    beat_amplitude_jitter: float = _p(0.1, "s.d. of per-beat loudness change, fraction")
    beat_frequency_jitter: float = _p(0.05, "s.d. of per-beat S1/S2 frequency change, fraction")


@dataclass(frozen=True)
class CueParams:
    """Abnormal cues and benign confounders; cue ranges are (weakest, strongest)."""

    kind_weights: dict = _p(
        {
            "systolic_murmur": 0.25,
            "diastolic_murmur": 0.15,
            "wide_split_s2": 0.15,
            "extra_sound_s3": 0.08,
            "extra_sound_s4": 0.07,
            "premature_beats": 0.15,
            "irregular_rhythm": 0.15,
        },
        "probability of each cue kind in an abnormal PhysioNet recording",
    )
    second_cue_probability: float = _p(0.3, "probability that an abnormal recording has a second, different cue")
    strength: tuple = _p((0.1, 1.0), "cue strength, uniform; 0 would be invisible, 1 obvious")
    murmur_level: tuple = _p((0.003, 0.2), "murmur RMS inside its window, relative to the S1 peak")
    murmur_center_hz: tuple = _p((150.0, 450.0), "murmur band centre, Hz (uniform, not by strength)")
    murmur_bandwidth_hz: tuple = _p((80.0, 250.0), "murmur band width, Hz (uniform, not by strength)")
    diastolic_fraction: tuple = _p((0.3, 0.7), "share of diastole a diastolic murmur lasts (uniform)")
    wide_split_s: tuple = _p((0.045, 0.1), "fixed A2-P2 split of wide_split_s2, s")
    extra_sound_level: tuple = _p((0.15, 0.7), "S3/S4 amplitude relative to S2")
    extra_sound_freq_hz: tuple = _p((25.0, 50.0), "S3/S4 frequency, Hz (uniform)")
    extra_sound_decay_s: tuple = _p((0.015, 0.03), "S3/S4 envelope time to peak, s (uniform)")
    s3_delay_s: tuple = _p((0.12, 0.18), "S3 delay after A2, s (uniform)")
    s4_lead_s: tuple = _p((0.08, 0.14), "S4 lead before S1, s (uniform)")
    premature_rate: tuple = _p((0.06, 0.3), "share of beats that come early")
    premature_coupling: tuple = _p((0.8, 0.55), "interval before an early beat, fraction of the mean RR")
    premature_s1_gain: float = _p(1.3, "S1 loudness of an early beat relative to a normal one (uniform)")
    premature_s2_gain: float = _p(0.5, "S2 loudness of an early beat (less blood ejected; uniform)")
    irregular_rr_cv: tuple = _p((0.03, 0.25), "coefficient of variation of RR in irregular rhythm")
    innocent_murmur_probability: float = _p(0.15, "probability of a benign systolic murmur (any label)")
    innocent_murmur_level: tuple = _p((0.02, 0.07), "benign murmur RMS relative to the S1 peak (uniform)")
    innocent_murmur_center_hz: tuple = _p((90.0, 180.0), "benign murmur band centre, Hz (uniform)")
    physiological_s3_probability: float = _p(0.1, "probability of a benign soft S3 (any label)")
    physiological_s3_level: tuple = _p((0.05, 0.2), "benign S3 amplitude relative to S2 (uniform)")


@dataclass(frozen=True)
class NoiseParams:
    """Body noise added before the device; the device adds ambient noise."""

    breath_noise_level: tuple = _p((0.01, 0.06), "breathing noise RMS relative to the S1 peak")
    breath_noise_band_hz: tuple = _p((100.0, 600.0), "breathing noise band, Hz")
    motion_rate_per_s: tuple = _p((0.0, 0.15), "rate of motion/friction thumps, per second")
    motion_amplitude: tuple = _p((0.3, 1.5), "thump amplitude relative to the S1 peak")
    motion_freq_hz: tuple = _p((4.0, 15.0), "thump frequency, Hz")
    motion_decay_s: tuple = _p((0.03, 0.08), "thump envelope time to peak, s")
    snr_band_hz: tuple = _p((20.0, 1000.0), "band in which every SNR is measured (common to all devices), Hz")


@dataclass(frozen=True)
class DatabaseSpec:
    """One PhysioNet 2016 training database, sized like the real one."""

    real_records: int = _p(409, "records in the real database (sets its share of `physionet`)")
    real_abnormal: int = _p(292, "abnormal records in the real database (sets its class balance)")
    real_validation: int = _p(80, "records of the real validation/ (test) set drawn from it")
    duration_s: tuple = _p((15.0, 36.0), "recording duration, s")
    device: Device = _p(Device(), "recording chain")


def _physionet_databases() -> dict:
    # Small device differences between databases; real counts from the 2016 release.
    return {
        "training-a": DatabaseSpec(
            409,
            292,
            80,
            (15.0, 36.0),
            Device(
                highpass_hz=25.0,
                lowpass_hz=600.0,
                resonance_hz=150.0,
                resonance_gain_db=2.0,
                noise_exponent=1.0,
                snr_db=(10.0, 25.0),
            ),
        ),
        "training-b": DatabaseSpec(
            490,
            104,
            98,
            (5.0, 8.0),
            Device(
                highpass_hz=30.0,
                lowpass_hz=500.0,
                tilt_db_per_octave=-1.0,
                noise_exponent=1.2,
                snr_db=(6.0, 20.0),
                dc_offset=(-0.25, -0.02),
                peak_normalized=True,
            ),
        ),
        "training-c": DatabaseSpec(
            31,
            24,
            7,
            (10.0, 40.0),
            Device(highpass_hz=20.0, lowpass_hz=700.0, tilt_db_per_octave=1.0, noise_exponent=0.8, snr_db=(8.0, 22.0)),
        ),
        "training-d": DatabaseSpec(
            55,
            28,
            10,
            (6.0, 30.0),
            Device(
                highpass_hz=25.0,
                lowpass_hz=550.0,
                tilt_db_per_octave=0.5,
                noise_exponent=1.0,
                snr_db=(8.0, 22.0),
                dc_offset=(-0.003, 0.0),
            ),
        ),
        "training-e": DatabaseSpec(
            2141,
            183,
            102,
            (8.0, 40.0),
            Device(
                highpass_hz=35.0,
                lowpass_hz=650.0,
                tilt_db_per_octave=-0.5,
                noise_exponent=1.5,
                snr_db=(4.0, 20.0),
                dc_offset=(-0.025, 0.005),
            ),
        ),
        "training-f": DatabaseSpec(
            114,
            34,
            0,
            (25.0, 40.0),
            Device(highpass_hz=20.0, lowpass_hz=600.0, noise_exponent=1.0, snr_db=(10.0, 24.0), peak_level=(0.7, 0.95)),
        ),
    }


@dataclass(frozen=True)
class PhysioNetParams:
    """PhysioNet 2016 layout: six databases and the validation/ (test) copies."""

    databases: dict = _p(_physionet_databases(), "the six training databases")
    validation_abnormal_fraction: float = _p(0.5, "share of abnormal records in each database's validation copies")


@dataclass(frozen=True)
class PascalParams:
    """PASCAL heart sounds: shifted devices, the same heart model."""

    set_a: Device = _p(
        Device(
            sample_rate_hz=44100,
            highpass_hz=90.0,
            highpass_order=1,
            lowpass_hz=5000.0,
            tilt_db_per_octave=3.0,
            resonance_hz=700.0,
            resonance_gain_db=8.0,
            resonance_q=1.2,
            tilt_spread_db_per_octave=6.0,
            resonance_spread=0.7,
            noise_exponent=0.0,
            snr_db=(2.0, 14.0),
            peak_level=(0.05, 0.9),
            dc_offset=(-0.0003, 0.0003),
        ),
        "set_a: iStethoscope phone app",
    )
    set_b: Device = _p(
        Device(
            sample_rate_hz=4000,
            highpass_hz=15.0,
            lowpass_hz=200.0,
            lowpass_order=4,
            tilt_db_per_octave=-2.0,
            resonance_hz=80.0,
            resonance_gain_db=6.0,
            tilt_spread_db_per_octave=6.0,
            resonance_spread=0.7,
            noise_exponent=1.0,
            snr_db=(2.0, 14.0),
            peak_level=(0.25, 1.0),
            dc_offset=(-0.001, 0.001),
        ),
        "set_b: digital stethoscope",
    )
    set_a_duration_s: tuple = _p((1.0, 9.0), "set_a recording duration, s")
    set_b_duration_s: tuple = _p((1.0, 15.0), "set_b recording duration, s")
    category_weights: dict = _p(
        {
            "set_a": {"artifact": 40, "extrahls": 19, "murmur": 34, "normal": 31, "unlabelled": 52},
            "set_b": {
                "extrastole": 46,
                "murmur": 66,
                "noisymurmur": 29,
                "normal": 200,
                "noisynormal": 120,
                "unlabelled": 195,
            },
        },
        "files per category in the full real release (sets each category's share of `pascal`)",
    )
    noisy_snr_offset_db: float = _p(-8.0, "SNR change of the noisynormal / noisymurmur files, dB")
    artifact_heart_level: tuple = _p((0.0, 0.3), "heart-sound level left in artifact files")
    artifact_motion_rate_per_s: tuple = _p((1.0, 3.0), "thump rate in artifact files, per second")
    artifact_rub_fraction: tuple = _p((0.3, 0.7), "share of an artifact file covered by rubbing noise")
    artifact_rub_band_hz: tuple = _p((200.0, 1500.0), "rubbing noise band, Hz")
    artifact_rub_level: tuple = _p((0.2, 1.0), "rubbing noise RMS at its loudest, relative to the S1 peak")
    session_files: tuple = _p((1, 3), "set_b labelled files per session (patient and timestamp)")


def _icbhi_devices() -> dict:
    return {
        "AKGC417L": Device(
            sample_rate_hz=44100,
            subtypes=("PCM_16", "PCM_24", "PCM_32"),
            highpass_hz=50.0,
            lowpass_hz=8000.0,
            tilt_db_per_octave=1.0,
            noise_exponent=0.5,
            snr_db=(10.0, 25.0),
            peak_level=(0.1, 0.9),
            dc_offset=(-0.0005, 0.0005),
        ),
        "Meditron": Device(
            sample_rate_hz=44100,
            subtypes=("PCM_16", "PCM_24", "PCM_32"),
            highpass_hz=20.0,
            lowpass_hz=2000.0,
            noise_exponent=1.0,
            snr_db=(10.0, 25.0),
            peak_level=(0.1, 0.6),
            dc_offset=(-0.0005, 0.0005),
        ),
        "LittC2SE": Device(
            sample_rate_hz=44100,
            subtypes=("PCM_16", "PCM_24", "PCM_32"),
            highpass_hz=20.0,
            lowpass_hz=1000.0,
            tilt_db_per_octave=-2.0,
            noise_exponent=1.0,
            snr_db=(8.0, 22.0),
            peak_level=(0.3, 1.0),
            dc_offset=(-0.001, 0.001),
        ),
        "Litt3200": Device(
            sample_rate_hz=4000,
            subtypes=("PCM_16",),
            highpass_hz=20.0,
            lowpass_hz=1500.0,
            noise_exponent=1.0,
            snr_db=(8.0, 22.0),
            peak_level=(0.5, 1.0),
            dc_offset=(-0.01, 0.01),
        ),
    }


@dataclass(frozen=True)
class IcbhiParams:
    """ICBHI 2017 respiratory recordings; ranges are (low, high), adventitious ones (weakest, strongest)."""

    devices: dict = _p(_icbhi_devices(), "stethoscopes and microphone; Litt3200 is the 4 kHz one")
    diagnosis_weights: dict = _p(
        {
            "COPD": 64,
            "Healthy": 26,
            "URTI": 14,
            "Bronchiectasis": 7,
            "Bronchiolitis": 6,
            "Pneumonia": 6,
            "LRTI": 2,
            "Asthma": 1,
        },
        "patients per diagnosis in the real database (drawn with these weights)",
    )
    cycle_probabilities: dict = _p(
        {
            "COPD": (0.45, 0.35),
            "Healthy": (0.05, 0.03),
            "URTI": (0.15, 0.1),
            "Bronchiectasis": (0.6, 0.15),
            "Bronchiolitis": (0.35, 0.45),
            "Pneumonia": (0.6, 0.1),
            "LRTI": (0.35, 0.15),
            "Asthma": (0.1, 0.6),
        },
        "per diagnosis, (P(crackles), P(wheezes)) of a cycle, drawn independently",
    )
    recordings_per_patient: tuple = _p((1, 3), "recordings per patient (at distinct chest locations)")
    train_fraction: float = _p(0.6, "share of recordings in the official train split (split by patient)")
    cycles_per_recording: tuple = _p((4, 8), "breathing cycles per recording")
    cycle_s: tuple = _p((1.5, 3.5), "breathing cycle duration, s")
    first_cycle_s: tuple = _p((0.0, 0.6), "start of the first annotated cycle, s")
    tail_s: tuple = _p((0.0, 1.0), "audio after the last annotated cycle, s")
    inspiration_fraction: tuple = _p((0.35, 0.45), "share of a cycle that is inspiration")
    expiration_level: tuple = _p((0.4, 0.7), "expiration loudness relative to inspiration")
    breath_band_hz: tuple = _p((100.0, 1000.0), "vesicular breath noise band, Hz")
    heart_level: tuple = _p((0.1, 0.4), "heart-sound S1 peak relative to the inspiration RMS")
    severity: tuple = _p((0.2, 1.0), "per-recording strength of its crackles and wheezes, uniform")
    crackles_per_cycle: tuple = _p((2, 10), "crackles in a crackling cycle")
    crackle_level: tuple = _p((3.0, 12.0), "crackle peak relative to the inspiration RMS")
    crackle_freq_hz: tuple = _p((200.0, 800.0), "crackle frequency, Hz (uniform)")
    crackle_decay_s: tuple = _p((0.001, 0.004), "crackle envelope time to peak, s (uniform)")
    crackle_in_inspiration: float = _p(0.8, "share of crackles placed in inspiration")
    wheeze_level: tuple = _p((0.3, 1.5), "wheeze amplitude relative to the inspiration RMS")
    wheeze_freq_hz: tuple = _p((100.0, 1000.0), "wheeze fundamental, Hz (uniform)")
    wheeze_duration_s: tuple = _p((0.25, 0.9), "wheeze duration, s (uniform, cut to its breathing phase)")
    wheeze_glide: tuple = _p((-0.2, 0.2), "relative fundamental change over a wheeze (uniform)")
    wheeze_harmonic: float = _p(0.3, "second-harmonic amplitude relative to the fundamental")
    wheeze_in_expiration: float = _p(0.7, "share of wheezes placed in expiration")


@dataclass(frozen=True)
class SynthParams:
    """Every parameter of the generator."""

    heart: HeartParams = _p(HeartParams(), "normal heart sounds")
    cues: CueParams = _p(CueParams(), "abnormal cues and benign confounders")
    noise: NoiseParams = _p(NoiseParams(), "body noise")
    physionet: PhysioNetParams = _p(PhysioNetParams(), "PhysioNet 2016 layout and devices")
    pascal: PascalParams = _p(PascalParams(), "PASCAL layout and devices")
    icbhi: IcbhiParams = _p(IcbhiParams(), "ICBHI 2017 layout, devices and respiratory model")


SYNTH_PARAMS = SynthParams()

# The positive control (``preset="positive_control"``): every abnormal recording carries exactly one
# cue at a strength well above the weakest: a systolic or diastolic murmur (spectral: a 250-450 Hz
# band that must be told from innocent murmurs of the same loudness at 90-180 Hz, now in half of all
# recordings, whatever their label) or an S3/S4 gallop (temporal: a low, short sound 80-180 ms from
# S1/S2, in their own band and finer than the 78 ms pixels of a 64-frame image of 5 s). Cues that
# neither branch sees at CPU scale (split S2, rhythm) are left out, so the planted effect is one a
# 300-recording test set resolves. What each branch and AudioFuse then see, cue by cue, is measured
# in docs/results.md ("The positive control").
POSITIVE_CONTROL_PARAMS = dataclasses.replace(
    SYNTH_PARAMS,
    cues=dataclasses.replace(
        SYNTH_PARAMS.cues,
        kind_weights={
            "systolic_murmur": 0.25,
            "diastolic_murmur": 0.25,
            "extra_sound_s3": 0.25,
            "extra_sound_s4": 0.25,
        },
        second_cue_probability=0.0,
        strength=(0.4, 1.0),
        murmur_center_hz=(250.0, 450.0),
        innocent_murmur_probability=0.5,
        innocent_murmur_level=(0.05, 0.15),
    ),
)

#: Named parameter sets of :func:`write_synthetic` (``python -m study.data synth --preset NAME``).
PRESETS = MappingProxyType({"default": SYNTH_PARAMS, "positive_control": POSITIVE_CONTROL_PARAMS})


def describe_parameters(params: SynthParams = SYNTH_PARAMS) -> str:
    """One line per parameter: dotted name, value and documentation."""
    lines = []

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value, name = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, name + ".")
            elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
                for key, item in value.items():
                    walk(item, f"{name}[{key}].")
            else:
                lines.append(f"{name} = {value!r}\n    {f.metadata['doc']}")

    walk(params, "")
    return "\n".join(lines)


__doc__ += "\nParameters\n----------\n" + describe_parameters() + "\n"


# ----------------------------------------------------------------------------- signal building blocks


def _lerp(bounds: tuple, strength) -> np.ndarray | float:
    """Value of a (weakest, strongest) range at a strength in [0, 1]."""
    return bounds[0] + (bounds[1] - bounds[0]) * np.asarray(strength, dtype=float)


def _bursts(n: int, sr: int, onset_s, freq_hz, decay_s, amplitude) -> np.ndarray:
    """Sum of gamma-enveloped sinusoids (heart sounds, clicks, thumps) of shape (n,).

    Burst k is ``a_k x**2 exp(2 - 2x) sin(2 pi f_k t)`` with t the time since
    its onset in s and x = t / decay_k, so it peaks at amplitude a_k at
    t = decay_k and has died out by 8 decays.
    """
    onset_s, freq_hz, decay_s, amplitude = np.broadcast_arrays(
        *(np.asarray(a, dtype=float).ravel() for a in (onset_s, freq_hz, decay_s, amplitude))
    )
    if onset_s.size == 0:
        return np.zeros(n)
    length = int(np.ceil(8 * decay_s.max() * sr)) + 1
    index = np.ceil(onset_s * sr).astype(np.int64)[:, None] + np.arange(length)
    t = index / sr - onset_s[:, None]
    x = t / decay_s[:, None]
    wave = amplitude[:, None] * x**2 * np.exp(2.0 - 2.0 * x) * np.sin(2 * np.pi * freq_hz[:, None] * t)
    inside = (index >= 0) & (index < n)
    return np.bincount(index[inside], weights=wave[inside], minlength=n)


def _segments(n: int, sr: int, start_s, end_s) -> tuple[np.ndarray, np.ndarray]:
    """For every sample: the index of the segment holding it (-1 if none) and its position u in [0, 1).

    Segments must be sorted and non-overlapping.
    """
    start_s, end_s = np.asarray(start_s, dtype=float), np.asarray(end_s, dtype=float)
    t = np.arange(n) / sr
    k = np.searchsorted(start_s, t, side="right") - 1
    safe = np.clip(k, 0, None)
    u = (t - start_s[safe]) / np.maximum(end_s[safe] - start_s[safe], 1e-9) if start_s.size else np.ones(n)
    inside = (k >= 0) & (u < 1.0)
    return np.where(inside, k, -1), np.where(inside, u, 0.0)


def _fast_length(n: int) -> int:
    """FFT length >= n with small prime factors (a recording of prime length would be ~100x slower)."""
    return scipy.fft.next_fast_len(n, real=True)


def _white_spectrum(rng: np.random.Generator, m: int) -> np.ndarray:
    """rfft of m samples of white Gaussian noise, drawn directly in the frequency domain."""
    return rng.standard_normal(m // 2 + 1) + 1j * rng.standard_normal(m // 2 + 1)


def _band_noise(rng: np.random.Generator, n: int, sr: int, center_hz: float, width_hz: float) -> np.ndarray:
    """Unit-RMS noise with a Gaussian-shaped band (centre, -10 dB at +-width/2), shape (n,)."""
    m = _fast_length(n)
    freqs = np.fft.rfftfreq(m, 1.0 / sr)
    band = np.exp(-0.5 * ((freqs - center_hz) / (width_hz / 3.0)) ** 2)
    noise = scipy.fft.irfft(_white_spectrum(rng, m) * band, m)[:n]
    return noise / max(np.sqrt(np.mean(noise**2)), 1e-12)


def _device_gain(freqs: np.ndarray, device: Device) -> np.ndarray:
    """Magnitude response of a device at ``freqs`` (Hz); applied with zero phase."""
    f = np.maximum(freqs, 1e-3)
    highpass = 1.0 / np.sqrt(1.0 + (device.highpass_hz / f) ** (2 * device.highpass_order))
    lowpass = 1.0 / np.sqrt(1.0 + (f / device.lowpass_hz) ** (2 * device.lowpass_order))
    tilt = 10.0 ** (device.tilt_db_per_octave * np.log2(f / 100.0) / 20.0)
    detune = device.resonance_q * (f / device.resonance_hz - device.resonance_hz / f)
    resonance = 1.0 + (10.0 ** (device.resonance_gain_db / 20.0) - 1.0) / (1.0 + detune**2)
    gain = highpass * lowpass * tilt * resonance
    gain[freqs == 0] = 0.0
    return gain


def _record(
    rng: np.random.Generator, body: np.ndarray, sr: int, device: Device, snr_db: float, snr_band_hz: tuple
) -> np.ndarray:
    """Body sounds (n,) as a device records them: filtered, with ambient noise, gain and DC, in [-1, 1].

    The filter is applied in the frequency domain with zero phase: one FFT
    applies the whole magnitude response, and a device then changes the
    spectrum but never the timing.
    """
    n = body.size
    m = _fast_length(n)
    freqs = np.fft.rfftfreq(m, 1.0 / sr)
    spread = rng.uniform(-1.0, 1.0, 2)
    device = dataclasses.replace(  # this file's placement of the device
        device,
        tilt_db_per_octave=device.tilt_db_per_octave + spread[0] * device.tilt_spread_db_per_octave,
        resonance_hz=device.resonance_hz * np.exp(spread[1] * device.resonance_spread),
    )
    gain = _device_gain(freqs, device)
    signal = scipy.fft.rfft(body, m) * gain
    # Ambient and sensor noise as the file shows it: a 1/f**exponent power spectrum, not shaped by the filter.
    noise = _white_spectrum(rng, m) * np.maximum(freqs, 1.0) ** (-device.noise_exponent / 2)
    noise[0] = 0.0
    band = (freqs >= snr_band_hz[0]) & (freqs <= snr_band_hz[1])
    noise *= np.sqrt(
        np.sum(np.abs(signal[band]) ** 2) / max(np.sum(np.abs(noise[band]) ** 2), 1e-30) / 10.0 ** (snr_db / 10.0)
    )
    wave = scipy.fft.irfft(signal + noise, m)[:n]
    dc = rng.uniform(*device.dc_offset)
    if device.peak_normalized:
        wave = wave + dc * np.max(np.abs(wave)) / (1.0 - abs(dc))
        return wave / np.max(np.abs(wave))
    wave = wave * (rng.uniform(*device.peak_level) / max(np.max(np.abs(wave)), 1e-12)) + dc
    return np.clip(wave, -1.0, 1.0)


def _write_wav(path: Path, wave: np.ndarray, sr: int, subtype: str) -> None:
    """Write a [-1, 1] float waveform as mono PCM WAV, quantised here so the bytes are reproducible."""
    if subtype == "PCM_16":
        data = np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)
    else:  # libsndfile keeps the top 24 bits of int32 samples for PCM_24
        data = np.clip(np.round(wave * 2147483647.0), -2147483648, 2147483647).astype(np.int32)
    buffer = io.BytesIO()  # soundfile syncs files to disk on close, which costs more than the synthesis
    sf.write(buffer, data, sr, subtype=subtype, format="WAV")
    path.write_bytes(buffer.getvalue())


# ----------------------------------------------------------------------------- heart sounds


def _draw_cues(rng: np.random.Generator, cp: CueParams) -> dict[str, float]:
    """Abnormal cue kinds with their strengths (one, or two with second_cue_probability)."""
    kinds = list(cp.kind_weights)
    weights = np.array([cp.kind_weights[k] for k in kinds], dtype=float)
    count = 2 if rng.random() < cp.second_cue_probability else 1
    chosen = rng.choice(len(kinds), size=count, replace=False, p=weights / weights.sum())
    return {kinds[i]: round(float(rng.uniform(*cp.strength)), 3) for i in sorted(chosen)}


def _draw_benign(rng: np.random.Generator, cp: CueParams) -> dict[str, float]:
    """Benign confounders (drawn for any label) with their levels."""
    benign = {}
    if rng.random() < cp.innocent_murmur_probability:
        benign["innocent_murmur"] = round(float(rng.uniform(*cp.innocent_murmur_level)), 3)
    if rng.random() < cp.physiological_s3_probability:
        benign["physiological_s3"] = round(float(rng.uniform(*cp.physiological_s3_level)), 3)
    return benign


def _murmur_shape(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """Envelope of a murmur over its window, u in [0, 1)."""
    if kind == "diamond":  # crescendo-decrescendo, peak at 40 % of the window
        return lambda u: np.where(u < 0.4, u / 0.4, (1.0 - u) / 0.6)
    if kind == "plateau":  # holosystolic
        return lambda u: np.minimum(1.0, np.minimum(u, 1.0 - u) / 0.1)
    return lambda u: np.exp(-3.0 * u) * np.minimum(1.0, u / 0.05)  # decrescendo


def _murmur(rng, n, sr, start_s, end_s, shape, level, center_hz, width_hz) -> np.ndarray:
    """Band-limited noise inside the windows [start, end), scaled to RMS ``level`` inside them."""
    keep = end_s - start_s > 0.02
    k, u = _segments(n, sr, start_s[keep], end_s[keep])
    envelope = np.where(k >= 0, _murmur_shape(shape)(u), 0.0)
    murmur = _band_noise(rng, n, sr, center_hz, width_hz) * envelope
    inside = k >= 0
    rms = np.sqrt(np.mean(murmur[inside] ** 2)) if inside.any() else 1.0
    return murmur * (level / max(rms, 1e-12))


def _heart_sounds(
    rng: np.random.Generator,
    n: int,
    sr: int,
    params: SynthParams,
    cues: dict[str, float],
    benign: dict[str, float],
    breathing: tuple[float, float],
) -> tuple[np.ndarray, dict]:
    """Heart sounds of a recording of n samples at sr Hz (S1 peak about 1).

    ``cues`` maps abnormal cue kinds to strengths, ``benign`` confounders to
    levels, ``breathing`` is (rate Hz, phase rad). Returns the waveform and
    the timing truth: S1 and S2 peak times (s) and the mean heart rate.
    """
    hp, cp = params.heart, params.cues
    duration = n / sr
    rr0 = 60.0 / rng.uniform(*hp.heart_rate_bpm)
    breath_hz, breath_phase = breathing
    beats = int(duration / (0.45 * rr0)) + 3
    i = np.arange(beats)
    rr = rr0 * (
        1.0
        + rng.uniform(*hp.sinus_arrhythmia) * np.sin(2 * np.pi * breath_hz * rr0 * i + breath_phase)
        + hp.rr_jitter * rng.standard_normal(beats)
    )
    if "irregular_rhythm" in cues:
        shape = 1.0 / _lerp(cp.irregular_rr_cv, cues["irregular_rhythm"]) ** 2
        rr *= rng.gamma(shape, 1.0 / shape, beats)
    premature = np.zeros(beats, dtype=bool)
    if "premature_beats" in cues:
        strength = cues["premature_beats"]
        premature[1:] = rng.random(beats - 1) < _lerp(cp.premature_rate, strength)
        premature[1:] &= ~premature[:-1]  # no two early beats in a row
        coupling = _lerp(cp.premature_coupling, strength)
        rr[:-1][premature[1:]] = coupling * rr0
        rr[premature] = (2.0 - coupling) * rr0  # compensatory pause
    rr = np.maximum(rr, 0.3)  # 200 beats/min at most, even for an early beat in fast irregular rhythm
    onsets = -rng.uniform(0.0, rr0) + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    keep = onsets < duration
    onsets, rr, premature = onsets[keep], rr[keep], premature[keep]
    rr_before = np.concatenate([[rr0], rr[:-1]])
    count = onsets.size

    breath = np.sin(2 * np.pi * breath_hz * onsets + breath_phase)
    loudness = 1.0 + hp.loudness_breathing_depth * breath + hp.beat_amplitude_jitter * rng.standard_normal(count)
    s1_amp = loudness * np.where(premature, cp.premature_s1_gain, 1.0)
    s2_amp = loudness * rng.uniform(*hp.s2_to_s1) * np.where(premature, cp.premature_s2_gain, 1.0)
    s1_freq = rng.uniform(*hp.s1_freq_hz) * (1.0 + hp.beat_frequency_jitter * rng.standard_normal(count))
    s2_freq = rng.uniform(*hp.s2_freq_hz) * (1.0 + hp.beat_frequency_jitter * rng.standard_normal(count))
    s1_decay, s2_decay = rng.uniform(*hp.s1_decay_s), rng.uniform(*hp.s2_decay_s)
    t1 = onsets + rng.uniform(*hp.t1_delay_s)
    # S2 before the next S1 even after a very short cycle keeps murmur windows ordered.
    systole = hp.systole_intercept_s + hp.systole_per_rr * np.minimum(rr_before, 1.5 * rr0)
    a2 = onsets + np.minimum(systole, 0.5 * rr)
    if "wide_split_s2" in cues:
        split = np.full(count, _lerp(cp.wide_split_s, cues["wide_split_s2"]))
    else:
        split = rng.uniform(*hp.physiological_split_s) * (1.0 + hp.split_breathing_depth * breath)
    p2 = a2 + split

    # T1 10 % higher and 0.6 times as loud as M1, P2 10 % lower than A2 (fixed shape details).
    onset = [onsets, t1, a2, p2]
    freq = [s1_freq, 1.1 * s1_freq, s2_freq, 0.9 * s2_freq]
    decay = [np.full(count, s1_decay)] * 2 + [np.full(count, s2_decay)] * 2
    amp = [s1_amp, 0.6 * s1_amp, s2_amp, rng.uniform(*hp.p2_to_a2) * s2_amp]
    extra_level = {"extra_sound_s3": 0.0, "extra_sound_s4": 0.0}
    for kind in extra_level:
        if kind in cues:
            extra_level[kind] = _lerp(cp.extra_sound_level, cues[kind])
    if "physiological_s3" in benign:
        extra_level["extra_sound_s3"] = max(extra_level["extra_sound_s3"], benign["physiological_s3"])
    for kind, level in extra_level.items():
        if level > 0:
            at = a2 + rng.uniform(*cp.s3_delay_s) if kind == "extra_sound_s3" else onsets - rng.uniform(*cp.s4_lead_s)
            onset.append(at)
            freq.append(np.full(count, rng.uniform(*cp.extra_sound_freq_hz)))
            decay.append(np.full(count, rng.uniform(*cp.extra_sound_decay_s)))
            amp.append(level * s2_amp)
    heart = _bursts(n, sr, np.concatenate(onset), np.concatenate(freq), np.concatenate(decay), np.concatenate(amp))

    # Murmur windows: systolic from 40 ms after T1 to 15 ms before A2, diastolic from 30 ms after P2.
    systole_start, systole_end = t1 + 0.04, a2 - 0.015
    if "systolic_murmur" in cues:
        heart += _murmur(
            rng,
            n,
            sr,
            systole_start,
            systole_end,
            str(rng.choice(["diamond", "plateau"])),
            _lerp(cp.murmur_level, cues["systolic_murmur"]),
            rng.uniform(*cp.murmur_center_hz),
            rng.uniform(*cp.murmur_bandwidth_hz),
        )
    if "diastolic_murmur" in cues:
        start = p2 + 0.03
        end = start + rng.uniform(*cp.diastolic_fraction) * (onsets + rr - start)
        heart += _murmur(
            rng,
            n,
            sr,
            start,
            end,
            "decrescendo",
            _lerp(cp.murmur_level, cues["diastolic_murmur"]),
            rng.uniform(*cp.murmur_center_hz),
            rng.uniform(*cp.murmur_bandwidth_hz),
        )
    if "innocent_murmur" in benign:  # early-to-mid systolic, narrow band
        end = systole_start + 0.6 * (systole_end - systole_start)
        heart += _murmur(
            rng,
            n,
            sr,
            systole_start,
            end,
            "diamond",
            benign["innocent_murmur"],
            rng.uniform(*cp.innocent_murmur_center_hz),
            80.0,
        )
    timing = {
        "s1_peaks_s": onsets + s1_decay,
        "s2_peaks_s": a2 + s2_decay,
        "heart_rate_bpm": round(float(60.0 / np.mean(rr)), 2),
    }
    return heart, timing


def _body_noise(
    rng: np.random.Generator,
    n: int,
    sr: int,
    noise: NoiseParams,
    breathing: tuple[float, float],
    motion_rate: float,
    motion_scale: float = 1.0,
) -> np.ndarray:
    """Breathing noise (louder on inspiration) and motion thumps, shape (n,)."""
    t = np.arange(n) / sr
    low, high = noise.breath_noise_band_hz
    envelope = (0.55 + 0.45 * np.sin(2 * np.pi * breathing[0] * t + breathing[1])) ** 2
    breath = (
        _band_noise(rng, n, sr, (low + high) / 2, high - low)
        * envelope
        * rng.uniform(*noise.breath_noise_level)
        / np.sqrt(np.mean(envelope**2))
    )
    thumps = rng.poisson(motion_rate * n / sr)
    return breath + _bursts(
        n,
        sr,
        rng.uniform(0.0, n / sr, thumps),
        rng.uniform(*noise.motion_freq_hz, thumps),
        rng.uniform(*noise.motion_decay_s, thumps),
        motion_scale * rng.uniform(*noise.motion_amplitude, thumps),
    )


def _pcg(
    rng: np.random.Generator,
    params: SynthParams,
    device: Device,
    duration_s: float,
    cues: dict[str, float],
    snr_offset_db: float = 0.0,
    artifact: bool = False,
) -> tuple[np.ndarray, dict]:
    """One heart-sound recording as ``device`` writes it, in [-1, 1], and its truth."""
    sr = device.sample_rate_hz
    n = int(round(duration_s * sr))
    breathing = (rng.uniform(*params.heart.breathing_rate_hz), rng.uniform(0.0, 2 * np.pi))
    benign = _draw_benign(rng, params.cues)
    heart, timing = _heart_sounds(rng, n, sr, params, cues, benign, breathing)
    truth = {"cues": cues, "benign": benign, "heart_rate_bpm": timing["heart_rate_bpm"]}
    if artifact:
        pp = params.pascal
        heart *= rng.uniform(*pp.artifact_heart_level)
        rub_start = np.sort(rng.uniform(0.0, duration_s, 4))
        rub_end = rub_start + np.diff(np.append(rub_start, duration_s)) * rng.uniform(*pp.artifact_rub_fraction)
        k, u = _segments(n, sr, rub_start, rub_end)
        low, high = pp.artifact_rub_band_hz
        high = min(high, 0.45 * sr)
        heart += (
            _band_noise(rng, n, sr, (low + high) / 2, high - low)
            * np.where(k >= 0, np.sin(np.pi * u), 0.0)
            * rng.uniform(*pp.artifact_rub_level)
        )
        body = _body_noise(rng, n, sr, params.noise, breathing, rng.uniform(*pp.artifact_motion_rate_per_s), 2.0)
    else:
        body = _body_noise(rng, n, sr, params.noise, breathing, rng.uniform(*params.noise.motion_rate_per_s))
    snr = rng.uniform(*device.snr_db) + snr_offset_db
    wave = _record(rng, heart + body, sr, device, snr, params.noise.snr_band_hz)
    truth["snr_db"] = round(float(snr), 2)
    return wave, {**truth, "s1_peaks_s": timing["s1_peaks_s"], "s2_peaks_s": timing["s2_peaks_s"]}


# ----------------------------------------------------------------------------- dataset writers


def _rng(seed: int, *path: int) -> np.random.Generator:
    """Independent, reproducible stream for one dataset / recording."""
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def _allocate(total: int, weights: Sequence[float], minimum: Sequence[int]) -> np.ndarray:
    """Split ``total`` into ``minimum`` plus shares of the rest proportional to ``weights`` (largest remainder)."""
    minimum = np.asarray(minimum, dtype=np.int64)
    weights = np.asarray(weights, dtype=float)
    raw = (total - minimum.sum()) * weights / weights.sum()
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - minimum.sum() - counts.sum()]] += 1
    return minimum + counts


def _lines(rows: Sequence[str], newline: str, final: bool = True) -> bytes:
    return (newline.join(rows) + (newline if final and rows else "")).encode("ascii")


def _physionet_plan(n: int, params: PhysioNetParams, rng: np.random.Generator, n_test: int | None = None) -> dict:
    """Records per database: names, labels (1 / -1), validation copies and the duplicate pair.

    By default each database has its real share of the ``n`` records and copies its real share of
    them (about 10 %) to validation/ (the test set). With ``n_test``, validation/ holds ``n_test``
    of the ``n`` records, shared over the databases in proportion to their real test counts, and
    the rest are training records shared and labelled like the real training part.
    """
    specs = params.databases
    has_val = np.array([s.real_validation > 0 for s in specs.values()])
    if n_test is None:
        # Two records per class where the class must appear in training and validation, one otherwise.
        counts = _allocate(n, [s.real_records for s in specs.values()], np.where(has_val, 4, 2))
        tests = [round(c * s.real_validation / s.real_records) for c, s in zip(counts, specs.values())]
        abnormals = [round(c * s.real_abnormal / s.real_records) for c, s in zip(counts, specs.values())]
    else:
        tests = _allocate(n_test, [s.real_validation for s in specs.values()], np.where(has_val, 2, 0))
        real_train = [s.real_records - s.real_validation for s in specs.values()]
        trains = _allocate(n - n_test, real_train, np.full(len(specs), 2))
        counts = tests + trains
        # the real test set is balanced per database, so the real training part holds the rest of each class
        real_train_abnormal = [s.real_abnormal - s.real_validation / 2 for s in specs.values()]
        abnormals = [
            round(test * params.validation_abnormal_fraction) + round(train * a / r)
            for test, train, a, r in zip(tests, trains, real_train_abnormal, real_train)
        ]
    plan = {}
    for name, count, val, test, abnormal in zip(specs, counts, has_val, tests, abnormals):
        per_class_min = 2 if val else 1
        abnormal = int(np.clip(abnormal, per_class_min, count - per_class_min))
        n_val = int(np.clip(test, 2, count - 2)) if val else 0
        val_abnormal = min(int(np.ceil(n_val * params.validation_abnormal_fraction)), abnormal - 1)
        val_normal = min(n_val - val_abnormal, count - abnormal - 1)
        labels = rng.permutation(np.r_[np.ones(abnormal, int), -np.ones(count - abnormal, int)])
        validation = np.zeros(count, dtype=bool)
        validation[rng.choice(np.flatnonzero(labels == 1), val_abnormal, replace=False)] = True
        validation[rng.choice(np.flatnonzero(labels == -1), val_normal, replace=False)] = True
        width = 5 if name == "training-e" else 4  # as in the real release: e00001, a0001
        names = [f"{name[-1]}{j + 1:0{width}d}" for j in range(count)]
        plan[name] = {"names": names, "labels": labels, "validation": validation}
    # The duplicate: a training record whose audio is copied over another of the same label and database.
    candidates = [
        (db, label)
        for db, p in plan.items()
        for label in (1, -1)
        if np.sum((p["labels"] == label) & ~p["validation"]) >= 2
    ]
    db, label = candidates[rng.integers(len(candidates))]
    pool = np.flatnonzero((plan[db]["labels"] == label) & ~plan[db]["validation"])
    source, duplicate = np.sort(rng.choice(pool, 2, replace=False))
    plan["duplicate"] = (db, plan[db]["names"][source], plan[db]["names"][duplicate])
    return plan


def _write_physionet(
    folder: Path, seed: int, size: int, params: SynthParams, n_test: int | None = None
) -> tuple[dict, list]:
    plan = _physionet_plan(size, params.physionet, _rng(seed, 1, 0), n_test)
    dup_db, dup_source, dup_copy = plan.pop("duplicate")
    truth, validation_rows = [], []
    summary = {"databases": {}, "train": {"abnormal": 0, "normal": 0}, "validation": {"abnormal": 0, "normal": 0}}
    (folder / "validation").mkdir(parents=True)
    for db_index, (db, p) in enumerate(plan.items()):
        spec = params.physionet.databases[db]
        out = folder / db
        out.mkdir()
        for j, (name, label, in_val) in enumerate(zip(p["names"], p["labels"], p["validation"])):
            if db == dup_db and name == dup_copy:
                continue
            rng = _rng(seed, 1, 1, db_index, j)
            duration = round(float(rng.uniform(*spec.duration_s)), 3)
            cues = _draw_cues(rng, params.cues) if label == 1 else {}
            wave, info = _pcg(rng, params, spec.device, duration, cues)
            _write_wav(out / f"{name}.wav", wave, spec.device.sample_rate_hz, spec.device.subtypes[0])
            truth.append(
                {
                    "record": name,
                    "database": db,
                    "label": int(label),
                    "validation": bool(in_val),
                    "duration_s": duration,
                    **{k: v for k, v in info.items() if not k.endswith("peaks_s")},
                }
            )
        (out / "REFERENCE.csv").write_bytes(_lines([f"{a},{b}" for a, b in zip(p["names"], p["labels"])], "\n"))
        (out / "RECORDS").write_bytes(_lines(p["names"], "\n"))
        counts = {
            "records": len(p["names"]),
            "abnormal": int(np.sum(p["labels"] == 1)),
            "normal": int(np.sum(p["labels"] == -1)),
            "validation_abnormal": int(np.sum(p["validation"] & (p["labels"] == 1))),
            "validation_normal": int(np.sum(p["validation"] & (p["labels"] == -1))),
        }
        summary["databases"][db] = counts
        for key in ("abnormal", "normal"):
            summary["validation"][key] += counts[f"validation_{key}"]
            summary["train"][key] += counts[key] - counts[f"validation_{key}"]
        validation_rows += [f"{a},{b}" for a, b, v in zip(p["names"], p["labels"], p["validation"]) if v]
    shutil.copyfile(folder / dup_db / f"{dup_source}.wav", folder / dup_db / f"{dup_copy}.wav")
    source_truth = next(t for t in truth if t["record"] == dup_source)
    truth.append({**source_truth, "record": dup_copy, "validation": False, "duplicate_of": dup_source})
    for row in validation_rows:
        record = row.split(",")[0]
        shutil.copyfile(folder / f"training-{record[0]}" / f"{record}.wav", folder / "validation" / f"{record}.wav")
    (folder / "validation" / "REFERENCE.csv").write_bytes(_lines(validation_rows, "\n"))
    summary["records"] = size
    summary["validation_records"] = len(validation_rows)
    summary["duplicate_pair"] = [f"{dup_db}/{dup_source}", f"{dup_db}/{dup_copy}"]
    summary["cues"] = _count(k for t in truth if "duplicate_of" not in t for k in t["cues"])
    return summary, sorted(truth, key=lambda t: t["record"])


def _count(items) -> dict:
    keys, counts = np.unique(list(items), return_counts=True)
    return {str(k): int(c) for k, c in zip(keys, counts)}


_PASCAL_CUES = {  # category -> cue kinds one of which is drawn
    "normal": (),
    "noisynormal": (),
    "artifact": (),
    "murmur": ("systolic_murmur", "diastolic_murmur"),
    "noisymurmur": ("systolic_murmur", "diastolic_murmur"),
    "extrahls": ("extra_sound_s3", "extra_sound_s4", "wide_split_s2"),
    "extrastole": ("premature_beats",),
}


def _pascal_plan(n: int, pp: PascalParams, rng: np.random.Generator) -> list[dict]:
    """Every PASCAL file: set, category, hidden class, file name and CSV row."""
    weights = [(s, c, w) for s, cats in pp.category_weights.items() for c, w in cats.items()]
    counts = _allocate(n, [w for *_, w in weights], np.ones(len(weights), int))
    count = {(s, c): int(k) for (s, c, _), k in zip(weights, counts)}
    files = []
    # set_a: one timestamp (YYYYMMDDHHMM, Nov 2010 - Jun 2011) per file.
    set_a = [c for c in pp.category_weights["set_a"] for _ in range(count[("set_a", c)])]
    minutes = np.sort(rng.choice(240 * 24 * 60, len(set_a), replace=False))
    stamps = np.datetime_as_string(np.datetime64("2010-11-01T00:00") + minutes.astype("timedelta64[m]"), unit="m")
    labelled_a = [c for c in pp.category_weights["set_a"] if c != "unlabelled"]
    label_p = np.array([pp.category_weights["set_a"][c] for c in labelled_a], dtype=float)
    for category, stamp in zip(rng.permutation(set_a), stamps):
        ts = stamp.replace("-", "").replace("T", "").replace(":", "")
        if category == "unlabelled":
            hidden = labelled_a[rng.choice(len(labelled_a), p=label_p / label_p.sum())]
            files.append(
                dict(
                    set="set_a",
                    category=category,
                    hidden=hidden,
                    file=f"Aunlabelledtest__{ts}.wav",
                    row=f"a,set_a/__{ts}.wav,,",
                )
            )
        else:
            files.append(
                dict(
                    set="set_a",
                    category=category,
                    hidden=category,
                    file=f"{category}__{ts}.wav",
                    row=f"a,set_a/{category}__{ts}.wav,{category},",
                )
            )
    # set_b: sessions (patient, 13-digit ms timestamp) of 1-3 labelled files at distinct locations;
    # unlabelled files join a random session or open their own, as in the real release.
    sessions = []
    for category in ("extrastole", "murmur", "noisymurmur", "normal", "noisynormal"):
        left = count[("set_b", category)]
        while left:
            size = min(left, int(rng.integers(pp.session_files[0], pp.session_files[1] + 1)))
            sessions.append({"category": category, "labelled": size, "unlabelled": 0})
            left -= size
    for _ in range(count[("set_b", "unlabelled")]):
        if rng.random() < 0.5:
            sessions[rng.integers(len(sessions))]["unlabelled"] += 1
        else:
            sessions.append(
                {"category": sessions[rng.integers(len(sessions))]["category"], "labelled": 0, "unlabelled": 1}
            )
    order = rng.permutation(len(sessions))
    patients = np.sort(rng.choice(np.arange(101, 101 + 2 * len(sessions) + 100), len(sessions), replace=False))
    stamps = 1305030000000 + np.cumsum(rng.integers(60_000, 2_000_000_000, len(sessions)))
    for rank, s in enumerate(order):
        session = sessions[s]
        total = session["labelled"] + session["unlabelled"]
        letters = rng.choice(list("ABCDEF"), total)
        repeated = {x for x in letters if np.sum(letters == x) > 1}
        seen: dict = {}
        locations = []
        for x in letters:
            seen[x] = seen.get(x, 0) + 1
            suffix = str(seen[x]) if x in repeated else (str(rng.integers(1, 3)) if rng.random() < 0.15 else "")
            locations.append(x + suffix)
        recording = f"{patients[rank]}_{stamps[rank]}"
        category = session["category"]
        base = category.removeprefix("noisy")
        for j, location in enumerate(locations):
            tail = f"{recording}_{location}.wav"
            if j >= session["labelled"]:
                files.append(
                    dict(
                        set="set_b",
                        category="unlabelled",
                        hidden=category,
                        file=f"Bunlabelledtest__{tail}",
                        row=f"b,set_b/Bunlabelledtest_{tail},,",
                    )
                )
            elif category.startswith("noisy"):
                files.append(
                    dict(
                        set="set_b",
                        category=category,
                        hidden=category,
                        file=f"{base}_{category}_{tail}",
                        row=f"b,set_b/Btraining_{base}_Btraining_{category}_{tail},{base},{category}",
                    )
                )
            else:
                files.append(
                    dict(
                        set="set_b",
                        category=category,
                        hidden=category,
                        file=f"{category}__{tail}",
                        row=f"b,set_b/Btraining_{category}_{tail},{category},",
                    )
                )
    return files


# Row order of the real CSVs: set_a labelled then unlabelled; set_b clean, unlabelled, noisy.
_CSV_ORDER = {
    "set_a": ("artifact", "extrahls", "murmur", "normal", "unlabelled"),
    "set_b": ("extrastole", "murmur", "normal", "unlabelled", "noisymurmur", "noisynormal"),
}


def _write_pascal(folder: Path, seed: int, size: int, params: SynthParams) -> tuple[dict, list]:
    pp = params.pascal
    files = _pascal_plan(size, pp, _rng(seed, 2, 0))
    truth, timing_rows = [], []
    for set_name in ("set_a", "set_b"):
        (folder / set_name).mkdir(parents=True)
    for j, f in enumerate(files):
        rng = _rng(seed, 2, 1, j)
        device = getattr(pp, f["set"])
        duration = round(float(rng.uniform(*getattr(pp, f"{f['set']}_duration_s"))), 3)
        kinds = _PASCAL_CUES[f["hidden"]]
        cues = {str(rng.choice(kinds)): round(float(rng.uniform(*params.cues.strength)), 3)} if kinds else {}
        wave, info = _pcg(
            rng,
            params,
            device,
            duration,
            cues,
            pp.noisy_snr_offset_db if f["hidden"].startswith("noisy") else 0.0,
            artifact=f["hidden"] == "artifact",
        )
        _write_wav(folder / f["set"] / f["file"], wave, device.sample_rate_hz, device.subtypes[0])
        if f["set"] == "set_a" and f["category"] == "normal":
            sr, n = device.sample_rate_hz, wave.size
            s1 = np.round(info["s1_peaks_s"] * sr).astype(int)
            s2 = np.round(info["s2_peaks_s"] * sr).astype(int)
            complete = (s1 >= 0) & (s2 < n)
            timing_rows += [
                (f["file"], c + 1, sound, loc)
                for c, (a, b) in enumerate(zip(s1[complete], s2[complete]))
                for sound, loc in (("S1", a), ("S2", b))
            ]
        truth.append(
            {
                "file": f"{f['set']}/{f['file']}",
                "category": f["category"],
                "class": f["hidden"],
                "duration_s": duration,
                **{k: v for k, v in info.items() if not k.endswith("peaks_s")},
            }
        )
    for set_name, order in _CSV_ORDER.items():
        rows = sorted((order.index(f["category"]), f["row"]) for f in files if f["set"] == set_name)
        header = "dataset,fname,label,sublabel"
        (folder / f"{set_name}.csv").write_bytes(_lines([header] + [r for _, r in rows], "\r\n"))
    (folder / "set_a_timing.csv").write_bytes(
        _lines(
            ["fname,cycle,sound,location"] + [f"set_a/{f},{c},{s},{loc}" for f, c, s, loc in sorted(timing_rows)],
            "\r\n",
        )
    )
    summary = {s: _count(f["category"] for f in files if f["set"] == s) for s in ("set_a", "set_b")}
    summary["files"] = len(files)
    summary["binary_paper_mapping"] = _count(
        "normal" if f["category"] in ("normal", "noisynormal") else "abnormal"
        for f in files
        if f["category"] != "unlabelled"
    )
    return summary, truth


_LOCATIONS = ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")


def _icbhi_plan(n: int, ip: IcbhiParams, rng: np.random.Generator) -> list[dict]:
    """Every ICBHI recording: name, patient, split, device, subtype and cycle labels."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(ip.recordings_per_patient[0], ip.recordings_per_patient[1] + 1)))
    sizes[-1] -= sum(sizes) - n  # stays >= 1; n >= 4 > the largest size gives two patients or more
    patients = np.sort(rng.choice(np.arange(101, 101 + max(126, 2 * len(sizes))), len(sizes), replace=False))
    diagnoses = list(ip.diagnosis_weights)
    weights = np.array([ip.diagnosis_weights[d] for d in diagnoses], dtype=float)
    diagnosis = [diagnoses[i] for i in rng.choice(len(diagnoses), len(sizes), p=weights / weights.sum())]
    # Split by patient: shuffled patients fill train up to train_fraction, the rest is test.
    order = rng.permutation(len(sizes))
    cumulative = np.cumsum(np.asarray(sizes)[order])
    n_train_patients = int(np.clip(np.searchsorted(cumulative, ip.train_fraction * n) + 1, 1, len(sizes) - 1))
    train_patients = set(order[:n_train_patients].tolist())
    # Every (rate, subtype) format appears at least once; the rest are drawn.
    formats = [(d, s) for d, dev in ip.devices.items() for s in dev.subtypes]
    keys = [(ip.devices[d].sample_rate_hz, s) for d, s in formats]
    first = [int(rng.choice([i for i, k in enumerate(keys) if k == key])) for key in sorted(set(keys))]
    chosen = rng.permutation(first + rng.choice(len(formats), n - len(first)).tolist())
    recording_formats = [formats[i] for i in chosen]
    recordings, k = [], 0
    for p_index, (patient, size) in enumerate(zip(patients, sizes)):
        locations = rng.choice(len(_LOCATIONS), size, replace=False)
        fmts = recording_formats[k : k + size]
        indices = {}
        for device in sorted({d for d, _ in fmts}):
            indices[device] = f"{rng.integers(1, 4)}{rng.choice(['b', 'p'])}{rng.integers(1, 6)}"
        for loc, (device, subtype) in zip(locations, fmts):
            mode = "mc" if sum(d == device for d, _ in fmts) > 1 else "sc"
            crackle_p, wheeze_p = ip.cycle_probabilities[diagnosis[p_index]]
            cycles = int(rng.integers(ip.cycles_per_recording[0], ip.cycles_per_recording[1] + 1))
            recordings.append(
                dict(
                    name=f"{patient}_{indices[device]}_{_LOCATIONS[loc]}_{mode}_{device}",
                    patient=int(patient),
                    diagnosis=diagnosis[p_index],
                    split="train" if p_index in train_patients else "test",
                    device=device,
                    subtype=subtype,
                    crackles=rng.random(cycles) < crackle_p,
                    wheezes=rng.random(cycles) < wheeze_p,
                )
            )
        k += size
    _cover_cycle_classes(recordings, rng)
    return recordings


def _cover_cycle_classes(recordings: list[dict], rng: np.random.Generator) -> None:
    """Relabel cycles so that each split has every class (normal, crackle, wheeze, both)."""
    for split in ("train", "test"):
        members = [r for r in recordings if r["split"] == split]
        refs = [(r, c) for r in members for c in range(r["crackles"].size)]
        classes = np.array([int(r["crackles"][c]) + 2 * int(r["wheezes"][c]) for r, c in refs])
        for missing in sorted(set(range(4)) - set(classes.tolist())):
            present, counts = np.unique(classes, return_counts=True)
            donors = np.flatnonzero(np.isin(classes, present[counts > 1]))  # never remove a class's last cycle
            pick = donors[rng.integers(donors.size)]
            r, c = refs[pick]
            r["crackles"][c], r["wheezes"][c] = bool(missing & 1), bool(missing & 2)
            classes[pick] = missing


def _tones(n: int, sr: int, start_s, end_s, f0_hz, glide, harmonic: float) -> np.ndarray:
    """Gliding tones (wheezes) of shape (n,): in window k the fundamental goes from f0_k to f0_k (1 + glide_k).

    Windows must be sorted and non-overlapping; a second harmonic of relative
    amplitude ``harmonic`` is added, the envelope is a square-rooted half sine.
    """
    k, u = _segments(n, sr, start_s, end_s)
    inside = k >= 0
    if not inside.any():
        return np.zeros(n)
    window = np.clip(k, 0, None)
    frequency = np.where(inside, np.asarray(f0_hz)[window] * (1 + np.asarray(glide)[window] * u), 0.0)
    phase = 2 * np.pi * np.cumsum(frequency) / sr
    return np.where(inside, np.sqrt(np.sin(np.pi * u)), 0.0) * (np.sin(phase) + harmonic * np.sin(2 * phase))


def _icbhi_number(x: float, decimals: int) -> str:
    """A time as the real annotations write it: rounded, trailing zeros dropped (``0.036``, ``12.618``, ``0``)."""
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def _respiration(rng: np.random.Generator, params: SynthParams, rec: dict) -> tuple[np.ndarray, list[str]]:
    """One ICBHI recording as its device writes it, and its annotation lines."""
    ip = params.icbhi
    device = ip.devices[rec["device"]]
    sr = device.sample_rate_hz
    cycles = rec["crackles"].size
    lengths = rng.uniform(*ip.cycle_s, cycles)
    bounds = rng.uniform(*ip.first_cycle_s) + np.concatenate([[0.0], np.cumsum(lengths)])
    n = int(round((bounds[-1] + rng.uniform(*ip.tail_s)) * sr))
    start, end = bounds[:-1], bounds[1:]
    inspiration = rng.uniform(*ip.inspiration_fraction)
    expiration = rng.uniform(*ip.expiration_level)
    k, u = _segments(n, sr, start, end)
    envelope = np.where(
        u < inspiration,
        np.sin(np.pi * u / inspiration),
        expiration * np.sin(np.pi * (u - inspiration) / (1 - inspiration)),
    )
    envelope[k < 0] = 0.05  # faint breathing outside the annotated cycles
    low, high = ip.breath_band_hz
    breath = _band_noise(rng, n, sr, (low + high) / 2, high - low) * envelope
    breath /= np.sqrt(np.mean(breath[(k >= 0) & (u < inspiration)] ** 2))
    severity = rng.uniform(*ip.severity)

    insp_end = start + inspiration * lengths
    crackling = np.flatnonzero(rec["crackles"])
    per_cycle = rng.integers(ip.crackles_per_cycle[0], ip.crackles_per_cycle[1] + 1, crackling.size)
    where = np.repeat(crackling, per_cycle)
    in_insp = rng.random(where.size) < ip.crackle_in_inspiration
    phase_start = np.where(in_insp, start[where], insp_end[where])
    phase_len = np.where(in_insp, insp_end[where] - start[where], end[where] - insp_end[where])
    crackles = _bursts(
        n,
        sr,
        phase_start + rng.uniform(0.05, 0.9, where.size) * phase_len,  # inside the phase
        rng.uniform(*ip.crackle_freq_hz, where.size),
        rng.uniform(*ip.crackle_decay_s, where.size),
        _lerp(ip.crackle_level, severity) * rng.uniform(0.5, 1.0, where.size) * rng.choice([-1.0, 1.0], where.size),
    )

    wheezing = np.flatnonzero(rec["wheezes"])
    in_exp = rng.random(wheezing.size) < ip.wheeze_in_expiration
    phase_start = np.where(in_exp, insp_end[wheezing], start[wheezing])
    phase_end = np.where(in_exp, end[wheezing], insp_end[wheezing])
    w_start = phase_start + rng.uniform(0.0, 0.2, wheezing.size) * (phase_end - phase_start)  # early in it
    w_end = np.minimum(w_start + rng.uniform(*ip.wheeze_duration_s, wheezing.size), phase_end - 0.02)
    wheezes = _lerp(ip.wheeze_level, severity) * _tones(
        n,
        sr,
        w_start,
        w_end,
        np.minimum(rng.uniform(*ip.wheeze_freq_hz, wheezing.size), 0.2 * sr),
        rng.uniform(*ip.wheeze_glide, wheezing.size),
        ip.wheeze_harmonic,
    )

    breathing = (1.0 / float(np.mean(lengths)), 0.0)
    heart, _ = _heart_sounds(rng, n, sr, params, {}, {}, breathing)
    body = breath + crackles + wheezes + heart * rng.uniform(*ip.heart_level)
    wave = _record(rng, body, sr, device, rng.uniform(*device.snr_db), params.noise.snr_band_hz)
    decimals = 3 if sr > 8000 else 4
    lines = [
        f"{_icbhi_number(a, decimals)}\t{_icbhi_number(b, decimals)}\t{int(c)}\t{int(w)}"
        for a, b, c, w in zip(start, end, rec["crackles"], rec["wheezes"])
    ]
    return wave, lines


def _write_icbhi(folder: Path, seed: int, size: int, params: SynthParams) -> tuple[dict, list]:
    recordings = _icbhi_plan(size, params.icbhi, _rng(seed, 3, 0))
    audio = folder / "ICBHI_final_database"
    audio.mkdir(parents=True)
    (folder / "meta").mkdir()
    truth = []
    for j, rec in enumerate(recordings):
        wave, lines = _respiration(_rng(seed, 3, 1, j), params, rec)
        device = params.icbhi.devices[rec["device"]]
        _write_wav(audio / f"{rec['name']}.wav", wave, device.sample_rate_hz, rec["subtype"])
        (audio / f"{rec['name']}.txt").write_bytes(_lines(lines, "\n"))
        truth.append(
            {
                "name": rec["name"],
                "patient": rec["patient"],
                "diagnosis": rec["diagnosis"],
                "split": rec["split"],
                "sample_rate_hz": device.sample_rate_hz,
                "subtype": rec["subtype"],
                "cycles": len(lines),
                "duration_s": round(wave.size / device.sample_rate_hz, 4),
            }
        )
    ordered = sorted(recordings, key=lambda r: r["name"])
    (folder / "ICBHI_challenge_train_test.txt").write_bytes(
        _lines([f"{r['name']}\t{r['split']}" for r in ordered], "\r\n")
    )
    diagnoses = sorted({(r["patient"], r["diagnosis"]) for r in recordings})
    (folder / "meta" / "patient_diagnosis.csv").write_bytes(
        _lines([f"{p},{d}" for p, d in diagnoses], "\r\n", final=False)
    )
    classes = ("normal", "crackle", "wheeze", "both")
    summary = {
        "recordings": len(recordings),
        "patients": len(diagnoses),
        "splits": _count(r["split"] for r in recordings),
        "cycles": {
            s: _count(
                classes[int(c) + 2 * int(w)]
                for r in recordings
                if r["split"] == s
                for c, w in zip(r["crackles"], r["wheezes"])
            )
            for s in ("train", "test")
        },
        "formats": _count(f"{params.icbhi.devices[r['device']].sample_rate_hz} Hz {r['subtype']}" for r in recordings),
    }
    return summary, sorted(truth, key=lambda t: t["name"])


_WRITERS = {"physionet2016": _write_physionet, "pascal": _write_pascal, "icbhi2017": _write_icbhi}


# ----------------------------------------------------------------------------- public entry point


def _params_digest(params: SynthParams) -> str:
    text = json.dumps(dataclasses.asdict(params), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _read_marker(folder: Path) -> dict | None:
    """The marker of a folder this generator wrote, or None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR else None


def planted_cues(root: str | Path) -> dict[str, dict[str, float]]:
    """The abnormal cues this generator planted in the heart-sound folders under ``root``.

    Returns recording id (as the PhysioNet and PASCAL loaders name it: ``a0001``,
    ``set_a/normal__201101070538``) -> {cue kind: strength} ({} for a recording without
    cues); empty when neither ``root/physionet2016`` nor ``root/pascal`` was written here.
    """
    root, cues = Path(root), {}
    physionet, pascal = _read_marker(root / "physionet2016"), _read_marker(root / "pascal")
    for truth in physionet["truth"] if physionet else []:
        cues[truth["record"]] = truth["cues"]
    for truth in pascal["truth"] if pascal else []:
        cues[str(Path(truth["file"]).with_suffix("").as_posix())] = truth["cues"]
    return cues


def write_synthetic(
    out: str | Path,
    seed: int = 0,
    *,
    physionet: int = 300,
    pascal: int = 40,
    icbhi: int = 12,
    physionet_test: int | None = None,
    datasets: Sequence[str] = DATASETS,
    preset: str = "default",
) -> dict:
    """Write synthetic PhysioNet 2016, PASCAL and ICBHI 2017 datasets in their real on-disk layouts.

    Parameters
    ----------
    out : folder that receives ``physionet2016/``, ``pascal/`` and ``icbhi2017/``.
    seed : non-negative int; the same seed and sizes give byte-identical files.
        Each dataset has its own random streams, so writing one alone gives
        the same files as writing all three.
    physionet : recordings in training-a ... training-f together (validation/
        holds extra copies of some of them), at least 30.
    pascal : PASCAL files in set_a and set_b together (labelled and
        unlabelled), at least 11.
    icbhi : ICBHI recordings, at least 4.
    physionet_test : how many of the ``physionet`` records validation/ (the test
        set) copies; default None: each database's real share, about 10 %.
        Larger test sets resolve smaller differences at no training cost.
    datasets : which of "physionet2016", "pascal", "icbhi2017" to write.
    preset : a name in :data:`PRESETS`: ``"default"`` (:data:`SYNTH_PARAMS`) or
        ``"positive_control"`` (:data:`POSITIVE_CONTROL_PARAMS`, each abnormal
        recording with one cue only one of the two AudioFuse branches sees well).

    Returns
    -------
    A JSON-able summary: per dataset its counts per database / set, label and
    split, PhysioNet's planted duplicate pair, the marker path holding the
    per-recording truth (cues, strengths, SNR), and the parameters used.

    Every dataset folder gets ``SYNTHETIC.json`` (seed, size, parameter digest,
    summary and truth). A non-empty dataset folder without it is never
    touched (ValueError); one written by this generator with the same seed,
    size and parameters is left as it is, any other is replaced.
    """
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a str or Path, got {type(out).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if isinstance(datasets, str):
        raise TypeError(f"datasets must be a sequence of names, got the string {datasets!r}")
    datasets = list(datasets)
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets or len(set(datasets)) != len(datasets):
        raise ValueError(f"datasets must be distinct names from {list(DATASETS)}, got {datasets}")
    sizes = {"physionet2016": physionet, "pascal": pascal, "icbhi2017": icbhi}
    arguments = {"physionet2016": "physionet", "pascal": "pascal", "icbhi2017": "icbhi"}
    for name in datasets:
        size = sizes[name]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"{arguments[name]} must be an int, got {type(size).__name__}")
        if size < MIN_SIZES[name]:
            raise ValueError(
                f"{arguments[name]} must be at least {MIN_SIZES[name]} to fill every class and split "
                f"of {name}, got {size}"
            )
    if physionet > 40_000 and "physionet2016" in datasets:
        raise ValueError(f"physionet must be at most 40000 (4-digit record names), got {physionet}")
    if physionet_test is not None:
        if isinstance(physionet_test, bool) or not isinstance(physionet_test, (int, np.integer)):
            raise TypeError(f"physionet_test must be an int or None, got {type(physionet_test).__name__}")
        # two test records in each database that gives some, two training records per class in each
        if not 10 <= physionet_test <= physionet - 24:
            raise ValueError(
                f"physionet_test must lie in [10, physionet - 24] = [10, {physionet - 24}], got {physionet_test}"
            )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, but {out} is a file")
    for name in datasets:
        folder = out / name
        if folder.is_dir() and any(folder.iterdir()) and _read_marker(folder) is None:
            raise ValueError(
                f"out: {folder} is not empty and was not written by {GENERATOR} (no {MARKER}); refusing to overwrite it"
            )

    params, digest = PRESETS[preset], _params_digest(PRESETS[preset])
    summary = {
        "generator": GENERATOR,
        "out": str(out),
        "seed": int(seed),
        "datasets": datasets,
        "sizes": {name: int(sizes[name]) for name in datasets},
        "params_digest": digest,
        "preset": preset,
        "parameters": json.loads(json.dumps(dataclasses.asdict(params))),
    }
    for name in datasets:
        folder = out / name
        identity = {
            "generator": GENERATOR,
            "dataset": name,
            "seed": int(seed),
            "size": int(sizes[name]),
            "params_digest": digest,
            **({"test_size": physionet_test} if name == "physionet2016" else {}),
        }
        marker = _read_marker(folder)
        if marker is not None and all(marker.get(k) == v for k, v in identity.items()):
            summary[name] = marker["summary"]
            continue
        # Write next to the target and swap it in, so an interrupted run never leaves a marked half-dataset.
        partial = out / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        options = {"n_test": physionet_test} if name == "physionet2016" else {}
        dataset_summary, truth = _WRITERS[name](partial, int(seed), int(sizes[name]), params, **options)
        dataset_summary["marker"] = str(folder / MARKER)
        (partial / MARKER).write_text(json.dumps({**identity, "summary": dataset_summary, "truth": truth}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        summary[name] = dataset_summary
    return summary
