"""Search spaces (``search_spaces/*.yaml``) and the flat trial configs they expand to.

A trial config is a flat dict of dotted keys (``model.fusion``, ``train.lr``,
``features.image_size``, ``data.validation``, ``seed``). It is resolved as
DEFAULTS ← SCALE_PRESETS[scale] ← the space's ``fixed`` ← the chosen scale's ``fixed`` ← one grid point
← command-line ``--set`` overrides; every key is checked against DEFAULTS and
every section against the module that consumes it, so a typo fails on load
with the key's name instead of being silently ignored.

Space file layout::

    name: fusion                      # must match the file name
    description: ...
    study: heart                      # heart (binary PhysioNet) or respiratory (ICBHI)
    default_scale: cpu
    fixed: {model.architecture: fusion, ...}
    grid: {model.fusion: [concat, sum], seed: [0, 1, 2]}
    recipes: {AST: {model.architecture: ast}, AST+SAM: {model.architecture: ast, train.sam: true}}
    #                                 # named bundles of settings, chosen by the grid axis `recipe`
    scales:
      cpu:   {fixed: {...}, grid: {seed: [0, 1]}}     # replaces grid axes of the same name
      paper: {fixed: {...}, grid: {seed: [0, ..., 9]}}
    search: {...}                     # a hyperparameter search (study.search)
    resources: {cpu: 1, gpu: 0}       # per trial
    compare: {axis: model.fusion, baseline: concat, metric: roc_auc}
    perturbations: [{name: codec, codec: mp3, severities: [1, 2]}]
    eval_variants: {features.padding: [cyclic]}   # evaluation-time variants of each trained model

A recipe's settings are laid over the grid point when the configs are resolved
(:meth:`Space.trial_configs`), below command-line overrides; the config keeps the
recipe's name as ``recipe``, its one varying setting, by which the analysis names
configurations.

Every consumer reads one resolved :class:`TrialConfig`, typed by section (``trial.data``,
``trial.features``, ``trial.model``, ``trial.train``). Its flat dict (:attr:`TrialConfig.flat`)
is what travels: Ray Tune holds and shows it, checkpoints and run.json store it, and trial ids
and data keys (:func:`trial_id_of`, :func:`data_key_of`) are hashes of it;
:meth:`TrialConfig.from_flat` types it again at the other end.

The search block is checked here for its keys and settings only; :func:`study.search.check_search`
checks it against the trial configs, where a study runs or plans it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.resources
import itertools
import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .features import FeatureProfile, get_profile

if TYPE_CHECKING:
    from .models import ModelConfig

__all__ = [
    "ADDED_SETTINGS",
    "CHOICES",
    "DEFAULTS",
    "SCALE_PRESETS",
    "SPACES_DIR",
    "DataConfig",
    "Space",
    "SpaceError",
    "TrainConfig",
    "TrialConfig",
    "added_settings_changed",
    "check_config",
    "check_resources",
    "data_key_of",
    "data_settings",
    "grid_with_overrides",
    "identity_settings",
    "load_space",
    "parse_settings",
    "trial_id_of",
    "trial_label",
    "validate_trial_config",
]

# the built-in spaces ship as package data of `search_spaces`, found wherever the package is installed
SPACES_DIR = Path(str(importlib.resources.files("search_spaces")))

CHOICES = {
    "data.validation": ("per_source_balanced", "stratified"),
    "data.validation_sources": ("with_test", "all"),
    "data.duplicates": ("remove", "error", "keep"),
    "data.pascal_mapping": ("paper", "clinical"),
    "train.optimizer": ("adamw",),
    "train.balance": ("class_weights", "sampler", "none"),
    "train.monitor": ("accuracy", "roc_auc", "balanced_accuracy", "score"),
    "train.threshold_criterion": ("balanced_accuracy", "accuracy", "mcc", "f1"),
    "train.device": ("assigned", "auto", "cpu", "cuda"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.compile": (False, True),
    "train.channels_last": (False, True),
}


def _check_fields(obj, section_name: str, numbers: dict) -> None:
    """Validate a settings dataclass: CHOICES for its choice fields, ``numbers`` maps a field to
    (kind, minimum, optional) with kind "int" or "number"; raises ValueError naming the setting."""
    for f in dataclasses.fields(obj):
        key, value = f"{section_name}.{f.name}", getattr(obj, f.name)
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"'{key}' must be one of {list(CHOICES[key])}, got {value!r}")
        if f.name in numbers:
            kind, minimum, optional = numbers[f.name]
            if value is None and optional:
                continue
            integer = isinstance(value, int) and not isinstance(value, bool)
            number = integer or isinstance(value, float)
            if not (integer if kind == "int" else number) or value < minimum:
                what = "an integer" if kind == "int" else "a number"
                raise ValueError(f"'{key}' must be {what} ≥ {minimum}{' or null' if optional else ''}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data.*`` settings of a trial: what it trains and is evaluated on."""

    train_set: str = "physionet2016"  # dataset trained on
    # dataset[:split] evaluated at recording level
    eval_sets: list = dataclasses.field(default_factory=lambda: ["physionet2016:test", "pascal"])
    validation: str = "per_source_balanced"  # or stratified (see study.data.splits)
    validation_fraction: float = 0.1
    validation_seed: int = 0  # fixed across model seeds: every trial sees the same split
    # per_source_balanced: at most this share of a source's minority class goes to validation, in (0, 1]
    validation_minority_cap: float = 0.25
    # per_source_balanced: with_test (only sources with test records give validation records; every
    # source when the dataset has no test split) | all
    validation_sources: str = "with_test"
    # training or validation recordings whose audio (content hash) is also in an evaluation set:
    # remove (dropped from training / validation, the evaluation copy kept) | error (stop, naming the
    # files) | keep (only listed, as before this setting existed). Copies inside one evaluation set are
    # scored once, as one cluster, unless keep (see study.trial_data.handle_duplicates).
    duplicates: str = "remove"
    pascal_mapping: str = "paper"  # or clinical
    max_train: int | None = None  # cap on training recordings (CPU-sized runs): a fixed stratified subset
    max_eval: int | None = None  # cap on recordings per evaluation set
    skip_bad: bool = False
    # robustness suite applied to every evaluation set (the space's `perturbations`)
    perturbations: list = dataclasses.field(default_factory=list)
    # feature settings under which every clean evaluation set is scored again by the same trained model
    # (the space's `eval_variants`, e.g. {"features.padding": ["cyclic"]}): for settings that change no
    # training input, such as padding when every training recording is longer than the window.
    # Each variant is an evaluation set of its own, named "SET[padding=cyclic]".
    eval_variants: dict = dataclasses.field(default_factory=dict)
    # more roots of the same dataset, whose recordings join it: {"icbhi2017": ["~/real/icbhi2017"]};
    # a root that does not exist is skipped with a warning and recorded in the trial's data info
    extra_roots: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _check_fields(
            self,
            "data",
            {
                "validation_fraction": ("number", 0, False),
                "validation_seed": ("int", 0, False),
                "validation_minority_cap": ("number", 0, False),
                "max_train": ("int", 1, True),
                "max_eval": ("int", 1, True),
            },
        )
        if not 0 < self.validation_minority_cap <= 1:
            raise ValueError(f"'data.validation_minority_cap' must be in (0, 1], got {self.validation_minority_cap!r}")
        extra = self.extra_roots
        if not isinstance(extra, dict) or not all(
            isinstance(v, list) and all(isinstance(r, str) for r in v) for v in extra.values()
        ):
            raise ValueError(f"'data.extra_roots' must map a dataset name to a list of folders, got {extra!r}")
        if not isinstance(self.eval_variants, dict):
            raise ValueError(
                f"eval_variants must map a features.* setting to a list of values, got {self.eval_variants!r}"
            )

    @classmethod
    def from_config(cls, config: Mapping) -> DataConfig:
        """The data settings of the flat ``config``; a setting it lacks that was added later (ADDED_SETTINGS)
        takes the value that reproduces a config written before it existed."""
        return cls(**{**_section(ADDED_SETTINGS, "data"), **_section(config, "data")})

    def loader_options(self, dataset: str) -> dict:
        """The options of study.data.load_dataset for ``dataset`` under these settings."""
        return {"skip_bad": self.skip_bad, **({"mapping": self.pascal_mapping} if dataset == "pascal" else {})}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train.*`` settings of a trial: optimiser, recipe, stopping, device."""

    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    sam: bool = False
    sam_rho: float = 0.05
    balance: str = "class_weights"  # class_weights (BCE weights) | sampler (weighted random sampler) | none
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 30  # epochs without a better validation score before stopping
    # fusion models only: weight of each branch head's auxiliary loss (0: none, the paper's recipe). A
    # jointly trained fusion model can lean on the branch that learns fastest and leave the other
    # untrained ("modality laziness"; Wang et al. 2020, gradient blending); a loss per branch keeps
    # both learning. Trains with model.branch_heads (set from this), ignored by single-branch models.
    branch_loss_weight: float = 0.0
    # validation metric for early stopping: accuracy | roc_auc | balanced_accuracy | score (ICBHI Score;
    # for a binary model the same as balanced accuracy). A multi-class model monitors accuracy or Score.
    monitor: str = "accuracy"
    threshold_criterion: str = "balanced_accuracy"  # how the validation-optimal threshold is chosen
    threads: int = 1  # torch CPU threads per trial
    # assigned: CUDA exactly when Ray gave the trial a GPU (an error if CUDA is then missing; outside
    # Ray, CUDA when there is one) | auto: CUDA when there is one, else the CPU | cpu | cuda
    device: str = "assigned"
    precision: str = "auto"  # auto: bf16 autocast on a CUDA device with bf16, fp32 elsewhere | bf16 | fp32
    # off until measured to help: torch.compile of the training forward pass, channels-last images
    compile: bool = False
    channels_last: bool = False
    eval_batch_size: int | None = None  # windows per evaluation batch; None: 256 on a GPU, 128 on the CPU

    def __post_init__(self):
        _check_fields(
            self,
            "train",
            {
                "lr": ("number", 0, False),
                "weight_decay": ("number", 0, False),
                "sam_rho": ("number", 0, False),
                "branch_loss_weight": ("number", 0, False),
                "batch_size": ("int", 1, False),
                "max_epochs": ("int", 1, False),
                "patience": ("int", 1, False),
                "threads": ("int", 1, False),
                "eval_batch_size": ("int", 1, True),
            },
        )

    @classmethod
    def from_config(cls, config: Mapping) -> TrainConfig:
        """The train settings of the flat ``config``."""
        return cls(**_section(config, "train"))


# Settings added after studies were run, each with the value that reproduces what a trial did before
# it existed. A config lacking one (an old study's run.json) means that value; trial ids and data
# keys leave out a setting at that value (see identity_settings), so an old study keeps its ids when
# it is resumed with these values set (--set data.duplicates=keep ...).
ADDED_SETTINGS: dict = {
    "data.validation_minority_cap": 0.5,
    "data.validation_sources": "all",
    "data.duplicates": "keep",
    "train.branch_loss_weight": 0.0,
}


def identity_settings(config: Mapping) -> dict:
    """``config`` without the ADDED_SETTINGS that hold their old value: what trial ids and data keys hash."""
    return {k: v for k, v in config.items() if not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}


def added_settings_changed(config: dict) -> dict:
    """The ADDED_SETTINGS whose value in ``config`` differs from their old value (missing = old value)."""
    return {k: config[k] for k in ADDED_SETTINGS if k in config and config[k] != ADDED_SETTINGS[k]}


def _defaults(settings_class, section_name: str) -> dict:
    instance = settings_class()
    return {f"{section_name}.{f.name}": getattr(instance, f.name) for f in dataclasses.fields(settings_class)}


DEFAULTS: dict = {
    "seed": 0,
    **_defaults(DataConfig, "data"),
    "features.profile": "native",  # the other features.* settings: study.features.FeatureProfile fields
    # the other model.* settings: study.models.ModelConfig fields
    "model.architecture": "fusion",
    "model.fusion": "concat",
    # local AudioSet-pretrained AST state dict (study.models.load_ast_checkpoint) that AST models start
    # from; models of other architectures train from scratch
    "model.init_checkpoint": None,
    "recipe": None,  # name of the space's recipe whose settings this config holds (a label)
    **_defaults(TrainConfig, "train"),
}

# Settings every space gets at a scale before its own: a CPU-sized run uses tiny
# models on the 2 kHz native profile; the paper scale is the paper's model and recipe.
SCALE_PRESETS: dict = {
    "cpu": {
        "features.profile": "native",
        "features.image_size": 64,
        "model.patch_size": 8,
        "model.vit_dim": 32,
        "model.vit_depth": 2,
        "model.vit_heads": 2,
        "model.spec_dense": 32,
        "model.wave_filters": [16, 32, 64],
        "model.wave_dense": 16,
        "model.fusion_dim": 32,
        "model.fusion_heads": 2,
        # few recordings give few optimizer steps per epoch: a higher rate and smaller batches
        "train.lr": 1e-3,
        "train.batch_size": 16,
        "train.max_epochs": 25,
        "train.patience": 8,
        "train.monitor": "roc_auc",  # a small validation set makes accuracy at 0.5 a coarse signal
    },
    "paper": {
        "features.profile": "paper",
        "train.max_epochs": 200,
        "train.patience": 30,
    },
}
TOP_LEVEL_KEYS = {
    "name",
    "description",
    "study",
    "default_scale",
    "fixed",
    "grid",
    "scales",
    "search",
    "resources",
    "compare",
    "perturbations",
    "notes",
    "recipes",
    "eval_variants",
}


class SpaceError(ValueError):
    """A search-space file or override is invalid; the message names the file and key."""


def _allowed_keys() -> set[str]:
    from .models import ModelConfig  # why here: see _model_config

    keys = set(DEFAULTS)
    keys |= {f"features.{f.name}" for f in dataclasses.fields(FeatureProfile) if f.name != "name"}
    # model.branch_heads follows train.branch_loss_weight (_model_config), so it is no setting of its own
    keys |= {f"model.{f.name}" for f in dataclasses.fields(ModelConfig) if f.name != "branch_heads"}
    return keys


def parse_settings(pairs: list[str]) -> dict:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``, values parsed as YAML scalars/lists."""
    settings = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        settings[key.strip()] = parsed
    return settings


