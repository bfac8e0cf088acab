"""Every kind of bad input fails with a message naming the file and the reason,
or, with skip_bad, is skipped and reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from study.data import DataError, load_dataset, read_audio

RATE = 2000


def _tone(seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)


def _physionet(root: Path, records: dict[str, int], extra_lines: str = "") -> Path:
    folder = root / "training-a"
    folder.mkdir(parents=True, exist_ok=True)
    for name in records:
        sf.write(folder / f"{name}.wav", _tone(), RATE, subtype="PCM_16")
    lines = "".join(f"{name},{label}\n" for name, label in records.items()) + extra_lines
    (folder / "REFERENCE.csv").write_text(lines)
    return root


@pytest.mark.parametrize("subtype,bits", [("PCM_U8", 8), ("PCM_16", 16), ("PCM_24", 24), ("PCM_32", 32), ("FLOAT", 32)])
def test_every_bit_depth_reads_at_full_scale(tmp_path, subtype, bits):
    path = tmp_path / f"x{bits}.wav"
    sf.write(path, _tone(), RATE, subtype=subtype)
    wave, rate = read_audio(path)
    assert rate == RATE and wave.dtype == np.float32
    assert abs(np.abs(wave).max() - 0.5) < 2.0 ** -(bits - 2)


def test_stereo_is_mixed_down_and_noted(tmp_path):
    root = _physionet(tmp_path, {"a0001": 1, "a0002": -1})
    stereo = np.stack([_tone(), np.zeros_like(_tone())], axis=1)
    sf.write(root / "training-a" / "a0001.wav", stereo, RATE, subtype="PCM_16")
    wave, _ = read_audio(root / "training-a" / "a0001.wav")
    assert wave.ndim == 1 and abs(np.abs(wave).max() - 0.25) < 1e-3
    ds = load_dataset("physionet2016", root)
    assert len(ds.table) == 2
    assert any("a0001.wav" in p.file and "averaged to mono" in p.reason for p in ds.problems)


def _break(path: Path, how: str) -> str:
    """Damage a WAV in one way; returns the expected phrase of the error."""
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "truncated"
    if how == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunkjunk")
        return "not a readable audio file"
    if how == "empty":
        path.write_bytes(b"")
        return "empty file"
    if how == "zero_length":
        sf.write(path, np.zeros(0, np.float32), RATE, subtype="PCM_16")
        return "zero-length"
    if how == "nan":
        wave = _tone()
        wave[10] = np.nan
        sf.write(path, wave, RATE, subtype="FLOAT")
        return "NaN or Inf"
    if how == "inf":
        wave = _tone()
        wave[10] = np.inf
        sf.write(path, wave, RATE, subtype="DOUBLE")
        return "NaN or Inf"
    if how == "missing":
        path.unlink()
        return "not found"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "corrupt", "empty", "zero_length", "nan", "inf", "missing"])
def test_bad_audio_raises_naming_the_file_or_is_skipped(tmp_path, how):
    root = _physionet(tmp_path, {"a0001": 1, "a0002": -1, "a0003": -1})
    bad = root / "training-a" / "a0002.wav"
    phrase = _break(bad, how)
    with pytest.raises(DataError, match=phrase) as err:
        load_dataset("physionet2016", root)
    assert "a0002.wav" in str(err.value)
    ds = load_dataset("physionet2016", root, skip_bad=True)
    assert sorted(ds.table["id"]) == ["a0001", "a0003"]
    about_file = [p for p in ds.problems if p.file.endswith("a0002.wav")]
    assert len(about_file) == 1 and phrase in about_file[0].reason


def test_unknown_label_and_duplicate_ids_in_reference(tmp_path):
    root = _physionet(tmp_path, {"a0001": 1, "a0002": -1}, extra_lines="a0001,-1\n")
    with pytest.raises(DataError, match=r"REFERENCE.csv: line 3: duplicate record id a0001"):
        load_dataset("physionet2016", root)
    (root / "training-a" / "REFERENCE.csv").write_text("a0001,1\na0002,0\n")
    with pytest.raises(DataError, match=r"REFERENCE.csv: line 2: unknown label '0' for a0002"):
        load_dataset("physionet2016", root)
    ds = load_dataset("physionet2016", root, skip_bad=True)
    assert list(ds.table["id"]) == ["a0001"] and "unknown label" in ds.problems[0].reason


def test_header_with_wrong_rate_and_optional_sqi(tmp_path):
    root = _physionet(tmp_path, {"a0001": 1, "a0002": -1})
    (root / "training-a" / "REFERENCE_withSQI.csv").write_text("a0001,1,1\na0002,-1,0\n")
    ds = load_dataset("physionet2016", root)
    assert list(ds.table["signal_quality"]) == [1, 0]
    (root / "training-a" / "a0002.hea").write_text("a0002 1 4000 2000\na0002.wav 16+44 1 16 0 0 0 0 PCG\n# Normal\n")
    with pytest.raises(DataError, match=r"a0002.hea: sample rate 4000 Hz disagrees with the WAV's 2000 Hz"):
        load_dataset("physionet2016", root)
    (root / "training-a" / "a0002.hea").write_text("a0002 1 2000 2000\n# Abnormal\n")
    with pytest.raises(DataError, match=r"a0002.hea: label Abnormal disagrees"):
        load_dataset("physionet2016", root)


def test_test_record_not_in_training_is_reported(tmp_path):
    root = _physionet(tmp_path, {"a0001": 1, "a0002": -1})
    (root / "validation").mkdir()
    (root / "validation" / "REFERENCE.csv").write_text("a0001,1\na0999,1\n")
    with pytest.raises(DataError, match="a0999 is not a training record"):
        load_dataset("physionet2016", root)
    ds = load_dataset("physionet2016", root, skip_bad=True)
    assert dict(zip(ds.table["id"], ds.table["split"])) == {"a0001": "test", "a0002": "train"}


def _pascal(root: Path, rows: list[str], files: list[str]) -> Path:
    (root / "set_a").mkdir(parents=True)
    for name in files:
        sf.write(root / "set_a" / name, _tone(rate=44100), 44100, subtype="PCM_16")
    (root / "set_a.csv").write_bytes(("dataset,fname,label,sublabel\r\n" + "".join(r + "\r\n" for r in rows)).encode())
    return root


def test_pascal_bad_rows(tmp_path):
    files = ["normal__201101070538.wav", "murmur__201101051104.wav", "Aunlabelledtest__201012172010.wav"]
    good = [
        "a,set_a/normal__201101070538.wav,normal,",
        "a,set_a/murmur__201101051104.wav,murmur,",
        "a,set_a/__201012172010.wav,,",
    ]
    ds = load_dataset("pascal", _pascal(tmp_path / "ok", good, files))
    assert sorted(ds.table["original_label"]) == ["murmur", "normal"] and ds.problems == []
    cases = {
        "a,set_a/normal__209901010000.wav,normal,": "no file matches",
        "a,set_a/murmur__201101051104.wav,banana,": "unknown label 'banana'",
        "a,../../etc/normal__201101070538.wav,normal,": "points outside the dataset folder",
        "a,set_a/murmur__201101051104.wav,normal,": "mislabelled",
    }
    for i, (row, phrase) in enumerate(cases.items()):
        root = _pascal(tmp_path / f"bad{i}", good[:1] + [row], files)
        with pytest.raises(DataError, match=phrase):
            load_dataset("pascal", root)
        skipped = load_dataset("pascal", root, skip_bad=True)
        assert any(phrase in p.reason for p in skipped.problems)


def test_manifest_loader_and_its_errors(tmp_path):
    (tmp_path / "audio").mkdir()
    for name in ("x.wav", "y.wav"):
        sf.write(tmp_path / "audio" / name, _tone(), RATE, subtype="PCM_16")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,group\naudio/x.wav,1,p1\naudio/y.wav,normal,p2\n")
    ds = load_dataset("manifest", manifest)
    assert list(ds.table["label"]) == [1, 0] and list(ds.table["group"]) == ["p1", "p2"]
    cases = {
        "path,label\naudio/x.wav,1\naudio/missing.wav,0\n": "file 'audio/missing.wav' is missing",
        "path,label\naudio/x.wav,1\naudio/y.wav,sick\n": "unknown label 'sick'",
        "path,label\naudio/x.wav,1\n../outside.wav,0\n": "points outside the dataset folder",
        "path,label,id\naudio/x.wav,1,r1\naudio/y.wav,0,r1\n": "duplicate recording ids",
        "file,label\naudio/x.wav,1\n": "missing column",
    }
    for text, phrase in cases.items():
        manifest.write_text(text)
        with pytest.raises(DataError, match=phrase) as err:
            load_dataset("manifest", manifest)
        assert "manifest.csv" in str(err.value) or "duplicate" in phrase


def test_cli_reports_errors_cleanly(tmp_path):
    root = _physionet(tmp_path, {"a0001": 1, "a0002": -1})
    _break(root / "training-a" / "a0001.wav", "corrupt")
    result = subprocess.run(
        [sys.executable, "-m", "study.data", "inspect", "physionet2016", str(root)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "a0001.wav: not a readable audio file" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "study.data", "inspect", "physionet2016", str(root), "--skip-bad"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "a0001.wav: not a readable audio file" in result.stdout
