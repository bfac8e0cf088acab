"""Faults at the edges: damaged cache entries, exhausted disks, two drivers on one study."""

from __future__ import annotations

import json
import logging
import sqlite3

import numpy as np
import pytest

from study.cache import FeatureCache, extract_features
from study.data import __main__ as data_cli
from study.data.audio import open_probe_index
from study.features import get_profile
from tests.test_features import _table

PROFILE = dict(image_size=32, windows="all", window_s=2.0)


def _entries(cache: FeatureCache, profile) -> list:
    return sorted((cache.root / profile.key()).glob("??/*.npz"))


def _fresh(tmp_path, name="cache"):
    table = _table(tmp_path)
    profile = get_profile("native", **PROFILE)
    cache = FeatureCache(tmp_path / name)
    first = extract_features(table, profile, cache=cache, n_jobs=1, progress=False)
    return table, profile, cache, first


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "empty"])
def test_a_damaged_item_is_named_removed_and_recomputed(tmp_path, caplog, damage):
    table, profile, cache, first = _fresh(tmp_path)
    for pack in (cache.root / profile.key() / "packs").iterdir():  # make the run read the items
        for path in pack.iterdir():
            path.unlink()
        pack.rmdir()
    entry = _entries(cache, profile)[2]
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":  # inside the stored arrays: only zip's CRC-32 notices
        middle = len(data) // 2
        entry.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    else:
        entry.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="study.cache"):
        again = extract_features(table, profile, cache=FeatureCache(cache.root), n_jobs=1, progress=False)
    assert again.stats["repaired"] == 1 and again.stats["computed"] == 1 and again.stats["cached"] == 5
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith(f"feature cache: {entry} is damaged (") and message.endswith(
        "); removed, it will be recomputed"
    )
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.waves, first.waves)
    assert (
        extract_features(table, profile, cache=FeatureCache(cache.root), n_jobs=1, progress=False).stats["repaired"]
        == 0
    )  # repaired for good


def test_a_damaged_pack_falls_back_to_the_items_and_is_packed_again(tmp_path, caplog):
    table, profile, cache, first = _fresh(tmp_path)
    (pack,) = (cache.root / profile.key() / "packs").iterdir()
    images = pack / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="study.cache"):
        again = extract_features(table, profile, cache=FeatureCache(cache.root), n_jobs=1, progress=False)
    assert again.stats == {**again.stats, "repaired": 1, "computed": 0, "cached": 6, "pack": False}
    assert f"feature cache: {pack} is damaged" in caplog.text and "images.npy holds" in caplog.text
    np.testing.assert_array_equal(again.images, first.images)
    assert extract_features(table, profile, cache=FeatureCache(cache.root), n_jobs=1, progress=False).stats["pack"]


def test_perturbed_feature_entries_are_checked_too(tmp_path, caplog):
    table = _table(tmp_path)
    profile = get_profile("native", **PROFILE)
    cache = FeatureCache(tmp_path / "cache")

    def louder(wave, rate):
        return wave * 2

    options = dict(transform=louder, transform_key="louder@1", n_jobs=1, progress=False)
    first = extract_features(table, profile, cache=cache, **options)
    for pack in (cache.root / profile.key() / "packs").iterdir():
        for path in pack.iterdir():
            path.unlink()
        pack.rmdir()
    entry = _entries(cache, profile)[0]
    entry.write_bytes(entry.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="study.cache"):
        again = extract_features(table, profile, cache=FeatureCache(cache.root), **options)
    assert again.stats["repaired"] == 1 and str(entry) in caplog.text
    np.testing.assert_array_equal(again.images, first.images)


def test_a_damaged_probe_index_is_rebuilt(tmp_path, caplog):
    location = tmp_path / "audio_probes.sqlite"
    conn = open_probe_index(location)
    conn.execute("INSERT INTO probes VALUES ('a.wav', 1, 2, 2000, 4000, 1, 'x')")
    conn.commit()
    conn.close()
    location.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="study.data.audio"):
        conn = open_probe_index(location)
    assert f"audio probe index: {location} is damaged" in caplog.text
    assert conn.execute("SELECT COUNT(*) FROM probes").fetchone()[0] == 0  # empty again, and usable
    conn.execute("INSERT INTO probes VALUES ('a.wav', 1, 2, 2000, 4000, 1, 'x')")
    conn.close()
    assert sqlite3.connect(location).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_cache_verify_and_clean_commands(tmp_path, capsys):
    table, profile, cache, _ = _fresh(tmp_path)
    extract_features(table, get_profile("native", image_size=16), cache=cache, n_jobs=1, progress=False)
    entry = _entries(cache, profile)[1]
    entry.write_bytes(entry.read_bytes()[:-7])
    (pack,) = (cache.root / profile.key() / "packs").iterdir()
    (pack / "waves.npy").write_bytes((pack / "waves.npy").read_bytes()[:-3] + b"abc")  # same size, other bytes
    assert data_cli.main(["cache", "verify", "--cache", str(cache.root)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith(profile.key()))
    assert line.startswith(f"{profile.key()} (native): 5 items") and ", 0 packs" in line and "1 damaged" not in line
    assert f"  damaged: {entry}" in out and f"  damaged: {pack}" in out
    assert "2 profile folder(s)" in out and "2 damaged entries removed (recomputed when next needed)" in out
    assert not entry.exists() and not pack.exists()
    assert data_cli.main(["cache", "verify", "--cache", str(cache.root)]) == 0
    assert "0 damaged entries removed" in capsys.readouterr().out
    size = sum(p.stat().st_size for p in (cache.root / profile.key()).rglob("*") if p.is_file())
    assert data_cli.main(["cache", "clean", "--profile", profile.key(), "--cache", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert f"{profile.key()} (native): {size / 2**20:,.1f} MB removed" in out
    assert not (cache.root / profile.key()).exists() and len(list(cache.root.iterdir())) == 1
    assert json.loads((next(cache.root.iterdir()) / "profile.json").read_text())["name"] == "native"