def check_config(config: dict, where: str) -> dict:
    """Check keys and values of a (partial) flat config; returns it. Raises SpaceError naming the key."""
    allowed = _allowed_keys()
    for key, value in config.items():
        if key not in allowed:
            close = sorted(k for k in allowed if k.split(".")[-1] == key.split(".")[-1])
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SpaceError(f"{where}: unknown setting '{key}'{hint}")
        if key in CHOICES and value not in CHOICES[key]:
            raise SpaceError(f"{where}: '{key}' must be one of {list(CHOICES[key])}, got {value!r}")
    return config


def grid_with_overrides(grid: dict, overrides: dict) -> tuple[dict, dict]:
    """(grid, remaining overrides): an override of a grid axis replaces that axis, a list override
    (``--set seed=[0,1,2,3,4]``) with those values, a single value with that one value."""
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in overrides.items() if k in grid}
    return {k: axes.get(k, v) for k, v in grid.items()}, {k: v for k, v in overrides.items() if k not in axes}


def validate_trial_config(config: dict, where: str) -> TrialConfig:
    """Full check of a resolved flat trial config; returns it typed. Raises SpaceError naming the setting."""
    check_config(config, where)
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpaceError(f"{where}: seed must be a non-negative integer, got {seed!r}")
    try:
        trial = TrialConfig.from_flat(config)
    except (ValueError, TypeError) as exc:
        raise SpaceError(f"{where}: {exc}") from exc
    try:
        # imported here: the perturbations load audio libraries, which a trainer rebuilding its config lacks
        from .perturbations import parse_perturbation_suite

        parse_perturbation_suite(trial.data.perturbations)
    except ValueError as exc:
        raise SpaceError(f"{where}: perturbations: {exc}") from exc
    for key, values in trial.data.eval_variants.items():
        if not key.startswith("features.") or key == "features.profile" or key not in _allowed_keys():
            raise SpaceError(f"{where}: eval_variants: '{key}' is not a feature setting (features.padding, ...)")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: eval_variants.{key} must be a non-empty list of values, got {values!r}")
        for value in values:
            try:
                trial.feature_variant(key, value)
            except (ValueError, TypeError) as exc:
                raise SpaceError(f"{where}: eval_variants.{key}: {exc}") from exc
    return trial


