"""Assembling a trial's data: datasets, validation split, caps, features, variants and perturbed sets.

:func:`prepare_data` loads the datasets a trial config names, draws the
validation split, reads the cached features of every split and returns a
:class:`study.tensors.TrialData`; ``study.run`` does it once per distinct
:func:`data_settings` and shares the result with every trial through Ray's
object store, ``python -m study.trial`` in its own process.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .cache import extract_features
from .config import DataConfig, profile_of
from .data import LoadedDataset, assign_validation, load_dataset
from .perturbations import apply_perturbation, parse_perturbation_suite
from .tensors import PerturbedSplit, SplitData, TrialData


def data_settings(config: dict) -> dict:
    """The settings that decide a trial's data: trials sharing them share one TrialData."""
    return {k: v for k, v in config.items() if k.startswith(("data.", "features."))}


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
    split by recording must never share one. Patients may be shared; they are listed.
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
        "patients_train": len(train_patients),
        "patients_test": len(test_patients),
        "patients_in_train_and_test": sorted(map(str, train_patients & test_patients)),
    }


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


def prepare_data(config: dict, data_root: str | Path, *, progress: bool = True, n_jobs: int | None = None) -> TrialData:
    """Load datasets, draw the validation split, extract (cached) features for every split.

    ``data.extra_roots`` adds recordings from more roots to a dataset. With an ``fbank``
    feature profile every split's spectrograms are standardised with the training
    split's mean and std (recorded in ``info["spectrogram_standardization"]``). When
    the training dataset has a test split, ``info["split_check"]`` counts the
    recordings and patients on each side; a recording on both sides is an error.
    """
    data = DataConfig.from_config(config)
    root = Path(data_root)
    profile = profile_of(config)
    loaded, missing_roots = {}, []

    def dataset(name):
        if name not in loaded:
            options = {"skip_bad": data.skip_bad}
            if name == "pascal":
                options["mapping"] = data.pascal_mapping
            combined = load_dataset(name, root / name, **options)
            for extra in data.extra_roots.get(name, []):
                extra_root = Path(extra).expanduser()
                if not extra_root.exists():
                    warnings.warn(
                        f"data.extra_roots: {extra_root} does not exist; {name} is used without it", stacklevel=2
                    )
                    missing_roots.append(str(extra_root))
                    continue
                combined = combine_datasets(combined, load_dataset(name, extra_root, **options))
            loaded[name] = combined
        return loaded[name]

    train_set = dataset(data.train_set)
    table = assign_validation(
        train_set.table, fraction=data.validation_fraction, seed=data.validation_seed, method=data.validation
    )
    train_rows = cap_rows(table[table["split"] == "train"], data.max_train, seed=data.validation_seed)
    val_rows = table[table["split"] == "val"]
    eval_tables = {}
    for spec in data.eval_sets:
        name, _, split = spec.partition(":")
        rows = dataset(name).table
        if split:
            rows = table if name == data.train_set else rows
            rows = rows[rows["split"] == split]
        if rows.empty:
            raise ValueError(f"evaluation set '{spec}' has no recordings")
        eval_tables[spec] = cap_rows(rows, data.max_eval, seed=data.validation_seed)

    clean = {}  # evaluation sets under eval_variants, scored by the same model

    def features(name, rows):
        return SplitData.from_features(
            name, extract_features(rows, profile, progress=progress, n_jobs=n_jobs, desc=name)
        )

    for key, values in data.eval_variants.items():
        for value in values:
            variant = profile_of({**config, key: value})
            for spec, rows in list(eval_tables.items()):
                name = variant_name(spec, key, value)
                clean[name] = SplitData.from_features(
                    name, extract_features(rows, variant, progress=progress, n_jobs=n_jobs, desc=name)
                )
    perturbed = [
        PerturbedSplit(
            spec,
            item.id,
            item.severity,
            SplitData.from_features(
                spec,
                extract_features(
                    rows,
                    profile,
                    transform=partial(perturb, item.name, item.severity, item.kwargs),
                    transform_key=f"{item.id}@{item.severity}",
                    progress=progress,
                    n_jobs=n_jobs,
                    desc=f"{spec} {item.id}@{item.severity}",
                ),
            ),
        )
        for spec, rows in eval_tables.items()
        for item in parse_perturbation_suite(data.perturbations)
    ]
    info = {
        "validation": {"method": data.validation, "fraction": data.validation_fraction, "seed": data.validation_seed},
        "datasets": {
            name: {
                "root": str(ds.root),
                "items": len(ds.table),
                "problems": [str(p) for p in ds.problems],
                **{k: v for k, v in ds.info.items() if isinstance(v, (str, int, float))},
            }
            for name, ds in loaded.items()
        },
        "fingerprints": {name: fingerprint(ds.table) for name, ds in loaded.items()},
    }
    for name, ds in loaded.items():
        info["datasets"][name]["roots"] = ds.info.get("combined_roots", [str(ds.root)])
    if missing_roots:
        info["missing_extra_roots"] = missing_roots
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
