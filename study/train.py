"""Training and recording-level evaluation of one trial.

:func:`prepare_data` loads the datasets, draws the validation split and reads
the cached features once; :func:`train_and_evaluate` trains a model on them
with the paper's recipe (or its ablations) and evaluates the best weights on
every evaluation set. Ray Tune calls the second with data it shared through
its object store; ``python -m study.trial`` calls both in one process.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import platform
import random
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from analysis.perturbations import apply_perturbation, parse_perturbation_suite

from .cache import FeatureSet, extract_features
from .config import apply_recipe, model_config_of, profile_of, section
from .data import LoadedDataset, assign_validation, load_dataset
from .metrics import binary_metrics, choose_threshold, multiclass_metrics
from .models import create_model, load_ast_checkpoint
from .sam import SAM, disable_running_stats, enable_running_stats


@dataclass
class SplitData:
    """Features of one split as tensors kept in memory (float16; cast per batch).

    images : (n_windows, 1, H, W); waves : (n_windows, 1, L); item_index : (n_windows,)
    row of ``table`` per window; labels : (n_items,) task labels.
    """

    name: str
    table: pd.DataFrame
    images: torch.Tensor
    waves: torch.Tensor
    item_index: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_features(cls, name: str, features: FeatureSet) -> "SplitData":
        # np.array copies memory-mapped cache packs into memory once, instead of every epoch
        return cls(name, features.table, torch.from_numpy(np.array(features.images))[:, None],
                   torch.from_numpy(np.array(features.waves))[:, None],
                   torch.from_numpy(np.array(features.item_index)),
                   torch.as_tensor(np.array(features.table["label"].to_numpy())))

    @property
    def n_items(self) -> int:
        return len(self.table)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.waves, self.item_index, self.labels))

    def to(self, device: torch.device, pin: bool = False) -> "SplitData":
        """The same split with its tensors on ``device`` (this object when they are there already);
        ``pin`` page-locks host tensors so per-batch copies to a GPU run asynchronously."""
        tensors = [self.images, self.waves, self.item_index, self.labels]
        if pin and device.type == "cpu":
            moved = [t.pin_memory() for t in tensors]
        elif all(t.device == device for t in tensors):
            return self
        else:
            moved = [t.to(device) for t in tensors]
        return dataclasses.replace(self, images=moved[0], waves=moved[1], item_index=moved[2], labels=moved[3])


@dataclass
class PerturbedSplit:
    """An evaluation set with one perturbation at one severity applied to its audio."""

    eval_set: str
    perturbation: str  # id, e.g. "codec:mp3"
    severity: int
    split: SplitData


@dataclass
class TrialData:
    """Everything a trial reads: train/val splits, evaluation sets (clean and perturbed), the profile."""

    train: SplitData
    val: SplitData
    evals: dict[str, SplitData]
    profile: object
    info: dict = field(default_factory=dict)
    perturbed: list[PerturbedSplit] = field(default_factory=list)


def place_splits(data: TrialData, device: torch.device, headroom: float = 0.5) -> tuple[TrialData, bool]:
    """Put every split's tensors on ``device`` once, when they fit in ``headroom`` of its free memory.

    Returns (data, on_device). On a GPU the training step then draws batches by index on the
    device, with no host copy; when the features do not fit they stay in pinned host memory and
    each batch is copied asynchronously. On the CPU the data is returned as it is.
    """
    if device.type != "cuda":
        return data, False
    splits = [data.train, data.val, *data.evals.values(), *(p.split for p in data.perturbed)]
    free, _total = torch.cuda.mem_get_info(device)
    on_device = sum(split.nbytes for split in splits) <= headroom * free

    def move(split: SplitData) -> SplitData:
        return split.to(device) if on_device else split.to(torch.device("cpu"), pin=True)

    placed = dataclasses.replace(
        data, train=move(data.train), val=move(data.val), evals={k: move(v) for k, v in data.evals.items()},
        perturbed=[dataclasses.replace(p, split=move(p.split)) for p in data.perturbed])
    return placed, on_device


def data_settings(config: dict) -> dict:
    """The settings that decide a trial's data: trials sharing them share one TrialData."""
    return {k: v for k, v in apply_recipe(config).items() if k.startswith(("data.", "features."))}