def check_resources(resources: dict, where: str) -> dict:
    """Check per-trial resources ``{"cpu": n, "gpu": g}``; returns them. Ray shares a GPU between
    trials only in fractions of one, so a GPU count above 1 must be whole."""
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise SpaceError(f"{where}: resources must be a mapping with keys cpu and gpu, got {resources!r}")
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SpaceError(f"{where}: resources.{key} must be a non-negative number, got {value!r}")
    gpu = resources.get("gpu", 0)
    if gpu > 1 and gpu != int(gpu):
        raise SpaceError(f"{where}: resources.gpu {gpu} must be a fraction of one GPU or a whole number of GPUs")
    if resources.get("cpu", 1) == 0 and gpu == 0:
        raise SpaceError(f"{where}: a trial needs some CPU or GPU; got {resources!r}")
    return resources


SEARCH_KEYS = {
    "searcher",
    "scheduler",
    "metric",
    "mode",
    "num_samples",
    "grace_period",
    "reduction_factor",
    "min_samples_required",
    "params",
}


def _check_search(search: dict, where: str) -> None:
    """A space's ``search`` block: known keys, and every searched parameter a known setting (the rest,
    which needs the trial configs, is :func:`study.search.check_search`'s)."""
    if not isinstance(search, dict) or set(search) - SEARCH_KEYS:
        raise SpaceError(
            f"{where}: search must be a mapping with keys among {sorted(SEARCH_KEYS)}, got "
            f"{sorted(search) if isinstance(search, dict) else search!r}"
        )
    if search.get("mode", "max") not in ("max", "min"):
        raise SpaceError(f"{where}: search.mode must be max or min, got {search['mode']!r}")
    allowed = _allowed_keys()
    for key in search.get("params", {}):
        if key not in allowed:
            close = sorted(k for k in allowed if k.split(".")[-1] == key.split(".")[-1])
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SpaceError(f"{where}: search.params: unknown setting '{key}'{hint}")


