"""Training and recording-level evaluation of one trial.

:func:`train_and_evaluate` trains a model on a trial's data (a
:class:`study.tensors.TrialData`, assembled by :func:`study.trial_data.prepare_data`)
with the paper's recipe or its ablations, on the device the trial was given, and
evaluates the best weights on every evaluation set. Ray Tune calls it with data it
shared through its object store; ``python -m study.trial`` in one process.
"""

from __future__ import annotations

import copy
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import TrainConfig, TrialConfig
from .metrics import binary_metrics, choose_threshold, multiclass_metrics
from .models import create_model, load_ast_checkpoint
from .results import eval_set_name
from .sam import SAM, disable_running_stats, enable_running_stats
from .tensors import SplitData, TrialData, place_splits

__all__ = [
    "TrainState",
    "TrialResult",
    "TrialSetup",
    "ablation_hook",
    "autocast_dtype",
    "branch_feature_means",
    "build_optimizer",
    "class_weights_of",
    "device_record",
    "epoch_order",
    "evaluate_model",
    "evaluate_probs",
    "finish_from_state",
    "model_inputs",
    "pick_device",
    "predict",
    "prediction_frame",
    "reported_metrics",
    "resolve_device",
    "seed_everything",
    "setup_trial",
    "train_and_evaluate",
    "train_step",
]


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
        note = (
            "Ray gave this trial a GPU but torch finds no CUDA device; trained on the CPU (train.device: auto)"
            if gpu_assigned and not cuda
            else None
        )
        return torch.device("cuda" if cuda else "cpu"), note
    if choice == "assigned" and not gpu_assigned:
        return torch.device("cpu"), None
    if not cuda:
        why = "Ray gave this trial a GPU" if gpu_assigned else "train.device is 'cuda'"
        raise RuntimeError(
            f"{why}, but torch {torch.__version__} finds no CUDA device (torch.version.cuda="
            f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): install a "
            f"CUDA build of torch on the worker, ask for no GPU (--gpus-per-trial 0), or set train.device=auto "
            f"to train on the CPU instead"
        )
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
    record = {
        "type": device.type,
        "name": name,
        "precision": "bf16-autocast" if dtype is not None else "fp32",
        "data_on_device": on_device,
    }
    if note:
        record["note"] = note
    return record


