"""Atomic writes: a crash leaves the previous file or the new one, never half of one.

Every file the study and the analysis write goes through :func:`atomic_path`;
the writers return the path written. Text is UTF-8 whatever the locale (the
report's tables hold Δ, ρ, α).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

__all__ = [
    "atomic_path",
    "RESOURCE_ERRNOS",
    "describe_os_error",
    "write_json",
    "write_parquet",
    "write_text",
    "print_resource_error",
]


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    The temporary file is created with the process umask's permissions (as
    ``open`` would create ``target``), not mkstemp's owner-only 0600, so a
    shared results folder stays readable.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        if error.errno in RESOURCE_ERRNOS and error.filename != str(target):
            # name the file the caller meant, not the temporary one (or none, for a failed write())
            raise OSError(error.errno, os.strerror(error.errno), str(target)) from error
        raise


# disk full, quota, read-only file system, no permission: the user must free or change something
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def describe_os_error(error: OSError) -> str | None:
    """One line for an exhausted or forbidden output (disk full, read-only, no permission), else None."""
    if error.errno not in RESOURCE_ERRNOS:
        return None
    path = Path(error.filename) if error.filename else None
    where = f" writing {path}" if path else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if error.errno == errno.ENOSPC else "the disk quota is used up"
        free = (
            f"; {shutil.disk_usage(path.parent).free / 2**20:,.0f} MB free there"
            if path and path.parent.exists()
            else ""
        )
        advice = (
            "free space there (old studies under results/, the feature cache: python -m study.data cache clean) "
            "or write elsewhere (--out; the feature cache: --cache or AUDIOFUSE_CACHE)"
        )
    else:
        what = "the file system is read-only" if error.errno == errno.EROFS else "permission denied"
        free = ""
        advice = "write where you can (--out; the feature cache: --cache or AUDIOFUSE_CACHE), or fix the permissions"
    return f"{what}{where}{free}: {advice}; files written before are intact (every write is atomic)"


def write_json(target: str | Path, obj) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_jsonable, allow_nan=True) + "\n", encoding="utf-8")
    return Path(target)


def write_parquet(target: str | Path, frame: pd.DataFrame) -> Path:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def print_resource_error(error: OSError) -> int:
    """For a command line: print an exhausted or forbidden output's one line and return exit status 2;
    any other OSError is raised again (with its traceback: it is a bug or a different problem)."""
    message = describe_os_error(error)
    if message is None:
        raise error
    print(f"error: {message}", file=sys.stderr)
    return 2
