"""Speed and memory of one trial: the trainer against a bare loop, feature extraction, peak memory,
trials sharing one device, and each architecture's training step.

    python -m study.bench [--sizes cpu,paper] [--device auto|cpu|cuda] [--repeats R] [--threads T]
                          [--sharing 1,2,4,8] [--parts trainer,memory,sharing,architectures,features]
                          [--json PATH] [--quick]

Trainer overhead. At each size ``study.train.train_and_evaluate`` and a bare
loop train the same model on the same random float16 features, R times each
(default 3), interleaved with the order alternating. The bare loop is what any
training loop must do: randperm batches of the trainer's size, ``.float()``,
forward, class-weighted BCE, backward, AdamW step, zero_grad. A figure is the
median over repeats of the training time per window: the trainer's ``train_s``
(the epoch's training loop, validation excluded) over the windows trained; when
a run has several epochs the first is a warm-up and not counted. The ratio is
the median over repeats of trainer / bare loop within a repeat (adjacent runs
share the machine's load); the trainer may cost at most 1.15 times the bare
loop. Sizes:

* ``cpu``: the CPU-scale model (``SCALE_PRESETS["cpu"]``) on the native profile,
  64x64 images and 10,000-sample waveforms;
* ``paper``: the paper's ViT 224/16 depth 6 and CNN 64/128/256 (the ModelConfig
  defaults) on 224x224 images and 110,250-sample waveforms.

On the CPU they train on 512 windows for 2 epochs and on 32 windows for 1 epoch;
on a GPU both train on 2,943 windows (PhysioNet 2016's training recordings) for
3 epochs, in bf16 autocast and in fp32, validate on 294 and are tested on 297.
"epoch 2,943" is the training time per window times 2,943: measured on a GPU,
extrapolated on the CPU.

Peak memory. One 1-epoch trial per size (and precision) in a fresh process:
the features it holds, its resident memory before the trial and its peak during
it (Linux /proc: VmRSS, and VmHWM reset before the trial); on the CPU also the
peak with a full trial's 2,943 + 294 + 297 windows in place of the bench's
(extrapolated). On a GPU: peak allocated and reserved memory (the features,
which the trial keeps on the device, included), the memory in use before the
trial (the CUDA context), and how many such trials fit the GPU:
total / (reserved + context).

Sharing (``--sharing COUNTS``, the largest size). As many processes as the
largest count each train the model with the bare loop on a full training
split's random features held on the device, as Ray trials sharing a GPU do;
for each count k, k of them train together for a few seconds. Per count:
windows/s of all together and of one trial. The recommended GPU share is one
over the fewest trials that reach 90 % of the best throughput; on a GPU also
the memory every resident process holds and how many would fit.

Architectures (``--parts architectures``, the largest size). Milliseconds per
training step of the spectrogram, waveform and fusion models, with cuDNN's
autotuner off and on, and on a GPU the kernels that take a fusion step's device
time (torch.profiler).

Feature extraction. Milliseconds per recording of each profile on synthetic
WAVs (native, paper: 20 s of noise at 2 kHz; ast: 3 s breathing cycles cut from
20 s recordings at 4 kHz and 44.1 kHz): ``compute_features`` on decoded arrays,
and ``extract_features`` (decode, compute, write an empty cache) per recording.
The first call of each profile (one recording through ``extract_features``:
librosa's JIT compilation, first imports) is reported apart.
Skipped with the reason where librosa, soundfile or soxr is missing (a GPU node).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import DEFAULTS, SCALE_PRESETS, TrialConfig
from .features import get_profile
from .models import create_model
from .tensors import SplitData, TrialData
from .train import autocast_dtype, train_and_evaluate

__all__ = [
    "REPO",
    "RATIO_LIMIT",
    "SIZES",
    "EVAL_WINDOWS",
    "QUICK",
    "AUDIO_MODULES",
    "missing_audio_modules",
    "size_profile",
    "make_trial_data",
    "features_nbytes",
    "window_nbytes",
    "trial_config",
    "batches",
    "run_trainer",
    "run_bare",
    "BareLoop",
    "precisions",
    "size_shape",
    "size_data",
    "bench_trainer",
    "peak_memory_trial",
    "measure_peak_memory",
    "SHARING_SECONDS",
    "SHARING_KNEE",
    "bench_sharing",
    "bench_features",
    "describe_device",
    "ARCHITECTURE_STEPS",
    "PROFILED_KERNELS",
    "bench_architectures",
    "PARTS",
    "run_bench",
    "format_results",
    "format_memory",
    "format_architectures",
    "format_sharing",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
RATIO_LIMIT = 1.15
TRAIN_RECORDINGS, VAL_RECORDINGS, TEST_RECORDINGS = 2943, 294, 297  # PhysioNet 2016 train, its 10 %, test
SIZES = {
    "cpu": {
        "config": SCALE_PRESETS["cpu"],
        "profile": ("native", {"image_size": 64}),
        "windows": {"cpu": 512, "cuda": TRAIN_RECORDINGS},
        "epochs": {"cpu": 2, "cuda": 3},
    },
    "paper": {
        "config": SCALE_PRESETS["paper"],
        "profile": ("paper", {}),
        "windows": {"cpu": 32, "cuda": TRAIN_RECORDINGS},
        "epochs": {"cpu": 1, "cuda": 3},
    },
}
EVAL_WINDOWS = {"cpu": 4, "cuda": None}  # val and test windows per trial; None: VAL_/TEST_RECORDINGS
QUICK = {"windows": 32, "eval_windows": 4, "epochs": 1, "recordings": 1}
AUDIO_MODULES = ("librosa", "soundfile", "soxr")
HEART_SECONDS, HEART_RATE = 20.0, 2000
CYCLE_SECONDS, ICBHI_RATES = 3.0, (4000, 44100)


def missing_audio_modules() -> list[str]:
    """The audio libraries (librosa, soundfile, soxr) that cannot be imported here (a GPU node)."""
    missing = []
    for name in AUDIO_MODULES:
        try:
            importlib.import_module(name)
        except (ImportError, OSError):  # soundfile raises OSError when libsndfile is missing
            missing.append(name)
    return missing


def size_profile(size: str):
    name, overrides = SIZES[size]["profile"]
    return get_profile(name, **overrides)


def make_trial_data(profile, n_train: int, n_val: int, n_test: int, seed: int = 0):
    """A TrialData of random features, one window per recording, labels alternating 0/1.

    images (n, 1, H, W) float16 uniform in [0, 1); waves (n, 1, window_samples) float16
    standard normal; evaluation set "test". Tables hold id, source, group and label.
    """
    generator = torch.Generator().manual_seed(seed)

    def split(name: str, n: int):
        ids, labels = [f"{name}-{i:05d}" for i in range(n)], torch.arange(n) % 2
        table = pd.DataFrame({"id": ids, "source": "bench", "group": ids, "label": labels.numpy()})
        images = torch.rand((n, 1, *profile.image_size), dtype=torch.float16, generator=generator)
        waves = torch.randn((n, 1, profile.window_samples), dtype=torch.float16, generator=generator)
        return SplitData(name, table, images, waves, torch.arange(n), labels)

    return TrialData(split("train", n_train), split("val", n_val), {"test": split("test", n_test)}, profile)


def features_nbytes(data) -> int:
    return sum(split.nbytes for split in (data.train, data.val, *data.evals.values()))


def window_nbytes(profile) -> int:
    """Bytes of one window's float16 features: image and waveform."""
    return 2 * (math.prod(profile.image_size) + profile.window_samples)


