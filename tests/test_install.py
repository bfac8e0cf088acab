"""The project as a user installs it: a wheel (not the checkout) that finds its own search spaces."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv holding the project's wheel; the big dependencies (torch, Ray, ...) come from
    this environment's site-packages through a path file, which adds the folder but runs none of its
    own path files, so this checkout's editable install stays out of it (its metadata is still visible:
    --ignore-installed installs the wheel beside it and never uninstalls it). Returns its python."""
    root = tmp_path_factory.mktemp("install")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(root)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(root.glob("audiofuse_study-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "search_spaces/fusion.yaml" in names and "search_spaces/__init__.py" in names
    assert not any(n.startswith(("tests/", "results/")) for n in names)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_installed_wheel_runs_a_built_in_space_and_a_users_own_from_elsewhere(installed, synth_root, tmp_path):
    where = _run(
        installed, tmp_path, "-c", "import study, search_spaces; print(study.__file__, search_spaces.__file__)"
    )
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout  # the wheel's copy, not this checkout's
    done = _run(
        installed, tmp_path, "-m", "study.run", "--space", "fusion", "--dry-run", "--data-root", str(synth_root)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study plan: fusion (scale cpu)" in done.stdout and "trials:     10" in done.stdout
    own = tmp_path / "my_study.yaml"
    own.write_text(
        "name: my_study\nstudy: heart\ngrid: {model.architecture: [waveform, fusion], seed: [0, 1, 2]}\n"
        "compare: {axis: model.architecture, baseline: waveform, metric: roc_auc}\n"
    )
    done = _run(
        installed, tmp_path, "-m", "study.run", "--space", str(own), "--dry-run", "--data-root", str(synth_root)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study plan: my_study" in done.stdout and "trials:     6" in done.stdout
    missing = _run(installed, tmp_path, "-m", "study.run", "--space", "fuson", "--dry-run")
    assert missing.returncode == 2 and "built-in spaces: [" in missing.stderr and "'fusion'" in missing.stderr
