"""ICBHI 2017 Respiratory Sound Database, cut into breathing cycles.

Layout: ``ROOT/ICBHI_final_database/NAME.wav`` + ``NAME.txt`` (one line per cycle:
``start end crackles wheezes``, seconds and 0/1, tab-separated) and
``ROOT/ICBHI_challenge_train_test.txt`` (``NAME<TAB>train|test``, the official
split by recording). NAME is ``patient_index_location_mode_device``; 91 names
differ in their device part between releases (meta/filename_differences.txt),
so a name missing from the split file is matched on its first four parts.
"""

from __future__ import annotations

from pathlib import Path

from .audio import DataError
from .table import LoadedDataset, ProblemLog, duplicate_groups, make_table, probe_file, register_dataset

__all__ = ["CLASSES", "lookup_split", "load_icbhi2017"]

CLASSES = ("normal", "crackle", "wheeze", "both")


def _split_file(root: Path, log: ProblemLog) -> dict[str, str]:
    path = root / "ICBHI_challenge_train_test.txt"
    if not path.is_file():
        raise DataError(f"{path}: official split file missing")
    split = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("train", "test"):
            log.report(path, f"line {line_no}: expected 'NAME train|test', got {line!r}")
            continue
        split[fields[0]] = fields[1]
    return split


def lookup_split(name: str, split: dict[str, str]) -> str | None:
    if name in split:
        return split[name]
    stem = "_".join(name.split("_")[:4])
    matches = {v for k, v in split.items() if "_".join(k.split("_")[:4]) == stem}
    return matches.pop() if len(matches) == 1 else None


@register_dataset("icbhi2017")
def load_icbhi2017(root: str | Path, *, skip_bad: bool = False) -> LoadedDataset:
    """Load ICBHI 2017 as one row per breathing cycle.

    ``label`` is the 4-class target (0 normal, 1 crackle, 2 wheeze, 3 both),
    ``binary_label`` normal vs any adventitious sound, ``group`` the patient.
    """
    root = Path(root).resolve()
    log = ProblemLog(skip_bad)
    audio_dir = root / "ICBHI_final_database"
    if not audio_dir.is_dir():
        raise DataError(f"{root}: no ICBHI_final_database folder: not an ICBHI 2017 root")
    split = _split_file(root, log)
    rows, renamed = [], []
    for wav in sorted(audio_dir.glob("*.wav")):
        name = wav.stem
        annotation = wav.with_suffix(".txt")
        if not annotation.is_file():
            log.report(wav, "annotation file missing")
            continue
        recording_split = lookup_split(name, split)
        if recording_split is None:
            log.report(wav, "not in ICBHI_challenge_train_test.txt")
            continue
        if name not in split:
            renamed.append(name)
        probed = probe_file(wav, log)
        if probed is None:
            continue
        rate, duration, digest = probed
        parts = name.split("_")
        for line_no, line in enumerate(annotation.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                start, end, crackles, wheezes = float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])
            except (ValueError, IndexError):
                log.report(annotation, f"line {line_no}: expected 'start end crackles wheezes', got {line!r}")
                continue
            if crackles not in (0, 1) or wheezes not in (0, 1):
                log.report(annotation, f"line {line_no}: crackles/wheezes must be 0 or 1, got {line!r}")
                continue
            if not 0 <= start < end or start >= duration:
                log.report(
                    annotation, f"line {line_no}: cycle [{start}, {end}] s outside the {duration:.2f} s recording"
                )
                continue
            if end > duration + 1e-3:
                log.note(annotation, f"line {line_no}: cycle end {end} s cut to the recording end {duration:.3f} s")
                end = duration
            label = crackles + 2 * wheezes
            rows.append(
                dict(
                    id=f"{name}_{line_no:03d}",
                    path=str(wav),
                    label=label,
                    binary_label=int(label > 0),
                    original_label=CLASSES[label],
                    group=parts[0],
                    dataset="icbhi2017",
                    source=parts[-1] if len(parts) == 5 else "unknown",
                    split=recording_split,
                    sample_rate=rate,
                    start_s=start,
                    end_s=end,
                    duration_s=end - start,
                    audio_hash=digest,
                )
            )
    table = make_table(rows)
    patients = {split: set(grp) for split, grp in table.groupby("split")["group"]}
    shared = sorted(patients.get("train", set()) & patients.get("test", set()))
    info = {
        "split_protocol": "official ICBHI_challenge_train_test.txt (by recording)",
        "classes": list(CLASSES),
        "patients_in_train_and_test": shared,
        "names_matched_ignoring_device": renamed,
    }
    return LoadedDataset("icbhi2017", root, table, log.problems, duplicate_groups(table), info)