def combine_datasets(first: LoadedDataset, second: LoadedDataset) -> LoadedDataset:
    """One dataset holding the recordings of both (e.g. synthetic ICBHI plus a few real recordings).

    Raises ValueError when an item id or a patient (group) appears in both: whether they
    are the same recording or person cannot be known, and a merged patient would break
    patient-level splits and the analysis' cluster bootstrap.
    """
    for column in ("id", "group"):
        shared = set(first.table[column].dropna()) & set(second.table[column].dropna())
        if shared:
            raise ValueError(f"datasets at {first.root} and {second.root} share {column} values "
                             f"{sorted(map(str, shared))[:5]}; they cannot be combined")
    table = pd.concat([first.table, second.table], ignore_index=True)
    info = {**first.info, "combined_roots": first.info.get("combined_roots", [str(first.root)]) + [str(second.root)]}
    return LoadedDataset(first.name, first.root, table, first.problems + second.problems,
                         first.duplicates + second.duplicates, info)


def split_check(table: pd.DataFrame) -> dict:
    """Recordings and patients on both sides of a train/test split (train includes validation).

    Raises ValueError when a recording (audio file) lies on both sides: an official
    split by recording must never share one. Patients may be shared; they are listed.
    """
    train = table[table["split"].isin(["train", "val"])]
    test = table[table["split"] == "test"]
    shared_recordings = sorted(set(train["path"]) & set(test["path"]))
    if shared_recordings:
        raise ValueError(f"{len(shared_recordings)} recording(s) are in both train and test, "
                         f"e.g. {shared_recordings[0]}")
    train_patients, test_patients = set(train["group"].dropna()), set(test["group"].dropna())
    return {"recordings_train": int(train["path"].nunique()), "recordings_test": int(test["path"].nunique()),
            "recordings_in_train_and_test": 0, "patients_train": len(train_patients),
            "patients_test": len(test_patients),
            "patients_in_train_and_test": sorted(map(str, train_patients & test_patients))}


