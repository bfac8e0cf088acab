"""A study's results folder: its file names, the columns of its two tables, how an evaluation set is
named, and reading and writing all of it. ``study`` writes a study only through this module and
``analysis`` reads one only through it; it imports neither the runner nor the analysis.

    OUT/study.json           the study's state: space, experiments, data, code and package versions
    OUT/trials.parquet       one row per trial: trial_id, config/SETTING, SET/METRIC, TRIAL_FIELDS
    OUT/predictions.parquet  one row per trial, evaluation set, recording and condition: PREDICTION_COLUMNS
    OUT/trials/ID/           one trial: config.json (its settings: their only copy), metrics.json,
                             run.json (where and when it ran), predictions.parquet, checkpoint.pt
    OUT/search/              a search's trials, the same layout
    OUT/tune/ tune.log optuna.db .study.lock        Tune's experiments and log, a search's Optuna study, the lock
    OUT/report.md report.html tables/ plots/        the analysis report

A perturbed evaluation set is named ``SET~PERTURBATION@SEVERITY`` (:func:`eval_set_name`) in
metrics.json and trials.parquet; predictions.parquet keeps the three parts in their own columns.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, write_json, write_parquet
from .metrics import binary_metrics, multiclass_metrics

__all__ = [
    "STUDY_FILE",
    "TRIALS_FILE",
    "PREDICTIONS_FILE",
    "TRIALS_DIR",
    "SEARCH_DIR",
    "TUNE_DIR",
    "TUNE_LOG",
    "OPTUNA_DB",
    "CONFIG_FILE",
    "METRICS_FILE",
    "RUN_FILE",
    "CHECKPOINT_FILE",
    "FINAL_DIR",
    "STATE_FILE",
    "REPORT_FILE",
    "REPORT_HTML",
    "TABLES_DIR",
    "PLOTS_DIR",
    "PREDICTION_COLUMNS",
    "CONDITION_COLUMNS",
    "CLEAN_CONDITION",
    "CONDITION_KEY",
    "TRIAL_FIELDS",
    "eval_set_name",
    "parse_eval_set_name",
    "flatten_metrics",
    "read_state",
    "write_state",
    "finished_trial_ids",
    "write_trial",
    "write_run_record",
    "read_run_record",
    "record_experiment",
    "read_trial_config",
    "read_checkpoint",
    "trial_files",
    "install_trial",
    "trial_row",
    "collect_trials",
    "write_study",
    "read_study_files",
    "read_trial_history",
    "merge_predictions",
    "merge_into_study",
    "fake_study",
]

STUDY_FILE = "study.json"
TRIALS_FILE = "trials.parquet"
PREDICTIONS_FILE = "predictions.parquet"
TRIALS_DIR = "trials"
SEARCH_DIR = "search"  # a search's own trials, before the best configuration is replicated over seeds
TUNE_DIR = "tune"  # Tune's experiments when the study has no other --storage
TUNE_LOG = "tune.log"
OPTUNA_DB = "optuna.db"  # a search's Optuna study

# a trial's folder
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
# inside a trial's checkpoints in Tune's storage: the last one's result files, an epoch's resume state
FINAL_DIR = "final"
STATE_FILE = "state.pt"

# the analysis report
REPORT_FILE = "report.md"
REPORT_HTML = "report.html"
TABLES_DIR = "tables"
PLOTS_DIR = "plots"

# predictions.parquet: one row per trial, evaluation set, recording and condition. ``prob`` is
# P(abnormal); multi-class models add ``prob_0`` … ``prob_{C-1}`` after these.
PREDICTION_COLUMNS = (
    "trial_id",
    "eval_set",
    "recording_id",
    "source",
    "group",
    "label",
    "prob",
    "perturbation",
    "severity",
    "ablation",
)
# a condition: a perturbation at a severity, and a test-time branch ablation ("waveform=mean")
CONDITION_COLUMNS = ("perturbation", "severity", "ablation")
CLEAN_CONDITION = {"perturbation": "none", "severity": 0, "ablation": "none"}  # also what older studies lack
CONDITION_KEY = ["trial_id", "eval_set", *CONDITION_COLUMNS]  # the rows a re-evaluation replaces

# trials.parquet: trial_id, then config/SETTING for each setting, SET/METRIC for each evaluation set's
# metrics, these fields, data/duplicates_* counts, the device, and the validation scores of the kept weights
TRIAL_FIELDS = (
    "epochs",
    "best_epoch",
    "threshold",
    "wall_time_s",
    "node_id",
    "node_ip",
    "hostname",
    "retries",
    "experiment",
    "stopped_early",
    "started_at",
    "finished_at",
)


def eval_set_name(name: str, perturbation: str = "none", severity: int = 0) -> str:
    """An evaluation set's name in metrics.json and trials.parquet: ``SET``, or ``SET~PERTURBATION@SEVERITY``."""
    return name if perturbation == "none" else f"{name}~{perturbation}@{severity}"


