"""Assembling a trial's data: datasets, validation split, caps, features, variants and perturbed sets.

:func:`load_tables` loads the datasets a trial config names and selects the recordings it
uses (validation split, evaluation sets, duplicates, caps): the data plan, which the dry
run (:mod:`study.plan`) sizes too. :func:`prepare_data` extracts their cached features and
returns a :class:`study.tensors.TrialData`; ``study.run`` does it once per distinct
:func:`study.config.data_settings` and shares the result with every trial through Ray's
object store, ``python -m study.trial`` in its own process.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .cache import FeatureCache, extract_features
from .config import DataConfig, TrialConfig
from .data import LoadedDataset, assign_validation, load_dataset
from .data.table import audio_clusters
from .perturbations import apply_perturbation, parse_perturbation_suite
from .tensors import PerturbedSplit, SplitData, TrialData

__all__ = [
    "TrialDatasets",
    "TrialTables",
    "cap_rows",
    "combine_datasets",
    "describe_duplicates",
    "fingerprint",
    "handle_duplicates",
    "load_tables",
    "perturb",
    "prepare_data",
    "select_tables",
    "split_check",
    "standardize_spectrograms",
    "variant_name",
]


def combine_datasets(first: LoadedDataset, second: LoadedDataset) -> LoadedDataset:
    """One dataset holding the recordings of both (e.g. synthetic ICBHI plus a few real recordings).

    Raises ValueError when an item id or a patient (group) appears in both: whether they
    are the same recording or person cannot be known, and a merged patient would break
    patient-level splits and the analysis' cluster bootstrap.
    """
    for column in ("id", "group"):
        shared = set(first.table[column].dropna()) & set(second.table[column].dropna())
        if shared:
            raise ValueError(
                f"datasets at {first.root} and {second.root} share {column} values "
                f"{sorted(map(str, shared))[:5]}; they cannot be combined"
            )
    table = pd.concat([first.table, second.table], ignore_index=True)
    info = {**first.info, "combined_roots": first.info.get("combined_roots", [str(first.root)]) + [str(second.root)]}
    return LoadedDataset(
        first.name, first.root, table, first.problems + second.problems, first.duplicates + second.duplicates, info
    )


def split_check(table: pd.DataFrame) -> dict:
    """Recordings and patients on both sides of a train/test split (train includes validation).

    Raises ValueError when a recording (audio file) lies on both sides: an official
    split by recording must never share one. Patients may be shared; they are listed,
    and so are pairs of files with identical audio (``audio_hash``) on both sides,
    ``[train id, test id]`` (none once ``data.duplicates`` removed them, when the test
    split is an evaluation set).
    """
    train = table[table["split"].isin(["train", "val"])]
    test = table[table["split"] == "test"]
    shared_recordings = sorted(set(train["path"]) & set(test["path"]))
    if shared_recordings:
        raise ValueError(
            f"{len(shared_recordings)} recording(s) are in both train and test, e.g. {shared_recordings[0]}"
        )
    train_patients, test_patients = set(train["group"].dropna()), set(test["group"].dropna())
    return {
        "recordings_train": int(train["path"].nunique()),
        "recordings_test": int(test["path"].nunique()),
        "recordings_in_train_and_test": 0,
        "same_audio_in_train_and_test": _same_audio(train, test),
        "patients_train": len(train_patients),
        "patients_test": len(test_patients),
        "patients_in_train_and_test": sorted(map(str, train_patients & test_patients)),
    }


def _same_audio(first: pd.DataFrame, second: pd.DataFrame) -> list[list[str]]:
    """``[id in first, id in second]`` for every pair of different files with identical audio."""
    a = first.drop_duplicates("path")[["id", "path", "audio_hash"]]
    b = second.drop_duplicates("path")[["id", "path", "audio_hash"]]
    pairs = a.merge(b, on="audio_hash", suffixes=("_a", "_b"))
    pairs = pairs[pairs["path_a"] != pairs["path_b"]]
    return sorted([str(x), str(y)] for x, y in zip(pairs["id_a"], pairs["id_b"]))


class TrialDatasets:
    """The datasets of a trial's data settings, loaded as every trial loads them.

    ``datasets(name)`` returns the dataset ``name`` read from ``data_root/name`` with the settings'
    loading options (DataConfig.loader_options) and the recordings of its ``data.extra_roots``
    joined (:func:`combine_datasets`); an extra root that does not exist is skipped with a
    warning. ``loaded`` holds the datasets asked for, in that order, ``missing_roots`` the
    extra roots skipped. ``shared`` keeps datasets between the loaders of several trial configs
    (the dry run's): one with the same loading settings is loaded once.
    """

    def __init__(self, data: DataConfig, data_root: str | Path, shared: dict | None = None):
        self.data, self.root = data, Path(data_root)
        self.shared = {} if shared is None else shared
        self.loaded: dict[str, LoadedDataset] = {}
        self.missing_roots: list[str] = []

    def __call__(self, name: str) -> LoadedDataset:
        if name not in self.loaded:
            options = self.data.loader_options(name)
            extra_roots = tuple(self.data.extra_roots.get(name, []))
            key = (name, str(self.root), tuple(sorted(options.items())), extra_roots)
            if key not in self.shared:
                self.shared[key] = self._load(name, options, extra_roots)
            self.loaded[name], missing = self.shared[key]
            self.missing_roots += missing
        return self.loaded[name]

    def _load(self, name: str, options: dict, extra_roots: tuple[str, ...]) -> tuple[LoadedDataset, list[str]]:
        combined, missing = load_dataset(name, self.root / name, **options), []
        for extra in extra_roots:
            extra_root = Path(extra).expanduser()
            if not extra_root.exists():
                warnings.warn(f"data.extra_roots: {extra_root} does not exist; {name} is used without it", stacklevel=3)
                missing.append(str(extra_root))
                continue
            combined = combine_datasets(combined, load_dataset(name, extra_root, **options))
        return combined, missing


@dataclass
class TrialTables:
    """The recordings a trial uses: ``table`` is the training dataset with its validation split
    (after duplicates were removed), ``train`` and ``val`` its (capped) rows, ``evals`` each
    evaluation set's (deduplicated, capped) rows, ``duplicates`` what was done about duplicates."""

    table: pd.DataFrame
    train: pd.DataFrame
    val: pd.DataFrame
    evals: dict[str, pd.DataFrame]
    duplicates: dict
    validation: dict  # the split's settings and eligible sources (assign_validation's attrs)


def select_tables(data: DataConfig, dataset: Callable[[str], LoadedDataset]) -> TrialTables:
    """Draw the validation split, select the evaluation sets and act on duplicate audio.

    ``dataset(name)`` returns a loaded dataset. The validation split is drawn first (so it
    does not depend on the evaluation sets), then :func:`handle_duplicates` applies
    ``data.duplicates``, then the caps (``max_train``, ``max_eval``) are applied.
    """
    table = assign_validation(
        dataset(data.train_set).table,
        fraction=data.validation_fraction,
        seed=data.validation_seed,
        method=data.validation,
        minority_cap=data.validation_minority_cap,
        sources=data.validation_sources,
        join_duplicates=data.duplicates != "keep",
    )
    validation = dict(table.attrs.get("validation", {}))
    evals = {}
    for spec in data.eval_sets:
        name, _, split = spec.partition(":")
        rows = dataset(name).table
        if split:
            rows = table if name == data.train_set else rows
            rows = rows[rows["split"] == split]
        if rows.empty:
            raise ValueError(f"evaluation set '{spec}' has no recordings")
        evals[spec] = rows
    table, evals, duplicates = handle_duplicates(
        table, evals, data.duplicates, cap=(data.max_eval, data.validation_seed)
    )
    train = cap_rows(table[table["split"] == "train"], data.max_train, seed=data.validation_seed)
    val = table[table["split"] == "val"]
    if val.empty and not train.empty:
        raise ValueError(
            f"the validation split of {data.train_set} is empty ({validation}): too few records per source and "
            f"class; raise data.validation_minority_cap or data.validation_fraction, or use data.validation=stratified"
        )
    return TrialTables(table, train, val, evals, duplicates, validation)


def load_tables(
    data: DataConfig, data_root: str | Path, shared: dict | None = None
) -> tuple[TrialTables, TrialDatasets]:
    """The recordings a trial with data settings ``data`` uses, from the datasets under ``data_root``,
    and the datasets they came from: what :func:`prepare_data` extracts the features of and the dry
    run sizes, so that the two cannot differ. ``shared``: see :class:`TrialDatasets`."""
    datasets = TrialDatasets(data, data_root, shared)
    return select_tables(data, datasets), datasets


def handle_duplicates(
    table: pd.DataFrame, evals: dict[str, pd.DataFrame], setting: str, cap: tuple[int | None, int] = (None, 0)
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict]:
    """Act on identical audio (``audio_hash``) between a trial's training data and evaluation sets.

    ``table`` holds the training dataset with its train / val / test splits, ``evals`` each
    evaluation set's rows; returns (table, evals, info). With ``setting``

    * ``remove``: inside each evaluation set the copies of one audio count once: the copy
      with the smallest id is kept, the others dropped, and the kept copy's rows get as
      ``group`` the cluster joining the patients (groups) of every copy
      (:func:`study.data.table.audio_clusters`), so the analysis resamples them together.
      The evaluation sets are then capped (``cap`` = (max_eval, seed)). A train or val row
      whose audio also lies in any evaluation set as scored (after the cap; another file:
      the same file is no copy) is dropped from ``table``, with every segment of its file;
      the evaluation copy stays. Copies across two evaluation sets are left alone: each
      set is scored on its own.
    * ``error``: the same inside evaluation sets, but a training or validation copy of
      evaluation audio raises ValueError naming both files.
    * ``keep``: nothing changes (the behaviour before this setting); duplicates are only listed.

    Train-vs-validation copies inside the training data are only reported (``train_val``):
    with ``remove`` or ``error`` the validation split already keeps identical audio on one
    side (study.data.splits.assign_validation, ``join_duplicates``), so there are none.
    ``info`` lists what was removed (``removed_from_training``: id, split and the evaluation
    copies, "SET:id"), dropped inside evaluation sets (``dropped_from_eval``: {set: {dropped
    id: kept id}}) and copies left in training (``within_training``), with the counts
    ``duplicates_removed_from_training``, ``duplicates_removed_from_validation``,
    ``duplicates_dropped_from_eval`` and ``duplicates_train_val``.
    """
    limit, seed = cap
    dropped: dict[str, dict[str, str]] = {}
    if setting != "keep":
        evals = {spec: _one_copy(rows, dropped.setdefault(spec, {})) for spec, rows in evals.items()}
        dropped = {spec: d for spec, d in dropped.items() if d}
    evals = {spec: cap_rows(rows, limit, seed=seed) for spec, rows in evals.items()}
    training = table[table["split"].isin(["train", "val"])].drop_duplicates("path")
    matches: dict[str, list[tuple[str, str]]] = {}  # training id -> [("SET:id", path of the evaluation copy)]
    training_hashes = pd.DataFrame({"id": training["id"].astype(str), "audio_hash": training["audio_hash"]})
    for spec, rows in evals.items():
        files = rows.drop_duplicates("path")
        files = files[~files["path"].isin(training["path"])]
        copies = pd.DataFrame(
            {"eval_id": files["id"].astype(str), "path": files["path"].astype(str), "audio_hash": files["audio_hash"]}
        )
        # a join on the content hash: only the (rare) matching pairs reach Python
        pairs = training_hashes.merge(copies, on="audio_hash").sort_values(["id", "eval_id", "path"])
        for tid, eval_id, path in zip(pairs["id"], pairs["eval_id"], pairs["path"]):
            matches.setdefault(tid, []).append((f"{spec}:{eval_id}", path))
    by_id = training.set_index(training["id"].astype(str))
    removed = [
        {"id": tid, "split": str(by_id.at[tid, "split"]), "same_as": [name for name, _ in found]}
        for tid, found in sorted(matches.items())
    ]
    if removed and setting == "error":
        pairs = "; ".join(
            f"{by_id.at[tid, 'path']} ({by_id.at[tid, 'split']}) = "
            + ", ".join(f"{path} ({name})" for name, path in found)
            for tid, found in sorted(matches.items())[:10]
        )
        raise ValueError(
            f"data.duplicates=error: {len(removed)} training/validation recording(s) have the same audio as "
            f"evaluation recordings: {pairs}{' ...' if len(removed) > 10 else ''}; set data.duplicates=remove to "
            f"drop the training copies"
        )
    if removed and setting == "remove":
        table = table[~table["path"].isin(set(by_id.loc[list(matches), "path"]))]  # every segment of the file
    kept = table[table["split"].isin(["train", "val"])]
    within = kept.drop_duplicates("path").groupby("audio_hash")["id"].agg(lambda ids: sorted(map(str, ids)))
    info = {
        "setting": setting,
        "removed_from_training": removed if setting == "remove" else [],
        "listed_in_training": removed if setting == "keep" else [],
        "dropped_from_eval": dropped,
        "within_training": sorted(ids for ids in within if len(ids) > 1),
        "train_val": _same_audio(kept[kept["split"] == "train"], kept[kept["split"] == "val"]),
    }
    info["duplicates_removed_from_training"] = sum(r["split"] == "train" for r in info["removed_from_training"])
    info["duplicates_removed_from_validation"] = sum(r["split"] == "val" for r in info["removed_from_training"])
    info["duplicates_dropped_from_eval"] = sum(len(d) for d in dropped.values())
    info["duplicates_train_val"] = len(info["train_val"])
    return table, evals, info


def _one_copy(rows: pd.DataFrame, dropped: dict[str, str]) -> pd.DataFrame:
    """``rows`` with one file per audio content (the one with the smallest id), its rows grouped
    with every copy's patient; ``dropped`` receives {dropped id: kept id}."""
    files = rows.drop_duplicates("path").assign(_id=lambda f: f["id"].astype(str)).sort_values("_id")
    first = files.drop_duplicates("audio_hash")
    extra = files[~files["path"].isin(first["path"])]
    if extra.empty:
        return rows
    kept_id = first.set_index("audio_hash")["_id"]
    dropped.update({i: kept_id[h] for i, h in zip(extra["_id"], extra["audio_hash"])})
    out = rows.assign(group=audio_clusters(rows))
    return out[~out["path"].isin(extra["path"])]


def describe_duplicates(info: dict) -> list[str]:
    """One console line per kind of duplicate acted on (none when nothing was)."""
    lines = []
    removed = info.get("removed_from_training", [])
    if removed:
        sets = sorted({s.rsplit(":", 1)[0] for r in removed for s in r["same_as"]})
        ids = [r["id"] for r in removed]
        lines.append(
            f"data: removed {len(removed)} training/validation recording(s) whose audio is also in "
            f"{', '.join(sets)}: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
        )
    for spec, pairs in info.get("dropped_from_eval", {}).items():
        shown = ", ".join(f"{d} (= {k})" for d, k in list(pairs.items())[:10])
        lines.append(
            f"data: {spec}: dropped {len(pairs)} copy(ies) of audio already in the set, each scored once with "
            f"its kept copy as one cluster: {shown}{' ...' if len(pairs) > 10 else ''}"
        )
    return lines


@torch.no_grad()
def standardize_spectrograms(splits: list[SplitData], reference: SplitData, chunk: int = 256) -> dict:
    """Standardise every split's images in place with the mean and std of ``reference``'s
    (the training split's) pixels, as AST does for its fbank input; returns the statistics."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(reference.images), chunk):
        block = reference.images[start : start + chunk].double()
        total, total_sq, count = (
            total + block.sum().item(),
            total_sq + block.square().sum().item(),
            count + block.numel(),
        )
    if count == 0:
        raise ValueError("cannot standardise spectrograms: the training split has no windows")
    mean = total / count
    std = max(total_sq / count - mean**2, 0.0) ** 0.5
    if std == 0.0:
        raise ValueError("cannot standardise spectrograms: the training spectrograms are constant")
    for split in splits:
        for start in range(0, len(split.images), chunk):
            block = split.images[start : start + chunk]
            block.copy_((block.float() - mean) / std)
    return {"mean": mean, "std": std, "from": "training split, all pixels"}


def cap_rows(table: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A fixed label-stratified subset of at most ``limit`` rows (all rows when None)."""
    if limit is None or len(table) <= limit:
        return table
    rng = np.random.default_rng(seed)
    shares = table["label"].value_counts(normalize=True)
    picked = []
    for label, share in shares.sort_index().items():
        rows = table.index[table["label"] == label].to_numpy()
        picked.extend(rng.choice(rows, size=max(1, int(round(limit * share))), replace=False))
    return table.loc[sorted(picked)]


def prepare_data(
    trial: TrialConfig, data_root: str | Path, *, progress: bool = True, n_jobs: int | None = None
) -> TrialData:
    """Load datasets, draw the validation split, extract (cached) features for every split.

    ``data.extra_roots`` adds recordings from more roots to a dataset. With an ``fbank``
    feature profile every split's spectrograms are standardised with the training
    split's mean and std (recorded in ``info["spectrogram_standardization"]``). When
    the training dataset has a test split, ``info["split_check"]`` counts the
    recordings and patients on each side; a recording on both sides is an error.
    Duplicate audio is acted on as ``data.duplicates`` says (:func:`handle_duplicates`):
    ``info["duplicates"]`` lists what was removed or dropped, ``info["duplicates_*"]``
    count it, and a line on the console says so.
    """
    data, profile = trial.data, trial.features
    selected, datasets = load_tables(data, data_root)
    table, train_rows, val_rows, eval_tables = selected.table, selected.train, selected.val, selected.evals
    for line in describe_duplicates(selected.duplicates):
        print(line, flush=True)

    clean = {}  # evaluation sets under eval_variants, scored by the same model
    cache = FeatureCache()  # one object, so that it counts the damaged entries it repaired
    started, stages = time.perf_counter(), []

    def extracted(rows, feature_profile, **options):
        feature_set = extract_features(rows, feature_profile, cache=cache, progress=progress, n_jobs=n_jobs, **options)
        stages.append(feature_set.stats)
        return feature_set

    def features(name, rows):
        return SplitData.from_features(name, extracted(rows, profile, desc=name))

    for key, values in data.eval_variants.items():
        for value in values:
            variant = trial.feature_variant(key, value)
            for spec, rows in list(eval_tables.items()):
                name = variant_name(spec, key, value)
                clean[name] = SplitData.from_features(name, extracted(rows, variant, desc=name))
    perturbed = [
        PerturbedSplit(
            spec,
            item.id,
            item.severity,
            SplitData.from_features(
                spec,
                extracted(
                    rows,
                    profile,
                    transform=partial(perturb, item.name, item.severity, item.kwargs),
                    transform_key=f"{item.id}@{item.severity}",
                    desc=f"{spec} {item.id}@{item.severity}",
                ),
            ),
        )
        for spec, rows in eval_tables.items()
        for item in parse_perturbation_suite(data.perturbations)
    ]
    info = {
        "validation": selected.validation,
        "duplicates": selected.duplicates,
        **{k: v for k, v in selected.duplicates.items() if k.startswith("duplicates_")},
        "datasets": {
            name: {
                "root": str(ds.root),
                "items": len(ds.table),
                "problems": [str(p) for p in ds.problems],
                **{k: v for k, v in ds.info.items() if isinstance(v, (str, int, float))},
                "duplicate_groups": ds.duplicates,
            }
            for name, ds in datasets.loaded.items()
        },
        "fingerprints": {name: fingerprint(ds.table) for name, ds in datasets.loaded.items()},
    }
    for name, ds in datasets.loaded.items():
        info["datasets"][name]["roots"] = ds.info.get("combined_roots", [str(ds.root)])
    if datasets.missing_roots:
        info["missing_extra_roots"] = datasets.missing_roots
    if (table["split"] == "test").any():
        info["split_check"] = {data.train_set: split_check(table)}
    trial_data = TrialData(
        features("train", train_rows),
        features("val", val_rows),
        {**{spec: features(spec, rows) for spec, rows in eval_tables.items()}, **clean},
        profile,
        info,
        perturbed,
    )
    info["cache_repaired"] = cache.repaired
    if progress:  # one line for the whole stage, in a terminal and in a log alike
        total = {k: sum(stage[k] for stage in stages) for k in ("items", "cached", "computed", "windows")}
        print(
            f"features: {len(stages)} sets, {total['items']} recordings ({total['cached']} cached, "
            f"{total['computed']} computed, {total['windows']} windows) in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    if cache.repaired:
        print(f"feature cache: {cache.repaired} damaged entries removed and recomputed (paths above)", flush=True)
    if profile.spectrogram == "fbank":
        splits = [trial_data.train, trial_data.val, *trial_data.evals.values(), *(p.split for p in perturbed)]
        info["spectrogram_standardization"] = standardize_spectrograms(splits, trial_data.train)
    return trial_data


def variant_name(eval_set: str, key: str, value) -> str:
    """The evaluation-set name of ``eval_set`` scored with feature setting ``key`` = ``value``."""
    return f"{eval_set}[{key.split('.', 1)[1]}={value}]"


def perturb(name: str, severity: int, options: dict, wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A feature-cache transform applying one perturbation; random ones are seeded by the
    audio's content, so every recording gets its own, repeatable draw."""
    seed = int.from_bytes(hashlib.blake2b(wave.tobytes(), digest_size=4).digest(), "little")
    return apply_perturbation(name, wave, sample_rate, severity, seed=seed, **options)


def fingerprint(table: pd.DataFrame) -> str:
    """Hash of a table's ids, labels, splits and audio: equal fingerprints, equal data."""
    text = pd.util.hash_pandas_object(table[["id", "label", "split", "audio_hash", "start_s", "end_s"]], index=False)
    return hashlib.blake2b(text.to_numpy().tobytes(), digest_size=8).hexdigest()