def trial_config(size: str, device: torch.device, precision: str, epochs: int, threads: int) -> TrialConfig:
    """A resolved trial config: DEFAULTS, the size's scale preset, ``epochs`` epochs without early stop."""
    return TrialConfig.from_flat(
        {
            **DEFAULTS,
            **SIZES[size]["config"],
            "train.max_epochs": epochs,
            "train.patience": epochs,
            "train.device": device.type,
            "train.precision": precision,
            "train.threads": threads,
            "data.eval_sets": ["test"],
        }
    )


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The trainer's batch bounds: a last batch of one window is dropped (BatchNorm needs two)."""
    return [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size) if min(lo + batch_size, n) - lo >= 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trainer(trial: TrialConfig, data) -> tuple[list[float], list[float]]:
    """One trial of ``train_and_evaluate``: (training seconds, whole-epoch seconds) per epoch."""
    result = train_and_evaluate(trial, data, trial_id="bench")
    return [row["train_s"] for row in result.history], [row["epoch_s"] for row in result.history]


def run_bare(trial: TrialConfig, data, device: torch.device, dtype: torch.dtype | None, seed: int = 0) -> list[float]:
    """Seconds per epoch of a bare loop over ``data.train``: the reference the trainer is held to.

    The same model and optimizer settings, the float16 features on ``device`` (as the trainer
    places them there: outside the timed epochs), randperm batches, class-weighted BCE.
    """
    loop = BareLoop(trial, data, device, dtype, seed)
    bounds = batches(len(loop.targets), trial.train.batch_size)
    seconds = []
    for _ in range(trial.train.max_epochs):
        _sync(device)
        start = time.perf_counter()
        order = torch.randperm(len(loop.targets)).to(device)
        for lo, hi in bounds:
            loop.step(order[lo:hi])
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


