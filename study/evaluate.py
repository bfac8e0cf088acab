"""Score a finished study's saved checkpoints again, without training: on a perturbation suite or on new data.

``python -m study.evaluate OUT --perturb SUITE`` calls
:func:`reevaluate_study`: every trial's best weights (``OUT/trials/ID/checkpoint.pt``)
are scored on every evaluation set with each perturbation of the suite applied
(and, for fusion models, with each branch ablated), and the new rows replace
rows with the same key in ``OUT/predictions.parquet`` and in each trial's
``OUT/trials/ID/predictions.parquet``.

``python -m study.evaluate OUT --eval-set [NAME=]DATASET:ROOT[:SPLIT] [--address auto|HOST:PORT]
[--ray-min-trials N]`` calls :func:`evaluate_study`: the same for external datasets. Features are
extracted once in the driver; a few trials are scored there, many (or any, given ``--address``) as
Ray tasks, one per trial, spread over the cluster.

Both rewrite the study's report when they end (``--no-report`` skips it): with ``analysis robustness``'s
tables after ``--perturb``, with ``analysis report``'s after ``--eval-set``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import yaml

from .config import DataConfig, TrialConfig
from .lock import StudyLocked, study_lock
from .models import create_model
from .perturbations import parse_perturbation_suite
from .registry import load_plugins, loaded_plugins
from .results import (
    CHECKPOINT_FILE,
    STUDY_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    merge_into_study,
    read_checkpoint,
    read_state,
    read_trial_config,
    write_state,
)
from .train import evaluate_model, pick_device
from .trial_data import prepare_data

__all__ = [
    "RAY_MIN_TRIALS",
    "load_checkpoint",
    "load_model",
    "reevaluate_trials",
    "reevaluate_study",
    "parse_suite_argument",
    "parse_eval_set",
    "external_table",
    "check_task",
    "prepare_external_sets",
    "score_checkpoint",
    "score_locally",
    "score_on_ray",
    "evaluate_study",
    "main",
]

RAY_MIN_TRIALS = 8  # study.evaluate scores this many trials or more as Ray tasks; fewer here, one by one


def load_checkpoint(folder: str | Path, raw: bytes | None = None, config: dict | None = None) -> dict:
    """A trial's kept weights on the CPU with its settings: {config, model, threshold, feature_means, ...}.

    ``folder``: the trial's folder (``OUT/trials/ID``); ``raw`` and ``config``: the checkpoint's bytes and
    the settings when they travelled without the folder (a Ray task)."""
    checkpoint = read_checkpoint(folder, raw)
    return {**checkpoint, "config": config if config is not None else read_trial_config(folder)}


def load_model(checkpoint: dict) -> torch.nn.Module:
    """The trained model of a checkpoint, in eval mode."""
    trial = TrialConfig.from_flat(checkpoint["config"])  # resolved: a recipe's settings are in it
    model = create_model(trial.model)
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
        trial id -> checkpoint with its config, as :func:`load_checkpoint` returns it.
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
        trial = TrialConfig.from_flat({**checkpoint["config"], "data.perturbations": list(suite)})
        key = trial.data_key
        if key not in prepared:
            # the clean sets were scored when the trial ran: keep only the perturbed ones
            prepared[key] = replace(prepare_data(trial, data_root, progress=progress, n_jobs=n_jobs), evals={})
        model = load_model(checkpoint).to(torch_device)
        means = checkpoint.get("feature_means") or {}
        _, predictions = evaluate_model(
            model, prepared[key], torch_device, trial_id, float(checkpoint["threshold"]), means
        )
        frames.append(predictions)
    return pd.concat(frames, ignore_index=True)


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
    state = read_state(out)
    if state is None or "data_root" not in state:
        raise ValueError(f"{out / STUDY_FILE} has no data_root: cannot find the audio to perturb")
    checkpoints = {t: load_checkpoint(out / TRIALS_DIR / t) for t in _trial_ids(out)}
    new = reevaluate_trials(checkpoints, state["data_root"], suite, device=device, progress=progress, n_jobs=n_jobs)
    merge_into_study(out, new)
    # the report labels a perturbation level with its options, so the study remembers the suites merged in
    state["robustness_suites"] = [*state.get("robustness_suites", []), list(suite)]
    write_state(out, state)
    return new


def _trial_ids(out: Path) -> list[str]:
    """The study's trials, as trials.parquet lists them; FileNotFoundError names a study that never finished."""
    path = out / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {out} is not a finished study")
    return pd.read_parquet(path, columns=["trial_id"])["trial_id"].tolist()


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


