"""Lay out a dataset from its official download where the project's loaders expect it.

    python -m study.data layout DATASET SOURCE DATA [--partial] [--force]

The loaders read each dataset in its original on-disk form (``DATA/physionet2016/training-a``,
``DATA/pascal/set_a.csv``, ``DATA/icbhi2017/ICBHI_final_database``, ...), but what users download
varies: one archive or several, unpacked or not, with or without a top folder. So this module

* finds the expected files at any depth of SOURCE (one archive, or a folder holding archives
  and/or their unpacked folders), taking from archives only the members a loader reads;
* checks them against the official counts *before* writing anything, and names what is missing
  or extra: an incomplete download stops here unless ``partial=True``;
* writes into a temporary folder beside ``DATA/DATASET`` and renames it into place only once
  everything was extracted and the project's own loader reads it, so a refused, damaged or
  interrupted run leaves DATA as it was, and data already there is replaced only with ``force``;
* reports the sha256 of every archive read, to compare with the distributor's checksums.

Every refusal is one line (:class:`LayoutError`), never a traceback. See docs/data.md.
"""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import os
import re
import secrets
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .audio import DataError
from .icbhi import lookup_split
from .pascal import AUDIO_SUFFIXES as PASCAL_AUDIO_SUFFIXES
from .pascal import match_key

