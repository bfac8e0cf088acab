"""PhysioNet/CinC Challenge 2016 heart sounds.

Layout: ``ROOT/training-a`` … ``training-f`` with ``REFERENCE.csv`` (``a0001,1``:
1 abnormal, -1 normal) and the recordings (``a0001.wav`` as released, or ``a0001.flac``:
``python -m study.gpu prepare`` writes trimmed FLAC copies); optionally ``REFERENCE_withSQI.csv``
(a third column, 1 good / 0 poor signal quality) and WFDB ``.hea`` headers.
``ROOT/validation`` lists the AudioFuse paper's test records; they are copies
of training records and are removed from training (paper protocol).
"""

from __future__ import annotations

import csv
from pathlib import Path

from .audio import DataError, probe_audio
from .table import LoadedDataset, ProblemLog, duplicate_groups, make_table, probe_file, register_dataset

__all__ = ["LABELS", "AUDIO_SUFFIXES", "record_file", "load_physionet2016"]

LABELS = {"1": ("abnormal", 1), "-1": ("normal", 0)}
AUDIO_SUFFIXES = (".wav", ".flac")  # a record's file: the first of these that exists


def record_file(folder: Path, record: str) -> Path:
    """The audio file of ``record`` in ``folder``: ``record.wav``, else ``record.flac``
    (``record.wav`` when neither exists, for the error message)."""
    for suffix in AUDIO_SUFFIXES:
        candidate = folder / f"{record}{suffix}"
        if candidate.is_file():
            return candidate
    return folder / f"{record}{AUDIO_SUFFIXES[0]}"


def _read_reference(path: Path, log: ProblemLog, min_columns: int = 2) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    with open(path, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            row = [cell.strip() for cell in row]
            if not row or not row[0]:
                continue
            if len(row) < min_columns:
                log.report(path, f"line {line_no}: expected {min_columns} columns, got {row}")
                continue
            if row[1] not in LABELS:
                log.report(path, f"line {line_no}: unknown label '{row[1]}' for {row[0]} (expected 1 or -1)")
                continue
            if row[0] in rows:
                log.report(path, f"line {line_no}: duplicate record id {row[0]}")
                continue
            rows[row[0]] = row
    return rows


def _read_header(path: Path) -> tuple[int | None, str | None]:
    """Sample rate and label comment ('Normal'/'Abnormal') of a WFDB .hea header."""
    lines = path.read_text().splitlines()
    fields = lines[0].split() if lines else []
    rate = int(float(fields[2].split("/")[0])) if len(fields) > 2 else None
    label = next((ln.lstrip("#").strip() for ln in lines if ln.lstrip("#").strip() in ("Normal", "Abnormal")), None)
    return rate, label


@register_dataset("physionet2016")
def load_physionet2016(root: str | Path, *, skip_bad: bool = False) -> LoadedDataset:
    """Load PhysioNet 2016 as a recording table with the paper's train/test split.

    Test records (those of ``validation/``) point at their training-folder file and
    get split "test"; all other records get "train" (a validation split is drawn
    later by :func:`study.data.splits.assign_validation`).
    """
    root = Path(root).resolve()
    log = ProblemLog(skip_bad)
    folders = sorted(p for p in root.glob("training-*") if p.is_dir())
    if not folders:
        raise DataError(f"{root}: no training-* folders: not a PhysioNet 2016 root")
    rows, listed_files = [], set()
    for folder in folders:
        reference = folder / "REFERENCE.csv"
        if not reference.is_file():
            log.report(folder, "REFERENCE.csv missing; folder skipped")
            continue
        labels = _read_reference(reference, log)
        sqi_file = folder / "REFERENCE_withSQI.csv"
        sqi = _read_reference(sqi_file, log, min_columns=3) if sqi_file.is_file() else {}
        for record, row in labels.items():
            wav = record_file(folder, record)
            listed_files.add(wav)
            if record in sqi and sqi[record][1] != row[1]:
                log.report(sqi_file, f"{record}: label {sqi[record][1]} disagrees with REFERENCE.csv ({row[1]})")
                continue
            probed = probe_file(wav, log)
            if probed is None:
                continue
            rate, duration, digest = probed
            header = folder / f"{record}.hea"
            if header.is_file():
                hea_rate, hea_label = _read_header(header)
                if hea_rate is not None and hea_rate != rate:
                    log.report(header, f"sample rate {hea_rate} Hz disagrees with the WAV's {rate} Hz")
                    continue
                if hea_label is not None and hea_label.lower() != LABELS[row[1]][0]:
                    log.report(header, f"label {hea_label} disagrees with REFERENCE.csv ({row[1]})")
                    continue
            original, label = LABELS[row[1]]
            rows.append(
                dict(
                    id=record,
                    path=str(wav),
                    label=label,
                    binary_label=label,
                    original_label=original,
                    group=None,
                    dataset="physionet2016",
                    source=folder.name,
                    split="train",
                    sample_rate=rate,
                    start_s=0.0,
                    end_s=duration,
                    duration_s=duration,
                    audio_hash=digest,
                    signal_quality=int(sqi[record][2]) if record in sqi else None,
                )
            )
        for wav in sorted(f for f in folder.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES):
            if wav not in listed_files:
                log.note(wav, "not listed in REFERENCE.csv; ignored")

    table = make_table(rows)
    if any(r["signal_quality"] is not None for r in rows):
        table["signal_quality"] = [r["signal_quality"] for r in rows]
    info = {"split_protocol": "paper: validation/ records are the test set, removed from training"}
    test_ids = _mark_test_records(root, table, log)
    info["test_records"] = len(test_ids)
    info["train_records_before_removing_test"] = int(len(table))
    info["train_records_after_removing_test"] = int((table["split"] == "train").sum())
    duplicates = duplicate_groups(table)
    cross = [g for g in duplicates if len(set(table.set_index("id").loc[g, "split"])) > 1]
    if cross:
        info["duplicates_across_train_test"] = cross
    return LoadedDataset("physionet2016", root, table, log.problems, duplicates, info)


def _mark_test_records(root: Path, table, log: ProblemLog) -> list[str]:
    """Set split='test' for the records of validation/ and check its copies match."""
    reference = root / "validation" / "REFERENCE.csv"
    if not reference.is_file():
        log.note(root / "validation", "no validation/REFERENCE.csv: no paper test split, every record is train")
        return []
    listed = _read_reference(reference, log)
    by_id = table.set_index("id")
    test_ids = []
    for record, row in listed.items():
        if record not in by_id.index:
            log.report(reference, f"{record} is not a training record")
            continue
        if LABELS[row[1]][1] != by_id.at[record, "label"]:
            log.report(reference, f"{record}: label {row[1]} disagrees with its training folder")
            continue
        copy = record_file(root / "validation", record)
        if copy.is_file():
            if probe_audio(copy)[3] != by_id.at[record, "audio_hash"]:
                log.note(copy, "differs from the training file of the same name; the training file is used")
        test_ids.append(record)
    table.loc[table["id"].isin(test_ids), "split"] = "test"
    return test_ids
