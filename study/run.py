"""Run a whole study with Ray Tune.

    python -m study.run --space NAME [--scale cpu|paper] [--data-root DIR] [--address auto|HOST:PORT]
                        [--out DIR] [--resume | --extend] [--max-concurrent N] [--set key=value ...]
                        [--init-checkpoint AST_STATE_DICT.pth] [--plugin MODULE ...]
                        [--track tensorboard|mlflow|wandb ...]

One trial = one grid point of the space (or one sample of its ``search``, :mod:`study.search`),
trained by :func:`study.train.train_and_evaluate`; Tune holds its settings flat, by name
(``model.fusion``), as its trackers (:mod:`study.tracking`) show them. Features are computed once
here, before any trial starts, and reach every trial on every node through
Ray's object store, so worker nodes need no dataset. Each trial reports its
metrics and a checkpoint every epoch; a failed trial is retried from its last
checkpoint (``FailureConfig``); its final files come back through its last
checkpoint and are kept under ``OUT/trials/TRIAL_ID/``.

Resume and extend (Ray's own restore keeps errored trials errored and ignores
changes to the spec; here both are explicit):

* ``--resume``: keeps finished trials, continues interrupted ones from their
  last checkpoint and retries errored ones from theirs. A space that changed
  since the study started is refused, with the differences listed.
* ``--extend``: runs only the grid points the existing study lacks (more seeds,
  a new fusion type) and merges them into the same results.

Results (OUT defaults to results/NAME): trials.parquet, predictions.parquet,
study.json; the analysis report's tables/ and plots/ when it exists.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path

import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from .cluster import ClusterError, check_storage, check_trials_fit, interrupted, ray_session, storage_error
from .config import (
    ADDED_SETTINGS,
    Space,
    SpaceError,
    TrialConfig,
    added_settings_changed,
    check_resources,
    data_key_of,
    grid_with_overrides,
    load_space,
    parse_settings,
    trial_id_of,
    trial_label,
    validate_trial_config,
)
from .console import StudyConsole, tune_output
from .data import DataError
from .io import print_resource_error, write_json, write_parquet
from .lock import StudyLocked, study_lock
from .registry import load_plugins
from .search import check_search, optuna_searcher, sample_count, scheduler_of
from .synthetic import default_data_root
from .tracking import TRACKABLE_NAME, TRACKERS, check_trackers, log_report, tracker_callbacks
from .train import finish_from_state, train_and_evaluate
from .trial import save_trial
from .trial_data import prepare_data

TUNE_DIR = "tune"
TRIALS_DIR = "trials"
OPTUNA_DB = "optuna.db"  # a search's Optuna study, in OUT
# how Tune holds a trial's settings: flat, by name. An experiment without this mark (an older version's)
# nests them under "trial" and is not restored
FLAT_CONFIG = "flat"
FINAL_DIR = "final"  # inside a trial's last checkpoint: its result files
STATE_FILE = "state.pt"  # inside a per-epoch checkpoint: what resuming needs


# ---------------------------------------------------------------- the trainable (runs on workers)


def trainable(config: dict, data_refs: dict, storage: str, plugins: list[str], ids: str) -> None:
    """Ray Tune function trainable: one trial, resumable from its last checkpoint.

    ``config`` holds the trial's settings flat, by their names (``model.fusion``, ``train.lr``), as
    Tune and its trackers show them. ``ids`` names the trial: ``"config"`` by its settings
    (:func:`trial_id_of`, a grid point), ``"tune"`` by Tune's id (a search's sample).
    """

    load_plugins(plugins)  # this worker builds their models and reads their names too
    started_at = time.time()
    config = dict(config)
    trial_id = trial_id_of(config) if ids == "config" else tune.get_context().get_trial_id()
    data = ray.get(data_refs[data_key_of(config)])
    checkpoint = tune.get_checkpoint()
    resume_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            if (Path(folder) / STATE_FILE).is_file():
                resume_state = torch.load(Path(folder) / STATE_FILE, weights_only=False)

    def report(row, get_state):
        with tempfile.TemporaryDirectory() as folder:
            torch.save(get_state(), Path(folder) / STATE_FILE)
            _report_to(storage, row, folder)

    gpu_assigned = bool(ray.get_gpu_ids())
    trial = TrialConfig.from_flat(config)
    result = train_and_evaluate(
        trial, data, trial_id=trial_id, report=report, resume_state=resume_state, gpu_assigned=gpu_assigned
    )
    node = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": platform.node(),
    }
    with tempfile.TemporaryDirectory() as folder:
        final = Path(folder) / FINAL_DIR
        save_trial(final, trial, result, data.info, trial_id)
        write_json(
            final / "run.json",
            {
                "trial_id": trial_id,
                **node,
                "resumed_at": result.resumed_at,
                "config": config,
                "started_at": started_at,
                "finished_at": time.time(),
            },
        )
        # the full metrics travel in the checkpoint's files; Tune and the trackers get those of the clean
        # evaluation sets at the validation-chosen threshold, the names every tracker accepts
        final = {k: v for k, v in flatten_metrics(result.metrics).items() if TRACKABLE_NAME.fullmatch(k)}
        last_epoch = result.history[-1] if result.history else {}
        _report_to(
            storage,
            {**last_epoch, "done": True, "study_trial_id": trial_id, "wall_time_s": result.wall_time_s, **final},
            folder,
        )


def _report_to(storage: str, row: dict, folder: str) -> None:
    """tune.report with the checkpoint in ``folder``, which Tune uploads to ``storage`` from this
    worker: a node that cannot write there fails in one line naming it, not with pyarrow's traceback."""
    try:
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))
    except OSError as error:  # pyarrow's file-system errors
        where = f"node {ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
        raise ClusterError(storage_error(storage, where, f"{type(error).__name__}: {error}".splitlines()[0])) from None