class BareLoop:
    """The model, optimizer and device-resident features of a bare training loop; :meth:`step` trains
    one batch: forward, class-weighted BCE, backward, AdamW step, zero_grad."""

    def __init__(self, trial: TrialConfig, data, device: torch.device, dtype: torch.dtype | None, seed: int = 0):
        torch.manual_seed(seed)
        self.device, self.dtype = device, dtype
        self.model = create_model(trial.model).to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=trial.train.lr, weight_decay=trial.train.weight_decay
        )
        self.images, self.waves = data.train.images.to(device), data.train.waves.to(device)
        self.targets = data.train.labels[data.train.item_index].to(device)
        counts = torch.bincount(self.targets, minlength=2).double()
        self.class_weights = (counts.sum() / (2 * counts.clamp(min=1))).float()

    def step(self, rows: torch.Tensor) -> None:
        y = self.targets[rows]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(self.images[rows].float(), self.waves[rows].float()).float()
        loss = F.binary_cross_entropy_with_logits(logits, y.float(), weight=self.class_weights[y])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _counted(seconds: list[float]) -> float:
    """Mean seconds of an epoch, the first (warm-up) left out when there are several."""
    return statistics.fmean(seconds[1:] if len(seconds) > 1 else seconds)


def precisions(device: torch.device) -> list[str]:
    """The train.precision settings compared: bf16 autocast and fp32 on a GPU with bf16, fp32 elsewhere."""
    return ["bf16", "fp32"] if device.type == "cuda" and torch.cuda.is_bf16_supported() else ["fp32"]


def size_shape(size: str, device: torch.device, quick: bool) -> dict:
    """Windows, evaluation windows and epochs of a size's trial on ``device``."""
    spec = SIZES[size]
    if quick:
        return {"windows": QUICK["windows"], "eval_windows": QUICK["eval_windows"], "epochs": QUICK["epochs"]}
    return {
        "windows": spec["windows"][device.type],
        "eval_windows": EVAL_WINDOWS[device.type],
        "epochs": spec["epochs"][device.type],
    }


def size_data(size: str, device: torch.device, quick: bool):
    shape = size_shape(size, device, quick)
    n_eval = shape["eval_windows"]
    return make_trial_data(size_profile(size), shape["windows"], n_eval or VAL_RECORDINGS, n_eval or TEST_RECORDINGS)


def bench_trainer(size: str, device: torch.device, repeats: int, threads: int, quick: bool) -> list[dict]:
    """Trainer against bare loop at one size, one row per precision (see the module docstring).

    ms figures are milliseconds of training per window; epoch_2943_s is seconds of training
    for 2,943 windows; epoch_val_s the trainer's median whole epoch (validation included)
    on this run's windows.
    """
    shape = size_shape(size, device, quick)
    data = size_data(size, device, quick)
    rows = []
    for precision in precisions(device):
        trial = trial_config(size, device, precision, shape["epochs"], threads)
        dtype = autocast_dtype(precision, device)
        n = sum(hi - lo for lo, hi in batches(len(data.train.item_index), trial.train.batch_size))
        trainer_s, bare_s, epoch_s = [], [], []
        for repeat in range(repeats):
            # alternate who goes first: neither always meets a cold or a warm allocator
            for which in ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer"):
                if which == "trainer":
                    train_seconds, epoch_seconds = run_trainer(trial, data)
                    trainer_s.append(_counted(train_seconds))
                    epoch_s.append(_counted(epoch_seconds))
                else:
                    bare_s.append(_counted(run_bare(trial, data, device, dtype)))
        trainer_ms, bare_ms = 1e3 * statistics.median(trainer_s) / n, 1e3 * statistics.median(bare_s) / n
        # runs of one repeat are adjacent in time and share the machine's load: compare them pairwise
        ratio = statistics.median(t / b for t, b in zip(trainer_s, bare_s))
        rows.append(
            {
                "size": size,
                "precision": precision,
                "windows": n,
                "batch_size": trial.train.batch_size,
                "epochs": shape["epochs"],
                "repeats": repeats,
                "trainer_ms": trainer_ms,
                "bare_ms": bare_ms,
                "ratio": ratio,
                "limit": RATIO_LIMIT,
                "ok": ratio <= RATIO_LIMIT,
                "windows_per_s": 1e3 / trainer_ms,
                "epoch_2943_s": trainer_ms * TRAIN_RECORDINGS / 1e3,
                "epoch_val_s": statistics.median(epoch_s),
            }
        )
    return rows


