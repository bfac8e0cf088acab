"""The resolved plan of a study, built without training anything.

:func:`build_plan` resolves what ``study.run`` would do with a space: every
trial (its id and grid values), the resources per trial and how many trials
run at once (on the Ray cluster at ``address``, or on this machine), the size
of every feature object ``study.run`` puts into Ray's object store next to the
object store's capacity, and warnings about grid axes that change no training
input. It loads the datasets' tables (fast: no audio is decoded) and counts
windows from the recordings' durations, the way :mod:`study.features` cuts
them; no feature is extracted. :func:`format_plan` prints the plan.

Units: bytes in the dataclasses, MB (10**6 bytes) when printed; seconds;
samples at the feature profile's rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import STORE_DTYPE
from .config import Space, SpaceError, TrialConfig, trial_label
from .connection import ray_session
from .features import FeatureProfile
from .perturbations import parse_perturbation_suite, tempo_rate
from .results import eval_set_name, parse_eval_set_name
from .search import check_search, sample_count
from .trial_data import load_tables, variant_name

__all__ = [
    "AxisWarning",
    "FeatureObject",
    "Node",
    "PlanError",
    "SplitSize",
    "StudyPlan",
    "TrialLine",
    "build_plan",
    "cluster_nodes",
    "feature_object",
    "format_plan",
    "inert_training_axes",
    "local_node",
    "samples_at",
    "split_size",
    "split_tables",
    "trials_per_node",
    "window_layout",
]

STORE_ITEMSIZE = np.dtype(STORE_DTYPE).itemsize  # bytes per image pixel and waveform sample (float16)
INDEX_ITEMSIZE = 8  # bytes per window (item_index) and per item (labels): int64
# FeatureProfile fields that decide only how a recording is cut into windows: when every training
# recording is cut the same way under two values, the training inputs are identical.
WINDOWING_FIELDS = ("windows", "padding", "min_last_window")
MB = 1e6


class PlanError(SpaceError):
    """The study cannot run as planned; the message gives the numbers and what to change."""


@dataclass(frozen=True)
class TrialLine:
    """One trial: its study id (study.config.trial_id_of) and its grid values."""

    trial_id: str
    label: str


@dataclass(frozen=True)
class Node:
    """A machine of the cluster: CPUs, GPUs, object store capacity in bytes; ``driver``: the node
    whose object store ray.put fills (where study.run runs)."""

    name: str
    cpu: float
    gpu: float
    object_store_bytes: int
    driver: bool = False


@dataclass(frozen=True)
class SplitSize:
    """One split of a feature object: items (recordings or cycles), windows and bytes in memory."""

    name: str
    items: int
    windows: int
    nbytes: int
    perturbed: bool = False


@dataclass
class FeatureObject:
    """One TrialData that study.run puts into the object store (one per data key)."""

    key: str  # study.config.data_key_of
    configs: int  # trial configs reading it
    profile: FeatureProfile
    splits: list[SplitSize]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.splits)

    @property
    def window_bytes(self) -> int:
        """float16 image and waveform of one window."""
        height, width = self.profile.image_size
        return (height * width + self.profile.window_samples) * STORE_ITEMSIZE


@dataclass
class AxisWarning:
    """A grid axis whose values give every trial the same training input.

    ``eval_changes`` maps each evaluation set to (recordings whose windows the axis changes,
    recordings); ``repeated`` counts the trials that train a model another trial trains too.
    """

    axis: str
    values: list
    evidence: list[str]
    eval_changes: dict[str, tuple[int, int]]
    repeated: int
    trials: int

    @property
    def message(self) -> str:
        changed = {name: n for name, n in self.eval_changes.items() if n[0]}
        verb = "padded" if self.axis == "features.padding" else "cut into other windows"
        if changed:
            where = ", ".join(f"{name} ({n} of {total} recordings {verb})" for name, (n, total) in changed.items())
            evaluation = f"it changes only the evaluation of {where}"
        else:
            evaluation = "it changes no evaluation set either"
        return (
            f"{self.axis} {self.values} changes no training input on this data: {'; '.join(self.evidence)}. "
            f"So {evaluation}; {self.repeated} of {self.trials} trials train a model another trial trains "
            f"too. Keep one value in the grid and list the others under eval_variants "
            f"({{{self.axis}: {self.values[1:]}}}) to train once and evaluate each."
        )


@dataclass
class StudyPlan:
    """What study.run would do with a space; see the module docstring for units."""

    space: str
    scale: str
    data_root: Path
    address: str | None
    trials: list[TrialLine]
    search: dict | None  # a search: {"num_samples": n, "searcher": ..., "scheduler": ..., "params": {key: spec}}
    resources: dict  # per trial: {"cpu": n, "gpu": g}
    nodes: list[Node]
    slots: int  # trials the nodes fit at once (trials_per_node, summed)
    concurrency: int  # trials at once: slots, capped by max_concurrent and the number of trials
    max_concurrent: int | None
    feature_objects: list[FeatureObject]
    capacity_bytes: int
    capacity_source: str
    warnings: list[AxisWarning] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def feature_bytes(self) -> int:
        return sum(o.nbytes for o in self.feature_objects)


# ---------------------------------------------------------------- resources


def local_node() -> Node:
    """This machine as a local Ray (``ray.init()``) would see it, without starting Ray.

    CPUs and the object store size come from the functions Ray itself calls: the CPU count
    (os.cpu_count, or the container's CPU quota), and 30 % of the available memory, capped at
    200 GB and on Linux by /dev/shm (but not below 10 GB). GPUs: the CUDA devices torch sees.
    """
    import torch
    from ray._private import utils as ray_utils

    return Node(
        "local",
        float(ray_utils.get_num_cpus()),
        float(torch.cuda.device_count()),
        int(ray_utils.resolve_object_store_memory(ray_utils.estimate_available_memory())),
        driver=True,
    )


def cluster_nodes(address: str) -> list[Node]:
    """The alive nodes of the Ray cluster at ``address``; Ray is shut down afterwards only if started here."""
    import ray

    with ray_session(address):
        driver = ray.get_runtime_context().get_node_id()
        return [
            Node(
                f"{node.get('NodeManagerAddress')} {node['NodeID'][:6]}",
                float(node["Resources"].get("CPU", 0)),
                float(node["Resources"].get("GPU", 0)),
                int(node["Resources"].get("object_store_memory", 0)),
                driver=node["NodeID"] == driver,
            )
            for node in ray.nodes()
            if node.get("Alive")
        ]


def trials_per_node(node: Node, resources: dict) -> int:
    """Trials a node runs at once: min(floor(CPU / cpu), floor(GPU / gpu)) over the resources asked for."""
    fits = [
        math.floor(have / need + 1e-9)
        for have, need in ((node.cpu, resources.get("cpu", 1)), (node.gpu, resources.get("gpu", 0)))
        if need > 0
    ]
    return min(fits) if fits else 0


def _blocked_note(nodes: list[Node], resources: dict, where: str) -> str:
    """Why no trial can start on ``nodes``."""
    if resources.get("gpu", 0) > 0 and not any(n.gpu for n in nodes):
        return (
            f"no trial can start here: each trial asks for {resources['gpu']:g} GPU and {where} has no GPU; "
            f"pass --gpus-per-trial 0 to train on CPUs, or run on a cluster with GPUs (--address)"
        )
    machines = ", ".join(f"{n.name}: {n.cpu:g} CPU, {n.gpu:g} GPU" for n in nodes)
    return (
        f"no trial can start here: each trial asks for {resources.get('cpu', 1):g} CPU and "
        f"{resources.get('gpu', 0):g} GPU; {where} has {machines or 'no alive node'}"
    )


# ---------------------------------------------------------------- data


def split_tables(
    trial: TrialConfig, data_root: Path, datasets: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(train, val, {eval spec: table}) of a trial config: study.trial_data.load_tables, as the run selects them.

    ``datasets`` keeps loaded datasets between configs (study.trial_data.TrialDatasets' ``shared``).
    """
    try:
        selected, _ = load_tables(trial.data, data_root, datasets)
    except ValueError as exc:
        raise PlanError(str(exc)) from exc
    return selected.train, selected.val, selected.evals


def samples_at(table: pd.DataFrame, rate: int, tempo: float = 1.0) -> np.ndarray:
    """Samples of each item at ``rate`` Hz, as study.features sees it.

    The segment [start_s, end_s] read from its file (study.data.audio.read_audio), stretched to
    round(n / tempo) samples by a time-stretch perturbation, resampled to librosa's
    ceil(n * rate / file rate).
    """
    sr = table["sample_rate"].to_numpy(dtype=np.int64)
    n = np.round(table["end_s"].to_numpy(dtype=float) * sr) - np.round(table["start_s"].to_numpy(dtype=float) * sr)
    if tempo != 1.0:
        n = np.round(n / tempo)
    return np.where(sr == rate, n, np.ceil(n * (rate / sr))).astype(np.int64)


def window_layout(samples: np.ndarray, profile: FeatureProfile) -> tuple[np.ndarray, np.ndarray]:
    """(windows per item, whether its windows are padded), as study.features.make_windows cuts them."""
    size = profile.window_samples
    if profile.windows == "first":
        counts = np.ones(len(samples), dtype=np.int64)
    else:
        full, rest = np.divmod(samples, size)
        counts = np.maximum(1, full + (rest >= profile.min_last_window * size))
    return counts, samples < counts * size


def split_size(
    name: str, table: pd.DataFrame, profile: FeatureProfile, tempo: float = 1.0, perturbed: bool = False
) -> SplitSize:
    """Items, windows and bytes of one split's SplitData: float16 images (H×W) and waveforms per window,
    an int64 item index per window, an int64 label per item, and the recording table."""
    counts, _ = window_layout(samples_at(table, profile.sample_rate, tempo), profile)
    windows = int(counts.sum())
    height, width = profile.image_size
    per_window = (height * width + profile.window_samples) * STORE_ITEMSIZE + INDEX_ITEMSIZE
    nbytes = windows * per_window + len(table) * INDEX_ITEMSIZE + int(table.memory_usage(deep=True).sum())
    return SplitSize(name, len(table), windows, nbytes, perturbed)


def feature_object(trial: TrialConfig, data_root: Path, configs: int, datasets: dict | None = None) -> FeatureObject:
    """Size of the TrialData study.run puts for ``trial``: train, val, each evaluation set, one copy
    of every evaluation set per eval_variants value (named SET[KEY=VALUE], with that value's
    features) and per perturbation and severity (named SET~PERTURBATION@SEVERITY)."""
    data, profile = trial.data, trial.features
    train, val, evals = split_tables(trial, data_root, datasets)
    splits = [split_size("train", train, profile), split_size("val", val, profile)]
    splits += [split_size(spec, rows, profile) for spec, rows in evals.items()]
    for key, values in data.eval_variants.items():
        for value in values:
            variant = trial.feature_variant(key, value)
            splits += [split_size(variant_name(spec, key, value), rows, variant) for spec, rows in evals.items()]
    for item in parse_perturbation_suite(data.perturbations):
        tempo = tempo_rate(item.name, item.severity)  # time stretches change the length
        splits += [
            split_size(eval_set_name(spec, item.id, item.severity), rows, profile, tempo, perturbed=True)
            for spec, rows in evals.items()
        ]
    return FeatureObject(trial.data_key, configs, profile, splits)


# ---------------------------------------------------------------- inert grid axes


def _rest_key(trial: TrialConfig, axis: str) -> str:
    return json.dumps({k: v for k, v in trial.flat.items() if k != axis}, sort_keys=True, default=str)


def _evidence(fields: set[str], profiles: list[FeatureProfile], durations: np.ndarray, samples: np.ndarray) -> str:
    """Why every training recording is cut the same way under ``profiles`` (they differ in ``fields``)."""
    first = profiles[0]
    window = first.window_s
    if not fields:
        return "its values give the same feature settings"
    if fields == {"padding"} and first.windows == "first":
        return f"shortest training recording {durations.min():.2f} s ≥ window {window:g} s"
    if fields == {"padding"}:
        return (
            f"no training window is padded (shortest training recording {durations.min():.2f} s ≥ window "
            f"{window:g} s, and no last partial window reaches min_last_window {first.min_last_window:g} × "
            f"{window:g} s)"
        )
    if fields == {"min_last_window"} and first.windows == "first":
        return "windows: first keeps only the first window"
    if fields == {"min_last_window"}:
        low, high = min(p.min_last_window for p in profiles), max(p.min_last_window for p in profiles)
        return f"no training recording ends in a partial window between {low * window:.2f} s and {high * window:.2f} s"
    if fields == {"windows"}:
        limit = (1 + first.min_last_window) * window
        return (
            f"every training recording gives one window with windows: all (longest "
            f"{samples.max() / first.sample_rate:.2f} s < (1 + min_last_window) × window = {limit:.2f} s)"
        )
    return "every training recording is cut into the same windows"


def inert_training_axes(
    space: Space, overrides: dict | None, data_root: Path, datasets: dict | None = None
) -> list[AxisWarning]:
    """Grid axes ``features.*`` that provably change no training or validation window.

    Trials are grouped by every setting but the axis; an axis is inert when, in every group,
    its values differ only in how recordings are cut into windows (``WINDOWING_FIELDS``) and
    every train and val recording is cut the same way under each value (same window length,
    count and padding): the models then see identical inputs. Anything else (another rate,
    a partial window padded differently) is not provable from the tables and is not warned
    about. ``datasets`` memoizes loaded datasets (see :func:`split_tables`).
    """
    overrides = overrides or {}
    configs = space.trial_configs(overrides)
    found = []
    for axis, values in sorted(space.grid().items()):
        if not axis.startswith("features.") or axis in overrides or len(values) < 2:
            continue
        groups: dict[str, list[TrialConfig]] = {}
        for trial in configs:
            groups.setdefault(_rest_key(trial, axis), []).append(trial)
        evidence, eval_changes, repeated = [], {}, 0
        for group in groups.values():
            profiles = [trial.features for trial in group]
            fields = {
                f.name for f in dataclasses.fields(FeatureProfile) if len({getattr(p, f.name) for p in profiles}) > 1
            }
            if not fields <= set(WINDOWING_FIELDS):
                break
            train, val, evals = split_tables(group[0], data_root, datasets)
            trainval = pd.concat([train, val])
            samples = samples_at(trainval, profiles[0].sample_rate)
            if _layouts_differ(samples, profiles).any():
                break
            evidence.append(_evidence(fields, profiles, trainval["duration_s"].to_numpy(dtype=float), samples))
            for spec, rows in evals.items():
                changed = int(_layouts_differ(samples_at(rows, profiles[0].sample_rate), profiles).sum())
                eval_changes[spec] = max((changed, len(rows)), eval_changes.get(spec, (0, len(rows))))
            repeated += len(group) - 1
        else:
            found.append(
                AxisWarning(axis, list(values), list(dict.fromkeys(evidence)), eval_changes, repeated, len(configs))
            )
    return found


def _layouts_differ(samples: np.ndarray, profiles: list[FeatureProfile]) -> np.ndarray:
    """Per item: whether its window length, count or padding differ between ``profiles``."""

    def layout(profile):
        counts, padded = window_layout(samples, profile)
        fill = ("zero", "cyclic").index(profile.padding) + 1  # what a padded window is filled with
        return np.stack([np.full(len(samples), profile.window_samples), counts, np.where(padded, fill, 0)])

    reference = layout(profiles[0])
    differ = np.zeros(len(samples), dtype=bool)
    for profile in profiles[1:]:
        differ |= (layout(profile) != reference).any(axis=0)
    return differ


# ---------------------------------------------------------------- the plan


def build_plan(
    space: Space,
    *,
    overrides: dict | None,
    data_root: Path,
    resources: dict,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> StudyPlan:
    """Resolve what study.run would do with ``space``, training nothing.

    ``resources`` is the per-trial ``{"cpu": n, "gpu": g}`` (study.run.trial_resources);
    ``address`` a Ray cluster to read the nodes of (connected to, and left as found), else
    this machine; ``max_concurrent`` the runner's --max-concurrent. Raises PlanError when the
    feature objects exceed the object store's capacity, SpaceError when study.run would refuse
    the space's search.
    """
    overrides = overrides or {}
    data_root = Path(data_root)
    configs = space.trial_configs(overrides)
    if space.search is not None:
        check_search(space.search, f"{space.path} (search)", configs[0])
    axes = sorted(space.grid())
    trials = [TrialLine(trial.trial_id, trial_label(trial.flat, axes)) for trial in configs]
    search = None
    if space.search is not None:
        search = {
            "num_samples": sample_count(space.search),
            "searcher": space.search.get("searcher", "tpe"),
            "scheduler": space.search.get("scheduler", "asha"),
            "params": dict(space.search.get("params", {})),
        }

    nodes = cluster_nodes(address) if address else [local_node()]
    where = f"the cluster at {address}" if address else "this machine"
    slots = sum(trials_per_node(n, resources) for n in nodes)
    runs = search["num_samples"] if search else len(trials)
    concurrency = min(slots, runs, max_concurrent or slots)
    notes = [] if slots else [_blocked_note(nodes, resources, where)]

    # study.run puts one TrialData per data key (a search's samples share the first config's)
    users: dict[str, list[TrialConfig]] = {}
    for trial in configs:
        users.setdefault(trial.data_key, []).append(trial)
    datasets: dict = {}
    objects = [feature_object(group[0], data_root, len(group), datasets) for group in users.values()]

    # ray.put fills the driver's node; every node running a trial holds a copy of what its trials read
    holders = [n for n in nodes if n.driver or trials_per_node(n, resources)] or nodes
    smallest = min(holders, key=lambda n: n.object_store_bytes)
    capacity = smallest.object_store_bytes
    if address:
        source = (
            f"the smallest object store of the driver's node and the nodes that can run a trial "
            f"({smallest.name}), each of which holds a copy"
        )
    else:
        source = "a local Ray's default: 30 % of the available memory (Ray's resolve_object_store_memory)"
    plan = StudyPlan(
        space.name,
        space.scale,
        data_root,
        address,
        trials,
        search,
        dict(resources),
        nodes,
        slots,
        concurrency,
        max_concurrent,
        objects,
        capacity,
        source,
        inert_training_axes(space, overrides, data_root, datasets),
        notes,
    )
    if plan.feature_bytes > capacity:
        largest = max(objects, key=lambda o: o.nbytes)
        raise PlanError(
            f"the features of {space.name} need {plan.feature_bytes / MB:.1f} MB in Ray's object store "
            f"({len(objects)} feature object(s), the largest {largest.key} {largest.nbytes / MB:.1f} MB), "
            f"more than its capacity of {capacity / MB:.1f} MB ({source}). Use fewer perturbations, fewer "
            f"training or evaluation recordings (--set data.max_train=N, data.max_eval=N), or a bigger object "
            f"store: `ray start --head --object-store-memory BYTES` and --address auto"
        )
    return plan


# ---------------------------------------------------------------- printing


def _resources_text(resources: dict) -> str:
    return f"{resources.get('cpu', 1):g} CPU, {resources.get('gpu', 0):g} GPU"


def _object_lines(obj: FeatureObject) -> list[str]:
    p = obj.profile
    height, width = p.image_size
    lines = [
        f"  {obj.key}  {obj.nbytes / MB:.1f} MB, read by {obj.configs} trial config(s): {p.name} profile "
        f"{p.sample_rate} Hz, {p.window_s:g} s windows ({p.windows}, {p.padding} padding), float16 image "
        f"{height}×{width} + waveform {p.window_samples} samples = {obj.window_bytes / 1e3:.1f} kB per window"
    ]
    rows = [(s.name, f"{s.items} items", f"{s.windows} windows", s.nbytes) for s in obj.splits if not s.perturbed]
    perturbed = [s for s in obj.splits if s.perturbed]
    for spec in dict.fromkeys(parse_eval_set_name(s.name)[0] for s in perturbed):
        copies = [s for s in perturbed if parse_eval_set_name(s.name)[0] == spec]
        rows.append(
            (
                f"{spec}~perturbed",
                f"{len(copies)} copies",
                f"{sum(s.windows for s in copies)} windows",
                sum(s.nbytes for s in copies),
            )
        )
    width_name = max(len(r[0]) for r in rows)
    lines += [
        f"      {name:<{width_name}}  {items:>10}  {windows:>14}  {nbytes / MB:9.1f} MB"
        for name, items, windows, nbytes in rows
    ]
    return lines


def format_plan(plan: StudyPlan) -> str:
    """The plan as readable text: header, trials, feature objects vs capacity, warnings and notes."""
    where = f"cluster {plan.address}" if plan.address else "this machine"
    cap = f"--max-concurrent {plan.max_concurrent}" if plan.max_concurrent else "--max-concurrent may cap it"
    runs = f"{plan.search['num_samples']} Optuna samples" if plan.search else f"{len(plan.trials)}"
    lines = [
        f"study plan: {plan.space} (scale {plan.scale})",
        f"  data root:  {plan.data_root}",
        f"  trials:     {runs}",
        f"  per trial:  {_resources_text(plan.resources)}",
        f"  resources:  {where}: "
        + "; ".join(
            f"{n.name} {n.cpu:g} CPU, {n.gpu:g} GPU, object store {n.object_store_bytes / MB:.0f} MB"
            for n in plan.nodes
        ),
        f"  at once:    {plan.concurrency} trial(s) ({where} fits {plan.slots}; {cap})",
    ]
    if plan.search:
        lines.append(
            f"search: Optuna ({plan.search['searcher']}, scheduler {plan.search['scheduler']}) draws "
            f"{plan.search['num_samples']} samples of "
            + ", ".join(
                f"{k} ({v.get('type')} "
                + (f"{v['values']}" if "values" in v else f"{v.get('low')}..{v.get('high')}")
                + ")"
                for k, v in plan.search["params"].items()
            )
            + ", from the first trial config"
        )
    lines.append("trial configs (id, grid values):")
    lines += [f"  {t.trial_id}  {t.label}" for t in plan.trials]
    lines.append(f"feature objects in Ray's object store (one ray.put per data key): {len(plan.feature_objects)}")
    for obj in plan.feature_objects:
        lines += _object_lines(obj)
    share = plan.feature_bytes / plan.capacity_bytes if plan.capacity_bytes else float("inf")
    lines.append(
        f"  total {plan.feature_bytes / MB:.1f} MB of {plan.capacity_bytes / MB:.1f} MB object store "
        f"capacity ({100 * share:.1f} %): {plan.capacity_source}"
    )
    for warning in plan.warnings:
        lines.append(f"warning: {warning.message}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
