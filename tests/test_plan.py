"""The study plan: trials, concurrency, object store sizes against capacity, inert grid axes."""

from __future__ import annotations

import dataclasses
from functools import partial

import pandas as pd
import pytest
import yaml

from study import plan as plan_module
from study.cache import extract_features
from study.config import load_space, trial_id_of
from study.data import load_dataset
from study.features import get_profile
from study.plan import (
    MB,
    Node,
    PlanError,
    build_plan,
    format_plan,
    inert_training_axes,
    split_size,
    split_tables,
    trials_per_node,
)
from study.tensors import SplitData
from study.trial_data import perturb, prepare_data

CPU = {"cpu": 1, "gpu": 0}
SHARED_GPU = {"cpu": 1, "gpu": 0.25}


def _space(tmp_path, name: str, grid: dict, **raw_keys):
    """A small heart space on the synthetic data with ``grid`` as its only axes."""
    raw = {
        "name": name,
        "study": "heart",
        "default_scale": "cpu",
        "fixed": {"model.architecture": "waveform", "features.image_size": 16},
        "grid": grid,
        "scales": {"cpu": {}},
        "resources": CPU,
        **raw_keys,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_space(path)


def test_smoke_plan_lists_every_trial_with_its_study_id(synth_root):
    space = load_space("smoke")
    plan = build_plan(space, overrides=None, data_root=synth_root, resources=CPU)
    configs = space.trial_configs()
    assert [t.trial_id for t in plan.trials] == [trial_id_of(c.flat) for c in configs]
    assert [t.label for t in plan.trials] == [f"architecture={c.model.architecture} seed={c.seed}" for c in configs]
    assert len(plan.trials) == 4 and plan.search is None
    # one data key: model and seed do not change the data; train capped by data.max_train, evals by max_eval
    (obj,) = plan.feature_objects
    sizes = {s.name: s for s in obj.splits}
    assert (sizes["train"].items, sizes["train"].windows) == (60, 60)
    assert sizes["pascal"].items == 40 and obj.configs == 4
    text = format_plan(plan)
    for trial in plan.trials:
        assert f"{trial.trial_id}  {trial.label}" in text
    assert obj.key in text and "smoke (scale cpu)" in text and "object store capacity" in text


def test_the_dry_run_sizes_the_recordings_the_run_uses(synth_root, tmp_path):
    """study.plan and study.trial_data.prepare_data load and select the recordings by the same code
    (study.trial_data.load_tables): the same ones, also when an extra root is missing."""
    missing = tmp_path / "missing"
    trial = load_space("smoke").trial_configs()[0].with_settings({"data.extra_roots": {"pascal": [str(missing)]}})
    with pytest.warns(UserWarning, match="does not exist"):
        train, val, evals = split_tables(trial, synth_root)
    with pytest.warns(UserWarning, match="does not exist"):
        data = prepare_data(trial, synth_root, progress=False, n_jobs=1)
    planned = {"train": train, "val": val, **evals}
    prepared = {"train": data.train, "val": data.val, **data.evals}
    assert {name: sorted(rows["id"]) for name, rows in planned.items()} == {
        name: sorted(split.table["id"]) for name, split in prepared.items()
    }
    assert data.info["missing_extra_roots"] == [str(missing)]


def test_hpo_plan_names_the_search(synth_root):
    plan = build_plan(load_space("hpo"), overrides=None, data_root=synth_root, resources=CPU)
    assert plan.search["num_samples"] == 8 and "train.lr" in plan.search["params"]
    assert "Optuna (tpe, scheduler asha) draws 8 samples of train.lr (loguniform" in format_plan(plan)


def test_concurrency_on_a_machine_with_four_gpus(synth_root, monkeypatch):
    import torch
    from ray._private import utils as ray_utils

    space = load_space("branches", "paper")  # 30 trials
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda: 32)  # what a local Ray counts: os.cpu_count or the quota
    plan = build_plan(space, overrides=None, data_root=synth_root, resources=SHARED_GPU)
    assert plan.nodes[0].cpu == 32 and plan.nodes[0].gpu == 4
    assert plan.concurrency == 16 and not plan.notes  # 4 GPUs / 0.25 GPU, fewer than 32 CPUs / 1 CPU
    capped = build_plan(space, overrides=None, data_root=synth_root, resources=SHARED_GPU, max_concurrent=6)
    assert (capped.slots, capped.concurrency) == (16, 6)
    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda: 8)
    assert build_plan(space, overrides=None, data_root=synth_root, resources=SHARED_GPU).concurrency == 8
    assert "at once:    8 trial(s) (this machine fits 8; --max-concurrent may cap it)" in format_plan(
        build_plan(space, overrides=None, data_root=synth_root, resources=SHARED_GPU)
    )


