"""A space's hyperparameter search: the searcher, the scheduler and the parameters, as its ``search`` block says.

    search:
      searcher: tpe            # tpe (default) | random | grid | cmaes | qmc: an Optuna sampler
      scheduler: asha          # asha (default) | hyperband | median | fifo: a Ray Tune scheduler
      metric: kept_val_roc_auc # what both compare: a metric every epoch of a trial reports
      mode: max
      num_samples: 8           # trials to sample (grid: every combination, leave it out)
      grace_period: 3          # asha, median: epochs before a trial may be stopped
      reduction_factor: 3      # asha, hyperband
      params:
        train.lr: {type: loguniform, low: 1.0e-5, high: 3.0e-3}
        model.fusion: {type: choice, values: [concat, cross_attention]}
        model.fusion_heads: {type: choice, values: [2, 4], when: {model.fusion: cross_attention}}

Every searcher is an Optuna sampler behind Ray Tune's ``OptunaSearch``, asked define-by-run
(:class:`OptunaSpace`), so a parameter may depend on another's value (``when``: sampled only
when every parameter it names, listed before it, took one of the given values; otherwise the
trial keeps the setting's value). The Optuna study is stored in the study folder
(``OUT/optuna.db``, SQLite, the study named after the space), where ``optuna.load_study`` and
optuna-dashboard open it and ``--resume`` continues it.

:func:`check_search` refuses, in one line each and before any trial, what cannot run: an unknown
searcher or scheduler, a grid over a continuous parameter, CMA-ES or QMC over categories or
conditions, a metric the trials never report, a scheduler option the scheduler lacks. It needs the
trial configs, so it runs where a study is planned or run (study.plan, study.run); loading the space
checks the block's keys and settings only (study.config).
"""

from __future__ import annotations

import math
from typing import Any

from .config import SpaceError, TrialConfig, validate_trial_config
from .train import reported_metrics

__all__ = [
    "PARAM_TYPES",
    "SCHEDULERS",
    "SEARCHERS",
    "OptunaSpace",
    "check_search",
    "optuna_searcher",
    "sample_count",
    "scheduler_of",
]

SEARCHERS = ("tpe", "random", "grid", "cmaes", "qmc")
SCHEDULERS = ("asha", "hyperband", "median", "fifo")
PARAM_TYPES = ("loguniform", "uniform", "randint", "choice")
# the scheduler options each scheduler takes (Ray Tune's own argument names)
SCHEDULER_OPTIONS = {
    "asha": ("grace_period", "reduction_factor"),
    "hyperband": ("reduction_factor",),
    "median": ("grace_period", "min_samples_required"),
    "fifo": (),
}
NUMERIC = ("loguniform", "uniform", "randint")
DEFAULT_SAMPLES = 8
# the epoch counter every report carries: what the schedulers count time in
TIME_ATTR = "epoch"


def check_search(search: dict, where: str, base: TrialConfig) -> None:
    """Check a space's ``search`` block against ``base``, the config every sample starts from.

    Raises SpaceError, naming the key and the fix, for an unknown searcher, scheduler or parameter
    type, a parameter whose values make an invalid trial config, a condition on a parameter not
    listed before, a combination the searcher cannot sample, a metric the trials do not report,
    and a scheduler option the scheduler does not take.
    """
    searcher, scheduler = search.get("searcher", "tpe"), search.get("scheduler", "asha")
    if searcher not in SEARCHERS:
        raise SpaceError(f"{where}: search.searcher must be one of {list(SEARCHERS)}, got {searcher!r}")
    if scheduler not in SCHEDULERS:
        raise SpaceError(f"{where}: search.scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    params = search.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{where}: search.params must map at least one setting to its distribution")
    for key, spec in params.items():
        _check_param(key, spec, list(params)[: list(params).index(key)], params, f"{where}: search.params.{key}", base)
    _check_combination(searcher, params, search, where)
    metric = search.get("metric", "kept_val_roc_auc")
    reported = reported_metrics(base)
    if metric not in reported:
        raise SpaceError(
            f"{where}: search.metric {metric!r} is not reported by the trials, which report {reported} "
            f"(train.monitor is {base.train.monitor!r})"
        )
    for option in set(search) & {o for options in SCHEDULER_OPTIONS.values() for o in options}:
        if option not in SCHEDULER_OPTIONS[scheduler]:
            takers = [name for name, options in SCHEDULER_OPTIONS.items() if option in options]
            raise SpaceError(
                f"{where}: search.{option} applies to the {' and '.join(takers)} scheduler(s), not {scheduler}"
            )
        value = search[option]
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if option == "reduction_factor" else 1):
            raise SpaceError(
                f"{where}: search.{option} must be an integer ≥ {2 if option == 'reduction_factor' else 1}"
            )
    grace = search.get("grace_period", 3 if scheduler == "asha" else 0)
    if scheduler == "asha" and grace >= base.train.max_epochs:
        raise SpaceError(
            f"{where}: search.grace_period ({grace}) must be below train.max_epochs ({base.train.max_epochs}): "
            "ASHA stops trials between the two"
        )