def parse_eval_set_name(text: str) -> tuple[str, str, int]:
    """(set, perturbation, severity) of a name :func:`eval_set_name` made."""
    name, tilde, condition = text.partition("~")
    if not tilde:
        return name, "none", 0
    perturbation, at, severity = condition.rpartition("@")
    if not at or not severity.lstrip("-").isdigit():
        raise ValueError(f"evaluation set {text!r}: expected SET~PERTURBATION@SEVERITY")
    return name, perturbation, int(severity)


def flatten_metrics(metrics: dict) -> dict:
    """{"pascal": {"roc_auc": ...}} → {"pascal/roc_auc": ...}, scalars only: trials.parquet's metric columns."""
    return {
        f"{name}/{key}": value
        for name, values in metrics.items()
        for key, value in values.items()
        if isinstance(value, (int, float))
    }


# ---------------------------------------------------------------- the study's state


def read_state(out: Path) -> dict | None:
    """study.json of ``out``, or None when there is none; ValueError naming the file when it is unreadable."""
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: unreadable study state ({error})") from error


def write_state(out: Path, state: dict) -> Path:
    return write_json(Path(out) / STUDY_FILE, state)


def finished_trial_ids(trials_dir: Path) -> set[str]:
    """The trials whose folder in ``trials_dir`` is complete (metrics.json is written last but one)."""
    trials_dir = Path(trials_dir)
    return {p.parent.name for p in trials_dir.glob(f"*/{METRICS_FILE}")} if trials_dir.is_dir() else set()


# ---------------------------------------------------------------- a trial's folder


def write_trial(folder: Path, trial, result, data_info: dict, trial_id: str) -> None:
    """A finished trial's files in ``folder``, each written atomically: predictions, checkpoint (the kept
    weights and what scoring them needs), config.json (the settings, flat: their only copy), and
    metrics.json last. ``trial`` is a :class:`study.config.TrialConfig`, ``result`` a
    :class:`study.train.TrialResult`."""
    import torch  # here, not at the top: the analysis reads results folders without loading torch

    folder = Path(folder)
    write_parquet(folder / PREDICTIONS_FILE, result.predictions)
    with atomic_path(folder / CHECKPOINT_FILE) as tmp:
        torch.save(
            {
                "model": result.best_state,
                "threshold": result.threshold,
                "best_epoch": result.best_epoch,
                "feature_means": result.feature_means,
            },
            tmp,
        )
    write_json(folder / CONFIG_FILE, trial.flat)
    write_json(
        folder / METRICS_FILE,
        {
            "trial_id": trial_id,
            "metrics": result.metrics,
            "threshold": result.threshold,
            "threshold_criterion": trial.train.threshold_criterion,
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "wall_time_s": result.wall_time_s,
            "history": result.history,
            "device": result.device,
            "data": data_info,
        },
    )


def write_run_record(folder: Path, record: dict) -> Path:
    """run.json: where and when the trial ran (trial_id, node, resumed_at, experiment, ...); not its settings."""
    return write_json(Path(folder) / RUN_FILE, {k: v for k, v in record.items() if k != "config"})


def read_run_record(folder: Path) -> dict:
    """run.json of a trial folder; an older version's copy of the settings in it is left out (config.json holds them)."""
    record = json.loads((Path(folder) / RUN_FILE).read_text())
    record.pop("config", None)
    return record


def record_experiment(folder: Path, experiment: str) -> None:
    """Name in a trial's run.json the Tune experiment that ran it."""
    write_run_record(folder, {**read_run_record(folder), "experiment": experiment})


def read_trial_config(folder: Path) -> dict:
    """A trial's settings, flat by name (``model.fusion``), from its config.json."""
    return json.loads((Path(folder) / CONFIG_FILE).read_text())


def read_checkpoint(folder: Path, raw: bytes | None = None) -> dict:
    """A trial's kept weights on the CPU: {config, model, threshold, best_epoch, feature_means}.

    ``raw``: the checkpoint's bytes when they travelled without the folder (a Ray task); the settings
    come from config.json all the same. ValueError names the file when something is missing."""
    import io

    import torch  # see write_trial

    folder = Path(folder)
    path = folder / CHECKPOINT_FILE
    if raw is None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        raw = path.read_bytes()
    checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    missing = [k for k in ("model", "threshold") if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}")
    return checkpoint


