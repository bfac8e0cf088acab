"""Faults at the edges: damaged cache entries, exhausted disks, two drivers on one study."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from study import io as study_io
from study.cache import FeatureCache, extract_features
from study.data import __main__ as data_cli
from study.data.audio import open_probe_index
from study.features import get_profile
from study.lock import LOCK_NAME, StudyLocked, lock_holder, study_lock
from tests.test_features import recording_table

PROFILE = dict(image_size=32, windows="all", window_s=2.0)


def _entries(cache: FeatureCache, profile) -> list:
    return sorted((cache.root / profile.key()).glob("??/*.npz"))


def _fresh(tmp_path, name="cache"):
    table = recording_table(tmp_path)
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
    table = recording_table(tmp_path)
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


# --- one driver per study ---------------------------------------------------------------------


def test_a_second_driver_is_refused_and_the_lock_is_released_on_exit(tmp_path):
    out = tmp_path / "study"
    with study_lock(out, "python -m study.run --space smoke") as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(StudyLocked) as refused:
            with study_lock(out, "python -m study.run --space smoke --resume"):
                pass
        message = str(refused.value)
        assert f"{out} is in use by `python -m study.run --space smoke` (pid {os.getpid()} here, since " in message
        assert "analysis report --out OTHER_FOLDER" in message and "\n" not in message
        assert lock_holder(out)["pid"] == os.getpid()
    assert not path.exists() and lock_holder(out) is None
    with pytest.raises(RuntimeError, match="boom"), study_lock(out, "x"):
        raise RuntimeError("boom")
    assert not path.exists()  # released on errors too


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(gone.stdout), "host": socket.gethostname(), "command": "x", "started": "t", "started_unix": 0}
    (out / LOCK_NAME).write_text(json.dumps(dead))
    assert lock_holder(out) is None
    with study_lock(out, "the new driver") as path:
        assert json.loads(path.read_text())["command"] == "the new driver"
    # the pid of a live process that started after the lock was taken: reused, so stale too
    reused = {**dead, "pid": os.getpid(), "started_unix": time.time() + 3600 * 24 * 365 * -30}
    (out / LOCK_NAME).write_text(json.dumps(reused))
    assert lock_holder(out) is None
    # another host's lock cannot be checked from here: refused, with how to remove it
    elsewhere = {**dead, "host": "node-7", "started_unix": time.time()}
    (out / LOCK_NAME).write_text(json.dumps(elsewhere))
    with pytest.raises(StudyLocked, match=f"on host node-7.*delete {out / LOCK_NAME}"):
        with study_lock(out, "y"):
            pass


def test_commands_that_write_a_study_are_refused_while_a_driver_holds_it(tmp_path, capsys):
    from analysis.__main__ import main as analysis_main
    from study.config import load_space
    from study.evaluate import main as evaluate_main
    from study.run import run_study
    from tests.test_report import binormal, write_study

    folder = write_study(
        tmp_path / "study",
        {"fusion": binormal(2.0), "waveform": binormal(1.0)},
        axis="model.architecture",
        baseline="fusion",
    )
    holder = subprocess.Popen(  # another process, as a driver would be
        [
            sys.executable,
            "-c",
            "import sys, time; from study.lock import study_lock\n"
            "with study_lock(sys.argv[1], 'python -m study.run --space branches'):\n"
            "    print('locked', flush=True); time.sleep(120)",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StudyLocked, match=f"in use by `python -m study.run --space branches` \\(pid {holder.pid} "):
            run_study(load_space("smoke"), out=folder, resume=True, report=False, verbose=0)
        for command in (["report", str(folder)], ["robustness", str(folder)]):
            assert analysis_main([*command, "--resamples", "200", "--no-plots"]) == 2
            error = capsys.readouterr().err
            assert error.startswith(f"error: {folder} is in use by `python -m study.run --space branches`")
            assert error.count("\n") == 1
        assert evaluate_main([str(folder), "--perturb", "[{name: band_limit, severities: [4]}]"]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {folder} is in use by `python -m study.run --space branches`")
        # reading the study into another folder runs beside the driver
        assert analysis_main(["report", str(folder), "--out", str(tmp_path / "copy"), "--resamples", "200"]) == 0
        assert (tmp_path / "copy" / "report.md").is_file() and (tmp_path / "copy" / "tables" / "main.csv").is_file()
        assert not (folder / "report.md").exists()
    finally:
        holder.kill()
        holder.wait()
    # the killed holder left its lock behind: stale, so taken over
    assert analysis_main(["report", str(folder), "--resamples", "200", "--no-plots"]) == 0
    assert (folder / "report.md").is_file() and lock_holder(folder) is None


# --- exhausted resources -------------------------------------------------------------------


def _failing_replace(monkeypatch, error_number: int, after: int):
    """os.replace as study.io calls it, failing with ``error_number`` after ``after`` successful calls."""
    calls = []
    real = os.replace

    def replace(source, target):
        calls.append(target)
        if len(calls) > after:
            raise OSError(error_number, os.strerror(error_number))
        return real(source, target)

    monkeypatch.setattr(study_io.os, "replace", replace)
    return calls


@pytest.mark.parametrize(
    "error_number, says", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "the file system is read-only")]
)
def test_a_full_or_read_only_disk_ends_the_report_in_one_line_and_keeps_what_was_written(
    tmp_path, capsys, monkeypatch, error_number, says
):
    from analysis.__main__ import main as analysis_main
    from tests.test_report import binormal, write_study

    folder = write_study(
        tmp_path / "study",
        {"fusion": binormal(2.0), "waveform": binormal(1.0)},
        axis="model.architecture",
        baseline="fusion",
    )
    assert analysis_main(["report", str(folder), "--resamples", "200", "--no-plots"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    calls = _failing_replace(monkeypatch, error_number, after=3)
    assert analysis_main(["report", str(folder), "--resamples", "300", "--no-plots"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {says}")
    assert f" writing {calls[-1]}" in error and "files written before are intact" in error
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert set(after) == set(before)  # no temporary file left behind, nothing lost
    changed = [p for p in before if before[p] != after[p]]
    assert set(changed) <= set(map(Path, calls[:3]))  # only the files replaced whole before the failure


def test_a_full_disk_while_filling_the_feature_cache_is_one_line(tmp_path, capsys, monkeypatch):
    table = recording_table(tmp_path)
    _failing_replace(monkeypatch, errno.ENOSPC, after=2)
    root = tmp_path / "physionet"
    code = data_cli.main(
        [
            "features",
            "physionet2016",
            str(root),
            "--profile",
            "native",
            "--jobs",
            "1",
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 2 and len(table) == 6
    printed = capsys.readouterr().err
    error = printed.rstrip("\n").split("\n")[-1]  # after the progress bars
    assert error.startswith("error: the disk is full writing ") and str(tmp_path / "cache") in error
    assert "python -m study.data cache clean" in error and "Traceback" not in printed
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_a_trials_data_counts_the_cache_entries_it_repaired(synth_root, capsys):
    from study.config import load_space
    from study.trial_data import prepare_data

    config = load_space("smoke").trial_configs({"model.architecture": "waveform", "seed": 0})[0]
    prepare_data(config, synth_root, progress=False)
    folder = FeatureCache().root / config.features.key()
    for pack in (folder / "packs").iterdir():  # the packs go, so the items are read
        for path in pack.iterdir():
            path.unlink()
        pack.rmdir()
    damaged = sorted(folder.glob("??/*.npz"))  # other tests' items of this profile too: only this trial's are read
    for path in damaged:
        path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    data = prepare_data(config, synth_root, progress=False)
    repaired = sum(path.stat().st_size > 100 for path in damaged)  # read, found damaged, recomputed
    assert data.info["cache_repaired"] == repaired > 0
    assert f"feature cache: {repaired} damaged entries removed and recomputed (paths above)" in capsys.readouterr().out
    assert prepare_data(config, synth_root, progress=False).info["cache_repaired"] == 0