def _section(config: Mapping, name: str) -> dict:
    """The keys of one section without their prefix: _section(c, "model") → {"fusion": ...}."""
    prefix = f"{name}."
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def _feature_profile(config: Mapping) -> FeatureProfile:
    settings = _section(config, "features")
    return get_profile(settings.pop("profile"), **settings)


def _model_config(config: Mapping, profile: FeatureProfile) -> ModelConfig:
    """The ModelConfig of the ``model.*`` settings (the initial checkpoint is not one), its input the
    profile's image size unless ``model.img_size`` says otherwise."""
    # models.py defines ModelConfig and fills the registries of the names it checks (built-in and
    # plugins' architectures and heads): building one needs it, importing this module does not
    from .models import ModelConfig

    settings = {"img_size": profile.image_size, **_section(config, "model")}
    settings.pop("init_checkpoint", None)
    weight = config.get("train.branch_loss_weight", 0.0)
    if isinstance(weight, (int, float)) and weight > 0 and settings.get("architecture") == "fusion":
        settings["branch_heads"] = True
    return ModelConfig.from_dict(settings)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """One trial's resolved settings, by section.

    Built by :meth:`Space.trial_configs`, and by :meth:`from_flat` where only the flat dict travels
    (Ray Tune hands it to the trainable; checkpoints and run.json store it). Each section is built
    from the flat dict and checked by its own class; a setting the flat dict lacks (a config written
    before it existed) takes its section's default, for ADDED_SETTINGS the value that reproduces
    the old trial. :attr:`flat` gives the flat dict back as it came, so Tune, the trackers, trial
    ids and data keys see exactly the keys and values they always saw.
    """

    _flat: dict = dataclasses.field(repr=False)
    seed: int = dataclasses.field(init=False)
    recipe: str | None = dataclasses.field(init=False)  # the space's recipe whose settings these are (a label)
    data: DataConfig = dataclasses.field(init=False)
    features: FeatureProfile = dataclasses.field(init=False)
    # the input size is the features' image size; branch heads follow train.branch_loss_weight
    model: ModelConfig = dataclasses.field(init=False)
    # a local AudioSet-pretrained AST state dict AST trials start from (study.models.load_ast_checkpoint)
    init_checkpoint: str | None = dataclasses.field(init=False)
    train: TrainConfig = dataclasses.field(init=False)

    def __post_init__(self):
        flat, put = self._flat, partial(object.__setattr__, self)
        put("seed", flat["seed"])
        put("recipe", flat.get("recipe"))
        put("data", DataConfig.from_config(flat))
        put("features", _feature_profile(flat))
        put("model", _model_config(flat, self.features))
        put("init_checkpoint", flat.get("model.init_checkpoint"))
        put("train", TrainConfig.from_config(flat))

    @classmethod
    def from_flat(cls, flat: Mapping) -> TrialConfig:
        """The typed config of a flat one (``{"seed": 0, "model.fusion": "concat", ...}``); raises
        ValueError or TypeError naming a setting that is unknown or invalid."""
        return cls(copy.deepcopy(dict(flat)))

    @property
    def flat(self) -> dict:
        """The flat dict of dotted keys (a copy): what Ray Tune holds and a checkpoint stores."""
        return copy.deepcopy(self._flat)

    @property
    def trial_id(self) -> str:
        return trial_id_of(self._flat)

    @property
    def data_key(self) -> str:
        return data_key_of(self._flat)

    def with_settings(self, settings: Mapping) -> TrialConfig:
        """This config with some flat settings replaced (``{"seed": 1}``), checked again."""
        return TrialConfig.from_flat({**self._flat, **settings})

    def feature_variant(self, key: str, value) -> FeatureProfile:
        """The feature profile with the ``features.*`` setting ``key`` set to ``value``: an evaluation
        variant (``data.eval_variants``), which changes the features only, not the model."""
        return _feature_profile({**self._flat, key: value})


