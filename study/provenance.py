"""What a study ran with: the code's version and the versions of the packages that decide its numbers."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["package_versions", "code_version"]

PACKAGES = ("ray", "torch", "timm", "numpy", "scipy", "pandas", "scikit-learn", "librosa", "soundfile", "optuna")


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> dict:
    """The installed package's version, and the git commit when the code runs from a checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        package = metadata.version("audiofuse-study")
    except metadata.PackageNotFoundError:
        package = None
    if not (repo / ".git").exists():  # an installed package: a git repository around it is not its source
        return {"commit": None, "dirty": None, "package": package}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty, "package": package}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "package": package}
