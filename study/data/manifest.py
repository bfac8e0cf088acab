"""A user's own data: a CSV manifest with columns ``path,label`` and optional
``group`` (patient), ``split`` (train/val/test), ``id`` and ``source``.

Paths are relative to the manifest's folder and may not point outside it.
Labels are 0/1 or normal/abnormal (any case).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .audio import DataError
from .table import (
    LoadedDataset,
    ProblemLog,
    duplicate_groups,
    make_table,
    recording_row,
    register_dataset,
    resolve_inside,
)

__all__ = ["LABELS", "SPLITS", "load_manifest"]

LABELS = {"0": 0, "1": 1, "normal": 0, "abnormal": 1}
SPLITS = {"train", "val", "test"}


@register_dataset("manifest")
def load_manifest(path: str | Path, *, skip_bad: bool = False) -> LoadedDataset:
    """Load a CSV manifest as a recording table (split defaults to "train")."""
    path = Path(path).resolve()
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    missing = {"path", "label"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; a manifest needs path,label[,group][,split]")
    log = ProblemLog(skip_bad)
    rows = []
    for line_no, row in zip(range(2, len(frame) + 2), frame.to_dict("records")):
        label = row["label"].strip().lower()
        if label not in LABELS:
            log.report(path, f"line {line_no}: unknown label '{row['label']}' (expected 0/1 or normal/abnormal)")
            continue
        split = (row.get("split") or "train").strip().lower()
        if split not in SPLITS:
            log.report(path, f"line {line_no}: unknown split '{split}' (expected one of {sorted(SPLITS)})")
            continue
        try:
            audio = resolve_inside(path.parent, row["path"].strip(), f"line {line_no}")
        except DataError as exc:
            log.report(path, str(exc))
            continue
        if not audio.is_file():
            log.report(path, f"line {line_no}: file '{row['path']}' is missing")
            continue
        row_id = (row.get("id") or "").strip() or audio.relative_to(path.parent.resolve()).with_suffix("").as_posix()
        recording = recording_row(
            audio,
            LABELS[label],
            "manifest",
            log,
            split=split,
            group=(row.get("group") or "").strip() or None,
            source=(row.get("source") or "").strip() or "manifest",
            original_label=label,
            item_id=row_id,
        )
        if recording is not None:
            rows.append(recording)
    table = make_table(rows)
    return LoadedDataset("manifest", path.parent, table, log.problems, duplicate_groups(table), {"manifest": str(path)})
