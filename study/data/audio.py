"""Decoding and validating audio files.

Every reader in the project goes through :func:`read_audio`, so every bad file
fails with the same kind of message: the file's path and the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["DataError", "audio_info", "read_audio", "cache_dir", "probe_audio", "open_probe_index"]

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem with an input file or table; the message names the file."""


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file (rate, frames, channels, subtype) without decoding it.

    Raises DataError for a missing, empty, unreadable or zero-length file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types for corrupt headers
        raise DataError(f"{path}: not a readable audio file ({exc})") from exc
    if info.frames <= 0:
        raise DataError(f"{path}: zero-length audio (no samples)")
    missing = _wav_missing_bytes(path)
    if missing > 0:
        raise DataError(f"{path}: truncated WAV: the data chunk is {missing} bytes shorter than its header says")
    if info.samplerate <= 0:
        raise DataError(f"{path}: invalid sample rate {info.samplerate}")
    return info


def read_audio(path: str | Path, start_s: float = 0.0, end_s: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a segment of an audio file to a mono float32 waveform.

    Parameters
    ----------
    path : audio file (any format libsndfile reads: 8/16/24/32-bit PCM, float WAV, FLAC, ...).
    start_s, end_s : segment bounds in seconds; ``end_s=None`` reads to the end.

    Returns
    -------
    wave : float32 array of shape (n_samples,), integer PCM scaled to [-1, 1);
        multichannel audio is averaged to mono.
    sample_rate : Hz.

    Raises DataError naming the file for missing, empty, corrupt or truncated
    files, zero-length segments and non-finite samples.
    """
    path = Path(path)
    info = audio_info(path)
    sr = info.samplerate
    start = int(round(start_s * sr))
    stop = info.frames if end_s is None else min(int(round(end_s * sr)), info.frames)
    if start < 0 or start >= stop:
        raise DataError(f"{path}: empty segment [{start_s}, {end_s}] s in a {info.frames / sr:.3f} s recording")
    try:
        data, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot decode audio ({exc})") from exc
    if data.shape[0] < stop - start:
        raise DataError(
            f"{path}: truncated file: header announces {info.frames} frames, only {start + data.shape[0]} could be read"
        )
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise DataError(f"{path}: contains NaN or Inf samples")
    return np.ascontiguousarray(wave, dtype=np.float32), sr


def _wav_missing_bytes(path: Path) -> int:
    """Bytes missing from a RIFF/WAVE data chunk (0 for complete or non-WAV files).

    Written by hand because libsndfile silently shortens a truncated WAV to
    the frames present instead of reporting it.
    """
    with open(path, "rb") as fh:
        header = fh.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        size = path.stat().st_size
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return 0
            chunk_id, chunk_len = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                if chunk_len in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return 0
                return max(0, fh.tell() + chunk_len - size)
            fh.seek(chunk_len + (chunk_len & 1), 1)


def cache_dir() -> Path:
    """Root of the project's caches: $AUDIOFUSE_CACHE, else ~/.cache/audiofuse."""
    return Path(os.environ.get("AUDIOFUSE_CACHE", Path.home() / ".cache" / "audiofuse"))


def _digest(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """BLAKE2b-128 hex digest of a file's bytes: the identity of its audio content."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def probe_audio(path: str | Path) -> tuple[int, int, int, str]:
    """(sample rate, frames, channels, content hash) of a good audio file.

    Raises DataError as :func:`audio_info` does. Results are remembered in an
    SQLite index keyed by (path, size, mtime), as git's index does, so a dataset
    is read in full once, not on every load.
    """
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    index = _probe_index()
    if index is not None:
        row = index.execute(
            "SELECT rate, frames, channels, digest FROM probes WHERE path=? AND size=? AND mtime=?", key
        ).fetchone()
        if row:
            return row
    info = audio_info(path)
    if info.subtype in ("FLOAT", "DOUBLE"):
        read_audio(path)  # only floating-point files can hold NaN/Inf: decode them once to check
    probed = (info.samplerate, info.frames, info.channels, _digest(path))
    if index is not None:
        try:
            with index:
                index.execute("INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, *probed))
        except sqlite3.Error:
            pass  # a busy or read-only index only costs speed
    return probed


_INDEXES: dict[str, sqlite3.Connection | None] = {}


def open_probe_index(location: Path) -> sqlite3.Connection:
    """The probe index at ``location``, created if absent; a damaged one (fails SQLite's quick_check)
    is reported with its path, removed and started afresh (it only saves re-reading audio)."""
    location.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(location, timeout=30)
        problem = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        problem = str(error)
    if problem != "ok":
        conn.close()
        log.warning("audio probe index: %s is damaged (%s); removed, it will be rebuilt", location, problem)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{location}{suffix}").unlink(missing_ok=True)
        conn = sqlite3.connect(location, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS probes (path TEXT, size INTEGER, mtime INTEGER, rate INTEGER, "
        "frames INTEGER, channels INTEGER, digest TEXT, PRIMARY KEY (path, size, mtime))"
    )
    return conn


def _probe_index() -> sqlite3.Connection | None:
    location = cache_dir() / "audio_probes.sqlite"
    if str(location) not in _INDEXES:
        try:
            _INDEXES[str(location)] = open_probe_index(location)
        except (sqlite3.Error, OSError):
            _INDEXES[str(location)] = None  # a read-only cache only costs speed
    return _INDEXES[str(location)]