def flatten_metrics(metrics: dict) -> dict:
    """{"pascal": {"roc_auc": ...}} → {"pascal/roc_auc": ...}, scalars only."""
    return {
        f"{name}/{key}": value
        for name, values in metrics.items()
        for key, value in values.items()
        if isinstance(value, (int, float))
    }


# ---------------------------------------------------------------- the driver


class Study:
    """A study's folder: its state (study.json), the Tune experiments, the collected trials."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / "study.json"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise SpaceError(f"{self.path}: unreadable study state ({exc})") from exc

    def save(self, state: dict) -> None:
        write_json(self.path, state)

    def finished_ids(self) -> set[str]:
        folder = self.out / TRIALS_DIR
        return {p.parent.name for p in folder.glob("*/metrics.json")} if folder.is_dir() else set()


def space_differences(old: dict, new: dict) -> list[str]:
    """Readable list of what changed between two resolved spaces."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in ("scale",) or old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    lines.append(f"{key}.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}")
        else:
            lines.append(f"{key}: {a!r} -> {b!r}")
    if old.get("scale") != new.get("scale"):
        lines.append(f"scale: {old.get('scale')!r} -> {new.get('scale')!r}")
    return lines


def package_versions() -> dict:
    names = ["ray", "torch", "timm", "numpy", "scipy", "pandas", "scikit-learn", "librosa", "soundfile", "optuna"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> dict:
    """The installed package's version, and the git commit when the code runs from a checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        package = metadata.version("audiofuse-study")
    except metadata.PackageNotFoundError:
        package = None
    if not (repo / ".git").exists():  # an installed package: a git repository around it is not its source
        return {"commit": None, "dirty": None, "package": package}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty, "package": package}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "package": package}


@dataclass(frozen=True)
class _Run:
    """What every Tune experiment of one ``study.run`` invocation shares."""

    space: Space
    out: Path
    storage: str
    data_refs: dict  # data key -> the features' ObjectRef
    resources: dict  # per trial
    plugins: list  # modules every worker loads
    track: list  # --track names
    resume: bool
    max_concurrent: int | None
    verbose: int

    def trainable(self, ids: str):
        """The trainable with its data and resources; ``ids``: see :func:`trainable`."""
        bound = tune.with_parameters(
            trainable, data_refs=self.data_refs, storage=self.storage, plugins=self.plugins, ids=ids
        )
        return tune.with_resources(bound, dict(self.resources))

    def run_config(self, name: str, console: StudyConsole) -> tune.RunConfig:
        """Tune's tables only with --verbose 2 and up; by default ``console`` prints a line per trial instead.
        The trackers of --track log every trial."""
        callbacks = ([console] if self.verbose == 1 else []) + tracker_callbacks(
            self.track, self.out, self.space.name, name
        )
        return tune.RunConfig(
            name=name,
            storage_path=self.storage.rstrip("/"),
            verbose=1 if self.verbose >= 2 else 0,
            callbacks=callbacks or None,
            failure_config=tune.FailureConfig(max_failures=3),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        )


def _collect(
    results, target_dir: Path, run: _Run, ids: str, finish_stopped: bool = True
) -> tuple[list[str], list[str]]:
    """Copy each finished trial's final files from its last checkpoint into ``target_dir/ID``.

    A trial that a scheduler stopped (ASHA stops trials at its rungs, and at ``max_t``, before the
    trainable's final report) has no final files: its best weights are evaluated from its last
    epoch checkpoint, on the trial's resources, and it is marked ``stopped_early`` when it trained
    fewer epochs than ``train.max_epochs``. Without ``finish_stopped`` (an interrupted study, whose
    unfinished trials resume later) only the finished trials are copied. Returns (collected ids, ids stopped early).
    """
    collected, stopped_early, pending = [], [], []
    for result in results:
        checkpoint = getattr(result, "checkpoint", None)
        if checkpoint is None or result.error is not None:
            continue
        with checkpoint.as_directory() as folder:
            final = Path(folder) / FINAL_DIR
            if (final / "metrics.json").is_file():
                trial_id = json.loads((final / "run.json").read_text())["trial_id"]
                _install(target_dir, trial_id, partial(shutil.copytree, final))
                collected.append(trial_id)
            elif finish_stopped and (Path(folder) / STATE_FILE).is_file():
                pending.append((result, (Path(folder) / STATE_FILE).read_bytes()))
    if pending:
        resources = run.resources
        finish = ray.remote(_finish_stopped_trial).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
        futures = []
        for result, state in pending:
            config = dict(result.config)
            trial_id = trial_id_of(config) if ids == "config" else result.metrics["trial_id"]
            ref = run.data_refs[data_key_of(config)]
            futures.append((trial_id, finish.remote(config, ref, state, trial_id, run.plugins)))
        for trial_id, future in futures:
            files, early = ray.get(future)
            _install(target_dir, trial_id, partial(_write_files, files))
            collected.append(trial_id)
            if early:
                stopped_early.append(trial_id)
    return collected, stopped_early


def _finish_stopped_trial(
    config: dict, data, state_bytes: bytes, trial_id: str, plugins: list[str]
) -> tuple[dict, bool]:
    """Ray task: evaluate a stopped trial's kept weights; returns its final files (name → bytes)."""

    load_plugins(plugins)
    state = torch.load(io.BytesIO(state_bytes), weights_only=False)
    trial = TrialConfig.from_flat(config)
    result = finish_from_state(trial, data, state, trial_id=trial_id, gpu_assigned=bool(ray.get_gpu_ids()))
    early = result.epochs < config["train.max_epochs"] and state["since_best"] < config["train.patience"]
    node = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": platform.node(),
    }
    with tempfile.TemporaryDirectory() as folder:
        save_trial(Path(folder), trial, result, data.info, trial_id)
        write_json(
            Path(folder) / "run.json",
            {"trial_id": trial_id, **node, "resumed_at": result.resumed_at, "config": config, "stopped_early": early},
        )
        return {p.name: p.read_bytes() for p in Path(folder).iterdir()}, early


def _write_files(files: dict, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


def _install(target_dir: Path, trial_id: str, fill) -> None:
    """Replace ``target_dir/trial_id`` with a folder filled by ``fill(staging)``, atomically."""
    target = target_dir / trial_id
    staging = target_dir / f".{trial_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    fill(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def write_results(study: Study, state: dict, trials_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.parquet (one row per trial) and predictions.parquet from the trials' folders
    (``OUT/trials/*``, or another folder such as a search's), written beside that folder."""
    trials_dir = trials_dir or study.out / TRIALS_DIR
    rows, predictions = [], []
    for folder in sorted(trials_dir.glob("*/metrics.json")):
        folder = folder.parent
        metrics = json.loads((folder / "metrics.json").read_text())
        run = json.loads((folder / "run.json").read_text())
        config = run["config"]
        row = {"trial_id": run["trial_id"]}
        row.update({f"config/{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in config.items()})
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
        data_info = metrics.get("data", {})
        row.update({f"data/{k}": v for k, v in data_info.items() if k.startswith("duplicates_")})
        device = metrics.get("device", {})
        row.update(
            {"device": device.get("type"), "device_name": device.get("name"), "precision": device.get("precision")}
        )
        if metrics["history"]:
            row.update({k: v for k, v in metrics["history"][-1].items() if k.startswith("kept_val_")})
        rows.append(row)
        predictions.append(pd.read_parquet(folder / "predictions.parquet"))
    trials = pd.DataFrame(rows)
    preds = pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame()
    write_parquet(trials_dir.parent / "trials.parquet", trials)
    write_parquet(trials_dir.parent / "predictions.parquet", preds)
    return trials, preds


def harvest_finished(out: Path) -> list[str]:
    """Install the trials that finished in Tune's storage but were never collected, because the
    driver was killed first (a deadline, a closed SSH session), then rewrite the result tables.

    A finished trial's last checkpoint holds its final files (``FINAL_DIR``); each is installed
    into ``OUT/trials/ID`` as ``_collect`` would. Unfinished trials stay in the Tune experiment,
    and ``--resume`` continues them. Local storage only. Returns the ids installed now.
    """
    study = Study(out)
    state = study.load()
    if state is None:
        raise SpaceError(f"{out}: no study.json; nothing to harvest")
    storage = state.get("storage") or str(out.resolve() / TUNE_DIR)
    if "://" in storage:
        raise SpaceError(f"{out}: the trials' storage {storage} is not a local folder; resume the study instead")
    finished = study.finished_ids()
    installed = []
    for experiment in state["experiments"]:
        for final in sorted(Path(storage, experiment["name"]).glob(f"trial_*/checkpoint_*/{FINAL_DIR}/run.json")):
            trial_id = json.loads(final.read_text())["trial_id"]
            if trial_id in finished or trial_id in installed:
                continue
            run = json.loads(final.read_text())
            _install(out / TRIALS_DIR, trial_id, partial(shutil.copytree, final.parent))
            run["experiment"] = experiment["name"]
            write_json(out / TRIALS_DIR / trial_id / "run.json", run)
            installed.append(trial_id)
    write_results(study, state)
    return installed


def replicate_configs(space: Space, configs: list[dict], best_params: dict) -> list[dict]:
    """After a search: the best configuration and the space's default one, labelled as the recipes
    ``best`` and ``default``, each over the scale's seeds, for the report's paired tests."""
    replicated = []
    for config in configs:
        replicated += [{**config, "recipe": "default"}, {**config, **best_params, "recipe": "best"}]
    for config in replicated:
        validate_trial_config(config, f"{space.path} (recipe {config['recipe']}, seed {config['seed']})")
    return replicated


def best_search_trial(trials: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The search trial whose kept weights score best on the search metric (validation only)."""
    if metric not in trials or trials[metric].isna().all():
        raise SpaceError(
            f"search.metric {metric!r} was reported by no search trial; "
            f"the trials report {sorted(c for c in trials if c.startswith('kept_val_'))}"
        )
    values = trials[metric] if mode == "max" else -trials[metric]
    return trials.loc[values.idxmax()]


def run_study(
    space: Space,
    *,
    out: Path,
    data_root: Path | None = None,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    extend: bool = False,
    max_concurrent: int | None = None,
    overrides: dict | None = None,
    resources: dict | None = None,
    report: bool = True,
    verbose: int = 1,
    plugins: list[str] | None = None,
    track: list[str] | None = None,
) -> dict:
    """Run (or resume, or extend) a study; returns its summary. See the module docstring.

    ``resources`` overrides the space's per-trial ``{"cpu": n, "gpu": g}`` (either key alone).
    A space with a ``search`` first runs the search (:mod:`study.search`) into ``OUT/search/``, then
    trains its best configuration and the default one over the scale's seeds into ``OUT/trials``.
    ``plugins`` are modules (:func:`study.registry.load_plugins`) loaded here and on every Ray worker;
    ``track`` names trackers (:mod:`study.tracking`) every trial and the report are logged to.
    The study folder is locked meanwhile (:mod:`study.lock`): a second driver is refused.
    """
    plugins = load_plugins(plugins or [])
    track = check_trackers(track or [])
    mode = " --resume" if resume else " --extend" if extend else ""
    out = Path(out).expanduser()  # "~/results/x" arrives unexpanded from a Ray Job's entrypoint, quoted
    with study_lock(out, f"python -m study.run --space {space.name}{mode}"):
        return _run_locked(
            space,
            out,
            data_root,
            address,
            storage,
            resume,
            extend,
            max_concurrent,
            overrides or {},
            resources,
            report,
            verbose,
            plugins,
            track,
        )


def _run_locked(
    space,
    out,
    data_root,
    address,
    storage,
    resume,
    extend,
    max_concurrent,
    overrides,
    resources,
    report,
    verbose,
    plugins,
    track,
) -> dict:
    resources = trial_resources(space, resources)
    study = Study(out)
    state = _study_state(space, study, overrides, resume, extend)
    resolved = space.trial_configs(overrides)
    configs = [trial.flat for trial in resolved]
    _check_added_settings(study, state, configs)
    if space.search is not None:  # again with the overrides: they may change what the trials report
        check_search(space.search, f"{space.path} (search, with --set)", resolved[0])
    data_root = Path(data_root).expanduser() if data_root else default_data_root()
    state.update(
        data_root=str(data_root),
        code=code_version(),
        packages=package_versions(),
        resources=resources,
        plugins=plugins,
    )
    # Tune's checkpoints: OUT/tune on one machine; on a multi-node cluster a storage every node
    # reaches (s3://bucket/prefix, or a shared file system), as Ray requires.
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # Tune needs an absolute path
    state["storage"] = storage or state.get("storage") or str(out.resolve() / TUNE_DIR)
    searched = space.search is None or state.get("search", {}).get("complete")
    if space.search is not None and searched:
        configs = replicate_configs(space, configs, state["search"]["best"]["params"])
    if searched and _nothing_left(study, state, configs, resume):
        trials, _ = write_results(study, state)
        study.save(state)
        print(f"{space.name}: all {len(trials)} trials already finished in {out}; nothing to train")
        return {"trials": len(trials), "trained": 0, "out": str(out)}

    started = time.perf_counter()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Tune forces an experiment snapshot whenever a trial has checkpointed num_to_keep times since the
    # last one, and warns when that happens within 5 s. Every epoch checkpoints (a killed worker resumes
    # from its last epoch), so with short CPU epochs it always happens; the snapshot is what a resumed
    # study restores from, and on local or S3 storage it costs milliseconds. Threshold 0: no warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C reaches Tune's graceful stop through study.cluster's handler, which also knows it happened.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if verbose < 2:  # Tune's newer console prints an experiment box and result paths even at verbose 0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with tune_output(out / "tune.log"), ray_session(address, log_to_driver=verbose > 2):  # Tune's log kept in OUT
        check_trials_fit(resources)  # before the features: both fail in a minute at most, the features may take longer
        check_storage(state["storage"])
        data_refs = _share_data(configs, data_root, state, verbose)
        study.save(state)
        run = _Run(space, out, state["storage"], data_refs, resources, plugins, track, resume, max_concurrent, verbose)
        if space.search is not None and not state.get("search", {}).get("complete"):
            _run_search(run, study, state, configs[0])
            configs = replicate_configs(space, configs, state["search"]["best"]["params"])
        collected, errors = _run_grid(run, study, state, configs)
    trials, _ = write_results(study, state)
    state["finished"] = _now()
    study.save(state)
    summary = {
        "trials": len(trials),
        "trained": len(collected),
        "failed": len(errors),
        "retried": int(trials["retries"].gt(0).sum()) if len(trials) else 0,
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(out),
    }
    if "search" in state:
        summary["search"] = {k: state["search"][k] for k in ("trials", "stopped_early", "best", "optuna")}
    _print_summary(space, trials, summary, errors)
    if report and len(trials) and not errors:
        report_summary = _report(out)
        if report_summary is not None and track:
            tensorboard_dir = Path(state["storage"]) / "report" if "://" not in state["storage"] else out / "report"
            log_report(track, out, space.name, report_summary, tensorboard_dir)
    return summary


def _study_state(space: Space, study: Study, overrides: dict, resume: bool, extend: bool) -> dict:
    """The study's state to run with: new, or the one in OUT when resuming or extending it.

    Raises SpaceError when OUT holds a study and neither --resume nor --extend was given, when the
    space changed since and --extend was not given, and when --extend is asked of a search."""
    previous = study.load()
    resolved = {**space.resolved(), "overrides": overrides}
    # an override of a grid axis (e.g. --set seed=0) replaces that axis for the whole study
    resolved["grid"], _ = grid_with_overrides(resolved["grid"], overrides)
    if previous is None:
        return {"space": resolved, "experiments": [], "started": _now(), "added_settings": sorted(ADDED_SETTINGS)}
    if not (resume or extend):
        raise SpaceError(
            f"{study.out} already holds study '{previous['space']['name']}': pass --resume to continue "
            f"it, --extend to add the grid points it lacks, or another --out"
        )
    # a setting the study predates, set to the value its trials ran with, changes nothing
    older = _settings_predated(previous)
    kept = {k: v for k, v in overrides.items() if not (k in older and v == ADDED_SETTINGS[k])}
    differences = space_differences(previous["space"], {**resolved, "overrides": kept})
    if differences and not extend:
        raise SpaceError(
            f"the space changed since {study.path} was written; refusing to resume:\n  "
            + "\n  ".join(differences)
            + "\npass --extend to run only the trials the study lacks"
        )
    if extend and previous["space"].get("search") is not None:
        raise SpaceError("--extend applies to grid spaces; an hpo search is resumed with --resume")
    if extend:
        previous["space"] = resolved
    return previous


def _settings_predated(state: dict) -> list[str]:
    """The ADDED_SETTINGS a study's state predates (all of them for a study.json written before any)."""
    return [k for k in ADDED_SETTINGS if k not in state.get("added_settings", [])]


def _check_added_settings(study: Study, state: dict, configs: list[dict]) -> None:
    """Refuse to resume or extend a study with another value of a setting it predates: its trials ran
    with the old value, and new ones would train on other data under other ids in the same study."""
    older = _settings_predated(state)
    changed = sorted({k for c in configs for k in added_settings_changed({k: c[k] for k in older if k in c})})
    if changed:
        keep = " ".join(f"--set {k}={ADDED_SETTINGS[k]}" for k in changed)
        raise SpaceError(
            f"{study.path} was started before {', '.join(changed)} existed and its trials ran as if they were "
            f"set to their old values; continue it with {keep}, or start a new study in another --out"
        )


def _nothing_left(study: Study, state: dict, configs: list[dict], resume: bool) -> bool:
    latest = state["experiments"][-1] if state["experiments"] else None
    finished = study.finished_ids()
    interrupted = resume and latest is not None and not latest.get("complete")
    return not interrupted and all(trial_id_of(c) in finished for c in configs)


def _share_data(configs: list[dict], data_root: Path, state: dict, verbose: int) -> dict:
    """Features once, before any trial, into the object store: {data key: ObjectRef}."""

    data_refs, fingerprints, needed = {}, {}, 0
    capacity = _object_store_capacity()
    for config in configs:
        key = data_key_of(config)
        if key not in data_refs:
            data = prepare_data(TrialConfig.from_flat(config), data_root, progress=verbose > 0)
            needed += data.nbytes
            if needed > capacity:
                raise SpaceError(
                    f"the features need {needed / 2**20:.1f} MB in Ray's object store ({len(data_refs) + 1} feature "
                    f"object(s) so far, data key {key} {data.nbytes / 2**20:.1f} MB), more than the "
                    f"{capacity / 2**20:.1f} MB of this driver's node. Use fewer perturbations, fewer training or "
                    "evaluation recordings (--set data.max_train=N, data.max_eval=N), or a bigger object store: "
                    "`ray start --head --object-store-memory BYTES` and --address auto"
                )
            fingerprints.update(data.info["fingerprints"])
            for entry in ("split_check", "spectrogram_standardization", "missing_extra_roots"):
                if entry in data.info:
                    state.setdefault("data_info", {})[entry] = data.info[entry]
            if "duplicates" in data.info:  # what each data setting removed or dropped, by data key
                state.setdefault("data_info", {}).setdefault("duplicates", {})[key] = data.info["duplicates"]
            if data.info.get("cache_repaired"):  # damaged feature-cache entries found, removed and recomputed
                state.setdefault("data_info", {}).setdefault("cache_repaired", {})[key] = data.info["cache_repaired"]
            data_refs[key] = ray.put(data)
            del data
    state["data_fingerprints"] = fingerprints
    return data_refs


def _object_store_capacity() -> float:
    """Bytes of object store on the driver's node, where ray.put puts the features."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return float(node.get("Resources", {}).get("object_store_memory", float("inf")))
    return float("inf")


def _run_search(run: _Run, study: Study, state: dict, base: dict) -> None:
    """The search phase (:mod:`study.search`) into OUT/search/; records the best trial in state["search"].

    Its Optuna study lives in OUT/optuna.db, named after the space: a search resumed continues it,
    whether Tune's experiment restores (its searcher holds the study) or a new one starts."""

    experiment_dir = run.storage.rstrip("/")
    search_state = state.setdefault("search", {"complete": False})
    name = search_state.get("experiment")
    if run.resume and name and search_state.get("tune_config") != FLAT_CONFIG:
        raise SpaceError(
            f"{study.path}: this search was started by an older version, whose Tune experiment keeps the settings "
            "nested; finish it with that version, or start the study again in another --out"
        )
    optuna = {"storage": f"sqlite:///{study.out.resolve() / OPTUNA_DB}", "study_name": run.space.name}
    search_state.update(optuna=optuna, tune_config=FLAT_CONFIG)
    wrapped = run.trainable(ids="tune")
    if run.resume and name and tune.Tuner.can_restore(f"{experiment_dir}/{name}"):
        tuner = tune.Tuner.restore(
            f"{experiment_dir}/{name}", trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
    else:
        name = search_state["experiment"] = "search-1"
        study.save(state)
        tuner = _search_tuner(run, wrapped, base, name, optuna)
    results = tuner.fit()
    search_dir = study.out / "search"
    _, stopped_early = _collect(results, search_dir / TRIALS_DIR, run, ids="tune", finish_stopped=not interrupted())
    if interrupted():
        raise KeyboardInterrupt
    errors = [r for r in results if r.error is not None]
    trials, _ = write_results(study, state, search_dir / TRIALS_DIR)
    if errors or trials.empty:
        raise RuntimeError(
            f"the search failed: {len(errors)} of its trials errored "
            + "; ".join(str(e.error).splitlines()[0] for e in errors[:3])
        )
    search = run.space.search
    metric, mode = search.get("metric", "kept_val_roc_auc"), search.get("mode", "max")
    best = best_search_trial(trials, metric, mode)
    params = {key: _plain(best[f"config/{key}"]) for key in search["params"]}
    search_state.update(
        complete=True,
        trials=len(trials),
        stopped_early=int(trials["stopped_early"].sum()),
        metric=metric,
        mode=mode,
        best={"trial_id": best["trial_id"], "value": float(best[metric]), "params": params},
    )
    study.save(state)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _run_grid(run: _Run, study: Study, state: dict, configs: list[dict]):
    """Train every config the study lacks (or continue the interrupted experiment); returns (collected, errors).

    An interrupted experiment of an older version (its Tune configs nested, not flat) is not restored:
    its unfinished trials start again in a new experiment."""

    experiment_dir = run.storage.rstrip("/")
    latest = state["experiments"][-1] if state["experiments"] else None
    restore = (
        run.resume
        and latest is not None
        and not latest.get("complete")
        and latest.get("tune_config") == FLAT_CONFIG
        and tune.Tuner.can_restore(f"{experiment_dir}/{latest['name']}")
    )
    finished = study.finished_ids()
    todo = [(trial_id_of(c), c) for c in configs if trial_id_of(c) not in finished]
    if not todo and not restore:
        return [], []
    wrapped = run.trainable(ids="config")
    if restore:
        tuner = tune.Tuner.restore(
            f"{experiment_dir}/{latest['name']}", trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
        experiment = latest
    else:
        experiment = {
            "name": f"run-{len(state['experiments']) + 1}",
            "trial_ids": [i for i, _ in todo],
            "started": _now(),
            "complete": False,
            "tune_config": FLAT_CONFIG,
        }
        state["experiments"].append(experiment)
        study.save(state)
        tuner = _grid_tuner(run, wrapped, [c for _, c in todo], experiment["name"])
    results = tuner.fit()
    collected, _ = _collect(results, study.out / TRIALS_DIR, run, ids="config", finish_stopped=not interrupted())
    if interrupted():  # the finished trials are in OUT/trials; the rest resume from Tune's last snapshot
        raise KeyboardInterrupt
    errors = [r for r in results if r.error is not None]
    experiment.update(complete=not errors, finished=_now())
    for trial_id in collected:
        run_file = study.out / TRIALS_DIR / trial_id / "run.json"
        record = json.loads(run_file.read_text())
        record["experiment"] = experiment["name"]
        write_json(run_file, record)
    return collected, errors


def trial_resources(space: Space, override: dict | None = None) -> dict:
    """Per-trial Ray resources: the space's at its scale, with the command line's override."""
    override = {k: v for k, v in (override or {}).items() if v is not None}
    return check_resources({**space.resources, **override}, "--cpus-per-trial/--gpus-per-trial")


class TrialConfigs(Searcher):
    """Ray Tune searcher suggesting the given trial configs in order, then FINISHED: a grid whose points
    are whole configs, so that finished points are skipped and each recipe keeps its own settings
    (Tune's grid_search varies each key on its own).

    Each suggestion holds the settings that differ between the configs and the space's grid axes:
    what Tune records as the trial's evaluated parameters (TensorBoard's HParams columns); the
    settings all configs share are in the experiment's ``param_space`` (:func:`split_configs`)."""

    def __init__(self, suggestions: list[dict]):
        super().__init__()
        self.pending = list(suggestions)

    def suggest(self, trial_id: str) -> dict | str:
        return self.pending.pop(0) if self.pending else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn: the points are fixed."""

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.pending))

    def restore(self, checkpoint_path: str) -> None:
        self.pending = pickle.loads(Path(checkpoint_path).read_bytes())


def split_configs(configs: list[dict], axes: list[str]) -> tuple[dict, list[dict]]:
    """(the settings every config shares, each config's others and its grid ``axes``): together, each config."""
    varying = {k for c in configs for k in c if k in axes or any(k not in o or o[k] != c[k] for o in configs)}
    shared = {k: v for k, v in configs[0].items() if k not in varying}
    return shared, [{k: v for k, v in c.items() if k in varying} for c in configs]


class TrialNames:
    """A trial as Tune's table, its folder, the console and the trackers name it: its grid values (a search's
    sample: the settings sampled) and its study id.

    ``axes`` are the grid's settings; ``ids`` as for :func:`trainable`."""

    def __init__(self, axes: list[str], ids: str):
        self.axes, self.ids = axes, ids

    def trial_id(self, trial) -> str:
        return trial_id_of(trial.config) if self.ids == "config" else trial.trial_id

    def label(self, trial) -> str:
        shown = self.axes if self.ids == "config" else list(trial.evaluated_params)
        return trial_label(trial.config, [a for a in shown if a in trial.config])

    def name(self, trial) -> str:
        return f"{self.trial_id(trial)} {self.label(trial)}"

    def dirname(self, trial) -> str:
        return f"trial_{self.trial_id(trial)}"

    def console(self, trial) -> str:
        return f"{self.label(trial)} ({self.trial_id(trial)})"


def _grid_tuner(run: _Run, wrapped, configs: list[dict], name: str):
    axes = sorted(set(run.space.grid()) | ({"recipe"} if run.space.search is not None else set()))
    shared, suggestions = split_configs(configs, axes)
    first = configs[0]
    headline = f"{first['data.eval_sets'][0]}/{'score' if first['train.monitor'] == 'score' else 'roc_auc'}"
    names = TrialNames(axes, ids="config")
    console = StudyConsole(len(configs), headline, first["train.monitor"], describe=names.console)
    return tune.Tuner(
        wrapped,
        param_space=shared,
        run_config=run.run_config(name, console),
        tune_config=tune.TuneConfig(
            # Tune lets a searcher keep one trial pending at a time unless a ConcurrencyLimiter says more:
            # a grid's trials all start as soon as resources allow, as Tune's own grid_search would
            search_alg=ConcurrencyLimiter(TrialConfigs(suggestions), max_concurrent=run.max_concurrent or len(configs)),
            num_samples=len(configs),
            trial_name_creator=names.name,
            trial_dirname_creator=names.dirname,
        ),
    )


def _search_tuner(run: _Run, wrapped, base: dict, name: str, optuna: dict):
    search = run.space.search
    samples = sample_count(search)
    names = TrialNames([], ids="tune")
    console = StudyConsole(samples, f"val/{base['train.monitor']}", base["train.monitor"], describe=names.console)
    return tune.Tuner(
        wrapped,
        param_space=dict(base),
        run_config=run.run_config(name, console),
        tune_config=tune.TuneConfig(
            search_alg=optuna_searcher(search, base["seed"], optuna["storage"], optuna["study_name"]),
            scheduler=scheduler_of(search, base["train.max_epochs"]),
            num_samples=samples,
            max_concurrent_trials=run.max_concurrent,
            trial_name_creator=names.name,
            trial_dirname_creator=names.dirname,
        ),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _print_summary(space, trials: pd.DataFrame, summary: dict, errors) -> None:
    print(
        f"{space.name}: {summary['trials']} trials in the study, {summary['trained']} trained now, "
        f"{summary['failed']} failed, {summary['retried']} retried after a failure "
        f"({summary['seconds']:.0f} s)"
    )
    for error in errors:
        print(f"  failed: {_last_line(error.error)}")
    if "search" in summary:
        search = summary["search"]
        print(
            f"  search: {search['trials']} trials ({search['stopped_early']} stopped early by the scheduler); best by "
            f"validation: {search['best']['params']} ({search['best']['value']:.4f}, trial {search['best']['trial_id']})"
        )
    # the best trial by validation only: picking it on a test set would make that test set a validation set
    monitor = trials.get("config/train.monitor", pd.Series(["roc_auc"])).iloc[0] if len(trials) else "roc_auc"
    if len(trials) and f"val/{monitor}" in trials and trials[f"val/{monitor}"].notna().any():
        best = trials.loc[trials[f"val/{monitor}"].idxmax()]
        axis = space.compare.get("axis")
        print(
            f"  best trial by validation {monitor}: {best['trial_id']}"
            + (f" ({axis}={best.get('config/' + axis)})" if axis else "")
            + f", {best[f'val/{monitor}']:.4f}; the configurations' test results are in the report"
        )


def _last_line(error: BaseException) -> str:
    """A trial's error as its last line (the exception and its message): Ray's carries the worker's traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _report(out: Path) -> dict | None:
    """The analysis report of the study in ``out``; its summary (report_study's), None without the analysis package."""
    try:
        from analysis.report import report_study
    except ImportError:
        return None  # the analysis package is optional for running a study
    summary = report_study(out)
    # the report's lead as it opens report.md, less its heading, links and table rules: a log stays short
    print(
        "\n".join(
            line
            for line in "\n".join(summary["lead"]).splitlines()
            if line and not line.startswith(("## ", "- ", "| --- "))
        )
    )
    notes = f", {len(summary['notes'])} note(s) in it" if summary["notes"] else ""
    print(f"report: {summary['report']} and report.html{notes}; trials.parquet, predictions.parquet beside it")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", required=True, help="search space name (search_spaces/NAME.yaml) or path")
    parser.add_argument("--scale", default=None, help="cpu (tiny models, default) or paper")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder with physionet2016/, pascal/, icbhi2017/ (default: built-in synthetic data)",
    )
    parser.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
    parser.add_argument("--out", default=None, help="results folder (default: results/SPACE)")
    parser.add_argument(
        "--storage",
        default=None,
        help="Tune checkpoint storage, e.g. s3://bucket/studies (default: OUT/tune; "
        "a multi-node cluster needs storage every node reaches)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted study in OUT")
    group.add_argument("--extend", action="store_true", help="run only the grid points the study in OUT lacks")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials running at once")
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        help="CPUs Ray reserves per trial (default: the space's resources at the scale)",
    )
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial, a fraction to share one GPU (default: the space's; paper scale 0.5, cpu scale 0)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument(
        "--init-checkpoint",
        default=None,
        metavar="PATH",
        help="AudioSet-pretrained AST state dict on local disk (YuanGongND/ast "
        "audioset_10_10_0.4593.pth) to start every AST trial from; sets model.init_checkpoint",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (repeatable), here and on every Ray worker, to register its models, datasets and "
        "perturbations (study.registry); installed packages' audiofuse.plugins entry points load by themselves",
    )
    parser.add_argument(
        "--track",
        action="append",
        default=[],
        choices=TRACKERS,
        help="log every trial and the report to this tracker too (repeatable), through Ray Tune's logger callbacks",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved plan (trials, resources, concurrency, feature sizes against the "
        "object store, grid axes that change no training input) and train nothing",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        default=1,
        help="0 quiet; 1 a line per trial start and end and a status line (default); 2 Tune's tables instead; "
        "3 trial logs too",
    )
    args = parser.parse_args(argv)
    try:
        load_plugins(args.plugin)  # before the space: its settings may name what the plugins register
        space = load_space(args.space, args.scale)
        out = Path(args.out or Path("results") / space.name)
        overrides = parse_settings(args.set)
        if args.init_checkpoint is not None:
            checkpoint = Path(args.init_checkpoint).expanduser().resolve()
            if not checkpoint.is_file():
                raise ValueError(f"--init-checkpoint {args.init_checkpoint!r}: no such file")
            overrides["model.init_checkpoint"] = str(checkpoint)
        resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
        if args.dry_run:
            from .plan import build_plan, format_plan

            plan = build_plan(
                space,
                overrides=overrides,
                data_root=Path(args.data_root or default_data_root()),
                resources=trial_resources(space, resources),
                address=args.address,
                max_concurrent=args.max_concurrent,
            )
            print(format_plan(plan))
            return 0
        run_study(
            space,
            out=out,
            data_root=args.data_root,
            address=args.address,
            storage=args.storage,
            resume=args.resume,
            extend=args.extend,
            max_concurrent=args.max_concurrent,
            overrides=overrides,
            resources=resources,
            report=not args.no_report,
            verbose=args.verbose,
            plugins=args.plugin,
            track=args.track,
        )
    except KeyboardInterrupt:
        given = list(sys.argv[1:] if argv is None else argv)
        again = given + [] if "--resume" in given else given + ["--resume"]
        print(
            f"\ninterrupted: the trials that finished are kept in {out if 'out' in locals() else 'the study folder'} "
            f"(trials/, and Tune's state in tune/); continue with: python -m study.run {shlex.join(again)}",
            file=sys.stderr,
        )
        return 130
    except (SpaceError, DataError, ValueError, StudyLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return print_resource_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
