"""python -m study.bench --quick: every figure present, finite and positive; the output names the device."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study import bench

REPO = Path(__file__).resolve().parents[1]
TRAINER_FIGURES = {
    "windows",
    "batch_size",
    "epochs",
    "repeats",
    "trainer_ms",
    "bare_ms",
    "ratio",
    "limit",
    "windows_per_s",
    "epoch_2943_s",
    "epoch_val_s",
}
CPU_MEMORY_FIGURES = {"windows", "features_mb", "rss_before_mb", "rss_peak_mb", "rss_full_trial_mb"}
FEATURE_FIGURES = {"sample_rate", "wave_samples", "recordings", "compute_ms", "extract_ms", "first_call_s"}
# a GPU node's environment: the audio libraries are missing (study.bench must still time the trainer)
BLOCK_AUDIO = """
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("librosa", "soundfile", "soxr"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _Block())
"""


def check_figures(rows: list[dict], figures: set[str]) -> None:
    assert rows
    for row in rows:
        assert figures <= set(row), figures - set(row)
        for key in figures:
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)


def check_trainer_and_memory(results: dict) -> None:
    assert [(row["size"], row["precision"]) for row in results["trainer"]] == [("cpu", "fp32")]
    check_figures(results["trainer"], TRAINER_FIGURES)
    assert results["trainer"][0]["windows"] == bench.QUICK["windows"]
    check_figures(results["memory"], CPU_MEMORY_FIGURES)
    memory = results["memory"][0]
    assert memory["rss_peak_mb"] >= memory["rss_before_mb"] * 0.5  # the peak is the trial's, the process's size
    assert memory["rss_full_trial_mb"] > memory["rss_peak_mb"]  # a full trial holds more features


@pytest.mark.slow
def test_quick_bench_reports_every_figure(tmp_path, capsys):
    assert bench.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert out.startswith("device: cpu (") and results["device"]["type"] == "cpu"
    check_trainer_and_memory(results)
    assert [row["profile"] for row in results["features"]] == ["native", "paper", "ast"]
    check_figures(results["features"], FEATURE_FIGURES)
    for heading in ("trainer against a bare loop", "peak memory", "feature extraction, ms per recording"):
        assert heading in out


@pytest.mark.slow
def test_quick_bench_without_audio_libraries(tmp_path):
    """Where librosa, soundfile and soxr are missing (a GPU node) the trainer and memory parts
    still run, in the bench and in its peak-memory subprocess, and feature extraction says why
    it is skipped."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_AUDIO)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "study.bench", "--quick", "--device", "cpu", "--json", str(tmp_path / "bench.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    check_trainer_and_memory(results)
    assert "features" not in results
    assert "librosa, soundfile, soxr" in results["features_skipped"]
    assert "feature extraction skipped: " in done.stdout
    assert not results["notes"]  # the trainer imports no audio library: nothing had to stand in for one


@pytest.mark.slow
def test_quick_bench_shares_the_device_and_times_each_architecture(tmp_path, capsys):
    """--sharing: trials in processes of their own train together, one row per count, and the
    recommended share is one over the fewest trials near the best throughput; --parts architectures:
    one training step per architecture. Only the parts asked for run."""
    arguments = ["--quick", "--device", "cpu", "--parts", "sharing,architectures", "--sharing", "2,1"]
    assert bench.main([*arguments, "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert not {"trainer", "memory", "features"} & set(results)
    sharing = results["sharing"]
    assert [row["trials"] for row in sharing["rows"]] == [1, 2]
    check_figures(sharing["rows"], {"windows_per_s", "per_trial_windows_per_s", "epoch_2943_s"})
    best = max(row["windows_per_s"] for row in sharing["rows"])
    knee = min(r["trials"] for r in sharing["rows"] if r["windows_per_s"] >= bench.SHARING_KNEE * best)
    assert sharing["recommended_trials"] == knee
    assert sharing["recommended_gpus_per_trial"] == {1: 1.0, 2: 0.5}[knee]
    rows = results["architectures"]["rows"]
    assert [r["architecture"] for r in rows] == ["spectrogram", "waveform", "fusion"]
    check_figures(rows, {"step_ms", "windows_per_s"})
    assert "trials sharing the device" in out and "training step per architecture" in out