def test_gpus_asked_for_on_a_machine_without_one(synth_root, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    plan = build_plan(load_space("smoke"), overrides=None, data_root=synth_root, resources=SHARED_GPU)
    assert plan.concurrency == 0
    assert "no trial can start here: each trial asks for 0.25 GPU and this machine has no GPU" in plan.notes[0]
    assert "note: no trial can start here" in format_plan(plan)


def test_trials_per_node():
    assert trials_per_node(Node("n", 16, 2, 10**9), {"cpu": 1, "gpu": 0.25}) == 8
    assert trials_per_node(Node("n", 3, 2, 10**9), {"cpu": 1, "gpu": 0.25}) == 3
    assert trials_per_node(Node("n", 3, 0, 10**9), {"cpu": 2, "gpu": 0}) == 1
    assert trials_per_node(Node("n", 64, 0, 10**9), {"cpu": 1, "gpu": 0.1}) == 0
    assert trials_per_node(Node("n", 64, 1, 10**9), {"cpu": 0, "gpu": 0.1}) == 10


def test_cluster_nodes_are_read_and_ray_left_as_found(synth_root, monkeypatch):
    import ray

    calls = []
    nodes = [
        {
            "Alive": True,
            "NodeManagerAddress": "10.0.0.1",
            "NodeID": "a",
            "Resources": {"CPU": 8.0, "GPU": 1.0, "object_store_memory": 4e9},
        },
        {
            "Alive": True,
            "NodeManagerAddress": "10.0.0.2",
            "NodeID": "b",
            "Resources": {"CPU": 4.0, "GPU": 1.0, "object_store_memory": 2e9},
        },
        {
            "Alive": True,
            "NodeManagerAddress": "10.0.0.3",
            "NodeID": "c",  # no GPU: runs no GPU trial
            "Resources": {"CPU": 2.0, "object_store_memory": 1e6},
        },
        {
            "Alive": True,
            "NodeManagerAddress": "10.0.0.9",
            "NodeID": "head",  # the driver's: ray.put fills it
            "Resources": {"CPU": 0.0, "object_store_memory": 3e9},
        },
        {
            "Alive": False,
            "NodeManagerAddress": "10.0.0.4",
            "NodeID": "d",
            "Resources": {"CPU": 64.0, "GPU": 8.0, "object_store_memory": 9e9},
        },
    ]
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(("init", kw["address"])))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("shutdown",)))
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"get_node_id": lambda self: "head"})())
    plan = build_plan(
        load_space("branches", "paper"), overrides=None, data_root=synth_root, resources=SHARED_GPU, address="auto"
    )
    assert calls == [("init", "auto"), ("shutdown",)]
    assert [n.name for n in plan.nodes] == ["10.0.0.1 a", "10.0.0.2 b", "10.0.0.3 c", "10.0.0.9 head"]
    assert plan.slots == plan.concurrency == 8  # 4 + 4 + 0 + 0
    assert plan.capacity_bytes == 2e9 and "10.0.0.2" in plan.capacity_source  # 10.0.0.3 holds no feature object
    nodes[3]["Resources"]["object_store_memory"] = 1e6  # a tiny store on the driver's node: refused
    with pytest.raises(PlanError, match="capacity of 1.0 MB"):
        build_plan(
            load_space("branches", "paper"), overrides=None, data_root=synth_root, resources=SHARED_GPU, address="auto"
        )
    nodes[3]["Resources"]["object_store_memory"] = 3e9

    calls.clear()
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # connected by the caller: left connected
    build_plan(load_space("smoke"), overrides=None, data_root=synth_root, resources=SHARED_GPU, address="auto")
    assert calls == []


def test_refuses_features_larger_than_the_object_store(synth_root, monkeypatch):
    space = load_space("smoke")
    total = build_plan(space, overrides=None, data_root=synth_root, resources=CPU).feature_bytes
    monkeypatch.setattr(plan_module, "local_node", lambda: Node("local", 8, 0, 10**6))
    with pytest.raises(PlanError) as error:
        build_plan(space, overrides=None, data_root=synth_root, resources=CPU)
    message = str(error.value)
    assert f"need {total / MB:.1f} MB" in message and "capacity of 1.0 MB" in message
    assert "data.max_train" in message and "--object-store-memory" in message


