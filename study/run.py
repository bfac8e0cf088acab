"""Run a whole study with Ray Tune.

    python -m study.run --space NAME [--scale cpu|paper] [--data-root DIR] [--address auto|HOST:PORT]
                        [--out DIR] [--resume | --extend] [--max-concurrent N] [--set key=value ...]
                        [--init-checkpoint AST_STATE_DICT.pth]

One trial = one grid point of the space (or one Optuna sample for ``hpo``),
trained by :func:`study.train.train_and_evaluate`. Features are computed once
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
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from .config import Space, SpaceError, load_space
from .data import DataError
from .data.__main__ import parse_settings
from .io import write_json, write_parquet
from .synthetic import default_data_root
from .train import data_settings

TUNE_DIR = "tune"
TRIALS_DIR = "trials"
FINAL_DIR = "final"  # inside a trial's last checkpoint: its result files
STATE_FILE = "state.pt"  # inside a per-epoch checkpoint: what resuming needs


def _json_digest(obj, digest_size: int) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=digest_size).hexdigest()


def trial_id_of(config: dict) -> str:
    """Stable id of a trial config: the same grid point always gets the same id."""
    return _json_digest(config, 5)


def data_key_of(config: dict) -> str:
    """Key of the data and feature settings: trials sharing it share one TrialData in the object store."""
    return _json_digest(data_settings(config), 6)


# ---------------------------------------------------------------- the trainable (runs on workers)

def trainable(tune_config: dict, data_refs: dict) -> None:
    """Ray Tune function trainable: one trial, resumable from its last checkpoint."""
    import ray
    import torch
    from ray import tune

    from .train import train_and_evaluate
    from .trial import save_trial

    trial = tune_config["trial"]  # nested so that a grid is one grid_search axis over whole configs
    config = {**trial["base"], **trial.get("params", {})}
    trial_id = trial.get("trial_id") or tune.get_context().get_trial_id()
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
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))

    result = train_and_evaluate(config, data, trial_id=trial_id, report=report, resume_state=resume_state)
    node = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": platform.node()}
    with tempfile.TemporaryDirectory() as folder:
        final = Path(folder) / FINAL_DIR
        save_trial(final, config, result, data.info, trial_id)
        write_json(final / "run.json", {"trial_id": trial_id, **node, "resumed_at": result.resumed_at,
                                        "config": config})
        # the full metrics travel in the checkpoint's files; Tune's table shows the headline ones
        headline = {k: v for k, v in flatten_metrics(result.metrics).items() if k.endswith("/roc_auc")
                    or k.endswith("/score")}
        last_epoch = result.history[-1] if result.history else {}
        tune.report({**last_epoch, "done": True, "study_trial_id": trial_id, "wall_time_s": result.wall_time_s,
                     **headline}, checkpoint=tune.Checkpoint.from_directory(folder))


def flatten_metrics(metrics: dict) -> dict:
    """{"pascal": {"roc_auc": ...}} → {"pascal/roc_auc": ...}, scalars only."""
    return {f"{name}/{key}": value for name, values in metrics.items() for key, value in values.items()
            if isinstance(value, (int, float))}


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
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty, "package": metadata.version("audiofuse-study")}
    except (OSError, subprocess.CalledProcessError, metadata.PackageNotFoundError):
        return {"commit": None, "dirty": None}


def _search_space(search: dict):
    """Optuna-searchable Tune distributions from the space's ``search.params``."""
    from ray import tune

    kinds = {"loguniform": lambda p: tune.loguniform(p["low"], p["high"]),
             "uniform": lambda p: tune.uniform(p["low"], p["high"]),
             "choice": lambda p: tune.choice(p["values"]),
             "randint": lambda p: tune.randint(p["low"], p["high"])}
    params = {}
    for key, spec in search.get("params", {}).items():
        if not isinstance(spec, dict) or spec.get("type") not in kinds:
            raise SpaceError(f"search.params.{key}: 'type' must be one of {sorted(kinds)}, got {spec!r}")
        try:
            params[key] = kinds[spec["type"]](spec)
        except KeyError as exc:
            raise SpaceError(f"search.params.{key}: missing {exc}") from exc
    return params