def _check_param(key: str, spec: Any, earlier: list[str], params: dict, where: str, base: TrialConfig) -> None:
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise SpaceError(f"{where}: 'type' must be one of {list(PARAM_TYPES)}, got {spec!r}")
    kind = spec["type"]
    allowed = {"type", "when"} | ({"values"} if kind == "choice" else {"low", "high"})
    if set(spec) - allowed or not (allowed - {"when"}) <= set(spec):
        raise SpaceError(
            f"{where}: a {kind} parameter needs type and {sorted(allowed - {'type', 'when'})}, and may have when"
        )
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: 'values' must be a non-empty list")
        for value in values:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise SpaceError(f"{where}: Optuna chooses among numbers, strings, booleans or null, got {value!r}")
    else:
        low, high = spec["low"], spec["high"]
        integer = kind == "randint"
        if not all(isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise SpaceError(
                f"{where}: low and high must be {'integers' if integer else 'numbers'}, got {low!r}, {high!r}"
            )
        if not low < high or (kind == "loguniform" and low <= 0):
            raise SpaceError(
                f"{where}: needs low < high{' and low > 0' if kind == 'loguniform' else ''}, got {low}..{high}"
            )
        values = [low, high - 1 if integer else high]
    for value in values:  # each value, with the config every sample starts from, must make a config that runs
        validate_trial_config({**base.flat, key: value}, where)
    conditions = spec.get("when") or {}
    if not isinstance(conditions, dict):
        raise SpaceError(f"{where}: when must map parameters listed before it to a value or a list of values")
    for other, accepted in conditions.items():
        if other not in earlier:
            raise SpaceError(f"{where}: when names {other!r}, which is not a searched parameter listed before {key}")
        accepted = accepted if isinstance(accepted, list) else [accepted]
        choices = params[other].get("values")
        if choices is not None and not set(map(repr, accepted)) <= set(map(repr, choices)):
            raise SpaceError(f"{where}: when {other} is {accepted}, but {other} takes only {choices}")


def _check_combination(searcher: str, params: dict, search: dict, where: str) -> None:
    conditional = [k for k, spec in params.items() if spec.get("when")]
    if searcher == "grid":
        continuous = [k for k, spec in params.items() if spec["type"] in ("uniform", "loguniform")]
        if continuous:
            raise SpaceError(
                f"{where}: the grid searcher needs a finite set of values, but {continuous[0]} is "
                f"{params[continuous[0]]['type']}: give it as type choice (values: [...]) or randint, or use "
                "searcher tpe or random"
            )
        if conditional:
            raise SpaceError(f"{where}: the grid searcher takes no conditional parameter ({conditional[0]} has 'when')")
        if "num_samples" in search and search["num_samples"] != sample_count(search):
            raise SpaceError(
                f"{where}: the grid searcher runs every combination ({sample_count(search)}); "
                f"search.num_samples {search['num_samples']} would differ: leave it out"
            )
    if searcher in ("cmaes", "qmc"):
        name = {"cmaes": "CMA-ES", "qmc": "QMC"}[searcher]
        categorical = [k for k, spec in params.items() if spec["type"] == "choice"]
        if categorical or conditional:
            which = categorical[0] if categorical else conditional[0]
            raise SpaceError(
                f"{where}: {name} samples numeric parameters only, in one fixed space; {which} is "
                f"{'a choice' if categorical else 'conditional'} (Optuna would sample it at random): use searcher tpe"
            )
        if searcher == "cmaes" and len(params) < 2:
            raise SpaceError(f"{where}: CMA-ES needs at least two parameters (Optuna samples one at random): use tpe")
    if "num_samples" in search:
        samples = search["num_samples"]
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise SpaceError(f"{where}: search.num_samples must be a positive integer, got {samples!r}")


def _grid_values(spec: dict) -> list:
    return list(spec["values"]) if spec["type"] == "choice" else list(range(spec["low"], spec["high"]))


def sample_count(search: dict) -> int:
    """How many trials the search runs: every combination for the grid searcher, else ``num_samples``."""
    if search.get("searcher", "tpe") == "grid":
        return math.prod(len(_grid_values(spec)) for spec in search["params"].values())
    return search.get("num_samples", DEFAULT_SAMPLES)


class OptunaSpace:
    """The search's parameters as an Optuna define-by-run function: ``space(trial)`` suggests each
    parameter whose ``when`` holds for the values suggested before it (Ray Tune's OptunaSearch
    records what was suggested as the trial's settings)."""

    def __init__(self, params: dict):
        self.params = params

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for key, spec in self.params.items():
            conditions = spec.get("when") or {}
            if all(key_ in chosen and chosen[key_] in _as_list(value) for key_, value in conditions.items()):
                chosen[key] = self._suggest(trial, key, spec)

    @staticmethod
    def _suggest(trial, key: str, spec: dict):
        kind = spec["type"]
        if kind == "choice":
            return trial.suggest_categorical(key, spec["values"])
        if kind == "randint":  # Ray Tune's randint: high excluded
            return trial.suggest_int(key, spec["low"], spec["high"] - 1)
        return trial.suggest_float(key, spec["low"], spec["high"], log=kind == "loguniform")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def optuna_searcher(search: dict, seed: int, storage_url: str, study_name: str):
    """Ray Tune's OptunaSearch with the space's sampler, storing the study at ``storage_url`` as ``study_name``
    (continued when it exists: the study of an earlier, interrupted run of the same search)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study's lines go to its database, not the console
    params = search["params"]
    searcher = search.get("searcher", "tpe")
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler({k: _grid_values(s) for k, s in params.items()}, seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed),
    }[searcher]()
    return OptunaSearch(
        OptunaSpace(params),
        metric=search.get("metric", "kept_val_roc_auc"),
        mode=search.get("mode", "max"),
        sampler=sampler,
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url),
    )


def scheduler_of(search: dict, max_epochs: int):
    """The space's Ray Tune scheduler, watching the search's metric, counting time in epochs (``max_epochs``:
    train.max_epochs)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    scheduler = search.get("scheduler", "asha")
    watch = {"metric": search.get("metric", "kept_val_roc_auc"), "mode": search.get("mode", "max")}
    # a trial's last epoch report and its final one (the evaluation) both count max_epochs: a limit one
    # above lets a trial that trains every epoch end by itself, its final metrics reported
    max_t = max_epochs + 1
    if scheduler == "asha":
        return ASHAScheduler(
            **watch,
            time_attr=TIME_ATTR,
            max_t=max_t,
            grace_period=search.get("grace_period", 3),
            reduction_factor=search.get("reduction_factor", 3),
        )
    if scheduler == "hyperband":
        return HyperBandScheduler(
            **watch, time_attr=TIME_ATTR, max_t=max_t, reduction_factor=search.get("reduction_factor", 3)
        )
    if scheduler == "median":
        return MedianStoppingRule(
            **watch,
            time_attr=TIME_ATTR,
            grace_period=search.get("grace_period", 3),
            min_samples_required=search.get("min_samples_required", 3),
        )
    return FIFOScheduler()