@torch.no_grad()
def standardize_spectrograms(splits: list[SplitData], reference: SplitData, chunk: int = 256) -> dict:
    """Standardise every split's images in place with the mean and std of ``reference``'s
    (the training split's) pixels, as AST does for its fbank input; returns the statistics."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(reference.images), chunk):
        block = reference.images[start:start + chunk].double()
        total, total_sq, count = total + block.sum().item(), total_sq + block.square().sum().item(), count + block.numel()
    if count == 0:
        raise ValueError("cannot standardise spectrograms: the training split has no windows")
    mean = total / count
    std = max(total_sq / count - mean ** 2, 0.0) ** 0.5
    if std == 0.0:
        raise ValueError("cannot standardise spectrograms: the training spectrograms are constant")
    for split in splits:
        for start in range(0, len(split.images), chunk):
            block = split.images[start:start + chunk]
            block.copy_((block.float() - mean) / std)
    return {"mean": mean, "std": std, "from": "training split, all pixels"}


def _cap(table: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
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
    config = apply_recipe(config)
    data = section(config, "data")
    root = Path(data_root)
    profile = profile_of(config)
    loaded, missing_roots = {}, []

    def dataset(name):
        if name not in loaded:
            options = {"skip_bad": data["skip_bad"]}
            if name == "pascal":
                options["mapping"] = data["pascal_mapping"]
            combined = load_dataset(name, root / name, **options)
            for extra in data["extra_roots"].get(name, []):
                extra_root = Path(extra).expanduser()
                if not extra_root.exists():
                    warnings.warn(f"data.extra_roots: {extra_root} does not exist; {name} is used without it")
                    missing_roots.append(str(extra_root))
                    continue
                combined = combine_datasets(combined, load_dataset(name, extra_root, **options))
            loaded[name] = combined
        return loaded[name]

    train_set = dataset(data["train_set"])
    table = assign_validation(train_set.table, fraction=data["validation_fraction"], seed=data["validation_seed"],
                              method=data["validation"])
    train_rows = _cap(table[table["split"] == "train"], data["max_train"], seed=data["validation_seed"])
    val_rows = table[table["split"] == "val"]
    eval_tables = {}
    for spec in data["eval_sets"]:
        name, _, split = spec.partition(":")
        rows = dataset(name).table
        if split:
            rows = (table if name == data["train_set"] else rows)
            rows = rows[rows["split"] == split]
        if rows.empty:
            raise ValueError(f"evaluation set '{spec}' has no recordings")
        eval_tables[spec] = _cap(rows, data["max_eval"], seed=data["validation_seed"])

    clean = {}  # evaluation sets under eval_variants, scored by the same model

    def features(name, rows):
        return SplitData.from_features(name, extract_features(rows, profile, progress=progress, n_jobs=n_jobs,
                                                              desc=name))

    for key, values in data["eval_variants"].items():
        for value in values:
            variant = profile_of({**config, key: value})
            for spec, rows in list(eval_tables.items()):
                name = variant_name(spec, key, value)
                clean[name] = SplitData.from_features(name, extract_features(
                    rows, variant, progress=progress, n_jobs=n_jobs, desc=name))
    perturbed = [PerturbedSplit(spec, item.id, item.severity, SplitData.from_features(
        spec, extract_features(rows, profile, transform=partial(perturb, item.name, item.severity, item.kwargs),
                               transform_key=f"{item.id}@{item.severity}", progress=progress, n_jobs=n_jobs,
                               desc=f"{spec} {item.id}@{item.severity}")))
        for spec, rows in eval_tables.items() for item in parse_perturbation_suite(data["perturbations"])]
    info = {
        "validation": {"method": data["validation"], "fraction": data["validation_fraction"],
                       "seed": data["validation_seed"]},
        "datasets": {name: {"root": str(ds.root), "items": len(ds.table), "problems": [str(p) for p in ds.problems],
                            **{k: v for k, v in ds.info.items() if isinstance(v, (str, int, float))}}
                     for name, ds in loaded.items()},
        "fingerprints": {name: fingerprint(ds.table) for name, ds in loaded.items()},
    }
    for name, ds in loaded.items():
        info["datasets"][name]["roots"] = ds.info.get("combined_roots", [str(ds.root)])
    if missing_roots:
        info["missing_extra_roots"] = missing_roots
    if (table["split"] == "test").any():
        info["split_check"] = {data["train_set"]: split_check(table)}
    trial_data = TrialData(features("train", train_rows), features("val", val_rows),
                           {**{spec: features(spec, rows) for spec, rows in eval_tables.items()}, **clean},
                           profile, info, perturbed)
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: str) -> torch.device:
    """The device of a ``train.device`` setting outside Ray (see :func:`resolve_device`)."""
    return resolve_device(choice)[0]


def resolve_device(choice: str, gpu_assigned: bool | None = None) -> tuple[torch.device, str | None]:
    """The device a trial trains on, and a note when it is not the one it was meant to have.

    ``choice`` is the ``train.device`` setting: ``"assigned"`` (CUDA exactly when Ray gave the
    trial a GPU; outside Ray, ``gpu_assigned=None``, CUDA when there is one), ``"auto"`` (CUDA
    when there is one, else the CPU, also when Ray gave a GPU that CUDA cannot see), ``"cuda"``
    or ``"cpu"``. Raises RuntimeError when a GPU is required and CUDA finds none.
    """
    cuda = torch.cuda.is_available()
    if choice == "cpu":
        return torch.device("cpu"), None
    if choice == "auto" or (choice == "assigned" and gpu_assigned is None):
        note = ("Ray gave this trial a GPU but torch finds no CUDA device; trained on the CPU (train.device: auto)"
                if gpu_assigned and not cuda else None)
        return torch.device("cuda" if cuda else "cpu"), note
    if choice == "assigned" and not gpu_assigned:
        return torch.device("cpu"), None
    if not cuda:
        why = ("Ray gave this trial a GPU" if gpu_assigned else "train.device is 'cuda'")
        raise RuntimeError(
            f"{why}, but torch {torch.__version__} finds no CUDA device (torch.version.cuda="
            f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): install a "
            f"CUDA build of torch on the worker, ask for no GPU (--gpus-per-trial 0), or set train.device=auto "
            f"to train on the CPU instead")
    return torch.device("cuda"), None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``train.precision`` setting on ``device`` (None: plain fp32).

    "auto" is bf16 on a CUDA device that supports it and fp32 everywhere else: bf16 needs no
    loss scaling, and fp16 without it can underflow gradients, so fp16 is never chosen.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"train.precision is 'bf16' but {torch.cuda.get_device_name(device)} lacks bf16")
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def device_record(device: torch.device, dtype: torch.dtype | None, note: str | None, on_device: bool) -> dict:
    """What metrics.json says about where and how a trial trained."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    record = {"type": device.type, "name": name, "precision": "bf16-autocast" if dtype is not None else "fp32",
              "data_on_device": on_device}
    if note:
        record["note"] = note
    return record