def _collect(results, study: Study) -> list[str]:
    """Copy each finished trial's final files from its last checkpoint into OUT/trials/ID."""
    collected = []
    for result in results:
        checkpoint = getattr(result, "checkpoint", None)
        if checkpoint is None or result.error is not None:
            continue
        with checkpoint.as_directory() as folder:
            final = Path(folder) / FINAL_DIR
            if not (final / "metrics.json").is_file():
                continue
            trial_id = json.loads((final / "run.json").read_text())["trial_id"]
            target = study.out / TRIALS_DIR / trial_id
            staging = study.out / TRIALS_DIR / f".{trial_id}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(final, staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            collected.append(trial_id)
    return collected


def write_results(study: Study, state: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.parquet (one row per trial) and predictions.parquet from OUT/trials/*."""
    rows, predictions = [], []
    for folder in sorted((study.out / TRIALS_DIR).glob("*/metrics.json")):
        folder = folder.parent
        metrics = json.loads((folder / "metrics.json").read_text())
        run = json.loads((folder / "run.json").read_text())
        config = run["config"]
        row = {"trial_id": run["trial_id"]}
        row.update({f"config/{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in config.items()})
        row.update(flatten_metrics(metrics["metrics"]))
        row.update({"epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
                    "threshold": metrics["threshold"], "wall_time_s": metrics["wall_time_s"],
                    "node_id": run["node_id"], "node_ip": run["node_ip"], "hostname": run["hostname"],
                    "retries": len(run["resumed_at"]), "experiment": run.get("experiment")})
        rows.append(row)
        predictions.append(pd.read_parquet(folder / "predictions.parquet"))
    trials = pd.DataFrame(rows)
    preds = pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame()
    write_parquet(study.out / "trials.parquet", trials)
    write_parquet(study.out / "predictions.parquet", preds)
    return trials, preds


def run_study(space: Space, *, out: Path, data_root: Path | None = None, address: str | None = None,
              storage: str | None = None, resume: bool = False, extend: bool = False, max_concurrent: int | None = None,
              overrides: dict | None = None, report: bool = True, verbose: int = 1) -> dict:
    """Run (or resume, or extend) a study; returns its summary. See the module docstring."""
    import ray
    from ray import tune

    from .train import prepare_data

    overrides = overrides or {}
    study = Study(out)
    previous = study.load()
    resolved = {**space.resolved(), "overrides": overrides}
    # an override of a grid axis (e.g. --set seed=0) replaces that axis for the whole study
    resolved["grid"] = {k: ([overrides[k]] if k in overrides else v) for k, v in resolved["grid"].items()}
    if previous is not None and not (resume or extend):
        raise SpaceError(f"{out} already holds study '{previous['space']['name']}': pass --resume to continue it, "
                         f"--extend to add the grid points it lacks, or another --out")
    if previous is not None:
        differences = space_differences(previous["space"], resolved)
        if differences and not extend:
            raise SpaceError(f"the space changed since {study.path} was written; refusing to resume:\n  "
                             + "\n  ".join(differences) + "\npass --extend to run only the trials the study lacks")
        if extend and previous["space"].get("search") is not None:
            raise SpaceError("--extend applies to grid spaces; an hpo search is resumed with --resume")
    configs = space.trial_configs(overrides)
    ids = [trial_id_of(c) for c in configs]
    data_root = Path(data_root) if data_root else default_data_root()
    state = previous or {"space": resolved, "experiments": [], "started": _now()}
    state.update(space=resolved if extend or previous is None else state["space"], data_root=str(data_root),
                 code=code_version(), packages=package_versions())
    finished = study.finished_ids()
    # Tune's checkpoints: OUT/tune on one machine; on a multi-node cluster a storage every node
    # reaches (s3://bucket/prefix, or a shared file system), as Ray requires.
    storage = storage or state.get("storage") or str(out.resolve() / TUNE_DIR)
    state["storage"] = storage
    experiment_dir = storage.rstrip("/")
    latest = state["experiments"][-1] if state["experiments"] else None
    restore = (resume and latest is not None and not latest.get("complete")
               and tune.Tuner.can_restore(f"{experiment_dir}/{latest['name']}"))
    todo = [(i, c) for i, c in zip(ids, configs) if i not in finished]
    nothing_left = (not todo) if space.search is None else bool(latest and latest.get("complete"))
    if nothing_left and not restore:
        trials, _ = write_results(study, state)
        study.save(state)
        print(f"{space.name}: all {len(ids)} trials already finished in {out}; nothing to train")
        return {"trials": len(trials), "trained": 0, "out": str(out)}

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose > 1,
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}} if address else None)
    try:
        # Features once, before any trial; trials fetch them from the object store.
        data_refs, fingerprints = {}, {}
        needed = configs if space.search is None else configs[:1]
        for config in needed:
            key = data_key_of(config)
            if key not in data_refs:
                data = prepare_data(config, data_root, progress=verbose > 0)
                fingerprints.update(data.info["fingerprints"])
                for entry in ("split_check", "spectrogram_standardization", "missing_extra_roots"):
                    if entry in data.info:
                        state.setdefault("data_info", {})[entry] = data.info[entry]
                data_refs[key] = ray.put(data)
                del data
        state["data_fingerprints"] = fingerprints
        study.save(state)
        wrapped = tune.with_resources(tune.with_parameters(trainable, data_refs=data_refs),
                                      {"cpu": space.resources["cpu"], "gpu": space.resources["gpu"]})
        if restore:
            tuner = tune.Tuner.restore(f"{experiment_dir}/{latest['name']}", trainable=wrapped,
                                       resume_unfinished=True, resume_errored=True)
            experiment = latest
        else:
            experiment = {"name": f"run-{len(state['experiments']) + 1}", "trial_ids": [i for i, _ in todo],
                          "started": _now(), "complete": False}
            state["experiments"].append(experiment)
            study.save(state)
            tuner = _new_tuner(space, wrapped, todo, configs, experiment_dir, experiment["name"], max_concurrent,
                               verbose)
        started = time.perf_counter()
        results = tuner.fit()
        collected = _collect(results, study)
        errors = [r for r in results if r.error is not None]
        experiment.update(complete=not errors, finished=_now())
        for trial_id in collected:
            run_file = study.out / TRIALS_DIR / trial_id / "run.json"
            run = json.loads(run_file.read_text())
            run["experiment"] = experiment["name"]
            write_json(run_file, run)
    finally:
        if started_here:
            ray.shutdown()
    trials, _ = write_results(study, state)
    state["finished"] = _now()
    study.save(state)
    summary = {"trials": len(trials), "trained": len(collected), "failed": len(errors),
               "retried": int(trials["retries"].gt(0).sum()) if len(trials) else 0,
               "seconds": round(time.perf_counter() - started, 1), "out": str(out)}
    _print_summary(space, trials, summary, errors)
    if report and len(trials) and not errors:
        _report(out)
    return summary