def model_inputs(model, split: SplitData, rows: torch.Tensor, device: torch.device, channels_last: bool = False):
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
def predict(
    model,
    split: SplitData,
    device: torch.device,
    batch_size: int = 128,
    features_hook: Callable[[dict], dict] | None = None,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
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
            features = model.forward_features(*model_inputs(model, split, rows, device))
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
        return float(
            multiclass_metrics(labels, probs)["score"] if metric != "accuracy" else np.mean(probs.argmax(1) == labels)
        )
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


def reported_metrics(trial: TrialConfig) -> list[str]:
    """What every epoch report of ``trial`` holds: what a search's metric and a scheduler may watch
    (``kept_val_*``: the validation metrics of the weights kept so far)."""
    binary = trial.model.num_classes == 1
    validation = list(dict.fromkeys([f"val_{trial.train.monitor}", *(["val_roc_auc"] if binary else [])]))
    return ["epoch", "best_epoch", "train_loss", "train_s", "epoch_s", *validation, *[f"kept_{v}" for v in validation]]


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
class TrialSetup:
    """A trial's model, optimizer and device, built the same way for training and for finishing."""

    trial: TrialConfig
    train_cfg: TrainConfig
    data: TrialData
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype | None
    record: dict
    eval_batch_size: int


def setup_trial(trial: TrialConfig, data: TrialData, gpu_assigned: bool | None, fresh: bool) -> TrialSetup:
    """Seed, threads, device, model and data placement of ``trial``; ``fresh``: a trial starting from
    scratch, whose AST model starts from ``model.init_checkpoint`` (not one resumed or finished)."""
    train_cfg = trial.train
    torch.set_num_threads(train_cfg.threads)
    seed_everything(int(trial.seed))
    device, note = resolve_device(train_cfg.device, gpu_assigned)
    if device.type == "cuda":
        # cuDNN times its algorithms for each new input shape once and keeps the fastest (a trial has
        # few shapes: the batch, the last batch, the evaluation batch); the CPU path is untouched
        torch.backends.cudnn.benchmark = True
    dtype = autocast_dtype(train_cfg.precision, device)
    model = create_model(trial.model)
    # a pretrained AST starts AST trials only: the other architectures' ViTs have no AST layout
    if trial.init_checkpoint and model.config.architecture == "ast" and fresh:
        load_ast_checkpoint(model, Path(trial.init_checkpoint).expanduser())
    model = model.to(device)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data, on_device = place_splits(data, device)
    # 256 on a GPU: a paper-scale trial evaluating 1,024 windows at a time peaked at 34.6 GB reserved on
    # an H200 (study.bench), beyond a shared 24 GB GPU; its training alone holds about 3.3 GB
    eval_batch_size = train_cfg.eval_batch_size or (256 if device.type == "cuda" else 128)
    return TrialSetup(
        trial, train_cfg, data, model, device, dtype, device_record(device, dtype, note, on_device), eval_batch_size
    )


@dataclass
class TrainState:
    """Where training stands after an epoch: what resuming needs besides the model and optimizer."""

    epoch: int = 0
    best_score: float = -np.inf  # validation monitor of the best epoch so far
    best_epoch: int = 0
    since_best: int = 0  # epochs without a better validation monitor
    history: list[dict] = field(default_factory=list)  # one row per epoch (see train_epoch)
    best_state: dict | None = None  # the best epoch's weights, on the CPU
    seconds: float = 0.0  # wall time, summed over resumptions
    resumed_at: list[int] = field(default_factory=list)  # epochs this trial was resumed from

    def running(self, train_cfg: TrainConfig) -> bool:
        return self.epoch < train_cfg.max_epochs and self.since_best < train_cfg.patience

    def to_checkpoint(self, model, optimizer, generator: torch.Generator) -> dict:
        """Everything needed to continue exactly from this epoch (a dict torch.save can write)."""
        return {
            "model": copy.deepcopy(model.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **copy.deepcopy({f.name: getattr(self, f.name) for f in fields(self)}),
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        return cls(**{f.name: checkpoint[f.name] for f in fields(cls)})

    def restore_into(self, checkpoint: dict, model, optimizer, generator: torch.Generator) -> None:
        """Load a checkpoint's model, optimizer and random states; record the resumption."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.resumed_at = self.resumed_at + [self.epoch]

    def record(self, row: dict, score: float, model) -> dict:
        """Count one finished epoch with validation monitor ``score``; keeps the best weights and adds
        the kept weights' validation metrics (``kept_val_*``, what a search compares) to ``row``."""
        self.epoch += 1
        row["epoch"] = self.epoch
        if score > self.best_score:
            self.best_score, self.best_epoch, self.since_best = score, self.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1
        kept = row if self.best_epoch == self.epoch else self.history[self.best_epoch - 1]
        row.update({f"kept_{k}": kept[k] for k in list(row) if k.startswith("val_")})
        row["best_epoch"] = self.best_epoch
        self.history.append(row)
        return row


def build_optimizer(model, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, wrapped in SAM when ``train.sam``."""
    kwargs = {"lr": train_cfg.lr, "weight_decay": train_cfg.weight_decay}
    if train_cfg.sam:
        return SAM(model.parameters(), torch.optim.AdamW, rho=train_cfg.sam_rho, **kwargs)
    return torch.optim.AdamW(model.parameters(), **kwargs)


def class_weights_of(window_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Balanced class weights n / (K * n_c), as sklearn's class_weight="balanced"; (max(2, K),) float32.

    Raises ValueError when the training windows lack a class."""
    n_classes = max(2, num_classes)
    counts = torch.bincount(window_labels, minlength=n_classes).double()
    if (counts[: 2 if num_classes == 1 else n_classes] == 0).any():
        raise ValueError(f"training data lacks a class: window counts per class {counts.tolist()}")
    return (counts.sum() / (n_classes * counts.clamp(min=1))).float()


def train_and_evaluate(
    trial: TrialConfig,
    data: TrialData,
    *,
    trial_id: str = "trial",
    report: Callable[[dict, Callable[[], dict]], None] | None = None,
    resume_state: dict | None = None,
    gpu_assigned: bool | None = None,
) -> TrialResult:
    """Train one model and evaluate its best weights on every evaluation set.

    ``report(epoch_metrics, get_state)`` is called after every epoch; ``get_state()``
    returns everything needed to continue exactly from that epoch (a
    :meth:`TrainState.to_checkpoint`), and ``resume_state`` (such a state) continues a
    run: same seed, same data, same result as a run that was never interrupted.
    ``gpu_assigned`` says whether Ray gave the trial a GPU (None outside Ray); see
    :func:`resolve_device`.
    """
    run = setup_trial(trial, data, gpu_assigned, fresh=resume_state is None)
    optimizer = build_optimizer(run.model, run.train_cfg)
    train = run.data.train
    window_labels = train.labels.cpu()[train.item_index.cpu()]
    class_weights = class_weights_of(window_labels, run.model.config.num_classes).to(run.device)
    generator = torch.Generator().manual_seed(int(trial.seed))
    state = TrainState()
    if resume_state is not None:
        state = TrainState.from_checkpoint(resume_state)
        state.restore_into(resume_state, run.model, optimizer, generator)
    segment_start = time.perf_counter() - state.seconds  # wall time accumulates across resumptions

    def get_state() -> dict:
        state.seconds = time.perf_counter() - segment_start
        return state.to_checkpoint(run.model, optimizer, generator)

    epoch = _EpochTrainer(run, optimizer, class_weights, window_labels, generator)
    while state.running(run.train_cfg):
        row = state.record(*epoch.one_epoch(), run.model)
        if report is not None:
            report(row, get_state)
    state.seconds = time.perf_counter() - segment_start
    return _finish(run, state, trial_id, segment_start)


class _EpochTrainer:
    """One epoch of training and validation, with everything that stays fixed between epochs."""

    def __init__(
        self,
        run: TrialSetup,
        optimizer,
        class_weights: torch.Tensor,
        window_labels: torch.Tensor,
        generator: torch.Generator,
    ):
        self.run, self.window_labels, self.generator = run, window_labels, generator
        train = run.data.train
        self.step = train_step(run, optimizer, class_weights, run.model.config.num_classes == 1)
        self.forward = torch.compile(run.model.forward_train) if run.train_cfg.compile else run.model.forward_train
        self.targets = train.labels[train.item_index]  # on the data's device
        self.val_labels = run.data.val.labels.cpu().numpy()
        n, size = len(window_labels), run.train_cfg.batch_size
        # batch bounds are known on the host, so no step asks the device anything; a last batch of
        # one window is dropped (BatchNorm cannot train on it)
        self.batches = [(lo, min(lo + size, n)) for lo in range(0, n, size) if min(lo + size, n) - lo >= 2 or n == 1]

    def one_epoch(self) -> tuple[dict, float]:
        """Train one epoch and validate: (the epoch's row, its validation monitor value)."""
        run, train_cfg, model, device = self.run, self.run.train_cfg, self.run.model, self.run.device
        train = run.data.train
        started = time.perf_counter()
        model.train()
        order = epoch_order(self.window_labels, train_cfg.balance == "sampler", self.generator).to(train.images.device)
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        for lo, hi in self.batches:
            rows = order[lo:hi]
            loss = self.step(
                self.forward,
                model_inputs(model, train, rows, device, train_cfg.channels_last),
                self.targets[rows].to(device, non_blocking=True),
            )
            total_loss += loss.double() * (hi - lo)
        train_loss = float(total_loss) / max(len(self.window_labels), 1)  # the epoch's one host synchronisation
        train_s = time.perf_counter() - started
        val_probs = predict(model, run.data.val, device, run.eval_batch_size, dtype=run.dtype)
        score = _monitor_value(train_cfg.monitor, self.val_labels, val_probs)
        row = {"epoch": None, "train_loss": train_loss, f"val_{train_cfg.monitor}": score}
        if model.config.num_classes == 1 and 0 < self.val_labels.sum() < len(self.val_labels):
            row["val_roc_auc"] = binary_metrics(self.val_labels, val_probs)["roc_auc"]
        row.update(train_s=train_s, epoch_s=time.perf_counter() - started)
        return row, score


def finish_from_state(
    trial: TrialConfig, data: TrialData, checkpoint: dict, *, trial_id: str = "trial", gpu_assigned: bool | None = None
) -> TrialResult:
    """Evaluate the best weights kept in a per-epoch checkpoint (``get_state()``) as a finished trial
    would: for a trial a scheduler stopped early, whose own evaluation never ran."""
    run = setup_trial(trial, data, gpu_assigned, fresh=False)
    state = TrainState.from_checkpoint(checkpoint)
    return _finish(run, state, trial_id, time.perf_counter() - state.seconds)


def _finish(run: TrialSetup, state: TrainState, trial_id: str, segment_start: float) -> TrialResult:
    """Evaluate the kept weights: threshold on validation, every evaluation set, branch ablation."""
    model, device, data = run.model, run.device, run.data
    binary = model.config.num_classes == 1
    model.load_state_dict(state.best_state)
    val_labels = data.val.labels.cpu().numpy()
    val_probs = predict(model, data.val, device, run.eval_batch_size, dtype=run.dtype)
    threshold = choose_threshold(val_labels, val_probs, run.train_cfg.threshold_criterion) if binary else 0.5
    means = branch_feature_means(model, data.train, device, run.eval_batch_size)
    metrics, predictions = evaluate_model(
        model, data, device, trial_id, threshold, means, batch_size=run.eval_batch_size, dtype=run.dtype
    )
    metrics = {"val": evaluate_probs(val_labels, val_probs, threshold), **metrics}
    return TrialResult(
        metrics,
        predictions,
        state.best_state,
        threshold,
        state.epoch,
        state.best_epoch,
        state.history,
        time.perf_counter() - segment_start,
        state.resumed_at,
        means,
        run.record,
    )


def train_step(run: TrialSetup, optimizer, class_weights: torch.Tensor, binary: bool):
    """One optimizer update on a batch; returns the (device) loss, never a host number."""
    model, device, dtype, balance = run.model, run.device, run.dtype, run.train_cfg.balance
    branch_weight = run.train_cfg.branch_loss_weight

    def criterion(logits, targets):
        logits = logits.float()
        if binary:
            weights = class_weights[targets] if balance == "class_weights" else None
            return F.binary_cross_entropy_with_logits(logits, targets.float(), weight=weights)
        return F.cross_entropy(logits, targets, weight=class_weights if balance == "class_weights" else None)

    def loss_of(forward, inputs, targets):
        """The fused logits' loss plus, with branch heads, branch_loss_weight x each branch head's."""
        with _autocast(device, dtype):
            logits, branch_logits = forward(*inputs)
        loss = criterion(logits, targets)
        for head_logits in branch_logits:
            loss = loss + branch_weight * criterion(head_logits, targets)
        return loss

    def step(forward, inputs, targets) -> torch.Tensor:
        loss = loss_of(forward, inputs, targets)
        loss.backward()
        if run.train_cfg.sam:
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
        features = model.forward_features(*model_inputs(model, split, rows, device))
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
            features[key] = (
                means[key].to(value.device, value.dtype).expand_as(value)
                if replacement == "mean"
                else torch.zeros_like(value)
            )
        return features

    return hook


def evaluate_model(
    model,
    data: TrialData,
    device: torch.device,
    trial_id: str,
    threshold: float,
    means: dict,
    batch_size: int = 128,
    dtype: torch.dtype | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Evaluate trained weights on every clean and perturbed evaluation set, and for fusion
    models with each branch ablated (mean / zeros). Returns (metrics, predictions)."""
    metrics, frames = {}, []
    evaluations = [(name, split, "none", 0) for name, split in data.evals.items()]
    evaluations += [(p.eval_set, p.split, p.perturbation, p.severity) for p in data.perturbed]
    ablations = (
        [
            (f"{branch}={mode}", ablation_hook(model, branch, mode, means))
            for branch in ("spectrogram", "waveform")
            for mode in ("mean", "zeros")
        ]
        if means
        else []
    )
    for name, split, perturbation, severity in evaluations:
        key = eval_set_name(name, perturbation, severity)
        for ablation, hook in [("none", None)] + ablations:
            probs = predict(model, split, device, batch_size, features_hook=hook, dtype=dtype)
            if ablation == "none":
                metrics[key] = evaluate_probs(split.labels.cpu().numpy(), probs, threshold)
            frames.append(prediction_frame(trial_id, name, split, probs, perturbation, severity, ablation))
    return metrics, pd.concat(frames, ignore_index=True)


def prediction_frame(
    trial_id: str,
    eval_set: str,
    split: SplitData,
    probs: np.ndarray,
    perturbation: str = "none",
    severity: int = 0,
    ablation: str = "none",
) -> pd.DataFrame:
    """One row per recording: the columns of predictions.parquet (study.results.PREDICTION_COLUMNS; ``prob``
    = P(abnormal); for multi-class models also ``prob_0`` … ``prob_{C-1}``). ``ablation`` names a test-time
    branch ablation ("waveform=mean": the waveform features replaced by their training mean)."""
    frame = pd.DataFrame(
        {
            "trial_id": trial_id,
            "eval_set": eval_set,
            "recording_id": split.table["id"].astype(str).to_numpy(),
            "source": split.table["source"].astype(str).to_numpy(),
            "group": split.table["group"].astype("string"),
            "label": split.labels.cpu().numpy(),
            "prob": probs if probs.ndim == 1 else 1.0 - probs[:, 0],
            "perturbation": perturbation,
            "severity": severity,
            "ablation": ablation,
        }
    )
    if probs.ndim == 2:
        for k in range(probs.shape[1]):
            frame[f"prob_{k}"] = probs[:, k]
    return frame