def _inputs(model, split: SplitData, rows: torch.Tensor, device: torch.device, channels_last: bool = False):
    """Model inputs for windows ``rows`` (float32 on device); None for a branch the model lacks.

    ``rows`` lives where the split's tensors live, so indexing never crosses devices; a split
    kept on the host is copied per batch (asynchronously from pinned memory)."""
    spec = wave = None
    if model.spectrogram_branch is not None:
        spec = split.images[rows].to(device, non_blocking=True).float()
        if channels_last:
            spec = spec.contiguous(memory_format=torch.channels_last)
    if model.waveform_branch is not None:
        wave = split.waves[rows].to(device, non_blocking=True).float()
    return spec, wave


@torch.no_grad()
def predict(model, split: SplitData, device: torch.device, batch_size: int = 128,
            features_hook: Callable[[dict], dict] | None = None, dtype: torch.dtype | None = None) -> np.ndarray:
    """Recording-level probabilities: window probabilities averaged per item.

    Returns (n_items,) P(abnormal) for a binary model, (n_items, C) class
    probabilities otherwise. ``features_hook`` may rewrite the branch features
    before the head (test-time branch ablation); ``dtype`` is the autocast dtype.
    """
    model.eval()
    n_windows = len(split.item_index)
    outputs = []
    for start in range(0, n_windows, batch_size):
        rows = torch.arange(start, min(start + batch_size, n_windows), device=split.images.device)
        with _autocast(device, dtype):
            features = model.forward_features(*_inputs(model, split, rows, device))
            if features_hook is not None:
                features = features_hook(features)
            logits = model.forward_head(features).float()
        outputs.append(torch.sigmoid(logits) if logits.ndim == 1 else torch.softmax(logits, dim=1))
    window_probs = torch.cat(outputs).cpu().double()  # the one host transfer per evaluation
    item_index = split.item_index.cpu()
    shape = (split.n_items,) + tuple(window_probs.shape[1:])
    sums = torch.zeros(shape, dtype=torch.float64).index_add_(0, item_index, window_probs)
    counts = torch.bincount(item_index, minlength=split.n_items).double()
    return (sums / counts.reshape(-1, *[1] * (sums.ndim - 1))).numpy()


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def evaluate_probs(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """Metrics at 0.5 and at the validation-chosen threshold (binary), or the ICBHI metrics."""
    if probs.ndim == 2:
        return multiclass_metrics(labels, probs)
    at_val = binary_metrics(labels, probs, threshold)
    at_half = binary_metrics(labels, probs, 0.5)
    out = dict(at_val)
    out.update({f"{k}@0.5": v for k, v in at_half.items() if k not in ("roc_auc", "n", "n_pos", "threshold")})
    return out


def _monitor_value(metric: str, labels: np.ndarray, probs: np.ndarray) -> float:
    if probs.ndim == 2:
        return float(multiclass_metrics(labels, probs)["score"] if metric != "accuracy"
                     else np.mean(probs.argmax(1) == labels))
    # the ICBHI Score of two classes, (sensitivity + specificity) / 2, is balanced accuracy
    value = binary_metrics(labels, probs, 0.5)["balanced_accuracy" if metric == "score" else metric]
    return -np.inf if np.isnan(value) else value


def epoch_order(window_labels: torch.Tensor, weighted_sampler: bool, generator: torch.Generator) -> torch.Tensor:
    """Window indices for one epoch: a permutation, or with the weighted random sampler
    len(window_labels) draws with replacement, each class equally likely."""
    n = len(window_labels)
    if not weighted_sampler:
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(window_labels).double()
    return torch.multinomial(1.0 / counts[window_labels], n, replacement=True, generator=generator)


@dataclass
class TrialResult:
    metrics: dict  # eval set → metrics dict; plus "val"
    predictions: pd.DataFrame
    best_state: dict
    threshold: float
    epochs: int
    best_epoch: int
    history: list[dict]
    wall_time_s: float  # training and evaluation, summed over resumptions
    resumed_at: list[int]  # epochs this trial was resumed from after a failure
    feature_means: dict  # training means of the fusion head's inputs, for branch ablation
    device: dict = field(default_factory=dict)  # where and how it trained (device_record)


@dataclass
class _Setup:
    """A trial's model, optimizer and device, built the same way for training and for finishing."""

    config: dict
    train_cfg: dict
    data: TrialData
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype | None
    record: dict
    eval_batch_size: int


def _setup(config: dict, data: TrialData, gpu_assigned: bool | None, fresh: bool) -> _Setup:
    config = apply_recipe(config)
    train_cfg = section(config, "train")
    torch.set_num_threads(train_cfg["threads"])
    seed_everything(int(config["seed"]))
    device, note = resolve_device(train_cfg["device"], gpu_assigned)
    dtype = autocast_dtype(train_cfg["precision"], device)
    model = create_model(model_config_of(config, data.profile))
    # a pretrained AST starts AST trials only: the other architectures' ViTs have no AST layout
    if config.get("model.init_checkpoint") and model.config.architecture == "ast" and fresh:
        load_ast_checkpoint(model, Path(config["model.init_checkpoint"]).expanduser())
    model = model.to(device)
    if train_cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    data, on_device = place_splits(data, device)
    eval_batch_size = train_cfg["eval_batch_size"] or (1024 if device.type == "cuda" else 128)
    return _Setup(config, train_cfg, data, model, device, dtype, device_record(device, dtype, note, on_device),
                  eval_batch_size)


def train_and_evaluate(config: dict, data: TrialData, *, trial_id: str = "trial",
                       report: Callable[[dict, Callable[[], dict]], None] | None = None,
                       resume_state: dict | None = None, gpu_assigned: bool | None = None) -> TrialResult:
    """Train one model and evaluate its best weights on every evaluation set.

    ``report(epoch_metrics, get_state)`` is called after every epoch; ``get_state()``
    returns everything needed to continue exactly from that epoch, and
    ``resume_state`` (such a state) continues a run: same seed, same data, same
    result as a run that was never interrupted. ``gpu_assigned`` says whether Ray gave
    the trial a GPU (None outside Ray); see :func:`resolve_device`.
    """
    run = _setup(config, data, gpu_assigned, fresh=resume_state is None)
    train_cfg, model, device, train = run.train_cfg, run.model, run.device, run.data.train
    binary = model.config.num_classes == 1
    optimizer_kwargs = {"lr": train_cfg["lr"], "weight_decay": train_cfg["weight_decay"]}
    if train_cfg["sam"]:
        optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=train_cfg["sam_rho"], **optimizer_kwargs)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), **optimizer_kwargs)

    window_labels = train.labels.cpu()[train.item_index.cpu()]
    n_classes = max(2, model.config.num_classes)
    class_counts = torch.bincount(window_labels, minlength=n_classes).double()
    if (class_counts[: 2 if binary else n_classes] == 0).any():
        raise ValueError(f"training data lacks a class: window counts per class {class_counts.tolist()}")
    # balanced weights n / (K * n_c), as sklearn's class_weight="balanced"
    class_weights = (class_counts.sum() / (n_classes * class_counts.clamp(min=1))).float().to(device)
    generator = torch.Generator().manual_seed(int(run.config["seed"]))

    state = {"epoch": 0, "best_score": -np.inf, "best_epoch": 0, "since_best": 0, "history": [],
             "best_state": None, "seconds": 0.0, "resumed_at": []}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        generator.set_state(resume_state["generator"])
        torch.set_rng_state(resume_state["torch_rng"])
        state = {k: resume_state[k] for k in state}
        state["resumed_at"] = state["resumed_at"] + [state["epoch"]]
    segment_start = time.perf_counter() - state["seconds"]  # wall time accumulates across resumptions

    def get_state() -> dict:
        state["seconds"] = time.perf_counter() - segment_start
        return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                **copy.deepcopy(state)}

    step = _train_step(run, optimizer, class_weights, binary)
    forward = torch.compile(model) if train_cfg["compile"] else model
    val_labels = run.data.val.labels.cpu().numpy()
    targets_all = train.labels[train.item_index]  # on the data's device
    n, batch_size = len(window_labels), train_cfg["batch_size"]
    # batch boundaries are known on the host: no step needs to ask the device anything
    batches = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size) if min(lo + batch_size, n) - lo >= 2
               or n == 1]
    while state["epoch"] < train_cfg["max_epochs"] and state["since_best"] < train_cfg["patience"]:
        epoch_start = time.perf_counter()
        model.train()
        order = epoch_order(window_labels, train_cfg["balance"] == "sampler", generator).to(train.images.device)
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        for lo, hi in batches:
            rows = order[lo:hi]
            loss = step(forward, _inputs(model, train, rows, device, train_cfg["channels_last"]),
                        targets_all[rows].to(device, non_blocking=True))
            total_loss += loss.double() * (hi - lo)
        train_loss = float(total_loss) / max(n, 1)  # the epoch's one host synchronisation
        train_s = time.perf_counter() - epoch_start
        val_probs = predict(model, run.data.val, device, run.eval_batch_size, dtype=run.dtype)
        score = _monitor_value(train_cfg["monitor"], val_labels, val_probs)
        state["epoch"] += 1
        row = {"epoch": state["epoch"], "train_loss": train_loss, f"val_{train_cfg['monitor']}": score}
        if binary and 0 < val_labels.sum() < len(val_labels):
            row["val_roc_auc"] = binary_metrics(val_labels, val_probs)["roc_auc"]
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=state["epoch"], since_best=0,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["since_best"] += 1
        kept = row if state["best_epoch"] == state["epoch"] else state["history"][state["best_epoch"] - 1]
        # the validation metrics of the weights the trial keeps: what a search must compare
        row.update({f"kept_{k}": kept[k] for k in list(row) if k.startswith("val_")})
        row.update(best_epoch=state["best_epoch"], train_s=train_s, epoch_s=time.perf_counter() - epoch_start)
        state["history"].append(row)
        if report is not None:
            report(row, get_state)
    state["seconds"] = time.perf_counter() - segment_start
    return _finish(run, state, trial_id, segment_start)