def _json_digest(obj, digest_size: int) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=digest_size).hexdigest()


def trial_id_of(config: Mapping) -> str:
    """Stable id of a flat trial config: the same grid point always gets the same id. A setting added
    later (ADDED_SETTINGS) at its old value is left out, so old studies keep their ids."""
    return _json_digest(identity_settings(config), 5)


def data_settings(config: Mapping) -> dict:
    """The settings of a flat config that decide a trial's data: trials sharing them share one TrialData."""
    return {k: v for k, v in config.items() if k.startswith(("data.", "features."))}


def data_key_of(config: Mapping) -> str:
    """Key of the data and feature settings: trials sharing it share one TrialData in the object store."""
    return _json_digest(identity_settings(data_settings(config)), 6)


def trial_label(config: Mapping, axes: list[str]) -> str:
    """A trial's grid values, as Tune's table and the dry run show them (numbers to 4 significant digits)."""
    return " ".join(
        f"{k.split('.')[-1]}={config[k]:.4g}" if isinstance(config[k], float) else f"{k.split('.')[-1]}={config[k]}"
        for k in axes
    )


@dataclasses.dataclass
class Space:
    """A parsed search space."""

    name: str
    path: Path
    raw: dict
    scale: str

    @property
    def study(self) -> str:
        return self.raw.get("study", "heart")

    def fixed(self) -> dict:
        return {**self.raw.get("fixed", {}), **self.raw.get("scales", {}).get(self.scale, {}).get("fixed", {})}

    def grid(self) -> dict[str, list]:
        grid = dict(self.raw.get("grid", {}))
        grid.update(self.raw.get("scales", {}).get(self.scale, {}).get("grid", {}))
        return grid

    @property
    def resources(self) -> dict:
        """Ray resources per trial at this scale: ``{"cpu": CPUs, "gpu": GPUs or a fraction of one}``."""
        return {
            "cpu": 1,
            "gpu": 0,
            **self.raw.get("resources", {}),
            **self.raw.get("scales", {}).get(self.scale, {}).get("resources", {}),
        }

    @property
    def compare(self) -> dict:
        return dict(self.raw.get("compare", {}))

    @property
    def search(self) -> dict | None:
        search = self.raw.get("search")
        return (
            None if search is None else {**search, **self.raw.get("scales", {}).get(self.scale, {}).get("search", {})}
        )

    @property
    def recipes(self) -> dict:
        return copy.deepcopy(self.raw.get("recipes") or {})

    @property
    def perturbations(self) -> list:
        return list(self.raw.get("perturbations", []))

    @property
    def eval_variants(self) -> dict:
        return copy.deepcopy(self.raw.get("eval_variants") or {})

    def trial_configs(self, overrides: dict | None = None) -> list[TrialConfig]:
        """Every grid point as a resolved, checked trial config, in a stable order: DEFAULTS ← scale
        preset ← fixed ← grid point ← its recipe's settings ← ``overrides``."""
        overrides = overrides or {}
        base = {
            **copy.deepcopy(DEFAULTS),
            **SCALE_PRESETS.get(self.scale, {}),
            **self.fixed(),
            "data.perturbations": self.perturbations,
            "data.eval_variants": self.eval_variants,
        }
        grid, overrides = grid_with_overrides(self.grid(), overrides)
        keys = sorted(grid)
        configs = []
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            where = f"{self.path} (grid point {point})"
            config = {**base, **point}
            recipe = {**config, **overrides}.get("recipe")
            if recipe is not None:
                if recipe not in self.recipes:
                    raise SpaceError(
                        f"{where}: recipe {recipe!r} is not defined; the space's recipes are {sorted(self.recipes)}"
                    )
                config.update(self.recipes[recipe])
            config.update(overrides)
            configs.append(validate_trial_config(config, where))
        return configs

    def resolved(self) -> dict:
        """The space as it will run: for study.json and resume checks."""
        return {
            "name": self.name,
            "scale": self.scale,
            "fixed": self.fixed(),
            "grid": self.grid(),
            "resources": self.resources,
            "compare": self.compare,
            "search": self.search,
            "perturbations": self.perturbations,
            "study": self.study,
            **({"eval_variants": self.eval_variants} if self.eval_variants else {}),
            **({"recipes": self.recipes} if self.recipes else {}),
        }


def load_space(name_or_path: str | Path, scale: str | None = None) -> Space:
    """Load and validate a search space by name (search_spaces/NAME.yaml) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise SpaceError(
            f"search space '{name_or_path}' not found (looked for {path}); built-in spaces: {known}, "
            "or give the path of a YAML file of your own"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise SpaceError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; expected some of {sorted(TOP_LEVEL_KEYS)}"
        )
    if raw.get("name") != path.stem:
        raise SpaceError(f"{path}: 'name' must be '{path.stem}' (the file name), got {raw.get('name')!r}")
    scales = raw.get("scales", {})
    if not isinstance(scales, dict):
        raise SpaceError(f"{path}: 'scales' must be a mapping of scale name to settings")
    scale = scale or raw.get("default_scale") or "cpu"
    if scales and scale not in scales:
        raise SpaceError(f"{path}: unknown scale '{scale}'; this space has {sorted(scales)}")
    for where, part in [("fixed", raw.get("fixed", {}))] + [
        (f"scales.{s}.fixed", v.get("fixed", {})) for s, v in scales.items()
    ]:
        if not isinstance(part, dict):
            raise SpaceError(f"{path}: '{where}' must be a mapping of setting to value")
        check_config(part, f"{path} ({where})")
    for where, grid in [("grid", raw.get("grid", {}))] + [
        (f"scales.{s}.grid", v.get("grid", {})) for s, v in scales.items()
    ]:
        if not isinstance(grid, dict):
            raise SpaceError(f"{path}: '{where}' must be a mapping of setting to a list of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SpaceError(f"{path}: '{where}.{key}' must be a non-empty list of values, got {values!r}")
        check_config({k: v[0] for k, v in grid.items()}, f"{path} ({where})")
    recipes = raw.get("recipes") or {}
    if not isinstance(recipes, dict):
        raise SpaceError(f"{path}: 'recipes' must map a recipe name to its settings")
    for name, settings in recipes.items():
        if not isinstance(settings, dict) or "recipe" in settings:
            raise SpaceError(f"{path}: recipe {name!r} must be a mapping of settings (other than recipe)")
        check_config(settings, f"{path} (recipe {name!r})")
    for where, part in [("resources", raw.get("resources", {}))] + [
        (f"scales.{s}.resources", v.get("resources", {})) for s, v in scales.items()
    ]:
        check_resources(part, f"{path} ({where})")
    for where, search in [("search", raw.get("search"))] + [
        (f"scales.{s}.search", v.get("search")) for s, v in scales.items()
    ]:
        if search is not None:
            _check_search(search, f"{path} ({where})")
    space = Space(raw["name"], path, raw, scale)
    compare = space.compare
    if compare:
        axis = compare.get("axis")
        if axis not in space.grid() and space.search is None:
            raise SpaceError(f"{path}: compare.axis '{axis}' is not a grid axis ({sorted(space.grid())})")
        if axis in space.grid() and compare.get("baseline") not in space.grid()[axis]:
            raise SpaceError(f"{path}: compare.baseline {compare.get('baseline')!r} is not a value of {axis}")
    space.trial_configs()  # validates every grid point
    return space
