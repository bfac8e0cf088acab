"""Where a trial trains: the device Ray gave it, what metrics.json records, the GPU data path's
CPU equivalence, evaluation-time variants and the kept model's validation metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from study.config import SpaceError, load_space
from study.tensors import place_splits
from study.train import autocast_dtype, resolve_device, train_and_evaluate
from study.trial_data import prepare_data, variant_name


def _config(**overrides):
    base = load_space("smoke").trial_configs({"model.architecture": "fusion", "seed": 0})[0]
    return base.with_settings({"train.max_epochs": 2, "train.patience": 2, **overrides})


@pytest.fixture(scope="module")
def data(synth_root):
    return prepare_data(_config(), synth_root, progress=False, n_jobs=1)


def test_device_choice_follows_the_gpu_ray_gave():
    assert resolve_device("cpu", gpu_assigned=True) == (torch.device("cpu"), None)
    assert resolve_device("assigned", gpu_assigned=False) == (torch.device("cpu"), None)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the missing-CUDA paths cannot be shown here")
    with pytest.raises(
        RuntimeError,
        match=r"Ray gave this trial a GPU, but torch .* finds no CUDA device.*"
        r"train.device=auto",
    ):
        resolve_device("assigned", gpu_assigned=True)
    with pytest.raises(RuntimeError, match="train.device is 'cuda'"):
        resolve_device("cuda", gpu_assigned=None)
    device, note = resolve_device("auto", gpu_assigned=True)
    assert device.type == "cpu" and "trained on the CPU (train.device: auto)" in note
    assert resolve_device("assigned", gpu_assigned=None)[0].type == "cpu"  # outside Ray: CUDA if there is one


def test_precision_is_fp32_on_the_cpu_and_never_fp16():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_a_trial_given_a_gpu_without_cuda_fails_clearly_unless_auto(data):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="finds no CUDA device"):
        train_and_evaluate(_config(), data, gpu_assigned=True)
    result = train_and_evaluate(_config(**{"train.device": "auto"}), data, gpu_assigned=True)
    assert result.device["type"] == "cpu" and result.device["precision"] == "fp32"
    assert "train.device: auto" in result.device["note"]


def test_metrics_record_the_device_and_the_kept_models_validation(data):
    result = train_and_evaluate(_config(**{"train.max_epochs": 3, "train.patience": 3}), data)
    assert result.device == {"type": "cpu", "name": result.device["name"], "precision": "fp32", "data_on_device": False}
    for row in result.history:
        kept = result.history[row["best_epoch"] - 1]
        assert row["kept_val_roc_auc"] == kept["val_roc_auc"]
        assert 0 < row["train_s"] <= row["epoch_s"]
    assert result.metrics["val"]["roc_auc"] == pytest.approx(result.history[-1]["kept_val_roc_auc"])


def test_placing_splits_on_the_cpu_changes_nothing(data):
    placed, on_device = place_splits(data, torch.device("cpu"))
    assert placed is data and not on_device
    moved = data.train.to(torch.device("cpu"))
    assert moved is data.train
    assert data.train.nbytes == sum(
        t.numel() * t.element_size()
        for t in (data.train.images, data.train.waves, data.train.item_index, data.train.labels)
    )


def test_eval_variants_score_the_same_model_on_each_variant(synth_root):
    config = _config(**{"data.eval_variants": {"features.padding": ["cyclic"]}, "data.max_eval": 40})
    data = prepare_data(config, synth_root, progress=False, n_jobs=1)
    assert set(data.evals) == {
        "physionet2016:test",
        "pascal",
        "physionet2016:test[padding=cyclic]",
        "pascal[padding=cyclic]",
    }
    assert variant_name("pascal", "features.padding", "cyclic") == "pascal[padding=cyclic]"
    # training inputs are the trained setting's; the variant's recordings are the same
    clean, cyclic = data.evals["pascal"], data.evals["pascal[padding=cyclic]"]
    assert clean.table["id"].tolist() == cyclic.table["id"].tolist()
    short = (clean.table["duration_s"] < 5.0).to_numpy() if "duration_s" in clean.table else None
    if short is not None and short.any():
        assert not torch.equal(clean.waves, cyclic.waves)  # padded recordings differ
    result = train_and_evaluate(config, data)
    assert set(result.predictions["eval_set"]) == set(data.evals)
    assert "pascal[padding=cyclic]" in result.metrics


def test_eval_variants_must_be_feature_settings(tmp_path):
    import yaml

    raw = yaml.safe_load((load_space("smoke").path).read_text())
    for bad, message in [
        ({"train.lr": [0.1]}, "not a feature setting"),
        ({"features.padding": []}, "non-empty list"),
        ({"features.padding": ["mirror"]}, "padding"),
    ]:
        raw["eval_variants"] = bad
        path = tmp_path / "smoke.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(SpaceError, match=message):
            load_space(path)


def test_cpu_results_do_not_depend_on_the_gpu_settings_being_off(data):
    """compile / channels-last are off by default; eval batch size None means 128 on the CPU."""
    base = train_and_evaluate(_config(), data)
    explicit = train_and_evaluate(_config(**{"train.eval_batch_size": 128, "train.precision": "fp32"}), data)
    np.testing.assert_array_equal(base.predictions["prob"].to_numpy(), explicit.predictions["prob"].to_numpy())
    assert dataclasses.asdict(data.train.to(torch.device("cpu")))["name"] == "train"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the GPU data path runs there only")
def test_training_steps_never_synchronise_with_the_host_on_a_gpu(data):
    from study.train import model_inputs, setup_trial, train_step

    run = setup_trial(_config(), data, gpu_assigned=True, fresh=True)
    assert run.device.type == "cuda" and run.record["data_on_device"]
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=1e-3)
    weights = torch.ones(2, device=run.device)
    step = train_step(run, optimizer, weights, binary=True)
    train = run.data.train
    targets = train.labels[train.item_index]
    order = torch.randperm(len(train.item_index), device=train.images.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for lo in range(0, len(order) - 16, 16):
            rows = order[lo : lo + 16]
            step(run.model, model_inputs(run.model, train, rows, run.device), targets[rows])
    finally:
        torch.cuda.set_sync_debug_mode("default")
