"""The recording table every loader returns, the problem log they share, and the registry of loaders."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..registry import Registry
from .audio import DataError, probe_audio

__all__ = [
    "RECORDING_COLUMNS",
    "Problem",
    "ProblemLog",
    "LoadedDataset",
    "probe_file",
    "LOADERS",
    "register_dataset",
    "as_loaded",
    "recording_row",
    "make_table",
    "duplicate_groups",
    "audio_clusters",
    "resolve_inside",
    "summarize",
]

# One row per item a model sees: a whole recording, or one breathing cycle of
# an ICBHI recording (start_s/end_s locate it in its file).
RECORDING_COLUMNS = {
    "id": "string",  # unique within a dataset
    "path": "string",  # absolute path of the audio file
    "label": "int64",  # task label: 0 normal / 1 abnormal, or the ICBHI class 0..3
    "binary_label": "int64",  # 0 normal, 1 any abnormal
    "original_label": "string",  # the label as the dataset writes it
    "group": "string",  # patient / subject where known, else <NA>
    "dataset": "string",  # physionet2016, pascal, icbhi2017, manifest
    "source": "string",  # database, set or device the item comes from (training-a, set_b, Meditron)
    "split": "string",  # train / val / test
    "sample_rate": "int64",  # Hz, of the file
    "start_s": "float64",  # segment start in the file, s
    "end_s": "float64",  # segment end in the file, s
    "duration_s": "float64",  # end_s - start_s
    "audio_hash": "string",  # BLAKE2b-128 of the file bytes
}


@dataclass
class Problem:
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class ProblemLog:
    """Collects bad-input findings; raises on the first one unless skipping was asked for."""

    skip_bad: bool = False
    problems: list[Problem] = field(default_factory=list)

    def report(self, file: str | Path, reason: str) -> None:
        problem = Problem(str(file), reason)
        if not self.skip_bad:
            raise DataError(str(problem))
        self.problems.append(problem)

    def note(self, file: str | Path, reason: str) -> None:
        """A finding that never stops loading (e.g. a mixed-down stereo file)."""
        self.problems.append(Problem(str(file), reason))


@dataclass
class LoadedDataset:
    """A recording table with what loading it found out."""

    name: str
    root: Path
    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of ids with identical audio
    info: dict = field(default_factory=dict)  # label mapping, split protocol, notes


def probe_file(path: Path, log: ProblemLog) -> tuple[int, float, str] | None:
    """Sample rate, duration in s and content hash of a file, or None if it is bad."""
    try:
        rate, frames, channels, digest = probe_audio(path)
    except DataError as exc:
        log.report(path, str(exc).removeprefix(f"{Path(path).resolve()}: ").removeprefix(f"{path}: "))
        return None
    if channels > 1:
        log.note(path, f"{channels} channels, averaged to mono")
    return rate, frames / rate, digest


#: dataset name (``data.train_set``, ``data.eval_sets``, ``--eval-set``) -> loader ``f(root, *, skip_bad=False)``
LOADERS = Registry("dataset", "dataset")


def register_dataset(name: str):
    """Register a dataset loader under ``name``, as timm's ``@register_model`` does for models.

    The loader is ``f(root, *, skip_bad=False, ...)``: ``root`` is the dataset's folder
    (``DATA_ROOT/NAME`` in a study), and it returns a :class:`LoadedDataset`, or just the
    recording table (a DataFrame with the :data:`RECORDING_COLUMNS`; :func:`recording_row` makes
    one row of it). ``skip_bad=False`` stops at the first bad file (:class:`ProblemLog`).
    """

    def register(loader):
        parameters = inspect.signature(loader).parameters
        if not parameters or "skip_bad" not in parameters:
            raise TypeError(
                f"dataset {name!r}: the loader must take the dataset's folder and a keyword skip_bad, "
                f"e.g. def load_{name}(root, *, skip_bad=False)"
            )
        return LOADERS.register(name, loader)

    return register


def as_loaded(name: str, root: str | Path, loaded) -> LoadedDataset:
    """What a loader returned, as a LoadedDataset: a bare recording table is checked and wrapped."""
    if isinstance(loaded, LoadedDataset):
        return loaded
    if not isinstance(loaded, pd.DataFrame):
        raise TypeError(
            f"dataset {name!r}: its loader returned {type(loaded).__name__}, not a LoadedDataset or DataFrame"
        )
    missing = [column for column in RECORDING_COLUMNS if column not in loaded]
    if missing:
        raise DataError(
            f"dataset {name!r}: its loader's table lacks the column(s) {missing}; a recording table has "
            f"{list(RECORDING_COLUMNS)} (study.data.table.recording_row makes a row)"
        )
    table = make_table(loaded[list(RECORDING_COLUMNS)].to_dict("records"))
    return LoadedDataset(name, Path(root), table, duplicates=duplicate_groups(table))


def recording_row(
    path: str | Path,
    label: int,
    dataset: str,
    log: ProblemLog,
    *,
    split: str = "test",
    group: str | None = None,
    source: str | None = None,
    original_label: str | None = None,
    item_id: str | None = None,
) -> dict | None:
    """One row of a recording table for a whole audio file (its rate, duration and hash read from the
    file), or None when the file is bad (reported to ``log``). ``label`` is the task label (0 normal,
    1 abnormal for heart sounds); the id defaults to the file name without its suffix."""
    path = Path(path)
    probed = probe_file(path, log)
    if probed is None:
        return None
    rate, duration, digest = probed
    return dict(
        id=item_id or path.stem,
        path=str(path.resolve()),
        label=label,
        binary_label=int(label > 0),
        original_label=original_label if original_label is not None else str(label),
        group=group,
        dataset=dataset,
        source=source or dataset,
        split=split,
        sample_rate=rate,
        start_s=0.0,
        end_s=duration,
        duration_s=duration,
        audio_hash=digest,
    )


def make_table(rows: list[dict]) -> pd.DataFrame:
    """Build and check a recording table from row dicts with the RECORDING_COLUMNS keys."""
    table = pd.DataFrame(rows, columns=list(RECORDING_COLUMNS))
    for column, dtype in RECORDING_COLUMNS.items():
        table[column] = table[column].astype(dtype)
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise DataError(f"duplicate recording ids: {sorted(set(duplicated))[:10]}")
    return table.reset_index(drop=True)


def duplicate_groups(table: pd.DataFrame) -> list[list[str]]:
    """Groups of whole-recording ids whose files have identical bytes."""
    whole = table.drop_duplicates(["path"])
    counts = whole.groupby("audio_hash")["id"].agg(list)
    return sorted(sorted(ids) for ids in counts if len(ids) > 1)


def audio_clusters(table: pd.DataFrame) -> pd.Series:
    """Cluster name of every row: rows joined by a shared patient (``group``) or identical audio
    (``audio_hash``, across files), transitively (union-find).

    A row's unit is its group, or when the group is missing its file (named by the file's first
    id; the segments of one file are one unit). A cluster of one unit is
    named by that unit's group (missing for a lone recording without one); a cluster of several
    is named by its units joined with "+" in sorted order ("set_b/103+set_b/117"), so a patient's
    other recordings and the duplicate's other patient's recordings share one name.
    """
    ids = table["id"].astype("string")
    file_ids = ids.groupby(table["path"], sort=False).transform("first") if "path" in table else ids
    units = table["group"].astype("string").fillna(file_ids).astype(str)
    parent: dict[str, str] = {u: u for u in units}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    if "audio_hash" in table:
        first_unit: dict[str, str] = {}
        for unit, digest in zip(units, table["audio_hash"]):
            if pd.isna(digest):
                continue
            other = first_unit.setdefault(digest, unit)
            a, b = find(unit), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, set[str]] = {}
    for u in parent:
        members.setdefault(find(u), set()).add(u)
    names = {root: "+".join(sorted(m)) for root, m in members.items()}
    joined = [len(members[find(u)]) > 1 for u in units]
    out = table["group"].astype("string").copy()
    out[joined] = [names[find(u)] for u, j in zip(units, joined) if j]
    return out


def resolve_inside(root: Path, name: str, where: str) -> Path:
    """``root / name``, refusing names that point outside ``root``."""
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise DataError(f"{where}: '{name}' points outside the dataset folder {root}")
    return candidate


def summarize(ds: LoadedDataset) -> dict:
    """JSON-able overview of a loaded dataset, as `study.data inspect` prints it."""
    t = ds.table
    durations = t["duration_s"].to_numpy(dtype=float)
    by_split = {
        split: {str(k): int(v) for k, v in grp["original_label"].value_counts().sort_index().items()}
        for split, grp in t.groupby("split")
    }
    return {
        "dataset": ds.name,
        "root": str(ds.root),
        "recordings": int(t["path"].nunique()),
        "items": int(len(t)),
        "labels": {str(k): int(v) for k, v in t["original_label"].value_counts().sort_index().items()},
        "binary_labels": {str(k): int(v) for k, v in t["binary_label"].value_counts().sort_index().items()},
        "splits": {str(k): int(v) for k, v in t["split"].value_counts().sort_index().items()},
        "labels_by_split": by_split,
        "sources": {str(k): int(v) for k, v in t["source"].value_counts().sort_index().items()},
        "sample_rates": {
            str(k): int(v) for k, v in t.drop_duplicates("path")["sample_rate"].value_counts().sort_index().items()
        },
        "duration_s": {
            "min": float(np.min(durations)) if len(t) else 0.0,
            "max": float(np.max(durations)) if len(t) else 0.0,
            "total": float(np.sum(durations)),
        },
        "duplicates": ds.duplicates,
        "problems": [str(p) for p in ds.problems],
        **ds.info,
    }