def external_table(data: DataConfig, dataset: str, root: Path, split: str | None) -> pd.DataFrame:
    """The recordings of ``dataset`` at ``root`` (one split, or all), loaded with a trial's data settings."""
    from .data import load_dataset

    table = load_dataset(dataset, root, **data.loader_options(dataset)).table
    if split is not None:
        if split not in set(table["split"]):
            raise ValueError(f"{dataset} at {root} has no split {split!r}; its splits: {sorted(set(table['split']))}")
        table = table[table["split"] == split]
    if table.empty:
        raise ValueError(f"{dataset} at {root}{f' ({split})' if split else ''} holds no labelled recording")
    return table


def check_task(trial_id: str, trial: TrialConfig, name: str, dataset: str, labels: pd.Series) -> None:
    """Refuse an evaluation set whose labels (0 … C-1) a trial's model cannot score: multi-class for a binary model."""
    if trial.model.num_classes <= 2 and int(labels.max()) > 1:
        raise ValueError(
            f"{name}: {dataset} has {int(labels.max()) + 1} classes, but trial {trial_id} is "
            "a binary (heart) model: score it with a study of that task"
        )


def prepare_external_sets(
    configs: dict[str, TrialConfig], specs: list[tuple]
) -> tuple[dict[str, str], dict[str, dict]]:
    """The features every trial is scored on, extracted once per data key (data and feature settings) through the cache.

    ``configs``: trial id -> its config; ``specs``: :func:`parse_eval_set` tuples. Returns
    ({trial id: features key}, {features key: {evaluation-set name: SplitData}}).
    """
    from .cache import FeatureCache, extract_features
    from .tensors import SplitData

    cache, keys, prepared = FeatureCache(), {}, {}
    for trial_id, trial in configs.items():
        key = trial.data_key
        sets = prepared.setdefault(key, {})
        for name, dataset, root, split in specs:
            if name in sets:
                check_task(trial_id, trial, name, dataset, sets[name].table["label"])
                continue
            table = external_table(trial.data, dataset, root, split)
            check_task(trial_id, trial, name, dataset, table["label"])  # before the (long) extraction
            sets[name] = SplitData.from_features(name, extract_features(table, trial.features, cache=cache, desc=name))
        keys[trial_id] = key
    return keys, prepared


def score_checkpoint(
    trial_id: str, raw: bytes, folder: Path, config: dict, evals: dict, device: torch.device
) -> pd.DataFrame:
    """Predictions of one trial's checkpoint (``raw``: the bytes of its checkpoint in ``folder``, trained with
    ``config``) on prepared evaluation sets.

    ``evals``: name -> SplitData. Returns rows in predictions.parquet's columns, one per evaluation set,
    branch ablation and recording. Raises ValueError naming the trial when its model cannot be rebuilt.
    The local loop and the Ray task both score through here.
    """
    from .tensors import TrialData

    checkpoint = load_checkpoint(folder, raw, config)
    try:
        model = load_model(checkpoint).to(device)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"trial {trial_id}: the model of {folder / CHECKPOINT_FILE} cannot be rebuilt ({error})"
        ) from error
    first = next(iter(evals.values()))  # evaluate_model reads only evals; train and val are placeholders
    data = TrialData(first, first, evals, TrialConfig.from_flat(checkpoint["config"]).features)
    means = checkpoint.get("feature_means") or {}
    _, predictions = evaluate_model(model, data, device, trial_id, float(checkpoint["threshold"]), means)
    return predictions