def finish_from_state(config: dict, data: TrialData, state: dict, *, trial_id: str = "trial",
                      gpu_assigned: bool | None = None) -> TrialResult:
    """Evaluate the best weights kept in a per-epoch state (``get_state()``) as a finished trial
    would: for a trial a scheduler stopped early, whose own evaluation never ran."""
    run = _setup(config, data, gpu_assigned, fresh=False)
    return _finish(run, dict(state), trial_id, time.perf_counter() - state["seconds"])


def _finish(run: _Setup, state: dict, trial_id: str, segment_start: float) -> TrialResult:
    model, device, data = run.model, run.device, run.data
    binary = model.config.num_classes == 1
    model.load_state_dict(state["best_state"])
    val_labels = data.val.labels.cpu().numpy()
    val_probs = predict(model, data.val, device, run.eval_batch_size, dtype=run.dtype)
    threshold = choose_threshold(val_labels, val_probs, run.train_cfg["threshold_criterion"]) if binary else 0.5
    means = branch_feature_means(model, data.train, device, run.eval_batch_size)
    metrics, predictions = evaluate_model(model, data, device, trial_id, threshold, means,
                                          batch_size=run.eval_batch_size, dtype=run.dtype)
    metrics = {"val": evaluate_probs(val_labels, val_probs, threshold), **metrics}
    return TrialResult(metrics, predictions, state["best_state"], threshold, state["epoch"], state["best_epoch"],
                       state["history"], time.perf_counter() - segment_start, state["resumed_at"], means, run.record)