__all__ = ["DATASETS", "DatasetSpec", "LayoutError", "LayoutReport", "layout_dataset", "sha256_file"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

PHYSIONET_COUNTS = {"a": 409, "b": 490, "c": 31, "d": 55, "e": 2141, "f": 114}
PHYSIONET_VALIDATION = 301
PASCAL_FILES = {"set_a": 176, "set_b": 656}
PASCAL_LABELLED = 585
ICBHI_RECORDINGS = 920
ICBHI_SPLIT = "ICBHI_challenge_train_test.txt"
ICBHI_AUDIO = "ICBHI_final_database"
# patient_index_location_mode_device, e.g. 101_1b1_Al_sc_Meditron
_ICBHI_NAME = re.compile(r"^\d{3}_[0-9A-Za-z]+_[A-Za-z]{2}_[a-z]{2}_[0-9A-Za-z]+$")
_PHYSIONET_FILES = ("REFERENCE.csv", "REFERENCE_withSQI.csv", "RECORDS")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


class LayoutError(ValueError):
    """A source or destination the layout refuses; the message is one line naming the file and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# Sources: archives and folders, read member by member


@dataclass(frozen=True)
class _Member:
    container: _Container
    name: str  # '/'-separated path inside the container
    handle: object  # ZipInfo, TarInfo or Path

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.name).parts


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, to compare a download with the checksum its distributor publishes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


@contextmanager
def _reading(archive: Path, kind: str) -> Iterator[None]:
    """Turn every way a damaged archive fails (zipfile, tarfile, the decompressors) into one LayoutError line.

    Errors of the disk being written (ENOSPC, EACCES: an errno is set) pass through unchanged."""
    try:
        yield
    except LayoutError:
        raise
    except NotImplementedError as exc:
        raise LayoutError(
            f"{archive}: uses a compression method Python cannot read ({exc}); unpack it with "
            "another tool and give the unpacked folder as SOURCE"
        ) from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, struct.error) as exc:
        raise LayoutError(_damaged(archive, kind, exc)) from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile, bz2's "Invalid data stream": the archive's bytes, not the disk
            raise LayoutError(_damaged(archive, kind, exc)) from None
        raise
    except ValueError as exc:  # zipfile and tarfile raise it for some corrupt headers (e.g. negative offsets)
        raise LayoutError(_damaged(archive, kind, exc)) from None


def _damaged(archive: Path, kind: str, exc: BaseException) -> str:
    reason = str(exc).strip() or type(exc).__name__
    return (
        f"{archive}: not a readable {kind} archive ({reason}): the download is truncated or damaged; "
        "download it again and compare its sha256 with the published one"
    )


class _Container:
    """One archive (zip or tar, possibly compressed) or one folder of unpacked files."""

    def __init__(self, path: Path, *, skip_archives: bool = False):
        self.path = path
        self.kind = "folder" if path.is_dir() else ("zip" if path.name.lower().endswith(".zip") else "tar")
        self.sha256 = None if self.kind == "folder" else sha256_file(path)
        self._skip_archives = skip_archives
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None

    def open(self, stack: ExitStack) -> None:
        """Open an archive (closed when ``stack`` closes); refuses one that is not a readable archive."""
        if self.kind == "folder":
            return
        with _reading(self.path, self.kind):
            if self.kind == "zip":
                self._zip = stack.enter_context(zipfile.ZipFile(self.path))
            else:
                self._tar = stack.enter_context(tarfile.open(self.path, "r:*"))

    def members(self) -> list[_Member]:
        if self.kind == "folder":
            return self._folder_members()
        members = []
        with _reading(self.path, self.kind):
            if self._zip is not None:
                entries = [(info.filename, info) for info in self._zip.infolist() if not info.is_dir()]
                for _, info in entries:
                    if info.flag_bits & 0x1:
                        raise LayoutError(
                            f"{self.path}: member '{info.filename}' is encrypted; expected the "
                            "unencrypted official archive"
                        )
            else:
                # regular files, and hard links (read through their target); never symlinks or devices
                entries = [(m.name, m) for m in self._tar.getmembers() if m.isfile() or m.islnk()]
        for raw, handle in entries:
            name = _safe_name(self.path, raw)
            if name is not None and not _ignored(PurePosixPath(name).parts):
                members.append(_Member(self, name, handle))
        return members

    def _folder_members(self) -> list[_Member]:
        members = []
        for folder, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not _ignored((d,)))
            here = Path(folder)
            for name in sorted(files):
                path = here / name
                if _ignored((name,)) or (self._skip_archives and here == self.path and _is_archive(path)):
                    continue
                members.append(_Member(self, path.relative_to(self.path).as_posix(), path))
        return members

    def read(self, member: _Member) -> bytes:
        if self.kind == "folder":
            return Path(member.handle).read_bytes()
        with _reading(self.path, self.kind):
            if self._zip is not None:
                return self._zip.read(member.handle)
            fh = self._tar.extractfile(member.handle)
            return fh.read()

    def copy(self, member: _Member, dest: Path) -> None:
        if self.kind == "folder":
            shutil.copyfile(member.handle, dest)
            return
        with _reading(self.path, self.kind):
            if self._zip is not None:
                src = self._zip.open(member.handle)  # checks the CRC-32 when the member has been read in full
            else:
                src = self._tar.extractfile(member.handle)  # raises ReadError on a member cut short
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)

    def order(self, member: _Member) -> int:
        """Position of a member in its archive: tar members are read in this order without seeking back."""
        if self._tar is not None:
            return member.handle.offset
        if self._zip is not None:
            return member.handle.header_offset
        return 0

    def describe(self) -> str:
        if self.kind == "folder":
            return f"{self.path}: folder of unpacked files (no archive checksum)"
        return f"{self.path}: sha256 {self.sha256}"


def _safe_name(archive: Path, raw: str) -> str | None:
    """The member's path with '/' separators and no '.' parts; refuses absolute paths and '..'."""
    name = raw.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise LayoutError(
            f"{archive}: member '{raw}' has an absolute path or '..' (it would be written outside "
            "the data folder); refusing this archive, expected the official download"
        )
    return "/".join(parts) or None


def _ignored(parts: tuple[str, ...]) -> bool:
    """Hidden files and folders (.DS_Store, our own .temporary folders) and macOS resource forks."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


# ----------------------------------------------------------------------------------------------------------------
# What each dataset needs: matching members to destinations, and the completeness check


@dataclass
class _Inventory:
    """What a source holds for one dataset, checked against the official counts."""

    copy: dict[str, _Member] = field(default_factory=dict)  # destination (inside DATA/DATASET) -> member
    write: dict[str, bytes] = field(default_factory=dict)  # destination -> label file trimmed to what is present
    counts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)  # missing even --partial cannot do without

    def label_file(self, dest: str, member: _Member, data: bytes, keep: Callable[[str], bool], header: bool) -> None:
        """Copy a label file as it is when every line it lists is laid out, else write it trimmed (--partial)."""
        trimmed = _keep_lines(data, keep, header)
        if trimmed == data:
            self.copy[dest] = member
        else:
            self.write[dest] = trimmed


def _keep_lines(data: bytes, keep: Callable[[str], bool], header: bool) -> bytes:
    """The lines of a text file that ``keep`` accepts (blank lines and the header kept), line endings unchanged."""
    lines = data.splitlines(keepends=True)
    kept = lines[:1] if header else []
    for line in lines[1:] if header else lines:
        text = line.decode("utf-8", "replace").strip()
        if not text or keep(text):
            kept.append(line)
    return b"".join(kept)


def _names(items, limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _first_field(line: str) -> str:
    return line.split(",")[0].strip()


def _match_physionet(parts: tuple[str, ...]) -> str | None:
    if len(parts) < 2:
        return None
    folder, name = parts[-2], parts[-1]
    if not re.fullmatch(r"training-[a-f]|validation", folder):
        return None
    if name in _PHYSIONET_FILES or name.lower().endswith((".wav", ".hea")):
        return f"{folder}/{name}"
    return None


def _physionet_ids(letter: str) -> list[str]:
    """The official record names of training-LETTER: a0001 … a0409, …, e00001 … e02141, f0001 … f0114."""
    width = 5 if letter == "e" else 4
    return [f"{letter}{i:0{width}d}" for i in range(1, PHYSIONET_COUNTS[letter] + 1)]


def _check_physionet(files: dict[str, _Member], read: Callable[[_Member], bytes]) -> _Inventory:
    inv = _Inventory()
    laid_out: set[str] = set()
    for letter, n in PHYSIONET_COUNTS.items():
        folder = f"training-{letter}"
        wavs = {d.split("/")[1][:-4] for d in files if d.startswith(folder + "/") and d.lower().endswith(".wav")}
        reference = files.get(f"{folder}/REFERENCE.csv")
        if reference is None:
            inv.counts.append(f"{folder}: 0 of {n} records")
            inv.missing.append(
                f"{folder}: " + ("REFERENCE.csv missing" if wavs else "folder missing") + f" ({n} records)"
            )
            continue
        listed = [_first_field(line) for line in read(reference).decode("utf-8", "replace").splitlines()]
        listed = [r for r in listed if r]
        expected = _physionet_ids(letter)
        present = [r for r in listed if r in wavs]
        official = set(expected) & set(present)
        inv.counts.append(f"{folder}: {len(official)} of {n} records")
        absent = [r for r in expected if r not in official]
        if absent:
            inv.missing.append(f"{folder}: {len(official)} of {n} records; missing: {_names(absent)}")
        beyond = [r for r in present if r not in official]
        if beyond:
            inv.extra.append(f"{folder}: {len(beyond)} record(s) beyond the official {n}, laid out: {_names(beyond)}")
        unlisted = sorted(wavs - set(listed))
        if unlisted:
            inv.extra.append(
                f"{folder}: {len(unlisted)} .wav file(s) not in REFERENCE.csv, not laid out: {_names(unlisted)}"
            )
        if not present:
            continue
        keep = set(present)
        for name in _PHYSIONET_FILES:
            member = files.get(f"{folder}/{name}")
            if member is not None:
                inv.label_file(f"{folder}/{name}", member, read(member), lambda t, k=keep: _first_field(t) in k, False)
        for record in present:
            inv.copy[f"{folder}/{record}.wav"] = files[f"{folder}/{record}.wav"]
            header = files.get(f"{folder}/{record}.hea")
            if header is not None:
                inv.copy[f"{folder}/{record}.hea"] = header
        laid_out |= keep
    if not laid_out:
        inv.required.append("no training-a … training-f folder with REFERENCE.csv and its .wav files")

    reference = files.get("validation/REFERENCE.csv")
    n = PHYSIONET_VALIDATION
    if reference is None:
        inv.counts.append(f"validation: 0 of {n} records")
        inv.missing.append(f"validation: folder missing ({n} records, the paper's test set)")
        return inv
    listed = [r for r in (_first_field(x) for x in read(reference).decode("utf-8", "replace").splitlines()) if r]
    copies = {d.split("/")[1][:-4] for d in files if d.startswith("validation/") and d.lower().endswith(".wav")}
    present = [r for r in listed if r in copies and r in laid_out]
    inv.counts.append(f"validation: {len(present)} of {n} records")
    if len(present) < n:
        reasons = []
        if n > len(listed):
            reasons.append(
                f"{n - len(listed)} record(s) absent from validation/REFERENCE.csv (their names are "
                "only in the complete validation.zip)"
            )
        no_copy = [r for r in listed if r not in copies]
        if no_copy:
            reasons.append(f"no .wav copy of {_names(no_copy)}")
        no_training = [r for r in listed if r in copies and r not in laid_out]
        if no_training:
            reasons.append(f"not among the training records laid out: {_names(no_training)}")
        inv.missing.append(f"validation: {len(present)} of {n} records; missing: " + "; ".join(reasons))
    if len(listed) > n:
        inv.extra.append(f"validation: REFERENCE.csv lists {len(listed)} records, the official release {n}")
    if present:
        keep = set(present)
        for name in _PHYSIONET_FILES:
            member = files.get(f"validation/{name}")
            if member is not None:
                inv.label_file(f"validation/{name}", member, read(member), lambda t: _first_field(t) in keep, False)
        for record in present:
            inv.copy[f"validation/{record}.wav"] = files[f"validation/{record}.wav"]
            header = files.get(f"validation/{record}.hea")
            if header is not None:
                inv.copy[f"validation/{record}.hea"] = header
    return inv


def _match_pascal(parts: tuple[str, ...]) -> str | None:
    name = parts[-1]
    if name in ("set_a.csv", "set_b.csv", "set_a_timing.csv"):
        return name
    if len(parts) >= 2 and parts[-2] in PASCAL_FILES and name.lower().endswith(PASCAL_AUDIO_SUFFIXES):
        return f"{parts[-2]}/{name}"
    return None


def _check_pascal(files: dict[str, _Member], read: Callable[[_Member], bytes]) -> _Inventory:
    inv = _Inventory()
    labelled, labelled_present = 0, 0
    for set_name, n in PASCAL_FILES.items():
        audio = sorted(d for d in files if d.startswith(set_name + "/"))
        inv.counts.append(f"{set_name}: {len(audio)} of {n} files")
        member = files.get(f"{set_name}.csv")
        if member is None:
            inv.missing.append(
                f"{set_name}.csv missing" + (f" ({len(audio)} audio files without labels)" if audio else "")
            )
            continue
        by_key: dict[str, list[str]] = {}
        for dest in audio:
            by_key.setdefault(match_key(dest.split("/", 1)[1]), []).append(dest)
        data = read(member)
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig", "replace"), newline=""))
        if not {"fname", "label"} <= set(reader.fieldnames or []):
            inv.missing.append(f"{set_name}.csv has no fname,label header (columns {reader.fieldnames})")
            continue
        used, absent, keep_rows = set(), [], set()
        for row in reader:
            fname, label = (row["fname"] or "").strip(), (row["label"] or "").strip()
            key = match_key(fname)
            labelled += bool(label)
            if key in by_key:
                used.add(key)
                labelled_present += bool(label)
                keep_rows.add(fname)
            else:
                absent.append(PurePosixPath(fname).name)
                if not label:
                    keep_rows.add(fname)  # an unlabelled row without its file is harmless: the loader skips it
        if len(audio) < n or absent:
            inv.missing.append(f"{set_name}: {len(audio)} of {n} files; missing: {_names(absent) or 'none named'}")
        unused = [d for key, dests in sorted(by_key.items()) if key not in used for d in dests]
        if unused:
            inv.extra.append(
                f"{set_name}: {len(unused)} file(s) not in {set_name}.csv, not laid out: "
                f"{_names(PurePosixPath(d).name for d in unused)}"
            )
        if len(audio) > n:
            inv.extra.append(f"{set_name}: {len(audio)} files, the official release {n}")
        header = next(csv.reader([data.decode("utf-8-sig", "replace").splitlines()[0]]))
        column = header.index("fname")

        def keep(line: str, rows=keep_rows, column=column) -> bool:
            cells = next(csv.reader([line]))
            return len(cells) > column and cells[column].strip() in rows

        inv.label_file(f"{set_name}.csv", member, data, keep, True)
        for key in used:
            for dest in by_key[key]:
                inv.copy[dest] = files[dest]
    inv.counts.append(f"labelled rows: {labelled_present} of {PASCAL_LABELLED}")
    if labelled_present < PASCAL_LABELLED:
        inv.missing.append(f"labelled rows: {labelled_present} of {PASCAL_LABELLED} with their audio file")
    elif labelled > PASCAL_LABELLED:
        inv.extra.append(f"labelled rows: {labelled}, the official release {PASCAL_LABELLED}")
    timing = files.get("set_a_timing.csv")
    if timing is not None:
        inv.copy["set_a_timing.csv"] = timing
    if not any(d.endswith(".csv") for d in [*inv.copy, *inv.write]):
        inv.required.append("neither set_a.csv nor set_b.csv (the labels)")
    return inv


def _match_icbhi(parts: tuple[str, ...]) -> str | None:
    name = parts[-1]
    if name.lower() == ICBHI_SPLIT.lower():
        return ICBHI_SPLIT
    stem, dot, suffix = name.rpartition(".")
    if dot and suffix.lower() in ("wav", "txt") and _ICBHI_NAME.match(stem):
        return f"{ICBHI_AUDIO}/{stem}.{suffix.lower()}"
    return None


def _check_icbhi(files: dict[str, _Member], read: Callable[[_Member], bytes]) -> _Inventory:
    inv = _Inventory()
    member = files.get(ICBHI_SPLIT)
    split: dict[str, str] = {}
    if member is None:
        inv.required.append(f"{ICBHI_SPLIT} (the official train/test split, a separate download)")
    else:
        for line in read(member).decode("utf-8", "replace").splitlines():
            fields = line.split()
            if len(fields) == 2:
                split[fields[0]] = fields[1]
        inv.counts.append(f"{ICBHI_SPLIT}: {len(split)} of {ICBHI_RECORDINGS} recordings")
        if len(split) < ICBHI_RECORDINGS:
            inv.missing.append(f"{ICBHI_SPLIT}: {len(split)} of {ICBHI_RECORDINGS} recordings listed")
        inv.copy[ICBHI_SPLIT] = member
    recordings = [PurePosixPath(d) for d in files if d.startswith(ICBHI_AUDIO + "/")]
    stems = {suffix: {p.stem for p in recordings if p.suffix == "." + suffix} for suffix in ("wav", "txt")}
    complete = sorted(stems["wav"] & stems["txt"])
    present = [s for s in complete if not split or lookup_split(s, split) is not None]
    inv.counts.append(f"recordings: {len(present)} of {ICBHI_RECORDINGS} (.wav + annotation .txt)")
    if split:
        covered = {"_".join(s.split("_")[:4]) for s in present}
        absent = sorted(s for s in split if "_".join(s.split("_")[:4]) not in covered)
    else:
        absent = []
    if len(present) < ICBHI_RECORDINGS:
        inv.missing.append(
            f"recordings: {len(present)} of {ICBHI_RECORDINGS}; missing: {_names(absent) or 'none named'}"
        )
    for suffix, other in (("wav", "txt"), ("txt", "wav")):
        alone = sorted(stems[suffix] - stems[other])
        if alone:
            inv.missing.append(f"{len(alone)} .{suffix} without its .{other}: {_names(alone)}")
    outside = sorted(set(complete) - set(present))
    if outside:
        inv.extra.append(f"{len(outside)} recording(s) not in {ICBHI_SPLIT}, not laid out: {_names(outside)}")
    if len(present) > ICBHI_RECORDINGS:
        inv.extra.append(f"recordings: {len(present)}, the official release {ICBHI_RECORDINGS}")
    for stem in present:
        for suffix in ("wav", "txt"):
            inv.copy[f"{ICBHI_AUDIO}/{stem}.{suffix}"] = files[f"{ICBHI_AUDIO}/{stem}.{suffix}"]
    if not present:
        inv.required.append("no recording (NAME.wav with its NAME.txt annotation)")
    return inv


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's official source and how its files are found and checked."""

    name: str
    title: str
    homepage: str
    downloads: str  # what to download, for messages
    expected: str  # what the download holds, for the message refusing a wrong archive
    fix: str  # how to get a complete source, for the message refusing an incomplete one
    match: Callable[[tuple[str, ...]], str | None]
    check: Callable[[dict[str, _Member], Callable[[_Member], bytes]], _Inventory]
    load_options: dict = field(default_factory=dict)


DATASETS = {
    "physionet2016": DatasetSpec(
        name="physionet2016",
        title="PhysioNet/CinC Challenge 2016",
        homepage="https://physionet.org/content/challenge-2016/1.0.0/",
        downloads="training.zip and validation.zip",
        expected="folders training-a … training-f/ and validation/ with REFERENCE.csv and .wav files",
        fix="download training.zip and validation.zip from https://physionet.org/content/challenge-2016/1.0.0/ "
        "into one folder and give that folder as SOURCE",
        match=_match_physionet,
        check=_check_physionet,
    ),
    "pascal": DatasetSpec(
        name="pascal",
        title="PASCAL Classifying Heart Sounds Challenge (heartbeat-sounds release)",
        homepage="http://www.peterjbentley.com/heartchallenge/",
        downloads="the heartbeat-sounds archive",
        expected="set_a/, set_b/, set_a.csv and set_b.csv",
        fix="download the complete heartbeat-sounds archive (set_a/, set_b/, set_a.csv, set_b.csv; see docs/data.md)",
        match=_match_pascal,
        check=_check_pascal,
        load_options={"mapping": "paper"},
    ),
    "icbhi2017": DatasetSpec(
        name="icbhi2017",
        title="ICBHI 2017 Respiratory Sound Database",
        homepage="https://bhichallenge.med.auth.gr/",
        downloads="ICBHI_final_database.zip and ICBHI_challenge_train_test.txt",
        expected="ICBHI_final_database/ (NAME.wav + NAME.txt) and ICBHI_challenge_train_test.txt",
        fix="download ICBHI_final_database.zip and ICBHI_challenge_train_test.txt from https://bhichallenge.med.auth.gr/ "
        "into one folder and give that folder as SOURCE",
        match=_match_icbhi,
        check=_check_icbhi,
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# The layout itself


@dataclass
class LayoutReport:
    """What :func:`layout_dataset` read, found and wrote; ``lines`` is what it printed."""

    dataset: str
    target: Path
    sources: list[str]
    counts: list[str]
    missing: list[str]
    extra: list[str]
    files_written: int
    recordings: int
    items: int
    splits: dict[str, int]
    labels: dict[str, int]
    summary: str
    lines: list[str] = field(default_factory=list)


def layout_dataset(
    dataset: str,
    source: str | Path,
    data: str | Path,
    *,
    partial: bool = False,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> LayoutReport:
    """Lay out ``dataset`` from ``source`` (its official download) as ``data/dataset``, and load it back.

    Parameters
    ----------
    dataset : physionet2016, pascal or icbhi2017 (see DATASETS).
    source : one archive (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or a folder holding the downloads:
        archives (read at its top level) and/or their unpacked folders, at any depth.
    data : the data root; the dataset is written to ``data/dataset``.
    partial : lay out an incomplete source (label files trimmed to the recordings present) and report the
        shortfall, instead of refusing it.
    force : replace ``data/dataset`` when it already holds files (by default it is never touched).
    echo : called with each line of the report as it happens (the command line passes ``print``).

    Raises LayoutError (one line) for a missing or wrong source, a damaged archive, an incomplete source
    without ``partial``, an occupied destination without ``force``, or a result the loader cannot read;
    DATA is then left as it was.
    """
    from . import load_dataset

    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if echo is not None:
            echo(line)

    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    spec = DATASETS[dataset]
    source, data = Path(source).expanduser(), Path(data).expanduser()
    target = data / dataset
    if not source.exists():
        raise LayoutError(
            f"{source}: not found; SOURCE is {spec.downloads}: an archive, or a folder holding the downloads"
        )
    if source.is_file() and not _is_archive(source):
        raise LayoutError(
            f"{source}: not an archive ({', '.join(ARCHIVE_SUFFIXES)}) nor a folder; expected {spec.downloads}"
        )
    if data.exists() and not data.is_dir():
        raise LayoutError(f"{data}: is a file; DATA must be a folder (the dataset goes to DATA/{dataset})")
    occupied = target.exists() and (not target.is_dir() or any(target.iterdir()))
    if occupied and not force:
        raise LayoutError(
            f"{target} already exists and holds data; it is left untouched: move it away, or pass --force to replace it"
        )
    if occupied and source.resolve().is_relative_to(target.resolve()):
        raise LayoutError(f"{source} is inside {target}, which --force would replace; move the download elsewhere")

    with ExitStack() as stack:
        files, containers = _collect(spec, source, stack, say)
        inv = spec.check(files, lambda m: m.container.read(m))
        for line in inv.counts:
            say(f"  {line}")
        for line in inv.extra:
            say(f"  extra: {line}")
        if inv.required:
            raise LayoutError(f"{dataset}: cannot lay out {source}: missing {'; '.join(inv.required)}. Fix: {spec.fix}")
        if inv.missing and not partial:
            raise LayoutError(
                f"{dataset}: incomplete source {source}: {'; '.join(inv.missing)}. Fix: {spec.fix}, "
                "or pass --partial to lay out what there is"
            )
        for line in inv.missing:
            say(f"  shortfall (--partial, laid out without it): {line}")
        data.mkdir(parents=True, exist_ok=True)
        staging = _fresh_dir(data, f".{dataset}.layout-")
        try:
            written = _extract(inv, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    trimmed = sorted(inv.write)
    say(
        f"wrote {written} files to {target}"
        + (f" ({', '.join(trimmed)} trimmed to the files present)" if trimmed else "")
    )
    loaded = _swap_and_load(
        staging, target, data, dataset, lambda root: load_dataset(dataset, root, **spec.load_options)
    )
    report = _summary(loaded, dataset, target)
    say(report["summary"])
    return LayoutReport(
        dataset=dataset,
        target=target,
        sources=[c.describe() for c in containers],
        counts=inv.counts,
        missing=inv.missing,
        extra=inv.extra,
        files_written=written,
        lines=lines,
        **report,
    )


def _collect(spec: DatasetSpec, source: Path, stack: ExitStack, say) -> tuple[dict[str, _Member], list[_Container]]:
    """Open the source's archives and folders and match their members to destinations (first found wins)."""
    if source.is_dir():
        archives = sorted(p for p in source.iterdir() if p.is_file() and _is_archive(p) and not _ignored((p.name,)))
        paths = [*archives, source]
    else:
        paths = [source]
    files: dict[str, _Member] = {}
    containers = []
    for path in paths:
        container = _Container(path, skip_archives=path == source and source.is_dir())
        containers.append(container)
        if container.kind != "folder":
            say(f"source {container.describe()}")  # before opening it: a damaged download's checksum helps too
        container.open(stack)
        matched = 0
        for member in container.members():
            dest = spec.match(member.parts)
            if dest is not None:
                matched += 1
                files.setdefault(dest, member)
        if container.kind == "folder" and matched:
            say(f"source {container.describe()}")
        if not matched and len(paths) == 1:
            raise LayoutError(
                f"{container.path}: not the {spec.title} download: none of the expected files "
                f"({spec.expected}) in it; expected {spec.downloads}"
            )
        if not matched and container.kind != "folder":
            say(f"  ignored {container.path.name}: none of the expected files in it")
    if not files:
        raise LayoutError(
            f"{source}: none of the expected files of {spec.title} ({spec.expected}) in it or in the "
            f"archives it holds; expected {spec.downloads}"
        )
    return files, containers


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` (the same file system as the target, so renames are atomic), with
    the permissions the umask gives, unlike tempfile.mkdtemp's 0700 that the renamed dataset would keep."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _extract(inv: _Inventory, staging: Path) -> int:
    """Copy the inventory's members (each archive in its own order, so compressed tars are read once) and
    write its trimmed label files into ``staging``."""
    by_container: dict[int, list[tuple[str, _Member]]] = {}
    for dest, member in inv.copy.items():
        by_container.setdefault(id(member.container), []).append((dest, member))
    for items in by_container.values():
        for dest, member in sorted(items, key=lambda item: item[1].container.order(item[1])):
            path = staging / dest
            path.parent.mkdir(parents=True, exist_ok=True)
            member.container.copy(member, path)
    for dest, content in inv.write.items():
        path = staging / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return len(inv.copy) + len(inv.write)


def _swap_and_load(staging: Path, target: Path, data: Path, dataset: str, load):
    """Rename ``staging`` to ``target`` (keeping what was there aside), load it, and undo everything if the
    loader refuses it, so DATA ends either with the new layout or exactly as it was."""
    backup = None
    try:
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()
        elif target.exists() or target.is_symlink():  # occupied: only reached with force
            backup = _fresh_dir(data, f".{dataset}.replaced-")
            os.replace(target, backup / dataset)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if backup is not None and (backup / dataset).exists() and not target.exists():
            os.replace(backup / dataset, target)
            backup.rmdir()
        raise
    try:
        loaded = load(target)
    except BaseException as exc:
        failed = _fresh_dir(data, f".{dataset}.failed-")
        os.replace(target, failed / dataset)
        shutil.rmtree(failed, ignore_errors=True)
        if backup is not None:
            os.replace(backup / dataset, target)
            backup.rmdir()
        if isinstance(exc, DataError):
            raise LayoutError(f"{dataset}: the laid-out files do not load ({exc}); {data} is left as it was") from None
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return loaded


def _summary(loaded, dataset: str, target: Path) -> dict:
    table = loaded.table
    recordings = int(table["path"].nunique())
    by_recording = table.drop_duplicates("path") if dataset == "icbhi2017" else table
    counts = by_recording["split"].value_counts()
    splits = {str(k): int(counts[k]) for k in sorted(counts.index, key=lambda k: (SPLIT_ORDER.get(k, 9), k))}
    if dataset == "pascal":
        labels = {("abnormal" if k else "normal"): int(v) for k, v in table["binary_label"].value_counts().items()}
        what = "labels (paper mapping)"
    else:
        labels = {str(k): int(v) for k, v in table["original_label"].value_counts().items()}
        what = "breathing-cycle labels" if dataset == "icbhi2017" else "labels"
    labels = dict(sorted(labels.items()))
    text = f"{dataset}: loaded from {target}: {recordings:,} recordings"
    if dataset == "icbhi2017":
        text += f", {len(table):,} breathing cycles"
    text += " (" + ", ".join(f"{k} {v:,}" for k, v in splits.items()) + ")"
    text += f"; {what}: " + ", ".join(f"{k} {v:,}" for k, v in labels.items())
    if loaded.problems:
        text += f"; {len(loaded.problems)} note(s): python -m study.data inspect {dataset} {target}"
    return {"recordings": recordings, "items": int(len(table)), "splits": splits, "labels": labels, "summary": text}