def score_locally(
    folders: dict[str, Path], configs: dict[str, dict], keys: dict[str, str], prepared: dict, device: str
) -> pd.DataFrame:
    """Every trial's predictions, one trial after another in this process, in ``folders``' order."""
    print(f"scoring {len(folders)} trial(s) locally", flush=True)
    torch_device = pick_device(device)
    frames = [
        score_checkpoint(t, (f / CHECKPOINT_FILE).read_bytes(), f, configs[t], prepared[keys[t]], torch_device)
        for t, f in folders.items()
    ]
    return pd.concat(frames, ignore_index=True)


def _score_task(
    trial_id: str, raw: bytes, folder: Path, config: dict, evals: dict, device: str, plugins: list[str]
) -> pd.DataFrame:
    """Ray task (num_cpus=1): :func:`score_checkpoint` on a worker, with one torch thread and the plugins loaded."""
    load_plugins(plugins)  # the models of a plugin's architectures and heads are built here
    torch.set_num_threads(1)  # one per CPU Ray gave the task: more would oversubscribe the node's cores
    return score_checkpoint(trial_id, raw, folder, config, evals, pick_device(device))


def score_on_ray(
    folders: dict[str, Path],
    configs: dict[str, dict],
    keys: dict[str, str],
    prepared: dict,
    device: str,
    address: str | None,
) -> pd.DataFrame:
    """Every trial's predictions from one Ray task per trial (1 CPU, and 1 GPU for a CUDA device), in ``paths``' order.

    Each features object goes into the object store once and a checkpoint travels as bytes, so worker
    nodes need neither the study folder nor the datasets. The first failing task cancels the others;
    a ValueError it raised (naming the trial) is raised here as it is.
    """
    import ray

    from .connection import ray_session  # Ray is imported only on this path

    with ray_session(address):
        resources = ray.cluster_resources()
        gpus = 1 if device == "cuda" or (device == "auto" and resources.get("GPU", 0) > 0) else 0
        if gpus and not resources.get("GPU", 0):
            raise ValueError("--device cuda: the Ray cluster has no GPU")  # the tasks would wait forever
        print(
            f"scoring {len(folders)} trial(s) as Ray tasks on a cluster of {int(resources.get('CPU', 0))} CPUs",
            flush=True,
        )
        sets = {key: ray.put(evals) for key, evals in prepared.items()}
        task = ray.remote(_score_task).options(num_cpus=1, num_gpus=gpus)
        plugins = loaded_plugins()
        refs = {
            task.remote(t, (f / CHECKPOINT_FILE).read_bytes(), f, configs[t], sets[keys[t]], device, plugins): t
            for t, f in folders.items()
        }
        frames, pending = {}, list(refs)
        try:
            while pending:
                [done], pending = ray.wait(pending, num_returns=1)
                frames[refs[done]] = ray.get(done)
        except ray.exceptions.RayTaskError as error:
            for ref in pending:
                ray.cancel(ref)
            if isinstance(error.cause, ValueError):
                raise error.cause from None  # one line naming the trial, not the worker's traceback
            raise
    return pd.concat([frames[t] for t in folders], ignore_index=True)


def evaluate_study(
    out: str | Path,
    eval_sets: list[str],
    *,
    device: str = "cpu",
    report: bool = True,
    address: str | None = None,
    ray_min_trials: int = RAY_MIN_TRIALS,
) -> pd.DataFrame:
    """Score every saved checkpoint of the study in ``out`` on external evaluation sets, without training.

    ``eval_sets`` are ``[NAME=]DATASET:ROOT[:SPLIT]`` specs. Features use each trial's own profile (once per
    profile and data settings, through the cache, here); the trials are scored here one after another, or as
    Ray tasks when there are at least ``ray_min_trials`` of them or an ``address`` (auto, HOST:PORT) names a
    cluster. Rows go into each trial's and the study's predictions.parquet under the new evaluation-set names,
    replacing rows of the same name (so re-running is idempotent), and the study's report is written again.
    Raises ValueError, naming the trial, for a checkpoint whose model cannot be rebuilt or a dataset whose
    labels do not fit the model's task; nothing is written then.
    """
    out = Path(out)
    specs = [parse_eval_set(text) for text in eval_sets]
    names = [spec[0] for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation-set names must differ, got {names}")
    with study_lock(out, "python -m study.evaluate", create=False):
        folders = {t: out / TRIALS_DIR / t for t in _trial_ids(out)}
        # only the configs stay in memory here: the weights are read when a trial is scored
        configs = {t: read_trial_config(f) for t, f in folders.items()}
        keys, prepared = prepare_external_sets({t: TrialConfig.from_flat(c) for t, c in configs.items()}, specs)
        if address is not None or len(folders) >= ray_min_trials:
            new = score_on_ray(folders, configs, keys, prepared, device, address)
        else:
            new = score_locally(folders, configs, keys, prepared, device)
        merge_into_study(out, new)
        state = read_state(out)
        external = {e["name"]: e for e in state.get("external_eval_sets", [])}
        for name, dataset, root, split in specs:
            external[name] = {"name": name, "dataset": dataset, "root": str(root), "split": split}
        state["external_eval_sets"] = list(external.values())
        write_state(out, state)
        if report:
            _report(out, robustness=False)
    return new


def parse_suite_argument(text: str) -> list:
    """A --perturb value (YAML or JSON list of suite entries), validated by parse_perturbation_suite."""
    try:
        suite = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"--perturb is not valid YAML or JSON: {error}") from None
    parse_perturbation_suite(suite)
    return suite