def peak_memory_trial(
    size: str, device: str, precision: str, threads: int, quick: bool, gpu_used_before_mb: float = 0.0
) -> dict:
    """One 1-epoch trial in this (fresh) process; its peak memory in MB (see the module docstring).

    Run by :func:`measure_peak_memory` in a subprocess, so no other trial's memory is counted;
    ``gpu_used_before_mb`` is the GPU memory other processes (the bench itself) held at its start.
    """
    torch.set_num_threads(threads)
    target = torch.device(device)
    data = size_data(size, target, quick)
    trial = trial_config(size, target, precision, 1, threads)
    record = {
        "size": size,
        "precision": precision,
        "windows": len(data.train.item_index),
        "features_mb": features_nbytes(data) / 2**20,
    }
    if target.type == "cuda":
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(target)
        record.update(gpu_total_mb=total / 2**20, cuda_context_mb=(total - free) / 2**20 - gpu_used_before_mb)
        torch.cuda.reset_peak_memory_stats(target)
    record["rss_before_mb"] = _rss_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS, so the peak is the trial's
    except OSError:
        pass  # a locked-down /proc: the peak then counts this fresh process's imports as well
    run_trainer(trial, data)
    record["rss_peak_mb"] = _rss_mb("VmHWM")
    if target.type == "cuda":
        record.update(
            gpu_allocated_mb=torch.cuda.max_memory_allocated(target) / 2**20,
            gpu_reserved_mb=torch.cuda.max_memory_reserved(target) / 2**20,
        )
        # the features are on the device already (place_splits), inside the reserved peak
        per_trial_mb = record["gpu_reserved_mb"] + record["cuda_context_mb"]
        record["trials_per_gpu"] = int(record["gpu_total_mb"] // per_trial_mb)
    else:
        full_mb = (TRAIN_RECORDINGS + VAL_RECORDINGS + TEST_RECORDINGS) * window_nbytes(data.profile) / 2**20
        record["rss_full_trial_mb"] = record["rss_peak_mb"] - record["features_mb"] + full_mb
    return record


def _rss_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, MB, from Linux's /proc.

    Not getrusage's ru_maxrss: Linux hands a child the parent's peak across fork and exec,
    so a fresh process would report the bench's own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**10  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_peak_memory(size: str, device: torch.device, precision: str, threads: int, quick: bool) -> dict:
    """:func:`peak_memory_trial` in a fresh Python process (run from the repository root)."""
    used_mb = 0.0
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the bench's own cached blocks would crowd the trial
        free, total = torch.cuda.mem_get_info(device)
        used_mb = (total - free) / 2**20
    arguments = json.dumps(
        {
            "size": size,
            "device": device.type,
            "precision": precision,
            "threads": threads,
            "quick": quick,
            "gpu_used_before_mb": used_mb,
        }
    )
    code = (
        "import json, sys; from study.bench import peak_memory_trial; "
        "print(json.dumps(peak_memory_trial(**json.loads(sys.argv[1]))))"
    )
    done = subprocess.run([sys.executable, "-c", code, arguments], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the peak-memory trial ({size}, {device.type}, {precision}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


SHARING_SECONDS = {"cpu": 2.0, "cuda": 8.0}  # how long each phase's trials train together
SHARING_KNEE = 0.9  # the recommended sharing: the fewest trials reaching this share of the best throughput


def _sharing_worker(conn, size: str, device_type: str, precision: str, windows: int, threads: int) -> None:
    """One trial of the sharing bench, in its own process as a Ray trial is: a bare loop on random
    features of ``windows`` windows held on the device. Trains when told ``("run", start_at, seconds)``
    and answers its steps and seconds; ``("stop",)`` answers its peak memory and ends."""
    torch.set_num_threads(threads)
    device = torch.device(device_type)
    data = make_trial_data(size_profile(size), windows, 2, 2)
    trial = trial_config(size, device, precision, 1, threads)
    loop = BareLoop(trial, data, device, autocast_dtype(precision, device))
    batch = trial.train.batch_size
    generator = torch.Generator().manual_seed(0)

    def rows() -> torch.Tensor:
        return torch.randint(0, windows, (batch,), generator=generator).to(device)

    for _ in range(3):  # warm-up: kernels chosen, allocator filled
        loop.step(rows())
    _sync(device)
    conn.send({"ready": True})
    while (message := conn.recv())[0] == "run":
        _, start_at, seconds = message
        time.sleep(max(0.0, start_at - time.time()))
        started, steps = time.perf_counter(), 0
        while time.time() < start_at + seconds:
            loop.step(rows())
            steps += 1
        _sync(device)  # the steps queued on the device count until they are done
        answer = {"steps": steps, "windows": steps * batch, "seconds": time.perf_counter() - started}
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            answer["gpu_used_mb"] = (total - free) / 2**20  # every process on the GPU, contexts included
            answer["gpu_total_mb"] = total / 2**20
        conn.send(answer)
    memory = {"rss_peak_mb": _rss_mb("VmHWM")}
    if device.type == "cuda":
        memory["gpu_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    conn.send(memory)


def bench_sharing(size: str, device: torch.device, counts: list[int], threads: int, quick: bool) -> dict:
    """Trials sharing one device: for each count k, k processes train together for a few seconds.

    Every process (the largest count of them, started once) trains the size's model with a bare
    loop on random features of a full training split (2,943 windows; 32 with ``quick``), as a Ray
    trial would with its features on the GPU. Per count: windows/s of all together and of one
    trial, the epoch of 2,943 windows one trial then takes, and (on a GPU) the memory every
    process holds together. The recommendation: the fewest trials that reach SHARING_KNEE of the
    best throughput (more only slow each trial down), and how many fit the GPU's memory.
    """
    from multiprocessing import get_context

    context = get_context("spawn")
    windows = QUICK["windows"] if quick else TRAIN_RECORDINGS
    precision = precisions(device)[0]
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the bench's own cached blocks would crowd the trials
    workers = []
    for _ in range(max(counts)):
        parent, child = context.Pipe()
        process = context.Process(
            target=_sharing_worker, args=(child, size, device.type, precision, windows, threads), daemon=True
        )
        process.start()
        workers.append((process, parent))
    try:
        for _, conn in workers:
            conn.recv()
        seconds = 0.5 if quick else SHARING_SECONDS[device.type]
        rows, gpu_used, gpu_total = [], 0.0, 0.0
        for k in sorted(counts):
            start_at = time.time() + 0.5
            for _, conn in workers[:k]:
                conn.send(("run", start_at, seconds))
            answers = [conn.recv() for _, conn in workers[:k]]
            wall = max(a["seconds"] for a in answers)
            per_trial = statistics.fmean(a["windows"] / a["seconds"] for a in answers)
            row = {
                "trials": k,
                "windows_per_s": sum(a["windows"] for a in answers) / wall,
                "per_trial_windows_per_s": per_trial,
                "epoch_2943_s": TRAIN_RECORDINGS / per_trial,
            }
            if "gpu_used_mb" in answers[0]:
                gpu_used = max(gpu_used, *(a["gpu_used_mb"] for a in answers))
                gpu_total = answers[0]["gpu_total_mb"]
            rows.append(row)
        for _, conn in workers:
            conn.send(("stop",))
        memory = [conn.recv() for _, conn in workers]
    finally:
        for process, _ in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    best = max(r["windows_per_s"] for r in rows)
    knee = min(r["trials"] for r in rows if r["windows_per_s"] >= SHARING_KNEE * best)
    result = {
        "size": size,
        "precision": precision,
        "windows": windows,
        "seconds": seconds,
        "rows": rows,
        "recommended_trials": knee,
        "recommended_gpus_per_trial": math.floor(1000 / knee) / 1000,
        "rss_peak_mb": max(m["rss_peak_mb"] for m in memory),
    }
    if device.type == "cuda":
        # every process holds its model and features through every count: the memory in use is theirs
        # together (and the bench's own context), read while they trained
        per_trial_mb = gpu_used / len(workers)
        result.update(
            gpu_used_mb=gpu_used,
            gpu_total_mb=gpu_total,
            gpu_reserved_mb=max(m["gpu_reserved_mb"] for m in memory),
            gpu_per_trial_mb=per_trial_mb,
            trials_fit_memory=int(gpu_total // per_trial_mb),
        )
    return result


def _write_recordings(folder: Path, n: int) -> dict[str, pd.DataFrame]:
    """Synthetic recordings of every profile's kind; per profile a table of path, audio_hash,
    start_s, end_s with n + 1 rows (the first for the warm-up)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    heart = []
    for i in range(n + 1):
        path = folder / f"heart-{i}.wav"
        sf.write(path, 0.1 * rng.standard_normal(int(HEART_SECONDS * HEART_RATE)), HEART_RATE, subtype="PCM_16")
        heart.append({"path": str(path), "start_s": 0.0, "end_s": HEART_SECONDS})
    lungs = []
    for rate in ICBHI_RATES:
        path = folder / f"lungs-{rate}.wav"
        sf.write(path, 0.1 * rng.standard_normal(int(HEART_SECONDS * rate)), rate, subtype="PCM_16")
    per_file = int(HEART_SECONDS // CYCLE_SECONDS)
    for i in range(n + 1):  # cycles alternate between the 4 kHz and the 44.1 kHz recording
        start = CYCLE_SECONDS * ((i // len(ICBHI_RATES)) % per_file)
        lungs.append(
            {
                "path": str(folder / f"lungs-{ICBHI_RATES[i % len(ICBHI_RATES)]}.wav"),
                "start_s": start,
                "end_s": start + CYCLE_SECONDS,
            }
        )
    tables = {}
    for profile, rows in (("native", heart), ("paper", heart), ("ast", lungs)):
        table = pd.DataFrame(rows)
        table["audio_hash"] = [hashlib.blake2b(Path(p).read_bytes(), digest_size=16).hexdigest() for p in table["path"]]
        tables[profile] = table
    return tables


def bench_features(n_recordings: int) -> list[dict]:
    """Milliseconds per recording of each profile (see the module docstring); one row per profile."""
    from .cache import FeatureCache, extract_features
    from .data.audio import read_audio
    from .features import compute_features

    rows = []
    with tempfile.TemporaryDirectory(prefix="audiofuse-bench-") as folder:
        tables = _write_recordings(Path(folder), n_recordings)
        for name, table in tables.items():
            profile = get_profile(name)
            warm, timed = table.iloc[:1], table.iloc[1:]

            def extract(rows: pd.DataFrame, cache: str, profile=profile) -> float:
                start = time.perf_counter()
                extract_features(rows, profile, cache=FeatureCache(Path(folder) / cache), n_jobs=1, progress=False)
                return time.perf_counter() - start

            first_s = extract(warm, f"warm-{name}")  # librosa compiles (or loads) its numba kernels here
            compute_s = []
            for row in timed.itertuples():
                wave, rate = read_audio(row.path, row.start_s, row.end_s)
                start = time.perf_counter()
                compute_features(wave, rate, profile)
                compute_s.append(time.perf_counter() - start)
            extract_s = extract(timed, f"cache-{name}")
            rows.append(
                {
                    "profile": name,
                    "sample_rate": profile.sample_rate,
                    "image": "x".join(map(str, profile.image_size)),
                    "wave_samples": profile.window_samples,
                    "recordings": len(timed),
                    "compute_ms": 1e3 * statistics.median(compute_s),
                    "extract_ms": 1e3 * extract_s / len(timed),
                    "first_call_s": first_s,
                }
            )
    return rows


def describe_device(device: torch.device, threads: int) -> dict:
    """What the bench ran on: device, its name and memory, torch, threads, CPU cores, load average."""
    record = {
        "type": device.type,
        "torch": torch.__version__,
        "threads": threads,
        "cpu_cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        record.update(name=properties.name, memory_gb=properties.total_memory / 2**30)
    else:
        record["name"] = platform.processor() or platform.machine() or "cpu"
    return record


ARCHITECTURE_STEPS = {"cpu": 3, "cuda": 30}  # timed steps per architecture and cuDNN setting
PROFILED_KERNELS = 12


def bench_architectures(size: str, device: torch.device, threads: int, quick: bool) -> dict:
    """Milliseconds per training step (batch of the size's trainer) of each architecture, with cuDNN's
    autotuner (``torch.backends.cudnn.benchmark``) off and on, and, on a GPU, the kernels that take
    the fusion model's device time (torch.profiler over a few steps)."""
    precision = precisions(device)[0]
    steps = 2 if quick else ARCHITECTURE_STEPS[device.type]
    data = make_trial_data(size_profile(size), QUICK["windows"] if quick else 256, 2, 2)
    rows, autotune = [], torch.backends.cudnn.benchmark
    try:
        for tuned in (False, True) if device.type == "cuda" else (False,):
            torch.backends.cudnn.benchmark = tuned
            for architecture in ("spectrogram", "waveform", "fusion"):
                trial = trial_config(size, device, precision, 1, threads).with_settings(
                    {"model.architecture": architecture}
                )
                loop = BareLoop(trial, data, device, autocast_dtype(precision, device))
                generator = torch.Generator().manual_seed(0)
                batch = [torch.randint(0, len(loop.targets), (trial.train.batch_size,), generator=generator)]
                for _ in range(3):
                    loop.step(batch[0].to(device))
                _sync(device)
                started = time.perf_counter()
                for _ in range(steps):
                    loop.step(batch[0].to(device))
                _sync(device)
                ms = 1e3 * (time.perf_counter() - started) / steps
                rows.append(
                    {
                        "architecture": architecture,
                        "cudnn_benchmark": tuned,
                        "step_ms": ms,
                        "windows_per_s": 1e3 * trial.train.batch_size / ms,
                    }
                )
        result = {"size": size, "precision": precision, "steps": steps, "rows": rows}
        if device.type == "cuda":
            result["kernels"] = _profile_kernels(loop, batch[0].to(device))
    finally:
        torch.backends.cudnn.benchmark = autotune
    return result


def _profile_kernels(loop: BareLoop, rows: torch.Tensor, steps: int = 5) -> list[dict]:
    """The GPU kernels of ``steps`` training steps by device time: name, ms per step, share."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            loop.step(rows)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return [
        {
            "kernel": e.key[:90],
            "ms_per_step": e.self_device_time_total / 1e3 / steps,
            "share": e.self_device_time_total / total,
        }
        for e in events[:PROFILED_KERNELS]
    ]


PARTS = ("trainer", "memory", "sharing", "architectures", "features")


def run_bench(
    sizes: list[str],
    device: torch.device,
    repeats: int = 3,
    threads: int = 1,
    quick: bool = False,
    sharing: list[int] | None = None,
    parts: tuple[str, ...] = ("trainer", "memory", "features"),
) -> dict:
    """Every figure of the bench's ``parts`` as one dict: device, trainer, memory, sharing (``sharing``
    trial counts, at the largest size), architectures (the largest size), features (or
    features_skipped), notes."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    missing = missing_audio_modules()
    results = {"device": describe_device(device, threads), "quick": quick, "notes": []}
    if "trainer" in parts:
        results["trainer"] = [row for size in sizes for row in bench_trainer(size, device, repeats, threads, quick)]
    if "memory" in parts:
        results["memory"] = [
            measure_peak_memory(size, device, precision, threads, quick)
            for size in sizes
            for precision in precisions(device)
        ]
    if sharing and "sharing" in parts:
        results["sharing"] = bench_sharing(sizes[-1], device, sharing, threads, quick)
    if "architectures" in parts:
        results["architectures"] = bench_architectures(sizes[-1], device, threads, quick)
    if "features" not in parts:
        pass
    elif missing:
        results["features_skipped"] = (
            f"feature extraction needs {', '.join(AUDIO_MODULES)}; missing: {', '.join(missing)}"
        )
    else:
        results["features"] = bench_features(QUICK["recordings"] if quick else 4)
    results["device"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = time.perf_counter() - started
    return results


def format_results(results: dict) -> str:
    """The printed tables."""
    d = results["device"]
    where = f"{d['memory_gb']:.0f} GiB" if d["type"] == "cuda" else f"{d['cpu_cores']} cores"
    lines = [
        f"device: {d['type']} ({d['name']}, {where}), torch {d['torch']}, {d['threads']} thread(s), load average "
        f"{' '.join(map(str, d['load_average']))} at start, {' '.join(map(str, d['load_average_end']))} at end"
    ]
    lines += [f"note: {note}" for note in results["notes"]]
    if results["quick"]:
        lines.append("note: --quick: tiny runs that check the bench; their figures measure nothing")
    rows = results.get("trainer", [])
    lines += (
        []
        if not rows
        else [
            "",
            f"trainer against a bare loop: ms of training per window, median of {rows[0]['repeats']} "
            f"interleaved repeats (limit {RATIO_LIMIT}x)",
            f"{'size':<6} {'precision':<9} {'windows':>7} {'batch':>5} {'epochs':>6} {'trainer ms':>10} "
            f"{'bare ms':>9} {'ratio':>9} {'windows/s':>9} {'epoch 2,943 s':>13} {'epoch+val s':>11}",
        ]
    )
    for r in rows:
        lines.append(
            f"{r['size']:<6} {r['precision']:<9} {r['windows']:>7} {r['batch_size']:>5} {r['epochs']:>6} "
            f"{r['trainer_ms']:>10.4g} {r['bare_ms']:>9.4g} {r['ratio']:>5.3f} "
            f"{'ok' if r['ok'] else 'SLOW':<3} "
            f"{r['windows_per_s']:>9.4g} {r['epoch_2943_s']:>13.4g} {r['epoch_val_s']:>11.4g}"
        )
    if "memory" in results:
        lines += ["", *format_memory(results["memory"], d["type"])]
    if "sharing" in results:
        lines += ["", *format_sharing(results["sharing"])]
    if "architectures" in results:
        lines += ["", *format_architectures(results["architectures"])]
    lines.append("")
    if "features" in results:
        lines += [
            "feature extraction, ms per recording (compute: on decoded arrays; extract: decode, compute, "
            "write an empty cache)",
            f"{'profile':<7} {'rate':>6} {'image':>8} {'wave':>7} {'recordings':>10} {'compute ms':>10} "
            f"{'extract ms':>10} {'first call s':>12}",
        ]
        for f in results["features"]:
            lines.append(
                f"{f['profile']:<7} {f['sample_rate']:>6} {f['image']:>8} {f['wave_samples']:>7} "
                f"{f['recordings']:>10} {f['compute_ms']:>10.1f} {f['extract_ms']:>10.1f} "
                f"{f['first_call_s']:>12.2f}"
            )
    elif "features_skipped" in results:
        lines.append(f"feature extraction skipped: {results['features_skipped']}")
    lines += ["", f"bench time {results['wall_s']:.0f} s"]
    return "\n".join(lines)


def format_memory(memory: list[dict], device_type: str) -> list[str]:
    """The peak-memory table."""
    lines = ["peak memory of one 1-epoch trial in a fresh process, MB"]
    if device_type == "cuda":
        lines.append(
            f"{'size':<6} {'precision':<9} {'windows':>7} {'features':>8} {'peak RSS':>8} "
            f"{'GPU allocated':>13} {'GPU reserved':>12} {'context':>7} {'trials/GPU':>10}"
        )
        for m in memory:
            lines.append(
                f"{m['size']:<6} {m['precision']:<9} {m['windows']:>7} {m['features_mb']:>8.0f} "
                f"{m['rss_peak_mb']:>8.0f} {m['gpu_allocated_mb']:>13.0f} {m['gpu_reserved_mb']:>12.0f} "
                f"{m['cuda_context_mb']:>7.0f} {m['trials_per_gpu']:>10}"
            )
    else:
        lines.append(
            f"{'size':<6} {'windows':>7} {'features':>8} {'RSS before':>10} {'peak RSS':>8} "
            f"{'full trial (3,534 windows), est.':>32}"
        )
        for m in memory:
            lines.append(
                f"{m['size']:<6} {m['windows']:>7} {m['features_mb']:>8.1f} {m['rss_before_mb']:>10.0f} "
                f"{m['rss_peak_mb']:>8.0f} {m['rss_full_trial_mb']:>32.0f}"
            )
    return lines


def format_architectures(result: dict) -> list[str]:
    """Step time per architecture and cuDNN setting, and the kernels that take the device's time."""
    lines = [
        f"training step per architecture ({result['size']} size, {result['precision']}, mean of {result['steps']} steps)",
        f"{'architecture':<12} {'cudnn.benchmark':>15} {'step ms':>8} {'windows/s':>10}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['architecture']:<12} {str(r['cudnn_benchmark']):>15} {r['step_ms']:>8.3g} {r['windows_per_s']:>10.4g}"
        )
    if result.get("kernels"):
        lines += ["GPU kernels of a fusion training step (cudnn.benchmark on), by device time:"]
        lines += [f"  {k['ms_per_step']:>7.3f} ms {k['share']:>6.1%}  {k['kernel']}" for k in result["kernels"]]
    return lines


def format_sharing(sharing: dict) -> list[str]:
    """The sharing table and its recommendation."""
    gpu = "gpu_per_trial_mb" in sharing
    lines = [
        f"trials sharing the device ({sharing['size']} size, {sharing['precision']}, bare loop, "
        f"{sharing['windows']} windows each, {sharing['seconds']:g} s per count)",
        f"{'trials':>6} {'windows/s':>10} {'per trial':>10} {'epoch 2,943 s':>13}",
    ]
    for r in sharing["rows"]:
        lines.append(
            f"{r['trials']:>6} {r['windows_per_s']:>10.4g} {r['per_trial_windows_per_s']:>10.4g} "
            f"{r['epoch_2943_s']:>13.4g}"
        )
    lines.append(
        f"recommended: {sharing['recommended_trials']} trial(s) at once ({SHARING_KNEE:.0%} of the best throughput), "
        f"gpus_per_trial {sharing['recommended_gpus_per_trial']:g}"
        + (
            f"; {sharing['gpu_per_trial_mb']:.0f} MB of GPU memory per training trial "
            f"({sharing['gpu_used_mb']:.0f} MB with {max(r['trials'] for r in sharing['rows'])} resident), "
            f"{sharing['trials_fit_memory']} fit"
            if gpu
            else ""
        )
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", help=f"comma-separated sizes among {', '.join(SIZES)} (default: all; with --quick: cpu)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when torch finds it, else the CPU"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of trainer and bare loop (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, as train.threads (default 1)")
    parser.add_argument(
        "--sharing",
        metavar="COUNTS",
        help="also train this many trials at once, e.g. 1,2,4,8 (processes sharing the device; the largest size)",
    )
    parser.add_argument(
        "--parts",
        default="trainer,memory,sharing,features",
        help=f"comma-separated parts among {', '.join(PARTS)} (default: all but architectures; sharing needs --sharing)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny runs for the tests: {QUICK['windows']} windows, 1 epoch, 1 repeat, "
        f"{QUICK['recordings']} recording per profile",
    )
    args = parser.parse_args(argv)
    sizes = (args.sizes or ("cpu" if args.quick else ",".join(SIZES))).split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; expected some of {list(SIZES)}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but torch {torch.__version__} finds no CUDA device")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    try:
        sharing = sorted({int(c) for c in args.sharing.split(",")}) if args.sharing else None
    except ValueError:
        parser.error(f"--sharing expects trial counts like 1,2,4,8, got {args.sharing!r}")
    if sharing and min(sharing) < 1:
        parser.error("--sharing counts must be at least 1")
    parts = tuple(args.parts.split(","))
    if set(parts) - set(PARTS):
        parser.error(f"unknown part(s) {sorted(set(parts) - set(PARTS))}; expected some of {list(PARTS)}")
    results = run_bench(sizes, device, 1 if args.quick else args.repeats, args.threads, args.quick, sharing, parts)
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
