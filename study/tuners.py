"""The Tune experiments of a study: a grid's (every configuration the study lacks, as whole configs)
and a search's (:mod:`study.search`), the trainable bound to its data and resources, and collecting
each finished trial's files from its last checkpoint into the study folder (:mod:`study.results`)."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from .config import Space, SpaceError, TrialConfig, data_key_of, trial_id_of, trial_label, validate_trial_config
from .connection import interrupted
from .console import StudyConsole
from .results import (
    FINAL_DIR,
    METRICS_FILE,
    OPTUNA_DB,
    RUN_FILE,
    SEARCH_DIR,
    STATE_FILE,
    STUDY_FILE,
    TRIALS_DIR,
    collect_trials,
    finished_trial_ids,
    install_trial,
    record_experiment,
    write_state,
)
from .search import optuna_searcher, sample_count, scheduler_of
from .state import now
from .tracking import tracker_callbacks
from .trainable import finish_stopped_trial, trainable
from .trial_data import prepare_data

__all__ = [
    "FLAT_CONFIG",
    "StudyRun",
    "share_data",
    "object_store_capacity",
    "collect",
    "run_search",
    "run_grid",
    "replicate_configs",
    "best_search_trial",
    "TrialConfigs",
    "split_configs",
    "TrialNames",
]

# how Tune holds a trial's settings: flat, by name. An experiment without this mark (an older version's)
# nests them under "trial" and is not restored
FLAT_CONFIG = "flat"


@dataclass(frozen=True)
class StudyRun:
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
        """The trainable with its data and resources; ``ids``: see :func:`study.trainable.trainable`."""
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


# ---------------------------------------------------------------- the features, once


def share_data(configs: list[TrialConfig], data_root: Path, state: dict, verbose: int) -> dict:
    """Features once, before any trial, into the object store: {data key: ObjectRef}."""

    data_refs, fingerprints, needed = {}, {}, 0
    capacity = object_store_capacity()
    for trial in configs:
        key = trial.data_key
        if key not in data_refs:
            data = prepare_data(trial, data_root, progress=verbose > 0)
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


def object_store_capacity() -> float:
    """Bytes of object store on the driver's node, where ray.put puts the features."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return float(node.get("Resources", {}).get("object_store_memory", float("inf")))
    return float("inf")


# ---------------------------------------------------------------- collecting the trials


def collect(results, trials_dir: Path, run: StudyRun, ids: str, finish_stopped: bool = True) -> tuple[list, list]:
    """Install each finished trial's files from its last checkpoint into ``trials_dir/ID``.

    A trial that a scheduler stopped (ASHA stops trials at its rungs, and at ``max_t``, before the
    trainable's final report) has no final files: its best weights are evaluated from its last
    epoch checkpoint, on the trial's resources, and it is marked ``stopped_early`` when it trained
    fewer epochs than ``train.max_epochs``. Without ``finish_stopped`` (an interrupted study, whose
    unfinished trials resume later) only the finished trials are installed. Returns (installed ids, ids stopped early).
    """
    collected, stopped_early, pending = [], [], []
    for result in results:
        checkpoint = getattr(result, "checkpoint", None)
        if checkpoint is None or result.error is not None:
            continue
        with checkpoint.as_directory() as folder:
            final = Path(folder) / FINAL_DIR
            if (final / METRICS_FILE).is_file():
                trial_id = json.loads((final / RUN_FILE).read_text())["trial_id"]
                install_trial(trials_dir, trial_id, final)
                collected.append(trial_id)
            elif finish_stopped and (Path(folder) / STATE_FILE).is_file():
                pending.append((result, (Path(folder) / STATE_FILE).read_bytes()))
    if pending:
        resources = run.resources
        finish = ray.remote(finish_stopped_trial).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
        futures = []
        for result, state in pending:
            config = dict(result.config)
            trial_id = trial_id_of(config) if ids == "config" else result.metrics["trial_id"]
            ref = run.data_refs[data_key_of(config)]
            futures.append((trial_id, finish.remote(config, ref, state, trial_id, run.plugins)))
        for trial_id, future in futures:
            files, early = ray.get(future)
            install_trial(trials_dir, trial_id, files)
            collected.append(trial_id)
            if early:
                stopped_early.append(trial_id)
    return collected, stopped_early