def test_window_and_byte_estimate_match_extracted_features(synth_root):
    """The estimate counts exactly the windows and tensor bytes that feature extraction produces,
    for 2 kHz, 4 kHz and 44.1 kHz files, all windows with partial last ones, and a time stretch."""
    physionet = load_dataset("physionet2016", synth_root / "physionet2016").table.iloc[:6]
    pascal = load_dataset("pascal", synth_root / "pascal").table
    rates = pascal.groupby("sample_rate").head(3)
    table = pd.concat([physionet, rates], ignore_index=True)
    profile = get_profile("native", image_size=16, windows="all", window_s=2.0)
    slow = (0.8, partial(perturb, "time_stretch_slow", 4, {}), "time_stretch_slow@4")
    for tempo, transform, key in ((1.0, None, ""), slow):
        split = SplitData.from_features(
            "x", extract_features(table, profile, transform=transform, transform_key=key, n_jobs=1, progress=False)
        )
        estimate = split_size("x", table, profile, tempo)
        assert estimate.windows == len(split.item_index) > len(table)
        assert estimate.nbytes - int(table.memory_usage(deep=True).sum()) == split.nbytes


def test_warns_about_padding_that_no_training_recording_needs(synth_root, tmp_path):
    # every synthetic training (and validation) recording is at least 5.00 s long: the 5 s window is never padded
    space = _space(tmp_path, "padding", {"features.padding": ["zero", "cyclic"], "seed": [0, 1]})
    plan = build_plan(space, overrides=None, data_root=synth_root, resources=CPU)
    (warning,) = plan.warnings
    assert warning.axis == "features.padding" and warning.values == ["zero", "cyclic"]
    assert warning.evidence == ["shortest training recording 5.00 s ≥ window 5 s"]
    assert (warning.repeated, warning.trials) == (2, 4)
    pascal = load_dataset("pascal", synth_root / "pascal").table
    assert warning.eval_changes["pascal"] == ((pascal["duration_s"] < 5.0).sum(), len(pascal)) == (109, 304)
    assert warning.eval_changes["physionet2016:test"][0] == 0
    text = format_plan(plan)
    assert "warning: features.padding ['zero', 'cyclic'] changes no training input" in text
    assert "pascal (109 of 304 recordings padded)" in text and "2 of 4 trials" in text


@pytest.mark.parametrize(
    "overrides",
    [
        {"features.window_s": 6.0},  # some training recordings are shorter
        {"features.windows": "all"},
    ],
)  # last partial windows are padded
def test_no_warning_when_padding_changes_training_windows(synth_root, tmp_path, overrides):
    space = _space(tmp_path, "padding", {"features.padding": ["zero", "cyclic"], "seed": [0]})
    assert inert_training_axes(space, overrides, synth_root) == []


def test_min_last_window_is_inert_only_with_first_windows(synth_root, tmp_path):
    space = _space(tmp_path, "last", {"features.min_last_window": [0.3, 0.7], "seed": [0]})
    (warning,) = inert_training_axes(space, None, synth_root)
    assert warning.axis == "features.min_last_window"
    assert warning.evidence == ["windows: first keeps only the first window"]
    assert (warning.repeated, warning.trials) == (1, 2)
    # with windows: all as another axis, the recordings' last partial windows differ in one group: no warning
    space = _space(tmp_path, "last", {"features.min_last_window": [0.3, 0.7], "features.windows": ["first", "all"]})
    assert inert_training_axes(space, None, synth_root) == []


def test_eval_variants_and_perturbations_add_copies_of_the_evaluation_sets(synth_root, tmp_path):
    suite = [{"name": "time_stretch_fast", "severities": [3]}, {"name": "band_limit", "severities": [2]}]
    space = _space(
        tmp_path, "copies", {"seed": [0]}, eval_variants={"features.padding": ["cyclic"]}, perturbations=suite
    )
    (obj,) = build_plan(space, overrides=None, data_root=synth_root, resources=CPU).feature_objects
    sizes = {s.name: s for s in obj.splits}
    assert list(sizes) == [
        "train",
        "val",
        "physionet2016:test",
        "pascal",
        "physionet2016:test[padding=cyclic]",
        "pascal[padding=cyclic]",
        "physionet2016:test~time_stretch_fast@3",
        "pascal~time_stretch_fast@3",
        "physionet2016:test~band_limit@2",
        "pascal~band_limit@2",
    ]
    assert sizes["pascal[padding=cyclic]"] == dataclasses.replace(sizes["pascal"], name="pascal[padding=cyclic]")
    assert sizes["pascal~band_limit@2"].nbytes == sizes["pascal"].nbytes and sizes["pascal~band_limit@2"].perturbed
    assert obj.nbytes == sum(s.nbytes for s in sizes.values())
