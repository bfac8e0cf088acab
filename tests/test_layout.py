"""`python -m study.data layout`: official downloads laid out where the loaders read them.

The archives are built here, shaped like the official downloads, from the real data that the
``real_root`` fixture provides (skipped when it is absent) or from a few synthetic recordings.
Archives are stored uncompressed (ZIP_STORED) to keep building them fast.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from study.data import load_dataset
from study.data.layout import LayoutError, layout_dataset

REPO = Path(__file__).resolve().parents[1]
PASCAL_FILES = ["set_a.csv", "set_b.csv", "set_a_timing.csv"]


def _zip(path: Path, root: Path, names: list[str], prefix: str = "") -> Path:
    """Zip files and folders of ``root`` (by their path relative to it), under ``prefix`` in the archive."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            item = root / name
            files = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
            for f in files:
                zf.write(f, prefix + f.relative_to(root).as_posix())
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.data", "layout", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _wav_bytes(seconds: float = 2.0, rate: int = 2000, seed: int = 0) -> bytes:
    wave = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _synthetic_physionet(prefix: str = "") -> dict[str, bytes]:
    """Two training-c records and a validation/ copy of one, as archive members."""
    members = {
        f"{prefix}training-c/REFERENCE.csv": b"c0001,1\nc0002,-1\n",
        f"{prefix}training-c/c0001.wav": _wav_bytes(seed=1),
        f"{prefix}training-c/c0002.wav": _wav_bytes(seed=2),
        f"{prefix}validation/REFERENCE.csv": b"c0001,1\n",
    }
    members[f"{prefix}validation/c0001.wav"] = members[f"{prefix}training-c/c0001.wav"]
    return members


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def _write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path


def _pascal_subset(real_root: Path, per_set: int = 3) -> list[str]:
    """The first ``per_set`` labelled files of set_a and of set_b (unlabelled files are named *unlabelledtest*)."""
    chosen = []
    for set_name in ("set_a", "set_b"):
        files = sorted(p.name for p in (real_root / "pascal" / set_name).iterdir() if "unlabelled" not in p.name)
        chosen += [f"{set_name}/{name}" for name in files[:per_set]]
    return chosen


def _leftovers(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.startswith(".")) if data.exists() else []


# ---------------------------------------------------------------------------------------------------------------
# synthetic archives: no real data needed