def trial_files(folder: Path) -> dict[str, bytes]:
    """A trial folder's files as {name: bytes}: how a Ray task returns them to the driver."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def install_trial(trials_dir: Path, trial_id: str, files: Path | dict[str, bytes]) -> Path:
    """Replace ``trials_dir/trial_id`` with a copy of the folder ``files`` (or the files {name: bytes}),
    atomically: a reader sees the old trial or the new one, never half of it."""
    target = Path(trials_dir) / trial_id
    staging = Path(trials_dir) / f".{trial_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(files, dict):
        staging.mkdir(parents=True)
        for name, content in files.items():
            (staging / name).write_bytes(content)
    else:
        shutil.copytree(files, staging)
    record = staging / RUN_FILE
    if record.is_file():  # a trial written by an older version kept its settings here too
        write_run_record(staging, read_run_record(staging))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


# ---------------------------------------------------------------- the study's tables


def trial_row(folder: Path) -> dict:
    """A trial folder as its row of trials.parquet."""
    folder = Path(folder)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    run = read_run_record(folder)
    row = {"trial_id": run["trial_id"]}
    for key, value in read_trial_config(folder).items():
        row[f"config/{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    row.update(flatten_metrics(metrics["metrics"]))
    row.update(
        {
            "epochs": metrics["epochs"],
            "best_epoch": metrics["best_epoch"],
            "threshold": metrics["threshold"],
            "wall_time_s": metrics["wall_time_s"],
            "node_id": run["node_id"],
            "node_ip": run["node_ip"],
            "hostname": run["hostname"],
            "retries": len(run["resumed_at"]),
            "experiment": run.get("experiment"),
            "stopped_early": bool(run.get("stopped_early", False)),
            "started_at": run.get("started_at"),
            "finished_at": run.get("finished_at"),
        }
    )
    row.update({f"data/{k}": v for k, v in metrics.get("data", {}).items() if k.startswith("duplicates_")})
    device = metrics.get("device", {})
    row.update({"device": device.get("type"), "device_name": device.get("name"), "precision": device.get("precision")})
    if metrics["history"]:
        row.update({k: v for k, v in metrics["history"][-1].items() if k.startswith("kept_val_")})
    return row


def collect_trials(trials_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.parquet and predictions.parquet from the finished trials' folders in ``trials_dir``
    (``OUT/trials``, or a search's ``OUT/search/trials``), written beside that folder."""
    trials_dir = Path(trials_dir)
    folders = [p.parent for p in sorted(trials_dir.glob(f"*/{METRICS_FILE}"))]
    trials = pd.DataFrame([trial_row(folder) for folder in folders])
    frames = [pd.read_parquet(folder / PREDICTIONS_FILE) for folder in folders]
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_parquet(trials_dir.parent / TRIALS_FILE, trials)
    write_parquet(trials_dir.parent / PREDICTIONS_FILE, predictions)
    return trials, predictions


def write_study(out: Path, state: dict, trials: pd.DataFrame, predictions: pd.DataFrame) -> Path:
    """A study's three files, from tables already in their columns (a study made without trial folders)."""
    out = Path(out)
    write_parquet(out / TRIALS_FILE, trials)
    write_parquet(out / PREDICTIONS_FILE, predictions)
    write_state(out, state)
    return out