def _report(out: Path, robustness: bool) -> None:
    """The study's report again (the robustness section's own tables too after a perturbation suite). This
    command line and study.run are the only places in ``study`` that call the analysis: a study's report
    is what their users expect at the end."""
    try:
        from analysis.report import report_study
        from analysis.robustness import report_robustness
    except ImportError:
        return  # the analysis package is optional for scoring a study
    if robustness:
        summary = report_robustness(out)
        print(f"wrote {len(summary['tables']) // 3} robustness tables, {len(summary['plots'])} plots")
    report_study(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.evaluate",
        description="Score a finished study's saved checkpoints again, without training: on a perturbation "
        "suite (--perturb) or on new data (--eval-set); then rewrite its report.",
    )
    parser.add_argument("study", type=Path, help="a finished study folder, e.g. results/fusion")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--eval-set",
        action="append",
        metavar="[NAME=]DATASET:ROOT[:SPLIT]",
        help="a dataset to score (repeatable): manifest:my.csv, pascal:DATA/pascal, physionet2016:DATA/physionet2016:test",
    )
    what.add_argument(
        "--perturb",
        metavar="SUITE",
        help="score every evaluation set under this perturbation suite, e.g. "
        "'[{name: codec, codec: opus, severities: [1, 2]}]' (the format of a space's perturbations)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="--perturb: feature worker processes (default: all cores)"
    )
    parser.add_argument(
        "--address", default=None, help="score as Ray tasks on this Ray cluster: auto or HOST:PORT (default: see below)"
    )
    parser.add_argument(
        "--ray-min-trials",
        type=int,
        default=RAY_MIN_TRIALS,
        metavar="N",
        help=f"without --address, score N or more trials as Ray tasks (a local Ray), fewer here (default {RAY_MIN_TRIALS})",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (repeatable), here and on every Ray task, for the models and datasets it registers",
    )
    parser.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    args = parser.parse_args(argv)
    try:
        load_plugins(args.plugin)
        if args.perturb is not None:
            suite = parse_suite_argument(args.perturb)
            with study_lock(args.study, "python -m study.evaluate --perturb", create=False):
                new = reevaluate_study(args.study, suite, device=args.device, n_jobs=args.jobs)
                levels = len(parse_perturbation_suite(suite))
                print(
                    f"re-evaluated {new['trial_id'].nunique()} trials on {levels} perturbation levels: "
                    f"{len(new)} rows merged into {args.study}/predictions.parquet"
                )
                if not args.no_report:
                    _report(args.study, robustness=True)
            return 0
        new = evaluate_study(
            args.study,
            args.eval_set,
            device=args.device,
            report=not args.no_report,
            address=args.address,
            ray_min_trials=args.ray_min_trials,
        )
    except (FileNotFoundError, ValueError, ConnectionError, StudyLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sets = ", ".join(sorted(new["eval_set"].unique()))
    print(f"scored {new['trial_id'].nunique()} trials on {sets}: {len(new)} rows merged into {args.study}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