def test_tar_gz_with_a_top_folder_is_laid_out(tmp_path):
    source = _write_tar_gz(tmp_path / "training.tar.gz", _synthetic_physionet(prefix="./download/"))
    with pytest.raises(LayoutError, match="incomplete source.*training-a: folder missing.*--partial"):
        layout_dataset("physionet2016", source, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    report = layout_dataset("physionet2016", source, tmp_path / "data", partial=True)
    root = tmp_path / "data" / "physionet2016"
    assert sorted(p.name for p in (root / "training-c").iterdir()) == ["REFERENCE.csv", "c0001.wav", "c0002.wav"]
    assert (root / "validation" / "c0001.wav").is_file()
    assert report.recordings == 2 and report.splits == {"train": 1, "test": 1}
    assert f"sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}" in report.lines[0]
    assert "training-c: 2 of 31 records" in "\n".join(report.lines)
    assert _leftovers(tmp_path / "data") == []


def test_member_outside_the_archive_is_refused(tmp_path):
    members = {**_synthetic_physionet(), "../../evil.wav": b"x"}
    source = _write_zip(tmp_path / "training.zip", members)
    with pytest.raises(
        LayoutError, match=r"training\.zip: member '\.\./\.\./evil\.wav' has an absolute path or '\.\.'"
    ):
        layout_dataset("physionet2016", source, tmp_path / "data", partial=True)
    assert not (tmp_path / "data").exists() and not (tmp_path / "evil.wav").exists()


def test_corrupt_member_is_refused_and_nothing_is_left(tmp_path):
    source = _write_zip(tmp_path / "training.zip", _synthetic_physionet())
    content = bytearray(source.read_bytes())
    where = bytes(content).index(_wav_bytes(seed=2)[:64]) + 1000  # inside c0002.wav's stored samples
    content[where] ^= 0xFF
    source.write_bytes(bytes(content))
    with pytest.raises(LayoutError, match=r"training\.zip: not a readable zip archive \(Bad CRC-32.*download it again"):
        layout_dataset("physionet2016", source, tmp_path / "data", partial=True)
    assert not (tmp_path / "data" / "physionet2016").exists()
    assert _leftovers(tmp_path / "data") == []


def test_a_layout_the_loader_refuses_leaves_data_as_it_was(tmp_path):
    members = _synthetic_physionet()
    members["training-c/REFERENCE.csv"] = b"c0001,1\nc0002,7\n"  # a label the loader does not know
    source = _write_zip(tmp_path / "training.zip", members)
    data = tmp_path / "data"
    old = data / "physionet2016" / "training-c" / "REFERENCE.csv"
    old.parent.mkdir(parents=True)
    old.write_text("c0001,-1\n")
    with pytest.raises(LayoutError, match=r"the laid-out files do not load \(.*unknown label '7'.*left as it was"):
        layout_dataset("physionet2016", source, data, partial=True, force=True)
    assert old.read_text() == "c0001,-1\n"
    assert sorted(p.name for p in data.iterdir()) == ["physionet2016"]


def test_truncated_tar_gz_is_refused(tmp_path):
    source = _write_tar_gz(tmp_path / "training.tar.gz", _synthetic_physionet())
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(LayoutError, match=r"training\.tar\.gz: not a readable tar archive .*truncated or damaged"):
        layout_dataset("physionet2016", source, tmp_path / "data", partial=True)
    assert not (tmp_path / "data" / "physionet2016").exists()


# ---------------------------------------------------------------------------------------------------------------
# real data, small subsets (fast)


@pytest.mark.real_data
def test_physionet_one_training_folder(real_root, tmp_path):
    phys = real_root / "physionet2016"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _zip(downloads / "training.zip", phys, ["training-c"])
    _zip(downloads / "validation.zip", phys, ["validation"])
    data = tmp_path / "data"
    with pytest.raises(LayoutError) as refused:
        layout_dataset("physionet2016", downloads, data)
    message = str(refused.value)
    assert "\n" not in message
    for part in (
        "training-a: folder missing (409 records)",
        "training-e: folder missing (2141 records)",
        "validation: ",
        "of 301 records",
        "training.zip and validation.zip",
        "--partial",
    ):
        assert part in message
    assert not (data / "physionet2016").exists()

    report = layout_dataset("physionet2016", downloads, data, partial=True)
    text = "\n".join(report.lines)
    assert "training-c: 31 of 31 records" in text and "training-a: 0 of 409 records" in text
    test_records = [line.split(",")[0] for line in (phys / "validation" / "REFERENCE.csv").read_text().split()]
    in_c = [r for r in test_records if r.startswith("c")]
    assert f"validation: {len(in_c)} of 301 records" in text
    assert report.recordings == 31 and report.splits == {"train": 31 - len(in_c), "test": len(in_c)}
    # validation/REFERENCE.csv trimmed to the records laid out, so that the loader reads it without problems
    laid_out = (data / "physionet2016" / "validation" / "REFERENCE.csv").read_text().split()
    assert [line.split(",")[0] for line in laid_out] == in_c
    loaded = load_dataset("physionet2016", data / "physionet2016")
    assert len(loaded.table) == 31 and (loaded.table["split"] == "test").sum() == len(in_c)


@pytest.mark.real_data
def test_pascal_few_files_and_an_existing_folder(real_root, tmp_path):
    pascal = real_root / "pascal"
    chosen = _pascal_subset(real_root)
    source = _zip(tmp_path / "heartbeat-sounds.zip", pascal, PASCAL_FILES + chosen, prefix="heartbeat-sounds/")
    data = tmp_path / "data"
    mine = data / "pascal" / "my_notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    with pytest.raises(LayoutError, match=r"pascal already exists and holds data; it is left untouched.*--force"):
        layout_dataset("pascal", source, data, partial=True)
    assert mine.read_text() == "keep me"

    report = layout_dataset("pascal", source, data, partial=True, force=True)
    assert not mine.exists() and _leftovers(data) == []
    text = "\n".join(report.lines)
    assert "set_a: 3 of 176 files" in text and "set_b: 3 of 656 files" in text and "labelled rows: 6 of 585" in text
    assert report.recordings == 6 and sum(report.labels.values()) == 6
    assert sorted(p.name for p in (data / "pascal").iterdir()) == sorted(["set_a", "set_b", *PASCAL_FILES])
    # the original CSV format (CRLF line endings) is kept in the trimmed files
    assert b"\r\n" in (data / "pascal" / "set_a.csv").read_bytes()
    assert len(load_dataset("pascal", data / "pascal").table) == 6


@pytest.mark.real_data
def test_cli_icbhi_sample(real_root, tmp_path):
    icbhi = real_root / "icbhi2017"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archive = _zip(downloads / "ICBHI_final_database.zip", icbhi, ["ICBHI_final_database"])
    (downloads / "ICBHI_challenge_train_test.txt").write_bytes((icbhi / "ICBHI_challenge_train_test.txt").read_bytes())

    refused = _one_line_error(_cli("icbhi2017", downloads, tmp_path / "data"))
    assert "recordings: 10 of 920; missing: " in refused and "--partial" in refused
    assert not (tmp_path / "data" / "icbhi2017").exists()

    result = _cli("icbhi2017", downloads, tmp_path / "data", "--partial")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{archive}: sha256 {hashlib.sha256(archive.read_bytes()).hexdigest()}" in out
    assert "ICBHI_challenge_train_test.txt: 920 of 920 recordings" in out
    assert "recordings: 10 of 920" in out
    assert "icbhi2017: loaded from" in out and "10 recordings" in out
    root = tmp_path / "data" / "icbhi2017"
    assert len(list((root / "ICBHI_final_database").glob("*.wav"))) == 10
    assert len(list((root / "ICBHI_final_database").glob("*.txt"))) == 10
    loaded = load_dataset("icbhi2017", root)
    assert loaded.table["path"].nunique() == 10


@pytest.mark.real_data
def test_cli_refuses_truncated_and_wrong_archives(real_root, tmp_path):
    source = _zip(tmp_path / "heartbeat-sounds.zip", real_root / "pascal", PASCAL_FILES + _pascal_subset(real_root))
    wrong = _one_line_error(_cli("physionet2016", source, tmp_path / "data"))
    assert f"{source}: not the PhysioNet/CinC Challenge 2016 download" in wrong and "training-a" in wrong

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])
    error = _one_line_error(_cli("pascal", truncated, tmp_path / "data", "--partial"))
    assert f"{truncated}: not a readable zip archive" in error and "truncated or damaged" in error
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------------------------
# real data, complete counts (slow: hundreds of MB)