def read_study_files(out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(study.json, trials.parquet, predictions.parquet) of a finished study, as written (a study older than
    perturbations and ablations lacks their columns: CLEAN_CONDITION). FileNotFoundError names what is missing."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"study folder {out} does not exist")
    missing = [name for name in (STUDY_FILE, TRIALS_FILE, PREDICTIONS_FILE) if not (out / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{out} is not a finished study: {', '.join(missing)} missing "
            "(python -m study.run writes them when a study ends; --resume finishes one)"
        )
    state = read_state(out)
    trials = pd.read_parquet(out / TRIALS_FILE)
    predictions = pd.read_parquet(out / PREDICTIONS_FILE)
    return state, trials, predictions


def read_trial_history(out: Path, trial_id: str) -> tuple[str, int, list[dict]] | None:
    """(train.monitor, best epoch, one row per epoch) of a trial in ``OUT/trials``; None when its
    folder is absent (a study copied without trials/) or it kept no history."""
    folder = Path(out) / TRIALS_DIR / trial_id
    if not ((folder / METRICS_FILE).is_file() and (folder / CONFIG_FILE).is_file()):
        return None
    metrics = json.loads((folder / METRICS_FILE).read_text())
    if not metrics.get("history"):
        return None
    return read_trial_config(folder)["train.monitor"], metrics["best_epoch"], metrics["history"]


def merge_predictions(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``existing`` with every (trial, eval set, perturbation, severity, ablation) present in ``new`` replaced by ``new``'s rows."""
    absent = [c for c in PREDICTION_COLUMNS if c not in new]
    if absent:
        raise ValueError(f"new predictions lack the column(s) {absent}")
    existing = existing.copy()
    for column, value in CLEAN_CONDITION.items():  # studies written before perturbations / ablations existed
        if column not in existing:
            existing[column] = value
    replaced = existing.set_index(CONDITION_KEY).index.isin(new.set_index(CONDITION_KEY).index)
    merged = pd.concat([existing[~replaced], new], ignore_index=True)
    return merged.astype({"severity": "int64", "perturbation": str, "ablation": str})


def merge_into_study(out: Path, new: pd.DataFrame) -> None:
    """Merge prediction rows into each trial's and the study's predictions.parquet (see merge_predictions).

    Each trial's own file first: ``study.run --resume/--extend`` rebuilds OUT/predictions.parquet from them.
    """
    out = Path(out)
    for trial_id, rows in new.groupby("trial_id", sort=False):
        trial_file = out / TRIALS_DIR / trial_id / PREDICTIONS_FILE
        existing = pd.read_parquet(trial_file) if trial_file.is_file() else rows.iloc[:0]
        write_parquet(trial_file, merge_predictions(existing, rows))
    study_file = out / PREDICTIONS_FILE
    write_parquet(study_file, merge_predictions(pd.read_parquet(study_file), new))


# ---------------------------------------------------------------- a study without training


def fake_study(
    out: Path,
    *,
    space: dict,
    configurations: dict[str, dict],
    seeds,
    recordings: dict[str, pd.DataFrame],
    predict: Callable,
    conditions=((CLEAN_CONDITION["perturbation"], 0, CLEAN_CONDITION["ablation"]),),
    threshold: Callable | float = 0.5,
    state: dict | None = None,
) -> Path:
    """A finished study in ``out`` in study.run's format, with simulated predictions: for tests and benchmarks.

    ``configurations`` maps a name to its settings (without the seed); each is run over ``seeds`` as
    trial ``NAME-sSEED``. ``recordings`` maps an evaluation set to its recordings (``recording_id``,
    ``source``, ``group``, ``label``, and any column ``predict`` uses). ``predict(settings, seed,
    eval_set, recordings, condition)`` returns P(abnormal) per recording (or, for a multi-class model,
    the class probabilities, one column per class) for a condition
    (perturbation, severity, ablation) of ``conditions``, or None where that trial was not scored
    under it (a branch ablation of a single-branch model). ``threshold`` is a number or
    ``threshold(settings, seed)``. trials.parquet gets each trial's metrics on the clean condition
    (binary ones at its threshold), as study.run records them; study.json holds ``space`` and ``state``.
    """
    clean = tuple(CLEAN_CONDITION[c] for c in CONDITION_COLUMNS)
    rows, frames = [], []
    for name, settings in configurations.items():
        for seed in seeds:
            trial_id = f"{name}-s{seed}"
            cut = float(threshold(settings, seed) if callable(threshold) else threshold)
            row = {"trial_id": trial_id, "config/seed": seed}
            row.update({f"config/{k}": v for k, v in settings.items()})
            row["config/data.eval_sets"] = json.dumps(list(recordings))
            for eval_set, table in recordings.items():
                for condition in conditions:
                    prob = predict(settings, seed, eval_set, table, condition)
                    if prob is None:
                        continue
                    prob = np.asarray(prob, dtype=float)
                    frames.append(_fake_predictions(trial_id, eval_set, table, prob, condition))
                    if tuple(condition) == clean:
                        labels = table["label"].to_numpy()
                        metrics = (
                            binary_metrics(labels, prob, cut) if prob.ndim == 1 else multiclass_metrics(labels, prob)
                        )
                        row.update({f"{eval_set}/{key}": value for key, value in metrics.items()})
            row.update(_fake_trial_fields(cut))
            rows.append(row)
    return write_study(out, {"space": space, **(state or {})}, pd.DataFrame(rows), pd.concat(frames, ignore_index=True))


def _fake_predictions(trial_id: str, eval_set: str, table: pd.DataFrame, prob, condition) -> pd.DataFrame:
    perturbation, severity, ablation = condition
    classes = {f"prob_{k}": prob[:, k] for k in range(prob.shape[1])} if prob.ndim == 2 else {}
    return pd.DataFrame(
        {
            "trial_id": trial_id,
            "eval_set": eval_set,
            "recording_id": table["recording_id"].to_numpy(),
            "source": table["source"].to_numpy(),
            "group": table["group"].astype("string").to_numpy(),
            "label": table["label"].to_numpy(),
            "prob": prob if prob.ndim == 1 else 1.0 - prob[:, 0],  # P(abnormal): any class but normal
            "perturbation": perturbation,
            "severity": severity,
            "ablation": ablation,
            **classes,
        }
    )


def _fake_trial_fields(threshold: float) -> dict:
    fields = dict.fromkeys(TRIAL_FIELDS)
    fields.update(epochs=10, best_epoch=5, threshold=threshold, wall_time_s=1.0, retries=0, stopped_early=False)
    fields.update(node_id="fake", node_ip="127.0.0.1", hostname="fake", experiment="run-1")
    return fields