def _new_tuner(space, wrapped, todo, configs, experiment_dir, name, max_concurrent, verbose):
    from ray import tune

    run_config = tune.RunConfig(
        name=name, storage_path=experiment_dir, verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=3),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    if space.search is None:
        axes = sorted(space.grid())
        param_space = {"trial": tune.grid_search([
            {"trial_id": i, "base": c, "label": " ".join(f"{k.split('.')[-1]}={c[k]}" for k in axes)}
            for i, c in todo])}
        return tune.Tuner(wrapped, param_space=param_space, run_config=run_config,
                          tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                                      trial_name_creator=_trial_name,
                                                      trial_dirname_creator=_trial_dirname))
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = space.search
    base = configs[0]
    scheduler = ASHAScheduler(time_attr="epoch", max_t=base["train.max_epochs"],
                              grace_period=search.get("grace_period", 3),
                              reduction_factor=search.get("reduction_factor", 3))
    searcher = OptunaSearch(seed=base["seed"])
    return tune.Tuner(wrapped, param_space={"trial": {"base": base, "params": _search_space(search)}},
                      run_config=run_config,
                      tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                  metric=search.get("metric", "val_roc_auc"),
                                                  mode=search.get("mode", "max"),
                                                  num_samples=search.get("num_samples", 8),
                                                  max_concurrent_trials=max_concurrent))


