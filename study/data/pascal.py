"""PASCAL Classifying Heart Sounds Challenge (zero-shot evaluation only).

Layout: ``ROOT/set_a`` (iStethoscope, 44.1 kHz), ``ROOT/set_b`` (digital
stethoscope, 4 kHz), ``set_a.csv`` / ``set_b.csv`` (``dataset,fname,label,sublabel``).
The CSV names do not match the file names, as in the public release:
``set_a/__201012172010.wav`` is ``Aunlabelledtest__201012172010.wav`` and
``set_b/Btraining_murmur_Btraining_noisymurmur_135_…_A.wav`` is
``murmur_noisymurmur_135_…_A.wav``. :func:`match_key` maps both forms to one key.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .audio import DataError
from .table import LoadedDataset, ProblemLog, duplicate_groups, make_table, probe_file, register_dataset

__all__ = ["LABEL_MAPPINGS", "KNOWN_LABELS", "AUDIO_SUFFIXES", "match_key", "load_pascal"]

# label → binary target, per mapping; a label absent from a mapping is dropped.
LABEL_MAPPINGS = {
    # AudioFuse paper: normal 0, every other labelled class 1.
    "paper": {"normal": 0, "murmur": 1, "extrahls": 1, "extrastole": 1, "artifact": 1},
    # Clinical: an artifact is not a heart condition, so artifact files are dropped.
    "clinical": {"normal": 0, "murmur": 1, "extrahls": 1, "extrastole": 1},
}
KNOWN_LABELS = set(LABEL_MAPPINGS["paper"])
_NAME_NOISE = re.compile(r"btraining_|[ab]unlabelledtest", re.IGNORECASE)


AUDIO_SUFFIXES = (".wav", ".aif", ".aiff", ".flac")


def match_key(name: str) -> str:
    """A key shared by a CSV ``fname`` and the file it describes, whatever its audio format (the CSVs
    name .wav files; a FLAC copy such as ``python -m study.gpu prepare`` writes matches them too)."""
    path = Path(name)
    name = path.stem if path.suffix.lower() in AUDIO_SUFFIXES else path.name
    stem = _NAME_NOISE.sub("", name.lower())
    return re.sub(r"_+", "_", stem).strip("_")


def _label_from_file_name(key: str) -> str | None:
    first = key.split("_", 1)[0]
    return first if first in KNOWN_LABELS else None


@register_dataset("pascal")
def load_pascal(root: str | Path, *, mapping: str = "paper", skip_bad: bool = False) -> LoadedDataset:
    """Load the labelled PASCAL recordings as a recording table (split "test").

    ``mapping`` names the binary label mapping (see LABEL_MAPPINGS); unlabelled
    files are dropped, every labelled CSV row must match exactly one file.
    """
    if mapping not in LABEL_MAPPINGS:
        raise ValueError(f"mapping must be one of {sorted(LABEL_MAPPINGS)}, got {mapping!r}")
    root = Path(root).resolve()
    log = ProblemLog(skip_bad)
    sets = [s for s in ("set_a", "set_b") if (root / f"{s}.csv").is_file()]
    if not sets:
        raise DataError(f"{root}: neither set_a.csv nor set_b.csv found: not a PASCAL root")
    rows, counts = [], {"labelled_rows": 0, "matched": 0, "unlabelled_rows": 0, "dropped_by_mapping": 0}
    for set_name in sets:
        csv_path, folder = root / f"{set_name}.csv", root / set_name
        files = {}
        for f in sorted(folder.glob("*")):
            if f.suffix.lower() in AUDIO_SUFFIXES:
                files.setdefault(match_key(f.name), []).append(f)
        used = set()
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"fname", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}")
            for line_no, row in enumerate(reader, start=2):
                fname = (row["fname"] or "").strip()
                label = (row.get("label") or "").strip().lower()
                where = f"{csv_path} line {line_no}"
                if Path(fname).is_absolute() or ".." in Path(fname).parts:
                    log.report(csv_path, f"line {line_no}: '{fname}' points outside the dataset folder {root}")
                    continue
                key = match_key(fname)
                candidates = files.get(key, [])
                if not label:
                    counts["unlabelled_rows"] += 1
                    used.update(candidates)
                    continue
                counts["labelled_rows"] += 1
                if label not in KNOWN_LABELS:
                    log.report(csv_path, f"line {line_no}: unknown label '{label}' for {fname}")
                    continue
                if len(candidates) != 1:
                    reason = "no file matches" if not candidates else f"{len(candidates)} files match"
                    log.report(csv_path, f"line {line_no}: {reason} '{fname}' in {folder}")
                    continue
                wav = candidates[0]
                name_label = _label_from_file_name(match_key(wav.name))
                if name_label is not None and name_label != label:
                    log.report(wav, f"file name says '{name_label}' but {where} says '{label}' (mislabelled?)")
                    continue
                used.add(wav)
                counts["matched"] += 1
                if label not in LABEL_MAPPINGS[mapping]:
                    counts["dropped_by_mapping"] += 1
                    continue
                probed = probe_file(wav, log)
                if probed is None:
                    continue
                rate, duration, digest = probed
                sublabel = (row.get("sublabel") or "").strip().lower()
                patient = wav.stem.split("_")[-3] if set_name == "set_b" else None
                rows.append(
                    dict(
                        id=f"{set_name}/{wav.stem}",
                        path=str(wav),
                        label=LABEL_MAPPINGS[mapping][label],
                        binary_label=LABEL_MAPPINGS[mapping][label],
                        original_label=f"{label}/{sublabel}" if sublabel else label,
                        group=f"{set_name}/{patient}" if patient else None,
                        dataset="pascal",
                        source=set_name,
                        split="test",
                        sample_rate=rate,
                        start_s=0.0,
                        end_s=duration,
                        duration_s=duration,
                        audio_hash=digest,
                    )
                )
        for group in files.values():
            for f in group:
                if f not in used:
                    log.note(f, f"not listed in {csv_path.name}; ignored")
    table = make_table(rows)
    info = {"label_mapping": mapping, "label_mapping_rule": _describe(mapping), "csv_rows": counts}
    return LoadedDataset("pascal", root, table, log.problems, duplicate_groups(table), info)


def _describe(mapping: str) -> str:
    positives = sorted(k for k, v in LABEL_MAPPINGS[mapping].items() if v == 1)
    dropped = sorted(KNOWN_LABELS - set(LABEL_MAPPINGS[mapping]))
    text = f"normal -> 0; {', '.join(positives)} -> 1; unlabelled dropped"
    return text + (f"; {', '.join(dropped)} dropped" if dropped else "")
