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


def merge_into_study(out: Path, new: pd.DataFrame) -> None:
    """Merge prediction rows into each trial's and the study's predictions.parquet (see merge_predictions).

    Each trial's own file first: `study.run --resume/--extend` rebuilds OUT/predictions.parquet from them.
    """
    for trial_id, rows in new.groupby("trial_id", sort=False):
        trial_file = out / "trials" / trial_id / "predictions.parquet"
        existing = pd.read_parquet(trial_file) if trial_file.is_file() else rows.iloc[:0]
        write_parquet(trial_file, merge_predictions(existing, rows))
    write_parquet(out / "predictions.parquet", merge_predictions(pd.read_parquet(out / "predictions.parquet"), new))


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
    merge_into_study(out, new)
    # the report labels a perturbation level with its options, so the study remembers the suites merged in
    state["robustness_suites"] = [*state.get("robustness_suites", []), list(suite)]
    write_json(out / "study.json", state)
    return new


# ---------------------------------------------------------------- external evaluation sets


def parse_eval_set(text: str) -> tuple[str, str, Path, str | None]:
    """``[NAME=]DATASET:ROOT[:SPLIT]`` -> (name, dataset, root, split); the name defaults to DATASET@ROOT's folder name."""
    from .data import LOADERS

    name, _, spec = text.rpartition("=") if "=" in text.split(":", 1)[0] else ("", "", text)
    dataset, _, rest = spec.partition(":")
    if dataset not in LOADERS or not rest:
        raise ValueError(
            f"--eval-set {text!r}: expected [NAME=]DATASET:ROOT[:SPLIT] with DATASET one of {sorted(LOADERS)}"
        )
    root, _, split = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise ValueError(f"--eval-set {text!r}: {root_path} does not exist")
    split = split or None
    return name or f"{dataset}@{root_path.stem}" + (f":{split}" if split else ""), dataset, root_path, split


def external_table(config: dict, dataset: str, root: Path, split: str | None) -> pd.DataFrame:
    """The recordings of ``dataset`` at ``root`` (one split, or all), loaded with the trial's data settings."""
    from .config import DataConfig
    from .data import load_dataset

    data = DataConfig.from_config(config)
    options = {"skip_bad": data.skip_bad, **({"mapping": data.pascal_mapping} if dataset == "pascal" else {})}
    table = load_dataset(dataset, root, **options).table
    if split is not None:
        if split not in set(table["split"]):
            raise ValueError(f"{dataset} at {root} has no split {split!r}; its splits: {sorted(set(table['split']))}")
        table = table[table["split"] == split]
    if table.empty:
        raise ValueError(f"{dataset} at {root}{f' ({split})' if split else ''} holds no labelled recording")
    return table


def evaluate_study(out: str | Path, eval_sets: list[str], *, device: str = "cpu", report: bool = True) -> pd.DataFrame:
    """Score every saved checkpoint of the study in ``out`` on external evaluation sets, without training.

    ``eval_sets`` are ``[NAME=]DATASET:ROOT[:SPLIT]`` specs. Features use each trial's own profile (once per
    profile, through the cache); rows go into each trial's and the study's predictions.parquet under the
    new evaluation-set names, replacing rows of the same name (so re-running is idempotent), and the study's
    report is written again. Raises ValueError, naming the trial, for a checkpoint whose model cannot be
    rebuilt or a dataset whose labels do not fit the model's task; nothing is written then.
    """
    from .cache import FeatureCache, extract_features
    from .lock import study_lock
    from .tensors import SplitData, TrialData

    out = Path(out)
    specs = [parse_eval_set(text) for text in eval_sets]
    names = [spec[0] for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation-set names must differ, got {names}")
    with study_lock(out, "python -m study.evaluate", create=False):
        trial_ids = pd.read_parquet(out / "trials.parquet", columns=["trial_id"])["trial_id"].tolist()
        cache, splits, frames = FeatureCache(), {}, []
        torch_device = pick_device(device)
        for trial_id in trial_ids:
            path = out / "trials" / trial_id / "checkpoint.pt"
            checkpoint = load_checkpoint(path)
            try:
                model = load_model(checkpoint).to(torch_device)
            except (RuntimeError, ValueError, KeyError, TypeError) as error:
                raise ValueError(f"trial {trial_id}: the model of {path} cannot be rebuilt ({error})") from error
            config = checkpoint["config"]
            n_classes = int(getattr(model, "num_classes", 0) or config.get("model.num_classes", 1) or 1)
            evals = {}
            for name, dataset, root, split in specs:
                key = (name, profile_of(config).key(), json.dumps(data_settings(config), sort_keys=True, default=str))
                if key not in splits:
                    table = external_table(config, dataset, root, split)
                    if n_classes <= 2 and int(table["label"].max()) > 1:
                        raise ValueError(
                            f"{name}: {dataset} has {int(table['label'].max()) + 1} classes, but trial {trial_id} is "
                            "a binary (heart) model: score it with a study of that task"
                        )
                    features = extract_features(table, profile_of(config), cache=cache, desc=name)
                    splits[key] = SplitData.from_features(name, features)
                evals[name] = splits[key]
            data = TrialData(next(iter(evals.values())), next(iter(evals.values())), evals, profile_of(config))
            means = checkpoint.get("feature_means") or {}
            _, predictions = evaluate_model(model, data, torch_device, trial_id, float(checkpoint["threshold"]), means)
            frames.append(predictions)
        new = pd.concat(frames, ignore_index=True)
        merge_into_study(out, new)
        state = json.loads((out / "study.json").read_text())
        external = {e["name"]: e for e in state.get("external_eval_sets", [])}
        for name, dataset, root, split in specs:
            external[name] = {"name": name, "dataset": dataset, "root": str(root), "split": split}
        state["external_eval_sets"] = list(external.values())
        write_json(out / "study.json", state)
        if report:
            from analysis.report import report_study  # like study.run, the one other study -> analysis import

            report_study(out)
    return new


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .lock import StudyLocked

    parser = argparse.ArgumentParser(
        prog="python -m study.evaluate",
        description="Score a finished study's saved checkpoints on new data, without training, and rewrite its report.",
    )
    parser.add_argument("study", type=Path, help="a finished study folder, e.g. results/fusion")
    parser.add_argument(
        "--eval-set",
        action="append",
        required=True,
        metavar="[NAME=]DATASET:ROOT[:SPLIT]",
        help="a dataset to score (repeatable): manifest:my.csv, pascal:DATA/pascal, physionet2016:DATA/physionet2016:test",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    args = parser.parse_args(argv)
    try:
        new = evaluate_study(args.study, args.eval_set, device=args.device, report=not args.no_report)
    except (FileNotFoundError, ValueError, StudyLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sets = ", ".join(sorted(new["eval_set"].unique()))
    print(f"scored {new['trial_id'].nunique()} trials on {sets}: {len(new)} rows merged into {args.study}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