def _trial_name(trial) -> str:
    """Tune's table shows a trial by its study id and grid values, not its whole config."""
    return f"{trial.config['trial']['trial_id']} {trial.config['trial']['label']}"


def _trial_dirname(trial) -> str:
    return f"trial_{trial.config['trial']['trial_id']}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _print_summary(space, trials: pd.DataFrame, summary: dict, errors) -> None:
    print(f"\n{space.name}: {summary['trials']} trials in the study, {summary['trained']} trained now, "
          f"{summary['failed']} failed, {summary['retried']} retried after a failure "
          f"({summary['seconds']:.0f} s)")
    for error in errors:
        print(f"  failed: {error.error}")
    compare = space.compare
    # clean evaluation sets only: perturbed ones ("SET~PERTURBATION@SEVERITY/...") are for the robustness report
    metric_columns = [c for c in trials.columns if c.endswith("/roc_auc") and not c.startswith("val/") and "~" not in c]
    if len(trials) and metric_columns:
        key = metric_columns[0]
        best = trials.loc[trials[key].idxmax()]
        axis = compare.get("axis")
        print(f"  best {key}: {best[key]:.4f} ({best['trial_id']}" + (f", {axis}={best.get('config/' + axis)}" if axis else "")
              + ")")
        if axis and f"config/{axis}" in trials:
            table = trials.groupby(f"config/{axis}")[metric_columns].agg(["mean", "std", "count"])
            print(table.round(4).to_string())
    print(f"  results: {summary['out']}/trials.parquet, predictions.parquet, study.json")


def _report(out: Path) -> None:
    try:
        from analysis.report import report_study
    except ImportError:
        return  # the analysis package is optional for running a study
    summary = report_study(out)
    print(f"report: {summary['report']}")
    for note in summary["notes"]:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="search space name (search_spaces/NAME.yaml) or path")
    parser.add_argument("--scale", default=None, help="cpu (tiny models, default) or paper")
    parser.add_argument("--data-root", default=None,
                        help="folder with physionet2016/, pascal/, icbhi2017/ (default: built-in synthetic data)")
    parser.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
    parser.add_argument("--out", default=None, help="results folder (default: results/SPACE)")
    parser.add_argument("--storage", default=None,
                        help="Tune checkpoint storage, e.g. s3://bucket/studies (default: OUT/tune; "
                             "a multi-node cluster needs storage every node reaches)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted study in OUT")
    group.add_argument("--extend", action="store_true", help="run only the grid points the study in OUT lacks")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials running at once")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--init-checkpoint", default=None, metavar="PATH",
                        help="AudioSet-pretrained AST state dict on local disk (YuanGongND/ast "
                             "audioset_10_10_0.4593.pth) to start every AST trial from; sets model.init_checkpoint")
    parser.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    parser.add_argument("--verbose", type=int, default=1, help="0 quiet, 1 Tune's trial table, 2 trial logs too")
    args = parser.parse_args(argv)
    try:
        space = load_space(args.space, args.scale)
        out = Path(args.out or Path("results") / space.name)
        overrides = parse_settings(args.set)
        if args.init_checkpoint is not None:
            checkpoint = Path(args.init_checkpoint).expanduser().resolve()
            if not checkpoint.is_file():
                raise ValueError(f"--init-checkpoint {args.init_checkpoint!r}: no such file")
            overrides["model.init_checkpoint"] = str(checkpoint)
        run_study(space, out=out, data_root=args.data_root, address=args.address, storage=args.storage,
                  resume=args.resume,
                  extend=args.extend, max_concurrent=args.max_concurrent, overrides=overrides,
                  report=not args.no_report, verbose=args.verbose)
    except (SpaceError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
