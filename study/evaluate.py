"""Re-evaluate a finished study's saved checkpoints on a new perturbation suite.

``python -m analysis robustness results/NAME --perturb SUITE`` calls
:func:`reevaluate_study`: every trial's best weights (``OUT/trials/ID/checkpoint.pt``)
are scored on every evaluation set with each perturbation of the suite applied
(and, for fusion models, with each branch ablated), and the new rows replace
rows with the same key in ``OUT/predictions.parquet`` and in each trial's
``OUT/trials/ID/predictions.parquet``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from .config import model_config_of, profile_of
from .io import write_json, write_parquet
from .models import create_model
from .perturbations import parse_perturbation_suite
from .train import PREDICTION_COLUMNS, evaluate_model, pick_device
from .trial_data import data_settings, prepare_data

ROW_KEY = ["trial_id", "eval_set", "recording_id", "perturbation", "severity", "ablation"]
CONDITION_KEY = ["trial_id", "eval_set", "perturbation", "severity", "ablation"]


def load_checkpoint(path: str | Path) -> dict:
    """A trial's ``checkpoint.pt`` (config, model state dict, threshold, feature_means) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("config", "model", "threshold") if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}")
    return checkpoint


def load_model(checkpoint: dict) -> torch.nn.Module:
    """The trained model of a checkpoint, in eval mode."""
    config = checkpoint["config"]  # resolved: a recipe's settings are in it
    model = create_model(model_config_of(config, profile_of(config)))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def reevaluate_trials(
    checkpoints: dict[str, dict],
    data_root: str | Path,
    suite: list,
    *,
    device: str = "cpu",
    progress: bool = False,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Predictions of every trial on the perturbed evaluation sets of ``suite``.

    Parameters
    ----------
    checkpoints : dict
        trial id -> checkpoint as :func:`load_checkpoint` returns it.
    data_root : path
        The study's data root (``study.json``'s ``data_root``).
    suite : list of dict
        A perturbation suite in the search-space format, e.g.
        ``[{"name": "codec", "codec": "opus", "severities": [1, 2]}]``.

    Returns
    -------
    DataFrame
        Rows in predictions.parquet's columns: one per trial, evaluation set,
        perturbation, severity, branch ablation and recording. Perturbed
        features are computed (and cached) once per distinct data setting,
        not once per trial, by ``n_jobs`` worker processes (default: all cores).
    """
    if not checkpoints:
        raise ValueError("checkpoints must hold at least one trial")
    if not parse_perturbation_suite(suite):
        raise ValueError(f"suite must list at least one perturbation, got {suite!r}")
    torch_device = pick_device(device)
    prepared: dict[str, object] = {}
    frames = []
    for trial_id, checkpoint in checkpoints.items():
        config = {**checkpoint["config"], "data.perturbations": list(suite)}
        key = json.dumps(data_settings(config), sort_keys=True, default=str)
        if key not in prepared:
            # the clean sets were scored when the trial ran: keep only the perturbed ones
            prepared[key] = replace(prepare_data(config, data_root, progress=progress, n_jobs=n_jobs), evals={})
        model = load_model(checkpoint).to(torch_device)
        means = checkpoint.get("feature_means") or {}
        _, predictions = evaluate_model(
            model, prepared[key], torch_device, trial_id, float(checkpoint["threshold"]), means
        )
        frames.append(predictions)
    return pd.concat(frames, ignore_index=True)


def merge_predictions(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``existing`` with every (trial, eval set, perturbation, severity, ablation) present in ``new`` replaced by ``new``'s rows."""
    absent = [c for c in PREDICTION_COLUMNS if c not in new]
    if absent:
        raise ValueError(f"new predictions lack the column(s) {absent}")
    existing = existing.copy()
    # studies written before perturbations / ablations existed lack these columns
    defaults = {"perturbation": "none", "severity": 0, "ablation": "none"}
    for column, value in defaults.items():
        if column not in existing:
            existing[column] = value
    replaced = existing.set_index(CONDITION_KEY).index.isin(new.set_index(CONDITION_KEY).index)
    merged = pd.concat([existing[~replaced], new], ignore_index=True)
    return merged.astype({"severity": "int64", "perturbation": str, "ablation": str})


def reevaluate_study(
    out: str | Path, suite: list, *, device: str = "cpu", progress: bool = False, n_jobs: int | None = None
) -> pd.DataFrame:
    """Re-evaluate every trial of the study in ``out`` on ``suite`` and merge the rows into OUT/predictions.parquet.

    Returns the new rows; the suite is added to study.json's ``robustness_suites``.
    The study's trials are those of ``trials.parquet``; each must have
    ``OUT/trials/ID/checkpoint.pt``. Each trial's ``predictions.parquet`` gets
    its rows too, so a later ``--resume`` or ``--extend`` (which rebuilds the
    study's file from them) keeps them; trials added by ``--extend`` lack the
    suite until it is re-run. Every file is replaced atomically, and re-running
    a suite replaces its rows, so an interrupted run is repaired by running it again.
    """
    out = Path(out)
    state = json.loads((out / "study.json").read_text())
    if "data_root" not in state:
        raise ValueError(f"{out}/study.json has no data_root: cannot find the audio to perturb")
    trial_ids = pd.read_parquet(out / "trials.parquet", columns=["trial_id"])["trial_id"].tolist()
    checkpoints = {t: load_checkpoint(out / "trials" / t / "checkpoint.pt") for t in trial_ids}
    new = reevaluate_trials(checkpoints, state["data_root"], suite, device=device, progress=progress, n_jobs=n_jobs)
    # Each trial's own file first: `study.run --resume/--extend` rebuilds OUT/predictions.parquet from them.
    for trial_id, rows in new.groupby("trial_id", sort=False):
        trial_file = out / "trials" / trial_id / "predictions.parquet"
        existing = pd.read_parquet(trial_file) if trial_file.is_file() else rows.iloc[:0]
        write_parquet(trial_file, merge_predictions(existing, rows))
    merged = merge_predictions(pd.read_parquet(out / "predictions.parquet"), new)
    write_parquet(out / "predictions.parquet", merged)
    # the report labels a perturbation level with its options, so the study remembers the suites merged in
    state["robustness_suites"] = [*state.get("robustness_suites", []), list(suite)]
    write_json(out / "study.json", state)
    return new
