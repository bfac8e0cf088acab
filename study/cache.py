"""Feature cache keyed by audio content and feature settings.

Each item (a recording or a cycle) is stored once as ``<root>/<profile key>/<k[:2]>/<k>.npz``
where ``k`` hashes the file's bytes, the segment bounds, the profile and any
perturbation. A whole table's features are also kept as one memory-mappable
pack (``<root>/<profile key>/packs/<hash of the item keys>/``), so loading a
dataset seen before costs one file open, not one per recording; items stay
shared between tables (a subset, a new split) that overlap. Writes go to a
temporary file or folder renamed into place, so processes filling the cache at
once never see a half-written entry.

Entries are checked when read, since a disk hiccup or a cache copied while being
written can still leave a damaged file: an item's ``.npz`` carries zip's CRC-32
of each array (checked as it is read) and must hold float16 arrays of matching
shapes; a pack holds ``manifest.json`` with each file's size (checked on every
load) and BLAKE2b digest (checked by ``python -m study.data cache verify``). A
damaged entry is reported with its path, removed and recomputed, and
``FeatureSet.stats["repaired"]`` counts them.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .data.audio import cache_dir, read_audio
from .features import FeatureProfile, compute_features
from .io import atomic_path
from .registry import load_plugins, loaded_plugins

__all__ = [
    "STORE_DTYPE",
    "PACK_FILES",
    "FeatureSet",
    "FeatureCache",
    "read_item",
    "read_pack",
    "verify_cache",
    "clean_cache",
    "extract_features",
]

STORE_DTYPE = np.float16  # halves memory and disk; images in [0, 1] and normalised waves lose < 1e-3
PACK_FILES = ("images", "waves", "counts")
# what a damaged .npz or .npy raises while numpy reads it
_DAMAGED = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
log = logging.getLogger(__name__)

# (waveform, sample_rate) -> waveform at the same rate; applied before feature extraction.
Transform = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class FeatureSet:
    """Features of a table's items, windows stacked along axis 0.

    images : (n_windows, H, W) float16 log-Mel images in [0, 1]
    waves : (n_windows, window_samples) float16 waveforms
    item_index : (n_windows,) int64, the table row each window belongs to
    table : the recording table, index 0..n_items-1
    """

    table: pd.DataFrame
    images: np.ndarray
    waves: np.ndarray
    item_index: np.ndarray
    profile: FeatureProfile
    stats: dict = field(default_factory=dict)

    def select(self, rows: np.ndarray | pd.Series) -> FeatureSet:
        """The items at boolean mask or positions ``rows`` of the table, re-indexed from 0."""
        rows = np.flatnonzero(np.asarray(rows)) if np.asarray(rows).dtype == bool else np.asarray(rows)
        keep = np.isin(self.item_index, rows)
        remap = np.full(len(self.table), -1, dtype=np.int64)
        remap[rows] = np.arange(len(rows))
        return FeatureSet(
            self.table.iloc[rows].reset_index(drop=True),
            self.images[keep],
            self.waves[keep],
            remap[self.item_index[keep]],
            self.profile,
            dict(self.stats),
        )


class FeatureCache:
    """Content-addressed store of per-item features for one profile (and perturbation)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self.repaired = 0  # damaged entries found (and removed) by this object

    def item_key(self, row, profile: FeatureProfile, transform_key: str = "") -> str:
        text = f"{row.audio_hash}|{row.start_s:.6f}|{row.end_s:.6f}|{profile.key()}|{transform_key}"
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def path(self, key: str, profile: FeatureProfile) -> Path:
        return self.root / profile.key() / key[:2] / f"{key}.npz"

    def load(self, key: str, profile: FeatureProfile) -> tuple[np.ndarray, np.ndarray] | None:
        """The item's (images, waves), or None when absent; a damaged entry is removed (see :meth:`repair`)."""
        path = self.path(key, profile)
        try:
            return read_item(path)
        except FileNotFoundError:
            return None
        except _DAMAGED as error:
            self.repair(path, error)
            return None

    def repair(self, path: Path, error: Exception) -> None:
        """Report a damaged entry (file or pack folder) with its path, remove it and count it."""
        log.warning("feature cache: %s is damaged (%s); removed, it will be recomputed", path, _reason(error))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        self.repaired += 1

    def pack_path(self, keys: list[str], profile: FeatureProfile) -> Path:
        digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()
        return self.root / profile.key() / "packs" / digest

    def load_pack(self, keys: list[str], profile: FeatureProfile) -> tuple[np.ndarray, ...] | None:
        """(images, waves, windows per item) of a table seen before, memory-mapped, or None."""
        folder = self.pack_path(keys, profile)
        if not folder.is_dir():
            return None
        if not (folder / "manifest.json").is_file():  # packed before packs had a manifest: packed again
            shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            return read_pack(folder, len(keys))
        except _DAMAGED as error:
            self.repair(folder, error)
            return None

    def save_pack(
        self, keys: list[str], profile: FeatureProfile, images: np.ndarray, waves: np.ndarray, counts: np.ndarray
    ) -> None:
        target = self.pack_path(keys, profile)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, suffix=".tmp"))
        try:
            for name, array in zip(PACK_FILES, (images, waves, counts), strict=True):
                np.save(tmp / f"{name}.npy", array)
            manifest = {
                name: {"bytes": (tmp / f"{name}.npy").stat().st_size, "blake2b": _digest(tmp / f"{name}.npy")}
                for name in PACK_FILES
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest))
            os.rename(tmp, target)
            described = target.parent.parent / "profile.json"  # names the profile folder for `cache verify`
            if not described.is_file():
                with atomic_path(described) as path:
                    path.write_text(json.dumps({"name": profile.name, "settings": dataclasses.asdict(profile)}))
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same pack first
            if not target.is_dir():
                raise

    def save(self, key: str, profile: FeatureProfile, images: np.ndarray, waves: np.ndarray) -> None:
        with atomic_path(self.path(key, profile)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, images=images.astype(STORE_DTYPE), waves=waves.astype(STORE_DTYPE))


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "blake2b").hexdigest()


