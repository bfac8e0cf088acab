"""One driver per study: a lock file in the study folder while a command writes to it.

``OUT/.study.lock`` holds the driver's pid, host, command and start time. It is
created atomically (``O_CREAT | O_EXCL``), so of two drivers starting at once
exactly one gets it, and removed when the driver exits. A lock whose process is
gone (same host, pid not running, or running but started after the lock was
taken: the pid was reused) is stale and taken over; a lock held on another host
cannot be checked from here, and the message says how to remove it by hand.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LOCK_NAME", "StudyLocked", "study_lock", "lock_holder"]

LOCK_NAME = ".study.lock"


class StudyLocked(RuntimeError):
    """Another driver holds the study's lock; the message names it."""


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if it does not run here.

    Linux's /proc gives the start in clock ticks after boot; elsewhere only existence is known.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, owned by another user
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0  # running, start unknown


def lock_holder(out: Path) -> dict | None:
    """The live holder of ``out``'s lock (pid, host, command, started, started_unix), or None when free or stale."""
    path = Path(out) / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # half-written or damaged: nobody can be holding it sensibly
    if holder.get("host") != socket.gethostname():
        return holder
    started = _process_start(int(holder.get("pid", -1)))
    if started is None or started > holder.get("started_unix", 0) + 1:
        return None  # the process is gone, or the pid now belongs to a later process
    return holder


def _describe(holder: dict, path: Path) -> str:
    where = "here" if holder.get("host") == socket.gethostname() else f"on host {holder.get('host')}"
    text = f"`{holder.get('command')}` (pid {holder.get('pid')} {where}, since {holder.get('started')})"
    if holder.get("host") != socket.gethostname():
        text += f"; if that driver no longer runs, delete {path}"
    return text


@contextmanager
def study_lock(out: str | Path, command: str, *, create: bool = True):
    """Hold ``out``'s lock while the block runs; StudyLocked when a live driver holds it.

    ``command`` says what holds it (shown to a second driver). ``create`` makes the folder
    (a new study); without it a missing folder raises FileNotFoundError (a command that
    rewrites an existing study).
    """
    out = Path(out)
    if not create and not out.is_dir():
        raise FileNotFoundError(f"study folder {out} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started_unix": time.time(),
    }
    for _ in range(3):  # a stale lock is removed and creation retried; another driver may win the race
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = lock_holder(out)
            if holder is not None:
                raise StudyLocked(
                    f"{out} is in use by {_describe(holder, path)}: wait for it to finish; "
                    "reading commands (analysis report --out OTHER_FOLDER) can run beside it"
                ) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        break
    else:
        raise StudyLocked(f"{out}: could not take {path} (another driver keeps taking it)")
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == mine["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass
