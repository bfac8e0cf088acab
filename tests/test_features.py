"""Audio → model input, and the content-addressed feature cache."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from study.cache import FeatureCache, extract_features
from study.data import load_dataset
from study.features import compute_features, get_profile, make_windows


def _heart_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    beats = np.sin(2 * np.pi * 60 * t) * np.exp(-(((t % 0.8) / 0.04) ** 2))
    return (0.6 * beats + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_paper_profile_matches_direct_librosa(tmp_path):
    """The official AudioFuse preprocessing, written directly with librosa, as the notebooks do."""
    path = tmp_path / "rec.wav"
    sf.write(path, _heart_like(7.3, 2000), 2000, subtype="PCM_16")
    profile = get_profile("paper")
    wave, sr = sf.read(path, dtype="float32")
    images, waves = compute_features(wave, sr, profile)

    y, _ = librosa.load(path, sr=22050)
    y = y[: 5 * 22050]
    mel = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=2048, hop_length=512, n_mels=224)
    db = librosa.power_to_db(mel, ref=np.max)
    resized = F.interpolate(torch.tensor(db)[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
    expected = ((resized - resized.min()) / (resized.max() - resized.min())).numpy()

    assert images.shape == (1, 224, 224) and waves.shape == (1, 5 * 22050)
    assert np.abs(images[0] - expected).max() < 1e-3
    assert np.abs(waves[0] - y).max() < 1e-4


def test_windows_and_padding():
    profile = get_profile("native", window_s=1.0)
    wave = np.arange(2500, dtype=np.float32)  # 1.25 s at 2 kHz
    first = make_windows(wave, profile)
    assert first.shape == (1, 2000) and np.array_equal(first[0], wave[:2000])
    every = make_windows(wave, get_profile("native", window_s=1.0, windows="all"))
    assert every.shape == (1, 2000)  # the 0.25 s tail is shorter than half a window
    every = make_windows(np.arange(3200, dtype=np.float32), get_profile("native", window_s=1.0, windows="all"))
    assert every.shape == (2, 2000) and np.all(every[1, 1200:] == 0)
    short = np.arange(1, 701, dtype=np.float32)
    zero = make_windows(short, profile)[0]
    assert np.array_equal(zero[:700], short) and np.all(zero[700:] == 0)
    cyclic = make_windows(short, get_profile("native", window_s=1.0, padding="cyclic"))[0]
    assert np.array_equal(cyclic[700:1400], short) and np.array_equal(cyclic[1400:], short[:600])


def test_profile_validation():
    with pytest.raises(ValueError, match="unknown feature profile 'fancy'"):
        get_profile("fancy")
    with pytest.raises(ValueError, match=r"unknown feature setting\(s\) \['n_mel'\]"):
        get_profile("paper", n_mel=64)
    with pytest.raises(ValueError, match="'fmax' = 3000.0"):
        get_profile("native", fmax=3000.0)
    with pytest.raises(ValueError, match="'padding' = 'mirror'"):
        get_profile("native", padding="mirror")
    assert get_profile("native", image_size=32).image_size == (32, 32)
    assert get_profile("paper").key() != get_profile("paper", hop_length=256).key()


def recording_table(tmp_path, n: int = 6) -> pd.DataFrame:
    folder = tmp_path / "physionet" / "training-a"
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        sf.write(folder / f"a{i:04d}.wav", _heart_like(3 + 2 * i, 2000, seed=i), 2000, subtype="PCM_16")
        lines.append(f"a{i:04d},{1 if i % 2 else -1}\n")
    (folder / "REFERENCE.csv").write_text("".join(lines))
    return load_dataset("physionet2016", tmp_path / "physionet").table


def test_cache_computes_once_and_reuses(tmp_path):
    table = recording_table(tmp_path)
    profile = get_profile("native", image_size=32, windows="all", window_s=2.0)
    cache = FeatureCache(tmp_path / "cache")
    first = extract_features(table, profile, cache=cache, n_jobs=1, progress=False)
    assert first.stats["computed"] == 6 and first.stats["cached"] == 0
    assert first.images.shape[1:] == (32, 32) and first.waves.shape[1] == 4000
    # 3, 5, ... 13 s in 2 s windows; each 1 s tail is half a window, so it is kept
    assert np.array_equal(np.bincount(first.item_index), [2, 3, 4, 5, 6, 7])
    again = extract_features(table, profile, cache=cache, n_jobs=1, progress=False)
    assert again.stats["computed"] == 0 and again.stats["pack"]
    assert np.array_equal(again.images, first.images) and np.array_equal(again.waves, first.waves)
    subset = extract_features(table.iloc[[1, 3]], profile, cache=cache, n_jobs=1, progress=False)
    assert subset.stats == {**subset.stats, "cached": 2, "computed": 0, "pack": False}
    picked = first.select(np.array([1, 3]))
    assert np.array_equal(picked.images, subset.images) and np.array_equal(picked.item_index, subset.item_index)
    other = extract_features(table, get_profile("native", image_size=16), cache=cache, n_jobs=1, progress=False)
    assert other.stats["computed"] == 6  # other settings, other key


def test_cache_key_follows_content_not_name(tmp_path):
    table = recording_table(tmp_path, n=2)
    profile = get_profile("native", image_size=16)
    cache = FeatureCache(tmp_path / "cache")
    extract_features(table, profile, cache=cache, n_jobs=1, progress=False)
    path = table.at[0, "path"]
    sf.write(path, _heart_like(3, 2000, seed=99), 2000, subtype="PCM_16")
    changed = load_dataset("physionet2016", tmp_path / "physionet").table
    result = extract_features(changed, profile, cache=cache, n_jobs=1, progress=False)
    assert result.stats["computed"] == 1 and result.stats["cached"] == 1


def test_transform_needs_a_key(tmp_path):
    table = recording_table(tmp_path, n=1)
    with pytest.raises(ValueError, match="transform_key"):
        extract_features(table, get_profile("native"), transform=lambda w, sr: w, progress=False)


def test_parallel_workers_and_concurrent_fillers_agree(tmp_path):
    table = recording_table(tmp_path, n=6)
    profile = get_profile("native", image_size=16)
    serial = extract_features(table, profile, cache=FeatureCache(tmp_path / "serial"), n_jobs=1, progress=False)
    shared = FeatureCache(tmp_path / "shared")
    with ThreadPoolExecutor(2) as pool:  # two fillers racing on one cache folder
        results = list(
            pool.map(lambda _: extract_features(table, profile, cache=shared, n_jobs=1, progress=False), range(2))
        )
    parallel = extract_features(table, profile, cache=FeatureCache(tmp_path / "pool"), n_jobs=2, progress=False)
    for result in results + [parallel]:
        assert np.array_equal(result.images, serial.images) and np.array_equal(result.waves, serial.waves)
    assert not list((tmp_path / "shared").rglob("*.tmp"))


def test_features_cli(tmp_path):
    recording_table(tmp_path, n=3)
    command = [
        sys.executable,
        "-m",
        "study.data",
        "features",
        "physionet2016",
        str(tmp_path / "physionet"),
        "--profile",
        "native",
        "--set",
        "image_size=16",
        "--jobs",
        "1",
        "--cache",
        str(tmp_path / "c"),
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    second = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "0 cached, 3 computed" in first and "3 cached, 0 computed" in second