# ---------------------------------------------------------------- a search, then its best over seeds


def run_search(run: StudyRun, state: dict, base: TrialConfig) -> None:
    """The search phase (:mod:`study.search`) into OUT/search/; records the best trial in state["search"].

    Its Optuna study lives in OUT/optuna.db, named after the space: a search resumed continues it,
    whether Tune's experiment restores (its searcher holds the study) or a new one starts."""

    experiment_dir = run.storage.rstrip("/")
    search_state = state.setdefault("search", {"complete": False})
    name = search_state.get("experiment")
    if run.resume and name and search_state.get("tune_config") != FLAT_CONFIG:
        raise SpaceError(
            f"{run.out / STUDY_FILE}: this search was started by an older version, whose Tune experiment keeps the settings "
            "nested; finish it with that version, or start the study again in another --out"
        )
    optuna = {"storage": f"sqlite:///{run.out.resolve() / OPTUNA_DB}", "study_name": run.space.name}
    search_state.update(optuna=optuna, tune_config=FLAT_CONFIG)
    wrapped = run.trainable(ids="tune")
    if run.resume and name and tune.Tuner.can_restore(f"{experiment_dir}/{name}"):
        tuner = tune.Tuner.restore(
            f"{experiment_dir}/{name}", trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
    else:
        name = search_state["experiment"] = "search-1"
        write_state(run.out, state)
        tuner = _search_tuner(run, wrapped, base.flat, name, optuna)
    results = tuner.fit()
    trials_dir = run.out / SEARCH_DIR / TRIALS_DIR
    collect(results, trials_dir, run, ids="tune", finish_stopped=not interrupted())
    if interrupted():
        raise KeyboardInterrupt
    errors = [r for r in results if r.error is not None]
    trials, _ = collect_trials(trials_dir)
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
    write_state(run.out, state)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def replicate_configs(space: Space, configs: list[TrialConfig], best_params: dict) -> list[TrialConfig]:
    """After a search: the best configuration and the space's default one, labelled as the recipes
    ``best`` and ``default``, each over the scale's seeds, for the report's paired tests."""
    replicated = []
    for trial in configs:
        replicated += [{**trial.flat, "recipe": "default"}, {**trial.flat, **best_params, "recipe": "best"}]
    return [
        validate_trial_config(config, f"{space.path} (recipe {config['recipe']}, seed {config['seed']})")
        for config in replicated
    ]


def best_search_trial(trials: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The search trial whose kept weights score best on the search metric (validation only)."""
    if metric not in trials or trials[metric].isna().all():
        raise SpaceError(
            f"search.metric {metric!r} was reported by no search trial; "
            f"the trials report {sorted(c for c in trials if c.startswith('kept_val_'))}"
        )
    values = trials[metric] if mode == "max" else -trials[metric]
    return trials.loc[values.idxmax()]


# ---------------------------------------------------------------- a grid of whole configs


def run_grid(run: StudyRun, state: dict, configs: list[TrialConfig]):
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
    trials_dir = run.out / TRIALS_DIR
    finished = finished_trial_ids(trials_dir)
    todo = [(c.trial_id, c.flat) for c in configs if c.trial_id not in finished]  # Tune holds the flat view
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
            "started": now(),
            "complete": False,
            "tune_config": FLAT_CONFIG,
        }
        state["experiments"].append(experiment)
        write_state(run.out, state)
        tuner = _grid_tuner(run, wrapped, [c for _, c in todo], experiment["name"])
    results = tuner.fit()
    collected, _ = collect(results, trials_dir, run, ids="config", finish_stopped=not interrupted())
    if interrupted():  # the finished trials are in OUT/trials; the rest resume from Tune's last snapshot
        raise KeyboardInterrupt
    errors = [r for r in results if r.error is not None]
    experiment.update(complete=not errors, finished=now())
    for trial_id in collected:
        record_experiment(trials_dir / trial_id, experiment["name"])
    return collected, errors


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

    ``axes`` are the grid's settings; ``ids`` as for :func:`study.trainable.trainable`."""

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


def _grid_tuner(run: StudyRun, wrapped, configs: list[dict], name: str):
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


def _search_tuner(run: StudyRun, wrapped, base: dict, name: str, optuna: dict):
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