def _train_step(run: _Setup, optimizer, class_weights: torch.Tensor, binary: bool):
    """One optimizer update on a batch; returns the (device) loss, never a host number."""
    model, device, dtype, balance = run.model, run.device, run.dtype, run.train_cfg["balance"]

    def loss_of(forward, inputs, targets):
        with _autocast(device, dtype):
            logits = forward(*inputs).float()
        if binary:
            weights = class_weights[targets] if balance == "class_weights" else None
            return F.binary_cross_entropy_with_logits(logits, targets.float(), weight=weights)
        return F.cross_entropy(logits, targets, weight=class_weights if balance == "class_weights" else None)

    def step(forward, inputs, targets) -> torch.Tensor:
        loss = loss_of(forward, inputs, targets)
        loss.backward()
        if run.train_cfg["sam"]:
            optimizer.first_step(zero_grad=True)
            disable_running_stats(model)  # the ascent pass must not move BatchNorm statistics
            loss_of(forward, inputs, targets).backward()
            enable_running_stats(model)
            optimizer.second_step(zero_grad=True)
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


@torch.no_grad()
def branch_feature_means(model, split: SplitData, device: torch.device, batch_size: int = 128) -> dict:
    """Training-set mean of every feature entry a fusion head reads (for branch ablation);
    {} for single-branch models."""
    if model.spectrogram_branch is None or model.waveform_branch is None:
        return {}
    model.eval()
    keys = [k for branch_keys in model.branch_feature_keys.values() for k in branch_keys]
    sums, count = {}, 0
    for start in range(0, len(split.item_index), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(split.item_index)), device=split.images.device)
        features = model.forward_features(*_inputs(model, split, rows, device))
        for key in keys:
            sums[key] = sums.get(key, 0) + features[key].float().sum(0)
        count += len(rows)
    return {key: (total / count).cpu() for key, total in sums.items()}