@pytest.mark.slow
@pytest.mark.real_data
def test_physionet_complete_counts(real_root, tmp_path):
    phys = real_root / "physionet2016"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _zip(downloads / "training.zip", phys, [f"training-{x}" for x in "abcdef"])
    _zip(downloads / "validation.zip", phys, ["validation"])
    data = tmp_path / "data"
    # the developers' copy of validation/ has 297 of the release's 301 records: refused without --partial
    with pytest.raises(LayoutError, match=r"incomplete source .*: validation: 297 of 301 records; missing: 4 record"):
        layout_dataset("physionet2016", downloads, data)
    report = layout_dataset("physionet2016", downloads, data, partial=True)
    for line in (
        "training-a: 409 of 409",
        "training-b: 490 of 490",
        "training-c: 31 of 31",
        "training-d: 55 of 55",
        "training-e: 2141 of 2141",
        "training-f: 114 of 114",
        "validation: 297 of 301",
    ):
        assert f"  {line} records" in report.lines
    assert report.missing == [line for line in report.missing if line.startswith("validation:")]
    assert report.recordings == 3240 and report.splits == {"train": 2943, "test": 297}
    assert report.labels == {"abnormal": 665, "normal": 2575}
    assert len(list((data / "physionet2016" / "training-e").glob("*.wav"))) == 2141


@pytest.mark.slow
@pytest.mark.real_data
def test_pascal_complete_counts(real_root, tmp_path):
    source = _zip(tmp_path / "heartbeat-sounds.zip", real_root / "pascal", ["set_a", "set_b", *PASCAL_FILES])
    report = layout_dataset("pascal", source, tmp_path / "data")  # complete: no --partial needed
    assert {"  set_a: 176 of 176 files", "  set_b: 656 of 656 files", "  labelled rows: 585 of 585"} <= set(
        report.lines
    )
    assert report.missing == [] and report.extra == []
    assert report.recordings == 585 and report.labels == {"abnormal": 234, "normal": 351}
    assert len(list((tmp_path / "data" / "pascal" / "set_b").iterdir())) == 656