def read_item(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An item entry's (images (n, H, W), waves (n, samples)), float16; raises if it is damaged.

    Reading each array whole makes zipfile check its CRC-32; FileNotFoundError when absent.
    """
    with np.load(path) as stored:
        images, waves = stored["images"], stored["waves"]
    if images.dtype != STORE_DTYPE or waves.dtype != STORE_DTYPE or images.ndim != 3 or waves.ndim != 2:
        raise ValueError(f"unexpected arrays images {images.dtype} {images.shape}, waves {waves.dtype} {waves.shape}")
    if len(images) != len(waves) or len(images) == 0:
        raise ValueError(f"{len(images)} images but {len(waves)} waves")
    return images, waves


def read_pack(folder: Path, n_items: int | None = None, *, full: bool = False) -> tuple[np.ndarray, ...]:
    """A pack's (images, waves, counts), memory-mapped; raises ValueError if it is damaged.

    Every load checks the files' sizes against the manifest and the shapes
    against each other (cheap); ``full`` also checks each file's digest (reads it all).
    """
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in PACK_FILES:
        path = folder / f"{name}.npy"
        size = path.stat().st_size
        if size != manifest[name]["bytes"]:
            raise ValueError(f"{path.name} holds {size} bytes, the manifest says {manifest[name]['bytes']}")
        if full and _digest(path) != manifest[name]["blake2b"]:
            raise ValueError(f"{path.name} does not match its BLAKE2b digest")
    images, waves, counts = (np.load(folder / f"{name}.npy", mmap_mode="r") for name in PACK_FILES)
    if n_items is not None and len(counts) != n_items:
        raise ValueError(f"{len(counts)} items packed, {n_items} expected")
    if not int(counts.sum()) == len(images) == len(waves):
        raise ValueError(f"counts add up to {int(counts.sum())} windows, images {len(images)}, waves {len(waves)}")
    return images, waves, counts


def _profile_folders(root: Path, profile: str | None) -> list[Path]:
    """Profile folders under ``root``: all, or those whose key or recorded profile name is ``profile``."""
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    return [p for p in folders if profile is None or profile in (p.name, _profile_name(p))]


def _profile_name(folder: Path) -> str:
    try:
        return json.loads((folder / "profile.json").read_text())["name"]
    except (OSError, ValueError, KeyError):
        return "?"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def verify_cache(root: str | Path, profile: str | None = None) -> list[dict]:
    """Read every entry of the cache under ``root`` (the folders of one profile, by name or key, or all) and check it fully.

    Item entries are read whole (zip CRC-32, dtypes, shapes); packs have their sizes and
    BLAKE2b digests checked against their manifest. A damaged entry is reported with its
    path and removed (it is recomputed when next needed); a pack written before packs had a
    manifest is removed too (it is packed again from its items when next loaded). Returns one
    dict per profile folder: profile (key), name, items, item_bytes, packs, pack_bytes,
    legacy_packs, damaged (paths).
    """
    cache = FeatureCache(root)
    report = []
    for folder in _profile_folders(cache.root, profile):
        row = {"profile": folder.name, "name": _profile_name(folder), "items": 0, "item_bytes": 0}
        row.update(packs=0, pack_bytes=0, damaged=[])
        for path in sorted(folder.glob("??/*.npz")):
            try:
                read_item(path)
                row["items"] += 1
                row["item_bytes"] += path.stat().st_size
            except _DAMAGED as error:
                cache.repair(path, error)
                row["damaged"].append(str(path))
        row["legacy_packs"] = 0
        for pack in sorted(p for p in (folder / "packs").glob("*") if p.is_dir() and not p.name.endswith(".tmp")):
            if not (pack / "manifest.json").is_file():  # packed before packs had a manifest: as load_pack does
                shutil.rmtree(pack, ignore_errors=True)
                row["legacy_packs"] += 1
                continue
            try:
                read_pack(pack, full=True)
                row["packs"] += 1
                row["pack_bytes"] += _size(pack)
            except _DAMAGED as error:
                cache.repair(pack, error)
                row["damaged"].append(str(pack))
        report.append(row)
    return report


def clean_cache(root: str | Path, profile: str | None = None) -> list[dict]:
    """Delete the cache under ``root`` (one profile's folders, by name or key, or all); returns profile, name, bytes."""
    removed = []
    for folder in _profile_folders(Path(root), profile):
        removed.append({"profile": folder.name, "name": _profile_name(folder), "bytes": _size(folder)})
        shutil.rmtree(folder)
    return removed


def _compute_item(args) -> tuple[int, np.ndarray, np.ndarray]:
    position, path, start_s, end_s, profile, transform, key, cache_root = args
    wave, sr = read_audio(path, start_s, end_s)
    if transform is not None:
        wave = transform(wave, sr)
    images, waves = compute_features(wave, sr, profile)
    FeatureCache(cache_root).save(key, profile, images, waves)
    return position, images.astype(STORE_DTYPE), waves.astype(STORE_DTYPE)


def _init_worker(plugins: list[str]) -> None:
    # Each worker is one process on one core: library thread pools would only fight.
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    load_plugins(plugins)  # a plugin's perturbations are applied here


_pool: tuple[int, list[str], ProcessPoolExecutor] | None = None


def _worker_pool(n_jobs: int) -> ProcessPoolExecutor:
    """One pool of ``n_jobs`` feature workers per process, reused by every call: a spawned worker
    pays for importing librosa and compiling its numba kernels (seconds), which a robustness suite
    calling this once per evaluation set and perturbation would otherwise pay dozens of times.
    Its workers load the plugins this process loaded (a new pool when there are more)."""
    global _pool
    plugins = loaded_plugins()
    if _pool is None or _pool[:2] != (n_jobs, plugins):
        _close_pool()
        context = get_context("spawn")
        _pool = (n_jobs, plugins, ProcessPoolExecutor(n_jobs, context, initializer=_init_worker, initargs=(plugins,)))
    return _pool[2]


def _close_pool() -> None:
    global _pool
    if _pool is not None:
        _pool[2].shutdown(cancel_futures=True)
        _pool = None


atexit.register(_close_pool)


def extract_features(
    table: pd.DataFrame,
    profile: FeatureProfile,
    *,
    cache: FeatureCache | None = None,
    transform: Transform | None = None,
    transform_key: str = "",
    n_jobs: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Features of every row of ``table``, from the cache where present, computed (and cached) otherwise.

    ``transform`` (with a ``transform_key`` naming it, part of the cache key) is
    applied to each decoded waveform first: the robustness perturbations use it.
    ``n_jobs`` worker processes compute missing items (default: all cores).
    """
    if transform is not None and not transform_key:
        raise ValueError("a transform needs a transform_key naming it, or cached features would be mixed up")
    cache = cache or FeatureCache()
    repaired_before = cache.repaired
    table = table.reset_index(drop=True)
    started = time.perf_counter()
    keys = [cache.item_key(row, profile, transform_key) for row in table.itertuples(index=False)]
    packed = cache.load_pack(keys, profile) if len(table) else None
    if packed is not None:
        images, waves, counts = packed
        stats = {
            "items": len(table),
            "cached": len(table),
            "computed": 0,
            "repaired": cache.repaired - repaired_before,
            "windows": int(counts.sum()),
            "seconds": round(time.perf_counter() - started, 3),
            "pack": True,
        }
        return FeatureSet(table, images, waves, np.repeat(np.arange(len(table)), counts), profile, stats)
    images: list = [None] * len(table)
    waves: list = [None] * len(table)
    missing = []
    bars = progress and sys.stderr.isatty()  # redrawn bars belong on a terminal, not in a log
    for position, key in enumerate(tqdm(keys, desc=f"{desc}: cached", disable=not bars, leave=False)):
        stored = cache.load(key, profile)
        if stored is None:
            missing.append(position)
        else:
            images[position], waves[position] = stored
    tasks = [
        (
            p,
            table.at[p, "path"],
            float(table.at[p, "start_s"]),
            float(table.at[p, "end_s"]),
            profile,
            transform,
            keys[p],
            str(cache.root),
        )
        for p in missing
    ]
    n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(tasks)))
    bar = tqdm(total=len(tasks), desc=f"{desc}: computing", disable=not bars or not tasks)
    if n_jobs == 1:
        results = map(_compute_item, tasks)
    else:
        results = _worker_pool(n_jobs).map(_compute_item, tasks, chunksize=max(1, min(32, len(tasks) // (4 * n_jobs))))
    try:
        for position, item_images, item_waves in results:
            images[position], waves[position] = item_images, item_waves
            bar.update()
    except BrokenProcessPool:
        _close_pool()  # a worker died: the next call starts a fresh pool
        raise
    finally:
        bar.close()
    counts = np.array([len(w) for w in waves], dtype=np.int64)
    if len(table):
        images, waves = np.concatenate(images), np.concatenate(waves)
        cache.save_pack(keys, profile, images, waves, counts)
    else:
        images = np.zeros((0, *profile.image_size), STORE_DTYPE)
        waves = np.zeros((0, profile.window_samples), STORE_DTYPE)
    stats = {
        "items": len(table),
        "cached": len(table) - len(missing),
        "computed": len(missing),
        "repaired": cache.repaired - repaired_before,
        "windows": int(counts.sum()),
        "seconds": round(time.perf_counter() - started, 3),
        "pack": False,
    }
    return FeatureSet(table, images, waves, np.repeat(np.arange(len(table)), counts), profile, stats)