def ablation_hook(model, branch: str, replacement: str, means: dict) -> Callable[[dict], dict]:
    """Replace one branch's features by their training mean or by zeros before the head."""
    keys = model.branch_feature_keys[branch]

    def hook(features: dict) -> dict:
        features = dict(features)
        for key in keys:
            value = features[key]
            features[key] = (means[key].to(value.device, value.dtype).expand_as(value) if replacement == "mean"
                             else torch.zeros_like(value))
        return features

    return hook


def evaluate_model(model, data: TrialData, device: torch.device, trial_id: str, threshold: float,
                   means: dict, batch_size: int = 128, dtype: torch.dtype | None = None) -> tuple[dict, pd.DataFrame]:
    """Evaluate trained weights on every clean and perturbed evaluation set, and for fusion
    models with each branch ablated (mean / zeros). Returns (metrics, predictions)."""
    metrics, frames = {}, []
    evaluations = [(name, split, "none", 0) for name, split in data.evals.items()]
    evaluations += [(p.eval_set, p.split, p.perturbation, p.severity) for p in data.perturbed]
    ablations = [(f"{branch}={mode}", ablation_hook(model, branch, mode, means))
                 for branch in ("spectrogram", "waveform") for mode in ("mean", "zeros")] if means else []
    for name, split, perturbation, severity in evaluations:
        key = name if perturbation == "none" else f"{name}~{perturbation}@{severity}"
        for ablation, hook in [("none", None)] + ablations:
            probs = predict(model, split, device, batch_size, features_hook=hook, dtype=dtype)
            if ablation == "none":
                metrics[key] = evaluate_probs(split.labels.cpu().numpy(), probs, threshold)
            frames.append(prediction_frame(trial_id, name, split, probs, perturbation, severity, ablation))
    return metrics, pd.concat(frames, ignore_index=True)


PREDICTION_COLUMNS = ["trial_id", "eval_set", "recording_id", "source", "group", "label", "prob",
                      "perturbation", "severity", "ablation"]


def prediction_frame(trial_id: str, eval_set: str, split: SplitData, probs: np.ndarray,
                     perturbation: str = "none", severity: int = 0, ablation: str = "none") -> pd.DataFrame:
    """One row per recording: the columns of predictions.parquet (``prob`` = P(abnormal);
    for multi-class models also ``prob_0`` … ``prob_{C-1}``). ``ablation`` names a test-time
    branch ablation ("waveform=mean": the waveform features replaced by their training mean)."""
    frame = pd.DataFrame({
        "trial_id": trial_id, "eval_set": eval_set, "recording_id": split.table["id"].astype(str).to_numpy(),
        "source": split.table["source"].astype(str).to_numpy(), "group": split.table["group"].astype("string"),
        "label": split.labels.cpu().numpy(), "prob": probs if probs.ndim == 1 else 1.0 - probs[:, 0],
        "perturbation": perturbation, "severity": severity, "ablation": ablation,
    })
    if probs.ndim == 2:
        for k in range(probs.shape[1]):
            frame[f"prob_{k}"] = probs[:, k]
    return frame

