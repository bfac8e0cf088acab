"""What `python -m study.run` prints to a log (stdout not a terminal), and how Ctrl-C and SIGTERM end it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole studies in a subprocess, ~1 min


def _study(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", "--space", "smoke", "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_logged_study_prints_a_line_per_stage_and_trial_and_the_lead(synth_root, tmp_path):
    process = _study(tmp_path / "smoke")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    lines = output.splitlines()
    assert "\r" not in output  # no redrawn progress bars in a log
    assert len(lines) <= 40, output
    assert sum(line.startswith("features: ") for line in lines) == 1
    assert sum("] start " in line for line in lines) == sum("] done  " in line for line in lines) == 4
    for unwanted in ("snapshotting", "RAY_AUTH_MODE=disabled", "Started a local Ray instance", "Wrote the latest"):
        assert unwanted not in output, unwanted
    assert "best trial by validation roc_auc: " in output and "| configuration | evaluation set |" in output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_study_says_in_one_line_what_was_kept_and_how_to_resume(synth_root, tmp_path, signum):
    out = tmp_path / "smoke"
    process = _study(out, "--set", "seed=[0,1,2,3]")
    started = time.monotonic()
    lines = []
    for line in process.stdout:  # wait for the first finished trial, then interrupt
        lines.append(line)
        if "] done  " in line or time.monotonic() - started > 300:
            break
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == 130, output
    last = output.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"interrupted: the trials that finished are kept in {out}")
    assert last.endswith(
        f"continue with: python -m study.run --space smoke --out {out} --set 'seed=[0,1,2,3]' --resume"
    )
    for unwanted in ("*** SIG", "PC: @", "leaked semaphore", "Traceback"):
        assert unwanted not in output, unwanted
    assert "Failed to fetch metrics" not in output and "Trials did not complete" not in output
    # the printed command resumes the study to its end: Tune stopped at a step with a consistent snapshot
    resumed = subprocess.run(
        [sys.executable, "-m", "study.run", *shlex.split(last.split("python -m study.run ", 1)[1])],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "smoke: 8 trials in the study" in resumed.stdout and ", 0 failed," in resumed.stdout
